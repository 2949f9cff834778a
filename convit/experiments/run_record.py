"""The record of one finished run of a sweep (its ``result.json``), read and written as before.

:class:`RunRecord` holds what :func:`convit.experiments.runner.execute_run` learnt from a run:
the spec (grid, preset, variant, fraction, seed, settings), the final model's test and
validation top-1, the best validation top-1 (for information; nothing is selected on it), the
times, and the evaluated epochs of its log (metrics and locality).  ``to_json`` / ``from_json``
keep the file's keys; records written before a field existed read with its default.
``skipped`` (found finished rather than trained now) is not stored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from safetensors import safe_open

from ..core.fileio import read_jsonl
from .sweep_plan import RunSpec

__all__ = ["RunRecord", "RunTimes", "finished_record"]


@dataclass
class RunRecord:
    """One run's result.json (see the module's docstring); ``label`` defaults to the variant."""

    grid: str
    preset: str
    variant: str
    fraction: float
    seed: int
    label: str = ""
    role: Optional[str] = None
    baseline: bool = False
    settings: Optional[dict[str, Any]] = None
    test_top1: Optional[float] = None
    test_top5: Optional[float] = None
    val_top1: Optional[float] = None
    best_val_top1: Optional[float] = None
    best_epoch: Optional[int] = None
    epochs: Optional[int] = None
    train_images: Optional[int] = None
    params: Optional[int] = None
    images_per_class: Optional[float] = None
    wall_s: Optional[float] = None
    cpu_s: Optional[float] = None
    resumed: bool = False
    finished: Optional[str] = None
    epochs_cpu_s: Optional[float] = None  # every attempt's epochs (cpu_s: the last attempt's)
    evals: list[dict[str, Any]] = field(default_factory=list)  # log entries of evaluated epochs
    # every start of the run (the run folder's provenance.json): data files' SHA-256, commit, versions
    provenance: Optional[list[dict[str, Any]]] = None
    skipped: bool = False

    def __post_init__(self) -> None:
        self.label = self.label or self.variant

    @property
    def cpu_seconds(self) -> float:
        """The run's CPU time: the larger of its last attempt's and its epochs' over every attempt."""
        return max(float(self.cpu_s or 0), float(self.epochs_cpu_s or 0))

    def to_json(self) -> dict[str, Any]:
        """The result.json object (``skipped`` left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "skipped"}

    @classmethod
    def from_json(cls, d: dict[str, Any], skipped: bool = False) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"skipped"}
        known = {k: v for k, v in d.items() if k in names}
        known["evals"] = known.get("evals") or []
        return cls(**known, skipped=skipped)

    @classmethod
    def read(cls, path: Path, skipped: bool = True) -> RunRecord:
        return cls.from_json(json.loads(Path(path).read_text()), skipped=skipped)


@dataclass(frozen=True)
class RunTimes:
    """How long the fit took: wall and process CPU seconds of this attempt; whether it resumed."""

    wall_s: float
    cpu_s: float
    resumed: bool


def finished_record(spec: RunSpec, planned: dict[str, Any], result: Any, times: RunTimes) -> RunRecord:
    """The record of ``spec``'s run after a fit that returned ``result`` (a FitResult), with the
    facts read from its folder (parameters and classes of model.safetensors, log.jsonl)."""
    facts = _model_facts(spec.folder)
    log = _log_entries(spec.folder)
    per_class = result.train_images / facts["classes"] if facts["classes"] and result.train_images else None
    return RunRecord(
        grid=spec.grid,
        preset=spec.preset,
        variant=spec.variant.name,
        label=spec.variant.label,
        role=spec.variant.role,
        baseline=spec.variant.baseline,
        fraction=spec.fraction,
        seed=spec.seed,
        settings=planned,
        test_top1=result.test_top1,
        test_top5=result.test_top5,
        val_top1=result.val_top1,
        best_val_top1=result.best_val_top1,
        best_epoch=result.best_epoch,
        epochs=result.epochs,
        train_images=result.train_images,
        params=facts["params"],
        images_per_class=per_class,
        wall_s=times.wall_s,
        cpu_s=times.cpu_s,
        resumed=times.resumed,
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        epochs_cpu_s=sum(e.get("epoch_cpu_time_s", 0.0) for e in log),
        evals=[e for e in log if "val_top1" in e or "test_top1" in e],
        provenance=_starts(spec.folder),
    )


def _starts(folder: Path) -> Optional[list[dict[str, Any]]]:
    """The run's starts from its provenance.json (None for a fit that wrote none)."""
    path = folder / "provenance.json"
    return json.loads(path.read_text())["starts"] if path.is_file() else None


def _log_entries(folder: Path) -> list[dict[str, Any]]:
    """The run's log.jsonl, read once (none when the fit wrote no log): result.json keeps its evaluated
    epochs and CPU time, so a sweep folder can keep result.json alone and drop the per-epoch log."""
    path = folder / "log.jsonl"
    return read_jsonl(path) if path.is_file() else []


#: Buffers of a batch norm (the CNN arm's) that a model file holds beside its parameters.
_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _model_facts(folder: Path) -> dict[str, Optional[int]]:
    """Parameter count and number of classes of the run's final model (model.safetensors: every
    tensor but batch-norm statistics)."""
    path = folder / "model.safetensors"
    facts: dict[str, Optional[int]] = {"params": None, "classes": None}
    if not path.is_file():
        return facts
    try:
        with safe_open(str(path), "pt") as f:
            n = 0
            for k in f.keys():
                if k.rpartition(".")[2] in _NORM_STATISTICS:
                    continue
                shape = f.get_slice(k).get_shape()
                n += math.prod(shape) if shape else 1
            facts["params"] = n
            names = json.loads((f.metadata() or {}).get("class_names", "null"))
            facts["classes"] = len(names) if names else None
    except Exception:  # nice to have; never fail a finished run over it
        pass
    return facts
