"""Fashion-MNIST from its four idx files (``.gz`` or not).

Looked for in ``data_path`` (and its ``fashion-mnist`` / ``FashionMNIST/raw`` subfolders), then
in ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``); torchvision
downloads it only when asked (``download=True``).

The idx reader stays ours rather than ``torchvision.datasets.mnist.read_image_file`` /
``read_label_file``: torchvision 0.29 opens the path with a plain ``open()``, so it cannot read
the ``.gz`` files Debian ships (it only reads what its own download step has unpacked). Both
give the same arrays on an unpacked file (tests/test_data_library.py checks it).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np
from torchvision.datasets import FashionMNIST

from .sources import Source, cache_dir, nhwc_to_tensor

__all__ = ["load_fashion_mnist", "read_idx"]

_FASHION_MEAN = (0.2860,)
_FASHION_STD = (0.3530,)
_FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (the MNIST format: big-endian header, then uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _fashion_dirs(data_path: Optional[str]) -> list[Path]:
    """The folders searched, in order."""
    dirs = []
    if data_path:
        p = Path(data_path).expanduser()
        dirs += [p, p / "fashion-mnist", p / "FashionMNIST" / "raw"]
    return dirs + [Path(_FASHION_SYSTEM_DIR)]


def _find_idx_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The four Fashion-MNIST files in ``folder`` (``.gz`` or not), and the missing names."""
    found = {}
    missing = []
    for name in _FASHION_FILES:
        hit = next((folder / n for n in (name + ".gz", name) if (folder / n).is_file()), None)
        if hit is None:
            missing.append(name + ".gz")
        else:
            found[name] = hit
    return found, missing


def _not_found(report: list[str]) -> FileNotFoundError:
    """The error that lists every folder searched and what was missing in each."""
    return FileNotFoundError(
        "Fashion-MNIST not found. Looked for "
        + ", ".join(n + ".gz" for n in _FASHION_FILES)
        + " in:\n"
        + "\n".join(report)
        + "\nGet it with `apt-get install "
        "dataset-fashion-mnist` (installs to " + _FASHION_SYSTEM_DIR + "), put the four "
        "files in a folder and pass --data-path DIR, or pass --download to fetch them "
        "with torchvision."
    )


def _download(data_path: Optional[str]) -> dict[str, Path]:
    """Fetch the files with torchvision into ``data_path`` (or the cache folder)."""
    root = Path(data_path).expanduser() if data_path else cache_dir()
    FashionMNIST(str(root), train=True, download=True)
    found, missing = _find_idx_files(root / "FashionMNIST" / "raw")
    if missing:
        raise FileNotFoundError(f"download finished but {missing} are missing in {root}")
    return found


def load_fashion_mnist(data_path: Optional[str], download: bool) -> Source:
    """Fashion-MNIST from the idx files, looked for in ``data_path`` then the Debian folder."""
    report = []
    for d in _fashion_dirs(data_path):
        found, missing = _find_idx_files(d)
        if not missing:
            break
        report.append(
            f"  {d}: " + ("folder does not exist" if not d.is_dir() else "missing " + ", ".join(missing))
        )
    else:
        if not download:
            raise _not_found(report)
        found = _download(data_path)
    xtr = read_idx(found[_FASHION_FILES[0]])
    ytr = read_idx(found[_FASHION_FILES[1]])
    xte = read_idx(found[_FASHION_FILES[2]])
    yte = read_idx(found[_FASHION_FILES[3]])
    return Source(
        nhwc_to_tensor(xtr),
        ytr.astype(np.int64),
        nhwc_to_tensor(xte),
        yte.astype(np.int64),
        class_names=list(_FASHION_CLASSES),
        in_chans=1,
        files=tuple(str(Path(found[name]).resolve()) for name in _FASHION_FILES),
        native_size=28,
        mean=_FASHION_MEAN,
        std=_FASHION_STD,
        default_augment="small",
    )
