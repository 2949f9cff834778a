"""Tests for convit.data: per-class subsampling, the digits split, Fashion-MNIST and imagefolder
scanning with unreadable files (CIFAR: test_data_cifar.py; the registry: test_data_registry.py).

Datasets that are not installed are skipped with a message saying where they were looked for.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image
from sklearn.datasets import load_digits

from convit.data import (
    DATASETS,
    UnreadableSample,
    build_data,
    collate_skipping,
    eval_transform,
    fashion_mnist,
    load_image,
    subsample_per_class,
)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def digits():
    return build_data("digits", val_fraction=0.1, seed=0)


# ---- subsample_per_class --------------------------------------------------------------------


def _unbalanced_labels():
    # classes of size 10, 7, 3, 1 and 145, interleaved so order is not trivially by class
    labels = np.repeat([0, 1, 2, 3, 4], [10, 7, 3, 1, 145])
    return np.random.default_rng(123).permutation(labels)


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 1.0])
def test_subsample_counts_per_class(ratio):
    labels = _unbalanced_labels()
    idx = subsample_per_class(labels, ratio, seed=0)
    assert np.all(np.diff(idx) > 0), "indices must be sorted and unique"
    got = Counter(labels[idx].tolist())
    for c, n in Counter(labels.tolist()).items():
        assert got[c] == max(1, round(ratio * n)), (c, n, got[c])


def test_subsample_deterministic_and_seed_dependent():
    labels = _unbalanced_labels()
    a = subsample_per_class(labels, 0.3, seed=1)
    b = subsample_per_class(list(labels), 0.3, seed=1)
    c = subsample_per_class(labels, 0.3, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_subsample_nested_across_ratios():
    labels = _unbalanced_labels()
    small = set(subsample_per_class(labels, 0.2, seed=5).tolist())
    large = set(subsample_per_class(labels, 0.6, seed=5).tolist())
    assert small < large


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_subsample_bad_ratio(ratio):
    with pytest.raises(ValueError, match="sampling_ratio"):
        subsample_per_class([0, 1, 1], ratio, seed=0)


# ---- build_data argument checks -------------------------------------------------------------


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError) as e:
        build_data("mnist-typo")
    for name in DATASETS:
        assert name in str(e.value)


@pytest.mark.parametrize(
    "kw,text",
    [
        ({"sampling_ratio": 0}, "sampling_ratio"),
        ({"sampling_ratio": 1.01}, "1.01"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"augment": "heavy"}, "heavy"),
    ],
)
def test_bad_arguments(kw, text):
    with pytest.raises(ValueError, match=text):
        build_data("digits", **kw)


# ---- digits ---------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_names():
    b = build_data("digits")
    assert (len(b.train), len(b.test), b.val) == (1437, 360, None)
    assert b.class_names == [str(i) for i in range(10)] and b.num_classes == 10
    assert (b.in_chans, b.img_size, b.native_size) == (1, 8, 8)
    x, y = b.test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    xt, yt = b.train[0]
    assert xt.shape == (1, 8, 8) and isinstance(yt, int)
    # the label is that of the scikit-learn digit whose pixels the sample holds
    stored = b.train.images[b.train.indices[0], 0].numpy() * 16
    sk = load_digits()
    assert {int(t) for im, t in zip(sk.images, sk.target) if np.array_equal(im, stored)} == {yt}
    assert len(b.train_labels) == len(b.train)
    # normalised with the training statistics: test pixels roughly zero-mean, unit-std
    allx = torch.stack([b.test[i][0] for i in range(len(b.test))])
    assert abs(allx.mean().item()) < 0.1 and 0.9 < allx.std().item() < 1.1


def test_digits_test_split_fixed_across_seeds_and_ratios():
    a = build_data("digits", seed=0)
    b = build_data("digits", seed=7, sampling_ratio=0.3, val_fraction=0.2)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert torch.equal(a.test.images, b.test.images)
    assert b.test[17][0].equal(a.test[17][0])


def test_digits_val_stratified_disjoint_and_ratio_independent(digits):
    assert len(digits.val) + len(digits.train) == 1437
    val_idx, train_idx = set(digits.val.indices.tolist()), set(digits.train.indices.tolist())
    assert not val_idx & train_idx
    # stratified: every class has ~10% of its train images in val
    full = build_data("digits").train.labels
    per_class = Counter(digits.val.labels.tolist())
    for c, n in Counter(full.tolist()).items():
        assert per_class[c] == round(0.1 * n)
    # the val set does not depend on sampling_ratio, and train shrinks per class
    sub = build_data("digits", val_fraction=0.1, seed=0, sampling_ratio=0.25)
    np.testing.assert_array_equal(sub.val.indices, digits.val.indices)
    assert not set(sub.train.indices.tolist()) & val_idx
    rest = Counter(digits.train.labels.tolist())
    assert Counter(sub.train_labels.tolist()) == {c: max(1, round(0.25 * n)) for c, n in rest.items()}
    # a different seed holds out different images
    other = build_data("digits", val_fraction=0.1, seed=1)
    assert not np.array_equal(other.val.indices, digits.val.indices)


def test_digits_augment_modes_and_resize():
    b = build_data("digits", augment="none")
    assert b.train[3][0].equal(b.train[3][0])  # no randomness
    a = build_data("digits", augment="auto")
    assert a.augment == "small"
    torch.manual_seed(0)
    draws = [a.train[3][0] for _ in range(10)]
    assert any(not d.equal(draws[0]) for d in draws), "random crop should vary"
    big = build_data("digits", img_size=16, augment="deit")
    assert big.img_size == 16 and big.train[0][0].shape == (1, 16, 16)
    assert big.test[0][0].shape == (1, 16, 16)


def test_eval_transform_matches_test_set(digits):
    t = eval_transform(digits.img_size, digits.mean, digits.std, digits.in_chans, digits.native_size)
    raw = digits.test.images[digits.test.indices[5]]  # float [1, 8, 8] in [0, 1]
    assert torch.allclose(t(raw), digits.test[5][0])
    rgb = Image.new("RGB", (40, 30), (255, 255, 255))
    out = t(rgb)
    assert out.shape == (1, 8, 8)
    assert torch.allclose(
        out, (1 - torch.tensor(digits.mean[0])) / digits.std[0] * torch.ones(1, 8, 8), atol=1e-3
    )
    photo = eval_transform(224, (0.5,) * 3, (0.5,) * 3, 3)(np.zeros((300, 400), dtype=np.uint8))
    assert photo.shape == (3, 224, 224) and torch.allclose(photo, -torch.ones(1))


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(bad)


# ---- fashion-mnist --------------------------------------------------------------------------


def test_fashion_mnist():
    if not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST not found at {FASHION_DIR}; install dataset-fashion-mnist")
    b = build_data("fashion-mnist", sampling_ratio=0.1, val_fraction=0.05)
    assert len(b.test) == 10000 and len(b.val) == 3000 and len(b.train) == 5700
    assert b.class_names[0] == "T-shirt/top" and b.class_names[-1] == "Ankle boot"
    assert set(np.unique(b.train_labels).tolist()) == set(range(10))
    x, y = b.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10
    assert set(np.unique(b.test.labels).tolist()) == set(range(10))


def test_fashion_mnist_missing_files_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "_FASHION_SYSTEM_DIR", str(tmp_path / "system"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as e:
        build_data("fashion-mnist", data_path=str(tmp_path / "partial"))
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "dataset-fashion-mnist" in msg
    assert "--data-path" in msg and str(tmp_path / "system") in msg
    assert "missing train-images" not in msg  # it was found, only the other three are missing


# ---- imagefolder ----------------------------------------------------------------------------


def _cats_and_dogs(root: Path) -> Path:
    """Two classes of three 20x24 RGB images in train and val."""
    return write_image_folder(root, classes=("cat", "dog"), size=(20, 24))


def test_imagefolder_skips_corrupt_file(tmp_path):
    root = _cats_and_dogs(tmp_path / "imgs")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\x00garbage, not an image\xff" * 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = build_data("imagefolder", data_path=str(root), img_size=16, val_fraction=0.34)
    named = [w for w in caught if "broken.jpg" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]
    assert len(b.skipped) == 1 and b.skipped[0].endswith("broken.jpg")
    assert b.class_names == ["cat", "dog"] and b.in_chans == 3 and b.augment == "deit"
    assert len(b.train) + len(b.val) == 6 and len(b.test) == 6
    for ds in (b.train, b.val, b.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and y in (0, 1)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_data("imagefolder", data_path=str(tmp_path / "missing"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders"):
        build_data("imagefolder", data_path=str(tmp_path / "empty"))
    root = _cats_and_dogs(tmp_path / "hole")
    (root / "train" / "zebra").mkdir()
    (root / "val" / "zebra").mkdir()
    (root / "val" / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="zebra.*has no images"):
        build_data("imagefolder", data_path=str(root))
    diff = _cats_and_dogs(tmp_path / "diff")
    (diff / "train" / "owl").mkdir()
    Image.new("RGB", (8, 8)).save(diff / "train" / "owl" / "a.png")
    with pytest.raises(ValueError, match="only in train: \\['owl'\\]"):
        build_data("imagefolder", data_path=str(diff))


def test_imagefolder_truncated_file_does_not_crash(tmp_path):
    """A file whose header reads but whose pixels do not: warned once, never replaced by
    another sample (an UnreadableSample that collate_skipping drops)."""
    root = _cats_and_dogs(tmp_path / "imgs")
    good = (root / "train" / "cat" / "0.png").read_bytes()
    (root / "train" / "cat" / "1.png").write_bytes(good[: len(good) // 2])
    b = build_data("imagefolder", data_path=str(root), img_size=16, augment="none")
    assert b.skipped == []  # the header is fine, so the scan keeps it
    pos = [p for p, _ in b.train.samples].index(str(root / "train" / "cat" / "1.png"))
    with pytest.warns(UserWarning, match="1.png"):
        item = b.train[pos]
    assert isinstance(item, UnreadableSample) and item.shape == (3, 16, 16)
    assert b.train.failed == [str(root / "train" / "cat" / "1.png")]
    assert collate_skipping([b.train[pos - 1], item])[0].shape == (1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.train[pos]  # second time: no new warning
