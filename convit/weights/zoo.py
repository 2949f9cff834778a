"""The one entry to build a model: :func:`create_model` (and :func:`load_model` on top of it).

Whatever names the model -- a zoo name with or without its pretrained tag, a config, an
official ``.pth``, a timm file, our safetensors, ``hf-hub:org/repo``, ``local-dir:PATH`` or an
export folder, ``timm:NAME`` for timm's own models -- :func:`convit.weights.resolve.resolve_source`
resolves it into a :class:`~convit.weights.resolve.ModelSource` and :func:`build_model` builds
that.  The table of names is :mod:`convit.weights.names` (re-exported here, where older code
imports it from).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch.nn as nn
from timm.models._features import FeatureGetterNet

from ..nn.architecture import ConViTConfig, architecture_cfg
from ..nn.model import ConViT
from .checkpoint import CheckpointError, adapt_state_dict, load_into, read_metadata_json
from .cnn import build_cnn, cnn_config
from .names import ModelSpec, list_models, model_spec, parse_model_name, register, weights_dir
from .resolve import ModelName, ModelSource, resolve_source
from .timm_arch import build_timm_model

__all__ = [
    "create_model",
    "load_model",
    "build_model",
    "config_of",
    "pretrained_cfg",
    # the names table, where older code imports it from
    "ModelSpec",
    "register",
    "list_models",
    "model_spec",
    "parse_model_name",
    "weights_dir",
]


def create_model(
    name: ModelName = None,
    pretrained: bool = False,
    checkpoint_path: Optional[os.PathLike] = None,
    features_only: bool = False,
    out_indices: Union[int, Sequence[int]] = 3,
    feature_cfg: Optional[dict[str, Any]] = None,
    **overrides,
) -> Union[ConViT, FeatureGetterNet, nn.Module]:
    """Build a model by name and/or from saved weights, with timm's conventions.

    name: a zoo name (:func:`list_models`), optionally with its pretrained tag
        (``'convit_tiny.fb_in1k'``); a config (:class:`~convit.nn.architecture.ConViTConfig` or a
        dict of its fields); ``'hf-hub:org/repo'`` or ``'local-dir:PATH'`` for a hub-repo folder
        (``config.json`` + ``model.safetensors``, as ``convit export --format timm`` writes or
        timm publishes); ``'timm:NAME'`` for one of timm's own models that is not a ConViT
        (``timm:resnet18``: ``timm.create_model(NAME, pretrained=False, **overrides)``, saved
        and loaded by our safetensors like a ConViT); ``'resnet'``, the CNN arm
        (:mod:`convit.weights.cnn`: timm's ResNet sized by ``target_params=N`` or
        ``base_width=W``).  May be omitted when ``checkpoint_path``
        carries its config (our files and export folders).
    pretrained: load the published weights: the zoo's (:func:`weights_dir`, then the Hugging
        Face cache, then the hub, then the official URL: :func:`convit.weights.hub.resolve_pretrained`)
        or the repo's.  As in timm, ``num_classes=N`` then gets a new, freshly initialised head
        and ``in_chans=C`` adapted input weights (:func:`convit.weights.checkpoint.adapt_input_conv`).
    checkpoint_path: load these weights strictly (a file: official ``.pth``, timm
        ``.safetensors`` / ``.bin``, ours; or an export folder).  Takes precedence over
        ``pretrained``.  The architecture comes from the file's config (our metadata, or the
        folder's ``config.json``), else from ``name`` (with the file's classifier size); a
        file with neither is an error, since its shapes do not tell the pooling or the input
        size.
    features_only: return timm's ``FeatureGetterNet`` around the model instead: calling it
        gives the patch-token maps [B, C, H/p, W/p] after the blocks in ``out_indices`` (an int
        n = the last n blocks, as timm's ViTs; negative indices count from the end), and it
        has timm's ``feature_info``.  The blocks after the last one taken, the final norm and
        the head are pruned.  ``feature_cfg`` goes to the wrapper (``output_fmt='NLC'``,
        ``norm=True``).  ConViTs only.
    overrides: ConViTConfig fields, e.g. ``num_classes=10, drop_path_rate=0.1`` (for a timm
        model: ``timm.create_model``'s keyword arguments; for the CNN arm: CNNConfig fields,
        ``target_params`` or ``base_width``).
    """
    model = build_model(resolve_source(name, pretrained, checkpoint_path), overrides)
    if not features_only:
        return model
    if not isinstance(model, ConViT):
        raise ValueError("features_only is for ConViTs: build timm's feature models with timm")
    features = FeatureGetterNet(model, out_indices=out_indices, **(feature_cfg or {}))
    features.pretrained_cfg = features.default_cfg = model.pretrained_cfg  # as timm sets them
    return features


def build_model(src: ModelSource, overrides: Optional[dict[str, Any]] = None) -> Union[ConViT, nn.Module]:
    """The model ``src`` describes with ``overrides`` on top, its weights loaded (strictly, or
    adapted as timm's ``pretrained=True`` does), and timm's ``pretrained_cfg`` set."""
    overrides = overrides or {}
    if src.timm is not None:
        model = build_timm_model(src.timm.with_kwargs(**overrides))
    elif src.cnn is not None:
        model = build_cnn(cnn_config(**{**src.cnn, **overrides}))
    else:
        model = ConViT(ConViTConfig.from_dict({**src.config, **overrides}))
    sd = src.state_dict
    if sd is not None:
        if src.adapt:
            sd, _ = adapt_state_dict(sd, model)
        load_into(model, sd, source=src.origin)
    if isinstance(model, ConViT):
        model.pretrained_cfg = pretrained_cfg(src.zoo_name, model, src.meta, src.timm_config)
    else:
        model.pretrained_cfg = _data_overlay(dict(model.pretrained_cfg), src.meta)
    if src.hub_id:
        model.pretrained_cfg["hf_hub_id"] = src.hub_id
    if src.weights is not None:
        model.pretrained_cfg["file"] = str(src.weights)
    return model


def config_of(name: ModelName, **overrides: Any) -> ConViTConfig:
    """The ConViTConfig ``create_model(name, **overrides)`` builds, without building it or
    reading weights (nothing allocated): for sizing a model before it exists."""
    src = resolve_source(name)
    if not src.is_convit:
        raise ValueError(
            f"{name} is not a ConViT (one of timm's models, or the CNN arm): it has no ConViTConfig"
        )
    return ConViTConfig.from_dict({**src.config, **overrides})


def load_model(
    checkpoint: os.PathLike, name: Optional[str] = None, img_size: Optional[int] = None, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode model in ``checkpoint`` and what the file says about its data.

    checkpoint: a weight file, an export folder, or ``'hf-hub:org/repo'`` / ``'local-dir:PATH'``.
    Returns ``(model, info)`` with ``info`` = ``{"class_names": [...] or None, "data": {mean,
    std, img_size, in_chans, native_size, dataset} or None, "model_name": ..., "results":
    {epoch, test_top1, val_top1} measured by the run that wrote the file, "file": the weights}``
    (only our files carry data and results; class names also come from a ``config.json``).  The
    code path of ``convit eval``, ``predict`` and ``export``.
    """
    overrides = {"img_size": img_size} if img_size else {}
    repo = parse_model_name(str(checkpoint))[0] in ("hf-hub", "local-dir")
    try:
        if repo:
            src = resolve_source(str(checkpoint), pretrained=True)
        else:
            src = resolve_source(name, checkpoint_path=checkpoint)
        model = build_model(src, overrides)
    except CheckpointError as e:
        hint = (
            "\n  (is the checkpoint for another architecture? pass the zoo name it was trained with as "
            "--model, or omit --model for files written by `convit train`)"
            if name
            else ""
        )
        raise CheckpointError(f"{e}{hint}") from None
    meta = src.meta
    info = {
        "class_names": read_metadata_json(meta, "class_names") or model.pretrained_cfg.get("label_names"),
        "data": read_metadata_json(meta, "data"),
        "model_name": read_metadata_json(meta, "model_name") or name,
        "results": {k: read_metadata_json(meta, k) for k in ("epoch", "test_top1", "val_top1") if k in meta},
        "file": model.pretrained_cfg["file"],
    }
    return model.to(device).eval(), info


#: pretrained_cfg keys a hub-repo config.json gives about the data, kept when the model is rebuilt.
_DATA_KEYS = ("mean", "std", "crop_pct", "crop_mode", "interpolation", "tag", "license")


def pretrained_cfg(
    name: Optional[str], model: ConViT, meta: Optional[dict] = None, timm_cfg: Optional[dict] = None
) -> dict:
    """timm's ``pretrained_cfg`` for ``model``: the architecture's defaults, the zoo entry's
    weights and data, a hub-repo ``config.json``'s data and label names (``timm_cfg``), then
    (for our own files) the data the model was trained on.  Statistics for another number of
    channels than the model's are left at the defaults."""
    cfg = architecture_cfg(model.cfg)
    if name is not None:
        _zoo_overlay(cfg, model_spec(name), name)
    if timm_cfg:
        source = timm_cfg.get("pretrained_cfg") or {}
        cfg.update({k: source[k] for k in _DATA_KEYS if k in source})
        cfg["architecture"] = cfg["architecture"] or timm_cfg.get("architecture")
        labels = timm_cfg.get("label_names")
        if labels and len(labels) == model.num_classes:
            cfg["label_names"] = list(labels)
    _data_overlay(cfg, meta)
    if meta and "model_name" in meta and name is None:
        cfg["architecture"] = read_metadata_json(meta, "model_name")
    for key in ("mean", "std"):
        if len(cfg[key]) != model.cfg.in_chans:  # e.g. RGB weights adapted to grey input
            cfg[key] = architecture_cfg(model.cfg)[key]
        cfg[key] = tuple(cfg[key])
    return cfg


def _zoo_overlay(cfg: dict, spec: ModelSpec, name: str) -> None:
    """A zoo entry's name, data and published weights, over the architecture's defaults."""
    cfg.update(architecture=name, **spec.data)
    if spec.pretrained is not None:
        hub_id = spec.pretrained.hf_hub_id
        cfg.update(
            url=spec.pretrained.url or "",
            hf_hub_id=hub_id,
            tag=hub_id.partition(".")[2] or None if hub_id else None,
        )  # 'fb_in1k'


def _data_overlay(cfg: dict, meta: Optional[dict]) -> dict:
    """The data a model was trained on (our files' ``data`` metadata), over ``cfg``: normalise
    and size exactly as in training."""
    data = read_metadata_json(meta, "data") if meta else None
    if data:
        cfg.update(mean=tuple(data["mean"]), std=tuple(data["std"]))
        if data.get("native_size"):  # fixed-size datasets: the whole image, resized
            cfg["crop_pct"] = 1.0
    return cfg
