"""``imagefolder``: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (the ImageNet layout).

Files whose header cannot be read (through :func:`convit.data.reader.probe_image`: not an
image, or over the decompression-bomb pixel limit) are skipped at scan time with one warning
naming each and its reason, and listed in ``DataBundle.skipped``; files that fail later, when
decoded, are skipped by the dataset (:class:`~convit.data.datasets.ImageFileDataset`).

The scan stays ours rather than ``torchvision.datasets.ImageFolder`` / ``find_classes`` /
``make_dataset``, which differ in ways that change a run: ``find_classes`` makes hidden folders
(``.ipynb_checkpoints``) classes; ``make_dataset`` lists a class's top-level files before those
of its subfolders where we sort full paths, so with nested folders the sample order -- and so
the hold-out and the subset picked for a seed -- would change; and it cannot tell "no image
files" from "none of them readable", which our errors name. The extension list and the ImageNet
statistics are the libraries' (identical to the values used before).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.datasets.folder import IMG_EXTENSIONS

from .reader import ImageReadError, probe_image
from .sources import Source

__all__ = ["load_imagefolder", "IMG_EXTENSIONS"]


def _unreadable(path: str) -> Optional[str]:
    """Cheap scan-time check of the header (the reader's :func:`probe_image`): None when the
    file looks readable, else why not."""
    try:
        probe_image(path)
        return None
    except ImageReadError as e:
        return e.reason


def _class_files(class_dir: Path) -> list[str]:
    """Every file with an image extension under ``class_dir`` (symlinks followed), sorted by
    full path."""
    return sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(class_dir, followlinks=True)
        for f in names
        if f.lower().endswith(IMG_EXTENSIONS)
    )


def _scan_split(split_dir: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, str]]]:
    """Classes (sorted folder names), readable ``(path, label)`` samples and skipped
    ``(path, reason)``."""
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"imagefolder: folder not found: {split_dir} (expected {split_dir}/<class>/<images>)"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(
            f"imagefolder: no class folders in {split_dir} (expected {split_dir}/<class>/<images>)"
        )
    samples = []
    skipped = []
    for label, c in enumerate(classes):
        files = _class_files(split_dir / c)
        if not files:
            raise ValueError(
                f"imagefolder: class folder {split_dir / c} has no images "
                f"(extensions: {' '.join(IMG_EXTENSIONS)})"
            )
        why = [_unreadable(f) for f in files]
        good = [f for f, r in zip(files, why) if r is None]
        skipped += [(f, r) for f, r in zip(files, why) if r is not None]
        if not good:
            raise ValueError(
                f"imagefolder: none of the {len(files)} images in class folder {split_dir / c} can be read"
            )
        samples += [(f, label) for f in good]
    return classes, samples, skipped


def load_imagefolder(data_path: Optional[str], download: bool = False) -> Source:
    """``DIR/train/<class>/*`` and ``DIR/val/<class>/*``; unreadable files are skipped.
    ``download`` (a registry loader's argument) is not used: the folder is the user's."""
    if not data_path:
        raise ValueError("imagefolder needs --data-path DIR with DIR/train/<class>/ and DIR/val/<class>/")
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: folder not found: {root}")
    train_classes, train, skip_tr = _scan_split(root / "train")
    val_classes, val, skip_va = _scan_split(root / "val")
    if train_classes != val_classes:
        only_tr = sorted(set(train_classes) - set(val_classes))
        only_va = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"imagefolder: train and val class folders differ in {root}: "
            f"only in train: {only_tr or 'none'}; only in val: {only_va or 'none'}"
        )
    skipped = skip_tr + skip_va
    if skipped:
        shown = "; ".join(f"{p} ({r})" for p, r in skipped[:20])
        more = f"; and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(
            f"imagefolder: skipped {len(skipped)} unreadable image file(s): {shown}{more}", stacklevel=1
        )
    return Source(
        [p for p, _ in train],
        np.array([y for _, y in train], dtype=np.int64),
        [p for p, _ in val],
        np.array([y for _, y in val], dtype=np.int64),
        class_names=train_classes,
        in_chans=3,
        native_size=None,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        default_augment="deit",
        train_skipped=dict(skip_tr),
        test_skipped=dict(skip_va),
    )
