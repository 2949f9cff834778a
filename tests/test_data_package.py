"""The ``convit.data`` package itself: the library functions it now relies on give exactly what
the hand-written code they replaced gave, the readers we kept agree with the library's where
both apply, and the package keeps its layering rule (its sizes are held by test_limits.py,
with the rest of the code).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image
from torchvision.transforms import v2

import convit.data
from convit.data import build_data
from convit.data.fashion_mnist import read_idx
from convit.data.imagefolder import IMG_EXTENSIONS
from convit.data.transforms import _ToFloatImage

DATA_DIR = Path(convit.data.__file__).parent


# ---- _ToFloatImage: torchvision's to_image for the layout ------------------------------------


def _old_to_float_image(img, in_chans: int) -> torch.Tensor:
    """``_ToFloatImage.__call__`` as it was before torchvision's ``to_image`` did the layout
    (copied verbatim from convit/data.py)."""
    if isinstance(img, Image.Image):
        img = np.array(img.convert("L" if in_chans == 1 else "RGB"))
    if isinstance(img, np.ndarray):
        arr = img[:, :, None] if img.ndim == 2 else img
        if arr.ndim != 3:
            raise ValueError(f"expected an image array HxW or HxWxC, got shape {img.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    elif isinstance(img, torch.Tensor):
        x = img.unsqueeze(0) if img.ndim == 2 else img
    else:
        raise TypeError(f"cannot make an image tensor from {type(img).__name__}")
    x = x.float().div(255) if not x.is_floating_point() else x.float()
    if x.shape[0] == 4:  # drop alpha
        x = x[:3]
    if x.shape[0] == 3 and in_chans == 1:
        x = v2.functional.rgb_to_grayscale(x)
    elif x.shape[0] == 1 and in_chans == 3:
        x = x.expand(3, -1, -1)
    return x


def _inputs() -> dict:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, size=(13, 17), dtype=np.uint16)
    out = {
        f"pil-{m}": Image.fromarray(rgb).convert(m)
        for m in ("RGB", "L", "RGBA", "LA", "P", "CMYK", "1", "I", "F")
    }
    out["pil-I;16"] = Image.fromarray(grey16)
    out.update(
        {
            "u8-hw": rgb[:, :, 0],
            "u8-hwc": rgb,
            "u8-hw1": rgb[:, :, :1],
            "u8-hwc4": np.dstack([rgb, rgb[:, :, :1]]),
            "u8-flipped": rgb[:, ::-1, ::-1],
            "u16-hw": grey16,
            "u16-hwc": np.dstack([grey16] * 3),
            "i32-hw": grey16.astype(np.int32),
            "f32-hw": rgb[:, :, 0].astype(np.float32) / 255,
            "f64-hwc": rgb / 255.0,
            "bool-hw": rgb[:, :, 0] > 99,
            "t-u8-chw": torch.from_numpy(rgb).permute(2, 0, 1),
            "t-u8-hw": torch.from_numpy(rgb[:, :, 0].copy()),
            "t-f32-chw": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
            "t-f64-1hw": torch.from_numpy(rgb[:, :, :1]).permute(2, 0, 1).double() / 255,
            "t-u8-4hw": torch.from_numpy(np.dstack([rgb, rgb[:, :, :1]])).permute(2, 0, 1),
        }
    )
    return out


@pytest.mark.parametrize("in_chans", [1, 3])
def test_to_image_layout_gives_the_old_tensors(in_chans):
    """uint8, 16-bit, int32, float, bool; HW / HWC / CHW; PIL of every mode; flipped strides:
    bit for bit the old tensor, dtype and shape."""
    t = _ToFloatImage(in_chans)
    for name, img in _inputs().items():
        new, old = t(img), _old_to_float_image(img, in_chans)
        assert type(new) is torch.Tensor, name  # a plain tensor, not a tv_tensors.Image
        assert new.dtype == old.dtype == torch.float32 and new.shape == old.shape, name
        bits = [x.contiguous().numpy().view(np.uint8) for x in (new, old)]  # -0.0, NaN included
        assert np.array_equal(*bits), name


def test_integer_pixels_are_divided_by_255_exactly():
    """Why the scaling is not ``v2.ToDtype(float32, scale=True)``: that multiplies by 1/255
    (1 ulp off for about half the uint8 values) and divides 16-bit input by 65535."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = torch.arange(256, dtype=torch.float32).div(255).view(1, 16, 16)
    assert torch.equal(_ToFloatImage(1)(ramp), want)
    scaled = v2.functional.to_dtype(torch.from_numpy(ramp)[None], torch.float32, scale=True)
    assert not torch.equal(scaled, want), "torchvision now scales exactly: ToDtype could be used"


def test_to_float_image_rejects_what_is_not_an_image():
    with pytest.raises(ValueError, match="HxW"):
        _ToFloatImage(3)(np.zeros(5, dtype=np.uint8))
    with pytest.raises(TypeError):
        _ToFloatImage(3)([1, 2, 3])


# ---- imagefolder: torchvision's extension list, timm's ImageNet statistics -------------------


def test_imagefolder_constants_are_the_old_values(tmp_path):
    assert IMG_EXTENSIONS == (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"), (
        "a new extension changes which files a folder scan finds"
    )
    write_image_folder(tmp_path, classes=("a",), per_class=1, size=4)
    b = build_data("imagefolder", data_path=str(tmp_path), img_size=8)
    assert b.mean == (0.485, 0.456, 0.406) and b.std == (0.229, 0.224, 0.225)


# ---- the idx reader we kept agrees with torchvision's --------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_read_idx_matches_torchvision_and_reads_gz(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    _write_idx(tmp_path / "images-idx3-ubyte", images)
    _write_idx(tmp_path / "labels-idx1-ubyte", labels)
    assert np.array_equal(
        read_idx(tmp_path / "images-idx3-ubyte"), read_image_file(str(tmp_path / "images-idx3-ubyte")).numpy()
    )
    assert np.array_equal(
        read_idx(tmp_path / "labels-idx1-ubyte"), read_label_file(str(tmp_path / "labels-idx1-ubyte")).numpy()
    )
    gz = tmp_path / "images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress((tmp_path / "images-idx3-ubyte").read_bytes()))
    assert np.array_equal(read_idx(gz), images)  # what Debian ships; torchvision's reader can't
