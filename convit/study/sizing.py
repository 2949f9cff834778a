"""How many images per class a study compares, for how many epochs, with how many seeds, and
the validation hold-out its runs are judged on, within its budget.

**Validation.**  Each run holds out :data:`VAL_FRACTION` of every class of its training data
(at most :data:`VAL_CAP` images of the largest class, at least one of the smallest) through
``TrainConfig.val_fraction`` (the data layer's seeded hold-out, before subsampling), and is
evaluated on it about :data:`EVAL_POINTS` times, so that
:func:`convit.training.convergence.check_convergence` can say whether it had converged.  The
test split is never used for that.  A size the smallest class cannot spare the hold-out for
(it needs every image of the class) trains without one: the runs at the other sizes are then
its pilot, and the plan says so.

**Sizes and epochs.**  The largest size is all of the smallest class (after the hold-out) unless
that does not fit the budget with at least :data:`EPOCHS_FLOOR` epochs at that size, in which
case the largest size shrinks; smaller sizes are about 3x apart down to :data:`MIN_IMAGES`,
each trained ``E / f`` epochs (as the paper does, so every size takes as many steps).  ``E`` is
as large as the budget allows, up to :data:`EPOCHS_MAX` epochs or :data:`STEPS_TARGET` steps
at the largest size, whichever is more: small data needs many epochs to converge.

**Seeds.**  Unless given, :data:`SEEDS_DEFAULT` when they fit the budget with at least the
epochs floor (else fewer), and more, up to :data:`SEEDS_MAX`, while every run can still train
its full length within half the budget: with 2 seeds the 95 % interval is 12.7 standard
errors wide (:mod:`convit.study.power`).  The other half is kept for training the sizes whose
runs are still improving on validation for longer (:mod:`convit.study.extend`).  Run times
come from :func:`convit.study.timing.run_seconds`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..data.splits import holdout_per_class
from .plan_schema import Level
from .timing import Timing, run_seconds

__all__ = [
    "MIN_IMAGES",
    "EPOCHS_FLOOR",
    "EPOCHS_MAX",
    "STEPS_TARGET",
    "VAL_FRACTION",
    "VAL_CAP",
    "EVAL_POINTS",
    "SEEDS_DEFAULT",
    "SEEDS_MAX",
    "Validation",
    "Sizing",
    "validation_split",
    "size_study",
    "check_sizes",
]

#: The smallest size compared, images per class (unless ``--sizes`` says otherwise).
MIN_IMAGES = 10
#: Epochs at the largest size: at least this many (else the largest size shrinks), at most the max
#: (or :data:`STEPS_TARGET` steps).
EPOCHS_FLOOR = 10
EPOCHS_MAX = 40
#: Optimizer steps the largest size may train for when the budget allows: the cifar10-cpu sweep
#: at 500 images was still 1.3 points short of converged after 2,800 steps (docs/results.md).
STEPS_TARGET = 3000
#: The validation hold-out: this fraction of each class, at most the cap of the largest class.
VAL_FRACTION = 0.1
VAL_CAP = 100
#: Validation evaluations per run (about): enough for one at the start of its last quarter.
EVAL_POINTS = 8
#: Seeds when ``--seeds`` is not given: this many when they fit, up to the max with budget to spare.
SEEDS_DEFAULT = 3
SEEDS_MAX = 6


@dataclass(frozen=True)
class Validation:
    """The validation hold-out of a study's runs: ``fraction`` of each class (0: none), giving
    ``per_class`` images of each."""

    fraction: float
    per_class: dict[str, int]

    @property
    def images(self) -> int:
        return sum(self.per_class.values())

    def pool(self, counts: dict[str, int]) -> dict[str, int]:
        """The training images per class left after the hold-out."""
        return {c: n - self.per_class.get(c, 0) for c, n in counts.items()}


@dataclass(frozen=True)
class Sizing:
    """What :func:`size_study` decided: the sizes with their epochs, the seeds, the estimate."""

    levels: list[Level]
    seeds: int
    estimate_s: float


def validation_split(counts: dict[str, int]) -> Validation:
    """The hold-out of ``counts`` (training images per class): :data:`VAL_FRACTION`, at most
    :data:`VAL_CAP` of the largest class, at least one of the smallest; none when a class has
    fewer than 2 images.  The per-class counts are those of
    :func:`convit.data.splits.holdout_per_class` (whatever the seed)."""
    smallest = min(counts.values())
    largest = max(counts.values())
    if smallest < 2:
        return Validation(0.0, {c: 0 for c in counts})
    fraction = min(0.5, max(min(VAL_FRACTION, VAL_CAP / largest), 1.0 / smallest))
    labels = np.repeat(np.arange(len(counts)), list(counts.values()))
    _, held = holdout_per_class(labels, fraction, 0)
    per_class = np.bincount(labels[held], minlength=len(counts))
    return Validation(fraction, {c: int(k) for c, k in zip(counts, per_class)})


def _level_sizes(top: int, low: int) -> list[int]:
    """Up to 4 sizes from ``low`` to ``top`` images per class, about 3x apart."""
    if top < 2 * low:
        return [top]
    n = min(4, 1 + int(math.log(top / low) / math.log(3)))
    n = max(n, 2)
    return sorted({int(round(low * (top / low) ** (i / (n - 1)))) for i in range(n)})


@dataclass(frozen=True)
class _Study:
    """What the sizing works from: training images per class (before and after the hold-out),
    the hold-out, the timing, and the run's fixed costs."""

    counts: dict[str, int]
    val: Validation
    timing: Timing
    jobs: int
    test_images: int
    batch: int
    sizes: Optional[list[int]]

    @property
    def pool(self) -> dict[str, int]:
        return self.val.pool(self.counts)


def _level(study: _Study, n: int, epochs: int, warmup: float) -> Level:
    """Size ``n`` with its epochs: validated when the smallest class can spare the hold-out."""
    smallest = min(study.counts.values())
    spare = min(study.pool.values())
    if study.val.fraction == 0 or n > spare:
        return Level(n, n / smallest, epochs, warmup)
    every = max(1, math.ceil(epochs / EVAL_POINTS))
    return Level(n, n / spare, epochs, warmup, study.val.fraction, study.val.images, every)


def _levels(study: _Study, sizes: list[int], epochs_top: int) -> list[Level]:
    """Each size's epochs, ``epochs_top`` at the largest and ``E / f`` below (as the paper does)."""
    top = max(sizes)
    out = []
    for n in sizes:
        epochs = max(1, int(round(epochs_top * top / n)))
        warmup = min(max(0.5, epochs_top / 10) * top / n, epochs / 2)
        out.append(_level(study, n, epochs, warmup))
    return out


def _train_images(study: _Study, lv: Level) -> int:
    """The training images of a run at ``lv`` (``round(f n_c)`` of each class, at least one)."""
    base = study.pool if lv.val_fraction else study.counts
    return sum(max(1, round(min(1.0, lv.fraction) * n)) for n in base.values())


def _evaluations(lv: Level) -> int:
    """Validation evaluations of a run at ``lv``: every ``eval_every`` epochs and at the end."""
    if not lv.val_images or lv.eval_every is None:
        return 0
    return lv.epochs // lv.eval_every + (lv.epochs % lv.eval_every != 0)


def _study_seconds(study: _Study, levels: list[Level], seeds: int) -> float:
    """Estimated wall time of every run, ``jobs`` at a time."""
    total = 0.0
    for lv in levels:
        for arm in study.timing.train_s:
            total += seeds * run_seconds(
                study.timing,
                arm,
                train_images=_train_images(study, lv),
                epochs=lv.epochs,
                test_images=study.test_images,
                val_images=lv.val_images,
                evals=_evaluations(lv),
            )
    return total / max(1, study.jobs)


def _epochs_cap(study: _Study, sizes: list[int]) -> int:
    """Epochs at the largest size: :data:`EPOCHS_MAX`, or :data:`STEPS_TARGET` steps if more."""
    images = _train_images(study, _levels(study, sizes, 1)[-1])
    return max(EPOCHS_MAX, math.ceil(STEPS_TARGET * study.batch / max(1, images)))


def _most(fits: Callable[[int], bool], lo: int, hi: int) -> Optional[int]:
    """The largest ``e`` in ``[lo, hi]`` with ``fits(e)`` (``fits`` true up to some point), or None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


@dataclass(frozen=True)
class _Fit:
    """A study that fits: its levels and estimate; ``full``: at least the epochs floor at the
    largest size; ``capped``: the epochs cap, not the budget, limited it."""

    levels: list[Level]
    estimate_s: float
    full: bool
    capped: bool


def _tops(study: _Study) -> list[int]:
    """The largest sizes tried, in order: all of the smallest class (after the hold-out when it
    can spare one at the smallest size compared), then shrinking by a quarter each time."""
    if study.sizes:
        return [max(study.sizes)]
    spare = min(study.pool.values())
    t = spare if study.val.fraction and spare >= MIN_IMAGES else min(study.counts.values())
    tops = []
    while t >= MIN_IMAGES:
        tops.append(t)
        t = int(t * 0.75)
    return tops or [min(study.counts.values())]


def _fit_sizes(study: _Study, sizes: list[int], seeds: int, available_s: float, floor: int) -> Optional[_Fit]:
    """``sizes`` with the most epochs (``floor`` at least) that fit ``available_s``, or None."""
    cap = _epochs_cap(study, sizes)
    best = _most(lambda e: _study_seconds(study, _levels(study, sizes, e), seeds) <= available_s, floor, cap)
    if best is None:
        return None
    levels = _levels(study, sizes, best)
    return _Fit(levels, _study_seconds(study, levels, seeds), best >= EPOCHS_FLOOR, best == cap)


def _fit(study: _Study, seeds: int, available_s: float) -> Optional[_Fit]:
    """The largest sizes and the most epochs of ``seeds`` seeds that fit ``available_s``, or None."""
    tops = _tops(study)
    for top in tops:
        floor = 1 if top == tops[-1] else EPOCHS_FLOOR
        sizes = sorted(study.sizes) if study.sizes else _level_sizes(top, min(MIN_IMAGES, top))
        fit = _fit_sizes(study, sizes, seeds, available_s, floor)
        if fit is not None:
            return fit
    return None


def _choose_seeds(study: _Study, available_s: float) -> tuple[int, Optional[_Fit]]:
    """:data:`SEEDS_DEFAULT` seeds when they fit with the epochs floor (else the most that do,
    else the most that fit at all), then more while every run keeps its full length within half
    the budget."""
    fits = {s: _fit(study, s, available_s) for s in range(SEEDS_DEFAULT, 0, -1)}
    seeds = next((s for s, f in fits.items() if f and f.full), None)
    seeds = seeds or next((s for s, f in fits.items() if f), 1)
    chosen = fits[seeds]
    while chosen is not None and chosen.capped and seeds < SEEDS_MAX:
        # half the budget stays for training sizes still improving for longer (study.extend)
        more = _fit(study, seeds + 1, available_s / 2)
        if more is None or not more.capped or more.levels != chosen.levels:
            break
        seeds, chosen = seeds + 1, more
    return seeds, chosen


def size_study(
    counts: dict[str, int],
    timing: Timing,
    *,
    available_s: float,
    seeds: Optional[int],
    jobs: int,
    test_images: int,
    batch: int = 32,
    sizes: Optional[Sequence[int]] = None,
    val: Optional[Validation] = None,
) -> Sizing:
    """The sizes compared, their epochs and the seeds (``seeds``, or chosen when None) that fit
    ``available_s`` (see the module's docstring); ``val``: the hold-out (default
    :func:`validation_split` of ``counts``).  A budget too small for even the smallest study is
    a ValueError."""
    val = validation_split(counts) if val is None else val
    study = _Study(counts, val, timing, jobs, test_images, batch, sorted(int(s) for s in sizes or []) or None)
    if seeds is None:
        seeds, fit = _choose_seeds(study, available_s)
    else:
        fit = _fit(study, seeds, available_s)
    if fit is not None:
        return Sizing(fit.levels, seeds, fit.estimate_s)
    smallest = min(counts.values())
    wanted = study.sizes or [min(MIN_IMAGES, smallest)]
    levels = _levels(study, wanted, 1)
    need = _study_seconds(study, levels, seeds)
    runs = len(timing.train_s) * seeds * len(wanted)
    raise ValueError(
        f"the budget is too small: even the smallest study ({runs} runs, 1 epoch at "
        f"{max(wanted)} images per class, E / f at smaller sizes) needs about {need:.0f} s of training "
        f"and {max(0.0, available_s):.0f} s were left for it; give a larger --budget"
    )


def check_sizes(
    counts: dict[str, int], sizes: Optional[Sequence[int]], held: Optional[dict[str, list[str]]]
) -> None:
    need = min(sizes) if sizes else MIN_IMAGES
    small = min(counts, key=counts.get)
    if counts[small] < need or (sizes and max(sizes) > counts[small]):
        held_txt = f" after holding out {len(held[small])} for testing" if held else ""
        need_txt = (
            f"the smallest size compared needs {need}"
            if counts[small] < need
            else f"the largest size asked for needs {max(sizes)}"
        )
        raise ValueError(
            f"class {small!r} has {counts[small]} training images{held_txt}; {need_txt} per class"
        )
