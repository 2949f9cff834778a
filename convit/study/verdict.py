"""The verdict of a study: paired differences by seed, their 95% intervals, one sentence, results.csv.

Runs of ConViT and DeiT with the same seed share the training subset, the initial draw of
the data order and the test split, so each seed gives one paired difference
``d_s = top1(ConViT) - top1(DeiT)`` per size.  The interval is
``mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n)`` (Student's t, exact for small n from
:data:`T975`); when it contains 0 the sentence says there is no clear difference, and with one
seed it says the seeds cannot tell.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .records import StudyRecord

__all__ = ["T975", "t975", "Comparison", "paired", "compare", "sentence", "write_csv", "CSV_COLUMNS"]

#: t(0.975, df) for df = 1..30 (Student's t, two-sided 95%).
T975 = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)

CSV_COLUMNS = (
    "variant",
    "fraction",
    "images_per_class",
    "seed",
    "top1",
    "epochs",
    "seconds",
    "top5",
    "test_loss",
    "train_images",
    "attempts",
    "name",
)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table to 30, then the
    Cornish-Fisher expansion, within 1e-4)."""
    if df < 1:
        raise ValueError(f"t needs at least 1 degree of freedom, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass
class Comparison:
    """ConViT minus DeiT at one size: the paired differences and their 95% interval."""

    images_per_class: int
    differences: list[float]
    convit: list[float]
    deit: list[float]

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def half_width(self) -> Optional[float]:
        """Half the 95% interval; None with one seed."""
        if self.n < 2:
            return None
        return t975(self.n - 1) * statistics.stdev(self.differences) / math.sqrt(self.n)

    @property
    def clear(self) -> bool:
        """Whether the interval leaves out 0."""
        h = self.half_width
        return h is not None and abs(self.mean) > h


def paired(records: Sequence[StudyRecord]) -> dict[int, dict[int, dict[str, float]]]:
    """images_per_class -> seed -> variant -> top-1, of the finished runs."""
    out: dict[int, dict[int, dict[str, float]]] = {}
    for r in records:
        if r.top1 is not None:
            out.setdefault(int(r.images_per_class), {}).setdefault(int(r.seed), {})[r.variant] = r.top1
    return out


def compare(records: Sequence[StudyRecord], arm: str = "convit", baseline: str = "deit") -> list[Comparison]:
    """One :class:`Comparison` (``arm`` minus ``baseline``) per size with at least one seed where
    both finished."""
    out = []
    for n, seeds in sorted(paired(records).items()):
        both = sorted(s for s, v in seeds.items() if arm in v and baseline in v)
        if both:
            c = [seeds[s][arm] for s in both]
            d = [seeds[s][baseline] for s in both]
            out.append(Comparison(n, [a - b for a, b in zip(c, d)], c, d))
    return out


def _phrase(c: Comparison, unit: str) -> str:
    h, at = c.half_width, f"{c.images_per_class}{unit}"
    if h is None:
        return f"ConViT minus DeiT is {c.mean:+.1f} points at {at} (one seed: no interval)"
    if not c.clear:
        return f"no clear difference at {at} ({c.mean:+.1f} ± {h:.1f})"
    word = "ahead" if c.mean > 0 else "behind"
    return f"ConViT is {word} by {abs(c.mean):.1f} ± {h:.1f} points at {at}"


def sentence(comparisons: Sequence[Comparison]) -> str:
    """One sentence over every size, smallest first, e.g. "ConViT is ahead by 6.1 ± 2.3 points
    at 50 images per class; no clear difference at 500 (+0.4 ± 1.9) (2 seeds; paired
    differences, 95% interval)."."""
    if not comparisons:
        return "No verdict yet: no size has finished runs of both models."
    parts = [_phrase(c, " images per class" if i == 0 else "") for i, c in enumerate(comparisons)]
    text = "; ".join(parts)
    seeds = sorted({c.n for c in comparisons})
    n = (
        f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''}"
        if len(seeds) == 1
        else f"{seeds[0]}-{seeds[-1]} seeds"
    )
    detail = "paired differences, 95% interval" if seeds[-1] > 1 else "too few seeds for an interval"
    return f"{text[0].upper()}{text[1:]} ({n}; {detail})."


def write_csv(records: Sequence[StudyRecord], path: Path) -> Path:
    """results.csv: one row per finished run, sorted by variant, size and seed."""
    rows = sorted(
        (r for r in records if r.top1 is not None),
        key=lambda r: (r.variant, r.images_per_class, r.seed),
    )
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: getattr(r, k) for k in CSV_COLUMNS})
    return path
