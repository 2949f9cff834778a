"""One GPU per local job: which of this machine's GPUs each job of ``--launcher local`` sees.

submitit's ``LocalExecutor`` sets ``CUDA_VISIBLE_DEVICES`` for every job it starts, to no GPU
at all unless told otherwise; :mod:`convit.core.launch` tells it, per job, the GPU this module
picks: the visible GPU running the fewest of this launch's jobs (the first of those), so with N
jobs at a time on N GPUs every job has a GPU of its own, and with more jobs than GPUs they share
them evenly (:func:`sharing_note` says so).  The GPUs are those this process may use: the
entries of its own ``CUDA_VISIBLE_DEVICES`` (indices, ``GPU-<uuid>`` or ``MIG-<uuid>``) when set,
else every device CUDA counts.  No GPU: every job sees none, as before.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from typing import Any

__all__ = ["visible_gpus", "pick_gpu", "job_parameters", "sharing_note"]


def _device_count() -> int:
    """CUDA devices this process sees (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def visible_gpus() -> list[str]:
    """The GPUs the local jobs are spread over, as ``CUDA_VISIBLE_DEVICES`` names them: this
    process's own list, up to its first invalid entry and as many as CUDA counts, else
    ``0 .. count - 1``."""
    count = _device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    names = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.startswith("-"):  # CUDA stops at the first invalid entry
            break
        names.append(entry)
    return names[:count]


def pick_gpu(gpus: list[str], busy: Iterable[str]) -> str:
    """The GPU of ``gpus`` running the fewest of ``busy`` (the GPUs of the running jobs); the
    first such."""
    load = {g: 0 for g in gpus}
    for g in busy:
        if g in load:
            load[g] += 1
    return min(gpus, key=lambda g: load[g])


def job_parameters(gpu: str) -> dict[str, Any]:
    """``LocalExecutor.update_parameters`` values that start the next job on ``gpu`` alone: an
    index through submitit's ``visible_gpus``; a UUID or MIG name, which that takes no string
    for, exported by the job's setup line (which runs after submitit set the variable)."""
    if gpu.isdigit():
        return {"gpus_per_node": 1, "visible_gpus": [int(gpu)], "setup": ()}
    return {
        "gpus_per_node": 0,
        "visible_gpus": (),
        "setup": [f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpu)}"],
    }


def sharing_note(jobs: int, gpus: list[str]) -> str:
    """What the launcher says of its jobs and GPUs."""
    text = f"local jobs on {len(gpus)} GPU(s) ({', '.join(gpus)}): each job sees one"
    if jobs > len(gpus):
        per = -(-jobs // len(gpus))
        text += f"; {jobs} jobs at a time is more than the GPUs, so up to {per} share a GPU"
    return text
