"""A whole study, from a folder to a verdict: plan (or reuse one), run what is not done, write
results.csv, report.html and the sentence.  :mod:`convit.commands.study` parses the flags and
calls :func:`plan_study`, :func:`run_study` and :func:`finish_study` in turn."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..core.launch import LaunchOptions, Outcome, launch
from .extend import EXTENSIONS_FILE, load_extensions, next_extensions, save_extensions, verdict_records
from .inspect import inspect_data
from .plan import make_plan
from .plan_schema import PLAN_VERSION, Plan, PlanRequest, label
from .records import StudyRecord, cut_short_note
from .report import write_report
from .runs import (
    PLAN_FILE,
    RESULT_FILE,
    execute_run,
    load_plan,
    plan_runs,
    prepare_data,
    run_state,
    save_plan,
)
from .verdict import compare, sentence, write_csv

__all__ = [
    "plan_study",
    "run_study",
    "train_to_convergence",
    "finish_study",
    "describe_plan",
    "timeout_minutes",
    "check_device",
]

#: When the study first started (its budget counts from then).
STARTED_FILE = "started"
_OUTPUTS = (
    "runs",
    "data",
    "logs",
    "results.csv",
    "report.html",
    "verdict.txt",
    EXTENSIONS_FILE,
    STARTED_FILE,
)


def _clear(study: Path) -> None:
    """Remove another plan's runs and results from ``study`` (``--overwrite``)."""
    for name in _OUTPUTS:
        p = study / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _refuse(study: Path, why: str) -> None:
    raise ValueError(
        f"{study} holds another study ({why}); pass --overwrite to replace it, or another --output"
    )


def _why_other(study: Path, old: Plan) -> str:
    """Why the plan in ``study`` is not this command's: an older convit's, or other options."""
    if old.version < PLAN_VERSION:
        return (
            f"planned by an older convit (plan.json version {old.version}); to resume or re-read it "
            f"exactly: convit study --plan {study / PLAN_FILE} --output {study}"
        )
    return "a plan made for other data, budget or options"


def plan_study(
    study: Path,
    request: Optional[PlanRequest],
    *,
    plan_file: Optional[str] = None,
    data_root: Optional[str] = None,
    overwrite: bool = False,
    t_start: Optional[float] = None,
    say: Callable[[str], None] = print,
) -> Plan:
    """The study's plan: ``plan_file``'s, the one already in ``study`` when it was asked for with
    the same ``request``, or a new one (data inspected, models timed, sized to the budget).
    A different plan already in ``study`` is refused unless ``overwrite``."""
    t_start = time.perf_counter() if t_start is None else t_start
    old = load_plan(study) if (study / PLAN_FILE).is_file() else None
    if plan_file is not None:
        plan = load_plan(plan_file)
        if old is not None and old != plan:
            if not overwrite:
                _refuse(study, f"its plan.json differs from {plan_file}")
            _clear(study)
    elif old is not None and old.request == request:
        say(f"reusing the plan in {study / PLAN_FILE} (same data, budget and options)")
        plan = old
    else:
        if old is not None and not overwrite:
            _refuse(study, _why_other(study, old))
        summary = inspect_data(request.data, request.data_path)
        say(summary.describe())
        plan = make_plan(summary, request, elapsed_s=time.perf_counter() - t_start, say=say)
        if old is not None:
            _clear(study)
    save_plan(study, plan)
    prepare_data(study, plan, data_root)
    return plan


#: A study whose resolvable difference is above this many points gets a warning before its runs.
WIDE_POINTS = 10.0


def _describe_validation(plan: Plan) -> str:
    """Which runs hold out a validation split to be judged on, in one line."""
    held = [lv for lv in plan.levels if lv.val_images]
    if not held:
        return (
            "validation: none (the smallest class cannot spare an image): the runs are not checked "
            "for convergence"
        )
    text = (
        f"validation: {held[0].val_images} images held out of each run's training data "
        f"({held[0].val_fraction:.3g} of each class), evaluated every few epochs to check convergence "
        "(never the test split)"
    )
    bare = [str(lv.images_per_class) for lv in plan.levels if not lv.val_images]
    if bare:
        text += (
            f"; at {', '.join(bare)} images per class the smallest class cannot spare them: the runs "
            "at the other sizes are their pilot"
        )
    return text


def _describe_power(plan: Plan) -> str:
    """What the study can resolve, with a warning when that is wide (empty for version-1 plans)."""
    power = plan.power
    if power is None:
        return ""
    text = "\n" + power.describe()
    if power.resolvable is None or power.resolvable > WIDE_POINTS:
        text += (
            "\nwarning: this study cannot resolve differences of a few points; more test images, "
            "more seeds (--seeds) or a larger --budget would narrow what it can resolve"
        )
    return text


def describe_plan(plan: Plan) -> str:
    """The plan's size and estimated time in two lines; for version-2 plans, its validation
    hold-out and what it can resolve."""
    m = plan.model
    runs = len(plan.levels) * len(plan.seeds) * len(m.arms)
    sizes = ", ".join(f"{lv.images_per_class} ({lv.epochs} epochs)" for lv in plan.levels)
    params = " / ".join(f"{label(a.name)} {a.params:,}{_gmacs(a.gmacs)}" for a in m.arms)
    return (
        f"plan: {runs} runs = {len(m.arms)} models x {len(plan.levels)} sizes x {len(plan.seeds)} seeds; "
        f"images per class (epochs): {sizes}\n      {params} "
        f"parameters, {m.resolution}px input, {m.patch_size}px patches ({m.grid}x{m.grid}); "
        f"{_where(plan)}; estimated {plan.estimate_s / 60:.1f} min "
        f"(budget {plan.request.budget_s / 60:.1f} min)"
        + (f"\n{_describe_validation(plan)}" if plan.version >= 2 else "")
        + _describe_power(plan)
        + "".join(f"\nnote: {n}" for n in plan.notes)
    )


def _gmacs(gmacs: Optional[float]) -> str:
    return "" if gmacs is None else f" ({gmacs:.3g} GMACs)"


def _where(plan: Plan) -> str:
    """Where the runs train: the CPU threads, or the GPU and its dtype."""
    if plan.device == "cpu":
        return f"{plan.threads} thread(s) per run"
    return f"on {plan.device} in {plan.dtype} (timed on {plan.timed_on})"


def check_device(plan: Plan, launcher: str = "serial", gpus_per_node: Optional[int] = None) -> None:
    """Refuse, in one line, a plan whose runs cannot train where they would run: a CUDA plan run
    here without a GPU, or under Slurm without ``--gpus-per-node``; a CPU plan given GPUs."""
    cuda = plan.recipe.get("device") == "cuda"
    if launcher == "slurm":
        if cuda and not gpus_per_node:
            raise ValueError("this plan trains on cuda: give its Slurm jobs GPUs with --gpus-per-node")
        if gpus_per_node and not cuda:
            raise ValueError("--gpus-per-node: this plan trains on the CPU; plan again with --device cuda")
    elif cuda and not torch.cuda.is_available():
        raise ValueError(
            "this plan trains on cuda but this node has no GPU: run it on a GPU node, or plan again with "
            "--device cpu"
        )


def timeout_minutes(plan: Plan) -> int:
    """A job's time limit: three times the estimated study (a run is shorter), at least 11 min
    (submitit counts any interruption of a shorter job as a timeout, never as a preemption)."""
    return max(11, int(3 * plan.estimate_s / 60) + 5)


def _say_outcome(
    say: Callable[[str], None], done: list[int], total: int, t0: float
) -> Callable[[Outcome], None]:
    def tell(o: Outcome) -> None:
        if not o.ok:
            say(f"run {o.name} FAILED: {o.error}; log: {o.log}")
            return
        r: StudyRecord = o.value
        if r.status == "busy":
            return
        done[0] += 1
        top1 = "-" if r.top1 is None else f"{r.top1:.2f}%"
        late = "; still improving on validation" if r.converged is False else ""
        late += f"; {r.note}" if r.note else ""
        say(
            f"[{done[0]}/{total}] {o.name}: test top-1 {top1} ({r.status}, "
            f"{time.perf_counter() - t0:.0f} s{late})"
        )

    return tell


def run_study(
    study: Path, plan: Plan, options: LaunchOptions, say: Callable[[str], None] = print
) -> tuple[list[StudyRecord], dict[str, Outcome]]:
    """Run every unfinished run of ``plan`` (resuming partial ones) under ``options``; runs held
    by another process are waited for and picked up if they end unfinished.  Returns the
    finished runs' records and the failed runs' outcomes.  A plan that cannot train where
    ``options`` would run it is refused first (:func:`check_device`)."""
    check_device(plan, options.launcher, options.gpus_per_node)
    names = [r.name for r in plan_runs(study, plan)]
    failed: dict[str, Outcome] = {}
    done = [sum(run_state(study, n) == "done" for n in names)]
    if done[0]:
        say(f"{done[0]} of {len(names)} runs already finished (kept)")
    t0 = time.perf_counter()
    while True:
        states = {n: run_state(study, n) for n in names if n not in failed}
        todo = [n for n, s in states.items() if s in ("todo", "partial")]
        if not todo and "busy" not in states.values():
            break
        if not todo:
            time.sleep(1.0)
            continue
        tasks = [(n, execute_run, (str(study), n)) for n in todo]
        for o in launch(tasks, options, study / "logs", say, _say_outcome(say, done, len(names), t0)):
            if not o.ok:
                failed[o.name] = o
    records = [
        StudyRecord.from_json(json.loads((study / "runs" / n / RESULT_FILE).read_text()))
        for n in names
        if (study / "runs" / n / RESULT_FILE).is_file()
    ]
    return records, failed


def train_to_convergence(
    study: Path,
    plan: Plan,
    options: LaunchOptions,
    records: list[StudyRecord],
    t_start: float,
    say: Callable[[str], None] = print,
) -> tuple[list[StudyRecord], dict[str, Outcome]]:
    """Train again, with twice the epochs, the sizes whose runs were still improving on
    validation, while the budget left (counted from the study's first start: ``t_start``, a
    ``time.perf_counter()``, on the first call) fits them (:mod:`convit.study.extend`).
    Returns every finished run's record and the failed runs' outcomes; stops at the first
    failure."""
    failed: dict[str, Outcome] = {}
    started = _study_start(study, t_start)
    while not failed:
        remaining = plan.request.budget_s - (time.time() - started)
        done = load_extensions(study)
        new = [e for e in next_extensions(plan, records, remaining, options.jobs) if e not in done]
        if not new:
            break
        save_extensions(study, done + new)
        for ext in new:
            say(
                f"training again with {ext.epochs} epochs: {ext.reason} (about {ext.estimate_s / 60:.1f} min)"
            )
        records, failed = run_study(study, plan, options, say)
    return records, failed


def with_cut_short_note(verdict: str, records: list[StudyRecord]) -> str:
    """``verdict`` with the clause saying runs were cut short (:func:`cut_short_note`) when some
    had not converged and the sentence does not say so already."""
    note = cut_short_note(records)
    if note is None or note in verdict:
        return verdict
    return f"{verdict.rstrip().rstrip('.')}; {note}."


def _study_start(study: Path, t_start: float) -> float:
    """When the study first started (``time.time()``), kept in ``DIR/started``: the budget is the
    whole study's, so running the command again on a finished study trains nothing more."""
    path = study / STARTED_FILE
    if path.is_file():
        return float(path.read_text())
    start = time.time() - (time.perf_counter() - t_start)
    path.write_text(f"{start:.3f}\n")
    return start


def _longer(study: Path) -> str:
    """The sizes trained again for longer, for the report (empty when none was)."""
    done = load_extensions(study)
    if not done:
        return ""
    return (
        "Trained again for longer, the verdict on the longest schedule every run finished: "
        + "; ".join(f"{e.epochs} epochs ({e.reason})" for e in done)
        + "."
    )


def finish_study(study: Path, plan: Plan, records: list[StudyRecord]) -> str:
    """Write results.csv, report.html (every run) and verdict.txt (at each size, the longest
    schedule every arm and seed finished); returns the verdict sentence."""
    chosen = verdict_records(records, plan)
    comparisons = compare(chosen, plan.arm_names, study / "runs")
    verdict = with_cut_short_note(sentence(comparisons), chosen)
    write_csv(records, study / "results.csv")
    write_report(study / "report.html", records, comparisons, verdict, plan, chosen, _longer(study))
    (study / "verdict.txt").write_text(verdict + "\n")
    return verdict
