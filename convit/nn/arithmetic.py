"""What a ConViT/DeiT configuration costs, from the config alone (nothing allocated): its
parameters and the multiply-accumulates of one forward pass.  ``convit models`` prints them and
``convit study`` compares its arms with them."""

from __future__ import annotations

from .architecture import ConViTConfig

__all__ = ["count_params_cfg", "flops"]


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
