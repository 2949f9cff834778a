"""The plan of a study (``plan.json``): everything that changes its numbers, sized to a budget.

A plan holds the data (classes, the training and test files of a folder, the held-out test
split when the data has none), a ConViT and a DeiT of matched size (same width, depth and
heads; a patch size giving a grid of about 8x8), the sizes compared (images per class, as
fractions of the smallest class), the seeds, the epochs of each size (``E / f``, as the paper
does), the validation hold-out the runs are judged on, the whole recipe (every
:class:`~convit.training.config.TrainConfig` field), the threads per run, and the smallest
difference the study can resolve.  The same plan gives bit-identical results under any launcher
on the same machine.

Sizing: the models are timed on this machine (:mod:`convit.study.timing`), the sizes, epochs,
seeds and validation hold-out fit to the budget (:mod:`convit.study.sizing`) and the power
estimated before any run (:mod:`convit.study.power`).  The plan's typed form and its JSON are
:mod:`convit.study.plan_schema`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..nn.model import DATA_DERIVED_FIELDS
from ..training.config import TrainConfig
from ..weights.zoo import config_of
from .inspect import DataSummary
from .plan_schema import PLAN_VERSION, Arm, Holdout, Level, Plan, PlanData, PlanModels, PlanRequest
from .power import estimate_power
from .records import StudyRun
from .sizing import EPOCHS_FLOOR, EPOCHS_MAX, MIN_IMAGES, check_sizes, size_study
from .timing import Timing, measure

__all__ = [
    "PLAN_VERSION",
    "MIN_IMAGES",
    "make_plan",
    "study_runs",
    "choose_resolution",
    "hold_out",
    "plan_request",
    "EPOCHS_FLOOR",
    "EPOCHS_MAX",
]

#: The held-out test split of data without one: this fraction of each class, at most the cap.
HOLDOUT_FRACTION = 0.2
HOLDOUT_CAP = 250
HOLDOUT_SEED = 0
#: Share of the budget the runs are sized to (the rest: start, timing, report, estimate error).
BUDGET_SHARE = 0.8
#: The arms compared: zoo name, and the fields only that arm has (ConViT: 3 GPSA blocks of 4).
MODELS = {
    "convit": ("convit_digits", {"local_up_to_layer": 3}),
    "deit": ("deit_digits", {"local_up_to_layer": 0}),
}
SHARED_ARCH = dict(embed_dim=48, num_heads=4, depth=4, mlp_ratio=2.0)


def plan_request(
    data: str,
    budget_s: float,
    seeds: Optional[int],
    jobs: int,
    sizes: Optional[Sequence[int]],
    threads: int,
    data_path: Optional[str],
) -> PlanRequest:
    """What the user asked for: a study folder's plan is reused when this is the same
    (``seeds`` None: chosen by the budget)."""
    return PlanRequest(
        data=data,
        budget_s=float(budget_s),
        seeds=None if seeds is None else int(seeds),
        jobs=int(jobs),
        sizes=sorted(int(s) for s in sizes) if sizes else None,
        threads=int(threads),
        data_path=data_path,
    )


def choose_resolution(size: tuple[int, int], budget_s: float, native: bool) -> tuple[int, int]:
    """(resolution, patch size): small for small budgets, never above the images' own size;
    the patch size makes a grid of about 8x8."""
    cap = 32 if budget_s < 20 * 60 else 48 if budget_s < 90 * 60 else 64
    side = min(size)
    res = side if native or side <= cap else cap
    patch = max(1, round(res / 8))
    return max(1, res // patch) * patch, patch


def hold_out(
    files: dict[str, list[str]], seed: int = HOLDOUT_SEED
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, test) per class: a stratified test split fixed by ``seed``, ``HOLDOUT_FRACTION`` of
    each class (at least one, at most ``HOLDOUT_CAP``, always leaving one to train on)."""
    train = {}
    test = {}
    for label, (c, fs) in enumerate(files.items()):
        if len(fs) < 2:
            raise ValueError(
                f"class {c!r} has {len(fs)} image: at least 2 are needed to hold one out for testing"
            )
        perm = np.random.default_rng([seed, 7, label]).permutation(len(fs))
        k = min(max(1, round(HOLDOUT_FRACTION * len(fs))), HOLDOUT_CAP, len(fs) - 1)
        test[c] = sorted(fs[i] for i in perm[:k])
        train[c] = sorted(fs[i] for i in perm[k:])
    return train, test


def _architecture(name: str, extra: dict[str, Any], patch: int, res: int) -> dict[str, Any]:
    """Every ConViTConfig field of zoo model ``name`` with the study's sizes on top (those taken
    from the data left out), so the plan states the whole architecture."""
    cfg = config_of(name, **SHARED_ARCH, patch_size=patch, img_size=res, **extra)
    return {
        "model": name,
        "model_kwargs": {k: v for k, v in cfg.to_dict().items() if k not in DATA_DERIVED_FIELDS},
    }


def _recipe(batch: int, threads: int, device: str) -> dict[str, Any]:
    """Every TrainConfig field shared by the runs (DeiT's recipe without mixup, small augmentation)."""
    base = TrainConfig().to_dict()
    base.update(
        preset=None,
        batch_size=batch,
        lr=2e-3 * batch / 64,
        min_lr=1e-5,
        weight_decay=0.05,
        mixup=0.0,
        cutmix=0.0,
        smoothing=0.1,
        drop_path=0.0,
        val_fraction=0.0,
        augment="small",
        repeated_aug=False,
        num_workers=0,
        threads=threads,
        device=device,
        amp="off",
        locality=True,
        report=False,
        tensorboard=False,
        model_ema=False,
        scale_epochs=False,
        download=False,
    )
    for k in (
        "output",
        "resume",
        "overwrite",
        "model",
        "model_kwargs",
        "sampling_ratio",
        "seed",
        "epochs",
        "warmup_epochs",
        "eval_every",
    ):
        base.pop(k, None)
    return base


@dataclass
class _Split:
    """The data as the plan splits it: training files (folders) and counts per class, the test
    files (folders) and count, and the held-out split (None when the data has its own)."""

    train: dict[str, list[str]]
    test: Optional[dict[str, list[str]]]
    held: Optional[dict[str, list[str]]]
    counts: dict[str, int]
    test_images: int


def _split(summary: DataSummary) -> _Split:
    """Hold out a test split of a folder without one; count the training images per class."""
    train = summary.train
    test = summary.test
    held = None
    if summary.kind == "folder" and test is None:
        train, test = hold_out(summary.train)
        held = test
    counts = {c: len(fs) for c, fs in train.items()} if summary.kind == "folder" else dict(summary.counts)
    test_images = sum(len(f) for f in test.values()) if test is not None else summary.test_count
    return _Split(train, test, held, counts, test_images)


def _plan_data(summary: DataSummary, split: _Split) -> PlanData:
    folder = summary.kind == "folder"
    return PlanData(
        kind=summary.kind,
        name=summary.name,
        root=summary.root,
        data_path=summary.data_path,
        classes=summary.classes,
        counts=split.counts,
        test_from=summary.test_from,
        test_images=split.test_images,
        size=list(summary.size),
        channels=summary.channels,
        holdout=Holdout(HOLDOUT_FRACTION, HOLDOUT_CAP, HOLDOUT_SEED) if split.held else None,
        train_files=split.train if folder else None,
        test_files=split.test,
    )


def _time_arms(
    summary: DataSummary, split: _Split, archs: dict[str, dict[str, Any]], res: int, batch: int, threads: int
) -> Timing:
    """Time every arm and the data's files on this machine (:func:`convit.study.timing.measure`)."""
    files = [f for fs in split.train.values() for f in fs] if summary.kind == "folder" else []
    return measure(
        archs,
        res=res,
        in_chans=summary.channels if summary.kind == "builtin" else 3,
        num_classes=len(summary.classes),
        batch=batch,
        threads=threads,
        root=summary.root,
        files=files,
        probe_s_per_file=summary.probe_s_per_file,
        n_files=len(files) + split.test_images * (split.held is None),
    )


def make_plan(
    summary: DataSummary,
    request: PlanRequest,
    *,
    elapsed_s: float = 0.0,
    say: Callable[[str], None] = print,
) -> Plan:
    """Plan a study of ``summary``'s data within ``request.budget_s`` (``elapsed_s`` already spent)."""
    split = _split(summary)
    check_sizes(split.counts, request.sizes, split.held)
    res, patch = choose_resolution(summary.size, request.budget_s, summary.kind == "builtin")
    archs = {v: _architecture(name, extra, patch, res) for v, (name, extra) in MODELS.items()}
    batch = 32 if sum(split.counts.values()) < 2000 else 64
    t0 = time.perf_counter()
    timing = _time_arms(summary, split, archs, res, batch, request.threads)
    available = request.budget_s * BUDGET_SHARE - elapsed_s - (time.perf_counter() - t0)
    sizing = size_study(
        split.counts,
        timing,
        available_s=available,
        seeds=request.seeds,
        jobs=request.jobs,
        test_images=split.test_images,
        batch=batch,
        sizes=request.sizes,
    )
    arms = [Arm(v, a["model"], a["model_kwargs"], timing.params[v]) for v, a in archs.items()]
    return Plan(
        version=PLAN_VERSION,
        request=request,
        data=_plan_data(summary, split),
        model=PlanModels(resolution=res, patch_size=patch, grid=res // patch, arms=arms),
        levels=sizing.levels,
        seeds=list(range(sizing.seeds)),
        recipe=_recipe(batch, request.threads, "cpu"),
        threads=request.threads,
        timing=timing,
        estimate_s=sizing.estimate_s + elapsed_s + (time.perf_counter() - t0),
        power=estimate_power(sizing.seeds, split.test_images, len(summary.classes)),
    )


def _run_settings(plan: Plan, arm: Arm, lv: Level, seed: int, data_path: Optional[str]) -> dict[str, Any]:
    """Every TrainConfig field of one run: the recipe, the arm, the size's epochs and validation
    hold-out, the seed, the data."""
    folder = plan.data.kind == "folder"
    return dict(
        plan.recipe,
        model=arm.model,
        model_kwargs=arm.model_kwargs,
        img_size=plan.model.resolution,
        sampling_ratio=min(1.0, lv.fraction),
        seed=seed,
        epochs=lv.epochs,
        warmup_epochs=lv.warmup_epochs,
        val_fraction=lv.val_fraction,
        eval_every=lv.eval_every or lv.epochs,
        dataset="imagefolder" if folder else plan.data.name,
        data_path=data_path if folder else plan.data.data_path,
    )


def study_runs(plan: Plan, data_path: Optional[str] = None) -> list[StudyRun]:
    """Every run of ``plan``, seed-major (a stopped study has whole comparisons of its first seed),
    every arm at every size.  ``data_path``: where the run reads the data (the study's ``data/``
    folder for image folders)."""
    return [
        StudyRun(
            name=f"{arm.name}-f{lv.fraction:.4g}-s{seed}",
            variant=arm.name,
            fraction=lv.fraction,
            images_per_class=lv.images_per_class,
            seed=seed,
            epochs=lv.epochs,
            settings=_run_settings(plan, arm, lv, seed, data_path),
        )
        for seed in plan.seeds
        for lv in plan.levels
        for arm in plan.model.arms
    ]
