"""Tables of a sweep, and :func:`write_results`, which writes a sweep's files.

The numbers come from :mod:`.summary` (mean +- std over seeds, the paper's relative gain over
the baseline) and the figures from :mod:`.figures`.  Both the test top-1 of the *final* model
(fixed schedule, nothing selected on test) and the validation top-1 (held out from the
training split) are tabulated, side by side.

Files written by :func:`write_results`:

* ``results.csv``  one row per run;
* ``summary.csv``  one row per (variant, fraction): n, means, stds, gains;
* ``results.md``   the summary as Markdown tables, with the paper's numbers where it has some;
* a figure: ``top1_vs_fraction.png`` (sample efficiency, like the paper's Fig. 2),
  ``ablation.png``, ``locality_strength.png`` or ``gpsa_layers.png``;
* ``locality_over_training.png`` when the runs logged locality: nonlocality per block and gate
  per GPSA block over training, per variant and fraction (the paper's Figs. 5-6).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .grids import PAPER_ABLATION, PAPER_SAMPLE_EFFICIENCY
from .run_record import RunRecord
from .summary import Cell, by_label_and_fraction, locality_series, mean_of, mean_std, relative_gain, summarize
from .sweep_figures import grouped_figure, locality_figure, sample_efficiency_figure

__all__ = [
    "mean_std",
    "relative_gain",
    "Cell",
    "summarize",
    "markdown",
    "locality_markdown",
    "write_results",
    "plus_minus",
    "markdown_table",
    "FIGURE_NAMES",
]

FIGURE_NAMES = {
    "sample-efficiency": "top1_vs_fraction.png",
    "ablation": "ablation.png",
    "locality-strength": "locality_strength.png",
    "gpsa-layers": "gpsa_layers.png",
}

_RUN_COLUMNS = [
    "grid",
    "preset",
    "variant",
    "label",
    "fraction",
    "images_per_class",
    "seed",
    "test_top1",
    "val_top1",
    "best_val_top1",
    "best_epoch",
    "epochs",
    "train_images",
    "params",
    "wall_s",
    "cpu_s",
    "resumed",
]


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def plus_minus(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std`` for a table cell: the mean alone when std is NaN (one seed), "-" for none."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _gain(g: float, sd: float = math.nan) -> str:
    if math.isnan(g):
        return "-"
    g = 0.0 if abs(g) < 5e-4 else g  # no "-0.0%"
    return f"{100 * g:+.1f}%" + ("" if math.isnan(sd) else f" (± {100 * sd:.1f})")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def _footer(cells: Sequence[Cell]) -> list[str]:
    params = {c.label: c.params for c in cells if c.params}
    wall = sum(c.wall_s for c in cells)
    cpu = sum(c.cpu_s for c in cells)
    out = [""]
    if params:
        out.append("Parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()) + ".  ")
    out.append(
        f"Training time, all runs: {wall:.0f} s ({wall / 60:.1f} min)"
        + (f"; process CPU time {cpu:.0f} s ({cpu / 3600:.2f} CPU-hours)." if cpu else ".")
    )
    return out


_SAMPLE_EFFICIENCY_HEADER = [
    "fraction",
    "images/class",
    "train images",
    "n",
    "DeiT test",
    "ConViT test",
    "gain (test)",
    "DeiT val",
    "ConViT val",
    "gain (val)",
    "paper ImageNet DeiT-S → ConViT-S (gain)",
]


def _sample_efficiency_row(f: float, cv: Optional[Cell], de: Optional[Cell]) -> list[str]:
    """One fraction: DeiT's and ConViT's top-1, ConViT's gain, and the paper's ImageNet gain."""
    paper = PAPER_SAMPLE_EFFICIENCY.get(f)
    per_class = (cv or de).images_per_class
    return [
        f"{f:g}",
        f"{per_class:.0f}" if per_class else "-",
        f"{(cv or de).train_images:.0f}" if (cv or de).train_images else "-",
        str((cv or de).n),
        plus_minus(de.test_mean, de.test_std) if de else "-",
        plus_minus(cv.test_mean, cv.test_std) if cv else "-",
        _gain(cv.gain_test, cv.gain_test_sd) if cv else "-",
        plus_minus(de.val_mean, de.val_std) if de else "-",
        plus_minus(cv.val_mean, cv.val_std) if cv else "-",
        _gain(cv.gain_val, cv.gain_val_sd) if cv else "-",
        (
            f"{paper[0]:.1f} → {paper[1]:.1f} ({100 * relative_gain(paper[1], paper[0]):+.0f}%)"
            if paper
            else "-"
        ),
    ]


def _sample_efficiency_table(cells: Sequence[Cell]) -> list[str]:
    """One row per fraction, ConViT beside DeiT."""
    by_f: dict[float, dict[str, Cell]] = {}
    for c in cells:
        by_f.setdefault(c.fraction, {})[c.variant] = c
    rows = [_sample_efficiency_row(f, d.get("convit"), d.get("deit")) for f, d in sorted(by_f.items())]
    return markdown_table(_SAMPLE_EFFICIENCY_HEADER, rows)


def _fraction_table(cells: Sequence[Cell], f: float, grid: str) -> list[str]:
    """One table of every variant at fraction ``f`` (with the paper's numbers for the ablation)."""
    per_class = next((c.images_per_class for c in cells if c.fraction == f and c.images_per_class), None)
    lines = ["", f"### fraction {f:g}" + (f" ({per_class:.0f} images per class)" if per_class else ""), ""]
    rows = []
    for c in (c for c in cells if c.fraction == f):
        row = [
            c.label,
            str(c.n),
            plus_minus(c.test_mean, c.test_std),
            _gain(c.gain_test, c.gain_test_sd),
            plus_minus(c.val_mean, c.val_std),
            _gain(c.gain_val, c.gain_val_sd),
        ]
        if grid == "ablation":
            paper = PAPER_ABLATION.get(c.variant)
            row.append(f"{paper[0]:.1f} / {paper[1]:.1f}" if paper else "-")
        rows.append(row)
    header = ["variant", "n", "test top-1", "gain (test)", "val top-1", "gain (val)"]
    if grid == "ablation":
        header.append("paper full / 10% ImageNet")
    return lines + markdown_table(header, rows)


def markdown(cells: Sequence[Cell], grid: str, title: str = "") -> str:
    """The summary as Markdown: one table per fraction, plus the paper's numbers alongside."""
    lines = [
        f"## {title or grid}",
        "",
        "Top-1 (%) of the final model, mean ± std over seeds (n = seeds). Test: the dataset's test "
        "split, never used for any choice. Val: held out from the training split. Gain: the paper's "
        "relative improvement over the baseline, (top1 - top1_base) / top1_base, from the seed "
        "means; in brackets the std of the per-seed (paired) gains.",
        "",
    ]
    arms = {c.variant for c in cells}
    if grid == "sample-efficiency" and arms & {"convit", "deit"}:
        lines += _sample_efficiency_table([c for c in cells if c.variant in ("convit", "deit")])
    if grid == "sample-efficiency" and arms - {"convit", "deit"}:
        for f in sorted({c.fraction for c in cells}):  # other arms (the CNN): every variant per fraction
            lines += _fraction_table(cells, f, grid)
    elif grid != "sample-efficiency":
        for f in sorted({c.fraction for c in cells}):
            lines += _fraction_table(cells, f, grid)
    return "\n".join(lines + _footer(cells)) + "\n"


def _layer_means(records: Sequence[RunRecord], key: str, which: int) -> list[float]:
    """Per layer, the mean over heads and seeds of locality ``key`` at evaluated epoch ``which``
    (0: the first evaluated epoch, -1: the last)."""
    per_run = [
        [v for v in series[which][1] if not math.isnan(v)]
        for series in (locality_series(r, key) for r in records)
        if series
    ]
    n_layers = min((len(x) for x in per_run), default=0)
    return [statistics.fmean(run[i] for run in per_run) for i in range(n_layers)]


def locality_markdown(records: Sequence[RunRecord]) -> str:
    """Locality over training (the paper's Figs. 5-7) from the runs' logged evaluations: per
    variant and fraction, each layer's nonlocality (eq. 8, mean over heads) and each GPSA
    layer's gate sigma(lambda) (mean over heads), at the first and the last evaluated epoch,
    averaged over seeds.  Empty when no run logged locality."""
    groups = by_label_and_fraction(records)
    rows = []
    for (label, f), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for key in ("nonlocality", "gates"):
            first = _layer_means(rs, key, 0)
            last = _layer_means(rs, key, -1)
            cells.append(" ".join(f"{a:.2f}→{b:.2f}" for a, b in zip(first, last)) or "-")
        if cells != ["-", "-"]:
            per_class = mean_of(rs, "images_per_class")
            rows.append([label, f"{f:g}", f"{per_class:.0f}" if per_class else "-", str(len(rs)), *cells])
    if not rows:
        return ""
    lines = [
        "",
        "### Locality over training (first → last evaluated epoch, mean over heads and seeds)",
        "",
        "Nonlocality: mean distance (in patches) attended, per block; gates: sigma(lambda) of each "
        "GPSA block (1 = positional attention only, 0 = content only).",
        "",
    ]
    return (
        "\n".join(
            lines
            + markdown_table(
                ["variant", "fraction", "images/class", "n", "nonlocality per block", "gate per GPSA block"],
                rows,
            )
        )
        + "\n"
    )


def write_results(
    records: Sequence[RunRecord], output: Path, grid: str = "", title: str = ""
) -> dict[str, Path]:
    """Write results.csv, summary.csv, results.md and the grid's figure into ``output``."""
    output = Path(output)
    grid = grid or (records[0].grid if records else "")
    paths = {"csv": output / "results.csv", "summary": output / "summary.csv", "md": output / "results.md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_RUN_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r.to_json())
    cells = summarize(records)
    with open(paths["summary"], "w", newline="") as f:
        fields = list(asdict(cells[0])) if cells else ["variant"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for c in cells:
            w.writerow(asdict(c))
    preset = records[0].preset if records else ""
    paths["md"].write_text(markdown(cells, grid, title or f"{grid} ({preset})") + locality_markdown(records))
    if cells:
        fig = output / FIGURE_NAMES.get(grid, "results.png")
        if grid == "sample-efficiency":
            sample_efficiency_figure(cells, fig)
        else:
            spread = "mean ± std over seeds" if max(c.n for c in cells) > 1 else "one seed"
            grouped_figure(cells, fig, f"{grid} ({preset}): test top-1, {spread}")
        paths["figure"] = fig
    if locality_figure(records, output / "locality_over_training.png"):
        paths["locality_figure"] = output / "locality_over_training.png"
    return paths
