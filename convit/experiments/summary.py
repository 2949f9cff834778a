"""A sweep's numbers: mean +- std over seeds, the relative gain over the baseline, locality curves.

The paper's relative gain (Table 2) is ``(top1_convit - top1_deit) / top1_deit``; here it is
computed from the seed means of each variant and its grid's baseline (DeiT, or 0 GPSA
layers) at the same fraction.  Because seeds are paired (same images for every variant), the
spread of the per-seed gains is reported next to it.

Run records are the :class:`~convit.experiments.run_record.RunRecord` of
:func:`convit.experiments.runner.load_results` (one per run's ``result.json``); tables
(:mod:`.results`) and figures (:mod:`.sweep_figures`) read only what this module computes from them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .run_record import RunRecord

__all__ = [
    "mean_std",
    "relative_gain",
    "Cell",
    "summarize",
    "mean_of",
    "by_label_and_fraction",
    "locality_series",
    "locality_curves",
]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is NaN."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def relative_gain(value: float, baseline: float) -> float:
    """The paper's relative improvement ``(value - baseline) / baseline`` (a fraction, not %)."""
    if baseline == 0 or math.isnan(baseline):
        return math.nan
    return (value - baseline) / baseline


@dataclass
class Cell:
    """One (variant, fraction) of a sweep, over its seeds."""

    variant: str
    label: str
    fraction: float
    n: int
    test_mean: float
    test_std: float
    val_mean: float
    val_std: float
    baseline: bool
    gain_test: float = math.nan  # ratio of means vs the baseline (paper definition)
    gain_test_sd: float = math.nan  # std over seeds of the paired per-seed gains
    gain_val: float = math.nan
    gain_val_sd: float = math.nan
    train_images: Optional[float] = None
    images_per_class: Optional[float] = None
    wall_s: float = 0.0
    cpu_s: float = (
        0.0  # per run the larger of cpu_s (its last attempt) and epochs_cpu_s (every attempt's epochs)
    )
    params: Optional[int] = None


def _num(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def mean_of(records: Sequence[RunRecord], field: str) -> Optional[float]:
    """Mean of the attribute ``field`` over the records that have it; None when none has."""
    vals = [float(getattr(r, field)) for r in records if getattr(r, field) is not None]
    return statistics.fmean(vals) if vals else None


def _cell(variant: str, fraction: float, rs: Sequence[RunRecord]) -> Cell:
    tm, ts = mean_std([x for x in (_num(r.test_top1) for r in rs) if x is not None])
    vm, vs = mean_std([x for x in (_num(r.val_top1) for r in rs) if x is not None])
    return Cell(
        variant,
        rs[0].label,
        fraction,
        len(rs),
        tm,
        ts,
        vm,
        vs,
        bool(rs[0].baseline),
        train_images=mean_of(rs, "train_images"),
        images_per_class=mean_of(rs, "images_per_class"),
        wall_s=sum(float(r.wall_s or 0) for r in rs),
        cpu_s=sum(r.cpu_seconds for r in rs),
        params=next((int(r.params) for r in rs if r.params), None),
    )


def _add_gains(cell: Cell, mine: Sequence[RunRecord], base: Cell, theirs: Sequence[RunRecord]) -> None:
    """The gain of ``cell`` over ``base`` from the seed means, and the spread of the paired per-seed gains."""
    cell.gain_test = relative_gain(cell.test_mean, base.test_mean)
    cell.gain_val = relative_gain(cell.val_mean, base.val_mean)
    for metric in ("test", "val"):
        ours = {r.seed: _num(getattr(r, f"{metric}_top1")) for r in mine}
        ref = {r.seed: _num(getattr(r, f"{metric}_top1")) for r in theirs}
        paired = [
            relative_gain(ours[s], ref[s])
            for s in ours
            if s in ref and ours[s] is not None and ref[s] is not None
        ]
        setattr(cell, f"gain_{metric}_sd", mean_std(paired)[1])


def summarize(records: Sequence[RunRecord]) -> list[Cell]:
    """Group run records by (variant, fraction); mean/std over seeds; gains vs the baseline.

    Variants keep the order they first appear in (the grid's order); fractions are ascending.
    """
    order: list[str] = list(dict.fromkeys(r.variant for r in records))
    groups: dict[tuple[str, float], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.variant, float(r.fraction)), []).append(r)
    cells = {(v, f): _cell(v, f, rs) for (v, f), rs in groups.items()}
    base_name = next((r.variant for r in records if r.baseline), None)
    if base_name is not None:
        for (v, f), cell in cells.items():
            if (base_name, f) in cells:
                _add_gains(cell, groups[(v, f)], cells[(base_name, f)], groups[(base_name, f)])
    fractions = sorted({f for _, f in cells})
    return [cells[(v, f)] for f in fractions for v in order if (v, f) in cells]


def by_label_and_fraction(records: Sequence[RunRecord]) -> dict[tuple[str, float], list[RunRecord]]:
    """The records grouped by (label, fraction), in the order they first appear."""
    groups: dict[tuple[str, float], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.label, float(r.fraction)), []).append(r)
    return groups


def _head_mean(heads: Optional[Sequence[Optional[float]]]) -> float:
    vals = [x for x in heads or [] if x is not None]
    return statistics.fmean(vals) if vals else math.nan


def locality_series(record: RunRecord, key: str) -> list[tuple[float, list[float]]]:
    """Locality ``key`` (``"nonlocality"`` per block, ``"gates"`` per GPSA block) over one run's
    training: ``[(epoch, [mean over heads per block]), ...]`` for each evaluation that logged it."""
    return [
        (e["epoch"], [_head_mean(heads) for heads in e["locality"][key]])
        for e in record.evals
        if (e.get("locality") or {}).get(key)
    ]


def locality_curves(records: Sequence[RunRecord], key: str) -> tuple[list[float], list[list[float]]]:
    """Locality ``key`` over training: (training progress epoch / epochs at each evaluated epoch,
    [[value per block, mean over heads and seeds] per evaluated epoch]); empty without it."""
    runs = []
    for r in records:
        series = locality_series(r, key)
        if series:
            total = r.epochs or series[-1][0]
            runs.append([(epoch / total, values) for epoch, values in series])
    n = min((len(run) for run in runs), default=0)
    return (
        [runs[0][i][0] for i in range(n)],
        [
            [statistics.fmean(run[i][1][b] for run in runs) for b in range(len(runs[0][i][1]))]
            for i in range(n)
        ],
    )
