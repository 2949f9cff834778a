"""Per-image outcomes of a study run: whether the final model got each test image right.

The verdict's interval has a test-image part (how much the difference would move on another
test split of the same size, :mod:`convit.analysis.intervals`), which needs, for both models of
a pair, which images each got right.  ``fit`` writes them at its final test evaluation, in
one process and in the split's order: ``test_correct.npy`` (a bool array, one entry per image
read) in the run folder.  Only a run that had nothing left to train when it was resumed and
has no such file (it stopped between its last epoch and its result) is evaluated again here,
from its final ``model.safetensors``.

Runs finished before this file existed have none: :func:`load_test_correct` returns None and
the verdict falls back to the seed variance alone, saying which file is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from torch.utils.data import DataLoader

from ..core.runtime import resolve_amp, resolve_device
from ..data import collate_skipping
from ..training.batches import bundle_for
from ..training.config import TrainConfig
from ..training.engine import evaluate
from ..training.run_folder import TEST_CORRECT_FILE, save_test_correct
from ..weights.zoo import load_model

__all__ = ["TEST_CORRECT_FILE", "per_image_correct", "write_test_correct", "load_test_correct"]


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
    """``test_correct.npy`` of the run in ``folder``: the one ``fit`` wrote, else evaluated now
    from its ``model.safetensors``."""
    path = folder / TEST_CORRECT_FILE
    if path.is_file():
        return path
    return save_test_correct(per_image_correct(cfg, folder / "model.safetensors"), folder)


def load_test_correct(folder: Path) -> Optional[np.ndarray]:
    """The run's per-image outcomes (bool array), or None when the run has no such file."""
    path = folder / TEST_CORRECT_FILE
    if not path.is_file():
        return None
    return np.load(path).astype(bool)
