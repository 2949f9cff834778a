"""Datasets, per-class subsampling and transforms for training and evaluating ConViT.

The paper's data-efficiency experiments (Sec. 4) train on a fraction of each class of the
training set, so the central entry point, :func:`build_data`, does three things in a fixed
order that keeps experiments comparable:

1. take the dataset's *train* split;
2. hold out a validation set from it (stratified by class, seeded) *before* subsampling,
   so the validation set is the same for every ``sampling_ratio``;
3. keep ``round(sampling_ratio * n_c)`` images (at least one) of each class ``c`` of what
   is left: that is the training set.

The test set is always the dataset's own test split and never changes with ``seed``.

Known datasets (:data:`DATASETS`):

``digits``
    scikit-learn's 8x8 handwritten digits (bundled with scikit-learn, no download), split
    80/20 with a fixed stratified split (``random_state=0``) into 1,437 train / 360 test.
``fashion-mnist``
    the four idx ``.gz`` files, from ``data_path`` or ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``).
``cifar10`` / ``cifar100``
    torchvision's python-pickle folders; CIFAR-10 also from the packed JPEG file
    ``cifar10_jpeg.npz`` (decoded once, then cached, see :func:`load_cifar10_npz`).
``imagefolder``
    ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (the ImageNet layout); unreadable
    image files are skipped with one warning and listed in :attr:`DataBundle.skipped`.

Small datasets live in memory as one tensor and are augmented on tensors (no PIL round
trip), which keeps ``__getitem__`` at roughly a hundred microseconds on one CPU core.
Augmentations come from torchvision and timm; none is re-implemented here.
"""
from __future__ import annotations

import gzip
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from .fileio import atomic_save

__all__ = [
    "DATASETS", "AUGMENTS", "DataBundle", "build_data", "subsample_per_class",
    "train_transform", "eval_transform", "load_image", "load_cifar10_npz", "cache_dir",
    "TensorImageDataset", "ImageFileDataset",
]

DATASETS: Tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
AUGMENTS: Tuple[str, ...] = ("auto", "deit", "small", "none")

#: Extensions scanned by ``imagefolder`` (the same list torchvision's ImageFolder uses).
IMG_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif",
                                   ".tiff", ".webp")

# Standard per-channel statistics of the training splits (images scaled to [0, 1]).
# digits has none here: it is computed from its training split when loaded.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_FASHION_MEAN, _FASHION_STD = (0.2860,), (0.3530,)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot"]
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_CIFAR10_NPZ = "cifar10_jpeg.npz"
_CIFAR10_SHARED = os.path.join("..", "shared", "data", _CIFAR10_NPZ)

# DeiT's ImageNet recipe (Touvron et al. 2021), as used by ConViT.
_DEIT_AUG = dict(auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25,
                 re_mode="pixel", re_count=1, interpolation="bicubic")
# The one change to DeiT's RandAugment (see docs/augmentation.md): timm's
# ``PosterizeIncreasing`` keeps ``4 - int(0.4 * m)`` bits, i.e. 0 bits when the sampled magnitude
# ``m`` (N(9, 0.5), clipped to [0, 10]) reaches 10. Old Pillow turned 0 bits into an all-black
# image; Pillow >= 13 raises ``ValueError: bits must be between or equal to 1 and 8``. Capping
# that op's magnitude (timm's own ``magnitude_max``) just below 10 keeps 1 bit for those draws
# and leaves every draw below 10, and every other op, exactly as in DeiT.
_POSTERIZE_OP = "PosterizeIncreasing"
_POSTERIZE_MAX_MAGNITUDE = 9.99
_CROP_PCT = 0.875  # eval: resize to img_size / 0.875 (256 for 224), centre-crop img_size


# --------------------------------------------------------------------------------------------
# The bundle returned by build_data
# --------------------------------------------------------------------------------------------

@dataclass
class DataBundle:
    """Everything a trainer needs about a dataset, with the splits already transformed.

    ``train`` yields ``(image float tensor [C, H, W], label int)`` after the training
    augmentation; ``val`` (a stratified hold-out of the train split, or ``None``) and
    ``test`` use the evaluation transform. ``native_size`` is the stored image size of the
    fixed-size datasets (``None`` for ``imagefolder``); pass it to :func:`eval_transform` to
    preprocess new images exactly like ``test``.
    """

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    class_names: List[str]
    in_chans: int
    img_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    train_labels: np.ndarray
    name: str = ""
    native_size: Optional[int] = None
    augment: str = "none"
    skipped: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------------------------
# Index selection: stratified hold-out and per-class subsampling
# --------------------------------------------------------------------------------------------

def _class_permutation(indices: np.ndarray, seed: int, label: int, stream: int) -> np.ndarray:
    """Shuffle one class's (sorted) indices with a generator seeded by (seed, stream, label).

    Seeding per class makes the result independent of the order classes are visited in and
    of the other classes' sizes; taking a prefix of the permutation makes smaller ratios
    nested in larger ones for the same seed.
    """
    rng = np.random.default_rng([int(seed) % 2**63, stream, int(label) % 2**63])
    return indices[rng.permutation(len(indices))]


def _check_ratio(ratio: float) -> None:
    if not (0.0 < float(ratio) <= 1.0):  # also rejects NaN
        raise ValueError(f"sampling_ratio must be in (0, 1], got {ratio!r}")


def subsample_per_class(labels: Sequence[int], ratio: float, seed: int) -> np.ndarray:
    """Sorted indices into ``labels`` keeping ``round(ratio * n_c)`` (at least 1) per class.

    Deterministic for a given ``seed``; different seeds pick different images; for a fixed
    seed the subset for a smaller ratio is contained in the one for a larger ratio.
    ``round`` is Python's (ties to even), so e.g. 0.5 of 145 images keeps 72.
    """
    _check_ratio(ratio)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    kept = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(float(ratio) * len(idx))))
        kept.append(_class_permutation(idx, seed, c, stream=0)[:k])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def _holdout_per_class(labels: np.ndarray, fraction: float, seed: int
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out), holding out ``round(fraction * n_c)`` per class.

    Every class keeps at least one image in ``rest`` so that it can still be trained on.
    Uses a different random stream from :func:`subsample_per_class`.
    """
    if fraction == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rest, held = [], []
    for c in np.unique(labels):
        perm = _class_permutation(np.flatnonzero(labels == c), seed, c, stream=1)
        k = min(int(round(fraction * len(perm))), len(perm) - 1)
        held.append(perm[:k])
        rest.append(perm[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------

class _ToFloatImage:
    """Turn a PIL image, a numpy array (HW / HWC) or a tensor (CHW) into float [C, H, W] in
    [0, 1] with ``in_chans`` channels (greyscale <-> RGB converted as needed).

    Integer inputs are divided by 255; float inputs are assumed to be in [0, 1] already.
    """

    def __init__(self, in_chans: int):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = in_chans

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, Image.Image):
            img = np.array(img.convert("L" if self.in_chans == 1 else "RGB"))
        if isinstance(img, np.ndarray):
            arr = img[:, :, None] if img.ndim == 2 else img
            if arr.ndim != 3:
                raise ValueError(f"expected an image array HxW or HxWxC, got shape {img.shape}")
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        elif isinstance(img, torch.Tensor):
            x = img.unsqueeze(0) if img.ndim == 2 else img
        else:
            raise TypeError(f"cannot make an image tensor from {type(img).__name__}")
        x = x.float().div(255) if not x.is_floating_point() else x.float()
        if x.shape[0] == 4:  # drop alpha
            x = x[:3]
        if x.shape[0] == 3 and self.in_chans == 1:
            x = v2.functional.rgb_to_grayscale(x)
        elif x.shape[0] == 1 and self.in_chans == 3:
            x = x.expand(3, -1, -1)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_chans={self.in_chans})"


def _interp() -> InterpolationMode:
    return InterpolationMode.BICUBIC


def _geometry_eval(img_size: int, native_size: Optional[int], inputs_native: bool = False
                   ) -> List[Callable]:
    """Resize steps of the eval transform.

    Fixed-size datasets (``native_size`` known) resize the whole image to ``img_size``
    (skipped when ``inputs_native`` says every input already has the native size and that
    equals ``img_size``); photos of arbitrary size get DeiT's resize to ``img_size / 0.875``
    followed by a centre crop.
    """
    if native_size is not None:
        if inputs_native and img_size == native_size:
            return []
        return [v2.Resize((img_size, img_size), interpolation=_interp(), antialias=True)]
    return [v2.Resize(int(img_size / _CROP_PCT), interpolation=_interp(), antialias=True),
            v2.CenterCrop(img_size)]


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], in_chans: int,
                   native_size: Optional[int] = None) -> Callable:
    """Transform for a PIL image, numpy array or tensor at evaluation / predict time.

    Output is a normalised float tensor [in_chans, img_size, img_size]. With ``native_size``
    (the fixed-size datasets) any input is resized whole to ``img_size`` (squashed if it is
    not square, as the training images never are); without it (photos) DeiT's resize +
    centre-crop is used. Use ``bundle.native_size`` to reproduce the test-set preprocessing.
    """
    _check_stats(mean, std, in_chans)
    return v2.Compose([_ToFloatImage(in_chans), *_geometry_eval(img_size, native_size),
                       v2.Normalize(list(mean), list(std))])


def _tensor_eval(img_size: int, native_size: int, mean, std) -> Callable:
    """Eval transform for in-memory datasets, whose items are already float [C, H, W]."""
    return v2.Compose([*_geometry_eval(img_size, native_size, inputs_native=True),
                       v2.Normalize(list(mean), list(std))])


def _check_stats(mean: Sequence[float], std: Sequence[float], in_chans: int) -> None:
    """Reject normalisation statistics that cannot apply to ``in_chans`` channels.

    One value (applied to every channel) or one per channel; anything else would only fail
    at the first image, inside a DataLoader worker. For ``deit`` it also matters before
    normalising: timm fills the pixels that rotate / shear / translate uncover with the colour
    ``round(255 * mean)``, and Pillow refuses a 3-value colour on a greyscale ("L") image.
    """
    if len(mean) != len(std) or len(mean) not in (1, in_chans):
        raise ValueError(f"mean and std must both have 1 or in_chans={in_chans} values, got "
                         f"mean={tuple(mean)}, std={tuple(std)}")


def _rand_augment_of(transform: Callable):
    """The single timm ``RandAugment`` inside a timm ``create_transform`` pipeline.

    Raises ``RuntimeError`` if there is not exactly one: the posterize cap below must not
    silently stop applying when timm reorganises its pipeline.
    """
    from timm.data.auto_augment import RandAugment

    found = [t for t in getattr(transform, "transforms", ()) if isinstance(t, RandAugment)]
    if len(found) != 1:
        raise RuntimeError(f"expected one timm RandAugment in the DeiT pipeline, found "
                           f"{len(found)} in {transform!r}; convit's posterize fix "
                           f"(convit.data._cap_posterize) needs updating for this timm version")
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
    import copy
    import random

    ra = _rand_augment_of(transform)
    ops = [op for op in ra.ops if getattr(op, "name", None) == _POSTERIZE_OP]
    if len(ops) != 1 or not hasattr(ops[0], "magnitude_max"):
        raise RuntimeError(f"expected one timm AugmentOp {_POSTERIZE_OP!r} with a magnitude_max "
                           f"in {ra!r}; convit's posterize fix needs updating for this timm "
                           f"version")
    op = ops[0]
    op.magnitude_max = min(op.magnitude_max or _POSTERIZE_MAX_MAGNITUDE, _POSTERIZE_MAX_MAGNITUDE)
    probe = copy.copy(op)  # shallow: same functions and cap, own prob/magnitude
    probe.prob, probe.magnitude_std, probe.magnitude = 1.0, 0.0, 1e6
    rng_state = random.getstate()  # the probe must not shift the seeded augmentation stream
    for mode, white in (("L", 255), ("RGB", (255, 255, 255))):
        try:
            out = probe(Image.new(mode, (1, 1), white))
        except (ValueError, TypeError) as e:
            raise RuntimeError(f"timm's {_POSTERIZE_OP} still fails at its highest magnitude "
                               f"after capping it at {_POSTERIZE_MAX_MAGNITUDE}: {e}") from e
        finally:
            random.setstate(rng_state)
        if not any(np.asarray(out).ravel()):
            raise RuntimeError(f"timm's {_POSTERIZE_OP} keeps 0 bits at its highest magnitude "
                               f"after capping it at {_POSTERIZE_MAX_MAGNITUDE}")


def train_transform(augment: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                    in_chans: int, native_size: Optional[int] = None, hflip: bool = True
                    ) -> Tuple[Callable, bool]:
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
    _check_stats(mean, std, in_chans)
    if augment == "deit":
        from timm.data import create_transform

        transform = create_transform(img_size, is_training=True, mean=mean, std=std,
                                     hflip=0.5 if hflip else 0.0, **_DEIT_AUG)
        _cap_posterize(transform)
        return transform, True
    head = [] if native_size is not None else [_ToFloatImage(in_chans)]
    if augment == "none":
        return v2.Compose([*head, *_geometry_eval(img_size, native_size, inputs_native=True),
                           v2.Normalize(list(mean), list(std))]), False
    if augment == "small":
        size_step = (v2.Resize((img_size, img_size), interpolation=_interp(), antialias=True)
                     if native_size is not None else
                     v2.Resize(img_size, interpolation=_interp(), antialias=True))
        if native_size == img_size:
            size_step = None
        steps = [*head, *([size_step] if size_step else []),
                 v2.RandomCrop(img_size, padding=max(1, img_size // 8))]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(v2.Normalize(list(mean), list(std)))
        return v2.Compose(steps), False
    raise ValueError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")


# --------------------------------------------------------------------------------------------
# Dataset classes
# --------------------------------------------------------------------------------------------

class TensorImageDataset(Dataset):
    """A view (``indices``) on images held in memory as one tensor [N, C, H, W].

    ``images`` is uint8 (0..255) or float in [0, 1]; items are ``(transform(x), label)``
    where ``x`` is float [C, H, W] in [0, 1], or a PIL image when ``to_pil`` (for timm's
    PIL-only DeiT pipeline). ``labels`` holds the labels of the view, in order.
    """

    def __init__(self, images: torch.Tensor, labels: np.ndarray, indices: np.ndarray,
                 transform: Callable, to_pil: bool = False):
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)[self.indices]
        self.transform = transform
        self.to_pil = to_pil

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        x = self.images[self.indices[i]]
        if self.to_pil:
            u8 = x if x.dtype == torch.uint8 else (x * 255).round().clamp(0, 255).to(torch.uint8)
            arr = u8.permute(1, 2, 0).numpy()
            img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            return self.transform(img), int(self.labels[i])
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        return self.transform(x), int(self.labels[i])


#: Pillow modes of one grey channel wider than 8 bits, read as 16-bit values (0..65535):
#: 16-bit PNG / TIFF open as ``I;16*``; 16-bit PGM (any maxval, rescaled by Pillow to
#: 0..65535) and some TIFFs open as 32-bit ``I``.
_GREY16_MODES: Tuple[str, ...] = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _grey16_to_l(im: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit ``L``: ``round(v / 257)``, clipped to 0..255.

    Pillow's own ``convert("L")``/``convert("RGB")`` clips these modes at 255 instead of
    rescaling, which turns almost every 16-bit photo pure white. ``v / 257`` maps 0 -> 0 and
    65535 -> 255 exactly, and ``257 * k`` (an 8-bit value stored in 16 bits) back to ``k``.
    """
    a = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
    return Image.fromarray(((a + 128) // 257).astype(np.uint8))  # = round(a / 257), no ties


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image file fully (decoded), for ``convit predict`` and ``imagefolder``.

    The result converts correctly with ``.convert("RGB")`` / ``.convert("L")``: palette
    images come back as ``RGBA`` and 16-bit greyscale ones (``I;16``, ``I``) as 8-bit ``L``
    scaled by 1/257 (see :func:`_grey16_to_l`); other modes are returned as decoded.
    Raises ``FileNotFoundError`` if it does not exist and ``ValueError`` naming the file if
    Pillow cannot read it (not an image, truncated, unsupported format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                return im.convert("RGBA")
            if im.mode in _GREY16_MODES:
                return _grey16_to_l(im)
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


class ImageFileDataset(Dataset):
    """Images read from disk on demand (``imagefolder``), converted to ``in_chans`` channels.

    A file that passed the scan but fails to decode later (e.g. a truncated JPEG) does not
    crash training: it is reported once with a warning, recorded in ``failed``, and the next
    readable sample is returned instead.
    """

    def __init__(self, samples: List[Tuple[str, int]], transform: Callable, in_chans: int = 3):
        self.samples = samples
        self.labels = np.array([y for _, y in samples], dtype=np.int64)
        self.transform = transform
        self.mode = "L" if in_chans == 1 else "RGB"
        self.failed: List[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        for k in range(len(self.samples)):
            path, y = self.samples[(i + k) % len(self.samples)]
            try:
                img = load_image(path).convert(self.mode)
            except (ValueError, FileNotFoundError) as e:
                if path not in self.failed:
                    self.failed.append(path)
                    warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
                continue
            return self.transform(img), int(y)
        raise RuntimeError("no readable image left in the dataset")


# --------------------------------------------------------------------------------------------
# Sources: what each dataset loads before splitting
# --------------------------------------------------------------------------------------------

@dataclass
class _Source:
    """A dataset's train and test splits before hold-out, subsampling and transforms.

    ``*_images`` is a tensor [N, C, H, W] for in-memory datasets or a list of file paths.
    """

    train_images: Union[torch.Tensor, List[str]]
    train_labels: np.ndarray
    test_images: Union[torch.Tensor, List[str]]
    test_labels: np.ndarray
    class_names: List[str]
    in_chans: int
    native_size: Optional[int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    hflip: bool
    default_augment: str
    skipped: List[str] = field(default_factory=list)


def _nhwc_to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W(, C)] array -> [N, C, H, W] tensor view (no copy)."""
    if x.ndim == 3:
        x = x[..., None]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


# ---- digits ------------------------------------------------------------------------------

def _load_digits() -> _Source:
    """scikit-learn's digits with a fixed 80/20 stratified split (random_state=0, any seed).

    Pixels (0..16) are scaled to [0, 1]; mean/std are those of the 1,437 training images'
    pixels, so they do not depend on the hold-out or the sampling ratio.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0,
                              stratify=labels)
    tr, te = np.sort(tr), np.sort(te)
    train = images[tr]
    return _Source(train, labels[tr], images[te], labels[te],
                   class_names=[str(int(c)) for c in d.target_names], in_chans=1, native_size=8,
                   mean=(float(train.mean()),), std=(float(train.std()),), hflip=False,
                   default_augment="small")


# ---- fashion-mnist -----------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (the MNIST format: big-endian header, then uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _fashion_dirs(data_path: Optional[str]) -> List[Path]:
    dirs = []
    if data_path:
        p = Path(data_path).expanduser()
        dirs += [p, p / "fashion-mnist", p / "FashionMNIST" / "raw"]
    return dirs + [Path(_FASHION_SYSTEM_DIR)]


def _find_idx_files(folder: Path) -> Tuple[Dict[str, Path], List[str]]:
    """The four Fashion-MNIST files in ``folder`` (``.gz`` or not), and the missing names."""
    found, missing = {}, []
    for name in _FASHION_FILES:
        hit = next((folder / n for n in (name + ".gz", name) if (folder / n).is_file()), None)
        if hit is None:
            missing.append(name + ".gz")
        else:
            found[name] = hit
    return found, missing


def _load_fashion_mnist(data_path: Optional[str], download: bool) -> _Source:
    """Fashion-MNIST from the idx files, looked for in ``data_path`` then the Debian folder."""
    dirs = _fashion_dirs(data_path)
    report = []
    for d in dirs:
        found, missing = _find_idx_files(d)
        if not missing:
            break
        report.append(f"  {d}: " + ("folder does not exist" if not d.is_dir()
                                    else "missing " + ", ".join(missing)))
    else:
        if not download:
            raise FileNotFoundError(
                "Fashion-MNIST not found. Looked for " + ", ".join(n + ".gz" for n in _FASHION_FILES)
                + " in:\n" + "\n".join(report) + "\nGet it with `apt-get install "
                "dataset-fashion-mnist` (installs to " + _FASHION_SYSTEM_DIR + "), put the four "
                "files in a folder and pass --data-path DIR, or pass --download to fetch them "
                "with torchvision.")
        from torchvision.datasets import FashionMNIST

        root = Path(data_path).expanduser() if data_path else cache_dir()
        FashionMNIST(str(root), train=True, download=True)
        found, missing = _find_idx_files(root / "FashionMNIST" / "raw")
        if missing:
            raise FileNotFoundError(f"download finished but {missing} are missing in {root}")
    xtr, ytr = _read_idx(found[_FASHION_FILES[0]]), _read_idx(found[_FASHION_FILES[1]])
    xte, yte = _read_idx(found[_FASHION_FILES[2]]), _read_idx(found[_FASHION_FILES[3]])
    return _Source(_nhwc_to_tensor(xtr), ytr.astype(np.int64), _nhwc_to_tensor(xte),
                   yte.astype(np.int64), class_names=list(_FASHION_CLASSES), in_chans=1,
                   native_size=28, mean=_FASHION_MEAN, std=_FASHION_STD, hflip=True,
                   default_augment="small")


# ---- cifar -------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$CONVIT_CACHE``, else ``$XDG_CACHE_HOME/convit``
    (default ``~/.cache/convit``)."""
    if os.environ.get("CONVIT_CACHE"):
        return Path(os.environ["CONVIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convit"


def _decode_jpegs(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode concatenated JPEGs (image i = data[off[i]:off[i+1]]) to uint8 [N, H, W, 3].

    Uses torchvision's libjpeg decoder (about 4x faster than Pillow here, same pixels) and
    falls back to Pillow if it refuses the data.
    """
    n = len(offsets) - 1
    if n <= 0:
        return np.zeros((0, 32, 32, 3), dtype=np.uint8)
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        flat = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg([flat[offsets[i]:offsets[i + 1]] for i in range(n)],
                                 mode=ImageReadMode.RGB)
        return torch.stack(images).permute(0, 2, 3, 1).contiguous().numpy()
    except (RuntimeError, ValueError, ImportError, AttributeError):
        pass
    out = None
    for i in range(n):
        with Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
        if out is None:
            out = np.empty((n, *arr.shape), dtype=np.uint8)
        out[i] = arr
    return out


def load_cifar10_npz(path: Union[str, os.PathLike], cache: Optional[Union[str, os.PathLike]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, List[str]]:
    """Load the packed-JPEG CIFAR-10 file: ``(train_x, train_y, test_x, test_y, classes)``.

    ``*_x`` are uint8 [N, 32, 32, 3], ``*_y`` int64. Decoding 60k JPEGs takes ~10 s, so the
    decoded arrays are cached in ``cache`` (default :func:`cache_dir`) under a name keyed on
    the source file's name, size and modification time; later calls load in well under a
    second. A cache folder that cannot be written is reported with a warning and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 npz not found: {path}")
    st = path.stat()
    folder = Path(cache) if cache is not None else cache_dir()
    cached = folder / f"{path.stem}_{st.st_size}_{st.st_mtime_ns}_decoded.npz"
    if cached.is_file():
        try:
            with np.load(cached) as z:
                return (z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                        [str(c) for c in z["classes"]])
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"ignoring unreadable cache {cached}: {e}")
    with np.load(path) as z:
        classes = [str(c) for c in z["classes"]]
        train_x = _decode_jpegs(z["train_bytes"], z["train_offsets"])
        test_x = _decode_jpegs(z["test_bytes"], z["test_offsets"])
        train_y = z["train_labels"].astype(np.int64)
        test_y = z["test_labels"].astype(np.int64)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"{path}: image and label counts differ")
    try:
        folder.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                         classes=np.array(classes))

        atomic_save(write, cached, "CIFAR-10 cache")
    except OSError as e:
        warnings.warn(f"could not cache decoded CIFAR-10 in {folder}: {e}")
    return train_x, train_y, test_x, test_y, classes


def _find_cifar(name: str, data_path: Optional[str]) -> Tuple[Optional[Tuple[str, Path]], List[str]]:
    """Locate CIFAR data: ``("npz", file)`` or ``("torchvision", root)``, plus places tried."""
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    tried = []
    if data_path:
        p = Path(data_path).expanduser()
        if name == "cifar10" and p.is_file():
            return ("npz", p), tried
        if name == "cifar10":
            tried.append(str(p / _CIFAR10_NPZ))
            if (p / _CIFAR10_NPZ).is_file():
                return ("npz", p / _CIFAR10_NPZ), tried
        tried.append(str(p / folder))
        if (p / folder).is_dir():
            return ("torchvision", p), tried
    if name == "cifar10":
        shared = Path(_CIFAR10_SHARED)
        tried.append(str(shared.resolve()))
        if shared.is_file():
            return ("npz", shared), tried
    return None, tried


def _load_cifar(name: str, data_path: Optional[str], download: bool) -> _Source:
    """CIFAR-10/100 from the packed JPEG npz (CIFAR-10 only) or torchvision's pickle folder."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    where, tried = _find_cifar(name, data_path)
    if where is not None and where[0] == "npz":
        xtr, ytr, xte, yte, classes = load_cifar10_npz(where[1])
    else:
        if where is None and not download:
            how = (f"put {_CIFAR10_NPZ} in {os.path.dirname(_CIFAR10_SHARED)} or in DIR, "
                   if name == "cifar10" else "")
            raise FileNotFoundError(
                f"{name} not found; looked for: {', '.join(tried)}. To fix: {how}"
                f"pass --data-path DIR where DIR holds torchvision's "
                f"{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'} folder, "
                f"or pass --download to fetch it with torchvision.")
        root = where[1] if where is not None else (
            Path(data_path).expanduser() if data_path else cache_dir())
        tr = cls(str(root), train=True, download=where is None)
        te = cls(str(root), train=False, download=False)
        xtr, ytr, xte, yte, classes = tr.data, tr.targets, te.data, te.targets, list(tr.classes)
    mean, std = (_CIFAR10_MEAN, _CIFAR10_STD) if name == "cifar10" else (_CIFAR100_MEAN, _CIFAR100_STD)
    return _Source(_nhwc_to_tensor(xtr), np.asarray(ytr, dtype=np.int64), _nhwc_to_tensor(xte),
                   np.asarray(yte, dtype=np.int64), class_names=classes, in_chans=3,
                   native_size=32, mean=mean, std=std, hflip=True, default_augment="small")


# ---- imagefolder -------------------------------------------------------------------------

def _readable(path: str) -> bool:
    """Cheap scan-time check: Pillow can identify the file from its header."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - header parsed
        return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _scan_split(split_dir: Path) -> Tuple[List[str], List[Tuple[str, int]], List[str]]:
    """Classes (sorted folder names), readable ``(path, label)`` samples and skipped files."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"imagefolder: folder not found: {split_dir} (expected "
                                f"{split_dir}/<class>/<images>)")
    classes = sorted(e.name for e in os.scandir(split_dir)
                     if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"imagefolder: no class folders in {split_dir} (expected "
                         f"{split_dir}/<class>/<images>)")
    samples, skipped = [], []
    for label, c in enumerate(classes):
        files = sorted(os.path.join(root, f)
                       for root, _, names in os.walk(split_dir / c, followlinks=True)
                       for f in names if f.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise ValueError(f"imagefolder: class folder {split_dir / c} has no images "
                             f"(extensions: {' '.join(IMG_EXTENSIONS)})")
        ok = [_readable(f) for f in files]
        good = [f for f, r in zip(files, ok) if r]
        skipped += [f for f, r in zip(files, ok) if not r]
        if not good:
            raise ValueError(f"imagefolder: none of the {len(files)} images in class folder "
                             f"{split_dir / c} can be read")
        samples += [(f, label) for f in good]
    return classes, samples, skipped


def _load_imagefolder(data_path: Optional[str]) -> _Source:
    """``DIR/train/<class>/*`` and ``DIR/val/<class>/*``; unreadable files are skipped."""
    if not data_path:
        raise ValueError("imagefolder needs --data-path DIR with DIR/train/<class>/ and "
                         "DIR/val/<class>/")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: folder not found: {root}")
    train_classes, train, skip_tr = _scan_split(root / "train")
    val_classes, val, skip_va = _scan_split(root / "val")
    if train_classes != val_classes:
        only_tr = sorted(set(train_classes) - set(val_classes))
        only_va = sorted(set(val_classes) - set(train_classes))
        raise ValueError(f"imagefolder: train and val class folders differ in {root}: "
                         f"only in train: {only_tr or 'none'}; only in val: {only_va or 'none'}")
    skipped = skip_tr + skip_va
    if skipped:
        shown = ", ".join(skipped[:20]) + (f" and {len(skipped) - 20} more" if len(skipped) > 20 else "")
        warnings.warn(f"imagefolder: skipped {len(skipped)} unreadable image file(s): {shown}")
    return _Source([p for p, _ in train], np.array([y for _, y in train], dtype=np.int64),
                   [p for p, _ in val], np.array([y for _, y in val], dtype=np.int64),
                   class_names=train_classes, in_chans=3, native_size=None,
                   mean=_IMAGENET_MEAN, std=_IMAGENET_STD, hflip=True, default_augment="deit",
                   skipped=skipped)


def _load_source(name: str, data_path: Optional[str], download: bool) -> _Source:
    if name == "digits":
        return _load_digits()
    if name == "fashion-mnist":
        return _load_fashion_mnist(data_path, download)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, data_path, download)
    return _load_imagefolder(data_path)


# --------------------------------------------------------------------------------------------
# build_data
# --------------------------------------------------------------------------------------------

def _make_dataset(src: _Source, images, labels: np.ndarray, indices: np.ndarray,
                  transform: Callable, wants_pil: bool) -> Dataset:
    if isinstance(images, torch.Tensor):
        return TensorImageDataset(images, labels, indices, transform, to_pil=wants_pil)
    samples = [(images[i], int(labels[i])) for i in indices]
    return ImageFileDataset(samples, transform, src.in_chans)


def build_data(name: str = "digits", data_path: Optional[str] = None,
               img_size: Optional[int] = None, sampling_ratio: float = 1.0, seed: int = 0,
               val_fraction: float = 0.0, augment: str = "auto", download: bool = False
               ) -> DataBundle:
    """Load dataset ``name`` and return its train / val / test splits, transformed.

    ``val`` is a per-class ``val_fraction`` of the train split chosen with ``seed`` before
    subsampling (so it does not depend on ``sampling_ratio``); ``train`` is
    ``sampling_ratio`` of each class of the rest. ``img_size`` defaults to the native size
    (224 for ``imagefolder``); ``augment="auto"`` is ``deit`` for ``imagefolder`` and
    ``small`` (random crop + flip, no flip for digits) otherwise. ``download`` lets
    torchvision fetch Fashion-MNIST / CIFAR when they are not found locally; nothing is ever
    downloaded otherwise.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    _check_ratio(sampling_ratio)
    if not (0.0 <= float(val_fraction) < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")
    if img_size is not None and (int(img_size) != img_size or img_size < 1):
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")

    src = _load_source(name, data_path, download)
    size = int(img_size) if img_size is not None else (src.native_size or 224)
    aug = src.default_augment if augment == "auto" else augment

    pool, val_idx = _holdout_per_class(src.train_labels, float(val_fraction), seed)
    train_idx = pool[subsample_per_class(src.train_labels[pool], sampling_ratio, seed)]

    t_train, wants_pil = train_transform(aug, size, src.mean, src.std, src.in_chans,
                                         src.native_size, src.hflip)
    if src.native_size is not None:
        t_eval = _tensor_eval(size, src.native_size, src.mean, src.std)
    else:
        t_eval = eval_transform(size, src.mean, src.std, src.in_chans, None)

    train = _make_dataset(src, src.train_images, src.train_labels, train_idx, t_train, wants_pil)
    val = (_make_dataset(src, src.train_images, src.train_labels, val_idx, t_eval, False)
           if val_fraction > 0 else None)
    test = _make_dataset(src, src.test_images, src.test_labels,
                         np.arange(len(src.test_labels)), t_eval, False)
    return DataBundle(train=train, val=val, test=test, class_names=list(src.class_names),
                      in_chans=src.in_chans, img_size=size, mean=tuple(src.mean),
                      std=tuple(src.std), train_labels=src.train_labels[train_idx].copy(),
                      name=name, native_size=src.native_size, augment=aug,
                      skipped=list(src.skipped))
