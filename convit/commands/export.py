"""``convit export``: write a checkpoint's eval-mode model for other tools.

``--format onnx`` (the default): one ONNX file (input ``images`` [B, C, H, W], output
``logits`` [B, classes], dynamic batch size), written by PyTorch's dynamo-based exporter;
needs the ``onnx`` and ``onnxscript`` packages (``pip install 'convit[onnx]'``).
``--format timm``: a folder in the layout of timm's hub repositories, ``model.safetensors`` +
``config.json``, which ``timm.create_model('local-dir:FOLDER', pretrained=True)`` (or
``'hf-hub:owner/name'`` once uploaded) rebuilds with timm's own classes; the mapping lives in
:mod:`convit.hub`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..hub import export_timm, timm_architecture
from ..zoo import load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="the .onnx file to write (onnx), or the folder for model.safetensors + config.json (timm)")
    p.add_argument("--format", choices=("onnx", "timm"), default="onnx",
                   help="onnx (default): an ONNX graph; timm: timm's hub layout (model.safetensors + config.json)")
    p.add_argument("--model", default=None, help="zoo name (needed for foreign DeiT files)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18, the exporter's own)")
    p.add_argument("--fixed-size", action="store_true",
                   help="timm: export a dynamic_img_size ConViT for its trained size only (timm's ConVit "
                        "has a fixed input size)")


def export_onnx(model: torch.nn.Module, path: Path, opset: int = 18) -> Path:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis.

    PyTorch's dynamo-based exporter (``torch.export`` underneath): the one PyTorch maintains,
    and the default since torch 2.9; the TorchScript-based exporter is deprecated. The graph has
    a fixed image size. The weights sit inside the file, except beyond 1 GB of them (ONNX files
    are protobufs, capped at 2 GB), where they go to ``PATH.data`` beside it; every zoo model
    fits (convit_base_plus: 0.57 GB). GPSA's inference cache of P is bypassed while exporting,
    so the file holds the weights' P, not a stale copy (tests/test_tracing.py).
    """
    try:
        import onnx  # noqa: F401  (the exporter needs both to build and serialise the graph)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ValueError("ONNX export needs the onnx and onnxscript packages: "
                         "pip install 'convit[onnx]' (or pip install onnx onnxscript)") from None
    cfg = model.cfg
    example = torch.zeros(2, cfg.in_chans, *cfg.img_size)
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > 2**30
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model.eval().cpu(), (example,), str(path), dynamo=True, verbose=False,
                          external_data=external,
                          input_names=["images"], output_names=["logits"], opset_version=opset,
                          # by position, so it holds whatever the forward's argument is called
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    return path


def run(args: argparse.Namespace) -> int:
    model, info = load_model(args.checkpoint, args.model, args.img_size)
    if args.format == "timm":
        out = export_timm(model, args.output, label_names=info["class_names"], fixed_size=args.fixed_size)
        arch = timm_architecture(model.cfg, model.pretrained_cfg.get("architecture"))
        print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'} (timm architecture {arch}); "
              f"load with timm.create_model('local-dir:{out}', pretrained=True)")
        return 0
    path = export_onnx(model, Path(args.output), args.opset)
    print(f"wrote {path} (input images [batch, {model.cfg.in_chans}, {model.cfg.img_size[0]}, "
          f"{model.cfg.img_size[1]}], output logits [batch, {model.num_classes}])")
    return 0
