"""timm's own architectures that are not ConViTs (``timm:resnet18``), built and saved like ours.

A study compares ConViT with other models (a CNN arm); those come from timm's registry, built
by ``timm.create_model(name, pretrained=False, **kwargs)``.  :class:`TimmArchitecture` is what
rebuilds one: timm's name and the keyword arguments it was built with.  Our safetensors files
store both in their metadata (``timm_architecture``, ``timm_kwargs``) where a ConViT's file
stores its config, so such a file loads back with no name given.

timm is imported when a model is built, not with this module: reading a file's metadata needs
no model registry.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import torch.nn as nn

__all__ = ["TimmArchitecture", "build_timm_model", "architecture_of"]

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
    model = timm.create_model(arch.name, pretrained=False, **arch.kwargs)
    model.timm_architecture = arch  # a plain attribute: not in the state dict
    return model


def architecture_of(model: nn.Module) -> Optional[TimmArchitecture]:
    """How ``model`` was built, if :func:`build_timm_model` built it (else None)."""
    arch = getattr(model, "timm_architecture", None)
    return arch if isinstance(arch, TimmArchitecture) else None
