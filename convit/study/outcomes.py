"""Per-image outcomes of a study run: whether the final model got each test image right.

The verdict's interval has a test-image part (how much the difference would move on another
test split of the same size, :mod:`convit.study.intervals`), which needs, for both models of
a pair, which images each got right.  After ``fit`` the run's final ``model.safetensors`` is
evaluated once more on the test split, in one process and in the split's order, and the
outcomes are written to ``test_correct.npy`` (a bool array, one entry per image read) beside
``result.json``.  This touches no training code and costs one evaluation pass.

Runs finished before this file existed have none: :func:`load_test_correct` returns None and
the verdict falls back to the seed variance alone, saying which file is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from torch.utils.data import DataLoader

from ..core.fileio import atomic_save
from ..core.runtime import resolve_amp, resolve_device
from ..data import collate_skipping
from ..training.batches import bundle_for
from ..training.config import TrainConfig
from ..training.engine import evaluate
from ..weights.zoo import load_model

__all__ = ["TEST_CORRECT_FILE", "per_image_correct", "write_test_correct", "load_test_correct"]

#: The per-image outcomes of a run's final model, in its folder.
TEST_CORRECT_FILE = "test_correct.npy"


def per_image_correct(cfg: TrainConfig, checkpoint: Path) -> np.ndarray:
    """Whether ``checkpoint`` (a run's final weights) gets each image of ``cfg``'s test split
    right (top-1), in the split's order; unreadable images are left out, as in ``fit``."""
    device = resolve_device(cfg.device)
    model, _ = load_model(checkpoint, device=str(device))
    bundle = bundle_for(cfg)
    # In order and in this process: per-sample outcomes are refused under DDP.
    batch = 2 * cfg.batch_size
    loader = DataLoader(bundle.test, batch_size=batch, shuffle=False, collate_fn=collate_skipping)
    metrics = evaluate(
        model, loader, device, resolve_amp(cfg.amp, device), cfg.channels_last, per_sample=True
    )
    return metrics["correct"].numpy().astype(bool)


def write_test_correct(cfg: TrainConfig, folder: Path) -> Path:
    """Evaluate the run in ``folder`` (its ``model.safetensors``) and write ``test_correct.npy``."""
    correct = per_image_correct(cfg, folder / "model.safetensors")
    path = folder / TEST_CORRECT_FILE

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, correct)

    return atomic_save(write, path, "per-image outcomes")


def load_test_correct(folder: Path) -> Optional[np.ndarray]:
    """The run's per-image outcomes (bool array), or None when the run has no such file."""
    path = folder / TEST_CORRECT_FILE
    if not path.is_file():
        return None
    return np.load(path).astype(bool)
