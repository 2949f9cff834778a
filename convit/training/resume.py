"""Continuing a run: which ``last.pt`` ``--resume`` means, what it holds, and reading it back.

:class:`TrainingState` is what ``last.pt`` saves after every epoch (model, optimizer, schedule,
loss scaler, EMA, every process's random streams, the config) and restores, so that a resumed
run continues bit-identically.  A resumed run reads its ``last.pt`` once, with
:func:`load_training_state`: ``convit train --resume`` through :func:`read_resume`, which gives
the config and the state that :func:`convit.training.fit.fit` is then handed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..core.runtime import seed_everything, set_rng_state
from .config import TrainConfig, load_config_file
from .engine import TrainStep
from .incomplete import MARKER, NoCheckpointYet, running

__all__ = ["STATE_VERSION", "find_last_checkpoint", "load_training_state", "read_resume", "TrainingState"]

STATE_VERSION = 1


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


def read_resume(resume: str, overrides: dict[str, Any]) -> tuple[TrainConfig, Optional[dict[str, Any]]]:
    """The run to continue: its config with ``overrides`` (flags given now) on top, and its
    ``last.pt``, read here once; pass both to :func:`convit.training.fit.fit` (``resume_state``),
    which then does not read the file again.

    Overriding ``epochs`` extends or shortens the schedule; overriding the model or data
    makes the checkpoint fail to load, with a message naming the mismatch.  A run that stopped
    before its first checkpoint (:class:`~convit.training.incomplete.NoCheckpointYet`) starts
    again from epoch 1 in its folder, with its ``config.yaml`` and ``overrides`` (state None),
    and says so.
    """
    try:
        path = find_last_checkpoint(resume, overrides.get("output"))
    except NoCheckpointYet as e:
        if not (e.folder / "config.yaml").is_file():
            raise
        return _start_again(e.folder, overrides), None
    state = load_training_state(path)
    values = {**state["config"], "output": str(path.parent)}
    values.update({k: v for k, v in overrides.items() if k != "resume"})
    values["resume"] = str(path)
    return TrainConfig(**values).validate(), state


def _start_again(folder: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of ``folder``'s run, which stopped before its first checkpoint, to run it
    again from epoch 1 in the same folder (unless its process still runs: an error)."""
    alive = running(folder, here_only=True)  # another machine's: stopped, since it is to resume
    if alive:
        raise ValueError(
            f"{folder}: its run has not written its first checkpoint yet and is still running ({alive})"
        ) from None
    if os.environ.get("RANK", "0") == "0":
        print(
            f"note: {folder}: the run there stopped before its first checkpoint, so there is nothing to "
            "resume; starting it again from epoch 1 with its config.yaml",
            flush=True,
        )
    values = {**load_config_file(folder / "config.yaml"), **overrides}
    return TrainConfig(**{**values, "output": str(folder), "resume": None, "overwrite": True}).validate()


@dataclass
class TrainingState:
    """The objects whose state ``last.pt`` holds, so a run continues bit-identically: the model
    and the optimizer, schedule, loss scaler and EMA of its
    :class:`~convit.training.engine.TrainStep`."""

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
                f"the run already trained {epoch} epochs (>= the {self.cfg.run_epochs} asked for): nothing "
                f"to train, config.yaml left as it was; pass --epochs N with N > {epoch} to train longer"
            )
        self._restore_rngs(state.get("rng") or [], rank, world, epoch, say)
        return epoch, dict(state["best"])

    def _restore_rngs(
        self, rngs: list[dict[str, Any]], rank: int, world: int, epoch: int, say: Callable[[str], None]
    ) -> None:
        """This process's random streams as the interrupted run left them, when it ran as many
        processes; else fresh ones (and a note that the run is no longer bit-identical)."""
        if len(rngs) == world:  # continue exactly where the interrupted run was
            set_rng_state(rngs[rank])
            return
        say(
            f"note: the checkpoint was written by {len(rngs)} process(es), this run has {world}: "
            "random streams are re-seeded, so the run will not be bit-identical to an uninterrupted one"
        )
        seed_everything(self.cfg.seed + rank + 1000 * epoch)


def _plain(obj: Any) -> Any:
    """Drop values ``torch.load(weights_only=True)`` would refuse (scheduler internals)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if isinstance(k, str)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    return repr(obj)
