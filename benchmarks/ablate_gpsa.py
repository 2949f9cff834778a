#!/usr/bin/env python
"""Ablation of the GPSA fast-path changes (docs/speed.md), measured side by side.

Variants of one GPSA layer's forward, all on the same layer and input (inference):

    explicit      eq. 6 with A materialised (GPSA.forward, unbound): what timm computes
    v0_initial    the first fast path (SDPA + P@v, separate qk/v matmuls, sigma*P scaled per
                  call, addcmul mix) with P NOT flushed: P keeps its subnormal entries
    v1_flush      v0 with the subnormal entries of P flushed to 0
    current       GPSA.forward: fused q/k/v matmul, lerp mix, flushed P
    mhsa_deit     the attention of a DeiT block (3 heads x 64, qkv bias, 197 tokens), reference

and, in training (forward + backward of the layer), the same variants plus

    v2_lerp       the current ops with plain autograd (no custom autograd.Function)

with the bytes autograd keeps for backward (unique storages seen by saved_tensors_hooks).

Also the isolated pieces of the current path (fused qkv matmul, SDPA, the v copy, the bmm
with and without subnormals, the lerp, proj) and the SDPA head shape question
(4 x 48 vs 3 x 64).  Rounds are interleaved; medians and minima are reported.

    python benchmarks/ablate_gpsa.py [--batch 32] [--repeats 15] [--model-level]

--model-level also times whole convit_tiny forwards with the v0 / v1 / current layers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import convit
from convit.nn.attention import GPSA


def positional_unflushed(layer: GPSA) -> torch.Tensor:
    w, b = layer.pos_proj.weight, layer.pos_proj.bias
    return F.linear(layer.rel_indices.float(), w.float(), b.float()).permute(2, 0, 1).softmax(dim=-1)


def forward_v0(layer: GPSA, x: torch.Tensor, flush: bool, pos_cache: dict) -> torch.Tensor:
    """The first fast path (before this ablation), for comparison."""
    B, N, C = x.shape
    h, d = layer.num_heads, layer.head_dim
    qk = layer.qk(x).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
    q, k = qk.unbind(0)
    v = layer.v(x).view(B, N, h, d)
    g = layer.gate().to(v.dtype)
    key = id(layer), flush
    if key not in pos_cache:  # cached in inference, as the layer does
        pos_cache[key] = layer.positional_attention() if flush else positional_unflushed(layer)
    pos = pos_cache[key]
    content = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))
    v_cols = v.permute(2, 1, 0, 3).reshape(h, N, B * d)
    positional = torch.bmm(g.view(-1, 1, 1) * pos, v_cols)
    positional = positional.view(h, N, B, d).permute(2, 1, 0, 3)
    out = torch.addcmul(positional, content.transpose(1, 2), (1.0 - g).view(1, 1, -1, 1))
    return layer.proj(out.reshape(B, N, C))


def forward_v2(layer: GPSA, x: torch.Tensor) -> torch.Tensor:
    """The current ops (fused qkv, flushed P, bmm, lerp) with plain autograd."""
    B, N, C = x.shape
    h, d = layer.num_heads, layer.head_dim
    qkv = layer._qkv(x).view(B, N, 3, h, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    content = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    pos = layer.positional_attention()
    v_cols = v.permute(1, 2, 0, 3).reshape(h, N, B * d)
    y = torch.bmm(pos, v_cols).view(h, N, B, d).permute(2, 1, 0, 3)
    out = torch.lerp(content, y, layer.gate().view(1, 1, h, 1))
    return layer.proj(out.reshape(B, N, C))


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward during fn()."""
    seen = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def report(title: str, times: dict, ref: str = None) -> None:
    print(f"\n{title}")
    for k, v in times.items():
        line = f"  {k:<28} median {1e3 * statistics.median(v):8.2f} ms   min {1e3 * min(v):8.2f} ms"
        if ref and k != ref:
            paired = statistics.median(a / b for a, b in zip(v, times[ref]))
            line += f"   x{paired:.2f} of {ref} (paired)"
        print(line)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--model-level", action="store_true")
    p.add_argument("--train-only", action="store_true", help="only the training section")
    return p.parse_args()


def inference_section(
    layer: GPSA, deit_attn: torch.nn.Module, x: torch.Tensor, x197: torch.Tensor, cache: dict, repeats: int
) -> None:
    """The variants' agreement with the current path, then their inference times."""
    B = x.shape[0]
    with torch.inference_mode():
        ref = layer(x)
        for name, f in (
            ("explicit", lambda: GPSA.forward(layer, x)),
            ("v0", lambda: forward_v0(layer, x, False, cache)),
            ("v1", lambda: forward_v0(layer, x, True, cache)),
        ):
            print(f"  max |{name} - current| = {(f() - ref).abs().max().item():.2e}")
        layer_times = interleaved(
            {
                "explicit": lambda: GPSA.forward(layer, x),
                "v0_initial": lambda: forward_v0(layer, x, False, cache),
                "v1_flush": lambda: forward_v0(layer, x, True, cache),
                "current": lambda: layer(x),
                "mhsa_deit": lambda: deit_attn(x197),
            },
            repeats,
        )
        report(f"GPSA layer forward, inference, [{B}, 196, 192], convit_tiny block 0", layer_times, "current")


def training_section(layer: GPSA, x: torch.Tensor, repeats: int) -> None:
    """Forward + backward of one layer: bytes saved for backward, gradient agreement, times."""
    B = x.shape[0]
    xg = x.clone().requires_grad_(True)
    grad_out = torch.randn(B, 196, 192)
    train_fns = {
        "explicit": lambda: GPSA.forward(layer, xg),
        "v0_initial": lambda: forward_v0(layer, xg, False, {}),
        "v1_flush": lambda: forward_v0(layer, xg, True, {}),
        "v2_lerp": lambda: forward_v2(layer, xg),
        "current": lambda: layer(xg),
    }
    print("\nGPSA layer, training: bytes saved for backward (x and the weights excluded)")
    ref_grad = None
    for name, f in train_fns.items():
        nbytes, out = saved_bytes(f)
        nbytes -= xg.untyped_storage().nbytes() + sum(
            p.untyped_storage().nbytes() for p in layer.parameters()
        )
        (g,) = torch.autograd.grad(out, [xg], grad_out)
        ref_grad = g if ref_grad is None else ref_grad
        print(
            f"  {name:<12} {nbytes / 2**20:7.1f} MB   (= {nbytes / (B * 196 * 192 * 4):.1f} x B*N*C floats)"
            f"   max |dx - dx_explicit| = {(g - ref_grad).abs().max().item():.1e}"
        )
    wrt = [xg] + list(layer.parameters())  # a training step needs all of them
    train_times = interleaved(
        {
            k: (lambda f=f: torch.autograd.grad(f(), wrt, grad_out, allow_unused=True))
            for k, f in train_fns.items()
        },
        max(3, repeats // 2),
    )
    report(f"GPSA layer forward + backward, [{B}, 196, 192]", train_times, "current")


def pieces_section(layer: GPSA, x: torch.Tensor, pos_raw: torch.Tensor, repeats: int) -> None:
    """The isolated pieces of the current path and the SDPA head-shape question (inference)."""
    B = x.shape[0]
    with torch.inference_mode():
        h, d, N = layer.num_heads, layer.head_dim, 196
        qkv = layer._qkv(x).view(B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        pos = layer.positional_attention()
        v_cols = qkv[:, :, 2].permute(2, 1, 0, 3).reshape(h, N, B * d)
        content = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        positional = torch.bmm(pos, v_cols).view(h, N, B, d).permute(2, 1, 0, 3)
        g = layer.gate().view(1, 1, h, 1)
        out = torch.lerp(content, positional, g)
        q3, k3, v3 = torch.randn(3, B, 197, 3, 64).permute(0, 1, 3, 2, 4).unbind(0)
        q4, k4, v4 = torch.randn(3, B, 197, 4, 48).permute(0, 1, 3, 2, 4).unbind(0)
        parts = interleaved(
            {
                "qk+v two matmuls": lambda: (layer.qk(x), layer.v(x)),
                "fused qkv matmul": lambda: layer._qkv(x),
                "sdpa 4x48 N196 (GPSA)": lambda: F.scaled_dot_product_attention(q, k, v),
                "sdpa 4x48 N197": lambda: F.scaled_dot_product_attention(q4, k4, v4),
                "sdpa 3x64 N197 (DeiT)": lambda: F.scaled_dot_product_attention(q3, k3, v3),
                "v copy to [h,N,B*d]": lambda: qkv[:, :, 2].permute(2, 1, 0, 3).reshape(h, N, B * d),
                "bmm P@v flushed": lambda: torch.bmm(pos, v_cols),
                "bmm P@v subnormals": lambda: torch.bmm(pos_raw, v_cols),
                "lerp mix": lambda: torch.lerp(content, positional, g),
                "proj": lambda: layer.proj(out.reshape(B, N, 192)),
                "P (no cache)": lambda: (layer.clear_cache(), layer.positional_attention()),
            },
            repeats,
        )
        report("pieces of the current path", parts)


def model_level_section(model: torch.nn.Module, cache: dict, batch: int, repeats: int) -> None:
    """Whole convit_tiny forwards with the v0 / v1 / current GPSA layers, and deit_tiny's."""
    with torch.inference_mode():
        xi = torch.randn(batch, 3, 224, 224)
        gpsa = [blk.attn for blk in model.gpsa_blocks()]

        def with_forward(kind):
            def run():
                for a in gpsa:
                    if kind == "current":
                        a.forward = GPSA.forward.__get__(a)
                    else:
                        a.forward = lambda t, a=a, fl=(kind == "v1"): forward_v0(a, t, fl, cache)
                model(xi)

            return run

        deit = convit.create_model("deit_tiny").eval()
        mt = interleaved(
            {
                "v0_initial": with_forward("v0"),
                "v1_flush": with_forward("v1"),
                "current": with_forward("current"),
                "deit_tiny": lambda: deit(xi),
            },
            max(3, repeats // 5),
        )
        report(f"convit_tiny forward, inference, batch {batch}", mt, "current")


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    B = args.batch
    model = convit.create_model("convit_tiny").eval()  # timm/official init (local init on)
    layer = model.blocks[0].attn
    deit_attn = convit.create_model("deit_tiny").eval().blocks[0].attn
    x = torch.randn(B, 196, 192)
    x197 = torch.randn(B, 197, 192)
    cache: dict = {}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {B}")
    with torch.inference_mode():
        pos_raw = positional_unflushed(layer)
    tiny = torch.finfo(torch.float32).tiny
    print(
        f"P of block 0 at init: {int(((pos_raw > 0) & (pos_raw < tiny)).sum())} subnormal entries "
        f"of {pos_raw.numel()}"
    )
    if not args.train_only:
        inference_section(layer, deit_attn, x, x197, cache, args.repeats)
    training_section(layer, x, args.repeats)
    if args.train_only:
        return
    pieces_section(layer, x, pos_raw, args.repeats)
    if args.model_level:
        model_level_section(model, cache, B, args.repeats)


if __name__ == "__main__":
    main()
