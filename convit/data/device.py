"""Small image datasets held on the accelerator and augmented there, in batches.

On a GPU, CIFAR-sized models train at tens of thousands of images per second; a DataLoader
that decodes, crops and flips on CPU workers cannot keep up.  Here the whole split lives on
the device as one uint8 tensor (CIFAR-10's 50k training images are 150 MB); a batch is one
gather that does the random crop (zero padding, like torchvision's ``RandomCrop(padding=p)``)
and the horizontal flip together, followed by the float conversion and normalisation, all
batched tensor ops on the device.  Everything also runs on CPU (that is how it is tested).

:func:`hold_splits` holds the splits of a :class:`~convit.data.build.DataBundle` (and
:func:`device_splits` those of :func:`convit.data.build_data` with the `small` augmentation),
so the validation hold-out and the per-class subset are exactly those of the DataLoader path.
Any dataset and image size: an image folder's files, or a stored dataset at another size, are
decoded and resized once (:mod:`convit.data.decoded`); :func:`held_bytes` says beforehand how
much memory that takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .build import DataBundle, build_data
from .decoded import decode_split, decoded_bytes

__all__ = [
    "DeviceImages",
    "TrainBatches",
    "EvalBatches",
    "HeldSplits",
    "device_splits",
    "device_bundle",
    "hold_splits",
    "held_bytes",
]


class DeviceImages:
    """One split (images + labels) on ``device``, with batched on-device augmentation.

    images: [N, C, H, W] uint8 (0..255) or float in [0, 1]; kept in that dtype on the device.
    pad: zero padding of the random crop (0 disables cropping); hflip: random mirror.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        pad: int = 4,
        hflip: bool = True,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        c = images.shape[1]
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.pad = int(pad)
        self.hflip = bool(hflip)
        # Padded once, so a crop is a plain gather (the padding is zeros: black, as torchvision).
        self._padded = torch.nn.functional.pad(self.images, (self.pad,) * 4) if self.pad > 0 else self.images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images -> float32 ``(x - mean) / std``."""
        x = x.float()
        if self.images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx``, normalised, not augmented (evaluation)."""
        return self.normalise(self.images[idx]), self.labels[idx]

    def augmented_batch(
        self, idx: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` randomly cropped (offsets uniform in [0, 2*pad]) and flipped (p = 0.5),
        then normalised: one advanced-indexing gather for crop and flip together."""
        b = idx.shape[0]
        _, c, h, w = self.images.shape
        dev = self.device
        oy = torch.randint(0, 2 * self.pad + 1, (b, 1), device=dev, generator=generator)
        ox = torch.randint(0, 2 * self.pad + 1, (b, 1), device=dev, generator=generator)
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        cols = ar_w.expand(b, w)
        if self.hflip:
            flip = torch.rand((b, 1), device=dev, generator=generator) < 0.5
            cols = torch.where(flip, (w - 1) - ar_w, ar_w)
        rows = oy + ar_h  # [b, h]
        cols = ox + cols  # [b, w]
        x = self._padded[
            idx.view(b, 1, 1, 1),
            torch.arange(c, device=dev).view(1, c, 1, 1),
            rows.view(b, 1, h, 1),
            cols.view(b, 1, 1, w),
        ]
        return self.normalise(x), self.labels[idx]


class TrainBatches:
    """One epoch of shuffled, augmented batches of a :class:`DeviceImages` (an iterable with
    ``len``, as :func:`convit.training.engine.train_one_epoch` wants).

    The shuffle and the augmentation draw from a generator seeded by ``(seed, epoch)`` (call
    :meth:`set_epoch`), so an epoch is reproducible.  The ragged last batch is dropped when
    there are at least two full ones (the rule of :func:`convit.training.fit.fit`); with ``even``
    (mixup/cutmix need pairs) an odd last batch loses one image.
    """

    def __init__(self, data: DeviceImages, batch_size: int, seed: int = 0, even: bool = False) -> None:
        self.data = data
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.even = even
        self.epoch = 0
        self.generator = torch.Generator(device=data.device)
        n = len(data)
        self.drop_last = n >= 2 * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.generator.manual_seed(self.seed * 100_003 + self.epoch * 1_009 + 17)
        n = len(self.data)
        perm = torch.randperm(n, device=self.data.device, generator=self.generator)
        for i in range(len(self)):
            idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
            if self.even and idx.shape[0] % 2:
                idx = idx[:-1]
            if idx.shape[0] == 0:
                continue
            yield self.data.augmented_batch(idx, self.generator)


class EvalBatches:
    """The images of a :class:`DeviceImages` in order, normalised, in chunks of ``batch_size``."""

    def __init__(self, data: DeviceImages, batch_size: int) -> None:
        self.data = data
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.data), self.batch_size):
            idx = torch.arange(i, min(i + self.batch_size, len(self.data)), device=self.data.device)
            yield self.data.batch(idx)


@dataclass
class HeldSplits:
    """A bundle's splits held on a device: train (augmented as its pipeline says), val (None
    without a hold-out) and test, with the bundle and the files left out (path -> reason)."""

    train: DeviceImages
    val: Optional[DeviceImages]
    test: DeviceImages
    bundle: DataBundle
    skipped: dict[str, str] = field(default_factory=dict)


def held_bytes(bundle: DataBundle) -> int:
    """The bytes :func:`hold_splits` keeps for ``bundle`` on its device (the training split
    twice: as stored and zero-padded for the crop), computed before any file is read."""
    size = bundle.img_size
    train = decoded_bytes(bundle.train, size, train=True)
    pad = max(1, size // 8)
    held = train + train * (size + 2 * pad) ** 2 // size**2
    return held + sum(
        decoded_bytes(ds, size, train=False) for ds in (bundle.val, bundle.test) if ds is not None
    )


def hold_splits(bundle: DataBundle, device: torch.device | str, strict: bool = False) -> HeldSplits:
    """``bundle``'s splits decoded once at its image size (:func:`~convit.data.decoded.decode_split`:
    the same images, hold-out and per-class subset as its DataLoaders) and moved to ``device``.
    Raises ValueError for a pipeline that cannot be held (``augment deit``)."""
    mean, std = bundle.mean, bundle.std
    skipped: dict[str, str] = {}
    held = []
    for ds, train in ((bundle.train, True), (bundle.val, False), (bundle.test, False)):
        if ds is None:
            held.append(None)
            continue
        split = decode_split(ds, bundle.img_size, train=train, strict=strict)
        skipped.update(split.skipped)
        held.append(
            DeviceImages(split.images, split.labels, mean, std, device, pad=split.pad, hflip=split.hflip)
        )
    return HeldSplits(held[0], held[1], held[2], bundle, skipped)


def device_bundle(
    dataset: str,
    data_path: Optional[str] = None,
    sampling_ratio: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.0,
    download: bool = False,
    img_size: Optional[int] = None,
) -> DataBundle:
    """``build_data``'s splits with the `small` augmentation (random crop with ``img_size // 8``
    zero padding, a flip where the dataset's spec allows one): what :func:`device_splits` holds."""
    return build_data(
        dataset,
        data_path,
        img_size=img_size,
        sampling_ratio=sampling_ratio,
        seed=seed,
        val_fraction=val_fraction,
        augment="small",
        download=download,
    )


def device_splits(
    dataset: str,
    device: torch.device | str,
    data_path: Optional[str] = None,
    sampling_ratio: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.0,
    download: bool = False,
    img_size: Optional[int] = None,
) -> dict[str, Any]:
    """train / val / test :class:`DeviceImages` with exactly the splits of ``build_data``
    (same hold-out, same per-class subset for the seed), plus the bundle's metadata, at
    ``img_size`` (default: the dataset's native size; an image folder's images are decoded and
    resized once, :mod:`convit.data.decoded`).  The training split is augmented as `small`
    does it: a random crop with zero padding, mirrored only where the dataset's spec allows.

    CIFAR-10 from ``cifar10_jpeg.npz`` is decoded once by ``load_cifar10_npz`` (and cached).
    """
    b = device_bundle(dataset, data_path, sampling_ratio, seed, val_fraction, download, img_size)
    held = hold_splits(b, device)
    return {"train": held.train, "val": held.val, "test": held.test, "bundle": b}
