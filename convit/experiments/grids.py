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

import torch

from ..core.presets import ExperimentScale
from ..data.registry import dataset_spec
from ..nn.model import count_params
from ..weights.cnn import cnn_for
from ..weights.zoo import create_model, model_spec

__all__ = [
    "Variant",
    "CNN_MODEL",
    "GRIDS",
    "PAPER_SAMPLE_EFFICIENCY",
    "PAPER_ABLATION",
    "grid_variants",
    "scale_depth",
    "convit_params",
    "cnn_variant",
    "epochs_for_fraction",
]

#: The zoo name of the CNN arm (:mod:`convit.weights.cnn`).
CNN_MODEL = "resnet"


@dataclass(frozen=True)
class Variant:
    """One model of a grid.

    name: folder name and CSV key (``convit``, ``frozen-gates``, ...).
    label: human-readable name for tables and figures.
    role: ``convit`` (the scale's ConViT, with ``model_kwargs`` on top), ``deit`` (the
        scale's DeiT baseline at matched size) or ``cnn`` (the CNN arm, :data:`CNN_MODEL`, sized
        to the scale's ConViT: :func:`cnn_variant`).
    model_kwargs: :class:`convit.nn.model.ConViTConfig` fields changed by this variant (the CNN
        arm: every field of its architecture but those taken from the data).
    baseline: the variant relative gains are computed against (DeiT, or 0 GPSA layers).
    optional: run only when named (``--variants``), so that a grid's default sweep, and the
        folders it already filled, stay as they were.
    params: the parameter count of a model the grid sizes itself (the CNN arm), for ``--dry-run``.
    """

    name: str
    label: str
    role: str = "convit"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    optional: bool = False
    params: Optional[int] = None


def scale_depth(scale: ExperimentScale) -> int:
    """Number of blocks of ``scale``'s ConViT (zoo config with its ``model_kwargs`` on top)."""
    return int({**model_spec(scale.convit_model).config, **scale.model_kwargs}.get("depth", 12))


def convit_params(scale: ExperimentScale) -> int:
    """Parameters of ``scale``'s ConViT on its data (the scale's image size and classes, the
    dataset's channels), counted on a model built on the meta device (nothing allocated, no
    random numbers drawn)."""
    kwargs = {**scale.model_kwargs, **scale.convit_kwargs}
    data = dict(img_size=scale.img_size, in_chans=dataset_spec(scale.dataset).in_chans)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = create_model(scale.convit_model, **kwargs, **data, num_classes=scale.num_classes)
    return count_params(model)


def cnn_variant(scale: ExperimentScale) -> Optional[Variant]:
    """The CNN arm at ``scale``: timm's ResNet with the parameter count of the scale's ConViT
    (within 15 %: :func:`convit.weights.cnn.cnn_for`), its architecture pinned; trained with the
    scale's data and recipe, on request (``--variants resnet``).  None for a scale that does not
    say its image size and classes."""
    if scale.img_size is None or scale.num_classes is None:
        return None
    in_chans = dataset_spec(scale.dataset).in_chans
    cfg, params = cnn_for(convit_params(scale), scale.img_size, in_chans, scale.num_classes)
    pinned = dict(widths=list(cfg.widths), layers=list(cfg.layers), small_stem=cfg.small_stem)
    return Variant("resnet", "ResNet", role="cnn", model_kwargs=pinned, optional=True, params=params)


def _sample_efficiency(p: ExperimentScale) -> list[Variant]:
    """The paper's Table 2 (ConViT against DeiT), and the CNN arm on request."""
    cnn = cnn_variant(p)
    return [Variant("convit", "ConViT"), Variant("deit", "DeiT", role="deit", baseline=True)] + (
        [cnn] if cnn is not None else []
    )


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
    """The variants of ``grid`` at ``scale``'s size: those named in ``only``, else all but the
    optional ones (the CNN arm)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown experiment {grid!r}; known: {', '.join(GRIDS)}")
    variants = GRIDS[grid](scale)
    if not only:
        return [v for v in variants if not v.optional]
    names = [v.name for v in variants]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown} for {grid}; known: {', '.join(names)}")
    return [v for v in variants if v.name in only]


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
