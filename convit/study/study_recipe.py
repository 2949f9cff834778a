"""What a study's runs share: the recipe (from scratch, or the ``finetune`` preset's), and how
long a fine-tuning study's runs train.

A from-scratch study trains with DeiT's recipe without mixup and with small augmentation.  A
fine-tuning study (``--pretrained``) takes the ``finetune`` training preset
(:data:`convit.core.presets.TRAIN_PRESETS`: the learning rate from ``blr`` and the batch,
layer-wise decay, light regularisation) and its epochs: :data:`FINETUNE_EPOCHS` at the largest
size and ``E / f`` below, as a from-scratch study does, so every size takes as many steps.
Features learnt already need far fewer steps than the from-scratch study's (up to 40 epochs or
3,000 steps at the largest size), so the budget left goes to seeds instead
(:func:`finetune_sizing`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..core.presets import FINETUNE_PRESET, TRAIN_PRESETS
from ..training.config import TrainConfig
from .sizing import SEEDS_MAX, Sizing

__all__ = ["FINETUNE_EPOCHS", "study_recipe", "finetune_sizing"]

#: Epochs at the largest size of a fine-tuning study: the ``finetune`` preset's.
FINETUNE_EPOCHS = int(TRAIN_PRESETS[FINETUNE_PRESET]["epochs"])
#: The from-scratch recipe of the runs (DeiT's without mixup, small augmentation); the learning
#: rate is set from the batch.
_SCRATCH = dict(
    preset=None,
    min_lr=1e-5,
    weight_decay=0.05,
    mixup=0.0,
    cutmix=0.0,
    smoothing=0.1,
    drop_path=0.0,
)
#: TrainConfig fields each run sets itself (or the launcher does), left out of the recipe.
_PER_RUN = (
    "output",
    "resume",
    "overwrite",
    "model",
    "model_kwargs",
    "sampling_ratio",
    "seed",
    "epochs",
    "warmup_epochs",
    "eval_every",
)


def study_recipe(batch: int, threads: int, device: str, pretrained: bool = False) -> dict[str, Any]:
    """Every TrainConfig field shared by the runs: DeiT's recipe without mixup, small
    augmentation; or, ``pretrained``, the ``finetune`` preset's (its epochs left to the plan)."""
    base = TrainConfig().to_dict()
    if pretrained:
        base.update(TRAIN_PRESETS[FINETUNE_PRESET], preset=FINETUNE_PRESET)
    else:
        base.update(_SCRATCH, lr=2e-3 * batch / 64)
    base.update(
        batch_size=batch,
        val_fraction=0.0,
        augment="small",
        repeated_aug=False,
        num_workers=0,
        in_memory="auto",  # decoded once, held on the run's device when it fits (training.in_memory)
        threads=threads,
        device=device,
        amp="bf16" if device == "cuda" else "off",
        locality=True,
        report=False,
        tensorboard=False,
        model_ema=False,
        scale_epochs=False,
        download=False,
    )
    for k in _PER_RUN:
        base.pop(k, None)
    return base


#: A sizing of the study for a number of seeds (None: chosen by the budget) and a budget in
#: seconds (:func:`convit.study.sizing.size_study` with the study's data and timing).
SizeFor = Callable[[Optional[int], float], Sizing]


def _top_epochs(sizing: Sizing) -> int:
    return sizing.levels[-1].epochs


def _sizes(sizing: Sizing) -> list[int]:
    return [lv.images_per_class for lv in sizing.levels]


def _at_most(size: SizeFor, seeds: int, available_s: float, epochs: int) -> Sizing:
    """The sizing of ``seeds`` seeds whose largest size trains about ``epochs`` epochs: the one of
    the smallest budget (at most ``available_s``) that gives it at least that many."""
    full = size(seeds, available_s)
    if _top_epochs(full) <= epochs:
        return full
    low = 0.0
    high = available_s
    for _ in range(40):  # a budget known to 1e-12 of itself: the epochs are whole numbers
        mid = (low + high) / 2
        try:
            trial = size(seeds, mid)
        except ValueError:  # too small for any study
            trial = None
        enough = trial is not None and _top_epochs(trial) >= epochs and _sizes(trial) == _sizes(full)
        low, high = (low, mid) if enough else (mid, high)
    return size(seeds, high)


def finetune_sizing(size: SizeFor, chosen: Sizing, seeds: Optional[int], available_s: float) -> Sizing:
    """A fine-tuning study's sizing: ``chosen`` (the from-scratch sizing of the same study) cut
    to :data:`FINETUNE_EPOCHS` at the largest size, then, unless ``seeds`` is given, with more
    seeds (up to :data:`~convit.study.sizing.SEEDS_MAX`) while the budget still gives every run
    those epochs at the same sizes."""
    best = _at_most(size, chosen.seeds, available_s, FINETUNE_EPOCHS)
    if seeds is not None:
        return best
    for more in range(chosen.seeds + 1, SEEDS_MAX + 1):
        try:
            full = size(more, available_s)
        except ValueError:
            break
        if _top_epochs(full) < FINETUNE_EPOCHS or _sizes(full) != _sizes(chosen):
            break
        best = _at_most(size, more, available_s, FINETUNE_EPOCHS)
    return best
