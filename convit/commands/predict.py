"""``convit predict``: the top-k classes of image files, with probabilities.

Images are preprocessed exactly like the test set the model was evaluated on: size, channel
count, mean and std come from the checkpoint's metadata (written by ``convit train``).  For
foreign checkpoints (official / timm) the model's ``pretrained_cfg`` statistics (ImageNet's
for 3 channels) and DeiT's resize + centre crop are used, and classes are shown as indices.
"""
from __future__ import annotations

import argparse
import json
from typing import List

import torch

from ..data import eval_transform, load_image
from ..runtime import resolve_device
from ..zoo import load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--model", default=None, help="zoo name (needed for foreign DeiT files)")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per image")


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    device = resolve_device(args.device)
    model, info = load_model(args.checkpoint, args.model, device=str(device))
    data = info["data"] or {}
    cfg, pcfg = model.cfg, model.pretrained_cfg  # pcfg: timm-style defaults matching in_chans
    transform = eval_transform(int(data.get("img_size", cfg.img_size[0])),
                               data.get("mean", pcfg["mean"]), data.get("std", pcfg["std"]),
                               int(data.get("in_chans", cfg.in_chans)), data.get("native_size"))
    names: List[str] = info["class_names"] or [str(i) for i in range(model.num_classes)]
    k = min(args.topk, model.num_classes)
    batch = torch.stack([transform(load_image(path)) for path in args.images]).to(device)
    with torch.no_grad():
        probs = model(batch).float().softmax(dim=-1)
    top = probs.topk(k, dim=-1)
    for path, p, idx in zip(args.images, top.values.tolist(), top.indices.tolist()):
        preds = [{"class": names[i], "index": i, "prob": q} for i, q in zip(idx, p)]
        if args.json:
            print(json.dumps({"image": str(path), "top": preds}))
        else:
            print(f"{path}: " + ", ".join(f"{d['class']} {100 * d['prob']:.1f}%" for d in preds))
    return 0
