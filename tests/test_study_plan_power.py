"""A study's plan says before any run what it can resolve (power from the test split and a seed
prior measured on our own sweep), chooses its seeds and epochs by the budget, and holds out a
validation split for the convergence check -- never the test split."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from convit.study.driver import describe_plan, with_cut_short_note
from convit.study.power import SEED_SD, estimate_power
from convit.study.records import CUT_SHORT, StudyRecord, cut_short_note
from convit.study.sizing import (
    EPOCHS_MAX,
    SEEDS_DEFAULT,
    SEEDS_MAX,
    STEPS_TARGET,
    size_study,
    validation_split,
)
from convit.study.timing import Timing
from convit.training.convergence import Convergence, can_judge

SWEEP = Path(__file__).parent.parent / "docs" / "results" / "cifar10-cpu" / "sample-efficiency"


def test_the_seed_prior_is_the_pooled_sd_of_our_sweeps_paired_differences():
    top1: dict[tuple[str, str], dict[str, float]] = {}
    for f in SWEEP.glob("*/*/seed*/result.json"):
        arm, size, seed = f.parts[-4:-1]
        top1.setdefault((size, seed), {})[arm] = json.loads(f.read_text())["test_top1"]
    by_size: dict[str, list[float]] = {}
    for (size, _), v in sorted(top1.items()):
        by_size.setdefault(size, []).append(v["convit"] - v["deit"])
    assert len(by_size) == 4 and all(len(d) == 2 for d in by_size.values())
    pooled = math.sqrt(statistics.fmean(statistics.variance(d) for d in by_size.values()))
    assert SEED_SD == pytest.approx(pooled, abs=0.005)


def test_power_of_the_users_small_study():
    # 5 classes, 150 test images: 2 seeds resolve nothing useful (the user saw "+3.3 +- 59.3")
    two, three = estimate_power(2, 150, 5), estimate_power(3, 150, 5)
    assert two.resolvable > 50 and 15 < three.resolvable < 20
    assert estimate_power(5, 150, 5).resolvable < three.resolvable
    assert estimate_power(3, 10_000, 5).resolvable < 4  # the seeds, not the test images, dominate
    assert (
        estimate_power(1, 150, 5).resolvable is None
        and "cannot resolve" in estimate_power(1, 150, 5).describe()
    )
    assert two.expected_top1 == 0.6 and two.discordance == pytest.approx(0.48)
    tiny = estimate_power(2, 24, 3)  # more than 100 points: no difference of accuracies is that large
    assert tiny.resolvable > 100 and "cannot resolve any difference" in tiny.describe()
    assert "cannot resolve" not in three.describe()


def _timing(train_s: float = 1e-3) -> Timing:
    return Timing({"convit": train_s, "deit": train_s}, {"convit": 1e-4, "deit": 1e-4}, 0.0, 1.0, {})


def _size(counts, available_s, seeds=None, sizes=None, batch=32):
    return size_study(
        counts,
        _timing(),
        available_s=available_s,
        seeds=seeds,
        jobs=1,
        test_images=100,
        batch=batch,
        sizes=sizes,
    )


def test_validation_holds_out_at_least_one_of_each_class_and_at_most_the_cap():
    val = validation_split({"a": 12, "b": 40})
    assert val.per_class == {"a": 1, "b": 4} and val.fraction == pytest.approx(0.1)
    val = validation_split({"a": 5, "b": 7})
    assert min(val.per_class.values()) >= 1
    val = validation_split({"a": 5000, "b": 5000})
    assert val.per_class == {"a": 100, "b": 100}
    assert validation_split({"a": 1, "b": 9}).images == 0


def test_the_seeds_follow_the_budget_and_the_flag():
    counts = {"a": 60, "b": 60}
    small = _size(counts, 120.0)
    assert small.seeds == SEEDS_DEFAULT and small.estimate_s <= 120.0
    assert _size(counts, 120.0, seeds=2).seeds == 2
    spare = _size(counts, 1e7)
    assert spare.seeds == SEEDS_MAX  # budget to spare: every run at full length, more seeds
    top = max(spare.levels, key=lambda lv: lv.images_per_class)
    steps = top.epochs * math.ceil(2 * (60 - 6) / 32)
    assert top.epochs > EPOCHS_MAX and steps >= STEPS_TARGET  # small data trains for many epochs


def test_every_validated_run_can_be_judged_and_its_fraction_is_of_what_is_left():
    sizing = _size({"a": 60, "b": 80}, 600.0)
    for lv in sizing.levels:
        assert lv.val_images == 14 and lv.val_fraction == pytest.approx(0.1)
        evaluated = sorted({*range(lv.eval_every, lv.epochs + 1, lv.eval_every), lv.epochs})
        assert can_judge([(e, 50.0) for e in evaluated]), (lv, evaluated)
        assert round(lv.fraction * (60 - 6)) == lv.images_per_class


def test_a_size_that_cannot_spare_validation_images_trains_without_them(tmp_path):
    sizing = _size({"a": 10, "b": 10}, 600.0)
    assert [(lv.images_per_class, lv.val_images, lv.eval_every) for lv in sizing.levels] == [(10, 0, None)]
    sizing = _size({"a": 30, "b": 30}, 600.0, sizes=[10, 30])
    assert [(lv.images_per_class, lv.val_images > 0) for lv in sizing.levels] == [(10, True), (30, False)]


def test_the_plan_prints_its_power_and_validation(tmp_path, capsys):
    from conftest import write_image_folder

    from convit.cli import main
    from convit.study.runs import load_plan

    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=30, size=8, splits=("train",))
    assert main(["study", str(data), "--output", str(tmp_path / "o"), "--budget", "3m", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "power: this study can resolve differences of about" in out and "warning:" in out
    assert "validation: " in out and "never the test split" in out
    plan = load_plan(tmp_path / "o")
    assert plan.power.test_images == plan.data.test_images == 12 and describe_plan(plan) in out


def _record(name: str, converged) -> StudyRecord:
    check = None if converged is None else Convergence(converged, 1.0, 0.5, 6, 8, 100)
    return StudyRecord(name=name, status="trained", convergence=check)


def test_a_study_cut_short_says_so_once():
    records = [_record("a", True), _record("b", False), _record("c", None)]
    assert [r.converged for r in records] == [True, False, None]
    note = cut_short_note(records)
    assert note == CUT_SHORT.format(k=1, n=2)
    verdict = with_cut_short_note("No clear difference at 10 images per class (2 seeds).", records)
    assert verdict.endswith(note + ".") and verdict.count("cut short") == 1
    assert with_cut_short_note(verdict, records) == verdict
    assert cut_short_note(records[:1]) is None and with_cut_short_note("X.", records[:1]) == "X."
