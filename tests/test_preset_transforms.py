"""Every training preset's transforms on every real image file (conftest's ``image_files``): as
``imagefolder`` reads them (ImageFileDataset), as ``convit predict`` does
(``eval_transform(load_image(path))``), and through ``build_data("imagefolder")`` under each
preset; outputs have the preset's shape, are finite, and one-colour files normalise exactly."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image
from real_image_files import CLASSES, ImageFile, nonconstant_source

from convit.core.presets import TRAIN_PRESETS
from convit.data import ImageFileDataset, build_data, eval_transform, load_image, train_transform
from convit.training.config import build_config


@dataclass(frozen=True)
class PresetData:
    """The data settings a preset's run ends up with (what build_data returns for its dataset)."""

    dataset: str
    in_chans: int
    img_size: int
    native_size: Optional[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    augment: str  # what augment="auto" resolves to


# digits' statistics are computed from its training split; the others are convit.data's.
PRESET_DATA: dict[str, PresetData] = {
    "imagenet": PresetData(
        "imagefolder", 3, 224, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True, "deit"
    ),
    "digits": PresetData("digits", 1, 8, 8, (0.3054,), (0.3761,), False, "small"),
    "fashion-mnist": PresetData("fashion-mnist", 1, 28, 28, (0.2860,), (0.3530,), True, "small"),
    "cifar": PresetData(
        "cifar10", 3, 32, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, "small"
    ),
}

#: Every preset for ``parametrize``; imagenet's (three channels, DeiT's recipe, every file read by
#: build_data: the longest by far) in the slow tier, the other three keep the fast tier's cover.
PRESET_PARAMS = [
    pytest.param(p, marks=pytest.mark.slow) if p == "imagenet" else p for p in sorted(PRESET_DATA)
]


def test_preset_table_matches_the_presets():
    with_data = {name for name, values in TRAIN_PRESETS.items() if "dataset" in values}
    assert set(PRESET_DATA) == with_data, (
        "a preset with its own dataset was added or removed: update PRESET_DATA"
    )
    # The others (finetune) apply to whatever data the run names, with the `small` pipeline
    # exercised here under the digits, fashion-mnist and cifar presets.
    assert {TRAIN_PRESETS[n].get("augment") for n in set(TRAIN_PRESETS) - with_data} <= {"small"}
    for name, spec in PRESET_DATA.items():
        assert TRAIN_PRESETS[name]["dataset"] == spec.dataset
        assert TRAIN_PRESETS[name].get("augment", "auto") in ("auto", spec.augment)
    digits = build_data("digits")
    assert digits.mean == pytest.approx(PRESET_DATA["digits"].mean, abs=1e-4)
    assert digits.std == pytest.approx(PRESET_DATA["digits"].std, abs=1e-4)


def _expected_constant(colour: tuple[int, int, int], spec: PresetData) -> torch.Tensor:
    """The normalised value of a one-colour image, per channel."""
    px = Image.new("RGB", (1, 1), colour).convert("L" if spec.in_chans == 1 else "RGB")
    v = torch.tensor(np.asarray(px), dtype=torch.float32).reshape(-1) / 255
    return (v - torch.tensor(spec.mean)) / torch.tensor(spec.std)


def _check_output(x: torch.Tensor, spec: PresetData, size: int, where: str) -> None:
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32, where
    assert tuple(x.shape) == (spec.in_chans, size, size), (where, tuple(x.shape))
    assert torch.isfinite(x).all(), where


def _run_dataset(
    ds, files: Sequence[ImageFile], spec: PresetData, size: int, name: str, deterministic: bool
) -> None:
    """Every item of ``ds`` (ImageFileDataset over ``files``, in order): shape, dtype, finite,
    normalised; one-colour files exactly for the deterministic (eval) pipelines."""
    flat = []
    for i, f in enumerate(files):
        x, y = ds[i]
        where = f"{name}: {f.path.name}"
        _check_output(x, spec, size, where)
        if nonconstant_source(f):
            flat.append(bool(x.std() < 1e-3))
            if deterministic:
                assert not flat[-1], f"{where} is constant after the transform"
        if f.constant is not None and deterministic:
            want = _expected_constant(f.constant, spec).view(-1, 1, 1).expand_as(x)
            assert torch.allclose(x, want, atol=2e-3), (where, x.mean((1, 2)), want[:, 0, 0])
    assert not ds.failed, ds.failed
    # random crops of 5x5 images can land on one pixel; almost all must still vary
    assert sum(flat) <= 0.1 * len(flat), f"{name}: {sum(flat)} of {len(flat)} outputs are constant"


@pytest.mark.parametrize("preset", PRESET_PARAMS)
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
        t, _ = train_transform(
            augment, size, spec.mean, spec.std, spec.in_chans, None, spec.hflip
        )  # photos: native_size None
        ds = ImageFileDataset(samples, t, spec.in_chans)
        _run_dataset(ds, files, spec, size, f"{preset}/train/{augment}", augment == "none")
    for native in sorted({None, spec.native_size}, key=str):
        t = eval_transform(size, spec.mean, spec.std, spec.in_chans, native)
        _run_dataset(
            ImageFileDataset(samples, t, spec.in_chans),
            files,
            spec,
            size,
            f"{preset}/eval/native={native}",
            True,
        )
        # convit predict: the transform gets load_image's output directly (RGBA, LA, CMYK, ...)
        for f in files[::7]:
            _check_output(t(load_image(f.path)), spec, size, f"{preset}/predict {f.path.name}")


@pytest.mark.parametrize("preset", PRESET_PARAMS)
def test_build_data_imagefolder_under_every_preset(image_files, preset):
    """``convit train --preset P --dataset imagefolder --data-path DIR``: the bundle that
    ``fit`` gets, with every train and test item read."""
    root, files = image_files
    cfg = build_config({"preset": preset, "dataset": "imagefolder", "data_path": str(root)})
    b = build_data(
        cfg.dataset,
        cfg.data_path,
        img_size=cfg.img_size,
        sampling_ratio=cfg.sampling_ratio,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        augment=cfg.augment,
    )
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
            assert CLASSES[y] == Path(ds.samples[i][0]).parent.name  # the label is the file's folder
        assert not ds.failed
