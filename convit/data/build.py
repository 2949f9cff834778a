""":func:`build_data`: load a dataset, split it, attach the transforms.

The order is fixed so that experiments stay comparable: the dataset's train split; a stratified,
seeded validation hold-out *before* subsampling (so it is the same for every
``sampling_ratio``); then ``round(sampling_ratio * n_c)`` images (at least one) of each class of
what is left. The test set is always the dataset's own test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import ImageFileDataset, TensorImageDataset
from .registry import dataset_spec
from .sources import Source
from .splits import check_ratio, holdout_per_class, subsample_per_class
from .transforms import AUGMENTS, eval_input_size, eval_transform, tensor_eval_transform, train_transform

__all__ = ["DataBundle", "build_data"]


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
    class_names: list[str]
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_labels: np.ndarray
    name: str = ""
    native_size: Optional[int] = None
    augment: str = "none"
    skipped: list[str] = field(default_factory=list)
    files: tuple[str, ...] = ()  # the data files the source read (Source.files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _make_dataset(
    src: Source,
    images: Union[torch.Tensor, list[str]],
    labels: np.ndarray,
    indices: np.ndarray,
    transform: Callable,
    wants_pil: bool,
    **files,
) -> Dataset:
    """The view ``indices`` of one split: in memory for tensors, read from disk for paths
    (``files``: :class:`ImageFileDataset`'s options)."""
    if isinstance(images, torch.Tensor):
        return TensorImageDataset(images, labels, indices, transform, to_pil=wants_pil)
    samples = [(images[i], int(labels[i])) for i in indices]
    return ImageFileDataset(samples, transform, src.in_chans, **files)


def _refuse_skipped(src: Source) -> None:
    """``strict``: a file left out at scan time is an error naming every such file."""
    skipped = {**src.train_skipped, **src.test_skipped}
    if skipped:
        listed = "; ".join(f"{p}: {r}" for p, r in list(skipped.items())[:20])
        raise ValueError(
            f"{len(skipped)} image file(s) cannot be read and reading is strict: {listed}"
            + (f"; and {len(skipped) - 20} more" if len(skipped) > 20 else "")
        )


def _check_arguments(
    name: str, sampling_ratio: float, val_fraction: float, augment: str, img_size: Optional[int]
) -> None:
    """Reject bad arguments before anything is loaded, naming the accepted values."""
    dataset_spec(name)  # an unknown name is a ValueError naming the known ones
    check_ratio(sampling_ratio)
    if not (0.0 <= float(val_fraction) < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")
    if img_size is not None and (int(img_size) != img_size or img_size < 1):
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")


def _transforms(src: Source, aug: str, size: int, hflip: bool) -> tuple[Callable, bool, Callable]:
    """``(train transform, whether it wants PIL images, eval transform)``; fixed-size datasets
    are evaluated straight from their stored tensors."""
    t_train, wants_pil = train_transform(aug, size, src.mean, src.std, src.in_chans, src.native_size, hflip)
    if src.native_size is not None:
        t_eval = tensor_eval_transform(size, src.native_size, src.mean, src.std)
    else:
        t_eval = eval_transform(size, src.mean, src.std, src.in_chans, None)
    return t_train, wants_pil, t_eval


@dataclass
class _Indices:
    """Which images of the source make each split (``val`` None when nothing is held out)."""

    train: np.ndarray
    val: Optional[np.ndarray]
    test: np.ndarray


def _split_indices(src: Source, sampling_ratio: float, seed: int, val_fraction: float) -> _Indices:
    """The seeded hold-out of the train split first, then ``sampling_ratio`` of each class of
    the rest; the test split whole."""
    pool, val_idx = holdout_per_class(src.train_labels, float(val_fraction), seed)
    train_idx = pool[subsample_per_class(src.train_labels[pool], sampling_ratio, seed)]
    return _Indices(train_idx, val_idx if val_fraction > 0 else None, np.arange(len(src.test_labels)))


def _splits(
    src: Source, idx: _Indices, transforms: tuple[Callable, bool, Callable], size: int, strict: bool
) -> tuple[Dataset, Optional[Dataset], Dataset]:
    """The train / val / test datasets (``val`` None when nothing is held out).  Val and test
    read large files reduced to what their transform needs."""
    t_train, wants_pil, t_eval = transforms
    reading = dict(strict=strict)
    evaluating = dict(reading, target_size=eval_input_size(size, src.native_size))
    train = _make_dataset(
        src,
        src.train_images,
        src.train_labels,
        idx.train,
        t_train,
        wants_pil,
        rejected=src.train_skipped,
        **reading,
    )
    val = None
    if idx.val is not None:
        val = _make_dataset(src, src.train_images, src.train_labels, idx.val, t_eval, False, **evaluating)
    test = _make_dataset(
        src,
        src.test_images,
        src.test_labels,
        idx.test,
        t_eval,
        False,
        rejected=src.test_skipped,
        **evaluating,
    )
    return train, val, test


def build_data(
    name: str = "digits",
    data_path: Optional[str] = None,
    img_size: Optional[int] = None,
    sampling_ratio: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.0,
    augment: str = "auto",
    download: bool = False,
    strict: bool = False,
) -> DataBundle:
    """Load dataset ``name`` (any name in :mod:`convit.data.registry`) and return its train /
    val / test splits, transformed.

    ``val`` is a per-class ``val_fraction`` of the train split chosen with ``seed`` before
    subsampling (so it does not depend on ``sampling_ratio``); ``train`` is
    ``sampling_ratio`` of each class of the rest. ``img_size`` defaults to the native size
    (224 for ``imagefolder``); ``augment="auto"`` is the source's default (``deit`` for
    ``imagefolder``, ``small``: random crop, and a flip where the dataset's spec allows one,
    otherwise). ``download`` lets torchvision fetch Fashion-MNIST / CIFAR when they are not
    found locally; nothing is ever downloaded otherwise.

    Image files (``imagefolder``) that cannot be read are left out and reported by each split's
    ``skipped()``; ``strict=True`` makes any of them an error naming the file.  The val and
    test splits read large files reduced to what their transform needs (as ``convit predict``).
    """
    _check_arguments(name, sampling_ratio, val_fraction, augment, img_size)
    spec = dataset_spec(name)
    src = spec.load(data_path, download)
    if strict:
        _refuse_skipped(src)
    size = int(img_size) if img_size is not None else (src.native_size or 224)
    aug = src.default_augment if augment == "auto" else augment
    idx = _split_indices(src, sampling_ratio, seed, val_fraction)
    train, val, test = _splits(src, idx, _transforms(src, aug, size, spec.hflip), size, strict)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        class_names=list(src.class_names),
        in_chans=src.in_chans,
        img_size=size,
        mean=tuple(src.mean),
        std=tuple(src.std),
        train_labels=src.train_labels[idx.train].copy(),
        name=name,
        native_size=src.native_size,
        augment=aug,
        skipped=list(src.skipped),
        files=src.files,
    )
