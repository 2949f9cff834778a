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
from .hub import resolve_pretrained
from .model import ConViT, ConViTConfig, architecture_cfg


@dataclass(frozen=True)
class Pretrained:
    """Where published weights for a model live.

    url: the official release (facebookresearch/convit).  Its file names carry no hash, so
    there is no hash to check them against; sha256 stays None until someone records one.
    hf_hub_id: timm's copy on the Hugging Face hub (``model.safetensors`` in that repo).
    """

    url: Optional[str] = None
    sha256: Optional[str] = None
    hf_hub_id: Optional[str] = None
    top1: Optional[float] = None  # ImageNet-1k top-1 reported by the authors

    @property
    def filename(self) -> Optional[str]:
        return self.url.rsplit("/", 1)[-1] if self.url else None


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


_REGISTRY: Dict[str, ModelSpec] = {}


def register(name: str, spec: ModelSpec) -> None:
    """Add a named configuration (e.g. for a new size) to the zoo."""
    _REGISTRY[name] = spec


def list_models(pattern: str = "*") -> List[str]:
    """Names in the zoo matching a shell-style pattern, e.g. ``'convit_*'``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")
    return _REGISTRY[name]


_FB = "https://dl.fbaipublicfiles.com/convit/"
for _suffix, _heads, _top1 in (("tiny", 4, 73.1), ("small", 9, 81.3), ("base", 16, 82.4)):
    register(f"convit_{_suffix}", ModelSpec(
        dict(embed_dim=48 * _heads, num_heads=_heads, local_up_to_layer=10),
        Pretrained(url=f"{_FB}convit_{_suffix}.pth", hf_hub_id=f"timm/convit_{_suffix}.fb_in1k", top1=_top1),
        f"ConViT-{_suffix[0].upper()}{_suffix[1:] if _suffix != 'tiny' else 'i'}: {_heads} heads x 48, 10 GPSA of 12"))
    register(f"convit_{_suffix}_plus", ModelSpec(
        dict(embed_dim=64 * _heads, num_heads=_heads, local_up_to_layer=10),
        None, f"ConViT {_suffix}+: {_heads} heads x 64, 10 GPSA of 12"))
for _suffix, _heads, _hub in (("tiny", 3, "timm/deit_tiny_patch16_224.fb_in1k"),
                              ("tiny_plus", 4, None),
                              ("small", 6, "timm/deit_small_patch16_224.fb_in1k"),
                              ("small_plus", 9, None),
                              ("base", 12, "timm/deit_base_patch16_224.fb_in1k"),
                              ("base_plus", 16, None)):
    register(f"deit_{_suffix}", ModelSpec(
        dict(embed_dim=64 * _heads, num_heads=_heads, local_up_to_layer=0, qkv_bias=True),
        Pretrained(hf_hub_id=_hub) if _hub else None,
        f"DeiT baseline: {_heads} heads x 64, no GPSA",
        dict(crop_pct=0.9)))  # DeiT's published eval crop (timm's deit_* cfgs)
# The small models of the embedded default job (digits: 8x8 images, a 4x4 grid of 2x2 patches).
# Sized so that `convit train` reaches >93% test top-1 in a few CPU minutes; average pooling
# (timm's global_pool='avg') trains faster than the class token from 1.3k images.
# Digits images are used whole (crop 1.0); mean/std are those convit.data computes from the
# 1,437 training images of its fixed split (tests/test_zoo.py checks they still agree).
_DIGITS_DATA = dict(mean=(0.3053833842277527,), std=(0.3761212229728699,), crop_pct=1.0)
register("convit_digits", ModelSpec(
    dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, num_heads=4, depth=4,
         mlp_ratio=2.0, local_up_to_layer=3, global_pool="avg"), None,
    "ConViT for 8x8 digits: 2x2 patches, 4 heads x 12, 4 blocks, 3 GPSA, avg pool", _DIGITS_DATA))
register("deit_digits", ModelSpec(
    dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, num_heads=4, depth=4,
         mlp_ratio=2.0, local_up_to_layer=0, qkv_bias=True, global_pool="avg"), None,
    "DeiT matching convit_digits: no GPSA", _DIGITS_DATA))


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
