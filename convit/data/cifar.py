"""CIFAR-10 / CIFAR-100: torchvision's python-pickle folders, and CIFAR-10 as one packed-JPEG
file (``cifar10_jpeg.npz``) decoded once and then cached.

The npz holds ``{train,test}_bytes`` (the JPEGs concatenated), ``{train,test}_offsets``
(image ``i`` is ``bytes[off[i]:off[i + 1]]``), ``{train,test}_labels`` and ``classes``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from ..core.fileio import atomic_save
from .sources import Source, cache_dir, nhwc_to_tensor

try:  # deprecated in torchvision 0.29; Pillow decodes the same pixels when it is gone
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - depends on the torchvision version
    ImageReadMode = decode_jpeg = None

__all__ = ["load_cifar", "load_cifar10", "load_cifar100", "load_cifar10_npz"]

_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
_CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_CIFAR10_NPZ = "cifar10_jpeg.npz"
_CIFAR10_SHARED = os.path.join("..", "shared", "data", _CIFAR10_NPZ)  # relative to the cwd

#: The arrays of a decoded CIFAR-10: ``(train_x, train_y, test_x, test_y, classes)``.
Cifar10Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]


def _decode_jpegs(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode concatenated JPEGs (image i = data[off[i]:off[i+1]]) to uint8 [N, H, W, 3].

    Uses torchvision's libjpeg decoder (about 4x faster than Pillow here, same pixels) and
    falls back to Pillow if it refuses the data or is not there.
    """
    n = len(offsets) - 1
    if n <= 0:
        return np.zeros((0, 32, 32, 3), dtype=np.uint8)
    if decode_jpeg is not None:
        try:
            flat = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs
                warnings.simplefilter("ignore", DeprecationWarning)
                images = decode_jpeg(
                    [flat[offsets[i] : offsets[i + 1]] for i in range(n)], mode=ImageReadMode.RGB
                )
            return torch.stack(images).permute(0, 2, 3, 1).contiguous().numpy()
        except (RuntimeError, ValueError, AttributeError):
            pass
    out = None
    for i in range(n):
        with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
        if out is None:
            out = np.empty((n, *arr.shape), dtype=np.uint8)
        out[i] = arr
    return out


def _read_cache(cached: Path) -> Optional[Cifar10Arrays]:
    """The decoded arrays from ``cached``, or ``None`` (with a warning if it is unreadable)."""
    if not cached.is_file():
        return None
    try:
        with np.load(cached) as z:
            return (z["train_x"], z["train_y"], z["test_x"], z["test_y"], [str(c) for c in z["classes"]])
    except (OSError, ValueError, KeyError) as e:
        warnings.warn(f"ignoring unreadable cache {cached}: {e}", stacklevel=1)
        return None


def _write_cache(arrays: Cifar10Arrays, cached: Path) -> None:
    """Write the decoded arrays atomically; a folder that cannot be written only warns."""
    train_x, train_y, test_x, test_y, classes = arrays
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    train_x=train_x,
                    train_y=train_y,
                    test_x=test_x,
                    test_y=test_y,
                    classes=np.array(classes),
                )

        atomic_save(write, cached, "CIFAR-10 cache")
    except OSError as e:
        warnings.warn(f"could not cache decoded CIFAR-10 in {cached.parent}: {e}", stacklevel=1)


def load_cifar10_npz(
    path: Union[str, os.PathLike], cache: Optional[Union[str, os.PathLike]] = None
) -> Cifar10Arrays:
    """Load the packed-JPEG CIFAR-10 file: ``(train_x, train_y, test_x, test_y, classes)``.

    ``*_x`` are uint8 [N, 32, 32, 3], ``*_y`` int64. Decoding 60k JPEGs takes ~10 s, so the
    decoded arrays are cached in ``cache`` (default :func:`cache_dir`) under a name keyed on
    the source file's name, size and modification time; later calls load in well under a
    second. A cache folder that cannot be written is reported with a warning and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 npz not found: {path}")
    st = path.stat()
    folder = Path(cache) if cache is not None else cache_dir()
    cached = folder / f"{path.stem}_{st.st_size}_{st.st_mtime_ns}_decoded.npz"
    hit = _read_cache(cached)
    if hit is not None:
        return hit
    with np.load(path) as z:
        classes = [str(c) for c in z["classes"]]
        train_x = _decode_jpegs(z["train_bytes"], z["train_offsets"])
        test_x = _decode_jpegs(z["test_bytes"], z["test_offsets"])
        train_y = z["train_labels"].astype(np.int64)
        test_y = z["test_labels"].astype(np.int64)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"{path}: image and label counts differ")
    _write_cache((train_x, train_y, test_x, test_y, classes), cached)
    return train_x, train_y, test_x, test_y, classes


def _find_cifar(name: str, data_path: Optional[str]) -> tuple[Optional[tuple[str, Path]], list[str]]:
    """Locate CIFAR data: ``("npz", file)`` or ``("torchvision", root)``, plus places tried."""
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    tried = []
    if data_path:
        p = Path(data_path).expanduser()
        if name == "cifar10" and p.is_file():
            return ("npz", p), tried
        if name == "cifar10":
            tried.append(str(p / _CIFAR10_NPZ))
            if (p / _CIFAR10_NPZ).is_file():
                return ("npz", p / _CIFAR10_NPZ), tried
        tried.append(str(p / folder))
        if (p / folder).is_dir():
            return ("torchvision", p), tried
    if name == "cifar10":
        shared = Path(_CIFAR10_SHARED)
        tried.append(str(shared.resolve()))
        if shared.is_file():
            return ("npz", shared), tried
    return None, tried


def _load_pickles(
    name: str, where: Optional[tuple[str, Path]], tried: list[str], data_path: Optional[str], download: bool
) -> tuple[np.ndarray, list[int], np.ndarray, list[int], list[str]]:
    """torchvision's pickle folder, found at ``where`` or (``download``) fetched."""
    if where is None and not download:
        how = (
            f"put {_CIFAR10_NPZ} in {os.path.dirname(_CIFAR10_SHARED)} or in DIR, "
            if name == "cifar10"
            else ""
        )
        raise FileNotFoundError(
            f"{name} not found; looked for: {', '.join(tried)}. To fix: {how}"
            f"pass --data-path DIR where DIR holds torchvision's "
            f"{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'} folder, "
            f"or pass --download to fetch it with torchvision."
        )
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    root = where[1] if where is not None else (Path(data_path).expanduser() if data_path else cache_dir())
    tr = cls(str(root), train=True, download=where is None)
    te = cls(str(root), train=False, download=False)
    return tr.data, tr.targets, te.data, te.targets, list(tr.classes)


def load_cifar(name: str, data_path: Optional[str], download: bool) -> Source:
    """CIFAR-10/100 from the packed JPEG npz (CIFAR-10 only) or torchvision's pickle folder."""
    where, tried = _find_cifar(name, data_path)
    if where is not None and where[0] == "npz":
        xtr, ytr, xte, yte, classes = load_cifar10_npz(where[1])
    else:
        xtr, ytr, xte, yte, classes = _load_pickles(name, where, tried, data_path, download)
    mean, std = (_CIFAR10_MEAN, _CIFAR10_STD) if name == "cifar10" else (_CIFAR100_MEAN, _CIFAR100_STD)
    files = (str(where[1].resolve()),) if where is not None and where[0] == "npz" else ()
    return Source(
        nhwc_to_tensor(xtr),
        np.asarray(ytr, dtype=np.int64),
        nhwc_to_tensor(xte),
        np.asarray(yte, dtype=np.int64),
        class_names=classes,
        in_chans=3,
        native_size=32,
        mean=mean,
        std=std,
        default_augment="small",
        files=files,
    )


def load_cifar10(data_path: Optional[str], download: bool) -> Source:
    """CIFAR-10 (the registry's loader): :func:`load_cifar` ``("cifar10", ...)``."""
    return load_cifar("cifar10", data_path, download)


def load_cifar100(data_path: Optional[str], download: bool) -> Source:
    """CIFAR-100 (the registry's loader): :func:`load_cifar` ``("cifar100", ...)``."""
    return load_cifar("cifar100", data_path, download)
