"""Published weights through the Hugging Face hub, and export to timm's hub layout.

Two jobs, both about hub repositories:

* :func:`resolve_pretrained` finds a zoo model's published weights, local copies first: the
  file in our weights folder, then timm's ``model.safetensors`` in the Hugging Face cache, then
  the hub (through ``huggingface_hub``), then the official download.  With ``HF_HUB_OFFLINE``
  set only the two local places are read and no socket is opened.  When all fail, one
  :class:`PretrainedNotFoundError` lists each source, why it failed and where to put the file
  by hand.  :func:`hf_hub_file` gets one file of a hub repo the same way (cache, then hub).
* :func:`export_timm` writes a model as a complete hub repo: ``model.safetensors``,
  ``config.json`` (:func:`convit.weights.timm_format.timm_config`) and a ``README.md`` model card
  (:mod:`convit.weights.model_card`), which timm (``'hf-hub:...'`` / ``'local-dir:...'``),
  transformers (``AutoModelForImageClassification``, ``pipeline``) and convit all load.

huggingface_hub reads ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` once, when it is
imported; this module reads them again at each call (the environment at call time wins), so
setting them after ``import convit`` (or after timm imported huggingface_hub) still works.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants

from .._version import __version__
from ..core.fileio import atomic_save
from ..nn.model import ConViT, count_params
from .checkpoint import save_model
from .model_card import dataset_name, model_card, read_run
from .pretrained import Pretrained
from .timm_format import TimmExportError, timm_architecture, timm_config, timm_model_args

__all__ = [
    "HF_WEIGHTS_NAME",
    "PretrainedNotFoundError",
    "TimmExportError",
    "hf_cache_dir",
    "hf_offline",
    "offline_reason",
    "hf_cached_file",
    "hf_hub_file",
    "local_weights_file",
    "resolve_pretrained",
    "timm_architecture",
    "timm_model_args",
    "timm_config",
    "export_timm",
]

#: The weight file of timm's hub repositories (timm/convit_tiny.fb_in1k, ...).
HF_WEIGHTS_NAME = "model.safetensors"
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class PretrainedNotFoundError(FileNotFoundError):
    """No source of a zoo model's published weights worked (the message lists each one)."""


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


def offline_reason() -> Optional[str]:
    """Why the hub is not asked now (``HF_HUB_OFFLINE``, or its host does not resolve), so that
    only its cache is read; None when it is."""
    return _local_only_reason()


def _split(hub_id: str) -> tuple[str, Optional[str]]:
    """``'owner/name@rev'`` -> ``('owner/name', 'rev')`` (revision None when not given)."""
    repo_id, _, revision = hub_id.partition("@")
    return repo_id, revision or None


def hf_cached_file(hub_id: str, filename: str = HF_WEIGHTS_NAME) -> Optional[Path]:
    """``filename`` of hub repo ``hub_id`` (``owner/name``, optionally ``@revision``) when the
    Hugging Face cache (:func:`hf_cache_dir`) holds it, else None.  Reads files only."""
    repo_id, revision = _split(hub_id)
    found = huggingface_hub.try_to_load_from_cache(
        repo_id, filename, cache_dir=str(hf_cache_dir()), revision=revision
    )
    return Path(found) if isinstance(found, str) else None


def _cache_layout(hub_id: str, filename: str) -> str:
    """Where a file of ``hub_id`` goes in the Hugging Face cache, and the command that puts it there."""
    repo_id = _split(hub_id)[0]
    repo = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    return (
        f"{repo}/snapshots/<commit>/{filename}, with {repo}/refs/main holding <commit> (the layout "
        f"`hf download {repo_id} {filename}` writes; `huggingface-cli download` in older huggingface_hub)"
    )


def hf_hub_file(hub_id: str, filename: str = HF_WEIGHTS_NAME) -> Path:
    """Local path of ``filename`` from hub repo ``hub_id`` (``owner/name``, optionally
    ``@revision``): from the Hugging Face cache when it is there (no network), else downloaded
    into it.

    Offline (``HF_HUB_OFFLINE``, or a hub host that does not resolve) nothing is downloaded and
    a missing file raises :class:`FileNotFoundError` naming the file and where to put it.  Other
    failures raise huggingface_hub's errors.
    """
    cached = hf_cached_file(hub_id, filename)
    if cached is not None:
        return cached
    offline = _local_only_reason()
    if offline is not None:
        raise FileNotFoundError(
            f"{filename} of {hub_id} is not in the Hugging Face cache {hf_cache_dir()} and "
            f"the hub was not asked ({offline}); fetch it on a machine with internet and put "
            f"it at {_cache_layout(hub_id, filename)}"
        )
    repo_id, revision = _split(hub_id)
    return Path(
        huggingface_hub.hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            cache_dir=str(hf_cache_dir()),
            library_name="convit",
            library_version=__version__,
        )
    )


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

    Order, local copies first: (a) the file :func:`local_weights_file` in ``folder`` (the zoo
    passes :func:`convit.weights.names.weights_dir`: ``$CONVIT_HOME`` or torch hub's checkpoints folder);
    (b) timm's ``model.safetensors`` of hub repo ``info.hf_hub_id`` in the Hugging Face cache;
    (c) the same file from the hub; (d) the official URL, downloaded to (a)'s path.  (c) and
    (d) are skipped offline (``HF_HUB_OFFLINE``: no socket is opened), (c) also when the hub's
    host does not resolve.  A source the model lacks is skipped.  Raises
    :class:`PretrainedNotFoundError` naming every source, why each failed and where to put the
    file by hand.
    """
    local = local_weights_file(name, info, folder)
    if local.is_file():
        return local
    tried: list[str] = [f"local file {local}: not found"]
    if info.hf_hub_id:
        cached = hf_cached_file(info.hf_hub_id)
        if cached is not None:
            return cached
        tried.append(f"Hugging Face cache {hf_cache_dir()}: no {HF_WEIGHTS_NAME} of {info.hf_hub_id}")
    if hf_offline():
        tried.append("the hub and the official download: not asked (HF_HUB_OFFLINE is set: no network)")
        raise PretrainedNotFoundError(_not_found_message(name, info, local, tried))
    if info.hf_hub_id:
        try:
            return hf_hub_file(info.hf_hub_id, HF_WEIGHTS_NAME)
        except Exception as e:  # huggingface_hub's error types vary across its versions
            tried.append(f"Hugging Face hub {info.hf_hub_id} ({HF_WEIGHTS_NAME}): {_reason(e)}")
    if info.url:
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(info.url, str(local), hash_prefix=info.sha256, progress=True)
            return local
        except Exception as e:  # any failure (network, disk, hash): reported with the others
            tried.append(f"official download {info.url}: {_reason(e)}")
    raise PretrainedNotFoundError(_not_found_message(name, info, local, tried))


def _not_found_message(name: str, info: Pretrained, local: Path, tried: Sequence[str]) -> str:
    lines = [f"cannot find the pretrained weights of {name!r}. Tried, in order:"]
    lines += [f"  {i}. {t}" for i, t in enumerate(tried, 1)]
    lines.append("To install them by hand (download them on a machine with internet), either:")
    what = (
        f"the official file ({info.url})"
        if info.url
        else f"timm's {HF_WEIGHTS_NAME} from {info.hf_hub_id}, renamed,"
    )
    lines.append(
        f"  * put {what} at {local} (the folder is $CONVIT_HOME when set, else torch hub's "
        "checkpoints folder), or"
    )
    if info.hf_hub_id:
        lines.append(
            f"  * copy timm's {HF_WEIGHTS_NAME} of {info.hf_hub_id} into the Hugging Face cache "
            f"($HF_HUB_CACHE, else $HF_HOME/hub): {_cache_layout(info.hf_hub_id, HF_WEIGHTS_NAME)}; "
            "it is read from there first, also with HF_HUB_OFFLINE=1, or"
        )
    lines.append("  * pass checkpoint_path=<file> (official .pth, timm's model.safetensors, or ours).")
    return "\n".join(lines)


# -- export to timm's hub layout ------------------------------------------------------------
def _describe(model: ConViT, dataset: Optional[str]) -> str:
    cfg = model.cfg
    kind = (
        f"A ConViT ({cfg.local_up_to_layer} GPSA blocks of {cfg.depth})"
        if cfg.local_up_to_layer
        else f"A DeiT ({cfg.depth} blocks)"
    )
    return (
        f"{kind}, {cfg.num_heads} heads, width {cfg.embed_dim}, {cfg.patch_size}x{cfg.patch_size} patches, "
        f"{cfg.global_pool or 'no'} pooling, {count_params(model):,} parameters: an image classifier"
        + (f" trained on {dataset}" if dataset else "")
        + ". ConViT: d'Ascoli et al., ICML 2021."
    )


def export_timm(
    model: ConViT,
    out_dir: Union[str, os.PathLike],
    label_names: Optional[Sequence[str]] = None,
    fixed_size: bool = False,
    metadata: Optional[dict[str, Any]] = None,
    checkpoint: Optional[os.PathLike] = None,
) -> Path:
    """Write ``model`` as a hub repo in ``out_dir``, each file atomically; returns ``out_dir``.

    * ``model.safetensors``: the state dict (our keys are timm's), marked ``format: pt`` for
      transformers, with our config and ``metadata`` (class names, data, results) inside, so
      convit rebuilds it from this file alone;
    * ``config.json``: timm's layout (:func:`convit.weights.timm_format.timm_config`), ``label_names``
      included, which transformers turns into ``id2label``;
    * ``README.md``: the model card (:func:`convit.weights.model_card.model_card`) from ``metadata`` and,
      when ``checkpoint`` (the file the model was read from) sits in its run folder, that
      folder's ``config.yaml`` and ``log.jsonl``.

    Load it with ``timm.create_model('local-dir:OUT_DIR', pretrained=True)`` (``'hf-hub:owner/name'``
    once uploaded), ``transformers.pipeline('image-classification', model=OUT_DIR)`` or
    ``convit.create_model(checkpoint_path=OUT_DIR)``.  Nothing is written when the model cannot
    be expressed in timm (:class:`TimmExportError`).
    """
    config = timm_config(model, label_names, fixed_size)  # validates before anything is written
    meta = dict(metadata or {})
    if config.get("label_names"):
        meta["class_names"] = config["label_names"]
    out = Path(out_dir)
    run = read_run(Path(checkpoint).parent if checkpoint is not None else None)
    data = meta.get("data")
    results = {k: meta[k] for k in ("epoch", "test_top1", "val_top1") if k in meta}
    card = model_card(
        config,
        name=out.resolve().name,
        run=run,
        stored=results,
        data=data,
        description=_describe(model, dataset_name(data, run)),
        weights_name=Path(checkpoint).name if checkpoint is not None else HF_WEIGHTS_NAME,
    )
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / HF_WEIGHTS_NAME, extra=meta, for_hub=True)
    text = json.dumps(config, indent=2) + "\n"
    atomic_save(lambda p: p.write_text(text), out / "config.json", "timm config")
    atomic_save(lambda p: p.write_text(card), out / "README.md", "model card")
    return out
