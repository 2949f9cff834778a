"""ConViT: vision transformers with soft convolutional inductive biases (d'Ascoli et al., 2021).

Data flow of the package: data -> model (attention, layers, model, zoo, checkpoint) -> engine
(train/eval) -> analysis -> experiments -> cli.

The names below are imported on first use (PEP 562), so ``import convit.model`` builds a
model without loading the zoo, the hub client or anything else it does not need; submodules
are reachable as attributes too (``convit.hub.export_timm``).
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Dict, List

from . import _version

__version__: str = _version.__version__

#: public name -> the submodule that defines it
_EXPORTS: Dict[str, str] = {
    "GPSA": "attention", "MHSA": "attention", "AttentionMaps": "attention", "relative_offsets": "attention",
    "CheckpointError": "checkpoint", "read_checkpoint": "checkpoint", "save_model": "checkpoint",
    "ConViT": "model", "ConViTConfig": "model", "count_params": "model",
    "Pretrained": "pretrained",
    "create_model": "zoo", "list_models": "zoo", "load_model": "zoo", "model_spec": "zoo", "register": "zoo",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's submodule (or a submodule itself) the first time it is asked for."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    """The public names (loaded or not), ``__version__`` and the module's dunder attributes."""
    return sorted({*__all__, "__version__", *(k for k in globals() if k.startswith("__"))})
