"""Run a grid of training runs, one folder each, resumably.

Layout of a sweep folder::

    DIR/sweep.json                          what was asked for (grid, preset, fractions, seeds)
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

Seed ``k`` fixes the validation hold-out, the per-class subset and the initialisation, and is
shared by every variant, so variants are compared on the same images (paired by seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from safetensors import safe_open

from ..analysis import training_hooks
from ..core.fileio import atomic_save, read_jsonl
from ..core.launch import LaunchOptions, Outcome, launch, run_lock
from ..core.presets import ExperimentScale, experiment_scale
from ..nn.model import DATA_DERIVED_FIELDS, ConViTConfig
from ..training.config import TrainConfig, build_config
from ..training.fit import fit
from ..weights.zoo import model_spec
from .grids import Variant, epochs_for_fraction, grid_variants
from .results import write_results

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


@dataclass
class RunSpec:
    """One training run of a sweep: which variant, fraction and seed, where, with which config."""

    grid: str
    preset: str
    variant: Variant
    fraction: float
    seed: int
    folder: Path
    overrides: dict[str, Any]  # TrainConfig fields, everything but output/resume/overwrite
    backend: str = "fit"  # "device": convit.training.fit.fit on on-device batches (the preset's backend)

    @property
    def key(self) -> str:
        return f"{self.variant.name}/f{self.fraction:g}/seed{self.seed}"


def run_folder(output: os.PathLike, variant: str, fraction: float, seed: int) -> Path:
    """``output/<variant>/f<fraction>/seed<seed>`` (fraction as ``%g``: f0.1, f1)."""
    return Path(output) / variant / f"f{fraction:g}" / f"seed{seed}"


def _pinned_architecture(model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every ConViTConfig field of ``model`` with ``kwargs`` on top (but those taken from the
    data), so a run's config.yaml states the whole architecture and a later change of the zoo's
    defaults cannot silently change an experiment (the runner then refuses to mix results)."""
    arch = {f.name: f.default for f in dataclasses.fields(ConViTConfig)}
    arch.update(model_spec(model).config)
    arch.update(kwargs)
    return {k: v for k, v in arch.items() if k not in DATA_DERIVED_FIELDS}


def _model_for(
    preset: ExperimentScale, variant: Variant, overrides: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    """The zoo name and (pinned, complete) ConViTConfig fields of ``variant`` at ``preset``'s size.

    Precedence: the zoo's config < the preset's shared sizes < its ConViT-only fields <
    ``overrides`` (the user's, for every run) < the variant's own fields (what the grid
    varies).  The DeiT baseline never takes a number of GPSA layers from ``overrides``.
    """
    overrides = dict(overrides or {})
    if variant.role == "deit":
        overrides.pop("local_up_to_layer", None)
        name, kw = preset.deit_model, {**preset.model_kwargs, **overrides, **variant.model_kwargs}
    elif variant.role == "convit":
        name = preset.convit_model
        kw = {**preset.model_kwargs, **preset.convit_kwargs, **overrides, **variant.model_kwargs}
    else:
        raise ValueError(f"variant {variant.name}: unknown role {variant.role!r}")
    return {"model": name, "model_kwargs": _pinned_architecture(name, kw)}


def _full_recipe(train: dict[str, Any]) -> dict[str, Any]:
    """Every TrainConfig field: its default, then ``train`` on top.  With every field given, the
    trainer's named presets (which may be retuned at any time) have no effect on a sweep."""
    base = TrainConfig().to_dict()
    base.update(train)
    return base


def plan_runs(
    grid: str,
    preset: ExperimentScale | str,
    output: os.PathLike,
    fractions: Optional[Sequence[float]] = None,
    seeds: Optional[int] = None,
    base_epochs: Optional[float] = None,
    variants: Optional[list[str]] = None,
    train_overrides: Optional[dict[str, Any]] = None,
    model_overrides: Optional[dict[str, Any]] = None,
) -> list[RunSpec]:
    """Every run of ``grid`` at ``preset`` (an experiment scale, or its name): variants x
    fractions x seeds, in that nesting order reversed (seed-major, then fraction, then variant)
    so that an interrupted sweep already has complete comparisons for the first seed.

    fractions: default the preset's (``sample-efficiency``) or its ablation fractions (others).
    seeds: number of seeds (0..seeds-1); base_epochs: epochs at f = 1 (scaled by 1/f).
    train_overrides / model_overrides: extra TrainConfig / ConViTConfig fields for every run.
    """
    p = experiment_scale(preset) if isinstance(preset, str) else preset
    if fractions is None:
        fractions = p.fractions if grid == "sample-efficiency" else p.ablation_fractions
    fractions = sorted({float(f) for f in fractions})
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
    n_seeds = p.seeds if seeds is None else int(seeds)
    if n_seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {n_seeds}")
    base = p.base_epochs if base_epochs is None else float(base_epochs)
    if not base > 0:
        raise ValueError(f"--epochs must be positive, got {base}")
    vs = grid_variants(grid, p, variants)
    specs = []
    for seed in range(n_seeds):
        for f in fractions:
            epochs = epochs_for_fraction(base, f)
            for v in vs:
                model = _model_for(p, v, model_overrides)
                over = {
                    **_full_recipe(p.train),
                    "dataset": p.dataset,
                    **model,
                    "sampling_ratio": f,
                    "seed": seed,
                    "epochs": epochs,
                    "scale_epochs": False,
                    "warmup_epochs": min(p.base_warmup / f, epochs / 2),
                    "eval_every": max(1, int(math.ceil(epochs / max(1, p.eval_points)))),
                }
                over.update(train_overrides or {})
                specs.append(
                    RunSpec(grid, p.name, v, f, seed, run_folder(output, v.name, f, seed), over, p.backend)
                )
    return specs


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_save(lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True)), path, "result")


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
        return (
            "done"
            if not settings_diff(json.loads(result_path.read_text()).get("settings"), planned)
            else "stale"
        )
    stored = _stored_settings(spec.folder)
    return "partial" if stored is not None and not settings_diff(_plain(stored), planned) else "todo"


def _default_fit(backend: str) -> Callable[[TrainConfig], dict[str, Any]]:
    """:func:`convit.training.fit.fit` with ``convit train``'s hooks (locality log, report: each only
    if the run's config asks), on on-device batches for the ``device`` backend."""
    return functools.partial(fit, on_device=backend == "device", **training_hooks())


def execute_run(spec: RunSpec, fit_fn: Optional[Callable] = None, quiet: bool = True) -> dict[str, Any]:
    """Run (or skip, or resume) one run; returns its result record (also in ``result.json``).

    The record holds the spec (variant, fraction, seed, settings), the final model's test and
    validation top-1, the best validation top-1 (for information; nothing is selected on it),
    the run time and whether it was skipped or resumed.  ``quiet`` sends the trainer's console
    output to ``<folder>/train.log``.
    """
    folder = spec.folder
    result_path = folder / RESULT_FILE
    planned = _plain(_settings(build_config(spec.overrides).to_dict()))
    if result_path.is_file():
        record = json.loads(result_path.read_text())
        diff = settings_diff(record.get("settings"), planned)
        if diff:
            raise ValueError(
                f"{folder} holds a finished run with different settings ({', '.join(diff)}); "
                "use another --output, or delete that folder to redo it"
            )
        record["skipped"] = True
        return record

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
    t0, cpu0 = time.perf_counter(), time.process_time()
    with contextlib.ExitStack() as stack:
        if quiet:
            log = stack.enter_context(open(folder / "train.log", "a"))
            stack.enter_context(contextlib.redirect_stdout(log))
        summary = fit_fn(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    facts, log = _model_facts(folder), _log_entries(folder)
    record = {
        "grid": spec.grid,
        "preset": spec.preset,
        "variant": spec.variant.name,
        "label": spec.variant.label,
        "role": spec.variant.role,
        "baseline": spec.variant.baseline,
        "fraction": spec.fraction,
        "seed": spec.seed,
        "settings": planned,
        "test_top1": summary.get("test_top1"),
        "test_top5": summary.get("test_top5"),
        "val_top1": summary.get("val_top1"),
        "best_val_top1": summary.get("best_val_top1"),
        "best_epoch": summary.get("best_epoch"),
        "epochs": summary.get("epochs"),
        "train_images": summary.get("train_images"),
        "params": facts["params"],
        "images_per_class": (
            summary["train_images"] / facts["classes"]
            if facts["classes"] and summary.get("train_images")
            else None
        ),
        "wall_s": wall,
        "cpu_s": cpu,
        "resumed": resumed,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "epochs_cpu_s": sum(e.get("epoch_cpu_time_s", 0.0) for e in log),  # every attempt's epochs
        "evals": [e for e in log if "val_top1" in e or "test_top1" in e],  # metrics and locality
    }
    _atomic_write_json(result_path, record)
    record["skipped"] = False
    return record


def _log_entries(folder: Path) -> list[dict[str, Any]]:
    """The run's log.jsonl, read once (none when the fit wrote no log): result.json keeps its evaluated
    epochs and CPU time, so a sweep folder can keep result.json alone and drop the per-epoch log."""
    path = folder / "log.jsonl"
    return read_jsonl(path) if path.is_file() else []


def _model_facts(folder: Path) -> dict[str, Optional[int]]:
    """Parameter count and number of classes of the run's final model (model.safetensors)."""
    path = folder / "model.safetensors"
    facts: dict[str, Optional[int]] = {"params": None, "classes": None}
    if not path.is_file():
        return facts
    try:
        with safe_open(str(path), "pt") as f:
            n = 0
            for k in f.keys():
                shape = f.get_slice(k).get_shape()
                n += math.prod(shape) if shape else 1
            facts["params"] = n
            names = json.loads((f.metadata() or {}).get("class_names", "null"))
            facts["classes"] = len(names) if names else None
    except Exception:  # nice to have; never fail a finished run over it
        pass
    return facts


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
) -> list[dict[str, Any]]:
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
        _atomic_write_json(out / "sweep.json", meta)
    t0 = time.perf_counter()

    def report(i: int, spec: RunSpec, r: dict[str, Any], seconds: float) -> None:
        state = "done before, skipped" if r["skipped"] else ("resumed" if r["resumed"] else "trained")
        say(
            f"[{i}/{len(specs)}] {spec.key}: test {_fmt(r['test_top1'])}  val {_fmt(r['val_top1'])}  "
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


def locked_run(spec: RunSpec, quiet: bool = True) -> dict[str, Any]:
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
    report: Callable[[int, RunSpec, dict[str, Any], float], None],
    failed: list[Outcome],
) -> list[dict[str, Any]]:
    """Every spec as a task of ``options``' launcher; the finished runs' records in plan order
    (failed runs' outcomes appended to ``failed``)."""
    index = {spec.key.replace("/", "-"): i for i, spec in enumerate(specs)}

    def told(o: Outcome) -> None:
        if o.ok:
            report(index[o.name] + 1, specs[index[o.name]], o.value, o.value.get("wall_s") or 0.0)
        else:
            say(f"run {o.name} FAILED: {o.error}; log: {o.log}")
            failed.append(o)

    tasks = [(name, locked_run, (specs[i], quiet)) for name, i in index.items()]
    return [o.value for o in launch(tasks, options, out / "logs", say, told) if o.ok]


def load_results(output: os.PathLike, grid: Optional[str] = None) -> list[dict[str, Any]]:
    """Every finished run's record under ``output`` (for re-tabulating without training); with
    ``grid``, only that grid's runs, in the grid's variant order (as a sweep reports them)."""
    records = []
    for path in sorted(Path(output).glob(f"*/f*/seed*/{RESULT_FILE}")):
        r = json.loads(path.read_text())
        if grid is not None and r.get("grid") != grid:
            continue
        r["skipped"] = True
        records.append(r)
    if grid is not None and records:
        try:
            order = [v.name for v in grid_variants(grid, experiment_scale(records[0]["preset"]))]
        except ValueError:
            order = []
        rank = {n: i for i, n in enumerate(order)}
        records.sort(key=lambda r: (r["seed"], r["fraction"], rank.get(r["variant"], len(rank))))
    return records


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}%"
