"""Fine-tuning studies (``convit study --pretrained``): each arm starts from published weights,
all of them found before anything is timed.

The arms are a ConViT and the DeiT of the paper's pairing (:data:`DEFAULT_MODELS`; ``--models``
names another pairing) and the CNN.  ``--models`` entries name weights as
:func:`convit.weights.zoo.create_model` takes them: a zoo name (its published weights: our
weights folder, the Hugging Face cache, the hub, the official download), ``local-dir:PATH`` (a
hub-repo folder, ``config.json`` + ``model.safetensors``, as ``convit export --format timm``
writes and timm publishes) or ``hf-hub:ID``; the architecture of a folder or repo is read from its
``config.json``.  ``resnet`` is the timm ResNet of :data:`PUBLISHED_RESNETS` closest in
parameters to the ConViT (counted from timm's architecture on the meta device, at the data's
classes), from timm's hub repo of its published weights.

A transformer keeps its weights' patch size: the resolution is ``--img-size`` (divisible by the
patches) or a grid of :data:`~convit.study.arms.GRID_MIN` patches a side, at most the size the
weights were trained at (the position embeddings are resampled to it).  Offline with any
weights missing, :func:`pretrained_layout` stops with one line naming every place looked, for
every missing arm.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..nn.model import ConViTConfig, count_params
from ..weights.checkpoint import HUB_WEIGHT_FILES
from ..weights.names import list_models, model_spec, parse_model_name, weights_dir
from ..weights.resolve import resolve_source
from ..weights.zoo import config_of, create_model
from .arms import CNN_ARM, GRID_MIN, Layout, check_known, check_pair, transformer_arch, transformer_params
from .inspect import DataSummary
from .plan_schema import PlanRequest, label

__all__ = [
    "DEFAULT_MODELS",
    "PUBLISHED_RESNETS",
    "Weights",
    "check_pretrained_names",
    "look_up",
    "closest_resnet",
    "pretrained_layout",
]

#: The arms of ``--pretrained`` without ``--models``: the paper's smallest pairing and the CNN.
DEFAULT_MODELS = ("convit_tiny", "deit_tiny", CNN_ARM)
#: The timm ResNets the CNN arm is chosen from (plain ResNets, each with timm's published ImageNet
#: weights), in order of size.
PUBLISHED_RESNETS = ("resnet18", "resnet26", "resnet34", "resnet50", "resnet101", "resnet152")
_REPOS = ("local-dir", "hf-hub")


def _published_name(name: str) -> None:
    """A zoo name with published weights (a ValueError of one line otherwise)."""
    check_known(name)
    spec = model_spec(name)
    if spec.family != "convit" or spec.pretrained is None:
        with_weights = [n for n in list_models() if model_spec(n).pretrained is not None]
        close = difflib.get_close_matches(name, with_weights, n=1)
        hint = f" (the closest that has is {close[0]!r})" if close else ""
        raise ValueError(
            f"--pretrained: {name} has no published weights{hint}; name an export folder as "
            "local-dir:PATH or a hub repo as hf-hub:ID"
        )


def check_pretrained_names(names: Sequence[str]) -> list[str]:
    """``--models`` of a fine-tuning study, checked and as the plan keeps them (a folder's path
    made absolute): zoo names with published weights, ``local-dir:PATH``, ``hf-hub:ID`` or
    ``resnet``; a ValueError of one line for anything else."""
    out = []
    for n in names:
        source, ident, _ = parse_model_name(n)
        if source == "local-dir":
            n = f"local-dir:{Path(ident).expanduser().resolve()}"
        elif source == "timm":
            raise ValueError(f"--pretrained: {n}: name its published weights as hf-hub:ID or local-dir:PATH")
        elif source is None and n != CNN_ARM:
            _published_name(n)
        out.append(n)
    if len(set(out)) != len(out):
        raise ValueError(f"--models names a model twice: {', '.join(names)}")
    return out


@dataclass(frozen=True)
class Weights:
    """Where an arm's weights are: ``source`` as ``create_model`` takes it, the file found (None:
    not found), and where it was looked for, in words (when not found)."""

    source: str
    path: Optional[Path]
    looked: str = ""


def _in_folder(source: str, folder: Path) -> Weights:
    """An export folder's weights: its ``config.json`` and weight file."""
    files = [folder / n for n in HUB_WEIGHT_FILES if (folder / n).is_file()]
    if (folder / "config.json").is_file() and files:
        return Weights(source, files[0])
    return Weights(source, None, f"{folder} (needs config.json and {' or '.join(HUB_WEIGHT_FILES)})")


def _in_hub(source: str, hub_id: str) -> Weights:
    """A hub repo's ``config.json`` and ``model.safetensors``: the Hugging Face cache, then the hub."""
    from ..weights.hub import HF_WEIGHTS_NAME, hf_cache_dir, hf_hub_file, offline_reason

    try:
        hf_hub_file(hub_id, "config.json")
        return Weights(source, hf_hub_file(hub_id, HF_WEIGHTS_NAME))
    except Exception as e:  # huggingface_hub's error types vary across its versions
        reason = offline_reason()
        remote = f"the hub not asked ({reason})" if reason else f"the hub failed ({type(e).__name__})"
        where = f"the Hugging Face cache {hf_cache_dir()} ({hub_id}: config.json, {HF_WEIGHTS_NAME})"
        return Weights(source, None, f"{where}; {remote}")


def _published(name: str) -> Weights:
    """A zoo model's published weights, where :func:`convit.weights.hub.resolve_pretrained` looks."""
    from ..weights.hub import hf_cache_dir, hf_offline, local_weights_file, resolve_pretrained

    info = model_spec(name).pretrained
    try:
        return Weights(name, resolve_pretrained(name, info, weights_dir()))
    except Exception:  # not found (every source failed): said below, in one line
        places = [str(local_weights_file(name, info, weights_dir()))]
        if info.hf_hub_id:
            places.append(f"the Hugging Face cache {hf_cache_dir()} ({info.hf_hub_id})")
        remote = " and ".join(
            ["the hub"] * bool(info.hf_hub_id) + [f"the official download {info.url}"] * bool(info.url)
        )
        verdict = "not asked (HF_HUB_OFFLINE is set)" if hf_offline() else "failed"
        return Weights(name, None, f"{'; '.join(places)}; {remote} {verdict}")


def look_up(source: str) -> Weights:
    """Where the weights ``source`` names are (a zoo name, ``local-dir:PATH`` or ``hf-hub:ID``):
    local copies first, then the hub unless offline."""
    kind, ident, _ = parse_model_name(source)
    if kind == "local-dir":
        return _in_folder(source, Path(ident))
    if kind == "hf-hub":
        return _in_hub(source, ident)
    return _published(source)


def _timm_params(name: str, in_chans: int, num_classes: int) -> int:
    """Parameters of timm's ``name`` on the study's data, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return count_params(create_model(f"timm:{name}", in_chans=in_chans, num_classes=num_classes))


def closest_resnet(target: int, in_chans: int, num_classes: int) -> tuple[str, int]:
    """(name, parameters) of the ResNet of :data:`PUBLISHED_RESNETS` closest to ``target``."""
    best: Optional[tuple[str, int]] = None
    for name in PUBLISHED_RESNETS:
        n = _timm_params(name, in_chans, num_classes)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = name, n
        if n >= target:  # the list grows: no later one is closer
            break
    assert best is not None
    return best


def _hub_source(name: str) -> str:
    """``hf-hub:ID`` of timm's published weights of ``name`` (its pretrained_cfg's hub id)."""
    import timm  # only now: timm's registry is large

    return f"hf-hub:{timm.models.get_pretrained_cfg(name).hf_hub_id}"


def _role(source: str) -> str:
    """``convit``, ``deit`` or the CNN arm: what the weights ``source`` names are (their config)."""
    if source == CNN_ARM or not resolve_source(source).is_convit:
        return CNN_ARM
    return "convit" if config_of(source).local_up_to_layer > 0 else "deit"


def _maybe_role(source: str, found: bool) -> Optional[str]:
    """:func:`_role`, or None for missing weights whose config cannot be read either."""
    try:
        return _role(source)
    except (OSError, ValueError):  # a hub repo's config.json not cached either
        if found:
            raise
        return None


def _shape(summary: DataSummary) -> tuple[int, int]:
    """(channels, classes) of the study's input: a folder's images are read as RGB."""
    return (summary.channels if summary.kind == "builtin" else 3, len(summary.classes))


@dataclass
class _Arms:
    """The arms of a fine-tuning study while they are chosen: role -> source, each source's
    weights, and what the plan says about the CNN."""

    roles: dict[str, str]
    found: dict[str, Weights]
    notes: list[str]


def _choose_cnn(arms: _Arms, res: int, shape: tuple[int, int]) -> None:
    """The CNN arm ``resnet``: the published ResNet closest to the ConViT's parameters."""
    convit = arms.roles.get("convit")
    if convit is None:
        return  # the ConViT's config is unknown (its weights are missing too): said with them
    arch = transformer_arch(convit, config_of(convit).patch_size, res)
    target = transformer_params(arch, res, *shape)
    name, n = closest_resnet(target, *shape)
    source = _hub_source(name)
    arms.roles[CNN_ARM] = source
    arms.found[source] = look_up(source)
    arms.notes.append(
        f"the CNN arm is timm's {name} ({source}), the published ResNet ({', '.join(PUBLISHED_RESNETS)}) "
        f"closest to ConViT's {target:,} parameters: {n:,} ({n - target:+,}, {n / target - 1:+.0%})"
    )


def _missing_error(missing: list[Weights]) -> ValueError:
    """One line: every missing arm's weights and where they were looked for, and what to do."""
    said = "; ".join(f"{w.source} (looked in {w.looked})" for w in missing)
    return ValueError(
        f"--pretrained: weights not found for {said}: fetch them on a machine with internet "
        "(`hf download REPO` into the Hugging Face cache, or the zoo's file into $CONVIT_HOME), "
        "or name export folders with --models local-dir:PATH,..."
    )


def _check_roles(names: Sequence[str], roles: dict[str, Optional[str]]) -> None:
    """One ConViT, at most one DeiT and at most one CNN, the pair of the paper or of one size."""
    kinds = list(roles.values())
    if kinds.count("convit") != 1 or kinds.count("deit") > 1 or kinds.count(CNN_ARM) > 1:
        raise ValueError(
            f"--models needs one ConViT, at most one DeiT and optionally a CNN; got {', '.join(names)}"
        )
    by_role = {r: n for n, r in roles.items()}
    if "deit" in by_role:
        check_pair(by_role["convit"], by_role["deit"])


def _arms(names: Sequence[str], res_for: Callable[[dict[str, str]], int], shape: tuple[int, int]) -> _Arms:
    """Every arm's weights looked up (the CNN chosen first), checked; a ValueError of one line
    naming every missing one."""
    named = [n for n in names if n != CNN_ARM]
    found = {n: look_up(n) for n in named}
    roles = {n: _maybe_role(n, found[n].path is not None) for n in named}
    arms = _Arms({r: n for n, r in roles.items() if r is not None}, found, [])
    if CNN_ARM in names:
        roles[CNN_ARM] = CNN_ARM
        if CNN_ARM not in arms.roles:
            _choose_cnn(arms, res_for(arms.roles), shape)
    missing = [w for w in arms.found.values() if w.path is None]
    if missing:
        raise _missing_error(missing)
    _check_roles(names, roles)
    return arms


def _own_size(cfg: ConViTConfig) -> int:
    return min(cfg.img_size) if isinstance(cfg.img_size, tuple) else int(cfg.img_size)


def _resolution(img_size: Optional[int], roles: dict[str, str]) -> int:
    """``img_size``, or a grid of :data:`GRID_MIN` of the ConViT's patches, at most the size its
    weights were trained at; a ValueError when a transformer's patches do not divide it."""
    convit = config_of(roles["convit"]) if "convit" in roles else None
    res = img_size or (min(GRID_MIN * convit.patch_size, _own_size(convit)) if convit else 0)
    for role in ("convit", "deit"):
        if role in roles and res:
            patch = config_of(roles[role]).patch_size
            if res % patch:
                raise ValueError(
                    f"--img-size {res} is not divisible by the patch size {patch} of the {label(role)} "
                    f"weights ({roles[role]})"
                )
    return res


def _notes(arms: _Arms, res: int) -> list[str]:
    """What the plan says: the resolution against the weights', the CNN, every arm's weights."""
    cfg = config_of(arms.roles["convit"])
    notes = []
    if res != _own_size(cfg):
        g = res // cfg.patch_size
        own = _own_size(cfg) // cfg.patch_size
        notes.append(
            f"{res} px input: a {g}x{g} grid of the weights' {cfg.patch_size} px patches (position "
            f"embeddings resampled from their {own}x{own})"
        )
    starts = [
        f"{label(r)} from {arms.roles[r]} ({arms.found[arms.roles[r]].path})"
        for r in ("convit", "deit", CNN_ARM)
        if r in arms.roles
    ]
    return notes + arms.notes + [f"fine-tuned from published weights: {'; '.join(starts)}"]


def pretrained_layout(summary: DataSummary, request: PlanRequest) -> Layout:
    """The arms of a fine-tuning study on ``summary``'s images: each one's weights found (one
    ValueError line naming every missing one), the resolution, every arm's plan entry (ConViT,
    DeiT, CNN) and the weights it starts from."""
    shape = _shape(summary)
    arms = _arms(request.models or DEFAULT_MODELS, lambda roles: _resolution(request.img_size, roles), shape)
    res = _resolution(request.img_size, arms.roles)
    patch = config_of(arms.roles["convit"]).patch_size
    archs = {}
    for role in ("convit", "deit", CNN_ARM):
        source = arms.roles.get(role)
        if source is None:
            continue
        if role == CNN_ARM:
            archs[role] = {"model": source, "model_kwargs": {}}
        else:
            archs[role] = transformer_arch(source, config_of(source).patch_size, res)
    weights = {role: arms.roles[role] for role in archs}
    return Layout(res, patch, archs, False, _notes(arms, res), weights)
