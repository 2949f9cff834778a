"""``convit export``: write a checkpoint's eval-mode model for other tools.

``--format onnx`` (the default): one ONNX file (input ``images`` [B, C, H, W], output
``logits`` [B, classes], dynamic batch size); needs the ``onnx`` package.
``--format timm``: a folder in the layout of timm's hub repositories, ``model.safetensors`` +
``config.json``, which ``timm.create_model('local-dir:FOLDER', pretrained=True)`` (or
``'hf-hub:owner/name'`` once uploaded) rebuilds with timm's own classes; the mapping lives in
:mod:`convit.hub`.
"""
from __future__ import annotations

import argparse
import warnings
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
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--fixed-size", action="store_true",
                   help="timm: export a dynamic_img_size ConViT for its trained size only (timm's ConVit "
                        "has a fixed input size)")


def export_onnx(model: torch.nn.Module, path: Path, opset: int = 17) -> Path:
    """Trace ``model`` (eval mode) with the TorchScript-based exporter, batch axis dynamic."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it to serialise)
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install onnx") from None
    cfg = model.cfg
    dummy = torch.zeros(2, cfg.in_chans, *cfg.img_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The input checks of PatchEmbed/GPSA become constants of the trace: expected, since
        # the exported graph has a fixed image size (only the batch axis is dynamic).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model.eval().cpu(), (dummy,), str(path), input_names=["images"],
                          output_names=["logits"], opset_version=opset, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
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
