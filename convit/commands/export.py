"""``convit export``: write a checkpoint's eval-mode model for other tools.

``--format onnx`` (the default): one ONNX file (input ``images`` [B, C, H, W], output
``logits`` [B, classes], dynamic batch size), written by PyTorch's dynamo-based exporter;
needs the ``onnx`` and ``onnxscript`` packages (``pip install 'convit[onnx]'``).
``--format timm`` (alias ``hf``): a complete hub repo in a folder, ``model.safetensors`` +
``config.json`` + ``README.md`` (the model card), which timm (``'local-dir:FOLDER'``, or
``'hf-hub:owner/name'`` once uploaded), transformers (``AutoModelForImageClassification``,
``pipeline('image-classification')``) and convit (``checkpoint_path=FOLDER``) load; the mapping
lives in :mod:`convit.weights.timm_format`, the writing in :mod:`convit.weights.hub`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..nn.model import ConViT
from ..weights.hub import export_timm
from ..weights.zoo import load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="a weight file (in its run folder, config.yaml and log.jsonl go into the model card), "
        "an export folder, or hf-hub:org/repo / local-dir:PATH",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="PATH",
        help="the .onnx file to write (onnx), or the folder of the hub repo (timm)",
    )
    p.add_argument(
        "--format",
        choices=("onnx", "timm", "hf"),
        default="onnx",
        help="onnx (default): an ONNX graph; timm (or hf, the same): a hub repo folder, "
        "model.safetensors + config.json + README.md, for timm, transformers and convit",
    )
    p.add_argument(
        "--model", default=None, help="zoo name (needed for files without a config: timm's, official)"
    )
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument(
        "--opset", type=int, default=18, help="ONNX opset version (default 18, the exporter's own)"
    )
    p.add_argument(
        "--fixed-size",
        action="store_true",
        help="timm: export a dynamic_img_size ConViT for its trained size only (timm's ConVit "
        "has a fixed input size)",
    )


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
        raise ValueError(
            "ONNX export needs the onnx and onnxscript packages: "
            "pip install 'convit[onnx]' (or pip install onnx onnxscript)"
        ) from None
    cfg = model.cfg
    example = torch.zeros(2, cfg.in_chans, *cfg.img_size)
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > 2**30
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model.eval().cpu(),
            (example,),
            str(path),
            dynamo=True,
            verbose=False,
            external_data=external,
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset,
            # by position, so it holds whatever the forward's argument is called
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        )
    return path


def run(args: argparse.Namespace) -> int:
    model, info = load_model(args.checkpoint, args.model, args.img_size)
    if args.format in ("timm", "hf") and not isinstance(model, ConViT):
        raise ValueError(
            f"{args.checkpoint} holds a {type(model).__name__}, not a ConViT: timm's hub layout here "
            "describes ConViTs only (--format onnx exports any model)"
        )
    if args.format in ("timm", "hf"):
        metadata = {k: info[k] for k in ("data", "model_name") if info[k] is not None}
        out = export_timm(
            model,
            args.output,
            label_names=info["class_names"],
            fixed_size=args.fixed_size,
            metadata={**metadata, **info["results"]},
            checkpoint=info["file"],
        )
        arch = json.loads((out / "config.json").read_text())["architecture"]
        print(
            f"wrote {out / 'model.safetensors'}, {out / 'config.json'} and {out / 'README.md'} (timm "
            f"architecture {arch}); load with timm.create_model('local-dir:{out}', pretrained=True), "
            f"transformers.pipeline('image-classification', model='{out}') or "
            f"convit.create_model(checkpoint_path='{out}'); upload with huggingface_hub.upload_folder"
        )
        return 0
    path = export_onnx(model, Path(args.output), args.opset)
    print(
        f"wrote {path} (input images [batch, {model.cfg.in_chans}, {model.cfg.img_size[0]}, "
        f"{model.cfg.img_size[1]}], output logits [batch, {model.num_classes}])"
    )
    return 0
