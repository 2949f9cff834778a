"""Write ``chosen/`` beside this file: sec. 5's sample-efficiency and ablation tables at the chosen
schedules, with paired 95 % intervals, and their figures, from the committed ``result.json`` files.

* Sample efficiency: DeiT, ConViT and the CNN arm (ResNet) at 50 / 100 / 250 images per class at
  base 8 (``sample-efficiency``, ``cnn-grid/base8``) and at 1,000 per class at base 32
  (``convergence/base32``, ``cnn-grid/base32``): the schedules ``convergence.json`` chose.
* Ablation at 100 images per class (base 8): seed 0 of every variant (``ablation``), seed 1 of
  ConViT and DeiT from ``sample-efficiency`` (the same settings: seed 0 of both sweeps agrees to
  the last digit), the other seeds from ``ablation-seeds``.
* Convergence of every run of the sample-efficiency table by the shared rule
  (:func:`convit.training.convergence.check_convergence`), seed 1 and the CNN included.

Intervals: :func:`convit.experiments.paired.paired_comparison` (the study's verdict statistic;
the test part from the accuracies alone).  Run from the repository root:
``python docs/results/cifar10-cpu/write_tables.py`` (``regenerate.py`` runs it too); with
``--paste`` it also puts ``tables.md`` into docs/results.md sec. 5, between :data:`BEGIN` and :data:`END`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from write_convergence import val_images  # beside this file

from convit.experiments.grids import PAPER_ABLATION
from convit.experiments.paired import Paired, describe, paired_comparison, size_of
from convit.experiments.results import markdown_table, plus_minus
from convit.experiments.run_record import RunRecord
from convit.experiments.summary import Cell, mean_std, summarize
from convit.experiments.sweep_figures import grouped_figure, sample_efficiency_figure
from convit.training.convergence import check_convergence, val_curve

ROOT = Path(__file__).resolve().parent
TEST_IMAGES = 10_000
#: Test top-1 of a run's best.safetensors (eval_best.py), beside its result.json.
BEST_FILE = "best_val_test.json"
VAL_IMAGES = 5_000
#: (folder, variants, seeds, images per class) of the sample-efficiency table, at the chosen
#: schedules (None: all); a (variant, size, seed) is taken from the first folder that has it.
SAMPLE_EFFICIENCY = (
    ("sample-efficiency", ("deit", "convit"), None, (50, 100, 250)),
    ("convergence/base32", ("deit", "convit"), None, (1000,)),
    ("cnn-grid/base8", ("resnet",), None, (50, 100, 250)),
    ("cnn-grid/base32", ("resnet",), None, (1000,)),
)
BASE_EPOCHS = {50: 8, 100: 8, 250: 8, 1000: 32}
#: The same for the ablation table.
ABLATION = (
    ("ablation", None, (0,), (100,)),
    ("sample-efficiency", ("deit", "convit"), (1,), (100,)),
    ("ablation-seeds", None, None, (100,)),
)
ABLATION_SIZE = 100
#: The multi-seed ablation variants, in the paper's order; every pair of them is compared.
ABLATION_STEPS = ("convit", "no-conv-init", "deit", "frozen-random-gpsa")
FOLDERS_OF_ISSUE_34 = ("convergence/base16", "convergence/base32", "cnn-lr", "cnn-grid", "ablation-seeds")


def _records(folder: str) -> list[tuple[RunRecord, Path]]:
    """The finished runs anywhere under ``folder`` (none when it does not exist), each with its run folder."""
    return [(RunRecord.read(p), p.parent) for p in sorted((ROOT / folder).rglob("result.json"))]


Source = tuple[str, Optional[Sequence[str]], Optional[Sequence[int]], Optional[Sequence[int]]]


def _take(sources: Iterable[Source], at_best: bool = False) -> list[RunRecord]:
    """The runs of ``sources`` (folder, variants, seeds, images per class; None: all), each
    (variant, size, seed) from the first folder that has it; ``at_best``: as of their best
    validation epoch (:func:`_at_best`)."""
    out: dict[tuple[str, float, int], RunRecord] = {}
    for folder, variants, seeds, sizes in sources:
        for r, run_dir in _records(folder):
            key = (r.variant, size_of(r), r.seed)
            wanted = variants is None or r.variant in variants
            wanted = wanted and (seeds is None or r.seed in seeds)
            wanted = wanted and (sizes is None or round(size_of(r)) in sizes)
            if wanted and key not in out:
                out[key] = _at_best(r, run_dir) if at_best else r
    return sorted(out.values(), key=lambda r: (size_of(r), r.seed, r.variant))


def _at_best(r: RunRecord, run_dir: Path) -> RunRecord:
    """``r`` as of its best validation epoch: val top-1 there (logged by every run) and test top-1
    of best.safetensors (eval_best.py's file; None where the weights were not kept)."""
    kept = run_dir / BEST_FILE
    test = json.loads(kept.read_text())["test_top1"] if kept.is_file() else None
    return dataclasses.replace(r, val_top1=r.best_val_top1, test_top1=test)


def sample_efficiency_records(at_best: bool = False) -> list[RunRecord]:
    return _take(SAMPLE_EFFICIENCY, at_best)


def ablation_records() -> list[RunRecord]:
    """The ablation's runs, variants in the paper's order (the figure's bars follow it)."""
    rank = {v: i for i, v in enumerate(PAPER_ABLATION)}
    return sorted(_take(ABLATION), key=lambda r: (rank.get(r.variant, len(rank)), r.seed))


def _pm(values: list[float]) -> str:
    return plus_minus(*mean_std(values))


def _values(records: Sequence[RunRecord], variant: str, size: float, metric: str) -> list[float]:
    values = [getattr(r, metric) for r in records if r.variant == variant and size_of(r) == size]
    return [v for v in values if v is not None]


def _interval_at(p: Paired | None, size: float) -> str:
    if p is None or size not in p.sizes:
        return "-"
    k = p.sizes.index(size)
    return f"{describe(p.per_size[k])} (n={p.seeds[k]})"


def _compare(records: Sequence[RunRecord], arm: str, base: str, metric: str, images: int) -> Paired | None:
    try:
        return paired_comparison(records, arm, base, metric, images)
    except ValueError:
        return None


def _sample_efficiency_table(records: list[RunRecord], metric: str, images: int) -> list[str]:
    cvd = _compare(records, "convit", "deit", metric, images)
    cvr = _compare(records, "convit", "resnet", metric, images)
    header = ["images/class", "base epochs", "DeiT", "ConViT", "ResNet"]
    header += ["ConViT − DeiT [95 % CI]", "ConViT − ResNet [95 % CI]"]
    rows = []
    for size in sorted({size_of(r) for r in records}):
        cells = [_pm(_values(records, v, size, metric)) for v in ("deit", "convit", "resnet")]
        row = [f"{size:,.0f}", str(BASE_EPOCHS[round(size)]), *cells]
        rows.append(row + [_interval_at(cvd, size), _interval_at(cvr, size)])
    lines = markdown_table(header, rows)
    for p in (cvd, cvr):
        if p is not None and p.trend is not None:
            lines.append("")
            lines.append(
                f"{p.arm} − {p.baseline}, pooled over the sizes (seed part df {p.seed_df}): average "
                f"{describe(p.average)} points, trend {describe(p.trend)} points per doubling of "
                "images per class."
            )
    return lines


def _converged(r: RunRecord) -> str:
    """``r``'s last-quarter validation gain, marked when it is not under the shared threshold."""
    check = check_convergence(val_curve(r.evals), val_images(r.settings))
    return f"{check.gain:+.2f}" + ("" if check.converged else " (not converged)")


def _convergence_table(records: list[RunRecord]) -> list[str]:
    """Per model and size, each seed's last-quarter validation gain by the rule of
    convergence.json (which judged seed 0 of the transformers when the schedules were chosen)."""
    rows = []
    for size in sorted({size_of(r) for r in records}):
        cells = []
        for variant in ("deit", "convit", "resnet"):
            runs = [r for r in records if r.variant == variant and size_of(r) == size]
            cells.append(" / ".join(_converged(r) for r in runs) or "-")
        rows.append([f"{size:,.0f}", str(BASE_EPOCHS[round(size)]), *cells])
    header = ["images/class", "base epochs", "DeiT", "ConViT", "ResNet"]
    return markdown_table(header, rows)


def _ablation_table(records: list[RunRecord]) -> list[str]:
    labels = {r.variant: r.label for r in records}
    order = [v for v in PAPER_ABLATION if v in labels]
    rows = []
    for v in order:
        test = _values(records, v, ABLATION_SIZE, "test_top1")
        val = _values(records, v, ABLATION_SIZE, "val_top1")
        rows.append([labels[v], str(len(test)), _pm(test), _pm(val), str(PAPER_ABLATION[v][1])])
    lines = markdown_table(["variant", "n", "test top-1", "val top-1", "paper, 10 % of ImageNet"], rows)
    steps = []
    for a, b in itertools.combinations([v for v in ABLATION_STEPS if v in labels], 2):
        test = _compare(records, a, b, "test_top1", TEST_IMAGES)
        val = _compare(records, a, b, "val_top1", VAL_IMAGES)
        if test is None or val is None:
            continue
        resolved = "yes" if test.per_size[0].clear else "no"
        step = f"{labels[a]} − {labels[b]} (n={test.seeds[0]})"
        steps.append([step, describe(test.per_size[0]), describe(val.per_size[0]), resolved])
    header = ["step (paired seeds)", "test, points [95 % CI]", "val, points [95 % CI]", "resolved (test)"]
    return [*lines, "", *markdown_table(header, steps)]


def _cpu_hours() -> str:
    seconds = sum(r.cpu_seconds for folder in FOLDERS_OF_ISSUE_34 for r, _ in _records(folder))
    return f"{seconds:,.0f} CPU-s = {seconds / 3600:.2f} CPU-hours"


def tables() -> str:
    se = sample_efficiency_records()
    ab = ablation_records()
    lines = ["#### Sample efficiency at the chosen schedules: test top-1 (%) of the final model", ""]
    lines += _sample_efficiency_table(se, "test_top1", TEST_IMAGES)
    lines += ["", "#### The same runs: validation top-1 (%) of the final model", ""]
    lines += _sample_efficiency_table(se, "val_top1", VAL_IMAGES)
    best = sample_efficiency_records(at_best=True)
    lines += ["", "#### The same runs at their best validation epoch: validation top-1 (%) there", ""]
    lines += _sample_efficiency_table(best, "val_top1", VAL_IMAGES)
    lines += ["", "#### ... and test top-1 (%) there (runs whose best.safetensors was kept)", ""]
    lines += _sample_efficiency_table(best, "test_top1", TEST_IMAGES)
    lines += [
        "",
        "#### Did every run converge? Validation top-1 gained over its last quarter (points; seed 0 / 1)",
        "",
    ]
    lines += _convergence_table(se)
    lines += ["", f"#### Ablation at {ABLATION_SIZE} images per class (base 8)", ""]
    lines += _ablation_table(ab)
    made = "Runs made for issue 34 (convergence steps, CNN lr and grid, ablation seeds)"
    lines += ["", f"{made}: {_cpu_hours()}."]
    return "\n".join(lines) + "\n"


#: docs/results.md holds tables.md verbatim between these lines (tests/test_results_regenerate.py).
BEGIN = "<!-- begin: docs/results/cifar10-cpu/chosen/tables.md (write_tables.py --paste) -->"
END = "<!-- end: chosen/tables.md -->"


def paste(results: Path, text: str) -> None:
    """Put ``text`` between :data:`BEGIN` and :data:`END` in ``results`` (docs/results.md)."""
    doc = results.read_text()
    head, rest = doc.split(BEGIN + "\n")
    _, tail = rest.split(END + "\n")
    results.write_text(f"{head}{BEGIN}\n{text}{END}\n{tail}")


def main(out: Path | None = None, into_results: bool = False) -> None:
    out = out or ROOT / "chosen"
    out.mkdir(parents=True, exist_ok=True)
    text = tables()
    (out / "tables.md").write_text(text)
    cells: list[Cell] = summarize(sample_efficiency_records())
    sample_efficiency_figure(cells, out / "top1_vs_images.png")
    grouped_figure(summarize(ablation_records()), out / "ablation.png", "ablation, 100 images per class")
    if into_results:
        paste(ROOT.parents[1] / "results.md", text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(into_results="--paste" in sys.argv[1:])
