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
from string import Template
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from safetensors import safe_open

from ..checkpoint import read_metadata_json
from ..data import build_data, eval_transform, load_image
from ..fileio import read_jsonl as read_log
from ..model import ConViT, ConViTConfig
from ..zoo import create_model
from . import figures  # not `as F`: F is torch.nn.functional's alias everywhere else
from .locality import attention_grids, locality_summary
from .masking import masking_table

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
            bundle = build_data(dataset, data_path=data.get("data_path"), img_size=size[0],
                                augment="none")
            test_set = bundle.test
            n = min(max_images, len(test_set))
            test_images = torch.stack([test_set[i][0] for i in range(n)])
        except Exception as e:  # dataset not available here: fall back, and say so
            note = f"test set of {dataset!r} unavailable ({type(e).__name__}: {e})"
    if image is not None:
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
# The page is a string.Template filled with escaped values and small generated tables: no
# template engine to depend on, and the layout reads as HTML rather than string sums.

_PAGE = Template("""<!DOCTYPE html>
<html><head><meta charset='utf-8'><title>$title</title>
<style>
body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}
th{background:#eee}img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#444;font-size:13px}
.note{color:#a40}
</style></head>
<body>
<h1>$title</h1>
<p>checkpoint <code>$checkpoint</code>; $depth blocks ($gpsa GPSA), $heads heads, embed dim $dim,
patch grid $grid_h&times;$grid_w; measures on $n_images images ($images_source); attention maps on
the $image_source.</p>
$sections
<h2>Figures</h2>
$figures
</body></html>
""")
_NOTE = Template("<p class='note'>Note: $note</p>")
_SECTION = Template("<h2>$title</h2>\n$intro$table")
_FIGURE = Template("<figure><img src='data:image/png;base64,$png' alt='$name'><figcaption>$caption</figcaption>"
                   "</figure>")
_GATES_INTRO = ("<p>Gate &sigma;(&lambda;<sub>h</sub>): weight of the positional attention (eq. 6). Nonlocality D "
                "(eq. 8, patches): mean over heads of the attention-weighted distance between query and key "
                "patches, on each layer's own input; MHSA layers: class token removed, rows renormalised over "
                "patches.</p>")
_CENTRES_INTRO = ("<p>Centre &Delta; = &minus;(v<sub>dx</sub>, v<sub>dy</sub>)/(2 v<sub>d2</sub>) in patches (dx, dy); "
                  "span 1/|v<sub>d2</sub>|.</p>")
_MASKING_INTRO = ("<p>Top-1 (%) on the test images with the content (&sigma;:=1) or positional (&sigma;:=0) part of "
                  "the first k GPSA layers masked, or the absolute position embedding removed.</p>")


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


def _section(title: str, intro: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    return _SECTION.substitute(title=html.escape(title), intro=intro, table=_table(header, rows))


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


def _layer_rows(summary: dict, init_summary: dict) -> List[List[str]]:
    """One row per block: type, gates, nonlocality (full, content, positional, at init, per head)."""
    rows, gi = [], 0
    for l, t in enumerate(summary["layer_types"]):
        gates = summary["gates"][gi] if t == "gpsa" else None
        rows.append([str(l + 1), t.upper(), _fmt(_mean(gates)) if gates else "–",
                     " ".join(_fmt(g, 2) for g in gates) if gates else "–",
                     _fmt(_mean(summary["nonlocality"][l]), 2), _fmt(_mean(summary["nonlocality_content"][l]), 2),
                     _fmt(_mean(summary["nonlocality_positional"][l]), 2),
                     _fmt(_mean(init_summary["nonlocality"][l]), 2),
                     " ".join(_fmt(v, 2) for v in summary["nonlocality"][l])])
        gi += t == "gpsa"
    return rows


def _centre(c) -> str:
    return "no peak" if c is None or None in c else f"({c[0]:+.2f}, {c[1]:+.2f})"


def _centre_rows(summary: dict, init_summary: dict) -> List[List[str]]:
    """One row per GPSA head: centre and span at init and after training."""
    ic, isp = init_summary["centres"], init_summary["spans"]
    rows = []
    for l, (cs, ss) in enumerate(zip(summary["centres"], summary["spans"])):
        for h, (c, s) in enumerate(zip(cs, ss)):
            c0 = ic[l][h] if l < len(ic) else None
            s0 = isp[l][h] if l < len(isp) else None
            rows.append([str(l + 1), str(h + 1), _centre(c0), _fmt(s0, 2), _centre(c), _fmt(s, 2)])
    return rows


def _write_html(path: Path, title: str, model: ConViT, inputs: AnalysisInputs, summary: dict,
                init_summary: dict, runs: List[Tuple[str, List[dict]]], figures: List[Tuple[Path, str]],
                masking: Optional[List[dict]], checkpoint: Path) -> Path:
    cfg = model.cfg
    sections = [_NOTE.substitute(note=html.escape(inputs.note))] if inputs.note else []
    metrics = _metrics_rows(runs)
    if metrics:
        sections.append(_section("Accuracy", "", ["run", "last epoch", "train loss", "val top-1 (last)",
                                                  "val top-1 (best)", "test top-1", "test top-5"], metrics))
    sections.append(_section("Gates and nonlocality per layer", _GATES_INTRO,
                             ["layer", "type", "mean gate", "gates per head", "D", "D content", "D positional",
                              "D fresh init", "D per head"], _layer_rows(summary, init_summary)))
    if summary["centres"]:
        sections.append(_section("Positional attention centres and spans", _CENTRES_INTRO,
                                 ["GPSA layer", "head", "centre at init", "span at init", "centre trained",
                                  "span trained"], _centre_rows(summary, init_summary)))
    if masking:
        sections.append(_section("Test-time masking", _MASKING_INTRO, ["masked", "k", "position embedding", "top-1"],
                                 [[r["mode"], str(r["k"]), "removed" if r["remove_pos_embed"] else "kept",
                                   _fmt(r["top1"], 2)] for r in masking]))
    figs = [_FIGURE.substitute(png=base64.b64encode(Path(p).read_bytes()).decode("ascii"),
                               name=html.escape(Path(p).name), caption=html.escape(caption)) for p, caption in figures]
    doc = _PAGE.substitute(
        title=html.escape(title), checkpoint=html.escape(str(checkpoint)), depth=cfg.depth,
        gpsa=cfg.local_up_to_layer, heads=cfg.num_heads, dim=cfg.embed_dim, grid_h=cfg.grid[0], grid_w=cfg.grid[1],
        n_images=summary["num_images"], images_source=html.escape(inputs.images_source),
        image_source=html.escape(inputs.source), sections="\n".join(sections), figures="\n".join(figs))
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
    checkpoint, output = Path(checkpoint), Path(output)
    model = create_model(model_name, checkpoint_path=checkpoint).eval()
    layers, heads = _check_indices(model, layers, heads)
    output.mkdir(parents=True, exist_ok=True)
    inputs = load_inputs(model.cfg, _read_metadata(checkpoint), image, max_images)
    summary = locality_summary(model, inputs.images, max_images)
    init_summary = locality_summary(_fresh_model(model.cfg), inputs.images, max_images)
    log_paths = [Path(p) for p in logs]
    runs = list(zip(_unique_labels(log_paths), [read_log(p) for p in log_paths]))
    own = checkpoint.parent.name or "model"
    grid = model.cfg.grid
    q = tuple(query) if query is not None else (grid[0] // 2, grid[1] // 2)
    written = (_summary_figures(model, runs, summary, init_summary, output, own)
               + _attention_figures(model, inputs, q, layers, heads, output))
    paths = [p for p, _ in written]
    summary_path = output / "locality.json"
    summary_path.write_text(json.dumps({"analysed": summary, "fresh_init": init_summary}, indent=1))
    paths.append(summary_path)
    table = _masking_on_inputs(model, inputs) if masking else None
    if table is not None:
        (output / "masking.json").write_text(json.dumps(table, indent=1))
        paths.append(output / "masking.json")
    if html_path is not None:
        paths.append(_write_html(Path(html_path), title or f"ConViT analysis: {own}", model, inputs,
                                 summary, init_summary, runs, written, table, checkpoint))
    return paths


def _check_indices(model: ConViT, layers: Optional[Sequence[int]], heads: Optional[Sequence[int]]
                   ) -> Tuple[List[int], List[int]]:
    """The blocks and heads to draw (defaults filled in); out-of-range indices are an error
    raised before anything is computed or written."""
    n_heads, depth = model.cfg.num_heads, len(model.blocks)
    heads = list(heads) if heads is not None else list(range(min(n_heads, MAX_DEFAULT_HEADS)))
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"head indices {bad} out of range: the model has {n_heads} heads")
    layers = list(layers) if layers is not None else _default_layers(model)
    bad = [l for l in layers if not 0 <= l < depth]
    if bad:
        raise ValueError(f"layer indices {bad} out of range: the model has {depth} blocks")
    return layers, heads


def _summary_figures(model: ConViT, runs: List[Tuple[str, List[dict]]], summary: dict, init_summary: dict,
                     output: Path, own: str) -> List[Tuple[Path, str]]:
    """Nonlocality over training and per layer, training curves, gates, centres: (path, caption)."""
    written = []
    if runs:
        written += [(figures.plot_nonlocality_history(runs, output / "nonlocality_training.png"),
                     "Nonlocality (eq. 8) per layer over training, mean over heads (paper fig. 5)."),
                    (figures.plot_training_curves(runs, output / "training_curves.png"), "Loss and top-1 per epoch.")]
    written.append((figures.plot_final_nonlocality(summary, output / "nonlocality_layers.png", init_summary,
                                                   title=f"{own}: nonlocality per layer and head (eq. 8)"),
                    "Nonlocality of the analysed model per layer and head, with the content and positional "
                    "parts of GPSA layers and a freshly initialised model of the same config."))
    if model.local_up_to_layer > 0:
        written += [(figures.plot_gates(runs, summary["gates"], output / "gates.png"),
                     "GPSA gates over training and in the analysed model (paper fig. 6)."),
                    (figures.plot_centres((init_summary["centres"], init_summary["spans"]),
                                          (summary["centres"], summary["spans"]), output / "centres_spans.png",
                                          grid=model.cfg.grid),
                     "Attention centres and spans of the positional attention at init and after training.")]
    return written


def _attention_figures(model: ConViT, inputs: AnalysisInputs, q: Tuple[int, int], layers: List[int],
                       heads: List[int], output: Path) -> List[Tuple[Path, str]]:
    """The attention maps of ``layers`` from the query patch ``q`` (paper fig. 7): (path, caption)."""
    grids = attention_grids(model, inputs.image, q)
    note = inputs.source + (f" ({inputs.note})" if inputs.note else "")
    written = []
    for l in layers:
        t = "gpsa" if model.blocks[l].use_gpsa else "mhsa"
        written.append((figures.plot_attention_maps(grids[l], inputs.display, q, l,
                                                    output / f"attention_layer{l + 1}.png", heads=heads, note=note,
                                                    patch_size=model.cfg.patch_size),
                        f"Attention of layer {l + 1} ({t.upper()}) from the query patch {q} on {inputs.source} "
                        "(paper fig. 7)."))
    return written


def _masking_on_inputs(model: ConViT, inputs: AnalysisInputs) -> Optional[List[dict]]:
    """Test-time masking table on the whole test split of the checkpoint's dataset (None when
    that split could not be loaded)."""
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
