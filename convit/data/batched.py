"""The in-memory datasets' per-image transforms, computed a batch at a time: the same function, faster.

A DataLoader over :class:`~convit.data.datasets.TensorImageDataset` applies torchvision's v2
pipeline to one image at a time; for 8×8 digits that dispatch costs more than the model's
step (docs/speed.md, ``benchmarks/bench_fit.py``).  :func:`batched` reads such a pipeline and,
when every step is one it knows (a zero-padded ``RandomCrop``, ``RandomHorizontalFlip``,
``Normalize``), returns a function that transforms a whole batch of images with the **same
random draws in the same order** (per image: the crop's top, then its left, then the flip's
coin, as torchvision draws them) and the same float operations, so a batch equals the stacked
per-image results bit for bit (``tests/test_batched_transforms.py``) and a run's numbers do not
change.  Any other step (resize, RandAugment, ...) returns None: the per-image path stays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

__all__ = ["batched", "SampledBatches"]

#: A batch transform: [B, C, H, W] uint8 (0..255) or float in [0, 1] -> float [B, C, h, w].
BatchTransform = Callable[[torch.Tensor], torch.Tensor]


def _crop_ok(t: v2.RandomCrop) -> bool:
    """A crop this module reproduces: fixed zero padding on every side, no pad-if-needed."""
    p = t.padding
    return (
        p is not None
        and len(set(p)) == 1
        and t.padding_mode == "constant"
        and not t.pad_if_needed
        and all(v == 0 for v in t._fill.values())
    )


def _known(step: Callable) -> bool:
    if isinstance(step, v2.RandomCrop):
        return _crop_ok(step)
    return isinstance(step, (v2.RandomHorizontalFlip, v2.Normalize))


def _draws(steps: list[Callable], count: int, h: int, w: int) -> list[Optional[torch.Tensor]]:
    """Every step's random draws for ``count`` images, image by image in pipeline order (as the
    per-image path makes them): per crop a [count, 2] (top, left), per flip a [count] coin
    ``torch.rand(1) < p``; None for a step that draws nothing."""
    bounds = []  # per crop: the exclusive upper bounds of top and left (0: no draw, as torchvision)
    for step in steps:
        if isinstance(step, v2.RandomCrop):
            pad = step.padding[0]
            ch, cw = step.size
            bounds.append(
                (
                    h + 2 * pad - ch + 1 if h + 2 * pad > ch else 0,
                    w + 2 * pad - cw + 1 if w + 2 * pad > cw else 0,
                )
            )
            h = ch
            w = cw
        else:
            bounds.append(None)
    crops = [k for k, pair in enumerate(bounds) if pair is not None]
    ns = {b for k in crops for b in bounds[k]}
    flips = any(isinstance(t, v2.RandomHorizontalFlip) for t in steps)
    if len(ns) == 1 and 0 not in ns and not flips and _vector_randint_is_serial():
        # every draw is randint(0, n) with one n (square crops, no flip): one call, whose
        # row-major order (image, crop, top/left) is the per-image order, draws the same stream
        flat = torch.randint(0, ns.pop(), (count, len(crops), 2))
        return [flat[:, crops.index(k)] if k in crops else None for k in range(len(steps))]
    values: list[list] = [[] for _ in steps]
    randint = torch.randint
    rand = torch.rand
    for _ in range(count):
        for k, step in enumerate(steps):
            if bounds[k] is not None:
                top_n, left_n = bounds[k]
                values[k].append(
                    (
                        int(randint(0, top_n, size=())) if top_n else 0,
                        int(randint(0, left_n, size=())) if left_n else 0,
                    )
                )
            elif isinstance(step, v2.RandomHorizontalFlip):
                values[k].append(bool(rand(1) < step.p))
    return [torch.tensor(v) if _draws_for(step) else None for step, v in zip(steps, values)]


def _draws_for(step: Callable) -> bool:
    return isinstance(step, (v2.RandomCrop, v2.RandomHorizontalFlip))


@functools.cache
def _vector_randint_is_serial() -> bool:
    """Whether ``torch.randint(0, n, (k,))`` draws what k calls ``torch.randint(0, n, ())`` draw
    and leaves the generator where they leave it (it does on CPU: one draw per element, in
    order); checked once on a private generator, so another torch falls back to the loop."""
    a = torch.Generator().manual_seed(12345)
    b = torch.Generator().manual_seed(12345)
    loop = torch.stack([torch.randint(0, 3, (), generator=a) for _ in range(97)])
    return torch.equal(loop, torch.randint(0, 3, (97,), generator=b)) and torch.equal(
        torch.rand(4, generator=a), torch.rand(4, generator=b)
    )


def _crop(x: torch.Tensor, pad: int, size: list[int], corners: torch.Tensor) -> torch.Tensor:
    """Zero-pad then cut each image at its (top, left): one gather for the batch, over each
    padded image's flattened pixels (fewer index tensors than indexing rows and columns)."""
    x = F.pad(x, (pad,) * 4)  # (B, C, H+2p, W+2p)
    b, c, _, wp = x.shape
    ch, cw = size
    window, strides = _window(wp, ch, cw)  # (1, 1, ch*cw): the crop at (0, 0); (2,): (wp, 1)
    start = (corners @ strides).view(b, 1, 1)  # (B, 1, 1): top * wp + left, where each crop begins
    return x.flatten(2).gather(2, (start + window).expand(b, c, -1)).view(b, c, ch, cw)  # (B, C, ch, cw)


@functools.lru_cache(maxsize=16)
def _window(wp: int, ch: int, cw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat positions of a ch x cw crop at (0, 0) of rows wp wide, and the (row, column)
    strides of those rows; made once per shape (a few tensor ops fewer per batch: at 8x8
    images, each op costs as much as the arithmetic).  Read only."""
    return (torch.arange(ch)[:, None] * wp + torch.arange(cw)).view(1, 1, ch * cw), torch.tensor([wp, 1])


def batched(transform: Callable) -> Optional[BatchTransform]:
    """``transform`` (a v2 ``Compose`` of float-tensor steps) as a batch function, or None when
    it holds a step this module does not reproduce exactly."""
    steps = list(getattr(transform, "transforms", [])) if isinstance(transform, v2.Compose) else []
    if not steps or not all(_known(s) for s in steps):
        return None

    # Normalize's mean and std as the float32 images' [1, C, 1, 1], made once
    stats = {
        k: tuple(torch.as_tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (t.mean, t.std))
        for k, t in enumerate(steps)
        if isinstance(t, v2.Normalize)
    }

    def apply(images: torch.Tensor) -> torch.Tensor:
        draws = _draws(steps, len(images), images.shape[-2], images.shape[-1])
        x = images
        for k, (step, d) in enumerate(zip(steps, draws)):
            if isinstance(step, v2.RandomCrop):
                x = _crop(x, step.padding[0], list(step.size), d)
            elif isinstance(step, v2.RandomHorizontalFlip):
                x = torch.where(d.view(-1, 1, 1, 1), x.flip(-1), x)
            else:  # Normalize, as torchvision computes it (sub, then div, in the image's dtype)
                mean, std = stats[k]
                x = _to_float(x).sub(mean).div_(std)
        return _to_float(x)

    return apply


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float in [0, 1] as the dataset converts one image (``float().div_(255)``);
    zero padding stays 0 either way, so converting after the crop gives the same values."""
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    return x if x.dtype == torch.float32 else x.float()


class SampledBatches:
    """The batches ``DataLoader(dataset, batch_size, sampler=sampler, drop_last=drop_last,
    collate_fn=collate_skipping)`` yields without workers (``collate_skipping_even`` if
    ``even``), made without it: a :class:`~convit.data.datasets.TensorImageDataset` whose
    transform is :func:`batched` cuts each batch from its images with one index and one batched
    transform.  Same sampler order, same draws in the same order, same values; what it saves is
    the DataLoader's per-image work (a list of indices, one tensor per image, a collate that
    stacks them again), about half of the data's time for 8x8 digits (docs/speed.md).

    dataset: has ``batch(positions) -> (images, labels)`` (positions a 1-D long tensor).
    sampler: any iterable of positions with a length (shuffling samplers are set per epoch by
    their owner, as for a DataLoader)."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        sampler: Iterable[int],
        drop_last: bool = False,
        even: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.drop_last = drop_last
        self.even = even

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            images, labels = self.dataset.batch(order[start : start + self.batch_size])
            if self.even:  # mixup pairs images: an odd batch loses its last once made (its draws taken)
                keep = len(labels) - len(labels) % 2
                images, labels = images[:keep], labels[:keep]
            yield images, labels
