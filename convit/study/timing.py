"""How long a study's runs take on this machine: a few timed training steps, and the cost model.

:func:`measure` times a few optimizer steps of each model on random images (in the threads
and on the device a run will use: bf16 autocast on CUDA, as the runs) and decoding a few of
the data's files; :func:`run_seconds` turns that into the wall time of one run (start-up,
epochs, per-epoch checkpoint, final evaluation).  The plan is sized with these
(:mod:`convit.study.plan`); they are estimates, printed as such.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..data import eval_transform, read_image
from ..nn.model import count_params
from ..weights.zoo import create_model

__all__ = ["Timing", "measure", "run_seconds", "STARTUP_S", "EPOCH_OVERHEAD_S", "EVAL_OVERHEAD_S"]

#: Seconds of a run outside its training steps: process, data scan, model build, files.
STARTUP_S = 3.0
#: Seconds per epoch outside its steps: last.pt, log line, loader start.
EPOCH_OVERHEAD_S = 0.04
#: Seconds per validation outside its images: the locality probe, best.safetensors.
EVAL_OVERHEAD_S = 0.05


@dataclass
class Timing:
    """Seconds per training image (step + data), per evaluated image, and start-up per run."""

    train_s: dict[str, float]  # per variant, a training image (forward, backward, step)
    eval_s: dict[str, float]  # per variant, an evaluated image
    load_s: float  # per image read from disk and transformed (0 for in-memory data)
    startup_s: float  # per run
    params: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (what a run's ``amp`` does there), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _clock(device: torch.device) -> float:
    """The time, after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _time_model(
    model: torch.nn.Module,
    batch: int,
    res: int,
    in_chans: int,
    num_classes: int,
    steps: int = 4,
    device: Optional[torch.device] = None,
) -> dict[str, float]:
    """Seconds per image of a training step and of an evaluation, after one warm-up step, on
    ``device`` (default the CPU)."""
    device = device or torch.device("cpu")
    model.to(device)
    x = torch.randn(batch, in_chans, res, res).to(device)
    y = torch.randint(0, num_classes, (batch,)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = _clock(device)
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    train = (_clock(device) - t0) / (steps * batch)
    model.eval()
    with torch.no_grad(), _autocast(device):
        t0 = _clock(device)
        for _ in range(steps):
            model(x)
    return {"train": train, "eval": (_clock(device) - t0) / (steps * batch)}


def _time_loading(root: Optional[str], files: list[str], res: int) -> float:
    """Seconds to read and transform one of ``files`` (the first few), 0 without files."""
    if root is None or not files:
        return 0.0
    t = eval_transform(res, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3, None)
    picked = files[:: max(1, len(files) // 16)][:16]
    t0 = time.perf_counter()
    for rel in picked:
        t(read_image(Path(root) / rel, "RGB"))
    return (time.perf_counter() - t0) / len(picked)


def measure(
    architectures: dict[str, dict[str, Any]],
    *,
    res: int,
    in_chans: int,
    num_classes: int,
    batch: int,
    threads: int,
    root: Optional[str] = None,
    files: Optional[list[str]] = None,
    probe_s_per_file: float = 0.0,
    n_files: int = 0,
    device: str = "cpu",
) -> Timing:
    """Time every model and the data on this machine, in ``threads`` threads (then restored),
    the models on ``device`` (``cpu`` or ``cuda``).

    architectures: per variant, the model's name and its ``model_kwargs`` (a plan's ``model``
    entries), built by :func:`convit.weights.zoo.create_model` for the data's size and classes.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train = {}
        evals = {}
        params = {}
        for name, arch in architectures.items():
            torch.manual_seed(0)
            model = create_model(
                arch["model"],
                **arch["model_kwargs"],
                img_size=res,
                in_chans=in_chans,
                num_classes=num_classes,
            )
            params[name] = count_params(model)
            t = _time_model(model, batch, res, in_chans, num_classes, device=torch.device(device))
            train[name] = t["train"]
            evals[name] = t["eval"]
        load = _time_loading(root, files or [], res)
    finally:
        torch.set_num_threads(before)
    return Timing(train, evals, load, STARTUP_S + probe_s_per_file * n_files, params)


def run_seconds(
    timing: Timing,
    variant: str,
    *,
    train_images: int,
    epochs: int,
    test_images: int,
    val_images: int = 0,
    evals: int = 0,
) -> float:
    """Estimated wall time of one run: start-up, ``epochs`` over ``train_images``, ``evals``
    evaluations of ``val_images`` validation images, one evaluation of the test split."""
    per_train = timing.train_s[variant] + timing.load_s
    per_eval = timing.eval_s[variant] + timing.load_s
    return (
        timing.startup_s
        + epochs * (train_images * per_train + EPOCH_OVERHEAD_S)
        + evals * (val_images * per_eval + EVAL_OVERHEAD_S)
        + test_images * per_eval
    )
