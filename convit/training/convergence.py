"""One definition of a converged run, shared by ``convit study`` and the science sweeps.

A run has converged when its validation top-1 gained less than ``max(0.5 points, one standard
error of the validation accuracy)`` over the last quarter of the run, the standard error being
``100 * sqrt(p (1 - p) / n_val)`` points at the final accuracy ``p``.  A smaller gain is within
what another draw of the validation images could give, so more epochs would not be expected to
change the run's result by more than its noise; a larger one means the run stopped while still
improving.  Only validation top-1 is looked at: the test split is never used to judge a run.

The gain is the final evaluation minus the last evaluation at or before the start of the last
quarter (epoch ``3/4 * E`` of an ``E``-epoch run), so a run needs an evaluation there to be
judged: evaluate every ``ceil(E / 8)`` epochs or more often.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MIN_GAIN", "LAST_SHARE", "Convergence", "check_convergence", "val_curve", "can_judge"]

#: The smallest gain (points of top-1) that counts as still improving, whatever the noise.
MIN_GAIN = 0.5
#: The share of the run, at its end, over which the gain is measured.
LAST_SHARE = 0.25


@dataclass(frozen=True)
class Convergence:
    """The verdict on one run's validation curve: ``gain`` (points of validation top-1 over the
    last quarter, from ``start_epoch`` to ``end_epoch``) against ``threshold`` (points)."""

    converged: bool
    gain: float
    threshold: float
    start_epoch: int
    end_epoch: int
    val_images: int

    def to_json(self) -> dict[str, Any]:
        return {
            "converged": self.converged,
            "gain": self.gain,
            "threshold": self.threshold,
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
            "val_images": self.val_images,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Convergence:
        return cls(**d)


def val_curve(entries: Iterable[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(epoch, val_top1) of every evaluated epoch of a run's log.jsonl entries, in order."""
    return [(int(e["epoch"]), float(e["val_top1"])) for e in entries if "val_top1" in e]


def _start_point(curve: Sequence[tuple[int, float]]) -> tuple[int, float]:
    """The last evaluation at or before the start of the last quarter; ValueError when none."""
    end = curve[-1][0]
    start = end - LAST_SHARE * end
    before = [pt for pt in curve[:-1] if pt[0] <= start]
    if not before:
        raise ValueError(
            f"cannot judge convergence: no validation at or before epoch {start:g} of {end} "
            f"(evaluated at epochs {[e for e, _ in curve]})"
        )
    return before[-1]


def can_judge(curve: Sequence[tuple[int, float]]) -> bool:
    """Whether ``curve`` has an evaluation at or before the start of its last quarter."""
    if len(curve) < 2:
        return False
    try:
        _start_point(curve)
    except ValueError:
        return False
    return True


def check_convergence(curve: Sequence[tuple[int, float]], n_val: int) -> Convergence:
    """Whether the run of validation ``curve`` ((epoch, top-1 in %) per evaluation, in epoch
    order, the last at the run's end) on ``n_val`` validation images had converged."""
    if n_val < 1:
        raise ValueError(f"cannot judge convergence without validation images (n_val={n_val})")
    if len(curve) < 2:
        raise ValueError(f"cannot judge convergence from {len(curve)} evaluation(s)")
    start_epoch, start_top1 = _start_point(curve)
    end_epoch, end_top1 = curve[-1]
    p = min(max(end_top1 / 100.0, 0.0), 1.0)
    se = 100.0 * math.sqrt(p * (1.0 - p) / n_val)
    threshold = max(MIN_GAIN, se)
    gain = end_top1 - start_top1
    return Convergence(
        converged=gain < threshold,
        gain=gain,
        threshold=threshold,
        start_epoch=start_epoch,
        end_epoch=end_epoch,
        val_images=int(n_val),
    )
