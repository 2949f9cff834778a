"""Training to convergence with the budget a study has left.

A plan fixes every run's epochs before any run, from timings alone; whether they were enough
shows only in the runs' validation curves (:func:`convit.training.convergence.check_convergence`,
the rule the science sweeps use too).  When a size has runs still improving on validation and
the budget left fits it, the study trains that size again -- every arm and seed, so the arms
stay paired on one schedule -- with twice the epochs (and twice the warm-up, so the schedule
keeps its shape), at most :data:`MAX_DOUBLINGS` times.  Sizes are taken in order of how far
their runs were from converged, each only when its estimated time fits what is left.

The decisions are kept in ``DIR/extensions.json`` (the plan itself never changes, so every
launcher still runs the same plan), one :class:`Extension` each; the runs they add are named
``<arm>-f<fraction>-s<seed>-e<epochs>`` and resume like any other.  The verdict compares, at
each size, the longest schedule that every arm and seed finished (:func:`verdict_records`);
the report shows every run's curve.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.fileio import atomic_save
from .plan import level_runs
from .plan_schema import Level, Plan
from .records import StudyRecord, StudyRun
from .sizing import EVAL_POINTS

__all__ = [
    "EXTENSIONS_FILE",
    "MAX_DOUBLINGS",
    "Extension",
    "load_extensions",
    "save_extensions",
    "extension_runs",
    "verdict_records",
    "next_extensions",
]

EXTENSIONS_FILE = "extensions.json"
#: At most this many doublings of a size's planned epochs (4x the plan).
MAX_DOUBLINGS = 2
#: Part of the budget kept back for the report and the estimate's error.
RESERVE_SHARE = 0.05


@dataclass(frozen=True)
class Extension:
    """One size trained again: its fraction (the plan level's), the new epochs, warm-up and
    evaluation interval, why (the runs still improving), and its estimated wall time."""

    fraction: float
    epochs: int
    warmup_epochs: float
    eval_every: Optional[int]
    reason: str
    estimate_s: float = 0.0

    def level(self, plan: Plan) -> Level:
        """The plan's level at this fraction with this schedule."""
        base = next(lv for lv in plan.levels if lv.fraction == self.fraction)
        return dataclasses.replace(
            base, epochs=self.epochs, warmup_epochs=self.warmup_epochs, eval_every=self.eval_every
        )


def load_extensions(study: Path) -> list[Extension]:
    """The extensions decided for ``study`` so far (none when the file is absent)."""
    path = study / EXTENSIONS_FILE
    if not path.is_file():
        return []
    return [Extension(**d) for d in json.loads(path.read_text())]


def save_extensions(study: Path, extensions: Sequence[Extension]) -> None:
    text = json.dumps([dataclasses.asdict(e) for e in extensions], indent=1)
    atomic_save(lambda p: p.write_text(text), study / EXTENSIONS_FILE, "json")


def extension_runs(plan: Plan, extensions: Sequence[Extension], data_path: Optional[str]) -> list[StudyRun]:
    """The runs the extensions add, seed-major like the plan's, named with their epochs."""
    out = []
    for ext in extensions:
        out += level_runs(plan, ext.level(plan), data_path, suffix=f"-e{ext.epochs}")
    return out


def verdict_records(records: Sequence[StudyRecord], plan: Plan) -> list[StudyRecord]:
    """At each size, the runs of the longest schedule that every arm and seed of the plan
    finished (the plan's own schedule otherwise): what the verdict compares."""
    wanted = {(arm, seed) for arm in plan.arm_names for seed in plan.seeds}
    out = []
    for lv in plan.levels:
        runs = [r for r in records if r.fraction == lv.fraction and r.epochs is not None]
        by_epochs: dict[int, list[StudyRecord]] = {}
        for r in runs:
            by_epochs.setdefault(r.epochs, []).append(r)
        complete = [e for e, rs in by_epochs.items() if {(r.variant, r.seed) for r in rs} >= wanted]
        chosen = max(complete) if complete else lv.epochs
        out += by_epochs.get(chosen, [])
    return out


def _shortfall(runs: Sequence[StudyRecord]) -> float:
    """How far a size's runs were from converged: the largest validation gain over the last
    quarter beyond its threshold (0 when all converged or none was checked)."""
    late = [r.convergence for r in runs if r.convergence is not None and not r.convergence.converged]
    return max((c.gain - c.threshold for c in late), default=0.0)


def _doubled(plan: Plan, runs: Sequence[StudyRecord], late: int, fraction: float, cost: float) -> Extension:
    lv = next(lv for lv in plan.levels if lv.fraction == fraction)
    epochs = 2 * runs[0].epochs
    every = max(1, math.ceil(epochs / EVAL_POINTS)) if lv.eval_every else None
    warmup = lv.warmup_epochs * epochs / lv.epochs
    why = (
        f"{late} of {len(runs)} runs at {lv.images_per_class} images per class "
        f"still improving at {runs[0].epochs} epochs"
    )
    return Extension(fraction, epochs, warmup, every, why, cost)


def next_extensions(
    plan: Plan, records: Sequence[StudyRecord], remaining_s: float, jobs: int
) -> list[Extension]:
    """The sizes to train again now: those whose runs (of the verdict's schedule) are still
    improving, below :data:`MAX_DOUBLINGS`, most unconverged first, while the estimated time
    (the runs' own seconds, doubled, ``jobs`` at a time) fits ``remaining_s`` less a reserve."""
    left = remaining_s - RESERVE_SHARE * plan.request.budget_s
    chosen = verdict_records(records, plan)
    candidates = []
    for lv in plan.levels:
        runs = [r for r in chosen if r.fraction == lv.fraction]
        late = sum(r.converged is False for r in runs)
        if not late or runs[0].epochs >= lv.epochs * 2**MAX_DOUBLINGS:
            continue
        cost = 2 * sum(r.seconds or 0.0 for r in runs) / max(1, jobs)
        candidates.append((_shortfall(runs), _doubled(plan, runs, late, lv.fraction, cost)))
    out = []
    for _, ext in sorted(candidates, key=lambda c: -c[0]):
        if ext.estimate_s <= left:
            out.append(ext)
            left -= ext.estimate_s
    return out
