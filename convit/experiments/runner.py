"""Run a grid of training runs, one folder each, resumably.

Layout of a sweep folder::

    DIR/sweep.json                          what was asked for (grid, preset, fractions, seeds) and
                                            when: first started, last resumed
    DIR/<variant>/f<fraction>/seed<k>/      one run folder of convit.training.fit.fit (config.yaml,
                                            log.jsonl, last.pt, model.safetensors, ...)
        train.log                           the run's console output
        result.json                         written atomically when the run has finished
    DIR/results.csv, results.md, *.png      written by convit.experiments.results (.figures)

Resuming: a run whose ``result.json`` exists is skipped (and its settings checked against the
plan, so a changed recipe is never silently mixed into a table); a run with a ``last.pt`` of
the same settings continues from it (``fit`` restores model, optimizer, schedule and RNG
states); anything else in the folder is overwritten.  Killing a sweep and starting the same
command again therefore only redoes the epoch that was interrupted.

The runs and their settings are planned by :mod:`.sweep_plan`; a run's record is a
:class:`~convit.experiments.run_record.RunRecord`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from ..analysis import training_hooks
from ..core.fileio import atomic_save
from ..core.launch import LaunchOptions, Outcome, launch, run_lock
from ..core.presets import experiment_scale
from ..training.config import TrainConfig, build_config
from ..training.fit import fit
from .grids import grid_variants
from .results import write_results
from .run_record import RunRecord, RunTimes, finished_record
from .sweep_plan import RunSpec, plan_runs, run_folder

__all__ = [
    "RunSpec",
    "plan_runs",
    "run_folder",
    "run_status",
    "settings_diff",
    "execute_run",
    "run_sweep",
    "locked_run",
    "SweepError",
    "load_results",
    "RESULT_FILE",
]

RESULT_FILE = "result.json"
#: TrainConfig fields that differ between a fresh run and its resumption; not "settings".
_RUN_ONLY_FIELDS = ("output", "resume", "overwrite")


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_save(lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True)), path, "result")


def _keep_first_start(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` for ``path`` (sweep.json) keeping the first call's ``started``: a resumed sweep
    records when it was last resumed (``resumed``) instead of erasing when it began."""
    if "started" not in meta or not path.is_file():
        return meta
    first = json.loads(path.read_text()).get("started")
    if first is None or first == meta["started"]:
        return meta
    return {**meta, "started": first, "resumed": meta["started"]}


def _settings(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg_dict.items() if k not in _RUN_ONLY_FIELDS}


def _plain(obj: Any) -> Any:
    """JSON/YAML round-trip form (tuples -> lists), so stored and planned settings compare equal."""
    return json.loads(json.dumps(obj))


def _stored_settings(folder: Path) -> Optional[dict[str, Any]]:
    """Settings of the run whose ``last.pt`` is in ``folder`` (from its config.yaml), or None."""
    path = folder / "config.yaml"
    if not (folder / "last.pt").is_file() or not path.is_file():
        return None
    try:
        return _settings(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return None


def settings_diff(stored: Optional[dict[str, Any]], planned: dict[str, Any]) -> list[str]:
    """The settings in which a stored run differs from the plan (empty: the same run).

    A TrainConfig field added since the run was stored counts as the same when the plan leaves
    it at its default (the run trained as that default does); a field since removed is
    ignored.  So a sweep stays resumable across versions of the code that add knobs.
    """
    if stored is None:
        return sorted(planned)
    defaults = _plain(TrainConfig().to_dict())
    return sorted(
        k
        for k in set(planned) | set(stored)
        if (k in stored and k in planned and stored[k] != planned[k])
        or (k not in stored and planned[k] != defaults.get(k))
    )


def run_status(spec: RunSpec) -> str:
    """``done`` (finished, same settings), ``stale`` (finished with other settings: the sweep
    would refuse it), ``partial`` (a last.pt to resume from) or ``todo``."""
    result_path = spec.folder / RESULT_FILE
    planned = _plain(_settings(build_config(spec.overrides).to_dict()))
    if result_path.is_file():
        return "done" if not settings_diff(RunRecord.read(result_path).settings, planned) else "stale"
    stored = _stored_settings(spec.folder)
    return "partial" if stored is not None and not settings_diff(_plain(stored), planned) else "todo"


def _default_fit(backend: str) -> Callable[[TrainConfig], Any]:
    """:func:`convit.training.fit.fit` with ``convit train``'s hooks (locality log, report: each only
    if the run's config asks), on on-device batches for the ``device`` backend."""
    return functools.partial(fit, on_device=backend == "device", **training_hooks())


def _finished(spec: RunSpec, planned: dict[str, Any]) -> RunRecord:
    """The record of a run found finished (skipped), refusing one of other settings."""
    record = RunRecord.read(spec.folder / RESULT_FILE, skipped=True)
    diff = settings_diff(record.settings, planned)
    if diff:
        raise ValueError(
            f"{spec.folder} holds a finished run with different settings ({', '.join(diff)}); "
            "use another --output, or delete that folder to redo it"
        )
    return record


def execute_run(spec: RunSpec, fit_fn: Optional[Callable] = None, quiet: bool = True) -> RunRecord:
    """Run (or skip, or resume) one run; returns its record (also in ``result.json``).

    ``fit_fn`` (default :func:`convit.training.fit.fit` with ``convit train``'s hooks) takes the
    run's TrainConfig and returns a FitResult (any object with its metric attributes).
    ``quiet`` sends the trainer's console output to ``<folder>/train.log``.
    """
    folder = spec.folder
    planned = _plain(_settings(build_config(spec.overrides).to_dict()))
    if (folder / RESULT_FILE).is_file():
        return _finished(spec, planned)
    cfg_over = dict(spec.overrides, output=str(folder))
    stored = _stored_settings(folder)
    resumed = stored is not None and not settings_diff(_plain(stored), planned)
    if resumed:
        cfg_over["resume"] = str(folder / "last.pt")
    else:
        cfg_over["overwrite"] = True  # a killed run of other settings, or one without last.pt
    cfg = build_config(cfg_over)
    folder.mkdir(parents=True, exist_ok=True)
    fit_fn = fit_fn or _default_fit(spec.backend)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    with contextlib.ExitStack() as stack:
        if quiet:
            log = stack.enter_context(open(folder / "train.log", "a"))
            stack.enter_context(contextlib.redirect_stdout(log))
        result = fit_fn(cfg)
    times = RunTimes(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - cpu0, resumed=resumed)
    record = finished_record(spec, planned, result, times)
    _atomic_write_json(folder / RESULT_FILE, record.to_json())
    return record


# ---------------------------------------------------------------------------------------------
# A sweep
# ---------------------------------------------------------------------------------------------


def run_sweep(
    specs: Sequence[RunSpec],
    output: os.PathLike,
    fit_fn: Optional[Callable] = None,
    say: Callable[[str], None] = print,
    quiet: bool = True,
    meta: Optional[dict[str, Any]] = None,
    jobs: int = 1,
    options: Optional[LaunchOptions] = None,
) -> list[RunRecord]:
    """Run every spec (skipping finished ones), then write the tables and the figure.

    Returns the records in plan order.  With ``options`` (``jobs`` > 1: local), each run is a
    task of :func:`convit.core.launch.launch` (:func:`locked_run`, logs in ``output/logs``); failed
    runs raise a :class:`SweepError` naming their logs once the rest and the tables are done.
    Else runs train here with ``fit_fn`` and an exception propagates at once; either way the
    same call later continues where it stopped.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        _atomic_write_json(out / "sweep.json", _keep_first_start(out / "sweep.json", meta))
    t0 = time.perf_counter()

    def report(i: int, spec: RunSpec, r: RunRecord, seconds: float) -> None:
        state = "done before, skipped" if r.skipped else ("resumed" if r.resumed else "trained")
        say(
            f"[{i}/{len(specs)}] {spec.key}: test {_fmt(r.test_top1)}  val {_fmt(r.val_top1)}  "
            f"({state}, {seconds:.0f} s; sweep {time.perf_counter() - t0:.0f} s)"
        )

    options = options or (LaunchOptions("local", jobs) if jobs > 1 else None)
    failed: list[Outcome] = []
    if options is not None:
        if fit_fn is not None:
            raise ValueError(
                "launched runs use the default trainer in their own processes; fit_fn must be None"
            )
        records = _launched(specs, out, options, quiet, say, report, failed)
    else:
        records = []
        for i, spec in enumerate(specs, 1):
            t = time.perf_counter()
            records.append(execute_run(spec, fit_fn=fit_fn, quiet=quiet))
            report(i, spec, records[-1], time.perf_counter() - t)
    write_results(records, out, grid=specs[0].grid if specs else "")
    if failed:
        raise SweepError(
            f"{len(failed)} run(s) failed: " + "; ".join(f"{o.name} (log: {o.log})" for o in failed)
        )
    return records


class SweepError(ValueError):
    """Runs of a launched sweep failed (the others finished; their results are written)."""


def locked_run(spec: RunSpec, quiet: bool = True) -> RunRecord:
    """:func:`execute_run` under ``<folder>/lock`` (a launcher's task; module level, pickled):
    waits while another process or job holds the run, then finds it finished (skipped) or
    resumes it, so two never train the same run."""
    with run_lock(spec.folder, wait=True):
        return execute_run(spec, quiet=quiet)


def _launched(
    specs: Sequence[RunSpec],
    out: Path,
    options: LaunchOptions,
    quiet: bool,
    say: Callable[[str], None],
    report: Callable[[int, RunSpec, RunRecord, float], None],
    failed: list[Outcome],
) -> list[RunRecord]:
    """Every spec as a task of ``options``' launcher; the finished runs' records in plan order
    (failed runs' outcomes appended to ``failed``)."""
    index = {spec.key.replace("/", "-"): i for i, spec in enumerate(specs)}

    def told(o: Outcome) -> None:
        if o.ok:
            report(index[o.name] + 1, specs[index[o.name]], o.value, o.value.wall_s or 0.0)
        else:
            say(f"run {o.name} FAILED: {o.error}; log: {o.log}")
            failed.append(o)

    tasks = [(name, locked_run, (specs[i], quiet)) for name, i in index.items()]
    return [o.value for o in launch(tasks, options, out / "logs", say, told) if o.ok]


def load_results(output: os.PathLike, grid: Optional[str] = None) -> list[RunRecord]:
    """Every finished run's record under ``output`` (for re-tabulating without training); with
    ``grid``, only that grid's runs, in the grid's variant order (as a sweep reports them)."""
    records = []
    for path in sorted(Path(output).glob(f"*/f*/seed*/{RESULT_FILE}")):
        r = RunRecord.read(path, skipped=True)
        if grid is not None and r.grid != grid:
            continue
        records.append(r)
    if grid is not None and records:
        try:
            order = [v.name for v in grid_variants(grid, experiment_scale(records[0].preset))]
        except ValueError:
            order = []
        rank = {n: i for i, n in enumerate(order)}
        records.sort(key=lambda r: (r.seed, r.fraction, rank.get(r.variant, len(rank))))
    return records


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}%"
