"""The one image-file reader of convit: training (``imagefolder``), ``convit eval`` and
``convit predict`` all open files through :func:`read_image`.

What it guarantees, whatever the file (see docs/images.md for the table and the measurements):

* the picture *as a viewer shows it*: EXIF orientation applied, the first frame of animated or
  multi-page files, every Pillow mode converted to ``RGB`` or ``L`` by what it means (alpha
  composited on :data:`BACKGROUND`, palettes expanded, CMYK / YCbCr / LAB / HSV to RGB, 16-bit
  and 12-bit grey scaled by their real bit depth, floats by their range);
* bounded memory: Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) checked on
  the header before any pixel is decoded, and with ``target_size`` a large image is decoded
  reduced (JPEG's DCT scaling through ``Image.draft``) or shrunk by an integer factor right
  after decoding (``Image.reduce``), before any conversion;
* one error type: every failure raises :class:`ImageReadError` (a ``ValueError``) naming the
  file, the format when Pillow recognised it, and the reason; never another exception class.
  Truncated files are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here).

The mode conversion is :mod:`.image_modes`' (also used on images decoded elsewhere); this
module opens, guards, decodes and orients.

Kept ours rather than torchvision's ``pil_loader`` / ``decode_image``: those convert with
``.convert("RGB")`` alone, which drops alpha (showing whatever colour transparent pixels
hide), clips 16-bit images to white and ignores EXIF orientation.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from PIL import Image, UnidentifiedImageError

from .image_modes import BACKGROUND, Refused, convert_image, declared_depth, finish, to_working_mode

__all__ = [
    "ImageReadError",
    "ImageNotFoundError",
    "ImageReadWarning",
    "read_image",
    "probe_image",
    "convert_image",
    "to_working_mode",
    "BACKGROUND",
]

PathLike = Union[str, os.PathLike]

#: ``target_size`` reduction keeps the shorter side at least this many times the size the
#: caller resizes to, so the final (antialiased) resize still averages several pixels per
#: output pixel; images under twice that are never reduced.
_KEEP_FACTOR: int = 2


class ImageReadError(ValueError):
    """An image file that cannot be read: ``path``, ``format`` (Pillow's name, or None when it
    did not recognise the file) and ``reason``. ``str(e)`` names all three."""

    def __init__(self, path: PathLike, reason: str, format: Optional[str] = None):
        self.path = str(path)
        self.reason = reason
        self.format = format
        fmt = f" ({format})" if format else ""
        super().__init__(f"cannot read image {self.path}{fmt}: {reason}")


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """The path is not a file: an :class:`ImageReadError` that is also a ``FileNotFoundError``."""


class ImageReadWarning(UserWarning):
    """Pillow warned about a file it still read (corrupt EXIF, odd chunks): re-issued once,
    naming the file (``path``, ``detail``; ``str()`` is ``"path: detail"``)."""

    def __init__(self, path: PathLike, detail: str):
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.path}: {detail}")


@contextlib.contextmanager
def _pillow_limit(max_pixels: Optional[int]) -> Iterator[None]:
    """Let Pillow's own check (an error above twice ``Image.MAX_IMAGE_PIXELS``) pass images
    that ``max_pixels`` allows; ours, on the header, is the one that decides. Pillow's global
    is only touched when a caller raised the limit above it (not thread-safe then)."""
    current = Image.MAX_IMAGE_PIXELS
    if current is None or (max_pixels is not None and max_pixels <= 2 * current):
        yield
        return
    Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = current


def _check_pixels(im: Image.Image, max_pixels: Optional[int]) -> None:
    """Refuse, before decoding, an image over ``max_pixels`` (Pillow's bomb limit by default)."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise Refused(
            f"{w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} "
            f"(Pillow's decompression-bomb guard, Image.MAX_IMAGE_PIXELS); raise it with "
            f"--max-image-pixels / max_pixels= if the file is trusted"
        )
    if w < 1 or h < 1:
        raise Refused(f"the image has no pixels ({w}x{h})")


def _reason(e: BaseException, fmt: Optional[str]) -> str:
    """What went wrong, in words, for any exception Pillow or numpy raised."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, Refused):
        return text
    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can identify (unknown format, or not an image)"
    if isinstance(e, NotImplementedError):
        return f"Pillow cannot decode this {fmt or 'image'} variant ({text})"
    if isinstance(e, Image.DecompressionBombError):
        return f"{text} (raise --max-image-pixels / max_pixels= if the file is trusted)"
    if isinstance(e, MemoryError):
        return "not enough memory to decode it"
    if "truncated" in text or isinstance(e, EOFError):
        return f"the file is truncated or damaged ({text})"
    if "decoder" in text and "not available" in text:
        return f"this Pillow was built without the decoder this {fmt or 'file'} needs ({text})"
    return f"{type(e).__name__}: {text}"


#: Modes whose pixel values average meaningfully (Pillow premultiplies LA / RGBA itself), so
#: ``Image.reduce`` can run before converting; palette indices, 1-bit, hue and Pillow's
#: unreducible ``I;16`` wait until the image is converted.
_REDUCIBLE = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F")


def _format_of(e: BaseException) -> Optional[str]:
    """The format whose Pillow plugin raised ``e`` (the ``format`` of the image object in the
    innermost frame that has one): names the format of a file that failed inside
    ``Image.open``, before Pillow returned it."""
    fmt = None
    tb = e.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, Image.Image) and getattr(type(obj), "format", None):
            fmt = type(obj).format
        tb = tb.tb_next
    return fmt


def _reduction(size: tuple[int, int], target_size: Optional[int]) -> int:
    """The integer factor an image of ``size`` may shrink by and keep its shorter side at
    least ``_KEEP_FACTOR * target_size`` (1: leave it alone)."""
    if not target_size:
        return 1
    return max(1, min(size) // (_KEEP_FACTOR * target_size))


def _decode(im: Image.Image, path: PathLike, target_size: Optional[int]) -> tuple[Image.Image, int]:
    """Decode the first frame, smaller when ``target_size`` allows: JPEG through its DCT
    scaling (``draft``, 1/2 to 1/8, never below the size asked), any other format by
    ``Image.reduce`` (box averaging) right after decoding, so conversions never see the
    full-size pixels. Returns the image and its EXIF orientation, read once the file is
    decoded (PNG may keep EXIF after the pixels; reduced images no longer carry the tags)."""
    k = _reduction(im.size, target_size)
    if k >= 2 and im.format in ("JPEG", "MPO"):
        im.draft(None, (max(1, im.size[0] // k), max(1, im.size[1] // k)))
    im.load()
    orientation = _orientation(im, path)
    k = _reduction(im.size, target_size)
    if k >= 2 and im.mode in _REDUCIBLE:
        im = im.reduce(k)
    return im, orientation


#: EXIF Orientation (tag 0x0112) -> the transpose that makes the picture upright (EXIF 2.3,
#: the table of ``ImageOps.exif_transpose``).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image, path: PathLike) -> int:
    """The EXIF orientation of a decoded file (1 when absent). A damaged EXIF block is
    ignored with a warning: the pixels are fine, only the rotation is unknown."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if int(value) in _UPRIGHT else 1
    except Exception as e:  # noqa: BLE001 - any EXIF parsing failure means "orientation unknown"
        warnings.warn(
            ImageReadWarning(path, f"EXIF orientation ignored (unreadable EXIF: {_reason(e, im.format)})"),
            stacklevel=4,
        )
        return 1


def _read_open(
    im: Image.Image, path: PathLike, mode: Optional[str], target_size: Optional[int]
) -> Image.Image:
    """The steps after ``Image.open``: decode (reduced), convert, orient, finish. Reduction
    comes before converting for :data:`_REDUCIBLE` modes, else after."""
    depth = declared_depth(im)
    im, orientation = _decode(im, path, target_size)
    im = to_working_mode(im, *depth)
    k = _reduction(im.size, target_size)
    if k >= 2:
        im = im.reduce(k)
    if orientation != 1:
        im = im.transpose(_UPRIGHT[orientation])
    return finish(im, mode)


@contextlib.contextmanager
def _opened(path: PathLike, max_pixels: Optional[int]) -> Iterator[Image.Image]:
    """``Image.open(path)`` with its size checked against ``max_pixels`` (-1: Pillow's
    ``Image.MAX_IMAGE_PIXELS``); any exception inside becomes one :class:`ImageReadError`."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels == -1 else max_pixels
    if not Path(path).is_file():
        raise ImageNotFoundError(path, "no such file")
    fmt: Optional[str] = None
    try:
        with _pillow_limit(limit), Image.open(path) as im:
            fmt = im.format
            _check_pixels(im, limit)
            yield im
    except Exception as e:  # noqa: BLE001 - every failure becomes one ImageReadError
        fmt = fmt or _format_of(e)
        raise ImageReadError(path, _reason(e, fmt), fmt) from e


def read_image(
    path: PathLike,
    mode: Optional[str] = "RGB",
    *,
    max_pixels: Optional[int] = -1,
    target_size: Optional[int] = None,
) -> Image.Image:
    """Read an image file as a decoded PIL image in ``mode`` (``"RGB"``, ``"L"``, or None).

    mode: ``"RGB"`` / ``"L"`` give the picture as a viewer shows it (alpha composited on
        :data:`BACKGROUND`); None keeps alpha: the result is ``L``, ``LA``, ``RGB`` or ``RGBA``.
    max_pixels: refuse images with more pixels (checked on the header, before decoding).
        -1 (default): Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 unless changed); None:
        no limit (trusted files only).
    target_size: the shorter side the caller will resize the image to. When the image is
        much larger (shorter side at least 4x this), it is decoded reduced (JPEG) or shrunk
        by an integer factor right after decoding, keeping the shorter side at least twice
        this. None: always full size.

    Raises :class:`ImageReadError` naming the file, its format and the reason for every
    failure (:class:`ImageNotFoundError`, also a ``FileNotFoundError``, when it is not a file).
    Warnings Pillow gives about a file it still reads are re-issued once as
    :class:`ImageReadWarning` naming the file.
    """
    if mode not in ("RGB", "L", None):
        raise ValueError(f"mode must be 'RGB', 'L' or None, got {mode!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _opened(path, max_pixels) as im:
            out = _read_open(im, path, mode, target_size)
    seen = set()
    for w in caught:  # pass Pillow's warnings on, each once and naming the file
        text = str(w.message)
        if text in seen or issubclass(w.category, Image.DecompressionBombWarning):
            continue  # our own pixel limit already decided
        seen.add(text)
        warnings.warn(
            w.message if isinstance(w.message, ImageReadWarning) else ImageReadWarning(path, text),
            stacklevel=2,
        )
    return out


def probe_image(path: PathLike, max_pixels: Optional[int] = -1) -> tuple[str, str, tuple[int, int]]:
    """``(format, mode, size)`` from the header alone, with the pixel limit of
    :func:`read_image`: the cheap check of a dataset scan. Raises :class:`ImageReadError`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _opened(path, max_pixels) as im:
            return im.format, im.mode, im.size
