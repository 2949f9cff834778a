"""Figures of the locality analysis (PNG, matplotlib's Agg canvas, no pyplot global state).

Every function takes plain data (training logs as lists of dicts, :func:`locality_summary`
dicts, tensors) and writes one PNG, returning its path, so the figures can be remade from a
``log.jsonl`` without the model.  Paper figures they mirror: fig. 5 (nonlocality over
training), fig. 6 (gates), fig. 7 (attention maps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle
from matplotlib.ticker import MaxNLocator

from .locality import mean_pairwise_distance

Run = tuple[str, list[dict]]  # (label, log entries, one per epoch)

__all__ = [
    "plot_nonlocality_history",
    "plot_gates",
    "plot_attention_maps",
    "plot_centres",
    "plot_training_curves",
    "plot_final_nonlocality",
]

_DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _mean(xs: Optional[Sequence[Optional[float]]]) -> float:
    vals = [x for x in (xs or []) if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if vals else float("nan")


def _layer_colours(n: int, cmap: str = "viridis") -> list:
    cm = colormaps[cmap]
    return [cm(0.9 * i / max(n - 1, 1)) for i in range(n)]


def _with_locality(entries: list[dict]) -> list[dict]:
    return [e for e in entries if isinstance(e.get("locality"), dict) and e["locality"].get("nonlocality")]


def plot_nonlocality_history(runs: Sequence[Run], path: Path) -> Path:
    """Paper fig. 5: nonlocality (eq. 8, mean over heads) of every layer over training epochs.

    One panel per run (e.g. ConViT beside DeiT), shared y axis; GPSA layers solid, MHSA dashed;
    the dotted grey line is the nonlocality of uniform attention over the patch grid.
    """
    runs = [(name, _with_locality(entries)) for name, entries in runs]
    runs = [r for r in runs if r[1]] or [("no locality logged", [])]
    fig = Figure(figsize=(5.2 * len(runs), 4.2), layout="constrained")
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for ax, (name, entries) in zip(axes, runs):
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not entries:
            ax.text(0.5, 0.5, "no 'locality' entries in the log", ha="center", transform=ax.transAxes)
            continue
        loc0 = entries[-1]["locality"]
        n_layers = len(loc0["nonlocality"])
        types = loc0.get("layer_types") or ["?"] * n_layers
        epochs = [e.get("epoch", i) for i, e in enumerate(entries)]
        colours = _layer_colours(n_layers)
        for l in range(n_layers):
            ys = [
                _mean(e["locality"]["nonlocality"][l]) if l < len(e["locality"]["nonlocality"]) else np.nan
                for e in entries
            ]
            ax.plot(
                epochs,
                ys,
                color=colours[l],
                ls="-" if types[l] == "gpsa" else "--",
                marker="o" if len(epochs) < 12 else None,
                ms=3,
                label=f"layer {l + 1} ({types[l].upper()})",
            )
        if loc0.get("grid"):
            ax.axhline(
                mean_pairwise_distance(tuple(loc0["grid"])),
                color="grey",
                ls=":",
                lw=1,
                label="uniform attention",
            )
        ax.legend(fontsize=7, ncol=2 if n_layers > 6 else 1)
    axes[0].set_ylabel("nonlocality D (patches)")
    fig.suptitle("Nonlocality per layer during training (eq. 8, mean over heads)")
    return _save(fig, path)


def _message_figure(text: str, path: Path) -> Path:
    """A small figure that only says why there is nothing to plot (e.g. gates of a DeiT)."""
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes)
    ax.set_axis_off()
    return _save(fig, path)


def plot_gates(runs: Sequence[Run], final_gates: Optional[list[list[float]]], path: Path) -> Path:
    """Paper fig. 6: sigma(lambda_h) of every GPSA head over training (one panel per run that has
    GPSA layers; thin lines heads, thick line layer mean) and at the end, per layer (right)."""
    runs = [
        (name, [e for e in _with_locality(entries) if e["locality"].get("gates")]) for name, entries in runs
    ]
    runs = [r for r in runs if r[1]]
    n_panels = len(runs) + (final_gates is not None)
    if n_panels == 0:
        return _message_figure("no GPSA gates to plot (a DeiT?)", path)
    fig = Figure(figsize=(5.2 * n_panels, 4.2), layout="constrained")
    axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    for ax, (name, entries) in zip(axes, runs):
        epochs = [e.get("epoch", i) for i, e in enumerate(entries)]
        g = entries[-1]["locality"]["gates"]
        colours = _layer_colours(len(g), "plasma")
        for l in range(len(g)):
            per_head = np.array(
                [[np.nan if v is None else v for v in e["locality"]["gates"][l]] for e in entries],
                dtype=float,
            )  # [epochs, heads]
            for h in range(per_head.shape[1]):
                ax.plot(epochs, per_head[:, h], color=colours[l], lw=0.7, alpha=0.5)
            ax.plot(
                epochs,
                np.nanmean(per_head, axis=1),
                color=colours[l],
                lw=2.2,
                marker="o" if len(epochs) < 12 else None,
                ms=3,
                label=f"layer {l + 1} (mean)",
            )
        ax.set_title(f"{name}: gates during training")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(r"gate $\sigma(\lambda_h)$ (1 = positional only)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if final_gates is not None:
        ax = axes[-1]
        n = len(final_gates)
        for l, g in enumerate(final_gates):
            vals = [np.nan if v is None else v for v in g]
            ax.scatter(
                np.full(len(vals), l + 1) + np.linspace(-0.15, 0.15, len(vals)),
                vals,
                c=[f"C{h}" for h in range(len(vals))],
                s=28,
                zorder=3,
            )
            ax.hlines(np.nanmean(vals), l + 0.7, l + 1.3, color="k", lw=1.5)
        for h in range(max((len(g) for g in final_gates), default=0)):
            ax.scatter([], [], c=f"C{h}", s=28, label=f"head {h + 1}")
        ax.plot([], [], color="k", label="layer mean")
        ax.set_xticks(range(1, n + 1))
        ax.set_xlabel("GPSA layer")
        ax.set_ylabel(r"gate $\sigma(\lambda_h)$")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("gates of the analysed model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(r"GPSA gates $\sigma(\lambda_h)$: weight of positional vs content attention (eq. 6)")
    return _save(fig, path)


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
    rows = (
        [
            ("content", layer_grids["content"]),
            ("positional", layer_grids["positional"]),
            ("combined", layer_grids["combined"]),
        ]
        if gpsa
        else [("attention", layer_grids["combined"])]
    )
    gate = layer_grids.get("gate")
    # Fixed margins instead of constrained layout: this figure has many axes and is drawn for
    # several layers per report, and the layout engine would dominate its cost.
    cell, left_in, right_in, bottom_in = 1.9, 0.35, 1.1, 0.1
    cls_mass = layer_grids.get("cls_mass")
    extra_title_line = gate is not None or cls_mass is not None
    top_in = 0.6 + 0.17 * extra_title_line + 0.18 * (1 + note.count("\n") if note else 0)
    width = cell * (len(heads) + 1) + left_in + right_in
    height = cell * len(rows) + top_in + bottom_in
    fig = Figure(figsize=(width, height))
    gs = fig.add_gridspec(
        len(rows),
        len(heads) + 2,
        width_ratios=[1.0] * (len(heads) + 1) + [0.06],
        left=left_in / width,
        right=1 - 0.75 / width,
        top=1 - top_in / height,
        bottom=bottom_in / height,
        wspace=0.08,
        hspace=0.1,
    )
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
        c1, s1 = c_final[h], s_final[h]
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
    for l in range(n):
        ax = axes[l]
        notes = _centre_arrows(
            ax, ic[l] if l < len(ic) else [], isp[l] if l < len(isp) else [], fc[l], fsp[l]
        )
        ax.plot(0, 0, "k+", ms=10, mew=1.5)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(limit, -limit)  # dy down, like image rows
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_title(f"GPSA layer {l + 1}", fontsize=10)
        ax.set_xlabel("dx (patches)")
        ax.set_ylabel("dy (patches)")
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
        if l == 0:
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


def plot_training_curves(runs: Sequence[Run], path: Path) -> Path:
    """Loss (train solid, validation dashed) and top-1 (validation solid, test dotted) per epoch,
    one colour per run."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (name, entries) in enumerate(runs):
        colour = f"C{i}"

        def series(key):
            pts = [
                (e.get("epoch", j), e[key])
                for j, e in enumerate(entries)
                if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])
            ]
            return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None

        for key, ax, ls, what in (
            ("train_loss", ax_loss, "-", "train"),
            ("val_loss", ax_loss, "--", "val"),
            ("val_top1", ax_acc, "-", "val"),
            ("test_top1", ax_acc, ":", "test"),
        ):
            s = series(key)
            if s:
                ax.plot(
                    *s,
                    color=colour,
                    ls=ls,
                    marker="o" if len(s[0]) < 12 else None,
                    ms=3,
                    label=f"{name} {what}",
                )
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_title("loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_title("top-1 accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", transform=ax.transAxes)
    fig.suptitle("Training curves")
    return _save(fig, path)


def plot_final_nonlocality(
    summary: dict, path: Path, init_summary: Optional[dict] = None, title: str = ""
) -> Path:
    """Nonlocality (eq. 8) per layer of the analysed model: each head (dots), the layer mean of
    the applied attention (line), of the content and positional parts of GPSA layers, and the
    mean of a freshly initialised model of the same config on the same images (grey)."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    full = summary["nonlocality"]
    n = len(full)
    xs = np.arange(1, n + 1)
    for l, heads in enumerate(full):
        vals = [np.nan if v is None else v for v in heads]
        ax.scatter(
            np.full(len(vals), l + 1) + np.linspace(-0.12, 0.12, len(vals)),
            vals,
            c=[f"C{h}" for h in range(len(vals))],
            s=18,
            zorder=3,
        )
    ax.plot(xs, [_mean(h) for h in full], "k-o", ms=4, label="applied attention (mean over heads)")
    for key, style, colour, label in (
        ("nonlocality_content", "s--", "navy", "GPSA content part"),
        ("nonlocality_positional", "^--", "darkred", "GPSA positional part"),
    ):
        vals = [_mean(h) if h is not None else np.nan for h in summary.get(key, [])]
        if any(np.isfinite(vals)):
            ax.plot(xs[: len(vals)], vals, style, color=colour, ms=4, lw=1, label=label)
    if init_summary is not None:
        ax.plot(
            xs,
            [_mean(h) for h in init_summary["nonlocality"]],
            "o:",
            color="grey",
            ms=4,
            label="fresh init, same config",
        )
    if summary.get("grid"):
        ax.axhline(
            mean_pairwise_distance(tuple(summary["grid"])),
            color="grey",
            ls="-.",
            lw=1,
            label="uniform attention",
        )
    types = summary.get("layer_types") or []
    ax.set_xticks(xs, [f"{l + 1}\n{types[l].upper()}" if l < len(types) else str(l + 1) for l in range(n)])
    for h in range(max((len(hh) for hh in full), default=0)):
        ax.scatter([], [], c=f"C{h}", s=18, label=f"head {h + 1}")
    ax.set_xlabel("layer")
    ax.set_ylabel("nonlocality D (patches)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "Nonlocality per layer and head (eq. 8)")
    return _save(fig, path)
