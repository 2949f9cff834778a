#!/usr/bin/env python
"""A study's training images/s against the bare training step of the same model and batch.

For every run of a finished (or partly finished) ``convit study`` folder: the training images/s
its ``log.jsonl`` recorded (median over its epochs after the first, which pays for warm-up; the
first when there is only one), against the images/s of ``bench_speed.py``'s training step
(``speed_models.make_step``: zero_grad, forward under the run's autocast, cross-entropy,
backward, AdamW step; timed as ``bench_speed.py`` times it, ``measure.Timer``, after warm-up) of
the same model, built from the run's own ``config.yaml`` as ``fit`` builds it, on a random batch
of the run's batch size and image size, with the run's CPU threads.  The ratio run / bare says
what the run's data path, loss, schedule and bookkeeping cost (issue 32 asks for at least 0.8 on
a GPU).  Runs of a few steps per epoch say little: their epochs are mostly per-epoch overhead.

    python benchmarks/study_speed.py STUDY_DIR [--repeats 20] [--warmup 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from measure import Timer
from speed_models import make_step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="a convit study folder (plan.json, runs/)")
    p.add_argument("--repeats", type=int, default=20, help="timed steps of the bare model")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--json", default=None, help="write the measurements to this JSON file")
    return p.parse_args(argv)


def run_images_per_s(folder: Path) -> float:
    """The run's training images/s: the median of its logged epochs after the first."""
    from convit.core.fileio import read_jsonl

    values = [e["images_per_s"] for e in read_jsonl(folder / "log.jsonl")]
    return statistics.median(values[1:] or values)


def bare_images_per_s(folder: Path, num_classes: int, in_chans: int, args) -> dict:
    """bench_speed's training step of the run's model (built as fit builds it) at its batch."""
    import torch

    from convit.core.runtime import resolve_amp, resolve_device, set_threads
    from convit.training.config import TrainConfig, load_config_file
    from convit.training.recipe import build_model

    cfg = TrainConfig(**load_config_file(folder / "config.yaml"))
    device = resolve_device(cfg.device)
    set_threads(cfg.threads, device)  # the run's threads (on CPU they set its speed)
    amp = resolve_amp(cfg.amp, device)
    model = build_model(cfg, num_classes, in_chans, cfg.img_size, say=lambda s: None).to(device)
    x = torch.randn(cfg.batch_size, in_chans, cfg.img_size, cfg.img_size, device=device)
    y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    step, _ = make_step(model, "train", x, y, amp, device.type)
    for _ in range(args.warmup):
        step()
    timer = Timer(device.type)
    seconds = statistics.median(timer(step) for _ in range(args.repeats))
    return {
        "model": cfg.model,
        "batch": cfg.batch_size,
        "img_size": cfg.img_size,
        "device": str(device),
        "autocast": str(amp),
        "in_memory": cfg.in_memory,
        "bare_images_per_s": cfg.batch_size / seconds,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from convit.study.runs import load_plan

    study = Path(args.study)
    plan = load_plan(study)
    in_chans = plan.data.channels if plan.data.kind == "builtin" else 3
    rows = []
    for run in sorted(p for p in (study / "runs").iterdir() if (p / "log.jsonl").is_file()):
        row = {"run": run.name, **bare_images_per_s(run, len(plan.data.classes), in_chans, args)}
        row["run_images_per_s"] = run_images_per_s(run)
        row["ratio"] = row["run_images_per_s"] / row["bare_images_per_s"]
        rows.append(row)
        print(
            f"{run.name:<28} {row['model']:<14} batch {row['batch']:>4} at {row['img_size']} px on "
            f"{row['device']} ({row['autocast']}, in_memory {row['in_memory']}): run "
            f"{row['run_images_per_s']:.0f} images/s, bare step {row['bare_images_per_s']:.0f} images/s, "
            f"ratio {row['ratio']:.2f}",
            flush=True,
        )
    if not rows:
        raise SystemExit(f"no run with a log.jsonl under {study / 'runs'}")
    ratios = [r["ratio"] for r in rows]
    print(f"ratio run / bare step: median {statistics.median(ratios):.2f}, lowest {min(ratios):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"study": str(study), "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
