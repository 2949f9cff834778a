"""The datasets convit knows, one :class:`DatasetSpec` each: adding a dataset is one entry.

Everything that names datasets reads this table: :func:`convit.data.build_data` (which loader),
:func:`convit.data.device_splits` (whether to mirror), ``convit train``'s default preset, and
the name lists of the commands' help texts.  Registering costs nothing: a loader is a
``"module:function"`` string imported the first time its dataset is loaded (or any callable),
so ``import convit.data`` loads no dataset library (scikit-learn for digits, torchvision's
dataset classes for Fashion-MNIST and CIFAR).

A new dataset: write a function ``(data_path, download) -> Source`` (:mod:`.sources`) and call
:func:`register_dataset` with its spec; every command then accepts the name.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..core.presets import TRAIN_PRESETS

if TYPE_CHECKING:
    from .sources import Source

__all__ = [
    "DatasetSpec",
    "Loader",
    "register_dataset",
    "unregister_dataset",
    "dataset_spec",
    "dataset_names",
    "datasets_help",
]

#: ``(data_path, download) -> Source``: reads a dataset's own train and test splits.
Loader = Callable[[Optional[str], bool], "Source"]


@dataclass(frozen=True)
class DatasetSpec:
    """What convit must know about a dataset before loading it.

    name: what ``--dataset`` accepts.  loader: a :data:`Loader`, or ``"module:function"`` naming
    one (imported on first use).  in_chans: image channels.  default_preset: the
    :data:`~convit.core.presets.TRAIN_PRESETS` entry ``convit train`` uses when no preset is
    named (required, so that no dataset silently trains with DeiT's ImageNet recipe).  hflip:
    whether a mirrored image is still of its class (not for digits: a flipped 2 is no 2).
    own_test_split: the test split is one the dataset publishes (or the folder's ``val/``);
    False when the loader carves a fixed one out of a single set (digits' 80/20).
    description: one line for help texts.  needs_data_path: loading needs ``--data-path``
    (a folder of the user's), so the name alone does not say which data.
    """

    name: str
    loader: Union[str, Loader]
    in_chans: int
    default_preset: str
    hflip: bool
    own_test_split: bool
    description: str
    needs_data_path: bool = False

    def load(self, data_path: Optional[str], download: bool) -> Source:
        """The dataset's :class:`~convit.data.sources.Source`, its loader imported if named;
        a loader whose images disagree with the spec's channels is an error."""
        src = _resolve(self.loader)(data_path, download)
        if src.in_chans != self.in_chans:
            raise ValueError(
                f"dataset {self.name!r}: the loader gave {src.in_chans}-channel images, "
                f"the spec says {self.in_chans}"
            )
        return src


def _resolve(loader: Union[str, Loader]) -> Loader:
    """A callable loader as it is, a ``"module:function"`` one imported."""
    if callable(loader):
        return loader
    module, _, function = loader.partition(":")
    return getattr(importlib.import_module(module), function)


_REGISTRY: dict[str, DatasetSpec] = {}


def _check(spec: DatasetSpec) -> None:
    """Refuse a spec that could not work, before anything uses it."""
    if not spec.name or spec.name != spec.name.strip() or " " in spec.name:
        raise ValueError(f"dataset name must be one word, got {spec.name!r}")
    if spec.default_preset not in TRAIN_PRESETS:
        raise ValueError(
            f"dataset {spec.name!r}: unknown default_preset {spec.default_preset!r}; "
            f"known: {', '.join(TRAIN_PRESETS)}"
        )
    if spec.in_chans < 1:
        raise ValueError(f"dataset {spec.name!r}: in_chans must be positive, got {spec.in_chans}")
    if isinstance(spec.loader, str) and not all(spec.loader.partition(":")[::2]):
        raise ValueError(f"dataset {spec.name!r}: loader must be 'module:function', got {spec.loader!r}")
    if not (isinstance(spec.loader, str) or callable(spec.loader)):
        raise TypeError(f"dataset {spec.name!r}: loader must be a callable or 'module:function'")


def register_dataset(spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Add ``spec`` to the known datasets (``replace``: over one of the same name)."""
    _check(spec)
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {spec.name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_dataset(name: str) -> DatasetSpec:
    """Remove dataset ``name`` (a ValueError if unknown) and return its spec."""
    spec = dataset_spec(name)
    del _REGISTRY[name]
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; an unknown name is a ValueError naming the known ones and
    the closest."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(_REGISTRY)}{hint}")


def dataset_names(needs_data_path: Optional[bool] = None) -> tuple[str, ...]:
    """The registered names, in registration order; ``needs_data_path`` keeps only those whose
    :attr:`DatasetSpec.needs_data_path` is that value."""
    return tuple(
        s.name for s in _REGISTRY.values() if needs_data_path is None or s.needs_data_path == needs_data_path
    )


def datasets_help() -> str:
    """``"digits (...), fashion-mnist (...), ... or imagefolder (...)"``: each name with its
    description, for help texts."""
    items = [f"{s.name} ({s.description})" for s in _REGISTRY.values()]
    return " or ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def __getattr__(name: str) -> Any:
    """``DATASETS``: the registered names now (a tuple), so it never goes stale."""
    if name == "DATASETS":
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The built-in datasets: the literal table (registered below, in this order).
_BUILTIN: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "digits",
        "convit.data.digits:load_digits",
        in_chans=1,
        default_preset="digits",
        hflip=False,
        own_test_split=False,
        description="scikit-learn's 8x8 handwritten digits, bundled",
    ),
    DatasetSpec(
        "fashion-mnist",
        "convit.data.fashion_mnist:load_fashion_mnist",
        in_chans=1,
        default_preset="fashion-mnist",
        hflip=True,
        own_test_split=True,
        description="28x28 grey clothing images, 10 classes",
    ),
    DatasetSpec(
        "cifar10",
        "convit.data.cifar:load_cifar10",
        in_chans=3,
        default_preset="cifar",
        hflip=True,
        own_test_split=True,
        description="32x32 colour photos, 10 classes",
    ),
    DatasetSpec(
        "cifar100",
        "convit.data.cifar:load_cifar100",
        in_chans=3,
        default_preset="cifar",
        hflip=True,
        own_test_split=True,
        description="32x32 colour photos, 100 classes",
    ),
    DatasetSpec(
        "imagefolder",
        "convit.data.imagefolder:load_imagefolder",
        in_chans=3,
        default_preset="imagenet",
        hflip=True,
        own_test_split=True,
        description="--data-path DIR with DIR/train/<class>/ and DIR/val/<class>/",
        needs_data_path=True,
    ),
)

for _spec in _BUILTIN:
    register_dataset(_spec)
