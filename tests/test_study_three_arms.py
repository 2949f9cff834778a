"""A whole study of three zoo arms at a chosen resolution: ``--models convit_tiny,deit_tiny,resnet
--img-size 32`` on a real image folder (scikit-learn's digits, 3 classes written as 32x32 PNGs),
fixed sizes, two seeds, planned and then run with a short schedule so it takes about a minute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convit.cli import main


def _digits_folder(root: Path, classes: int = 3, per_class: int = 40) -> Path:
    """Digits 0..classes-1 as 32x32 RGB PNGs (8x8 scaled up 4x): real images, not noise."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(classes):
        out = root / str(c)
        out.mkdir(parents=True)
        for i, im in enumerate(d.images[d.target == c][:per_class]):
            a = (im / 16 * 255).astype(np.uint8)
            Image.fromarray(a).resize((32, 32), Image.NEAREST).convert("RGB").save(out / f"{i}.png")
    return root


@pytest.mark.slow
def test_three_zoo_arms_at_32_px_give_a_verdict_naming_each(tmp_path, capsys):
    data = _digits_folder(tmp_path / "digits")
    out = tmp_path / "o"
    argv = ["study", str(data), "--models", "convit_tiny,deit_tiny,resnet", "--img-size", "32"]
    argv += ["--sizes", "5", "15", "--seeds", "2", "--budget", "30m", "--output", str(out)]
    assert main([*argv, "--dry-run"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [plan["model"][arm]["model"] for arm in ("convit", "deit", "resnet")] == [
        "convit_tiny",
        "deit_tiny",
        "resnet",
    ]
    assert plan["model"]["resolution"] == 32 and plan["model"]["grid"] == 8  # patch 16 -> 4
    # a short schedule, so the test takes about a minute: 2 epochs at 15 per class, 6 at 5
    for lv in plan["levels"]:
        lv["epochs"] = 2 if lv["images_per_class"] == 15 else 6
        lv["warmup_epochs"] = 1
        lv["eval_every"] = 1
    # and a budget the runs use up, so no size is trained again for longer (test_study_extend)
    plan["request"]["budget_s"] = 60.0
    (out / "plan.json").write_text(json.dumps(plan))
    capsys.readouterr()
    assert main(["study", "--plan", str(out / "plan.json"), "--output", str(out)]) == 0
    verdict = (out / "verdict.txt").read_text()
    assert "ConViT" in verdict and "DeiT" in verdict and "ResNet" in verdict
    assert "Bonferroni for 2 comparisons" in verdict and "nan" not in verdict
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2 * 2
    report = (out / "report.html").read_text()
    assert "convit_tiny" in report and "deit_tiny" in report and "resnet" in report.lower()
