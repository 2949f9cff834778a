"""The validation curves of a study's runs, for report.html: one panel per size, every run a line
(its arm's colour; a dashed line for a run still improving when it stopped), and a sentence on
how many runs had converged (:func:`convit.training.convergence.check_convergence`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from matplotlib.figure import Figure

from .plan_schema import label
from .records import StudyRecord

__all__ = ["COLOURS", "curves_figure", "convergence_summary"]

COLOURS = {"convit": "#1f77b4", "deit": "#d62728"}


def _colour(arm: str, arms: Sequence[str]) -> str:
    return COLOURS.get(arm, f"C{list(arms).index(arm) + 2 if arm in arms else 7}")


def curves_figure(records: Sequence[StudyRecord], arms: Sequence[str]) -> Optional[Figure]:
    """Validation top-1 against epoch of every run with a validation curve, one panel per size;
    None when no run has one."""
    runs = [r for r in records if r.val_curve]
    sizes = sorted({r.images_per_class for r in runs})
    if not sizes:
        return None
    fig = Figure(figsize=(min(4.2 * len(sizes), 14), 3.6))
    for i, n in enumerate(sizes):
        ax = fig.add_subplot(1, len(sizes), i + 1)
        for r in sorted((r for r in runs if r.images_per_class == n), key=lambda r: (r.variant, r.seed)):
            epochs, top1 = zip(*r.val_curve)
            style = "--" if r.converged is False else "-"
            colour = _colour(r.variant, arms)
            ax.plot(epochs, top1, style, color=colour, lw=1.2, alpha=0.8, label=label(r.variant))
        ax.set_title(f"{n} images per class", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.set_ylabel("validation top-1 (%)")
            handles, names = ax.get_legend_handles_labels()
            unique = dict(zip(names, handles))
            ax.legend(unique.values(), unique.keys(), fontsize=8)
    fig.tight_layout()
    return fig


def convergence_summary(records: Sequence[StudyRecord]) -> str:
    """How many runs were checked and how many had converged, in a sentence for the report."""
    checked = [r for r in records if r.converged is not None]
    if not checked:
        return "No run had a validation split long enough to check its convergence."
    late = [r.name for r in checked if not r.converged]
    text = (
        f"{len(checked) - len(late)} of {len(checked)} runs checked had converged: validation top-1 "
        "gained less than max(0.5 points, one standard error) over the last quarter of the run."
    )
    if late:
        text += f" Still improving when they stopped (dashed): {', '.join(late)}."
    unchecked = len(records) - len(checked)
    if unchecked:
        text += f" {unchecked} run(s) had no validation split or too few evaluations to check."
    return text
