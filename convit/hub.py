"""Published weights through the Hugging Face hub, and export to timm's hub layout.

Two jobs, both about timm's copy of the weights:

* :func:`resolve_pretrained` finds a zoo model's published weights: the local file first, then
  the official download, then timm's ``model.safetensors`` on the Hugging Face hub (through
  ``huggingface_hub``, so its cache, ``HF_HOME`` and ``HF_HUB_OFFLINE`` apply).  When all
  fail, one :class:`PretrainedNotFoundError` lists each source, why it failed and where to put
  the file by hand.
* :func:`export_timm` writes a model as ``model.safetensors`` + ``config.json`` in the layout
  of timm's hub repositories, so ``timm.create_model('hf-hub:...')`` / ``'local-dir:...'``
  rebuild it with timm's own classes (``ConVit`` for ConViT, ``VisionTransformer`` for DeiT).
  :func:`timm_model_args` maps a :class:`~convit.model.ConViTConfig` to timm's keyword
  arguments and refuses, naming the field, what timm's classes compute differently.

huggingface_hub reads ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` once, when it is
imported; this module reads them again at each call (the environment at call time wins), so
setting them after ``import convit`` (or after timm imported huggingface_hub) still works.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
import huggingface_hub
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file
from timm.models._pretrained import PretrainedCfg

from ._version import __version__
from .checkpoint import plain_state_dict
from .fileio import atomic_save
from .model import ConViT, ConViTConfig
from .pretrained import Pretrained

__all__ = [
    "HF_WEIGHTS_NAME", "PretrainedNotFoundError", "TimmExportError", "hf_cache_dir", "hf_offline",
    "hf_hub_file", "local_weights_file", "resolve_pretrained", "timm_architecture", "timm_model_args",
    "timm_config", "export_timm",
]

#: The weight file of timm's hub repositories (timm/convit_tiny.fb_in1k, ...).
HF_WEIGHTS_NAME = "model.safetensors"
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class PretrainedNotFoundError(FileNotFoundError):
    """No source of a zoo model's published weights worked (the message lists each one)."""


class TimmExportError(ValueError):
    """A model that timm's classes cannot reproduce (the message names the field and why)."""


# -- where the Hugging Face cache is, and whether to go online --------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def hf_offline() -> bool:
    """Whether huggingface_hub must stay offline: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``)
    as set *now*, or huggingface_hub's own flag (read when it was imported, or set by the user)."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    return bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says now: ``$HF_HUB_CACHE``, else the legacy
    ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's own setting
    (``~/.cache/huggingface/hub`` by default, under ``$XDG_CACHE_HOME`` when that is set)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"]))) / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT


def _hub_host_unresolvable() -> bool:
    """True when the hub's host name cannot be resolved (no network, no DNS) and no proxy is set.

    huggingface_hub retries a failed request several times with back-off (docs/model.md says how
    long) before it falls back to its cache; without a resolvable host only the cache can answer anyway, so
    asking for the cache directly gives the same result at once.  With a proxy the proxy
    resolves names, so no conclusion is drawn.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return False
    host = urllib.parse.urlparse(_hf_endpoint()).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return True
    except OSError:
        return False
    return False


def _local_only_reason() -> Optional[str]:
    """Why the hub must not be asked (so only its cache is read), or None to go online."""
    if hf_offline():
        return "HF_HUB_OFFLINE is set"
    if _hub_host_unresolvable():
        return f"{urllib.parse.urlparse(_hf_endpoint()).hostname} does not resolve: no network"
    return None


@contextlib.contextmanager
def _hub_offline_flag(offline: bool) -> Iterator[None]:
    """Set huggingface_hub's offline flag for one call when we decided to stay offline.

    ``local_files_only`` alone is not enough: huggingface_hub (2.x) builds its request headers
    even then, and that fetches an agent registry from the hub unless its import-time
    ``constants.HF_HUB_OFFLINE`` is set, so HF_HUB_OFFLINE set after the import would still
    reach the network.  The flag is process-wide while the call runs; the previous value is
    restored afterwards.
    """
    if not offline:
        yield
        return
    before = getattr(hf_constants, "HF_HUB_OFFLINE", False)
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before


def hf_hub_file(hub_id: str, filename: str = HF_WEIGHTS_NAME) -> Path:
    """Local path of ``filename`` from hub repo ``hub_id`` (``owner/name``, optionally
    ``@revision``), downloaded into the Hugging Face cache (:func:`hf_cache_dir`) unless it is
    there already.

    Offline (``HF_HUB_OFFLINE``, or a hub host that does not resolve) only the cache is read,
    and a missing file raises :class:`FileNotFoundError` saying so.  Other failures raise
    huggingface_hub's errors.
    """
    repo_id, _, revision = hub_id.partition("@")
    cache = hf_cache_dir()
    offline = _local_only_reason()
    try:
        with _hub_offline_flag(offline is not None):
            path = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, revision=revision or None,
                                   cache_dir=str(cache), local_files_only=offline is not None,
                                   library_name="convit", library_version=__version__)
    except Exception as e:
        if offline is not None and isinstance(e, FileNotFoundError):  # LocalEntryNotFoundError
            raise FileNotFoundError(f"not in the Hugging Face cache {cache} (offline: {offline})") from e
        raise
    return Path(path)


# -- resolving a zoo model's published weights --------------------------------------------------
def local_weights_file(name: str, info: Pretrained, folder: Path) -> Path:
    """Where the weights of zoo model ``name`` are looked for first: the official file name
    (``convit_tiny.pth``) in ``folder``, or ``<name>.safetensors`` (timm's ``model.safetensors``
    renamed) for models with no official download (DeiT)."""
    return folder / (info.filename or f"{name}.safetensors")


def _reason(e: BaseException) -> str:
    """One line saying why a source failed (huggingface_hub's messages run over many lines)."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def resolve_pretrained(name: str, info: Pretrained, folder: Path) -> Path:
    """Local path of zoo model ``name``'s published weights, fetching them if needed.

    Order: (a) the local file :func:`local_weights_file` in ``folder`` (the zoo passes
    :func:`convit.zoo.weights_dir`: ``$CONVIT_HOME`` or torch hub's checkpoints folder);
    (b) the official URL, downloaded to that file; (c) timm's ``model.safetensors`` in hub
    repo ``info.hf_hub_id`` through huggingface_hub (only its cache when offline).  A source
    the model lacks is skipped.  Raises :class:`PretrainedNotFoundError` naming every source,
    why each failed and where to put the file by hand.
    """
    local = local_weights_file(name, info, folder)
    if local.is_file():
        return local
    tried: List[str] = [f"local file {local}: not found"]
    if info.url:
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(info.url, str(local), hash_prefix=info.sha256, progress=True)
            return local
        except Exception as e:  # any failure (network, disk, hash): fall through to the hub
            tried.append(f"official download {info.url}: {_reason(e)}")
    if info.hf_hub_id:
        try:
            return hf_hub_file(info.hf_hub_id, HF_WEIGHTS_NAME)
        except Exception as e:  # huggingface_hub's error types vary across its versions
            tried.append(f"Hugging Face hub {info.hf_hub_id} ({HF_WEIGHTS_NAME}): {_reason(e)}")
    raise PretrainedNotFoundError(_not_found_message(name, info, local, tried))


def _not_found_message(name: str, info: Pretrained, local: Path, tried: Sequence[str]) -> str:
    lines = [f"cannot find the pretrained weights of {name!r}. Tried, in order:"]
    lines += [f"  {i}. {t}" for i, t in enumerate(tried, 1)]
    lines.append("To install them by hand (download them on a machine with internet), either:")
    what = f"the official file ({info.url})" if info.url else f"timm's {HF_WEIGHTS_NAME} from {info.hf_hub_id}, renamed,"
    lines.append(f"  * put {what} at {local} (the folder is $CONVIT_HOME when set, else torch hub's "
                 "checkpoints folder), or")
    if info.hf_hub_id:
        repo_id = info.hf_hub_id.partition("@")[0]
        repo = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
        lines.append(f"  * copy timm's file into the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub): "
                     f"{repo}/snapshots/<commit>/{HF_WEIGHTS_NAME}, with {repo}/refs/main holding <commit> "
                     f"(the layout `hf download {repo_id} {HF_WEIGHTS_NAME}` writes, `huggingface-cli download` "
                     "in older huggingface_hub; with HF_HUB_OFFLINE=1 the cache is read without asking the "
                     "network), or")
    lines.append("  * pass checkpoint_path=<file> (official .pth, timm's model.safetensors, or ours).")
    return "\n".join(lines)


# -- export to timm ---------------------------------------------------------------------------
# What timm's classes cannot express, and what they need not.
#
# Fields that change the forward function, and so must map exactly (or be refused):
#   ConViT (timm.models.convit.ConVit): embed_dim (timm's is per head), num_heads, depth,
#   mlp_ratio, qkv_bias, patch_size, img_size, in_chans, num_classes, global_pool,
#   local_up_to_layer, use_pos_embed.  Refused:
#     * local_up_to_layer == depth: timm inserts the class token only before block
#       local_up_to_layer, so with every block GPSA it never does; its 'avg' pooling then
#       drops the first *patch* and '' returns one token fewer than ours.
#     * non-square patch grids: timm's GPSA builds its offsets for an int(sqrt(N))-sided grid.
#     * dynamic_img_size: timm's ConVit takes its trained size only (no position-embedding
#       resampling); ``fixed_size=True`` exports it for the trained size, where the two agree.
#   DeiT (timm.models.vision_transformer.VisionTransformer, the deit_* builders): the same
#   fields plus class_token=True, no_embed_class=False (the class token has a position),
#   fc_norm=False (our final norm acts on every token before pooling, timm's 'avg' default
#   would normalise after pooling), pos_embed='none' without a position embedding, and
#   dynamic_img_size (same bicubic resampling, timm's resample_abs_pos_embed).  Nothing refused.
#
# Fields that only change initialisation or training, so loaded weights compute the same in
# timm whatever their value (not in model_args; a timm model built *without* the weights
# gets timm's init instead): use_local_init, gate_init (lambda is a saved parameter),
# train_gates / train_gpsa (requires_grad only), the convolutional init of the heads beyond
# the largest square (timm leaves them random), and every dropout / drop-path rate (identity
# in eval; choose them when fine-tuning).  locality_strength only scales the init too, but
# ConVit takes it, so it is passed on.
_SIZES = ("tiny", "small", "base")


def timm_architecture(cfg: ConViTConfig, name: Optional[str] = None) -> str:
    """The timm builder for ``cfg``: ``convit_{tiny,small,base}`` (GPSA blocks) or
    ``deit_{tiny,small,base}_patch16_224`` (none).  The size follows ``name`` (our zoo name or a
    timm name) and defaults to tiny; it never changes the model, since :func:`timm_model_args`
    sets every field those builders set."""
    size = "tiny"
    family = "convit" if cfg.local_up_to_layer > 0 else "deit"
    for s in _SIZES:
        if name and name.startswith(f"{family}_{s}"):
            size = s
    return f"convit_{size}" if family == "convit" else f"deit_{size}_patch16_224"


def timm_model_args(cfg: ConViTConfig, fixed_size: bool = False) -> Dict[str, Any]:
    """Keyword arguments of timm's builder (:func:`timm_architecture`) that rebuild ``cfg``'s
    forward function exactly (JSON-serialisable; see the notes above this function).

    fixed_size: export a ``dynamic_img_size`` ConViT for its trained size only (timm's ConVit
        has no dynamic size).  Raises :class:`TimmExportError` for what timm cannot express.
    """
    h, w = cfg.img_size
    img_size: Union[int, List[int]] = h if h == w else [h, w]
    common = dict(img_size=img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                  num_classes=cfg.num_classes, global_pool=cfg.global_pool, depth=cfg.depth,
                  num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias)
    if cfg.local_up_to_layer == 0:  # a DeiT: timm's VisionTransformer
        args = dict(common, embed_dim=cfg.embed_dim, class_token=True, no_embed_class=False, fc_norm=False)
        if not cfg.use_pos_embed:
            args["pos_embed"] = "none"
        if cfg.dynamic_img_size:
            args["dynamic_img_size"] = True
        return args
    if cfg.local_up_to_layer == cfg.depth:
        raise TimmExportError(
            f"local_up_to_layer={cfg.local_up_to_layer} == depth: timm's ConVit inserts the class token "
            "before block local_up_to_layer only, so with every block GPSA it never adds it and its "
            f"global_pool={cfg.global_pool!r} output differs from ours (its 'avg' drops the first patch); "
            "timm cannot reproduce this model")
    gh, gw = cfg.grid
    if gh != gw:
        raise TimmExportError(
            f"img_size={list(cfg.img_size)} with patch_size={cfg.patch_size} gives a {gh}x{gw} patch grid: "
            "timm's GPSA only handles square grids (it builds its offsets for an int(sqrt(N))-sided grid)")
    if cfg.dynamic_img_size and not fixed_size:
        raise TimmExportError(
            "dynamic_img_size=True: timm's ConVit takes its trained input size only (it neither resamples "
            "the position embedding nor rebuilds GPSA's offsets); export with fixed_size=True "
            "(`convit export --format timm --fixed-size`) for a model of the trained size "
            f"{cfg.img_size[0]}x{cfg.img_size[1]}, where both agree")
    return dict(common, embed_dim=cfg.embed_dim // cfg.num_heads, local_up_to_layer=cfg.local_up_to_layer,
                locality_strength=cfg.locality_strength, use_pos_embed=cfg.use_pos_embed)


# timm's weight-location keys: an exported config describes weights, not where they came from.
_SOURCE_KEYS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture"}
_KEEP_NULL = {"pool_size", "first_conv", "classifier"}  # timm keeps these even when None


def timm_config(model: ConViT, label_names: Optional[Sequence[str]] = None,
                fixed_size: bool = False) -> Dict[str, Any]:
    """timm's ``config.json`` for ``model``: ``architecture``, ``num_classes``, ``num_features``,
    ``global_pool``, ``label_names``, ``model_args`` and ``pretrained_cfg`` (the model's own:
    the data it was trained on, its input size; weight locations left out, as timm does)."""
    cfg = model.cfg
    args = timm_model_args(cfg, fixed_size)
    src = dict(getattr(model, "pretrained_cfg", None) or {})
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}  # the keys timm knows
    pcfg = {k: v for k, v in src.items()
            if k not in _SOURCE_KEYS and k in fields and (v is not None or k in _KEEP_NULL)}
    pcfg.update(num_classes=cfg.num_classes, input_size=[cfg.in_chans, *cfg.img_size],
                fixed_input_size=not (cfg.dynamic_img_size and cfg.local_up_to_layer == 0),
                first_conv="patch_embed.proj", classifier="head", custom_load=False)
    for key in ("mean", "std"):
        if key in pcfg:
            pcfg[key] = [float(x) for x in pcfg[key]]
    out: Dict[str, Any] = dict(architecture=timm_architecture(cfg, src.get("architecture")),
                               num_classes=cfg.num_classes, num_features=cfg.embed_dim)
    if cfg.global_pool:
        out["global_pool"] = cfg.global_pool
    if label_names:
        if cfg.num_classes and len(label_names) != cfg.num_classes:
            raise ValueError(f"{len(label_names)} label names for a {cfg.num_classes}-class model")
        out["label_names"] = list(label_names)
    out["model_args"] = args
    out["pretrained_cfg"] = pcfg
    return out


def export_timm(model: ConViT, out_dir: Union[str, os.PathLike], label_names: Optional[Sequence[str]] = None,
                fixed_size: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` (the state dict: our keys are timm's) and
    ``out_dir/config.json`` (:func:`timm_config`), each atomically; returns ``out_dir``.

    Load it with ``timm.create_model('local-dir:OUT_DIR', pretrained=True)``, from a hub repo
    holding both files with ``'hf-hub:owner/name'``, or with ``timm.create_model(architecture,
    pretrained=True, pretrained_cfg_overlay=dict(config['pretrained_cfg'], file=...),
    **config['model_args'])`` (the overlay needs at least ``num_classes``: timm drops a head
    whose size differs from its ``pretrained_cfg``'s).  Nothing is written when the model
    cannot be expressed (:class:`TimmExportError`).
    """
    config = timm_config(model, label_names, fixed_size)  # validates before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = plain_state_dict(model)
    atomic_save(lambda p: save_file(sd, str(p), metadata={"format": "pt"}), out / HF_WEIGHTS_NAME,
                "timm weights")
    text = json.dumps(config, indent=2) + "\n"
    atomic_save(lambda p: p.write_text(text), out / "config.json", "timm config")
    return out
