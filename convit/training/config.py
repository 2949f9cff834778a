"""Every knob of a training run, in one place (:class:`TrainConfig`), and how it is set.

Precedence, lowest first:

1. the dataclass defaults below (the DeiT ImageNet recipe where DeiT has a value);
2. a training preset (:data:`convit.core.presets.TRAIN_PRESETS`).  When none is named, ``finetune``
   for ``--finetune`` / ``--pretrained``, else the dataset's (digits -> ``digits``,
   cifar10/100 -> ``cifar``, ...: its :attr:`convit.data.registry.DatasetSpec.default_preset`);
3. a YAML or TOML file (``convit train --config run.yaml``): a flat mapping of field names;
4. command-line flags (``--epochs 10``; every field has a flag, ``_`` spelled ``-``:
   :mod:`convit.training.flags`, which derives them from the dataclass).

Unknown keys are an error that names the closest known key.  The effective config is written
to ``<output>/config.yaml`` by :func:`convit.training.fit.fit`; that file can be passed back with
``--config`` to repeat the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..core.presets import FINETUNE_PRESET, TRAIN_PRESETS
from ..data.registry import dataset_spec, datasets_help
from .config_values import check_keys, coerce, read_mapping

__all__ = [
    "TrainConfig",
    "build_config",
    "load_config_file",
    "fitted_warmup",
    "save_config",
    "IN_MEMORY_CHOICES",
]


#: The values of ``in_memory``.
IN_MEMORY_CHOICES = ("off", "on", "auto")


def _knob(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its help text (used for the CLI flag and the docs)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """One training run.  Defaults are DeiT's ImageNet recipe (Touvron et al. 2021), which
    ConViT trains with unchanged; the presets adapt it to small data sets."""

    # -- preset ----------------------------------------------------------------------------
    preset: Optional[str] = _knob(
        None,
        f"named preset under the config file and flags: {', '.join(TRAIN_PRESETS)}; "
        "default: finetune to fine-tune, else the dataset's",
    )
    # -- model -----------------------------------------------------------------------------
    model: str = _knob("convit_digits", "zoo name (see `convit models`)")
    model_kwargs: dict[str, Any] = _knob({}, "extra ConViTConfig fields, e.g. patch_size=4 depth=6")
    drop_path: float = _knob(0.1, "stochastic depth rate (drop_path_rate of the model)")
    num_classes: Optional[int] = _knob(
        None, "classifier size; default: the dataset's (--finetune resets the head)"
    )
    finetune: Optional[str] = _knob(
        None,
        "start from these weights (ours, official .pth, timm "
        ".safetensors/.bin); a different head is re-initialised",
    )
    pretrained: bool = _knob(False, "start from the zoo model's published weights (found locally)")
    # -- data ------------------------------------------------------------------------------
    dataset: str = _knob("digits", datasets_help())
    data_path: Optional[str] = _knob(None, "dataset folder or file (see convit.data)")
    download: bool = _knob(False, "let torchvision download fashion-mnist / cifar if absent")
    img_size: Optional[int] = _knob(None, "input resolution; default: the dataset's native size")
    sampling_ratio: float = _knob(1.0, "fraction of each class of the train split to train on, in (0, 1]")
    scale_epochs: bool = _knob(
        False,
        "multiply epochs and warmup by 1/sampling_ratio, so that every ratio sees the same number of images",
    )
    val_fraction: float = _knob(
        0.0, "fraction of the train split held out (per class) for validation and model selection"
    )
    augment: str = _knob("auto", "auto, deit (RandAugment+erasing), small (crop+flip) or none")
    repeated_aug: bool = _knob(False, "repeated augmentation (3 augmented copies per image, DeiT)")
    num_workers: int = _knob(0, "DataLoader worker processes per training process")
    in_memory: str = _knob(
        "off",
        "decode the splits once, at the run's image size, into memory on the device and augment them "
        "there a batch at a time (augment small or none, one process): on, off, or auto (on when the "
        "decoded splits take at most a quarter of the device's free memory: convit.training.in_memory)",
    )
    strict_images: bool = _knob(
        False,
        "any unreadable image is an error, not skipped (skipped files are listed in <output>/skipped.tsv)",
        aliases=("--strict",),
    )
    max_image_pixels: Optional[int] = _knob(
        None,
        "decompression-bomb limit of the image reader (pixels); "
        "default: Pillow's; 0: no limit, for trusted files only",
    )
    # -- optimisation ----------------------------------------------------------------------
    epochs: int = _knob(300, "training epochs (before --scale-epochs)")
    batch_size: int = _knob(64, "images per step per process")
    lr: Optional[float] = _knob(None, "absolute learning rate; default: blr * global_batch / 512")
    blr: float = _knob(5e-4, "base learning rate, scaled by global_batch / 512 (DeiT's rule)")
    opt: str = _knob("adamw", "optimizer name for timm.optim.create_optimizer_v2")
    opt_eps: float = _knob(1e-8, "optimizer epsilon")
    momentum: float = _knob(0.9, "momentum (SGD-like optimizers)")
    weight_decay: float = _knob(
        0.05, "weight decay (not applied to biases, norms, position embeddings, class token and gates)"
    )
    clip_grad: Optional[float] = _knob(None, "clip the gradient norm to this value")
    layer_decay: Optional[float] = _knob(
        None,
        "layer-wise lr decay (timm's): head at lr, block i of L at lr x "
        "decay^(L - i), patch embedding at lr x decay^(L + 1); none: off",
    )
    grad_accum_steps: int = _knob(1, "N batches per optimizer step: the update of one N-times-larger batch")
    micro_batches: int = _knob(
        1,
        "cut each batch into N micro-batches whose gradients add up: the same update (lr, schedule "
        "and logs of the whole batch) in about 1/N of the activation memory; a run out of GPU "
        "memory is retried with it doubled",
    )
    sched: str = _knob("cosine", "learning-rate schedule for timm.scheduler.create_scheduler_v2")
    warmup_epochs: float = _knob(
        5,
        "linear warm-up epochs (before --scale-epochs); when --epochs is given "
        "and this is not, the preset's warm-up capped to 20% of the epochs",
    )
    warmup_lr: float = _knob(1e-6, "learning rate at the start of warm-up")
    min_lr: float = _knob(1e-5, "final learning rate of the cosine schedule")
    # -- regularisation --------------------------------------------------------------------
    mixup: float = _knob(0.8, "mixup alpha (0 = off)")
    cutmix: float = _knob(1.0, "cutmix alpha (0 = off)")
    mixup_prob: float = _knob(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = _knob(0.5, "probability of cutmix rather than mixup when both are on")
    smoothing: float = _knob(0.1, "label smoothing")
    model_ema: bool = _knob(False, "keep an exponential moving average of the weights (evaluated too)")
    model_ema_decay: float = _knob(0.99996, "EMA decay per step")
    # -- system ----------------------------------------------------------------------------
    device: str = _knob("auto", "auto (cuda if available), cpu, cuda, cuda:1, mps")
    amp: str = _knob("auto", "mixed precision: auto (bf16 on CUDA, off elsewhere), bf16, fp16, off")
    compile: bool = _knob(False, "torch.compile the model")
    channels_last: bool = _knob(False, "channels-last memory format (helps convolutions on GPU)")
    grad_checkpointing: bool = _knob(False, "recompute each block in backward instead of storing activations")
    threads: Optional[int] = _knob(None, "CPU threads per process; default: cpu_count / processes")
    seed: int = _knob(0, "random seed (data split, init, augmentation order)")
    memory_check: bool = _knob(
        True,
        "refuse, before the first step, a run whose estimated memory exceeds "
        "what the device has (convit.nn.memory)",
    )
    # -- run, logging ----------------------------------------------------------------------
    output: Optional[str] = _knob(
        None, "run folder; default runs/<model>_<dataset> (a free suffix is added if it already holds a run)"
    )
    resume: Optional[str] = _knob(None, "continue a run: its last.pt or its folder")
    overwrite: bool = _knob(False, "allow writing into an --output folder that already holds a run")
    eval_every: int = _knob(1, "evaluate on the validation split every N epochs (and at the end)")
    log_every: int = _knob(0, "without a terminal: print a line every N steps (0 = once per epoch)")
    locality: bool = _knob(True, "log per-layer nonlocality and gates every evaluated epoch")
    tensorboard: bool = _knob(False, "also log scalars to <output>/tensorboard (needs tensorboard)")
    report: bool = _knob(True, "write figures and report.html into the run folder at the end")

    # ------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check values that would otherwise fail late or silently; returns self."""

        def bad(msg: str) -> None:
            raise ValueError(msg)

        if not (0.0 < float(self.sampling_ratio) <= 1.0):  # also rejects NaN
            bad(f"--sampling-ratio must be in (0, 1], got {self.sampling_ratio}")
        if not (0.0 <= float(self.val_fraction) < 1.0):
            bad(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("epochs", "batch_size", "eval_every", "grad_accum_steps", "micro_batches"):
            if int(getattr(self, name)) < 1:
                bad(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.micro_batches > self.batch_size:
            bad(f"--micro-batches {self.micro_batches} is more than the {self.batch_size} images of a batch")
        if self.in_memory not in IN_MEMORY_CHOICES:
            bad(f"--in-memory must be one of {', '.join(IN_MEMORY_CHOICES)}, got {self.in_memory!r}")
        for name in (
            "warmup_epochs",
            "blr",
            "weight_decay",
            "mixup",
            "cutmix",
            "drop_path",
            "num_workers",
            "log_every",
            "warmup_lr",
            "min_lr",
        ):
            v = float(getattr(self, name))
            if not v >= 0 or math.isinf(v):
                bad(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            bad(f"--lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.smoothing < 1:
            bad(f"--smoothing must be in [0, 1), got {self.smoothing}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            bad(f"--amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.num_classes is not None and self.num_classes < 1:
            bad(f"--num-classes must be positive, got {self.num_classes}")
        if self.threads is not None and self.threads < 1:
            bad(f"--threads must be positive, got {self.threads}")
        if self.preset is not None and self.preset not in TRAIN_PRESETS:
            bad(f"unknown preset {self.preset!r}; known: {', '.join(TRAIN_PRESETS)}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            bad(f"--clip-grad must be positive, got {self.clip_grad}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            bad(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        return self

    @property
    def run_epochs(self) -> int:
        """Epochs actually run: ``epochs``, times 1/sampling_ratio with --scale-epochs."""
        if self.scale_epochs:
            return max(1, int(round(self.epochs / self.sampling_ratio)))
        return int(self.epochs)

    @property
    def run_warmup_epochs(self) -> float:
        """Warm-up epochs actually run (scaled like :attr:`run_epochs`)."""
        return self.warmup_epochs / self.sampling_ratio if self.scale_epochs else self.warmup_epochs

    def resolved_lr(self, world_size: int = 1) -> float:
        """``lr`` if set, else DeiT's ``blr * global_batch / 512`` (batch x processes x grad_accum_steps)."""
        if self.lr is not None:
            return float(self.lr)
        return self.blr * self.batch_size * world_size * self.grad_accum_steps / 512.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config_file(path: os.PathLike) -> dict[str, Any]:
    """Read a flat mapping of config keys from YAML (``.yaml``/``.yml``) or TOML (``.toml``)."""
    data = read_mapping(path)
    check_keys(TrainConfig, data, str(Path(path)))
    return {k: coerce(TrainConfig, k, v) for k, v in data.items()}


def build_config(
    overrides: Optional[Mapping[str, Any]] = None,
    config_file: Optional[os.PathLike] = None,
) -> TrainConfig:
    """Defaults < preset < config file < ``overrides`` (e.g. the flags given on the command line).

    The preset is the one named in ``overrides``, else in the file, else ``finetune`` if either
    sets ``finetune`` or ``pretrained``, else the dataset's (default ``digits``).
    """
    overrides = dict(overrides or {})
    check_keys(TrainConfig, overrides, "overrides")
    overrides = {k: coerce(TrainConfig, k, v) for k, v in overrides.items()}
    from_file = load_config_file(config_file) if config_file else {}
    layered = {**from_file, **overrides}
    dataset = layered.get("dataset", TrainConfig.dataset)
    finetuning = layered.get("finetune") or layered.get("pretrained")
    preset = layered.get("preset") or (
        FINETUNE_PRESET if finetuning else dataset_spec(dataset).default_preset
    )
    if preset is not None and preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(TRAIN_PRESETS)}")
    values: dict[str, Any] = {}
    if preset is not None:
        values.update(TRAIN_PRESETS[preset])
        values["preset"] = preset
    values.update(layered)
    if "dataset" in layered:  # a preset's dataset never overrides the one asked for
        values["dataset"] = layered["dataset"]
    if "epochs" in layered and "warmup_epochs" not in layered:
        values["warmup_epochs"] = fitted_warmup(
            values.get("warmup_epochs", TrainConfig.warmup_epochs), layered["epochs"]
        )
    return TrainConfig(**values).validate()


#: A run shortened with ``epochs`` (warm-up not given) warms up for at most this fraction of it.
WARMUP_CAP_FRACTION = 0.2


def fitted_warmup(warmup_epochs: float, epochs: float) -> float:
    """The preset's warm-up, capped to :data:`WARMUP_CAP_FRACTION` of ``epochs``: a run
    shortened below its preset's warm-up would otherwise never reach its learning rate."""
    return min(float(warmup_epochs), round(WARMUP_CAP_FRACTION * float(epochs), 6))


def save_config(cfg: TrainConfig, path: os.PathLike, comments: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``cfg`` as YAML (loadable with ``--config``); ``comments`` go on top as ``# k: v``."""
    lines = [f"# {k}: {v}" for k, v in (comments or {}).items()]
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    Path(path).write_text("\n".join(lines + [body]))
