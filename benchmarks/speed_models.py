"""What benchmarks/bench_speed.py times: ours and timm's ConViT and DeiT of one size with the
same weights (checked to give the same logits), and one inference or training step of each.

Optional competitors: ``ours_convit_nokernel`` (a copy of ours_convit whose steps run with the
fused GPSA kernel switched off, ``convit.nn.triton_gpsa.enabled(False)``: on CUDA the two show
the kernel's effect) and, for ``small``, ``ours_deit_w432`` (a DeiT as wide as ConViT-S, 9 heads
x 48 = 432, random weights: the same width, so the ratio shows GPSA's cost alone)."""

from __future__ import annotations

import copy
from typing import Optional

# -- models --------------------------------------------------------------------------------
COMPETITORS = ("ours_convit", "timm_convit", "ours_deit", "timm_deit")
NOKERNEL = "ours_convit_nokernel"
DEIT_W432 = "ours_deit_w432"


def extra_models(size: str, device: str, models: dict, kernel_both: bool, deit_w432: bool) -> dict:
    """``models`` with the optional competitors added (ours_convit_nokernel after ours_convit)."""
    import torch

    import convit
    from convit.nn.arithmetic import flops

    out = {}
    for name, entry in models.items():
        out[name] = entry
        if name == "ours_convit" and kernel_both:
            out[NOKERNEL] = (copy.deepcopy(entry[0]), entry[1])
    if deit_w432 and size == "small":
        torch.manual_seed(0)
        wide = convit.create_model("deit_small", embed_dim=432, num_heads=9)
        out[DEIT_W432] = (wide.to(device), flops(wide.cfg))
    return out


def kernel_off(name: str, gpsa_kernel: str) -> bool:
    """Whether ``name``'s steps run with the fused GPSA kernel switched off."""
    return gpsa_kernel == "off" or name == NOKERNEL


def build_models(
    size: str,
    device: str,
    only: Optional[list[str]],
    check: bool,
    img: int,
    kernel_both: bool = False,
    deit_w432: bool = False,
):
    """{name: (model, forward-MACs per image)} with timm's weights copied into ours (and the
    optional competitors of :func:`extra_models`)."""
    import timm
    import torch

    import convit
    from convit.nn.arithmetic import flops
    from convit.weights.checkpoint import load_into

    models = {}
    for kind, timm_name in (("convit", f"convit_{size}"), ("deit", f"deit_{size}_patch16_224")):
        torch.manual_seed(0)
        ref = timm.create_model(timm_name)
        ours = convit.create_model(f"{kind}_{size}")
        load_into(ours, ref.state_dict(), source=f"timm {timm_name}")
        macs = flops(ours.cfg)
        if check:
            x = torch.randn(2, 3, img, img)
            with torch.inference_mode():
                diff = (ours.eval()(x) - ref.eval()(x)).abs().max().item()
            print(f"  check {kind}_{size}: max |logits ours - timm| = {diff:.2e}", flush=True)
            if diff > 1e-3:
                raise SystemExit(
                    f"ours and timm disagree on {kind}_{size} ({diff}); not timing different functions"
                )
        models[f"ours_{kind}"] = (ours.to(device), macs)
        models[f"timm_{kind}"] = (ref.to(device), macs)
    models = extra_models(size, device, models, kernel_both, deit_w432)
    if only:
        models = {k: v for k, v in models.items() if k in only}
    return models


def make_step(model, mode: str, x, y, autocast_dtype, device: str):
    import torch
    import torch.nn.functional as F

    ac = (
        (lambda: torch.autocast(device_type=device, dtype=autocast_dtype))
        if autocast_dtype is not None
        else (lambda: torch.autocast(device_type=device, enabled=False))
    )
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), ac():
                model(x)

        return step, None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.05)

    def step():
        with ac():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # no gradients alive between steps: the memory
        # measured for one step includes them

    return step, opt


def prepare_steps(models: dict, mode: str, args) -> tuple[dict, int]:
    import torch

    batch = args.batch if mode == "infer" else args.train_batch
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=args.device)
    y = torch.randint(0, 1000, (batch,), device=args.device)
    steps = {}
    for name, (model, _) in models.items():
        m = torch.compile(model) if args.compile else model
        step, _ = make_step(m, mode, x, y, dtype, args.device)
        steps[name] = without_kernel(step) if kernel_off(name, getattr(args, "gpsa_kernel", "on")) else step
    return steps, batch


def without_kernel(step):
    """``step`` run with the fused GPSA kernel switched off (FastGPSA's torch path)."""
    from convit.nn.triton_gpsa import enabled

    def run():
        with enabled(False):
            step()

    return run
