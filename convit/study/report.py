"""``report.html`` of a study: the verdict, top-1 against images per class for both models (every
seed, mean and spread), the paired differences, the gates and nonlocality of the runs, and every
run's validation curve (:mod:`convit.study.curves`).

A self-contained page (figures embedded as base64 PNGs, drawn on matplotlib's Agg canvas like
:mod:`convit.analysis.figures`), built from the runs' ``result.json`` records alone.
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..analysis.intervals import Interval
from .curves import convergence_summary, curves_figure
from .plan_schema import Arm, Plan, label
from .records import StudyRecord
from .verdict import Comparison

__all__ = ["write_report"]

_PAGE = Template(
    """<!DOCTYPE html>
<html><head><meta charset='utf-8'><title>ConViT or DeiT on $data</title>
<style>
body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}
th{background:#eee}img{max-width:100%}.verdict{font-size:1.25em;background:#f4f4ff;padding:.6em;border-radius:4px}
p.small{color:#444;font-size:13px}
</style></head><body>
<h1>ConViT or DeiT on $data?</h1>
<p class='verdict'>$sentence</p>
<p class='small'>$setup</p>
<img src='data:image/png;base64,$accuracy' alt='top-1 against images per class'>
<h2>Paired differences (ConViT minus each arm, same seed: same subset, same test split)</h2>
$pairs
<p class='small'>Estimates and intervals in points of top-1, over seeds and test images
(docs/study.md, &ldquo;Reading the verdict&rdquo;); the average is the line over sizes at their
mean log size.</p>
<h2>Locality at the end of training</h2>
<p class='small'>Gate &sigma;(&lambda;): weight of the positional attention of each GPSA layer """
    """(1 = convolution-like,
0 = content only), mean over heads and seeds. Nonlocality: attention-weighted distance between query and key
patches (in patches), mean over heads and seeds; DeiT's for comparison.</p>
$locality
<h2>Validation curves</h2>
<p class='small'>$convergence</p>
$curves
<h2>Every run</h2>
$runs
</body></html>
"""
)

_COLOURS = {"convit": "#1f77b4", "deit": "#d62728"}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return base64.b64encode(buf.getvalue()).decode()


def accuracy_figure(records: Sequence[StudyRecord], arms: Sequence[str] = ("convit", "deit")) -> Figure:
    """Top-1 against images per class (log scale), per arm: every seed a dot, the mean a line,
    the spread (min to max over seeds) a band."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, v in enumerate(arms):
        rs = [r for r in records if r.variant == v and r.top1 is not None]
        sizes = sorted({r.images_per_class for r in rs})
        if not sizes:
            continue
        colour = _COLOURS.get(v, f"C{i + 2}")
        ax.scatter([r.images_per_class for r in rs], [r.top1 for r in rs], s=14, alpha=0.6, color=colour)
        by = [[r.top1 for r in rs if r.images_per_class == n] for n in sizes]
        ax.plot(sizes, [statistics.fmean(b) for b in by], color=colour, label=f"{label(v)} (mean)")
        ax.fill_between(sizes, [min(b) for b in by], [max(b) for b in by], color=colour, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _iv(iv: Interval) -> str:
    return "–" if not iv.known else f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]"


def _pair_rows(comparisons: Sequence[Comparison]) -> list[list[Any]]:
    """Per arm and size: the seeds' means, the differences, the interval from the size's seeds
    and from the line over sizes; then the average over sizes and the trend per doubling."""
    rows: list[list[Any]] = []
    for c in comparisons:
        arm = label(c.arm)
        for s in c.sizes:
            rows.append(
                [
                    arm,
                    s.images_per_class,
                    s.n,
                    f"{statistics.fmean(s.convit):.2f}",
                    f"{statistics.fmean(s.other):.2f}",
                    " ".join(f"{d:+.2f}" for d in s.differences),
                    _iv(s.direct),
                    _iv(s.fitted),
                ]
            )
        rows.append([arm, "average", "", "", "", "", "", _iv(c.average)])
        if c.trend is not None:
            rows.append([arm, "per doubling", "", "", "", "", "", _iv(c.trend)])
    return rows


def _layer_means(records: Sequence[StudyRecord], key: str) -> list[float]:
    """Per layer, the mean over heads and runs of locality[key] (runs with it logged; none for
    gates of an arm without GPSA layers)."""
    per_run = [r.locality[key] for r in records if r.locality and r.locality.get(key)]
    if not per_run:
        return []
    layers = len(per_run[0])
    return [
        statistics.fmean(h for run in per_run for h in (run[i] or []) if h is not None) for i in range(layers)
    ]


def _locality_rows(records: Sequence[StudyRecord], arms: Sequence[str]) -> list[list[str]]:
    rows = []
    for n in sorted({r.images_per_class for r in records}):
        for v in arms:
            rs = [r for r in records if r.images_per_class == n and r.variant == v]
            gates = _layer_means(rs, "gates")
            nonloc = _layer_means(rs, "nonlocality")
            if rs:
                rows.append(
                    [
                        n,
                        label(v),
                        " ".join(f"{g:.2f}" for g in gates) or "–",
                        " ".join(f"{d:.2f}" for d in nonloc) or "–",
                    ]
                )
    return rows


def _setup(plan: Plan) -> str:
    """The study's setup in a few sentences: data, models, sizes, seeds, epochs."""
    m = plan.model
    d = plan.data
    return (
        f"{len(d.classes)} classes; test split: {d.test_images} images ({d.test_from}); "
        f"{m.resolution}x{m.resolution} input; "
        + "; ".join(_describe_arm(arm, m.patch_size, m.grid) for arm in m.arms)
        + f"; seeds {plan.seeds}; epochs per size "
        + ", ".join(f"{lv.images_per_class}: {lv.epochs}" for lv in plan.levels)
        + ". The recipe is fixed by the plan; nothing is tuned on the test split."
    )


def _describe_arm(arm: Arm, patch: int, grid: int) -> str:
    """One arm in a few words: its shape and its size."""
    kw = arm.model_kwargs
    size = f"{arm.params:,} parameters" + (f", {arm.gmacs:.3g} GMACs" if arm.gmacs is not None else "")
    if "depth" in kw and "embed_dim" in kw:
        shape = f"{kw['depth']} blocks, width {kw['embed_dim']}, {patch}x{patch} patches ({grid}x{grid} grid)"
    elif "widths" in kw:
        shape = "a ResNet (timm's), widths " + "-".join(str(w) for w in kw["widths"])
    else:  # a published CNN, as its weights describe it
        shape = "timm's architecture"
    start = f", fine-tuned from {arm.weights}" if arm.weights is not None else ""
    return f"{arm.label} ({arm.model}): {shape}, {size}{start}"


def _run_rows(records: Sequence[StudyRecord]) -> list[list[Any]]:
    converged = {True: "yes", False: "no", None: "–"}
    return [
        [
            r.name,
            r.images_per_class,
            r.seed,
            f"{r.top1:.2f}",
            r.epochs,
            f"{r.seconds:.0f}",
            r.attempts,
            converged[r.converged],
        ]
        for r in sorted(records, key=lambda r: (r.variant, r.images_per_class, r.seed))
    ]


def _curves(records: Sequence[StudyRecord], arms: Sequence[str]) -> str:
    """The validation-curve figure as an <img> (empty without curves)."""
    fig = curves_figure(records, arms)
    if fig is None:
        return ""
    return f"<img src='data:image/png;base64,{_png(fig)}' alt='validation top-1 against epoch, every run'>"


_PAIR_HEADER = [
    "ConViT minus",
    "images/class",
    "seeds",
    "ConViT mean",
    "other mean",
    "differences",
    "this size's seeds",
    "line over sizes",
]


def write_report(
    path: Path,
    records: Sequence[StudyRecord],
    comparisons: Sequence[Comparison],
    verdict: str,
    plan: Plan,
    compared: Optional[Sequence[StudyRecord]] = None,
    longer: str = "",
) -> Path:
    """Write the study's report.html to ``path``: the accuracy figure and locality of the runs
    the verdict ``compared`` (default all ``records``), the table, convergence and validation
    curves of every run; ``longer`` says which sizes were trained again for longer."""
    arms = plan.arm_names
    compared = records if compared is None else compared
    page = _PAGE.substitute(
        data=html.escape(str(plan.data.name)),
        sentence=html.escape(verdict),
        setup=html.escape(_setup(plan) + (f" {longer}" if longer else "")),
        accuracy=_png(accuracy_figure(compared, arms)),
        pairs=_table(_PAIR_HEADER, _pair_rows(comparisons)),
        locality=_table(
            ["images/class", "model", "gate per GPSA layer", "nonlocality per layer"],
            _locality_rows(compared, arms),
        ),
        runs=_table(
            ["run", "images/class", "seed", "top-1", "epochs", "seconds", "attempts", "converged"],
            _run_rows(records),
        ),
        convergence=html.escape(convergence_summary(records)),
        curves=_curves(records, arms),
    )
    path.write_text(page)
    return path
