"""``convit.data.image_modes`` through :func:`convit.data.read_image`: every Pillow mode as it
looks (alpha on white, palettes, CMYK / YCbCr / HSV / LAB, 12- and 16-bit grey, floats, the
first frame of animations).  The reader's orientation, errors and memory: test_reader.py.

Every image is written by the test itself; expected pixels are computed with numpy from the
data the test wrote, never with the reader.
"""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image

from convit.data import read_image
from convit.data.image_modes import convert_image, to_working_mode

RNG = np.random.default_rng(0)


def _rgb(h: int = 12, w: int = 20) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _on_white(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Reference alpha compositing on white, in float64."""
    a = a.astype(np.float64)[..., None] / 255 if c.ndim == 3 else a.astype(np.float64) / 255
    return c * a + 255 * (1 - a)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the weights Pillow's ``convert("L")`` uses."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _close(got: Image.Image, want: np.ndarray, tol: float) -> None:
    diff = np.abs(np.asarray(got).astype(np.float64) - want)
    assert diff.max() <= tol, f"max diff {diff.max()} (tolerance {tol})"


# ---- every mode ---------------------------------------------------------------------------


def test_bilevel_grey_and_alpha_modes(tmp_path):
    bits = RNG.integers(0, 2, (9, 14)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    _close(read_image(tmp_path / "b.png", "L"), bits * 255.0, 0)
    grey, alpha = RNG.integers(0, 256, (9, 14), dtype=np.uint8), RNG.integers(0, 256, (9, 14), dtype=np.uint8)
    Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]).save(tmp_path / "la.png")
    _close(read_image(tmp_path / "la.png", "L"), _on_white(grey.astype(float), alpha), 1)
    want = _on_white(grey.astype(float), alpha)
    _close(read_image(tmp_path / "la.png", "RGB"), np.repeat(want[..., None], 3, -1), 1)
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    _close(convert_image(la.convert("La"), "L"), want, 2)  # premultiplied: rounding twice


def test_rgba_rgba_premultiplied_and_rgbx(tmp_path):
    rgb, alpha = _rgb(), RNG.integers(0, 256, (12, 20), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    want = _on_white(rgb.astype(float), alpha)
    _close(read_image(tmp_path / "a.png"), want, 1)
    _close(read_image(tmp_path / "a.png", "L"), _luma(want), 1.5)
    rgba = Image.fromarray(np.dstack([rgb, alpha]))
    _close(convert_image(rgba.convert("RGBa"), "RGB"), want, 2)
    _close(convert_image(Image.fromarray(rgb).convert("RGBX"), "RGB"), rgb.astype(float), 0)
    kept = read_image(tmp_path / "a.png", mode=None)
    assert kept.mode == "RGBA" and np.array_equal(np.asarray(kept)[..., 3], alpha)


def test_palette_with_and_without_transparency(tmp_path):
    pal = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = RNG.integers(0, 8, (10, 16), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.ravel().tolist())
    im.save(tmp_path / "p.png")
    _close(read_image(tmp_path / "p.png"), pal[idx].astype(float), 0)
    im.save(tmp_path / "pt.png", transparency=3)
    want = np.where((idx == 3)[..., None], 255.0, pal[idx])
    _close(read_image(tmp_path / "pt.png"), want, 0)
    im.save(tmp_path / "pt.gif", transparency=3)
    _close(read_image(tmp_path / "pt.gif"), want, 0)
    alpha = RNG.integers(0, 256, (10, 16), dtype=np.uint8)
    pa = im.copy()
    pa.putalpha(Image.fromarray(alpha))
    assert pa.mode == "PA"
    _close(convert_image(pa, "RGB"), _on_white(pal[idx].astype(float), alpha), 1)


def test_colour_key_transparency_of_rgb_and_grey_png(tmp_path):
    rgb = _rgb()
    rgb[0, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "k.png", transparency=(1, 2, 3))
    want = np.where((rgb == (1, 2, 3)).all(-1)[..., None], 255.0, rgb)
    _close(read_image(tmp_path / "k.png"), want, 0)


def test_cmyk_ycbcr_hsv(tmp_path):
    cmyk = RNG.integers(0, 256, (8, 10, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    c = cmyk.astype(float)
    _close(read_image(tmp_path / "c.tif"), (255 - c[..., :3]) * (255 - c[..., 3:]) / 255, 1)
    ycc = RNG.integers(16, 240, (8, 10, 3), dtype=np.uint8).astype(float)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    want = np.clip(np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1), 0, 255)
    _close(convert_image(Image.fromarray(ycc.astype(np.uint8), "YCbCr"), "RGB"), want, 2)
    hsv = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    want = np.array([[colorsys.hsv_to_rgb(*(px / 255.0)) for px in row] for row in hsv]) * 255
    _close(convert_image(Image.fromarray(hsv, "HSV"), "RGB"), want, 1)


def test_lab_tiff(tmp_path):
    """L*a*b* (TIFF CIELab): neutrals map to the sRGB greys, a saturated red stays red.
    Pillow's arrays hold L* scaled to 0..255 and a*, b* as signed bytes (TIFF's CIELab); L* 50
    (128 here) is sRGB 119 (the sRGB transfer curve of Y = 0.1842); sRGB red is L*a*b*
    (54.3, 80.8, 69.9) with a D50 white (ICC's)."""
    lab = np.array([[[255, 0, 0], [0, 0, 0], [128, 0, 0], [138, 81, 70]]], np.uint8)
    Image.fromarray(lab, "LAB").save(tmp_path / "lab.tif")
    for mode in ("RGB", "L"):
        got = np.asarray(read_image(tmp_path / "lab.tif", mode)).astype(int)
        got = got if got.ndim == 3 else np.repeat(got[..., None], 3, -1)
        assert np.abs(got[0, :3] - np.array([[255] * 3, [0] * 3, [119] * 3])).max() <= 3, got
    r, g, b = np.asarray(read_image(tmp_path / "lab.tif"))[0, 3].astype(int)
    assert r > 220 and g < 50 and b < 50, (r, g, b)


@pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".tif", "I;16"), (".pgm", "I")])
def test_16bit_files(tmp_path, suffix, mode):
    v = RNG.integers(0, 65536, (9, 11)).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / f"g{suffix}")
    with Image.open(tmp_path / f"g{suffix}") as im:
        assert im.mode == mode
    _close(read_image(tmp_path / f"g{suffix}", "L"), np.rint(v / 257.0), 0)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_16bit_modes_in_memory(mode):
    v = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    im = Image.frombytes(mode, (6, 5), v.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    _close(convert_image(im, "L"), np.rint(v / 257.0), 0)


def test_12bit_and_signed_depths():
    """A depth the file declares (TIFF BitsPerSample 12; signed samples) scales by it."""
    v = RNG.integers(0, 4096, (5, 6)).astype(np.uint16)
    im = Image.fromarray(v)
    _close(to_working_mode(im, bits=12), np.rint(v.astype(float) * 255 / 4095), 0)
    _close(to_working_mode(im, bits=16), np.rint(v / 257), 0)
    s = RNG.integers(-100, 32768, (5, 6)).astype(np.int32)
    _close(
        to_working_mode(Image.fromarray(s, "I"), bits=16, signed=True),
        np.rint(np.clip(s, 0, None) * 255 / 32767),
        0,
    )


def test_32bit_int_beyond_16_bits_is_stretched():
    s = RNG.integers(-70000, 300000, (5, 6)).astype(np.int32)
    lo, hi = s.min(), s.max()
    _close(convert_image(Image.fromarray(s, "I"), "L"), np.rint((s - lo) * 255 / (hi - lo)), 0)


def test_float_images_by_their_range(tmp_path):
    unit = RNG.random((6, 7)).astype(np.float32)
    Image.fromarray(unit, "F").save(tmp_path / "f.tif")
    _close(read_image(tmp_path / "f.tif", "L"), np.rint(unit * 255.0), 0)
    bytes_ = (unit * 200).astype(np.float32)
    bytes_[0, 0] = 250.0
    _close(convert_image(Image.fromarray(bytes_, "F"), "L"), np.rint(bytes_), 0)
    wide = (unit * 6 - 3).astype(np.float32)
    wide[0, 0], wide[0, 1] = np.nan, np.inf
    finite = wide[np.isfinite(wide)]
    want = np.rint((wide - finite.min()) * 255 / (finite.max() - finite.min()))
    want[0, 0], want[0, 1] = 0, 255
    _close(convert_image(Image.fromarray(wide, "F"), "L"), np.nan_to_num(want), 0)


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("RGB", (8, 6), c) for c in ((200, 10, 10), (10, 200, 10), (10, 10, 200))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.tif", save_all=True, append_images=frames[1:])
    for name in ("a.gif", "a.png", "a.tif"):
        r, g, b = np.asarray(read_image(tmp_path / name)).reshape(-1, 3).mean(0)
        assert r > 150 and g < 60 and b < 60, name
