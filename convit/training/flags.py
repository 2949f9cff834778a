"""``convit train``'s command-line flags: one per :class:`~convit.training.config.TrainConfig`
field, generated from the dataclass (its type hints and help texts) so that no knob is forgotten.

:func:`add_config_arguments` adds them to a parser, each defaulting to "not given", so that
:func:`config_from_args` layers only the flags actually given over the preset and the config
file (:func:`convit.training.config.build_config`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import yaml

from ..core.presets import TRAIN_PRESETS
from .config import TrainConfig, build_config
from .config_values import field_type

__all__ = ["add_config_arguments", "given_fields", "config_from_args"]


def _parse_kwargs(items) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value read as YAML (``true``, ``0.5``, ``[1, 2]``)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


class _KwargsAction(argparse.Action):
    """``--model-kwargs depth=6 qkv_bias=false``: KEY=VALUE pairs into a dict.

    Not timm.utils.ParseKwargs: it reads values with ``ast.literal_eval`` and falls back to the
    string, so ``qkv_bias=false`` would arrive as the (truthy) string ``"false"``, and an item
    without ``=`` is a traceback instead of a usage error.  YAML values keep the config-file
    spelling working on the command line.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, _parse_kwargs(values))
        except argparse.ArgumentTypeError as e:
            parser.error(f"{option_string}: {e}")


def _optional_number(typ):
    def parse(s: str):
        return None if s.lower() in ("none", "null") else typ(s)

    parse.__name__ = typ.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field, defaulting to "not given" (argparse.SUPPRESS)
    so that :func:`config_from_args` can tell flags given on the command line from defaults."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML or TOML file of config keys (flags override it)",
    )
    parser.description = (parser.description or "") + (
        " Defaults shown are DeiT's ImageNet recipe; the preset (digits when no --dataset is given) "
        "changes some of them."
    )
    for f in dataclasses.fields(TrainConfig):
        _add_field_flag(parser, f)


def _add_field_flag(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    """The flag of field ``f``: ``--no-x`` too for a bool, KEY=VALUE items for a dict, the
    preset names as choices, ``--resume`` without a path for the ``--output`` folder."""
    typ, optional = field_type(TrainConfig, f.name)
    flag = "--" + f.name.replace("_", "-")
    help_ = _help(f)
    kw: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_, dest=f.name)
    if typ is bool:
        parser.add_argument(flag, *f.metadata.get("aliases", ()), action=argparse.BooleanOptionalAction, **kw)
    elif typ is dict:
        parser.add_argument(flag, nargs="+", metavar="KEY=VALUE", action=_KwargsAction, **kw)
    elif f.name == "resume":
        parser.add_argument(
            flag,
            nargs="?",
            const="auto",
            metavar="PATH",
            **{**kw, "help": help_ + "; without PATH: the --output folder"},
        )
    elif f.name == "preset":
        parser.add_argument(flag, choices=list(TRAIN_PRESETS), **kw)
    else:
        parser.add_argument(
            flag,
            type=_optional_number(typ) if optional and typ in (int, float) else typ,
            metavar=f.name.upper() if typ is not str else None,
            **kw,
        )


def _help(f: dataclasses.Field) -> str:
    """The field's help text with its default (and the digits preset's value where it differs),
    ``%`` escaped for argparse."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown = f"default {default}"
    if f.name in TRAIN_PRESETS["digits"] and TRAIN_PRESETS["digits"][f.name] != default:
        shown += f"; digits preset {TRAIN_PRESETS['digits'][f.name]}"
    return f"{f.metadata.get('help', '')} ({shown})".replace("%", "%%")


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields set by flags actually given on the command line
    (:func:`add_config_arguments` leaves the others out of ``args``)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config for ``convit train``'s parsed flags (only flags actually given override)."""
    return build_config(given_fields(args), getattr(args, "config", None))
