"""``convit.data.reader``: every Pillow mode as it looks, EXIF orientation, one error type for
every failure, bounded memory (the datasets that skip unreadable files: test_skipping.py).

Every image is written by the test itself; expected pixels are computed with numpy from the
data the test wrote, never with the reader.
"""

from __future__ import annotations

import colorsys
import io
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.transforms import v2

from convit.data import ImageReadError, eval_input_size, eval_transform, read_image
from convit.data.reader import ImageNotFoundError, ImageReadWarning, convert_image, to_working_mode

RNG = np.random.default_rng(0)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


# ---- EXIF orientation -----------------------------------------------------------------------

#: What each EXIF orientation stores, given the upright picture U (EXIF 2.3, tag 0x0112).
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1],
    5: lambda u: u.transpose(1, 0, 2),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: np.rot90(u, 2).transpose(1, 0, 2),
    8: lambda u: np.rot90(u, -1),
}


def _with_orientation(path: Path, arr: np.ndarray, orientation: int, **save) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(arr)).save(path, exif=exif, **save)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png_exact(tmp_path, orientation):
    upright = _rgb(12, 20)
    _with_orientation(tmp_path / "o.png", STORED[orientation](upright), orientation)
    got = read_image(tmp_path / "o.png")
    assert got.size == (20, 12)
    np.testing.assert_array_equal(np.asarray(got), upright)
    t = eval_transform(16, MEAN, STD, 3)
    ref = np.ascontiguousarray(upright)
    assert torch.equal(t(got), t(Image.fromarray(ref)))


def test_exif_orientation_jpeg_and_reduced(tmp_path):
    """JPEG (lossy: compared loosely) at full size and read reduced (draft + reduce)."""
    y, x = np.mgrid[0:600, 0:1000]
    upright = np.stack([x * 255 // 999, y * 255 // 599, (x + y) % 256], -1).astype(np.uint8)
    for o in (3, 6, 8):
        p = tmp_path / f"o{o}.jpg"
        _with_orientation(p, STORED[o](upright), o, quality=95)
        full = np.asarray(read_image(p)).astype(float)
        assert full.shape == upright.shape and np.abs(full - upright).mean() < 3
        small = read_image(p, target_size=50)  # 4x reduced: 250x150
        assert small.size == (250, 150)
        ref = np.asarray(Image.fromarray(upright).reduce(4)).astype(float)
        assert np.abs(np.asarray(small).astype(float) - ref).mean() < 4


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


# ---- errors -------------------------------------------------------------------------------


def test_errors_name_the_file_format_and_reason(tmp_path):
    with pytest.raises(ImageNotFoundError, match="nope.png") as e:
        read_image(tmp_path / "nope.png")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text\.jpg: not an image file Pillow can identify"):
        read_image(tmp_path / "text.jpg")
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:300])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(ImageReadError, match=r"cut\.png \(PNG\): .*truncated") as e:
        read_image(tmp_path / "cut.png")
    assert e.value.format == "PNG" and e.value.path.endswith("cut.png")


def test_pixel_limit_checked_on_the_header_and_raisable(tmp_path):
    Image.new("L", (300, 200)).save(tmp_path / "p.png")
    with pytest.raises(ImageReadError, match=r"300x200 = 60,000 pixels is over the limit of 1,000"):
        read_image(tmp_path / "p.png", max_pixels=1000)
    assert read_image(tmp_path / "p.png", max_pixels=60000).size == (300, 200)
    limit = Image.MAX_IMAGE_PIXELS
    try:  # a caller may raise the limit far above Pillow's own, or remove it
        Image.MAX_IMAGE_PIXELS = 1000
        assert read_image(tmp_path / "p.png", max_pixels=None).size == (300, 200)
        assert read_image(tmp_path / "p.png", max_pixels=10**6).size == (300, 200)
        assert Image.MAX_IMAGE_PIXELS == 1000
        with pytest.raises(ImageReadError, match=r"p\.png: .*limit.*max-image-pixels"):
            read_image(tmp_path / "p.png")  # the default follows Pillow's (its own words past 2x)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


class _Exploding(ImageFile.ImageFile):
    """A fake format whose plugin raises the exception named in the file."""

    format, format_description = "BOOM", "raises on demand"

    def _open(self) -> None:
        self._mode, self._size = "RGB", (4, 4)
        name = self.fp.read().split(b":")[1].decode()
        self.tile = []
        if name.startswith("load-"):
            self.load = lambda: _raise(name[5:])  # fails when decoding, after open
        else:
            _raise(name)


def _raise(name: str):
    import struct

    errors = {
        "NotImplementedError": NotImplementedError("no such variant"),
        "KeyError": KeyError("x"),
        "struct.error": struct.error("unpack"),
        "ZeroDivisionError": ZeroDivisionError("0"),
        "MemoryError": MemoryError(),
        "EOFError": EOFError(),
        "RuntimeError": RuntimeError("r"),
        "IndexError": IndexError("i"),
        "TypeError": TypeError("t"),
        "OSError": OSError("o"),
    }
    raise errors[name]


#: Exceptions that ``Image.open`` reads as "not this format" (it tries the next plugin).
NOT_THIS_FORMAT = ("KeyError", "struct.error", "EOFError", "IndexError", "TypeError")
RAISED = (
    "NotImplementedError",
    "ZeroDivisionError",
    "MemoryError",
    "RuntimeError",
    "OSError",
    *NOT_THIS_FORMAT,
)


@pytest.mark.parametrize("name", [*RAISED, *(f"load-{n}" for n in RAISED)])
def test_every_exception_becomes_one_error_naming_file_and_format(tmp_path, monkeypatch, name):
    """Whatever a format plugin raises, when opening or when decoding, comes out as one
    ImageReadError naming the file (and the format, once Pillow has recognised it)."""
    monkeypatch.setitem(Image.OPEN, "BOOM", (_Exploding, lambda prefix: prefix[:5] == b"BOOM:"))
    monkeypatch.setattr(Image, "ID", ["BOOM", *Image.ID])
    (tmp_path / "x.boom").write_bytes(f"BOOM:{name}".encode())
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "x.boom")
    msg = str(e.value)
    assert "x.boom" in msg and e.value.reason, msg
    if name in NOT_THIS_FORMAT:
        assert "not an image file Pillow can identify" in msg
    else:
        assert "(BOOM)" in msg, msg
    if name.endswith("NotImplementedError"):
        assert "Pillow cannot decode this BOOM variant" in msg


def test_pillow_warnings_are_reissued_naming_the_file(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(_rgb()).save(jpeg, "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00")
    (tmp_path / "bad_exif.jpg").write_bytes(jpeg.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(tmp_path / "bad_exif.jpg").size == (20, 12)
    mine = [w for w in caught if issubclass(w.category, ImageReadWarning)]
    assert mine and all("bad_exif.jpg" in str(w.message) for w in mine)
    assert all(issubclass(w.category, ImageReadWarning) for w in caught)


# ---- memory and geometry ------------------------------------------------------------------


def test_images_within_the_aspect_cap_are_untouched():
    """The eval transform equals DeiT's resize + centre crop exactly when the long side is
    within MAX_ASPECT times the short side; beyond, it is close (only resampling offsets)."""
    plain = v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=False),
            v2.Lambda(lambda x: x / 255),
            v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(224),
            v2.Normalize(list(MEAN), list(STD)),
        ]
    )
    t = eval_transform(224, MEAN, STD, 3)
    for w, h in ((300, 200), (200, 300), (800, 200), (224, 224), (256, 64)):
        img = Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(t(img), plain(img)), (w, h)
    y, x = np.mgrid[0:60, 0:600]
    smooth = Image.fromarray(np.stack([x % 256, y * 4, (x + y) % 256], -1).astype(np.uint8))
    assert (t(smooth) - plain(smooth)).abs().mean() < 0.05


def test_reduced_reading_equals_full_reading_for_ordinary_sizes(tmp_path):
    for w, h in ((1000, 700), (500, 375), (1023, 1023)):
        Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "a.png")
        a = read_image(tmp_path / "a.png", target_size=eval_input_size(224))
        assert a.size == (w, h) and np.array_equal(np.asarray(a), np.asarray(read_image(tmp_path / "a.png")))
    Image.new("RGB", (3000, 2100), (10, 200, 30)).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png", target_size=256).size == (750, 525)  # 2100 // 512 = 4


def test_eval_splits_read_large_files_as_predict_does(tmp_path):
    from conftest import write_image_folder

    from convit.data import build_data

    b = build_data("imagefolder", str(write_image_folder(tmp_path)), img_size=224, val_fraction=0.34)
    # training crops at random scales: it reads files whole
    assert (b.train.target_size, b.val.target_size, b.test.target_size) == (None, 256, 256)
    assert eval_input_size(224) == 256  # what convit predict passes


PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from convit.data import eval_input_size, eval_transform, read_image
    t = eval_transform(224, (0.5,) * 3, (0.25,) * 3, 3)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base, out = peak(), {}
    for path in sys.argv[1:]:
        x = t(read_image(path, max_pixels=200_000_000, target_size=eval_input_size(224)))
        assert tuple(x.shape) == (3, 224, 224)
        out[path] = (peak() - base) * 1024
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_memory_of_extreme_images_stays_bounded(tmp_path):
    """A valid 40000x2 PNG (resizing its short side to 256 would make a 5,120,000 x 256 image)
    and a 13000x13000 JPEG: each adds under 1 GB to a fresh process's peak (ru_maxrss after
    the imports subtracted: importing torch alone is ~0.5 GB)."""
    Image.new("RGB", (40000, 2), (90, 120, 200)).save(tmp_path / "wide.png", optimize=True)
    assert (tmp_path / "wide.png").stat().st_size < 1000
    big = Image.linear_gradient("L").resize((13000, 13000), Image.Resampling.NEAREST)
    big.save(tmp_path / "big.jpg", quality=70)
    del big
    res = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "wide.png"), str(tmp_path / "big.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    added = json.loads(res.stdout)
    assert max(added.values()) < 1 << 30, added
