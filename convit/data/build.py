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

from .cifar import load_cifar
from .datasets import ImageFileDataset, TensorImageDataset
from .digits import load_digits
from .fashion_mnist import load_fashion_mnist
from .imagefolder import load_imagefolder
from .sources import Source
from .splits import check_ratio, holdout_per_class, subsample_per_class
from .transforms import AUGMENTS, eval_input_size, eval_transform, tensor_eval_transform, train_transform

__all__ = ["DATASETS", "DataBundle", "build_data"]

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder")


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _load_source(name: str, data_path: Optional[str], download: bool) -> Source:
    if name == "digits":
        return load_digits()
    if name == "fashion-mnist":
        return load_fashion_mnist(data_path, download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_path, download)
    return load_imagefolder(data_path)


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
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    check_ratio(sampling_ratio)
    if not (0.0 <= float(val_fraction) < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; known: {', '.join(AUGMENTS)}")
    if img_size is not None and (int(img_size) != img_size or img_size < 1):
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")


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
    """Load dataset ``name`` and return its train / val / test splits, transformed.

    ``val`` is a per-class ``val_fraction`` of the train split chosen with ``seed`` before
    subsampling (so it does not depend on ``sampling_ratio``); ``train`` is
    ``sampling_ratio`` of each class of the rest. ``img_size`` defaults to the native size
    (224 for ``imagefolder``); ``augment="auto"`` is ``deit`` for ``imagefolder`` and
    ``small`` (random crop + flip, no flip for digits) otherwise. ``download`` lets
    torchvision fetch Fashion-MNIST / CIFAR when they are not found locally; nothing is ever
    downloaded otherwise.

    Image files (``imagefolder``) that cannot be read are left out and reported by each split's
    ``skipped()``; ``strict=True`` makes any of them an error naming the file.  The val and
    test splits read large files reduced to what their transform needs (as ``convit predict``).
    """
    _check_arguments(name, sampling_ratio, val_fraction, augment, img_size)
    src = _load_source(name, data_path, download)
    if strict:
        _refuse_skipped(src)
    size = int(img_size) if img_size is not None else (src.native_size or 224)
    aug = src.default_augment if augment == "auto" else augment

    pool, val_idx = holdout_per_class(src.train_labels, float(val_fraction), seed)
    train_idx = pool[subsample_per_class(src.train_labels[pool], sampling_ratio, seed)]

    t_train, wants_pil = train_transform(
        aug, size, src.mean, src.std, src.in_chans, src.native_size, src.hflip
    )
    if src.native_size is not None:
        t_eval = tensor_eval_transform(size, src.native_size, src.mean, src.std)
    else:
        t_eval = eval_transform(size, src.mean, src.std, src.in_chans, None)

    reading = dict(strict=strict)
    evaluating = dict(reading, target_size=eval_input_size(size, src.native_size))
    train = _make_dataset(
        src,
        src.train_images,
        src.train_labels,
        train_idx,
        t_train,
        wants_pil,
        rejected=src.train_skipped,
        **reading,
    )
    val = (
        _make_dataset(src, src.train_images, src.train_labels, val_idx, t_eval, False, **evaluating)
        if val_fraction > 0
        else None
    )
    test = _make_dataset(
        src,
        src.test_images,
        src.test_labels,
        np.arange(len(src.test_labels)),
        t_eval,
        False,
        rejected=src.test_skipped,
        **evaluating,
    )
    return DataBundle(
        train=train,
        val=val,
        test=test,
        class_names=list(src.class_names),
        in_chans=src.in_chans,
        img_size=size,
        mean=tuple(src.mean),
        std=tuple(src.std),
        train_labels=src.train_labels[train_idx].copy(),
        name=name,
        native_size=src.native_size,
        augment=aug,
        skipped=list(src.skipped),
    )
