"""Locality analysis of ConViT / DeiT (paper sections 4-5): measures, test-time masking, figures.

* :mod:`.locality`  nonlocality (eq. 8), gates sigma(lambda) (eq. 6), attention centres and
  spans of the positional attention (eq. 7), per-query attention maps, ``locality_summary``
* :mod:`.masking`   test-time masking of the content / positional part of GPSA layers and of
  the absolute position embedding
* :mod:`.figures`   matplotlib figures (Agg canvas) from logs and summaries
* :mod:`.report`    ``convit analyze`` and the per-run HTML report (``write_run_report``)

Figures and reports import matplotlib lazily (via :mod:`.report`); the measures do not need it.
"""
from .locality import (attention_grids, attention_nonlocality, centres_and_spans, gates,
                       layer_nonlocality, locality_summary, mean_pairwise_distance, nonlocality,
                       pairwise_distances, patch_attention, positional_centres, positional_spans)
from .masking import MASK_MODES, evaluate_masked, masked, masking_table

__all__ = [
    "attention_grids", "attention_nonlocality", "centres_and_spans", "gates", "layer_nonlocality",
    "locality_summary", "mean_pairwise_distance", "nonlocality", "pairwise_distances",
    "patch_attention", "positional_centres", "positional_spans", "MASK_MODES", "evaluate_masked",
    "masked", "masking_table", "write_run_report", "analyze",
]


def __getattr__(name: str):
    # report pulls in matplotlib: import it only when asked for
    if name in ("write_run_report", "analyze"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
