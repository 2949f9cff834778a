"""The ``convit`` command line.

Each subcommand lives in the module that owns its work and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them up, importing
only the module of the command given, so that ``convit models`` does not load the trainer,
the analysis and the experiments.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Optional

from ._version import __version__

# name -> (module, one-line help). Keep in data-flow order.
COMMANDS = {
    "models": ("convit.commands.models", "list the model zoo (params, FLOPs, GPSA layers)"),
    "train": (
        "convit.commands.train",
        "train a model with the DeiT recipe (no arguments: the digits main job)",
    ),
    "eval": ("convit.commands.evaluate", "top-1/top-5/loss and images/s of a checkpoint on a dataset"),
    "predict": ("convit.commands.predict", "top-k classes of image files"),
    "export": ("convit.commands.export", "export a checkpoint to ONNX or to timm's hub layout"),
    "analyze": ("convit.commands.analyze", "locality figures and HTML report of a checkpoint and its logs"),
    "experiment": (
        "convit.commands.experiment",
        "resumable sweeps reproducing the paper's sample-efficiency and ablation results",
    ),
    "study": (
        "convit.commands.study",
        "ConViT or DeiT on my images? plan, runs and a verdict sized to a time budget",
    ),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``convit`` parser with every subcommand; the arguments of ``command`` only, or of
    all of them when it is None (the top-level help needs none: it lists the one-line helps)."""
    parser = argparse.ArgumentParser(
        prog="convit",
        description="ConViT: train, evaluate and analyse vision transformers "
        "with soft convolutional inductive biases.",
    )
    parser.add_argument("--version", action="version", version=f"convit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if command is None or name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run one ``convit`` command; its exit status.  ``args.started_at`` tells the command when
    it started (``time.perf_counter()`` before its module was imported): a budget counts from there."""
    started_at = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    # The command is the first argument (the only top-level options, --help and --version, end
    # the program): only its module is imported.  Without a known command (none, or a typo that
    # argparse reports), no module is needed: the top-level help lists the one-line helps.
    command = argv[0] if argv and argv[0] in COMMANDS else ""
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.started_at = started_at
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
