"""``fit(cfg)``: a whole training run, from a :class:`~convit.training.config.TrainConfig` to a run folder.

:func:`fit` reads top to bottom like DeiT's ``main``: build (process and device, data, model
and its :class:`~convit.training.engine.TrainStep`, resumed state, run folder), then per epoch train,
evaluate, log and save ``last.pt``, then save the final model.  What the run folder holds, and
how ``--output`` / ``--resume`` pick it, is :mod:`convit.training.run_folder`; device and seeds are
:mod:`convit.core.runtime`; model and recipe are :mod:`convit.training.recipe`; one epoch of training or
evaluation is :mod:`convit.training.engine`.

The batches come from one of two sources, and the loop is the same for both:

* DataLoaders over :func:`convit.data.build_data`'s splits (any dataset, DDP under torchrun);
* with ``on_device=True``, batches cut, cropped and flipped on the accelerator from whole
  splits held there (:mod:`convit.data.device`: CIFAR-10 at tens of thousands of images/s on
  one GPU, where DataLoader workers cannot keep up).  Same splits, one process.

The trainer does no analysis: ``convit train`` passes hooks (:func:`convit.analysis.training_hooks`)
that add per-epoch locality to the log and write figures and report.html at the end.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..core import distributed
from ..core.fileio import CheckpointSaveError
from ..core.runtime import cpu_count, resolve_amp, resolve_device, rng_state, seed_everything, set_threads
from ..data import (
    DataBundle,
    ImageFileDataset,
    build_data,
    collate_skipping,
    collate_skipping_even,
    set_max_image_pixels,
)
from ..data.batched import SampledBatches
from ..data.device import DeviceImages, EvalBatches, TrainBatches, device_splits
from ..nn import memory
from ..nn.model import count_params
from . import unreadable
from .config import TrainConfig
from .engine import NonFiniteLossError, TrainStep, evaluate, train_one_epoch
from .recipe import build_model, build_recipe, model_config
from .run_folder import (
    RunFolder,
    TrainingState,
    find_last_checkpoint,
    load_training_state,
    resolve_output,
    summary_text,
)

__all__ = ["fit", "RunData", "data_loaders", "device_batches", "CheckpointSaveError", "NonFiniteLossError"]

#: ``on_eval(model, probe_images) -> entries`` added to the log of an evaluated epoch (rank 0).
EvalHook = Callable[[nn.Module, torch.Tensor], dict[str, Any]]
#: ``on_end(run_folder)`` once the final model is written (rank 0).
EndHook = Callable[[Path], Any]


def fit(
    cfg: TrainConfig,
    *,
    on_device: bool = False,
    on_eval: Optional[EvalHook] = None,
    on_end: Optional[EndHook] = None,
    resume_state: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Train as ``cfg`` says, in every process under torchrun (rank 0 alone writes and prints);
    returns the summary: final test metrics, final and best val top-1, time, paths written.

    on_device: batches from :func:`device_batches` instead of :func:`data_loaders`.
    on_eval: if ``cfg.locality``, called after each evaluated epoch with the model and the first
        64 held-out images (val, else test); returns entries for the log.  on_end: if
        ``cfg.report``, called with the run folder once the final model is saved.
    resume_state: ``cfg.resume``'s last.pt as :func:`~convit.training.run_folder.read_resume` read it (else
        fit reads it), so a resumed run reads its checkpoint once."""
    cfg, t_start = (
        dataclasses.replace(cfg).validate(),
        time.perf_counter(),
    )  # a copy: the caller's stays as it was
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    with distributed.process_group(device.type) as procs:
        # -- build: process, data, model and training step, resumed state, run folder --------------
        main, world, epochs, lr = (
            procs.is_main,
            procs.world_size,
            cfg.run_epochs,
            cfg.resolved_lr(procs.world_size),
        )
        say: Callable[[str], None] = (lambda s: print(s, flush=True)) if main else (lambda s: None)
        amp_dtype, state = (
            _start_process(cfg, device, procs),
            _state_to_resume(cfg, resume_state),
        )  # state None: fresh
        folder = RunFolder(cfg, resolve_output(cfg), epochs, say)  # same on every rank; nothing written yet
        data = (
            device_batches(cfg, device, world) if on_device else data_loaders(cfg, device, procs.rank, world)
        )
        model, trained = _build_model_and_step(
            cfg,
            data,
            procs,
            device=device,
            amp_dtype=amp_dtype,
            say=say,
            locality=on_eval is not None and cfg.locality,
        )
        bare, step = trained.model, trained.step  # the model without DDP / compile: evaluated and saved
        start_epoch, best = (
            trained.restore(state, len(data.train), procs.rank, world, say)
            if state is not None
            else (0, {"val_top1": -1.0, "epoch": 0})
        )
        keep_config = state is not None and start_epoch >= epochs  # nothing to train: config.yaml still fits
        distributed.on_main(
            folder.create,
            _metadata(cfg, data.bundle),
            start_epoch if state is not None else None,
            keep_config,
            _config_comments(cfg, lr=lr, world=world, device=device, on_device=on_device),
        )
        probe = _first_reads(data, folder, procs.rank, probe=on_eval is not None and cfg.locality and main)
        say(
            _describe(cfg, bare, data, lr=lr, world=world, device=device, amp_dtype=amp_dtype, out=folder.out)
        )

        # -- loop over epochs: train, evaluate, log, save last.pt ----------------------------------
        entry: dict[str, Any] = {}
        for epoch in range(start_epoch + 1, epochs + 1):
            t_epoch, cpu_epoch = time.perf_counter(), time.process_time()
            entry = {
                "epoch": epoch,
                **_train_epoch(
                    model, data, step, epoch, device=device, cfg=cfg, folder=folder, say=say, main=main
                ),
            }
            if epoch % cfg.eval_every == 0 or epoch == epochs:
                entry.update(_evaluate(bare, step, data, device, final=epoch == epochs))
                if probe is not None:
                    entry.update(on_eval(bare, probe))
            entry.update(
                epoch_time_s=time.perf_counter() - t_epoch, epoch_cpu_time_s=time.process_time() - cpu_epoch
            )
            improved = entry.get("val_top1", -math.inf) > best["val_top1"]
            best = {"val_top1": entry["val_top1"], "epoch": epoch} if improved else best
            rngs = distributed.all_gather_object(rng_state())  # every rank's, so DDP runs resume exactly
            distributed.on_main(folder.end_epoch, entry, best, improved, trained, rngs)

        # -- save the final model, report, summary -------------------------------------------------
        entry = entry or folder.last_entry()  # a resumed run with nothing to train reports its log
        report = cfg.report and on_end is not None
        summary = _summary(
            folder,
            entry,
            best,
            epochs=start_epoch if keep_config else epochs,
            lr=lr,
            world=world,
            data=data,
            rank=procs.rank,
            report=report,
        )
        if main:
            folder.finish(bare, step.ema, entry, start_epoch, has_val=data.val is not None)
            if report:
                on_end(folder.out)
        summary["time_s"] = time.perf_counter() - t_start
        say(summary_text(summary, data.val is not None))
        return summary


# ---------------------------------------------------------------------------------------------
# Where the batches come from
# ---------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """What the loop trains and evaluates on, however the batches are made."""

    bundle: DataBundle  # the dataset's splits, class names, statistics and sizes
    train: Any  # one epoch of (images, targets) batches per iteration; len() and set_epoch(epoch)
    val: Optional[Iterable]  # None without a validation split
    test: Iterable
    probe: Callable[[], torch.Tensor]  # the first 64 held-out (validation, else test) images
    skipped: Callable[[], dict[str, str]] = dict  # unreadable files left out so far: path -> reason


def data_loaders(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> RunData:
    """DataLoaders over :func:`convit.data.build_data`'s splits.  Training is sharded over the
    processes (DistributedSampler, or DeiT's RepeatAugSampler); evaluation by
    :class:`~convit.core.distributed.ShardSampler`, which shows every image exactly once."""
    set_max_image_pixels(cfg.max_image_pixels)
    bundle = build_data(
        cfg.dataset,
        cfg.data_path,
        img_size=cfg.img_size,
        sampling_ratio=cfg.sampling_ratio,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        augment=cfg.augment,
        download=cfg.download,
        strict=cfg.strict_images,
    )
    if len(bundle.train) == 0:
        raise ValueError(f"the training set of {cfg.dataset} is empty")
    if cfg.repeated_aug:
        sampler: Sampler = RepeatAugSampler(bundle.train, num_replicas=world, rank=rank, shuffle=True)
    else:
        sampler = DistributedSampler(
            bundle.train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False
        )
    drop_last = len(sampler) >= 2 * cfg.batch_size  # DeiT drops the ragged last batch
    train = _loader(
        bundle.train,
        cfg.batch_size,
        sampler,
        cfg,
        device,
        drop_last,
        collate=collate_skipping_even if _mixing(cfg) else collate_skipping,
    )
    has_val = bundle.val is not None and len(bundle.val) > 0
    val = (
        _loader(
            bundle.val,
            2 * cfg.batch_size,
            distributed.ShardSampler(len(bundle.val), rank, world),
            cfg,
            device,
        )
        if has_val
        else None
    )
    test = _loader(
        bundle.test, 2 * cfg.batch_size, distributed.ShardSampler(len(bundle.test), rank, world), cfg, device
    )
    held_out = bundle.val if has_val else bundle.test
    splits = [ds for ds in (bundle.train, bundle.val, bundle.test) if isinstance(ds, ImageFileDataset)]
    epochs = _Epochs(
        train, sampler, cfg.seed, rank, cfg.repeated_aug, device if world > 1 and splits else None
    )
    return RunData(
        bundle,
        epochs,
        val,
        test,
        probe=lambda: collate_skipping([held_out[i] for i in range(min(64, len(held_out)))])[0],
        skipped=lambda: {k: v for ds in splits for k, v in ds.skipped().items()},
    )


def _mixing(cfg: TrainConfig) -> bool:
    """Whether timm's mixup / cutmix runs, which pairs images: training batches must be even."""
    return (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0


def _loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler,
    cfg: TrainConfig,
    device: torch.device,
    drop_last: bool = False,
    collate: Callable = collate_skipping,
) -> Iterable:
    # More workers than CPUs only adds process switching (the presets ask for DeiT's 8).
    workers = min(cfg.num_workers, cpu_count())
    if workers == 0 and getattr(dataset, "batchable", False):  # the same batches, without per-image work
        return SampledBatches(dataset, batch_size, sampler, drop_last, even=collate is collate_skipping_even)
    # Its own generator seeds the worker processes (reseeded per epoch by _Epochs), leaving
    # the global RNG to the model.  The collate leaves unreadable files out (never replaced).
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
        collate_fn=collate,
    )


class _Epochs:
    """A training DataLoader (or :class:`~convit.data.batched.SampledBatches`) whose shuffle and
    worker seeds are set per epoch (as :class:`~convit.data.device.TrainBatches` does), so an
    epoch, resumed or not, draws the same batches.  A batch whose every image was unreadable is left out; with ``sync`` (the
    device of DDP's processes, when their files may be unreadable) a step is left out by every
    process when any one's batch is empty, as they must all take the same steps."""

    def __init__(
        self,
        loader: Iterable,
        sampler: Any,
        seed: int,
        rank: int,
        repeated_aug: bool,
        sync: Optional[torch.device] = None,
    ) -> None:
        self.loader, self.sampler, self.seed, self.rank, self.repeated_aug = (
            loader,
            sampler,
            seed,
            rank,
            repeated_aug,
        )
        self.sync = sync

    def set_epoch(self, epoch: int) -> None:
        # RepeatAugSampler shuffles with the epoch alone: the run's seed is folded into it.
        self.sampler.set_epoch(self.seed * 100_003 + epoch if self.repeated_aug else epoch)
        if isinstance(self.loader, DataLoader):
            self.loader.generator.manual_seed(self.seed * 100_003 + epoch * 1_009 + self.rank)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for images, targets in self.loader:
            empty = len(targets) == 0
            if self.sync is not None:
                empty = distributed.all_reduce_sum(torch.tensor(float(empty), device=self.sync)).item() > 0
            if not empty:
                yield images, targets


def device_batches(cfg: TrainConfig, device: torch.device, world: int = 1) -> RunData:
    """Batches made on ``device`` from whole splits held there (:mod:`convit.data.device`): the
    splits of ``build_data`` at the native image size, the `small` augmentation (random crop
    with zero padding, flip), for one process."""
    if world > 1:
        raise ValueError(
            "the on-device data path runs in one process; use the DataLoader path under torchrun"
        )
    if cfg.img_size is not None:
        raise ValueError("the on-device data path trains at the native image size; leave img_size unset")
    if device.type == "cuda":  # TF32 matmuls, as this GPU throughput path always had (DataLoaders: fp32)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    splits = device_splits(
        cfg.dataset, device, cfg.data_path, cfg.sampling_ratio, cfg.seed, cfg.val_fraction, cfg.download
    )
    mixing = _mixing(cfg)
    val: Optional[DeviceImages] = splits["val"] if splits["val"] is not None and len(splits["val"]) else None
    held_out: DeviceImages = val if val is not None else splits["test"]
    return RunData(
        splits["bundle"],
        TrainBatches(splits["train"], cfg.batch_size, seed=cfg.seed, even=mixing),
        EvalBatches(val, 2 * cfg.batch_size) if val is not None else None,
        EvalBatches(splits["test"], 2 * cfg.batch_size),
        probe=lambda: held_out.batch(torch.arange(min(64, len(held_out)), device=held_out.device))[0],
    )


# ---------------------------------------------------------------------------------------------
# Pieces of the loop kept out of the way
# ---------------------------------------------------------------------------------------------


def _state_to_resume(cfg: TrainConfig, given: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """``cfg.resume``'s last.pt: ``given`` (the caller read it), else read now; None for a fresh run."""
    if given is not None and not cfg.resume:
        raise ValueError("resume_state is the last.pt of cfg.resume, which is not set")
    if given is not None or not cfg.resume:
        return given
    return load_training_state(find_last_checkpoint(cfg.resume, cfg.output))


def _start_process(
    cfg: TrainConfig, device: torch.device, procs: distributed.DistInfo
) -> Optional[torch.dtype]:
    """Threads, seeds (one stream per rank) and the autocast dtype of this process."""
    set_threads(cfg.threads, device, procs.local_world_size)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed + procs.rank)
    return amp_dtype


def _build_model_and_step(
    cfg: TrainConfig,
    data: RunData,
    procs: distributed.DistInfo,
    *,
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    say: Callable[[str], None],
    locality: bool = False,
) -> tuple[nn.Module, TrainingState]:
    """The model sized for the data, on ``device`` (channels-last as asked); the model the
    steps call (DDP, compile: :func:`_wrap`); and the recipe's TrainStep around it, in the
    :class:`~convit.training.run_folder.TrainingState` that ``last.pt`` saves and a resume restores.

    First, unless ``--no-memory-check``, a run whose estimated memory exceeds what the device
    has is refused (:mod:`convit.nn.memory`; ``locality``: the per-epoch measure runs too)."""
    num_classes = _num_classes(cfg, data.bundle)
    if cfg.memory_check:  # before the model exists: building it alone can take gigabytes
        memory.check_training_memory(
            model_config(cfg, num_classes, data.bundle.in_chans, data.bundle.img_size),
            cfg.batch_size,
            device,
            processes=procs.local_world_size,
            what=f"training {cfg.model}",
            amp=amp_dtype is not None,
            ema=cfg.model_ema,
            optimizer_states=1 if cfg.opt.lower().startswith(("sgd", "momentum")) else 2,
            locality_images=64 if locality else 0,
        )
    bare = build_model(cfg, num_classes, data.bundle.in_chans, data.bundle.img_size, say).to(device)
    if cfg.channels_last:
        bare.to(memory_format=torch.channels_last)
    model = _wrap(bare, device, procs.distributed, cfg.compile)
    step = build_recipe(
        cfg,
        bare,
        steps=len(data.train),
        world=procs.world_size,
        num_classes=num_classes,
        device=device,
        amp_dtype=amp_dtype,
    )  # after _wrap: the EMA copies rank 0's weights
    return model, TrainingState(cfg, bare, step)


def _train_epoch(
    model: nn.Module,
    data: RunData,
    step: TrainStep,
    epoch: int,
    *,
    device: torch.device,
    cfg: TrainConfig,
    folder: RunFolder,
    say: Callable[[str], None],
    main: bool,
) -> dict[str, Any]:
    """One epoch of :func:`~convit.training.engine.train_one_epoch` (bar and printing on rank 0 only):
    the log entries it gives; a NaN stop says where the run can go on from."""
    data.train.set_epoch(epoch)
    try:
        stats = train_one_epoch(
            model, data.train, step, device, epoch=epoch, progress=main, log_every=cfg.log_every, print_fn=say
        )
    except NonFiniteLossError as e:
        raise e.with_note(_resume_advice(epoch, folder.last)) from None
    return {k: stats[k] for k in ("train_loss", "lr", "images_per_s")}


def _first_reads(data: RunData, folder: RunFolder, rank: int, probe: bool) -> Optional[torch.Tensor]:
    """From here on (the run folder exists) every unreadable file goes to its ``skipped.tsv``,
    with those the scan of the dataset left out; then the first images are read: the probe of
    the per-epoch locality hook, if ``probe``."""
    unreadable.attach(data.bundle, folder.skipped, rank, data.skipped())
    return data.probe() if probe else None


def _num_classes(cfg: TrainConfig, bundle: DataBundle) -> int:
    num_classes = cfg.num_classes or bundle.num_classes
    if num_classes < bundle.num_classes:
        raise ValueError(
            f"--num-classes {num_classes} is smaller than the {bundle.num_classes} classes of {cfg.dataset}"
        )
    return num_classes


def _evaluate(
    model: nn.Module, step: TrainStep, data: RunData, device: torch.device, final: bool
) -> dict[str, Any]:
    """Validation metrics (of the EMA too); test metrics of the final model only, or at every
    evaluation when there is no validation split (nothing is ever chosen on test).  ``step``
    gives the EMA and the precision and memory format the model trains in."""

    def metrics(prefix: str, m: nn.Module, loader: Iterable) -> dict[str, Any]:
        return {
            f"{prefix}_{k}": v
            for k, v in evaluate(m, loader, device, step.amp_dtype, step.channels_last).items()
            if k != "n"
        }

    out: dict[str, Any] = {}
    if data.val is not None:
        out.update(metrics("val", model, data.val))
        if step.ema is not None:
            out.update(metrics("ema_val", step.ema.module, data.val))
    if data.val is None or final:
        out.update(metrics("test", model, data.test))
    return out


def _resume_advice(epoch: int, last: Path) -> str:
    if epoch == 1:
        return "no checkpoint was written (it failed in epoch 1); try a lower --lr or --clip-grad"
    return (
        f"the last good checkpoint is {last} (epoch {epoch - 1}); resume from it with a lower --lr or "
        f"with --clip-grad"
    )


def _wrap(model: nn.Module, device: torch.device, ddp: bool, compile: bool) -> nn.Module:
    """The model the training steps call: DDP around it (gradients averaged over processes),
    then torch.compile, as asked; evaluation, EMA and files use the bare model."""
    if ddp:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(model) if compile else model


def _config_comments(
    cfg: TrainConfig, *, lr: float, world: int, device: torch.device, on_device: bool
) -> dict[str, Any]:
    """Values derived from the config, written on top of config.yaml for the reader."""
    comments = {
        "effective lr": lr,
        "epochs run": cfg.run_epochs,
        "warmup epochs": cfg.run_warmup_epochs,
        "global batch": cfg.batch_size * world * cfg.grad_accum_steps,
        "processes": world,
        "device": str(device),
    }
    if on_device:
        comments["data"] = "on device (convit.data.device)"
    return comments


def _metadata(cfg: TrainConfig, bundle: DataBundle) -> dict[str, Any]:
    """What the model files say about their data, so eval/predict preprocess images the same way."""
    return {
        "class_names": list(bundle.class_names),
        "model_name": cfg.model,
        "data": {
            "dataset": cfg.dataset,
            "mean": list(bundle.mean),
            "std": list(bundle.std),
            "img_size": bundle.img_size,
            "in_chans": bundle.in_chans,
            "native_size": bundle.native_size,
        },
    }


def _describe(
    cfg: TrainConfig,
    model: nn.Module,
    data: RunData,
    *,
    lr: float,
    world: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    out: Path,
) -> str:
    """The line printed before the first epoch: model, data, schedule, processes, run folder."""
    epochs, steps = cfg.run_epochs, len(data.train)
    n_params = count_params(model)
    size = f"{n_params / 1e6:.2f}M" if n_params >= 1e6 else f"{n_params / 1e3:.1f}k"
    precision = f", {str(amp_dtype).replace('torch.', '')} autocast" if amp_dtype else ""
    b = data.bundle
    return (
        f"{cfg.model} ({size} params) on {cfg.dataset}: {len(b.train)} train / "
        f"{len(b.val) if data.val is not None else 0} val / {len(b.test)} test images; "
        f"{epochs} epochs x {steps} steps of {cfg.batch_size * world}"
        + (f", an update every {cfg.grad_accum_steps}" if cfg.grad_accum_steps > 1 else "")
        + f" (lr {lr:.3g}, warm-up "
        f"{cfg.run_warmup_epochs:g} epochs); "
        f"{world} process(es) on {device}{precision}; run folder {out}"
    )


def _summary(
    folder: RunFolder,
    entry: dict[str, Any],
    best: dict[str, Any],
    *,
    epochs: int,
    lr: float,
    world: int,
    data: RunData,
    rank: int,
    report: bool,
) -> dict[str, Any]:
    """What fit returns (``time_s`` is filled in last) and prints at the end of the run; every
    process calls it, as the unreadable files each left out are gathered here."""
    out, skipped = folder.out, unreadable.gather(data.skipped(), folder.skipped, rank)
    return {
        "output": str(out),
        "epochs": epochs,
        "time_s": None,
        "skipped": len(skipped),
        "skipped_list": str(folder.skipped) if skipped else None,
        "test_top1": entry.get("test_top1"),
        "test_top5": entry.get("test_top5"),
        "test_loss": entry.get("test_loss"),
        "val_top1": entry.get("val_top1"),
        "best_val_top1": best["val_top1"] if best["epoch"] else None,
        "best_epoch": best["epoch"] or None,
        "lr": lr,
        "world_size": world,
        "train_images": len(data.bundle.train),
        "checkpoint": str(out / "model.safetensors"),
        "best": str(out / "best.safetensors"),
        "last": str(folder.last),
        "log": str(folder.log),
        "config": str(out / "config.yaml"),
        "figures": str(out / "figures"),
        "report": str(out / "report.html") if report else None,
    }
