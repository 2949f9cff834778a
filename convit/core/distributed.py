"""The little that training needs to know about ``torchrun``: who am I, how many are we, and
how to sum a number over all of us.

``torchrun --nproc_per_node=N -m convit.cli train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them everything here degrades to one process (rank 0 of 1) and no
``torch.distributed`` call is made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup",
    "process_group",
    "all_reduce_sum",
    "any_process",
    "broadcast_object",
    "all_gather_object",
    "on_main",
    "barrier",
    "ShardSampler",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the processes torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any).

    Backend: NCCL for CUDA, gloo otherwise (CPU).  Returns rank 0 of 1 when not launched by
    torchrun (or with WORLD_SIZE=1).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, local_world)


def cleanup() -> None:
    """Leave the process group (if one was joined), so the next run in this process starts clean."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[DistInfo]:
    """:func:`init_distributed` for the ``with`` block, :func:`cleanup` after it (also on errors)."""
    try:
        yield init_distributed(device_type)
    finally:
        cleanup()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes in place (a no-op in a single process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any process (one all-reduce under DDP; in a single process,
    ``flag`` itself, without making a tensor: the training loop asks this every step)."""
    if not _active():
        return flag
    return all_reduce_sum(torch.tensor(float(flag), device=device)).item() > 0


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s value of a picklable object, on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's value of a picklable object, in rank order (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on rank 0 only (the files of a run); if it fails, every rank raises.

    Without the broadcast, the other ranks would wait forever in the next collective for a
    rank 0 that has died.
    """
    failure = None
    if not _active() or dist.get_rank() == 0:
        try:
            fn(*args)
        except Exception as e:  # re-raised below, after telling the other ranks
            failure = e
    message = broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise RuntimeError(f"rank 0 failed: {message}")


def barrier() -> None:
    if _active():
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, in order, without padding.

    For evaluation: each image is seen exactly once over all ranks, so summing correct counts
    and losses over ranks gives exact metrics (torch's DistributedSampler pads with
    duplicates to equalise shard sizes, which would count some images twice).
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n = n
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
