"""Named experiment grids (what to compare), plus the paper's numbers.

A *grid* is a list of :class:`Variant` s: the models compared in one of the paper's
experiments (sample efficiency, table-3 ablation, locality strength, number of GPSA layers).
The scale a grid runs at (data, model size, recipe, fractions swept: ``convit experiment
--preset``) is a :class:`convit.core.presets.ExperimentScale` of
:data:`convit.core.presets.EXPERIMENT_SCALES`.  A variant only says how its model differs from the
scale's ConViT (or is the scale's DeiT), so every grid runs at every scale.

Sample efficiency follows the paper (Sec. 4.1): a per-class fraction ``f`` of the training
set is trained for ``epochs / f`` epochs (warm-up scaled the same way), so that every fraction
sees the same number of images; the epochs actually run are ``round(base_epochs / f)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..core.presets import ExperimentScale
from ..weights.zoo import model_spec

__all__ = [
    "Variant",
    "GRIDS",
    "PAPER_SAMPLE_EFFICIENCY",
    "PAPER_ABLATION",
    "grid_variants",
    "scale_depth",
    "epochs_for_fraction",
]


@dataclass(frozen=True)
class Variant:
    """One model of a grid.

    name: folder name and CSV key (``convit``, ``frozen-gates``, ...).
    label: human-readable name for tables and figures.
    role: ``convit`` (the scale's ConViT, with ``model_kwargs`` on top) or ``deit`` (the
        scale's DeiT baseline at matched size).
    model_kwargs: :class:`convit.nn.model.ConViTConfig` fields changed by this variant.
    baseline: the variant relative gains are computed against (DeiT, or 0 GPSA layers).
    """

    name: str
    label: str
    role: str = "convit"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False


def scale_depth(scale: ExperimentScale) -> int:
    """Number of blocks of ``scale``'s ConViT (zoo config with its ``model_kwargs`` on top)."""
    return int({**model_spec(scale.convit_model).config, **scale.model_kwargs}.get("depth", 12))


def _sample_efficiency(p: ExperimentScale) -> list[Variant]:
    return [Variant("convit", "ConViT"), Variant("deit", "DeiT", role="deit", baseline=True)]


def _ablation(p: ExperimentScale) -> list[Variant]:
    """Table 3 of the paper: each of ConViT's ingredients removed, at matched size."""
    frozen_gates = dict(train_gates=False, gate_init=0.0)
    return [
        Variant("convit", "ConViT"),
        Variant("frozen-gates", "frozen gates (lambda=0)", model_kwargs=frozen_gates),
        Variant("no-conv-init", "no conv init", model_kwargs=dict(use_local_init=False)),
        Variant(
            "neither", "frozen gates + no conv init", model_kwargs=dict(frozen_gates, use_local_init=False)
        ),
        Variant("deit", "DeiT", role="deit", baseline=True),
        Variant("frozen-conv-gpsa", "frozen conv-init GPSA", model_kwargs=dict(train_gpsa=False)),
        Variant(
            "frozen-random-gpsa",
            "frozen random GPSA",
            model_kwargs=dict(train_gpsa=False, use_local_init=False),
        ),
    ]


def _locality_strength(p: ExperimentScale) -> list[Variant]:
    """Fig. 8 (left) of the paper: alpha of the convolutional initialisation."""
    out = [
        Variant(f"alpha{a:g}", f"ConViT alpha={a:g}", model_kwargs=dict(locality_strength=a))
        for a in (0.01, 0.1, 1.0)
    ]
    return out + [Variant("deit", "DeiT", role="deit", baseline=True)]


def _gpsa_layers(p: ExperimentScale) -> list[Variant]:
    """Fig. 8 (right): the number of leading GPSA blocks, 0 (a DeiT with ConViT's qkv, no
    bias) to all.  With every block GPSA the class token would reach the head untouched, so
    that one variant pools the patch tokens (global_pool='avg'), as its label says."""
    out = []
    depth = scale_depth(p)
    for n in range(depth + 1):
        kw: dict[str, Any] = dict(local_up_to_layer=n)
        label = f"{n} GPSA"
        if n == depth:
            kw["global_pool"] = "avg"
            label += " (avg pool)"
        out.append(Variant(f"gpsa{n}", label, model_kwargs=kw, baseline=n == 0))
    return out


GRIDS = {
    "sample-efficiency": _sample_efficiency,
    "ablation": _ablation,
    "locality-strength": _locality_strength,
    "gpsa-layers": _gpsa_layers,
}


def grid_variants(grid: str, scale: ExperimentScale, only: Optional[list[str]] = None) -> list[Variant]:
    """The variants of ``grid`` at ``scale``'s size, optionally only those named in ``only``."""
    if grid not in GRIDS:
        raise ValueError(f"unknown experiment {grid!r}; known: {', '.join(GRIDS)}")
    variants = GRIDS[grid](scale)
    if only:
        names = [v.name for v in variants]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown} for {grid}; known: {', '.join(names)}")
        variants = [v for v in variants if v.name in only]
    return variants


def epochs_for_fraction(base_epochs: float, fraction: float) -> int:
    """Epochs run at ``fraction``: ``round(base_epochs / fraction)``, at least 1 (paper, Sec. 4.1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fractions must be in (0, 1], got {fraction}")
    return max(1, int(round(base_epochs / fraction)))


# ---------------------------------------------------------------------------------------------
# The paper's numbers (d'Ascoli et al. 2021), for the side-by-side in results.md
# ---------------------------------------------------------------------------------------------

#: Table 2: ImageNet top-1 of DeiT-S and ConViT-S trained on a per-class fraction f for 300/f
#: epochs: f -> (DeiT-S, ConViT-S).  Relative gains: 37%, 24%, 12%, 5%, 2%.
PAPER_SAMPLE_EFFICIENCY: dict[float, tuple[float, float]] = {
    0.05: (34.8, 47.8),
    0.1: (48.0, 59.6),
    0.3: (66.1, 73.7),
    0.5: (74.6, 78.2),
    1.0: (79.9, 81.4),
}

#: Table 3 (ConViT-S+ sized models): variant -> (top-1 full ImageNet, top-1 10% of ImageNet).
PAPER_ABLATION: dict[str, tuple[float, float]] = {
    "convit": (82.2, 59.7),
    "frozen-gates": (82.0, 57.4),
    "no-conv-init": (81.4, 56.9),
    "neither": (81.6, 54.6),
    "deit": (79.1, 47.8),
    "frozen-conv-gpsa": (78.6, 54.3),
    "frozen-random-gpsa": (73.7, 44.8),
}
