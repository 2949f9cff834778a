"""A study's runs (what the plan asks of each) and their records (each run's ``result.json``).

:class:`StudyRun` is one training run of the plan; :class:`StudyRecord` is what it gave, written
to and read from ``result.json`` in the format of the first studies (:meth:`StudyRecord.to_json`
keeps its keys and their order).  The verdict, the report and results.csv read records only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["StudyRun", "StudyRecord", "RECORD_KEYS"]

#: The keys of a run's result.json, in their order there.
RECORD_KEYS = (
    "name",
    "variant",
    "fraction",
    "images_per_class",
    "seed",
    "epochs",
    "top1",
    "top5",
    "test_loss",
    "seconds",
    "train_images",
    "attempts",
    "resumed",
    "locality",
    "status",
)


@dataclass(frozen=True)
class StudyRun:
    """One run of a plan: its name (``<arm>-f<fraction>-s<seed>``), arm (``variant``), size,
    seed, epochs, and ``settings``: every TrainConfig field but output, resume and overwrite."""

    name: str
    variant: str
    fraction: float
    images_per_class: int
    seed: int
    epochs: int
    settings: dict[str, Any]


@dataclass(frozen=True)
class StudyRecord:
    """What a run gave.  status: ``trained`` (this call trained it), ``done`` (found finished) or
    ``busy`` (held by another process: only ``name`` is known).  top1 / top5 / test_loss: of the
    final model on the test split; locality: the last logged locality entry (gates and
    nonlocality per layer and head), None when the run logged none."""

    name: str
    status: str
    variant: Optional[str] = None
    fraction: Optional[float] = None
    images_per_class: Optional[int] = None
    seed: Optional[int] = None
    epochs: Optional[int] = None
    top1: Optional[float] = None
    top5: Optional[float] = None
    test_loss: Optional[float] = None
    seconds: Optional[float] = None
    train_images: Optional[int] = None
    attempts: int = 1
    resumed: bool = False
    locality: Optional[dict[str, Any]] = None

    @classmethod
    def for_run(cls, run: StudyRun, **results: Any) -> StudyRecord:
        """The record of ``run`` with ``results`` (top1, seconds, status, ...)."""
        return cls(
            name=run.name,
            variant=run.variant,
            fraction=run.fraction,
            images_per_class=run.images_per_class,
            seed=run.seed,
            epochs=run.epochs,
            **results,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RECORD_KEYS}

    @classmethod
    def from_json(cls, d: dict[str, Any], status: Optional[str] = None) -> StudyRecord:
        """A record read from result.json (``status`` replaces the stored one when given)."""
        known = {k: d[k] for k in RECORD_KEYS if k in d}
        if status is not None:
            known["status"] = status
        return cls(**known)
