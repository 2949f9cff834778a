"""timm's ``config.json`` and our :class:`~convit.nn.model.ConViTConfig`, both ways.

* :func:`timm_config` writes a model's ``config.json`` in the layout of timm's hub
  repositories (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``label_names``, ``model_args``, ``pretrained_cfg``), which timm, and transformers'
  ``TimmWrapper``, rebuild with timm's own classes (``ConVit``, ``VisionTransformer``).
  :func:`timm_model_args` maps the config to timm's keyword arguments and refuses, naming the
  field, what timm's classes compute differently (:class:`TimmExportError`).
* :func:`config_from_timm` reads such a ``config.json`` (ours, or one of timm's own hub
  repositories such as ``timm/convit_tiny.fb_in1k``) back into ConViTConfig fields: the
  architecture comes from the file, never from the shapes of the weights.

No hub client here: reading a folder's ``config.json`` needs no network code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional, Union

from timm.models._pretrained import PretrainedCfg

from ..nn.model import ConViT, ConViTConfig

__all__ = [
    "TimmExportError",
    "TIMM_BUILDERS",
    "timm_architecture",
    "timm_model_args",
    "timm_config",
    "config_from_timm",
]


class TimmExportError(ValueError):
    """A model that timm's classes cannot reproduce (the message names the field and why)."""


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
#
# num_classes is written at the top level and in pretrained_cfg, never in model_args: timm
# takes it from pretrained_cfg, and transformers' TimmWrapper passes num_classes itself (a
# second one in model_args is a TypeError there).

#: timm's ConViT/DeiT builders and the arguments each one sets (timm.models.convit, .deit);
#: the rest are the class defaults of :data:`_CLASS_DEFAULTS`.
TIMM_BUILDERS: dict[str, dict[str, Any]] = {
    "convit_tiny": dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=4),
    "convit_small": dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=9),
    "convit_base": dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=16),
    "deit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "deit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "deit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}
#: The defaults of timm's classes for the arguments that shape the forward function.
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "convit": dict(
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        global_pool="token",
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=False,
        local_up_to_layer=3,
        locality_strength=1.0,
        use_pos_embed=True,
    ),
    "deit": dict(
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        global_pool="token",
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        pos_embed="learn",
        dynamic_img_size=False,
    ),
}
#: VisionTransformer arguments that must keep these values for our DeiT to compute the same.
_VIT_FIXED: dict[str, Any] = dict(
    class_token=True,
    no_embed_class=False,
    reg_tokens=0,
    pre_norm=False,
    final_norm=True,
    qk_norm=False,
    proj_bias=True,
    init_values=None,
    dynamic_img_pad=False,
    pool_include_prefix=False,
    scale_attn_norm=False,
    scale_mlp_norm=False,
)
#: Arguments that change only the init or training (identity in eval): read and ignored.
_INIT_ONLY = {
    "drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "weight_init",
    "fix_init",
}


def _family(cfg: ConViTConfig) -> str:
    return "convit" if cfg.local_up_to_layer > 0 else "deit"


def timm_architecture(cfg: ConViTConfig, name: Optional[str] = None) -> str:
    """The timm builder for ``cfg``: the one whose own model ``cfg`` is when there is one
    (``convit_small``, ``deit_base_patch16_224``, ...), else the size of ``name`` (our zoo name
    or a timm name), else tiny, always of the right family (``convit_*`` with GPSA blocks,
    ``deit_*`` without).  Any of them builds ``cfg``'s model with :func:`timm_model_args`,
    which sets every field those builders set."""
    family = _family(cfg)
    ours = (
        dict(
            local_up_to_layer=cfg.local_up_to_layer,
            locality_strength=cfg.locality_strength,
            embed_dim=cfg.embed_dim // cfg.num_heads,
            num_heads=cfg.num_heads,
        )
        if family == "convit"
        else dict(
            patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads
        )
    )
    for arch, args in TIMM_BUILDERS.items():
        if arch.startswith(family) and args == ours:
            return arch
    size = next((s for s in ("tiny", "small", "base") if name and name.startswith(f"{family}_{s}")), "tiny")
    return f"convit_{size}" if family == "convit" else f"deit_{size}_patch16_224"


def timm_model_args(cfg: ConViTConfig, fixed_size: bool = False) -> dict[str, Any]:
    """Keyword arguments of timm's builder (:func:`timm_architecture`) that, with
    ``num_classes``, rebuild ``cfg``'s forward function exactly (JSON-serialisable; see the
    notes above :data:`TIMM_BUILDERS`).

    fixed_size: export a ``dynamic_img_size`` ConViT for its trained size only (timm's ConVit
        has no dynamic size).  Raises :class:`TimmExportError` for what timm cannot express.
    """
    h, w = cfg.img_size
    img_size: Union[int, list[int]] = h if h == w else [h, w]
    common = dict(
        img_size=img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        global_pool=cfg.global_pool,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
    )
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
            "timm cannot reproduce this model"
        )
    gh, gw = cfg.grid
    if gh != gw:
        raise TimmExportError(
            f"img_size={list(cfg.img_size)} with patch_size={cfg.patch_size} gives a {gh}x{gw} patch grid: "
            "timm's GPSA only handles square grids (it builds its offsets for an int(sqrt(N))-sided grid)"
        )
    if cfg.dynamic_img_size and not fixed_size:
        raise TimmExportError(
            "dynamic_img_size=True: timm's ConVit takes its trained input size only (it neither resamples "
            "the position embedding nor rebuilds GPSA's offsets); export with fixed_size=True "
            "(`convit export --format timm --fixed-size`) for a model of the trained size "
            f"{cfg.img_size[0]}x{cfg.img_size[1]}, where both agree"
        )
    return dict(
        common,
        embed_dim=cfg.embed_dim // cfg.num_heads,
        local_up_to_layer=cfg.local_up_to_layer,
        locality_strength=cfg.locality_strength,
        use_pos_embed=cfg.use_pos_embed,
    )


# timm's weight-location keys: an exported config describes weights, not where they came from.
_SOURCE_KEYS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture"}
_KEEP_NULL = {"pool_size", "first_conv", "classifier"}  # timm keeps these even when None


def timm_config(
    model: ConViT, label_names: Optional[Sequence[str]] = None, fixed_size: bool = False
) -> dict[str, Any]:
    """timm's ``config.json`` for ``model``: ``architecture``, ``num_classes``, ``num_features``,
    ``global_pool``, ``label_names`` (given, else those the model was loaded with),
    ``model_args`` and ``pretrained_cfg`` (the model's own: the data it was trained on, its
    input size; weight locations left out, as timm does)."""
    cfg = model.cfg
    args = timm_model_args(cfg, fixed_size)
    src = dict(getattr(model, "pretrained_cfg", None) or {})
    label_names = label_names or src.get("label_names")
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}  # the keys timm knows
    pcfg = {
        k: v
        for k, v in src.items()
        if k not in _SOURCE_KEYS and k in fields and (v is not None or k in _KEEP_NULL)
    }
    pcfg.update(
        num_classes=cfg.num_classes,
        input_size=[cfg.in_chans, *cfg.img_size],
        fixed_input_size=not (cfg.dynamic_img_size and cfg.local_up_to_layer == 0),
        first_conv="patch_embed.proj",
        classifier="head",
        custom_load=False,
    )
    pcfg.pop("label_names", None)  # at the top level, as timm writes them
    for key in ("mean", "std"):
        if key in pcfg:
            pcfg[key] = [float(x) for x in pcfg[key]]
    out: dict[str, Any] = dict(
        architecture=timm_architecture(cfg, src.get("architecture")),
        num_classes=cfg.num_classes,
        num_features=cfg.embed_dim,
    )
    if cfg.global_pool:
        out["global_pool"] = cfg.global_pool
    if label_names:
        if cfg.num_classes and len(label_names) != cfg.num_classes:
            raise ValueError(f"{len(label_names)} label names for a {cfg.num_classes}-class model")
        out["label_names"] = list(label_names)
    out["model_args"] = args
    out["pretrained_cfg"] = pcfg
    return out


def config_from_timm(config: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """ConViTConfig fields of the model a timm ``config.json`` describes.

    ``architecture`` must be one of :data:`TIMM_BUILDERS`; the builder's arguments, then
    ``model_args``, then ``num_classes`` and the input size of ``pretrained_cfg`` give the
    model, as timm's ``create_model('local-dir:...')`` builds it.  Raises
    :class:`TimmExportError` naming ``where`` and the argument for what our model does not
    compute the same way (a VisionTransformer with ``fc_norm``, register tokens, ...).
    """
    arch = config.get("architecture")
    if arch not in TIMM_BUILDERS:
        raise TimmExportError(
            f"{where}: architecture {arch!r} is not a ConViT or DeiT timm builder "
            f"({', '.join(TIMM_BUILDERS)})"
        )
    family = arch.split("_")[0]
    model_args = dict(config.get("model_args") or {})
    args = _builder_args(config, arch, model_args)
    keys = (
        "img_size",
        "patch_size",
        "in_chans",
        "num_classes",
        "global_pool",
        "depth",
        "num_heads",
        "mlp_ratio",
        "qkv_bias",
    )
    out = {k: args.pop(k) for k in keys}
    if family == "convit":
        out.update(
            embed_dim=args.pop("embed_dim") * out["num_heads"],
            local_up_to_layer=args.pop("local_up_to_layer"),
            locality_strength=args.pop("locality_strength"),
            use_pos_embed=args.pop("use_pos_embed"),
        )
    else:
        out.update(_deit_fields(args, model_args, out["global_pool"], where))
    unknown = sorted(set(args) - _INIT_ONLY)
    if unknown:
        raise TimmExportError(
            f"{where}: model_args {unknown} are not ConViT/DeiT arguments this package knows"
        )
    timm_model_args(ConViTConfig(**out))  # what timm computes otherwise (all-GPSA, non-square grid)
    return out


def _builder_args(config: dict[str, Any], arch: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """Every argument timm's builder ``arch`` gets from ``config``: the class defaults, the
    builder's own, ``model_args``, then the classes and input size of ``pretrained_cfg``."""
    pcfg = config.get("pretrained_cfg") or {}
    args = {**_CLASS_DEFAULTS[arch.split("_")[0]], **TIMM_BUILDERS[arch], **model_args}
    if "in_chans" not in model_args and pcfg.get("input_size"):
        args["in_chans"] = int(pcfg["input_size"][0])
    if "img_size" not in model_args and pcfg.get("fixed_input_size") and pcfg.get("input_size"):
        args["img_size"] = list(pcfg["input_size"][1:])
    args["num_classes"] = int(config.get("num_classes", pcfg.get("num_classes", args["num_classes"])))
    return args


def _deit_fields(
    args: dict[str, Any], model_args: dict[str, Any], global_pool: str, where: str
) -> dict[str, Any]:
    """The DeiT fields of a VisionTransformer's arguments (taken out of ``args``); refuses, naming
    the argument, what our DeiT does not compute the same way."""
    pos_embed = args.pop("pos_embed")
    fc_norm = args.pop("fc_norm", None)
    if fc_norm or (fc_norm is None and global_pool not in ("token", "")):
        raise TimmExportError(f"{where}: fc_norm (a norm after pooling) is not part of our DeiT")
    if pos_embed not in ("learn", "none"):
        raise TimmExportError(f"{where}: pos_embed={pos_embed!r}: ours is learned ('learn') or 'none'")
    out = dict(
        embed_dim=args.pop("embed_dim"),
        local_up_to_layer=0,
        use_pos_embed=pos_embed == "learn",
        dynamic_img_size=bool(args.pop("dynamic_img_size")),
    )
    for k, v in _VIT_FIXED.items():
        if k in args and args.pop(k) != v:
            raise TimmExportError(f"{where}: model_args {k}={model_args[k]!r}: our DeiT has {k}={v!r}")
    return out
