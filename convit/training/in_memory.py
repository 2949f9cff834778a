"""Where a run's batches come from: DataLoaders, or its splits held in memory (``--in-memory``).

``in_memory`` off (the default) reads every image through DataLoaders at every epoch
(:func:`~convit.training.batches.data_loaders`).  ``on`` decodes the splits once, at the run's
image size, holds them on the run's device and augments them there a batch at a time
(:func:`~convit.training.batches.held_batches`): the same images, hold-out and per-class subset;
the augmentation `small` (padded random crop and flip) as batched tensor operations, with
other random draws than the DataLoader's; evaluation on the values the DataLoader path gives.
It needs one process and the `small` or `none` augmentation.  ``auto`` holds the splits when it
can and they take at most :data:`SHARE` of the device's free memory
(:func:`convit.nn.memory.available_memory`: CUDA's free memory, or the CPU's available memory
within its cgroup), and uses DataLoaders otherwise; the run's ``config.yaml`` says which.

``fit(on_device=True)`` (the experiments' on-device backend) holds the `small` augmentation's
splits whatever the config says (:func:`~convit.training.batches.device_batches`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..core import distributed
from ..data import DataBundle
from ..data.decoded import augmentation_of
from ..data.device import held_bytes
from ..nn.memory import available_memory
from .batches import RunData, bundle_for, data_loaders, device_batches, held_batches
from .config import TrainConfig

__all__ = ["SHARE", "run_data", "why_not_in_memory"]

#: The share of the device's free memory the decoded splits may take under ``in_memory auto``
#: (the model, its optimizer and activations need the rest).
SHARE = 0.25


def run_data(cfg: TrainConfig, device: torch.device, procs: distributed.DistInfo, on_device: bool) -> RunData:
    """The run's batches: held on the device for ``on_device`` or ``cfg.in_memory`` (``on``,
    or ``auto`` when :func:`why_not_in_memory` finds no reason against), else DataLoaders."""
    if on_device:
        return device_batches(cfg, device, procs.world_size)
    if cfg.in_memory == "off":
        return data_loaders(cfg, device, procs.rank, procs.world_size)
    bundle = bundle_for(cfg)
    why_not = why_not_in_memory(cfg, bundle, device, procs.world_size)
    if why_not is None:
        return held_batches(cfg, bundle, device)
    if cfg.in_memory == "on":
        raise ValueError(f"--in-memory on: {why_not}")
    loaders = data_loaders(cfg, device, procs.rank, procs.world_size, bundle=bundle)
    return dataclasses.replace(loaders, note=f"DataLoaders (--in-memory auto: {why_not})")


def why_not_in_memory(
    cfg: TrainConfig, bundle: DataBundle, device: torch.device, world: int
) -> Optional[str]:
    """Why ``bundle`` is not held in memory for this run (None: it is).  The memory share is a
    reason only under ``auto``: ``on`` is the user's call."""
    if world > 1:
        return (
            "the splits are held in memory by one process; under torchrun use DataLoaders (--in-memory off)"
        )
    if augmentation_of(bundle.train.transform) is None:
        return f"augment {bundle.augment} is applied per image; in memory: small or none"
    if cfg.in_memory == "on":
        return None
    need = held_bytes(bundle)
    room = available_memory(device)
    if room is None:
        return f"the free memory of {device} cannot be read"
    if need > SHARE * room[0]:
        return (
            f"the decoded splits take {need / 2**20:.0f} MB, more than {SHARE:.0%} of the "
            f"{room[0] / 2**20:.0f} MB free ({room[1]})"
        )
    return None
