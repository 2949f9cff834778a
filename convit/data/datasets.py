"""The two Dataset classes, and the collate functions that drop unreadable samples.

:class:`TensorImageDataset` views in-memory datasets (digits, Fashion-MNIST, CIFAR) held as one
tensor; :class:`ImageFileDataset` reads ``imagefolder`` files on demand through
:func:`convit.data.reader.read_image`, the reader ``convit predict`` uses too.

A file that cannot be read is never replaced by another sample (that would count an image
twice and change accuracy): the dataset returns an :class:`UnreadableSample` and
:func:`collate_skipping` leaves it out of the batch, so metrics are over the images read.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate, get_worker_info

from ..core.fileio import atomic_save
from .batched import batched
from .reader import ImageReadError, read_image

__all__ = [
    "TensorImageDataset",
    "ImageFileDataset",
    "UnreadableSample",
    "WorkerImageReadError",
    "collate_skipping",
    "collate_skipping_even",
    "read_skipped",
    "add_skipped",
    "load_image",
]


class TensorImageDataset(Dataset):
    """A view (``indices``) on images held in memory as one tensor [N, C, H, W].

    ``images`` is uint8 (0..255) or float in [0, 1]; items are ``(transform(x), label)``
    where ``x`` is float [C, H, W] in [0, 1], or a PIL image when ``to_pil`` (for timm's
    PIL-only DeiT pipeline). ``labels`` holds the labels of the view, in order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        indices: np.ndarray,
        transform: Callable,
        to_pil: bool = False,
    ):
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)[self.indices]
        self.transform = transform
        self.to_pil = to_pil
        self._batched = None if to_pil else batched(transform)
        self._indices_t = torch.from_numpy(self.indices)
        self._labels_t = torch.from_numpy(self.labels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, items: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A DataLoader batch: the per-image results of ``__getitem__``, made in one batched pass
        when :func:`~convit.data.batched.batched` reproduces the transform (same draws, same values)."""
        if self._batched is None:
            return [self[i] for i in items]
        x, y = self.batch(torch.as_tensor(items, dtype=torch.long))
        return list(zip(x.unbind(0), y.tolist()))

    @property
    def batchable(self) -> bool:
        """Whether :meth:`batch` can transform whole batches at once (see ``batched``)."""
        return self._batched is not None

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, h, w] and labels [B] at ``positions`` (a 1-D long tensor) of this view,
        the images transformed in one batched pass: the stacked ``__getitem__`` results."""
        if self._batched is None:
            raise ValueError("this dataset's transform is applied per image (see convit.data.batched)")
        x = self._batched(self.images[self._indices_t[positions]])
        return x, self._labels_t[positions]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[self.indices[i]]
        if self.to_pil:
            u8 = x if x.dtype == torch.uint8 else (x * 255).round().clamp(0, 255).to(torch.uint8)
            arr = u8.permute(1, 2, 0).numpy()
            img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            return self.transform(img), int(self.labels[i])
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        return self.transform(x), int(self.labels[i])


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """A file decoded with its alpha kept (``L``, ``LA``, ``RGB`` or ``RGBA``): the reader's
    ``read_image(path, mode=None)``, for callers that convert the image themselves (the eval
    transform composites alpha as the reader does). Raises
    :class:`~convit.data.reader.ImageReadError` (a ``ValueError``; also a
    ``FileNotFoundError`` when the file is missing)."""
    return read_image(path, mode=None)


class UnreadableSample:
    """What :class:`ImageFileDataset` returns for a file it could not read: the file, why,
    and the shape its image would have had (for an empty batch). Never a training or
    evaluation sample: :func:`collate_skipping` drops it."""

    __slots__ = ("path", "reason", "shape")

    def __init__(self, path: str, reason: str, shape: tuple[int, ...]):
        self.path = path
        self.reason = reason
        self.shape = shape

    def __repr__(self) -> str:
        return f"UnreadableSample({self.path!r}: {self.reason})"

    def __len__(self) -> int:
        """``default_collate`` asks a sample's length: say what to use instead."""
        raise TypeError(
            f"{self.path} could not be read ({self.reason}); make the DataLoader with "
            f"collate_fn=convit.data.collate_skipping to leave unreadable files out"
        )


def _empty_batch(batch: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """0 images of the shape the samples of ``batch`` have (or would have had)."""
    shape: tuple[int, ...] = (0,)
    for b in batch:
        shape = b.shape if isinstance(b, UnreadableSample) else tuple(b[0].shape)
        break
    return torch.empty((0, *shape)), torch.empty(0, dtype=torch.long)


def collate_skipping(batch: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """``default_collate`` of the readable samples of ``batch``; unreadable ones are left out,
    so a batch may be smaller (an all-unreadable batch has 0 images, of the right shape)."""
    good = [b for b in batch if not isinstance(b, UnreadableSample)]
    return default_collate(good) if good else _empty_batch(batch)


def collate_skipping_even(batch: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`collate_skipping` that also drops the last readable sample of an odd batch:
    timm's mixup / cutmix pairs each image with another and needs an even batch."""
    good = [b for b in batch if not isinstance(b, UnreadableSample)]
    good = good[: len(good) - len(good) % 2]
    return default_collate(good) if good else _empty_batch(batch)


class WorkerImageReadError(ImageReadError):
    """The :class:`~convit.data.reader.ImageReadError` of a strict dataset read in a DataLoader
    worker.  The DataLoader raises it again in the main process as ``type(text)``, ``text``
    being the worker's whole traceback; this keeps only its last line, the error itself, so the
    message names the file without a traceback."""

    def __init__(self, path: str, reason: Optional[str] = None, format: Optional[str] = None):
        if reason is not None:
            super().__init__(path, reason, format)
            return
        message = (path.strip().splitlines() or [""])[-1].split(f"{type(self).__name__}: ", 1)[-1]
        ValueError.__init__(self, message)
        named = re.match(r"cannot read image (.+?)(?: \(([^()]*)\))?: (.*)$", message)
        self.path, self.format, self.reason = named.groups() if named else ("", None, message)


class ImageFileDataset(Dataset):
    """Images read from disk on demand (``imagefolder``), converted to ``in_chans`` channels by
    :func:`~convit.data.reader.read_image`.

    A file that passed the scan but cannot be read now (e.g. a truncated JPEG) is never
    replaced by another sample: ``strict=False`` (default) returns an :class:`UnreadableSample`
    -- use :func:`collate_skipping` as the DataLoader's ``collate_fn`` (also at
    ``dataset.collate_fn``) -- warns once per file with the count so far, and records it in
    ``failed`` (paths, in order) and ``reasons`` (path -> reason), and, when ``failed_log`` is
    set, appends ``path<TAB>reason`` to that file: DataLoader workers run in other processes,
    so the file is how their failures reach the caller (:meth:`skipped` reads both).
    ``strict=True`` raises the :class:`~convit.data.reader.ImageReadError` instead (in a
    DataLoader worker as :class:`WorkerImageReadError`, which reaches the caller intact).

    ``target_size`` / ``max_pixels`` go to the reader (reduced decoding of large files; the
    decompression-bomb limit, Pillow's by default).  ``rejected``: files of this split already
    left out when the folder was scanned (path -> reason), reported by :meth:`skipped` too.
    """

    collate_fn = staticmethod(collate_skipping)

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable,
        in_chans: int = 3,
        *,
        strict: bool = False,
        target_size: Optional[int] = None,
        max_pixels: Optional[int] = -1,
        failed_log: Optional[Union[str, os.PathLike]] = None,
        rejected: Optional[dict[str, str]] = None,
    ):
        self.samples = samples
        self.labels = np.array([y for _, y in samples], dtype=np.int64)
        self.transform = transform
        self.mode = "L" if in_chans == 1 else "RGB"
        self.strict = strict
        self.target_size = target_size
        self.max_pixels = max_pixels
        self.failed_log = failed_log
        self.rejected = dict(rejected or {})
        self.failed: list[str] = []
        self.reasons: dict[str, str] = {}
        self._shape: Optional[tuple[int, ...]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Union[tuple[torch.Tensor, int], UnreadableSample]:
        path, y = self.samples[i]
        try:
            img = read_image(path, self.mode, max_pixels=self.max_pixels, target_size=self.target_size)
        except ImageReadError as e:
            if self.strict:
                raise (
                    e if get_worker_info() is None else WorkerImageReadError(e.path, e.reason, e.format)
                ) from None
            return self._unreadable(path, e)
        x = self.transform(img)
        if self._shape is None:
            self._shape = tuple(x.shape)
        return x, int(y)

    def _unreadable(self, path: str, e: ImageReadError) -> UnreadableSample:
        """Record (once per file and process) and warn; the sentinel for the collate."""
        if path not in self.reasons:
            self.failed.append(path)
            self.reasons[path] = e.reason
            warnings.warn(
                f"skipping unreadable image ({len(self.failed)} so far, never replaced by another): {e}",
                stacklevel=3,
            )
            if self.failed_log is not None:
                with open(self.failed_log, "a", encoding="utf-8") as f:
                    f.write(_skipped_line(path, e.reason))
        return UnreadableSample(path, e.reason, self._item_shape())

    def _item_shape(self) -> tuple[int, ...]:
        """The shape of one transformed image: of a real one once read, else of a blank
        image (with every random generator restored, so seeded augmentation is unchanged)."""
        if self._shape is None:
            py = random.getstate()
            npy = np.random.get_state()
            with torch.random.fork_rng(devices=[]):
                self._shape = tuple(self.transform(Image.new(self.mode, (64, 64))).shape)
            random.setstate(py)
            np.random.set_state(npy)
        return self._shape

    def skipped(self) -> dict[str, str]:
        """Every file of this split left out so far, path -> reason: at scan time
        (``rejected``), in this process, and, with ``failed_log``, in its DataLoader workers."""
        out = {**self.rejected, **self.reasons}
        for path, reason in read_skipped(self.failed_log).items():
            out.setdefault(path, reason)
        return out


def _skipped_line(path: str, reason: str) -> str:
    return f"{path}\t{' '.join(reason.split())}\n"


def read_skipped(path: Optional[Union[str, os.PathLike]]) -> dict[str, str]:
    """A list of skipped files (``path<TAB>reason`` lines, as ``failed_log`` holds them) as
    path -> reason, each file once; {} when there is no such file."""
    out: dict[str, str] = {}
    if path is not None and os.path.exists(path):
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            name, _, reason = line.partition("\t")
            out.setdefault(name, reason)
    return out


def add_skipped(path: Union[str, os.PathLike], entries: dict[str, str]) -> None:
    """Add ``entries`` (path -> reason) to the list at ``path``, each file once (rewritten
    whole, atomically); nothing is written while the list would be empty."""
    merged = read_skipped(path)
    for name, reason in entries.items():
        merged.setdefault(name, reason)
    if merged:
        text = "".join(_skipped_line(p, r) for p, r in merged.items())
        atomic_save(lambda tmp: tmp.write_text(text, encoding="utf-8"), Path(path), "list of skipped files")


def pixel_limit(flag: Optional[int]) -> Optional[int]:
    """``--max-image-pixels`` as the reader's ``max_pixels``: not given (None) is -1, Pillow's
    limit; 0 is None, no limit (trusted files only); N allows N pixels.  Negative: ValueError."""
    if flag is not None and flag < 0:
        raise ValueError(f"--max-image-pixels must be 0 (no limit) or more, got {flag}")
    return -1 if flag is None else (flag or None)


def set_max_image_pixels(limit: Optional[int]) -> None:
    """The decompression-bomb limit every read of this process uses (``--max-image-pixels`` of
    train and eval, read as :func:`pixel_limit` reads it; predict passes it to each read instead).

    It sets Pillow's ``Image.MAX_IMAGE_PIXELS``, which the reader checks on the header before
    decoding; DataLoader workers forked afterwards inherit it.
    """
    value = pixel_limit(limit)
    if value != -1:
        Image.MAX_IMAGE_PIXELS = value
