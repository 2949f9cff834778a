"""A run folder: where it is, what it holds, and what a run writes into it.

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

Policy kept here, out of the training loop: which folder ``--output`` means
(:func:`resolve_output`), what a fresh run removes and a resumed one truncates
(:meth:`RunFolder.create`), and what a run prints.  What ``last.pt`` holds and how ``--resume``
finds and reads it is :mod:`convit.training.resume`; the ``INCOMPLETE`` marker is
:mod:`convit.training.incomplete` (both re-exported here).  Only rank 0 writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from ..core.fileio import atomic_save, read_jsonl
from ..core.provenance import Provenance, collect
from ..weights.checkpoint import save_model
from .config import TrainConfig, save_config
from .fit_result import FitResult
from .incomplete import MARKER, NoCheckpointYet, holds_run, running, write_marker
from .resume import STATE_VERSION, TrainingState, find_last_checkpoint, load_training_state, read_resume

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
    "TEST_CORRECT_FILE",
    "save_test_correct",
    "truncate_log",
    "epoch_line",
    "summary_text",
]

#: The final model's per-image outcomes on the test split (a bool per image, in the split's
#: order): what a study's verdict needs of each run (convit.analysis.intervals).
TEST_CORRECT_FILE = "test_correct.npy"

#: Files and folders of a run that a fresh run in the same folder must not leave behind.
_RUN_FILES = (
    "log.jsonl",
    TEST_CORRECT_FILE,
    "last.pt",
    "best.safetensors",
    "model.safetensors",
    "ema.safetensors",
    "report.html",
    "skipped.tsv",
    "provenance.json",
    MARKER,
)
_RUN_DIRS = ("figures", "tensorboard")


def record_start(path: Path, provenance: Provenance, resumed_at: Optional[int]) -> None:
    """Add one start of the run to its ``provenance.json`` (``{"starts": [...]}``): a resumed run
    may have been continued by other code, data or on another CPU, so every start is kept."""
    starts = json.loads(path.read_text())["starts"] if path.is_file() and resumed_at is not None else []
    starts.append({**provenance.to_json(), "resumed_at_epoch": resumed_at})
    text = json.dumps({"starts": starts}, indent=1) + "\n"
    atomic_save(lambda p: p.write_text(text), path, "provenance.json")


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
        if not cfg.resume and not cfg.overwrite and holds_run(out):
            alive = running(out)
            raise ValueError(
                f"output folder {out} already holds a run"
                + (
                    f" that has not written its first checkpoint yet and may still be running ({alive})"
                    if alive
                    else ""
                )
                + "; pass --resume to continue it, --overwrite to replace it, or another --output"
            )
        return out
    base = Path("runs") / f"{cfg.model}_{cfg.dataset}"
    out = base
    i = 1
    while holds_run(out):
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
# The files of a run
# ---------------------------------------------------------------------------------------------


def save_test_correct(correct: np.ndarray, folder: Path) -> Path:
    """``correct`` (one bool per test image, in the split's order) as ``folder``'s
    :data:`TEST_CORRECT_FILE`, written atomically."""
    array = np.asarray(correct, dtype=bool)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic_save(write, Path(folder) / TEST_CORRECT_FILE, "per-image outcomes")


class RunFolder:
    """The files of one run; every method that writes is for rank 0 only.

    Constructing one writes nothing (every rank may), but checks that ``--tensorboard`` can
    work before any time is spent on data and model.
    """

    def __init__(self, cfg: TrainConfig, out: Path, epochs: int, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.epochs = epochs
        self.say = say
        self.log = self.out / "log.jsonl"
        self.last = self.out / "last.pt"
        self.skipped = self.out / "skipped.tsv"
        self.meta: dict[str, Any] = {}  # what the model files say about the data (set by create)
        self.writer = None
        self._writer_class = _tensorboard_writer() if cfg.tensorboard else None

    def create(
        self,
        meta: dict[str, Any],
        resumed_at: Optional[int],
        keep_config: bool,
        comments: dict[str, Any],
        data_files: tuple[str, ...] = (),
    ) -> None:
        """Make the folder.  A fresh run removes a replaced run's files and folders (nothing of it
        may pass for this one) and writes :data:`MARKER` (removed with its first ``last.pt``); a
        resumed run drops log entries after its checkpoint's epoch.  The
        config is written unless ``keep_config`` (a finished run resumed with nothing to train).
        ``provenance.json`` gains this start's provenance (``data_files`` hashed)."""
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
            write_marker(self.out)
        else:
            truncate_log(self.log, resumed_at)
        if not keep_config:
            save_config(self.cfg, self.out / "config.yaml", comments=comments)
        record_start(self.out / "provenance.json", collect(data_files), resumed_at)
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

    def save_test_correct(self, correct: torch.Tensor) -> Path:
        """Write the final model's per-image test outcomes (:data:`TEST_CORRECT_FILE`)."""
        return save_test_correct(correct.numpy(), self.out)

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


def summary_text(s: FitResult, has_val: bool) -> str:
    """The lines printed at the end of a run: final test (and val) top-1 and the files written."""
    lines = [
        f"done in {s.time_s:.1f} s: {s.epochs} epoch(s) on {s.train_images} training images",
        f"  test top-1 {_pct(s.test_top1)} (final model)"
        + (
            f"   val top-1 {_pct(s.val_top1)} (final), best {_pct(s.best_val_top1)} at epoch {s.best_epoch}"
            if has_val
            else "   (no validation split: best.safetensors is the final model)"
        ),
    ]
    lines += [
        f"  checkpoint: {s.checkpoint}   (best by val: {s.best}; resume: {s.last})",
        f"  log:        {s.log}",
    ]
    if s.skipped:
        lines.append(
            f"  skipped:    {s.skipped} unreadable image file(s), never replaced by others: {s.skipped_list}"
        )
    if s.report:
        lines.append(f"  figures:    {s.figures}   report: {s.report}")
    return "\n".join(lines)
