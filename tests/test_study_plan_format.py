"""The typed plan of ``convit study`` reads and writes plan.json exactly as version 1 has it, and
writes new plans in version 2 (version 1's keys in order, plus validation and power).

The fixtures under ``fixtures/study_plan_v1/`` were written by the code before the plan was
typed (a dry-run study of a small image folder with a held-out split, and of digits), with the
runs that code derived from them; both must come back unchanged."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from conftest import write_image_folder

from convit.cli import main
from convit.study.driver import describe_plan
from convit.study.plan import study_runs
from convit.study.plan_schema import Plan
from convit.study.records import StudyRecord
from convit.study.runs import load_plan, save_plan

FIXTURES = Path(__file__).parent / "fixtures" / "study_plan_v1"


def _fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("kind", ["folder", "digits"])
def test_a_version_1_plan_reads_and_writes_back_byte_for_byte(kind, tmp_path):
    text = (FIXTURES / f"{kind}_plan.json").read_text()
    plan = Plan.from_json(json.loads(text))
    save_plan(tmp_path, plan)
    assert (tmp_path / "plan.json").read_text() == text
    assert load_plan(tmp_path) == plan


@pytest.mark.parametrize("kind", ["folder", "digits"])
def test_a_version_1_plan_gives_the_same_runs(kind):
    plan = Plan.from_json(_fixture(f"{kind}_plan.json"))
    runs = [dataclasses.asdict(r) for r in study_runs(plan, "DATA")]
    assert runs == _fixture(f"{kind}_runs.json")


def test_the_plan_reads_as_attributes():
    plan = Plan.from_json(_fixture("folder_plan.json"))
    assert plan.arm_names == ["convit", "deit"]
    assert plan.model.arm("convit").model_kwargs["local_up_to_layer"] == 3
    assert plan.data.holdout is not None and plan.data.holdout.cap == 250
    assert [lv.images_per_class for lv in plan.levels] == [3, 11]
    assert plan.request.sizes == [3, 11] and plan.timing.params["deit"] == plan.model.arm("deit").params
    assert describe_plan(plan).startswith("plan: 8 runs = 2 models x 2 sizes x 2 seeds;")


def test_any_number_of_arms():
    d = _fixture("folder_plan.json")
    d["model"]["cnn"] = copy.deepcopy(d["model"]["deit"])
    d["model"]["params"]["cnn"] = 123
    plan = Plan.from_json(d)
    assert plan.arm_names == ["convit", "deit", "cnn"] and plan.to_json() == d
    runs = study_runs(plan, "DATA")
    assert len(runs) == 3 * len(plan.levels) * len(plan.seeds)
    assert {r.variant for r in runs} == {"convit", "deit", "cnn"}
    assert "cnn 123 parameters" in describe_plan(plan) and "3 models" in describe_plan(plan)


def test_another_version_is_refused():
    d = dict(_fixture("digits_plan.json"), version=4)
    with pytest.raises(ValueError, match="plan version 4"):
        Plan.from_json(d)


def test_a_version_1_plan_says_nothing_of_power_or_validation():
    plan = Plan.from_json(_fixture("digits_plan.json"))
    assert plan.power is None and all(lv.val_images == 0 for lv in plan.levels)
    assert "power" not in describe_plan(plan) and "validation" not in describe_plan(plan)
    assert all(r.settings["val_fraction"] == 0.0 for r in study_runs(plan, "DATA"))


def test_a_new_plan_is_version_3_with_the_version_1_layout_first(tmp_path, capsys):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=14, size=8, splits=("train",))
    argv = ["study", str(data), "--output", str(tmp_path / "o"), "--budget", "3m", "--sizes", "3", "11"]
    assert main([*argv, "--dry-run"]) == 0
    new = json.loads((tmp_path / "o" / "plan.json").read_text())
    old = _fixture("folder_plan.json")

    def layout(x):
        if isinstance(x, dict):
            return {k: layout(v) for k, v in x.items()}
        return type(x).__name__

    # TrainConfig fields added since the fixture was written (micro-batches for the
    # out-of-memory retry, images held in memory) are the only new recipe keys
    added = {"micro_batches": "int", "in_memory": "str"}
    assert layout(new["recipe"]) == {**layout(old["recipe"]), **added}
    assert layout(new["threads"]) == layout(old["threads"])
    assert list(new["timing"]) == list(old["timing"]) and list(new["timing"]["params"]) == [
        "convit",
        "deit",
        "resnet",
    ]  # the CNN arm beside the default pair
    assert list(new["model"])[:4] == list(old["model"])[:4] and list(new["model"])[4] == "gmacs"
    assert list(new)[: len(old)] == list(old)
    assert new["version"] == 3 and list(new)[len(old) :] == ["power", "device", "dtype", "timed_on", "notes"]
    assert list(new["data"]) == list(old["data"])
    assert list(new["request"]) == [*old["request"], "models", "img_size", "device"]
    level_keys = list(new["levels"][0])
    assert level_keys[:4] == list(old["levels"][0]) and level_keys[4:] == [
        "val_fraction",
        "val_images",
        "eval_every",
    ]
    assert new["request"]["seeds"] is None and len(new["seeds"]) >= 3  # chosen by the budget
    assert new["power"]["seeds"] == len(new["seeds"]) and new["power"]["resolvable"] > 0
    plan = load_plan(tmp_path / "o")
    save_plan(tmp_path / "again", plan)
    assert (
        json.loads((tmp_path / "again" / "plan.json").read_text()) == new
        and load_plan(tmp_path / "again") == plan
    )


def test_a_record_keeps_the_result_json_keys():
    d = {
        "name": "convit-f1-s0",
        "variant": "convit",
        "fraction": 1.0,
        "images_per_class": 11,
        "seed": 0,
        "epochs": 40,
        "top1": 75.0,
        "top5": 100.0,
        "test_loss": 0.5,
        "seconds": 3.0,
        "train_images": 22,
        "attempts": 1,
        "resumed": False,
        "locality": None,
        "status": "trained",
    }
    record = StudyRecord.from_json(d)
    assert record.top1 == 75.0 and record.converged is None
    written = record.to_json()
    assert json.dumps(dict(list(written.items())[: len(d)])) == json.dumps(d)  # the old keys, in order
    assert list(written)[len(d) :] == ["val_top1", "val_curve", "convergence"]
    assert StudyRecord.from_json(d, status="done").status == "done"


def test_a_record_keeps_its_validation_curve_and_convergence():
    from convit.training.convergence import check_convergence

    curve = [(2, 40.0), (4, 55.0), (6, 60.0), (8, 60.2)]
    check = check_convergence(curve, 100)
    record = StudyRecord(
        name="deit-f1-s0", status="trained", val_top1=60.2, val_curve=curve, convergence=check
    )
    back = StudyRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert back == record and back.converged is True


def test_a_retried_run_says_so_in_its_record_and_others_keep_their_keys(tmp_path):
    from convit.training.oom_retry import retry_note

    (tmp_path / "log.jsonl").write_text(
        json.dumps({"epoch": 1, "micro_batch": 16, "micro_batches": 2}) + "\n"
    )
    note = retry_note(tmp_path)
    assert note == "retried with micro-batch 16 x 2"
    record = StudyRecord(name="convit-f1-s0", status="trained", top1=50.0, note=note)
    assert StudyRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert "note" not in StudyRecord(name="x", status="trained").to_json()


def test_the_same_command_on_an_older_study_says_how_to_resume_it(tmp_path, capsys):
    from convit.cli import main

    study = tmp_path / "study"
    study.mkdir()
    (study / "plan.json").write_text((FIXTURES / "digits_plan.json").read_text())
    assert main(["study", "digits", "--output", str(study), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "planned by an older convit (plan.json version 1)" in err
    assert f"convit study --plan {study / 'plan.json'} --output {study}" in err
