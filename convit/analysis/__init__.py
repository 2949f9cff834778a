"""Locality analysis of ConViT / DeiT (paper sections 4-5): measures, test-time masking, figures.

* :mod:`.locality`  nonlocality (eq. 8), gates sigma(lambda) (eq. 6), attention centres and
  spans of the positional attention (eq. 7), per-query attention maps, ``locality_summary``
* :mod:`.masking`   test-time masking of the content / positional part of GPSA layers and of
  the absolute position embedding
* :mod:`.figures`   matplotlib figures (Agg canvas) from logs and summaries
* :mod:`.intervals` intervals of paired differences over seeds and test images, per size and
  pooled: the statistics of ``convit study``'s verdict and of the sweeps' paired tables
* :mod:`.report`    ``convit analyze`` and the per-run report (``write_run_report``), from
  :mod:`.inputs` (the images analysed) and :mod:`.html_report` (the self-contained HTML page)

:func:`training_hooks` is what ``convit train`` adds to :func:`convit.training.fit.fit`, which itself
knows nothing of this package: locality in the log of every evaluated epoch, and the figures
and report of the run at its end.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from string import Template
from typing import Any, Callable

import torch
import torch.nn as nn

from ..core.fileio import read_jsonl
from ..nn.model import ConViT
from ..weights.checkpoint import config_from_metadata, read_metadata, read_metadata_json
from ..weights.cnn import CNNConfig, cnn_from_metadata
from .figures import plot_training_curves
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
    "write_report",
]


def log_locality(model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """Log entries of an evaluated epoch: ``locality`` (:func:`locality_summary` of ``model`` on
    ``images``: per-layer nonlocality, gates, centres, spans) and ``locality_time_s``.  Nothing for
    a model that is not a ConViT or DeiT (the CNN arm): the measures are of attention."""
    if not isinstance(model, ConViT):
        return {}
    start = time.perf_counter()
    summary = locality_summary(model, images)
    return {"locality": summary, "locality_time_s": time.perf_counter() - start}


def training_hooks() -> dict[str, Callable[..., Any]]:
    """The hooks of ``convit train``, as keyword arguments of :func:`convit.training.fit.fit`:
    ``fit(cfg, **training_hooks())`` logs locality (``cfg.locality``) and writes figures and
    report.html into the run folder at the end (``cfg.report``).  Locality applies to the
    transformer arms only: the CNN arm's log has none, and its report only the training curves."""
    return {"on_eval": log_locality, "on_end": write_report}


def write_report(run_dir: Path) -> list[Path]:
    """:func:`write_run_report` for a ConViT's or DeiT's run; for another model (the CNN arm),
    ``figures/training_curves.png`` and a report.html that says why it has no locality sections."""
    run_dir = Path(run_dir)
    final = run_dir / "model.safetensors"
    meta = read_metadata(final) if final.is_file() else {}
    if not final.is_file() or config_from_metadata(meta) is not None:
        return write_run_report(run_dir)
    (run_dir / "figures").mkdir(exist_ok=True)
    curves = plot_training_curves(
        [(run_dir.name, read_jsonl(run_dir / "log.jsonl"))], run_dir / "figures" / "training_curves.png"
    )
    saved = cnn_from_metadata(meta)
    model = read_metadata_json(meta, "model_name") or "this model"
    if saved is not None:
        model += f" ({CNNConfig.from_dict(saved).describe()})"
    page = _PLAIN_REPORT.substitute(
        title=html.escape(f"Run report: {run_dir.resolve().name}"),
        model=html.escape(model),
        png=base64.b64encode(curves.read_bytes()).decode("ascii"),
    )
    report = run_dir / "report.html"
    report.write_text(page)
    return [curves, report]


_PLAIN_REPORT = Template("""<!DOCTYPE html>
<html><head><meta charset='utf-8'><title>$title</title>
<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}img{max-width:100%}</style>
</head><body>
<h1>$title</h1>
<p>$model is not a ConViT: the locality sections (nonlocality, gates, attention centres, spans
and maps, test-time masking) measure attention, and do not apply.</p>
<figure><img src='data:image/png;base64,$png' alt='training curves'>
<figcaption>Loss and top-1 per epoch.</figcaption></figure>
</body></html>
""")
