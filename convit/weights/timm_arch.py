"""timm's own architectures that are not ConViTs (``timm:resnet18``), built and saved like ours.

A study compares ConViT with other models (a CNN arm); those come from timm's registry, built
by ``timm.create_model(name, pretrained=False, **kwargs)``.  :class:`TimmArchitecture` is what
rebuilds one: timm's name and the keyword arguments it was built with.  Our safetensors files
store both in their metadata (``timm_architecture``, ``timm_kwargs``) where a ConViT's file
stores its config, so such a file loads back with no name given.  A hub repo of one of timm's
own models (``hf-hub:timm/resnet18.a1_in1k``, or such a folder as ``local-dir:PATH``) names it
in its ``config.json`` (:func:`repo_architecture`), so its published weights load too.

timm is imported when a model is built, not with this module: reading a file's metadata needs
no model registry.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Optional

import torch.nn as nn

__all__ = ["TimmArchitecture", "build_timm_model", "architecture_of", "repo_architecture"]

#: Metadata keys of a timm model's file (a ConViT's file has ``config`` instead).
NAME_KEY = "timm_architecture"
KWARGS_KEY = "timm_kwargs"


@dataclass(frozen=True)
class TimmArchitecture:
    """One of timm's models: its registry name and the keyword arguments of ``timm.create_model``
    (``num_classes``, ``in_chans``, ...: JSON values, so that a file can hold them)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def with_kwargs(self, **overrides: Any) -> TimmArchitecture:
        """The same architecture with some keyword arguments replaced or added."""
        return TimmArchitecture(self.name, {**self.kwargs, **overrides})

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata entries that describe this architecture."""
        try:
            kwargs = json.dumps(self.kwargs, sort_keys=True)
        except TypeError as e:
            raise ValueError(f"timm:{self.name}'s keyword arguments cannot be saved in a file: {e}") from None
        return {NAME_KEY: self.name, KWARGS_KEY: kwargs}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> Optional[TimmArchitecture]:
        """The architecture a file's metadata describes, or None for a file of another model."""
        if NAME_KEY not in meta:
            return None
        return cls(meta[NAME_KEY], json.loads(meta.get(KWARGS_KEY) or "{}"))


def build_timm_model(arch: TimmArchitecture) -> nn.Module:
    """``timm.create_model(arch.name, pretrained=False, **arch.kwargs)``, randomly initialised,
    remembering ``arch`` so that :func:`convit.weights.checkpoint.save_model` can store it.
    An unknown name is a ValueError naming the closest of timm's names."""
    import timm  # only now: timm's registry is large, and rarely needed here

    if not timm.is_model(arch.name):
        close = difflib.get_close_matches(arch.name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ValueError(f"unknown timm model {arch.name!r}.{hint}")
    arch = _without_img_size(arch, timm)
    model = timm.create_model(arch.name, pretrained=False, **arch.kwargs)
    model.timm_architecture = arch  # a plain attribute: not in the state dict
    return model


def _without_img_size(arch: TimmArchitecture, timm: Any) -> TimmArchitecture:
    """``arch`` without ``img_size`` when timm's model takes any input size (a CNN: its
    ``pretrained_cfg`` says ``fixed_input_size`` False), whose constructor has no such argument:
    a training run passes the data's image size to every model."""
    if "img_size" not in arch.kwargs:
        return arch
    cfg = timm.models.get_pretrained_cfg(arch.name)
    if cfg is None or cfg.fixed_input_size:
        return arch
    return TimmArchitecture(arch.name, {k: v for k, v in arch.kwargs.items() if k != "img_size"})


def repo_architecture(config: dict[str, Any], convit_builders: Collection[str]) -> Optional[TimmArchitecture]:
    """The timm architecture a hub repo's ``config.json`` describes when it is one of timm's own
    models and not one of ``convit_builders`` (a published ResNet: ``timm/resnet18.a1_in1k``),
    with the repo's ``model_args`` and classes; None otherwise (a ConViT or DeiT, or a name timm
    does not know, which the ConViT reader then names)."""
    name = config.get("architecture")
    if not isinstance(name, str) or name in convit_builders:
        return None
    import timm  # only now: timm's registry is large, and rarely needed here

    if not timm.is_model(name):
        return None
    kwargs = dict(config.get("model_args") or {})
    classes = config.get("num_classes", (config.get("pretrained_cfg") or {}).get("num_classes"))
    if classes is not None:
        kwargs["num_classes"] = int(classes)
    return TimmArchitecture(name, kwargs)


def architecture_of(model: nn.Module) -> Optional[TimmArchitecture]:
    """How ``model`` was built, if :func:`build_timm_model` built it (else None)."""
    arch = getattr(model, "timm_architecture", None)
    return arch if isinstance(arch, TimmArchitecture) else None
