"""A run folder holds ``INCOMPLETE`` until its first ``last.pt``: a run that stopped before its
first checkpoint is not taken for a run to resume, and the next run into the folder replaces
it cleanly (``--resume`` starts it again from epoch 1 with its config.yaml)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from conftest import interrupt_at_epoch

from convit.cli import main
from convit.core.fileio import read_jsonl
from convit.training.config import build_config
from convit.training.incomplete import MARKER, NoCheckpointYet
from convit.training.resume import find_last_checkpoint, read_resume
from convit.training.run_folder import resolve_output


def test_a_run_that_stopped_before_its_first_checkpoint_is_replaced(
    train_tiny, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at_epoch(m, 1)
        assert train_tiny("--epochs", "2") == 130
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "config.yaml", "provenance.json"]
    assert "pid: " in (run / MARKER).read_text() and not (run / "last.pt").exists()
    with pytest.raises(NoCheckpointYet, match="stopped before its first checkpoint"):
        find_last_checkpoint(str(run))
    (run / "figures").mkdir()
    (run / "figures" / "old.png").write_bytes(b"a figure of another run")
    (run / "skipped.tsv").write_text("/old/file.png\tof another run\n")
    capsys.readouterr()
    assert train_tiny("--epochs", "1") == 0  # no --overwrite needed, nothing of it is kept
    assert (
        "held a run that stopped before its first checkpoint; this run replaces it" in capsys.readouterr().out
    )
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors",
        "config.yaml",
        "last.pt",
        "log.jsonl",
        "model.safetensors",
        "provenance.json",
        "test_correct.npy",
    ]
    assert len(json.loads((run / "provenance.json").read_text())["starts"]) == 1  # the old run's is gone
    assert build_config(config_file=run / "config.yaml").epochs == 1


def test_resume_of_such_a_run_starts_it_again_with_its_config(train_tiny, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at_epoch(m, 1)
        assert train_tiny("--epochs", "2") == 130
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "nothing to resume; starting it again from epoch 1 with its config.yaml" in out
    assert [e["epoch"] for e in read_jsonl(run / "log.jsonl")] == [1, 2] and not (run / MARKER).exists()
    (run / "last.pt").unlink()  # a folder without the marker and without last.pt: still an error
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        find_last_checkpoint(str(run))


def test_a_folder_whose_first_epoch_is_still_running_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = build_config()
    folder = Path("runs/convit_digits_digits")
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(f"...\npid: {os.getppid()}\nhost: {socket.gethostname()}\n")
    assert resolve_output(cfg) == Path("runs/convit_digits_digits-2")  # the parent process is alive
    with pytest.raises(ValueError, match=rf"may still be running \(pid {os.getppid()} on "):
        resolve_output(build_config({"output": str(folder)}))
    (folder / MARKER).write_text(f"...\npid: {os.getpid()}\nhost: {socket.gethostname()}\n")
    assert resolve_output(cfg) == folder  # this process: its own earlier run has stopped
    (folder / MARKER).write_text(f"...\npid: {os.getpid()}\nhost: another-{socket.gethostname()}\n")
    assert resolve_output(cfg) == Path("runs/convit_digits_digits-2")  # cannot be checked from here
    with pytest.raises(ValueError, match="another machine: if it has stopped, delete it"):
        resolve_output(build_config({"output": str(folder)}))
    # --resume names the folder: another machine's run is taken as stopped, this machine's is checked
    (folder / "config.yaml").write_text("epochs: 3\n")
    cfg, state = read_resume(str(folder), {})
    assert (cfg.epochs, cfg.output, cfg.resume, cfg.overwrite, state) == (3, str(folder), None, True, None)
    (folder / MARKER).write_text(f"...\npid: {os.getppid()}\nhost: {socket.gethostname()}\n")
    with pytest.raises(ValueError, match="has not written its first checkpoint yet and is still running"):
        read_resume(str(folder), {})
