"""Run many independent tasks in this process, as local processes or as a Slurm job array (submitit).

A task is ``(name, fn, args)`` with ``fn`` a module-level function (so it can be pickled); each
runs as :class:`Resumable`, a :class:`submitit.helpers.Checkpointable`: when Slurm preempts or
times out a job, submitit calls ``checkpoint()``, which resubmits the same call, so ``fn`` must be
safe to call again (the study's runs resume from their ``last.pt``).

* ``serial``: one after another here (a failure is logged to ``log_dir/serial/<name>.log``);
* ``local``: submitit's LocalExecutor, ``jobs`` processes at a time, each seeing one GPU of
  this machine's (:mod:`convit.core.local_gpus`; shared when there are more jobs than GPUs);
* ``slurm``: submitit's AutoExecutor, one job array with ``slurm_array_parallelism = jobs``.

Each job's logs land in ``log_dir``; a failed task is reported with its log path and the others
still finish.  This module imports nothing from convit above ``core``: ``convit study``, ``convit experiment``
and ``convit train`` (one DDP job over ``nodes`` x ``tasks_per_node`` Slurm tasks,
:func:`submit_distributed`) all add its flags with :func:`convit.core.launch_flags.add_launcher_arguments`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .local_gpus import job_parameters, pick_gpu, sharing_note, visible_gpus

__all__ = [
    "LAUNCHERS",
    "LaunchOptions",
    "Outcome",
    "Resumable",
    "launch",
    "slurm_available",
    "run_lock",
    "submit_distributed",
]

LAUNCHERS = ("serial", "local", "slurm")
Task = tuple[str, Callable[..., Any], tuple]


@dataclass
class LaunchOptions:
    """How to launch: ``launcher`` in :data:`LAUNCHERS`, ``jobs`` at once, a time limit per job
    (minutes; submitit's local default of 2 minutes is never used), and Slurm's settings
    (``slurm``: extra ``#SBATCH`` KEY=VALUE pairs, passed through)."""

    launcher: str = "serial"
    jobs: int = 1
    timeout_min: int = 60
    partition: Optional[str] = None
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    gpus_per_node: Optional[int] = None
    slurm: dict[str, str] = field(default_factory=dict)

    def check(self) -> LaunchOptions:
        """``self``, or a ValueError naming what is wrong (an unknown launcher, no sbatch)."""
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.launcher!r}; known: {', '.join(LAUNCHERS)}")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}")
        if self.launcher == "slurm" and not slurm_available():
            raise ValueError("--launcher slurm needs Slurm's sbatch on the PATH; it is not there")
        return self


@dataclass
class Outcome:
    """What became of one task: its value, or the error and where its log is."""

    name: str
    value: Any = None
    error: Optional[str] = None
    log: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def slurm_available() -> bool:
    """Whether Slurm's ``sbatch`` is on the PATH."""
    return shutil.which("sbatch") is not None


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # submitit is a dependency; this keeps `serial` usable without it
    _Checkpointable = object  # type: ignore[misc,assignment]


class Resumable(_Checkpointable):  # type: ignore[misc,valid-type]
    """``fn(*args)`` as a checkpointable job: on preemption or timeout, submitit calls
    :meth:`checkpoint` (inherited), which resubmits this same call."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __call__(self) -> Any:
        return self.fn(*self.args)


def launch(
    tasks: Sequence[Task],
    options: LaunchOptions,
    log_dir: os.PathLike,
    say: Callable[[str], None] = print,
    on_outcome: Callable[[Outcome], None] = lambda o: None,
) -> list[Outcome]:
    """Run every task as ``options`` says; returns one :class:`Outcome` per task, in order, and
    passes each to ``on_outcome`` as soon as it is known."""
    options.check()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    if not tasks:
        return []
    if options.launcher == "serial":
        return [_told(_serial(t, log_dir / "serial"), on_outcome) for t in tasks]
    import submitit  # only the process launching jobs needs it

    if options.launcher == "local":
        executor = submitit.LocalExecutor(folder=str(log_dir / "%j"))
        executor.update_parameters(timeout_min=options.timeout_min)
        gpus = visible_gpus()
        if gpus:
            say(sharing_note(options.jobs, gpus))
        return _throttled(executor, tasks, options.jobs, on_outcome, gpus)
    executor = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster="slurm")
    executor.update_parameters(**_slurm_parameters(options))
    with executor.batch():
        jobs = [executor.submit(Resumable(fn, *args)) for _, fn, args in tasks]
    say(f"submitted {len(jobs)} Slurm job(s): array {jobs[0].job_id.split('_')[0]}, logs in {log_dir}")
    try:
        return [_told(_wait(name, job), on_outcome) for (name, _, _), job in zip(tasks, jobs)]
    except KeyboardInterrupt:
        say("interrupted: cancelling the Slurm jobs (finished epochs are kept in last.pt)")
        for job in jobs:
            job.cancel(check=False)
        raise


def _told(outcome: Outcome, on_outcome: Callable[[Outcome], None]) -> Outcome:
    on_outcome(outcome)
    return outcome


def _slurm_parameters(o: LaunchOptions) -> dict[str, Any]:
    params: dict[str, Any] = {
        "timeout_min": o.timeout_min,
        "slurm_array_parallelism": o.jobs,
        "name": "convit",
    }
    for key, value in (
        ("slurm_partition", o.partition),
        ("cpus_per_task", o.cpus_per_task),
        ("slurm_mem", o.mem),
        ("slurm_account", o.account),
        ("slurm_qos", o.qos),
        ("gpus_per_node", o.gpus_per_node),
    ):
        if value is not None:
            params[key] = value
    if o.slurm:
        params["slurm_additional_parameters"] = dict(o.slurm)
    return params


def _serial(task: Task, log_dir: Path) -> Outcome:
    name, fn, args = task
    try:
        return Outcome(name, fn(*args))
    except Exception:  # one failed run must not stop the others; KeyboardInterrupt does
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{name}.log"
        path.write_text(traceback.format_exc())
        return Outcome(name, error=traceback.format_exc(limit=0).strip().splitlines()[-1], log=str(path))


def _wait(name: str, job: Any) -> Outcome:
    """The result of a submitit job, or its error and log path (the job's stderr)."""
    try:
        return Outcome(name, job.result(), log=str(job.paths.stderr))
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError, or the task's own
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        return Outcome(name, error=lines[-1] if lines else type(e).__name__, log=str(job.paths.stderr))


def _throttled(
    executor: Any,
    tasks: Sequence[Task],
    jobs: int,
    on_outcome: Callable[[Outcome], None],
    gpus: Sequence[str] = (),
) -> list[Outcome]:
    """Submit to ``executor`` (which starts everything it is given at once) ``jobs`` at a time,
    each on one of ``gpus`` (:mod:`convit.core.local_gpus`; none: no GPU)."""
    outcomes: dict[int, Outcome] = {}
    running: dict[int, Any] = {}
    queue = list(range(len(tasks)))
    try:
        _pool(executor, tasks, jobs, on_outcome, queue, running, outcomes, list(gpus))
    except KeyboardInterrupt:
        for job in running.values():
            job.cancel(check=False)
        raise
    return [outcomes[i] for i in range(len(tasks))]


def _pool(
    executor: Any,
    tasks: Sequence[Task],
    jobs: int,
    on_outcome: Callable[[Outcome], None],
    queue: list[int],
    running: dict[int, Any],
    outcomes: dict[int, Outcome],
    gpus: list[str],
) -> None:
    gpu_of: dict[int, str] = {}  # the GPU of each running job
    while queue or running:
        while queue and len(running) < jobs:
            i = queue.pop(0)
            name, fn, args = tasks[i]
            if gpus:
                gpu_of[i] = pick_gpu(gpus, gpu_of.values())
                executor.update_parameters(**job_parameters(gpu_of[i]))
            running[i] = executor.submit(Resumable(fn, *args))
        finished = [i for i, job in running.items() if job.done()]
        for i in finished:
            gpu_of.pop(i, None)
            outcomes[i] = _told(_wait(tasks[i][0], running.pop(i)), on_outcome)
        if not finished:
            time.sleep(0.2)


@contextlib.contextmanager
def run_lock(folder: os.PathLike, wait: bool = False) -> Iterator[bool]:
    """Hold ``folder/lock`` (fcntl.flock; released when the process ends, however it ends):
    yields whether this process got it (always True with ``wait``, once the holder let go)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / "lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# One job of many tasks (DDP over nodes)
# ---------------------------------------------------------------------------------------------


class DistributedTask(Resumable):
    """``fn(*args)`` in every task of one Slurm job, after exporting torch.distributed's
    environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) from submitit's ``JobEnvironment``, as torchrun would have set it."""

    def __call__(self) -> Any:
        from submitit.helpers import TorchDistributedEnvironment

        # every task sees all of its node's GPUs; the trainer picks cuda:LOCAL_RANK
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return self.fn(*self.args)


def submit_distributed(
    fn: Callable[..., Any],
    args: tuple,
    options: LaunchOptions,
    nodes: int,
    tasks_per_node: int,
    log_dir: os.PathLike,
) -> Any:
    """Submit ``fn(*args)`` as one Slurm job of ``nodes`` x ``tasks_per_node`` tasks (one
    process per task; :class:`DistributedTask`); returns the submitit job (``job.results()[0]``
    is rank 0's value).  ``fn`` must resume from its own checkpoint when called again: a
    preempted or timed-out job is requeued with the same call."""
    options.check()
    if options.launcher != "slurm":
        raise ValueError("submit_distributed needs --launcher slurm")
    if nodes < 1 or tasks_per_node < 1:
        raise ValueError(f"--nodes and --tasks-per-node must be at least 1, got {nodes} and {tasks_per_node}")
    import submitit

    executor = submitit.AutoExecutor(folder=str(Path(log_dir) / "%j"), cluster="slurm")
    params = _slurm_parameters(options)
    params.pop("slurm_array_parallelism")
    executor.update_parameters(**params, nodes=nodes, tasks_per_node=tasks_per_node)
    return executor.submit(DistributedTask(fn, *args))
