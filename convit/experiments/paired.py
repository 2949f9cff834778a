"""Paired comparisons of a sweep's arms over seeds, with the intervals of ``convit study``'s verdict.

Two arms trained on the same subsets with the same seeds differ, per size k (images per class)
and seed s, by ``d[k, s]`` points of top-1 on the one test split they share.  The intervals are
:func:`convit.analysis.intervals.analyse`'s, so a sweep's table and a study's sentence rest on one
statistic: the seed part of the variance is pooled over sizes (df = sum of seeds - 1), and the
test-split part comes from the accuracies alone (:func:`~convit.analysis.intervals.binomial_covariance`:
the two models erring independently, an upper bound, since runs made before per-image outcomes
were written have no ``test_correct.npy``).  With several sizes, ``trend`` is the least-squares
slope of the difference per doubling of images per class and ``average`` the line at the mean
log size (the difference averaged over the sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..analysis.intervals import Interval, analyse, binomial_covariance
from .run_record import RunRecord

__all__ = ["Paired", "paired_comparison", "size_of", "describe"]


@dataclass(frozen=True)
class Paired:
    """``arm`` minus ``baseline`` (points of ``metric``) at each size both ran, over their shared
    seeds: one interval per size, the average over sizes and, with two sizes or more, the trend."""

    arm: str
    baseline: str
    metric: str
    sizes: tuple[float, ...]
    seeds: tuple[int, ...]  # paired seeds per size
    per_size: tuple[Interval, ...]
    average: Interval
    trend: Optional[Interval]
    seed_df: int


def size_of(record: RunRecord) -> float:
    """A run's images per class (its fraction when unknown), the key sizes are paired on."""
    return float(record.images_per_class or record.fraction)


def _by_size_and_seed(
    records: Sequence[RunRecord], variant: str, metric: str
) -> dict[tuple[float, int], float]:
    """``variant``'s ``metric`` per (images per class, seed)."""
    out = {}
    for r in records:
        value = getattr(r, metric)
        if r.variant == variant and value is not None:
            out[(size_of(r), int(r.seed))] = float(value)
    return out


def paired_comparison(
    records: Sequence[RunRecord],
    arm: str,
    baseline: str,
    metric: str = "test_top1",
    test_images: int = 10000,
    level: float = 0.95,
) -> Paired:
    """``arm`` minus ``baseline`` (variant names) over the sizes and seeds both have in
    ``records``; ``metric`` a RunRecord field in points measured on ``test_images`` images.

    Raises ValueError when the two arms share no (size, seed)."""
    mine = _by_size_and_seed(records, arm, metric)
    theirs = _by_size_and_seed(records, baseline, metric)
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        raise ValueError(f"{arm} and {baseline} share no size and seed with a {metric}")
    sizes = sorted({k for k, _ in shared})
    seeds = sorted({s for _, s in shared})
    ours = np.full((1, len(sizes), len(seeds)), np.nan)  # (B=1, K, S)
    ref = np.full_like(ours, np.nan)
    for size, seed in shared:
        at = (0, sizes.index(size), seeds.index(seed))
        ours[at] = mine[(size, seed)]
        ref[at] = theirs[(size, seed)]
    d = ours - ref
    result = analyse(d, binomial_covariance(ref, ours, test_images), np.asarray(sizes), level=level)
    per_size = tuple(result.direct.item(0, k) for k in range(len(sizes)))
    counts = tuple(int(n) for n in np.sum(~np.isnan(d[0]), axis=-1))
    return Paired(
        arm,
        baseline,
        metric,
        tuple(sizes),
        counts,
        per_size,
        result.average.item(0),
        result.trend.item(0) if result.trend is not None else None,
        int(result.seed_df[0]),
    )


def describe(iv: Interval, digits: int = 1) -> str:
    """``+4.8 [+3.1, +6.5]``, or the estimate with "no interval" (one seed per size)."""
    if not iv.known or math.isinf(iv.high):
        return f"{iv.estimate:+.{digits}f} (no interval)"
    return f"{iv.estimate:+.{digits}f} [{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"
