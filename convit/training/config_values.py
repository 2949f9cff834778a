"""Values for the typed fields of a config dataclass, from where they arrive as text.

Config files hold YAML / TOML scalars and flags hold strings; both must become the type each
field declares (``Optional[int]``, ``bool``, ``dict``, ...), with errors that name the field, and
a key that is no field must be an error naming the closest one.  Nothing here knows the
fields of :class:`~convit.training.config.TrainConfig`: the dataclass is passed in, so this
module sits below both the config and its command-line flags (:mod:`convit.training.flags`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11: the same parser as the optional package tomli, if installed
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["field_type", "coerce", "check_keys", "read_mapping"]

_BOOL_WORDS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def field_type(cls: type, name: str) -> tuple[Any, bool]:
    """The type of field ``name`` of the dataclass ``cls`` (its origin for generics: ``dict``
    for ``dict[str, Any]``) and whether it is ``Optional``."""
    hints = typing.get_type_hints(cls)
    t = hints[name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    optional = typing.get_origin(t) is typing.Union and len(args) < len(typing.get_args(t))
    base = args[0] if optional else t
    return (typing.get_origin(base) or base), optional


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert ``value`` to the type of field ``name`` of ``cls``, with an error naming the field."""
    typ, optional = field_type(cls, name)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ValueError(f"config key {name!r} cannot be empty")
    try:
        return _convert(typ, value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"config key {name!r}: cannot use {value!r} as {getattr(typ, '__name__', typ)}")


def _convert(typ: Any, value: Any) -> Any:
    """``value`` as ``typ`` (a ValueError or TypeError when it is not one); other types pass."""
    if typ is bool:  # True/False, 1/0 and the words of _BOOL_WORDS
        word = str(value).lower() if isinstance(value, (str, int)) else None
        if isinstance(value, bool) or word in _BOOL_WORDS:
            return value if isinstance(value, bool) else _BOOL_WORDS[word]
        raise ValueError
    if typ is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if typ is float:
        return float(value)
    if typ is str:
        return str(value)
    if typ is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError
    return value


def check_keys(cls: type, d: Mapping[str, Any], where: str) -> None:
    """An error listing the keys of ``d`` that are no field of ``cls``, each with the closest
    field (a misspelt knob would otherwise be dropped in silence)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in fields]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k.replace("-", "_"), fields, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown config key(s) in {where}: {', '.join(hints)}. Known keys: {', '.join(fields)}"
        )


def read_mapping(path: os.PathLike) -> dict[str, Any]:
    """The flat mapping of a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file, its keys
    spelled with ``_`` (``warmup-epochs`` is ``warmup_epochs``); values as the file gives them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        data = _parse_toml(text, path)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"cannot parse YAML config {path}: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _parse_toml(text: str, path: Path) -> Any:
    if tomllib is None:
        raise ValueError(f"reading {path} needs Python >= 3.11 or the tomli package (pip install tomli)")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"cannot parse TOML config {path}: {e}") from None
