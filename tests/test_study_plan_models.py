"""convit study --models / --img-size / --device: the arms planned (params and GMACs of each,
the CNN arm beside the default pair), and every bad input refused in one line before any run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_image_folder

from convit.cli import main
from convit.study.driver import check_device
from convit.study.runs import load_plan


def _folder(tmp_path):
    return write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=30, size=32, splits=("train",))


def _study(tmp_path, capsys, *extra):
    argv = ["study", str(_folder(tmp_path)), "--output", str(tmp_path / "o"), "--budget", "10m"]
    rc = main([*argv, "--sizes", "5", "20", "--dry-run", *map(str, extra)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_default_plan_adds_the_cnn_arm(tmp_path, capsys):
    rc, out, _ = _study(tmp_path, capsys)
    assert rc == 0
    plan = load_plan(tmp_path / "o")
    assert plan.arm_names == ["convit", "deit", "resnet"] and plan.version == 3
    # Which pair fits depends on this machine's timing (tests/test_study_pair_choice.py checks the
    # choice); whichever it is, the CNN arm stands beside a matching ConViT/DeiT pair.
    convit = plan.model.arm("convit").model
    assert convit in ("convit_digits", "convit_tiny", "convit_small") and plan.device in ("cpu", "cuda")
    assert plan.model.arm("deit").model == convit.replace("convit", "deit")
    assert all(a.gmacs and a.gmacs > 0 for a in plan.model.arms)
    assert "ResNet" in out and "GMACs" in out


def test_three_named_arms_with_params_and_gmacs(tmp_path, capsys):
    rc, out, _ = _study(tmp_path, capsys, "--models", "convit_tiny,deit_tiny,resnet", "--img-size", 32)
    assert rc == 0
    raw = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert list(raw["model"]["params"]) == ["convit", "deit", "resnet"]
    assert all(g > 0 for g in raw["model"]["gmacs"].values())
    assert raw["model"]["resolution"] == 32 and raw["model"]["grid"] == 8  # patch 16 -> 4
    assert any("patch size 4" in n for n in raw["notes"])
    params = raw["model"]["params"]
    assert abs(params["resnet"] / params["convit"] - 1) < 0.15
    plan = load_plan(tmp_path / "o")
    assert plan.model.arm("convit").model == "convit_tiny" and plan.model.arm("resnet").model == "resnet"
    assert "ConViT 5," in out and "note:" in out


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--models", "convit_tiy,deit_tiny"], "closest is 'convit_tiny'"),
        (["--models", "convit_tiny,deit_small"], "neither the paper's pairing"),
        (["--models", "deit_tiny,resnet"], "needs one ConViT"),
        (["--img-size", 64], "larger than the images"),
        (["--models", "convit_tiny", "--img-size", 31], "not divisible"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, extra, says):
    rc, _, err = _study(tmp_path, capsys, *extra)
    lines = [ln for ln in err.splitlines() if ln.startswith("convit study: error:")]
    assert rc != 0 and len(lines) == 1 and says in lines[0], err
    assert not (tmp_path / "o" / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a node without a GPU")
def test_cuda_is_refused_without_a_gpu(tmp_path, capsys):
    rc, _, err = _study(tmp_path, capsys, "--device", "cuda")
    assert rc != 0 and "no GPU" in err


def test_a_cuda_plan_is_refused_where_it_cannot_train(tmp_path, capsys):
    assert _study(tmp_path, capsys, "--device", "cpu")[0] == 0
    plan = load_plan(tmp_path / "o")
    assert plan.recipe["device"] == "cpu" and plan.recipe["amp"] == "off"
    check_device(plan)
    with pytest.raises(ValueError, match="--device cuda"):
        check_device(plan, "slurm", gpus_per_node=1)
    plan.recipe["device"] = "cuda"
    with pytest.raises(ValueError, match="--gpus-per-node"):
        check_device(plan, "slurm")
    check_device(plan, "slurm", gpus_per_node=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            check_device(plan)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_plan_times_and_trains_on_the_gpu_in_bf16(tmp_path, capsys):
    assert _study(tmp_path, capsys, "--device", "auto")[0] == 0
    plan = load_plan(tmp_path / "o")
    assert (plan.device, plan.dtype, plan.timed_on) == ("cuda", "bfloat16", "cuda")
    assert plan.recipe["device"] == "cuda" and plan.recipe["amp"] == "bf16"
