"""``convit models``: the zoo as a table (parameters, FLOPs at the native resolution, GPSA layers;
the CNN arm at its default size)."""

from __future__ import annotations

import argparse

from ..nn.architecture import ConViTConfig
from ..nn.arithmetic import count_params_cfg, flops
from ..weights.cnn import cnn_config, macs, param_count
from ..weights.zoo import ModelSpec, list_models, model_spec


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
