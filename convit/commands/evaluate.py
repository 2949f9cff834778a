"""``convit eval``: top-1 / top-5 / loss and throughput of a checkpoint on a dataset.

Works for our model files (the architecture and the data statistics are stored in them),
the official ``.pth`` files and timm's ``.safetensors`` / ``.bin`` (pass ``--model`` for
a DeiT, whose head count cannot be read off its weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..core.runtime import resolve_amp, resolve_device
from ..data import DataBundle, build_data, collate_skipping, set_max_image_pixels
from ..data.registry import dataset_names
from ..training.engine import evaluate
from ..weights.zoo import load_model

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="our .safetensors, an official .pth, or timm's .safetensors/.bin",
    )
    p.add_argument(
        "--model", default=None, help="zoo name (needed for foreign DeiT files; default: from the file)"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help=f"{', '.join(dataset_names())} (default: the one the checkpoint was trained on)",
    )
    p.add_argument("--data-path", default=None, help="dataset folder or file")
    p.add_argument("--download", action="store_true", help="let torchvision download fashion-mnist / cifar")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="test split, or the validation hold-out of the train split (default: test)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="hold-out fraction for --split val")
    p.add_argument("--seed", type=int, default=0, help="seed of the --split val hold-out")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    p.add_argument(
        "--strict-images",
        "--strict",
        action="store_true",
        help="any unreadable image is an error, not skipped (skipped files are counted, and named on stderr)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        metavar="N",
        help="decompression-bomb limit in pixels (default: Pillow's; 0: none, trusted files only)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, info = load_model(args.checkpoint, args.model, args.img_size, str(device))
    dataset = args.dataset or (info["data"] or {}).get("dataset")
    if dataset is None:
        raise ValueError("--dataset is needed: this checkpoint does not say which dataset it was trained on")
    img_size = args.img_size or model.cfg.img_size[0]
    set_max_image_pixels(args.max_image_pixels)
    data = build_data(
        dataset,
        args.data_path,
        img_size=img_size,
        val_fraction=args.val_fraction if args.split == "val" else 0.0,
        seed=args.seed,
        augment="none",
        download=args.download,
        strict=args.strict_images,
    )
    _check_fits(model, data, dataset, args.checkpoint)
    ds = data.val if args.split == "val" else data.test
    metrics, skipped = _evaluate_split(model, ds, args, device)
    for path, reason in skipped.items():
        print(f"convit eval: skipped {path}: {reason}", file=sys.stderr)
    metrics = {
        "checkpoint": str(Path(args.checkpoint)),
        "dataset": dataset,
        "split": args.split,
        **metrics,
        "skipped": len(skipped),
        "skipped_files": skipped,
    }
    if args.json:
        print(json.dumps(metrics))
    else:
        print(_describe(metrics, device))
    return 0


def _check_fits(model: torch.nn.Module, data: DataBundle, dataset: str, checkpoint: str) -> None:
    """The model must take the data's channels and have one output per class."""
    if data.in_chans != model.cfg.in_chans:
        raise ValueError(
            f"the checkpoint takes {model.cfg.in_chans}-channel images but {dataset} has "
            f"{data.in_chans} channel(s)"
        )
    if model.num_classes != data.num_classes:
        raise ValueError(
            f"the checkpoint has {model.num_classes} classes but {dataset} has {data.num_classes}: "
            f"fine-tune it first, e.g. `convit train --finetune {checkpoint} --dataset {dataset}` "
            f"(its head is replaced by a {data.num_classes}-class one)"
        )


def _evaluate_split(
    model: torch.nn.Module, ds: Dataset, args: argparse.Namespace, device: torch.device
) -> tuple[dict, dict[str, str]]:
    """The metrics of ``model`` on ``ds`` and the image files that could not be read."""
    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(ds, "failed_log"):  # the DataLoader workers' unreadable files come back through it
            ds.failed_log = Path(tmp) / "skipped.tsv"
        loader = DataLoader(
            ds,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            pin_memory=device.type == "cuda",
            collate_fn=collate_skipping,
        )
        metrics = evaluate(model, loader, device, resolve_amp(args.amp, device))
        skipped = ds.skipped() if hasattr(ds, "skipped") else {}
    return metrics, skipped


def _describe(metrics: dict, device: torch.device) -> str:
    """The one line ``convit eval`` prints without ``--json``."""
    line = (
        f"{metrics['dataset']} {metrics['split']}: "
        f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
        f"({metrics['n']} images, {metrics['images_per_s']:.0f} images/s on {device})"
    )
    if metrics["skipped"]:
        line += f"; {metrics['skipped']} unreadable image file(s) skipped, never replaced: listed on stderr"
    return line
