"""``convit experiment``: reproduce the paper's comparisons at small scale, as resumable sweeps.

Examples::

    convit experiment sample-efficiency --preset digits-cpu            # wall time: docs/results.md, sec. 1
    convit experiment ablation --preset digits-cpu --fractions 0.25 1
    convit experiment sample-efficiency --preset cifar10-gpu --output runs/exp/cifar
    convit experiment sample-efficiency --preset digits-cpu --dry-run  # list the runs
    convit experiment sample-efficiency --preset digits-cpu --table-only  # re-tabulate
    convit experiment sample-efficiency --preset digits-cpu --launcher local --jobs 2 --set threads=1
    convit experiment ablation --preset cifar10-gpu --launcher slurm --jobs 8 --gpus-per-node 1 --time 2h

Every run gets its own folder ``OUTPUT/<variant>/f<fraction>/seed<k>/``; running the same
command again skips finished runs and resumes unfinished ones from their ``last.pt``.  Runs go
through the launchers of :mod:`convit.core.launch` (as ``convit study``'s): each under its folder's
lock, job logs in ``OUTPUT/logs/``, a Slurm job requeued on preemption resuming its run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from ..core.launch_flags import add_launcher_arguments, options_from_args
from ..core.presets import EXPERIMENT_SCALES
from ..experiments.grids import GRIDS
from ..experiments.results import write_results
from ..experiments.runner import load_results, plan_runs, run_status, run_sweep


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "presets:\n" + "\n".join(f"  {k}: {v.description}" for k, v in EXPERIMENT_SCALES.items())
    p.add_argument("grid", choices=list(GRIDS), help="which comparison of the paper to run")
    p.add_argument(
        "--preset",
        choices=list(EXPERIMENT_SCALES),
        default="digits-cpu",
        help="data, model size, recipe and default fractions/seeds (default: digits-cpu)",
    )
    p.add_argument("--output", metavar="DIR", help="sweep folder (default: runs/experiments/<grid>-<preset>)")
    p.add_argument("--seeds", type=int, metavar="N", help="number of seeds, 0..N-1 (default: the preset's)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        metavar="F",
        help="per-class fractions of the training split (default: the preset's)",
    )
    p.add_argument(
        "--epochs",
        type=float,
        metavar="E",
        help="epochs at fraction 1; a fraction f runs round(E / f) epochs (default: the preset's)",
    )
    p.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants of the grid")
    _add_overrides(p.add_argument_group("settings of every run"))
    p.add_argument("--dry-run", action="store_true", help="list the planned runs and exit")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="do not train: rebuild the tables and figure from the finished runs in --output",
    )
    p.add_argument(
        "--verbose", action="store_true", help="show each run's training output (else in train.log)"
    )
    add_launcher_arguments(
        p,
        jobs_help="runs trained at once: local processes or Slurm array tasks (give each one "
        "thread: --set threads=1)",
    )


def _add_overrides(p: argparse._ArgumentGroup) -> None:
    """What every run of the sweep sets on top of its preset: data, training and model fields."""
    p.add_argument("--data-path", metavar="PATH", help="dataset folder or file (see `convit train --help`)")
    p.add_argument(
        "--set",
        dest="train_set",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        help="TrainConfig fields for every run, e.g. lr=1e-3 device=cuda compile=true",
    )
    p.add_argument(
        "--model-set",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        help="ConViTConfig fields for every run's model, e.g. embed_dim=64",
    )


def _kv(items) -> dict:
    """``--set`` / ``--model-set`` KEY=VALUE items, values read as YAML (as in a config file)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def run(args: argparse.Namespace) -> int:
    output = Path(args.output or f"runs/experiments/{args.grid}-{args.preset}")
    if args.table_only:
        return _tabulate(args.grid, output)
    train_over = _kv(args.train_set)
    if args.data_path:
        train_over["data_path"] = args.data_path
    specs = plan_runs(
        args.grid,
        args.preset,
        output,
        fractions=args.fractions,
        seeds=args.seeds,
        base_epochs=args.epochs,
        variants=args.variants,
        train_overrides=train_over,
        model_overrides=_kv(args.model_set),
    )
    if args.dry_run:
        _list_runs(specs, output)
        return 0
    options = options_from_args(args)
    print(
        f"{args.grid} at {args.preset}: {len(specs)} runs into {output} ({args.launcher} launcher)",
        flush=True,
    )
    t0 = time.perf_counter()
    meta = _sweep_meta(args, specs)
    run_sweep(
        specs, output, say=lambda s: print(s, flush=True), quiet=not args.verbose, meta=meta, options=options
    )
    print((output / "results.md").read_text())
    print(
        f"sweep finished in {time.perf_counter() - t0:.0f} s; tables: {output / 'results.md'}, "
        f"{output / 'results.csv'}"
    )
    return 0


def _tabulate(grid: str, output: Path) -> int:
    """``--table-only``: the tables and figures again from the finished runs in ``output``."""
    records = load_results(output, grid=grid)
    if not records:
        raise ValueError(f"no finished {grid} runs under {output}")
    paths = write_results(records, output, grid=grid)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _list_runs(specs: list, output: Path) -> None:
    """``--dry-run``: one line per planned run, with its state and epochs."""
    for spec in specs:
        kwargs = json.dumps(spec.variant.model_kwargs) if spec.variant.model_kwargs else ""
        if spec.variant.params:  # a model the grid sized itself (the CNN arm)
            kwargs = f"{spec.variant.params:,} params  {kwargs}"
        print(
            f"{spec.key:34s} {run_status(spec):8s} {spec.overrides['model']:14s} "
            f"epochs {spec.overrides['epochs']:5d}  {kwargs}"
        )
    first = specs[0].overrides if specs else {}
    print(
        f"{len(specs)} runs into {output}; architecture of the first: {json.dumps(first.get('model_kwargs'))}"
    )


def _sweep_meta(args: argparse.Namespace, specs: list) -> dict:
    """What sweep.json records about the command that started the sweep."""
    return {
        "grid": args.grid,
        "preset": args.preset,
        "command": "convit " + " ".join(sys.argv[1:]),
        "fractions": sorted({s.fraction for s in specs}),
        "seeds": sorted({s.seed for s in specs}),
        "variants": list(dict.fromkeys(s.variant.name for s in specs)),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
