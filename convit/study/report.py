"""``report.html`` of a study: the verdict, top-1 against images per class for both models (every
seed, mean and spread), the paired differences, and the gates and nonlocality of the runs.

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
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .plan_schema import Plan, label
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
<h2>Paired differences (ConViT minus DeiT, same seed: same subset, same test split)</h2>
$pairs
<h2>Locality at the end of training</h2>
<p class='small'>Gate &sigma;(&lambda;): weight of the positional attention of each GPSA layer """
    """(1 = convolution-like,
0 = content only), mean over heads and seeds. Nonlocality: attention-weighted distance between query and key
patches (in patches), mean over heads and seeds; DeiT's for comparison.</p>
$locality
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


def _pair_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    rows = []
    for c in comparisons:
        h = c.half_width
        rows.append(
            [
                c.images_per_class,
                c.n,
                f"{statistics.fmean(c.convit):.2f}",
                f"{statistics.fmean(c.deit):.2f}",
                " ".join(f"{d:+.2f}" for d in c.differences),
                f"{c.mean:+.2f}",
                "–" if h is None else f"[{c.mean - h:+.2f}, {c.mean + h:+.2f}]",
                "yes" if c.clear else "no",
            ]
        )
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
    m, d = plan.model, plan.data
    first = m.arms[0].model_kwargs
    params = ", ".join(f"{a.label} {a.params:,}" for a in m.arms)
    return (
        f"{len(d.classes)} classes; test split: {d.test_images} images ({d.test_from}); "
        f"both models {first['depth']} blocks, width "
        f"{first['embed_dim']}, {m.resolution}x{m.resolution} input, "
        f"{m.patch_size}x{m.patch_size} patches ({m.grid}x{m.grid} grid); parameters {params}; "
        f"seeds {plan.seeds}; epochs per size "
        + ", ".join(f"{lv.images_per_class}: {lv.epochs}" for lv in plan.levels)
        + ". The recipe is fixed by the plan; nothing is tuned on the test split."
    )


def _run_rows(records: Sequence[StudyRecord]) -> list[list[Any]]:
    return [
        [r.name, r.images_per_class, r.seed, f"{r.top1:.2f}", r.epochs, f"{r.seconds:.0f}", r.attempts]
        for r in sorted(records, key=lambda r: (r.variant, r.images_per_class, r.seed))
    ]


_PAIR_HEADER = [
    "images/class",
    "seeds",
    "ConViT mean",
    "DeiT mean",
    "differences",
    "mean",
    "95% interval",
    "clear?",
]


def write_report(
    path: Path,
    records: Sequence[StudyRecord],
    comparisons: Sequence[Comparison],
    verdict: str,
    plan: Plan,
) -> Path:
    """Write the study's report.html to ``path``."""
    arms = plan.arm_names
    page = _PAGE.substitute(
        data=html.escape(str(plan.data.name)),
        sentence=html.escape(verdict),
        setup=html.escape(_setup(plan)),
        accuracy=_png(accuracy_figure(records, arms)),
        pairs=_table(_PAIR_HEADER, _pair_rows(comparisons)),
        locality=_table(
            ["images/class", "model", "gate per GPSA layer", "nonlocality per layer"],
            _locality_rows(records, arms),
        ),
        runs=_table(
            ["run", "images/class", "seed", "top-1", "epochs", "seconds", "attempts"], _run_rows(records)
        ),
    )
    path.write_text(page)
    return path
