"""``fit(cfg)``: a whole training run, from a :class:`~convit.config.TrainConfig` to a run folder.

The run folder (``cfg.output``) holds::

    config.yaml          the effective config (pass it back with --config to repeat the run)
    log.jsonl            one JSON object per epoch: epoch, train_loss, lr, val_top1/top5/loss,
                         test_top1/top5/loss (when evaluated), images_per_s, epoch_time_s and
                         locality (per-layer nonlocality and gates, see convit.analysis)
    last.pt              the full training state after the last finished epoch (model,
                         optimizer, scheduler, scaler, EMA, RNG states, config); written
                         atomically, so a crash or a full disk leaves the previous one intact
    best.safetensors     the weights with the best validation top-1 (never chosen on test)
    model.safetensors    the final weights
    figures/, report.html

The loop reads top to bottom: set up processes and device, build data and model, optimizer
and schedule, restore a checkpoint if resuming, then per epoch train, evaluate, log, save.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed as D
from .checkpoint import read_checkpoint, save_model
from .fileio import CheckpointSaveError, atomic_save, read_jsonl
from .config import TrainConfig, save_config
from .engine import NonFiniteLossError, evaluate, train_one_epoch
from .model import ConViT, count_params

__all__ = ["fit", "CheckpointSaveError", "find_last_checkpoint", "load_training_state",
           "config_for_resume", "atomic_save", "build_model"]

STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Small helpers: device, precision, threads, seeds, RNG state
# ---------------------------------------------------------------------------------------------

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's GPU under torchrun) if available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for but MPS is not available")
    return device


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype: ``auto`` is bf16 on CUDA and full precision elsewhere."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """This process's random generators, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------

def find_last_checkpoint(resume: str, output: Optional[str] = None) -> Path:
    """The ``last.pt`` meant by ``--resume``: a file, a run folder, or ``auto`` (= ``output``)."""
    if resume == "auto":
        if not output:
            raise ValueError("--resume without a path needs --output (the run folder to continue)")
        resume = output
    p = Path(resume)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {p}")
    return p


def load_training_state(path: Path) -> Dict[str, Any]:
    """Read a ``last.pt`` written by :func:`fit` (tensors and plain values only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read training checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != "convit-train":
        raise ValueError(f"{path} is not a training checkpoint written by `convit train` "
                         "(to start from model weights, use --finetune FILE)")
    return state


def config_for_resume(resume: str, overrides: Dict[str, Any]) -> TrainConfig:
    """The config of the run to continue, with ``overrides`` (flags given now) on top.

    Overriding ``epochs`` extends or shortens the schedule; overriding the model or data
    makes the checkpoint fail to load, with a message naming the mismatch.
    """
    path = find_last_checkpoint(resume, overrides.get("output"))
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path} is not a training checkpoint written by `convit train`")
    values = {**state["config"], "output": str(path.parent)}
    values.update({k: v for k, v in overrides.items() if k != "resume"})
    values["resume"] = str(path)
    return TrainConfig(**values).validate()


def _holds_run(folder: Path) -> bool:
    return any((folder / n).exists() for n in ("last.pt", "log.jsonl", "model.safetensors"))


def resolve_output(cfg: TrainConfig) -> Path:
    """The run folder: ``--output``, the resumed run's folder, or ``runs/<model>_<dataset>``
    (with ``-2``, ``-3``, ... when that already holds a run)."""
    if cfg.resume and cfg.output is None:
        return find_last_checkpoint(cfg.resume).parent
    if cfg.output is not None:
        out = Path(cfg.output)
        if not cfg.resume and not cfg.overwrite and _holds_run(out):
            raise ValueError(f"output folder {out} already holds a run; pass --resume to continue it, "
                             f"--overwrite to replace it, or another --output")
        return out
    base = Path("runs") / f"{cfg.model}_{cfg.dataset}"
    out, i = base, 1
    while _holds_run(out):
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


# ---------------------------------------------------------------------------------------------
# Model and data
# ---------------------------------------------------------------------------------------------

def build_model(cfg: TrainConfig, num_classes: int, in_chans: int, img_size: int,
                say: Callable[[str], None] = print) -> ConViT:
    """The zoo model ``cfg.model`` sized for the data, optionally starting from weights.

    With ``--finetune FILE`` (or ``--pretrained``) the weights are loaded with the file's own
    head, which is then replaced by a fresh ``num_classes`` head if the sizes differ.
    """
    from .zoo import create_model

    overrides = dict(cfg.model_kwargs)
    overrides.setdefault("drop_path_rate", cfg.drop_path)
    overrides.setdefault("in_chans", in_chans)
    overrides.setdefault("img_size", img_size)
    if cfg.finetune:
        sd, meta = read_checkpoint(cfg.finetune)
        _check_same_architecture(cfg, meta)
        head = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        model = create_model(cfg.model, checkpoint_path=cfg.finetune, **{**overrides, "num_classes": head})
        source = cfg.finetune
    elif cfg.pretrained:
        overrides.pop("num_classes", None)
        model = create_model(cfg.model, pretrained=True, **overrides)
        source = f"the published {cfg.model} weights"
    else:
        return create_model(cfg.model, **{**overrides, "num_classes": num_classes})
    if model.num_classes != num_classes:
        say(f"fine-tuning from {source}: its {model.num_classes}-class head is replaced by a new "
            f"{num_classes}-class head")
        model.reset_classifier(num_classes)
    return model


_ARCH_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "local_up_to_layer",
              "use_pos_embed")


def _check_same_architecture(cfg: TrainConfig, meta: dict) -> None:
    """Our files carry their architecture, which ``create_model`` would silently prefer to the
    zoo name: fine-tuning a file as another ``--model`` is an error that names the differences."""
    from .checkpoint import CheckpointError, config_from_metadata, read_metadata_json
    from .model import ConViTConfig
    from .zoo import model_spec

    stored = config_from_metadata(meta)
    if not stored:
        return  # foreign files: load_into reports any mismatch key by key
    wanted = ConViTConfig.from_dict({**model_spec(cfg.model).config,
                                     **{k: v for k, v in cfg.model_kwargs.items() if k in _ARCH_KEYS}}).to_dict()
    diff = [f"{k} {stored[k]} (file) vs {wanted[k]} ({cfg.model})" for k in _ARCH_KEYS
            if k in stored and stored[k] != wanted[k]]
    if diff:
        trained_as = read_metadata_json(meta, "model_name")
        raise CheckpointError(
            f"{cfg.finetune} does not match the model {cfg.model}: {'; '.join(diff)}. "
            + (f"It was trained as {trained_as}: pass --model {trained_as}" if trained_as else
               "Pass the --model (and --model-kwargs) it was trained with")
            + " (a different head size is fine: it is replaced)")


def _loader(dataset, batch_size: int, sampler, cfg: TrainConfig, device: torch.device,
            drop_last: bool = False, generator: Optional[torch.Generator] = None) -> DataLoader:
    # More workers than CPUs only adds process switching (the presets ask for DeiT's 8).
    workers = min(cfg.num_workers, _cpu_count())
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0, generator=generator)


def _fixed_batch(dataset, n: int = 64) -> torch.Tensor:
    """The first ``n`` images of an (eval-transformed) dataset: the locality probe batch."""
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def build_recipe(cfg: TrainConfig, model: nn.Module, epochs: int, warmup: float, steps: int, lr: float,
                 num_classes: int):
    """The DeiT recipe's optimizer, per-step schedule, loss and mixup, from timm's factories.

    Weight decay skips 1-D parameters and ``model.no_weight_decay()`` (pos_embed, cls_token,
    gates).  Returns (optimizer, scheduler, loss_fn, mixup_fn or None).
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, eps=cfg.opt_eps)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs, warmup_epochs=warmup,
                                       warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
                                       updates_per_epoch=steps)
    mixup_fn = None
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                         switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                         num_classes=num_classes)
        loss_fn: nn.Module = SoftTargetCrossEntropy()  # smoothing is folded into the mixed targets
    elif cfg.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()
    return optimizer, scheduler, loss_fn, mixup_fn


def fit(cfg: TrainConfig) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset`` as ``cfg`` says; returns the run's summary.

    Runs in every process under torchrun (DDP); only rank 0 writes files and prints.  The
    summary holds the final test metrics, the final and best validation top-1, the time and
    the paths written.
    """
    cfg = dataclasses.replace(cfg).validate()
    t_start = time.perf_counter()

    # -- processes, device, precision, threads, seeds -------------------------------------
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = D.init_distributed(device.type)
    main = dist_info.is_main
    say: Callable[[str], None] = (lambda s: print(s, flush=True)) if main else (lambda s: None)
    try:
        return _fit(cfg, device, dist_info, say, t_start)
    finally:
        D.cleanup()


def _fit(cfg: TrainConfig, device: torch.device, dist_info: D.DistInfo, say: Callable[[str], None],
         t_start: float) -> Dict[str, Any]:
    main, rank, world = dist_info.is_main, dist_info.rank, dist_info.world_size
    if cfg.threads is not None or device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, _cpu_count() // dist_info.local_world_size))
    amp_dtype = resolve_amp(cfg.amp, device)
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    seed_everything(cfg.seed + rank)

    state = load_training_state(find_last_checkpoint(cfg.resume, cfg.output)) if cfg.resume else None
    # Every rank resolves the same folder (nothing is written before DDP's first collective).
    out = resolve_output(cfg)
    epochs, warmup = cfg.run_epochs, cfg.run_warmup_epochs
    lr = cfg.resolved_lr(world)

    # -- data --------------------------------------------------------------------------------
    from .data import build_data

    data = build_data(cfg.dataset, cfg.data_path, img_size=cfg.img_size, sampling_ratio=cfg.sampling_ratio,
                      seed=cfg.seed, val_fraction=cfg.val_fraction, augment=cfg.augment,
                      download=cfg.download)
    if len(data.train) == 0:
        raise ValueError(f"the training set of {cfg.dataset} is empty")
    if cfg.repeated_aug:
        from timm.data.distributed_sampler import RepeatAugSampler

        train_sampler = RepeatAugSampler(data.train, num_replicas=world, rank=rank, shuffle=True)
    else:
        train_sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True,
                                           seed=cfg.seed, drop_last=False)
    loader_gen = torch.Generator()  # seeds worker processes; reseeded every epoch
    drop_last = len(train_sampler) >= 2 * cfg.batch_size  # DeiT drops the ragged last batch
    train_loader = _loader(data.train, cfg.batch_size, train_sampler, cfg, device, drop_last, loader_gen)
    eval_bs = cfg.batch_size * 2

    def eval_loader(ds):
        return _loader(ds, eval_bs, D.ShardSampler(len(ds), rank, world), cfg, device,
                       generator=torch.Generator().manual_seed(0))

    val_loader = eval_loader(data.val) if data.val is not None and len(data.val) > 0 else None
    test_loader = eval_loader(data.test)
    probe = _fixed_batch(data.val if val_loader is not None else data.test) if cfg.locality and main else None
    steps = len(train_loader)

    # -- model, EMA, DDP, compile ------------------------------------------------------------
    num_classes = cfg.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise ValueError(f"--num-classes {num_classes} is smaller than the {data.num_classes} classes of "
                         f"{cfg.dataset}")
    model_without_ddp = build_model(cfg, num_classes, data.in_chans, data.img_size, say).to(device)
    if cfg.channels_last:
        model_without_ddp.to(memory_format=torch.channels_last)
    ema = None
    if cfg.model_ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model_without_ddp, decay=cfg.model_ema_decay)
    model: nn.Module = model_without_ddp
    if dist_info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    # -- optimizer, schedule, loss, mixup ----------------------------------------------------
    optimizer, lr_scheduler, loss_fn, mixup_fn = build_recipe(cfg, model_without_ddp, epochs, warmup, steps, lr,
                                                              num_classes)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    # -- resume ------------------------------------------------------------------------------
    start_epoch, best = 0, {"val_top1": -1.0, "epoch": 0}
    if state is not None:
        model_without_ddp.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best = int(state["epoch"]), dict(state["best"])
        # The schedule is a function of the update count; rebuilt from the config above (so
        # --epochs may extend a run) and moved to where the run stopped.
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=start_epoch * steps)
        say(f"resuming {out} from epoch {start_epoch} ({cfg.resume})")
        if start_epoch >= epochs:
            say(f"the run already trained {start_epoch} epochs (>= the {epochs} asked for): nothing to "
                f"train, config.yaml left as it was; pass --epochs N with N > {start_epoch} to train longer")
    # A resumed run that trains no further keeps its config.yaml: it still describes the run.
    keep_config = state is not None and start_epoch >= epochs

    # -- run folder --------------------------------------------------------------------------
    log_path, last_path = out / "log.jsonl", out / "last.pt"
    writer = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            for stale in ("log.jsonl", "last.pt", "best.safetensors", "model.safetensors", "ema.safetensors",
                          "report.html"):  # --overwrite: nothing of the old run may pass for this one
                (out / stale).unlink(missing_ok=True)
        else:
            _truncate_log(log_path, start_epoch)
        if not keep_config:
            save_config(cfg, out / "config.yaml", comments={
                "effective lr": lr, "epochs run": epochs, "warmup epochs": warmup,
                "global batch": cfg.batch_size * world, "processes": world, "device": str(device)})
        if cfg.tensorboard:
            writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    meta_extra = {"class_names": list(data.class_names), "model_name": cfg.model,
                  "data": {"dataset": cfg.dataset, "mean": list(data.mean), "std": list(data.std),
                           "img_size": data.img_size, "in_chans": data.in_chans,
                           "native_size": data.native_size}}
    n_params = count_params(model_without_ddp)
    size = f"{n_params / 1e6:.2f}M" if n_params >= 1e6 else f"{n_params / 1e3:.1f}k"
    precision = f", {str(amp_dtype).replace('torch.', '')} autocast" if amp_dtype else ""
    say(f"{cfg.model} ({size} params) on {cfg.dataset}: {len(data.train)} train / "
        f"{len(data.val) if data.val is not None else 0} val / {len(data.test)} test images; "
        f"{epochs} epochs x {steps} steps of {cfg.batch_size * world} (lr {lr:.3g}); "
        f"{world} process(es) on {device}{precision}; run folder {out}")

    # -- epochs ------------------------------------------------------------------------------
    if state is not None:  # continue exactly where the interrupted run was
        rngs = state.get("rng") or []
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:
            say(f"note: the checkpoint was written by {len(rngs)} process(es), this run has {world}: "
                "random streams are re-seeded, so the run will not be bit-identical to an uninterrupted one")
            seed_everything(cfg.seed + rank + 1000 * start_epoch)
    entry: Dict[str, Any] = {}
    for epoch in range(start_epoch + 1, epochs + 1):
        t_epoch = time.perf_counter()
        train_sampler.set_epoch(epoch if not cfg.repeated_aug else cfg.seed * 100_003 + epoch)
        loader_gen.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + rank)
        kept = (f"the last good checkpoint is {last_path} (epoch {epoch - 1}); resume from it with a lower "
                f"--lr or with --clip-grad" if epoch > 1 else "no checkpoint was written (it failed in epoch 1); "
                "try a lower --lr or --clip-grad")
        try:
            stats = train_one_epoch(model, train_loader, optimizer, loss_fn, device, epoch, lr_scheduler,
                                    mixup_fn=mixup_fn, amp_dtype=amp_dtype, scaler=scaler,
                                    clip_grad=cfg.clip_grad, ema=ema, channels_last=cfg.channels_last,
                                    progress=main, log_every=cfg.log_every, print_fn=say)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(e.epoch, e.step, e.steps, e.loss, e.lr, note=kept) from None
        if not _params_finite(model_without_ddp):  # a finite loss whose update overflowed
            raise NonFiniteLossError(epoch, steps, steps, float("nan"), stats["lr"], note=kept,
                                     what="the weights became NaN/inf")
        entry = {"epoch": epoch, "train_loss": stats["train_loss"], "lr": stats["lr"],
                 "images_per_s": stats["images_per_s"]}

        is_last = epoch == epochs
        if epoch % cfg.eval_every == 0 or is_last:
            if val_loader is not None:
                entry.update({f"val_{k}": v for k, v in evaluate(model_without_ddp, val_loader, device, amp_dtype,
                                                                 cfg.channels_last).items() if k != "n"})
                if ema is not None:
                    entry.update({f"ema_val_{k}": v for k, v in evaluate(ema.module, val_loader, device, amp_dtype,
                                                                         cfg.channels_last).items() if k != "n"})
            if val_loader is None or is_last:
                entry.update({f"test_{k}": v for k, v in evaluate(model_without_ddp, test_loader, device,
                                                                  amp_dtype, cfg.channels_last).items() if k != "n"})
            if probe is not None:
                from .analysis.locality import locality_summary

                t_loc = time.perf_counter()
                entry["locality"] = locality_summary(model_without_ddp, probe)
                entry["locality_time_s"] = time.perf_counter() - t_loc
        entry["epoch_time_s"] = time.perf_counter() - t_epoch

        improved = "val_top1" in entry and entry["val_top1"] > best["val_top1"]
        if improved:
            best = {"val_top1": entry["val_top1"], "epoch": epoch}
        states = _gather_rng_states()

        def log_and_save() -> None:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            if writer is not None:
                for k, v in entry.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch)
            say(_epoch_line(entry, epochs, best))
            if improved:
                save_model(model_without_ddp, out / "best.safetensors",
                           extra={**meta_extra, "epoch": epoch, "val_top1": entry["val_top1"]})
            atomic_save(lambda p: torch.save(_training_state(cfg, model_without_ddp, optimizer, lr_scheduler,
                                                             scaler, ema, epoch, best, states), p),
                        last_path, "training checkpoint")

        _on_main(log_and_save, main)

    # -- final model, report, summary --------------------------------------------------------
    if not entry:  # resumed a finished run: report what it logged
        entry = read_jsonl(log_path)[-1] if log_path.is_file() else {}
    summary: Dict[str, Any] = {
        "output": str(out), "epochs": start_epoch if keep_config else epochs, "time_s": time.perf_counter() - t_start,
        "test_top1": entry.get("test_top1"), "test_top5": entry.get("test_top5"),
        "test_loss": entry.get("test_loss"), "val_top1": entry.get("val_top1"),
        "best_val_top1": best["val_top1"] if best["epoch"] else None, "best_epoch": best["epoch"] or None,
        "lr": lr, "world_size": world, "train_images": len(data.train),
        "checkpoint": str(out / "model.safetensors"), "best": str(out / "best.safetensors"),
        "last": str(last_path), "log": str(log_path), "config": str(out / "config.yaml"),
        "figures": str(out / "figures"), "report": str(out / "report.html") if cfg.report else None,
    }
    if main:
        final_extra = {**meta_extra, "epoch": entry.get("epoch", start_epoch),
                       **{k: entry[k] for k in ("test_top1", "val_top1") if k in entry}}
        save_model(model_without_ddp, out / "model.safetensors", extra=final_extra)
        if ema is not None:
            save_model(ema.module, out / "ema.safetensors", extra=final_extra)
        if val_loader is None:
            save_model(model_without_ddp, out / "best.safetensors", extra=final_extra)
        if writer is not None:
            writer.close()
        if cfg.report:
            from .analysis.report import write_run_report

            write_run_report(out)
        summary["time_s"] = time.perf_counter() - t_start
        say(_summary_text(summary, val_loader is not None))
    return summary


# ---------------------------------------------------------------------------------------------
# Pieces of the loop kept out of the way
# ---------------------------------------------------------------------------------------------

def _on_main(fn: Callable[[], None], main: bool) -> None:
    """Run ``fn`` on rank 0; if it fails, every rank raises (instead of the others waiting forever)."""
    failure: Optional[BaseException] = None
    if main:
        try:
            fn()
        except Exception as e:  # re-raised below, after telling the other ranks
            failure = e
    message = D.broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if message is not None:
        raise RuntimeError(f"rank 0 failed: {message}")


def _gather_rng_states() -> List[Dict[str, Any]]:
    """Every process's RNG state (rank order), so a DDP run resumes exactly as well."""
    mine = rng_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [mine]
    states: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, mine)
    return states


def _training_state(cfg: TrainConfig, model: nn.Module, optimizer, lr_scheduler, scaler, ema, epoch: int,
                    best: Dict[str, Any], rngs: List[Dict[str, Any]]) -> Dict[str, Any]:
    sched = lr_scheduler.state_dict() if lr_scheduler is not None else None
    return {"format": "convit-train", "version": STATE_VERSION, "epoch": epoch, "config": cfg.to_dict(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": _plain(sched), "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": ema.state_dict() if ema is not None else None, "best": best, "rng": rngs}


def _plain(obj: Any) -> Any:
    """Drop values ``torch.load(weights_only=True)`` would refuse (scheduler internals)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if isinstance(k, str)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    return repr(obj)


def _truncate_log(path: Path, epoch: int) -> None:
    """Keep the log entries of epochs up to ``epoch`` (a crash may have logged one more)."""
    if not path.is_file():
        return
    kept = [e for e in read_jsonl(path) if e.get("epoch", 0) <= epoch]
    atomic_save(lambda p: p.write_text("".join(json.dumps(e) + "\n" for e in kept)), path, "log")


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _epoch_line(e: Dict[str, Any], epochs: int, best: Dict[str, Any]) -> str:
    parts = [f"epoch {e['epoch']}/{epochs}", f"loss {e['train_loss']:.4f}", f"lr {e['lr']:.2e}"]
    if "val_top1" in e:
        parts.append(f"val {e['val_top1']:.2f}% (best {best['val_top1']:.2f}% @ {best['epoch']})")
    if "test_top1" in e:
        parts.append(f"test {e['test_top1']:.2f}%")
    parts += [f"{e['images_per_s']:.0f} img/s", f"{e['epoch_time_s']:.1f} s"]
    return "  ".join(parts)


def _summary_text(s: Dict[str, Any], has_val: bool) -> str:
    lines = [f"done in {s['time_s']:.1f} s: {s['epochs']} epoch(s) on {s['train_images']} training images",
             f"  test top-1 {_pct(s['test_top1'])} (final model)"
             + (f"   val top-1 {_pct(s['val_top1'])} (final), best {_pct(s['best_val_top1'])} "
                f"at epoch {s['best_epoch']}" if has_val else
                "   (no validation split: best.safetensors is the final model)")]
    lines += [f"  checkpoint: {s['checkpoint']}   (best by val: {s['best']}; resume: {s['last']})",
              f"  log:        {s['log']}"]
    if s.get("report"):
        lines.append(f"  figures:    {s['figures']}   report: {s['report']}")
    return "\n".join(lines)
