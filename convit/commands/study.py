"""``convit study DATA``: ConViT or DeiT on my images?  Plan, runs, verdict in one command.

Examples::

    convit study my_images/          # DATA/train/<class>/..., DATA/val|test/, or DATA/<class>/...
    convit study my_images/ --budget 10m --output runs/study
    convit study digits --budget 5m
    convit study my_images/ --models convit_tiny,deit_tiny,resnet --img-size 32 --device cuda
    convit study my_images/ --pretrained                 # fine-tune convit_tiny, deit_tiny, a ResNet
    convit study my_images/ --pretrained --models local-dir:exports/convit,local-dir:exports/deit
    convit study my_images/ --launcher local --jobs 2
    convit study my_images/ --launcher slurm --jobs 8 --partition cpu --time 60
    convit study --plan runs/study/plan.json --output elsewhere    # the same plan, exactly

Running the same command again skips finished runs and resumes unfinished ones.  See docs/study.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

from ..core.launch_flags import add_launcher_arguments, options_from_args, parse_duration
from ..study import describe_plan, finish_study, plan_study, run_study, train_to_convergence
from ..study.driver import timeout_minutes
from ..study.inspect import BUILTIN
from ..study.plan import plan_request
from ..study.plan_schema import Plan, PlanRequest

DEVICES = ("auto", "cpu", "cuda")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::", 1)[1]
    p.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help="image folder (DATA/train/<class>/ with optional DATA/val/ or DATA/test/, or DATA/<class>/) "
        f"or {', '.join(BUILTIN)}; with --plan: the data folder, if it moved",
    )
    p.add_argument(
        "--budget",
        type=parse_duration,
        default=30 * 60.0,
        metavar="TIME",
        help="wall time for the whole study, e.g. 30m, 2h (default 30m)",
    )
    p.add_argument("--output", metavar="DIR", help="study folder (default runs/study-<data name>)")
    p.add_argument("--plan", metavar="PLAN", help="run this plan.json exactly instead of planning")
    p.add_argument("--overwrite", action="store_true", help="replace another study in --output")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per size (default: chosen by the budget, 3 or more when they fit; the interval needs "
        ">= 2, and resolves little with 2)",
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", metavar="N", help="images per class to compare (default: planned)"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    p.add_argument("--data-path", metavar="PATH", help="where a built-in dataset's files are")
    _add_model_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="write and print the plan, run nothing")
    add_launcher_arguments(p, time_default="planned", cpus_default="the plan's threads")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of what is compared, at which resolution, on which device."""
    p.add_argument(
        "--models",
        metavar="A,B,...",
        help="zoo models to compare: one ConViT, its DeiT (the paper's pairing or the same width and "
        "depth) and/or 'resnet' (the CNN arm, sized to the ConViT), e.g. convit_tiny,deit_tiny,resnet "
        "(default: a small ConViT/DeiT pair and the CNN arm when the budget allows)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="fine-tune published weights with the finetune preset: convit_tiny, deit_tiny and the timm "
        "ResNet closest in parameters, or --models as zoo names, local-dir:EXPORT_FOLDER or hf-hub:ID "
        "(and 'resnet'); looked for in the local caches, then the hub, before anything runs",
    )
    p.add_argument(
        "--img-size", type=int, metavar="PX", help="input resolution (default: chosen by the budget)"
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the runs train and are timed (default auto: cuda when available; bf16 on cuda)",
    )


def study_device(asked: str, gpus_per_node: Optional[int]) -> str:
    """``cpu`` or ``cuda``: auto is cuda when this node has a GPU or the Slurm jobs get GPUs
    (``--gpus-per-node``); cuda without either is a ValueError of one line."""
    gpus = torch.cuda.is_available() or bool(gpus_per_node)
    if asked == "cuda" and not gpus:
        raise ValueError("--device cuda: this node has no GPU (CUDA is not available); use --device cpu")
    if asked == "auto":
        return "cuda" if gpus else "cpu"
    return asked


def _models(text: Optional[str]) -> Optional[list[str]]:
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


def _request(args: argparse.Namespace) -> PlanRequest:
    """What the flags ask for (a ValueError of one line for models that cannot be compared)."""
    return plan_request(
        str(Path(args.data).resolve()) if Path(args.data).is_dir() else args.data,
        args.budget,
        args.seeds,
        args.jobs,
        args.sizes,
        args.threads,
        args.data_path,
        models=_models(args.models),
        img_size=args.img_size,
        device=study_device(args.device, args.gpus_per_node),
        pretrained=args.pretrained,
    )


def run(args: argparse.Namespace) -> int:
    # the budget counts from the command's start (convit.cli.main), module imports included
    t_start = getattr(args, "started_at", None) or time.perf_counter()
    if args.data is None and args.plan is None:
        raise ValueError("give DATA (an image folder or a built-in dataset) or --plan plan.json")
    if (args.seeds is not None and args.seeds < 1) or args.threads < 1 or args.jobs < 1:
        raise ValueError("--seeds, --threads and --jobs must be at least 1")
    if args.img_size is not None and args.img_size < 1:
        raise ValueError("--img-size must be at least 1")
    name = Path(args.data).name if args.data else Path(args.plan).resolve().parent.name
    study = Path(args.output or f"runs/study-{name}")
    options = options_from_args(args)
    request = None if args.plan else _request(args)
    plan = plan_study(
        study,
        request,
        plan_file=args.plan,
        data_root=args.data if args.plan else None,
        overwrite=args.overwrite,
        t_start=t_start,
        say=lambda s: print(s, flush=True),
    )
    print(describe_plan(plan), flush=True)
    if args.dry_run:
        print(f"wrote {study / 'plan.json'}")
        return 0
    options.timeout_min = int(args.time / 60) if args.time else timeout_minutes(plan)
    options.cpus_per_task = options.cpus_per_task or plan.threads

    def say(text: str) -> None:
        print(text, flush=True)

    records, failed = run_study(study, plan, options, say=say)
    if not failed:
        records, failed = train_to_convergence(study, plan, options, records, t_start, say=say)
    verdict = finish_study(study, plan, records)
    print(
        f"results: {study / 'results.csv'}; report: {study / 'report.html'} "
        f"({time.perf_counter() - t_start:.0f} s in all)"
    )
    if failed:
        print(f"{len(failed)} run(s) failed: " + "; ".join(f"{n} (log: {o.log})" for n, o in failed.items()))
    print(_fine_tuned(plan) + verdict)
    return 1 if failed else 0


def _fine_tuned(plan: Plan) -> str:
    """The line before a fine-tuning study's verdict: which weights each arm started from."""
    starts = [f"{a.label} from {a.weights}" for a in plan.model.arms if a.weights is not None]
    return f"fine-tuned: {'; '.join(starts)}\n" if starts else ""
