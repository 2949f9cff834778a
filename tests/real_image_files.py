"""Real image files written by Pillow into a folder (no committed data): a few hundred images of
many modes (RGB, L, P with and without transparency, RGBA, LA, CMYK, 16-bit grey, 16-bit RGB,
1-bit), sizes (1x1, 5x5, 600x400, 600x9, 6x300, ...) and formats (PNG, JPEG, BMP, WEBP, TIFF,
PPM/PGM), as an imagefolder ``root/{train,val}/{a,b,c}/``.

conftest's session fixture ``image_files`` writes them once; the tests of loading, of every
preset's transforms and of the CLI on real files read them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

CLASSES = ("a", "b", "c")
# (width, height): tiny, very wide / very tall, large-ish, and ordinary photo-like sizes.
SIZES: tuple[tuple[int, int], ...] = (
    (5, 5),
    (7, 3),
    (600, 9),
    (6, 300),
    (300, 30),
    (64, 48),
    (33, 97),
    (45, 45),
    (120, 80),
    (250, 250),
)
LARGE_SIZES: tuple[tuple[int, int], ...] = ((600, 400), (400, 600))


@dataclass
class ImageFile:
    """One written file and what Pillow must open it as."""

    path: Path
    kind: str  # what it was written as, e.g. "png-P-transparent"
    opened_mode: str  # the mode Image.open must report (checked by a test)
    size: tuple[int, int]
    constant: Optional[tuple[int, int, int]] = None  # RGB colour of a one-colour image


def content(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [h, w, 3]: horizontal and vertical gradients plus noise, so that every crop of
    two or more pixels is non-constant in every channel."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 127 + 60 * np.sin(x / 3.0 + y / 5.0)], axis=-1
    )
    noise = rng.normal(0, 25, size=(h, w, 3))
    return np.clip(base * 0.8 + noise + 20, 0, 255).astype(np.uint8)


def nonconstant_source(f: ImageFile) -> bool:
    """Whether every crop of two or more pixels of ``f`` varies (see :func:`content`)."""
    return f.constant is None and min(f.size) >= 2


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def write_png16(path: Path, samples: np.ndarray) -> None:
    """A 16-bit-per-sample PNG (grey [h, w], grey+alpha [h, w, 2] or RGB [h, w, 3]) written
    byte by byte: Pillow can only write 16-bit PNGs of one grey channel."""
    a = samples if samples.ndim == 3 else samples[:, :, None]
    h, w, c = a.shape
    colour_type = {1: 0, 2: 4, 3: 2}[c]
    rows = a.astype(">u2").reshape(h, w * c)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


# -- one writer per variant: function(rgb uint8 [h, w, 3], path) ------------------------------

Writer = Callable[[np.ndarray, Path], None]


def _rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a)


def _grey(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a).convert("L")


def _pal(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a).quantize(colors=32)


def _alpha(a: np.ndarray) -> np.ndarray:
    return np.linspace(0, 255, a.shape[0] * a.shape[1]).reshape(a.shape[:2]).astype(np.uint8)


def _rgba(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([a, _alpha(a)]))


def _la(a: np.ndarray) -> Image.Image:
    return Image.merge("LA", (_grey(a), Image.fromarray(_alpha(a))))


def _grey16(a: np.ndarray) -> np.ndarray:
    return np.asarray(_grey(a)).astype(np.uint16) * 257


def _save(make: Callable[[np.ndarray], Image.Image], fmt: str, **kw) -> Writer:
    return lambda a, p: make(a).save(p, fmt, **kw)


def _pal_transparent(a: np.ndarray, p: Path) -> None:
    _pal(a).save(p, "PNG", transparency=0)


def _png_grey16(a: np.ndarray, p: Path) -> None:
    v = _grey16(a) + (np.arange(a.shape[1]) % 200)
    Image.fromarray(v.astype(np.uint16)).save(p)


def _one_bit(a: np.ndarray) -> Image.Image:
    return _grey(a).convert("1")


def _cmyk(a: np.ndarray) -> Image.Image:
    return _rgb(a).convert("CMYK")


#: (kind, extension, opened mode, writer) for every variant.
WRITERS: list[tuple[str, str, str, Writer]] = [
    ("png-RGB", ".png", "RGB", _save(_rgb, "PNG")),
    ("png-L", ".png", "L", _save(_grey, "PNG")),
    ("png-P", ".png", "P", _save(_pal, "PNG")),
    ("png-P-transparent", ".png", "P", _pal_transparent),
    ("png-RGBA", ".png", "RGBA", _save(_rgba, "PNG")),
    ("png-LA", ".png", "LA", _save(_la, "PNG")),
    ("png-1", ".png", "1", _save(_one_bit, "PNG")),
    ("png-I16", ".png", "I;16", _png_grey16),
    ("png-RGB48", ".png", "RGB", lambda a, p: write_png16(p, a.astype(np.uint16) * 257 + 3)),
    (
        "png-LA16",
        ".png",
        "RGBA",
        lambda a, p: write_png16(p, np.dstack([_grey16(a), _alpha(a).astype(np.uint16) * 257])),
    ),
    ("jpeg-RGB", ".jpg", "RGB", _save(_rgb, "JPEG", quality=90)),
    ("jpeg-L", ".jpeg", "L", _save(_grey, "JPEG")),
    ("jpeg-CMYK", ".jpg", "CMYK", _save(_cmyk, "JPEG")),
    ("bmp-RGB", ".bmp", "RGB", _save(_rgb, "BMP")),
    ("bmp-L", ".bmp", "L", _save(_grey, "BMP")),
    ("bmp-P", ".bmp", "P", _save(_pal, "BMP")),
    ("bmp-1", ".bmp", "1", _save(_one_bit, "BMP")),
    ("webp-RGB", ".webp", "RGB", _save(_rgb, "WEBP", quality=80)),
    ("webp-RGBA", ".webp", "RGBA", _save(_rgba, "WEBP", lossless=True)),
    ("tiff-RGB", ".tiff", "RGB", _save(_rgb, "TIFF")),
    ("tiff-L", ".tif", "L", _save(_grey, "TIFF")),
    ("tiff-CMYK", ".tif", "CMYK", _save(_cmyk, "TIFF")),
    ("tiff-I16", ".tif", "I;16", lambda a, p: Image.fromarray(_grey16(a)).save(p, "TIFF")),
    ("tiff-RGBA", ".tiff", "RGBA", _save(_rgba, "TIFF")),
    ("tiff-1", ".tif", "1", _save(_one_bit, "TIFF")),
    ("ppm-RGB", ".ppm", "RGB", _save(_rgb, "PPM")),
    ("pgm-16", ".pgm", "I", lambda a, p: Image.fromarray(_grey16(a)).save(p, "PPM")),
]


def write_image_files(root: Path) -> list[ImageFile]:
    """About 290 files in ``root/{train,val}/{a,b,c}/``: every variant of :data:`WRITERS` at
    every size of :data:`SIZES`, a few at :data:`LARGE_SIZES`, and one-colour PNGs and BMPs
    (1x1 to 600x400) whose normalised values are known exactly."""
    rng = np.random.default_rng(0)
    files: list[ImageFile] = []

    def place(stem: str, ext: str) -> Path:
        n = len(files)
        split = "val" if (n // len(CLASSES)) % 3 == 2 else "train"
        d = root / split / CLASSES[n % len(CLASSES)]
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{n + 1:03d}_{stem}{ext}"

    def write(kind: str, ext: str, mode: str, writer: Writer, w: int, h: int) -> None:
        p = place(f"{kind}_{w}x{h}", ext)
        writer(content(w, h, rng), p)
        files.append(ImageFile(p, kind, mode, (w, h)))

    for kind, ext, mode, writer in WRITERS:
        for w, h in SIZES:
            write(kind, ext, mode, writer, w, h)
    for kind, ext, mode, writer in WRITERS[::4]:  # a few large-ish ones
        write(kind, ext, mode, writer, *LARGE_SIZES[len(files) % 2])
    # One-colour images (to check normalisation exactly) and 1x1 ones.
    for i, (w, h) in enumerate([(1, 1), (5, 5), (600, 9), (6, 300), (64, 48), (600, 400)]):
        colour = (200, 50, 10) if i % 2 else (30, 140, 250)
        for kind, ext, fmt in (("png-solid", ".png", "PNG"), ("bmp-solid", ".bmp", "BMP")):
            p = place(f"{kind}_{w}x{h}", ext)
            Image.new("RGB", (w, h), colour).save(p, fmt)
            files.append(ImageFile(p, kind, "RGB", (w, h), constant=colour))
    return files
