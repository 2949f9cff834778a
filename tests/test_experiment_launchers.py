"""``convit experiment`` on the launchers of convit.core.launch: a tiny sample-efficiency sweep gives
the same results.csv under ``serial``, ``local --jobs 2`` and (with ``sbatch``) ``slurm``; a run
held by another process's lock is waited for, never trained twice."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from convit.core.launch import run_lock
from convit.experiments.runner import locked_run, plan_runs

TINY = ["patch_size=4", "embed_dim=16", "num_heads=2", "depth=2", "mlp_ratio=1.0", "local_up_to_layer=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _sweep(out, *launcher):
    cmd = [
        sys.executable,
        "-m",
        "convit.cli",
        "experiment",
        "sample-efficiency",
        "--preset",
        "digits-cpu",
        "--fractions",
        "0.1",
        "--seeds",
        "1",
        "--epochs",
        "0.1",
        "--model-set",
        *TINY,
        "--set",
        "eval_every=1",
        "batch_size=32",
        "threads=1",
        "--output",
        str(out),
        *launcher,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, cwd=out.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["test_top1"] for r in rows)
    return proc.stdout, sorted((r["variant"], r["test_top1"]) for r in rows)


@pytest.mark.slow  # a few tiny runs, in subprocesses
def test_local_jobs_give_the_serial_results(tmp_path):
    _, serial = _sweep(tmp_path / "serial")
    text, local = _sweep(tmp_path / "local", "--launcher", "local", "--jobs", "2")
    assert local == serial
    assert "local launcher" in text and any((tmp_path / "local" / "logs").iterdir()), (
        "job logs in the sweep folder"
    )


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("sbatch") is None,
    reason="Slurm's sbatch is not on the PATH (start a cluster: "
    "bash ../shared/tools/slurm-single-node.sh start)",
)
def test_slurm_array_gives_the_serial_results(tmp_path):
    _, serial = _sweep(tmp_path / "serial")
    text, slurm = _sweep(tmp_path / "slurm", "--launcher", "slurm", "--jobs", "2", "--time", "15")
    assert "submitted" in text and slurm == serial


def test_a_locked_run_waits_for_its_holder(tmp_path, monkeypatch):
    spec = plan_runs(
        "sample-efficiency", "digits-cpu", tmp_path, fractions=[0.1], seeds=1, variants=["deit"]
    )[0]
    calls = []
    monkeypatch.setattr(
        "convit.experiments.runner.execute_run", lambda s, quiet: calls.append(time.time()) or {}
    )
    release = threading.Event()

    def hold():
        with run_lock(spec.folder) as got:
            assert got
            release.wait(5)

    # flock locks are per open file, so a second open in this process is blocked like another process
    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    t0 = time.time()
    threading.Timer(0.5, release.set).start()
    locked_run(spec)
    holder.join()
    assert len(calls) == 1 and calls[0] - t0 >= 0.4, "the run started only once the holder let go"


def test_study_experiment_and_train_share_the_launcher_flags(monkeypatch):
    from convit.cli import build_parser
    from convit.core.launch_flags import options_from_args

    monkeypatch.setattr("convit.core.launch.slurm_available", lambda: True)
    flags = [
        "--launcher",
        "slurm",
        "--partition",
        "cpu",
        "--time",
        "1h30m",
        "--mem",
        "4G",
        "--gpus-per-node",
        "2",
        "--slurm",
        "constraint=avx512",
    ]
    heads = {"study": ["study", "digits"], "experiment": ["experiment", "ablation"], "train": ["train"]}
    for name, head in heads.items():
        o = options_from_args(build_parser().parse_args([*head, *flags]))
        assert (o.launcher, o.partition, o.timeout_min, o.mem, o.gpus_per_node) == (
            "slurm",
            "cpu",
            90,
            "4G",
            2,
        ), name
        assert o.slurm == {"constraint": "avx512"}, name
    with pytest.raises(SystemExit):  # train submits one job of many tasks: no --jobs, no local launcher
        build_parser().parse_args(["train", "--launcher", "local"])
