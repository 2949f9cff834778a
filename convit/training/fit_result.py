"""What :func:`convit.training.fit.fit` returns: :class:`FitResult`, the summary of one run.

A module of its own, free of torch, so that what reads results (the experiment runner, the
study, printing) can name the type without loading the trainer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["FitResult"]


@dataclass(frozen=True)
class FitResult:
    """The summary of a finished run: its final and best metrics, its size and the files it wrote.

    Accuracies are percentages; metrics a run did not measure are None (``val_*`` without a
    validation split, ``best_*`` before any validated epoch).
    """

    output: str  # the run folder
    epochs: int  # epochs trained (a resumed run with nothing left to train: those it had)
    time_s: float  # wall time of the fit call
    skipped: int  # unreadable image files left out of the run (never replaced by others)
    skipped_list: Optional[str]  # skipped.tsv, listing them (None when there are none)
    test_top1: Optional[float]  # of the final model
    test_top5: Optional[float]
    test_loss: Optional[float]
    val_top1: Optional[float]  # of the final model
    best_val_top1: Optional[float]  # the best validated epoch's (best.safetensors)
    best_epoch: Optional[int]
    lr: float  # the peak learning rate (after scaling by the global batch)
    world_size: int  # processes
    train_images: int  # images of the training split (after --sampling-ratio)
    checkpoint: str  # model.safetensors: the final weights
    best: str  # best.safetensors: the weights of the best validation top-1
    last: str  # last.pt: the training state to resume from
    log: str  # log.jsonl
    config: str  # config.yaml
    figures: str  # the figures folder (written by the report hook)
    report: Optional[str]  # report.html, when the report hook ran

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, in their order (for JSON and printing)."""
        return dataclasses.asdict(self)
