"""A study's runs (what the plan asks of each) and their records (each run's ``result.json``).

:class:`StudyRun` is one training run of the plan; :class:`StudyRecord` is what it gave, written
to and read from ``result.json`` in the format of the first studies (:meth:`StudyRecord.to_json`
keeps its keys and their order, the validation keys of version-2 plans' runs after them).  The
verdict, the report and results.csv read records only.

Whether a run had converged (:func:`convit.training.convergence.check_convergence` on its
validation curve) is :attr:`StudyRecord.converged`; :func:`cut_short_note` is the clause a
verdict adds when some runs had not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ..training.convergence import Convergence

__all__ = ["StudyRun", "StudyRecord", "RECORD_KEYS", "unconverged", "cut_short_note", "CUT_SHORT"]

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
    "val_top1",
    "val_curve",
    "convergence",
)
#: The clause a verdict ends with when runs stopped while still improving (``{k}`` of ``{n}``).
CUT_SHORT = (
    "runs were cut short by the budget ({k} of {n} still improving on validation at the end); "
    "longer training may change this"
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
    nonlocality per layer and head), None when the run logged none.  val_top1 / val_curve:
    the final validation top-1 and (epoch, top-1) at every evaluation; convergence: the check
    of that curve (None: the run had no validation split, or too few evaluations)."""

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
    val_top1: Optional[float] = None
    val_curve: Optional[list[tuple[int, float]]] = None
    convergence: Optional[Convergence] = None
    note: Optional[str] = None  # e.g. "retried with micro-batch 16 x 2" after running out of memory

    @property
    def converged(self) -> Optional[bool]:
        """Whether the run had converged on validation; None when it was not checked."""
        return None if self.convergence is None else self.convergence.converged

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
        out = {k: getattr(self, k) for k in RECORD_KEYS}
        out["val_curve"] = [list(pt) for pt in self.val_curve] if self.val_curve is not None else None
        out["convergence"] = self.convergence.to_json() if self.convergence else None
        if self.note is not None:  # only then: result.json keeps its keys otherwise
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], status: Optional[str] = None) -> StudyRecord:
        """A record read from result.json (``status`` replaces the stored one when given)."""
        known = {k: d[k] for k in (*RECORD_KEYS, "note") if k in d}
        if status is not None:
            known["status"] = status
        if known.get("val_curve") is not None:
            known["val_curve"] = [(int(e), float(v)) for e, v in known["val_curve"]]
        if known.get("convergence") is not None:
            known["convergence"] = Convergence.from_json(known["convergence"])
        return cls(**known)


def unconverged(records: Sequence[StudyRecord]) -> list[StudyRecord]:
    """The runs checked and found still improving on validation when they stopped."""
    return [r for r in records if r.converged is False]


def cut_short_note(records: Sequence[StudyRecord]) -> Optional[str]:
    """:data:`CUT_SHORT` when some checked runs had not converged, else None (the clause a
    verdict sentence ends with)."""
    checked = [r for r in records if r.converged is not None]
    late = unconverged(records)
    return CUT_SHORT.format(k=len(late), n=len(checked)) if late else None
