"""Real image files through ``load_image``: every file of conftest's ``image_files`` (many
modes, sizes and formats, see real_image_files.py) opens as what it was written as and converts
to RGB and L without going flat or saturated; 16-bit files are scaled to 8 bits, a palette's
transparency is kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from real_image_files import nonconstant_source, write_png16

from convit.data import load_image


def test_the_files_are_what_they_claim(image_files):
    root, files = image_files
    assert len(files) >= 200
    seen = set()
    for f in files:
        with Image.open(f.path) as im:
            assert (im.mode, im.size) == (f.opened_mode, f.size), f.path
            seen.add((im.format, im.mode))
            if f.kind == "png-P-transparent":
                assert "transparency" in im.info
    for need in [
        ("PNG", "I;16"),
        ("PNG", "P"),
        ("PNG", "LA"),
        ("PNG", "1"),
        ("JPEG", "CMYK"),
        ("WEBP", "RGBA"),
        ("TIFF", "I;16"),
        ("BMP", "P"),
        ("PPM", "I"),
        ("PNG", "RGBA"),
    ]:
        assert need in seen, need


# --------------------------------------------------------------------------------------------
# load_image and the dataset classes
# --------------------------------------------------------------------------------------------


def test_load_image_every_file_converts(image_files):
    _, files = image_files
    for f in files:
        im = load_image(f.path)
        assert im.size == f.size, f.path
        for mode in ("RGB", "L"):
            a = np.asarray(im.convert(mode))
            assert a.dtype == np.uint8 and a.shape[:2] == (f.size[1], f.size[0])
            if nonconstant_source(f):
                assert a.std() > 2, f"{f.path} came out flat in {mode}: {a.min()}..{a.max()}"
                # nothing of this content is near-white everywhere (16-bit clipping would be)
                assert a.mean() < 230, f"{f.path} saturated in {mode}"
            if f.constant is not None and mode == "RGB":
                assert (a == np.array(f.constant, dtype=np.uint8)).all()


@pytest.mark.parametrize("ext", [".png", ".tif", ".pgm"])
def test_16bit_grey_is_scaled_to_8_bits(tmp_path, ext):
    ramp8 = np.arange(256, dtype=np.uint16).reshape(16, 16)
    values = ramp8 * 257  # 0, 257, ..., 65535: the 8-bit ramp stored in 16 bits
    # in-between values too: v must map to round(v / 257)
    rng = np.random.default_rng(1)
    odd = rng.integers(0, 65536, size=(16, 16)).astype(np.uint16)
    for arr, want in ((values, ramp8), (odd, np.rint(odd / 257.0))):
        p = tmp_path / f"g{ext}"
        Image.fromarray(arr).save(p)
        im = load_image(p)
        for mode in ("L", "RGB"):
            got = np.asarray(im.convert(mode)).astype(int)
            got = got if got.ndim == 2 else got[:, :, 1]
            assert np.abs(got - want.astype(int)).max() <= 1, (ext, mode)


def test_16bit_rgb_and_la_png_keep_their_values(tmp_path):
    a = (np.arange(256, dtype=np.uint16).reshape(16, 16, 1) * np.array([257, 256, 255])).astype(np.uint16)
    write_png16(tmp_path / "rgb48.png", a)
    got = np.asarray(load_image(tmp_path / "rgb48.png").convert("RGB")).astype(int)
    assert np.abs(got - (a.astype(int) >> 8)).max() <= 1
    la = np.dstack(
        [np.arange(256, dtype=np.uint16).reshape(16, 16) * 257, np.full((16, 16), 65535, dtype=np.uint16)]
    )
    write_png16(tmp_path / "la16.png", la)
    got = np.asarray(load_image(tmp_path / "la16.png").convert("L")).astype(int)
    assert np.abs(got - np.arange(256).reshape(16, 16)).max() <= 1


def test_palette_with_transparency_loads_as_rgba(image_files):
    _, files = image_files
    f = next(f for f in files if f.kind == "png-P-transparent")
    im = load_image(f.path)
    assert im.mode == "RGBA" and np.asarray(im)[:, :, 3].min() == 0  # index 0 is transparent
