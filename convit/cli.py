"""The ``convit`` command line.

Each subcommand lives in the module that owns its work and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up, importing a
module when its command is used so that ``convit models`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module, one-line help). Keep in data-flow order.
COMMANDS = {
    "models": ("convit.commands.models", "list the model zoo (params, FLOPs, GPSA layers)"),
    "train": ("convit.commands.train", "train a model with the DeiT recipe (no arguments: the digits main job)"),
    "eval": ("convit.commands.evaluate", "top-1/top-5/loss and images/s of a checkpoint on a dataset"),
    "predict": ("convit.commands.predict", "top-k classes of image files"),
    "export": ("convit.commands.export", "export a checkpoint to ONNX"),
    "analyze": ("convit.commands.analyze", "locality figures and HTML report of a checkpoint and its logs"),
    "experiment": ("convit.commands.experiment", "resumable sweeps reproducing the paper's sample-efficiency and ablation results"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convit", description="ConViT: train, evaluate and analyse vision transformers "
                                   "with soft convolutional inductive biases.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"convit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"convit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
