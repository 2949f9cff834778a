"""Every named setting in one place: training presets, experiment scales, digits statistics.

* :data:`TRAIN_PRESETS` (``convit train --preset NAME``): the
  :class:`~convit.training.config.TrainConfig` fields that differ from its defaults (DeiT's ImageNet
  recipe) for one kind of data; each dataset names the one it runs with when none is named
  (:attr:`convit.data.registry.DatasetSpec.default_preset`).
* :data:`EXPERIMENT_SCALES` (``convit experiment GRID --preset NAME``): on which data, at which
  model size and with which recipe a grid of :mod:`convit.experiments.grids` runs
  (:class:`ExperimentScale`).  The grids say what is compared, a scale how big.
* :data:`DIGITS_DATA_CFG`: the data part of timm's ``pretrained_cfg`` for models trained on
  :func:`convit.data.load_digits`' split (the zoo's ``convit_digits`` and ``deit_digits``).

What each training knob means (and its ``--help`` text) is :class:`convit.training.config.TrainConfig`'s;
what a model field means is :class:`convit.nn.model.ConViTConfig`'s.  This module imports nothing
from convit, so every other module may read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "TRAIN_PRESETS",
    "FINETUNE_PRESET",
    "DIGITS_DATA_CFG",
    "ExperimentScale",
    "EXPERIMENT_SCALES",
    "experiment_scale",
]

# ---------------------------------------------------------------------------------------------
# Training presets (convit train --preset): only the fields that differ from TrainConfig's
# defaults (the DeiT ImageNet recipe).
# ---------------------------------------------------------------------------------------------

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # DeiT/ConViT on ImageNet (imagefolder layout): 300 epochs, batch 1024 in total over the
    # GPUs (lr = 5e-4 * 1024 / 512 = 1e-3), RandAugment + random erasing, repeated augmentation.
    "imagenet": dict(
        model="convit_tiny",
        dataset="imagefolder",
        epochs=300,
        batch_size=128,
        augment="deit",
        repeated_aug=True,
        num_workers=8,
        val_fraction=0.0,
    ),
    # The main job: the 1.3k 8x8 digit images, small enough for a laptop CPU.  Chosen on the
    # validation split (10% of train), never on the test split.  One thread: these tensors are
    # too small for intra-op parallelism to pay (docs/results.md, "Hardware and software").
    "digits": dict(
        model="convit_digits",
        dataset="digits",
        epochs=40,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=2,
        min_lr=1e-5,
        weight_decay=0.05,
        mixup=0.0,
        cutmix=0.0,
        smoothing=0.1,
        drop_path=0.0,
        val_fraction=0.1,
        num_workers=0,
        threads=1,
    ),
    # 60k 28x28 images: a ConViT-Ti on a 7x7 grid of 4x4 patches.  A sensible start, not tuned.
    "fashion-mnist": dict(
        model="convit_tiny",
        model_kwargs={"patch_size": 4},
        dataset="fashion-mnist",
        epochs=30,
        batch_size=128,
        blr=2e-3,
        warmup_epochs=3,
        mixup=0.2,
        cutmix=0.0,
        drop_path=0.1,
        val_fraction=0.1,
        num_workers=2,
    ),
    # CIFAR-10/100 from scratch: 8x8 grid of 4x4 patches, DeiT's regularisation.  Not tuned.
    "cifar": dict(
        model="convit_tiny",
        model_kwargs={"patch_size": 4},
        dataset="cifar10",
        epochs=100,
        batch_size=128,
        blr=2e-3,
        warmup_epochs=5,
        drop_path=0.1,
        val_fraction=0.1,
        num_workers=4,
    ),
    # Fine-tuning published or trained weights (--pretrained / --finetune) on a small dataset:
    # a short schedule, since the features are learnt already; layer-wise lr decay (BEiT, MAE),
    # so the new head learns at the full rate while early blocks, the most general, barely move;
    # light augmentation and no mixup/cutmix, which a few hundred images and a few epochs cannot
    # amortise.  The rate is 5e-3 x batch / 512 (3.1e-4 at batch 32) for the head.  Not tuned:
    # docs/model.md, "Fine-tuning", says why each value.  No model or dataset: those of the run.
    "finetune": dict(
        epochs=10,
        batch_size=32,
        blr=5e-3,
        warmup_epochs=1,
        min_lr=1e-6,
        weight_decay=0.05,
        layer_decay=0.75,
        drop_path=0.1,
        augment="small",
        mixup=0.0,
        cutmix=0.0,
        smoothing=0.1,
    ),
}

#: The training preset of ``--finetune`` / ``--pretrained`` runs, used when ``--preset`` is not given.
FINETUNE_PRESET = "finetune"

#: Mean/std of the pixels of the training images of convit.data's fixed digits split (what
#: ``build_data("digits")`` normalises with; tests/test_zoo.py checks they still agree), and
#: crop 1.0: digits images are used whole.  The zoo's digits models report these in their
#: ``pretrained_cfg``, so timm's data helpers prepare images as training did.
DIGITS_DATA_CFG: dict[str, Any] = dict(mean=(0.3053833842277527,), std=(0.3761212229728699,), crop_pct=1.0)


# ---------------------------------------------------------------------------------------------
# Experiment scales (convit experiment GRID --preset): at which scale a grid runs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentScale:
    """The scale a grid runs at: data, model sizes, recipe, fractions, seeds.

    A variant of a grid only says how its model differs from the scale's ConViT (or is the
    scale's DeiT), so every grid runs at every scale.

    train: :class:`convit.training.config.TrainConfig` fields shared by every run (the recipe).
    model_kwargs: size overrides shared by ConViT and DeiT (matched size).
    convit_kwargs: ConViT-only fields (its number of GPSA layers).
    base_epochs, base_warmup: epochs and warm-up at ``f = 1``; scaled by ``1 / f``.  May be
        fractional (``fashion-cpu`` sees 0.6 epochs' worth of Fashion-MNIST per run).
    eval_points: about how many times the validation split is evaluated per run.
    ablation_fractions: fractions for the non-sample-efficiency grids (paper: full and 10%).
    backend: ``fit`` (:func:`convit.training.fit.fit` on DataLoaders) or ``device`` (the same ``fit`` on
        batches made on the accelerator, :mod:`convit.data.device`, for CIFAR-10 on a GPU).
    img_size, num_classes: the dataset's image side and classes, so that an arm sized to the
        ConViT's parameter count (the CNN, :mod:`convit.experiments.grids`) is sized before any
        data is read; a scale without them has no CNN arm.
    """

    name: str
    description: str
    dataset: str
    convit_model: str
    deit_model: str
    train: dict[str, Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    convit_kwargs: dict[str, Any] = field(default_factory=dict)
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    ablation_fractions: tuple[float, ...] = (0.25, 1.0)
    seeds: int = 2
    base_epochs: float = 30.0
    base_warmup: float = 2.0
    eval_points: int = 10
    backend: str = "fit"
    budget: str = ""
    img_size: Optional[int] = None
    num_classes: Optional[int] = None


# The recipe shared by both CPU scales: DeiT's recipe without mixup/cutmix (the `digits`
# training preset the sweeps of docs/results.md were planned with), one thread (the machine is
# shared and these models are too small for intra-op parallelism to pay; docs/results.md).  The
# runner gives every TrainConfig field (defaults + these) and the whole architecture
# explicitly, so a later retuning of TRAIN_PRESETS or of the zoo's digits models (which moved
# to average pooling) does not change these sweeps; the paper's class-token pooling is pinned.
_CPU_RECIPE: dict[str, Any] = dict(
    preset="digits",
    batch_size=64,
    weight_decay=0.05,
    mixup=0.0,
    cutmix=0.0,
    smoothing=0.1,
    drop_path=0.0,
    val_fraction=0.1,
    num_workers=0,
    threads=1,
    device="cpu",
    locality=False,
    report=False,
)

EXPERIMENT_SCALES: dict[str, ExperimentScale] = {
    # 8x8 digits, 2x2 patches (4x4 grid), 48 wide, 4 blocks (3 GPSA for ConViT), chosen for
    # speed on one CPU core.  lr chosen on DeiT's validation top-1 at f = 1, seed 0 (the paper
    # likewise reuses DeiT's hyper-parameters for ConViT); the lr sweep is in docs/results.md.
    "digits-cpu": ExperimentScale(
        name="digits-cpu",
        dataset="digits",
        convit_model="convit_digits",
        deit_model="deit_digits",
        description="8x8 digits, 2x2 patches, 48-dim, 4 blocks (3 GPSA), 30 epochs at f=1",
        train=dict(_CPU_RECIPE, lr=4e-3, min_lr=1e-5),
        model_kwargs=dict(patch_size=2, embed_dim=48, num_heads=4, depth=4, mlp_ratio=2, global_pool="token"),
        convit_kwargs=dict(local_up_to_layer=3),
        fractions=(0.1, 0.25, 0.5, 1.0),
        ablation_fractions=(0.25, 1.0),
        seeds=2,
        base_epochs=30,
        base_warmup=2,
        budget="16 runs (2 models x 4 fractions x 2 seeds), each 30 epochs' worth of 1,295 images",
        img_size=8,
        num_classes=10,
    ),
    # Fashion-MNIST 28x28, 7x7 patches (4x4 grid).  A run sees 0.6 epochs' worth of the 57k
    # training images (34k images), so fractions stop at 30%: at f = 1 a run would be < 1 epoch.
    # lr chosen on DeiT's val top-1 at f = 0.3, seed 0 (the sweep is in docs/results.md).
    "fashion-cpu": ExperimentScale(
        name="fashion-cpu",
        dataset="fashion-mnist",
        convit_model="convit_digits",
        deit_model="deit_digits",
        description="Fashion-MNIST 28x28, 7x7 patches, 48-dim, 4 blocks (3 GPSA), 0.6 epochs' worth per run",
        train=dict(_CPU_RECIPE, preset="fashion-mnist", lr=4e-3, min_lr=1e-5, val_fraction=0.05),
        model_kwargs=dict(patch_size=7, embed_dim=48, num_heads=4, depth=4, mlp_ratio=2, global_pool="token"),
        convit_kwargs=dict(local_up_to_layer=3),
        fractions=(0.01, 0.03, 0.1, 0.3),
        ablation_fractions=(0.03, 0.3),
        seeds=2,
        base_epochs=0.6,
        base_warmup=0.05,
        eval_points=5,
        budget="16 runs (2 models x 4 fractions x 2 seeds), each 32k images",
        img_size=28,
        num_classes=10,
    ),
    # CIFAR-10 on one GPU: ConViT-Ti vs DeiT-Ti widths (192 = 4 x 48 = 3 x 64), 4x4 patches
    # (8x8 grid), 6 blocks (5 GPSA), bf16, batch 512, uint8 data and augmentation on the GPU.
    "cifar10-gpu": ExperimentScale(
        name="cifar10-gpu",
        dataset="cifar10",
        convit_model="convit_tiny",
        deit_model="deit_tiny",
        description="CIFAR-10 32x32, 4x4 patches, ConViT-Ti/DeiT-Ti widths, 6 blocks (5 GPSA), "
        "30 epochs at f=1, on-device data",
        train=dict(
            preset="cifar",
            batch_size=512,
            lr=1e-3,
            min_lr=1e-5,
            weight_decay=0.05,
            mixup=0.8,
            cutmix=1.0,
            smoothing=0.1,
            drop_path=0.1,
            val_fraction=0.1,
            num_workers=0,
            amp="auto",
            locality=False,
            report=False,
        ),
        model_kwargs=dict(patch_size=4, depth=6, global_pool="token"),
        convit_kwargs=dict(local_up_to_layer=5),
        fractions=(0.05, 0.1, 0.3, 0.5, 1.0),
        ablation_fractions=(0.1, 1.0),
        seeds=2,
        base_epochs=30,
        base_warmup=3,
        eval_points=10,
        backend="device",
        budget="20 runs (2 models x 5 fractions x 2 seeds), each 30 epochs' worth of 45k images",
        img_size=32,
        num_classes=10,
    ),
    # CIFAR-10 on CPU cores, each run trained to convergence on its subset (docs/results.md,
    # sec. 5): 4x4 patches (8x8 grid), 48 wide, 6 blocks (5 GPSA), small enough that a run fits
    # one core within the grid's CPU budget.  Fractions are 50 / 100 / 250 / 1000 images per
    # class of the 4,500 left after the 10% hold-out; every run sees 8 epochs' worth of 45k
    # images (f = 50/4500 runs 720 epochs).  base_epochs is checked on DeiT's validation top-1
    # at the smallest fraction (docs/results/cifar10-cpu/convergence.json).  Whole splits held
    # as uint8 in memory, batched crop + flip (convit.data.device on the CPU).
    "cifar10-cpu": ExperimentScale(
        name="cifar10-cpu",
        dataset="cifar10",
        convit_model="convit_digits",
        deit_model="deit_digits",
        description="CIFAR-10 32x32, 4x4 patches, 48-dim, 6 blocks (5 GPSA), 50-1000 images/class, "
        "8 epochs' worth of 45k images per run, in-memory batches, 1 thread per run",
        train=dict(_CPU_RECIPE, preset="cifar", lr=2e-3, min_lr=1e-5, locality=True),
        model_kwargs=dict(patch_size=4, embed_dim=48, num_heads=4, depth=6, mlp_ratio=2, global_pool="token"),
        convit_kwargs=dict(local_up_to_layer=5),
        fractions=tuple(n / 4500 for n in (50, 100, 250, 1000)),
        ablation_fractions=(100 / 4500,),
        seeds=2,
        base_epochs=8,
        base_warmup=0.5,
        eval_points=10,
        backend="device",
        budget="16 runs (2 models x 4 fractions x 2 seeds), each 8 epochs' worth of 45k images",
        img_size=32,
        num_classes=10,
    ),
}


def experiment_scale(name: str) -> ExperimentScale:
    """The experiment scale called ``name`` (``convit experiment --preset NAME``)."""
    if name not in EXPERIMENT_SCALES:
        raise ValueError(f"unknown experiment preset {name!r}; known: {', '.join(EXPERIMENT_SCALES)}")
    return EXPERIMENT_SCALES[name]
