"""``convit train``: train a model with the DeiT recipe (no arguments: the digits main job).

Every field of :class:`convit.config.TrainConfig` is a flag; ``--config FILE`` (YAML/TOML)
sets many at once and flags override it.  Under ``torchrun`` it trains with DDP::

    torchrun --standalone --nproc_per_node=2 -m convit.cli train --dataset cifar10
"""
from __future__ import annotations

import argparse
import sys

from ..config import _FIELDS, add_config_arguments, config_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Precedence: defaults < preset (--preset, else chosen by --dataset) < --config file < flags. "
                "The effective config is saved as <output>/config.yaml.")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..engine import NonFiniteLossError
    from ..train import CheckpointSaveError, config_for_resume, fit

    if getattr(args, "resume", None):
        given = {name: getattr(args, name) for name in _FIELDS if hasattr(args, name)}
        if hasattr(args, "config"):
            from ..config import load_config_file

            given = {**load_config_file(args.config), **given}
        cfg = config_for_resume(args.resume, given)
    else:
        cfg = config_from_args(args)
    try:
        fit(cfg)
    except NonFiniteLossError as e:
        print(f"convit train: error: {e}", file=sys.stderr)
        return 1
    except CheckpointSaveError as e:
        print(f"convit train: error: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convit train: interrupted; continue with `convit train --resume RUN_FOLDER` "
              "(the folder holding last.pt)", file=sys.stderr)
        return 130
    return 0
