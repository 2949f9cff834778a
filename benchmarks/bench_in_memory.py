#!/usr/bin/env python
"""A run on an image folder of JPEGs: DataLoaders (``--in-memory off``) against the splits decoded
once and held in memory (``--in-memory on``), same model, same recipe.

The folder is written from CIFAR-10's JPEG files (``cifar10_jpeg.npz``, see ../shared/data/README.md:
the files' own bytes, not re-encoded): ``--per-class`` training and ``--test-per-class`` test
images of each of the 10 classes, as ``DIR/train/<class>/i.jpg`` and ``DIR/val/<class>/i.jpg``.
The model and recipe are those of a ``convit study`` of such a folder at 32 px: the default
ConViT arm (4 blocks of width 48, 4 heads, MLP ratio 2, the first 3 GPSA, 4x4 patches: an 8x8
grid), batch 64, `small` augmentation, bf16 autocast on CUDA, evaluation at the end.  Repeats
alternate the two paths (off, on, off, on, ...) so both share the machine's load.

Reported per path: the training images/s of each epoch (``images_per_s`` in ``log.jsonl``:
reading, augmenting and the steps; median over epochs and repeats), the training images per
CPU-second of this process (``epoch_cpu_time_s``, epochs before the last, whose CPU time includes
the evaluation: on a CPU shared with other jobs this moves less with their load than the wall
clock), and the whole run's wall time (building the data, which includes decoding every file once
for ``on``, the epochs, evaluation).

    python benchmarks/bench_in_memory.py [--npz ../shared/data/cifar10_jpeg.npz] [--per-class 400]
        [--test-per-class 100] [--epochs 3] [--repeats 2] [--threads 1] [--device cpu] [--json FILE]
    python benchmarks/bench_in_memory.py --write-folder DIR [--per-class 500]   # the folder only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ARCH = dict(embed_dim=48, num_heads=4, depth=4, mlp_ratio=2.0, local_up_to_layer=3, patch_size=4)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--npz", default=str(HERE.parent.parent / "shared" / "data" / "cifar10_jpeg.npz"))
    p.add_argument("--per-class", type=int, default=400, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=100, help="test images per class")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="runs of each path, interleaved")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the measurements to this JSON file")
    p.add_argument("--write-folder", default=None, metavar="DIR", help="only write the image folder to DIR")
    return p.parse_args(argv)


def write_folder(npz: str, root: Path, per_class: int, test_per_class: int) -> int:
    """CIFAR-10's JPEG files as an image folder (the first images of each class); returns the
    number of files written."""
    data = np.load(npz)
    classes = [str(c) for c in data["classes"]]
    written = 0
    for split, key, count in (("train", "train", per_class), ("val", "test", test_per_class)):
        labels = data[f"{key}_labels"]
        offsets = data[f"{key}_offsets"]
        blob = data[f"{key}_bytes"]
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(np.flatnonzero(labels == label)[:count]):
                (folder / f"{j:05d}.jpg").write_bytes(blob[offsets[i] : offsets[i + 1]].tobytes())
                written += 1
    return written


def one_run(root: Path, out: Path, in_memory: str, args) -> dict:
    """One fit of the study's recipe on the folder; its epochs' images/s and wall time."""
    from convit.core.fileio import read_jsonl
    from convit.training.config import build_config
    from convit.training.fit import fit

    cfg = build_config(
        dict(
            dataset="imagefolder",
            data_path=str(root),
            img_size=32,
            model="convit_digits",
            model_kwargs=ARCH,
            augment="small",
            batch_size=args.batch,
            lr=2e-3 * args.batch / 64,
            epochs=args.epochs,
            warmup_epochs=1,
            mixup=0.0,
            cutmix=0.0,
            drop_path=0.0,
            num_workers=0,
            threads=args.threads,
            device=args.device,
            amp="bf16" if args.device.startswith("cuda") else "off",
            eval_every=args.epochs,
            locality=False,
            report=False,
            in_memory=in_memory,
            output=str(out),
            overwrite=True,
        )
    )
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = fit(cfg)
    wall = time.perf_counter() - t0
    log = read_jsonl(out / "log.jsonl")
    train_epochs = log[:-1] or log  # the last epoch's CPU time includes the evaluation
    return {
        "in_memory": in_memory,
        "wall_s": wall,
        "images_per_s": [e["images_per_s"] for e in log],
        "images_per_cpu_s": [result.train_images / e["epoch_cpu_time_s"] for e in train_epochs],
        "test_top1": result.test_top1,
    }


def summary(runs: list[dict]) -> dict:
    out = {}
    for path in ("off", "on"):
        mine = [r for r in runs if r["in_memory"] == path]
        out[path] = {
            "images_per_s_median": statistics.median(v for r in mine for v in r["images_per_s"]),
            "images_per_cpu_s_median": statistics.median(v for r in mine for v in r["images_per_cpu_s"]),
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
        }
    out["ratio_images_per_s"] = out["on"]["images_per_s_median"] / out["off"]["images_per_s_median"]
    out["ratio_images_per_cpu_s"] = (
        out["on"]["images_per_cpu_s_median"] / out["off"]["images_per_cpu_s_median"]
    )
    out["ratio_wall"] = out["off"]["wall_s_median"] / out["on"]["wall_s_median"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.npz):
        raise SystemExit(f"no {args.npz}: pass --npz path/to/cifar10_jpeg.npz")
    if args.write_folder:  # the folder alone (benchmarks/gpu_check.sh studies it)
        n = write_folder(args.npz, Path(args.write_folder), args.per_class, args.test_per_class)
        print(f"wrote {n} JPEG files to {args.write_folder}")
        return 0
    import torch

    print(f"command: python benchmarks/bench_in_memory.py {' '.join(sys.argv[1:])}", flush=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar_folder"
        n = write_folder(args.npz, root, args.per_class, args.test_per_class)
        print(f"wrote {n} JPEG files to {root}", flush=True)
        for r in range(args.repeats):
            for path in ("off", "on"):
                run = one_run(root, Path(tmp) / f"run_{path}_{r}", path, args)
                runs.append(run)
                per_epoch = " ".join(f"{v:.0f}" for v in run["images_per_s"])
                per_cpu = " ".join(f"{v:.0f}" for v in run["images_per_cpu_s"])
                print(
                    f"  repeat {r + 1} in_memory {path:<3}: wall {run['wall_s']:.1f} s, training images/s "
                    f"per epoch {per_epoch}, per CPU-second {per_cpu}, test top-1 {run['test_top1']:.2f}%",
                    flush=True,
                )
    s = summary(runs)
    print(
        f"median training images/s: DataLoader {s['off']['images_per_s_median']:.0f}, in memory "
        f"{s['on']['images_per_s_median']:.0f} (x{s['ratio_images_per_s']:.2f}); per CPU-second: "
        f"{s['off']['images_per_cpu_s_median']:.0f} against {s['on']['images_per_cpu_s_median']:.0f} "
        f"(x{s['ratio_images_per_cpu_s']:.2f}); median wall: {s['off']['wall_s_median']:.1f} s against "
        f"{s['on']['wall_s_median']:.1f} s (x{s['ratio_wall']:.2f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
