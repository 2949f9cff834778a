"""Small image datasets held on the accelerator, augmented there, and a training loop using them.

On a GPU, CIFAR-sized models train at tens of thousands of images per second; a DataLoader
that decodes, crops and flips on CPU workers cannot keep up.  Here the whole split lives on
the device as one uint8 tensor (CIFAR-10's 50k training images are 150 MB); a batch is one
gather that does the random crop (zero padding, like torchvision's ``RandomCrop(padding=p)``)
and the horizontal flip together, followed by the float conversion and normalisation, all
batched tensor ops on the device.  Everything also runs on CPU (that is how it is tested).

:func:`fit_on_device` is :func:`convit.train.fit` for this data path: the same config, the
same splits (it calls :func:`convit.data.build_data`, so the validation hold-out and the
per-class subset are identical), the same model builder and the same per-epoch
:func:`convit.engine.train_one_epoch` / :func:`~convit.engine.evaluate`.  What it does not do:
DDP, resuming (a CIFAR run is about a minute; an interrupted one restarts), EMA, locality
logging and the HTML report.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["DeviceImages", "TrainBatches", "EvalBatches", "device_splits", "fit_on_device"]

#: Datasets whose images must not be mirrored (digits: a flipped 2 is not a 2).
_NO_HFLIP = {"digits"}


class DeviceImages:
    """One split (images + labels) on ``device``, with batched on-device augmentation.

    images: [N, C, H, W] uint8 (0..255) or float in [0, 1]; kept in that dtype on the device.
    pad: zero padding of the random crop (0 disables cropping); hflip: random mirror.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu", pad: int = 4,
                 hflip: bool = True) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        c = images.shape[1]
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.pad, self.hflip = int(pad), bool(hflip)
        # Padded once, so a crop is a plain gather (the padding is zeros: black, as torchvision).
        self._padded = (torch.nn.functional.pad(self.images, (self.pad,) * 4) if self.pad > 0
                        else self.images)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images -> float32 ``(x - mean) / std``."""
        x = x.float()
        if self.images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx``, normalised, not augmented (evaluation)."""
        return self.normalise(self.images[idx]), self.labels[idx]

    def augmented_batch(self, idx: torch.Tensor, generator: torch.Generator
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx`` randomly cropped (offsets uniform in [0, 2*pad]) and flipped (p = 0.5),
        then normalised: one advanced-indexing gather for crop and flip together."""
        b = idx.shape[0]
        _, c, h, w = self.images.shape
        dev = self.device
        oy = torch.randint(0, 2 * self.pad + 1, (b, 1), device=dev, generator=generator)
        ox = torch.randint(0, 2 * self.pad + 1, (b, 1), device=dev, generator=generator)
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        cols = ar_w.expand(b, w)
        if self.hflip:
            flip = torch.rand((b, 1), device=dev, generator=generator) < 0.5
            cols = torch.where(flip, (w - 1) - ar_w, ar_w)
        rows = oy + ar_h  # [b, h]
        cols = ox + cols  # [b, w]
        x = self._padded[idx.view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                         rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
        return self.normalise(x), self.labels[idx]


class TrainBatches:
    """One epoch of shuffled, augmented batches of a :class:`DeviceImages` (an iterable with
    ``len``, as :func:`convit.engine.train_one_epoch` wants).

    The shuffle and the augmentation draw from a generator seeded by ``(seed, epoch)`` (call
    :meth:`set_epoch`), so an epoch is reproducible.  The ragged last batch is dropped when
    there are at least two full ones (the rule of :func:`convit.train.fit`); with ``even``
    (mixup/cutmix need pairs) an odd last batch loses one image.
    """

    def __init__(self, data: DeviceImages, batch_size: int, seed: int = 0, even: bool = False) -> None:
        self.data, self.batch_size, self.seed, self.even = data, int(batch_size), int(seed), even
        self.epoch = 0
        self.generator = torch.Generator(device=data.device)
        n = len(data)
        self.drop_last = n >= 2 * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.generator.manual_seed(self.seed * 100_003 + self.epoch * 1_009 + 17)
        n = len(self.data)
        perm = torch.randperm(n, device=self.data.device, generator=self.generator)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            if self.even and idx.shape[0] % 2:
                idx = idx[:-1]
            if idx.shape[0] == 0:
                continue
            yield self.data.augmented_batch(idx, self.generator)


class EvalBatches:
    """The images of a :class:`DeviceImages` in order, normalised, in chunks of ``batch_size``."""

    def __init__(self, data: DeviceImages, batch_size: int) -> None:
        self.data, self.batch_size = data, int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.data), self.batch_size):
            idx = torch.arange(i, min(i + self.batch_size, len(self.data)), device=self.data.device)
            yield self.data.batch(idx)


def _split_tensors(ds) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stored images and labels of a :class:`convit.data.TensorImageDataset` view."""
    from ..data import TensorImageDataset

    if not isinstance(ds, TensorImageDataset):
        raise ValueError("the on-device data path needs an in-memory dataset (digits, fashion-mnist, "
                         f"cifar10, cifar100), not {type(ds).__name__}")
    idx = torch.from_numpy(ds.indices)
    return ds.images[idx], torch.from_numpy(ds.labels)


def device_splits(dataset: str, device: torch.device | str, data_path: Optional[str] = None,
                  sampling_ratio: float = 1.0, seed: int = 0, val_fraction: float = 0.0,
                  download: bool = False) -> Dict[str, Any]:
    """train / val / test :class:`DeviceImages` with exactly the splits of ``build_data``
    (same hold-out, same per-class subset for the seed), plus the bundle's metadata.

    CIFAR-10 from ``cifar10_jpeg.npz`` is decoded once by ``load_cifar10_npz`` (and cached).
    """
    from ..data import build_data

    b = build_data(dataset, data_path, sampling_ratio=sampling_ratio, seed=seed,
                   val_fraction=val_fraction, augment="none", download=download)
    if b.native_size is None:
        raise ValueError(f"the on-device data path needs a fixed-size dataset, not {dataset}")
    pad = max(1, b.img_size // 8)  # the `small` augmentation of convit.data
    hflip = dataset not in _NO_HFLIP
    train = DeviceImages(*_split_tensors(b.train), b.mean, b.std, device, pad=pad, hflip=hflip)
    val = DeviceImages(*_split_tensors(b.val), b.mean, b.std, device, pad=0) if b.val is not None else None
    test = DeviceImages(*_split_tensors(b.test), b.mean, b.std, device, pad=0)
    return {"train": train, "val": val, "test": test, "bundle": b}


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

def fit_on_device(cfg) -> Dict[str, Any]:
    """Train as ``cfg`` (a :class:`convit.config.TrainConfig`) says, with the data on the device.

    Writes ``config.yaml``, ``log.jsonl`` (per epoch: train loss, lr, images/s, val top-1 every
    ``eval_every`` epochs, test top-1 of the final model at the end) and ``model.safetensors``
    into ``cfg.output``; returns a summary with the keys of :func:`convit.train.fit`'s.
    """
    from ..checkpoint import save_model
    from ..config import save_config
    from ..engine import evaluate, train_one_epoch
    from ..train import build_model, build_recipe, resolve_amp, resolve_device, seed_everything

    cfg = dataclasses.replace(cfg).validate()
    t_start = time.perf_counter()
    if cfg.output is None:
        raise ValueError("fit_on_device needs cfg.output (the run folder)")
    if cfg.img_size is not None:
        raise ValueError("the on-device data path trains at the native image size; leave img_size unset")
    device = resolve_device(cfg.device)
    if cfg.threads is not None or device.type == "cpu":
        torch.set_num_threads(cfg.threads or 1)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    splits = device_splits(cfg.dataset, device, cfg.data_path, cfg.sampling_ratio, cfg.seed,
                           cfg.val_fraction, cfg.download)
    bundle = splits["bundle"]
    num_classes = cfg.num_classes or bundle.num_classes
    mixing = (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0
    train = TrainBatches(splits["train"], cfg.batch_size, seed=cfg.seed, even=mixing)
    eval_bs = 2 * cfg.batch_size
    val = EvalBatches(splits["val"], eval_bs) if splits["val"] is not None and len(splits["val"]) else None
    test = EvalBatches(splits["test"], eval_bs)

    model_without_compile = build_model(cfg, num_classes, bundle.in_chans, bundle.img_size, lambda s: None)
    model_without_compile.to(device)
    model: nn.Module = torch.compile(model_without_compile) if cfg.compile else model_without_compile
    epochs, warmup = cfg.run_epochs, cfg.run_warmup_epochs
    lr = cfg.resolved_lr(1)
    optimizer, scheduler, loss_fn, mixup_fn = build_recipe(cfg, model_without_compile, epochs, warmup,
                                                      len(train), lr, num_classes)

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    log_path.unlink(missing_ok=True)
    save_config(cfg, out / "config.yaml", comments={"effective lr": lr, "epochs run": epochs,
                                                    "data path": "on device (convit.experiments.gpu_data)",
                                                    "device": str(device)})
    print(f"{cfg.model} on {cfg.dataset} (on-device data): {len(splits['train'])} train / "
          f"{len(splits['val']) if splits['val'] is not None else 0} val / {len(splits['test'])} test; "
          f"{epochs} epochs x {len(train)} steps of {cfg.batch_size} (lr {lr:.3g}) on {device}", flush=True)

    best = {"val_top1": -1.0, "epoch": 0}
    entry: Dict[str, Any] = {}
    for epoch in range(1, epochs + 1):
        t_epoch = time.perf_counter()
        train.set_epoch(epoch)
        stats = train_one_epoch(model, train, optimizer, loss_fn, device, epoch, scheduler, mixup_fn=mixup_fn,
                                amp_dtype=amp_dtype, clip_grad=cfg.clip_grad, progress=False)
        entry = {"epoch": epoch, "train_loss": stats["train_loss"], "lr": stats["lr"],
                 "images_per_s": stats["images_per_s"]}
        is_last = epoch == epochs
        if epoch % cfg.eval_every == 0 or is_last:
            if val is not None:
                entry.update({f"val_{k}": v for k, v in evaluate(model_without_compile, val, device, amp_dtype).items()
                              if k != "n"})
                if entry["val_top1"] > best["val_top1"]:
                    best = {"val_top1": entry["val_top1"], "epoch": epoch}
            if is_last:  # the final model only: nothing is ever chosen on test
                entry.update({f"test_{k}": v for k, v in evaluate(model_without_compile, test, device,
                                                                  amp_dtype).items() if k != "n"})
        entry["epoch_time_s"] = time.perf_counter() - t_epoch
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        print(f"epoch {epoch}/{epochs}  loss {entry['train_loss']:.4f}  "
              + (f"val {entry['val_top1']:.2f}%  " if "val_top1" in entry else "")
              + (f"test {entry['test_top1']:.2f}%  " if "test_top1" in entry else "")
              + f"{entry['images_per_s']:.0f} img/s", flush=True)

    extra = {"class_names": list(bundle.class_names), "model_name": cfg.model, "epoch": epochs,
             "data": {"dataset": cfg.dataset, "mean": list(bundle.mean), "std": list(bundle.std),
                      "img_size": bundle.img_size, "in_chans": bundle.in_chans,
                      "native_size": bundle.native_size},
             **{k: entry[k] for k in ("test_top1", "val_top1") if k in entry}}
    save_model(model_without_compile, out / "model.safetensors", extra=extra)
    return {"output": str(out), "epochs": epochs, "time_s": time.perf_counter() - t_start,
            "test_top1": entry.get("test_top1"), "test_top5": entry.get("test_top5"),
            "test_loss": entry.get("test_loss"), "val_top1": entry.get("val_top1"),
            "best_val_top1": best["val_top1"] if best["epoch"] else None, "best_epoch": best["epoch"] or None,
            "lr": lr, "world_size": 1, "train_images": len(splits["train"]),
            "checkpoint": str(out / "model.safetensors"), "log": str(log_path),
            "config": str(out / "config.yaml")}
