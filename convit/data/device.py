"""Small image datasets held on the accelerator and augmented there, in batches.

On a GPU, CIFAR-sized models train at tens of thousands of images per second; a DataLoader
that decodes, crops and flips on CPU workers cannot keep up.  Here the whole split lives on
the device as one uint8 tensor (CIFAR-10's 50k training images are 150 MB); a batch is one
gather that does the random crop (zero padding, like torchvision's ``RandomCrop(padding=p)``)
and the horizontal flip together, followed by the float conversion and normalisation, all
batched tensor ops on the device.  Everything also runs on CPU (that is how it is tested).

:func:`device_splits` builds the splits with :func:`convit.data.build_data`, so the
validation hold-out and the per-class subset are exactly those of the DataLoader path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from .build import build_data
from .datasets import TensorImageDataset
from .registry import dataset_spec

__all__ = ["DeviceImages", "TrainBatches", "EvalBatches", "device_splits"]


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


def _split_tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored images and labels of a :class:`convit.data.TensorImageDataset` view."""
    if not isinstance(ds, TensorImageDataset):
        raise ValueError(
            f"the on-device data path needs a dataset held in memory as one tensor, not {type(ds).__name__}"
        )
    idx = torch.from_numpy(ds.indices)
    return ds.images[idx], torch.from_numpy(ds.labels)


def device_splits(
    dataset: str,
    device: torch.device | str,
    data_path: Optional[str] = None,
    sampling_ratio: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.0,
    download: bool = False,
) -> dict[str, Any]:
    """train / val / test :class:`DeviceImages` with exactly the splits of ``build_data``
    (same hold-out, same per-class subset for the seed), plus the bundle's metadata.  The
    training split is mirrored only where the dataset's spec allows (``hflip``).

    CIFAR-10 from ``cifar10_jpeg.npz`` is decoded once by ``load_cifar10_npz`` (and cached).
    """
    b = build_data(
        dataset,
        data_path,
        sampling_ratio=sampling_ratio,
        seed=seed,
        val_fraction=val_fraction,
        augment="none",
        download=download,
    )
    if b.native_size is None:
        raise ValueError(f"the on-device data path needs a fixed-size dataset, not {dataset}")
    pad = max(1, b.img_size // 8)  # the `small` augmentation of convit.data
    hflip = dataset_spec(dataset).hflip  # the dataset's own flip policy
    train = DeviceImages(*_split_tensors(b.train), b.mean, b.std, device, pad=pad, hflip=hflip)
    val = DeviceImages(*_split_tensors(b.val), b.mean, b.std, device, pad=0) if b.val is not None else None
    test = DeviceImages(*_split_tensors(b.test), b.mean, b.std, device, pad=0)
    return {"train": train, "val": val, "test": test, "bundle": b}
