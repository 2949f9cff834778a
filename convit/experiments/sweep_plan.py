"""The runs of a sweep: which variant, fraction and seed, in which folder, with which settings.

Every run's settings state every TrainConfig field and the whole architecture (pinned from the
zoo), so a later change of a default or a named preset cannot silently change an experiment.
Seed ``k`` fixes the validation hold-out, the per-class subset and the initialisation, and is
shared by every variant, so variants are compared on the same images (paired by seed).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..core.presets import ExperimentScale, experiment_scale
from ..nn.model import DATA_DERIVED_FIELDS, ConViTConfig
from ..training.config import TrainConfig
from ..weights.zoo import model_spec
from .grids import CNN_MODEL, Variant, epochs_for_fraction, grid_variants

__all__ = ["RunSpec", "run_folder", "plan_runs"]


@dataclass
class RunSpec:
    """One training run of a sweep: which variant, fraction and seed, where, with which config."""

    grid: str
    preset: str
    variant: Variant
    fraction: float
    seed: int
    folder: Path
    overrides: dict[str, Any]  # TrainConfig fields, everything but output/resume/overwrite
    backend: str = "fit"  # "device": convit.training.fit.fit on on-device batches (the preset's backend)

    @property
    def key(self) -> str:
        return f"{self.variant.name}/f{self.fraction:g}/seed{self.seed}"


def run_folder(output: os.PathLike, variant: str, fraction: float, seed: int) -> Path:
    """``output/<variant>/f<fraction>/seed<seed>`` (fraction as ``%g``: f0.1, f1)."""
    return Path(output) / variant / f"f{fraction:g}" / f"seed{seed}"


def _pinned_architecture(model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every ConViTConfig field of ``model`` with ``kwargs`` on top (but those taken from the
    data), so a run's config.yaml states the whole architecture and a later change of the zoo's
    defaults cannot silently change an experiment (the runner then refuses to mix results)."""
    arch = {f.name: f.default for f in dataclasses.fields(ConViTConfig)}
    arch.update(model_spec(model).config)
    arch.update(kwargs)
    return {k: v for k, v in arch.items() if k not in DATA_DERIVED_FIELDS}


def _model_for(
    preset: ExperimentScale, variant: Variant, overrides: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    """The zoo name and (pinned, complete) ConViTConfig fields of ``variant`` at ``preset``'s size.

    Precedence: the zoo's config < the preset's shared sizes < its ConViT-only fields <
    ``overrides`` (the user's, for every run) < the variant's own fields (what the grid
    varies).  The DeiT baseline never takes a number of GPSA layers from ``overrides``; the CNN
    arm takes none of them (its architecture is the grid's, sized to the scale's ConViT).
    """
    overrides = dict(overrides or {})
    if variant.role == "deit":
        overrides.pop("local_up_to_layer", None)
        name = preset.deit_model
        kw = {**preset.model_kwargs, **overrides, **variant.model_kwargs}
    elif variant.role == "convit":
        name = preset.convit_model
        kw = {**preset.model_kwargs, **preset.convit_kwargs, **overrides, **variant.model_kwargs}
    elif variant.role == "cnn":  # sized and pinned by the grid; no ConViTConfig field applies
        return {"model": CNN_MODEL, "model_kwargs": dict(variant.model_kwargs)}
    else:
        raise ValueError(f"variant {variant.name}: unknown role {variant.role!r}")
    return {"model": name, "model_kwargs": _pinned_architecture(name, kw)}


def _full_recipe(train: dict[str, Any]) -> dict[str, Any]:
    """Every TrainConfig field: its default, then ``train`` on top.  With every field given, the
    trainer's named presets (which may be retuned at any time) have no effect on a sweep."""
    base = TrainConfig().to_dict()
    base.update(train)
    return base


def _checked_fractions(fractions: Sequence[float]) -> list[float]:
    out = sorted({float(f) for f in fractions})
    for f in out:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
    return out


def _run_settings(
    p: ExperimentScale,
    model: dict[str, Any],
    fraction: float,
    seed: int,
    epochs: float,
    train_overrides: Optional[dict[str, Any]],
) -> dict[str, Any]:
    """Every TrainConfig field of one run (but output, resume, overwrite): the preset's recipe,
    the model, the fraction's epochs and warm-up, the seed, then the user's overrides."""
    over = {
        **_full_recipe(p.train),
        "dataset": p.dataset,
        **model,
        "sampling_ratio": fraction,
        "seed": seed,
        "epochs": epochs,
        "scale_epochs": False,
        "warmup_epochs": min(p.base_warmup / fraction, epochs / 2),
        "eval_every": max(1, int(math.ceil(epochs / max(1, p.eval_points)))),
    }
    over.update(train_overrides or {})
    return over


def plan_runs(
    grid: str,
    preset: ExperimentScale | str,
    output: os.PathLike,
    fractions: Optional[Sequence[float]] = None,
    seeds: Optional[int] = None,
    base_epochs: Optional[float] = None,
    variants: Optional[list[str]] = None,
    train_overrides: Optional[dict[str, Any]] = None,
    model_overrides: Optional[dict[str, Any]] = None,
) -> list[RunSpec]:
    """Every run of ``grid`` at ``preset`` (an experiment scale, or its name): variants x
    fractions x seeds, in that nesting order reversed (seed-major, then fraction, then variant)
    so that an interrupted sweep already has complete comparisons for the first seed.

    fractions: default the preset's (``sample-efficiency``) or its ablation fractions (others).
    seeds: number of seeds (0..seeds-1); base_epochs: epochs at f = 1 (scaled by 1/f).
    train_overrides / model_overrides: extra TrainConfig / ConViTConfig fields for every run.
    """
    p = experiment_scale(preset) if isinstance(preset, str) else preset
    if fractions is None:
        fractions = p.fractions if grid == "sample-efficiency" else p.ablation_fractions
    fractions = _checked_fractions(fractions)
    n_seeds = p.seeds if seeds is None else int(seeds)
    if n_seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {n_seeds}")
    base = p.base_epochs if base_epochs is None else float(base_epochs)
    if not base > 0:
        raise ValueError(f"--epochs must be positive, got {base}")
    vs = grid_variants(grid, p, variants)
    specs = []
    for seed in range(n_seeds):
        for f in fractions:
            epochs = epochs_for_fraction(base, f)
            for v in vs:
                over = _run_settings(p, _model_for(p, v, model_overrides), f, seed, epochs, train_overrides)
                folder = run_folder(output, v.name, f, seed)
                specs.append(RunSpec(grid, p.name, v, f, seed, folder, over, p.backend))
    return specs
