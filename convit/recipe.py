"""What a run trains and how: the zoo model sized for the data, and DeiT's recipe around it.

:func:`build_model` turns ``cfg.model`` (+ ``--model-kwargs``, ``--finetune``, ``--pretrained``)
into a model for ``num_classes`` classes of ``in_chans`` x ``img_size`` images;
:func:`build_recipe` gives the optimizer, the per-step learning-rate schedule, the loss and
mixup/cutmix, all from timm's factories, as DeiT's ``main.py`` builds them.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch.optim import Optimizer

from .checkpoint import CheckpointError, config_from_metadata, read_checkpoint, read_metadata_json
from .config import TrainConfig
from .model import ConViT, ConViTConfig
from .zoo import create_model, model_spec

__all__ = ["build_model", "build_recipe"]

#: ConViTConfig fields that define the weights' shapes and meaning (a file trained with other
#: values cannot be fine-tuned as this model).
_ARCH_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "local_up_to_layer",
              "use_pos_embed")


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int, img_size: int,
                say: Callable[[str], None] = print) -> ConViT:
    """The zoo model ``cfg.model`` sized for the data, optionally starting from weights.

    With ``--finetune FILE`` (or ``--pretrained``) the weights are loaded with the file's own
    head, which is then replaced by a fresh ``num_classes`` head if the sizes differ.
    """
    overrides = dict(cfg.model_kwargs)
    overrides.setdefault("drop_path_rate", cfg.drop_path)
    overrides.setdefault("in_chans", in_chans)
    overrides.setdefault("img_size", img_size)
    if cfg.finetune:
        sd, meta = read_checkpoint(cfg.finetune)
        _check_same_architecture(cfg, meta)
        head = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        model = create_model(cfg.model, checkpoint_path=cfg.finetune, **{**overrides, "num_classes": head})
        source = cfg.finetune
    elif cfg.pretrained:
        overrides.pop("num_classes", None)
        model = create_model(cfg.model, pretrained=True, **overrides)
        source = f"the published {cfg.model} weights"
    else:
        return create_model(cfg.model, **{**overrides, "num_classes": num_classes})
    if model.num_classes != num_classes:
        say(f"fine-tuning from {source}: its {model.num_classes}-class head is replaced by a new "
            f"{num_classes}-class head")
        model.reset_classifier(num_classes)
    return model


def _check_same_architecture(cfg: TrainConfig, meta: dict) -> None:
    """Our files carry their architecture, which ``create_model`` would silently prefer to the
    zoo name: fine-tuning a file as another ``--model`` is an error that names the differences."""
    stored = config_from_metadata(meta)
    if not stored:
        return  # foreign files: load_into reports any mismatch key by key
    wanted = ConViTConfig.from_dict({**model_spec(cfg.model).config,
                                     **{k: v for k, v in cfg.model_kwargs.items() if k in _ARCH_KEYS}}).to_dict()
    diff = [f"{k} {stored[k]} (file) vs {wanted[k]} ({cfg.model})" for k in _ARCH_KEYS
            if k in stored and stored[k] != wanted[k]]
    if diff:
        trained_as = read_metadata_json(meta, "model_name")
        raise CheckpointError(
            f"{cfg.finetune} does not match the model {cfg.model}: {'; '.join(diff)}. "
            + (f"It was trained as {trained_as}: pass --model {trained_as}" if trained_as else
               "Pass the --model (and --model-kwargs) it was trained with")
            + " (a different head size is fine: it is replaced)")


def build_recipe(cfg: TrainConfig, model: nn.Module, epochs: int, warmup: float, steps: int, lr: float,
                 num_classes: int) -> Tuple[Optimizer, Optional[Scheduler], nn.Module, Optional[Mixup]]:
    """The DeiT recipe's optimizer, per-step schedule, loss and mixup, from timm's factories.

    Weight decay skips 1-D parameters and ``model.no_weight_decay()`` (pos_embed, cls_token,
    gates).  The schedule is stepped per update (``steps`` per epoch), so short runs warm up
    smoothly.  Returns (optimizer, scheduler (None for ``--sched none``), loss_fn, mixup_fn or None).
    """
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, eps=cfg.opt_eps)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs, warmup_epochs=warmup,
                                       warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
                                       updates_per_epoch=steps)
    mixup_fn = None
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                         switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                         num_classes=num_classes)
        loss_fn: nn.Module = SoftTargetCrossEntropy()  # smoothing is folded into the mixed targets
    elif cfg.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()
    return optimizer, scheduler, loss_fn, mixup_fn
