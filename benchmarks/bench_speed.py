#!/usr/bin/env python
"""Speed and memory of our ConViT/DeiT against timm's, side by side in one process.

For each size X in --models (tiny by default) four competitors are built:

    ours_convit   convit.create_model("convit_X")      (timm's weights copied in)
    timm_convit   timm.create_model("convit_X")
    ours_deit     convit.create_model("deit_X")        (timm's weights copied in)
    timm_deit     timm.create_model("deit_X_patch16_224")

Our models get timm's (random-init) weights so that every pair computes the same function;
the script checks the logits agree before timing.  Two modes are measured:

    infer   eval(), torch.inference_mode(), one forward of a batch
    train   train(), zero_grad, forward, cross-entropy, backward, AdamW step

Repeats are INTERLEAVED (round r runs every competitor once, in a rotated order), so the
competitors share the same machine load; we report the median time per competitor and,
for ratios, the median of the per-round ratios (paired, robust to load changes between
rounds).  images/s = batch / median time.

Memory is the peak EXTRA memory of one call: the high-water mark during the call minus
what was in use just before it (activations, temporaries, gradients; not the weights or
the optimizer state, which already exist), taken in one extra call per competitor after
the warm-up, outside the timed rounds.  On CUDA: torch.cuda.max_memory_allocated after
reset_peak_memory_stats.  On CPU: Linux's peak resident set size (VmHWM, reset through
/proc/self/clear_refs) minus VmRSS before the call, measured in a child process started
with MALLOC_MMAP_THRESHOLD_=65536 so that glibc mmaps every tensor and gives it back when
it is freed (RSS then follows live memory; otherwise freed blocks stay cached in the heap).
The timed runs happen in this process with glibc's default behaviour, which reuses freed
heap blocks (forcing mmap would add page faults to every new tensor).  CPU figures are
process-level and approximate (+- a few MB); without /proc/self/clear_refs they are n/a.

CPU defaults: float32, batch 32, 224x224.  CUDA defaults: bf16 autocast, batch 256 for
inference and 128 for training, CUDA-event timing after warm-up, every SDPA backend enabled,
and the model FLOPs utilisation (MFU) of each training run:
    achieved FLOP/s = 3 x (2 x forward MACs per image) x images/s
    MFU             = achieved FLOP/s / measured bf16 matmul peak (an 8192^3 matmul, timed here)
with forward MACs from convit.nn.arithmetic.flops(cfg) (the papers' counting convention).

Examples:
    python benchmarks/bench_speed.py                                 # CPU, tiny, ~2-3 min
    python benchmarks/bench_speed.py --device cuda --models tiny,small,base --json gpu.json
    python benchmarks/bench_speed.py --device cuda --models base --compile
    python benchmarks/bench_speed.py --device cuda --models small --gpsa-kernel both --deit-w432

--gpsa-kernel both adds ours_convit_nokernel (ours_convit with the fused GPSA kernel switched
off: FastGPSA's torch path), --deit-w432 adds ours_deit_w432 for small (speed_models.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Optional

from measure import MMAP_ENV, MemoryMeter, Timer, environment, measured_bf16_peak
from speed_models import build_models, prepare_steps

# (a, b): images/s of a over b, for every pair present.
RATIOS = (
    ("ours_convit", "ours_deit"),
    ("ours_convit", "timm_deit"),
    ("ours_convit", "timm_convit"),
    ("ours_deit", "timm_deit"),
    ("ours_convit", "ours_convit_nokernel"),
    ("ours_convit_nokernel", "ours_deit"),
    ("ours_convit", "ours_deit_w432"),
    ("ours_convit_nokernel", "ours_deit_w432"),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", default="tiny", help="comma-separated sizes: tiny,small,base")
    p.add_argument("--modes", default="infer,train", help="comma-separated: infer,train")
    p.add_argument("--batch", type=int, default=None, help="inference batch (cpu 32, cuda 256)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (cpu 32, cuda 128)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (cpu: 5 infer / 3 train; cuda: 20)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per competitor (cpu 1, cuda 5)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16"],
        help="fp32 = no autocast, bf16 = bf16 autocast (default: cpu fp32, cuda bf16)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile every model (same ratios reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of ours_convit,timm_convit,ours_deit,timm_deit "
        "(and ours_convit_nokernel, ours_deit_w432 where added)",
    )
    p.add_argument(
        "--flush-denormal",
        action="store_true",
        help="torch.set_flush_denormal(True) for the whole run (x86 CPU; informational)",
    )
    p.add_argument(
        "--gpsa-kernel",
        default="on",
        choices=["on", "off", "both"],
        help="the fused GPSA kernel (CUDA) in ours_convit: on, off, or both (adds ours_convit_nokernel)",
    )
    p.add_argument(
        "--deit-w432",
        action="store_true",
        help="for small: add ours_deit_w432, a DeiT as wide as ConViT-S (9 heads x 48; random weights)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the ours-vs-timm logits check")
    p.add_argument("--peak-matmul", type=int, default=8192, help="size of the bf16 peak matmul (cuda)")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--memory-only", default=None, metavar="FILE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch = args.batch or (256 if cuda else 32)
    args.train_batch = args.train_batch or (128 if cuda else 32)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    return args


def warm_up(steps: dict, args) -> dict[str, float]:
    """Untimed calls (compilation, AdamW creating its state, caches)."""
    seconds = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(max(args.warmup, 1)):
            step()
        seconds[name] = time.perf_counter() - t0
    return seconds


def memory_phase(models: dict, mode: str, args, meter: MemoryMeter) -> dict[str, Optional[int]]:
    steps, _ = prepare_steps(models, mode, args)
    warm_up(steps, args)
    return {name: meter.measure(step) for name, step in steps.items()}


def timing_phase(models: dict, mode: str, args, timer: Timer, memory: dict) -> dict:
    steps, batch = prepare_steps(models, mode, args)
    repeats = args.repeats or (20 if args.device == "cuda" else (5 if mode == "infer" else 3))
    results = {
        name: {
            "times": [],
            "batch": batch,
            "macs_per_image": models[name][1],
            "peak_extra_bytes": memory.get(name),
        }
        for name in steps
    }
    for name, sec in warm_up(steps, args).items():
        results[name]["warmup_s"] = sec
    names = list(steps)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            results[name]["times"].append(timer(steps[name]))
        print(
            f"  {mode} round {r + 1}/{repeats}: "
            + "  ".join(f"{n} {results[n]['times'][-1]:.3f}s" for n in names),
            flush=True,
        )
    for res in results.values():
        med = statistics.median(res["times"])
        res["median_s"], res["min_s"] = med, min(res["times"])
        res["images_per_s"] = batch / med
        if mode == "train" and args.device == "cuda" and args.peak_flops:
            achieved = 3 * 2 * res["macs_per_image"] * res["images_per_s"]
            res["achieved_flops"], res["mfu"] = achieved, achieved / args.peak_flops
    # paired ratios: per round, images/s of a over images/s of b = time_b / time_a
    ratios = {}
    for a, b in RATIOS:
        if a in results and b in results:
            per_round = [tb / ta for ta, tb in zip(results[a]["times"], results[b]["times"])]
            ratios[f"{a}/{b}"] = {
                "median": statistics.median(per_round),
                "per_round": per_round,
                "of_medians": results[a]["images_per_s"] / results[b]["images_per_s"],
            }
    return {"results": results, "ratios": ratios}


def cpu_memory_in_child(args) -> dict:
    """Run the memory phase in a child process with glibc mmapping every tensor."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "memory.json")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-only",
            path,
            "--no-check",
            "--device",
            "cpu",
            "--models",
            args.models,
            "--modes",
            args.modes,
            "--batch",
            str(args.batch),
            "--train-batch",
            str(args.train_batch),
            "--img-size",
            str(args.img_size),
            "--dtype",
            args.dtype,
            "--warmup",
            str(args.warmup),
            "--gpsa-kernel",
            args.gpsa_kernel,
        ]
        for flag, value in (("--threads", args.threads), ("--only", args.only)):
            if value:
                cmd += [flag, str(value)]
        if args.flush_denormal:
            cmd.append("--flush-denormal")
        if args.deit_w432:
            cmd.append("--deit-w432")
        print("  memory: child process " + " ".join(cmd[2:]), flush=True)
        proc = subprocess.run(cmd, env=dict(os.environ, **{MMAP_ENV: "65536"}))
        if proc.returncode != 0 or not os.path.exists(path):
            print("  memory: the child process failed; memory is reported as n/a")
            return {}
        with open(path) as f:
            return json.load(f)


def print_table(size: str, mode_out: dict, args, mem_note: str) -> None:
    for mode, out in mode_out.items():
        res = out["results"]
        print(
            f"\n[{size}] {mode}: batch {next(iter(res.values()))['batch']}, {args.dtype}, "
            f"{args.img_size}x{args.img_size}{', compiled' if args.compile else ''}"
        )
        hdr = f"  {'model':<20} {'images/s':>9} {'median s':>9} {'min s':>8} {'peak extra MB':>14}"
        if mode == "train" and args.device == "cuda":
            hdr += f" {'MFU':>6}"
        print(hdr)
        for name, r in res.items():
            mem = "n/a" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.0f}"
            line = (
                f"  {name:<20} {r['images_per_s']:>9.1f} {r['median_s']:>9.3f} {r['min_s']:>8.3f} {mem:>14}"
            )
            if "mfu" in r:
                line += f" {100 * r['mfu']:>5.1f}%"
            print(line)
        for k, v in out["ratios"].items():
            print(
                f"  images/s ratio {k:<26} {v['median']:.2f}  (paired rounds; ratio of medians "
                f"{v['of_medians']:.2f})"
            )
    print(f"  memory: {mem_note}")


def _set_up_torch(args) -> None:
    """Threads, flush-denormal and (CUDA) every SDPA backend enabled, as the flags ask."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        print("warning: this CPU does not support flush-denormal mode")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        for enable in (
            torch.backends.cuda.enable_flash_sdp,
            torch.backends.cuda.enable_mem_efficient_sdp,
            torch.backends.cuda.enable_math_sdp,
        ):
            enable(True)


def _extras(args) -> tuple[bool, bool]:
    """build_models' optional competitors: (kernel on and off, the DeiT of ConViT-S's width)."""
    return args.gpsa_kernel == "both", args.deit_w432


def _memory_only(args, only, meter) -> int:
    """The child process of cpu_memory_in_child: peak memory per size and mode, as JSON."""
    mem = {}
    for size in args.models.split(","):
        models = build_models(size, args.device, only, False, args.img_size, *_extras(args))
        mem[size] = {mode: memory_phase(models, mode, args, meter) for mode in args.modes.split(",")}
        del models
    with open(args.memory_only, "w") as f:
        json.dump(mem, f)
    return 0


def _measure_sizes(args, only, timer, meter) -> dict:
    """Timing (and memory) of every size and mode, printed as tables; the sizes' results."""
    import torch

    sizes = {}
    cpu_mem = cpu_memory_in_child(args) if args.device == "cpu" and meter.available else {}
    for size in args.models.split(","):
        print(f"\n== {size} ==", flush=True)
        models = build_models(size, args.device, only, not args.no_check, args.img_size, *_extras(args))
        sizes[size] = {}
        for mode in args.modes.split(","):
            if args.device == "cuda":
                memory = memory_phase(models, mode, args, meter)
            else:
                memory = cpu_mem.get(size, {}).get(mode, {})
            sizes[size][mode] = timing_phase(models, mode, args, timer, memory)
        print_table(size, sizes[size], args, meter.note)
        del models
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return sizes


def main(argv=None) -> int:
    args = parse_args(argv)
    _set_up_torch(args)
    timer = Timer(args.device)
    meter = MemoryMeter(args.device)
    env = environment(args)
    cmd = "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:])
    if not args.memory_only:
        print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
        print(f"command: {cmd}", flush=True)
    args.peak_flops = None
    if args.device == "cuda":
        args.peak_flops = measured_bf16_peak(args.peak_matmul, timer)
        env["bf16_matmul_peak_tflops"] = args.peak_flops / 1e12
        print(f"measured bf16 matmul peak ({args.peak_matmul}^3): {args.peak_flops / 1e12:.1f} TFLOP/s")
    only = args.only.split(",") if args.only else None
    if args.memory_only:
        return _memory_only(args, only, meter)
    out = {
        "environment": env,
        "command": cmd,
        "args": {k: v for k, v in vars(args).items()},
        "memory_note": meter.note,
    }
    t_start = time.perf_counter()
    out["sizes"] = _measure_sizes(args, only, timer, meter)
    out["wall_s"] = time.perf_counter() - t_start
    load = os.getloadavg() if hasattr(os, "getloadavg") else "n/a"
    print(f"\nwall time {out['wall_s']:.0f} s; load average now {load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
