"""convit study --pretrained: a fine-tuning study end to end from weights made here (tiny ConViT,
DeiT and ResNet trained a few epochs on digits, exported as hub-repo folders), weights looked for
before anything is timed (offline and missing: one line naming every place looked), the CNN
among timm's published ResNets, and plans written before fine-tuning still reading as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import hub_snapshot, write_image_folder
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from convit.cli import main
from convit.study.finetune_arms import _resolution, closest_resnet, look_up
from convit.study.plan_schema import Plan
from convit.study.runs import load_plan
from convit.study.sizing import SEEDS_MAX, size_study
from convit.study.study_recipe import FINETUNE_EPOCHS, finetune_sizing
from convit.study.timing import Timing
from convit.weights.zoo import create_model, load_model

FIXTURES = Path(__file__).parent / "fixtures" / "study_plan_v1"
#: convit train flags of a few quick epochs on a fifth of digits.
PRETRAIN = ["--sampling-ratio", "0.2", "--batch-size", "32", "--threads", "1", "--epochs", "3", "--no-report"]
TINY = ["depth=2", "embed_dim=16", "patch_size=2"]
CNN_ARGS = {"channels": [8, 16, 32, 64]}


def _pretrain(root: Path, name: str, model: str, *kwargs: str) -> Path:
    assert (
        main(["train", "--model", model, "--model-kwargs", *kwargs, *PRETRAIN, "--output", str(root / name)])
        == 0
    )
    return root / name / "model.safetensors"


def _export_cnn(weights: Path, folder: Path) -> None:
    """A timm model as timm publishes one (``convit export --format timm`` writes ConViTs only)."""
    from timm.models._hub import save_for_hf

    model, _ = load_model(weights)
    save_for_hf(model, str(folder), model_args=CNN_ARGS, safe_serialization=True)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Export folders of a tiny ConViT, its DeiT and a small ResNet, each trained 3 epochs on digits."""
    root = tmp_path_factory.mktemp("pretrain")
    runs = {
        "convit": _pretrain(root, "convit", "convit_digits", *TINY, "local_up_to_layer=1"),
        "deit": _pretrain(root, "deit", "deit_digits", *TINY, "local_up_to_layer=0"),
        "resnet": _pretrain(root, "resnet", "timm:resnet18", "channels=[8,16,32,64]"),
    }
    out = {arm: root / f"{arm}_export" for arm in runs}
    for arm in ("convit", "deit"):
        assert (
            main(["export", "--checkpoint", str(runs[arm]), "--format", "timm", "--output", str(out[arm])])
            == 0
        )
    _export_cnn(runs["resnet"], out["resnet"])
    return out


def _digits_folder(root: Path) -> Path:
    """Digits 0-3 as 8x8 PNGs, 30 training and 20 test images a class (another task than 0-9)."""
    d = load_digits()
    for split, lo, per_class in (("train", 0, 30), ("test", 1000, 20)):
        for c in range(4):
            (root / split / str(c)).mkdir(parents=True)
            for i in (lo + np.flatnonzero(d.target[lo:] == c))[:per_class]:
                Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(
                    root / split / str(c) / f"{i}.png"
                )
    return root


def _relative_change(start: dict, end: dict) -> float:
    """The largest ||end - start|| / ||start|| over the learnt tensors both hold with one shape (not
    batch-norm statistics, which follow the new data; not the new head or adapted input)."""
    keys = [
        k
        for k in start
        if k in end
        and start[k].shape == end[k].shape
        and start[k].dtype.is_floating_point
        and "running" not in k
    ]
    assert len(keys) > 5
    return max(float((end[k] - start[k]).norm() / start[k].norm()) for k in keys)


def test_a_fine_tuning_study_from_exported_weights(exports, tmp_path, capsys):
    data = _digits_folder(tmp_path / "digits0to3")
    models = ",".join(f"local-dir:{exports[a]}" for a in ("convit", "deit", "resnet"))
    argv = ["study", str(data), "--pretrained", "--models", models, "--sizes", "10", "--seeds", "1"]
    assert main([*argv, "--budget", "10m", "--output", str(tmp_path / "planned"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned from published weights: ConViT from local-dir:" in out and "ResNet" in out
    plan = load_plan(tmp_path / "planned")
    assert plan.arm_names == ["convit", "deit", "resnet"] and plan.request.pretrained
    assert [a.weights for a in plan.model.arms] == [f"local-dir:{exports[a]}" for a in plan.arm_names]
    assert plan.recipe["preset"] == "finetune" and plan.recipe["layer_decay"] == 0.75
    assert plan.levels[-1].epochs == FINETUNE_EPOCHS and plan.model.resolution == 8

    raw = json.loads((tmp_path / "planned" / "plan.json").read_text())
    for lv in raw["levels"]:
        lv["epochs"], lv["warmup_epochs"], lv["eval_every"] = 2, 1, 1
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    study = tmp_path / "study"
    assert main(["study", "--plan", str(tmp_path / "plan.json"), "--output", str(study)]) == 0
    lines = capsys.readouterr().out.splitlines()
    verdict = lines[-1]
    assert lines[-2].startswith("fine-tuned: ConViT from local-dir:")
    assert all(arm in verdict for arm in ("ConViT", "DeiT", "ResNet")), verdict
    for arm in plan.arm_names:
        run = study / "runs" / f"{arm}-f{plan.levels[0].fraction:.4g}-s0"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["pretrained"] is True and cfg["model"] == f"local-dir:{exports[arm]}"
        assert (run / "test_correct.npy").is_file()
        # Started from the exported weights: fine-tuning moved them a little (a fresh start: ~1.4).
        change = _relative_change(
            load_file(exports[arm] / "model.safetensors"), load_file(run / "model.safetensors")
        )
        assert change < 0.25, (arm, change)
        result = json.loads((run / "result.json").read_text())
        assert (result["locality"] is None) == (arm == "resnet")


def test_a_published_resnet_is_found_in_the_hub_cache(exports, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snap = hub_snapshot(tmp_path / "hf" / "hub", "timm/resnet18.a1_in1k", "0" * 40)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(exports["resnet"] / f, snap / f)
    found = look_up("hf-hub:timm/resnet18.a1_in1k")
    assert found.path == snap / "model.safetensors"
    model = create_model(
        "hf-hub:timm/resnet18.a1_in1k", pretrained=True, num_classes=3, in_chans=3, img_size=8
    )
    assert model.fc.out_features == 3 and model.conv1.in_channels == 3  # new head, input adapted from grey


@pytest.fixture
def offline(tmp_path, monkeypatch, no_network) -> dict[str, Path]:
    """An empty CONVIT_HOME and Hugging Face cache, HF_HUB_OFFLINE=1, and timing that fails the test."""
    home = tmp_path / "convit_home"
    hf = tmp_path / "hf"
    monkeypatch.setenv("CONVIT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)

    def no_timing(*args, **kwargs):
        raise AssertionError("timed before the weights were found")

    monkeypatch.setattr("convit.study.plan.measure", no_timing)
    return {"home": home, "hf": hf / "hub"}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("convit study: error: --pretrained: weights not found"), err
    return err[0]


def test_offline_without_weights_is_one_line_naming_every_place(tmp_path, capsys, offline):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=12, size=16, splits=("train",))
    assert main(["study", str(data), "--pretrained", "--output", str(tmp_path / "o")]) != 0
    line = _error_line(capsys)
    for part in (
        str(offline["home"] / "convit_tiny.pth"),
        str(offline["home"] / "deit_tiny.safetensors"),
        "timm/convit_tiny.fb_in1k",
        "timm/deit_tiny_patch16_224.fb_in1k",
        "hf-hub:timm/resnet18.a1_in1k",
        str(offline["hf"]),
        "HF_HUB_OFFLINE",
        "local-dir:",
    ):
        assert part in line, (part, line)
    assert not (tmp_path / "o").exists()

    models = f"hf-hub:someone/convit,local-dir:{tmp_path / 'nowhere'}"
    assert (
        main(["study", str(data), "--pretrained", "--models", models, "--output", str(tmp_path / "o")]) != 0
    )
    line = _error_line(capsys)
    assert "someone/convit" in line and str(tmp_path / "nowhere") in line and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "models, says",
    [("convit_digits,deit_digits", "has no published weights"), ("convit_tiny,timm:resnet18", "hf-hub:ID")],
)
def test_models_without_published_weights_are_one_line(tmp_path, capsys, models, says):
    data = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=12, size=16, splits=("train",))
    assert main(["study", str(data), "--pretrained", "--models", models, "--dry-run"]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and says in err[0], err


def test_the_cnn_is_the_published_resnet_closest_in_parameters():
    assert closest_resnet(5_700_000, 3, 1000)[0] == "resnet18"  # beside ConViT-Ti
    name, params = closest_resnet(27_800_000, 3, 1000)  # beside ConViT-S
    assert name == "resnet50" and 25_000_000 < params < 26_000_000


def test_a_fine_tuning_study_spends_its_budget_on_seeds():
    timing = Timing({"convit": 1e-3, "deit": 1e-3}, {"convit": 1e-4, "deit": 1e-4}, 0.0, 3.0, {})
    counts = {"a": 100, "b": 100}

    def size(seeds, available_s):
        return size_study(counts, timing, available_s=available_s, seeds=seeds, jobs=1, test_images=50)

    chosen = size(None, 3600.0)
    tuned = finetune_sizing(size, chosen, None, 3600.0)
    assert chosen.levels[-1].epochs > FINETUNE_EPOCHS and tuned.levels[-1].epochs == FINETUNE_EPOCHS
    assert tuned.seeds == SEEDS_MAX and tuned.estimate_s < chosen.estimate_s
    assert finetune_sizing(size, chosen, 2, 3600.0).seeds == chosen.seeds


@pytest.mark.parametrize("kind", ["folder", "digits"])
def test_a_plan_from_before_fine_tuning_reads_as_before(kind):
    raw = json.loads((FIXTURES / f"{kind}_plan.json").read_text())
    plan = Plan.from_json(raw)
    assert not plan.request.pretrained and all(a.weights is None for a in plan.model.arms)
    assert plan.to_json() == raw
    plan.model.arms[0].weights = "convit_tiny"
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again.model.arms[0].weights == "convit_tiny" and again.model.arms[1].weights is None


def test_the_resolution_keeps_the_weights_patches():
    assert _resolution(None, {"convit": "convit_tiny"}) == 128  # an 8x8 grid of its 16 px patches
    assert _resolution(None, {"convit": "convit_tiny", "deit": "deit_tiny"}) == 128
    assert _resolution(64, {"convit": "convit_tiny"}) == 64  # 4x4, as asked
    with pytest.raises(ValueError, match="not divisible by the patch size 16 of the DeiT"):
        _resolution(100, {"deit": "deit_tiny"})
