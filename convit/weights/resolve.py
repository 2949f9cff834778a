"""From what a caller names to what to build: :func:`resolve_source` gives a :class:`ModelSource`.

A model is named by a zoo name (with or without its pretrained tag), a config
(:class:`~convit.nn.architecture.ConViTConfig` or a dict of its fields), ``hf-hub:org/repo``,
``local-dir:PATH`` (a hub-repo folder: ``config.json`` + weights, of a ConViT or DeiT or of one
of timm's own models such as a published ResNet), ``timm:NAME`` (one of timm's own models),
and/or a weight file or export folder.  The architecture always comes from a saved
description (our metadata, a ``config.json``) or a name, never from the shapes of the weights.
Nothing is built here: :func:`convit.weights.zoo.create_model` builds what this resolves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..nn.architecture import ConViTConfig
from .checkpoint import (
    CheckpointError,
    StateDict,
    config_from_metadata,
    find_weights,
    infer_config,
    read_checkpoint,
)
from .cnn import cnn_from_metadata
from .names import check_tag, list_models, model_spec, parse_model_name, weights_dir
from .timm_arch import TimmArchitecture, repo_architecture
from .timm_format import TIMM_BUILDERS, config_from_timm

__all__ = ["ModelName", "ModelSource", "resolve_source"]

#: What names a model: a name string, or a config (ConViTConfig or a dict of its fields).
ModelName = Union[str, ConViTConfig, dict, None]


@dataclass
class ModelSource:
    """A resolved model: what to build (ConViTConfig fields before the caller's overrides, or one
    of timm's architectures) and what to load into it."""

    config: dict[str, Any] = field(default_factory=dict)
    timm: Optional[TimmArchitecture] = None  # one of timm's own models instead of a ConViT
    cnn: Optional[dict[str, Any]] = None  # the CNN arm instead: what convit.weights.cnn.cnn_config reads
    zoo_name: Optional[str] = None
    weights: Optional[Path] = None
    state_dict: Optional[StateDict] = None
    meta: dict[str, str] = field(default_factory=dict)  # the weight file's metadata
    timm_config: Optional[dict] = None  # config.json of a hub-repo folder
    hub_id: Optional[str] = None
    adapt: bool = False  # pretrained weights: fit the head and input channels as timm does
    label: str = ""  # how messages name the source
    origin: str = ""  # how messages name the weights

    @property
    def is_convit(self) -> bool:
        """Whether this builds a ConViT (or DeiT): not one of timm's models, not the CNN arm."""
        return self.timm is None and self.cnn is None

    @property
    def head_classes(self) -> int:
        """Rows of the weights' classifier (a ResNet's is ``fc``): the classes they were trained
        on (0 without a head)."""
        sd = self.state_dict or {}
        key = "head.weight" if "head.weight" in sd else "fc.weight"
        return sd[key].shape[0] if key in sd else 0


def resolve_source(
    name: ModelName = None, pretrained: bool = False, checkpoint_path: Optional[os.PathLike] = None
) -> ModelSource:
    """What :func:`convit.weights.zoo.create_model` builds for these arguments: the saved
    description (our metadata, else timm's config.json) over the name's, and the weights, read.

    pretrained: the name's published weights (a zoo entry's, a hub repo's); checkpoint_path, when
    given, takes precedence.  Raises ValueError for an unknown name or tag, and
    :class:`~convit.weights.checkpoint.CheckpointError` for a file nothing describes.
    """
    fetch = pretrained and checkpoint_path is None
    src = _named(name, fetch)
    if checkpoint_path is not None:
        src.weights, found = find_weights(checkpoint_path)
        src.timm_config = found or src.timm_config
    if src.weights is not None:
        src.state_dict, src.meta = read_checkpoint(src.weights)
        src.origin = str(checkpoint_path or src.weights)
    if fetch and src.weights is not None:
        src.adapt = True
        src.origin = f"pretrained weights of {name} ({src.weights})"
    _settle_architecture(src)
    return src


def _named(name: ModelName, fetch: bool) -> ModelSource:
    """The source a name (or config) gives, with its published weights' file when ``fetch``."""
    if name is None:
        return ModelSource()
    if isinstance(name, (ConViTConfig, dict)):
        if fetch:
            raise ValueError("a model config has no published weights: pass checkpoint_path, or a zoo name")
        config = name.to_dict() if isinstance(name, ConViTConfig) else dict(name)
        return ModelSource(config=config, label="the given config")
    source, ident, tag = parse_model_name(name)
    if source == "timm":
        if fetch:
            raise ValueError(f"{name}: timm's models are built here without pretrained weights")
        return ModelSource(timm=TimmArchitecture(ident), label=name)
    if source is not None:
        timm_config, weights = _repo(source, ident, fetch)
        hub_id = ident if source == "hf-hub" else None
        timm = repo_architecture(timm_config, TIMM_BUILDERS)  # a published ResNet, say
        return ModelSource(timm=timm, timm_config=timm_config, weights=weights, hub_id=hub_id, label=ident)
    spec = model_spec(ident)  # an unknown name fails here, naming the closest ones
    if tag:
        check_tag(ident, tag)
    if spec.family == "cnn":
        src = ModelSource(cnn=dict(spec.config), zoo_name=ident, label=ident)
    else:
        src = ModelSource(config=dict(spec.config), zoo_name=ident, label=ident)
    if fetch:
        if spec.pretrained is None:
            raise ValueError(f"no published weights for {ident!r}")
        from .hub import resolve_pretrained  # only now: the hub stack is heavy, and rarely needed

        src.weights = resolve_pretrained(ident, spec.pretrained, weights_dir())
    return src


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


def _settle_architecture(src: ModelSource) -> None:
    """Put the saved description over the name's: the file knows its size.  A named file with
    no description (an official or timm file) keeps the name's architecture and its own
    classifier size."""
    arch = TimmArchitecture.from_metadata(src.meta)
    if arch is not None:
        src.timm = arch
        src.config = {}
        return
    saved_cnn = cnn_from_metadata(src.meta)
    if saved_cnn is not None:
        src.cnn = saved_cnn
        src.config = {}
        return
    stored = config_from_metadata(src.meta)
    if stored is None and src.timm_config and src.is_convit:
        stored = config_from_timm(src.timm_config, str(src.weights or src.label))
    if stored is not None:
        src.config = {**src.config, **stored}
    elif not src.is_convit:
        return  # timm's own model or the CNN arm: its file loads strictly into the named architecture
    elif not src.config:
        if src.weights is None:
            raise ValueError("create_model needs a model name or a checkpoint_path")
        raise _no_config_error(src.weights)
    elif src.state_dict is not None:  # a named foreign file: its classifier's rows are its classes
        src.config["num_classes"] = src.head_classes


def _no_config_error(weights: Path) -> CheckpointError:
    """The error for a file with no config and no name: say what its shapes cannot tell."""
    try:
        shapes = infer_config(read_checkpoint(weights)[0])
        keys = ("patch_size", "embed_dim", "depth", "num_heads", "local_up_to_layer", "mlp_ratio", "qkv_bias")
        like = [
            n
            for n in list_models()
            if model_spec(n).family == "convit"
            and all(ConViTConfig.from_dict(model_spec(n).config).to_dict()[k] == shapes[k] for k in keys)
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
