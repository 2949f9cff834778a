"""Public names of a package imported on first use (PEP 562), so that importing the package
costs nothing until a name is asked for: ``convit`` and ``convit.data`` both use it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Callable


def lazy_attributes(
    package: str, exports: Mapping[str, str], live: Iterable[str] = (), shown: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    exports: public name -> the submodule (relative to ``package``) that defines it; a name not
    listed that is a submodule is imported as one.  A name is kept in the package's namespace
    after its first use, except those in ``live``, which are read again on every use (names whose
    value changes, such as the registry's dataset names).  ``shown``: more names for ``dir()``.
    """
    live = frozenset(live)
    shown = frozenset(shown)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if name not in live:
            setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        namespace = vars(sys.modules[package])
        return sorted({*exports, *shown, *(k for k in namespace if k.startswith("__"))})

    return __getattr__, __dir__
