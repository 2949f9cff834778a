"""Pillow's own test images (``Tests/images`` of its source distribution, about a thousand files:
every format and mode Pillow reads, plus the truncated, fuzzed and malicious files of its
regression tests) through ``convit predict``: no traceback, no hang, every failure named.

The source distribution of the installed Pillow is fetched once with pip into
``~/.cache/convit-tests/pillow`` (``CONVIT_TEST_CACHE`` moves it) and reused; the test skips,
saying why, when it cannot be fetched. Results of a run are in docs/images.md.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import PIL
import pytest
import torch

from convit.weights.checkpoint import save_model
from convit.weights.zoo import create_model

CACHE = Path(os.environ.get("CONVIT_TEST_CACHE", Path.home() / ".cache" / "convit-tests")) / "pillow"
TIMEOUT_S = 900  # the whole corpus; a few minutes on two cores


def _download_sdist(version: str) -> Path:
    """Pillow's source distribution for ``version``, downloaded with pip once (skip if not)."""
    found = [p for p in CACHE.glob("*.tar.gz") if p.name.lower() == f"pillow-{version}.tar.gz"]
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"pillow=={version}",
                "-d",
                str(CACHE),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot download Pillow {version}'s source distribution with pip: {e}")
    found = [p for p in CACHE.glob("*.tar.gz") if p.name.lower() == f"pillow-{version}.tar.gz"]
    if res.returncode != 0 or not found:
        pytest.skip(
            f"cannot download Pillow {version}'s source distribution with pip "
            f"(exit {res.returncode}): {res.stderr.strip()[-300:]}"
        )
    return found[0]


def _corpus() -> Path:
    """``Tests/images`` of the installed Pillow's source, extracted once into the cache."""
    version = PIL.__version__
    images = CACHE / f"pillow-{version}" / "Tests" / "images"
    if images.is_dir() and any(images.iterdir()):
        return images
    prefix = None
    with tarfile.open(_download_sdist(version)) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/")
            if len(parts) > 3 and parts[1:3] == ["Tests", "images"] and (m.isfile() or m.isdir()):
                prefix = parts[0]
                members.append(m)
        tar.extractall(CACHE, members=members, filter="data")
    images = CACHE / str(prefix) / "Tests" / "images"
    if prefix != f"pillow-{version}":
        (CACHE / f"pillow-{version}").symlink_to(CACHE / str(prefix), target_is_directory=True)
    return images


def _checkpoint(folder: Path) -> str:
    """A tiny random ImageNet-shaped (224 px, 3 channels, DeiT preprocessing) checkpoint."""
    torch.manual_seed(0)
    model = create_model(
        "convit_tiny",
        img_size=224,
        patch_size=16,
        depth=2,
        local_up_to_layer=1,
        embed_dim=16,
        num_heads=4,
        num_classes=10,
    )
    data = {
        "img_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "in_chans": 3,
        "native_size": None,
        "dataset": "imagefolder",
    }
    save_model(
        model, folder / "tiny.safetensors", {"class_names": [f"c{i}" for i in range(10)], "data": data}
    )
    return str(folder / "tiny.safetensors")


def _run(images: Path, ckpt: str, out: Path) -> subprocess.CompletedProcess:
    """``convit predict`` over every file of the corpus (any name: a glob, not a folder scan,
    so files without an image extension are tried too); a hang fails naming the batch."""
    files = sorted(p for p in glob.glob(str(images / "**" / "*"), recursive=True) if os.path.isfile(p))
    cmd = [
        sys.executable,
        "-m",
        "convit.cli",
        "predict",
        "--checkpoint",
        ckpt,
        str(images / "**" / "*"),
        "--output",
        str(out),
        "--batch-size",
        "16",
        "--device",
        "cpu",
    ]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        done = len(out.read_text().splitlines()) if out.exists() else 0
        pytest.fail(
            f"convit predict hung: {done} of {len(files)} files done after {TIMEOUT_S} s; "
            f"stuck in the batch of {files[done : done + 16]}"
        )


@pytest.mark.slow
def test_pillow_corpus_through_predict(tmp_path):
    images = _corpus()
    res = _run(images, _checkpoint(tmp_path), tmp_path / "out.jsonl")
    files = sorted(p for p in glob.glob(str(images / "**" / "*"), recursive=True) if os.path.isfile(p))
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    lines = res.stderr.splitlines()
    assert res.returncode in (0, 1), res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert [r["image"] for r in records] == files  # every file answered once: no crash, no hang
    failed = [r for r in records if "error" in r]
    for r in failed:  # one stderr line per failure, naming the file, with a reason
        assert f"{r['image']}: {r['error']}" in lines, r
        assert r["error"].strip()
    assert (
        lines[-1] == f"convit predict: {len(records) - len(failed)} predicted, {len(failed)} failed; "
        f"results in {tmp_path / 'out.jsonl'}"
    )
    ours = [ln for ln in lines if ln.startswith(str(images)) or ln.startswith("convit predict:")]
    foreign = Counter(ln for ln in lines if ln not in ours)  # C libraries (libtiff) writing to fd 2
    assert not [ln for ln in foreign if re.match(r"^\s*(File \"|\w+(Error|Exception|Warning)\b)", ln)], (
        foreign
    )
    warned = sum(": warning: " in ln for ln in ours)
    print(
        f"\nPillow {PIL.__version__} Tests/images: {len(files)} files: {len(records) - len(failed)} read, "
        f"{len(failed)} clear errors, 0 tracebacks, 0 hangs; {warned} warnings named; "
        f"{sum(foreign.values())} lines from C libraries: {dict(foreign)}"
    )
    assert len(records) - len(failed) > len(files) // 2
