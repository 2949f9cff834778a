"""What a run trains and how: the zoo model sized for the data, and DeiT's recipe around it.

:func:`build_model` turns ``cfg.model`` (+ ``--model-kwargs``, ``--finetune``, ``--pretrained``)
into a model for ``num_classes`` classes of ``in_chans`` x ``img_size`` images;
:func:`build_recipe` gives the :class:`~convit.training.engine.TrainStep` around it: the optimizer, the
per-step learning-rate schedule, the loss, mixup/cutmix, loss scaler, gradient clipping and EMA,
from timm's factories, as DeiT's ``main.py`` builds them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from ..nn.model import ConViTConfig
from ..weights.training_start import TrainingStart, training_config, training_model
from .config import TrainConfig
from .engine import TrainStep

__all__ = ["build_model", "build_recipe", "model_config"]


def build_model(
    cfg: TrainConfig, num_classes: int, in_chans: int, img_size: int, say: Callable[[str], None] = print
) -> nn.Module:
    """The zoo model ``cfg.model`` sized for the data, optionally starting from weights, with
    gradient checkpointing as ``--grad-checkpointing`` asks.

    With ``--finetune FILE`` the weights are loaded with the file's own head, which is then
    replaced by a fresh ``num_classes`` head if the sizes differ; ``--pretrained`` does the same
    as timm's ``pretrained=True`` does (input weights adapted to the data's channels too).
    """
    model = training_model(_start(cfg, num_classes, in_chans, img_size), say)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model


def model_config(cfg: TrainConfig, num_classes: int, in_chans: int, img_size: int) -> Optional[ConViTConfig]:
    """The architecture :func:`build_model` builds, without building it (nothing allocated):
    what :mod:`convit.nn.memory` estimates before the model exists; None for a model that is
    not a ConViT (the CNN arm), which that estimate does not cover."""
    return training_config(_start(cfg, num_classes, in_chans, img_size))


def _start(cfg: TrainConfig, num_classes: int, in_chans: int, img_size: int) -> TrainingStart:
    """What the run asks of the weights layer: the zoo entry with ``--model-kwargs``, then the
    drop-path rate and the data's channels and image size where those do not say."""
    overrides = dict(cfg.model_kwargs)
    overrides.setdefault("drop_path_rate", cfg.drop_path)
    overrides.setdefault("in_chans", in_chans)
    overrides.setdefault("img_size", img_size)
    return TrainingStart(cfg.model, num_classes, overrides, cfg.finetune, cfg.pretrained)


def build_recipe(
    cfg: TrainConfig,
    model: nn.Module,
    *,
    steps: int,
    world: int,
    num_classes: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
) -> TrainStep:
    """The DeiT recipe around ``model`` as one :class:`~convit.training.engine.TrainStep`: optimizer,
    per-update schedule, loss, mixup/cutmix, fp16 loss scaler, gradient clipping and EMA, from
    timm's factories as DeiT's ``main.py`` builds them.

    model: the bare model (no DDP / compile wrapper), on ``device``.  steps: batches per epoch
    (an update every ``grad_accum_steps`` of them, and after the last); world: processes (the
    lr scales with the global batch).  amp_dtype: the autocast dtype, or None; only float16
    gets an enabled GradScaler.  The EMA copies ``model`` as it is now: under DDP, build the
    recipe after wrapping the model, so every process starts its EMA from rank 0's weights
    (which DDP has broadcast).
    """
    optimizer, scheduler = _optimizer_and_schedule(cfg, model, steps, world)
    loss_fn, mixup_fn = _loss_and_mixup(cfg, num_classes)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # only fp16 needs scaling
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    return TrainStep(
        optimizer,
        loss_fn,
        lr_scheduler=scheduler,
        mixup_fn=mixup_fn,
        scaler=scaler,
        clip_grad=cfg.clip_grad,
        ema=ema,
        amp_dtype=amp_dtype,
        channels_last=cfg.channels_last,
        accum_steps=cfg.grad_accum_steps,
        micro_batches=cfg.micro_batches,
    )


def _optimizer_and_schedule(
    cfg: TrainConfig, model: nn.Module, steps: int, world: int
) -> tuple[torch.optim.Optimizer, Any]:
    """timm's optimizer and its per-update learning-rate schedule (None for ``--sched none``).

    Weight decay skips 1-D parameters and ``model.no_weight_decay()`` (pos_embed, cls_token,
    gates).  ``layer_decay``: timm's layer-wise lr decay, through the model's ``group_matcher``.
    The schedule is stepped per update, so short runs warm up smoothly.
    """
    optimizer = create_optimizer_v2(
        model,
        opt=cfg.opt,
        lr=cfg.resolved_lr(world),
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        eps=cfg.opt_eps,
        layer_decay=cfg.layer_decay,
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.run_epochs,
        warmup_epochs=cfg.run_warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        step_on_epochs=False,
        updates_per_epoch=math.ceil(steps / cfg.grad_accum_steps),
    )
    if scheduler is None:  # timm's schedulers apply the layer scales; without one, apply them once
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
    return optimizer, scheduler


def _loss_and_mixup(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, Optional[Mixup]]:
    """The training loss and timm's Mixup (None without mixup/cutmix): with mixup, the targets
    are soft and carry the label smoothing, so the loss is plain soft-target cross-entropy."""
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0:
        mixup_fn = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mixup_prob,
            switch_prob=cfg.mixup_switch_prob,
            mode="batch",
            label_smoothing=cfg.smoothing,
            num_classes=num_classes,
        )
        return SoftTargetCrossEntropy(), mixup_fn
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing), None
    return nn.CrossEntropyLoss(), None
