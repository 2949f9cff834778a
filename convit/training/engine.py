"""One epoch of training and one pass of evaluation (the two loops of DeiT's ``engine.py``).

Nothing here parses arguments or knows which model it trains: :func:`convit.training.fit.fit` builds
the model and the data, :func:`convit.training.recipe.build_recipe` the :class:`TrainStep` (optimizer,
schedule, loss, mixup, loss scaler, clipping, EMA), and fit calls these two functions once per
epoch.
Metrics are sums (of losses, correct predictions and image counts) reduced over all
processes before dividing, so they are exact under DDP rather than means of means.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..core.distributed import all_reduce_sum, any_process

__all__ = ["NonFiniteLossError", "TrainStep", "autocast", "train_one_epoch", "evaluate"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised before the bad update is applied."""

    def __init__(
        self, epoch: int, step: int, steps: int, loss: float, lr: float, note: str = "", what: str = ""
    ) -> None:
        self.epoch = epoch
        self.step = step
        self.steps = steps
        self.loss = loss
        self.lr = lr
        self.what = what
        what = what or f"the training loss is {loss}"
        super().__init__(
            f"{what} at epoch {epoch}, step {step}/{steps} (lr {lr:.3g}); training "
            f"stopped" + (f"; {note}" if note else "")
        )

    def with_note(self, note: str) -> NonFiniteLossError:
        """The same error with ``note`` (e.g. where the run can be resumed from) appended."""
        return NonFiniteLossError(
            self.epoch, self.step, self.steps, self.loss, self.lr, note=note, what=self.what
        )


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar when stderr is a terminal (and we are the printing process), else the iterable."""
    if enabled and sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable


@dataclass
class TrainStep:
    """What one optimisation step needs besides the model and the batch (built by
    :func:`convit.training.recipe.build_recipe`), so the loop passes one object instead of nine.

    optimizer: stepped once per update: every ``accum_steps`` batches, whose gradients are
        accumulated (each loss divided by the batches of the update), and after the epoch's
        last batch.  loss_fn: ``loss_fn(logits, targets)``, accepting the
        soft targets of ``mixup_fn`` when there is one.  lr_scheduler: timm, stepped per update
        (``step_update``), or None.  mixup_fn: timm ``Mixup`` or None.  scaler: a GradScaler
        (fp16 only); None or disabled: plain steps.  clip_grad: max gradient norm, or None.
    ema: timm ``ModelEmaV3`` updated after each step, or None.  amp_dtype: autocast dtype, or
        None for full precision.  channels_last: batches in channels-last memory format.
    micro_batches: each batch is forwarded and backpropagated in this many slices whose
        gradients add up to the batch's (less activation memory; the same update).
    """

    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    lr_scheduler: Any = None
    mixup_fn: Optional[Callable] = None
    scaler: Optional[torch.amp.GradScaler] = None
    clip_grad: Optional[float] = None
    ema: Any = None
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    accum_steps: int = 1
    micro_batches: int = 1

    @property
    def lr(self) -> float:
        """The rate the next step will use: the largest of the parameter groups' (with layer-wise
        decay, the head's, which is the nominal rate)."""
        return max(g["lr"] for g in self.optimizer.param_groups)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    step: TrainStep,
    device: torch.device,
    epoch: int,
    *,
    progress: bool = True,
    log_every: int = 0,
    print_fn: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` with ``step``; returns ``train_loss``, ``lr``
    (the rate the last step used), ``images_per_s`` and ``train_images`` (over all processes).

    epoch: 1-based (for messages, and for the per-update schedule and EMA: after update ``u``
        of the epoch the update count is ``(epoch - 1) * ceil(len(loader) / accum_steps) + u``).
        progress: a bar when stderr is a terminal; log_every: without a bar, print a line every
        N steps (0: never).

    Raises :class:`NonFiniteLossError` on a NaN/inf loss before the step that would corrupt
    the weights (on every process at the same step: the check is reduced over ranks), and
    after the epoch if a finite loss still overflowed the weights.
    """
    model.train()
    steps = len(loader)
    # A disabled GradScaler passes loss and step through unchanged (same numbers, no branches).
    scaler = step.scaler if step.scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    loss_sum = 0.0  # loss x images, in float64 like the evaluation's sums
    count = 0  # images
    start = time.perf_counter()
    lr = step.lr
    bar = _progress(loader, steps, f"epoch {epoch}", progress)
    for i, (images, targets) in enumerate(bar, start=1):
        images, targets = _to_device(images, targets, device, step.channels_last)
        loss, lr = _update(model, images, targets, step, scaler, at=(epoch, i, steps))
        loss_sum += loss * images.shape[0]
        count += images.shape[0]
        if bar is not loader:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        elif log_every and i % log_every == 0:
            print_fn(f"  epoch {epoch} step {i}/{steps}  loss {loss:.4f}  lr {lr:.3e}")
    if bar is not loader:
        bar.close()
    _check_weights(model, epoch, steps, lr)
    loss_sum, n = all_reduce_sum(torch.tensor([loss_sum, count], dtype=torch.float64, device=device)).tolist()
    return {
        "train_loss": loss_sum / max(n, 1.0),
        "lr": lr,
        "images_per_s": n / max(time.perf_counter() - start, 1e-9),
        "train_images": int(n),
    }


def _check_weights(model: nn.Module, epoch: int, steps: int, lr: float) -> None:
    """A finite loss may still have overflowed the weights: their largest |w| (NaN if any is
    NaN), one fused reduction over all of them, says so."""
    if not torch.nn.utils.get_total_norm(list(model.parameters()), math.inf).isfinite():
        raise NonFiniteLossError(epoch, steps, steps, math.nan, lr, what="the weights became NaN/inf")


def _to_device(
    images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets


def _update(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    step: TrainStep,
    scaler: torch.amp.GradScaler,
    at: tuple[int, int, int],
) -> tuple[float, float]:
    """One batch: forward and backward, then, at the last batch of an update (every
    ``step.accum_steps`` batches, and the epoch's last), the optimizer step, the EMA and the
    schedule.  Returns the batch's loss (a float) and the rate the update uses.

    at: (epoch, batch, batches), 1-based: where the batch is, which update it belongs to (the
    schedule and the EMA are functions of the update count) and where a NaN/inf loss happened.
    Each loss is divided by the number of batches of its update, so the accumulated gradient
    is the mean over the update's batches: the gradient of one batch that many times larger.
    """
    epoch, i, steps = at
    first = i - (i - 1) % step.accum_steps  # the update's first batch
    last = min(first + step.accum_steps - 1, steps)
    updates = (epoch - 1) * math.ceil(steps / step.accum_steps) + math.ceil(i / step.accum_steps)
    if step.mixup_fn is not None:  # on the whole batch: micro-batches share its draws
        images, targets = step.mixup_fn(images, targets)
    if i == first:
        step.optimizer.zero_grad(set_to_none=True)
    value = _backward(model, images, targets, step, scaler, batches=last - first + 1, sync=i == last)
    # Stop on NaN/inf before it reaches the weights (the update is applied below); every rank
    # stops at the same step.
    if any_process(not math.isfinite(value), images.device):
        raise NonFiniteLossError(epoch, i, steps, value, step.lr)
    lr = step.lr  # the rate this update uses
    if i < last:
        return value, lr
    if step.clip_grad is not None:
        scaler.unscale_(step.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), step.clip_grad)
    scaler.step(step.optimizer)
    scaler.update()
    if step.ema is not None:
        step.ema.update(model, step=updates)
    if step.lr_scheduler is not None:
        step.lr_scheduler.step_update(num_updates=updates)
    return value, lr


def _backward(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    step: TrainStep,
    scaler: torch.amp.GradScaler,
    batches: int,
    sync: bool,
) -> float:
    """Forward and backward of one batch, as ``step.micro_batches`` micro-batches whose
    gradients add up to the whole batch's (each loss weighted by its share of the batch's
    images); every loss divided by ``batches``, those of its update.  Returns the batch's mean
    loss.  Under DDP only the last backward of an update (``sync``) all-reduces the gradients.
    The loss is read as a float once per micro-batch (one device sync each)."""
    parts = _micro_batches(images, targets, step.micro_batches)
    value = 0.0
    for j, (x, t) in enumerate(parts):
        syncs = sync and j == len(parts) - 1
        with contextlib.nullcontext() if syncs or not hasattr(model, "no_sync") else model.no_sync():
            with autocast(x.device, step.amp_dtype):
                loss = step.loss_fn(model(x).float(), t)
            if len(parts) == 1:  # the whole batch: its loss as it is
                value = loss.item()
                scaler.scale(loss / batches).backward()
                continue
            share = x.shape[0] / images.shape[0]
            value += loss.item() * share
            scaler.scale(loss * share / batches).backward()
    return value


def _micro_batches(
    images: torch.Tensor, targets: torch.Tensor, count: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batch cut into ``count`` consecutive micro-batches of nearly equal size (none
    empty: a batch smaller than ``count`` gives one image each)."""
    if count == 1:
        return [(images, targets)]
    pairs = zip(images.tensor_split(count), targets.tensor_split(count))
    return [(x, t) for x, t in pairs if x.shape[0]]


def _count_batch(logits: torch.Tensor, targets: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """Add a batch's loss, top-1 and top-5 hits and image count to ``sums``; returns its top-1 hits."""
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hit = topk.eq(targets[:, None])
    sums[0] += F.cross_entropy(logits, targets, reduction="sum").double()
    sums[1] += hit[:, 0].sum()
    sums[2] += hit.any(dim=1).sum()
    sums[3] += targets.shape[0]
    return hit[:, 0]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    per_sample: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``.

    Returns ``top1``, ``top5``, ``loss``, ``n`` (images over all processes) and
    ``images_per_s``.  With fewer than 5 classes, top-5 is top-``num_classes`` (100%).
    Each process must see a disjoint shard (see :class:`convit.core.distributed.ShardSampler`).
    ``per_sample=True`` adds ``correct``: a CPU bool tensor, whether top-1 was right for each
    image in the order ``loader`` gave them (the dataset's order for an unshuffled loader).  It
    is this process's images only, so under DDP it is refused: evaluate in one process.

    Not timm.utils.accuracy / AverageMeter: those give per-batch percentages averaged in Python
    floats on each process (a ``.item()`` sync per batch); counting hits into one float64
    tensor reduced once over ranks gives exact counts, hence exact DDP metrics.
    """
    if per_sample and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise ValueError("per_sample needs one process: each one sees only its shard of the images")
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct1, correct5, n
    hits: list[torch.Tensor] = []
    start = time.perf_counter()
    for images, targets in loader:
        images, targets = _to_device(images, targets, device, channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
        hit = _count_batch(logits.float(), targets, sums)
        if per_sample:
            hits.append(hit.cpu())
    all_reduce_sum(sums)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    n = sums[3].item()
    if n == 0:
        raise ValueError("evaluation set is empty")
    metrics: dict[str, Any] = {
        "top1": 100.0 * sums[1].item() / n,
        "top5": 100.0 * sums[2].item() / n,
        "loss": sums[0].item() / n,
        "n": int(n),
        "images_per_s": n / max(elapsed, 1e-9),
    }
    if per_sample:
        metrics["correct"] = torch.cat(hits)
    return metrics
