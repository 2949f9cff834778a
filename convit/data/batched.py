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
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

__all__ = ["batched"]

#: A batch transform: [B, C, H, W] uint8 (0..255) or float in [0, 1] -> float [B, C, h, w].
BatchTransform = Callable[[torch.Tensor], torch.Tensor]


def _crop_ok(t: v2.RandomCrop) -> bool:
    """A crop this module reproduces: fixed zero padding on every side, no pad-if-needed."""
    p = t.padding
    return (p is not None and len(set(p)) == 1 and t.padding_mode == "constant" and not t.pad_if_needed
            and all(v == 0 for v in t._fill.values()))


def _known(step: Callable) -> bool:
    if isinstance(step, v2.RandomCrop):
        return _crop_ok(step)
    return isinstance(step, (v2.RandomHorizontalFlip, v2.Normalize))


def _draws(steps: List[Callable], count: int, h: int, w: int) -> List[torch.Tensor]:
    """Every step's random draws for ``count`` images, image by image in pipeline order (as the
    per-image path makes them): per crop a [count, 2] (top, left), per flip a [count] coin
    ``torch.rand(1) < p``; an empty tensor for a step that draws nothing."""
    bounds = []  # per crop: the exclusive upper bounds of top and left (0: no draw, as torchvision)
    for step in steps:
        if isinstance(step, v2.RandomCrop):
            pad, (ch, cw) = step.padding[0], step.size
            bounds.append((h + 2 * pad - ch + 1 if h + 2 * pad > ch else 0,
                           w + 2 * pad - cw + 1 if w + 2 * pad > cw else 0))
            h, w = ch, cw
        else:
            bounds.append(None)
    crops = [k for k, pair in enumerate(bounds) if pair is not None]
    ns = {b for k in crops for b in bounds[k]}
    flips = any(isinstance(t, v2.RandomHorizontalFlip) for t in steps)
    if len(ns) == 1 and 0 not in ns and not flips and _vector_randint_is_serial():
        # every draw is randint(0, n) with one n (square crops, no flip): one call, whose
        # row-major order (image, crop, top/left) is the per-image order, draws the same stream
        flat = torch.randint(0, ns.pop(), (count, len(crops), 2))
        return [flat[:, crops.index(k)] if k in crops else torch.tensor([]) for k in range(len(steps))]
    values: List[list] = [[] for _ in steps]
    randint, rand = torch.randint, torch.rand
    for _ in range(count):
        for k, step in enumerate(steps):
            if bounds[k] is not None:
                top_n, left_n = bounds[k]
                values[k].append((int(randint(0, top_n, size=())) if top_n else 0,
                                  int(randint(0, left_n, size=())) if left_n else 0))
            elif isinstance(step, v2.RandomHorizontalFlip):
                values[k].append(bool(rand(1) < step.p))
    return [torch.tensor(v) for v in values]


@functools.lru_cache(maxsize=None)
def _vector_randint_is_serial() -> bool:
    """Whether ``torch.randint(0, n, (k,))`` draws what k calls ``torch.randint(0, n, ())`` draw
    and leaves the generator where they leave it (it does on CPU: one draw per element, in
    order); checked once on a private generator, so another torch falls back to the loop."""
    a, b = torch.Generator().manual_seed(12345), torch.Generator().manual_seed(12345)
    loop = torch.stack([torch.randint(0, 3, (), generator=a) for _ in range(97)])
    return torch.equal(loop, torch.randint(0, 3, (97,), generator=b)) and \
        torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def _crop(x: torch.Tensor, pad: int, size: List[int], corners: torch.Tensor) -> torch.Tensor:
    """Zero-pad then cut each image at its (top, left): one gather for the batch."""
    x = F.pad(x, (pad,) * 4)  # (B, C, H+2p, W+2p)
    ch, cw = size
    rows = corners[:, 0, None] + torch.arange(ch)  # (B, ch)
    cols = corners[:, 1, None] + torch.arange(cw)  # (B, cw)
    b = torch.arange(len(x))[:, None, None]
    return x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()  # (B, C, ch, cw)


def batched(transform: Callable) -> Optional[BatchTransform]:
    """``transform`` (a v2 ``Compose`` of float-tensor steps) as a batch function, or None when
    it holds a step this module does not reproduce exactly."""
    steps = list(getattr(transform, "transforms", [])) if isinstance(transform, v2.Compose) else []
    if not steps or not all(_known(s) for s in steps):
        return None

    def apply(images: torch.Tensor) -> torch.Tensor:
        draws = _draws(steps, len(images), images.shape[-2], images.shape[-1])
        x = images
        for step, d in zip(steps, draws):
            if isinstance(step, v2.RandomCrop):
                x = _crop(x, step.padding[0], list(step.size), d)
            elif isinstance(step, v2.RandomHorizontalFlip):
                x = torch.where(d.view(-1, 1, 1, 1), x.flip(-1), x)
            else:  # Normalize, as torchvision computes it (sub, then div, in the image's dtype)
                x = _to_float(x)
                mean = torch.as_tensor(step.mean, dtype=x.dtype).view(1, -1, 1, 1)
                std = torch.as_tensor(step.std, dtype=x.dtype).view(1, -1, 1, 1)
                x = x.sub(mean).div_(std)
        return _to_float(x)

    return apply


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float in [0, 1] as the dataset converts one image (``float().div_(255)``);
    zero padding stays 0 either way, so converting after the crop gives the same values."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()
