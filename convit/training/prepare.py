"""What :func:`convit.training.fit.fit` does before its first epoch, one named step each.

The process (threads, seeds, autocast dtype), the state a resumed run continues from, the
model sized for the data with the recipe's :class:`~convit.training.engine.TrainStep` around it
(after a memory check; DDP and torch.compile as asked), and what the run folder and the
console are told about it: the metadata of the model files, the comments on top of
``config.yaml``, the line printed before the first epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..core import distributed
from ..core.runtime import resolve_amp, seed_everything, set_threads
from ..data import DataBundle
from ..nn import memory
from ..nn.model import count_params
from ..weights.cnn import cnn_config_of
from . import unreadable
from .batches import PROBE_IMAGES, RunData
from .config import TrainConfig
from .recipe import build_model, build_recipe, model_config
from .resume import TrainingState, find_last_checkpoint, load_training_state
from .run_folder import RunFolder

__all__ = [
    "start_process",
    "state_to_resume",
    "build_model_and_step",
    "first_reads",
    "run_metadata",
    "config_comments",
    "describe_run",
]


def start_process(
    cfg: TrainConfig, device: torch.device, procs: distributed.DistInfo
) -> Optional[torch.dtype]:
    """Threads, seeds (one stream per rank) and the autocast dtype of this process."""
    set_threads(cfg.threads, device, procs.local_world_size)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed + procs.rank)
    return amp_dtype


def state_to_resume(cfg: TrainConfig, given: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """``cfg.resume``'s last.pt: ``given`` (the caller read it), else read now; None for a fresh run."""
    if given is not None and not cfg.resume:
        raise ValueError("resume_state is the last.pt of cfg.resume, which is not set")
    if given is not None or not cfg.resume:
        return given
    return load_training_state(find_last_checkpoint(cfg.resume, cfg.output))


def build_model_and_step(
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
    :class:`~convit.training.resume.TrainingState` that ``last.pt`` saves and a resume restores.

    First, unless ``--no-memory-check``, a run whose estimated memory exceeds what the device
    has is refused (:mod:`convit.nn.memory`; ``locality``: the per-epoch measure runs too)."""
    num_classes = _num_classes(cfg, data.bundle)
    if cfg.memory_check:  # before the model exists: building it alone can take gigabytes
        _check_memory(cfg, data.bundle, num_classes, procs, device, amp_dtype, locality)
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


def _check_memory(
    cfg: TrainConfig,
    bundle: DataBundle,
    num_classes: int,
    procs: distributed.DistInfo,
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    locality: bool,
) -> None:
    """Refuse a run whose estimated memory (model, optimizer states, EMA, activations of a
    batch, the locality probe) exceeds what ``device`` has, before anything is allocated.  The
    estimate is calibrated on ConViTs: other models (the CNN arm) train unchecked."""
    arch = model_config(cfg, num_classes, bundle.in_chans, bundle.img_size)
    if arch is None:
        return
    memory.check_training_memory(
        arch,
        cfg.batch_size,
        device,
        processes=procs.local_world_size,
        what=f"training {cfg.model}",
        amp=amp_dtype is not None,
        ema=cfg.model_ema,
        optimizer_states=1 if cfg.opt.lower().startswith(("sgd", "momentum")) else 2,
        locality_images=PROBE_IMAGES if locality else 0,
    )


def _num_classes(cfg: TrainConfig, bundle: DataBundle) -> int:
    num_classes = cfg.num_classes or bundle.num_classes
    if num_classes < bundle.num_classes:
        raise ValueError(
            f"--num-classes {num_classes} is smaller than the {bundle.num_classes} classes of {cfg.dataset}"
        )
    return num_classes


def _wrap(model: nn.Module, device: torch.device, ddp: bool, compile: bool) -> nn.Module:
    """The model the training steps call: DDP around it (gradients averaged over processes),
    then torch.compile, as asked; evaluation, EMA and files use the bare model."""
    if ddp:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(model) if compile else model


def first_reads(data: RunData, folder: RunFolder, rank: int, probe: bool) -> Optional[torch.Tensor]:
    """From here on (the run folder exists) every unreadable file goes to its ``skipped.tsv``,
    with those the scan of the dataset left out; then the first images are read: the probe of
    the per-epoch locality hook, if ``probe``."""
    unreadable.attach(data.bundle, folder.skipped, rank, data.skipped())
    return data.probe() if probe else None


def run_metadata(cfg: TrainConfig, bundle: DataBundle) -> dict[str, Any]:
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


def config_comments(
    cfg: TrainConfig,
    *,
    lr: float,
    world: int,
    device: torch.device,
    on_device: bool,
    data_note: Optional[str] = None,
) -> dict[str, Any]:
    """Values derived from the config, written on top of config.yaml for the reader
    (``on_device``: the splits are held on the device; ``data_note``: where the batches come
    from, otherwise, when that was a choice)."""
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
    elif data_note:
        comments["data"] = data_note
    return comments


def describe_run(
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
    epochs = cfg.run_epochs
    steps = len(data.train)
    n_params = count_params(model)
    size = f"{n_params / 1e6:.2f}M" if n_params >= 1e6 else f"{n_params / 1e3:.1f}k"
    precision = f", {str(amp_dtype).replace('torch.', '')} autocast" if amp_dtype else ""
    b = data.bundle
    return (
        f"{cfg.model} ({_architecture(model)}{size} params) on {cfg.dataset}: {len(b.train)} train / "
        f"{len(b.val) if data.val is not None else 0} val / {len(b.test)} test images; "
        f"{epochs} epochs x {steps} steps of {cfg.batch_size * world}"
        + (f" in {cfg.micro_batches} micro-batches" if cfg.micro_batches > 1 else "")
        + (f", an update every {cfg.grad_accum_steps}" if cfg.grad_accum_steps > 1 else "")
        + f" (lr {lr:.3g}, warm-up "
        f"{cfg.run_warmup_epochs:g} epochs); "
        f"{world} process(es) on {device}{precision}"
        + (f", data held on {device}" if data.in_memory else "")
        + f"; run folder {out}"
    )


def _architecture(model: nn.Module) -> str:
    """What the describe line says of a model that is not a ConViT (whose name says it all):
    the CNN arm's widths, blocks and stem, before its parameter count."""
    cnn = cnn_config_of(model)
    return f"{cnn.describe()}; " if cnn is not None else ""
