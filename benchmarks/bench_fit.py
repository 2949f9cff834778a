#!/usr/bin/env python
"""End-to-end ``fit`` against a bare PyTorch loop on the same work, side by side (docs/speed.md).

Two cases, each timed as process CPU time (``resource.getrusage``: user + system of this
process, which contention on a shared machine inflates far less than wall time):

* ``cifar10-cpu``: the model and data pipeline of the ``cifar10-cpu`` experiment scale (its
  ConViT, 50 images per class, batches cut, cropped and flipped from the uint8 split in memory
  by :mod:`convit.data.device`), ``--cifar-epochs`` epochs, evaluated at the last one;
* ``main``: the main job, ``convit train``'s defaults (convit_digits on digits, DataLoaders whose
  in-memory transforms run a batch at a time, :mod:`convit.data.batched`; evaluation and
  locality every epoch), all its 40 epochs unless ``--digits-epochs`` says otherwise.

**ours** is one whole :func:`convit.train.fit` call with ``convit train``'s hooks: data built
(decoded CIFAR-10 comes from the cache), model and recipe built, every epoch trained (lr
schedule per step, NaN checks), evaluated as the config says (validation, test at the end),
locality logged at evaluated epochs, the log line and ``last.pt`` written every epoch,
``best.safetensors`` when validation improves and ``model.safetensors`` at the end.  The
final report (figures, report.html) is an analysis hook of ``convit train`` and is *not*
included (``report=False``).

**bare** is the loop one would write by hand on the same model (built by the same recipe
function, same seed), the same optimizer (timm's AdamW from ``create_optimizer_v2``) and loss
(label smoothing), the same threads, over the same batches made beforehand and held in memory
as tensors (one epoch's batches, reused every epoch), and the same evaluations (validation at
the same epochs, test at the end) on held-in-memory tensors; no schedule, logging or files.

Each repeat runs ours and bare back to back (the order swapped every repeat) and gives one
throughput ratio ours / bare (bare CPU time / ours CPU time for the same images); a case's
ratio is the median of its repeats (printed with their range: on a shared VM the same run's CPU
time varies by 10% or more from minute to minute).  The last line is ``ratio R`` with R the
worse of the two cases.

    python benchmarks/bench_fit.py [--repeats 5] [--cifar-epochs 24] [--digits-epochs 40]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2

from convit.analysis import training_hooks
from convit.config import TrainConfig, build_config
from convit.experiments.runner import plan_runs
from convit.recipe import build_model
from convit.runtime import seed_everything, set_threads
from convit.train import data_loaders, device_batches, fit

Batches = List[Tuple[torch.Tensor, torch.Tensor]]


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cifar_config(epochs: int) -> Tuple[TrainConfig, bool]:
    """The cifar10-cpu scale's ConViT run at 50 images per class, shortened to ``epochs``."""
    spec = plan_runs("sample-efficiency", "cifar10-cpu", "unused", fractions=[50 / 4500], seeds=1,
                     variants=["convit"])[0]
    over = dict(spec.overrides, epochs=epochs, warmup_epochs=min(spec.overrides["warmup_epochs"], epochs / 5),
                eval_every=epochs)
    return build_config(over), spec.backend == "device"


def main_job_config(epochs: int) -> Tuple[TrainConfig, bool]:
    """``convit train``'s defaults (the digits preset), ``epochs`` epochs, no final report."""
    base = build_config({})
    return build_config({"epochs": epochs, "warmup_epochs": base.warmup_epochs, "report": False}), False


def materialise(cfg: TrainConfig, on_device: bool) -> Tuple[Batches, Batches, Batches, Any]:
    """One epoch of training batches and the val / test batches, as tensors in memory."""
    device = torch.device("cpu")
    data = device_batches(cfg, device) if on_device else data_loaders(cfg, device)
    data.train.set_epoch(1)
    train = [(x.clone(), y.clone()) for x, y in data.train]
    val = [(x.clone(), y.clone()) for x, y in data.val] if data.val is not None else []
    test = [(x.clone(), y.clone()) for x, y in data.test]
    return train, val, test, data.bundle


def run_ours(cfg: TrainConfig, on_device: bool, folder: Path) -> float:
    """CPU seconds of one whole fit."""
    start = cpu_seconds()
    fit(build_config({**cfg.to_dict(), "output": str(folder), "overwrite": True}), on_device=on_device,
        **training_hooks())
    return cpu_seconds() - start


@torch.no_grad()
def _evaluate(model: torch.nn.Module, batches: Batches) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    model.train()
    return correct / max(1, sum(len(y) for _, y in batches))


def run_bare(cfg: TrainConfig, batches: Tuple[Batches, Batches, Batches, Any]) -> float:
    """CPU seconds of the hand-written loop over the same batches and evaluations."""
    train, val, test, bundle = batches
    seed_everything(cfg.seed)
    model = build_model(cfg, bundle.num_classes, bundle.in_chans, bundle.img_size, lambda s: None)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.resolved_lr(1), weight_decay=cfg.weight_decay)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    start = cpu_seconds()
    model.train()
    for epoch in range(1, cfg.run_epochs + 1):
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
        if epoch % cfg.eval_every == 0 or epoch == cfg.run_epochs:
            _evaluate(model, val)
    _evaluate(model, test)
    return cpu_seconds() - start


def bench_case(name: str, cfg: TrainConfig, on_device: bool, repeats: int) -> float:
    """Repeats of ours and bare back to back (the order swapped every repeat); prints them and
    returns the median of the per-repeat ratios (each from two runs minutes apart at most, so a
    slow spell of this shared machine inflates both sides of a ratio rather than one side)."""
    set_threads(cfg.threads, torch.device("cpu"), 1)
    batches = materialise(cfg, on_device)
    images = cfg.run_epochs * sum(len(y) for _, y in batches[0])
    ours, bare, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            run = {"ours": lambda: run_ours(cfg, on_device, Path(tmp) / f"run{rep}"),
                   "bare": lambda: run_bare(cfg, batches)}
            order = ("ours", "bare") if rep % 2 == 0 else ("bare", "ours")
            took = {k: run[k]() for k in order}
            ours.append(took["ours"])
            bare.append(took["bare"])
            ratios.append(bare[-1] / ours[-1])
            print(f"  {name} repeat {rep + 1} ({' then '.join(order)}): ours {ours[-1]:.2f} CPU-s, bare {bare[-1]:.2f} "
                  f"CPU-s, ours/bare throughput {ratios[-1]:.3f}", flush=True)
    ratio = statistics.median(ratios)
    o, b = statistics.median(ours), statistics.median(bare)
    model = f"{cfg.model} with {cfg.model_kwargs}" if cfg.model_kwargs else cfg.model  # the scale resizes it
    print(f"{name}: {model} {cfg.run_epochs} epochs, {images} training images; median CPU-s ours {o:.2f} "
          f"({images / o:.0f} img/CPU-s), bare {b:.2f} ({images / b:.0f} img/CPU-s); ours/bare throughput: "
          f"median {ratio:.3f} of {repeats} (range {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cifar-epochs", type=int, default=24)
    p.add_argument("--digits-epochs", type=int, default=40, help="default: the main job's 40")
    p.add_argument("--cases", nargs="+", default=["cifar10-cpu", "main"], choices=["cifar10-cpu", "main"])
    args = p.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    ratios: Dict[str, float] = {}
    if "cifar10-cpu" in args.cases:
        ratios["cifar10-cpu"] = bench_case("cifar10-cpu", *cifar_config(args.cifar_epochs), args.repeats)
    if "main" in args.cases:
        ratios["main"] = bench_case("main", *main_job_config(args.digits_epochs), args.repeats)
    print(f"ratio {min(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
