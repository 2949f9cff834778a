"""The figures of a sweep (matplotlib's object API: no pyplot, no global state).

* :func:`sample_efficiency_figure` -- top-1 and the relative gain against images per class,
  beside the paper's ImageNet gains on the same axis (like the paper's Fig. 2);
* :func:`grouped_figure`  -- bars per variant and fraction (ablation, locality strength, GPSA layers);
* :func:`locality_figure` -- nonlocality per block and gate per GPSA block over training, per
  variant and fraction (the paper's Figs. 5-6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from .grids import PAPER_SAMPLE_EFFICIENCY
from .run_record import RunRecord
from .summary import Cell, by_label_and_fraction, locality_curves, mean_of, relative_gain

__all__ = [
    "sample_efficiency_figure",
    "sample_efficiency_plot",
    "grouped_figure",
    "grouped_plot",
    "locality_figure",
]

_BLOCK_COLOURS = colormaps["viridis"]  # early blocks dark, late blocks light


#: ImageNet-1k's training images per class (1,281,167 / 1,000): the paper's fractions on our axis.
IMAGENET_PER_CLASS = 1281.167


def _x(c: Cell) -> float:
    """A cell's place on the x axis: its images per class (its fraction when unknown)."""
    return c.images_per_class if c.images_per_class else c.fraction


def _curve(ax: Any, xs: list[float], ys: list[float], sds: list[float], ns: list[int], **style: Any) -> None:
    """A line through the means, with error bars (std over seeds) only where there are 2 seeds
    or more: a single run has no spread to show."""
    ax.plot(xs, ys, **style)
    spread = [(x, y, sd) for x, y, sd, n in zip(xs, ys, sds, ns) if n > 1 and not math.isnan(sd)]
    if spread:
        ex, ey, esd = zip(*spread)
        ax.errorbar(
            ex, ey, yerr=esd, ls="none", capsize=3, color=style.get("color"), alpha=style.get("alpha", 1)
        )


def _variant_curves(ax: Any, ax2: Any, cs: Sequence[Cell], color: str, base_label: str) -> None:
    """One variant's test and val top-1 against images per class on ``ax``; its gain on ``ax2``."""
    xs = [_x(c) for c in cs]
    ns = [c.n for c in cs]
    _curve(
        ax,
        xs,
        [c.test_mean for c in cs],
        [c.test_std for c in cs],
        ns,
        marker="o",
        color=color,
        label=f"{cs[0].label} (test)",
    )
    _curve(
        ax,
        xs,
        [c.val_mean for c in cs],
        [c.val_std for c in cs],
        ns,
        marker="s",
        color=color,
        ls="--",
        alpha=0.6,
        label=f"{cs[0].label} (val)",
    )
    if not cs[0].baseline and any(not math.isnan(c.gain_test) for c in cs):
        gains = [100 * c.gain_test for c in cs]
        sds = [100 * c.gain_test_sd for c in cs]
        _curve(
            ax2,
            xs,
            gains,
            sds,
            ns,
            marker="o",
            color=color,
            label=f"{cs[0].label} vs {base_label} (ours, test)",
        )


def _paper_gains(ax2: Any) -> None:
    """The paper's Table 2 gains (ConViT-S over DeiT-S on ImageNet), its fractions converted to
    images per class."""
    pf = sorted(PAPER_SAMPLE_EFFICIENCY)
    ax2.plot(
        [f * IMAGENET_PER_CLASS for f in pf],
        [100 * relative_gain(PAPER_SAMPLE_EFFICIENCY[f][1], PAPER_SAMPLE_EFFICIENCY[f][0]) for f in pf],
        "k:",
        marker="^",
        label="paper, ImageNet ConViT-S vs DeiT-S",
    )


def sample_efficiency_figure(cells: Sequence[Cell], path: Path) -> None:
    """Top-1 and gain against images per class, saved to ``path``."""
    sample_efficiency_plot(cells).savefig(path, dpi=120)


def sample_efficiency_plot(cells: Sequence[Cell]) -> Figure:
    fig = Figure(figsize=(10, 4), layout="tight")  # no pyplot: no global backend or figure state
    ax, ax2 = fig.subplots(1, 2)
    variants = list(dict.fromkeys(c.variant for c in cells))
    base_label = next((c.label for c in cells if c.baseline), "baseline")
    for i, v in enumerate(variants):
        cs = sorted((c for c in cells if c.variant == v), key=lambda c: c.fraction)
        _variant_curves(ax, ax2, cs, f"C{i}", base_label)
    _paper_gains(ax2)
    ax2.axhline(0, color="grey", lw=0.8)
    per_class = all(c.images_per_class for c in cells)
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("training images per class" if per_class else "fraction of training images per class")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylim(0, None)
    ax2.set_ylim(min(0, ax2.get_ylim()[0]), None)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("top-1 vs images per class (mean; bars: std over seeds)")
    ax2.set_ylabel("relative gain (%)")
    ax2.set_title(f"relative gain over {base_label}")
    return fig


def grouped_figure(cells: Sequence[Cell], path: Path, title: str) -> None:
    """Bars per variant (:func:`grouped_plot`), saved to ``path``."""
    grouped_plot(cells, title).savefig(path, dpi=120)


def grouped_plot(cells: Sequence[Cell], title: str) -> Figure:
    """Bars per variant from 0, one colour per fraction, error bars = std over seeds (none for a
    single run)."""
    variants = list(dict.fromkeys(c.variant for c in cells))
    labels = {c.variant: c.label for c in cells}
    fractions = sorted({c.fraction for c in cells})
    fig = Figure(figsize=(max(6, 1.3 * len(variants)), 4), layout="tight")
    ax = fig.subplots()
    width = 0.8 / len(fractions)
    for j, f in enumerate(fractions):
        d = {c.variant: c for c in cells if c.fraction == f}
        xs = [i + (j - (len(fractions) - 1) / 2) * width for i, v in enumerate(variants) if v in d]
        ys = [d[v].test_mean for v in variants if v in d]
        # no error bar on a single run: it has no spread to show
        es = [d[v].test_std if d[v].n > 1 else math.nan for v in variants if v in d]
        per_class = next((c.images_per_class for c in d.values() if c.images_per_class), None)
        ax.bar(
            xs,
            ys,
            width,
            yerr=es,
            capsize=3,
            label=f"{per_class:.0f} images per class (test)" if per_class else f"f = {f:g} (test)",
        )
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([labels[v] for v in variants], rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, None)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _locality_panel(
    ax: Any, xs: list[float], ys: list[list[float]], key: str, title: str, legend: bool
) -> None:
    blocks = len(ys[0]) if ys else 0
    if not blocks:
        ax.set_axis_off()  # e.g. DeiT has no gates
        return
    for b in range(blocks):
        ax.plot(
            xs,
            [y[b] for y in ys],
            marker=".",
            color=_BLOCK_COLOURS(b / max(1, blocks - 1)),
            label=f"{'GPSA block' if key == 'gates' else 'block'} {b + 1}",
        )
    ax.set_title(title, fontsize=8)
    ax.set_ylabel("gate sigma(lambda)" if key == "gates" else "nonlocality (patches)", fontsize=7)
    ax.set_xlabel("training progress (epoch / epochs)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside, not on, the curves


def locality_figure(records: Sequence[RunRecord], path: Path) -> bool:
    """Nonlocality per block and gate per GPSA block over training (the paper's Figs. 5-6): one
    column per fraction and one row per variant and measure, or, for a single fraction, one row
    per variant and one column per measure; False (nothing written) without locality."""
    groups = by_label_and_fraction(records)
    fractions = sorted({f for _, f in groups})
    labels = list(dict.fromkeys(label for label, _ in groups))
    curves = {
        (label, key, f): locality_curves(groups.get((label, f), []), key)  # each computed once
        for key in ("nonlocality", "gates")
        for label in labels
        for f in fractions
    }
    drawn = [k for k in curves if curves[k][0]]
    if not drawn:
        return False
    if len(fractions) == 1:
        rows = list(dict.fromkeys((label,) for label, _, _ in drawn))
        cols = list(dict.fromkeys((key, fractions[0]) for _, key, _ in drawn))
    else:
        rows = list(dict.fromkeys((label, key) for label, key, _ in drawn))
        cols = [(f,) for f in fractions]
    fig = Figure(figsize=(3.2 * len(cols), 2.3 * len(rows)), layout="tight")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            label, key, f = row + col
            per_class = mean_of(groups.get((label, f), []), "images_per_class")
            title = f"{label}, {per_class:.0f}/class" if per_class else f"{label}, f = {f:g}"
            _locality_panel(
                axes[i][j],
                *curves[label, key, f],
                key,
                title,
                legend=i == 0 if len(fractions) == 1 else j == len(cols) - 1,
            )
    fig.savefig(path, dpi=110)
    return True
