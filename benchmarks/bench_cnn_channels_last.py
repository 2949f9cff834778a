#!/usr/bin/env python
"""The cifar10-cpu CNN arm's training step in contiguous and channels-last memory format, side by side.

The same ResNet (widths 10-20-40-80, one BasicBlock per stage, 3x3 stride-1 stem, 128,466
parameters: the CNN arm of docs/results.md sec. 5), one thread, batch 64 of 32x32 images,
forward + backward + AdamW step; images per second of process CPU time, rounds interleaved so
that the machine's load hits both alike.  Only the memory layout differs: the maths is the same,
so a run's numbers move by float rounding alone.

    python benchmarks/bench_cnn_channels_last.py [--steps 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from convit.weights.cnn import CNNConfig, build_cnn


def images_per_cpu_s(channels_last: bool, steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model = build_cnn(
        CNNConfig(widths=(10, 20, 40, 80), layers=(1, 1, 1, 1), small_stem=True, num_classes=10, img_size=32)
    )
    images = torch.randn(64, 3, 32, 32)
    targets = torch.randint(0, 10, (64,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.process_time()
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 64 * steps / (time.process_time() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    ratios = []
    for r in range(args.rounds):
        plain = images_per_cpu_s(False, args.steps)
        last = images_per_cpu_s(True, args.steps)
        ratios.append(last / plain)
        speeds = f"contiguous {plain:.0f}, channels-last {last:.0f} img/CPU-s"
        print(f"round {r}: {speeds}, ratio {last / plain:.2f}")
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"median ratio {statistics.median(ratios):.2f} (torch {torch.__version__}, CPU capability {cap})")


if __name__ == "__main__":
    main()
