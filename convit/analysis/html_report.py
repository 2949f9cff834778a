"""The self-contained HTML page of an analysis: tables of accuracy, gates and nonlocality,
centres and spans, test-time masking, then every figure embedded as a base64 PNG.

The page is a string.Template filled with escaped values and small generated tables: no
template engine to depend on, and the layout reads as HTML rather than string sums.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Optional

import numpy as np

from ..nn.model import ConViT
from .inputs import AnalysisInputs

__all__ = ["write_html"]


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
_FIGURE = Template(
    "<figure><img src='data:image/png;base64,$png' alt='$name'><figcaption>$caption</figcaption></figure>"
)
_GATES_INTRO = (
    "<p>Gate &sigma;(&lambda;<sub>h</sub>): weight of the positional attention (eq. 6). Nonlocality D "
    "(eq. 8, patches): mean over heads of the attention-weighted distance between query and key "
    "patches, on each layer's own input; MHSA layers: class token removed, rows renormalised over "
    "patches.</p>"
)
_CENTRES_INTRO = (
    "<p>Centre &Delta; = &minus;(v<sub>dx</sub>, v<sub>dy</sub>)/(2 v<sub>d2</sub>) in patches (dx, dy); "
    "span 1/|v<sub>d2</sub>|.</p>"
)
_MASKING_INTRO = (
    "<p>Top-1 (%) on the test images with the content (&sigma;:=1) or positional (&sigma;:=0) part of "
    "the first k GPSA layers masked, or the absolute position embedding removed.</p>"
)


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


def _metrics_rows(runs: list[tuple[str, list[dict]]]) -> list[list[str]]:
    rows = []
    for name, entries in runs:
        if not entries:
            continue
        last = entries[-1]
        vals = [e["val_top1"] for e in entries if isinstance(e.get("val_top1"), (int, float))]
        rows.append(
            [
                html.escape(name),
                _fmt(last.get("epoch")),
                _fmt(last.get("train_loss")),
                _fmt(last.get("val_top1"), 2),
                _fmt(max(vals) if vals else None, 2),
                _fmt(last.get("test_top1"), 2),
                _fmt(last.get("test_top5"), 2),
            ]
        )
    return rows


def _layer_rows(summary: dict, init_summary: dict) -> list[list[str]]:
    """One row per block: type, gates, nonlocality (full, content, positional, at init, per head)."""
    rows = []
    gi = 0
    for layer, t in enumerate(summary["layer_types"]):
        gates = summary["gates"][gi] if t == "gpsa" else None
        rows.append(
            [
                str(layer + 1),
                t.upper(),
                _fmt(_mean(gates)) if gates else "–",
                " ".join(_fmt(g, 2) for g in gates) if gates else "–",
                _fmt(_mean(summary["nonlocality"][layer]), 2),
                _fmt(_mean(summary["nonlocality_content"][layer]), 2),
                _fmt(_mean(summary["nonlocality_positional"][layer]), 2),
                _fmt(_mean(init_summary["nonlocality"][layer]), 2),
                " ".join(_fmt(v, 2) for v in summary["nonlocality"][layer]),
            ]
        )
        gi += t == "gpsa"
    return rows


def _centre(c) -> str:
    return "no peak" if c is None or None in c else f"({c[0]:+.2f}, {c[1]:+.2f})"


def _centre_rows(summary: dict, init_summary: dict) -> list[list[str]]:
    """One row per GPSA head: centre and span at init and after training."""
    ic = init_summary["centres"]
    isp = init_summary["spans"]
    rows = []
    for layer, (cs, ss) in enumerate(zip(summary["centres"], summary["spans"])):
        for h, (c, s) in enumerate(zip(cs, ss)):
            c0 = ic[layer][h] if layer < len(ic) else None
            s0 = isp[layer][h] if layer < len(isp) else None
            rows.append([str(layer + 1), str(h + 1), _centre(c0), _fmt(s0, 2), _centre(c), _fmt(s, 2)])
    return rows


#: Column headers of the report's tables.
_ACCURACY_COLUMNS = [
    "run",
    "last epoch",
    "train loss",
    "val top-1 (last)",
    "val top-1 (best)",
    "test top-1",
    "test top-5",
]
_LAYER_COLUMNS = [
    "layer",
    "type",
    "mean gate",
    "gates per head",
    "D",
    "D content",
    "D positional",
    "D fresh init",
    "D per head",
]
_CENTRE_COLUMNS = ["GPSA layer", "head", "centre at init", "span at init", "centre trained", "span trained"]
_MASKING_COLUMNS = ["masked", "k", "position embedding", "top-1"]


def _masking_rows(masking: list[dict]) -> list[list[str]]:
    """One row per masking setting: what was masked, in how many blocks, and the top-1."""
    rows = []
    for r in masking:
        pos_embed = "removed" if r["remove_pos_embed"] else "kept"
        rows.append([r["mode"], str(r["k"]), pos_embed, _fmt(r["top1"], 2)])
    return rows


def _sections(
    note: str,
    summary: dict,
    init_summary: dict,
    runs: list[tuple[str, list[dict]]],
    masking: Optional[list[dict]],
) -> list[str]:
    """The report's tables, in reading order: accuracy, per layer, per head, masking."""
    sections = [_NOTE.substitute(note=html.escape(note))] if note else []
    metrics = _metrics_rows(runs)
    if metrics:
        sections.append(_section("Accuracy", "", _ACCURACY_COLUMNS, metrics))
    layers = _layer_rows(summary, init_summary)
    sections.append(_section("Gates and nonlocality per layer", _GATES_INTRO, _LAYER_COLUMNS, layers))
    if summary["centres"]:
        centres = _centre_rows(summary, init_summary)
        title = "Positional attention centres and spans"
        sections.append(_section(title, _CENTRES_INTRO, _CENTRE_COLUMNS, centres))
    if masking:
        rows = _masking_rows(masking)
        sections.append(_section("Test-time masking", _MASKING_INTRO, _MASKING_COLUMNS, rows))
    return sections


def _embedded_figures(figures: list[tuple[Path, str]]) -> list[str]:
    """Each (PNG, caption) as a figure element with the image inline (the page stands alone)."""
    return [
        _FIGURE.substitute(
            png=base64.b64encode(Path(p).read_bytes()).decode("ascii"),
            name=html.escape(Path(p).name),
            caption=html.escape(caption),
        )
        for p, caption in figures
    ]


def write_html(
    path: Path,
    title: str,
    model: ConViT,
    inputs: AnalysisInputs,
    summary: dict,
    init_summary: dict,
    runs: list[tuple[str, list[dict]]],
    figures: list[tuple[Path, str]],
    masking: Optional[list[dict]],
    checkpoint: Path,
) -> Path:
    """Write the report page of ``model`` to ``path``: ``summary`` / ``init_summary`` are the
    :func:`locality_summary` of the model and of a fresh one, ``runs`` the (label, log) pairs,
    ``figures`` the (PNG, caption) pairs to embed, ``masking`` the masking table or None."""
    cfg = model.cfg
    sections = _sections(inputs.note, summary, init_summary, runs, masking)
    doc = _PAGE.substitute(
        title=html.escape(title),
        checkpoint=html.escape(str(checkpoint)),
        depth=cfg.depth,
        gpsa=cfg.local_up_to_layer,
        heads=cfg.num_heads,
        dim=cfg.embed_dim,
        grid_h=cfg.grid[0],
        grid_w=cfg.grid[1],
        n_images=summary["num_images"],
        images_source=html.escape(inputs.images_source),
        image_source=html.escape(inputs.source),
        sections="\n".join(sections),
        figures="\n".join(_embedded_figures(figures)),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path
