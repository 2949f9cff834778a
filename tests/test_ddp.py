"""DDP: two CPU processes (gloo) launched by torchrun train one short epoch on digits.

Checks that only rank 0 prints and writes, and that the metrics reduced over the two ranks
equal those of a single-process evaluation of the saved model (sums, not means of means).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from convit.cli import main
from convit.core.fileio import read_jsonl


@pytest.mark.slow  # two processes starting torch: ~8 s
def test_two_process_gloo_training(tmp_path, capsys, tiny):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "convit.cli",
        "train",
        *tiny,
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--output",
        str(out),
        "--no-report",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done in") == 1  # rank 0 alone prints
    assert "2 process(es)" in proc.stdout and "of 32 (lr" in proc.stdout  # global batch = 2 x 16
    log = read_jsonl(out / "log.jsonl")
    assert len(log) == 1 and "locality" in log[0]
    # Metrics summed over the two shards equal a one-process evaluation of the same weights.
    for split in ("val", "test"):
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(out / "model.safetensors"),
                    "--split",
                    split,
                    "--json",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["top1"] == pytest.approx(log[0][f"{split}_top1"])
        assert metrics["loss"] == pytest.approx(log[0][f"{split}_loss"], rel=1e-5)
