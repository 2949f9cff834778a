"""``convit train --launcher slurm``: one DDP job of 2 tasks on a real Slurm (gloo on CPU), with
torch.distributed's environment exported from submitit's JobEnvironment, logs exactly the
metrics of the same 2-process run under torchrun; a preempted job resumes from its last.pt.
Skipped without ``sbatch``; CI starts a single-node Slurm (``../shared/tools/slurm-single-node.sh``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from convit.core.fileio import read_jsonl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("sbatch") is None,
        reason="Slurm's sbatch is not on the PATH "
        "(start a cluster: bash ../shared/tools/slurm-single-node.sh start)",
    ),
]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
FLAGS = ["--device", "cpu", "--batch-size", "16", "--warmup-epochs", "0", "--no-report"]


def _metrics(folder):
    return [
        {k: v for k, v in e.items() if "top1" in k or "loss" in k} for e in read_jsonl(folder / "log.jsonl")
    ]


def _slurm_train(tiny, out, *extra):
    return [
        sys.executable,
        "-m",
        "convit.cli",
        "train",
        *tiny,
        *FLAGS,
        "--output",
        str(out),
        "--launcher",
        "slurm",
        "--nodes",
        "1",
        "--tasks-per-node",
        "2",
        "--time",
        "15",
        *extra,
    ]


def test_two_task_slurm_job_matches_torchrun(tmp_path, tiny):
    slurm = subprocess.run(
        _slurm_train(tiny, tmp_path / "slurm", "--epochs", "1"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        cwd=tmp_path,
    )
    assert slurm.returncode == 0, slurm.stdout + slurm.stderr
    assert "submitted Slurm job" in slurm.stdout and "log: " in slurm.stdout
    assert "world_size 2" in slurm.stdout
    torchrun = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "convit.cli",
            "train",
            *tiny,
            *FLAGS,
            "--epochs",
            "1",
            "--output",
            str(tmp_path / "torchrun"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        cwd=tmp_path,
    )
    assert torchrun.returncode == 0, torchrun.stdout[-3000:] + torchrun.stderr[-3000:]
    assert _metrics(tmp_path / "slurm") == _metrics(tmp_path / "torchrun")


def test_a_preempted_training_job_resumes_from_last_pt(tmp_path, tiny):
    # SIGUSR2 is the signal Slurm sends before preempting a job or at its time limit (submitit asks
    # for it): submitit checkpoints the call, requeues the job itself and exits at once, so the
    # resumption does not hang on how fast this machine trains (unlike a bare ``scontrol requeue``,
    # whose kill comes 30 s later, see tests/test_study_slurm.py)
    out = tmp_path / "preempted"
    proc = subprocess.Popen(
        _slurm_train(tiny, out, "--epochs", "150"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )
    deadline = time.time() + 300
    while not (out / "log.jsonl").is_file() or len((out / "log.jsonl").read_text().splitlines()) < 3:
        assert time.time() < deadline and proc.poll() is None, "the job did not reach its third epoch in time"
        time.sleep(0.1)
    job = next(p.name for p in (out / "slurm").iterdir() if p.is_dir() and p.name.isdigit())
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    text = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, text
    epochs = [e["epoch"] for e in read_jsonl(out / "log.jsonl")]
    assert epochs == list(range(1, 151)), "one entry per epoch, none lost or repeated"
    logs = "".join(p.read_text() for p in (out / "slurm").rglob("*_0_log.*"))
    assert "this job is preempted" in logs, "submitit caught the signal mid-run"
    assert "(Slurm restart 1)" in logs and "resuming from epoch" in logs, (
        "the requeued job resumed from last.pt"
    )
    assert "epochs 150" in text and "world_size 2" in text
