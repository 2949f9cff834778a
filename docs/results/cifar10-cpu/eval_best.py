"""Test top-1 at the best validation epoch, for runs whose ``best.safetensors`` was kept.

Weights are never committed, so this reads a run folder where it was trained (SRC) and writes
``best_val_test.json`` into its committed copy (DST, which holds its ``result.json``).  The
checkpoint is evaluated with ``convit eval`` twice: on the validation hold-out, where it must
give the run's ``best_val_top1`` exactly (the check that it is the weights of that epoch, read
back as trained), and on the test split, the number reported.  Usage, from the repository root:

    python docs/results/cifar10-cpu/eval_best.py SRC:DST [SRC:DST ...]

``write_tables.py`` reads the files; nothing here chooses anything on test.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

FILE = "best_val_test.json"


def _eval(checkpoint: Path, *split: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "convit.cli", "eval", "--checkpoint", str(checkpoint), "--json", *split]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def evaluate(src: Path, dst: Path) -> dict[str, Any]:
    """Evaluate ``src/best.safetensors``; write and return ``dst/best_val_test.json``."""
    result = json.loads((dst / "result.json").read_text())
    checkpoint = src / "best.safetensors"
    seed = str(result["settings"]["seed"])
    fraction = str(result["settings"]["val_fraction"])
    val = _eval(checkpoint, "--split", "val", "--seed", seed, "--val-fraction", fraction)
    if val["top1"] != result["best_val_top1"]:
        logged = result["best_val_top1"]
        raise SystemExit(f"{src}: best.safetensors gives val {val['top1']}, the run logged {logged}")
    test = _eval(checkpoint)
    record = {
        "best_epoch": result["best_epoch"],
        "val_top1": val["top1"],
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "test_images": test["n"],
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "command": f"convit eval --checkpoint best.safetensors --json (and --split val --seed {seed})",
        "evaluated": datetime.date.today().isoformat(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }
    (dst / FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", nargs="+", metavar="SRC:DST")
    for pair in p.parse_args().pairs:
        src, dst = pair.split(":")
        r = evaluate(Path(src), Path(dst))
        print(f"{dst}: best epoch {r['best_epoch']}, val {r['val_top1']}, test {r['test_top1']}")


if __name__ == "__main__":
    main()
