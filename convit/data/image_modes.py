"""Every Pillow mode as ``L``, ``LA``, ``RGB`` or ``RGBA`` by what its values mean, then as the
mode the caller asked for: the conversion half of :func:`convit.data.reader.read_image`, also
used on images decoded elsewhere (:func:`convert_image`, the training transforms).

Palettes and colour keys expand to alpha, alpha is composited on :data:`BACKGROUND`, CMYK /
YCbCr / LAB / HSV go to RGB, grey wider than 8 bits is scaled by its real bit depth and floats by
their range; wide values are converted in strips of bounded size, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["BACKGROUND", "Refused", "to_working_mode", "declared_depth", "finish", "convert_image"]

#: The colour transparent pixels are composited on: white, as a browser or a document shows
#: a transparent PNG, logo or icon on its page.
BACKGROUND: int = 255


class Refused(Exception):
    """A reason of ours, already worded for the user (the reader makes it an ImageReadError)."""


#: Modes Pillow converts by their meaning, and the working mode each becomes.
_PILLOW_MODES = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
_ROWS_PER_STEP_PIXELS = 1 << 22  # numpy conversions work on strips of about this many pixels


def to_working_mode(im: Image.Image, bits: Optional[int] = None, signed: bool = False) -> Image.Image:
    """Any decoded Pillow image as ``L``, ``LA``, ``RGB`` or ``RGBA``, by what its values mean.

    Palettes and colour-key transparency (``transparency`` in ``info``) expand to alpha;
    ``LAB`` goes through Pillow's ImageCms (littleCMS, a D50 Lab profile to sRGB), ``CMYK``,
    ``YCbCr`` and ``HSV`` through Pillow's own formulas; grey wider than 8 bits and floats
    through :func:`_int_to_l` (``bits`` / ``signed``: what the file declares) and
    :func:`_float_to_l`.
    """
    m = im.mode
    if m == "P":
        alpha = "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        return im.convert("RGBA" if alpha else "RGB")
    if m in ("L", "RGB") and "transparency" in im.info:
        return im.convert(m + "A")
    if m in _PILLOW_MODES:
        return im if _PILLOW_MODES[m] == m else im.convert(_PILLOW_MODES[m])
    if m == "I" or m.startswith("I;16"):
        return _int_to_l(im, bits, signed)
    if m == "F":
        return _float_to_l(im)
    try:
        return im.convert("RGBA")
    except (ValueError, OSError) as e:
        raise Refused(f"Pillow cannot convert its mode {m} to RGB ({e})") from e


def declared_depth(im: Image.Image) -> tuple[Optional[int], bool]:
    """``(bits, signed)`` per sample as the file declares them: TIFF's BitsPerSample (258)
    and SampleFormat (339, 2 = signed); ``(None, False)`` for other formats."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None, False

    def largest(tag: int) -> Optional[int]:
        value = tags.get(tag)
        if value is None:
            return None
        return int(max(value)) if isinstance(value, (tuple, list)) else int(value)

    return largest(258), largest(339) == 2


def _strips(im: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """``(y, rows)``: the pixels of a one-band image as numpy strips of bounded size, so a
    large image is never copied whole as wide integers or floats."""
    w, h = im.size
    step = max(1, _ROWS_PER_STEP_PIXELS // max(1, w))
    for y in range(0, h, step):
        yield y, np.asarray(im.crop((0, y, w, min(h, y + step))))


def _scaled(im: Image.Image, lo: float, hi: float) -> Image.Image:
    """``L`` from a one-band image: ``round(255 * (v - lo) / (hi - lo))``, clipped to 0..255
    (NaN as 0, infinities at the ends)."""
    w, h = im.size
    out = np.empty((h, w), dtype=np.uint8)
    span = float(hi - lo) or 1.0
    for y, rows in _strips(im):
        v = (rows.astype(np.float64) - lo) * (255.0 / span)
        out[y : y + rows.shape[0]] = np.clip(np.rint(np.nan_to_num(v, nan=0.0)), 0, 255)
    return Image.fromarray(out)


def _range(im: Image.Image) -> tuple[float, float]:
    """Smallest and largest finite value of a one-band image ((0, 0) if none is finite)."""
    lo = np.inf
    hi = -np.inf
    for _, rows in _strips(im):
        finite = rows[np.isfinite(rows)] if rows.dtype.kind == "f" else rows
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (0.0, 0.0) if lo > hi else (lo, hi)


def _int_to_l(im: Image.Image, bits: Optional[int], signed: bool) -> Image.Image:
    """Grey wider than 8 bits (``I;16*``, ``I``) as ``L``, scaled by its real bit depth.

    The depth is the one the file declares (TIFF BitsPerSample, e.g. 12; signed TIFF samples
    (SampleFormat 2) use their positive half), else the container's: 16 for ``I;16*`` and for
    ``I`` whose values all lie in 0..65535 (Pillow already rescales PGM ``maxval`` and JPEG
    2000 precision to 16 bits; PNG stores ``sBIT`` images scaled up to 16 bits). An ``I``
    image with values outside 0..65535 and no declared depth is stretched from its minimum to
    its maximum.
    """
    lo, hi = _range(im)
    if bits is None or bits > 16:
        bits = 16 if lo >= 0 and hi <= 65535 else None
    if bits is None:
        return _scaled(im, lo, hi)
    full = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return _scaled(im, 0, full)


def _float_to_l(im: Image.Image) -> Image.Image:
    """Float grey (``F``) as ``L`` by its range: values within [0, 1] times 255, within
    [0, 255] as they are, anything else stretched from its minimum to its maximum (NaN black)."""
    lo, hi = _range(im)
    if lo >= 0 and hi <= 1:
        return _scaled(im, 0, 1)
    if lo >= 0 and hi <= 255:
        return _scaled(im, 0, 255)
    return _scaled(im, lo, hi)


def _composite(im: Image.Image) -> Image.Image:
    """``LA`` / ``RGBA`` on the :data:`BACKGROUND` colour, as ``L`` / ``RGB``."""
    base = im.mode[:-1]
    flat = im.convert(base)
    return Image.composite(flat, Image.new(base, im.size, (BACKGROUND,) * len(base)), im.getchannel("A"))


def finish(im: Image.Image, mode: Optional[str]) -> Image.Image:
    """A working-mode image (``L``, ``LA``, ``RGB``, ``RGBA``) as ``mode``: alpha composited
    on the background for ``RGB`` / ``L``, Pillow's integer luma (ITU-R 601) for RGB to ``L``;
    ``None`` keeps the working mode (alpha included)."""
    if mode is None:
        return im
    if im.mode in ("LA", "RGBA"):
        im = _composite(im)
    return im if im.mode == mode else im.convert(mode)


def convert_image(im: Image.Image, mode: Optional[str]) -> Image.Image:
    """A decoded PIL image from anywhere as ``mode`` (``"RGB"``, ``"L"``, None), converted as
    :func:`read_image` converts files (without its orientation, limits and reduction)."""
    return finish(to_working_mode(im, *declared_depth(im)), mode)
