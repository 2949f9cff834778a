"""Shared test configuration: the tiny model every training test uses, one trained run reused
by every test that only reads a run, and where the optional shared data lives.

Tiers: ``pytest`` runs the fast tier (``-m 'not slow'`` in pyproject.toml); ``pytest -m ''``
runs everything (``.ci/run`` does).  Tests over about 5 s are marked ``@pytest.mark.slow``.
Logs are read with :func:`convit.fileio.read_jsonl`, the package's one log reader.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from convit import list_models, model_spec
from convit.cli import main

#: ``convit train`` flags of a 2-block ConViT (1 GPSA) on a 4x4 grid of 2x2 patches, trained on a
#: fifth of digits: about a second per epoch on one thread.
TINY: List[str] = ["--model-kwargs", "depth=2", "local_up_to_layer=1", "embed_dim=16", "patch_size=2",
                   "--sampling-ratio", "0.2", "--batch-size", "32", "--threads", "1", "--warmup-epochs", "1"]

#: The same size as ConViTConfig fields, for APIs that take a model config (sweeps, fit).
TINY_MODEL = dict(depth=2, local_up_to_layer=1, embed_dim=16, patch_size=2)

REPO = Path(__file__).resolve().parents[1]
#: Data for development that the project must not require (see its README): beside the repo.
SHARED_DATA = REPO.parent / "shared" / "data"


def zoo_params() -> list:
    """Every zoo model name, for ``parametrize``; the widest (embed_dim > 450: small_plus and the
    base sizes, over ~40M parameters) in the slow tier: they run the same code at another width
    and take longest to build."""
    return [pytest.param(n, marks=pytest.mark.slow) if model_spec(n).config.get("embed_dim", 192) > 450 else n
            for n in list_models()]


@pytest.fixture(scope="session")
def tiny() -> List[str]:
    """The tiny model's ``convit train`` flags (a copy: tests may extend it)."""
    return list(TINY)


@pytest.fixture
def train_tiny(tmp_path: Path) -> Callable[..., int]:
    """``train_tiny(*flags, name="run")``: ``convit train`` of the tiny model into
    ``tmp_path / name`` without the report; returns the exit code."""
    def train(*extra: str, name: str = "run") -> int:
        return main(["train", *TINY, "--output", str(tmp_path / name), "--no-report", *extra])
    return train


@dataclass(frozen=True)
class TrainedRun:
    folder: Path  # the run folder: config.yaml, log.jsonl, last.pt, *.safetensors, figures/, report.html
    stdout: str  # what `convit train` printed


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One tiny 2-epoch ``convit train`` run on digits, with locality log, figures and report,
    shared by every test that only reads a run (write elsewhere: it is shared)."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["train", *TINY, "--epochs", "2", "--output", str(folder)])
    assert rc == 0, out.getvalue()
    return TrainedRun(folder, out.getvalue())


def _shared_file(name: str) -> Optional[Path]:
    path = SHARED_DATA / name
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def cifar_npz() -> Path:
    """``cifar10_jpeg.npz`` from the shared data folder beside the repository, else skip."""
    path = _shared_file("cifar10_jpeg.npz")
    if path is None:
        pytest.skip(f"cifar10_jpeg.npz not available in {SHARED_DATA}")
    return path
