"""The arms of a study on its input: which models, at which resolution and patch size.

By default a study compares a small ConViT and DeiT of matched size (:data:`MODELS`,
:data:`SHARED_ARCH`: same width, depth and heads) and the CNN arm, at a resolution the budget
chooses (:func:`choose_resolution`: a grid of about 8x8); ``--models`` names zoo models
instead (:mod:`convit.study.arms` checks and sizes them) and ``--img-size`` the resolution.
A fine-tuning study's arms are published weights (:mod:`convit.study.finetune_arms`).
"""

from __future__ import annotations

from typing import Any

from ..nn.model import DATA_DERIVED_FIELDS
from ..weights.zoo import config_of
from .arms import (
    CNN_ARM,
    Layout,
    arm_gmacs,
    check_models,
    choose_patch,
    cnn_arch,
    differences,
    explicit_layout,
    transformer_params,
)
from .finetune_arms import pretrained_layout
from .inspect import DataSummary
from .plan_schema import Arm, PlanRequest
from .timing import Timing

__all__ = ["MODELS", "SHARED_ARCH", "choose_resolution", "study_layout", "add_cnn", "plan_arms"]

#: The arms compared: zoo name, and the fields only that arm has (ConViT: 3 GPSA blocks of 4).
MODELS = {
    "convit": ("convit_digits", {"local_up_to_layer": 3}),
    "deit": ("deit_digits", {"local_up_to_layer": 0}),
}
SHARED_ARCH = dict(embed_dim=48, num_heads=4, depth=4, mlp_ratio=2.0)


def choose_resolution(size: tuple[int, int], budget_s: float, native: bool) -> tuple[int, int]:
    """(resolution, patch size): small for small budgets, never above the images' own size;
    the patch size makes a grid of about 8x8."""
    cap = 32 if budget_s < 20 * 60 else 48 if budget_s < 90 * 60 else 64
    side = min(size)
    res = side if native or side <= cap else cap
    patch = max(1, round(res / 8))
    return max(1, res // patch) * patch, patch


def default_arch(name: str, extra: dict[str, Any], patch: int, res: int) -> dict[str, Any]:
    """Every ConViTConfig field of zoo model ``name`` with the study's sizes on top (those taken
    from the data left out), so the plan states the whole architecture."""
    cfg = config_of(name, **SHARED_ARCH, patch_size=patch, img_size=res, **extra)
    return {
        "model": name,
        "model_kwargs": {k: v for k, v in cfg.to_dict().items() if k not in DATA_DERIVED_FIELDS},
    }


def default_layout(summary: DataSummary, request: PlanRequest) -> Layout:
    """Today's small pair (:data:`MODELS`, :data:`SHARED_ARCH`) and the CNN arm, at the
    budget's resolution or ``--img-size``."""
    if request.img_size is None:
        res, patch = choose_resolution(summary.size, request.budget_s, summary.kind == "builtin")
    else:
        res = request.img_size
        patch = choose_patch(res, max(1, round(res / 8)))
    archs = {v: default_arch(name, extra, patch, res) for v, (name, extra) in MODELS.items()}
    return Layout(res, patch, archs, True, [])


def study_layout(summary: DataSummary, request: PlanRequest) -> Layout:
    """The transformer arms of ``request`` on ``summary``'s images (a ValueError for an
    ``--img-size`` larger than the images); a fine-tuning study's arms with their weights, which
    may be fine-tuned above the images' own size (:func:`convit.study.finetune_arms.pretrained_layout`)."""
    if request.pretrained:
        return pretrained_layout(summary, request)
    if request.img_size is not None and request.img_size > min(summary.size):
        h, w = summary.size
        raise ValueError(f"--img-size {request.img_size} is larger than the images ({h}x{w} px)")
    if not request.models:
        return default_layout(summary, request)
    res = request.img_size or choose_resolution(summary.size, request.budget_s, summary.kind == "builtin")[0]
    return explicit_layout(check_models(request.models), res)


def add_cnn(layout: Layout, shape: tuple[int, int], optional: bool) -> None:
    """The CNN arm sized to the ConViT's parameters on the study's data (``shape``: channels,
    classes); left out with a note when none is close enough and the arm is ``optional``."""
    if not layout.cnn:
        return
    target = transformer_params(layout.archs["convit"], layout.resolution, *shape)
    try:
        layout.archs[CNN_ARM] = cnn_arch(target, layout.resolution, *shape)
    except ValueError as e:
        if not optional:
            raise
        layout.notes.append(f"the CNN arm ({CNN_ARM}) was left out: {e}")


def plan_arms(layout: Layout, timing: Timing, shape: tuple[int, int]) -> tuple[list[Arm], list[str]]:
    """The plan's arms (those timed), with their GMACs, and a note for each arm that differs
    from ConViT by more than :data:`convit.study.arms.DIFFER`."""
    arms = [
        Arm(
            v,
            a["model"],
            a["model_kwargs"],
            timing.params[v],
            arm_gmacs(a, layout.resolution, *shape),
            layout.weights.get(v),
        )
        for v, a in layout.archs.items()
        if v in timing.train_s
    ]
    ref = arms[0]
    said = [differences(a.label, a.params, a.gmacs, ref.params, ref.gmacs) for a in arms[1:]]
    return arms, [n for n in said if n]
