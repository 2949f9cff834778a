"""Where a run's batches come from: :class:`RunData`, made by one of two sources.

* :func:`data_loaders`: DataLoaders (or their in-memory equivalent,
  :class:`~convit.data.batched.SampledBatches`) over :func:`convit.data.build_data`'s splits:
  any dataset, sharded over the processes under torchrun;
* :func:`held_batches`: batches cut, cropped and flipped on the accelerator from whole splits
  decoded once and held there (:mod:`convit.data.device`: CIFAR-10 at tens of thousands of
  images/s on one GPU, where DataLoader workers cannot keep up); :func:`device_batches` holds
  the `small` augmentation's splits this way.  Same splits, one process.  When a run uses it
  is :mod:`convit.training.in_memory`'s to say.

The training loop (:func:`convit.training.fit.fit`) is the same for both: per epoch it calls
``train.set_epoch(epoch)`` and iterates, so an epoch draws the same batches whether or not the
run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..core import distributed
from ..core.runtime import cpu_count
from ..data import (
    DataBundle,
    ImageFileDataset,
    build_data,
    collate_skipping,
    collate_skipping_even,
    set_max_image_pixels,
)
from ..data.batched import SampledBatches
from ..data.device import DeviceImages, EvalBatches, TrainBatches, device_bundle, hold_splits
from .config import TrainConfig

__all__ = ["RunData", "bundle_for", "data_loaders", "device_batches", "held_batches"]

#: Images of the held-out split a locality hook measures (the probe).
PROBE_IMAGES = 64


@dataclass
class RunData:
    """What the loop trains and evaluates on, however the batches are made."""

    bundle: DataBundle  # the dataset's splits, class names, statistics and sizes
    train: Any  # one epoch of (images, targets) batches per iteration; len() and set_epoch(epoch)
    val: Optional[Iterable]  # None without a validation split
    test: Iterable
    probe: Callable[[], torch.Tensor]  # the first 64 held-out (validation, else test) images
    skipped: Callable[[], dict[str, str]] = dict  # unreadable files left out so far: path -> reason
    in_memory: bool = False  # the splits are held in memory on the device (held_batches)
    note: Optional[str] = None  # why they are not, when the config asked for it if possible


def data_loaders(
    cfg: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    bundle: Optional[DataBundle] = None,
) -> RunData:
    """DataLoaders over :func:`convit.data.build_data`'s splits (``bundle``: those splits,
    already built by :func:`bundle_for`).  Training is sharded over the processes
    (DistributedSampler, or DeiT's RepeatAugSampler); evaluation by
    :class:`~convit.core.distributed.ShardSampler`, which shows every image exactly once."""
    bundle = bundle if bundle is not None else bundle_for(cfg)
    sampler = _train_sampler(cfg, bundle.train, rank, world)
    drop_last = len(sampler) >= 2 * cfg.batch_size  # DeiT drops the ragged last batch
    collate = collate_skipping_even if _mixing(cfg) else collate_skipping
    train = _loader(bundle.train, cfg.batch_size, sampler, cfg, device, drop_last, collate=collate)
    has_val = bundle.val is not None and len(bundle.val) > 0
    val = _eval_loader(bundle.val, cfg, device, rank, world) if has_val else None
    test = _eval_loader(bundle.test, cfg, device, rank, world)
    held_out = bundle.val if has_val else bundle.test
    splits = [ds for ds in (bundle.train, bundle.val, bundle.test) if isinstance(ds, ImageFileDataset)]
    sync = device if world > 1 and splits else None
    epochs = _Epochs(train, sampler, cfg.seed, rank, cfg.repeated_aug, sync)
    return RunData(
        bundle,
        epochs,
        val,
        test,
        probe=lambda: collate_skipping([held_out[i] for i in range(min(PROBE_IMAGES, len(held_out)))])[0],
        skipped=lambda: {k: v for ds in splits for k, v in ds.skipped().items()},
    )


def bundle_for(cfg: TrainConfig) -> DataBundle:
    """The dataset's splits as the config asks for them; an empty training split is an error."""
    set_max_image_pixels(cfg.max_image_pixels)
    bundle = build_data(
        cfg.dataset,
        cfg.data_path,
        img_size=cfg.img_size,
        sampling_ratio=cfg.sampling_ratio,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        augment=cfg.augment,
        download=cfg.download,
        strict=cfg.strict_images,
    )
    if len(bundle.train) == 0:
        raise ValueError(f"the training set of {cfg.dataset} is empty")
    return bundle


def _train_sampler(cfg: TrainConfig, train: Dataset, rank: int, world: int) -> Sampler:
    """This process's shard of the training split: DeiT's RepeatAugSampler with
    ``--repeated-aug``, else a shuffling DistributedSampler seeded by the run."""
    if cfg.repeated_aug:
        return RepeatAugSampler(train, num_replicas=world, rank=rank, shuffle=True)
    return DistributedSampler(
        train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False
    )


def _eval_loader(split: Dataset, cfg: TrainConfig, device: torch.device, rank: int, world: int) -> Iterable:
    """Batches of twice the training size (no gradients to hold), every image exactly once over
    the processes."""
    return _loader(split, 2 * cfg.batch_size, distributed.ShardSampler(len(split), rank, world), cfg, device)


def _mixing(cfg: TrainConfig) -> bool:
    """Whether timm's mixup / cutmix runs, which pairs images: training batches must be even."""
    return (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0


def _loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler,
    cfg: TrainConfig,
    device: torch.device,
    drop_last: bool = False,
    collate: Callable = collate_skipping,
) -> Iterable:
    # More workers than CPUs only adds process switching (the presets ask for DeiT's 8).
    workers = min(cfg.num_workers, cpu_count())
    if workers == 0 and getattr(dataset, "batchable", False):  # the same batches, without per-image work
        return SampledBatches(dataset, batch_size, sampler, drop_last, even=collate is collate_skipping_even)
    # Its own generator seeds the worker processes (reseeded per epoch by _Epochs), leaving
    # the global RNG to the model.  The collate leaves unreadable files out (never replaced).
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
        collate_fn=collate,
    )


class _Epochs:
    """A training DataLoader (or :class:`~convit.data.batched.SampledBatches`) whose shuffle and
    worker seeds are set per epoch (as :class:`~convit.data.device.TrainBatches` does), so an
    epoch, resumed or not, draws the same batches.  A batch whose every image was unreadable is
    left out; with ``sync`` (the device of DDP's processes, when their files may be unreadable)
    a step is left out by every process when any one's batch is empty, as they must all take
    the same steps."""

    def __init__(
        self,
        loader: Iterable,
        sampler: Any,
        seed: int,
        rank: int,
        repeated_aug: bool,
        sync: Optional[torch.device] = None,
    ) -> None:
        self.loader = loader
        self.sampler = sampler
        self.seed = seed
        self.rank = rank
        self.repeated_aug = repeated_aug
        self.sync = sync

    def set_epoch(self, epoch: int) -> None:
        # RepeatAugSampler shuffles with the epoch alone: the run's seed is folded into it.
        self.sampler.set_epoch(self.seed * 100_003 + epoch if self.repeated_aug else epoch)
        if isinstance(self.loader, DataLoader):
            self.loader.generator.manual_seed(self.seed * 100_003 + epoch * 1_009 + self.rank)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for images, targets in self.loader:
            empty = len(targets) == 0
            if self.sync is not None:
                empty = distributed.all_reduce_sum(torch.tensor(float(empty), device=self.sync)).item() > 0
            if not empty:
                yield images, targets


def device_batches(cfg: TrainConfig, device: torch.device, world: int = 1) -> RunData:
    """Batches made on ``device`` from whole splits held there (:mod:`convit.data.device`): the
    splits of ``build_data`` at ``cfg.img_size`` (default: native), the `small` augmentation
    (random crop with zero padding, flip), for one process.  (The precision its matmuls run in
    is fit's to choose: :func:`convit.training.fit.fit`.)"""
    if world > 1:
        raise ValueError(
            "the on-device data path runs in one process; use the DataLoader path under torchrun"
        )
    bundle = device_bundle(
        cfg.dataset,
        cfg.data_path,
        cfg.sampling_ratio,
        cfg.seed,
        cfg.val_fraction,
        cfg.download,
        cfg.img_size,
    )
    return held_batches(cfg, bundle, device)


def held_batches(cfg: TrainConfig, bundle: DataBundle, device: torch.device) -> RunData:
    """``bundle``'s splits decoded once and held on ``device`` (:func:`convit.data.device.hold_splits`),
    batched there: shuffled and augmented training batches, evaluation batches twice as large."""
    held = hold_splits(bundle, device, strict=cfg.strict_images)
    val: Optional[DeviceImages] = held.val if held.val is not None and len(held.val) else None
    held_out: DeviceImages = val if val is not None else held.test
    return RunData(
        bundle,
        TrainBatches(held.train, cfg.batch_size, seed=cfg.seed, even=_mixing(cfg)),
        EvalBatches(val, 2 * cfg.batch_size) if val is not None else None,
        EvalBatches(held.test, 2 * cfg.batch_size),
        probe=lambda: held_out.batch(torch.arange(min(PROBE_IMAGES, len(held_out)), device=held_out.device))[
            0
        ],
        skipped=lambda: dict(held.skipped),
        in_memory=True,
    )
