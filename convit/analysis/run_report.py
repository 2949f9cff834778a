"""From a checkpoint (and training logs) to figures and a self-contained HTML report.

:func:`analyze` does the work of ``convit analyze``; :func:`write_run_report` is what the
trainer calls at the end of a run (figures into ``run_dir/figures/``, ``run_dir/report.html``).
The images analysed come from :mod:`.inputs`, the page is written by :mod:`.html_report`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from ..core.fileio import read_jsonl as read_log
from ..nn.model import ConViT, ConViTConfig
from ..weights.zoo import create_model
from . import attention_figures, figures  # not `as F`: F is torch.nn.functional's alias everywhere else
from .html_report import write_html
from .inputs import AnalysisInputs, load_inputs, read_metadata
from .locality import attention_grids, locality_summary
from .masking import masking_table

__all__ = ["read_log", "run_label", "load_inputs", "AnalysisInputs", "analyze", "write_run_report"]

MAX_DEFAULT_HEADS = 8  # attention-map figures show at most this many heads unless asked


# -- logs -------------------------------------------------------------------------------------


def run_label(log_path: Path) -> str:
    """A run's name for legends: its directory name (the log's parent)."""
    p = Path(log_path).resolve()
    return p.parent.name or p.stem


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    labels = [run_label(p) for p in paths]
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            p = Path(paths[i]).resolve()
            labels[i] = f"{p.parent.parent.name}/{p.parent.name}"
    return labels


# -- the model analysed -----------------------------------------------------------------------


def _fresh_model(cfg: ConViTConfig) -> ConViT:
    """A newly initialised model of the same config (its GPSA layers at the convolutional init
    when ``use_local_init``), built without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ConViT(cfg)


def _default_layers(model: ConViT) -> list[int]:
    """First and last GPSA block and the first MHSA block (ConViT), or first and last (DeiT)."""
    depth = len(model.blocks)
    k = model.local_up_to_layer
    layers = [0, k - 1, k] if k > 0 else [0, depth - 1]
    return sorted({layer for layer in layers if 0 <= layer < depth})


# -- the analysis -----------------------------------------------------------------------------


def _read_runs(logs: Sequence[Path]) -> list[tuple[str, list[dict]]]:
    """(label, log entries) of each training log, labels made unique."""
    log_paths = [Path(p) for p in logs]
    return list(zip(_unique_labels(log_paths), [read_log(p) for p in log_paths]))


def _centre_patch(model: ConViT) -> tuple[int, int]:
    """(row, col) of the patch at the centre of the model's grid: the default query."""
    grid = model.cfg.grid
    return grid[0] // 2, grid[1] // 2


def _write_numbers(
    output: Path, summary: dict, init_summary: dict, table: Optional[list[dict]]
) -> list[Path]:
    """locality.json (the analysed and the freshly initialised model's), and masking.json when
    masking was evaluated; returns their paths."""
    paths = [output / "locality.json"]
    paths[0].write_text(json.dumps({"analysed": summary, "fresh_init": init_summary}, indent=1))
    if table is not None:
        (output / "masking.json").write_text(json.dumps(table, indent=1))
        paths.append(output / "masking.json")
    return paths


def analyze(
    checkpoint: Path,
    logs: Sequence[Path] = (),
    image: Optional[Path] = None,
    output: Path = Path("analysis"),
    layers: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    query: Optional[tuple[int, int]] = None,
    html_path: Optional[Path] = None,
    masking: bool = False,
    max_images: int = 64,
    title: Optional[str] = None,
    model_name: Optional[str] = None,
) -> list[Path]:
    """Write the analysis figures of ``checkpoint`` (and of the runs in ``logs``) into ``output``.

    layers / heads: 0-based block and head indices for the attention-map figures (default:
    first and last GPSA and first MHSA block; all heads up to 8).  query: (row, col) of the
    query patch (default: the centre of the grid).  html_path: also write the HTML report there.
    masking: also evaluate test-time masking on the test split (HTML and ``masking.json``).
    model_name: zoo name, for checkpoints that carry no config (official files, timm's).
    Returns the paths written (PNGs, then the HTML).
    """
    checkpoint = Path(checkpoint)
    output = Path(output)
    model = create_model(model_name, checkpoint_path=checkpoint).eval()
    layers, heads = _check_indices(model, layers, heads)
    output.mkdir(parents=True, exist_ok=True)
    inputs = load_inputs(model.cfg, read_metadata(checkpoint), image, max_images)
    summary = locality_summary(model, inputs.images, max_images)
    init_summary = locality_summary(_fresh_model(model.cfg), inputs.images, max_images)
    runs = _read_runs(logs)
    own = checkpoint.parent.name or "model"
    q = tuple(query) if query is not None else _centre_patch(model)
    written = _summary_figures(model, runs, summary, init_summary, output, own)
    written += _attention_figures(model, inputs, q, layers, heads, output)
    table = _masking_on_inputs(model, inputs) if masking else None
    paths = [p for p, _ in written] + _write_numbers(output, summary, init_summary, table)
    if html_path is not None:
        paths.append(
            write_html(
                Path(html_path),
                title or f"ConViT analysis: {own}",
                model,
                inputs,
                summary,
                init_summary,
                runs,
                written,
                table,
                checkpoint,
            )
        )
    return paths


def _check_indices(
    model: ConViT, layers: Optional[Sequence[int]], heads: Optional[Sequence[int]]
) -> tuple[list[int], list[int]]:
    """The blocks and heads to draw (defaults filled in); out-of-range indices are an error
    raised before anything is computed or written."""
    n_heads = model.cfg.num_heads
    depth = len(model.blocks)
    heads = list(heads) if heads is not None else list(range(min(n_heads, MAX_DEFAULT_HEADS)))
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"head indices {bad} out of range: the model has {n_heads} heads")
    layers = list(layers) if layers is not None else _default_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise ValueError(f"layer indices {bad} out of range: the model has {depth} blocks")
    return layers, heads


def _summary_figures(
    model: ConViT,
    runs: list[tuple[str, list[dict]]],
    summary: dict,
    init_summary: dict,
    output: Path,
    own: str,
) -> list[tuple[Path, str]]:
    """Nonlocality over training and per layer, training curves, gates, centres: (path, caption)."""
    written = []
    if runs:
        written += [
            (
                figures.plot_nonlocality_history(runs, output / "nonlocality_training.png"),
                "Nonlocality (eq. 8) per layer over training, mean over heads (paper fig. 5).",
            ),
            (figures.plot_training_curves(runs, output / "training_curves.png"), "Loss and top-1 per epoch."),
        ]
    written.append(
        (
            figures.plot_final_nonlocality(
                summary,
                output / "nonlocality_layers.png",
                init_summary,
                title=f"{own}: nonlocality per layer and head (eq. 8)",
            ),
            "Nonlocality of the analysed model per layer and head, with the content and positional "
            "parts of GPSA layers and a freshly initialised model of the same config.",
        )
    )
    if model.local_up_to_layer > 0:
        written += [
            (
                figures.plot_gates(runs, summary["gates"], output / "gates.png"),
                "GPSA gates over training and in the analysed model (paper fig. 6).",
            ),
            (
                attention_figures.plot_centres(
                    (init_summary["centres"], init_summary["spans"]),
                    (summary["centres"], summary["spans"]),
                    output / "centres_spans.png",
                    grid=model.cfg.grid,
                ),
                "Attention centres and spans of the positional attention at init and after training.",
            ),
        ]
    return written


def _attention_figures(
    model: ConViT,
    inputs: AnalysisInputs,
    q: tuple[int, int],
    layers: list[int],
    heads: list[int],
    output: Path,
) -> list[tuple[Path, str]]:
    """The attention maps of ``layers`` from the query patch ``q`` (paper fig. 7): (path, caption)."""
    grids = attention_grids(model, inputs.image, q)
    note = inputs.source + (f" ({inputs.note})" if inputs.note else "")
    written = []
    for layer in layers:
        t = "gpsa" if model.blocks[layer].use_gpsa else "mhsa"
        written.append(
            (
                attention_figures.plot_attention_maps(
                    grids[layer],
                    inputs.display,
                    q,
                    layer,
                    output / f"attention_layer{layer + 1}.png",
                    heads=heads,
                    note=note,
                    patch_size=model.cfg.patch_size,
                ),
                f"Attention of layer {layer + 1} ({t.upper()}) from the query patch {q} on {inputs.source} "
                "(paper fig. 7).",
            )
        )
    return written


def _masking_on_inputs(model: ConViT, inputs: AnalysisInputs) -> Optional[list[dict]]:
    """Test-time masking table on the whole test split of the checkpoint's dataset (None when
    that split could not be loaded)."""
    if inputs.test_set is None:
        return None
    loader = torch.utils.data.DataLoader(inputs.test_set, batch_size=256)
    return masking_table(model, loader)


def write_run_report(
    run_dir: Path, checkpoint: Optional[Path] = None, image: Optional[Path] = None, masking: bool = False
) -> list[Path]:
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
    return analyze(
        checkpoint,
        logs,
        image,
        run_dir / "figures",
        html_path=run_dir / "report.html",
        masking=masking,
        title=f"ConViT run report: {run_dir.resolve().name}",
    )
