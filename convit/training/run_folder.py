"""A run folder: where it is, what it holds, and how a run continues from it.

The run folder (``cfg.output``) holds::

    config.yaml          the effective config (pass it back with --config to repeat the run)
    log.jsonl            one JSON object per epoch: epoch, train_loss, lr, val_top1/top5/loss,
                         test_top1/top5/loss (when evaluated), images_per_s, epoch_time_s and
                         what the caller's per-epoch hook adds (``convit train``: locality)
    last.pt              the full training state after the last finished epoch (model,
                         optimizer, scheduler, scaler, EMA, RNG states, config); written
                         atomically, so a crash or a full disk leaves the previous one intact
    best.safetensors     the weights with the best validation top-1 (never chosen on test)
    model.safetensors    the final weights (ema.safetensors: the final EMA weights)
    skipped.tsv          image files left out because they cannot be read (path<TAB>reason);
                         only when there are any
    INCOMPLETE           from the folder's creation until the first last.pt: a folder holding
                         it and no last.pt is a run that stopped before its first checkpoint,
                         which the next run into the folder replaces (--resume too: it starts
                         again from epoch 1 with that run's config.yaml)
    figures/, report.html, tensorboard/

Policy kept here, out of the training loop: which folder ``--output`` / ``--resume`` mean
(:func:`resolve_output`, :func:`find_last_checkpoint`, :func:`read_resume`), what a fresh run
removes and a resumed one truncates (:meth:`RunFolder.create`), and what ``last.pt`` holds
(:class:`TrainingState`).  A resumed run reads its ``last.pt`` once, with
:func:`load_training_state`: ``convit train --resume`` through :func:`read_resume`, which
gives the config and the state that :func:`convit.training.fit.fit` is then handed.  Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..core.fileio import atomic_save, read_jsonl
from ..core.runtime import seed_everything, set_rng_state
from ..weights.checkpoint import save_model
from .config import TrainConfig, load_config_file, save_config
from .engine import TrainStep

__all__ = [
    "STATE_VERSION",
    "MARKER",
    "NoCheckpointYet",
    "find_last_checkpoint",
    "load_training_state",
    "read_resume",
    "resolve_output",
    "TrainingState",
    "RunFolder",
    "truncate_log",
]

STATE_VERSION = 1
#: Written when a run folder is created, removed once its first ``last.pt`` is written.
MARKER = "INCOMPLETE"
#: Files and folders of a run that a fresh run in the same folder must not leave behind.
_RUN_FILES = (
    "log.jsonl",
    "last.pt",
    "best.safetensors",
    "model.safetensors",
    "ema.safetensors",
    "report.html",
    "skipped.tsv",
    MARKER,
)
_RUN_DIRS = ("figures", "tensorboard")


class NoCheckpointYet(FileNotFoundError):
    """``--resume`` of a folder whose run stopped before writing its first ``last.pt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        super().__init__(
            f"{folder} holds a run that stopped before its first checkpoint (it has {MARKER} and no "
            f"last.pt): there is nothing to resume; `convit train --resume {folder}` starts it again "
            f"from epoch 1 with its config.yaml, and any run with --output {folder} replaces it"
        )


# ---------------------------------------------------------------------------------------------
# Which folder, which checkpoint
# ---------------------------------------------------------------------------------------------


def find_last_checkpoint(resume: str, output: Optional[str] = None) -> Path:
    """The ``last.pt`` meant by ``--resume``: a file, a run folder, or ``auto`` (= ``output``)."""
    if resume == "auto":
        if not output:
            raise ValueError("--resume without a path needs --output (the run folder to continue)")
        resume = output
    p = Path(resume)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file() and (p.parent / MARKER).is_file():
        raise NoCheckpointYet(p.parent)
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {p}")
    return p


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a ``last.pt`` written by :func:`convit.training.fit.fit` (tensors and plain values only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read training checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != "convit-train":
        raise ValueError(
            f"{path} is not a training checkpoint written by `convit train` "
            "(to start from model weights, use --finetune FILE)"
        )
    return state


def read_resume(resume: str, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The run to continue: its config with ``overrides`` (flags given now) on top, and its
    ``last.pt``, read here once; pass both to :func:`convit.training.fit.fit` (``resume_state``),
    which then does not read the file again.

    Overriding ``epochs`` extends or shortens the schedule; overriding the model or data
    makes the checkpoint fail to load, with a message naming the mismatch.  A run that stopped
    before its first checkpoint (:class:`NoCheckpointYet`) starts again from epoch 1 in its
    folder, with its ``config.yaml`` and ``overrides`` (state None), and says so.
    """
    try:
        path = find_last_checkpoint(resume, overrides.get("output"))
    except NoCheckpointYet as e:
        if not (e.folder / "config.yaml").is_file():
            raise
        running = _running(e.folder, here_only=True)  # another machine's: stopped, since it is to resume
        if running:
            raise ValueError(
                f"{e.folder}: its run has not written its first checkpoint yet and is still running "
                f"({running})"
            ) from None
        if os.environ.get("RANK", "0") == "0":
            print(
                f"note: {e.folder}: the run there stopped before its first checkpoint, so there is nothing to "
                "resume; starting it again from epoch 1 with its config.yaml",
                flush=True,
            )
        values = {**load_config_file(e.folder / "config.yaml"), **overrides}
        return TrainConfig(
            **{**values, "output": str(e.folder), "resume": None, "overwrite": True}
        ).validate(), None
    state = load_training_state(path)
    values = {**state["config"], "output": str(path.parent)}
    values.update({k: v for k, v in overrides.items() if k != "resume"})
    values["resume"] = str(path)
    return TrainConfig(**values).validate(), state


def _holds_run(folder: Path) -> bool:
    """Whether a new run must not silently replace what ``folder`` holds: a run with a
    checkpoint, or one still writing its first (:data:`MARKER` naming a live process)."""
    if (folder / "last.pt").exists():
        return True
    if (folder / MARKER).exists():  # stopped before its first checkpoint: replaceable, unless still running
        return _running(folder) is not None
    return any((folder / n).exists() for n in ("log.jsonl", "model.safetensors"))


def _running(folder: Path, here_only: bool = False) -> Optional[str]:
    """Which process ``folder``'s :data:`MARKER` names, when it may still be running: a live
    process of this machine other than this one (``pid N on HOST``), or one of another machine,
    which cannot be checked from here (unless ``here_only``); None when it has stopped.  (Under
    torchrun the other ranks resolve the folder before DDP's first synchronisation, so never
    after rank 0 wrote it.)"""
    try:
        text = (folder / MARKER).read_text()
    except OSError:
        return None
    pid, host = re.search(r"^pid: (\d+)$", text, re.M), re.search(r"^host: (.+)$", text, re.M)
    if pid is None or host is None or int(pid[1]) == os.getpid() and host[1] == socket.gethostname():
        return None
    if host[1] != socket.gethostname():
        return (
            None if here_only else f"pid {pid[1]} on {host[1]}, another machine: if it has stopped, delete it"
        )
    try:
        os.kill(int(pid[1]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return f"pid {pid[1]} on {host[1]}: if it is not a run, delete {folder / MARKER}"


def resolve_output(cfg: TrainConfig) -> Path:
    """The run folder: ``--output``, the resumed run's folder, or ``runs/<model>_<dataset>``
    (with ``-2``, ``-3``, ... when that already holds a run).

    timm.utils.get_outdir numbers folders too, but it creates the folder at once (every DDP
    rank would race to make its own ``-1``), skips any existing folder rather than only one
    holding a run, and numbers from ``-1``; ours only decides, so every rank resolves the
    same name and rank 0 creates it.
    """
    if cfg.resume and cfg.output is None:
        return find_last_checkpoint(cfg.resume).parent
    if cfg.output is not None:
        out = Path(cfg.output)
        if not cfg.resume and not cfg.overwrite and _holds_run(out):
            running = _running(out)
            raise ValueError(
                f"output folder {out} already holds a run"
                + (
                    f" that has not written its first checkpoint yet and may still be running ({running})"
                    if running
                    else ""
                )
                + "; pass --resume to continue it, --overwrite to replace it, or another --output"
            )
        return out
    base = Path("runs") / f"{cfg.model}_{cfg.dataset}"
    out, i = base, 1
    while _holds_run(out):
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def truncate_log(path: Path, epoch: int) -> None:
    """Keep the log entries of epochs up to ``epoch`` (a crash may have logged one more)."""
    if not path.is_file():
        return
    kept = [e for e in read_jsonl(path) if e.get("epoch", 0) <= epoch]
    atomic_save(lambda p: p.write_text("".join(json.dumps(e) + "\n" for e in kept)), path, "log")


# ---------------------------------------------------------------------------------------------
# last.pt
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """The objects whose state ``last.pt`` holds, so a run continues bit-identically: the
    model and the optimizer, schedule, loss scaler and EMA of its :class:`~convit.training.engine.TrainStep`."""

    cfg: TrainConfig
    model: nn.Module  # without DDP / compile wrappers
    step: TrainStep

    def state_dict(self, epoch: int, best: dict[str, Any], rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """``last.pt`` after ``epoch``; ``rngs``: every process's RNG state, in rank order."""
        s = self.step
        sched = s.lr_scheduler.state_dict() if s.lr_scheduler is not None else None
        scaled = s.scaler is not None and s.scaler.is_enabled()
        return {
            "format": "convit-train",
            "version": STATE_VERSION,
            "epoch": epoch,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": _plain(sched),
            "scaler": s.scaler.state_dict() if scaled else None,
            "ema": s.ema.state_dict() if s.ema is not None else None,
            "best": best,
            "rng": rngs,
        }

    def restore(
        self, state: dict[str, Any], steps: int, rank: int, world: int, say: Callable[[str], None]
    ) -> tuple[int, dict[str, Any]]:
        """Load ``state`` (a ``last.pt``) into the objects; returns (epochs done, best so far).

        The schedule is a function of the update count: it was rebuilt from the config (so
        ``--epochs`` may extend a run) and is moved to where the run stopped.
        """
        s = self.step
        self.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        if s.ema is not None and state.get("ema") is not None:
            s.ema.load_state_dict(state["ema"])
        if state.get("scaler") and s.scaler is not None:
            s.scaler.load_state_dict(state["scaler"])
        epoch = int(state["epoch"])
        if s.lr_scheduler is not None:
            s.lr_scheduler.step_update(num_updates=epoch * steps)
        say(f"resuming from epoch {epoch} ({self.cfg.resume})")
        if epoch >= self.cfg.run_epochs:
            say(
                f"the run already trained {epoch} epochs (>= the {self.cfg.run_epochs} asked for): nothing to "
                f"train, config.yaml left as it was; pass --epochs N with N > {epoch} to train longer"
            )
        rngs = state.get("rng") or []
        if len(rngs) == world:  # continue exactly where the interrupted run was
            set_rng_state(rngs[rank])
        else:
            say(
                f"note: the checkpoint was written by {len(rngs)} process(es), this run has {world}: "
                "random streams are re-seeded, so the run will not be bit-identical to an uninterrupted one"
            )
            seed_everything(self.cfg.seed + rank + 1000 * epoch)
        return epoch, dict(state["best"])


def _plain(obj: Any) -> Any:
    """Drop values ``torch.load(weights_only=True)`` would refuse (scheduler internals)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if isinstance(k, str)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    return repr(obj)


# ---------------------------------------------------------------------------------------------
# The files of a run
# ---------------------------------------------------------------------------------------------


class RunFolder:
    """The files of one run; every method that writes is for rank 0 only.

    Constructing one writes nothing (every rank may), but checks that ``--tensorboard`` can
    work before any time is spent on data and model.
    """

    def __init__(self, cfg: TrainConfig, out: Path, epochs: int, say: Callable[[str], None]) -> None:
        self.cfg, self.out, self.epochs, self.say = cfg, Path(out), epochs, say
        self.log, self.last, self.skipped = (
            self.out / "log.jsonl",
            self.out / "last.pt",
            self.out / "skipped.tsv",
        )
        self.meta: dict[str, Any] = {}  # what the model files say about the data (set by create)
        self.writer = None
        self._writer_class = _tensorboard_writer() if cfg.tensorboard else None

    def create(
        self, meta: dict[str, Any], resumed_at: Optional[int], keep_config: bool, comments: dict[str, Any]
    ) -> None:
        """Make the folder.  A fresh run removes a replaced run's files and folders (nothing of it
        may pass for this one) and writes :data:`MARKER` (removed with its first ``last.pt``); a
        resumed run drops log entries after its checkpoint's epoch.  The
        config is written unless ``keep_config`` (a finished run resumed with nothing to train)."""
        self.meta = meta
        self.out.mkdir(parents=True, exist_ok=True)
        if resumed_at is None:
            if (self.out / MARKER).is_file() and not self.last.is_file():
                self.say(
                    f"note: {self.out} held a run that stopped before its first checkpoint; "
                    "this run replaces it"
                )
            for name in _RUN_FILES:
                (self.out / name).unlink(missing_ok=True)
            for name in _RUN_DIRS:
                if (self.out / name).is_dir() and not (self.out / name).is_symlink():
                    shutil.rmtree(self.out / name)
            (self.out / MARKER).write_text(
                "This run has not written its first checkpoint (last.pt) yet. If no `convit train` runs here,\n"
                "it stopped before one: `convit train --output DIR` (or --resume DIR) starts it again.\n"
                f"pid: {os.getpid()}\nhost: {socket.gethostname()}\n"
            )
        else:
            truncate_log(self.log, resumed_at)
        if not keep_config:
            save_config(self.cfg, self.out / "config.yaml", comments=comments)
        if self._writer_class is not None:
            self.writer = self._writer_class(log_dir=str(self.out / "tensorboard"))

    def end_epoch(
        self,
        entry: dict[str, Any],
        best: dict[str, Any],
        improved: bool,
        trained: TrainingState,
        rngs: list[dict[str, Any]],
    ) -> None:
        """Log the epoch (file, tensorboard, console), save the best weights if they improved,
        then ``last.pt`` (last: a crash before it resumes from the epoch before)."""
        with open(self.log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for k, v in entry.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, entry["epoch"])
        self.say(epoch_line(entry, self.epochs, best))
        if improved:
            save_model(
                trained.model,
                self.out / "best.safetensors",
                extra={**self.meta, "epoch": entry["epoch"], "val_top1": entry["val_top1"]},
            )
        state = trained.state_dict(entry["epoch"], best, rngs)
        atomic_save(lambda p: torch.save(state, p), self.last, "training checkpoint")
        (self.out / MARKER).unlink(missing_ok=True)

    def last_entry(self) -> dict[str, Any]:
        """The last logged epoch ({} if none): what a resumed, already finished run reports."""
        return (read_jsonl(self.log)[-1:] or [{}])[0] if self.log.is_file() else {}

    def finish(self, model: nn.Module, ema: Any, entry: dict[str, Any], epoch: int, has_val: bool) -> None:
        """The final weights (and EMA weights); without a validation split, ``best`` is the final model."""
        extra = {
            **self.meta,
            "epoch": entry.get("epoch", epoch),
            **{k: entry[k] for k in ("test_top1", "val_top1") if k in entry},
        }
        save_model(model, self.out / "model.safetensors", extra=extra)
        if ema is not None:
            save_model(ema.module, self.out / "ema.safetensors", extra=extra)
        if not has_val:
            save_model(model, self.out / "best.safetensors", extra=extra)
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer():
    """``SummaryWriter``, or a clear error: tensorboard is an optional dependency."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


# ---------------------------------------------------------------------------------------------
# What a run prints
# ---------------------------------------------------------------------------------------------


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}%"


def epoch_line(e: dict[str, Any], epochs: int, best: dict[str, Any]) -> str:
    """One console line per epoch: loss, lr, val top-1 (and the best so far), test top-1, speed."""
    parts = [f"epoch {e['epoch']}/{epochs}", f"loss {e['train_loss']:.4f}", f"lr {e['lr']:.2e}"]
    if "val_top1" in e:
        parts.append(f"val {e['val_top1']:.2f}% (best {best['val_top1']:.2f}% @ {best['epoch']})")
    if "test_top1" in e:
        parts.append(f"test {e['test_top1']:.2f}%")
    parts += [f"{e['images_per_s']:.0f} img/s", f"{e['epoch_time_s']:.1f} s"]
    return "  ".join(parts)


def summary_text(s: dict[str, Any], has_val: bool) -> str:
    """The lines printed at the end of a run: final test (and val) top-1 and the files written."""
    lines = [
        f"done in {s['time_s']:.1f} s: {s['epochs']} epoch(s) on {s['train_images']} training images",
        f"  test top-1 {_pct(s['test_top1'])} (final model)"
        + (
            f"   val top-1 {_pct(s['val_top1'])} (final), best {_pct(s['best_val_top1'])} "
            f"at epoch {s['best_epoch']}"
            if has_val
            else "   (no validation split: best.safetensors is the final model)"
        ),
    ]
    lines += [
        f"  checkpoint: {s['checkpoint']}   (best by val: {s['best']}; resume: {s['last']})",
        f"  log:        {s['log']}",
    ]
    if s.get("skipped"):
        lines.append(
            f"  skipped:    {s['skipped']} unreadable image file(s), never replaced by others: "
            f"{s['skipped_list']}"
        )
    if s.get("report"):
        lines.append(f"  figures:    {s['figures']}   report: {s['report']}")
    return "\n".join(lines)
