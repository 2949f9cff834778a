"""``convit predict``: the top-k classes of image files, with probabilities.

Images are preprocessed exactly like the test set the model was evaluated on: size, channel
count, mean and std come from the checkpoint's metadata (written by ``convit train``).  For
foreign checkpoints (official / timm) the model's ``pretrained_cfg`` statistics (ImageNet's
for 3 channels) and DeiT's resize + centre crop are used, and classes are shown as indices.

Any number of files: PATHs are files, folders (searched recursively for the extensions Pillow
can open) or glob patterns (expanded here, so quoting them works too). Files are read through
:func:`convit.data.read_image` in batches of ``--batch-size`` (memory bounded by the batch, not
by the number of files). A file that cannot be read is named on stderr (``path: reason``) and
the others are still predicted; the exit status is 1 when any failed, after a summary line.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Optional, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..core.runtime import resolve_device
from ..data import ImageReadError, eval_input_size, eval_transform, pixel_limit, read_image
from ..data.reader import ImageReadWarning
from ..weights.zoo import load_model

_OUTPUTS = (".csv", ".jsonl")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "images",
        nargs="+",
        metavar="PATH",
        help="image files, folders (searched recursively for files with an extension "
        "Pillow can open) or glob patterns such as 'photos/**/*.jpg'",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument(
        "--model", default=None, help="zoo name (needed for files without a config: timm's, official)"
    )
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument(
        "--output",
        metavar="FILE",
        default=None,
        help="write the predictions to FILE (.csv: one row per image; .jsonl: one "
        "JSON object per image) instead of stdout; unreadable files get an error",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--num-workers", type=int, default=0, help="processes reading images (default 0)")
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse images of more than N pixels before decoding them (default: "
        "Pillow's decompression-bomb limit, 89,478,485; 0: no limit, trusted files only)",
    )


def _image_extensions() -> tuple[str, ...]:
    """The file extensions Pillow can open (not its save-only formats), lower case."""
    Image.init()
    return tuple(sorted(e.lower() for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def _folder_images(folder: str, exts: tuple[str, ...]) -> list[str]:
    """Files under ``folder`` (recursively, hidden folders included) with an image extension,
    sorted by path."""
    return sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(folder, followlinks=True)
        for f in names
        if f.lower().endswith(exts)
    )


def expand_paths(specs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(files, problems)`` from PATH arguments: files as given, folders searched
    recursively, glob patterns expanded (``**`` included); each file once, in order.
    ``problems`` are ``(spec, reason)`` for paths that name no image file."""
    exts = _image_extensions()
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        if os.path.isfile(spec):
            found = [spec]
        elif os.path.isdir(spec):
            found = _folder_images(spec, exts)
            if not found:
                problems.append((spec, "no image files in this folder"))
        elif any(c in spec for c in "*?["):
            found = []
            for m in glob.glob(spec, recursive=True):
                found += [m] if os.path.isfile(m) else _folder_images(m, exts)
            found = sorted(set(found))
            if not found:
                problems.append((spec, "no file matches this pattern"))
        else:
            found = []
            problems.append((spec, "no such file or folder"))
        files += found
    return list(dict.fromkeys(files)), problems


Item = tuple[str, Union[torch.Tensor, str], list[str]]


class _Files(Dataset):
    """``(path, tensor, warnings)`` for a file read and transformed, ``(path, reason,
    warnings)`` for one that was not; nothing a file contains escapes as an exception, and
    the reader's warnings travel with the item (out of DataLoader workers too)."""

    def __init__(self, paths: list[str], transform, mode: str, target_size: int, max_pixels: Optional[int]):
        self.paths = paths
        self.transform = transform
        self.mode = mode
        self.target_size = target_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        path = self.paths[i]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = self._read(path)
        notes = [
            w.message.detail if isinstance(w.message, ImageReadWarning) else str(w.message) for w in caught
        ]
        return path, x, notes

    def _read(self, path: str) -> Union[torch.Tensor, str]:
        try:
            img = read_image(path, self.mode, max_pixels=self.max_pixels, target_size=self.target_size)
            return self.transform(img)
        except ImageReadError as e:
            return (f"({e.format}) " if e.format else "") + e.reason
        except Exception as e:  # noqa: BLE001 - a transform failure is this file's, not the run's
            return f"{type(e).__name__} while preprocessing: {e}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _collate(items: list[Item]) -> tuple[list[tuple[str, Optional[str], list[str]]], Optional[torch.Tensor]]:
    """``([(path, reason or None, warnings)], stacked readable images or None)``, in input order."""
    good = [x for _, x, _ in items if isinstance(x, torch.Tensor)]
    meta = [
        (p, None if isinstance(x, torch.Tensor) else _one_line(x), [_one_line(n) for n in notes])
        for p, x, notes in items
    ]
    return meta, (torch.stack(good) if good else None)


class _Sink:
    """Where predictions go: stdout (text or ``--json`` lines) or the ``--output`` file."""

    def __init__(self, output: Optional[str], as_json: bool, k: int, write):
        self.as_json = as_json
        self.k = k
        self.write = write
        self.file: Optional[IO[str]] = None
        self.csv = None
        if output is not None:
            self.file = open(output, "w", newline="" if output.endswith(".csv") else None, encoding="utf-8")
            if output.endswith(".csv"):
                self.csv = csv.writer(self.file)
                self.csv.writerow(
                    [
                        "image",
                        *[f"{c}_{r}" for r in range(1, k + 1) for c in ("class", "index", "prob")],
                        "error",
                    ]
                )

    def result(self, path: str, preds: list[dict]) -> None:
        if self.csv is not None:
            self.csv.writerow([path, *[v for d in preds for v in (d["class"], d["index"], d["prob"])], ""])
        elif self.file is not None:
            self.file.write(json.dumps({"image": path, "top": preds}) + "\n")
        elif self.as_json:
            self.write(json.dumps({"image": path, "top": preds}), sys.stdout)
        else:
            self.write(
                f"{path}: " + ", ".join(f"{d['class']} {100 * d['prob']:.1f}%" for d in preds), sys.stdout
            )

    def error(self, path: str, reason: str) -> None:
        self.write(f"{path}: {reason}", sys.stderr)
        if self.csv is not None:
            self.csv.writerow([path, *[""] * (3 * self.k), reason])
        elif self.file is not None:
            self.file.write(json.dumps({"image": path, "error": reason}) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _batches(args: argparse.Namespace, paths: list[str], model, info) -> Iterator:
    """The DataLoader of ``_Files`` batches with the checkpoint's eval preprocessing."""
    data = info["data"] or {}
    cfg = model.cfg
    pcfg = model.pretrained_cfg  # timm-style defaults matching in_chans
    img_size = int(data.get("img_size", cfg.img_size[0]))
    in_chans = int(data.get("in_chans", cfg.in_chans))
    native = data.get("native_size")
    transform = eval_transform(
        img_size, data.get("mean", pcfg["mean"]), data.get("std", pcfg["std"]), in_chans, native
    )
    limit = pixel_limit(args.max_image_pixels)
    files = _Files(
        paths, transform, "L" if in_chans == 1 else "RGB", eval_input_size(img_size, native), limit
    )
    return iter(
        DataLoader(files, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=_collate)
    )


def _check(args: argparse.Namespace) -> None:
    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    pixel_limit(args.max_image_pixels)  # a bad value is refused before the model is read
    if args.output is not None and Path(args.output).suffix.lower() not in _OUTPUTS:
        raise ValueError(f"--output must end in {' or '.join(_OUTPUTS)}, got {args.output}")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    _check(args)
    paths, problems = expand_paths(args.images)
    device = resolve_device(args.device)
    model, info = load_model(args.checkpoint, args.model, device=str(device))
    names: list[str] = info["class_names"] or [str(i) for i in range(model.num_classes)]
    k = min(args.topk, model.num_classes)
    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not sys.stderr.isatty())
    sink = _Sink(args.output, args.json, k, lambda s, f: bar.write(s, file=f))
    done = failed = 0
    try:
        for spec, reason in problems:
            sink.error(spec, reason)
        for meta, x in _batches(args, paths, model, info):
            if x is not None:
                with torch.no_grad():
                    top = model(x.to(device)).float().softmax(dim=-1).topk(k, dim=-1)
                rows = iter(zip(top.values.tolist(), top.indices.tolist()))
            for path, reason, notes in meta:
                for note in notes:
                    bar.write(f"{path}: warning: {note}", file=sys.stderr)
                if reason is not None:
                    sink.error(path, reason)
                    failed += 1
                    continue
                p, idx = next(rows)
                sink.result(path, [{"class": names[i], "index": i, "prob": q} for i, q in zip(idx, p)])
                done += 1
            bar.update(len(meta))
    finally:
        sink.close()
        bar.close()
    failed += len(problems)
    where = f"; results in {args.output}" if args.output else ""
    print(f"convit predict: {done} predicted, {failed} failed{where}", file=sys.stderr)
    return 1 if failed else 0
