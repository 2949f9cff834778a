"""Locality analysis of ConViT / DeiT (paper sections 4-5): measures, test-time masking, figures.

* :mod:`.locality`  nonlocality (eq. 8), gates sigma(lambda) (eq. 6), attention centres and
  spans of the positional attention (eq. 7), per-query attention maps, ``locality_summary``
* :mod:`.masking`   test-time masking of the content / positional part of GPSA layers and of
  the absolute position embedding
* :mod:`.figures`   matplotlib figures (Agg canvas) from logs and summaries
* :mod:`.report`    ``convit analyze`` and the per-run report (``write_run_report``), from
  :mod:`.inputs` (the images analysed) and :mod:`.html_report` (the self-contained HTML page)

:func:`training_hooks` is what ``convit train`` adds to :func:`convit.training.fit.fit`, which itself
knows nothing of this package: locality in the log of every evaluated epoch, and the figures
and report of the run at its end.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn as nn

from .locality import (
    attention_grids,
    attention_nonlocality,
    centres_and_spans,
    gates,
    layer_nonlocality,
    locality_summary,
    mean_pairwise_distance,
    nonlocality,
    pairwise_distances,
    patch_attention,
    positional_centres,
    positional_spans,
)
from .masking import MASK_MODES, evaluate_masked, masked, masking_table
from .run_report import analyze, write_run_report

__all__ = [
    "attention_grids",
    "attention_nonlocality",
    "centres_and_spans",
    "gates",
    "layer_nonlocality",
    "locality_summary",
    "mean_pairwise_distance",
    "nonlocality",
    "pairwise_distances",
    "patch_attention",
    "positional_centres",
    "positional_spans",
    "MASK_MODES",
    "evaluate_masked",
    "masked",
    "masking_table",
    "write_run_report",
    "analyze",
    "log_locality",
    "training_hooks",
]


def log_locality(model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """Log entries of an evaluated epoch: ``locality`` (:func:`locality_summary` of ``model`` on
    ``images``: per-layer nonlocality, gates, centres, spans) and ``locality_time_s``."""
    start = time.perf_counter()
    summary = locality_summary(model, images)
    return {"locality": summary, "locality_time_s": time.perf_counter() - start}


def training_hooks() -> dict[str, Callable[..., Any]]:
    """The hooks of ``convit train``, as keyword arguments of :func:`convit.training.fit.fit`:
    ``fit(cfg, **training_hooks())`` logs locality (``cfg.locality``) and writes figures and
    report.html into the run folder at the end (``cfg.report``)."""
    return {"on_eval": log_locality, "on_end": write_run_report}
