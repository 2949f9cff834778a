"""The CNN arm (convit/weights/cnn.py): timm's ResNet sized to the transformer it is compared
with, named ``resnet`` in the zoo, trained, saved and evaluated like our models, and offered by
the sample-efficiency grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from timm.models.resnet import BasicBlock, ResNet
from torch.utils.flop_counter import FlopCounterMode

import convit
from convit.cli import main
from convit.core.fileio import read_jsonl
from convit.core.presets import experiment_scale
from convit.experiments import grids
from convit.experiments.results import write_results
from convit.experiments.run_record import RunRecord, _model_facts
from convit.experiments.runner import plan_runs, run_sweep
from convit.nn.model import count_params
from convit.weights.checkpoint import CheckpointError, read_metadata, save_model
from convit.weights.cnn import TOLERANCE, CNNConfig, build_cnn, cnn_for, macs, param_count
from convit.weights.names import CONVIT_TINY_PARAMS
from convit.weights.training_start import TrainingStart, training_config, training_model

#: A CNN small enough to train in a second: digits-like (8 px, grey, 10 classes).
SMALL = dict(base_width=8, layers=[1, 1, 1, 1], img_size=8, in_chans=1, num_classes=10)


@pytest.mark.parametrize(
    "target,img_size,in_chans,num_classes",
    [
        (119_054, 32, 3, 10),  # cifar10-cpu's ConViT: 4x4 patches, 48 wide, 6 blocks, 5 GPSA
        (76_966, 8, 1, 10),  # digits-cpu's ConViT
        (CONVIT_TINY_PARAMS, 224, 3, 1000),  # convit_tiny: the zoo's default size
    ],
)
def test_sizing_is_within_tolerance_and_counted_exactly(target, img_size, in_chans, num_classes):
    cfg, params = cnn_for(target, img_size, in_chans, num_classes)
    assert abs(params - target) <= TOLERANCE * target
    assert cfg.widths == tuple(cfg.widths[0] * m for m in (1, 2, 4, 8))
    assert (cfg.in_chans, cfg.num_classes, cfg.img_size) == (in_chans, num_classes, (img_size, img_size))
    with torch.device("meta"):
        model = build_cnn(cfg)
    assert count_params(model) == params == param_count(cfg)


def test_a_target_outside_the_family_is_refused():
    with pytest.raises(ValueError, match="within 15%"):
        cnn_for(1_000, 32, 3, 10)


def test_the_model_is_timms_resnet():
    model = convit.create_model("resnet", **SMALL)
    assert type(model) is ResNet
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert all(type(block) is BasicBlock for stage in stages for block in stage)
    assert convit.create_model("resnet", widths=[8, 8], layers=[1, 1], img_size=8).cfg.widths == (8, 8)


@pytest.mark.parametrize("img_size,small", [(8, True), (32, True), (64, True), (65, False), (224, False)])
def test_small_stem_up_to_64_px_and_timms_stem_above(img_size, small):
    model = convit.create_model("resnet", base_width=8, layers=[1, 1, 1, 1], img_size=img_size)
    assert model.cfg.small_stem is small
    if small:
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
    else:
        assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
        assert isinstance(model.maxpool, nn.MaxPool2d)
    x = torch.randn(1, 3, img_size, img_size)
    flops = FlopCounterMode(display=False)
    with flops, torch.no_grad():
        assert model.eval()(x).shape == (1, 1000)
    assert flops.get_total_flops() // 2 == macs(model.cfg)  # what `convit models` reports


def test_zoo_name_and_sizing_kwargs():
    assert "resnet" in convit.list_models()
    default = convit.model_spec("resnet")
    assert default.family == "cnn" and default.config["target_params"] == CONVIT_TINY_PARAMS
    with torch.device("meta"):
        assert count_params(convit.create_model("convit_tiny")) == CONVIT_TINY_PARAMS
        model = convit.create_model("resnet")
    assert not model.cfg.small_stem and abs(count_params(model) / CONVIT_TINY_PARAMS - 1) <= TOLERANCE
    sized = convit.create_model("resnet", target_params=119_054, img_size=32, num_classes=10)
    assert sized.cfg.widths == cnn_for(119_054, 32, 3, 10)[0].widths
    assert convit.create_model("resnet", base_width=16, img_size=32).cfg.widths == (16, 32, 64, 128)
    with pytest.raises(ValueError, match="unknown CNN field"):
        convit.create_model("resnet", embed_dim=48)
    with pytest.raises(ValueError, match="not a ConViT"):
        convit.weights.zoo.config_of("resnet")
    assert training_config(TrainingStart("resnet", 10)) is None  # no ConViT memory estimate


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = convit.create_model("resnet", **SMALL).eval()
    for p in model.parameters():  # BasicBlocks start with zeroed last norms: make every weight count
        p.data.normal_(0, 0.1)
    model.layer1[0].bn1.running_mean.normal_()
    path = save_model(model, tmp_path / "cnn.safetensors", extra={"model_name": "resnet"})
    assert "config" not in read_metadata(path)  # never read back as a ConViT
    x = torch.randn(3, 1, 8, 8)
    for back in (convit.create_model(checkpoint_path=path), convit.load_model(path)[0]):
        assert type(back) is ResNet and back.cfg == model.cfg
        assert back.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
        assert torch.equal(back.eval()(x), model(x))
    model.reset_classifier(3)  # a new head: the file says so
    save_model(model, tmp_path / "three.safetensors")
    assert convit.load_model(tmp_path / "three.safetensors")[0].num_classes == 3
    facts = _model_facts_of(model, tmp_path)
    assert facts["params"] == count_params(model)  # batch-norm statistics are no parameters


def _model_facts_of(model: nn.Module, folder: Path) -> dict:
    save_model(model, folder / "model.safetensors")
    return _model_facts(folder)


def test_locality_hook_skips_the_cnn():
    from convit.analysis import log_locality

    assert log_locality(convit.create_model("resnet", **SMALL), torch.randn(2, 1, 8, 8)) == {}


def test_train_eval_predict_end_to_end(tmp_path, capsys):
    """`convit train --model resnet` on digits: one epoch, the run folder, a report without
    locality (marked as not a ConViT), and the saved model evaluated and used by eval/predict."""
    out = tmp_path / "run"
    flags = ["--model", "resnet", "--model-kwargs", "base_width=8", "layers=[1,1,1,1]", "--dataset", "digits"]
    flags += ["--epochs", "1", "--sampling-ratio", "0.2", "--batch-size", "32", "--threads", "1"]
    assert main(["train", *flags, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resnet (ResNet widths 8-16-32-64, blocks 1-1-1-1, 3x3 stem;" in printed
    log = read_jsonl(out / "log.jsonl")
    assert len(log) == 1 and "locality" not in log[0]
    report = (out / "report.html").read_text()
    assert "not a ConViT" in report and (out / "figures" / "training_curves.png").is_file()
    model, info = convit.load_model(out / "model.safetensors")
    assert type(model) is ResNet and info["data"]["dataset"] == "digits"
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == log[-1]["test_top1"]
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(out / "model.safetensors"), str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_sample_efficiency_grid_offers_the_cnn_sized_to_the_scales_convit(tmp_path, capsys):
    scale = experiment_scale("cifar10-cpu")
    assert grids.convit_params(scale) == 119_054
    names = [v.name for v in grids.grid_variants("sample-efficiency", scale)]
    assert names == ["convit", "deit"]  # on request only: default sweeps keep their runs
    (cnn,) = grids.grid_variants("sample-efficiency", scale, ["resnet"])
    assert cnn.role == "cnn" and cnn.label == "ResNet" and abs(cnn.params / 119_054 - 1) <= TOLERANCE
    specs = plan_runs("sample-efficiency", scale, tmp_path, seeds=1, variants=["resnet"])
    assert {s.overrides["model"] for s in specs} == {"resnet"}
    arch = specs[0].overrides["model_kwargs"]
    assert arch == {"widths": [10, 20, 40, 80], "layers": [1, 1, 1, 1], "small_stem": True}
    built = CNNConfig.from_dict({**arch, "img_size": 32, "num_classes": 10})
    assert param_count(built) == cnn.params
    assert specs[0].overrides["lr"] == scale.train["lr"]  # the scale's recipe; its own lr via --set
    argv = ["experiment", "sample-efficiency", "--preset", "cifar10-cpu", "--variants", "resnet", "--dry-run"]
    assert main([*argv, "--output", str(tmp_path)]) == 0
    assert f"{cnn.params:,} params" in capsys.readouterr().out


def test_tables_include_the_cnn(tmp_path):
    def record(variant: str, label: str, seed: int, top1: float, baseline: bool = False) -> RunRecord:
        return RunRecord(
            grid="sample-efficiency",
            preset="cifar10-cpu",
            variant=variant,
            label=label,
            fraction=0.1,
            seed=seed,
            test_top1=top1,
            val_top1=top1,
            baseline=baseline,
            params=100_000,
        )

    records = [record("convit", "ConViT", s, 50.0 + s) for s in (0, 1)]
    records += [record("deit", "DeiT", s, 40.0 + s, baseline=True) for s in (0, 1)]
    records += [record("resnet", "ResNet", s, 55.0 + s) for s in (0, 1)]
    paths = write_results(records, tmp_path, grid="sample-efficiency")
    md = paths["md"].read_text()
    assert "| ResNet | 2 |" in md and "ResNet 100,000" in md
    assert paths["figure"].is_file()


def test_a_sweep_trains_the_cnn_and_finds_it_finished(tmp_path):
    """Through the runner (the convit experiment path): the CNN's run trains at its scale, its
    record has its parameters and no locality, and the same sweep again trains nothing."""
    fast = {"eval_every": 1, "batch_size": 32}
    args = dict(fractions=[0.1], seeds=1, base_epochs=0.1, variants=["resnet"], train_overrides=fast)
    specs = plan_runs("sample-efficiency", "digits-cpu", tmp_path, **args)
    (record,) = run_sweep(specs, tmp_path, say=lambda s: None)
    assert record.variant == "resnet" and record.label == "ResNet" and record.role == "cnn"
    assert record.params == specs[0].variant.params and record.test_top1 is not None
    assert all("locality" not in e for e in record.evals)
    assert "ResNet" in (tmp_path / "results.md").read_text()

    def never(cfg):
        raise AssertionError(f"{cfg.output} was trained")

    (again,) = run_sweep(
        plan_runs("sample-efficiency", "digits-cpu", tmp_path, **args), tmp_path, fit_fn=never
    )
    assert again.skipped and again.test_top1 == record.test_top1


def test_fine_tuning_a_saved_cnn(tmp_path):
    """--finetune a CNN file: its own architecture, a new head for another class count; named
    as a ConViT (or a ConViT file named as the CNN) it is a clear error."""
    path = save_model(
        convit.create_model("resnet", **SMALL), tmp_path / "cnn.safetensors", {"model_name": "resnet"}
    )
    data = dict(in_chans=1, img_size=8, drop_path_rate=0.0)
    model = training_model(TrainingStart("resnet", 3, data, finetune=path), say=lambda s: None)
    assert type(model) is ResNet and model.num_classes == 3 and model.cfg.widths == (8, 16, 32, 64)
    with pytest.raises(CheckpointError, match="holds the CNN arm.*--model resnet"):
        training_model(TrainingStart("convit_digits", 10, data, finetune=path))
    vit = save_model(
        convit.create_model("convit_digits"), tmp_path / "vit.safetensors", {"model_name": "vit"}
    )
    with pytest.raises(CheckpointError, match="holds a ConViT.*--model vit"):
        training_model(TrainingStart("resnet", 10, data, finetune=vit))


def test_export_of_a_cnn_onnx_works_and_timm_layout_is_refused(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    import onnxruntime

    torch.manual_seed(0)
    model = convit.create_model("resnet", **SMALL).eval()
    path = save_model(model, tmp_path / "cnn.safetensors", extra={"model_name": "resnet"})
    assert (
        main(["export", "--checkpoint", str(path), "--format", "timm", "--output", str(tmp_path / "t")]) == 2
    )
    assert "not a ConViT" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(path), "--output", str(tmp_path / "cnn.onnx")]) == 0
    x = torch.randn(2, 1, 8, 8)
    session = onnxruntime.InferenceSession(str(tmp_path / "cnn.onnx"))
    out = session.run(None, {"images": x.numpy()})[0]
    assert np.abs(out - model(x).detach().numpy()).max() < 1e-4
