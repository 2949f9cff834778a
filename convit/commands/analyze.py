"""``convit analyze``: locality figures (and an HTML report) for a checkpoint and its training logs.

Layer and head numbers on the command line are 1-based, as in the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_inputs(p)
    _add_attention_maps(p.add_argument_group("attention maps"))
    _add_outputs(p.add_argument_group("outputs"))


def _add_inputs(p: argparse.ArgumentParser) -> None:
    """What is analysed: the model, its training logs and the images."""
    p.add_argument("checkpoint", type=Path, help="model file (ours, official .pth or timm)")
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="zoo name, for checkpoints that do not store their config (official, timm's)",
    )
    p.add_argument(
        "--log",
        type=Path,
        action="append",
        default=None,
        metavar="LOG",
        help="a run's log.jsonl; repeat to compare runs (e.g. ConViT vs DeiT). "
        "Default: log.jsonl beside the checkpoint, if any",
    )
    p.add_argument(
        "--image",
        type=Path,
        default=None,
        help="image file for the attention maps (default: first test image of the "
        "checkpoint's dataset, else a random input)",
    )
    p.add_argument(
        "--max-images", type=int, default=64, help="test images used for the locality measures (default 64)"
    )


def _add_outputs(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="folder for the figures (default: 'analysis' beside the checkpoint)",
    )
    p.add_argument(
        "--masking",
        action="store_true",
        help="also evaluate test-time masking of content / positional attention",
    )
    p.add_argument("--no-html", action="store_true", help="do not write report.html")


def _add_attention_maps(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        metavar="L",
        help="blocks for the attention maps, 1-based (default: first and last GPSA, first MHSA)",
    )
    p.add_argument(
        "--heads",
        type=int,
        nargs="+",
        default=None,
        metavar="H",
        help="heads for the attention maps, 1-based (default: all, up to 8)",
    )
    p.add_argument(
        "--query",
        type=int,
        nargs=2,
        default=None,
        metavar=("ROW", "COL"),
        help="query patch, 0-based row and column in the patch grid (default: centre)",
    )


def run(args: argparse.Namespace) -> int:
    from ..analysis.run_report import analyze  # (matplotlib: loaded only when this command runs)

    ckpt: Path = args.checkpoint
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {ckpt}")
    logs = args.log
    if logs is None:
        beside = ckpt.parent / "log.jsonl"
        logs = [beside] if beside.is_file() else []
    for log in logs:
        if not log.is_file():
            raise FileNotFoundError(f"log file not found: {log}")
    if args.max_images < 1:
        raise ValueError("--max-images must be at least 1")
    output = args.output if args.output is not None else ckpt.parent / "analysis"
    paths = analyze(
        ckpt,
        logs,
        args.image,
        output,
        layers=None if args.layers is None else [layer - 1 for layer in args.layers],
        heads=None if args.heads is None else [h - 1 for h in args.heads],
        query=args.query,
        html_path=None if args.no_html else output / "report.html",
        masking=args.masking,
        max_images=args.max_images,
        model_name=args.model,
    )
    for path in paths:
        print(path)
    return 0
