"""The plan of a study as typed objects, and their ``plan.json`` form.

:class:`Plan` holds what :func:`convit.study.plan.make_plan` decided: the request, the data, the
model arms, the sizes compared (:class:`Level`), the seeds, the recipe and the timing.
``Plan.to_json()`` writes, and ``Plan.from_json()`` reads, exactly the ``plan.json`` format of
:data:`PLAN_VERSION` 1, so a plan written before these classes existed still gives the same runs.

The models are any number of named arms (:class:`Arm`).  In the JSON they sit beside the shared
input sizes under ``"model"`` (``{"resolution", "patch_size", "grid", "params", <arm>: {...}}``),
each arm's parameter count under ``"params"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .timing import Timing

__all__ = [
    "PLAN_VERSION",
    "PlanRequest",
    "Holdout",
    "PlanData",
    "Arm",
    "PlanModels",
    "Level",
    "Plan",
    "label",
]

PLAN_VERSION = 1
#: How the report and the summary name an arm (other arms: their own name).
ARM_LABELS = {"convit": "ConViT", "deit": "DeiT"}
#: The keys of the JSON's ``"model"`` object that are not arms.
_SHARED_MODEL_KEYS = ("resolution", "patch_size", "grid", "params")


def label(arm: str) -> str:
    """The printed name of arm ``arm`` (``ConViT`` for ``convit``)."""
    return ARM_LABELS.get(arm, arm)


def _fields_json(obj: Any) -> dict[str, Any]:
    """A flat dataclass as a dict, in field order (a shallow copy: nested lists stay shared)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for: a study folder's plan is reused when this is the same."""

    data: str
    budget_s: float
    seeds: int
    jobs: int
    sizes: Optional[list[int]]
    threads: int
    data_path: Optional[str]

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PlanRequest:
        return cls(**d)


@dataclass(frozen=True)
class Holdout:
    """The held-out test split of data without one: a fraction of each class, capped, by seed."""

    fraction: float
    cap: int
    seed: int


@dataclass
class PlanData:
    """The data of a study.  kind: ``folder`` or ``builtin``; counts: training images per class;
    train_files / test_files: per class, paths relative to ``root`` (folders; test_files is the
    held-out split when ``holdout`` is set)."""

    kind: str
    name: str
    root: Optional[str]
    data_path: Optional[str]
    classes: list[str]
    counts: dict[str, int]
    test_from: str
    test_images: int
    size: list[int]
    channels: int
    holdout: Optional[Holdout]
    train_files: Optional[dict[str, list[str]]]
    test_files: Optional[dict[str, list[str]]]

    def to_json(self) -> dict[str, Any]:
        d = _fields_json(self)
        d["holdout"] = dataclasses.asdict(self.holdout) if self.holdout else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PlanData:
        holdout = Holdout(**d["holdout"]) if d.get("holdout") else None
        return cls(**dict(d, holdout=holdout))


@dataclass
class Arm:
    """One model compared: its zoo name, every ConViTConfig field but those taken from the data,
    and its parameter count."""

    name: str
    model: str
    model_kwargs: dict[str, Any]
    params: int

    @property
    def label(self) -> str:
        return label(self.name)


@dataclass
class PlanModels:
    """The input sizes every arm shares, and the arms in the plan's order."""

    resolution: int
    patch_size: int
    grid: int
    arms: list[Arm]

    def arm(self, name: str) -> Arm:
        """The arm called ``name`` (KeyError when the plan has none)."""
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"the plan has no arm {name!r}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resolution": self.resolution,
            "patch_size": self.patch_size,
            "grid": self.grid,
            "params": {a.name: a.params for a in self.arms},
        }
        for a in self.arms:
            out[a.name] = {"model": a.model, "model_kwargs": a.model_kwargs}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PlanModels:
        arms = [
            Arm(name, v["model"], v["model_kwargs"], d["params"][name])
            for name, v in d.items()
            if name not in _SHARED_MODEL_KEYS
        ]
        return cls(d["resolution"], d["patch_size"], d["grid"], arms)


@dataclass(frozen=True)
class Level:
    """One size compared: images per class (a fraction of the smallest class), its epochs."""

    images_per_class: int
    fraction: float
    epochs: int
    warmup_epochs: float


@dataclass
class Plan:
    """A whole study: see the module's docstring.  recipe: every TrainConfig field the runs
    share (the run's own ones -- seed, epochs, model, output -- left out)."""

    version: int
    request: PlanRequest
    data: PlanData
    model: PlanModels
    levels: list[Level]
    seeds: list[int]
    recipe: dict[str, Any]
    threads: int
    timing: Timing
    estimate_s: float

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.model.arms]

    def to_json(self) -> dict[str, Any]:
        """The ``plan.json`` object, key for key as written since PLAN_VERSION 1."""
        return {
            "version": self.version,
            "request": self.request.to_json(),
            "data": self.data.to_json(),
            "model": self.model.to_json(),
            "levels": [_fields_json(lv) for lv in self.levels],
            "seeds": self.seeds,
            "recipe": self.recipe,
            "threads": self.threads,
            "timing": self.timing.to_dict(),
            "estimate_s": self.estimate_s,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {d.get('version')!r}: this convit reads version {PLAN_VERSION}")
        return cls(
            version=d["version"],
            request=PlanRequest.from_json(d["request"]),
            data=PlanData.from_json(d["data"]),
            model=PlanModels.from_json(d["model"]),
            levels=[Level(**lv) for lv in d["levels"]],
            seeds=list(d["seeds"]),
            recipe=dict(d["recipe"]),
            threads=d["threads"],
            timing=Timing(**d["timing"]),
            estimate_s=d["estimate_s"],
        )
