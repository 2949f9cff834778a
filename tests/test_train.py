"""Training end to end through ``convit train`` (in-process), with tiny models on digits.

Covers the run folder layout and log keys, the printed summary against log.jsonl, exact
resume after an interruption, atomic checkpoints (crash before rename, disk full), NaN
stops, the config system and bad input.
"""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convit.checkpoint import read_checkpoint
from convit.cli import main
from convit.config import PRESETS, TrainConfig, build_config, load_config_file
from convit.train import load_training_state

# A 2-block ConViT on a 4x4 grid of 2x2 patches and a fifth of digits: ~1 s per epoch.
TINY = ["--model-kwargs", "depth=2", "local_up_to_layer=1", "embed_dim=16", "patch_size=2",
        "--sampling-ratio", "0.2", "--batch-size", "32", "--threads", "1", "--warmup-epochs", "1"]


def train(tmp: Path, *extra: str, name: str = "run") -> int:
    return main(["train", *TINY, "--output", str(tmp / name), "--no-report", *extra])


def read_log(run: Path):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_two_epochs_run_folder_log_and_summary(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "2", "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    for name in ("config.yaml", "log.jsonl", "last.pt", "best.safetensors", "model.safetensors", "report.html"):
        assert (run / name).is_file(), name
    assert any((run / "figures").iterdir())
    log = read_log(run)
    assert [e["epoch"] for e in log] == [1, 2]
    for e in log:
        for key in ("epoch", "train_loss", "lr", "val_top1", "val_top5", "val_loss", "images_per_s",
                    "epoch_time_s", "locality"):
            assert key in e, key
        assert {"nonlocality", "gates"} <= set(e["locality"])
        assert len(e["locality"]["nonlocality"]) == 2 and len(e["locality"]["gates"]) == 1
    assert "test_top1" not in log[0]  # the test split is evaluated on the final model only
    last = log[-1]
    assert {"test_top1", "test_top5", "test_loss"} <= set(last)
    # The printed summary quotes the logged numbers.
    assert f"test top-1 {last['test_top1']:.2f}%" in out
    assert f"val top-1 {last['val_top1']:.2f}%" in out
    best = max(log, key=lambda e: e["val_top1"])
    assert f"best {best['val_top1']:.2f}% at epoch {best['epoch']}" in out
    for path in ("model.safetensors", "log.jsonl", "figures"):
        assert str(run / path) in out
    # The final model file knows its architecture, classes and data statistics.
    sd, meta = read_checkpoint(run / "model.safetensors")
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    data = json.loads(meta["data"])
    assert data["dataset"] == "digits" and data["img_size"] == 8 and data["in_chans"] == 1
    # config.yaml is loadable and reproduces the config.
    cfg = build_config(config_file=run / "config.yaml")
    assert cfg.epochs == 2 and cfg.model_kwargs["embed_dim"] == 16
    state = load_training_state(run / "last.pt")
    assert state["epoch"] == 2 and state["best"]["epoch"] == best["epoch"]


def _interrupt_at_epoch(monkeypatch, n: int) -> None:
    import convit.train as T

    real = T.train_one_epoch

    def flaky(*args, **kwargs):
        if args[5] == n:  # epoch argument
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", flaky)


def test_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    # drop_path and mixup consume random numbers every step: the RNG state must be restored too.
    extra = ["--epochs", "3", "--drop-path", "0.1", "--mixup", "0.8", "--cutmix", "1.0"]
    assert train(tmp_path, *extra, name="straight") == 0
    with monkeypatch.context() as m:
        _interrupt_at_epoch(m, 2)
        assert train(tmp_path, *extra, name="resumed") == 130
    assert "--resume" in capsys.readouterr().err
    assert load_training_state(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    assert main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    a, _ = read_checkpoint(tmp_path / "straight" / "model.safetensors")
    b, _ = read_checkpoint(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    assert [e["epoch"] for e in lb] == [1, 2, 3]
    assert [e["train_loss"] for e in la] == [e["train_loss"] for e in lb]


def test_resume_can_extend_epochs(tmp_path):
    assert train(tmp_path, "--epochs", "1") == 0
    assert main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2", "--no-report"]) == 0
    assert [e["epoch"] for e in read_log(tmp_path / "run")] == [1, 2]


def test_resume_of_a_finished_run_with_fewer_epochs_keeps_its_config(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "2") == 0
    run = tmp_path / "run"
    config_before = (run / "config.yaml").read_text()
    log_before = (run / "log.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--no-report"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert (run / "config.yaml").read_text() == config_before
    assert build_config(config_file=run / "config.yaml").epochs == 2
    assert (run / "log.jsonl").read_text() == log_before


def test_run_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o027)  # group may read, others nothing
    try:
        assert train(tmp_path, "--epochs", "1") == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for name in ("model.safetensors", "best.safetensors", "last.pt", "log.jsonl", "config.yaml"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name


def test_existing_output_needs_resume_or_overwrite(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "1") == 0
    assert train(tmp_path, "--epochs", "1") == 2
    assert "--resume" in capsys.readouterr().err
    assert train(tmp_path, "--epochs", "1", "--overwrite") == 0


def test_crash_between_write_and_rename_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import convit.train as T

    real_replace = T.os.replace
    calls = {"n": 0}

    def crash_on_second_last_pt(src, dst):
        if Path(dst).name == "last.pt":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.EIO, "simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(T.os, "replace", crash_on_second_last_pt)
    assert train(tmp_path, "--epochs", "2") == 1
    err = capsys.readouterr().err
    assert "last.pt" in err and "intact" in err
    state = load_training_state(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temporary file left behind


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import convit.train as T

    real_save = torch.save
    calls = {"n": 0}

    def save_then_fill_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second last.pt: write half of it, then the disk is full
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(T.torch, "save", save_then_fill_disk)
    assert train(tmp_path, "--epochs", "2") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "intact" in err
    assert load_training_state(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import convit.train as T
    from timm.loss import LabelSmoothingCrossEntropy

    epoch = {"now": 0}
    real_epoch, real_loss = T.train_one_epoch, LabelSmoothingCrossEntropy.forward

    def tracking_epoch(*args, **kwargs):
        epoch["now"] = args[5]
        return real_epoch(*args, **kwargs)

    def nan_in_epoch_two(self, x, target):
        loss = real_loss(self, x, target)
        return loss * float("nan") if epoch["now"] == 2 else loss

    monkeypatch.setattr(T, "train_one_epoch", tracking_epoch)
    monkeypatch.setattr(LabelSmoothingCrossEntropy, "forward", nan_in_epoch_two)
    assert train(tmp_path, "--epochs", "3") == 1
    err = capsys.readouterr().err
    assert re.search(r"loss is nan at epoch 2, step 1/\d+", err), err
    assert "last good checkpoint" in err and "last.pt" in err
    state = load_training_state(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("ratio", ["0", "-0.5", "1.5", "nan"])
def test_bad_sampling_ratio(tmp_path, capsys, ratio):
    assert main(["train", "--sampling-ratio", ratio, "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--sampling-ratio must be in (0, 1]" in err and len(err.strip().splitlines()) == 1


def test_missing_and_empty_dataset_folder(tmp_path, capsys):
    assert main(["train", "--dataset", "imagefolder", "--data-path", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    assert main(["train", "--dataset", "imagefolder", "--data-path", str(tmp_path / "empty"),
                 "--output", str(tmp_path / "r")]) == 2
    assert "no class folders" in capsys.readouterr().err


def _image_folder(root: Path, classes=("a", "b"), per_class: int = 3, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return root


def test_corrupt_image_is_skipped(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        rc = main(["train", "--dataset", "imagefolder", "--data-path", str(root), "--img-size", "8",
                   "--augment", "none", "--model-kwargs", "depth=2", "local_up_to_layer=1", "embed_dim=16",
                   "patch_size=2", "--epochs", "1", "--batch-size", "4", "--threads", "1",
                   "--output", str(tmp_path / "r"), "--no-report", "--num-workers", "0"])
    assert rc == 0
    assert read_log(tmp_path / "r")[0]["test_top1"] >= 0  # no val split: test is evaluated


def test_tensorboard_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert train(tmp_path, "--epochs", "1", "--tensorboard") == 2
    assert "pip install tensorboard" in capsys.readouterr().err


# -- the config system ------------------------------------------------------------------------

def test_config_precedence_file_toml_and_unknown_keys(tmp_path):
    cfg = build_config()
    assert cfg.preset == "digits" and cfg.model == "convit_digits" and cfg.epochs == PRESETS["digits"]["epochs"]
    assert build_config({"dataset": "cifar10"}).preset == "cifar"
    assert TrainConfig().lr is None and TrainConfig().resolved_lr(8) == pytest.approx(5e-4 * 512 / 512)
    (tmp_path / "a.yaml").write_text("epochs: 7\nlr: 1.0e-3\nmodel_kwargs: {depth: 3}\n")
    cfg = build_config({"epochs": 9}, tmp_path / "a.yaml")
    assert (cfg.epochs, cfg.lr, cfg.model_kwargs) == (9, 1e-3, {"depth": 3})
    (tmp_path / "b.toml").write_text('epochs = 4\nmodel = "deit_digits"\n[model_kwargs]\ndepth = 2\n')
    cfg = build_config(config_file=tmp_path / "b.toml")
    assert (cfg.epochs, cfg.model, cfg.model_kwargs) == (4, "deit_digits", {"depth": 2})
    (tmp_path / "c.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        load_config_file(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("epochs: many\n")
    with pytest.raises(ValueError, match="epochs"):
        load_config_file(tmp_path / "d.yaml")


def test_scale_epochs():
    cfg = build_config({"sampling_ratio": 0.25, "scale_epochs": True, "epochs": 10, "warmup_epochs": 2})
    assert cfg.run_epochs == 40 and cfg.run_warmup_epochs == 8
    assert build_config({"sampling_ratio": 0.25, "epochs": 10}).run_epochs == 10


def test_every_config_field_has_a_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name


def test_example_configs_load():
    files = sorted((Path(__file__).parent.parent / "configs").glob("*.*"))
    assert files
    for f in files:
        cfg = build_config(config_file=f)
        assert cfg.preset in PRESETS, f
    main_job = build_config(config_file=Path(__file__).parent.parent / "configs" / "digits_convit.yaml")
    defaults = build_config()
    assert {k: v for k, v in main_job.to_dict().items() if k != "output"} == \
        {k: v for k, v in defaults.to_dict().items() if k != "output"}  # the file spells out `convit train`
