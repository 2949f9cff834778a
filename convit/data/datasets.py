"""The two Dataset classes and the image-file reader they and ``convit predict`` share.

:class:`TensorImageDataset` views in-memory datasets (digits, Fashion-MNIST, CIFAR) held as one
tensor; :class:`ImageFileDataset` reads ``imagefolder`` files on demand through
:func:`load_image`, which also fixes Pillow's conversions of palette and 16-bit images.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, List, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["TensorImageDataset", "ImageFileDataset", "load_image"]


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
