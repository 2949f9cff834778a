"""Write ``convergence.json`` beside this file from the convergence-check runs' ``result.json``.

The check (docs/results.md, sec. 5): DeiT at the smallest fraction of the ``cifar10-cpu`` scale
(50 images per class, seed 0) trained with base_epochs 4, 8 (the scale's, i.e. the sweep's own
run) and 16; doubling the schedule should move the validation top-1 by under 1 point.  Only
validation numbers are recorded.  Run from the repository root:
``python docs/results/cifar10-cpu/write_convergence.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RUN = "deit/f0.0111111/seed0/result.json"
RUNS = {
    4: ROOT / "convergence/epochs4" / RUN,
    8: ROOT / "sample-efficiency" / RUN,
    16: ROOT / "convergence/epochs16" / RUN,
}


def run_entry(base: int, path: Path) -> dict[str, Any]:
    """What the check records of one run: its command, final and best val top-1, CPU time, val curve."""
    folder = path.parents[3].relative_to(ROOT.parents[2])
    entry: dict[str, Any] = {
        "base_epochs": base,
        "epochs": base * 90,
        "command": (
            "convit experiment sample-efficiency --preset cifar10-cpu --variants deit --fractions "
            f"0.011111111111111112 --seeds 1{'' if base == 8 else f' --epochs {base}'} --output {folder}"
        ),
    }
    if not path.is_file():
        return {**entry, "status": "not finished"}
    r = json.loads(path.read_text())
    return {
        **entry,
        "val_top1": r["val_top1"],
        "best_val_top1": r["best_val_top1"],
        "cpu_s": r.get("cpu_s"),
        "wall_s": r["wall_s"],
        "finished": r["finished"],
        "val_curve": [[e["epoch"], e["val_top1"]] for e in r.get("evals", []) if "val_top1" in e],
    }


def main() -> None:
    runs = [run_entry(base, path) for base, path in RUNS.items()]
    val = {e["base_epochs"]: e["val_top1"] for e in runs if "val_top1" in e}
    checks = [
        {
            "from": a,
            "to": 2 * a,
            "val_change": round(val[2 * a] - val[a], 2),
            "passes": abs(val[2 * a] - val[a]) < 1.0,
        }
        for a in (4, 8)
        if a in val and 2 * a in val
    ]
    out = {
        "criterion": "doubling the schedule moves DeiT's validation top-1 at the smallest fraction "
        "(50 images per class, seed 0) by under 1 point; the test split is not used",
        "scale": "cifar10-cpu",
        "runs": runs,
        "checks": checks,
    }
    (ROOT / "convergence.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(checks))


if __name__ == "__main__":
    main()
