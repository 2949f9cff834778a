"""The model names: the zoo's literal table of configurations, and how a model name reads.

A name says which :class:`~convit.nn.architecture.ConViTConfig` it means (:class:`ModelSpec`;
``resnet``, the CNN arm, which :class:`~convit.weights.cnn.CNNConfig`), where its published
weights live (:class:`~convit.weights.pretrained.Pretrained`) and the data it expects.
:func:`parse_model_name` reads names as timm does: ``convit_tiny``, ``convit_tiny.fb_in1k``
(a pretrained tag), ``hf-hub:org/repo``, ``local-dir:PATH``, and ``timm:NAME`` for timm's own
models that are not ConViTs.  Building a model from a name is
:func:`convit.weights.zoo.create_model`'s work; this module builds nothing.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..core.presets import DIGITS_DATA_CFG
from .pretrained import Pretrained

__all__ = [
    "ModelSpec",
    "register",
    "list_models",
    "model_spec",
    "CONVIT_TINY_PARAMS",
    "weights_dir",
    "parse_model_name",
    "check_tag",
]


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: the architecture, where its weights live, and the data it expects.

    data: overlay for timm's ``pretrained_cfg`` (mean, std, crop_pct, interpolation, ...) when
    the model's data differ from the ImageNet defaults of :func:`convit.nn.model.architecture_cfg`.
    family: ``convit`` (``config`` holds ConViTConfig fields: ConViT and DeiT) or ``cnn`` (the
    CNN arm: ``config`` holds what :func:`convit.weights.cnn.cnn_config` reads).
    """

    config: dict
    pretrained: Optional[Pretrained] = None
    description: str = ""
    data: dict = field(default_factory=dict)
    family: str = "convit"


def _convit(
    heads: int, head_dim: int, description: str, pretrained: Optional[Pretrained] = None
) -> ModelSpec:
    """A ConViT of the paper's family: 12 blocks, the first 10 GPSA, ``heads`` x ``head_dim`` wide."""
    return ModelSpec(
        dict(embed_dim=head_dim * heads, num_heads=heads, local_up_to_layer=10), pretrained, description
    )


def _deit(heads: int, hf_hub_id: Optional[str] = None) -> ModelSpec:
    """The DeiT baseline with ``heads`` heads of 64: no GPSA, qkv bias, DeiT's eval crop 0.9
    (timm's deit_* cfgs); timm's weights on the hub where DeiT published them."""
    return ModelSpec(
        dict(embed_dim=64 * heads, num_heads=heads, local_up_to_layer=0, qkv_bias=True),
        Pretrained(hf_hub_id=hf_hub_id) if hf_hub_id else None,
        f"DeiT baseline: {heads} heads x 64, no GPSA",
        dict(crop_pct=0.9),
    )


def _digits(local_up_to_layer: int, description: str, **extra: Any) -> ModelSpec:
    """A small model of the embedded default job (digits: 8x8 images, a 4x4 grid of 2x2
    patches), normalised with the digits statistics.  Average pooling (timm's
    global_pool='avg') trains faster than the class token from so few images; the README
    gives what `convit train` reaches with it."""
    return ModelSpec(
        dict(
            img_size=8,
            patch_size=2,
            in_chans=1,
            num_classes=10,
            embed_dim=48,
            num_heads=4,
            depth=4,
            mlp_ratio=2.0,
            local_up_to_layer=local_up_to_layer,
            **extra,
            global_pool="avg",
        ),
        None,
        description,
        DIGITS_DATA_CFG,
    )


_FB = "https://dl.fbaipublicfiles.com/convit/"

#: convit_tiny's parameters (224 px, 1000 classes): the size of the zoo's CNN arm unless a run
#: sizes it to the model it is compared with (``target_params=N``, ``base_width=W``).
CONVIT_TINY_PARAMS = 5_710_512

#: The zoo: every name as it is registered; :func:`register` adds more.
_REGISTRY: dict[str, ModelSpec] = {
    "convit_tiny": _convit(
        4,
        48,
        "ConViT-Ti: 4 heads x 48, 10 GPSA of 12",
        Pretrained(url=_FB + "convit_tiny.pth", hf_hub_id="timm/convit_tiny.fb_in1k", top1=73.1),
    ),
    "convit_tiny_plus": _convit(4, 64, "ConViT tiny+: 4 heads x 64, 10 GPSA of 12"),
    "convit_small": _convit(
        9,
        48,
        "ConViT-Small: 9 heads x 48, 10 GPSA of 12",
        Pretrained(url=_FB + "convit_small.pth", hf_hub_id="timm/convit_small.fb_in1k", top1=81.3),
    ),
    "convit_small_plus": _convit(9, 64, "ConViT small+: 9 heads x 64, 10 GPSA of 12"),
    "convit_base": _convit(
        16,
        48,
        "ConViT-Base: 16 heads x 48, 10 GPSA of 12",
        Pretrained(url=_FB + "convit_base.pth", hf_hub_id="timm/convit_base.fb_in1k", top1=82.4),
    ),
    "convit_base_plus": _convit(16, 64, "ConViT base+: 16 heads x 64, 10 GPSA of 12"),
    "deit_tiny": _deit(3, "timm/deit_tiny_patch16_224.fb_in1k"),
    "deit_tiny_plus": _deit(4),
    "deit_small": _deit(6, "timm/deit_small_patch16_224.fb_in1k"),
    "deit_small_plus": _deit(9),
    "deit_base": _deit(12, "timm/deit_base_patch16_224.fb_in1k"),
    "deit_base_plus": _deit(16),
    "convit_digits": _digits(
        3, "ConViT for 8x8 digits: 2x2 patches, 4 heads x 12, 4 blocks, 3 GPSA, avg pool"
    ),
    "deit_digits": _digits(0, "DeiT matching convit_digits: no GPSA", qkv_bias=True),
    "resnet": ModelSpec(
        dict(target_params=CONVIT_TINY_PARAMS, img_size=224, in_chans=3, num_classes=1000),
        description="the CNN arm: timm's ResNet (BasicBlock), widths sized to a parameter target "
        "(default convit_tiny's; target_params=N or base_width=W)",
        family="cnn",
    ),
}


def register(name: str, spec: ModelSpec) -> None:
    """Add a named configuration (e.g. for a new size) to the zoo."""
    _REGISTRY[name] = spec


def list_models(pattern: str = "*") -> list[str]:
    """Names in the zoo matching a shell-style pattern, e.g. ``'convit_*'``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_spec(name: str) -> ModelSpec:
    """The zoo entry called ``name``; an unknown name is a ValueError naming the closest ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def weights_dir() -> Path:
    """Where pretrained files are looked for: $CONVIT_HOME, else torch hub's checkpoints folder."""
    env = os.environ.get("CONVIT_HOME")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


#: Name prefixes of models described elsewhere: a hub-repo folder (timm's spelling; ``hf_hub:``
#: is its old one), or one of timm's own architectures (``timm:resnet18``).
_SOURCES = {"hf-hub": "hf-hub", "hf_hub": "hf-hub", "local-dir": "local-dir", "timm": "timm"}


def parse_model_name(name: str) -> tuple[Optional[str], str, str]:
    """``(source, id, tag)`` of a model name, as timm reads them: ``'hf-hub:org/repo[@rev]'``
    -> ``('hf-hub', 'org/repo[@rev]', '')``, ``'local-dir:PATH'`` -> ``('local-dir', 'PATH', '')``,
    ``'timm:resnet18'`` -> ``('timm', 'resnet18', '')``, ``'convit_tiny.fb_in1k'`` -> ``(None,
    'convit_tiny', 'fb_in1k')`` (a zoo name and its pretrained tag)."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _SOURCES:
        if not rest:
            raise ValueError(f"model name {name!r} has nothing after {prefix}:")
        return _SOURCES[prefix], rest, ""
    base, _, tag = name.partition(".")
    return None, base, tag


def check_tag(name: str, tag: str) -> None:
    """A pretrained tag must be the one of the zoo entry's published weights (timm's tag)."""
    info = model_spec(name).pretrained
    known = info.hf_hub_id.partition(".")[2] if info is not None and info.hf_hub_id else ""
    if tag != known:
        raise ValueError(
            f"unknown pretrained tag {tag!r} for {name}: "
            + (f"its weights are {name}.{known}" if known else "it has no published weights")
        )
