"""What every dataset reader returns (:class:`Source`), and helpers the readers share.

A reader (``digits``, ``fashion_mnist``, ``cifar``, ``imagefolder``; each named by its entry in
:mod:`.registry`) only loads a dataset's own train and test splits and says how to treat them;
the hold-out, the subsampling and the transforms are applied afterwards, identically for every
dataset, by :func:`convit.data.build_data`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["Source", "nhwc_to_tensor", "cache_dir"]


@dataclass
class Source:
    """A dataset's train and test splits before hold-out, subsampling and transforms.

    ``*_images`` is a tensor [N, C, H, W] for in-memory datasets or a list of file paths.
    ``native_size`` is the stored size of fixed-size datasets (``None`` for photos),
    ``default_augment`` what ``augment="auto"`` means (whether mirroring is valid is the
    dataset's :attr:`~convit.data.registry.DatasetSpec.hflip`); ``train_skipped`` /
    ``test_skipped`` the unreadable files left out of each split (path -> reason), ``skipped``
    all of them.  ``files``: the data files the loader read, for a run's provenance (empty for
    image folders, whose files are many).
    """

    train_images: Union[torch.Tensor, list[str]]
    train_labels: np.ndarray
    test_images: Union[torch.Tensor, list[str]]
    test_labels: np.ndarray
    class_names: list[str]
    in_chans: int
    native_size: Optional[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_augment: str
    train_skipped: dict[str, str] = field(default_factory=dict)
    test_skipped: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()  # the data files read (a run's provenance hashes them); () for folders

    @property
    def skipped(self) -> list[str]:
        return [*self.train_skipped, *self.test_skipped]


def nhwc_to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W(, C)] array -> [N, C, H, W] tensor view (no copy)."""
    if x.ndim == 3:
        x = x[..., None]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def cache_dir() -> Path:
    """Where decoded and downloaded datasets go: ``$CONVIT_CACHE``, else
    ``$XDG_CACHE_HOME/convit`` (default ``~/.cache/convit``)."""
    if os.environ.get("CONVIT_CACHE"):
        return Path(os.environ["CONVIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convit"
