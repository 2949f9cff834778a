"""CIFAR-10 / CIFAR-100 (convit.data.cifar): the packed-JPEG ``cifar10_jpeg.npz`` and its decode
cache, the real file where it is installed, and the message when CIFAR is missing.

The real file is skipped with a message saying where it was looked for.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convit.data import build_data, cifar, load_cifar10_npz

# ../shared beside the repository root (as in CI), wherever pytest is started from.
CIFAR_NPZ_CANDIDATES = [Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg.npz"]


def _write_small_npz(path: Path, n_train: int = 30, n_test: int = 10) -> np.ndarray:
    """A tiny file in the cifar10_jpeg.npz format, with known (noise) images."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        blobs = []
        for im in imgs:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG", quality=95)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        arrays[f"{split}_bytes"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(
            np.int64
        )
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    np.savez(path, classes=np.array([f"c{i}" for i in range(10)]), **arrays)
    return arrays["train_labels"]


def _poison_cache(cached: Path) -> np.ndarray:
    """Overwrite the decoded images in the cache file with a pattern no JPEG decodes to."""
    with np.load(cached) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_x"] = np.full_like(arrays["train_x"], 7)
    arrays["train_x"][:, 0, 0, 0] = np.arange(len(arrays["train_x"]))
    with open(cached, "wb") as f:  # same name: the key (source name, size, mtime) still matches
        np.savez(f, **arrays)
    return arrays["train_x"]


def test_cifar10_npz_format_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "data" / "cifar10_jpeg.npz"
    src.parent.mkdir()
    labels = _write_small_npz(src)
    tx, ty, vx, vy, classes = load_cifar10_npz(src)
    assert tx.shape == (30, 32, 32, 3) and tx.dtype == np.uint8 and vx.shape == (10, 32, 32, 3)
    assert ty.dtype == np.int64 and np.array_equal(ty, labels) and classes[3] == "c3"
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    # The second load must come from the cache: its (poisoned) pixels, and no JPEG decoded.
    poison = _poison_cache(cached[0])

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the JPEGs again instead of reading the cache")

    monkeypatch.setattr(cifar, "_decode_jpegs", no_decoding)
    again = load_cifar10_npz(src)
    assert np.array_equal(again[0], poison) and np.array_equal(again[1], ty)
    assert np.array_equal(again[2], vx) and again[4] == classes
    b = build_data("cifar10", data_path=str(src.parent), val_fraction=0.2)
    assert torch.equal(b.train.images, torch.from_numpy(poison).permute(0, 3, 1, 2))
    assert (len(b.train), len(b.val), len(b.test)) == (20, 10, 10)  # 3 per class: 1 held out
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and b.class_names[0] == "c0"
    # the label written for the image behind the sample (its poisoned first pixel is its index)
    assert y == labels[int(b.train.images[b.train.indices[0], 0, 0, 0])]


def test_cifar10_npz_unreadable_cache_is_decoded_again(tmp_path):
    src = tmp_path / "cifar10_jpeg.npz"
    _write_small_npz(src, n_train=10, n_test=10)
    tx = load_cifar10_npz(src, cache=tmp_path / "cache")[0]
    (cached,) = (tmp_path / "cache").glob("*.npz")
    cached.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="ignoring unreadable cache"):
        again = load_cifar10_npz(src, cache=tmp_path / "cache")
    assert np.array_equal(again[0], tx)
    with np.load(cached) as z:  # and the cache was written afresh
        assert np.array_equal(z["train_x"], tx)


def _real_cifar_npz() -> Path:
    path = next((p for p in CIFAR_NPZ_CANDIDATES if p.is_file()), None)
    if path is None:
        pytest.skip(
            f"cifar10_jpeg.npz not found at {CIFAR_NPZ_CANDIDATES[0].resolve()}; put "
            "cifar10_jpeg.npz in ../shared/data beside the repository"
        )
    return path


def test_cifar10_real_npz_subset(tmp_path, monkeypatch):
    """The real file's layout, and its first images decoded (a cut-down copy, to stay fast)."""
    path = _real_cifar_npz()
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    with np.load(path) as z:
        off, labels = z["train_offsets"], z["train_labels"]
        assert off.shape == (50001,) and labels.shape == (50000,) and off[-1] == len(z["train_bytes"])
        assert np.all(np.bincount(labels, minlength=10) == 5000)
        assert z["test_offsets"].shape == (10001,) and z["test_labels"].max() == 9
        classes = [str(c) for c in z["classes"]]
        cut = {"classes": z["classes"]}
        for split, n in (("train", 200), ("test", 50)):
            o = z[f"{split}_offsets"][: n + 1]
            cut[f"{split}_bytes"] = z[f"{split}_bytes"][: o[-1]]
            cut[f"{split}_offsets"] = o
            cut[f"{split}_labels"] = z[f"{split}_labels"][:n]
    assert classes[0] == "airplane" and len(classes) == 10
    small = tmp_path / "cifar10_jpeg.npz"
    np.savez(small, **cut)
    b = build_data("cifar10", data_path=str(small), sampling_ratio=0.5)
    assert len(b.test) == 50 and b.class_names == classes and b.in_chans == 3
    x, y = b.test[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    raw = b.test.images[0]
    assert raw.dtype == torch.uint8 and raw.float().std() > 10  # real pixels, not blank


@pytest.mark.slow  # full CIFAR-10 decode (~10 s): the full tier (.ci/run) only
def test_cifar10_real_npz_full(tmp_path, monkeypatch):
    path = _real_cifar_npz()
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path))
    tx, ty, vx, vy, classes = load_cifar10_npz(path)
    assert tx.shape == (50000, 32, 32, 3) and vx.shape == (10000, 32, 32, 3)
    assert ty.min() == 0 and ty.max() == 9 and np.all(np.bincount(ty) == 5000)
    assert len(classes) == 10 and "airplane" in classes


def test_cifar_missing_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so ../shared/data is not found
    with pytest.raises(FileNotFoundError) as e:
        build_data("cifar100", data_path=str(tmp_path))
    assert "cifar-100-python" in str(e.value) and "--download" in str(e.value)
