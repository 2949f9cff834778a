"""Reading and writing model weights: the official ``.pth``, timm's files and our safetensors.

* Official ConViT checkpoints are a raw state dict (or ``{'model': ...}`` as written by the
  official training script); timm's hub files are ``model.safetensors`` / ``pytorch_model.bin``.
  Their keys are ours, so they load unchanged.
* Our own model files are safetensors whose metadata holds the model config (and optionally
  class names), so :func:`convit.create_model` can rebuild the architecture from the file alone;
  for one of timm's own models, its name and arguments (:mod:`convit.weights.timm_arch`); for
  the CNN arm, its :class:`~convit.weights.cnn.CNNConfig` (``cnn_config``).
  An export to timm's hub layout keeps that metadata in a file timm and transformers read
  (``format: pt``, ``library: convit``).
* A hub-repo folder (``model.safetensors`` + ``config.json``) is read as one checkpoint
  (:func:`find_weights`).
* Fine-tuning adaptations as timm makes them: a new head, an input convolution for another
  number of channels (:func:`adapt_input_conv`, :func:`adapt_state_dict`).
* Every mismatch is reported with the offending keys and shapes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from ..core.fileio import atomic_save
from .cnn import cnn_config_of, cnn_metadata
from .timm_arch import architecture_of

FORMAT = "convit"
StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (the message names the keys and shapes)."""


def _unwrap(obj) -> StateDict:
    """Find the state dict inside the containers training scripts write."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap(obj[key])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        "no state dict found in the checkpoint (expected a dict of tensors, "
        "or one under 'model' / 'state_dict')"
    )


def read_checkpoint(path: os.PathLike) -> tuple[StateDict, dict]:
    """Load a weight file (or the weights of a hub-repo folder) into (state_dict, metadata).

    metadata is the safetensors header metadata (our files hold ``config`` there) or {}.
    Prefixes written by DDP (``module.``) or torch.compile (``_orig_mod.``) are stripped.
    """
    path = find_weights(path)[0] if Path(path).is_dir() else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    meta: dict = {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
        sd = _unwrap(obj)
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out, meta


def read_metadata(path: os.PathLike) -> dict:
    """The safetensors header metadata of ``path`` without reading the tensors ({} for other
    formats, which carry none)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e


def config_from_metadata(meta: dict) -> Optional[dict]:
    """The model config stored in one of our files (training runs, or an export to timm's
    layout), or None for foreign files."""
    if FORMAT in (meta.get("format"), meta.get("library")) and "config" in meta:
        return json.loads(meta["config"])
    return None


#: Weight files of a hub-repo folder, in the order timm looks for them.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def find_weights(path: os.PathLike) -> tuple[Path, Optional[dict]]:
    """The weight file meant by ``path`` and the timm ``config.json`` that describes it.

    ``path`` is a file, or a hub-repo folder (``model.safetensors`` or ``pytorch_model.bin``,
    and ``config.json``, as ``convit export --format timm`` writes).  A weight file named as
    in such a folder takes the ``config.json`` beside it; any other file has none (None).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = [path / n for n in HUB_WEIGHT_FILES if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"no weights in folder {path}: expected {' or '.join(HUB_WEIGHT_FILES)}")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    config_file = folder / "config.json"
    if path.name not in HUB_WEIGHT_FILES or not config_file.is_file():
        return path, None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {config_file}: {e}") from None
    return path, config if isinstance(config, dict) and "architecture" in config else None


def plain_state_dict(model: nn.Module) -> StateDict:
    """The model's tensors as safetensors needs them: detached, contiguous, on the CPU."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_model(
    model: nn.Module, path: os.PathLike, extra: Optional[dict] = None, for_hub: bool = False
) -> Path:
    """Write the model weights and config as safetensors (atomically: temp file, then rename).

    extra: more JSON-serialisable metadata (e.g. ``{"class_names": [...], "model_name": ...}``).
    for_hub: mark the file ``format: pt`` (what transformers requires of a safetensors file)
        and ``library: convit``, for an export to timm's hub layout; we read it back the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = plain_state_dict(model)
    meta = {"format": "pt", "library": FORMAT} if for_hub else {"format": FORMAT}
    meta.update(_architecture_metadata(model))
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    return atomic_save(lambda p: save_file(sd, str(p), metadata=meta), path, "model file")


def _architecture_metadata(model: nn.Module) -> dict[str, str]:
    """What rebuilds ``model``: a ConViT's config, a timm model's name and arguments, or the
    CNN arm's config."""
    arch = architecture_of(model)
    if arch is not None:
        return arch.to_metadata()
    cnn = cnn_config_of(model)
    if cnn is not None:
        return cnn_metadata(cnn)
    cfg = getattr(model, "cfg", None)
    if not hasattr(cfg, "to_dict"):
        raise TypeError(
            f"cannot save a {type(model).__name__}: the file must say how to rebuild the model; save a "
            "ConViT, the CNN arm (convit.create_model('resnet', ...)), or a timm model built by "
            "convit.create_model('timm:NAME', ...)"
        )
    return {"config": json.dumps(cfg.to_dict())}


def read_metadata_json(meta: dict, key: str, default=None):
    """Decode one JSON field of our metadata (e.g. ``class_names``)."""
    return json.loads(meta[key]) if key in meta else default


def infer_config(sd: StateDict) -> dict:
    """Architecture of a ConViT/DeiT state dict, as ConViTConfig keyword arguments.

    Works from shapes alone for ConViT files (heads = rows of ``pos_proj``).  For a DeiT (no
    GPSA block) the head count cannot be read off the weights: pass the model name instead.
    """
    try:
        w = sd["patch_embed.proj.weight"]
    except KeyError:
        raise CheckpointError("not a ConViT/DeiT checkpoint: no 'patch_embed.proj.weight' key") from None
    embed_dim, in_chans, patch, _ = w.shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    gpsa = [i for i in range(depth) if f"blocks.{i}.attn.pos_proj.weight" in sd]
    if gpsa != list(range(len(gpsa))):
        raise CheckpointError(f"GPSA blocks must come first; found them at {gpsa}")
    if not gpsa:
        raise CheckpointError(
            "this checkpoint has no GPSA block (a DeiT): its head count cannot be "
            "inferred from the weights; pass the model name, e.g. 'deit_small'"
        )
    heads = sd["blocks.0.attn.pos_proj.weight"].shape[0]
    cfg = dict(
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        local_up_to_layer=len(gpsa),
        use_pos_embed="pos_embed" in sd,
        qkv_bias="blocks.0.attn.qk.bias" in sd,
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    )
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1] - (len(gpsa) == 0)
        side = int(round(n**0.5))
        if side * side == n:
            cfg["img_size"] = side * patch
    cfg["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    return cfg


def adapt_input_conv(in_chans: int, weight: torch.Tensor, base_chans: int = 3) -> torch.Tensor:
    """The patch-embedding weights [O, base_chans, p, p] for ``in_chans`` input channels, as timm
    adapts a pretrained stem: one channel sums the source channels (a grey image is the sum of
    equal R, G, B); other counts repeat the source channels cyclically and scale by
    ``base_chans / in_chans``, so an input with every channel equal gives the same activations."""
    if in_chans < 1 or base_chans < 1:
        raise ValueError(f"channel counts must be positive, got in_chans={in_chans}, base_chans={base_chans}")
    if weight.ndim != 4 or weight.shape[1] != base_chans:
        raise CheckpointError(
            f"cannot adapt input weights of shape {list(weight.shape)} from {base_chans} channels"
        )
    if in_chans == base_chans:
        return weight
    w = weight.float()  # half-precision sums are slow or missing on CPU
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_chans / base_chans), 1, 1)[:, :in_chans] * (base_chans / in_chans)
    return w.to(weight.dtype)


def adapt_state_dict(sd: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """``sd`` made to fit ``model`` for fine-tuning, as timm's ``pretrained=True`` does: the input
    convolution adapted to the model's channels (:func:`adapt_input_conv`), and a classifier of
    another size (or none) replaced by the model's own freshly initialised one.  Returns the
    new state dict and what was changed, in words."""
    sd = dict(sd)
    changed = []
    own = model.state_dict()
    first_conv, classifier = _input_and_classifier(model)
    key = f"{first_conv}.weight"
    if key in sd and key in own and sd[key].shape[1] != own[key].shape[1]:
        base = sd[key].shape[1]
        sd[key] = adapt_input_conv(own[key].shape[1], sd[key], base)
        changed.append(f"input weights adapted from {base} to {own[key].shape[1]} channels")
    head = [k for k in sd if k.startswith(f"{classifier}.")]
    if head and any(k not in own or sd[k].shape != own[k].shape for k in head):
        for k in head:
            del sd[k]
        sd.update({k: v for k, v in own.items() if k.startswith(f"{classifier}.")})
        changed.append("classifier re-initialised for the new number of classes")
    return sd, changed


def _input_and_classifier(model: nn.Module) -> tuple[str, str]:
    """The names of the model's input convolution and classifier, as timm's ``pretrained_cfg``
    gives them (``conv1`` and ``fc`` for a ResNet); a ConViT's (``patch_embed.proj``, ``head``)
    when it does not say."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_conv = cfg.get("first_conv")
    classifier = cfg.get("classifier")
    return (
        first_conv if isinstance(first_conv, str) else "patch_embed.proj",
        classifier if isinstance(classifier, str) else "head",
    )


def _fit_pos_embed(model: nn.Module, sd: StateDict) -> StateDict:
    """Bicubically resample a square ``pos_embed`` trained at another resolution."""
    if "pos_embed" not in sd or getattr(model, "pos_embed", None) is None:
        return sd
    if not hasattr(model, "pos_embed_has_cls"):  # not a ConViT: timm's own models load as they are
        return sd
    src = sd["pos_embed"]
    dst = model.pos_embed
    if src.shape == dst.shape or src.ndim != 3 or src.shape[-1] != dst.shape[-1]:
        return sd
    prefix = int(model.pos_embed_has_cls)
    n = src.shape[1] - prefix
    side = int(round(n**0.5))
    if side * side != n:
        return sd
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(
        src, list(model.cfg.grid), [side, side], num_prefix_tokens=prefix
    )
    return sd


def load_into(model: nn.Module, sd: StateDict, source: str = "checkpoint") -> None:
    """Load ``sd`` into ``model`` strictly, with an error that lists every mismatch.

    A square position embedding from another resolution is resampled (as timm does when
    fine-tuning at a new size).  A head of another size is reported with the fix: build the
    model with the checkpoint's ``num_classes``, load, then ``reset_classifier(n)``.
    """
    sd = _fit_pos_embed(model, sd)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        (k, tuple(sd[k].shape), tuple(own[k].shape))
        for k in set(sd) & set(own)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        lines: list[str] = [f"{source} does not match the model:"]
        if missing:
            lines.append(
                f"  missing keys ({len(missing)}): {', '.join(missing[:12])}"
                + (" ..." if len(missing) > 12 else "")
            )
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}"
                + (" ..." if len(unexpected) > 12 else "")
            )
        for k, a, b in shapes[:12]:
            lines.append(f"  shape mismatch for {k}: checkpoint {list(a)} vs model {list(b)}")
        if any(k.startswith("head.") for k, _, _ in shapes):
            lines.append(
                "  (the classifier differs: create the model with the checkpoint's num_classes, "
                "load it, then call reset_classifier(num_classes) to fine-tune)"
            )
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)
