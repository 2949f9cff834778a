"""Figures of where attention looks (PNG, matplotlib's Agg canvas, no pyplot global state).

* :func:`plot_attention_maps` -- paper fig. 7: the attention maps of every head of one layer
  from a query patch (content, positional and combined for GPSA);
* :func:`plot_centres` -- the centres and spans of the positional attention of every GPSA head,
  at initialisation and after training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle

from .figures import _message_figure, _save

__all__ = ["plot_attention_maps", "plot_centres"]


def _show_image(ax, image: np.ndarray) -> None:
    """image: [C, H, W] in [0, 1]."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(image[:3].transpose(1, 2, 0), 0, 1), interpolation="nearest")


def _attention_row(
    fig: Figure,
    gs,
    r: int,
    row_name: str,
    maps,
    heads: Sequence[int],
    image: np.ndarray,
    query: tuple[int, int],
    patch_size: int,
    gate,
    cls_mass,
) -> None:
    """Row ``r`` of :func:`plot_attention_maps`: the input with the query patch marked, one map
    per head (titles on the first row: head number and its gate or class-token share) and the
    row's colour bar."""
    qr, qc = query
    ax = fig.add_subplot(gs[r, 0])
    _show_image(ax, image)
    ax.add_patch(
        Rectangle(
            (qc * patch_size - 0.5, qr * patch_size - 0.5), patch_size, patch_size, fill=False, ec="red", lw=2
        )
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(row_name, fontsize=10)
    if r == 0:
        ax.set_title("input, query (red)", fontsize=9)
    vmax = max(float(maps[h].max()) for h in heads) if heads else 1.0
    im = None
    for c, h in enumerate(heads):
        ax = fig.add_subplot(gs[r, c + 1])
        im = ax.imshow(maps[h].numpy(), cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        ax.plot(qc, qr, marker="+", color="cyan", ms=8, mew=1.5)
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            title = f"head {h + 1}"
            if gate is not None:
                title += f"\n$\\sigma(\\lambda)$={float(gate[h]):.2f}"
            elif cls_mass is not None:
                title += f"\n(class token: {float(cls_mass[h]):.2f})"
            ax.set_title(title, fontsize=9)
    if im is not None:
        fig.colorbar(im, cax=fig.add_subplot(gs[r, -1]), label="attention")


def _attention_rows(layer_grids: dict, gpsa: bool) -> list:
    """(row name, maps [heads, H, W]) of each row: content, positional and combined for GPSA,
    the single attention map for MHSA."""
    if not gpsa:
        return [("attention", layer_grids["combined"])]
    return [
        ("content", layer_grids["content"]),
        ("positional", layer_grids["positional"]),
        ("combined", layer_grids["combined"]),
    ]


def _attention_grid(n_rows: int, n_heads: int, extra_title_line: bool, note: str) -> tuple:
    """(figure, gridspec, height in inches) of the maps: a cell per map, a colour-bar column.

    Fixed margins instead of constrained layout: this figure has many axes and is drawn for
    several layers per report, and the layout engine would dominate its cost."""
    cell = 1.9
    left_in = 0.35
    right_in = 1.1
    bottom_in = 0.1
    top_in = 0.6 + 0.17 * extra_title_line + 0.18 * (1 + note.count("\n") if note else 0)
    width = cell * (n_heads + 1) + left_in + right_in
    height = cell * n_rows + top_in + bottom_in
    fig = Figure(figsize=(width, height))
    gs = fig.add_gridspec(
        n_rows,
        n_heads + 2,
        width_ratios=[1.0] * (n_heads + 1) + [0.06],
        left=left_in / width,
        right=1 - 0.75 / width,
        top=1 - top_in / height,
        bottom=bottom_in / height,
        wspace=0.08,
        hspace=0.1,
    )
    return fig, gs, height


def plot_attention_maps(
    layer_grids: dict,
    image: np.ndarray,
    query: tuple[int, int],
    layer: int,
    path: Path,
    heads: Optional[Sequence[int]] = None,
    note: str = "",
    patch_size: int = 1,
) -> Path:
    """Paper fig. 7: where each head of one layer looks from a query patch.

    layer_grids: one entry of :func:`attention_grids` (``content``, ``positional``,
    ``combined`` as [heads, H, W], ``gate``).  Columns: the input with the query patch marked,
    then one per head; rows: content, positional and combined attention (GPSA) or the single
    attention map (MHSA, class token removed and rows renormalised; the share of the query's
    attention that went to the class token is written under the head's title).
    """
    n_heads = layer_grids["combined"].shape[0]
    heads = list(range(n_heads)) if heads is None else [h for h in heads if 0 <= h < n_heads]
    gpsa = layer_grids.get("positional") is not None
    rows = _attention_rows(layer_grids, gpsa)
    gate = layer_grids.get("gate")
    cls_mass = layer_grids.get("cls_mass")
    extra_title_line = gate is not None or cls_mass is not None
    fig, gs, height = _attention_grid(len(rows), len(heads), extra_title_line, note)
    qr, qc = query
    for r, (row_name, maps) in enumerate(rows):
        _attention_row(fig, gs, r, row_name, maps, heads, image, query, patch_size, gate, cls_mass)
    kind = "GPSA" if gpsa else "MHSA"
    title = f"Layer {layer + 1} ({kind}): attention from patch (row {qr}, col {qc})"
    if note:
        title += f"\n{note}"
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return _save(fig, path)


def _centres_limit(
    init: tuple[list, list], final: tuple[list, list], grid: Optional[tuple[int, int]]
) -> float:
    """Half-width of the panels of :func:`plot_centres`: every centre with its circle (radius
    capped at the grid size) fits, and at least 2 patches show."""
    limit = 2.0
    cap = float(max(grid)) if grid else 8.0
    for centres, spans in (init, final):
        for layer_c, layer_s in zip(centres, spans):
            for c, s in zip(layer_c, layer_s):
                if c is None or c[0] is None or s is None:
                    continue
                r = math.sqrt(s / 2)
                limit = max(limit, abs(c[0]) + min(r, cap), abs(c[1]) + min(r, cap))
    return min(limit + 0.3, cap)


def _centre_arrows(ax, c_init: list, s_init: list, c_final: list, s_final: list) -> list[str]:
    """One layer's heads on ``ax``: init (grey, dashed) and trained (coloured) centres and
    circles joined by an arrow; returns the notes for heads whose trained attention has no peak."""
    notes = []
    for h in range(len(c_final)):
        colour = f"C{h}"
        c0 = c_init[h] if h < len(c_init) else None
        s0 = s_init[h] if h < len(s_init) else None
        c1 = c_final[h]
        s1 = s_final[h]
        ok0 = c0 is not None and None not in c0 and s0 is not None
        ok1 = c1 is not None and None not in c1 and s1 is not None
        if ok0:
            ax.add_patch(Circle(c0, math.sqrt(s0 / 2), fill=False, ec="grey", ls="--", lw=0.8))
            ax.plot(*c0, "o", mfc="none", mec="grey", ms=6)
        if ok1:
            ax.add_patch(Circle(c1, math.sqrt(s1 / 2), fill=False, ec=colour, lw=1.3))
            ax.plot(*c1, "o", color=colour, ms=6, label=f"head {h + 1}")
        else:
            notes.append(f"head {h + 1}: no peak")
        if ok0 and ok1 and (abs(c0[0] - c1[0]) + abs(c0[1] - c1[1])) > 0.05:
            ax.annotate("", xy=c1, xytext=c0, arrowprops=dict(arrowstyle="->", color=colour, lw=0.8))
    return notes


def plot_centres(
    init: tuple[list, list], final: tuple[list, list], path: Path, grid: Optional[tuple[int, int]] = None
) -> Path:
    """Attention centres Delta_h and spans of every GPSA head, at init and after training.

    init / final: (centres [[dx, dy] per head] per layer, spans [span per head] per layer).
    Centre: peak of the positional score, -(v_dx, v_dy)/(2 v_d2); circle radius: the standard
    deviation sqrt(span / 2) of the Gaussian exp(-||delta - Delta||^2 / span) the head applies
    (patches).  Hollow grey: init; coloured: trained; arrows join them; '+': the query patch.
    dy grows downwards, as rows do in the image.
    """
    ic, isp = init
    fc, fsp = final
    n = len(fc)
    if n == 0:
        return _message_figure("no GPSA layer: no positional centres", path)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.3 * cols, 3.4 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    limit = _centres_limit((ic, isp), (fc, fsp), grid)
    for layer in range(n):
        ax = axes[layer]
        notes = _centre_arrows(
            ax,
            ic[layer] if layer < len(ic) else [],
            isp[layer] if layer < len(isp) else [],
            fc[layer],
            fsp[layer],
        )
        ax.plot(0, 0, "k+", ms=10, mew=1.5)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(limit, -limit)  # dy down, like image rows
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_title(f"GPSA layer {layer + 1}", fontsize=10)
        ax.set_xlabel("dx (patches)")
        ax.set_ylabel("dy (patches)")
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
        if layer == 0:
            ax.plot([], [], "o", mfc="none", mec="grey", label="init")
            ax.legend(fontsize=7, loc="upper right")
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(
        "Positional attention centres (dots) and spans (circle radius = sqrt(span/2) patches):\n"
        "init (grey, dashed) -> trained (coloured); + = query patch",
        fontsize=10,
    )
    return _save(fig, path)
