"""``fit(cfg)``: a whole training run, from a :class:`~convit.training.config.TrainConfig` to a run folder.

:func:`fit` reads top to bottom like DeiT's ``main``: build (process and device, data, model
and its :class:`~convit.training.engine.TrainStep`, resumed state, run folder:
:mod:`convit.training.prepare`), then per epoch train, evaluate, log and save ``last.pt``, then
save the final model and return a :class:`~convit.training.fit_result.FitResult`.  What the run
folder holds, and how ``--output`` / ``--resume`` pick it, is :mod:`convit.training.run_folder`
and :mod:`convit.training.resume`; device and seeds are :mod:`convit.core.runtime`; model and
recipe are :mod:`convit.training.recipe`; one epoch of training or evaluation is
:mod:`convit.training.engine`.

The batches come from one of two sources (:mod:`convit.training.batches`), and the loop is the
same for both: DataLoaders over :func:`convit.data.build_data`'s splits (any dataset, DDP under
torchrun), or, with ``on_device=True`` or ``--in-memory`` (:mod:`convit.training.in_memory`),
batches made on the accelerator from whole splits decoded once and held there (one process).

A one-process run whose training step runs out of GPU memory is run again from its last
checkpoint with twice the micro-batches (:mod:`convit.training.oom_retry`).

The trainer does no analysis: ``convit train`` passes hooks (:func:`convit.analysis.training_hooks`)
that add per-epoch locality to the log and write figures and report.html at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..core import distributed
from ..core.fileio import CheckpointSaveError
from ..core.runtime import resolve_device, rng_state, tf32_matmuls
from . import unreadable
from .batches import RunData, data_loaders, device_batches
from .config import TrainConfig
from .engine import NonFiniteLossError, evaluate, train_one_epoch
from .fit_result import FitResult
from .in_memory import run_data
from .oom_retry import micro_batch, out_of_memory_in, with_retries
from .prepare import (
    build_model_and_step,
    config_comments,
    describe_run,
    first_reads,
    run_metadata,
    start_process,
    state_to_resume,
)
from .resume import TrainingState
from .run_folder import RunFolder, resolve_output, summary_text

__all__ = [
    "fit",
    "FitResult",
    "RunData",
    "data_loaders",
    "device_batches",
    "tf32_scope",
    "CheckpointSaveError",
    "NonFiniteLossError",
]

#: ``on_eval(model, probe_images) -> entries`` added to the log of an evaluated epoch (rank 0).
EvalHook = Callable[[nn.Module, torch.Tensor], dict[str, Any]]
#: ``on_end(run_folder)`` once the final model is written (rank 0).
EndHook = Callable[[Path], Any]


def fit(
    cfg: TrainConfig,
    *,
    on_device: bool = False,
    on_eval: Optional[EvalHook] = None,
    on_end: Optional[EndHook] = None,
    resume_state: Optional[dict[str, Any]] = None,
) -> FitResult:
    """Train as ``cfg`` says, in every process under torchrun (rank 0 alone writes and prints);
    returns the summary: final test metrics, final and best val top-1, time, paths written.

    on_device: batches from :func:`device_batches` instead of :func:`data_loaders` (on CUDA, in
        TF32 for the duration of the run: :func:`tf32_scope`); else ``cfg.in_memory`` decides.
    on_eval: if ``cfg.locality``, called after each evaluated epoch with the model and the first
        64 held-out images (val, else test); returns entries for the log.  on_end: if
        ``cfg.report``, called with the run folder once the final model is saved.
    resume_state: ``cfg.resume``'s last.pt as :func:`~convit.training.resume.read_resume` read it (else
        fit reads it), so a resumed run reads its checkpoint once."""
    cfg = dataclasses.replace(cfg).validate()  # a copy: the caller's stays as it was
    attempt = functools.partial(
        _attempt, on_device=on_device, on_eval=on_eval, on_end=on_end, t_start=time.perf_counter()
    )
    return with_retries(attempt, cfg, resume_state, say=_say_main)


def _attempt(
    cfg: TrainConfig,
    resume_state: Optional[dict[str, Any]],
    *,
    on_device: bool,
    on_eval: Optional[EvalHook],
    on_end: Optional[EndHook],
    t_start: float,
) -> FitResult:
    """One go at the run: build, train, finish.  Out of memory in a training step of a
    one-process run it raises :class:`~convit.training.oom_retry.RunOutOfMemory`
    (:func:`_train_epoch`), which :func:`fit` retries."""
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    locality = on_eval is not None and cfg.locality
    with distributed.process_group(device.type) as procs, tf32_scope(device, on_device):
        run = _build(cfg, device, procs, on_device=on_device, locality=locality, resume_state=resume_state)
        entry, best = _loop(run, on_eval if locality else None)
        return _finish(run, entry, best, on_end=on_end if cfg.report else None, t_start=t_start)


def _say_main(text: str) -> None:
    """Print on rank 0 (the retries' messages: one process only is retried)."""
    if os.environ.get("RANK", "0") == "0":
        print(text, flush=True)


def tf32_scope(device: torch.device, on_device: bool) -> AbstractContextManager:
    """The float32 matmul precision of a fit: TF32 on CUDA for the on-device data path, whose
    GPU throughput numbers (docs/speed.md) were measured with it; the process's own setting
    otherwise (the DataLoader path trains in full fp32).  Scoped to the fit, so that what runs
    after it in the same process finds the setting it had before."""
    if on_device and device.type == "cuda":
        return tf32_matmuls(True)
    return contextlib.nullcontext()


@dataclass
class _Run:
    """What the build gives the loop and the end of the run."""

    cfg: TrainConfig
    device: torch.device
    procs: distributed.DistInfo
    say: Callable[[str], None]  # prints on rank 0, nothing elsewhere
    folder: RunFolder
    data: RunData
    model: nn.Module  # what the steps call (DDP / compile around trained.model)
    trained: TrainingState  # the bare model, evaluated and saved, and its TrainStep
    lr: float
    epochs: int  # the last epoch to train
    start_epoch: int  # epochs done before this call (a resumed run's)
    best: dict[str, Any]  # best val top-1 so far and its epoch (0: none yet)
    keep_config: bool  # a finished run resumed with nothing to train
    probe: Optional[torch.Tensor]  # the locality hook's images (rank 0, when it runs)


def _build(
    cfg: TrainConfig,
    device: torch.device,
    procs: distributed.DistInfo,
    *,
    on_device: bool,
    locality: bool,
    resume_state: Optional[dict[str, Any]],
) -> _Run:
    """Process, data, model and training step, resumed state, run folder (created by rank 0)."""
    world = procs.world_size
    epochs = cfg.run_epochs
    lr = cfg.resolved_lr(world)
    say: Callable[[str], None] = (lambda s: print(s, flush=True)) if procs.is_main else (lambda s: None)
    amp_dtype = start_process(cfg, device, procs)
    state = state_to_resume(cfg, resume_state)  # None: a fresh run
    folder = RunFolder(cfg, resolve_output(cfg), epochs, say)  # same on every rank; nothing written yet
    data = run_data(cfg, device, procs, on_device)
    model, trained = build_model_and_step(
        cfg, data, procs, device=device, amp_dtype=amp_dtype, say=say, locality=locality
    )
    start_epoch = 0
    best = {"val_top1": -1.0, "epoch": 0}
    if state is not None:
        start_epoch, best = trained.restore(state, len(data.train), procs.rank, world, say)
    keep_config = state is not None and start_epoch >= epochs  # nothing to train: config.yaml still fits
    comments = config_comments(
        cfg, lr=lr, world=world, device=device, on_device=data.in_memory, data_note=data.note
    )
    resumed_at = start_epoch if state is not None else None
    metadata = run_metadata(cfg, data.bundle)
    distributed.on_main(folder.create, metadata, resumed_at, keep_config, comments, data.bundle.files)
    probe = first_reads(data, folder, procs.rank, probe=locality and procs.is_main)
    say(
        describe_run(
            cfg, trained.model, data, lr=lr, world=world, device=device, amp_dtype=amp_dtype, out=folder.out
        )
    )
    return _Run(
        cfg=cfg,
        device=device,
        procs=procs,
        say=say,
        folder=folder,
        data=data,
        model=model,
        trained=trained,
        lr=lr,
        epochs=epochs,
        start_epoch=start_epoch,
        best=best,
        keep_config=keep_config,
        probe=probe,
    )


def _loop(run: _Run, on_eval: Optional[EvalHook]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per epoch: train, evaluate (every ``eval_every`` epochs and at the last), log, save
    ``last.pt``.  Returns the last epoch's log entry ({} if none ran) and the best so far."""
    entry: dict[str, Any] = {}
    best = run.best
    bare = run.trained.model
    for epoch in range(run.start_epoch + 1, run.epochs + 1):
        t_epoch = time.perf_counter()
        cpu_epoch = time.process_time()
        entry = {"epoch": epoch, **_train_epoch(run, epoch)}
        if epoch % run.cfg.eval_every == 0 or epoch == run.epochs:
            entry.update(_evaluate(run, final=epoch == run.epochs))
            if run.probe is not None and on_eval is not None:
                entry.update(on_eval(bare, run.probe))
        entry.update(
            epoch_time_s=time.perf_counter() - t_epoch, epoch_cpu_time_s=time.process_time() - cpu_epoch
        )
        improved = entry.get("val_top1", -math.inf) > best["val_top1"]
        best = {"val_top1": entry["val_top1"], "epoch": epoch} if improved else best
        rngs = distributed.all_gather_object(rng_state())  # every rank's, so DDP runs resume exactly
        distributed.on_main(run.folder.end_epoch, entry, best, improved, run.trained, rngs)
    return entry, best


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One epoch of :func:`~convit.training.engine.train_one_epoch` (bar and printing on rank 0 only):
    the log entries it gives; a NaN stop says where the run can go on from."""
    run.data.train.set_epoch(epoch)
    # Out of memory in a step, a one-process run is retried with smaller micro-batches (fit).
    retry = out_of_memory_in(run.folder.out, retry=run.procs.world_size == 1)
    try:
        with retry:
            stats = train_one_epoch(
                run.model,
                run.data.train,
                run.trained.step,
                run.device,
                epoch=epoch,
                progress=run.procs.is_main,
                log_every=run.cfg.log_every,
                print_fn=run.say,
            )
    except NonFiniteLossError as e:
        raise e.with_note(_resume_advice(epoch, run.folder.last)) from None
    out = {k: stats[k] for k in ("train_loss", "lr", "images_per_s")}
    if run.cfg.micro_batches > 1:  # what an out-of-memory retry changed (oom_retry)
        out.update(micro_batch=micro_batch(run.cfg), micro_batches=run.cfg.micro_batches)
    return out


def _evaluate(run: _Run, final: bool) -> dict[str, Any]:
    """Validation metrics (of the EMA too); test metrics of the final model only, or at every
    evaluation when there is no validation split (nothing is ever chosen on test).  The step
    gives the EMA and the precision and memory format the model trains in."""
    step = run.trained.step

    def metrics(prefix: str, m: nn.Module, loader: Iterable, outcomes: bool = False) -> dict[str, Any]:
        got = evaluate(m, loader, run.device, step.amp_dtype, step.channels_last, per_sample=outcomes)
        if outcomes:
            run.folder.save_test_correct(got.pop("correct"))
        return {f"{prefix}_{k}": v for k, v in got.items() if k != "n"}

    out: dict[str, Any] = {}
    if run.data.val is not None:
        out.update(metrics("val", run.trained.model, run.data.val))
        if step.ema is not None:
            out.update(metrics("ema_val", step.ema.module, run.data.val))
    if run.data.val is None or final:
        # the final model's per-image outcomes too, in one process (in the split's order)
        outcomes = final and run.procs.world_size == 1
        out.update(metrics("test", run.trained.model, run.data.test, outcomes))
    return out


def _resume_advice(epoch: int, last: Path) -> str:
    if epoch == 1:
        return "no checkpoint was written (it failed in epoch 1); try a lower --lr or --clip-grad"
    return (
        f"the last good checkpoint is {last} (epoch {epoch - 1}); resume from it with a lower --lr or "
        f"with --clip-grad"
    )


def _finish(
    run: _Run, entry: dict[str, Any], best: dict[str, Any], *, on_end: Optional[EndHook], t_start: float
) -> FitResult:
    """Save the final model (rank 0), call ``on_end`` with the run folder, print and return the
    summary.  Every process gathers the unreadable files each left out."""
    entry = entry or run.folder.last_entry()  # a resumed run with nothing to train reports its log
    skipped = unreadable.gather(run.data.skipped(), run.folder.skipped, run.procs.rank)
    has_val = run.data.val is not None
    if run.procs.is_main:
        run.folder.finish(run.trained.model, run.trained.step.ema, entry, run.start_epoch, has_val=has_val)
        if on_end is not None:
            on_end(run.folder.out)
    result = _result(
        run, entry, best, skipped, report=on_end is not None, time_s=time.perf_counter() - t_start
    )
    run.say(summary_text(result, has_val))
    return result


def _result(
    run: _Run,
    entry: dict[str, Any],
    best: dict[str, Any],
    skipped: dict[str, str],
    *,
    report: bool,
    time_s: float,
) -> FitResult:
    """What fit returns and prints at the end of the run."""
    out = run.folder.out
    return FitResult(
        output=str(out),
        epochs=run.start_epoch if run.keep_config else run.epochs,
        time_s=time_s,
        skipped=len(skipped),
        skipped_list=str(run.folder.skipped) if skipped else None,
        test_top1=entry.get("test_top1"),
        test_top5=entry.get("test_top5"),
        test_loss=entry.get("test_loss"),
        val_top1=entry.get("val_top1"),
        best_val_top1=best["val_top1"] if best["epoch"] else None,
        best_epoch=best["epoch"] or None,
        lr=run.lr,
        world_size=run.procs.world_size,
        train_images=len(run.data.bundle.train),
        checkpoint=str(out / "model.safetensors"),
        best=str(out / "best.safetensors"),
        last=str(run.folder.last),
        log=str(run.folder.log),
        config=str(out / "config.yaml"),
        figures=str(out / "figures"),
        report=str(out / "report.html") if report else None,
    )
