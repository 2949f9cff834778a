"""ConViT: vision transformers with soft convolutional inductive biases (d'Ascoli et al., 2021).

The package is built in layers, each importing only from those below it (docs/architecture.md):

    core -> data -> nn -> weights -> training -> analysis -> experiments -> study -> commands

The public names below are imported on first use (PEP 562), so ``import convit.nn.model``
builds a model without loading the zoo, the hub client or anything else it does not need;
subpackages are reachable as attributes too (``convit.weights.hub.export_timm``).

Modules that moved into the layer packages keep their old names (``convit.config``,
``convit.model``, ``convit.zoo``, ...): importing one gives the module at its new place (the
same module object, so pickles and ``monkeypatch`` targets written against the old name still
work).  The README's changelog lists every move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any, Optional

from . import _version
from .core.lazy import lazy_attributes

__version__: str = _version.__version__

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "GPSA": "nn.attention",
    "MHSA": "nn.attention",
    "AttentionMaps": "nn.attention",
    "relative_offsets": "nn.attention",
    "ConViT": "nn.model",
    "ConViTConfig": "nn.model",
    "count_params": "nn.model",
    "CheckpointError": "weights.checkpoint",
    "read_checkpoint": "weights.checkpoint",
    "save_model": "weights.checkpoint",
    "Pretrained": "weights.pretrained",
    "create_model": "weights.zoo",
    "list_models": "weights.zoo",
    "load_model": "weights.zoo",
    "model_spec": "weights.zoo",
    "register": "weights.zoo",
}

#: old module name -> where it lives now (the layer packages of version 0.2)
MOVED: dict[str, str] = {
    "convit.fileio": "convit.core.fileio",
    "convit.runtime": "convit.core.runtime",
    "convit.distributed": "convit.core.distributed",
    "convit.presets": "convit.core.presets",
    "convit.launch": "convit.core.launch",
    "convit.attention": "convit.nn.attention",
    "convit.fast_gpsa": "convit.nn.fast_gpsa",
    "convit.layers": "convit.nn.layers",
    "convit.model": "convit.nn.model",
    "convit.memory": "convit.nn.memory",
    "convit.zoo": "convit.weights.zoo",
    "convit.checkpoint": "convit.weights.checkpoint",
    "convit.timm_format": "convit.weights.timm_format",
    "convit.hub": "convit.weights.hub",
    "convit.model_card": "convit.weights.model_card",
    "convit.pretrained": "convit.weights.pretrained",
    "convit.config": "convit.training.config",
    "convit.engine": "convit.training.engine",
    "convit.recipe": "convit.training.recipe",
    "convit.runs": "convit.training.run_folder",
    "convit.unreadable": "convit.training.unreadable",
    "convit.train": "convit.training.fit",
    "convit.analysis.report": "convit.analysis.run_report",
    "convit.experiments.figures": "convit.experiments.sweep_figures",
}

__all__ = list(_EXPORTS)


class _MovedModuleLoader(importlib.abc.Loader):
    """Loads an old module name as the module at its new place (one module object, two names)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(self.target)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: Any) -> None:
        """Nothing to run: the target module ran when it was imported."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of moved modules (:data:`MOVED`) and nothing else."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(MOVED[fullname]))


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, shown=["__version__"])
