"""scikit-learn's 8x8 handwritten digits: bundled with scikit-learn, so nothing to download."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import sklearn.datasets
import torch
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split

from .sources import Source

__all__ = ["load_digits"]


def load_digits(data_path: Optional[str] = None, download: bool = False) -> Source:
    """scikit-learn's digits with a fixed 80/20 stratified split (random_state=0, any seed):
    1,437 train / 360 test images.  Bundled with scikit-learn: ``data_path`` and ``download``
    (a registry loader's arguments) are not used.

    Pixels (0..16) are scaled to [0, 1]; mean/std are those of the 1,437 training images'
    pixels, so they do not depend on the hold-out or the sampling ratio.
    """
    d = _sklearn_digits()
    images = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    tr, te = np.sort(tr), np.sort(te)
    train = images[tr]
    return Source(
        train,
        labels[tr],
        images[te],
        labels[te],
        class_names=[str(int(c)) for c in d.target_names],
        in_chans=1,
        native_size=8,
        mean=(float(train.mean()),),
        std=(float(train.std()),),
        default_augment="small",
        files=_bundled_file(),
    )


def _bundled_file() -> tuple[str, ...]:
    """scikit-learn's file of the digits (``digits.csv.gz``), for a run's provenance."""
    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return (str(path),) if path.is_file() else ()
