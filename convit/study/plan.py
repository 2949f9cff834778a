"""The plan of a study (``plan.json``): everything that changes its numbers, sized to a budget.

A plan holds the data (classes, the training and test files of a folder, the held-out test
split when the data has none), the arms compared (by default a small ConViT and DeiT of
matched size -- same width, depth and heads; a patch size giving a grid of about 8x8 -- and
the CNN arm when the budget allows; or the zoo models ``--models`` names, :mod:`convit.study.arms`),
the device the runs train on, the sizes compared (images per class, as
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
import torch

from .arms import CNN_ARM, Layout, check_models
from .finetune_arms import check_pretrained_names
from .inspect import DataSummary
from .layout import MODELS, SHARED_ARCH, add_cnn, choose_resolution, plan_arms, study_layout
from .pair_choice import choose_pair
from .plan_schema import PLAN_VERSION, Arm, Holdout, Level, Plan, PlanData, PlanModels, PlanRequest
from .power import estimate_power
from .records import StudyRun
from .sizing import EPOCHS_FLOOR, EPOCHS_MAX, MIN_IMAGES, Sizing, check_sizes, size_study
from .study_recipe import SizeFor, finetune_sizing, study_recipe
from .timing import Timing, measure

__all__ = [
    "PLAN_VERSION",
    "MIN_IMAGES",
    "make_plan",
    "study_runs",
    "level_runs",
    "choose_resolution",
    "hold_out",
    "plan_request",
    "EPOCHS_FLOOR",
    "EPOCHS_MAX",
    "MODELS",
    "SHARED_ARCH",
]

#: The held-out test split of data without one: this fraction of each class, at most the cap.
HOLDOUT_FRACTION = 0.2
HOLDOUT_CAP = 250
HOLDOUT_SEED = 0
#: Share of the budget the runs are sized to (the rest: start, timing, report, estimate error).
BUDGET_SHARE = 0.8


def plan_request(
    data: str,
    budget_s: float,
    seeds: Optional[int],
    jobs: int,
    sizes: Optional[Sequence[int]],
    threads: int,
    data_path: Optional[str],
    models: Optional[Sequence[str]] = None,
    img_size: Optional[int] = None,
    device: str = "cpu",
    pretrained: bool = False,
) -> PlanRequest:
    """What the user asked for: a study folder's plan is reused when this is the same
    (``seeds`` None: chosen by the budget; ``models`` None: the default arms; ``img_size``
    None: chosen by the budget; ``device``: ``cpu`` or ``cuda``; ``pretrained``: fine-tune
    published weights, :mod:`convit.study.finetune_arms`).  Models that cannot be compared are a
    ValueError here, before anything is planned (weights are looked for when planning)."""
    if models and pretrained:
        models = check_pretrained_names(models)
    elif models:
        check_models(models)
    return PlanRequest(
        data=data,
        budget_s=float(budget_s),
        seeds=None if seeds is None else int(seeds),
        jobs=int(jobs),
        sizes=sorted(int(s) for s in sizes) if sizes else None,
        threads=int(threads),
        data_path=data_path,
        models=list(models) if models else None,
        img_size=None if img_size is None else int(img_size),
        device=device,
        pretrained=bool(pretrained),
    )


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
    summary: DataSummary,
    split: _Split,
    layout: Layout,
    batch: int,
    threads: int,
    device: str,
) -> Timing:
    """Time every arm and the data's files on this machine (:func:`convit.study.timing.measure`)."""
    files = [f for fs in split.train.values() for f in fs] if summary.kind == "folder" else []
    return measure(
        layout.archs,
        res=layout.resolution,
        in_chans=summary.channels if summary.kind == "builtin" else 3,
        num_classes=len(summary.classes),
        batch=batch,
        threads=threads,
        root=summary.root,
        files=files,
        probe_s_per_file=summary.probe_s_per_file,
        n_files=len(files) + split.test_images * (split.held is None),
        device=device,
    )


def _without(timing: Timing, arm: str) -> Timing:
    """``timing`` without ``arm``."""
    return Timing(
        {k: v for k, v in timing.train_s.items() if k != arm},
        {k: v for k, v in timing.eval_s.items() if k != arm},
        timing.load_s,
        timing.startup_s,
        {k: v for k, v in timing.params.items() if k != arm},
    )


def _size(
    split: _Split, timing: Timing, request: PlanRequest, batch: int, available_s: float, optional: bool
) -> tuple[Sizing, Timing, Optional[str]]:
    """The sizing of every timed arm, with the timing it used and a note; an ``optional`` CNN
    arm is left out when the study with it gets fewer seeds or sizes than without it."""
    kw = dict(
        available_s=available_s,
        seeds=request.seeds,
        jobs=request.jobs,
        test_images=split.test_images,
        batch=batch,
        sizes=request.sizes,
    )
    if CNN_ARM not in timing.train_s or not optional:
        return size_study(split.counts, timing, **kw), timing, None
    pair_timing = _without(timing, CNN_ARM)
    pair = size_study(split.counts, pair_timing, **kw)
    try:
        full = size_study(split.counts, timing, **kw)
    except ValueError:
        full = None
    sizes = [lv.images_per_class for lv in pair.levels]
    if full is not None and full.seeds >= pair.seeds and [lv.images_per_class for lv in full.levels] == sizes:
        return full, timing, None
    note = f"the CNN arm ({CNN_ARM}) was left out: the budget fits it only with fewer seeds or sizes"
    return pair, pair_timing, note


def _sizer(split: _Split, timing: Timing, request: PlanRequest, batch: int) -> SizeFor:
    """The sizing of this study for a number of seeds and a budget (for :func:`finetune_sizing`)."""
    return lambda seeds, available_s: size_study(
        split.counts,
        timing,
        available_s=available_s,
        seeds=seeds,
        jobs=request.jobs,
        test_images=split.test_images,
        batch=batch,
        sizes=request.sizes,
    )


def _timed_on(device: str) -> str:
    """Where the models are timed: the runs' device, or the CPU for a CUDA plan made on a node
    without a GPU (a Slurm study's login node)."""
    return device if device == "cpu" or torch.cuda.is_available() else "cpu"


def make_plan(
    summary: DataSummary,
    request: PlanRequest,
    *,
    elapsed_s: float = 0.0,
    say: Callable[[str], None] = print,
) -> Plan:
    """Plan a study of ``summary``'s data within ``request.budget_s`` (``elapsed_s`` already
    spent)."""
    split = _split(summary)
    check_sizes(split.counts, request.sizes, split.held)
    shape = (summary.channels if summary.kind == "builtin" else 3, len(summary.classes))
    layout = study_layout(summary, request)
    add_cnn(layout, shape, optional=not request.models)
    batch = 32 if sum(split.counts.values()) < 2000 else 64
    timed_on = _timed_on(request.device)
    t0 = time.perf_counter()

    def available() -> float:
        return request.budget_s * BUDGET_SHARE - elapsed_s - (time.perf_counter() - t0)

    timing = _time_arms(summary, split, layout, batch, request.threads, timed_on)
    sizing, timing, left_out = _size(split, timing, request, batch, available(), optional=not request.models)
    if not request.models and not request.pretrained:
        layout, timing, sizing, left_out = choose_pair(
            summary.size,
            shape,
            (layout, timing, sizing, left_out),
            size_arms=lambda t: _size(split, t, request, batch, available(), True),
            time_arms=lambda lay: _time_arms(summary, split, lay, batch, request.threads, timed_on),
        )
    if request.pretrained:
        sizing = finetune_sizing(_sizer(split, timing, request, batch), sizing, request.seeds, available())
    arms, differ = plan_arms(layout, timing, shape)
    notes = layout.notes + ([left_out] if left_out else []) + differ
    if timed_on != request.device:
        notes.append("timed on the CPU (no GPU here): the estimate is of CPU runs; the GPU runs take less")
    return Plan(
        version=PLAN_VERSION,
        request=request,
        data=_plan_data(summary, split),
        model=PlanModels(layout.resolution, layout.patch_size, layout.resolution // layout.patch_size, arms),
        levels=sizing.levels,
        seeds=list(range(sizing.seeds)),
        recipe=study_recipe(batch, request.threads, request.device, request.pretrained),
        threads=request.threads,
        timing=timing,
        estimate_s=sizing.estimate_s + elapsed_s + (time.perf_counter() - t0),
        power=estimate_power(sizing.seeds, split.test_images, len(summary.classes)),
        device=request.device,
        dtype="bfloat16" if request.device == "cuda" else "float32",
        timed_on=timed_on,
        notes=notes,
    )


def _run_settings(plan: Plan, arm: Arm, lv: Level, seed: int, data_path: Optional[str]) -> dict[str, Any]:
    """Every TrainConfig field of one run: the recipe, the arm, the size's epochs and validation
    hold-out, the seed, the data."""
    folder = plan.data.kind == "folder"
    # locality measures attention: the CNN arm has none
    extra: dict[str, Any] = {"locality": False} if CNN_ARM in (arm.model, arm.name) else {}
    if arm.weights is not None:  # a fine-tuning study: the arm starts from these weights
        extra["pretrained"] = True
    return dict(
        plan.recipe,
        **extra,
        model=arm.weights or arm.model,
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


def _run(plan: Plan, arm: Arm, lv: Level, seed: int, data_path: Optional[str], suffix: str = "") -> StudyRun:
    return StudyRun(
        name=f"{arm.name}-f{lv.fraction:.4g}-s{seed}{suffix}",
        variant=arm.name,
        fraction=lv.fraction,
        images_per_class=lv.images_per_class,
        seed=seed,
        epochs=lv.epochs,
        settings=_run_settings(plan, arm, lv, seed, data_path),
    )


def level_runs(plan: Plan, lv: Level, data_path: Optional[str] = None, suffix: str = "") -> list[StudyRun]:
    """Every run of one size ``lv`` (every arm and seed, seed-major), named with ``suffix``:
    a size trained again with another schedule (:mod:`convit.study.extend`)."""
    return [_run(plan, arm, lv, seed, data_path, suffix) for seed in plan.seeds for arm in plan.model.arms]


def study_runs(plan: Plan, data_path: Optional[str] = None) -> list[StudyRun]:
    """Every run of ``plan``, seed-major (a stopped study has whole comparisons of its first seed),
    every arm at every size.  ``data_path``: where the run reads the data (the study's ``data/``
    folder for image folders)."""
    return [
        _run(plan, arm, lv, seed, data_path)
        for seed in plan.seeds
        for lv in plan.levels
        for arm in plan.model.arms
    ]
