"""Model zoo: named configurations, pretrained-weight metadata and ``create_model``.

The maths lives in :mod:`convit.nn.model`; this module says which configuration a name means,
where its published weights come from, and reads names as timm does: ``convit_tiny``,
``convit_tiny.fb_in1k`` (a pretrained tag), ``hf-hub:org/repo`` and ``local-dir:PATH`` (a
hub-repo folder: ``config.json`` + weights).  A model's architecture always comes from a saved
config (our metadata, a ``config.json``) or a name, never from the shapes of its weights.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from timm.models._features import FeatureGetterNet

from ..core.presets import DIGITS_DATA_CFG
from ..nn.model import ConViT, ConViTConfig, architecture_cfg
from .checkpoint import (
    CheckpointError,
    adapt_state_dict,
    config_from_metadata,
    find_weights,
    infer_config,
    load_into,
    read_checkpoint,
    read_metadata,
    read_metadata_json,
)
from .pretrained import Pretrained
from .timm_format import config_from_timm


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: the architecture, where its weights live, and the data it expects.

    data: overlay for timm's ``pretrained_cfg`` (mean, std, crop_pct, interpolation, ...) when
    the model's data differ from the ImageNet defaults of :func:`convit.nn.model.architecture_cfg`.
    """

    config: dict
    pretrained: Optional[Pretrained] = None
    description: str = ""
    data: dict = field(default_factory=dict)


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


#: Name prefixes of models described by a hub-repo folder (timm's spelling; ``hf_hub:`` is its old one).
_REPO_SOURCES = {"hf-hub": "hf-hub", "hf_hub": "hf-hub", "local-dir": "local-dir"}


def parse_model_name(name: str) -> tuple[Optional[str], str, str]:
    """``(source, id, tag)`` of a model name, as timm reads them: ``'hf-hub:org/repo[@rev]'``
    -> ``('hf-hub', 'org/repo[@rev]', '')``, ``'local-dir:PATH'`` -> ``('local-dir', 'PATH', '')``,
    ``'convit_tiny.fb_in1k'`` -> ``(None, 'convit_tiny', 'fb_in1k')`` (a zoo name and its
    pretrained tag)."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _REPO_SOURCES:
        if not rest:
            raise ValueError(f"model name {name!r} has nothing after {prefix}:")
        return _REPO_SOURCES[prefix], rest, ""
    base, _, tag = name.partition(".")
    return None, base, tag


def _check_tag(name: str, tag: str) -> None:
    """A pretrained tag must be the one of the zoo entry's published weights (timm's tag)."""
    info = model_spec(name).pretrained
    known = info.hf_hub_id.partition(".")[2] if info is not None and info.hf_hub_id else ""
    if tag != known:
        raise ValueError(
            f"unknown pretrained tag {tag!r} for {name}: "
            + (f"its weights are {name}.{known}" if known else "it has no published weights")
        )


@dataclass
class _Source:
    """Where a model comes from: the config it was saved with (ConViTConfig fields, before the
    caller's overrides), its weights, their metadata and timm's config.json."""

    cfg: dict
    name: Optional[str] = None  # zoo name
    weights: Optional[Path] = None
    meta: dict = field(default_factory=dict)
    timm: Optional[dict] = None  # config.json of a hub-repo folder
    hub_id: Optional[str] = None
    adapt: bool = False  # pretrained weights: fit the head and input channels as timm does
    described: bool = True  # the weights came with their config (else: a zoo name's)


def _repo(source: str, ident: str, pretrained: bool) -> tuple[dict, Optional[Path]]:
    """(config.json, weight file or None) of a hub repo (``hf-hub``, through :mod:`convit.weights.hub`:
    cache first) or a local folder (``local-dir``); the weights only when ``pretrained``."""
    if source == "local-dir":
        folder = Path(ident)
        weights, config = find_weights(folder) if pretrained else (None, None)
        if config is None:
            path = folder / "config.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"no config.json in {folder}: a local-dir: model is a hub-repo folder "
                    "(config.json + model.safetensors, as `convit export --format timm` writes)"
                )
            config = json.loads(path.read_text())
        return config, weights
    from .hub import HF_WEIGHTS_NAME, hf_hub_file  # only now: the hub stack is heavy, and rarely needed

    config = json.loads(hf_hub_file(ident, "config.json").read_text())
    return config, hf_hub_file(ident, HF_WEIGHTS_NAME) if pretrained else None


def _no_config_error(weights: Path) -> CheckpointError:
    """The error for a file with no config and no name: say what its shapes cannot tell."""
    try:
        shapes = infer_config(read_checkpoint(weights)[0])
        keys = ("patch_size", "embed_dim", "depth", "num_heads", "local_up_to_layer", "mlp_ratio", "qkv_bias")
        like = [
            n
            for n in list_models()
            if all(ConViTConfig.from_dict(model_spec(n).config).to_dict()[k] == shapes[k] for k in keys)
        ]
    except CheckpointError:
        like = []
    hint = f" Its shapes fit {', '.join(like)}." if like else ""
    return CheckpointError(
        f"{weights} carries no model config (it was not written by convit and has no config.json beside it), "
        "and the architecture cannot be read off its shapes: global_pool ('token' or 'avg') and the input "
        "size leave no trace in the weights, and a DeiT's head count neither; pass the model name it was "
        f"trained as (create_model('convit_tiny', checkpoint_path=...), --model), or the export folder "
        f"with its config.json.{hint}"
    )


def _resolve(name: Optional[str], pretrained: bool, checkpoint_path: Optional[os.PathLike]) -> _Source:
    """The model's source: its saved config (our metadata, else timm's config.json, over the
    zoo entry's) and weights.  Never guessed from the shapes of the weights."""
    source, ident, tag = parse_model_name(name) if name else (None, None, "")
    zoo_name, timm_cfg, weights, hub_id = None, None, None, None
    if source is not None:
        timm_cfg, weights = _repo(source, ident, pretrained and checkpoint_path is None)
        hub_id = ident if source == "hf-hub" else None
    elif ident is not None:
        zoo_name = ident
        model_spec(zoo_name)  # an unknown name fails here, naming the closest ones
        if tag:
            _check_tag(zoo_name, tag)
    if checkpoint_path is not None:
        weights, found = find_weights(checkpoint_path)
        timm_cfg = found or timm_cfg
    elif pretrained and zoo_name is not None:
        info = model_spec(zoo_name).pretrained
        if info is None:
            raise ValueError(f"no published weights for {zoo_name!r}")
        from .hub import resolve_pretrained  # only now: the hub stack is heavy, and rarely needed

        weights = resolve_pretrained(zoo_name, info, weights_dir())
    meta = read_metadata(weights) if weights is not None else {}
    stored = config_from_metadata(meta) or (
        config_from_timm(timm_cfg, str(weights or ident)) if timm_cfg else None
    )
    if stored is None and zoo_name is None:
        if weights is None:
            raise ValueError("create_model needs a model name or a checkpoint_path")
        raise _no_config_error(weights)
    cfg = {**(model_spec(zoo_name).config if zoo_name else {}), **(stored or {})}  # the file knows its size
    return _Source(
        cfg,
        zoo_name,
        weights,
        meta,
        timm_cfg,
        hub_id,
        adapt=pretrained and checkpoint_path is None,
        described=stored is not None or weights is None,
    )


def create_model(
    name: Optional[str] = None,
    pretrained: bool = False,
    checkpoint_path: Optional[os.PathLike] = None,
    features_only: bool = False,
    out_indices: Union[int, Sequence[int]] = 3,
    feature_cfg: Optional[dict[str, Any]] = None,
    **overrides,
) -> Union[ConViT, FeatureGetterNet]:
    """Build a model by name and/or from saved weights, with timm's conventions.

    name: a zoo name (:func:`list_models`), optionally with its pretrained tag
        (``'convit_tiny.fb_in1k'``); ``'hf-hub:org/repo'`` or ``'local-dir:PATH'`` for a
        hub-repo folder (``config.json`` + ``model.safetensors``, as ``convit export --format
        timm`` writes or timm publishes).  May be omitted when ``checkpoint_path`` carries its
        config (our files and export folders).
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
        ``norm=True``).
    overrides: ConViTConfig fields, e.g. ``num_classes=10, drop_path_rate=0.1``.
    """
    src = _resolve(name, pretrained, checkpoint_path)
    sd = read_checkpoint(src.weights)[0] if src.weights is not None else None
    if sd is not None and not src.described:  # a named foreign file: its classifier's rows are its classes
        src.cfg["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    model = ConViT(ConViTConfig.from_dict({**src.cfg, **overrides}))
    if sd is not None:
        what = str(checkpoint_path or src.weights)
        if src.adapt:
            sd, _ = adapt_state_dict(sd, model)
            what = f"pretrained weights of {name} ({src.weights})"
        load_into(model, sd, source=what)
    model.pretrained_cfg = pretrained_cfg(src.name, model, src.meta, src.timm)
    if src.hub_id:
        model.pretrained_cfg["hf_hub_id"] = src.hub_id
    if src.weights is not None:
        model.pretrained_cfg["file"] = str(src.weights)
    if features_only:
        features = FeatureGetterNet(model, out_indices=out_indices, **(feature_cfg or {}))
        features.pretrained_cfg = features.default_cfg = model.pretrained_cfg  # as timm sets them
        return features
    return model


def load_model(
    checkpoint: os.PathLike, name: Optional[str] = None, img_size: Optional[int] = None, device: str = "cpu"
) -> tuple[ConViT, dict[str, Any]]:
    """The eval-mode model in ``checkpoint`` and what the file says about its data.

    checkpoint: a weight file, an export folder, or ``'hf-hub:org/repo'`` / ``'local-dir:PATH'``.
    Returns ``(model, info)`` with ``info`` = ``{"class_names": [...] or None, "data": {mean,
    std, img_size, in_chans, native_size, dataset} or None, "model_name": ..., "results":
    {epoch, test_top1, val_top1} measured by the run that wrote the file, "file": the weights}``
    (only our files carry data and results; class names also come from a ``config.json``).  The
    code path of ``convit eval``, ``predict`` and ``export``.
    """
    overrides = {"img_size": img_size} if img_size else {}
    repo = parse_model_name(str(checkpoint))[0] is not None
    try:
        model = (
            create_model(str(checkpoint), pretrained=True, **overrides)
            if repo
            else create_model(name, checkpoint_path=checkpoint, **overrides)
        )
    except CheckpointError as e:
        hint = (
            "\n  (is the checkpoint for another architecture? pass the zoo name it was trained with as "
            "--model, or omit --model for files written by `convit train`)"
            if name
            else ""
        )
        raise CheckpointError(f"{e}{hint}") from None
    file = model.pretrained_cfg["file"]
    meta = read_metadata(file)
    info = {
        "class_names": read_metadata_json(meta, "class_names") or model.pretrained_cfg.get("label_names"),
        "data": read_metadata_json(meta, "data"),
        "model_name": read_metadata_json(meta, "model_name") or name,
        "results": {k: read_metadata_json(meta, k) for k in ("epoch", "test_top1", "val_top1") if k in meta},
        "file": file,
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
        spec = model_spec(name)
        cfg.update(architecture=name, **spec.data)
        if spec.pretrained is not None:
            hub_id = spec.pretrained.hf_hub_id
            cfg.update(
                url=spec.pretrained.url or "",
                hf_hub_id=hub_id,
                tag=hub_id.partition(".")[2] or None if hub_id else None,
            )  # 'fb_in1k'
    if timm_cfg:
        source = timm_cfg.get("pretrained_cfg") or {}
        cfg.update({k: source[k] for k in _DATA_KEYS if k in source})
        cfg["architecture"] = cfg["architecture"] or timm_cfg.get("architecture")
        labels = timm_cfg.get("label_names")
        if labels and len(labels) == model.num_classes:
            cfg["label_names"] = list(labels)
    data = read_metadata_json(meta, "data") if meta else None
    if data:  # written by `convit train`: normalise and size exactly as in training
        cfg.update(mean=tuple(data["mean"]), std=tuple(data["std"]))
        if data.get("native_size"):  # fixed-size datasets: the whole image, resized
            cfg["crop_pct"] = 1.0
    if meta and "model_name" in meta and name is None:
        cfg["architecture"] = read_metadata_json(meta, "model_name")
    for key in ("mean", "std"):
        if len(cfg[key]) != model.cfg.in_chans:  # e.g. RGB weights adapted to grey input
            cfg[key] = architecture_cfg(model.cfg)[key]
        cfg[key] = tuple(cfg[key])
    return cfg
