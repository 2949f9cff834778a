"""benchmarks/bench_fit.py runs end to end (one short repeat of the main job's case) and its last
line is the verdict ``ratio R``, R being the case's median ours / bare ratio it printed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_fit_prints_its_ratio(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_fit.py"), "--cases", "main",
                          "--repeats", "1", "--digits-epochs", "1"], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    repeat = next(ln for ln in lines if ln.startswith("  main repeat 1 (ours then bare)"))
    ours, bare = map(float, re.findall(r"(\d+\.\d+) CPU-s", repeat))
    assert ours > 0 and bare > 0
    verdict = re.fullmatch(r"ratio (\d+\.\d{3})", lines[-1])
    assert verdict, lines[-1]
    # one repeat: the verdict is that repeat's ratio, as printed on its line
    assert repeat.endswith(f"ours/bare throughput {verdict.group(1)}"), repeat
