"""The models a study compares (``--models``): checked, sized to the study's input, counted.

A study compares one ConViT with a DeiT (the paper's pairing -- ``convit_tiny`` with
``deit_tiny``, and so on -- or any two of the same width and depth) and, optionally, the CNN
arm ``resnet`` (:mod:`convit.weights.cnn`) sized to the ConViT's parameters at the study's
resolution and channels.  The arms are named by what they are (``convit``, ``deit``,
``resnet``), ConViT first: the verdict compares every other arm with it.

The transformers keep their zoo architecture; only the patch size may change, so that the
grid stays between :data:`GRID_MIN` and :data:`GRID_MAX` patches a side at a small
resolution (the plan says so).  Every arm's parameters and multiply-accumulates are counted,
and the plan notes when an arm differs from ConViT by more than :data:`DIFFER`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..nn.arithmetic import flops
from ..nn.model import DATA_DERIVED_FIELDS, count_params
from ..weights.cnn import CNNConfig, cnn_for, macs
from ..weights.names import list_models, model_spec
from ..weights.resolve import resolve_source
from ..weights.zoo import config_of, create_model

__all__ = [
    "PAIRINGS",
    "CNN_ARM",
    "GRID_MIN",
    "GRID_MAX",
    "DIFFER",
    "ArmChoice",
    "check_known",
    "check_pair",
    "check_models",
    "choose_patch",
    "transformer_arch",
    "cnn_arch",
    "arm_gmacs",
    "counted_gmacs",
    "differences",
    "Layout",
    "explicit_layout",
    "transformer_params",
]

#: The paper's pairings of a ConViT with its DeiT (table 1).
PAIRINGS = (("convit_tiny", "deit_tiny"), ("convit_small", "deit_small"), ("convit_base", "deit_base"))
#: The zoo name of the CNN arm.
CNN_ARM = "resnet"
#: The grid (patches a side) a study keeps a transformer within.
GRID_MIN = 8
GRID_MAX = 14
#: Arms whose parameters or GMACs differ from ConViT's by more than this fraction are noted.
DIFFER = 0.10


@dataclass(frozen=True)
class ArmChoice:
    """The models asked for, checked: the ConViT's and the DeiT's zoo names (None: no DeiT arm)
    and whether the CNN arm is compared."""

    convit: str
    deit: Optional[str]
    cnn: bool


def check_known(name: str) -> None:
    """A ValueError naming the closest zoo names when ``name`` is not one."""
    try:
        model_spec(name)
    except ValueError:
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f"; the closest is {close[0]!r}" if close else ""
        raise ValueError(f"--models: unknown model {name!r}{hint}") from None


def check_pair(convit: str, deit: str) -> None:
    """The paper's pairing, or two transformers of the same width and depth (read from their
    configs: a zoo entry, or the ``config.json`` of an export folder or hub repo)."""
    if (convit, deit) in PAIRINGS:
        return
    a = config_of(convit)
    b = config_of(deit)
    if (a.embed_dim, a.depth) != (b.embed_dim, b.depth):
        raise ValueError(
            f"--models: {convit} (width {a.embed_dim}, depth {a.depth}) and {deit} (width {b.embed_dim}, "
            f"depth {b.depth}) are neither the paper's pairing nor of the same width and depth"
        )


def check_models(names: Sequence[str]) -> ArmChoice:
    """The arms ``names`` asks for: one ConViT, at most one DeiT, at most the CNN arm; a
    ValueError of one line for anything else."""
    for n in names:
        check_known(n)
    if len(set(names)) != len(names):
        raise ValueError(f"--models names a model twice: {', '.join(names)}")
    transformers = [n for n in names if model_spec(n).family == "convit"]
    others = [n for n in names if n not in transformers and n != CNN_ARM]
    if others:
        raise ValueError(f"--models: {others[0]} is neither a ConViT, a DeiT nor the CNN arm {CNN_ARM!r}")
    convits = [n for n in transformers if config_of(n).local_up_to_layer > 0]
    deits = [n for n in transformers if n not in convits]
    if len(convits) != 1 or len(deits) > 1:
        raise ValueError(
            f"--models needs one ConViT, at most one DeiT and optionally {CNN_ARM!r}; got {', '.join(names)}"
        )
    if deits:
        check_pair(convits[0], deits[0])
    return ArmChoice(convits[0], deits[0] if deits else None, CNN_ARM in names)


def choose_patch(res: int, patch: int) -> int:
    """``patch``, or the patch size closest to it dividing ``res`` into a grid of
    :data:`GRID_MIN` to :data:`GRID_MAX` patches a side when ``patch`` does not divide ``res``
    or gives a grid below :data:`GRID_MIN` (a small resolution); a ValueError when none does."""
    if res % patch == 0 and res // patch >= GRID_MIN:
        return patch
    fits = [p for p in range(1, res + 1) if res % p == 0 and GRID_MIN <= res // p <= GRID_MAX]
    if not fits:
        raise ValueError(
            f"--img-size {res} is not divisible by the models' patch size {patch}, nor by any patch size "
            f"giving a {GRID_MIN}x{GRID_MIN} to {GRID_MAX}x{GRID_MAX} grid"
        )
    return min(fits, key=lambda p: (abs(p - patch), p))


def transformer_arch(name: str, patch: int, res: int, **fields: Any) -> dict[str, Any]:
    """A plan's entry of transformer ``name``: every ConViTConfig field but those taken from the
    data, with the study's patch and resolution (``fields`` on top)."""
    cfg = config_of(name, **fields, patch_size=patch, img_size=res)
    return {
        "model": name,
        "model_kwargs": {k: v for k, v in cfg.to_dict().items() if k not in DATA_DERIVED_FIELDS},
    }


def transformer_params(arch: dict[str, Any], res: int, in_chans: int, num_classes: int) -> int:
    """The parameters of a transformer arm on the study's data (built once, on the CPU)."""
    model = create_model(
        arch["model"], **arch["model_kwargs"], img_size=res, in_chans=in_chans, num_classes=num_classes
    )
    return count_params(model)


def cnn_arch(target_params: int, res: int, in_chans: int, num_classes: int) -> dict[str, Any]:
    """The CNN arm's plan entry: the ResNet closest to ``target_params`` on the study's data
    (:func:`convit.weights.cnn.cnn_for`; a ValueError when none is close enough)."""
    cfg, _ = cnn_for(target_params, res, in_chans, num_classes)
    return {
        "model": CNN_ARM,
        "model_kwargs": {
            "widths": list(cfg.widths),
            "layers": list(cfg.layers),
            "small_stem": cfg.small_stem,
        },
    }


def arm_gmacs(arch: dict[str, Any], res: int, in_chans: int, num_classes: int) -> float:
    """An arm's multiply-accumulates per image, in billions (:func:`convit.weights.cnn.macs` for
    the CNN, :func:`convit.nn.arithmetic.flops` for a transformer)."""
    kwargs = arch["model_kwargs"]
    if arch["model"] == CNN_ARM:
        cfg = CNNConfig(kwargs["widths"], kwargs["layers"], kwargs["small_stem"], in_chans, num_classes, res)
        return macs(cfg) / 1e9
    if not resolve_source(arch["model"]).is_convit:  # one of timm's models: a published ResNet
        return counted_gmacs(arch, res, in_chans, num_classes)
    cfg = config_of(arch["model"], **kwargs, img_size=res, in_chans=in_chans, num_classes=num_classes)
    return flops(cfg) / 1e9


def counted_gmacs(arch: dict[str, Any], res: int, in_chans: int, num_classes: int) -> float:
    """The multiply-accumulates per image of any model, in billions, counted by torch's
    ``FlopCounterMode`` over one forward pass on the meta device (nothing allocated or computed)."""
    with torch.device("meta"):
        model = create_model(
            arch["model"], **arch["model_kwargs"], img_size=res, in_chans=in_chans, num_classes=num_classes
        )
        x = torch.empty(1, in_chans, res, res)
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)  # eval: a batch norm refuses one image of 1x1 maps in training
    return counter.get_total_flops() / 2 / 1e9


def _differs(what: str, value: Optional[float], ref: Optional[float]) -> Optional[str]:
    if value is None or not ref:
        return None
    change = value / ref - 1
    if abs(change) <= DIFFER:
        return None
    return f"{abs(change):.0%} {'more' if change > 0 else 'fewer'} {what}"


def differences(
    label: str, params: int, gmacs: Optional[float], ref_params: int, ref_gmacs: Optional[float]
) -> Optional[str]:
    """The plan's note when arm ``label`` differs from ConViT by more than :data:`DIFFER` in
    parameters or GMACs (None when it does not)."""
    said = [d for d in (_differs("parameters", params, ref_params), _differs("GMACs", gmacs, ref_gmacs)) if d]
    if not said:
        return None
    return f"{label} has {' and '.join(said)} than ConViT (more than {DIFFER:.0%} apart)"


@dataclass
class Layout:
    """The transformer arms of a study on its input: the resolution, the shared patch size, each
    arm's plan entry (ConViT first), whether the CNN arm is still to be sized and added, what the
    plan says about them, and (a fine-tuning study) the weights each arm starts from."""

    resolution: int
    patch_size: int
    archs: dict[str, dict[str, Any]]
    cnn: bool
    notes: list[str]
    weights: dict[str, str] = field(default_factory=dict)  # per arm: the weights it is fine-tuned from


def explicit_layout(choice: ArmChoice, res: int) -> Layout:
    """The arms of ``choice`` at ``res`` px: their zoo architectures, on a patch size
    (:func:`choose_patch` of the ConViT's) both share."""
    own = config_of(choice.convit).patch_size
    patch = choose_patch(res, own)
    archs = {"convit": transformer_arch(choice.convit, patch, res)}
    if choice.deit:
        archs["deit"] = transformer_arch(choice.deit, patch, res)
    notes = []
    if patch != own:
        notes.append(
            f"patch size {patch} instead of {choice.convit}'s {own}, so that the {res} px input makes a grid "
            f"of {res // patch}x{res // patch}"
        )
    return Layout(res, patch, archs, choice.cnn, notes)
