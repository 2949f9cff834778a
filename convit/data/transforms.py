"""Training and evaluation transforms, including DeiT's recipe with the posterize cap.

Fixed-size datasets (digits, Fashion-MNIST, CIFAR) are augmented on float tensors [C, H, W] in
[0, 1] (no PIL round trip); photos go through :class:`_ToFloatImage` first; ``deit`` is timm's
PIL-based ``create_transform`` pipeline. Augmentations come from torchvision and timm; none is
re-implemented here.

Kept ours rather than timm's ``create_transform(is_training=False, crop_pct=0.875)`` for the
photo eval transform: timm resizes the PIL image (8-bit result) before converting, ours resizes
the float tensor, so the pixels differ (up to 0.48 after normalisation on a random photo) and
timm's takes neither arrays, tensors nor a one-channel output.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment
from torchvision.transforms import InterpolationMode, v2

from .image_modes import convert_image

__all__ = [
    "AUGMENTS",
    "train_transform",
    "eval_transform",
    "tensor_eval_transform",
    "check_stats",
    "eval_input_size",
    "MAX_ASPECT",
]

AUGMENTS: tuple[str, ...] = ("auto", "deit", "small", "none")

# DeiT's ImageNet recipe (Touvron et al. 2021), as used by ConViT.
_DEIT_AUG = dict(
    auto_augment="rand-m9-mstd0.5-inc1",
    color_jitter=0.4,
    re_prob=0.25,
    re_mode="pixel",
    re_count=1,
    interpolation="bicubic",
)
# The one change to DeiT's RandAugment (see docs/augmentation.md): timm's
# ``PosterizeIncreasing`` keeps ``4 - int(0.4 * m)`` bits, i.e. 0 bits when the sampled magnitude
# ``m`` (N(9, 0.5), clipped to [0, 10]) reaches 10. Old Pillow turned 0 bits into an all-black
# image; Pillow >= 13 raises ``ValueError: bits must be between or equal to 1 and 8``. Capping
# that op's magnitude (timm's own ``magnitude_max``) just below 10 keeps 1 bit for those draws
# and leaves every draw below 10, and every other op, exactly as in DeiT.
_POSTERIZE_OP = "PosterizeIncreasing"
_POSTERIZE_MAX_MAGNITUDE = 9.99
_CROP_PCT = 0.875  # eval: resize to img_size / 0.875 (256 for 224), centre-crop img_size
_BICUBIC = InterpolationMode.BICUBIC
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
#: Photos longer than this many times their shorter side are centre-cropped to it before any
#: conversion or resize (:class:`_CapAspect`): resizing the shorter side of a 40000x2 image
#: to 256 would otherwise build a 5,120,000 x 256 intermediate. Images within it are not
#: touched, so their results are exactly those of DeiT's resize + centre crop.
MAX_ASPECT = 4.0


class _ToFloatImage:
    """Turn a PIL image, a numpy array (HW / HWC) or a tensor (CHW / HW) into float [C, H, W]
    in [0, 1] with ``in_chans`` channels (greyscale <-> RGB converted as needed).

    Integer inputs are divided by 255 (whatever their bit depth: 16-bit files reach here as
    8-bit through :func:`convit.data.read_image`); float inputs are assumed to be in [0, 1]
    already. PIL images with transparency are composited on white as the reader does
    (:func:`convit.data.image_modes.convert_image`), so ``load_image``'s ``LA`` / ``RGBA`` output
    looks the same here as ``read_image``'s ``RGB``; other modes use Pillow's ``convert``.

    The layout step is torchvision's ``to_image``. Two steps stay ours because the library's
    would change pixels: PIL images are converted with Pillow's own ``convert("L"/"RGB")``
    (integer luma, as training read them; torchvision's float luma differs), and integers are
    scaled by ``x / 255`` rather than ``v2.ToDtype(float32, scale=True)``, which multiplies by
    ``1 / 255`` and so is 1 ulp off for 126 of the 256 uint8 values (and divides 16-bit input
    by 65535, not 255).
    """

    def __init__(self, in_chans: int):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = in_chans

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, Image.Image):
            mode = "L" if self.in_chans == 1 else "RGB"
            transparent = img.mode in _ALPHA_MODES or "transparency" in img.info
            img = convert_image(img, mode) if transparent else img.convert(mode)
        elif isinstance(img, np.ndarray):
            if img.ndim not in (2, 3):  # to_image would read a 1-D array as a 1-pixel-high image
                raise ValueError(f"expected an image array HxW or HxWxC, got shape {img.shape}")
            img = np.ascontiguousarray(img)  # from_numpy refuses negative strides (img[..., ::-1])
        x = v2.functional.to_image(img).as_subclass(torch.Tensor)  # TypeError for other types
        x = x.float().div(255) if not x.is_floating_point() else x.float()
        if x.shape[0] == 4:  # drop alpha
            x = x[:3]
        if x.shape[0] == 3 and self.in_chans == 1:
            x = v2.functional.rgb_to_grayscale(x)
        elif x.shape[0] == 1 and self.in_chans == 3:
            x = v2.functional.grayscale_to_rgb(x)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_chans={self.in_chans})"


class _CapAspect:
    """Centre-crop the long side of a photo (PIL image, HW / HWC array or [..., H, W] tensor)
    to at most ``max_aspect`` times its short side; leave anything within that untouched.

    The crop keeps the centre, which is all DeiT's resize + centre crop keeps of any image
    (the central ``0.875`` of the short side, squared), so what is cut is what the eval
    transform would discard anyway; it just is not resized first.
    """

    def __init__(self, max_aspect: float = MAX_ASPECT):
        self.max_aspect = max_aspect

    def __call__(self, img):
        if isinstance(img, Image.Image):
            w, h = img.size
        elif isinstance(img, np.ndarray):
            h, w = img.shape[:2]
        else:
            h, w = img.shape[-2:]
        cap = max(1, math.ceil(self.max_aspect * min(w, h)))
        if max(w, h) <= cap:
            return img
        new_w = min(w, cap)
        new_h = min(h, cap)
        left = (w - new_w) // 2
        top = (h - new_h) // 2
        if isinstance(img, Image.Image):
            return img.crop((left, top, left + new_w, top + new_h))
        if isinstance(img, np.ndarray):
            return img[top : top + new_h, left : left + new_w]
        return img[..., top : top + new_h, left : left + new_w]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_aspect={self.max_aspect})"


def eval_input_size(img_size: int, native_size: Optional[int] = None) -> int:
    """The shorter side the eval transform resizes an image to: ``img_size / 0.875`` for
    photos (DeiT), ``img_size`` for fixed-size datasets (squashed whole). Pass it to
    :func:`convit.data.read_image` as ``target_size`` so large files are read reduced."""
    return img_size if native_size is not None else int(img_size / _CROP_PCT)


def _geometry_eval(img_size: int, native_size: Optional[int], inputs_native: bool = False) -> list[Callable]:
    """Resize steps of the eval transform.

    Fixed-size datasets (``native_size`` known) resize the whole image to ``img_size``
    (skipped when ``inputs_native`` says every input already has the native size and that
    equals ``img_size``); photos of arbitrary size get DeiT's resize to ``img_size / 0.875``
    followed by a centre crop.
    """
    if native_size is not None:
        if inputs_native and img_size == native_size:
            return []
        return [v2.Resize((img_size, img_size), interpolation=_BICUBIC, antialias=True)]
    return [
        v2.Resize(int(img_size / _CROP_PCT), interpolation=_BICUBIC, antialias=True),
        v2.CenterCrop(img_size),
    ]


def check_stats(mean: Sequence[float], std: Sequence[float], in_chans: int) -> None:
    """Reject normalisation statistics that cannot apply to ``in_chans`` channels.

    One value (applied to every channel) or one per channel; anything else would only fail
    at the first image, inside a DataLoader worker. For ``deit`` it also matters before
    normalising: timm fills the pixels that rotate / shear / translate uncover with the colour
    ``round(255 * mean)``, and Pillow refuses a 3-value colour on a greyscale ("L") image.
    """
    if len(mean) != len(std) or len(mean) not in (1, in_chans):
        raise ValueError(
            f"mean and std must both have 1 or in_chans={in_chans} values, got "
            f"mean={tuple(mean)}, std={tuple(std)}"
        )


def eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    native_size: Optional[int] = None,
) -> Callable:
    """Transform for a PIL image, numpy array or tensor at evaluation / predict time.

    Output is a normalised float tensor [in_chans, img_size, img_size]. With ``native_size``
    (the fixed-size datasets) any input is resized whole to ``img_size`` (squashed if it is
    not square, as the training images never are); without it (photos) DeiT's resize +
    centre-crop is used, after capping the aspect ratio at :data:`MAX_ASPECT` (a centre crop
    of the long side; images within it are unchanged). Use ``bundle.native_size`` to
    reproduce the test-set preprocessing.
    """
    check_stats(mean, std, in_chans)
    cap = [_CapAspect()] if native_size is None else []
    return v2.Compose(
        [
            *cap,
            _ToFloatImage(in_chans),
            *_geometry_eval(img_size, native_size),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def tensor_eval_transform(
    img_size: int, native_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable:
    """Eval transform for in-memory datasets, whose items are already float [C, H, W]."""
    return v2.Compose(
        [*_geometry_eval(img_size, native_size, inputs_native=True), v2.Normalize(list(mean), list(std))]
    )


def _rand_augment_of(transform: Callable) -> RandAugment:
    """The single timm ``RandAugment`` inside a timm ``create_transform`` pipeline.

    Raises ``RuntimeError`` if there is not exactly one: the posterize cap below must not
    silently stop applying when timm reorganises its pipeline.
    """
    found = [t for t in getattr(transform, "transforms", ()) if isinstance(t, RandAugment)]
    if len(found) != 1:
        raise RuntimeError(
            f"expected one timm RandAugment in the DeiT pipeline, found "
            f"{len(found)} in {transform!r}; convit's posterize fix "
            f"(convit.data.transforms._cap_posterize) needs updating for this "
            f"timm version"
        )
    return found[0]


def _cap_posterize(transform: Callable) -> None:
    """Cap the magnitude of timm's posterize op in ``transform`` at
    :data:`_POSTERIZE_MAX_MAGNITUDE`, so it never asks Pillow for 0 bits.

    Uses timm's per-op ``magnitude_max`` (the knob behind the policy string's ``mmax``) on
    that one op only, so the other 14 ops keep DeiT's [0, 10] range. Then probes the op at the
    highest magnitude it can be given (magnitude std 0, magnitude far above the cap, prob 1)
    on a white 1x1 image: it must keep at least one bit, i.e. return a non-black pixel.
    Raises ``RuntimeError`` if the op is missing, the knob is gone, or the probe fails --
    timm changed and the fix would otherwise silently not apply.
    """
    ra = _rand_augment_of(transform)
    ops = [op for op in ra.ops if getattr(op, "name", None) == _POSTERIZE_OP]
    if len(ops) != 1 or not hasattr(ops[0], "magnitude_max"):
        raise RuntimeError(
            f"expected one timm AugmentOp {_POSTERIZE_OP!r} with a magnitude_max "
            f"in {ra!r}; convit's posterize fix needs updating for this timm "
            f"version"
        )
    op = ops[0]
    op.magnitude_max = min(op.magnitude_max or _POSTERIZE_MAX_MAGNITUDE, _POSTERIZE_MAX_MAGNITUDE)
    probe = copy.copy(op)  # shallow: same functions and cap, own prob/magnitude
    probe.prob = 1.0
    probe.magnitude_std = 0.0
    probe.magnitude = 1e6
    rng_state = random.getstate()  # the probe must not shift the seeded augmentation stream
    for mode, white in (("L", 255), ("RGB", (255, 255, 255))):
        try:
            out = probe(Image.new(mode, (1, 1), white))
        except (ValueError, TypeError) as e:
            raise RuntimeError(
                f"timm's {_POSTERIZE_OP} still fails at its highest magnitude "
                f"after capping it at {_POSTERIZE_MAX_MAGNITUDE}: {e}"
            ) from e
        finally:
            random.setstate(rng_state)
        if not any(np.asarray(out).ravel()):
            raise RuntimeError(
                f"timm's {_POSTERIZE_OP} keeps 0 bits at its highest magnitude "
                f"after capping it at {_POSTERIZE_MAX_MAGNITUDE}"
            )


def _small_steps(img_size: int, native_size: Optional[int], hflip: bool) -> list[Callable]:
    """The geometry of ``small``: resize if needed, padded random crop, optional flip."""
    size_step = (
        v2.Resize((img_size, img_size), interpolation=_BICUBIC, antialias=True)
        if native_size is not None
        else v2.Resize(img_size, interpolation=_BICUBIC, antialias=True)
    )
    if native_size == img_size:
        size_step = None
    steps = [*([size_step] if size_step else []), v2.RandomCrop(img_size, padding=max(1, img_size // 8))]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return steps


def train_transform(
    augment: str,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    native_size: Optional[int] = None,
    hflip: bool = True,
) -> tuple[Callable, bool]:
    """Training transform for ``augment`` in ``deit`` / ``small`` / ``none``.

    Returns ``(transform, wants_pil)``. ``wants_pil`` is True for ``deit`` (timm's
    PIL-based DeiT pipeline); otherwise the transform takes a float tensor [C, H, W] in
    [0, 1] for fixed-size datasets, or a PIL image for photos (``native_size is None``).

    * ``deit``: ``timm.data.create_transform`` with DeiT's RandAugment and random erasing
      (random-resized-crop to ``img_size``, bicubic; timm turns colour jitter off when
      RandAugment is on). One change from DeiT: posterize's magnitude is capped below 10
      (:func:`_cap_posterize`), because Pillow >= 13 refuses the 0 bits timm asks for there.
      PIL input must have ``in_chans`` channels ("L" or "RGB").
    * ``small``: random crop with ``img_size // 8`` zero padding (+ horizontal flip if
      ``hflip``), the standard CIFAR recipe; photos are first resized (shorter side).
    * ``none``: just the eval geometry and normalisation.
    """
    mean, std = tuple(mean), tuple(std)
    check_stats(mean, std, in_chans)
    if augment == "deit":
        transform = create_transform(
            img_size, is_training=True, mean=mean, std=std, hflip=0.5 if hflip else 0.0, **_DEIT_AUG
        )
        _cap_posterize(transform)
        return transform, True
    head = [] if native_size is not None else [_CapAspect(), _ToFloatImage(in_chans)]
    if augment == "none":
        return v2.Compose(
            [
                *head,
                *_geometry_eval(img_size, native_size, inputs_native=True),
                v2.Normalize(list(mean), list(std)),
            ]
        ), False
    if augment == "small":
        return v2.Compose(
            [*head, *_small_steps(img_size, native_size, hflip), v2.Normalize(list(mean), list(std))]
        ), False
    raise ValueError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")
