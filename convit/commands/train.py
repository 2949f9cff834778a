"""``convit train``: train a model with the DeiT recipe (no arguments: the digits main job).

Every field of :class:`convit.config.TrainConfig` is a flag; ``--config FILE`` (YAML/TOML)
sets many at once and flags override it.  Under ``torchrun`` it trains with DDP::

    torchrun --standalone --nproc_per_node=2 -m convit.cli train --dataset cifar10

This is where the trainer meets the analysis: :func:`convit.train.fit` is given the hooks of
:func:`convit.analysis.training_hooks` (per-epoch locality in the log, the report at the end).
"""
from __future__ import annotations

import argparse
import sys

from ..analysis import training_hooks
from ..config import add_config_arguments, config_from_args, given_fields, load_config_file
from ..engine import NonFiniteLossError
from ..fileio import CheckpointSaveError
from ..runs import read_resume
from ..train import fit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Precedence: defaults < preset (--preset, else chosen by --dataset) < --config file < flags. "
                "The effective config is saved as <output>/config.yaml.")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    state = None
    if getattr(args, "resume", None):
        # The resumed run's own config, then the file and the flags given now on top; its
        # last.pt is read here, once, and handed to fit.
        given = given_fields(args)
        if hasattr(args, "config"):
            given = {**load_config_file(args.config), **given}
        cfg, state = read_resume(args.resume, given)
    else:
        cfg = config_from_args(args)
    try:
        fit(cfg, resume_state=state, **training_hooks())
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
