"""What an analysis looks at besides the model: the checkpoint's metadata, and the images
(a file given by the user, the first test images of the checkpoint's dataset, or random
inputs, in that order of preference)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import safe_open

from ..data import build_data, eval_input_size, eval_transform, read_image
from ..nn.model import ConViTConfig
from ..weights.checkpoint import read_metadata_json

__all__ = ["AnalysisInputs", "load_inputs", "read_metadata"]


def read_metadata(path: Path) -> dict:
    """Header metadata of one of our safetensors files without loading the tensors ({} else)."""
    if Path(path).suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


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
    """
    data = read_metadata_json(meta, "data", {}) or {}
    size = cfg.img_size
    in_chans = cfg.in_chans
    mean = torch.tensor(data.get("mean", [0.0] * in_chans), dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(data.get("std", [1.0] * in_chans), dtype=torch.float32).view(-1, 1, 1)

    def display(x: torch.Tensor) -> np.ndarray:
        d = x * std + mean
        if not data.get("mean"):  # unknown normalisation: stretch to [0, 1] for display
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)
        return d.clamp(0, 1).numpy()

    test_images: Optional[torch.Tensor] = None
    test_set = None
    note = ""
    dataset = data.get("dataset")
    if dataset:
        try:
            bundle = build_data(dataset, data_path=data.get("data_path"), img_size=size[0], augment="none")
            test_set = bundle.test
            n = min(max_images, len(test_set))
            test_images = torch.stack([test_set[i][0] for i in range(n)])
        except Exception as e:  # dataset not available here: fall back, and say so
            note = f"test set of {dataset!r} unavailable ({type(e).__name__}: {e})"
    if image is not None:
        if not data.get("mean"):
            raise ValueError("the checkpoint has no 'data' metadata (mean/std): cannot preprocess --image")
        native = data.get("native_size")
        t = eval_transform(size[0], data["mean"], data["std"], in_chans, native)
        x = t(
            read_image(image, "L" if in_chans == 1 else "RGB", target_size=eval_input_size(size[0], native))
        ).float()
        if tuple(x.shape[-2:]) != tuple(size):
            x = torch.nn.functional.interpolate(x[None], size=tuple(size), mode="bilinear")[0]
        if test_images is not None:
            return AnalysisInputs(
                test_images,
                x,
                display(x),
                f"image {Path(image).name}",
                f"test images of {dataset}",
                note,
                data,
                test_set,
            )
        return AnalysisInputs(
            x[None],
            x,
            display(x),
            f"image {Path(image).name}",
            f"image {Path(image).name}",
            note,
            data,
            test_set,
        )
    if test_images is not None:
        return AnalysisInputs(
            test_images,
            test_images[0],
            display(test_images[0]),
            f"first test image of {dataset}",
            f"test images of {dataset}",
            note,
            data,
            test_set,
        )
    g = torch.Generator().manual_seed(0)
    images = torch.randn(min(max_images, 8), in_chans, *size, generator=g)
    note = (note + "; " if note else "") + "random N(0,1) inputs: content attention is not meaningful"
    return AnalysisInputs(images, images[0], display(images[0]), "random input", "random inputs", note, data)
