"""Training end to end through ``convit train`` (in-process), with tiny models on digits.

Covers the run folder layout and log keys, the printed summary against log.jsonl, exact
resume after an interruption, atomic checkpoints (crash before rename, disk full), NaN
stops, run-folder policy and bad input (the config system: test_config.py).
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_IMAGEFOLDER, interrupt_at_epoch, write_image_folder

import convit.training.fit as T
from convit.cli import main
from convit.core.fileio import read_jsonl
from convit.training.config import build_config
from convit.training.resume import find_last_checkpoint, load_training_state
from convit.training.run_folder import resolve_output
from convit.weights.checkpoint import read_checkpoint


def _log(run: Path):
    return read_jsonl(run / "log.jsonl")


def test_run_folder_log_and_summary(trained_run):
    """The shared 2-epoch run (conftest): files, log keys, printed summary, model metadata."""
    run, out = trained_run.folder, trained_run.stdout
    for name in (
        "config.yaml",
        "log.jsonl",
        "last.pt",
        "best.safetensors",
        "model.safetensors",
        "report.html",
    ):
        assert (run / name).is_file(), name
    assert any((run / "figures").iterdir())
    log = _log(run)
    assert [e["epoch"] for e in log] == [1, 2]
    for e in log:
        for key in (
            "epoch",
            "train_loss",
            "lr",
            "val_top1",
            "val_top5",
            "val_loss",
            "images_per_s",
            "epoch_time_s",
            "epoch_cpu_time_s",
            "locality",
        ):
            assert key in e, key
        assert 0 < e["epoch_cpu_time_s"] < 60, "this process's CPU seconds of a tiny epoch"
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
    # best.safetensors holds the weights of the best validation epoch, and says which.
    _, best_meta = read_checkpoint(run / "best.safetensors")
    assert int(best_meta["epoch"]) == best["epoch"] and float(best_meta["val_top1"]) == best["val_top1"]
    # config.yaml is loadable and reproduces the config.
    cfg = build_config(config_file=run / "config.yaml")
    assert cfg.epochs == 2 and cfg.model_kwargs["embed_dim"] == 16
    state = load_training_state(run / "last.pt")
    assert state["epoch"] == 2 and state["best"]["epoch"] == best["epoch"]


def test_resume_is_bit_identical(train_tiny, tmp_path, monkeypatch, capsys):
    # drop_path and mixup consume random numbers every step: the RNG state must be restored too.
    extra = ["--epochs", "3", "--drop-path", "0.1", "--mixup", "0.8", "--cutmix", "1.0"]
    assert train_tiny(*extra, name="straight") == 0
    with monkeypatch.context() as m:
        interrupt_at_epoch(m, 2)
        assert train_tiny(*extra, name="resumed") == 130
    assert "--resume" in capsys.readouterr().err
    assert load_training_state(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    assert main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    a, _ = read_checkpoint(tmp_path / "straight" / "model.safetensors")
    b, _ = read_checkpoint(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert [e["epoch"] for e in lb] == [1, 2, 3]
    assert [e["train_loss"] for e in la] == [e["train_loss"] for e in lb]


def test_resume_can_extend_epochs_and_reads_last_pt_once(train_tiny, tmp_path, monkeypatch):
    """`--resume` with a longer `--epochs` trains on; last.pt, which gives both the config and
    the state to continue from, is read once (a torch.load and one open of the file)."""
    import builtins

    assert train_tiny("--epochs", "1") == 0
    loads, opens = [], []
    real_load, real_open = torch.load, builtins.open

    def counting_load(f, *a, **k):
        loads.append(Path(getattr(f, "name", f)).name)
        return real_load(f, *a, **k)

    def counting_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == "last.pt" and "r" in mode:
            opens.append(mode)
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(builtins, "open", counting_open)
    assert main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2", "--no-report"]) == 0
    monkeypatch.undo()
    assert [e["epoch"] for e in _log(tmp_path / "run")] == [1, 2]
    assert loads == ["last.pt"] and opens == ["rb"]


def test_resume_of_a_finished_run_with_fewer_epochs_keeps_its_config(train_tiny, tmp_path, capsys):
    assert train_tiny("--epochs", "2") == 0
    run = tmp_path / "run"
    config_before = (run / "config.yaml").read_text()
    log_before = (run / "log.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out
    assert f"test top-1 {_log(run)[-1]['test_top1']:.2f}%" in out  # it reports what the run logged
    assert (run / "config.yaml").read_text() == config_before
    assert build_config(config_file=run / "config.yaml").epochs == 2
    assert (run / "log.jsonl").read_text() == log_before


def test_run_files_follow_the_umask(train_tiny, tmp_path):
    old = os.umask(0o027)  # group may read, others nothing
    try:
        assert train_tiny("--epochs", "1") == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for name in ("model.safetensors", "best.safetensors", "last.pt", "log.jsonl", "config.yaml"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name


def test_existing_output_needs_resume_or_overwrite(train_tiny, capsys):
    assert train_tiny("--epochs", "1") == 0
    assert train_tiny("--epochs", "1") == 2
    assert "--resume" in capsys.readouterr().err
    assert train_tiny("--epochs", "1", "--overwrite") == 0


def test_default_run_folders_are_numbered(tmp_path, monkeypatch):
    """Without --output: runs/<model>_<dataset>, then -2, -3 beside it once it holds a run
    (relative to the working directory, which is a temporary one here)."""
    monkeypatch.chdir(tmp_path)
    cfg = build_config()
    assert resolve_output(cfg) == Path("runs/convit_digits_digits")
    Path("runs/convit_digits_digits").mkdir(parents=True)
    assert resolve_output(cfg) == Path("runs/convit_digits_digits")  # empty: reused
    Path("runs/convit_digits_digits/log.jsonl").touch()
    assert resolve_output(cfg) == Path("runs/convit_digits_digits-2")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_last_checkpoint("runs/convit_digits_digits")
    with pytest.raises(ValueError, match="needs --output"):
        find_last_checkpoint("auto")


def test_crash_between_write_and_rename_keeps_previous_checkpoint(train_tiny, tmp_path, monkeypatch, capsys):
    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_second_last_pt(src, dst):
        if Path(dst).name == "last.pt":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.EIO, "simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_last_pt)
    assert train_tiny("--epochs", "2") == 1
    err = capsys.readouterr().err
    assert "last.pt" in err and "intact" in err
    state = load_training_state(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temporary file left behind


def test_disk_full_while_saving_keeps_previous_checkpoint(train_tiny, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def save_then_fill_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second last.pt: write half of it, then the disk is full
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_then_fill_disk)
    assert train_tiny("--epochs", "2") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "intact" in err
    assert load_training_state(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(train_tiny, tmp_path, monkeypatch, capsys):
    from timm.loss import LabelSmoothingCrossEntropy

    epoch = {"now": 0}
    real_epoch, real_loss = T.train_one_epoch, LabelSmoothingCrossEntropy.forward

    def tracking_epoch(*args, **kwargs):
        epoch["now"] = kwargs["epoch"]
        return real_epoch(*args, **kwargs)

    def nan_in_epoch_two(self, x, target):
        loss = real_loss(self, x, target)
        return loss * float("nan") if epoch["now"] == 2 else loss

    monkeypatch.setattr(T, "train_one_epoch", tracking_epoch)
    monkeypatch.setattr(LabelSmoothingCrossEntropy, "forward", nan_in_epoch_two)
    assert train_tiny("--epochs", "3") == 1
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
    assert (
        main(
            [
                "train",
                "--dataset",
                "imagefolder",
                "--data-path",
                str(tmp_path / "nope"),
                "--output",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    assert (
        main(
            [
                "train",
                "--dataset",
                "imagefolder",
                "--data-path",
                str(tmp_path / "empty"),
                "--output",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "no class folders" in capsys.readouterr().err


def test_corrupt_image_is_skipped(tmp_path, capsys):
    root = write_image_folder(tmp_path / "imgs")
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        rc = main(["train", *TINY_IMAGEFOLDER, "--data-path", str(root), "--output", str(tmp_path / "r")])
    assert rc == 0
    assert "6 train / 0 val / 6 test images" in capsys.readouterr().out  # the broken file is not one
    # No val split: the test split is evaluated every epoch, and the logged number is what
    # `convit eval` measures on the saved model (same images, same transform).
    logged = read_jsonl(tmp_path / "r" / "log.jsonl")[0]
    with pytest.warns(UserWarning, match="broken.png"):  # eval reads the same folder
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(tmp_path / "r" / "model.safetensors"),
                    "--data-path",
                    str(root),
                    "--json",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    measured = json.loads(capsys.readouterr().out)
    assert measured["n"] == 6 and measured["top1"] == logged["test_top1"]


def test_tensorboard_missing_is_a_clear_error(train_tiny, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert train_tiny("--epochs", "1", "--tensorboard") == 2
    assert "pip install tensorboard" in capsys.readouterr().err
