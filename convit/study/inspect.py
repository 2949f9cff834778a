"""What a study's data is: classes, images per class, typical size and channels, test split.

``DATA`` is an image folder or a built-in dataset name (:data:`BUILTIN`).  A folder is either
split (``DATA/train/<class>/...`` with ``DATA/test/`` or ``DATA/val/`` as the test split, or
neither) or flat (``DATA/<class>/...``).  Every file's header is read once through the reader's
:func:`~convit.data.reader.probe_image` (no full decode), so an empty or unreadable image is
named here, before any run starts.  Errors are :class:`ValueError` with one line each.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..data import IMG_EXTENSIONS, ImageReadError, build_data, probe_image
from ..data.registry import dataset_names

__all__ = ["BUILTIN", "DataSummary", "inspect_data", "images_per_class"]

#: Built-in dataset names ``convit study`` accepts in place of a folder: the registered ones
#: that need no data folder of their own.
BUILTIN: tuple[str, ...] = dataset_names(needs_data_path=False)


@dataclass
class DataSummary:
    """What :func:`inspect_data` found.

    kind: ``folder`` or ``builtin``.  test_from: ``test`` or ``val`` (a folder's own split),
    ``dataset`` (a built-in's test split) or ``holdout`` (none: the plan holds one out).
    train / test: per class, file paths relative to ``root`` (folders only; test is None for
    ``holdout``).  counts: training images per class.  size: median (width, height).
    """

    kind: str
    name: str
    root: Optional[str]
    classes: list[str]
    counts: dict[str, int]
    test_from: str
    test_count: int
    size: tuple[int, int]
    channels: int
    modes: dict[str, int] = field(default_factory=dict)
    train: dict[str, list[str]] = field(default_factory=dict)
    test: Optional[dict[str, list[str]]] = None
    probe_s_per_file: float = 0.0
    data_path: Optional[str] = None

    def describe(self) -> str:
        """One line: how many classes and images, their size, where the test split comes from."""
        n = list(self.counts.values())
        test = {
            "holdout": "none (held out by the plan)",
            "dataset": f"{self.test_count} (the dataset's)",
            "test": f"{self.test_count} (test/)",
            "val": f"{self.test_count} (val/)",
        }[self.test_from]
        return (
            f"{self.name}: {len(self.classes)} classes, {sum(n)} training images ({min(n)}-{max(n)} per "
            f"class), typically {self.size[0]}x{self.size[1]}, {self.channels} channel(s); "
            f"test images: {test}"
        )


def images_per_class(summary: DataSummary) -> int:
    """Training images of the smallest class."""
    return min(summary.counts.values())


def inspect_data(data: str, data_path: Optional[str] = None) -> DataSummary:
    """Inspect ``data`` (a folder, or a name in :data:`BUILTIN`); raises ValueError on bad input."""
    path = Path(data).expanduser()
    if path.is_dir():
        return _inspect_folder(path.resolve())
    if data in BUILTIN:
        return _inspect_builtin(data, data_path)
    raise ValueError(f"{data} is neither an image folder nor a built-in dataset ({', '.join(BUILTIN)})")


def _inspect_builtin(name: str, data_path: Optional[str]) -> DataSummary:
    bundle = build_data(name, data_path, augment="none")
    labels = [int(y) for y in bundle.train_labels]
    counts = {c: labels.count(i) for i, c in enumerate(bundle.class_names)}
    side = bundle.native_size or bundle.img_size
    return DataSummary(
        "builtin",
        name,
        None,
        list(bundle.class_names),
        counts,
        "dataset",
        len(bundle.test),
        (side, side),
        bundle.in_chans,
        data_path=data_path,
    )


def _class_dirs(split: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))


def _files(class_dir: Path, root: Path) -> list[str]:
    """Image files under ``class_dir`` (symlinks followed), relative to ``root``, sorted."""
    out = [
        os.path.relpath(os.path.join(d, f), root)
        for d, _, names in os.walk(class_dir, followlinks=True)
        for f in names
        if f.lower().endswith(IMG_EXTENSIONS)
    ]
    return sorted(out)


def _layout(root: Path) -> tuple[Path, Optional[Path], str]:
    """(train folder, test folder or None, where the test split comes from)."""
    if (root / "train").is_dir():
        for name in ("test", "val"):
            if (root / name).is_dir():
                return root / "train", root / name, name
        return root / "train", None, "holdout"
    return root, None, "holdout"


def _scan(split: Path, root: Path, what: str) -> dict[str, list[str]]:
    classes = _class_dirs(split)
    if not classes:
        raise ValueError(f"{split} has no class folders (expected {split}/<class>/<images>)")
    files = {c: _files(split / c, root) for c in classes}
    empty = [c for c, f in files.items() if not f]
    if empty:
        raise ValueError(
            f"{what} class {empty[0]!r} ({split / empty[0]}) has no images "
            f"(extensions: {' '.join(IMG_EXTENSIONS)})"
        )
    return files


def _probe_all(root: Path, files: list[str]) -> tuple[list[tuple[int, int]], Counter, float]:
    """Sizes and modes of every file from its header; the first unreadable one is an error."""
    sizes = []
    modes = Counter()
    t0 = time.perf_counter()
    for rel in files:
        p = root / rel
        try:
            if p.stat().st_size == 0:
                raise ImageReadError(p, "empty file")
            _, mode, size = probe_image(p)
        except ImageReadError as e:
            raise ValueError(f"unreadable image {p}: {e.reason}; fix or remove it") from None
        sizes.append(size)
        modes[mode] += 1
    return sizes, modes, (time.perf_counter() - t0) / max(1, len(files))


def _inspect_folder(root: Path) -> DataSummary:
    train_dir, test_dir, test_from = _layout(root)
    train = _scan(train_dir, root, "training")
    if len(train) < 2:
        raise ValueError(
            f"{train_dir} has one class ({next(iter(train))!r}): a classifier needs at least two"
        )
    test = _scan(test_dir, root, "test") if test_dir is not None else None
    if test is not None and sorted(test) != sorted(train):
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise ValueError(
            f"the class folders of {train_dir} and {test_dir} differ: only in train: "
            f"{only_train or 'none'}; only in {test_from}: {only_test or 'none'}"
        )
    every = [f for fs in train.values() for f in fs] + [f for fs in (test or {}).values() for f in fs]
    sizes, modes, per_file = _probe_all(root, every)
    size = (int(statistics.median(w for w, _ in sizes)), int(statistics.median(h for _, h in sizes)))
    channels = 1 if all(m in ("1", "L", "I", "F", "I;16", "LA") for m in modes) else 3
    return DataSummary(
        "folder",
        root.name,
        str(root),
        list(train),
        {c: len(f) for c, f in train.items()},
        test_from,
        sum(len(f) for f in (test or {}).values()),
        size,
        channels,
        dict(modes),
        train,
        test,
        per_file,
    )
