"""Tables and figures of a sweep: mean +- std over seeds, and the relative gain over DeiT.

The paper's relative gain (Table 2) is ``(top1_convit - top1_deit) / top1_deit``; here it is
computed from the seed means of each variant and its grid's baseline (DeiT, or 0 GPSA
layers) at the same fraction.  Because seeds are paired (same images for every variant), the
spread of the per-seed gains is reported next to it.

Both the test top-1 of the *final* model (fixed schedule, nothing selected on test) and the
validation top-1 (held out from the training split) are tabulated, side by side.

Files written by :func:`write_results`:

* ``results.csv``  one row per run;
* ``summary.csv``  one row per (variant, fraction): n, means, stds, gains;
* ``results.md``   the summary as Markdown tables, with the paper's numbers where it has some;
* a figure: ``top1_vs_fraction.png`` (sample efficiency, like the paper's Fig. 2),
  ``ablation.png``, ``locality_strength.png`` or ``gpsa_layers.png``;
* ``locality_over_training.png`` when the runs logged locality: nonlocality per block and gate
  per GPSA block over training, per variant and fraction (the paper's Figs. 5-6).
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from matplotlib import colormaps
from matplotlib.figure import Figure

from .grids import PAPER_ABLATION, PAPER_SAMPLE_EFFICIENCY

__all__ = ["mean_std", "relative_gain", "Cell", "summarize", "locality_markdown", "write_results", "FIGURE_NAMES"]

_BLOCK_COLOURS = colormaps["viridis"]  # early blocks dark, late blocks light
FIGURE_NAMES = {"sample-efficiency": "top1_vs_fraction.png", "ablation": "ablation.png",
                "locality-strength": "locality_strength.png", "gpsa-layers": "gpsa_layers.png"}

_RUN_COLUMNS = ["grid", "preset", "variant", "label", "fraction", "images_per_class", "seed", "test_top1",
                "val_top1", "best_val_top1", "best_epoch", "epochs", "train_images", "params", "wall_s", "cpu_s",
                "resumed"]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is NaN."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def relative_gain(value: float, baseline: float) -> float:
    """The paper's relative improvement ``(value - baseline) / baseline`` (a fraction, not %)."""
    if baseline == 0 or math.isnan(baseline):
        return math.nan
    return (value - baseline) / baseline


@dataclass
class Cell:
    """One (variant, fraction) of a sweep, over its seeds."""

    variant: str
    label: str
    fraction: float
    n: int
    test_mean: float
    test_std: float
    val_mean: float
    val_std: float
    baseline: bool
    gain_test: float = math.nan      # ratio of means vs the baseline (paper definition)
    gain_test_sd: float = math.nan   # std over seeds of the paired per-seed gains
    gain_val: float = math.nan
    gain_val_sd: float = math.nan
    train_images: Optional[float] = None
    images_per_class: Optional[float] = None
    wall_s: float = 0.0
    cpu_s: float = 0.0  # per run the larger of cpu_s (its last attempt) and epochs_cpu_s (every attempt's epochs)
    params: Optional[int] = None


def _num(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def _mean_of(records: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    vals = [float(r[key]) for r in records if r.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def summarize(records: Sequence[Dict[str, Any]]) -> List[Cell]:
    """Group run records by (variant, fraction); mean/std over seeds; gains vs the baseline.

    Variants keep the order they first appear in (the grid's order); fractions are ascending.
    """
    order: List[str] = []
    groups: Dict[Tuple[str, float], List[Dict[str, Any]]] = {}
    for r in records:
        if r["variant"] not in order:
            order.append(r["variant"])
        groups.setdefault((r["variant"], float(r["fraction"])), []).append(r)
    cells: Dict[Tuple[str, float], Cell] = {}
    for (v, f), rs in groups.items():
        tests = [x for x in (_num(r.get("test_top1")) for r in rs) if x is not None]
        vals = [x for x in (_num(r.get("val_top1")) for r in rs) if x is not None]
        tm, ts = mean_std(tests)
        vm, vs = mean_std(vals)
        imgs = [r["train_images"] for r in rs if r.get("train_images") is not None]
        cells[(v, f)] = Cell(v, rs[0].get("label", v), f, len(rs), tm, ts, vm, vs, bool(rs[0].get("baseline")),
                             train_images=statistics.fmean(imgs) if imgs else None,
                             images_per_class=_mean_of(rs, "images_per_class"),
                             wall_s=sum(float(r.get("wall_s") or 0) for r in rs),
                             cpu_s=sum(max(float(r.get("cpu_s") or 0), float(r.get("epochs_cpu_s") or 0)) for r in rs),
                             params=next((int(r["params"]) for r in rs if r.get("params")), None))
    base_name = next((r["variant"] for r in records if r.get("baseline")), None)
    if base_name is not None:
        for (v, f), cell in cells.items():
            base = cells.get((base_name, f))
            if base is None:
                continue
            cell.gain_test = relative_gain(cell.test_mean, base.test_mean)
            cell.gain_val = relative_gain(cell.val_mean, base.val_mean)
            for metric in ("test", "val"):
                mine = {r["seed"]: _num(r.get(f"{metric}_top1")) for r in groups[(v, f)]}
                theirs = {r["seed"]: _num(r.get(f"{metric}_top1")) for r in groups[(base_name, f)]}
                paired = [relative_gain(mine[s], theirs[s]) for s in mine
                          if s in theirs and mine[s] is not None and theirs[s] is not None]
                setattr(cell, f"gain_{metric}_sd", mean_std(paired)[1])
    fractions = sorted({f for _, f in cells})
    return [cells[(v, f)] for f in fractions for v in order if (v, f) in cells]


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------

def _pm(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _gain(g: float, sd: float = math.nan) -> str:
    if math.isnan(g):
        return "-"
    g = 0.0 if abs(g) < 5e-4 else g  # no "-0.0%"
    return f"{100 * g:+.1f}%" + ("" if math.isnan(sd) else f" (± {100 * sd:.1f})")


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in rows]]


def _footer(cells: Sequence[Cell]) -> List[str]:
    params = {c.label: c.params for c in cells if c.params}
    wall, cpu = sum(c.wall_s for c in cells), sum(c.cpu_s for c in cells)
    out = [""]
    if params:
        out.append("Parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()) + ".  ")
    out.append(f"Training time, all runs: {wall:.0f} s ({wall / 60:.1f} min)"
               + (f"; process CPU time {cpu:.0f} s ({cpu / 3600:.2f} CPU-hours)." if cpu else "."))
    return out


def markdown(cells: Sequence[Cell], grid: str, title: str = "") -> str:
    """The summary as Markdown: one table per fraction, plus the paper's numbers alongside."""
    lines = [f"## {title or grid}", "",
             "Top-1 (%) of the final model, mean ± std over seeds (n = seeds). Test: the dataset's test "
             "split, never used for any choice. Val: held out from the training split. Gain: the paper's "
             "relative improvement over the baseline, (top1 - top1_base) / top1_base, from the seed "
             "means; in brackets the std of the per-seed (paired) gains.", ""]
    if grid == "sample-efficiency":
        by_f: Dict[float, Dict[str, Cell]] = {}
        for c in cells:
            by_f.setdefault(c.fraction, {})[c.variant] = c
        rows = []
        for f, d in sorted(by_f.items()):
            cv, de = d.get("convit"), d.get("deit")
            paper = PAPER_SAMPLE_EFFICIENCY.get(f)
            per_class = (cv or de).images_per_class
            rows.append([f"{f:g}", f"{per_class:.0f}" if per_class else "-",
                         f"{(cv or de).train_images:.0f}" if (cv or de).train_images else "-",
                         str((cv or de).n),
                         _pm(de.test_mean, de.test_std) if de else "-",
                         _pm(cv.test_mean, cv.test_std) if cv else "-",
                         _gain(cv.gain_test, cv.gain_test_sd) if cv else "-",
                         _pm(de.val_mean, de.val_std) if de else "-",
                         _pm(cv.val_mean, cv.val_std) if cv else "-",
                         _gain(cv.gain_val, cv.gain_val_sd) if cv else "-",
                         (f"{paper[0]:.1f} → {paper[1]:.1f} ({100 * relative_gain(paper[1], paper[0]):+.0f}%)"
                          if paper else "-")])
        lines += _table(["fraction", "images/class", "train images", "n", "DeiT test", "ConViT test", "gain (test)",
                         "DeiT val", "ConViT val", "gain (val)", "paper ImageNet DeiT-S → ConViT-S (gain)"],
                        rows)
        return "\n".join(lines + _footer(cells)) + "\n"
    fractions = sorted({c.fraction for c in cells})
    for f in fractions:
        per_class = next((c.images_per_class for c in cells if c.fraction == f and c.images_per_class), None)
        lines += ["", f"### fraction {f:g}" + (f" ({per_class:.0f} images per class)" if per_class else ""), ""]
        rows = []
        for c in (c for c in cells if c.fraction == f):
            row = [c.label, str(c.n), _pm(c.test_mean, c.test_std), _gain(c.gain_test, c.gain_test_sd),
                   _pm(c.val_mean, c.val_std), _gain(c.gain_val, c.gain_val_sd)]
            if grid == "ablation":
                paper = PAPER_ABLATION.get(c.variant)
                row.append(f"{paper[0]:.1f} / {paper[1]:.1f}" if paper else "-")
            rows.append(row)
        header = ["variant", "n", "test top-1", "gain (test)", "val top-1", "gain (val)"]
        if grid == "ablation":
            header.append("paper full / 10% ImageNet")
        lines += _table(header, rows)
    return "\n".join(lines + _footer(cells)) + "\n"


def _layer_means(records: Sequence[Dict[str, Any]], key: str, which: int) -> List[float]:
    """Per layer, the mean over heads and seeds of locality ``key`` at evaluated epoch ``which``
    (0: the first evaluated epoch, -1: the last) of the runs' ``evals``."""
    per_run = []
    for r in records:
        evals = [e for e in r.get("evals") or [] if isinstance(e.get("locality"), dict)]
        if evals:
            layers = evals[which]["locality"].get(key) or []
            per_run.append([statistics.fmean(x for x in heads if x is not None) for heads in layers
                            if heads and any(x is not None for x in heads)])
    n_layers = min((len(x) for x in per_run), default=0)
    return [statistics.fmean(run[i] for run in per_run) for i in range(n_layers)]


def locality_markdown(records: Sequence[Dict[str, Any]]) -> str:
    """Locality over training (the paper's Figs. 5-7) from the runs' logged evaluations: per
    variant and fraction, each layer's nonlocality (eq. 8, mean over heads) and each GPSA
    layer's gate sigma(lambda) (mean over heads), at the first and the last evaluated epoch,
    averaged over seeds.  Empty when no run logged locality."""
    groups: Dict[Tuple[str, float], List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("label", r["variant"]), float(r["fraction"])), []).append(r)
    rows = []
    for (label, f), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for key in ("nonlocality", "gates"):
            first, last = _layer_means(rs, key, 0), _layer_means(rs, key, -1)
            cells.append(" ".join(f"{a:.2f}→{b:.2f}" for a, b in zip(first, last)) or "-")
        if cells != ["-", "-"]:
            per_class = _mean_of(rs, "images_per_class")
            rows.append([label, f"{f:g}", f"{per_class:.0f}" if per_class else "-", str(len(rs)), *cells])
    if not rows:
        return ""
    lines = ["", "### Locality over training (first → last evaluated epoch, mean over heads and seeds)", "",
             "Nonlocality: mean distance (in patches) attended, per block; gates: sigma(lambda) of each "
             "GPSA block (1 = positional attention only, 0 = content only).", ""]
    return "\n".join(lines + _table(["variant", "fraction", "images/class", "n", "nonlocality per block",
                                     "gate per GPSA block"], rows)) + "\n"


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def _sample_efficiency_figure(cells: Sequence[Cell], path: Path) -> None:
    fig = Figure(figsize=(10, 4), layout="tight")  # no pyplot: no global backend or figure state
    ax, ax2 = fig.subplots(1, 2)
    variants = list(dict.fromkeys(c.variant for c in cells))
    base_label = next((c.label for c in cells if c.baseline), "baseline")
    for i, v in enumerate(variants):
        cs = sorted((c for c in cells if c.variant == v), key=lambda c: c.fraction)
        fx = [c.fraction for c in cs]
        color = f"C{i}"
        ax.errorbar(fx, [c.test_mean for c in cs], yerr=[0 if math.isnan(c.test_std) else c.test_std for c in cs],
                    marker="o", capsize=3, color=color, label=f"{cs[0].label} (test)")
        ax.errorbar(fx, [c.val_mean for c in cs], yerr=[0 if math.isnan(c.val_std) else c.val_std for c in cs],
                    marker="s", capsize=3, color=color, ls="--", alpha=0.6, label=f"{cs[0].label} (val)")
        if not cs[0].baseline and any(not math.isnan(c.gain_test) for c in cs):
            ax2.errorbar(fx, [100 * c.gain_test for c in cs],
                         yerr=[0 if math.isnan(c.gain_test_sd) else 100 * c.gain_test_sd for c in cs],
                         marker="o", capsize=3, color=color, label=f"{cs[0].label} vs {base_label} (ours, test)")
    pf = sorted(PAPER_SAMPLE_EFFICIENCY)
    ax2.plot(pf, [100 * relative_gain(PAPER_SAMPLE_EFFICIENCY[f][1], PAPER_SAMPLE_EFFICIENCY[f][0]) for f in pf],
             "k:", marker="^", label="paper, ImageNet ConViT-S vs DeiT-S")
    ax2.axhline(0, color="grey", lw=0.8)
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("fraction of training images per class")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("top-1 vs training fraction (mean ± std over seeds)")
    ax2.set_ylabel("relative gain (%)")
    ax2.set_title(f"relative gain over {base_label}")
    fig.savefig(path, dpi=120)


def _grouped_figure(cells: Sequence[Cell], path: Path, title: str) -> None:
    """Bars per variant, one colour per fraction, error bars = std over seeds."""
    variants = list(dict.fromkeys(c.variant for c in cells))
    labels = {c.variant: c.label for c in cells}
    fractions = sorted({c.fraction for c in cells})
    fig = Figure(figsize=(max(6, 1.3 * len(variants)), 4), layout="tight")
    ax = fig.subplots()
    width = 0.8 / len(fractions)
    for j, f in enumerate(fractions):
        d = {c.variant: c for c in cells if c.fraction == f}
        xs = [i + (j - (len(fractions) - 1) / 2) * width for i, v in enumerate(variants) if v in d]
        ys = [d[v].test_mean for v in variants if v in d]
        es = [0 if math.isnan(d[v].test_std) else d[v].test_std for v in variants if v in d]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=f"f = {f:g} (test)")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([labels[v] for v in variants], rotation=25, ha="right", fontsize=8)
    lo = min((c.test_mean for c in cells if not math.isnan(c.test_mean)), default=0)
    ax.set_ylim(max(0, lo - 10), None)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def _curves(records: Sequence[Dict[str, Any]], key: str) -> Tuple[List[float], List[List[float]]]:
    """Locality ``key`` over training: (training progress epoch / epochs at each evaluated epoch,
    [[value per block, mean over heads and seeds] per evaluated epoch]); empty without it."""
    runs = []
    for r in records:
        evals = [e for e in r.get("evals") or [] if (e.get("locality") or {}).get(key)]
        total = r.get("epochs") or (evals[-1]["epoch"] if evals else 1)
        if evals:
            runs.append([(e["epoch"] / total, [statistics.fmean(x for x in heads if x is not None)
                                               if heads and any(x is not None for x in heads) else math.nan
                                               for heads in e["locality"][key]]) for e in evals])
    n = min((len(run) for run in runs), default=0)
    return ([runs[0][i][0] for i in range(n)],
            [[statistics.fmean(run[i][1][b] for run in runs) for b in range(len(runs[0][i][1]))] for i in range(n)])


def _locality_figure(records: Sequence[Dict[str, Any]], path: Path) -> bool:
    """Nonlocality per block and gate per GPSA block over training (the paper's Figs. 5-6), one
    column per fraction, one row per variant and measure; False (nothing written) without locality."""
    groups: Dict[Tuple[str, float], List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("label", r["variant"]), float(r["fraction"])), []).append(r)
    fractions = sorted({f for _, f in groups})
    labels = list(dict.fromkeys(label for label, _ in groups))
    curves = {(label, key, f): _curves(groups.get((label, f), []), key)  # each computed once
              for key in ("nonlocality", "gates") for label in labels for f in fractions}
    panels = list(dict.fromkeys((label, key) for label, key, f in curves if curves[label, key, f][0]))
    if not panels:
        return False
    fig = Figure(figsize=(3.2 * len(fractions), 2.3 * len(panels)), layout="tight")
    axes = fig.subplots(len(panels), len(fractions), squeeze=False)
    for row, (label, key) in enumerate(panels):
        for col, f in enumerate(fractions):
            ax, (xs, ys) = axes[row][col], curves[label, key, f]
            blocks = len(ys[0]) if ys else 0
            for b in range(blocks):
                ax.plot(xs, [y[b] for y in ys], marker=".", color=_BLOCK_COLOURS(b / max(1, blocks - 1)),
                        label=f"{'GPSA block' if key == 'gates' else 'block'} {b + 1}")
            per_class = _mean_of(groups.get((label, f), []), "images_per_class")
            ax.set_title(f"{label}, {per_class:.0f}/class" if per_class else f"{label}, f = {f:g}", fontsize=8)
            ax.set_ylabel("gate sigma(lambda)" if key == "gates" else "nonlocality (patches)", fontsize=7)
            ax.set_xlabel("training progress (epoch / epochs)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if blocks and col == len(fractions) - 1:
                ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside, not on, the curves
    fig.savefig(path, dpi=110)
    return True


def write_results(records: Sequence[Dict[str, Any]], output: Path, grid: str = "",
                  title: str = "") -> Dict[str, Path]:
    """Write results.csv, summary.csv, results.md and the grid's figure into ``output``."""
    output = Path(output)
    grid = grid or (records[0]["grid"] if records else "")
    paths = {"csv": output / "results.csv", "summary": output / "summary.csv", "md": output / "results.md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_RUN_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)
    cells = summarize(records)
    with open(paths["summary"], "w", newline="") as f:
        fields = list(asdict(cells[0])) if cells else ["variant"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for c in cells:
            w.writerow(asdict(c))
    preset = records[0].get("preset", "") if records else ""
    paths["md"].write_text(markdown(cells, grid, title or f"{grid} ({preset})") + locality_markdown(records))
    if cells:
        fig = output / FIGURE_NAMES.get(grid, "results.png")
        if grid == "sample-efficiency":
            _sample_efficiency_figure(cells, fig)
        else:
            _grouped_figure(cells, fig, f"{grid} ({preset}): test top-1, mean ± std over seeds")
        paths["figure"] = fig
    if _locality_figure(records, output / "locality_over_training.png"):
        paths["locality_figure"] = output / "locality_over_training.png"
    return paths
