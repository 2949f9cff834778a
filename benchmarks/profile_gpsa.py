#!/usr/bin/env python
"""torch.profiler tables of a few steps of our ConViT and DeiT, to see where ConViT's time goes.

For each size in --models and each mode (infer, train: the steps of bench_speed.py) it profiles
--steps steps of ``convit_X`` (with the fused GPSA kernel, and without it under
``--gpsa-kernel both``) and ``deit_X`` (random weights: the kernels do not depend on them) and
prints ``key_averages().table(sort_by=..., row_limit=20)`` sorted by CUDA time on CUDA (CPU time
on the CPU), each table also written to --out as ``profile_<size>_<model>_<mode>.txt``.

    python benchmarks/profile_gpsa.py --device cuda --models small,base --gpsa-kernel both --out $OUT
    python benchmarks/profile_gpsa.py --device cpu --models tiny --batch 2 --img-size 64   # smoke
"""

from __future__ import annotations

import argparse
import os
import sys

from speed_models import make_step, without_kernel


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--models", default="small,base", help="comma-separated sizes: tiny,small,base")
    p.add_argument("--modes", default="infer,train", help="comma-separated: infer,train")
    p.add_argument("--batch", type=int, default=None, help="inference batch (cuda 256, cpu 8)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (cuda 128, cpu 8)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before profiling")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--gpsa-kernel", default="on", choices=["on", "off", "both"])
    p.add_argument("--rows", type=int, default=20, help="rows of each table")
    p.add_argument("--out", default=None, help="folder for the tables (default: print only)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch = args.batch or (256 if cuda else 8)
    args.train_batch = args.train_batch or (128 if cuda else 8)
    return args


def variants(size: str, gpsa_kernel: str) -> list[tuple[str, str, bool]]:
    """(label, zoo name, kernel on) of every model profiled for ``size``."""
    convit = [(f"convit_{size}", f"convit_{size}", gpsa_kernel != "off")]
    if gpsa_kernel == "both":
        convit.append((f"convit_{size}_nokernel", f"convit_{size}", False))
    return convit + [(f"deit_{size}", f"deit_{size}", True)]


def profile_step(step, args) -> str:
    """The profiler's table of ``args.steps`` calls of ``step`` after ``args.warmup`` calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if args.device == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=args.rows)


def profile_size(size: str, args) -> None:
    import torch

    import convit

    for label, name, kernel in variants(size, args.gpsa_kernel):
        torch.manual_seed(0)
        model = convit.create_model(name).to(args.device)
        for mode in args.modes.split(","):
            batch = args.batch if mode == "infer" else args.train_batch
            x = torch.randn(batch, 3, args.img_size, args.img_size, device=args.device)
            y = torch.randint(0, 1000, (batch,), device=args.device)
            dtype = torch.bfloat16 if args.device == "cuda" else None
            step, _ = make_step(model, mode, x, y, dtype, args.device)
            table = profile_step(step if kernel else without_kernel(step), args)
            title = f"== {label} {mode}: batch {batch}, {args.img_size}px, {args.steps} steps =="
            print(f"\n{title}\n{table}", flush=True)
            if args.out:
                with open(os.path.join(args.out, f"profile_{size}_{label}_{mode}.txt"), "w") as f:
                    f.write(f"{title}\n{table}\n")
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    for size in args.models.split(","):
        profile_size(size, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
