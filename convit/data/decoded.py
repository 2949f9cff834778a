"""A split decoded once into one tensor at the run's image size, to be held in memory.

The DataLoader path reads, decodes and resizes every image of an image folder at every epoch.
For a run that holds its data in memory (:mod:`convit.data.device`, ``--in-memory``) each
split is decoded here once, through the split's own pipeline:

* the deterministic steps at the head of its transform (the photo's aspect cap, conversion to
  float, resize, centre crop) are applied per image, as the DataLoader path applies them;
* a training split ends square (a centre crop of the resized image: the DataLoader's random
  crop may also move along a photo's longer side) and is stored as uint8; its random steps,
  a zero-padded ``RandomCrop`` and a ``RandomHorizontalFlip``, are read off the pipeline
  (:func:`augmentation_of`) and done a batch at a time on the device;
* an evaluation split is stored as float32 when it was resized (the values the DataLoader
  path normalises, so evaluation gives its numbers), as stored (uint8) otherwise.

Image files are read with the split's reader settings; an unreadable file is left out and
named (``strict``: an error), as the DataLoader path does.  ``augment deit`` (RandAugment on
PIL images) is applied per image and cannot be held this way: :func:`augmentation_of` says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from . import transforms
from .batched import _crop_ok
from .datasets import ImageFileDataset, TensorImageDataset
from .reader import ImageReadError, read_image

__all__ = ["Augmentation", "DecodedSplit", "augmentation_of", "decode_split", "decoded_bytes"]

#: Images resized per call when a tensor split is resized (bounds the float copy's memory).
_CHUNK = 1024


@dataclass
class Augmentation:
    """A pipeline read as: ``head`` (its deterministic steps before the first random one, done
    once per image), the padding of its random crop (0: none), whether it flips."""

    head: list[Callable]
    pad: int = 0
    hflip: bool = False


@dataclass
class DecodedSplit:
    """One split as tensors: images [N, C, S, S] (uint8, or float32 in [0, 1]), labels [N],
    its augmentation's crop padding and flip, and the files left out (path -> reason)."""

    images: torch.Tensor
    labels: torch.Tensor
    pad: int = 0
    hflip: bool = False
    skipped: dict[str, str] = field(default_factory=dict)


def _deterministic(step: Callable) -> bool:
    """A step with no random draw: resize, centre crop, or this package's own (aspect cap,
    conversion to a float image)."""
    return isinstance(step, (v2.Resize, v2.CenterCrop)) or type(step).__module__ == transforms.__name__


def augmentation_of(transform: Callable) -> Optional[Augmentation]:
    """``transform`` (a v2 pipeline) as deterministic head + padded crop + flip + Normalize, or
    None when it holds any other step (``deit``'s RandAugment, a PIL pipeline)."""
    steps = list(getattr(transform, "transforms", [])) if isinstance(transform, v2.Compose) else None
    if not steps or not isinstance(steps[-1], v2.Normalize):
        return None
    out = Augmentation(head=[])
    for step in steps[:-1]:
        if isinstance(step, v2.RandomCrop) and _crop_ok(step) and not out.pad and not out.hflip:
            out.pad = int(step.padding[0])
        elif isinstance(step, v2.RandomHorizontalFlip) and step.p == 0.5 and not out.hflip:
            out.hflip = True
        elif _deterministic(step) and not out.pad and not out.hflip:
            out.head.append(step)
        else:
            return None
    return out


def decoded_bytes(ds: Dataset, img_size: int, train: bool) -> int:
    """The bytes :func:`decode_split` will hold for ``ds`` (before any file is read)."""
    channels = ds.images.shape[1] if isinstance(ds, TensorImageDataset) else (1 if ds.mode == "L" else 3)
    kept = isinstance(ds, TensorImageDataset) and tuple(ds.images.shape[-2:]) == (img_size, img_size)
    per_value = 1 if train or (kept and ds.images.dtype == torch.uint8) else 4
    return len(ds) * channels * img_size * img_size * per_value


def decode_split(ds: Dataset, img_size: int, train: bool, strict: bool = False) -> DecodedSplit:
    """``ds`` (a view of :func:`~convit.data.build_data`) decoded at ``img_size`` (see the module).
    Raises ValueError when its transform cannot be held in memory (:func:`augmentation_of`)."""
    aug = augmentation_of(ds.transform)
    if aug is None:
        raise ValueError(
            "this split's transform is applied per image (augment deit?); held in memory: small or none"
        )
    head = list(aug.head)
    if train:
        head.append(v2.CenterCrop(img_size))  # square; a no-op where the head made it so
    if isinstance(ds, TensorImageDataset):
        images, labels, skipped = _tensor_split(ds, v2.Compose(head) if aug.head else None, train)
    else:
        images, labels, skipped = _file_split(ds, v2.Compose(head), img_size, train, strict)
    return DecodedSplit(images, labels, aug.pad if train else 0, aug.hflip and train, skipped)


def _stored(x: torch.Tensor, train: bool) -> torch.Tensor:
    """Float images in [0, 1] as kept: uint8 for training (rounded), float32 for evaluation."""
    if train:
        return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return x.float()


def _tensor_split(
    ds: TensorImageDataset, head: Optional[Callable], train: bool
) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """A view on an in-memory dataset: its images, resized by ``head`` (in chunks) if any."""
    images = ds.images[torch.from_numpy(ds.indices)]
    labels = torch.from_numpy(ds.labels).long()
    if head is None:
        return images.contiguous(), labels, {}
    as_float = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    chunks = [_stored(head(part), train) for part in as_float.split(_CHUNK)]
    return torch.cat(chunks), labels, {}


def _file_split(
    ds: ImageFileDataset, head: Callable, img_size: int, train: bool, strict: bool
) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Every readable file of an image-folder split through ``head``; the rest named."""
    skipped = dict(ds.rejected)
    images = []
    labels = []
    for (path, label), img in zip(ds.samples, _read_all(ds, img_size if train else ds.target_size)):
        if isinstance(img, ImageReadError):
            if strict:
                raise img
            skipped[path] = img.reason
            continue
        images.append(_stored(head(img), train))
        labels.append(label)
    if not images:
        raise ValueError(f"none of the {len(ds.samples)} images of this split can be read")
    return torch.stack(images), torch.as_tensor(np.asarray(labels, dtype=np.int64)), skipped


def _read_all(ds: ImageFileDataset, target_size: Optional[int]) -> Iterator[object]:
    """Each file of ``ds`` decoded (reduced towards ``target_size``), or its read error."""
    for path, _ in ds.samples:
        try:
            yield read_image(path, ds.mode, max_pixels=ds.max_pixels, target_size=target_size)
        except ImageReadError as e:
            yield e
