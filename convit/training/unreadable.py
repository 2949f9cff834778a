"""The image files a run leaves out because they cannot be read, listed in its ``skipped.tsv``.

A file is never replaced by another image (:class:`~convit.data.ImageFileDataset` returns a
sentinel the collate drops), so accuracies are over the images read; this module makes sure the
files are named.  Every process's datasets append the files they fail on to a list (DataLoader
workers are other processes, so a file is how their failures come back): rank 0 to the run
folder's ``skipped.tsv``, the other ranks to a file of their own, since their machine may not
share the folder.  At the end of the run :func:`gather` merges every process's list into
``skipped.tsv``, each file once, and warns with the count.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from ..core import distributed
from ..data import DataBundle, ImageFileDataset, add_skipped

__all__ = ["log_path", "attach", "gather"]


def log_path(skipped: Path, rank: int) -> Path:
    """Where this process appends: ``skipped`` (the run folder's ``skipped.tsv``) on rank 0,
    a temporary file of its own on the others."""
    return Path(skipped) if rank == 0 else Path(tempfile.gettempdir()) / f"convit-skipped-{os.getpid()}.tsv"


def attach(bundle: DataBundle, skipped: Path, rank: int, scanned: dict[str, str]) -> None:
    """Send the failures of the bundle's :class:`~convit.data.ImageFileDataset` splits to this
    process's list, and write ``scanned`` (the files left out so far, e.g. by the scan of the
    folder: path -> reason) into ``skipped`` (every process calls this; rank 0 writes)."""
    for ds in (bundle.train, bundle.val, bundle.test):
        if isinstance(ds, ImageFileDataset):
            ds.failed_log = log_path(skipped, rank)
    distributed.on_main(add_skipped, skipped, scanned)


def gather(mine: dict[str, str], skipped: Path, rank: int) -> dict[str, str]:
    """Every process's unreadable files (every process calls this with its own, ``mine``),
    written into ``skipped`` once each, with a warning that counts them; returns them all."""
    merged = {k: v for part in distributed.all_gather_object(mine) for k, v in part.items()}
    if rank:
        log_path(skipped, rank).unlink(missing_ok=True)
    distributed.on_main(add_skipped, skipped, merged)
    if merged and rank == 0:
        warnings.warn(
            f"{len(merged)} unreadable image file(s) were left out of this run, never replaced by other "
            f"images (accuracies are over the images read): listed in {skipped}",
            stacklevel=3,
        )
    return merged
