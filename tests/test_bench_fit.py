"""benchmarks/bench_fit.py runs end to end (one short repeat of the main job's case) and its last
line is the verdict ``ratio R``, R being the case's median ours / bare ratio it printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _alone(tmp_path: Path) -> float:
    """The test top-1 of the benchmark's one-epoch main-job fit, run without bare."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_fit
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    cfg, _ = bench_fit.main_job_config(1)
    summary = bench_fit.fit(bench_fit.build_config({**cfg.to_dict(), "output": str(tmp_path / "alone")}))
    return summary.test_top1


@pytest.mark.slow
def test_bench_fit_prints_its_ratio(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_fit.py"),
            "--cases",
            "main",
            "--repeats",
            "1",
            "--digits-epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    repeat = next(ln for ln in lines if ln.startswith("  main repeat 1 (interleaved)"))
    ours, bare = map(float, re.findall(r"(\d+\.\d+) CPU-s", repeat))
    assert ours > 0 and bare > 0
    # bare's epochs ran between ours' without touching its random stream: ours trained as alone
    assert repeat.endswith(f"(ours' test top-1 {_alone(tmp_path):.2f}%)"), repeat
    verdict = re.fullmatch(r"ratio (\d+\.\d{3})", lines[-1])
    assert verdict, lines[-1]
    # one repeat: the verdict is that repeat's ratio, as printed on its line
    assert f"ours/bare throughput {verdict.group(1)} " in repeat, repeat
