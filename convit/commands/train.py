"""``convit train``: train a model with the DeiT recipe (no arguments: the digits main job).

Every field of :class:`convit.training.config.TrainConfig` is a flag; ``--config FILE`` (YAML/TOML)
sets many at once and flags override it.  Under ``torchrun`` it trains with DDP::

    torchrun --standalone --nproc_per_node=2 -m convit.cli train --dataset cifar10

On Slurm, one DDP job over several nodes (submitit exports torchrun's variables in each task)::

    convit train --dataset cifar10 --launcher slurm --nodes 2 --gpus-per-node 4

This is where the trainer meets the analysis: :func:`convit.training.fit.fit` is given the hooks of
:func:`convit.analysis.training_hooks` (per-epoch locality in the log, the report at the end).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..analysis import training_hooks
from ..core.fileio import CheckpointSaveError
from ..core.launch import submit_distributed
from ..core.launch_flags import add_launcher_arguments, options_from_args
from ..training.config import TrainConfig, load_config_file
from ..training.engine import NonFiniteLossError
from ..training.fit import fit
from ..training.flags import add_config_arguments, config_from_args, given_fields
from ..training.run_folder import read_resume, resolve_output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Precedence: defaults < preset (--preset, else chosen by --dataset) < --config file < flags. "
        "The effective config is saved as <output>/config.yaml."
    )
    add_config_arguments(p)
    g = add_launcher_arguments(
        p, jobs_help=None, cpus_default="--threads, else Slurm's", launchers=("serial", "slurm")
    )
    g.add_argument("--nodes", type=int, default=1, help="Slurm: nodes of the one DDP job (default 1)")
    g.add_argument(
        "--tasks-per-node",
        type=int,
        metavar="T",
        help="Slurm: processes per node, one per GPU (default: --gpus-per-node, else 1)",
    )
    g.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Slurm: wait for the job and print its summary (default); --no-wait returns at submit",
    )


def _config(args: argparse.Namespace) -> tuple:
    """The run's config and, when resuming, its last.pt as read here (else None)."""
    if getattr(args, "resume", None):
        # The resumed run's own config, then the file and the flags given now on top; its
        # last.pt is read here, once, and handed to fit.
        given = given_fields(args)
        if hasattr(args, "config"):
            given = {**load_config_file(args.config), **given}
        return read_resume(args.resume, given)
    return config_from_args(args), None


def train_job(settings: dict[str, Any]) -> dict[str, Any]:
    """One task of a Slurm training job (module level: submitit pickles it).  A requeued job
    (``SLURM_RESTART_COUNT`` > 0) or a folder with a last.pt continues from it."""
    folder = Path(settings["output"])
    if (folder / "last.pt").is_file() or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        cfg, state = read_resume(
            str(folder), {k: v for k, v in settings.items() if k not in ("resume", "overwrite")}
        )
        if os.environ.get("RANK", "0") == "0":
            print(
                f"resuming the run in {folder} (Slurm restart {os.environ.get('SLURM_RESTART_COUNT', '0')})",
                flush=True,
            )
    else:
        cfg = TrainConfig(**settings).validate()
        state = None
    return fit(cfg, resume_state=state, **training_hooks())


def _submit(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """Submit ``cfg`` as one Slurm DDP job; with ``--wait``, wait and print rank 0's summary."""
    options = options_from_args(args)
    tasks = args.tasks_per_node or args.gpus_per_node or 1
    if options.cpus_per_task is None and cfg.threads:
        options.cpus_per_task = cfg.threads
    # the job resumes from its folder's last.pt itself (a --resume given now, or a requeue)
    settings = dict(cfg.to_dict(), output=str(resolve_output(cfg).resolve()), resume=None)
    job = submit_distributed(
        train_job, (settings,), options, args.nodes, tasks, Path(settings["output"]) / "slurm"
    )
    print(
        f"submitted Slurm job {job.job_id}: {args.nodes} node(s) x {tasks} task(s); "
        f"log: {job.paths.stdout} (errors: {job.paths.stderr})",
        flush=True,
    )
    if not args.wait:
        return 0
    summary = job.results()[0].to_dict()  # rank 0's FitResult
    print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, (int, float, str))))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        cfg, state = _config(args)
        if getattr(args, "launcher", "serial") == "slurm":
            return _submit(args, cfg)
        fit(cfg, resume_state=state, **training_hooks())
    except NonFiniteLossError as e:
        print(f"convit train: error: {e}", file=sys.stderr)
        return 1
    except CheckpointSaveError as e:
        print(f"convit train: error: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "convit train: interrupted; continue with `convit train --resume RUN_FOLDER` "
            "(the folder holding last.pt)",
            file=sys.stderr,
        )
        return 130
    return 0
