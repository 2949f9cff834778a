"""Named experiment grids (what to compare) and presets (at what scale), plus the paper's numbers.

A *grid* is a list of :class:`Variant` s: the models compared in one of the paper's
experiments (sample efficiency, table-3 ablation, locality strength, number of GPSA layers).
A *preset* (:class:`Preset`) says on which data, at which model size and with which training
recipe the grid is run, and which fractions of the training set are swept.  A variant only
says how its model differs from the preset's ConViT (or is the preset's DeiT), so every grid
runs at every scale.

Sample efficiency follows the paper (Sec. 4.1): a per-class fraction ``f`` of the training
set is trained for ``epochs / f`` epochs (warm-up scaled the same way), so that every fraction
sees the same number of images.  ``base_epochs`` may be fractional (``fashion-cpu`` sees 0.6
epochs' worth of Fashion-MNIST per run); the epochs actually run are ``round(base_epochs / f)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..zoo import model_spec

__all__ = ["Variant", "Preset", "GRIDS", "PRESETS", "PAPER_SAMPLE_EFFICIENCY", "PAPER_ABLATION",
           "grid_variants", "get_preset", "epochs_for_fraction"]


@dataclass(frozen=True)
class Variant:
    """One model of a grid.

    name: folder name and CSV key (``convit``, ``frozen-gates``, ...).
    label: human-readable name for tables and figures.
    role: ``convit`` (the preset's ConViT, with ``model_kwargs`` on top) or ``deit`` (the
        preset's DeiT baseline at matched size).
    model_kwargs: :class:`convit.model.ConViTConfig` fields changed by this variant.
    baseline: the variant relative gains are computed against (DeiT, or 0 GPSA layers).
    """

    name: str
    label: str
    role: str = "convit"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    baseline: bool = False


@dataclass(frozen=True)
class Preset:
    """The scale a grid runs at: data, model sizes, recipe, fractions, seeds.

    train: :class:`convit.config.TrainConfig` fields shared by every run (the recipe).
    model_kwargs: size overrides shared by ConViT and DeiT (matched size).
    convit_kwargs: ConViT-only fields (its number of GPSA layers).
    base_epochs, base_warmup: epochs and warm-up at ``f = 1``; scaled by ``1 / f``.
    eval_points: about how many times the validation split is evaluated per run.
    ablation_fractions: fractions for the non-sample-efficiency grids (paper: full and 10%).
    backend: ``fit`` (:func:`convit.train.fit` on DataLoaders) or ``device`` (the same ``fit`` on
        batches made on the accelerator, :mod:`convit.data.device`, for CIFAR-10 on a GPU).
    """

    name: str
    description: str
    dataset: str
    convit_model: str
    deit_model: str
    train: Dict[str, Any]
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    convit_kwargs: Dict[str, Any] = field(default_factory=dict)
    fractions: Tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    ablation_fractions: Tuple[float, ...] = (0.25, 1.0)
    seeds: int = 2
    base_epochs: float = 30.0
    base_warmup: float = 2.0
    eval_points: int = 10
    backend: str = "fit"
    budget: str = ""

    @property
    def depth(self) -> int:
        """Number of blocks of the preset's ConViT (zoo config with ``model_kwargs`` on top)."""
        return int({**model_spec(self.convit_model).config, **self.model_kwargs}.get("depth", 12))


# The recipe shared by both CPU presets: DeiT's recipe without mixup/cutmix (as the `digits`
# preset of convit.config had it on 2026-11-22), one thread (the 2-core machine is shared; 2
# threads were 2-4x slower under load for these ~80k-parameter models, measured).  The runner
# gives every TrainConfig field (defaults + these) and the whole architecture explicitly, so a
# later retuning of convit.config's presets or of the zoo's digits models (which moved to
# average pooling) does not change these sweeps; the paper's class-token pooling is pinned.
_CPU_RECIPE: Dict[str, Any] = dict(preset="digits", batch_size=64, weight_decay=0.05, mixup=0.0,
                                   cutmix=0.0, smoothing=0.1, drop_path=0.0, val_fraction=0.1,
                                   num_workers=0, threads=1, device="cpu", locality=False,
                                   report=False)

PRESETS: Dict[str, Preset] = {
    # 8x8 digits, 2x2 patches (4x4 grid), 48 wide, 4 blocks (3 GPSA for ConViT).  Chosen for
    # speed (~0.9k img/s on one loaded core).  lr chosen on DeiT's validation top-1 at f = 1,
    # seed 0 (the paper likewise reuses DeiT's hyper-parameters for ConViT): lr 1e-3 / 2e-3 /
    # 4e-3 / 6e-3 / 8e-3 gave val 59.9 / 79.6 / 85.2 / 76.8 / 71.8%.  16 runs of ~70 s.
    "digits-cpu": Preset(
        name="digits-cpu", dataset="digits", convit_model="convit_digits", deit_model="deit_digits",
        description="8x8 digits, 2x2 patches, 48-dim, 4 blocks (3 GPSA), 30 epochs at f=1",
        train=dict(_CPU_RECIPE, lr=4e-3, min_lr=1e-5),
        model_kwargs=dict(patch_size=2, embed_dim=48, num_heads=4, depth=4, mlp_ratio=2, global_pool="token"),
        convit_kwargs=dict(local_up_to_layer=3),
        fractions=(0.1, 0.25, 0.5, 1.0), ablation_fractions=(0.25, 1.0), seeds=2,
        base_epochs=30, base_warmup=2,
        budget="16 runs (2 models x 4 fractions x 2 seeds), each 30 epochs' worth of 1,295 images"),
    # Fashion-MNIST 28x28, 7x7 patches (4x4 grid).  A run sees 0.6 epochs' worth of the 57k
    # training images (34k images), so fractions stop at 30%: at f = 1 a run would be < 1 epoch.
    # lr chosen on DeiT's val top-1 at f = 0.3, seed 0: 1e-3 / 2e-3 / 4e-3 -> 53.8 / 63.2 / 65.6%.
    "fashion-cpu": Preset(
        name="fashion-cpu", dataset="fashion-mnist", convit_model="convit_digits", deit_model="deit_digits",
        description="Fashion-MNIST 28x28, 7x7 patches, 48-dim, 4 blocks (3 GPSA), 0.6 epochs' worth per run",
        train=dict(_CPU_RECIPE, preset="fashion-mnist", lr=4e-3, min_lr=1e-5, val_fraction=0.05),
        model_kwargs=dict(patch_size=7, embed_dim=48, num_heads=4, depth=4, mlp_ratio=2, global_pool="token"),
        convit_kwargs=dict(local_up_to_layer=3),
        fractions=(0.01, 0.03, 0.1, 0.3), ablation_fractions=(0.03, 0.3), seeds=2,
        base_epochs=0.6, base_warmup=0.05, eval_points=5,
        budget="16 runs (2 models x 4 fractions x 2 seeds), each 32k images"),
    # CIFAR-10 on one GPU: ConViT-Ti vs DeiT-Ti widths (192 = 4 x 48 = 3 x 64), 4x4 patches
    # (8x8 grid), 6 blocks (5 GPSA), bf16, batch 512, uint8 data and augmentation on the GPU.
    "cifar10-gpu": Preset(
        name="cifar10-gpu", dataset="cifar10", convit_model="convit_tiny", deit_model="deit_tiny",
        description="CIFAR-10 32x32, 4x4 patches, ConViT-Ti/DeiT-Ti widths, 6 blocks (5 GPSA), "
                    "30 epochs at f=1, on-device data",
        train=dict(preset="cifar", batch_size=512, lr=1e-3, min_lr=1e-5, weight_decay=0.05,
                   mixup=0.8, cutmix=1.0, smoothing=0.1, drop_path=0.1, val_fraction=0.1,
                   num_workers=0, amp="auto", locality=False, report=False),
        model_kwargs=dict(patch_size=4, depth=6, global_pool="token"),
        convit_kwargs=dict(local_up_to_layer=5),
        fractions=(0.05, 0.1, 0.3, 0.5, 1.0), ablation_fractions=(0.1, 1.0), seeds=2,
        base_epochs=30, base_warmup=3, eval_points=10, backend="device",
        budget="20 runs (2 models x 5 fractions x 2 seeds), each 30 epochs' worth of 45k images"),
}


def _sample_efficiency(p: Preset) -> List[Variant]:
    return [Variant("convit", "ConViT"), Variant("deit", "DeiT", role="deit", baseline=True)]


def _ablation(p: Preset) -> List[Variant]:
    """Table 3 of the paper: each of ConViT's ingredients removed, at matched size."""
    frozen_gates = dict(train_gates=False, gate_init=0.0)
    return [
        Variant("convit", "ConViT"),
        Variant("frozen-gates", "frozen gates (lambda=0)", model_kwargs=frozen_gates),
        Variant("no-conv-init", "no conv init", model_kwargs=dict(use_local_init=False)),
        Variant("neither", "frozen gates + no conv init",
                model_kwargs=dict(frozen_gates, use_local_init=False)),
        Variant("deit", "DeiT", role="deit", baseline=True),
        Variant("frozen-conv-gpsa", "frozen conv-init GPSA", model_kwargs=dict(train_gpsa=False)),
        Variant("frozen-random-gpsa", "frozen random GPSA",
                model_kwargs=dict(train_gpsa=False, use_local_init=False)),
    ]


def _locality_strength(p: Preset) -> List[Variant]:
    """Fig. 8 (left) of the paper: alpha of the convolutional initialisation."""
    out = [Variant(f"alpha{a:g}", f"ConViT alpha={a:g}", model_kwargs=dict(locality_strength=a))
           for a in (0.01, 0.1, 1.0)]
    return out + [Variant("deit", "DeiT", role="deit", baseline=True)]


def _gpsa_layers(p: Preset) -> List[Variant]:
    """Fig. 8 (right): the number of leading GPSA blocks, 0 (a DeiT with ConViT's qkv, no
    bias) to all.  With every block GPSA the class token would reach the head untouched, so
    that one variant pools the patch tokens (global_pool='avg'), as its label says."""
    out = []
    for n in range(p.depth + 1):
        kw: Dict[str, Any] = dict(local_up_to_layer=n)
        label = f"{n} GPSA"
        if n == p.depth:
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


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown experiment preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def grid_variants(grid: str, preset: Preset, only: Optional[List[str]] = None) -> List[Variant]:
    """The variants of ``grid`` at ``preset``'s size, optionally only those named in ``only``."""
    if grid not in GRIDS:
        raise ValueError(f"unknown experiment {grid!r}; known: {', '.join(GRIDS)}")
    variants = GRIDS[grid](preset)
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
PAPER_SAMPLE_EFFICIENCY: Dict[float, Tuple[float, float]] = {
    0.05: (34.8, 47.8), 0.1: (48.0, 59.6), 0.3: (66.1, 73.7), 0.5: (74.6, 78.2), 1.0: (79.9, 81.4),
}

#: Table 3 (ConViT-S+ sized models): variant -> (top-1 full ImageNet, top-1 10% of ImageNet).
PAPER_ABLATION: Dict[str, Tuple[float, float]] = {
    "convit": (82.2, 59.7), "frozen-gates": (82.0, 57.4), "no-conv-init": (81.4, 56.9),
    "neither": (81.6, 54.6), "deit": (79.1, 47.8), "frozen-conv-gpsa": (78.6, 54.3),
    "frozen-random-gpsa": (73.7, 44.8),
}
