"""From a checkpoint (and training logs) to figures and a self-contained HTML report.

:func:`analyze` does the work of ``convit analyze``; :func:`write_run_report` is what the
trainer calls at the end of a run (figures into ``run_dir/figures/``, ``run_dir/report.html``).
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import read_metadata_json
from ..fileio import read_jsonl as read_log
from ..model import ConViT, ConViTConfig
from . import figures as F
from .locality import attention_grids, locality_summary

__all__ = ["read_log", "run_label", "load_inputs", "AnalysisInputs", "analyze", "write_run_report"]

MAX_DEFAULT_HEADS = 8  # attention-map figures show at most this many heads unless asked


# -- logs -------------------------------------------------------------------------------------

def run_label(log_path: Path) -> str:
    """A run's name for legends: its directory name (the log's parent)."""
    p = Path(log_path).resolve()
    return p.parent.name or p.stem


def _unique_labels(paths: Sequence[Path]) -> List[str]:
    labels = [run_label(p) for p in paths]
    for i, l in enumerate(labels):
        if labels.count(l) > 1:
            p = Path(paths[i]).resolve()
            labels[i] = f"{p.parent.parent.name}/{p.parent.name}"
    return labels


# -- model and inputs -------------------------------------------------------------------------

def _read_metadata(path: Path) -> dict:
    """Header metadata of one of our safetensors files without loading the tensors ({} else)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@dataclass
class AnalysisInputs:
    """What the analysis needs besides the model: images (normalised for the model), one image
    to draw attention maps on (normalised, and in [0, 1] for display) and where they came from."""

    images: torch.Tensor  # [B, C, H, W] for the locality measures
    image: torch.Tensor  # [C, H, W] for the attention maps
    display: np.ndarray  # [C, H, W] in [0, 1]
    source: str  # where ``image`` comes from
    images_source: str = ""  # where ``images`` come from
    note: str = ""
    data: dict = field(default_factory=dict)
    test_set: Optional[torch.utils.data.Dataset] = None  # the dataset's test split, if loaded


def load_inputs(cfg: ConViTConfig, meta: dict, image: Optional[Path] = None,
                max_images: int = 64) -> AnalysisInputs:
    """Images for the analysis, in this order of preference:

    1. ``image`` (a file), preprocessed with ``convit.data.eval_transform`` and the checkpoint's
       ``data`` metadata (img_size, mean, std, in_chans); the locality measures then use it too
       unless the dataset's test images can be loaded;
    2. the first ``max_images`` test images of the dataset the metadata names (if available);
    3. random normal inputs, with a note saying so.
    """
    data = read_metadata_json(meta, "data", {}) or {}
    size = cfg.img_size
    in_chans = cfg.in_chans
    mean = torch.tensor(data.get("mean", [0.0] * in_chans), dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(data.get("std", [1.0] * in_chans), dtype=torch.float32).view(-1, 1, 1)

    def display(x: torch.Tensor) -> np.ndarray:
        d = x * std + mean
        if not data.get("mean"):  # unknown normalisation: stretch to [0, 1] for display
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-8)
        return d.clamp(0, 1).numpy()

    test_images: Optional[torch.Tensor] = None
    test_set = None
    note = ""
    dataset = data.get("dataset")
    if dataset:
        try:
            from ..data import build_data

            bundle = build_data(dataset, data_path=data.get("data_path"), img_size=size[0],
                                augment="none")
            test_set = bundle.test
            n = min(max_images, len(test_set))
            test_images = torch.stack([test_set[i][0] for i in range(n)])
        except Exception as e:  # dataset not available here: fall back, and say so
            note = f"test set of {dataset!r} unavailable ({type(e).__name__}: {e})"
    if image is not None:
        from ..data import eval_transform, load_image

        if not data.get("mean"):
            raise ValueError("the checkpoint has no 'data' metadata (mean/std): cannot preprocess --image")
        t = eval_transform(size[0], data["mean"], data["std"], in_chans, data.get("native_size"))
        x = t(load_image(image)).float()
        if tuple(x.shape[-2:]) != tuple(size):
            x = torch.nn.functional.interpolate(x[None], size=tuple(size), mode="bilinear")[0]
        if test_images is not None:
            return AnalysisInputs(test_images, x, display(x), f"image {Path(image).name}",
                                  f"test images of {dataset}", note, data, test_set)
        return AnalysisInputs(x[None], x, display(x), f"image {Path(image).name}",
                              f"image {Path(image).name}", note, data, test_set)
    if test_images is not None:
        return AnalysisInputs(test_images, test_images[0], display(test_images[0]),
                              f"first test image of {dataset}", f"test images of {dataset}", note,
                              data, test_set)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(min(max_images, 8), in_chans, *size, generator=g)
    note = (note + "; " if note else "") + "random N(0,1) inputs: content attention is not meaningful"
    return AnalysisInputs(images, images[0], display(images[0]), "random input", "random inputs", note, data)


def _fresh_model(cfg: ConViTConfig) -> ConViT:
    """A newly initialised model of the same config (its GPSA layers at the convolutional init
    when ``use_local_init``), built without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ConViT(cfg)


def _default_layers(model: ConViT) -> List[int]:
    """First and last GPSA block and the first MHSA block (ConViT), or first and last (DeiT)."""
    depth, k = len(model.blocks), model.local_up_to_layer
    layers = [0, k - 1, k] if k > 0 else [0, depth - 1]
    return sorted({l for l in layers if 0 <= l < depth})


# -- HTML -------------------------------------------------------------------------------------

def _fmt(x, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return html.escape(str(x))


def _mean(xs) -> Optional[float]:
    vals = [v for v in (xs or []) if v is not None]
    return float(np.mean(vals)) if vals else None


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _metrics_rows(runs: List[Tuple[str, List[dict]]]) -> List[List[str]]:
    rows = []
    for name, entries in runs:
        if not entries:
            continue
        last = entries[-1]
        vals = [e["val_top1"] for e in entries if isinstance(e.get("val_top1"), (int, float))]
        rows.append([html.escape(name), _fmt(last.get("epoch")), _fmt(last.get("train_loss")),
                     _fmt(last.get("val_top1"), 2), _fmt(max(vals) if vals else None, 2),
                     _fmt(last.get("test_top1"), 2), _fmt(last.get("test_top5"), 2)])
    return rows


def _write_html(path: Path, title: str, model: ConViT, inputs: AnalysisInputs, summary: dict,
                init_summary: dict, runs: List[Tuple[str, List[dict]]], figures: List[Tuple[Path, str]],
                masking: Optional[List[dict]], checkpoint: Path) -> Path:
    cfg = model.cfg
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>checkpoint <code>{html.escape(str(checkpoint))}</code>; {cfg.depth} blocks "
             f"({cfg.local_up_to_layer} GPSA), {cfg.num_heads} heads, embed dim {cfg.embed_dim}, "
             f"patch grid {cfg.grid[0]}&times;{cfg.grid[1]}; measures on {summary['num_images']} "
             f"images ({html.escape(inputs.images_source)}); attention maps on the "
             f"{html.escape(inputs.source)}.</p>"]
    if inputs.note:
        parts.append(f"<p class='note'>Note: {html.escape(inputs.note)}</p>")
    metrics = _metrics_rows(runs)
    if metrics:
        parts.append("<h2>Accuracy</h2>" + _table(
            ["run", "last epoch", "train loss", "val top-1 (last)", "val top-1 (best)", "test top-1",
             "test top-5"], metrics))
    rows = []
    gi = 0
    for l, t in enumerate(summary["layer_types"]):
        gates = summary["gates"][gi] if t == "gpsa" else None
        rows.append([str(l + 1), t.upper(),
                     _fmt(_mean(gates)) if gates else "–",
                     " ".join(_fmt(g, 2) for g in gates) if gates else "–",
                     _fmt(_mean(summary["nonlocality"][l]), 2),
                     _fmt(_mean(summary["nonlocality_content"][l]), 2),
                     _fmt(_mean(summary["nonlocality_positional"][l]), 2),
                     _fmt(_mean(init_summary["nonlocality"][l]), 2),
                     " ".join(_fmt(v, 2) for v in summary["nonlocality"][l])])
        gi += t == "gpsa"
    parts.append("<h2>Gates and nonlocality per layer</h2>"
                 "<p>Gate &sigma;(&lambda;<sub>h</sub>): weight of the positional attention (eq. 6). "
                 "Nonlocality D (eq. 8, patches): mean over heads of the attention-weighted distance "
                 "between query and key patches, on each layer's own input; MHSA layers: class token "
                 "removed, rows renormalised over patches.</p>" + _table(
                     ["layer", "type", "mean gate", "gates per head", "D", "D content", "D positional",
                      "D fresh init", "D per head"], rows))
    if summary["centres"]:
        ic, isp = init_summary["centres"], init_summary["spans"]
        rows = []
        for l, (cs, ss) in enumerate(zip(summary["centres"], summary["spans"])):
            for h, (c, s) in enumerate(zip(cs, ss)):
                c0 = ic[l][h] if l < len(ic) else None
                s0 = isp[l][h] if l < len(isp) else None
                fmt_c = lambda c: "no peak" if c is None or None in c else f"({c[0]:+.2f}, {c[1]:+.2f})"
                rows.append([str(l + 1), str(h + 1), fmt_c(c0), _fmt(s0, 2), fmt_c(c), _fmt(s, 2)])
        parts.append("<h2>Positional attention centres and spans</h2>"
                     "<p>Centre &Delta; = &minus;(v<sub>dx</sub>, v<sub>dy</sub>)/(2 v<sub>d2</sub>) "
                     "in patches (dx, dy); span 1/|v<sub>d2</sub>|.</p>" + _table(
                         ["GPSA layer", "head", "centre at init", "span at init", "centre trained",
                          "span trained"], rows))
    if masking:
        parts.append("<h2>Test-time masking</h2><p>Top-1 (%) on the test images with the content "
                     "(&sigma;:=1) or positional (&sigma;:=0) part of the first k GPSA layers masked, "
                     "or the absolute position embedding removed.</p>" + _table(
                         ["masked", "k", "position embedding", "top-1"],
                         [[r["mode"], str(r["k"]), "removed" if r["remove_pos_embed"] else "kept",
                           _fmt(r["top1"], 2)] for r in masking]))
    parts.append("<h2>Figures</h2>")
    for fig_path, caption in figures:
        b64 = base64.b64encode(Path(fig_path).read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(fig_path.name)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "font-size:13px}th{background:#eee}img{max-width:100%}figure{margin:1.5em 0}"
             "figcaption{color:#444;font-size:13px}.note{color:#a40}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path


# -- the analysis -----------------------------------------------------------------------------

def analyze(checkpoint: Path, logs: Sequence[Path] = (), image: Optional[Path] = None,
            output: Path = Path("analysis"), layers: Optional[Sequence[int]] = None,
            heads: Optional[Sequence[int]] = None, query: Optional[Tuple[int, int]] = None,
            html_path: Optional[Path] = None, masking: bool = False, max_images: int = 64,
            title: Optional[str] = None, model_name: Optional[str] = None) -> List[Path]:
    """Write the analysis figures of ``checkpoint`` (and of the runs in ``logs``) into ``output``.

    layers / heads: 0-based block and head indices for the attention-map figures (default:
    first and last GPSA and first MHSA block; all heads up to 8).  query: (row, col) of the
    query patch (default: the centre of the grid).  html_path: also write the HTML report there.
    masking: also evaluate test-time masking on the test split (HTML and ``masking.json``).
    model_name: zoo name, for foreign checkpoints whose architecture cannot be inferred (DeiT).
    Returns the paths written (PNGs, then the HTML).
    """
    from ..zoo import create_model

    checkpoint = Path(checkpoint)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = create_model(model_name, checkpoint_path=checkpoint)
    model.eval()
    meta = _read_metadata(checkpoint)
    inputs = load_inputs(model.cfg, meta, image, max_images)

    summary = locality_summary(model, inputs.images, max_images)
    fresh = _fresh_model(model.cfg)
    init_summary = locality_summary(fresh, inputs.images, max_images)
    log_paths = [Path(p) for p in logs]
    runs = list(zip(_unique_labels(log_paths), [read_log(p) for p in log_paths]))
    own = checkpoint.parent.name or "model"
    written: List[Tuple[Path, str]] = []

    def add(path: Path, caption: str) -> None:
        written.append((path, caption))

    if runs:
        add(F.plot_nonlocality_history(runs, output / "nonlocality_training.png"),
            "Nonlocality (eq. 8) per layer over training, mean over heads (paper fig. 5).")
        add(F.plot_training_curves(runs, output / "training_curves.png"), "Loss and top-1 per epoch.")
    add(F.plot_final_nonlocality(summary, output / "nonlocality_layers.png", init_summary,
                                 title=f"{own}: nonlocality per layer and head (eq. 8)"),
        "Nonlocality of the analysed model per layer and head, with the content and positional "
        "parts of GPSA layers and a freshly initialised model of the same config.")
    if model.local_up_to_layer > 0:
        add(F.plot_gates(runs, summary["gates"], output / "gates.png"),
            "GPSA gates over training and in the analysed model (paper fig. 6).")
        add(F.plot_centres((init_summary["centres"], init_summary["spans"]),
                           (summary["centres"], summary["spans"]), output / "centres_spans.png",
                           grid=model.cfg.grid),
            "Attention centres and spans of the positional attention at init and after training.")
    grid = model.cfg.grid
    q = tuple(query) if query is not None else (grid[0] // 2, grid[1] // 2)
    grids = attention_grids(model, inputs.image, q)
    n_heads = model.cfg.num_heads
    heads = list(heads) if heads is not None else list(range(min(n_heads, MAX_DEFAULT_HEADS)))
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"head indices {bad} out of range: the model has {n_heads} heads")
    layers = list(layers) if layers is not None else _default_layers(model)
    bad = [l for l in layers if not 0 <= l < len(model.blocks)]
    if bad:
        raise ValueError(f"layer indices {bad} out of range: the model has {len(model.blocks)} blocks")
    note = inputs.source + (f" ({inputs.note})" if inputs.note else "")
    for l in layers:
        t = "gpsa" if model.blocks[l].use_gpsa else "mhsa"
        add(F.plot_attention_maps(grids[l], inputs.display, q, l, output / f"attention_layer{l + 1}.png",
                                  heads=heads, note=note, patch_size=model.cfg.patch_size),
            f"Attention of layer {l + 1} ({t.upper()}) from the query patch {q} on {inputs.source} "
            "(paper fig. 7).")
    paths = [p for p, _ in written]
    summary_path = output / "locality.json"
    summary_path.write_text(json.dumps({"analysed": summary, "fresh_init": init_summary}, indent=1))
    paths.append(summary_path)
    table = None
    if masking:
        table = _masking_on_inputs(model, inputs)
        if table is not None:
            (output / "masking.json").write_text(json.dumps(table, indent=1))
            paths.append(output / "masking.json")
    if html_path is not None:
        paths.append(_write_html(Path(html_path), title or f"ConViT analysis: {own}", model, inputs,
                                 summary, init_summary, runs, written, table, checkpoint))
    return paths


def _masking_on_inputs(model: ConViT, inputs: AnalysisInputs) -> Optional[List[dict]]:
    """Test-time masking table on the whole test split of the checkpoint's dataset (None when
    that split could not be loaded)."""
    from .masking import masking_table

    if inputs.test_set is None:
        return None
    loader = torch.utils.data.DataLoader(inputs.test_set, batch_size=256)
    return masking_table(model, loader)


def write_run_report(run_dir: Path, checkpoint: Optional[Path] = None, image: Optional[Path] = None,
                     masking: bool = False) -> List[Path]:
    """Figures (``run_dir/figures/*.png``) and ``run_dir/report.html`` for one training run.

    Uses ``run_dir/log.jsonl`` and ``run_dir/model.safetensors`` (else ``best.safetensors``)
    unless ``checkpoint`` is given.  Returns the paths written.
    """
    run_dir = Path(run_dir)
    if checkpoint is None:
        for name in ("model.safetensors", "best.safetensors"):
            if (run_dir / name).is_file():
                checkpoint = run_dir / name
                break
        else:
            raise FileNotFoundError(f"no model.safetensors or best.safetensors in {run_dir}")
    log = run_dir / "log.jsonl"
    logs = [log] if log.is_file() else []
    return analyze(checkpoint, logs, image, run_dir / "figures", html_path=run_dir / "report.html",
                   masking=masking, title=f"ConViT run report: {run_dir.resolve().name}")
