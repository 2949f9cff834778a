"""Figures of the locality analysis (PNG, matplotlib's Agg canvas, no pyplot global state).

Every function takes plain data (training logs as lists of dicts, :func:`locality_summary`
dicts, tensors) and writes one PNG, returning its path, so the figures can be remade from a
``log.jsonl`` without the model.  Paper figures they mirror: fig. 5 (nonlocality over
training) and fig. 6 (gates); the attention maps (fig. 7) and attention centres are
:mod:`.attention_figures`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .locality import mean_pairwise_distance

Run = tuple[str, list[dict]]  # (label, log entries, one per epoch)

__all__ = [
    "plot_nonlocality_history",
    "plot_gates",
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
        for layer in range(n_layers):
            ys = [
                _mean(e["locality"]["nonlocality"][layer])
                if layer < len(e["locality"]["nonlocality"])
                else np.nan
                for e in entries
            ]
            ax.plot(
                epochs,
                ys,
                color=colours[layer],
                ls="-" if types[layer] == "gpsa" else "--",
                marker="o" if len(epochs) < 12 else None,
                ms=3,
                label=f"layer {layer + 1} ({types[layer].upper()})",
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


def _final_gates_panel(ax, final_gates: list[list[float]]) -> None:
    """The gates of the analysed model: every head a dot per GPSA layer, the layer mean a bar."""
    n = len(final_gates)
    for layer, g in enumerate(final_gates):
        vals = [np.nan if v is None else v for v in g]
        ax.scatter(
            np.full(len(vals), layer + 1) + np.linspace(-0.15, 0.15, len(vals)),
            vals,
            c=[f"C{h}" for h in range(len(vals))],
            s=28,
            zorder=3,
        )
        ax.hlines(np.nanmean(vals), layer + 0.7, layer + 1.3, color="k", lw=1.5)
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
        for layer in range(len(g)):
            per_head = np.array(
                [[np.nan if v is None else v for v in e["locality"]["gates"][layer]] for e in entries],
                dtype=float,
            )  # [epochs, heads]
            for h in range(per_head.shape[1]):
                ax.plot(epochs, per_head[:, h], color=colours[layer], lw=0.7, alpha=0.5)
            ax.plot(
                epochs,
                np.nanmean(per_head, axis=1),
                color=colours[layer],
                lw=2.2,
                marker="o" if len(epochs) < 12 else None,
                ms=3,
                label=f"layer {layer + 1} (mean)",
            )
        ax.set_title(f"{name}: gates during training")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(r"gate $\sigma(\lambda_h)$ (1 = positional only)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if final_gates is not None:
        _final_gates_panel(axes[-1], final_gates)
    fig.suptitle(r"GPSA gates $\sigma(\lambda_h)$: weight of positional vs content attention (eq. 6)")
    return _save(fig, path)


def _series(entries: list[dict], key: str) -> Optional[tuple[list, list]]:
    """(epochs, values) of ``key`` over a run's log entries that hold a finite number; None if none."""
    pts = [
        (e.get("epoch", j), e[key])
        for j, e in enumerate(entries)
        if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])
    ]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None


def plot_training_curves(runs: Sequence[Run], path: Path) -> Path:
    """Loss (train solid, validation dashed) and top-1 (validation solid, test dotted) per epoch,
    one colour per run."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (name, entries) in enumerate(runs):
        colour = f"C{i}"
        for key, ax, ls, what in (
            ("train_loss", ax_loss, "-", "train"),
            ("val_loss", ax_loss, "--", "val"),
            ("val_top1", ax_acc, "-", "val"),
            ("test_top1", ax_acc, ":", "test"),
        ):
            s = _series(entries, key)
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


def _layer_ticks(types: Sequence[str], n: int) -> list[str]:
    """Tick labels of ``n`` layers: the number, and the layer type (GPSA, MHSA) when known."""
    return [
        f"{layer + 1}\n{types[layer].upper()}" if layer < len(types) else str(layer + 1) for layer in range(n)
    ]


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
    for layer, heads in enumerate(full):
        vals = [np.nan if v is None else v for v in heads]
        ax.scatter(
            np.full(len(vals), layer + 1) + np.linspace(-0.12, 0.12, len(vals)),
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
    ax.set_xticks(xs, _layer_ticks(summary.get("layer_types") or [], n))
    for h in range(max((len(hh) for hh in full), default=0)):
        ax.scatter([], [], c=f"C{h}", s=18, label=f"head {h + 1}")
    ax.set_xlabel("layer")
    ax.set_ylabel("nonlocality D (patches)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "Nonlocality per layer and head (eq. 8)")
    return _save(fig, path)
