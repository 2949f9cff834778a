"""A run that runs out of accelerator memory goes on with half the micro-batch.

When a training step raises ``torch.OutOfMemoryError`` (CUDA's out-of-memory error),
:func:`convit.training.fit.fit` runs the run again from its last checkpoint (``last.pt``; from
scratch, in the same folder, when it had none yet) with ``micro_batches`` doubled: each batch is
forwarded and backpropagated in twice as many slices, so the activations take about half the
memory, while the batch, the update, the learning rate, the schedule and the logged numbers stay
those of the whole batch (:mod:`convit.training.engine`).  This goes on down to micro-batches of
one image; out of memory there, the error is raised.  Only a run of one process is retried:
under torchrun the other processes could not follow, so the error is raised as it is.

A retry is printed (a study's ``train.log``), ``config.yaml`` records the new ``micro_batches``,
and every epoch trained in slices logs ``micro_batch`` (images per slice) and ``micro_batches``;
:func:`retry_note` reads the phrase back from a run folder ("retried with micro-batch 32 x 2").
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import torch

from ..core.fileio import read_jsonl
from .config import TrainConfig

__all__ = ["RunOutOfMemory", "out_of_memory_in", "with_retries", "retry_config", "micro_batch", "retry_note"]

T = TypeVar("T")


class RunOutOfMemory(RuntimeError):
    """A training step of the run in ``folder`` ran out of memory (its ``__cause__``: the
    ``torch.OutOfMemoryError``); raised by :func:`out_of_memory_in` for :func:`with_retries`."""

    def __init__(self, folder: Path, message: str) -> None:
        self.folder = Path(folder)
        super().__init__(f"out of memory in the run in {folder}: {message}")


@contextlib.contextmanager
def out_of_memory_in(folder: Path, retry: bool) -> Iterator[None]:
    """Around a run's training epoch: ``torch.OutOfMemoryError`` becomes :class:`RunOutOfMemory`
    (the run in ``folder`` may be retried) when ``retry``, else passes through unchanged.  Not
    around evaluation, which slicing the training batch would not help."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        if not retry:
            raise
        raise RunOutOfMemory(folder, str(e).splitlines()[0] if str(e) else "") from e


def micro_batch(cfg: TrainConfig) -> int:
    """Images per micro-batch of ``cfg`` (the largest slice of a full batch)."""
    return math.ceil(cfg.batch_size / cfg.micro_batches)


def retry_config(cfg: TrainConfig, folder: Path) -> Optional[TrainConfig]:
    """The config that runs ``cfg``'s run again after it ran out of memory: twice the
    micro-batches (at most one image each), resuming from ``folder``'s ``last.pt`` if it has
    one, else from scratch in ``folder``; None when a micro-batch is one image already."""
    if micro_batch(cfg) <= 1:
        return None
    last = Path(folder) / "last.pt"
    return dataclasses.replace(
        cfg,
        micro_batches=min(2 * cfg.micro_batches, cfg.batch_size),
        output=str(folder),
        resume=str(last) if last.is_file() else None,
        overwrite=True,
    )


def with_retries(
    attempt: Callable[[TrainConfig, Optional[dict[str, Any]]], T],
    cfg: TrainConfig,
    state: Optional[dict[str, Any]],
    say: Callable[[str], None] = print,
) -> T:
    """``attempt(cfg, state)``, run again with :func:`retry_config`'s config (and the state its
    ``resume`` names, read by the attempt) each time it raises :class:`RunOutOfMemory`.  Out of
    memory with one image per micro-batch, the ``torch.OutOfMemoryError`` itself is raised."""
    while True:
        try:
            return attempt(cfg, state)
        except RunOutOfMemory as e:
            retry = retry_config(cfg, e.folder)
            if retry is None:
                raise e.__cause__ or e from None
            say(_retry_line(cfg, retry, str(e)))
        # Here the error and its traceback (holding the failed attempt's model, optimizer and
        # batches) are gone: free their memory before the next attempt allocates its own.
        _release_memory()
        cfg = retry
        state = None


def _retry_line(cfg: TrainConfig, retry: TrainConfig, error: str) -> str:
    where = f"resuming from {retry.resume}" if retry.resume else "starting again (no checkpoint yet)"
    return (
        f"{error}; at micro-batch {micro_batch(cfg)} x {cfg.micro_batches}: {where} with micro-batch "
        f"{micro_batch(retry)} x {retry.micro_batches} (the same batch of {cfg.batch_size} per update)"
    )


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def retry_note(folder: Path) -> Optional[str]:
    """``"retried with micro-batch 32 x 2"`` when the last epoch logged in ``folder`` was trained
    in micro-batches (what a retry leaves; a run asked for micro-batches says so too), else None."""
    log = Path(folder) / "log.jsonl"
    entries = read_jsonl(log) if log.is_file() else []
    last = entries[-1] if entries else {}
    if last.get("micro_batches", 1) <= 1:
        return None
    return f"retried with micro-batch {last['micro_batch']} x {last['micro_batches']}"
