"""Shared test configuration: the tiny model every training test uses, one trained run reused
by every test that only reads a run, small models built in memory, image folders written on
the fly, an offline Hugging Face hub cache, and where the optional shared data lives.

Helpers that are plain functions (``small_convit``, ``write_image_folder``, ...) are imported
with ``from conftest import ...``; fixtures are requested by name.

Tiers: ``pytest`` runs the fast tier (``-m 'not slow'`` in pyproject.toml); ``pytest -m ''``
runs everything (``.ci/run`` does).  Tests over about 5 s are marked ``@pytest.mark.slow``.
Logs are read with :func:`convit.core.fileio.read_jsonl`, the package's one log reader.
"""

from __future__ import annotations

import contextlib
import copy
import io
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pytest
import torch
from PIL import Image
from real_image_files import ImageFile, write_image_files

from convit import ConViT, ConViTConfig, list_models, model_spec
from convit.cli import main
from convit.nn.fast_gpsa import FastGPSA

#: ``convit train`` flags of a 2-block ConViT (1 GPSA) on a 4x4 grid of 2x2 patches, trained on a
#: fifth of digits: about a second per epoch on one thread.
TINY: list[str] = [
    "--model-kwargs",
    "depth=2",
    "local_up_to_layer=1",
    "embed_dim=16",
    "patch_size=2",
    "--sampling-ratio",
    "0.2",
    "--batch-size",
    "32",
    "--threads",
    "1",
    "--warmup-epochs",
    "1",
]

#: ``convit train`` flags of the same tiny model on an ``imagefolder`` of 8x8 images (add
#: ``--data-path`` and ``--output``): one epoch of the imagenet preset's recipe, no report.
TINY_IMAGEFOLDER: list[str] = [
    "--dataset",
    "imagefolder",
    "--img-size",
    "8",
    "--augment",
    "none",
    "--model-kwargs",
    "depth=2",
    "local_up_to_layer=1",
    "embed_dim=16",
    "patch_size=2",
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--no-report",
    "--num-workers",
    "0",
]

#: The same size as ConViTConfig fields, for APIs that take a model config (sweeps, fit).
TINY_MODEL = dict(depth=2, local_up_to_layer=1, embed_dim=16, patch_size=2)

REPO = Path(__file__).resolve().parents[1]
#: Data for development that the project must not require (see its README): beside the repo.
SHARED_DATA = REPO.parent / "shared" / "data"


def zoo_params() -> list:
    """Every ConViT / DeiT zoo name, for ``parametrize`` (the CNN arm, ``resnet``, is timm's
    ResNet: tests/test_cnn_arm.py); the widest (embed_dim > 450: small_plus and the base sizes,
    over ~40M parameters) in the slow tier: they run the same code at another width and take
    longest to build."""
    return [
        pytest.param(n, marks=pytest.mark.slow) if model_spec(n).config.get("embed_dim", 192) > 450 else n
        for n in list_models()
        if model_spec(n).family == "convit"
    ]


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """The tiny model's ``convit train`` flags (a copy: tests may extend it)."""
    return list(TINY)


@pytest.fixture
def train_tiny(tmp_path: Path) -> Callable[..., int]:
    """``train_tiny(*flags, name="run")``: ``convit train`` of the tiny model into
    ``tmp_path / name`` without the report; returns the exit code."""

    def train(*extra: str, name: str = "run") -> int:
        return main(["train", *TINY, "--output", str(tmp_path / name), "--no-report", *extra])

    return train


def interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make ``convit train`` stop with Ctrl-C (KeyboardInterrupt) when epoch ``n`` starts."""
    import convit.training.fit as T

    real = T.train_one_epoch

    def flaky(*args, **kwargs):
        if kwargs["epoch"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", flaky)


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


# -- models built in memory --------------------------------------------------------------------

#: The patch grid of :func:`grid_config`: non-square on purpose, H=5 rows, W=7 columns.
GRID = (5, 7)


def small_convit(**overrides) -> ConViT:
    """A 3-block ConViT (2 GPSA, 4 heads, 32 wide) on 32x32 RGB as a 4x4 grid of 8x8 patches,
    5 classes; ``overrides`` change any ConViTConfig field."""
    cfg = dict(
        img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=3, num_heads=4, local_up_to_layer=2
    )
    cfg.update(overrides)
    return ConViT(**cfg)


def grid_config(**overrides) -> ConViTConfig:
    """A 3-block ConViT config (2 GPSA, 4 heads, 16 wide, locality strength 1) on 1-channel 5x7
    images with 1-pixel patches, so the patch grid is :data:`GRID`; 3 classes."""
    base = dict(
        img_size=GRID,
        patch_size=1,
        in_chans=1,
        num_classes=3,
        embed_dim=16,
        num_heads=4,
        depth=3,
        local_up_to_layer=2,
        locality_strength=1.0,
    )
    base.update(overrides)
    return ConViTConfig(**base)


def grid_model(**overrides) -> ConViT:
    """``ConViT(grid_config(**overrides))``, built right after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return ConViT(grid_config(**overrides))


def with_gates(model: ConViT, k: int, value: float) -> ConViT:
    """A copy of ``model`` in eval mode whose first ``k`` GPSA layers have every gating parameter
    set to ``value`` (+-1e4: sigma(lambda) is exactly 1 or 0)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for b in other.gpsa_blocks()[:k]:
            b.attn.gating_param.fill_(value)
    return other.eval()


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with every parameter moved away from its init (gates and
    ``pos_proj`` by 0.5 sigma, the rest by 0.02), so that no agreement with another
    implementation is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "gating_param" in name or "pos_proj" in name else 0.02
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def sharp_gpsa(
    heads: int = 4,
    dim: int = 32,
    grid: tuple[int, int] = (4, 5),
    seed: int = 0,
    qkv_bias: bool = False,
    gates: Optional[Sequence[float]] = None,
) -> FastGPSA:
    """A FastGPSA with the convolutional init, then perturbed so that every term of eq. 6
    matters: random gates (or ``gates``), moved pos_proj, v and biases, and content attention
    sharpened (qk x 10) far beyond the 0.02 init."""
    torch.manual_seed(seed)
    layer = FastGPSA(dim, heads, qkv_bias=qkv_bias, grid=grid)
    layer.local_init()
    with torch.no_grad():
        layer.gating_param.copy_(torch.randn(heads) * 2 if gates is None else torch.tensor(gates))
        layer.pos_proj.weight.add_(torch.randn_like(layer.pos_proj.weight) * 0.3)
        layer.pos_proj.bias.normal_()
        layer.v.weight.add_(torch.randn_like(layer.v.weight) * 0.1)
        layer.qk.weight.mul_(10)
        if qkv_bias:
            layer.qk.bias.normal_()
            layer.v.bias.normal_()
        layer.proj.bias.normal_()
    return layer


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (b the reference)."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests of tiny tensors (on a shared CPU more threads only add
    contention); the previous count is restored after the test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- image folders -----------------------------------------------------------------------------


def write_image_folder(
    root: Path,
    classes: Sequence[str] = ("a", "b"),
    per_class: int = 3,
    size: Union[int, tuple[int, int]] = 12,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """An imagefolder ``root/<split>/<class>/<i>.png`` of random RGB noise, ``per_class``
    images of ``size`` (side, or (height, width)) per class and split; returns ``root``."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    return root


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ImageFile]]:
    """An imagefolder (``root/{train,val}/{a,b,c}/``) of about 290 real image files of every
    mode, size and format (:mod:`real_image_files`), shared by the session: read only."""
    root = tmp_path_factory.mktemp("photos")
    return root, write_image_files(root)


# -- the Hugging Face hub, offline -------------------------------------------------------------


class NetworkUsed(BaseException):
    """Raised by :func:`no_network`; a BaseException so no library's ``except Exception``
    swallows it."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test at the first DNS look-up, socket creation or connection."""

    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network used: {args[:2]}")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise NetworkUsed(f"socket opened: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "socket", NoSocket)


def hub_snapshot(hub_cache: Path, repo_id: str, commit: str) -> Path:
    """The snapshot folder of ``repo_id`` at ``commit`` in huggingface_hub's cache layout under
    ``hub_cache`` (``models--owner--name/snapshots/<commit>/``, with ``refs/main`` naming the
    commit), created empty: the caller writes the repository's files into it."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap
