"""convit study's runs: a whole study end to end, the same plan under every launcher gives the same
numbers, two processes on one folder run each run once, a stopped study resumes to the result
of an uninterrupted one, and a study fits its budget."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_image_folder

from convit.cli import main
from convit.core.fileio import read_jsonl

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def make_plan(root: Path, epochs: int = 4, seeds: int = 2) -> Path:
    """plan.json of a tiny study (2 classes with spaces in a name, a held-out test split, 10
    images per class after a one-image validation hold-out, 2 seeds, the default arms ConViT,
    DeiT and the CNN: 6 runs) with ``epochs`` epochs per run, validated every ``epochs / 2``."""
    data = write_image_folder(
        root / "data", classes=("cat a", "dog"), per_class=14, size=8, splits=("train",)
    )
    assert (
        main(
            [
                "study",
                str(data),
                "--output",
                str(root / "planned"),
                "--sizes",
                "10",
                "--budget",
                "60m",
                "--seeds",
                str(seeds),
                "--dry-run",
            ]
        )
        == 0
    )
    path = root / "planned" / "plan.json"
    plan = json.loads(path.read_text())
    for lv in plan["levels"]:
        assert lv["val_images"] == 2
        lv["epochs"], lv["warmup_epochs"], lv["eval_every"] = epochs, 1, max(1, epochs // 2)
    # a budget already spent: no size is trained again for longer (tests/test_study_extend.py)
    plan["request"]["budget_s"] = 1.0
    path.write_text(json.dumps(plan))
    return path


def top1(study: Path) -> dict[str, float]:
    """name -> top-1 of results.csv."""
    with open(study / "results.csv") as f:
        return {r["name"]: float(r["top1"]) for r in csv.DictReader(f)}


def attempts(study: Path) -> dict[str, list[str]]:
    return {p.parent.name: p.read_text().splitlines() for p in sorted(study.glob("runs/*/attempts.log"))}


def study_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "convit.cli", "study", *map(str, args)]


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    return make_plan(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def serial_top1(plan_file: Path) -> dict[str, float]:
    """The plan run serially in this process: the reference numbers."""
    out = plan_file.parent.parent / "serial"
    assert main(["study", "--plan", str(plan_file), "--output", str(out)]) == 0
    return top1(out)


@pytest.mark.slow
def test_serial_study_end_to_end(plan_file, serial_top1, capsys):
    study = plan_file.parent.parent / "serial"
    assert len(serial_top1) == 6
    assert {name.split("-")[0] for name in serial_top1} == {"convit", "deit", "resnet"}
    # results.csv holds each run's own final test top-1: hits over the plan's test images
    n_test = json.loads(plan_file.read_text())["data"]["test_images"]
    for name, v in serial_top1.items():
        assert v == pytest.approx(read_jsonl(study / "runs" / name / "log.jsonl")[-1]["test_top1"], abs=1e-9)
        assert v * n_test / 100 == pytest.approx(round(v * n_test / 100), abs=1e-6), (name, v, n_test)
    assert {n: len(a) for n, a in attempts(study).items()} == {n: 1 for n in serial_top1}
    assert (study / "report.html").is_file() and (study / "verdict.txt").read_text().strip()
    verdict = (study / "verdict.txt").read_text()
    assert "DeiT" in verdict and "ResNet" in verdict  # every arm is compared with ConViT
    # every run was validated on its own hold-out (never the test split) and checked for convergence
    for name in serial_top1:
        result = json.loads((study / "runs" / name / "result.json").read_text())
        assert [e for e, _ in result["val_curve"]] == [2, 4] and result["convergence"] is not None
        log = read_jsonl(study / "runs" / name / "log.jsonl")
        assert [e["epoch"] for e in log if "test_top1" in e] == [4]
    assert "Validation curves" in (study / "report.html").read_text()
    assert sorted(os.listdir(study / "data" / "val")) == ["cat a", "dog"]
    # again: everything is done, nothing is trained, the same verdict is printed
    capsys.readouterr()
    assert main(["study", "--plan", str(plan_file), "--output", str(study)]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 runs already finished" in out and "(trained," not in out
    assert out.strip().endswith((study / "verdict.txt").read_text().strip())
    assert {n: len(a) for n, a in attempts(study).items()} == {n: 1 for n in serial_top1}


@pytest.mark.slow
def test_local_launcher_gives_the_serial_numbers(plan_file, serial_top1, tmp_path):
    out = tmp_path / "local"
    proc = subprocess.run(
        study_cmd("--plan", plan_file, "--output", out, "--launcher", "local", "--jobs", "2"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert top1(out) == serial_top1
    assert list((out / "logs").iterdir()), "the jobs' logs land in the study folder"


@pytest.mark.slow
def test_two_processes_on_one_folder_run_each_run_once(plan_file, serial_top1, tmp_path):
    out = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            study_cmd("--plan", plan_file, "--output", out),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        for _ in range(2)
    ]
    texts = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], texts
    assert {n: len(a) for n, a in attempts(out).items()} == {n: 1 for n in serial_top1}, attempts(out)
    assert sum(t.count("(trained,") for t in texts) == len(serial_top1), texts
    assert top1(out) == serial_top1
    assert texts[0].strip().splitlines()[-1] == texts[1].strip().splitlines()[-1]


@pytest.mark.slow
def test_interrupted_study_resumes_to_the_uninterrupted_result(tmp_path):
    plan = make_plan(tmp_path / "a", epochs=12)
    ref = tmp_path / "ref"
    assert main(["study", "--plan", str(plan), "--output", str(ref)]) == 0
    out = tmp_path / "stopped"
    # Ctrl-C's default action, whatever pytest inherited: a background job of a non-interactive
    # shell starts with SIGINT ignored, and its children would then ignore this one
    proc = subprocess.Popen(
        study_cmd("--plan", plan, "--output", out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = None
    deadline = time.time() + 300
    while first is None and time.time() < deadline and proc.poll() is None:
        logs = [
            p
            for p in out.glob("runs/*/log.jsonl")
            if len(p.read_text().splitlines()) >= 3 and not (p.parent / "result.json").exists()
        ]
        first = logs[0].parent if logs else None
        time.sleep(0.05)
    assert first is not None, "no run got to its third epoch"
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, text
    assert not (first / "result.json").exists() and (first / "last.pt").exists()
    assert main(["study", "--plan", str(plan), "--output", str(out)]) == 0
    assert [ln.split()[2] for ln in attempts(out)[first.name]] == ["start", "resume"]
    assert top1(out) == top1(ref)


@pytest.mark.slow
def test_a_small_folder_study_fits_its_budget(tmp_path):
    data = write_image_folder(tmp_path / "flat", classes=("x", "y", "z"), per_class=40, size=16, splits=("",))
    t0 = time.perf_counter()
    proc = subprocess.run(
        study_cmd(data / "", "--budget", "2m", "--output", tmp_path / "o"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wall <= 1.3 * 120, f"a 2-minute study took {wall:.0f} s:\n{proc.stdout}"
    last = proc.stdout.strip().splitlines()[-1]
    assert "images per class" in last and last == (tmp_path / "o" / "verdict.txt").read_text().strip()


def test_the_report_draws_every_runs_validation_curve():
    from convit.study.curves import convergence_summary, curves_figure
    from convit.study.records import StudyRecord
    from convit.training.convergence import check_convergence

    curve = [(2, 40.0), (4, 55.0), (6, 56.0), (8, 70.0)]
    records = [
        StudyRecord(
            name=f"{arm}-f1-s{seed}",
            status="done",
            variant=arm,
            images_per_class=n,
            seed=seed,
            val_curve=curve,
            convergence=check_convergence(curve, 10_000),
        )
        for arm in ("convit", "deit")
        for n in (10, 30)
        for seed in (0, 1)
    ]
    fig = curves_figure(records, ["convit", "deit"])
    assert len(fig.axes) == 2 and sum(len(ax.lines) for ax in fig.axes) == 8
    assert all(line.get_linestyle() == "--" for ax in fig.axes for line in ax.lines)  # still improving
    assert convergence_summary(records).startswith("0 of 8 runs checked had converged")
    assert curves_figure([StudyRecord(name="x", status="done")], ["convit"]) is None


@pytest.mark.slow
def test_study_report_reads_cleanly_in_a_browser(plan_file, serial_top1):
    """report.html in Chromium at 1280x800 (tests/browser.py): no console errors, every plot
    loads, the verdict sentence is visible without scrolling; the screenshot is kept beside it."""
    from browser import browser_or_skip, view_page

    browser_or_skip()
    study = plan_file.parent.parent / "serial"
    view = view_page(study / "report.html", ".verdict", study / "report.png")
    assert view.console_errors == []
    assert view.image_count >= 2 and view.broken_images == []
    assert view.key_visible_without_scrolling, (view.key_top, view.key_bottom, view.viewport_height)
    assert view.key_text.strip() == (study / "verdict.txt").read_text().strip()
    assert view.screenshot.stat().st_size > 10_000
