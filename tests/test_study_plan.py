"""convit study's plan and its checks: every bad input is one clear line before any run starts;
the held-out split is stratified and fixed; the plan pins the recipe and fits the budget; a
study folder holding another plan is refused unless --overwrite."""

from __future__ import annotations

import json
import time

import pytest
from conftest import write_image_folder

from convit.cli import main
from convit.study.plan import choose_resolution, hold_out, study_runs
from convit.study.plan_schema import Plan


def _study(capsys, *args) -> tuple:
    """``convit study *args``: (exit code, stdout, stderr)."""
    rc = main(["study", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("convit study: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_one_class_is_refused(tmp_path, capsys):
    data = write_image_folder(tmp_path / "d", classes=("only",), per_class=20, size=8, splits=("train",))
    rc, out, err = _study(capsys, data, "--output", tmp_path / "o", "--dry-run")
    assert rc == 2 and "one class ('only')" in _error_line(err) and not (tmp_path / "o").exists()


def test_a_class_smaller_than_the_smallest_size_is_refused(tmp_path, capsys):
    data = write_image_folder(
        tmp_path / "d", classes=("a", "b"), per_class=6, size=8, splits=("train", "val")
    )
    rc, _, err = _study(capsys, data, "--output", tmp_path / "o", "--dry-run")
    assert rc == 2 and "class 'a' has 6 training images; the smallest size compared needs 10 per class" in err
    rc, _, err = _study(capsys, data, "--output", tmp_path / "o", "--sizes", "2", "8", "--dry-run")
    assert rc == 2 and "the largest size asked for needs 8" in _error_line(err)


def test_held_out_images_count_against_the_smallest_size(tmp_path, capsys):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=12, size=8, splits=("train",))
    rc, _, err = _study(capsys, data, "--output", tmp_path / "o", "--dry-run")
    assert rc == 0, err  # 12 -> 10 left after the hold-out: fits
    data = write_image_folder(tmp_path / "e", classes=("a", "b"), per_class=11, size=8, splits=("train",))
    rc, _, err = _study(capsys, data, "--output", tmp_path / "p", "--dry-run")
    assert rc == 2 and "class 'a' has 9 training images after holding out 2 for testing" in _error_line(err)


@pytest.mark.parametrize("damage", ["empty", "garbage"])
def test_an_empty_or_unreadable_image_is_named(tmp_path, capsys, damage):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=12, size=8, splits=("train",))
    bad = data / "train" / "b" / "7.png"
    bad.write_bytes(b"" if damage == "empty" else b"this is not a picture at all")
    rc, _, err = _study(capsys, data, "--output", tmp_path / "o", "--dry-run")
    line = _error_line(err)
    assert rc == 2 and f"unreadable image {bad}" in line and ("empty" in line or damage == "garbage")


def test_a_budget_too_small_for_one_run_is_refused(tmp_path, capsys):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=12, size=8, splits=("train",))
    rc, _, err = _study(capsys, data, "--output", tmp_path / "o", "--budget", "2s")
    assert rc == 2 and "the budget is too small" in _error_line(err)
    assert not (tmp_path / "o" / "runs").exists()


def test_not_a_folder_nor_a_dataset(tmp_path, capsys):
    rc, _, err = _study(capsys, tmp_path / "nothing-here", "--dry-run")
    assert rc == 2 and "neither an image folder nor a built-in dataset" in _error_line(err)


def test_hold_out_is_stratified_fixed_and_disjoint():
    files = {"a": [f"a/{i}.png" for i in range(30)], "b": [f"b/{i}.png" for i in range(11)]}
    train, test = hold_out(files)
    assert (len(test["a"]), len(test["b"])) == (6, 2)
    assert hold_out(files) == (train, test)
    for c in files:
        assert sorted(train[c] + test[c]) == sorted(files[c]) and not set(train[c]) & set(test[c])


def test_resolution_gives_a_grid_of_about_8x8():
    assert choose_resolution((28, 28), 600, native=True) == (28, 4)
    assert choose_resolution((500, 375), 600, native=False) == (32, 4)
    assert choose_resolution((500, 375), 3600, native=False) == (48, 6)
    assert choose_resolution((8, 8), 600, native=True) == (8, 1)


def test_the_budget_counts_from_the_command_start(tmp_path, capsys):
    # convit.cli.main stamps args.started_at before importing the command: a study whose command
    # started three minutes ago (slow imports, a slow disk) has no time left of a 3-minute budget
    from convit.cli import build_parser
    from convit.commands import study as study_command

    data = write_image_folder(
        tmp_path / "d", classes=("a", "b"), per_class=40, size=8, splits=("train", "test")
    )
    argv = ["study", str(data), "--output", str(tmp_path / "o"), "--budget", "3m", "--dry-run"]
    args = build_parser("study").parse_args(argv)
    args.started_at = time.perf_counter() - 180.0
    with pytest.raises(ValueError, match="budget"):
        study_command.run(args)
    args.started_at = time.perf_counter()
    assert study_command.run(args) == 0


def test_plan_pins_the_recipe_and_matched_models(tmp_path, capsys):
    data = write_image_folder(
        tmp_path / "my data", classes=("cat a", "dog"), per_class=40, size=(12, 16), splits=("train", "test")
    )
    rc, out, err = _study(capsys, data, "--output", tmp_path / "o", "--budget", "3m", "--dry-run")
    assert rc == 0, err
    assert "plan: " in out and "estimated" in out
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert plan["data"]["test_from"] == "test" and plan["data"]["holdout"] is None
    assert plan["model"]["resolution"] == 12 and plan["model"]["patch_size"] == 2
    conv, deit = plan["model"]["convit"]["model_kwargs"], plan["model"]["deit"]["model_kwargs"]
    assert conv["local_up_to_layer"] == 3 and deit["local_up_to_layer"] == 0
    assert {k: conv[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")} == {
        k: deit[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")
    }
    assert (
        abs(plan["model"]["params"]["convit"] - plan["model"]["params"]["deit"])
        < 0.05 * plan["model"]["params"]["deit"]
    )
    assert plan["estimate_s"] <= 180 and len(plan["seeds"]) >= 3  # chosen by the budget
    assert "this study can resolve differences of about" in out
    runs = study_runs(Plan.from_json(plan), "x")
    assert len(runs) == len(plan["model"]["params"]) * len(plan["seeds"]) * len(plan["levels"]) and len(
        {r.name for r in runs}
    ) == len(runs)
    epochs = [lv["epochs"] * lv["images_per_class"] for lv in plan["levels"]]
    assert max(epochs) - min(epochs) <= max(lv["images_per_class"] for lv in plan["levels"])  # epochs x 1/f
    from convit.training.config import TrainConfig

    assert set(TrainConfig().to_dict()) - {"output", "resume", "overwrite"} <= set(runs[0].settings)
    # the same command reuses its plan; another budget is refused; --overwrite replaces it
    rc, out, _ = _study(capsys, data, "--output", tmp_path / "o", "--budget", "3m", "--dry-run")
    assert rc == 0 and "reusing the plan" in out
    rc, _, err = _study(capsys, data, "--output", tmp_path / "o", "--budget", "4m", "--dry-run")
    assert rc == 2 and "holds another study" in _error_line(err)
    rc, _, _ = _study(capsys, data, "--output", tmp_path / "o", "--budget", "4m", "--dry-run", "--overwrite")
    assert rc == 0 and json.loads((tmp_path / "o" / "plan.json").read_text())["request"]["budget_s"] == 240
