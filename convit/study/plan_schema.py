"""The plan of a study as typed objects, and their ``plan.json`` form.

:class:`Plan` holds what :func:`convit.study.plan.make_plan` decided: the request, the data, the
model arms, the sizes compared (:class:`Level`), the seeds, the recipe, the timing and what the
study can resolve (:class:`~convit.study.power.Power`).  ``Plan.to_json()`` writes, and
``Plan.from_json()`` reads, the ``plan.json`` format of its version:

* version 1 (the first studies): read and written back byte for byte, so a plan written before
  gives the same runs and resumes;
* version 2: version 1's keys in their order, plus each level's validation hold-out
  (``val_fraction``, ``val_images``) and evaluation interval (``eval_every``), and ``power``
  at the end;
* version 3 (:data:`PLAN_VERSION`): version 2's keys, plus the models and resolution asked for
  and the device at the end of ``request``, each arm's GMACs (``model.gmacs``), and at the end
  the device the runs train on, their dtype, the device the timing was measured on and the
  plan's notes (what it changed or left out, arms that differ from ConViT).

The models are any number of named arms (:class:`Arm`).  In the JSON they sit beside the shared
input sizes under ``"model"`` (``{"resolution", "patch_size", "grid", "params", <arm>: {...}}``),
each arm's parameter count under ``"params"`` (and, from version 3, its GMACs under ``"gmacs"``).
A fine-tuning study (``--pretrained``) adds ``"pretrained": true`` to ``request`` and the weights
each arm starts from (``"weights"``) to its arm; both keys are written only when set.
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
    "READ_VERSIONS",
    "Power",
    "POWER",
    "label",
]

PLAN_VERSION = 3
#: The plan.json versions this code reads.
READ_VERSIONS = (1, 2, 3)
#: The power at which a plan states the difference it can resolve (:mod:`convit.study.power`).
POWER = 0.80
#: The keys of a level in version 1.
_LEVEL_V1_KEYS = ("images_per_class", "fraction", "epochs", "warmup_epochs")
#: How the report and the summary name an arm (other arms: their own name).
ARM_LABELS = {"convit": "ConViT", "deit": "DeiT", "resnet": "ResNet"}
#: The keys of the JSON's ``"model"`` object that are not arms.
_SHARED_MODEL_KEYS = ("resolution", "patch_size", "grid", "params", "gmacs")
#: The request's keys from version 3 on.
_REQUEST_V3_KEYS = ("models", "img_size", "device")


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
    seeds: Optional[int]  # None: chosen by the budget
    jobs: int
    sizes: Optional[list[int]]
    threads: int
    data_path: Optional[str]
    models: Optional[list[str]] = None  # zoo names (None: the default small pair and the CNN arm)
    img_size: Optional[int] = None  # None: chosen by the budget
    device: str = "cpu"  # where the runs train: cpu or cuda
    pretrained: bool = False  # fine-tune published weights (convit study --pretrained)

    def to_json(self, version: int = PLAN_VERSION) -> dict[str, Any]:
        d = _fields_json(self)
        if not self.pretrained:  # written only when set: older plans write back unchanged
            del d["pretrained"]
        return d if version >= 3 else {k: v for k, v in d.items() if k not in _REQUEST_V3_KEYS}

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
    """One model compared: its zoo name, every field of its architecture but those taken from
    the data, its parameter count and its multiply-accumulates per image in billions (None:
    not counted, as before version 3); ``weights``: the published weights a fine-tuning study's
    arm starts from (a zoo name, ``local-dir:PATH`` or ``hf-hub:ID``: what ``create_model(...,
    pretrained=True)`` loads; None: trained from scratch, as every plan before ``--pretrained``)."""

    name: str
    model: str
    model_kwargs: dict[str, Any]
    params: int
    gmacs: Optional[float] = None
    weights: Optional[str] = None

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

    def to_json(self, version: int = PLAN_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resolution": self.resolution,
            "patch_size": self.patch_size,
            "grid": self.grid,
            "params": {a.name: a.params for a in self.arms},
        }
        if version >= 3:
            out["gmacs"] = {a.name: a.gmacs for a in self.arms}
        for a in self.arms:
            out[a.name] = {"model": a.model, "model_kwargs": a.model_kwargs}
            if a.weights is not None:  # only fine-tuning arms: older plans write back unchanged
                out[a.name]["weights"] = a.weights
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PlanModels:
        arms = [
            Arm(
                name,
                v["model"],
                v["model_kwargs"],
                d["params"][name],
                d.get("gmacs", {}).get(name),
                v.get("weights"),
            )
            for name, v in d.items()
            if name not in _SHARED_MODEL_KEYS
        ]
        return cls(d["resolution"], d["patch_size"], d["grid"], arms)


@dataclass(frozen=True)
class Level:
    """One size compared: images per class (``fraction``: the sampling ratio giving that many of
    the smallest class, after the validation hold-out), its epochs; the validation hold-out of
    its runs (``val_fraction`` of each class, ``val_images`` in all; 0 for none) and how often
    they are evaluated on it (``eval_every``; None: at the end only, as version 1)."""

    images_per_class: int
    fraction: float
    epochs: int
    warmup_epochs: float
    val_fraction: float = 0.0
    val_images: int = 0
    eval_every: Optional[int] = None

    def to_json(self, version: int = PLAN_VERSION) -> dict[str, Any]:
        d = _fields_json(self)
        return {k: d[k] for k in _LEVEL_V1_KEYS} if version == 1 else d


@dataclass(frozen=True)
class Power:
    """What a plan can resolve (:func:`convit.study.power.estimate_power`): its seeds and test
    images, the assumptions (expected top-1 and discordance, fractions; the seed sd, points), one
    seed's sd and the resolvable difference (points; None with one seed: no interval)."""

    seeds: int
    test_images: int
    expected_top1: float
    discordance: float
    seed_sd: float
    per_seed_sd: float
    resolvable: Optional[float]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Power:
        return cls(**d)

    def describe(self) -> str:
        """One line for the plan's printout."""
        if self.resolvable is None:
            return "power: one seed gives no interval, so this study cannot resolve any difference"
        if self.resolvable >= 100:
            # a difference of accuracies cannot exceed 100 points: "about 136 points" means none
            return (
                f"power: this study cannot resolve any difference ({self.seeds} seeds, {self.test_images} "
                f"test images: a seed's difference varies by about {self.per_seed_sd:.1f} points)"
            )
        return (
            f"power: this study can resolve differences of about {self.resolvable:.1f} points "
            f"(95% paired interval over {self.seeds} seeds, {POWER:.0%} power; {self.test_images} test "
            f"images, a seed's difference varies by about {self.per_seed_sd:.1f} points)"
        )


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
    power: Optional[Power] = None
    device: str = "cpu"  # where the runs train
    dtype: str = "float32"  # their autocast dtype (bfloat16 on cuda)
    timed_on: str = "cpu"  # where the timing was measured
    notes: list[str] = dataclasses.field(default_factory=list)  # what the plan changed or left out

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.model.arms]

    def to_json(self) -> dict[str, Any]:
        """The ``plan.json`` object of the plan's version (version 1: key for key as first written)."""
        out = {
            "version": self.version,
            "request": self.request.to_json(self.version),
            "data": self.data.to_json(),
            "model": self.model.to_json(self.version),
            "levels": [lv.to_json(self.version) for lv in self.levels],
            "seeds": self.seeds,
            "recipe": self.recipe,
            "threads": self.threads,
            "timing": self.timing.to_dict(),
            "estimate_s": self.estimate_s,
        }
        if self.version >= 2:
            out["power"] = self.power.to_json() if self.power else None
        if self.version >= 3:
            out.update(device=self.device, dtype=self.dtype, timed_on=self.timed_on, notes=self.notes)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        if d.get("version") not in READ_VERSIONS:
            raise ValueError(
                f"plan version {d.get('version')!r}: this convit reads versions "
                + ", ".join(map(str, READ_VERSIONS))
            )
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
            power=Power.from_json(d["power"]) if d.get("power") else None,
            device=d.get("device", "cpu"),
            dtype=d.get("dtype", "float32"),
            timed_on=d.get("timed_on", "cpu"),
            notes=list(d.get("notes", [])),
        )
