#!/usr/bin/env python
"""Training memory: :mod:`convit.nn.memory`'s estimate against the measured peak of real runs.

Each config is one epoch of ``convit train`` on digits (``fit`` with the locality hook, no
report), in a fresh process on one thread.  Measured: the peak resident memory (``VmHWM``,
reset when the trainer checks memory, i.e. with the data loaded and the model not yet built)
minus the resident memory at that moment; the estimate covers exactly that.  Results go to
docs/images.md ("Runs too large for the machine").

    python benchmarks/bench_memory.py                # every config
    python benchmarks/bench_memory.py digits-64px    # some
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: name -> TrainConfig overrides (on the digits preset, one epoch, one thread).
CONFIGS: dict[str, dict[str, Any]] = {
    "digits": {},
    "digits-32px": {"img_size": 32, "sampling_ratio": 0.2},
    "digits-64px": {"img_size": 64, "sampling_ratio": 0.1},
    "digits-64px-no-locality": {"img_size": 64, "sampling_ratio": 0.1, "locality": False},
    "digits-64px-batch128-no-locality": {
        "img_size": 64,
        "sampling_ratio": 0.2,
        "batch_size": 128,
        "locality": False,
    },
    "digits-96px-no-locality": {"img_size": 96, "sampling_ratio": 0.05, "locality": False},
    "digits-32px-attn-drop": {
        "img_size": 32,
        "sampling_ratio": 0.2,
        "locality": False,
        "model_kwargs": {"attn_drop_rate": 0.1},
    },
    "tiny-32px-patch4": {
        "model": "convit_tiny",
        "model_kwargs": {"patch_size": 4},
        "img_size": 32,
        "batch_size": 64,
        "sampling_ratio": 0.2,
    },
}


def _status(key: str) -> int:
    """A ``/proc/self/status`` memory line, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(name: str) -> dict[str, Any]:
    """One config in this process: estimate, resident memory at the check, peak after it."""
    import convit.nn.memory as memory
    from convit.analysis import training_hooks
    from convit.training.config import build_config
    from convit.training.fit import fit

    record: dict[str, Any] = {"name": name}
    real = memory.check_training_memory

    def spy(*args: Any, **kwargs: Any) -> memory.MemoryEstimate:
        est = real(*args, **kwargs)
        record.update(estimate=est.total, parts=est.parts, phases=est.phases, tokens=est.tokens)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
        record["rss_at_check"] = _status("VmRSS")
        return est

    memory.check_training_memory = spy
    with tempfile.TemporaryDirectory() as out:
        cfg = build_config({"epochs": 1, "threads": 1, "report": False, "output": out, **CONFIGS[name]})
        fit(cfg, **training_hooks())
    record["measured"] = _status("VmHWM") - record["rss_at_check"]
    return record


def main(names: list[str]) -> None:
    rows = []
    for name in names or list(CONFIGS):
        out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"| {name} | {r['tokens']:,} | {r['estimate'] / 1e6:,.0f} MB | {r['measured'] / 1e6:,.0f} MB | "
            f"{r['estimate'] / max(r['measured'], 1):.2f} | {max(r['phases'], key=r['phases'].get)} |",
            flush=True,
        )
    Path(__file__).with_name("results").joinpath("memory.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(sys.argv[2])))
    else:
        main(sys.argv[1:])
