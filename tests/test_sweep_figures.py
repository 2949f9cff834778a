"""The sweep figures say only what the data supports: images per class on the x axis (the
paper's ImageNet fractions converted beside ours), y axes from 0, and no error bar on a single run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convit.experiments.summary import Cell
from convit.experiments.sweep_figures import IMAGENET_PER_CLASS, grouped_plot, sample_efficiency_plot


def _cell(variant: str, fraction: float, n: int, top1: float, baseline: bool = False) -> Cell:
    sd = 1.0 if n > 1 else math.nan
    return Cell(
        variant=variant,
        label=variant,
        fraction=fraction,
        n=n,
        test_mean=top1,
        test_std=sd,
        val_mean=top1 - 1,
        val_std=sd,
        baseline=baseline,
        gain_test=0.0 if baseline else 0.1,
        gain_test_sd=0.01 if n > 1 else math.nan,
        images_per_class=fraction * 4500,
    )


def _error_bar_xs(ax) -> list[float]:
    """x of every drawn error bar (vertical segments of the errorbar LineCollections)."""
    xs = []
    for coll in ax.collections:
        for seg in coll.get_segments():
            if len(seg) and np.all(np.isfinite(seg)):
                xs.append(float(seg[0][0]))
    return xs


def test_sample_efficiency_is_drawn_against_images_per_class_from_zero():
    cells = [
        _cell("convit", 0.0111, 2, 35.0),
        _cell("convit", 0.0222, 1, 43.0),
        _cell("deit", 0.0111, 2, 31.0, baseline=True),
        _cell("deit", 0.0222, 1, 39.0, baseline=True),
    ]
    fig = sample_efficiency_plot(cells)
    ax, ax2 = fig.axes
    assert ax.get_ylim()[0] == 0 and ax2.get_ylim()[0] <= 0
    assert ax.get_xlabel() == "training images per class"
    xs = sorted({round(x, 3) for line in ax.lines for x in line.get_xdata()})
    assert xs == [pytest.approx(0.0111 * 4500, abs=1e-3), pytest.approx(0.0222 * 4500, abs=1e-3)]
    paper = next(line for line in ax2.lines if "paper" in line.get_label())
    assert list(paper.get_xdata()) == pytest.approx(
        [f * IMAGENET_PER_CLASS for f in (0.05, 0.1, 0.3, 0.5, 1.0)]
    )
    # error bars only at the size with 2 seeds, none at the single runs
    assert {round(x, 3) for x in _error_bar_xs(ax)} == {round(0.0111 * 4500, 3)}
    assert {round(x, 3) for x in _error_bar_xs(ax2)} == {round(0.0111 * 4500, 3)}


def test_bars_start_at_zero_and_single_runs_have_no_error_bar():
    cells = [_cell("convit", 0.0222, 1, 43.0), _cell("deit", 0.0222, 3, 39.0, baseline=True)]
    fig = grouped_plot(cells, "ablation")
    (ax,) = fig.axes
    assert ax.get_ylim()[0] == 0
    assert len(_error_bar_xs(ax)) == 1  # the 3-seed bar only
