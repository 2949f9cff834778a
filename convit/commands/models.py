"""``convit models``: the zoo as a table (parameters, FLOPs at the native resolution, GPSA layers;
the CNN arm at its default size)."""

from __future__ import annotations

import argparse

from ..nn.model import ConViTConfig
from ..weights.cnn import cnn_config, macs, param_count
from ..weights.zoo import ModelSpec, list_models, model_spec


def count_params_cfg(cfg: ConViTConfig) -> int:
    """Parameter count from the config alone (no weights are allocated)."""
    d = cfg.embed_dim
    L = cfg.depth
    n = cfg.grid[0] * cfg.grid[1]
    hidden = int(d * cfg.mlp_ratio)
    embed = cfg.in_chans * cfg.patch_size**2 * d + d + d  # conv + bias + cls token
    embed += (n + (cfg.local_up_to_layer == 0)) * d if cfg.use_pos_embed else 0
    mlp = d * hidden + hidden + hidden * d + d
    norms = 4 * d
    proj = d * d + d
    qkv = 3 * d * d + (3 * d if cfg.qkv_bias else 0)
    gpsa = qkv + proj + 3 * cfg.num_heads + cfg.num_heads + cfg.num_heads  # pos_proj w+b, gates
    mhsa = qkv + proj
    blocks = cfg.local_up_to_layer * (gpsa + mlp + norms) + (L - cfg.local_up_to_layer) * (mhsa + mlp + norms)
    head = (d * cfg.num_classes + cfg.num_classes) if cfg.num_classes > 0 else 0
    return embed + blocks + 2 * d + head


def flops(cfg: ConViTConfig) -> int:
    """Multiply-accumulates of one forward pass (the convention of the ViT/DeiT/ConViT papers).

    Counts the linear layers, the patch projection, QK^T and A@V; a GPSA layer adds P@V (its
    positional attention applied to the values), which is the only extra cost over DeiT.

    Not torch.utils.flop_counter.FlopCounterMode: it counts what the kernels run, not the
    papers' convention, and on CPU it misses attention computed by scaled_dot_product_attention
    altogether (the comparison is in docs/model.md); it also needs a forward pass of every model,
    where this is arithmetic on the config.
    """
    d = cfg.embed_dim
    n = cfg.grid[0] * cfg.grid[1]
    hidden = int(d * cfg.mlp_ratio)
    total = n * cfg.in_chans * cfg.patch_size**2 * d
    for i in range(cfg.depth):
        gpsa = i < cfg.local_up_to_layer
        t = n if gpsa else n + 1
        total += t * (3 * d * d + d * d + 2 * d * hidden)  # qk(v), proj, mlp
        total += 2 * t * t * d + (t * t * d if gpsa else 0)  # QK^T, A@V (+ P@V)
    return total + d * cfg.num_classes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convit_*'")


def _row(name: str, spec: ModelSpec) -> tuple[str, ...]:
    """One model's line: a ConViT's or DeiT's sizes from its config, the CNN arm's at its
    default size (no GPSA, no heads)."""
    pre = spec.pretrained
    weights = "official+timm" if pre and pre.url else ("timm" if pre and pre.hf_hub_id else "-")
    if spec.family == "cnn":
        cnn = cnn_config(**spec.config)
        sizes = (param_count(cnn), macs(cnn), "-", "-", cnn.img_size[0])
    else:
        cfg = ConViTConfig(**spec.config)
        heads = f"{cfg.num_heads}x{cfg.embed_dim // cfg.num_heads}"
        sizes = (
            count_params_cfg(cfg),
            flops(cfg),
            f"{cfg.local_up_to_layer}/{cfg.depth}",
            heads,
            cfg.img_size[0],
        )
    params, macs_, gpsa, heads, res = sizes
    return (
        name,
        f"{params / 1e6:.2f}M",
        f"{macs_ / 1e9:.2f}G",
        gpsa,
        heads,
        f"{res}",
        weights,
        spec.description,
    )


def run(args: argparse.Namespace) -> int:
    rows = [_row(name, model_spec(name)) for name in list_models(args.pattern)]
    header = ("model", "params", "GMACs", "GPSA", "heads", "res", "weights", "description")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
