"""``convit models``: the zoo as a table (parameters, FLOPs at the native resolution, GPSA layers)."""

from __future__ import annotations

import argparse

from ..nn.model import ConViTConfig
from ..weights.zoo import list_models, model_spec


def count_params_cfg(cfg: ConViTConfig) -> int:
    """Parameter count from the config alone (no weights are allocated)."""
    d, L, n = cfg.embed_dim, cfg.depth, cfg.grid[0] * cfg.grid[1]
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
    d, n = cfg.embed_dim, cfg.grid[0] * cfg.grid[1]
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


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(args.pattern):
        spec = model_spec(name)
        cfg = ConViTConfig(**spec.config)
        pre = spec.pretrained
        weights = "official+timm" if pre and pre.url else ("timm" if pre and pre.hf_hub_id else "-")
        rows.append(
            (
                name,
                f"{count_params_cfg(cfg) / 1e6:.2f}M",
                f"{flops(cfg) / 1e9:.2f}G",
                f"{cfg.local_up_to_layer}/{cfg.depth}",
                f"{cfg.num_heads}x{cfg.embed_dim // cfg.num_heads}",
                f"{cfg.img_size[0]}",
                weights,
                spec.description,
            )
        )
    header = ("model", "params", "GMACs", "GPSA", "heads", "res", "weights", "description")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
