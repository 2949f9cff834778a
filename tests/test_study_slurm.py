"""convit study on a real Slurm (``--launcher slurm``): the same numbers as serial, and a run
requeued mid-training (``scontrol requeue``, as a preemption does) resumes from its last.pt and
ends with the uninterrupted result.  Skipped without ``sbatch``; CI starts a single-node Slurm
(``../shared/tools/slurm-single-node.sh``) before the tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from test_study_runs import ENV, attempts, make_plan, plan_file, serial_top1, study_cmd, top1  # noqa: F401

from convit.study.runs import execute_run, load_plan, prepare_data

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("sbatch") is None,
        reason="Slurm's sbatch is not on the PATH "
        "(start a cluster: bash ../shared/tools/slurm-single-node.sh start)",
    ),
]


def test_slurm_array_gives_the_serial_numbers(plan_file, serial_top1, tmp_path):  # noqa: F811
    out = tmp_path / "slurm"
    proc = subprocess.run(
        study_cmd("--plan", plan_file, "--output", out, "--launcher", "slurm", "--jobs", "2"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted 6 Slurm job(s)" in proc.stdout  # ConViT, DeiT and the CNN, 2 seeds
    assert top1(out) == serial_top1
    assert all(a[0].split()[-1] != "-" for a in attempts(out).values()), "runs ran inside Slurm jobs"


def _running_run(out, deadline: float):
    """A run folder at its third epoch or later, not finished, and the Slurm job id and process id
    running it (from its attempts.log line "DATE TIME start pid PID on HOST job JOB")."""
    while time.time() < deadline:
        for log in out.glob("runs/*/log.jsonl"):
            folder = log.parent
            if len(log.read_text().splitlines()) >= 3 and not (folder / "result.json").exists():
                words = (folder / "attempts.log").read_text().split()
                return folder, words[-1], int(words[words.index("pid") + 1])
        time.sleep(0.1)
    raise AssertionError("no run reached its third epoch in time")


def test_a_requeued_job_resumes_to_the_uninterrupted_result(tmp_path):
    plan = make_plan(tmp_path / "a", epochs=100, seeds=1)
    out = tmp_path / "requeued"
    proc = subprocess.Popen(
        study_cmd("--plan", plan, "--output", out, "--launcher", "slurm", "--jobs", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    folder, job, pid = _running_run(out, time.time() + 300)
    subprocess.run(["scontrol", "requeue", job], check=True)
    # Slurm kills a requeued job's tasks KillWait (30 s) after its SIGTERM, which submitit's tasks
    # ignore; a short run may end first. This is that kill, sooner, so it lands mid-run on any machine.
    os.kill(pid, signal.SIGKILL)
    text = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, text
    kinds = [ln.split()[2] for ln in attempts(out)[folder.name]]
    assert kinds == ["start", "resume"], attempts(out)
    # the same run, uninterrupted, in this process
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "plan.json").write_text(plan.read_text())
    prepare_data(ref, load_plan(ref))
    assert execute_run(str(ref), folder.name).top1 == top1(out)[folder.name]
