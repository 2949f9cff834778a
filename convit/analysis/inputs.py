"""What an analysis looks at besides the model: the images (a file given by the user, the
first test images of the checkpoint's dataset, or random inputs, in that order of preference),
chosen and normalised by the checkpoint's metadata.  The checkpoint itself is read by the
weights layer (``read_metadata`` is :func:`convit.weights.checkpoint.read_metadata`, re-exported
for :mod:`convit.analysis.run_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data import build_data, eval_input_size, eval_transform, read_image
from ..nn.model import ConViTConfig
from ..weights.checkpoint import read_metadata, read_metadata_json

__all__ = ["AnalysisInputs", "load_inputs", "read_metadata"]


@dataclass
class AnalysisInputs:
    """What the analysis needs besides the model: images (normalised for the model), one image
    to draw attention maps on (normalised, and in [0, 1] for display) and where they came from."""

    images: torch.Tensor  # [B, C, H, W] for the locality measures
    image: torch.Tensor  # [C, H, W] for the attention maps
    display: np.ndarray  # [C, H, W] in [0, 1]
    source: str  # where ``image`` comes from
    images_source: str = ""  # where ``images`` come from
    note: str = ""
    data: dict = field(default_factory=dict)
    test_set: Optional[torch.utils.data.Dataset] = None  # the dataset's test split, if loaded


def load_inputs(
    cfg: ConViTConfig, meta: dict, image: Optional[Path] = None, max_images: int = 64
) -> AnalysisInputs:
    """Images for the analysis, in this order of preference:

    1. ``image`` (a file), preprocessed with ``convit.data.eval_transform`` and the checkpoint's
       ``data`` metadata (img_size, mean, std, in_chans); the locality measures then use it too
       unless the dataset's test images can be loaded;
    2. the first ``max_images`` test images of the dataset the metadata names (if available);
    3. random normal inputs, with a note saying so.

    ``meta`` is the checkpoint's metadata (:func:`convit.weights.checkpoint.read_metadata`).
    """
    data = read_metadata_json(meta, "data", {}) or {}
    display = _Display(data, cfg.in_chans)
    tests = _test_images(data, cfg.img_size[0], max_images)
    dataset = data.get("dataset")
    if image is not None:
        x = _read_image(image, data, cfg)
        name = f"image {Path(image).name}"
        if tests.images is not None:
            images = tests.images
            images_source = f"test images of {dataset}"
        else:
            images = x[None]
            images_source = name
        return AnalysisInputs(images, x, display(x), name, images_source, tests.note, data, tests.test_set)
    if tests.images is not None:
        first = tests.images[0]
        return AnalysisInputs(
            tests.images,
            first,
            display(first),
            f"first test image of {dataset}",
            f"test images of {dataset}",
            tests.note,
            data,
            tests.test_set,
        )
    g = torch.Generator().manual_seed(0)
    images = torch.randn(min(max_images, 8), cfg.in_chans, *cfg.img_size, generator=g)
    note = (
        tests.note + "; " if tests.note else ""
    ) + "random N(0,1) inputs: content attention is not meaningful"
    return AnalysisInputs(images, images[0], display(images[0]), "random input", "random inputs", note, data)


class _Display:
    """Normalised images back to [0, 1] for display, with the data's statistics (stretched to
    [0, 1] when they are unknown)."""

    def __init__(self, data: dict, in_chans: int) -> None:
        self.known = bool(data.get("mean"))
        self.mean = torch.tensor(data.get("mean", [0.0] * in_chans), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(data.get("std", [1.0] * in_chans), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        d = x * self.std + self.mean
        if not self.known:
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)
        return d.clamp(0, 1).numpy()


@dataclass
class _TestImages:
    """The first test images of the checkpoint's dataset, or why there are none."""

    images: Optional[torch.Tensor] = None
    test_set: Optional[torch.utils.data.Dataset] = None
    note: str = ""


def _test_images(data: dict, size: int, max_images: int) -> _TestImages:
    """Up to ``max_images`` test images of the dataset ``data`` names, if it can be loaded here."""
    dataset = data.get("dataset")
    if not dataset:
        return _TestImages()
    test_set = None
    try:
        test_set = build_data(dataset, data_path=data.get("data_path"), img_size=size, augment="none").test
        n = min(max_images, len(test_set))
        return _TestImages(torch.stack([test_set[i][0] for i in range(n)]), test_set)
    except Exception as e:  # dataset not available here: fall back, and say so
        return _TestImages(None, test_set, f"test set of {dataset!r} unavailable ({type(e).__name__}: {e})")


def _read_image(image: Path, data: dict, cfg: ConViTConfig) -> torch.Tensor:
    """``image`` preprocessed as in evaluation, at the model's input size, [C, H, W]."""
    if not data.get("mean"):
        raise ValueError("the checkpoint has no 'data' metadata (mean/std): cannot preprocess --image")
    size = cfg.img_size
    in_chans = cfg.in_chans
    native = data.get("native_size")
    t = eval_transform(size[0], data["mean"], data["std"], in_chans, native)
    x = t(
        read_image(image, "L" if in_chans == 1 else "RGB", target_size=eval_input_size(size[0], native))
    ).float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x[None], size=tuple(size), mode="bilinear")[0]
    return x
