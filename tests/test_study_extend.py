"""Training to convergence with the budget left (convit.study.extend): which sizes are trained
again and when, the runs it adds, which schedule the verdict compares, and a whole study that
extends a size whose runs were still improving."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
from test_study_runs import make_plan

import convit.study.runs as study_runs_module
from convit.cli import main
from convit.study.extend import (
    MAX_DOUBLINGS,
    Extension,
    extension_runs,
    load_extensions,
    next_extensions,
    save_extensions,
    verdict_records,
)
from convit.study.records import StudyRecord
from convit.study.runs import load_plan
from convit.training.convergence import Convergence


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """A tiny plan of two sizes (10 and 5 images per class), 2 seeds, three arms, 4 epochs."""
    path = make_plan(tmp_path_factory.mktemp("extend"), epochs=4)
    raw = json.loads(path.read_text())
    small = dict(raw["levels"][0], images_per_class=5, fraction=raw["levels"][0]["fraction"] / 2)
    raw["levels"] = [small, raw["levels"][0]]
    path.write_text(json.dumps(raw))
    return load_plan(path)


def _late(gain: float) -> Convergence:
    return Convergence(gain < 0.5, gain, 0.5, 3, 4, 100)


def _records(plan, gains: dict[int, float], epochs: int = 4, seconds: float = 10.0) -> list[StudyRecord]:
    """Every run of the plan at ``epochs``, its convergence gain by size (images per class)."""
    return [
        StudyRecord(
            name=f"{arm}-f{lv.fraction:.4g}-s{seed}",
            status="done",
            variant=arm,
            fraction=lv.fraction,
            images_per_class=lv.images_per_class,
            seed=seed,
            epochs=epochs,
            top1=50.0,
            seconds=seconds,
            convergence=_late(gains[lv.images_per_class]),
        )
        for seed in plan.seeds
        for lv in plan.levels
        for arm in plan.arm_names
    ]


def test_sizes_still_improving_are_doubled_most_unconverged_first_while_they_fit(plan):
    recs = _records(plan, {5: 3.0, 10: 6.0})
    budget = plan.request.budget_s
    # each size: 6 runs of 10 s, doubled = 120 s (jobs 1)
    both = next_extensions(plan, recs, remaining_s=0.05 * budget + 240, jobs=1)
    assert [e.fraction for e in both] == [plan.levels[1].fraction, plan.levels[0].fraction]
    assert all(e.epochs == 8 for e in both) and "6 of 6 runs at 10 images per class" in both[0].reason
    assert [e.estimate_s for e in both] == [120.0, 120.0]
    one = next_extensions(plan, recs, remaining_s=0.05 * budget + 200, jobs=1)
    assert [e.fraction for e in one] == [plan.levels[1].fraction]
    assert next_extensions(plan, recs, remaining_s=0.05 * budget + 100, jobs=1) == []
    assert len(next_extensions(plan, recs, remaining_s=0.05 * budget + 130, jobs=2)) == 2
    converged = _records(plan, {5: 0.1, 10: 0.2})
    assert next_extensions(plan, converged, remaining_s=1e9, jobs=1) == []


def test_a_size_is_doubled_at_most_max_doublings_times(plan):
    lv = plan.levels[1]
    ext = Extension(lv.fraction, lv.epochs * 2**MAX_DOUBLINGS, lv.warmup_epochs * 4, 2, "x")
    recs = _records(plan, {5: 0.1, 10: 6.0})
    longest = [
        dataclasses.replace(r, name=f"{r.name}-e{ext.epochs}", epochs=ext.epochs)
        for r in recs
        if r.images_per_class == 10
    ]
    assert next_extensions(plan, recs + longest, remaining_s=1e9, jobs=1) == []


def test_extension_runs_double_the_schedule_and_carry_the_epochs_in_their_names(plan):
    lv = plan.levels[1]
    (ext,) = next_extensions(plan, _records(plan, {5: 0.1, 10: 6.0}), remaining_s=1e9, jobs=1)
    assert ext.warmup_epochs == pytest.approx(2 * lv.warmup_epochs) and ext.eval_every == 1
    runs = extension_runs(plan, [ext], "somewhere")
    assert len(runs) == len(plan.seeds) * len(plan.arm_names)
    assert runs[0].name == f"convit-f{lv.fraction:.4g}-s0-e8"
    for r in runs:
        assert r.epochs == 8 and r.settings["epochs"] == 8 and r.settings["eval_every"] == 1
        assert r.settings["warmup_epochs"] == pytest.approx(2 * lv.warmup_epochs)


def test_the_verdict_compares_the_longest_schedule_every_arm_and_seed_finished(plan):
    recs = _records(plan, {5: 0.1, 10: 6.0})
    longer = [
        dataclasses.replace(r, name=f"{r.name}-e8", epochs=8, top1=60.0)
        for r in recs
        if r.images_per_class == 10
    ]
    chosen = verdict_records(recs + longer, plan)
    assert sorted((r.images_per_class, r.epochs) for r in chosen) == sorted([(5, 4)] * 6 + [(10, 8)] * 6)
    # one longer run missing: that size stays on the planned schedule
    chosen = verdict_records(recs + longer[1:], plan)
    assert {r.epochs for r in chosen} == {4}


def test_extensions_round_trip_through_their_file(tmp_path, plan):
    ext = Extension(plan.levels[0].fraction, 8, 1.5, 1, "why", 12.5)
    save_extensions(tmp_path, [ext])
    assert load_extensions(tmp_path) == [ext] and load_extensions(tmp_path / "none") == []


def test_a_study_trains_a_size_still_improving_again_for_longer(tmp_path, monkeypatch, capsys):
    plan_file = make_plan(tmp_path, epochs=4, seeds=1)
    raw = json.loads(plan_file.read_text())
    raw["request"]["budget_s"] = 3600.0  # time to spare
    plan_file.write_text(json.dumps(raw))
    real = study_runs_module._convergence

    def judged(curve, n_val):  # the planned 4-epoch runs are "still improving"; longer ones not
        c = real(curve, n_val)
        return dataclasses.replace(c, converged=curve[-1][0] > 4)

    monkeypatch.setattr(study_runs_module, "_convergence", judged)
    out = tmp_path / "o"
    assert main(["study", "--plan", str(plan_file), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "training again with 8 epochs: 3 of 3 runs at 10 images per class still improving" in text
    with open(out / "results.csv") as f:
        names = sorted(r["name"] for r in csv.DictReader(f))
    assert len(names) == 6 and sum(n.endswith("-e8") for n in names) == 3
    assert [e.epochs for e in load_extensions(out)] == [8]
    assert "cut short" not in (out / "verdict.txt").read_text()  # the verdict is on the 8-epoch runs
    assert "Trained again for longer" in (out / "report.html").read_text()
    # the budget is the whole study's: the same command again trains nothing more
    capsys.readouterr()
    assert main(["study", "--plan", str(plan_file), "--output", str(out)]) == 0
    again = capsys.readouterr().out
    assert "training again" not in again and "(trained," not in again
    assert [e.epochs for e in load_extensions(out)] == [8]


def test_the_budget_counts_from_the_studys_first_start(tmp_path):
    import time

    from convit.study.driver import _study_start

    first = _study_start(tmp_path, time.perf_counter() - 100.0)  # this command began 100 s ago
    assert abs(time.time() - 100.0 - first) < 5.0
    later = _study_start(tmp_path, time.perf_counter())  # a later command on the same folder
    assert later == pytest.approx(first, abs=1e-3)
