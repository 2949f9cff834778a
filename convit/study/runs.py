"""A study folder: its plan, its data view, and its runs (one :func:`convit.training.fit.fit` each).

Layout::

    DIR/plan.json               the plan (convit.study.plan): what every run does
    DIR/extensions.json         sizes trained again for longer (convit.study.extend), if any
    DIR/data/train|val/<class>/ links to the data's files as the plan splits them (image folders;
                                ``val`` is the test split the verdict is on)
    DIR/runs/<variant>-f<fraction>-s<seed>[-e<epochs>]/
        lock                    held (fcntl.flock) by the process running it
        attempts.log            one line per start or resume of the run
        train.log               the trainer's output; config.yaml, log.jsonl, last.pt, ... (fit's)
        result.json             written atomically when the run has finished (with its
                                validation curve and whether it had converged)
    DIR/logs/                   the launchers' job logs
    DIR/results.csv, report.html

A run is started by :func:`execute_run` (under any launcher): it takes the run's lock without
waiting (a run locked by another process is left to it: ``busy``), skips a finished run, and
otherwise trains, resuming from ``last.pt`` when there is one, so a stopped or preempted run
loses at most its current epoch and ends with the result of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional

from ..analysis import log_locality
from ..core.fileio import atomic_save, read_jsonl
from ..core.launch import run_lock as _lock
from ..training.config import TrainConfig
from ..training.convergence import Convergence, can_judge, check_convergence, val_curve
from ..training.fit import fit
from ..training.oom_retry import retry_note
from .extend import extension_runs, load_extensions
from .outcomes import write_test_correct
from .plan import study_runs
from .plan_schema import Plan
from .records import StudyRecord, StudyRun

__all__ = [
    "PLAN_FILE",
    "RESULT_FILE",
    "save_plan",
    "load_plan",
    "plan_runs",
    "prepare_data",
    "execute_run",
    "run_state",
    "is_locked",
]

PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    atomic_save(lambda p: p.write_text(json.dumps(obj, indent=1)), path, "json")


def save_plan(study: Path, plan: Plan) -> Path:
    """Write ``plan`` to ``study/plan.json``."""
    study.mkdir(parents=True, exist_ok=True)
    write_json(study / PLAN_FILE, plan.to_json())
    return study / PLAN_FILE


def load_plan(path: os.PathLike) -> Plan:
    """The plan in ``path`` (a plan.json, or a study folder holding one)."""
    path = Path(path)
    path = path / PLAN_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no plan at {path}")
    return Plan.from_json(json.loads(path.read_text()))


def plan_runs(study: Path, plan: Plan) -> list[StudyRun]:
    """The plan's runs and those its extensions added (:mod:`convit.study.extend`), reading the
    data from ``study``'s data view."""
    data = str(study / "data")
    return study_runs(plan, data) + extension_runs(plan, load_extensions(study), data)


def prepare_data(study: Path, plan: Plan, root: Optional[str] = None) -> None:
    """Link the plan's training and test files into ``study/data/{train,val}/<class>/`` (image
    folders only; ``root`` replaces the plan's data folder, for a plan moved to another machine).
    Links are numbered in the plan's order, so every process sees the same sorted samples."""
    data = plan.data
    if data.kind != "folder" or (study / "data" / ".complete").is_file():
        return
    src = Path(root or data.root)
    tmp = study / f".data.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, files in (("train", data.train_files), ("val", data.test_files)):
        for c, rels in files.items():
            d = tmp / split / c
            d.mkdir(parents=True)
            for i, rel in enumerate(rels):
                if not (src / rel).is_file():
                    raise FileNotFoundError(f"the plan's file {src / rel} is missing")
                os.symlink(src / rel, d / f"{i:07d}{Path(rel).suffix.lower()}")
    (tmp / ".complete").write_text("")
    try:
        os.rename(tmp, study / "data")
    except OSError as e:  # another process made it first
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def is_locked(folder: Path) -> bool:
    """Whether another process holds the run's lock now."""
    if not (folder / "lock").exists():
        return False
    with _lock(folder) as got:
        return not got


def run_state(study: Path, name: str) -> str:
    """``done``, ``busy`` (locked by a process), ``partial`` (a last.pt to resume) or ``todo``."""
    folder = study / "runs" / name
    if (folder / RESULT_FILE).is_file():
        return "done"
    if is_locked(folder):
        return "busy"
    return "partial" if (folder / "last.pt").is_file() else "todo"


def execute_run(study: str, name: str) -> StudyRecord:
    """Run ``name`` of the study in ``study`` (a module-level function: launchers pickle it);
    returns its result record, of status ``busy`` when another process holds it."""
    study_dir = Path(study)
    plan = load_plan(study_dir)
    runs = {r.name: r for r in plan_runs(study_dir, plan)}
    if name not in runs:
        raise ValueError(f"{name} is not a run of the plan in {study_dir}")
    folder = study_dir / "runs" / name
    with _lock(folder) as got:
        if not got:
            return StudyRecord(name=name, status="busy")
        if (folder / RESULT_FILE).is_file():
            return StudyRecord.from_json(json.loads((folder / RESULT_FILE).read_text()), status="done")
        return _train(runs[name], folder, _val_images(plan, runs[name]))


def _note_attempt(folder: Path, resumed: bool) -> None:
    """One line in attempts.log: when, start or resume, which process on which host and job."""
    with open(folder / "attempts.log", "a") as f:
        f.write(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resumed else 'start'} pid {os.getpid()} "
            f"on {socket.gethostname()} job {os.environ.get('SLURM_JOB_ID', '-')}\n"
        )


def _val_images(plan: Plan, run: StudyRun) -> int:
    """The validation images of ``run`` (its level's; 0 without a hold-out)."""
    return next((lv.val_images for lv in plan.levels if lv.fraction == run.fraction), 0)


def _convergence(curve: list[tuple[int, float]], n_val: int) -> Optional[Convergence]:
    """The convergence check of a run's validation curve; None when it cannot be judged."""
    if n_val < 1 or not can_judge(curve):
        return None
    return check_convergence(curve, n_val)


def _train(run: StudyRun, folder: Path, n_val: int = 0) -> StudyRecord:
    """Train (or resume) one run in ``folder`` (its lock held) and write result.json, with the
    run's validation curve and its convergence check on ``n_val`` validation images."""
    last = folder / "last.pt"
    resumed = last.is_file()
    cfg = TrainConfig(
        **run.settings, output=str(folder), resume=str(last) if resumed else None, overwrite=True
    ).validate()
    _note_attempt(folder, resumed)
    t0 = time.perf_counter()
    with (
        open(folder / "train.log", "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        result = fit(cfg, on_eval=log_locality)
        write_test_correct(cfg, folder)  # per-image outcomes for the verdict
    log = read_jsonl(folder / "log.jsonl")
    entries = [e for e in log if "locality" in e]
    curve = val_curve(log)
    record = StudyRecord.for_run(
        run,
        top1=result.test_top1,
        top5=result.test_top5,
        test_loss=result.test_loss,
        seconds=time.perf_counter() - t0,
        train_images=result.train_images,
        attempts=(folder / "attempts.log").read_text().count("\n"),
        resumed=resumed,
        locality=entries[-1]["locality"] if entries else None,
        status="trained",
        val_top1=result.val_top1,
        val_curve=curve or None,
        convergence=_convergence(curve, n_val),
        note=retry_note(folder),
    )
    write_json(folder / RESULT_FILE, record.to_json())
    return record
