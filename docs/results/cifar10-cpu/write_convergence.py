"""Write ``convergence.json`` beside this file: every convergence step of the ``cifar10-cpu``
sample-efficiency runs, from their committed ``result.json`` (docs/results.md, sec. 5).

The rule (``convit.training.convergence.check_convergence``, the one ``convit study`` uses): a
run has converged when its validation top-1 gained less than max(0.5 points, one standard error
of the validation accuracy) over the last quarter of the run.  Where seed 0 of a size had not,
its schedule was doubled (``--epochs``, the base epochs' worth of 45k images) until it had, or
up to base 32.  Only validation numbers decide; the test split is not read here.  The first
check (DeiT at 50 images per class, base 4 / 8 / 16, judged then by a change of under 1 point)
is judged here by the same rule as the rest.  Run from the repository root:
``python docs/results/cifar10-cpu/write_convergence.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from convit.training.convergence import check_convergence, val_curve

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parents[2]
#: CIFAR-10's training images: the validation hold-out is val_fraction of them, before subsetting.
TRAIN_IMAGES = 50_000
FRACTIONS = {50: "0.0111111", 100: "0.0222222", 250: "0.0555556", 1000: "0.222222"}
ARGS = {
    50: "0.011111111111111112",
    100: "0.022222222222222223",
    250: "0.05555555555555555",
    1000: "0.2222222222222222",
}
#: base epochs -> folder of the runs at that schedule (base 8: the sweep itself).
FOLDERS = {
    4: "convergence/epochs4",
    8: "sample-efficiency",
    16: "convergence/base16",
    32: "convergence/base32",
}
#: (images per class, model) -> the schedules run, in order.
STEPS = {
    (50, "deit"): [4, 8, 16],
    (50, "convit"): [8],
    (100, "convit"): [8],
    (100, "deit"): [8],
    (250, "convit"): [8, 16],
    (250, "deit"): [8, 16],
    (1000, "convit"): [8, 16, 32],
    (1000, "deit"): [8, 16, 32],
}


def val_images(settings: dict[str, Any]) -> int:
    """How many validation images a run of these settings held out (its ``val_fraction``)."""
    return round(settings["val_fraction"] * TRAIN_IMAGES)


def _folder(size: int, model: str, base: int) -> str:
    if size == 50 and base == 16:
        return "convergence/epochs16"  # the first check's own folder
    return FOLDERS[base]


def _command(size: int, model: str, base: int, folder: str) -> str:
    epochs = "" if base == 8 else f" --epochs {base}"
    return (
        f"convit experiment sample-efficiency --preset cifar10-cpu --variants {model} "
        f"--fractions {ARGS[size]} --seeds 1{epochs} --output docs/results/cifar10-cpu/{folder}"
    )


def step(size: int, model: str, base: int) -> dict[str, Any]:
    """One run's entry: its schedule, command, validation numbers and convergence check."""
    folder = _folder(size, model, base)
    path = ROOT / folder / model / f"f{FRACTIONS[size]}" / "seed0" / "result.json"
    entry: dict[str, Any] = {
        "base_epochs": base,
        "folder": folder,
        "command": _command(size, model, base, folder),
    }
    if not path.is_file():
        return {**entry, "status": "not finished"}
    r = json.loads(path.read_text())
    curve = val_curve(r.get("evals", []))
    n_val = val_images(r["settings"])
    check = check_convergence(curve, n_val)
    return {
        **entry,
        "status": "finished",
        "epochs": r["epochs"],
        "val_top1": r["val_top1"],
        "best_val_top1": r["best_val_top1"],
        "best_epoch": r["best_epoch"],
        "cpu_s": r.get("cpu_s"),
        "wall_s": r["wall_s"],
        "val_images": n_val,
        "check": check.to_json(),
        "val_curve": [list(pt) for pt in curve],
    }


def chosen(steps: list[dict[str, Any]]) -> Optional[int]:
    """The first schedule whose run had converged (None: none yet)."""
    return next((s["base_epochs"] for s in steps if s.get("check", {}).get("converged")), None)


def main() -> None:
    sizes = []
    for (size, model), bases in STEPS.items():
        steps = [step(size, model, b) for b in bases]
        base = chosen(steps)
        last = steps[-1]
        if base is not None:
            state = f"converged at base {base}"
        elif last["status"] != "finished":
            state = f"not converged yet; base {last['base_epochs']} not finished"
        else:
            state = f"not converged by base {last['base_epochs']}"
        sizes.append(
            {"images_per_class": size, "model": model, "chosen_base": base, "state": state, "steps": steps}
        )
    out = {
        "rule": "validation top-1 gained less than max(0.5 points, one standard error of the validation "
        "accuracy) over the last quarter of the run (convit.training.convergence.check_convergence); seed 0",
        "scale": "cifar10-cpu",
        "sizes": sizes,
    }
    (ROOT / "convergence.json").write_text(json.dumps(out, indent=1) + "\n")
    for s in sizes:
        print(s["images_per_class"], s["model"], s["state"])


if __name__ == "__main__":
    main()
