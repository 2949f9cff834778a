"""The launcher flags shared by every command that launches (``convit study``, ``convit
experiment``, ``convit train --launcher slurm``): ``--launcher``, ``--jobs`` and the Slurm options,
read back into a :class:`~convit.core.launch.LaunchOptions`.  Apart from :mod:`.launch` so that a
command's parser does not need submitit."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Optional

from .launch import LAUNCHERS, LaunchOptions

__all__ = ["parse_duration", "add_launcher_arguments", "options_from_args"]


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``2h``, ``90s``, ``1h30m`` or a bare number of minutes."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a duration (e.g. 30m, 2h, 90s, 1h30m)")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)


def add_launcher_arguments(
    p: argparse.ArgumentParser,
    jobs_help: Optional[str] = "runs at once (local processes or Slurm array tasks)",
    time_default: str = "60 min",
    cpus_default: str = "Slurm's",
    launchers: Sequence[str] = LAUNCHERS,
) -> argparse._ArgumentGroup:
    """``--launcher`` (one of ``launchers``), ``--jobs`` (unless ``jobs_help`` is None) and the
    Slurm flags (``--partition --time --cpus-per-task --mem --account --qos --gpus-per-node
    --slurm KEY=VALUE``), in a group "launchers", which is returned."""
    g = p.add_argument_group("launchers")
    g.add_argument(
        "--launcher",
        choices=list(launchers),
        default="serial",
        help=f"{', '.join(launchers)} (default serial)",
    )
    if jobs_help is not None:
        g.add_argument("--jobs", type=int, default=1, metavar="N", help=jobs_help + " (default 1)")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument(
        "--time",
        type=parse_duration,
        metavar="TIME",
        help=f"time limit per job, e.g. 30m, 2h (default: {time_default})",
    )
    g.add_argument("--cpus-per-task", type=int, help=f"Slurm CPUs per task (default: {cpus_default})")
    g.add_argument("--mem", help="Slurm memory per job, e.g. 4G")
    g.add_argument("--account", help="Slurm account")
    g.add_argument("--qos", help="Slurm quality of service")
    g.add_argument("--gpus-per-node", type=int, help="Slurm GPUs per node of a job")
    g.add_argument(
        "--slurm",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        help="other #SBATCH options, passed through (e.g. constraint=avx512)",
    )
    return g


def options_from_args(args: argparse.Namespace, timeout_min: int = 60) -> LaunchOptions:
    """The :class:`LaunchOptions` of :func:`add_launcher_arguments`'s flags (``--time`` if
    given, else ``timeout_min``), checked."""
    extra: dict[str, str] = {}
    for item in args.slurm:
        if "=" not in item:
            raise ValueError(f"--slurm: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        extra[k.strip().replace("-", "_")] = v.strip()
    return LaunchOptions(
        args.launcher,
        getattr(args, "jobs", 1),
        int(args.time / 60) if args.time else timeout_min,
        partition=args.partition,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        account=args.account,
        qos=args.qos,
        gpus_per_node=args.gpus_per_node,
        slurm=extra,
    ).check()
