"""Real image files through every path a user's run takes: ``load_image``, the dataset
classes, every preset's training and evaluation transforms, ``build_data("imagefolder")``
and one ``convit train --dataset imagefolder`` run.

The files are written by Pillow into a temporary folder (no committed data): a few hundred
images of many modes (RGB, L, P with and without transparency, RGBA, LA, CMYK, 16-bit grey,
16-bit RGB, 1-bit), sizes (1x1, 5x5, 600x400, 600x9, 6x300, ...) and formats (PNG, JPEG, BMP,
WEBP, TIFF, PPM/PGM).

It also forces the worst case of DeiT's RandAugment: every op of the policy at the lowest
and highest magnitude it can be given, on RGB and greyscale images. Pillow >= 13 refuses the
0-bit posterize that timm asks for at magnitude 10 (see docs/augmentation.md), which the
recipe in convit.data.transforms caps; without that cap
``test_every_rand_augment_op_at_extreme_magnitudes`` and
``test_train_cli_on_real_files_at_the_worst_case_policy`` fail.
"""
from __future__ import annotations

import copy
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from convit.config import PRESETS, build_config
from convit.data import (ImageFileDataset, TensorImageDataset, build_data, eval_transform,
                         load_image, train_transform)
from convit.data import transforms

# --------------------------------------------------------------------------------------------
# The image files
# --------------------------------------------------------------------------------------------

CLASSES = ("a", "b", "c")
# (width, height): tiny, very wide / very tall, large-ish, and ordinary photo-like sizes.
SIZES: Tuple[Tuple[int, int], ...] = ((5, 5), (7, 3), (600, 9), (6, 300), (300, 30), (64, 48),
                                      (33, 97), (45, 45), (120, 80), (250, 250))
LARGE_SIZES: Tuple[Tuple[int, int], ...] = ((600, 400), (400, 600))


@dataclass
class ImageFile:
    """One written file and what Pillow must open it as."""

    path: Path
    kind: str          # what it was written as, e.g. "png-P-transparent"
    opened_mode: str   # the mode Image.open must report (checked by a test)
    size: Tuple[int, int]
    constant: Optional[Tuple[int, int, int]] = None  # RGB colour of a one-colour image


def _content(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [h, w, 3]: horizontal and vertical gradients plus noise, so that every crop of
    two or more pixels is non-constant in every channel."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1),
                     127 + 60 * np.sin(x / 3.0 + y / 5.0)], axis=-1)
    noise = rng.normal(0, 25, size=(h, w, 3))
    return np.clip(base * 0.8 + noise + 20, 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def write_png16(path: Path, samples: np.ndarray) -> None:
    """A 16-bit-per-sample PNG (grey [h, w], grey+alpha [h, w, 2] or RGB [h, w, 3]) written
    byte by byte: Pillow can only write 16-bit PNGs of one grey channel."""
    a = samples if samples.ndim == 3 else samples[:, :, None]
    h, w, c = a.shape
    colour_type = {1: 0, 2: 4, 3: 2}[c]
    rows = a.astype(">u2").reshape(h, w * c)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _writers():
    """(kind, extension, opened mode, function(rgb uint8 [h, w, 3], path)) for every variant."""
    def rgb(a):
        return Image.fromarray(a)

    def grey(a):
        return Image.fromarray(a).convert("L")

    def pal(a):
        return Image.fromarray(a).quantize(colors=32)

    def alpha(a):
        return np.linspace(0, 255, a.shape[0] * a.shape[1]).reshape(a.shape[:2]).astype(np.uint8)

    def rgba(a):
        return Image.fromarray(np.dstack([a, alpha(a)]))

    def la(a):
        return Image.merge("LA", (grey(a), Image.fromarray(alpha(a))))

    def save(make, fmt, **kw):
        return lambda a, p: make(a).save(p, fmt, **kw)

    def pal_transparent(a, p):
        im = pal(a)
        im.save(p, "PNG", transparency=0)

    def grey16(a, p):
        v = np.asarray(grey(a)).astype(np.uint16) * 257 + (np.arange(a.shape[1]) % 200)
        Image.fromarray(v.astype(np.uint16)).save(p)

    return [
        ("png-RGB", ".png", "RGB", save(rgb, "PNG")),
        ("png-L", ".png", "L", save(grey, "PNG")),
        ("png-P", ".png", "P", save(pal, "PNG")),
        ("png-P-transparent", ".png", "P", pal_transparent),
        ("png-RGBA", ".png", "RGBA", save(rgba, "PNG")),
        ("png-LA", ".png", "LA", save(la, "PNG")),
        ("png-1", ".png", "1", save(lambda a: grey(a).convert("1"), "PNG")),
        ("png-I16", ".png", "I;16", grey16),
        ("png-RGB48", ".png", "RGB", lambda a, p: write_png16(p, a.astype(np.uint16) * 257 + 3)),
        ("png-LA16", ".png", "RGBA", lambda a, p: write_png16(
            p, np.dstack([np.asarray(grey(a)).astype(np.uint16) * 257, alpha(a).astype(np.uint16) * 257]))),
        ("jpeg-RGB", ".jpg", "RGB", save(rgb, "JPEG", quality=90)),
        ("jpeg-L", ".jpeg", "L", save(grey, "JPEG")),
        ("jpeg-CMYK", ".jpg", "CMYK", save(lambda a: rgb(a).convert("CMYK"), "JPEG")),
        ("bmp-RGB", ".bmp", "RGB", save(rgb, "BMP")),
        ("bmp-L", ".bmp", "L", save(grey, "BMP")),
        ("bmp-P", ".bmp", "P", save(pal, "BMP")),
        ("bmp-1", ".bmp", "1", save(lambda a: grey(a).convert("1"), "BMP")),
        ("webp-RGB", ".webp", "RGB", save(rgb, "WEBP", quality=80)),
        ("webp-RGBA", ".webp", "RGBA", save(rgba, "WEBP", lossless=True)),
        ("tiff-RGB", ".tiff", "RGB", save(rgb, "TIFF")),
        ("tiff-L", ".tif", "L", save(grey, "TIFF")),
        ("tiff-CMYK", ".tif", "CMYK", save(lambda a: rgb(a).convert("CMYK"), "TIFF")),
        ("tiff-I16", ".tif", "I;16", lambda a, p: Image.fromarray(
            np.asarray(grey(a)).astype(np.uint16) * 257).save(p, "TIFF")),
        ("tiff-RGBA", ".tiff", "RGBA", save(rgba, "TIFF")),
        ("tiff-1", ".tif", "1", save(lambda a: grey(a).convert("1"), "TIFF")),
        ("ppm-RGB", ".ppm", "RGB", save(rgb, "PPM")),
        ("pgm-16", ".pgm", "I", lambda a, p: Image.fromarray(
            np.asarray(grey(a)).astype(np.uint16) * 257).save(p, "PPM")),
    ]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> Tuple[Path, List[ImageFile]]:
    """An imagefolder (``root/{train,val}/{a,b,c}/``) of about 290 real image files."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    files: List[ImageFile] = []
    n = 0

    def place(stem: str, ext: str) -> Path:
        nonlocal n
        split = "val" if (n // len(CLASSES)) % 3 == 2 else "train"
        d = root / split / CLASSES[n % len(CLASSES)]
        d.mkdir(parents=True, exist_ok=True)
        n += 1
        return d / f"{n:03d}_{stem}{ext}"

    for kind, ext, mode, write in _writers():
        for w, h in SIZES:
            p = place(f"{kind}_{w}x{h}", ext)
            write(_content(w, h, rng), p)
            files.append(ImageFile(p, kind, mode, (w, h)))
    for kind, ext, mode, write in _writers()[::4]:  # a few large-ish ones
        w, h = LARGE_SIZES[len(files) % 2]
        p = place(f"{kind}_{w}x{h}", ext)
        write(_content(w, h, rng), p)
        files.append(ImageFile(p, kind, mode, (w, h)))
    # One-colour images (to check normalisation exactly) and 1x1 ones.
    for i, (w, h) in enumerate([(1, 1), (5, 5), (600, 9), (6, 300), (64, 48), (600, 400)]):
        colour = (200, 50, 10) if i % 2 else (30, 140, 250)
        for kind, ext, fmt in (("png-solid", ".png", "PNG"), ("bmp-solid", ".bmp", "BMP")):
            p = place(f"{kind}_{w}x{h}", ext)
            Image.new("RGB", (w, h), colour).save(p, fmt)
            files.append(ImageFile(p, kind, "RGB", (w, h), constant=colour))
    return root, files


def _nonconstant_source(f: ImageFile) -> bool:
    return f.constant is None and min(f.size) >= 2


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
    for need in [("PNG", "I;16"), ("PNG", "P"), ("PNG", "LA"), ("PNG", "1"), ("JPEG", "CMYK"),
                 ("WEBP", "RGBA"), ("TIFF", "I;16"), ("BMP", "P"), ("PPM", "I"), ("PNG", "RGBA")]:
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
            if _nonconstant_source(f):
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
    la = np.dstack([np.arange(256, dtype=np.uint16).reshape(16, 16) * 257,
                    np.full((16, 16), 65535, dtype=np.uint16)])
    write_png16(tmp_path / "la16.png", la)
    got = np.asarray(load_image(tmp_path / "la16.png").convert("L")).astype(int)
    assert np.abs(got - np.arange(256).reshape(16, 16)).max() <= 1


def test_palette_with_transparency_loads_as_rgba(image_files):
    _, files = image_files
    f = next(f for f in files if f.kind == "png-P-transparent")
    im = load_image(f.path)
    assert im.mode == "RGBA" and np.asarray(im)[:, :, 3].min() == 0  # index 0 is transparent


# --------------------------------------------------------------------------------------------
# Every preset's transforms on every file
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PresetData:
    """The data settings a preset's run ends up with (what build_data returns for its dataset)."""

    dataset: str
    in_chans: int
    img_size: int
    native_size: Optional[int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    hflip: bool
    augment: str  # what augment="auto" resolves to


# digits' statistics are computed from its training split; the others are convit.data's.
PRESET_DATA: Dict[str, PresetData] = {
    "imagenet": PresetData("imagefolder", 3, 224, None, (0.485, 0.456, 0.406),
                           (0.229, 0.224, 0.225), True, "deit"),
    "digits": PresetData("digits", 1, 8, 8, (0.3054,), (0.3761,), False, "small"),
    "fashion-mnist": PresetData("fashion-mnist", 1, 28, 28, (0.2860,), (0.3530,), True, "small"),
    "cifar": PresetData("cifar10", 3, 32, 32, (0.4914, 0.4822, 0.4465),
                        (0.2470, 0.2435, 0.2616), True, "small"),
}


def test_preset_table_matches_the_presets():
    assert set(PRESET_DATA) == set(PRESETS), "a preset was added or removed: update PRESET_DATA"
    for name, spec in PRESET_DATA.items():
        assert PRESETS[name]["dataset"] == spec.dataset
        assert PRESETS[name].get("augment", "auto") in ("auto", spec.augment)
    digits = build_data("digits")
    assert digits.mean == pytest.approx(PRESET_DATA["digits"].mean, abs=1e-4)
    assert digits.std == pytest.approx(PRESET_DATA["digits"].std, abs=1e-4)


def _expected_constant(colour: Tuple[int, int, int], spec: PresetData) -> torch.Tensor:
    """The normalised value of a one-colour image, per channel."""
    px = Image.new("RGB", (1, 1), colour).convert("L" if spec.in_chans == 1 else "RGB")
    v = torch.tensor(np.asarray(px), dtype=torch.float32).reshape(-1) / 255
    return (v - torch.tensor(spec.mean)) / torch.tensor(spec.std)


def _check_output(x: torch.Tensor, spec: PresetData, size: int, where: str) -> None:
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32, where
    assert tuple(x.shape) == (spec.in_chans, size, size), (where, tuple(x.shape))
    assert torch.isfinite(x).all(), where


def _run_dataset(ds, files: Sequence[ImageFile], spec: PresetData, size: int, name: str,
                 deterministic: bool) -> None:
    """Every item of ``ds`` (ImageFileDataset over ``files``, in order): shape, dtype, finite,
    normalised; one-colour files exactly for the deterministic (eval) pipelines."""
    flat = []
    for i, f in enumerate(files):
        x, y = ds[i]
        where = f"{name}: {f.path.name}"
        _check_output(x, spec, size, where)
        if _nonconstant_source(f):
            flat.append(bool(x.std() < 1e-3))
            if deterministic:
                assert not flat[-1], f"{where} is constant after the transform"
        if f.constant is not None and deterministic:
            want = _expected_constant(f.constant, spec).view(-1, 1, 1).expand_as(x)
            assert torch.allclose(x, want, atol=2e-3), (where, x.mean((1, 2)), want[:, 0, 0])
    assert not ds.failed, ds.failed
    # random crops of 5x5 images can land on one pixel; almost all must still vary
    assert sum(flat) <= 0.1 * len(flat), f"{name}: {sum(flat)} of {len(flat)} outputs are constant"


@pytest.mark.parametrize("preset", sorted(PRESET_DATA))
def test_preset_transforms_on_every_file(image_files, preset):
    """The preset's data settings applied to the real files, as ``imagefolder`` reads them
    (ImageFileDataset with the preset's in_chans) and as ``convit predict`` does
    (``eval_transform(load_image(path))``), for every training augment and both eval paths."""
    _, files = image_files
    spec = PRESET_DATA[preset]
    # imagenet's 224 (bicubic resizes of float tensors up to 256 x 17000 for the 600x9 files)
    # would take ~10 s here; test_build_data_imagefolder_under_every_preset runs it at 224.
    size = 64 if preset == "imagenet" else spec.img_size
    samples = [(str(f.path), 0) for f in files]
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    for augment in ("deit", "small", "none"):
        t, _ = train_transform(augment, size, spec.mean, spec.std, spec.in_chans,
                               None, spec.hflip)  # photos: native_size None
        ds = ImageFileDataset(samples, t, spec.in_chans)
        _run_dataset(ds, files, spec, size, f"{preset}/train/{augment}", augment == "none")
    for native in sorted({None, spec.native_size}, key=str):
        t = eval_transform(size, spec.mean, spec.std, spec.in_chans, native)
        _run_dataset(ImageFileDataset(samples, t, spec.in_chans), files, spec, size,
                     f"{preset}/eval/native={native}", True)
        # convit predict: the transform gets load_image's output directly (RGBA, LA, CMYK, ...)
        for f in files[::7]:
            _check_output(t(load_image(f.path)), spec, size, f"{preset}/predict {f.path.name}")


@pytest.mark.parametrize("preset", sorted(PRESET_DATA))
def test_build_data_imagefolder_under_every_preset(image_files, preset):
    """``convit train --preset P --dataset imagefolder --data-path DIR``: the bundle that
    ``fit`` gets, with every train and test item read."""
    root, files = image_files
    cfg = build_config({"preset": preset, "dataset": "imagefolder", "data_path": str(root)})
    b = build_data(cfg.dataset, cfg.data_path, img_size=cfg.img_size, sampling_ratio=cfg.sampling_ratio,
                   seed=cfg.seed, val_fraction=cfg.val_fraction, augment=cfg.augment)
    assert (b.augment, b.img_size, b.in_chans, b.skipped) == ("deit", 224, 3, [])
    assert len(b.train) + (len(b.val) if b.val is not None else 0) + len(b.test) == len(files)
    spec = PRESET_DATA["imagenet"]
    # the four presets build the same pipeline here: read every file under one of them, a
    # sample under the others
    step = 1 if preset == "imagenet" else 9
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    for ds in [d for d in (b.train, b.val, b.test) if d is not None]:
        for i in range(0, len(ds), step):
            x, y = ds[i]
            _check_output(x, spec, 224, f"{preset}: {ds.samples[i][0]}")
            assert 0 <= y < len(CLASSES)
        assert not ds.failed


def test_deit_recipe_from_in_memory_greyscale_tensors():
    """TensorImageDataset's PIL path (``--augment deit`` on digits / Fashion-MNIST) at the
    worst-case policy magnitude."""
    n = 40  # 2 ops of 15 per image: posterize is drawn for ~99.6 % of such runs (seeded)
    imgs = torch.rand(n, 1, 28, 28)
    imgs[0] = 1.0
    t, wants_pil = train_transform("deit", 28, (0.286,), (0.353,), 1)
    assert wants_pil
    _force_extreme(transforms._rand_augment_of(t), 10.0)
    ds = TensorImageDataset(imgs, np.zeros(n, dtype=np.int64), np.arange(n), t, to_pil=True)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    for i in range(len(ds)):
        x, _ = ds[i]
        assert x.shape == (1, 28, 28) and torch.isfinite(x).all()


def test_deit_recipe_rejects_three_channel_stats_for_greyscale():
    with pytest.raises(ValueError, match="in_chans=1"):
        train_transform("deit", 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), 1)
    with pytest.raises(ValueError, match="mean and std"):
        eval_transform(32, (0.5, 0.5), (0.2, 0.2), 3)


# --------------------------------------------------------------------------------------------
# The worst case of DeiT's RandAugment, and what the posterize cap changes
# --------------------------------------------------------------------------------------------

# The 15 ops of timm's "inc1" RandAugment set, which DeiT's rand-m9-mstd0.5-inc1 draws from.
DEIT_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
            "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
            "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
            "TranslateYRel"]
LEVEL_DENOM = 10.0  # timm clips sampled magnitudes to [0, 10] unless an op has magnitude_max


def _recipe_ops(in_chans: int):
    mean = (0.485, 0.456, 0.406) if in_chans == 3 else (0.286,)
    std = (0.229, 0.224, 0.225) if in_chans == 3 else (0.353,)
    t, _ = train_transform("deit", 32, mean, std, in_chans)
    return transforms._rand_augment_of(t).ops


def _forced(op, magnitude: float):
    """``op`` as our recipe built it, applied every time at exactly ``magnitude`` (before
    timm's clip to the op's bound)."""
    o = copy.copy(op)
    o.prob, o.magnitude_std, o.magnitude = 1.0, 0.0, magnitude
    return o


def _force_extreme(ra, magnitude: float) -> None:
    for op in ra.ops:
        op.prob, op.magnitude_std, op.magnitude = 1.0, 0.0, magnitude


def test_recipe_is_deits_policy_with_only_posterize_capped():
    from timm.data.auto_augment import rand_augment_transform

    ours = _recipe_ops(3)
    theirs = rand_augment_transform(transforms._DEIT_AUG["auto_augment"],
                                     {"img_mean": (124, 116, 104)}).ops
    assert [op.name for op in ours] == DEIT_OPS == [op.name for op in theirs]
    for a, b in zip(ours, theirs):
        assert (a.prob, a.magnitude, a.magnitude_std) == (0.5, 9, 0.5)
        assert (b.prob, b.magnitude, b.magnitude_std) == (0.5, 9, 0.5)
        if a.name == "PosterizeIncreasing":
            assert b.magnitude_max is None and a.magnitude_max == pytest.approx(9.99)
        else:
            assert a.magnitude_max == b.magnitude_max is None, a.name


@pytest.mark.parametrize("in_chans", [3, 1])
def test_every_rand_augment_op_at_extreme_magnitudes(in_chans):
    """Every op of the recipe, at prob 1, magnitude std 0 and a magnitude at or beyond both
    ends of what N(9, 0.5) can draw (timm clips to the op's bound), on images of several
    sizes including 1x1: nothing raises, and mode and size are kept."""
    mode = "RGB" if in_chans == 3 else "L"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(_content(w, h, rng)).convert(mode)
              for w, h in ((1, 1), (5, 5), (7, 3), (37, 23), (64, 64), (3, 200))]
    images.append(Image.new(mode, (16, 16), 255 if mode == "L" else (255, 255, 255)))
    failures = []
    for op in _recipe_ops(in_chans):
        for magnitude in (LEVEL_DENOM, 1e3, 0.0, -1e3):
            for seed in range(4):  # rotate/shear/translate/enhance pick a random sign
                random.seed(seed)
                for img in images:
                    try:
                        out = _forced(op, magnitude)(img)
                    except Exception as e:  # noqa: BLE001 - report every failing op at once
                        failures.append(f"{op.name} m={magnitude} {mode} {img.size}: "
                                        f"{type(e).__name__}: {e}")
                        continue
                    if (out.mode, out.size) != (img.mode, img.size):
                        failures.append(f"{op.name} m={magnitude}: {img.mode} {img.size} -> "
                                        f"{out.mode} {out.size}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("in_chans", [3, 1])
def test_posterize_at_the_top_keeps_one_bit(in_chans):
    op = next(op for op in _recipe_ops(in_chans) if op.name == "PosterizeIncreasing")
    mode = "RGB" if in_chans == 3 else "L"
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert(mode)
    for magnitude in (LEVEL_DENOM, 1e3):
        out = np.asarray(_forced(op, magnitude)(ramp))
        assert set(np.unique(out).tolist()) == {0, 128}  # 1 bit kept, not a black image


def test_posterize_cap_changes_nothing_below_magnitude_10():
    """For every magnitude DeiT's op maps to 1..4 bits, ours gives the same image."""
    from timm.data.auto_augment import rand_augment_transform

    ours = next(op for op in _recipe_ops(1) if op.name == "PosterizeIncreasing")
    theirs = next(op for op in rand_augment_transform(transforms._DEIT_AUG["auto_augment"], {}).ops
                  if op.name == "PosterizeIncreasing")
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    for magnitude in np.arange(0.0, 10.0, 0.01):
        a = np.asarray(_forced(ours, float(magnitude))(ramp))
        b = np.asarray(_forced(theirs, float(magnitude))(ramp))
        assert np.array_equal(a, b), magnitude


def test_posterize_cap_changes_about_2_3_percent_of_applications():
    """Same random draws through DeiT's posterize op and ours: only the draws at or above
    10 differ (P(N(9, 0.5) >= 10) = 2.28 %), each from 0 bits to 1 bit. docs/augmentation.md
    measures it on 10^6 calls; here 4*10^4 calls, about 2*10^4 applications."""
    from timm.data.auto_augment import rand_augment_transform

    def bits_asked(op, n: int) -> List[int]:
        op = copy.copy(op)
        level, asked = op.level_fn, []
        op.level_fn = lambda m, h: asked.append(level(m, h)[0]) or level(m, h)
        op.aug_fn = lambda img, *a, **k: img  # record only; Pillow 13 would raise on 0 bits
        random.seed(0)
        for _ in range(n):
            op(None)
        return asked

    ours = next(op for op in _recipe_ops(3) if op.name == "PosterizeIncreasing")
    theirs = next(op for op in rand_augment_transform(transforms._DEIT_AUG["auto_augment"], {}).ops
                  if op.name == "PosterizeIncreasing")
    a, b = bits_asked(theirs, 40_000), bits_asked(ours, 40_000)
    assert len(a) == len(b) > 15_000
    changed = [(x, y) for x, y in zip(a, b) if x != y]
    assert set(changed) == {(0, 1)} and 0 not in b
    assert 0.018 < len(changed) / len(a) < 0.028, len(changed) / len(a)


def test_the_cap_fails_loudly_when_timm_moves(monkeypatch):
    from timm.data.auto_augment import RandAugment, rand_augment_ops
    from torchvision.transforms import Compose

    with pytest.raises(RuntimeError, match="RandAugment"):
        transforms._cap_posterize(Compose([]))
    no_posterize = Compose([RandAugment(rand_augment_ops(9, transforms=["Rotate", "Equalize"]))])
    with pytest.raises(RuntimeError, match="PosterizeIncreasing"):
        transforms._cap_posterize(no_posterize)
    # a cap that no longer keeps a bit (as if timm's level mapping moved) is caught at build time
    monkeypatch.setattr(transforms, "_POSTERIZE_MAX_MAGNITUDE", 10.0)
    with pytest.raises(RuntimeError, match="highest magnitude"):
        train_transform("deit", 32, (0.5,) * 3, (0.2,) * 3, 3)


# --------------------------------------------------------------------------------------------
# The command line, end to end
# --------------------------------------------------------------------------------------------

TINY_RUN = ["--model-kwargs", "depth=2", "local_up_to_layer=1", "embed_dim=16", "num_heads=2",
            "patch_size=8", "--img-size", "32", "--epochs", "1", "--batch-size", "32",
            "--warmup-epochs", "0", "--threads", "1", "--num-workers", "0", "--device", "cpu",
            "--no-report", "--no-locality"]


def test_train_cli_on_real_files(image_files, tmp_path):
    """``convit train --dataset imagefolder --data-path DIR``: the imagenet preset (DeiT's
    augmentation, repeated augmentation), one epoch of a tiny model."""
    from convit.cli import main

    root, _ = image_files
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-path", str(root), *TINY_RUN,
                 "--output", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert "preset: imagenet" in (out / "config.yaml").read_text()
    # ... and the user's next steps on that checkpoint: eval on the folder, predict on files.
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--dataset", "imagefolder",
                 "--data-path", str(root), "--json"]) == 0
    some = sorted((root / "val").rglob("*.*"))[:5]
    assert main(["predict", "--checkpoint", str(out / "model.safetensors"), "--json",
                 *map(str, some)]) == 0


def test_predict_with_a_foreign_one_channel_checkpoint(image_files, tmp_path, capsys):
    """A raw state dict of a 1-channel model (no metadata): predict falls back on the model's
    pretrained_cfg statistics, which have one channel (ImageNet's three would not fit)."""
    import json

    import convit
    from convit.cli import main

    root, _ = image_files
    model = convit.create_model("convit_digits")
    torch.save(model.state_dict(), tmp_path / "raw.pth")
    files = sorted((root / "val").rglob("*.*"))[:6]
    assert main(["predict", "--checkpoint", str(tmp_path / "raw.pth"), "--json", *map(str, files)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["image"] for d in lines] == [str(f) for f in files]
    for d in lines:
        probs = [t["prob"] for t in d["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)


def test_train_cli_on_real_files_at_the_worst_case_policy(image_files, tmp_path, monkeypatch):
    """The same run with every op at magnitude 10 (DeiT's draws reach it 2.3 % of the time):
    posterize then runs on about a quarter of the images, at the magnitude that crashed."""
    from convit.cli import main

    root, _ = image_files
    monkeypatch.setitem(transforms._DEIT_AUG, "auto_augment", "rand-m10-n4-mstd0-p1.0-inc1")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-path", str(root), *TINY_RUN,
                 "--output", str(out)]) == 0
