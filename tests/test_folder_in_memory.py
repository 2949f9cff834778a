"""Image folders (and stored datasets at another size) decoded once and held in memory
(convit/data/decoded.py, convit/data/device.py, convit/training/in_memory.py): the same splits
as the DataLoader path, evaluation on the same values, a training image per file as the
DataLoader path's geometry makes it (to uint8 rounding), unreadable files named, and when
``--in-memory auto`` holds them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_MODEL, write_image_folder
from torchvision.transforms import v2

import convit.training.in_memory as in_memory
from convit.core import distributed
from convit.core.fileio import read_jsonl
from convit.data import build_data
from convit.data.device import device_splits, held_bytes, hold_splits
from convit.data.reader import read_image
from convit.training.config import build_config
from convit.training.fit import fit

SIZE = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes of noise images, train and val: 12x16 and 10x10 pixels (not square, not 8)."""
    root = tmp_path_factory.mktemp("in_memory")
    write_image_folder(root, classes=("a", "b", "c"), per_class=6, size=(12, 16))
    write_image_folder(root / "square", classes=("a", "b", "c"), per_class=2, size=10, seed=1)
    for split in ("train", "val"):
        for c in ("a", "b", "c"):
            for f in (root / "square" / split / c).iterdir():
                f.rename(root / split / c / f"sq{f.name}")
    return root


def _bundle(folder, augment="small"):
    return build_data(
        "imagefolder",
        str(folder),
        img_size=SIZE,
        sampling_ratio=0.5,
        seed=3,
        val_fraction=0.25,
        augment=augment,
    )


def test_held_splits_are_the_dataloader_splits_and_evaluate_on_the_same_values(folder):
    bundle = _bundle(folder)
    held = hold_splits(bundle, "cpu")
    assert torch.equal(held.train.labels, torch.from_numpy(bundle.train.labels))
    for ds, images in ((bundle.val, held.val), (bundle.test, held.test)):
        assert torch.equal(images.labels, torch.from_numpy(ds.labels))
        x, _ = images.batch(torch.arange(len(ds)))
        assert torch.equal(x, torch.stack([ds[i][0] for i in range(len(ds))]))  # bit for bit
    assert held.train.images.dtype == torch.uint8 and held.train.shape == (3, SIZE, SIZE)
    assert (held.train.pad, held.train.hflip) == (1, True)  # small at 8 px: padding 1, a flip
    assert held.skipped == {}
    assert held_bytes(bundle) >= sum(t.images.numel() * t.images.element_size() for t in held_list(held))


def held_list(held):
    return [t for t in (held.train, held.val, held.test) if t is not None]


def test_a_training_image_is_the_dataloader_geometry_centre_cropped(folder):
    """The stored training image: the DataLoader pipeline's resize (shorter side to 8), then a
    centre crop to 8 x 8, within uint8 rounding."""
    bundle = _bundle(folder)
    held = hold_splits(bundle, "cpu")
    head = v2.Compose(bundle.train.transform.transforms[:3])  # aspect cap, to float, resize
    for i, (path, _) in enumerate(bundle.train.samples):
        ref = v2.functional.center_crop(head(read_image(path)), [SIZE, SIZE])
        assert (held.train.images[i].float() / 255 - ref).abs().max() <= 0.5 / 255 + 1e-6, path


def test_stored_datasets_at_another_size_evaluate_on_the_dataloader_values():
    """digits resized to 16 px: val and test as float32, equal (to float rounding of the batched
    resize) to the DataLoader path's per-image resize; training images uint8."""
    splits = device_splits("digits", "cpu", sampling_ratio=0.2, val_fraction=0.1, img_size=16)
    bundle = splits["bundle"]
    assert splits["train"].images.dtype == torch.uint8 and splits["train"].shape == (1, 16, 16)
    assert splits["train"].pad == 2
    for ds, images in ((bundle.val, splits["val"]), (bundle.test, splits["test"])):
        assert images.images.dtype == torch.float32
        n = min(len(ds), 64)
        x, y = images.batch(torch.arange(n))
        ref = torch.stack([ds[i][0] for i in range(n)])
        assert torch.allclose(x, ref, atol=1e-5) and torch.equal(y, torch.from_numpy(ds.labels[:n]))


def _config(folder, out, augment="small", **extra):
    return build_config(
        dict(
            dataset="imagefolder",
            data_path=str(folder),
            img_size=SIZE,
            augment=augment,
            model_kwargs=TINY_MODEL,
            epochs=2,
            batch_size=4,
            threads=1,
            num_workers=0,
            report=False,
            locality=False,
            val_fraction=0.25,
            output=str(out),
            **extra,
        )
    )


def _comments(out) -> str:
    return "".join(
        line for line in (out / "config.yaml").read_text().splitlines(True) if line.startswith("#")
    )


def test_a_run_in_memory_names_its_unreadable_files(folder, tmp_path, one_thread):
    """``--in-memory on`` trains from the held splits; a file whose pixels cannot be decoded is
    left out and listed in skipped.tsv, as on the DataLoader path."""
    data = tmp_path / "data"
    write_image_folder(data, classes=("a", "b"), per_class=5, size=(12, 16))
    good = (data / "train" / "a" / "0.png").read_bytes()
    (data / "train" / "a" / "1.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(_config(data, out, in_memory="on"))
    assert "# data: on device (convit.data.device)" in _comments(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["in_memory"] == "on"
    assert [e["epoch"] for e in read_jsonl(out / "log.jsonl")] == [1, 2]
    assert result.skipped == 1 and "1.png" in (out / "skipped.tsv").read_text()
    assert result.test_top1 is not None


def _data(cfg):
    return in_memory.run_data(cfg, torch.device("cpu"), distributed.DistInfo(), on_device=False)


def test_auto_holds_the_splits_when_they_fit_in_the_memory_share(folder, tmp_path, monkeypatch):
    assert _data(_config(folder, tmp_path / "r", in_memory="auto")).in_memory
    assert not _data(_config(folder, tmp_path / "r", in_memory="off")).in_memory
    monkeypatch.setattr(in_memory, "available_memory", lambda device: (4 * 2**20, "a test's 4 MB"))
    monkeypatch.setattr(in_memory, "SHARE", 1e-3)
    data = _data(_config(folder, tmp_path / "r", in_memory="auto"))
    assert not data.in_memory and "more than 0% of the 4 MB free (a test's 4 MB)" in data.note
    assert _data(_config(folder, tmp_path / "r", in_memory="on")).in_memory  # on: the user's call


def test_per_image_augmentation_is_not_held(folder, tmp_path):
    data = _data(_config(folder, tmp_path / "r", in_memory="auto", augment="deit"))
    assert not data.in_memory and "augment deit is applied per image" in data.note
    with pytest.raises(ValueError, match="--in-memory on: augment deit is applied per image"):
        _data(_config(folder, tmp_path / "r", in_memory="on", augment="deit"))
    with pytest.raises(ValueError, match="--in-memory must be one of off, on, auto"):
        _config(folder, tmp_path / "r", in_memory="yes")


def test_in_memory_train_batches_are_augmented_stored_images(folder):
    """Every augmented training image is a (possibly mirrored) 8x8 window of its zero-padded
    stored image, normalised."""
    held = hold_splits(_bundle(folder), "cpu")
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(len(held.train))
    x, _ = held.train.augmented_batch(idx, g)
    padded = torch.nn.functional.pad(held.train.images.float() / 255, (1, 1, 1, 1))
    for b in range(len(idx)):
        raw = x[b] * held.train.std[0] + held.train.mean[0]
        windows = [
            (padded[b].flip(-1) if flip else padded[b])[:, oy : oy + SIZE, ox : ox + SIZE]
            for flip in (False, True)
            for oy in range(3)
            for ox in range(3)
        ]
        assert min((w - raw).abs().max().item() for w in windows) < 1e-5
    assert np.isfinite(x.numpy()).all()
