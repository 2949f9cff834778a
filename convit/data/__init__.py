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

Known datasets (:data:`DATASETS`; each one entry of :mod:`.registry`, where a new one is added
with :func:`register_dataset`):

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
  EXIF orientation, bounded memory, one error type (:class:`ImageReadError`); every Pillow mode
  as it looks through :mod:`.image_modes`; see docs/images.md;
* :mod:`.splits` -- the stratified hold-out and the per-class subsampling;
* :mod:`.transforms` -- training / evaluation transforms, DeiT's recipe and its posterize cap;
* :mod:`.datasets` -- :class:`TensorImageDataset`, :class:`ImageFileDataset`, the skipping
  collates :func:`collate_skipping` / :func:`collate_skipping_even`, the lists of skipped files
  (:func:`read_skipped`, :func:`add_skipped`), :func:`load_image`;
* :mod:`.registry` -- :class:`DatasetSpec`, one per dataset (loader, channels, default preset,
  flip policy), :func:`register_dataset`, :func:`dataset_spec`, :func:`dataset_names`;
* :mod:`.sources` and one reader per dataset: :mod:`.digits`, :mod:`.fashion_mnist`,
  :mod:`.cifar` (with the JPEG decode cache), :mod:`.imagefolder`; each is imported only when
  its dataset is loaded (scikit-learn, torchvision's dataset classes), as is every module here:
  ``import convit.data`` loads none of them, its names are resolved on first use;
* :mod:`.build` -- :func:`build_data` and :class:`DataBundle`;
* :mod:`.decoded` -- a split's image files decoded once at the run's size into one uint8 tensor
  (what :mod:`.device` holds for image folders);
* :mod:`.device` -- whole splits held and augmented on the accelerator
  (:class:`DeviceImages`, :class:`TrainBatches`, :class:`EvalBatches`, :func:`device_splits`).
"""

from __future__ import annotations

from ..core.lazy import lazy_attributes

#: public name -> the submodule that defines it (imported the first time the name is used)
_EXPORTS: dict[str, str] = {
    "DATASETS": "registry",
    "DatasetSpec": "registry",
    "register_dataset": "registry",
    "unregister_dataset": "registry",
    "dataset_spec": "registry",
    "dataset_names": "registry",
    "AUGMENTS": "transforms",
    "DataBundle": "build",
    "build_data": "build",
    "subsample_per_class": "splits",
    "train_transform": "transforms",
    "eval_transform": "transforms",
    "eval_input_size": "transforms",
    "load_image": "datasets",
    "load_cifar10_npz": "cifar",
    "cache_dir": "sources",
    "TensorImageDataset": "datasets",
    "ImageFileDataset": "datasets",
    "IMG_EXTENSIONS": "imagefolder",
    "read_image": "reader",
    "probe_image": "reader",
    "ImageReadError": "reader",
    "UnreadableSample": "datasets",
    "WorkerImageReadError": "datasets",
    "collate_skipping": "datasets",
    "collate_skipping_even": "datasets",
    "read_skipped": "datasets",
    "add_skipped": "datasets",
    "set_max_image_pixels": "datasets",
    "pixel_limit": "datasets",
    "DeviceImages": "device",
    "TrainBatches": "device",
    "EvalBatches": "device",
    "device_splits": "device",
}

#: names read again on every use rather than kept: the registry's names change as datasets register
_LIVE = frozenset({"DATASETS"})

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, live=_LIVE)
