"""A run too large for the machine is refused before it starts (:mod:`convit.nn.memory`): the
estimate, what the machine has (``/proc/meminfo``, cgroups v1 and v2), and the refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

import convit.nn.memory as memory
from convit.cli import main
from convit.nn.memory import MemoryRefused, available_memory, check_training_memory, estimate_training_memory
from convit.training.config import build_config
from convit.training.recipe import model_config

GB = 1_000_000_000


def _digits(img_size: int, **model_kwargs):
    """The digits preset's model (convit_digits) sized for 1-channel images of ``img_size``."""
    return model_config(build_config({"model_kwargs": model_kwargs}), 10, 1, img_size)


def test_the_224px_digits_model_is_refused_before_it_is_built(tmp_path, capsys, monkeypatch):
    # 2x2 patches of 224 px: 12,544 tokens; the kernel killed this run at 22 GB, printing nothing.
    monkeypatch.setattr(memory, "available_memory", lambda device: (16 * GB, "MemAvailable in /proc/meminfo"))
    start = time.perf_counter()
    assert main(["train", "--img-size", "224", "--output", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - start < 30  # building the model alone took minutes
    err = capsys.readouterr().err
    assert err.startswith("convit train: error: training convit_digits would need about ")
    for words in (
        "16.0 GB is available (MemAvailable in /proc/meminfo)",
        "224x224 px images in 2x2 patches are 12,544 tokens each",
        "--img-size ",
        "--model-kwargs patch_size=",
        "--batch-size ",
        "--no-memory-check",
    ):
        assert words in err
    assert not (tmp_path / "r").exists()


def _fixes(cfg, batch: int, room: int, monkeypatch, **kw) -> list:
    monkeypatch.setattr(memory, "available_memory", lambda device: (room, "test"))
    with pytest.raises(MemoryRefused) as e:
        check_training_memory(cfg, batch, torch.device("cpu"), **kw)
    return str(e.value).split("What would fit: ")[1].split(". --no-memory-check")[0].split("; ")


def test_every_fix_offered_fits(monkeypatch):
    room = 40 * GB
    fixes = _fixes(_digits(224), 32, room, monkeypatch, locality_images=64)
    assert [f.split(" ")[0] for f in fixes] == ["--img-size", "--model-kwargs", "not", "--no-locality"]
    size, patch = int(fixes[0].split()[1]), int(fixes[1].split("=")[1].split()[0])
    assert estimate_training_memory(_digits(size), 32, locality_images=64).total <= room
    assert estimate_training_memory(_digits(size + 2), 32, locality_images=64).total > room  # the largest
    assert estimate_training_memory(_digits(224, patch_size=patch), 32, locality_images=64).total <= room
    assert estimate_training_memory(_digits(224, patch_size=patch // 2), 32, locality_images=64).total > room
    assert fixes[2].startswith("not --batch-size alone (batch 1 needs ")  # the maps do not depend on it
    assert estimate_training_memory(_digits(224), 32).total <= room  # --no-locality
    fixes = _fixes(_digits(64), 1024, 2 * GB, monkeypatch)
    batch = int(next(f for f in fixes if f.startswith("--batch-size")).split()[1])
    assert (
        estimate_training_memory(_digits(64), batch).total
        <= 2 * GB
        < estimate_training_memory(_digits(64), 2 * batch).total
    )


def test_a_normal_run_fits_and_is_not_refused(train_tiny):
    est = check_training_memory(_digits(8), 32, torch.device("cpu"), locality_images=64)
    assert 30e6 < est.total < 100e6 and est.tokens == 16
    assert train_tiny("--epochs", "1") == 0


def test_what_grows_with_what():
    def one_image(px: int) -> int:
        return estimate_training_memory(_digits(px), 1).phases["training activations"]

    assert one_image(128) > 12 * one_image(64)  # 4x the tokens: P and its mask grow with N^2
    small = estimate_training_memory(_digits(32), 32)
    b32, b128 = (estimate_training_memory(_digits(64), b).phases["training activations"] for b in (32, 128))
    assert 3 < b128 / b32 < 4
    half = estimate_training_memory(_digits(32), 32, amp=True).phases["training activations"]
    assert half < small.phases["training activations"]
    ema = estimate_training_memory(_digits(32), 32, ema=True).parts["gradients and optimizer state"]
    assert ema == small.parts["gradients and optimizer state"] * 4 // 3
    # Attention dropout materialises [B, heads, N, N] maps (GPSA's reference path; MHSA's math
    # kernel on the CPU only).
    drop = _digits(32, attn_drop_rate=0.1)
    cpu, cuda = (
        estimate_training_memory(drop, 32, device=d).phases["training activations"] for d in ("cpu", "cuda")
    )
    assert cuda > 2 * small.phases["training activations"] and cpu > cuda


def test_available_memory_reads_meminfo_and_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683664 kB\nMemAvailable:   2000000 kB\n")
    cpu = torch.device("cpu")
    assert available_memory(cpu, meminfo=meminfo, cgroup=tmp_path / "none") == (
        2_048_000_000,
        f"MemAvailable in {meminfo}",
    )
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000000\n")
    (v2 / "memory.current").write_text("700000000\n")
    (v2 / "memory.stat").write_text("anon 500000000\ninactive_file 100000000\n")
    assert available_memory(cpu, meminfo=meminfo, cgroup=v2) == (
        400_000_000,
        f"the cgroup limit in {v2 / 'memory.max'}",
    )
    (v2 / "memory.max").write_text("max\n")
    assert available_memory(cpu, meminfo=meminfo, cgroup=v2)[0] == 2_048_000_000
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("3000000000\n")
    (v1 / "memory.usage_in_bytes").write_text("1500000000\n")
    (v1 / "memory.stat").write_text("cache 9\ntotal_inactive_file 500000000\n")
    assert available_memory(cpu, meminfo=meminfo, cgroup=v1.parent)[0] == 2_000_000_000
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert available_memory(cpu, meminfo=meminfo, cgroup=v1.parent)[0] == 2_048_000_000
    assert available_memory(torch.device("meta")) is None


@pytest.mark.slow
def test_the_estimate_is_within_2x_of_a_measured_peak():
    """One config of benchmarks/bench_memory.py (docs/images.md has them all)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_memory.py"), "--one", "digits-32px-attn-drop"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.5 < r["estimate"] / r["measured"] < 2, r
