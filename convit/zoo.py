"""Model zoo: named configurations, pretrained-weight metadata and ``create_model``.

The maths lives in :mod:`convit.model`; this module only says which configuration a name
means and where its published weights come from.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models._features import FeatureGetterNet

from .checkpoint import (CheckpointError, config_from_metadata, infer_config, load_into, read_checkpoint,
                         read_metadata_json)
from .model import ConViT, ConViTConfig, architecture_cfg
from .presets import DIGITS_DATA_CFG
from .pretrained import Pretrained


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: the architecture, where its weights live, and the data it expects.

    data: overlay for timm's ``pretrained_cfg`` (mean, std, crop_pct, interpolation, ...) when
    the model's data differ from the ImageNet defaults of :func:`convit.model.architecture_cfg`.
    """

    config: Dict
    pretrained: Optional[Pretrained] = None
    description: str = ""
    data: Dict = field(default_factory=dict)


def _convit(heads: int, head_dim: int, description: str, pretrained: Optional[Pretrained] = None) -> ModelSpec:
    """A ConViT of the paper's family: 12 blocks, the first 10 GPSA, ``heads`` x ``head_dim`` wide."""
    return ModelSpec(dict(embed_dim=head_dim * heads, num_heads=heads, local_up_to_layer=10), pretrained,
                     description)


def _deit(heads: int, hf_hub_id: Optional[str] = None) -> ModelSpec:
    """The DeiT baseline with ``heads`` heads of 64: no GPSA, qkv bias, DeiT's eval crop 0.9
    (timm's deit_* cfgs); timm's weights on the hub where DeiT published them."""
    return ModelSpec(dict(embed_dim=64 * heads, num_heads=heads, local_up_to_layer=0, qkv_bias=True),
                     Pretrained(hf_hub_id=hf_hub_id) if hf_hub_id else None,
                     f"DeiT baseline: {heads} heads x 64, no GPSA", dict(crop_pct=0.9))


def _digits(local_up_to_layer: int, description: str, **extra: Any) -> ModelSpec:
    """A small model of the embedded default job (digits: 8x8 images, a 4x4 grid of 2x2
    patches), normalised with the digits statistics.  Average pooling (timm's
    global_pool='avg') trains faster than the class token from so few images; the README
    gives what `convit train` reaches with it."""
    return ModelSpec(dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, num_heads=4,
                          depth=4, mlp_ratio=2.0, local_up_to_layer=local_up_to_layer, **extra,
                          global_pool="avg"), None, description, DIGITS_DATA_CFG)


_FB = "https://dl.fbaipublicfiles.com/convit/"

#: The zoo: every name as it is registered; :func:`register` adds more.
_REGISTRY: Dict[str, ModelSpec] = {
    "convit_tiny": _convit(4, 48, "ConViT-Ti: 4 heads x 48, 10 GPSA of 12", Pretrained(
        url=_FB + "convit_tiny.pth", hf_hub_id="timm/convit_tiny.fb_in1k", top1=73.1)),
    "convit_tiny_plus": _convit(4, 64, "ConViT tiny+: 4 heads x 64, 10 GPSA of 12"),
    "convit_small": _convit(9, 48, "ConViT-Small: 9 heads x 48, 10 GPSA of 12", Pretrained(
        url=_FB + "convit_small.pth", hf_hub_id="timm/convit_small.fb_in1k", top1=81.3)),
    "convit_small_plus": _convit(9, 64, "ConViT small+: 9 heads x 64, 10 GPSA of 12"),
    "convit_base": _convit(16, 48, "ConViT-Base: 16 heads x 48, 10 GPSA of 12", Pretrained(
        url=_FB + "convit_base.pth", hf_hub_id="timm/convit_base.fb_in1k", top1=82.4)),
    "convit_base_plus": _convit(16, 64, "ConViT base+: 16 heads x 64, 10 GPSA of 12"),
    "deit_tiny": _deit(3, "timm/deit_tiny_patch16_224.fb_in1k"),
    "deit_tiny_plus": _deit(4),
    "deit_small": _deit(6, "timm/deit_small_patch16_224.fb_in1k"),
    "deit_small_plus": _deit(9),
    "deit_base": _deit(12, "timm/deit_base_patch16_224.fb_in1k"),
    "deit_base_plus": _deit(16),
    "convit_digits": _digits(3, "ConViT for 8x8 digits: 2x2 patches, 4 heads x 12, 4 blocks, 3 GPSA, avg pool"),
    "deit_digits": _digits(0, "DeiT matching convit_digits: no GPSA", qkv_bias=True),
}


def register(name: str, spec: ModelSpec) -> None:
    """Add a named configuration (e.g. for a new size) to the zoo."""
    _REGISTRY[name] = spec


def list_models(pattern: str = "*") -> List[str]:
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


def create_model(
    name: Optional[str] = None,
    pretrained: bool = False,
    checkpoint_path: Optional[os.PathLike] = None,
    features_only: bool = False,
    out_indices: Union[int, Sequence[int]] = 3,
    feature_cfg: Optional[Dict[str, Any]] = None,
    **overrides,
) -> Union[ConViT, FeatureGetterNet]:
    """Build a model by zoo name and/or from a weight file.

    name: a zoo name (see :func:`list_models`); may be omitted when ``checkpoint_path`` is one
        of our safetensors files (the config is stored in it) or a ConViT file whose
        architecture can be read off its shapes.
    pretrained: load the published weights: the local file (:func:`weights_dir`), else the
        official download, else timm's copy on the Hugging Face hub (:mod:`convit.hub`).
    checkpoint_path: load weights from this file (official ``.pth``, timm ``.safetensors`` /
        ``.bin``, or ours).  Takes precedence over ``pretrained``.
    features_only: return timm's ``FeatureGetterNet`` around the model instead: calling it
        gives the patch-token maps [B, C, H/p, W/p] after the blocks in ``out_indices`` (an int
        n = the last n blocks, as timm's ViTs; negative indices count from the end), and it
        has timm's ``feature_info``.  The blocks after the last one taken, the final norm and
        the head are pruned.  ``feature_cfg`` goes to the wrapper (``output_fmt='NLC'``,
        ``norm=True``).
    overrides: ConViTConfig fields, e.g. ``num_classes=10, drop_path_rate=0.1``.
    """
    sd = meta = None
    if checkpoint_path is not None:
        sd, meta = read_checkpoint(checkpoint_path)
    cfg: Dict = {}
    if name is not None:
        cfg.update(model_spec(name).config)
    elif sd is not None:
        cfg.update(config_from_metadata(meta) or infer_config(sd))
    else:
        raise ValueError("create_model needs a model name or a checkpoint_path")
    if name is not None and sd is not None and config_from_metadata(meta):
        stored = config_from_metadata(meta)
        # Our file knows its own size (classes, image size, ...): trust it over the zoo defaults.
        cfg.update(stored)
    cfg.update(overrides)
    model = ConViT(ConViTConfig.from_dict(cfg))
    if sd is None and pretrained:
        info = model_spec(name).pretrained
        if info is None:
            raise ValueError(f"no published weights for {name!r}")
        from .hub import resolve_pretrained  # only now: the hub stack is heavy, and rarely needed

        path = resolve_pretrained(name, info, weights_dir())
        sd, _ = read_checkpoint(path)
        checkpoint_path = f"pretrained weights of {name} ({path})"
    if sd is not None:
        load_into(model, sd, source=str(checkpoint_path))
    model.pretrained_cfg = pretrained_cfg(name, model, meta)
    if features_only:
        features = FeatureGetterNet(model, out_indices=out_indices, **(feature_cfg or {}))
        features.pretrained_cfg = features.default_cfg = model.pretrained_cfg  # as timm sets them
        return features
    return model


def load_model(checkpoint: os.PathLike, name: Optional[str] = None, img_size: Optional[int] = None,
               device: str = "cpu") -> Tuple[ConViT, Dict[str, Any]]:
    """The eval-mode model in ``checkpoint`` and what the file says about its data.

    Returns ``(model, info)`` with ``info`` = ``{"class_names": [...] or None, "data": {mean,
    std, img_size, in_chans, native_size, dataset} or None, "model_name": ...}`` (only our
    files carry the first two).  The code path of ``convit eval``, ``predict`` and ``export``.
    """
    _, meta = read_checkpoint(checkpoint)
    overrides = {"img_size": img_size} if img_size else {}
    try:
        model = create_model(name, checkpoint_path=checkpoint, **overrides)
    except CheckpointError as e:
        hint = ("\n  (is the checkpoint for another architecture? pass the zoo name it was trained with as "
                "--model, or omit --model for files written by `convit train`)" if name else "")
        raise CheckpointError(f"{e}{hint}") from None
    info = {"class_names": read_metadata_json(meta, "class_names"), "data": read_metadata_json(meta, "data"),
            "model_name": read_metadata_json(meta, "model_name") or name}
    return model.to(device).eval(), info


def pretrained_cfg(name: Optional[str], model: ConViT, meta: Optional[dict] = None) -> dict:
    """timm's ``pretrained_cfg`` for ``model``: the architecture's defaults, the zoo entry's
    weights and data, then (for our own files) the data the model was trained on."""
    cfg = architecture_cfg(model.cfg)
    if name is not None:
        spec = model_spec(name)
        cfg.update(architecture=name, **spec.data)
        if spec.pretrained is not None:
            hub_id = spec.pretrained.hf_hub_id
            cfg.update(url=spec.pretrained.url or "", hf_hub_id=hub_id,
                       tag=hub_id.partition(".")[2] or None if hub_id else None)  # 'fb_in1k'
    data = read_metadata_json(meta, "data") if meta else None
    if data:  # written by `convit train`: normalise and size exactly as in training
        cfg.update(mean=tuple(data["mean"]), std=tuple(data["std"]))
        if data.get("native_size"):  # fixed-size datasets: the whole image, resized
            cfg["crop_pct"] = 1.0
    if meta and "model_name" in meta and name is None:
        cfg["architecture"] = read_metadata_json(meta, "model_name")
    return cfg
