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
    ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (the ImageNet layout); files whose
    header is unreadable are skipped with one warning and listed in
    :attr:`DataBundle.skipped`; files that fail to decode later are left out of their batch
    (never replaced), see :func:`collate_skipping`.

Small datasets live in memory as one tensor and are augmented on tensors (no PIL round
trip), so ``__getitem__`` stays cheap next to the model's step.
Augmentations come from torchvision and timm; none is re-implemented here.

The modules, from the bottom up (none imports the trainer, the analysis or the experiments):

* :mod:`.reader` -- :func:`read_image`, the one image-file reader (training, eval, predict):
  every Pillow mode as it looks, EXIF orientation, bounded memory, one error type
  (:class:`ImageReadError`); see docs/images.md;
* :mod:`.splits` -- the stratified hold-out and the per-class subsampling;
* :mod:`.transforms` -- training / evaluation transforms, DeiT's recipe and its posterize cap;
* :mod:`.datasets` -- :class:`TensorImageDataset`, :class:`ImageFileDataset`, the skipping
  collates :func:`collate_skipping` / :func:`collate_skipping_even`, the lists of skipped files
  (:func:`read_skipped`, :func:`add_skipped`), :func:`load_image`;
* :mod:`.sources` and one reader per dataset: :mod:`.digits`, :mod:`.fashion_mnist`,
  :mod:`.cifar` (with the JPEG decode cache), :mod:`.imagefolder`;
* :mod:`.build` -- :func:`build_data` and :class:`DataBundle`;
* :mod:`.device` -- whole splits held and augmented on the accelerator
  (:class:`DeviceImages`, :class:`TrainBatches`, :class:`EvalBatches`, :func:`device_splits`).
"""

from __future__ import annotations

from .build import DATASETS, DataBundle, build_data
from .cifar import load_cifar10_npz
from .datasets import (
    ImageFileDataset,
    TensorImageDataset,
    UnreadableSample,
    WorkerImageReadError,
    add_skipped,
    collate_skipping,
    collate_skipping_even,
    load_image,
    pixel_limit,
    read_skipped,
    set_max_image_pixels,
)
from .device import DeviceImages, EvalBatches, TrainBatches, device_splits
from .imagefolder import IMG_EXTENSIONS
from .reader import ImageReadError, probe_image, read_image
from .sources import cache_dir
from .splits import subsample_per_class
from .transforms import AUGMENTS, eval_input_size, eval_transform, train_transform

__all__ = [
    "DATASETS",
    "AUGMENTS",
    "DataBundle",
    "build_data",
    "subsample_per_class",
    "train_transform",
    "eval_transform",
    "load_image",
    "load_cifar10_npz",
    "cache_dir",
    "TensorImageDataset",
    "ImageFileDataset",
    "IMG_EXTENSIONS",
    "read_image",
    "probe_image",
    "ImageReadError",
    "UnreadableSample",
    "WorkerImageReadError",
    "collate_skipping",
    "collate_skipping_even",
    "read_skipped",
    "add_skipped",
    "set_max_image_pixels",
    "pixel_limit",
    "eval_input_size",
    "DeviceImages",
    "TrainBatches",
    "EvalBatches",
    "device_splits",
]
