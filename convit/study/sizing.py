"""How many images per class a study compares, and for how many epochs, within its budget.

The largest size is all of the smallest class unless that does not fit the budget with at least
:data:`EPOCHS_FLOOR` epochs at that size, in which case the largest size shrinks; smaller sizes
are about 3x apart down to :data:`MIN_IMAGES`, each trained ``E / f`` epochs (as the paper does).
Run times come from :func:`convit.study.timing.run_seconds`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

from .plan_schema import Level
from .timing import Timing, run_seconds

__all__ = ["MIN_IMAGES", "EPOCHS_FLOOR", "EPOCHS_MAX", "size_study", "check_sizes"]

#: The smallest size compared, images per class (unless ``--sizes`` says otherwise).
MIN_IMAGES = 10
#: Epochs at the largest size: at least this many (else the largest size shrinks), at most the max.
EPOCHS_FLOOR, EPOCHS_MAX = 10, 40


def _level_sizes(top: int, low: int) -> list[int]:
    """Up to 4 sizes from ``low`` to ``top`` images per class, about 3x apart."""
    if top < 2 * low:
        return [top]
    n = min(4, 1 + int(math.log(top / low) / math.log(3)))
    n = max(n, 2)
    return sorted({int(round(low * (top / low) ** (i / (n - 1)))) for i in range(n)})


def _levels(sizes: list[int], smallest: int, epochs_top: int) -> list[Level]:
    """Each size's epochs, ``epochs_top`` at the largest and ``E / f`` below (as the paper does)."""
    top = max(sizes)
    out = []
    for n in sizes:
        epochs = max(1, int(round(epochs_top * top / n)))
        warmup = min(max(0.5, epochs_top / 10) * top / n, epochs / 2)
        out.append(Level(images_per_class=n, fraction=n / smallest, epochs=epochs, warmup_epochs=warmup))
    return out


def _study_seconds(
    levels: list[Level],
    counts: dict[str, int],
    timing: Timing,
    seeds: int,
    jobs: int,
    test_images: int,
) -> float:
    """Estimated wall time of every run, ``jobs`` at a time."""
    total = 0.0
    for lv in levels:
        train_images = sum(max(1, round(lv.fraction * n)) for n in counts.values())
        for arm in timing.train_s:
            total += seeds * run_seconds(
                timing, arm, train_images=train_images, epochs=lv.epochs, test_images=test_images
            )
    return total / max(1, jobs)


def size_study(
    counts: dict[str, int],
    timing: Timing,
    *,
    available_s: float,
    seeds: int,
    jobs: int,
    test_images: int,
    sizes: Optional[Sequence[int]] = None,
) -> tuple[list[Level], float]:
    """The sizes compared and their epochs, as many epochs (up to :data:`EPOCHS_MAX`) as fit
    ``available_s``; the largest size shrinks until :data:`EPOCHS_FLOOR` epochs fit.  Returns
    (levels, estimated seconds); a budget too small for even the smallest study is a ValueError."""
    smallest = min(counts.values())
    tops = [smallest] if sizes else []
    t = smallest
    while not sizes and t >= MIN_IMAGES:
        tops.append(t)
        t = int(t * 0.75)
    tops = tops or [smallest]
    for top in tops:
        floor = 1 if top == tops[-1] else EPOCHS_FLOOR
        lv_sizes = sorted(int(s) for s in sizes) if sizes else _level_sizes(top, min(MIN_IMAGES, top))
        for epochs_top in range(EPOCHS_MAX, floor - 1, -1):
            levels = _levels(lv_sizes, smallest, epochs_top)
            est = _study_seconds(levels, counts, timing, seeds, jobs, test_images)
            if est <= available_s:
                return levels, est
    levels = _levels([min(MIN_IMAGES, smallest)] if not sizes else [min(sizes)], smallest, 1)
    need = _study_seconds(levels, counts, timing, seeds, jobs, test_images)
    raise ValueError(
        f"the budget is too small: even the smallest study ({len(timing.train_s) * seeds} runs of 1 epoch at "
        f"{levels[0].images_per_class} images per class) needs about {need / 0.8:.0f} s"
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
