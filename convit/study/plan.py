"""The plan of a study (``plan.json``): everything that changes its numbers, sized to a budget.

A plan holds the data (classes, the training and test files of a folder, the held-out test
split when the data has none), a ConViT and a DeiT of matched size (same width, depth and
heads; a patch size giving a grid of about 8x8), the sizes compared (images per class, as
fractions of the smallest class), the seeds, the epochs of each size (``E / f``, as the paper
does), the whole recipe (every :class:`~convit.training.config.TrainConfig` field) and the threads per
run.  The same plan gives bit-identical results under any launcher on the same machine.

Sizing: the models are timed on this machine (:mod:`convit.study.timing`); the largest size is
all of the smallest class unless that does not fit the budget with at least
:data:`EPOCHS_FLOOR` epochs at that size, in which case the largest size shrinks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from ..nn.model import DATA_DERIVED_FIELDS, ConViTConfig
from ..training.config import TrainConfig
from ..weights.zoo import model_spec
from .inspect import DataSummary
from .timing import Timing, measure, run_seconds

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

PLAN_VERSION = 1
#: The smallest size compared, images per class (unless ``--sizes`` says otherwise).
MIN_IMAGES = 10
#: Epochs at the largest size: at least this many (else the largest size shrinks), at most the max.
EPOCHS_FLOOR, EPOCHS_MAX = 10, 40
#: The held-out test split of data without one: this fraction of each class, at most the cap.
HOLDOUT_FRACTION, HOLDOUT_CAP, HOLDOUT_SEED = 0.2, 250, 0
#: Share of the budget the runs are sized to (the rest: start, timing, report, estimate error).
BUDGET_SHARE = 0.8
#: The two models: zoo name, and the fields only ConViT has (3 GPSA blocks of 4).
MODELS = {
    "convit": ("convit_digits", {"local_up_to_layer": 3}),
    "deit": ("deit_digits", {"local_up_to_layer": 0}),
}
SHARED_ARCH = dict(embed_dim=48, num_heads=4, depth=4, mlp_ratio=2.0)


def plan_request(
    data: str,
    budget_s: float,
    seeds: int,
    jobs: int,
    sizes: Optional[Sequence[int]],
    threads: int,
    data_path: Optional[str],
) -> dict[str, Any]:
    """What the user asked for: a study folder's plan is reused when this is the same."""
    return {
        "data": data,
        "budget_s": float(budget_s),
        "seeds": int(seeds),
        "jobs": int(jobs),
        "sizes": sorted(int(s) for s in sizes) if sizes else None,
        "threads": int(threads),
        "data_path": data_path,
    }


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
    train, test = {}, {}
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


def _architecture(name: str, extra: dict[str, Any], patch: int) -> dict[str, Any]:
    """Every ConViTConfig field of zoo model ``name`` with the study's sizes on top (those taken
    from the data left out), so the plan states the whole architecture."""
    arch = {f.name: f.default for f in dataclasses.fields(ConViTConfig)}
    arch.update(model_spec(name).config)
    arch.update(SHARED_ARCH, patch_size=patch, **extra)
    return {"model": name, "model_kwargs": {k: v for k, v in arch.items() if k not in DATA_DERIVED_FIELDS}}


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


def _level_sizes(top: int, low: int) -> list[int]:
    """Up to 4 sizes from ``low`` to ``top`` images per class, about 3x apart."""
    if top < 2 * low:
        return [top]
    n = min(4, 1 + int(math.log(top / low) / math.log(3)))
    n = max(n, 2)
    return sorted({int(round(low * (top / low) ** (i / (n - 1)))) for i in range(n)})


def _levels(sizes: list[int], smallest: int, epochs_top: int) -> list[dict[str, Any]]:
    top = max(sizes)
    out = []
    for n in sizes:
        epochs = max(1, int(round(epochs_top * top / n)))
        out.append(
            {
                "images_per_class": n,
                "fraction": n / smallest,
                "epochs": epochs,
                "warmup_epochs": min(max(0.5, epochs_top / 10) * top / n, epochs / 2),
            }
        )
    return out


def _study_seconds(
    levels: list[dict[str, Any]],
    counts: dict[str, int],
    timing: Timing,
    seeds: int,
    jobs: int,
    test_images: int,
) -> float:
    """Estimated wall time of every run, ``jobs`` at a time."""
    total = 0.0
    for lv in levels:
        train_images = sum(max(1, round(lv["fraction"] * n)) for n in counts.values())
        for v in MODELS:
            total += seeds * run_seconds(
                timing, v, train_images=train_images, epochs=lv["epochs"], test_images=test_images
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
) -> tuple[list[dict[str, Any]], float]:
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
        f"the budget is too small: even the smallest study ({2 * seeds} runs of 1 epoch at "
        f"{levels[0]['images_per_class']} images per class) needs about {need / 0.8:.0f} s"
    )


def _check_sizes(
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


def make_plan(
    summary: DataSummary,
    request: dict[str, Any],
    *,
    elapsed_s: float = 0.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Plan a study of ``summary``'s data within ``request['budget_s']`` (``elapsed_s`` already spent)."""
    train, test, held = summary.train, summary.test, None
    if summary.kind == "folder" and test is None:
        train, test = hold_out(summary.train)
        held = test
    counts = {c: len(fs) for c, fs in train.items()} if summary.kind == "folder" else dict(summary.counts)
    _check_sizes(counts, request["sizes"], held)
    test_images = sum(len(f) for f in test.values()) if test is not None else summary.test_count
    res, patch = choose_resolution(summary.size, request["budget_s"], summary.kind == "builtin")
    in_chans = summary.channels if summary.kind == "builtin" else 3
    archs = {v: _architecture(name, extra, patch) for v, (name, extra) in MODELS.items()}
    batch = 32 if sum(counts.values()) < 2000 else 64
    files = [f for fs in train.values() for f in fs] if summary.kind == "folder" else []
    t0 = time.perf_counter()
    timing = measure(
        archs,
        res=res,
        in_chans=in_chans,
        num_classes=len(summary.classes),
        batch=batch,
        threads=request["threads"],
        root=summary.root,
        files=files,
        probe_s_per_file=summary.probe_s_per_file,
        n_files=len(files) + test_images * (held is None),
    )
    available = request["budget_s"] * BUDGET_SHARE - elapsed_s - (time.perf_counter() - t0)
    levels, estimate = size_study(
        counts,
        timing,
        available_s=available,
        seeds=request["seeds"],
        jobs=request["jobs"],
        test_images=test_images,
        sizes=request["sizes"],
    )
    data = {
        "kind": summary.kind,
        "name": summary.name,
        "root": summary.root,
        "data_path": summary.data_path,
        "classes": summary.classes,
        "counts": counts,
        "test_from": summary.test_from,
        "test_images": test_images,
        "size": list(summary.size),
        "channels": summary.channels,
        "holdout": {"fraction": HOLDOUT_FRACTION, "cap": HOLDOUT_CAP, "seed": HOLDOUT_SEED} if held else None,
        "train_files": train if summary.kind == "folder" else None,
        "test_files": test,
    }
    return {
        "version": PLAN_VERSION,
        "request": request,
        "data": data,
        "model": {
            "resolution": res,
            "patch_size": patch,
            "grid": res // patch,
            "params": timing.params,
            **archs,
        },
        "levels": levels,
        "seeds": list(range(request["seeds"])),
        "recipe": _recipe(batch, request["threads"], "cpu"),
        "threads": request["threads"],
        "timing": timing.to_dict(),
        "estimate_s": estimate + elapsed_s + (time.perf_counter() - t0),
    }


def study_runs(plan: dict[str, Any], data_path: Optional[str] = None) -> list[dict[str, Any]]:
    """Every run of ``plan``, seed-major (a stopped study has whole comparisons of its first seed):
    name, variant, fraction, images per class, seed and the full TrainConfig settings.
    ``data_path``: where the run reads the data (the study's ``data/`` folder for image folders)."""
    runs = []
    for seed in plan["seeds"]:
        for lv in plan["levels"]:
            for variant in MODELS:
                arch = plan["model"][variant]
                settings = dict(
                    plan["recipe"],
                    **arch,
                    img_size=plan["model"]["resolution"],
                    sampling_ratio=min(1.0, lv["fraction"]),
                    seed=seed,
                    epochs=lv["epochs"],
                    warmup_epochs=lv["warmup_epochs"],
                    eval_every=lv["epochs"],
                    dataset="imagefolder" if plan["data"]["kind"] == "folder" else plan["data"]["name"],
                    data_path=data_path if plan["data"]["kind"] == "folder" else plan["data"]["data_path"],
                )
                runs.append(
                    {
                        "name": f"{variant}-f{lv['fraction']:.4g}-s{seed}",
                        "variant": variant,
                        "fraction": lv["fraction"],
                        "images_per_class": lv["images_per_class"],
                        "seed": seed,
                        "epochs": lv["epochs"],
                        "settings": settings,
                    }
                )
    return runs
