"""What benchmarks/bench_speed.py times: ours and timm's ConViT and DeiT of one size with the
same weights (checked to give the same logits), and one inference or training step of each."""

from __future__ import annotations

from typing import Optional

# -- models --------------------------------------------------------------------------------
COMPETITORS = ("ours_convit", "timm_convit", "ours_deit", "timm_deit")


def build_models(size: str, device: str, only: Optional[list[str]], check: bool, img: int):
    """{name: (model, forward-MACs per image)} with timm's weights copied into ours."""
    import timm
    import torch

    import convit
    from convit.commands.models import flops
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
        steps[name], _ = make_step(m, mode, x, y, dtype, args.device)
    return steps, batch
