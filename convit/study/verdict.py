"""The verdict of a study: ConViT against every other arm, per size and pooled, in one sentence.

Runs of two arms with the same seed share the training subset, the initial draw of the data
order and the test split, so each seed gives one paired difference ``d = top1(ConViT) -
top1(other)`` per size.  :mod:`convit.analysis.intervals` turns them (and, where the runs wrote
them, their per-image outcomes, :mod:`convit.study.outcomes`) into 95% intervals that count both
the seeds' spread and the test split's own sampling noise, per size and pooled over sizes by a
line in log(images per class).  With more than one other arm the intervals are Bonferroni's
(level 1 - 0.05 / comparisons).  The sentence (:mod:`convit.study.wording`) says what they
support and no more; results.csv lists every run.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..analysis.intervals import Interval, analyse, binomial_covariance, image_covariance, image_products
from .outcomes import TEST_CORRECT_FILE, load_test_correct
from .records import StudyRecord

__all__ = ["SizeResult", "Comparison", "paired", "compare", "sentence", "write_csv", "CSV_COLUMNS"]

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


@dataclass(frozen=True)
class SizeResult:
    """ConViT minus one arm at one size: the seeds' top-1 and two intervals of the difference,
    from this size's seeds (``direct``) and from the line over sizes (``fitted``)."""

    images_per_class: int
    seeds: list[int]
    convit: list[float]
    other: list[float]
    direct: Interval
    fitted: Interval

    @property
    def differences(self) -> list[float]:
        return [a - b for a, b in zip(self.convit, self.other)]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)


@dataclass(frozen=True)
class Comparison:
    """ConViT minus ``arm`` over every size both finished: per size, the average over the sizes
    (the line at their mean log size), the trend per doubling of images per class (None with one
    size), the pooled seed spread, and how the test split's noise was counted (``test_part``:
    ``per-image``, ``binomial`` or ``seeds only``; ``missing``: runs without per-image outcomes)."""

    arm: str
    sizes: list[SizeResult]
    average: Interval
    trend: Optional[Interval]
    seed_sd: float
    seed_df: int
    test_part: str
    comparisons: int = 1
    missing: list[str] = field(default_factory=list)


def paired(records: Sequence[StudyRecord]) -> dict[int, dict[int, dict[str, StudyRecord]]]:
    """images_per_class -> seed -> variant -> record, of the finished runs."""
    out: dict[int, dict[int, dict[str, StudyRecord]]] = {}
    for r in records:
        if r.top1 is not None:
            out.setdefault(int(r.images_per_class), {}).setdefault(int(r.seed), {})[r.variant] = r
    return out


def compare(
    records: Sequence[StudyRecord],
    arms: Sequence[str] = ("convit", "deit"),
    runs: Optional[Path] = None,
    test_images: Optional[int] = None,
) -> list[Comparison]:
    """ConViT (the first of ``arms``) against each other arm that has at least one seed of one
    size where both finished.  ``runs``: the study's runs folder, where each run's per-image
    outcomes are read; without them the test split's noise is left out (or, given
    ``test_images``, approximated from the accuracies as binomial)."""
    reference = arms[0]
    others = [a for a in arms[1:] if a != arms[0]]
    found = [c for a in others if (c := _compare_arm(records, reference, a, runs, test_images)) is not None]
    level = 1 - 0.05 / max(len(found), 1)
    return [_compare_arm(records, reference, c.arm, runs, test_images, level, len(found)) for c in found]


def _compare_arm(
    records: Sequence[StudyRecord],
    reference: str,
    arm: str,
    runs: Optional[Path],
    test_images: Optional[int],
    level: float = 0.95,
    comparisons: int = 1,
) -> Optional[Comparison]:
    table = {
        n: {s: v for s, v in seeds.items() if reference in v and arm in v}
        for n, seeds in paired(records).items()
    }
    table = {n: seeds for n, seeds in sorted(table.items()) if seeds}
    if not table:
        return None
    width = max(len(seeds) for seeds in table.values())
    d = np.full((1, len(table), width), np.nan)
    for k, seeds in enumerate(table.values()):
        for j, s in enumerate(sorted(seeds)):
            d[0, k, j] = seeds[s][reference].top1 - seeds[s][arm].top1
    test_cov, products, part, missing = _test_part(table, reference, arm, runs, test_images)
    a = analyse(d, test_cov, np.array(list(table)), products, level)
    sizes = [
        SizeResult(
            n,
            sorted(seeds),
            [seeds[s][reference].top1 for s in sorted(seeds)],
            [seeds[s][arm].top1 for s in sorted(seeds)],
            a.direct.item(0, k),
            a.fitted.item(0, k),
        )
        for k, (n, seeds) in enumerate(table.items())
    ]
    trend = a.trend.item(0) if a.trend is not None else None
    seed_sd = float(np.sqrt(a.seed_var[0]))
    return Comparison(
        arm, sizes, a.average.item(0), trend, seed_sd, int(a.seed_df[0]), part, comparisons, missing
    )


def _test_part(
    table: dict[int, dict[int, dict[str, StudyRecord]]],
    reference: str,
    arm: str,
    runs: Optional[Path],
    test_images: Optional[int],
) -> tuple[np.ndarray, Optional[np.ndarray], str, list[str]]:
    """The test split's covariance across sizes (1, K, K), the per-image products it came from,
    how it was counted, and the runs whose per-image outcomes are missing."""
    kk = len(table)
    outcomes, missing = _outcomes(table, reference, arm, runs)
    if outcomes is not None:
        products = image_products(np.nan_to_num(outcomes)[None], ~np.isnan(outcomes[..., 0])[None])
        return image_covariance(products), products, "per-image", []
    if test_images:
        width = max(len(s) for s in table.values())
        top = np.full((2, 1, kk, width), np.nan)
        for k, seeds in enumerate(table.values()):
            for j, s in enumerate(sorted(seeds)):
                top[:, 0, k, j] = seeds[s][reference].top1, seeds[s][arm].top1
        return binomial_covariance(top[0], top[1], test_images), None, "binomial", missing
    return np.zeros((1, kk, kk)), None, "seeds only", missing


def _outcomes(
    table: dict[int, dict[int, dict[str, StudyRecord]]], reference: str, arm: str, runs: Optional[Path]
) -> tuple[Optional[np.ndarray], list[str]]:
    """(K, S, n) per-image differences in correctness (NaN: no such seed), or None and the runs
    whose files are missing (or disagree on the number of test images)."""
    if runs is None:
        return None, []
    loaded = {
        r.name: load_test_correct(runs / r.name)
        for seeds in table.values()
        for v in seeds.values()
        for r in (v[reference], v[arm])
    }
    missing = sorted(name for name, x in loaded.items() if x is None)
    lengths = {len(x) for x in loaded.values() if x is not None}
    if missing or len(lengths) != 1:
        return None, missing or sorted(loaded)
    width = max(len(s) for s in table.values())
    out = np.full((len(table), width, lengths.pop()), np.nan, dtype=np.float32)
    for k, seeds in enumerate(table.values()):
        for j, s in enumerate(sorted(seeds)):
            pair = seeds[s]
            out[k, j] = loaded[pair[reference].name].astype(np.float32) - loaded[pair[arm].name]
    return out, []


#: An interval that contains 0 and lies within +-this many points says the arms are equivalent.
EQUIVALENT_WITHIN = 2.0


def _span(c: Comparison) -> str:
    lo = c.sizes[0].images_per_class
    hi = c.sizes[-1].images_per_class
    return f"at {lo} images per class" if lo == hi else f"from {lo} to {hi} images per class"


def _where(c: Comparison) -> str:
    """Where a clear average holds: at every size when the line's interval at each leaves out 0
    on the same side, else on average over the sizes."""
    a = c.average
    if len(c.sizes) == 1:
        return _span(c)
    if all(s.fitted.clear and s.fitted.low * a.low > 0 for s in c.sizes):
        return f"at every size {_span(c)}"
    return f"on average {_span(c)}"


def _claim(c: Comparison) -> str:
    """What the pooled interval supports about ConViT against one arm."""
    a = c.average
    other = _label(c.arm)
    iv = f"{a.estimate:+.1f} points [{a.low:+.1f}, {a.high:+.1f}]"
    if not a.known:
        return f"ConViT minus {other} is {a.estimate:+.1f} points {_span(c)} (one seed: no interval)"
    if a.high - a.low < 1e-9:
        # every run pair differed by the same amount on the same images: a noise estimate of 0
        # is not evidence of no noise, so no interval (and no claim) is made from it
        return (
            f"ConViT minus {other} is {a.estimate:+.1f} points {_span(c)} in every run "
            "(no spread over seeds or test images to estimate the noise from: no interval)"
        )
    if a.clear:
        word = "ahead of" if a.estimate > 0 else "behind"
        text = f"ConViT is {word} {other} {_where(c)}, {iv}"
    elif max(-a.low, a.high) <= EQUIVALENT_WITHIN:
        # the bound is >= 0 here (the interval holds 0); abs() keeps a rounded zero from printing "-0.0"
        bound = abs(max(-a.low, a.high))
        text = f"ConViT and {other} are within ±{bound:.1f} points of each other {_span(c)} ({iv})"
    else:
        text = f"no clear difference between ConViT and {other} {_span(c)} ({iv}, width {a.high - a.low:.1f})"
    t = c.trend
    if t is not None and t.clear:
        text += f", the difference changing by {t.estimate:+.1f} [{t.low:+.1f}, {t.high:+.1f}] per doubling"
    return text


def _label(arm: str) -> str:
    return {"convit": "ConViT", "deit": "DeiT", "resnet": "ResNet"}.get(arm, arm)


def _detail(comparisons: Sequence[Comparison]) -> str:
    """How the intervals were made, and what they leave out."""
    seeds = sorted({s.n for c in comparisons for s in c.sizes})
    n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    c = comparisons[0]
    level = 100 * (1 - 0.05 / c.comparisons)
    over = {"per-image": "seeds and test images", "binomial": "seeds and test images (binomial)"}
    parts = [f"{n} seed{'s' if seeds[-1] > 1 else ''}, {len(c.sizes)} size{'s' if len(c.sizes) > 1 else ''}"]
    parts.append(f"{level:.4g}% intervals over {over.get(c.test_part, 'seeds')}")
    if c.comparisons > 1:
        parts.append(f"Bonferroni for {c.comparisons} comparisons")
    missing = sorted({m for c in comparisons for m in c.missing})
    if missing:
        parts.append(
            f"{TEST_CORRECT_FILE} missing for {len(missing)} run(s): the test split's own noise left out"
        )
    return "; ".join(parts)


def sentence(comparisons: Sequence[Comparison]) -> str:
    """One sentence over every comparison, e.g. "ConViT is ahead of DeiT at every size from 10
    to 250 images per class, +4.1 points [+2.9, +5.3] (3 seeds, 4 sizes; 95% intervals over
    seeds and test images)."; it never claims more than the intervals support."""
    if not comparisons:
        return "No verdict yet: no size has finished runs of both models."
    text = "; ".join(_claim(c) for c in comparisons)
    return f"{text[0].upper()}{text[1:]} ({_detail(comparisons)})."


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
