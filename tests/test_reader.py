"""``convit.data.reader``: EXIF orientation, one error type for every failure, bounded memory
(every Pillow mode as it looks: test_image_modes.py; the datasets that skip unreadable files:
test_skipping.py).

Every image is written by the test itself; expected pixels are computed with numpy from the
data the test wrote, never with the reader.
"""

from __future__ import annotations

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
from convit.data.reader import ImageNotFoundError, ImageReadWarning

RNG = np.random.default_rng(0)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rgb(h: int = 12, w: int = 20) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


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
