"""Tests of convit.experiments' on-device data (convit.data.device) and the on-device backend of
its sweeps (``cifar10-gpu``), all run on CPU."""

from __future__ import annotations

import pytest
import torch
from test_experiments import TINY, check_record_is_the_runs_log

import convit.training.fit as train_mod
from convit.analysis import locality_summary, log_locality
from convit.core.fileio import read_jsonl
from convit.data import build_data
from convit.data.device import DeviceImages, EvalBatches, TrainBatches, device_splits
from convit.experiments.runner import plan_runs, run_sweep
from convit.training.config import build_config
from convit.training.engine import evaluate
from convit.weights.checkpoint import read_checkpoint
from convit.weights.zoo import create_model

# ---------------------------------------------------------------------------------------------
# On-device data pipeline (run on CPU)
# ---------------------------------------------------------------------------------------------


def _fake_cifar(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_device_images_crop_flip_normalise():
    x, y = _fake_cifar()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain = DeviceImages(x, y, mean, std, "cpu", pad=0, hflip=False)
    xb, yb = plain.batch(torch.arange(4))
    ref = (x[:4].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert xb.dtype == torch.float32 and torch.allclose(xb, ref, atol=1e-6) and torch.equal(yb, y[:4])
    # no padding, no flip: augmentation is the identity
    g = torch.Generator().manual_seed(0)
    xa, _ = plain.augmented_batch(torch.arange(4), g)
    assert torch.allclose(xa, ref, atol=1e-6)

    aug = DeviceImages(x, y, mean, std, "cpu", pad=4, hflip=True)
    idx = torch.tensor([3, 7, 7, 1, 0, 5, 5, 5])
    g = torch.Generator().manual_seed(1)
    xa, ya = aug.augmented_batch(idx, g)
    assert xa.shape == (8, 3, 32, 32) and torch.equal(ya, y[idx])
    # every augmented image is a (possibly mirrored) 32x32 window of the zero-padded original
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    crops_seen, flips_seen = set(), set()
    for b in range(8):
        raw = xa[b] * s + m
        found = False
        for flip in (False, True):
            src = padded[idx[b]].flip(-1) if flip else padded[idx[b]]
            for oy in range(9):
                for ox in range(9):
                    if torch.allclose(src[:, oy : oy + 32, ox : ox + 32], raw, atol=1e-5):
                        found = True
                        crops_seen.add((oy, ox))
                        flips_seen.add(flip)
        assert found, f"image {b} is not a crop of its source"
    assert len(crops_seen) > 1 and flips_seen == {False, True}  # it does augment


def test_train_batches_deterministic_and_cover_the_epoch():
    x, y = _fake_cifar(50)
    data = DeviceImages(x, y, (0.5,) * 3, (0.25,) * 3, "cpu", pad=4)
    a, b = TrainBatches(data, 16, seed=3), TrainBatches(data, 16, seed=3)
    assert len(a) == 3  # 50 >= 2 * 16: the ragged batch of 2 is dropped
    for t in (a, b):
        t.set_epoch(2)
    ba, bb = list(a), list(b)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ba, bb))
    b.set_epoch(3)
    assert not torch.equal(list(b)[0][0], ba[0][0])  # a new epoch is a new shuffle / augmentation
    c = TrainBatches(data, 16, seed=4)
    c.set_epoch(2)
    assert not torch.equal(list(c)[0][0], ba[0][0])
    assert sum(t.shape[0] for t, _ in ba) == 48
    odd = TrainBatches(DeviceImages(x[:7], y[:7], (0.5,) * 3, (0.25,) * 3, "cpu"), 16, even=True)
    assert [t.shape[0] for t, _ in odd] == [6]  # mixup needs pairs
    ev = EvalBatches(data, 16)
    assert len(ev) == 4 and torch.equal(torch.cat([labels for _, labels in ev]), y)


def _on_device_cfg(tmp_path, name, **kw):
    return build_config(
        dict(
            model="convit_digits",
            model_kwargs=TINY,
            dataset="digits",
            epochs=2,
            batch_size=64,
            sampling_ratio=0.5,
            val_fraction=0.1,
            output=str(tmp_path / name),
            device="cpu",
            mixup=0.8,
            cutmix=1.0,
            drop_path=0.1,
            threads=1,
            locality=True,
            report=False,
            **kw,
        )
    )


def test_fit_with_on_device_batches_on_cpu(tmp_path, monkeypatch):
    """fit(on_device=True): the same splits as build_data, the logged test top-1 is that of the
    saved final model, the locality hook sees the validation images, and an interrupted run
    resumes bit-identically (checkpointing and resume are the loop's, whichever the data)."""
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    s = train_mod.fit(_on_device_cfg(tmp_path, "straight"), on_device=True, on_eval=log_locality)
    log = read_jsonl(tmp_path / "straight" / "log.jsonl")
    assert [e["epoch"] for e in log] == [1, 2] and "test_top1" not in log[0]
    val = device_splits("digits", "cpu", sampling_ratio=0.5, val_fraction=0.1)["val"]
    model = create_model(checkpoint_path=tmp_path / "straight" / "model.safetensors")
    assert log[-1]["locality"] == locality_summary(model, val.batch(torch.arange(64))[0])
    assert s.test_top1 == log[-1]["test_top1"] and s.val_top1 == log[-1]["val_top1"]
    assert s.train_images == len(build_data("digits", sampling_ratio=0.5, val_fraction=0.1).train)
    test = device_splits("digits", "cpu", sampling_ratio=0.5, val_fraction=0.1)["test"]
    assert evaluate(model, EvalBatches(test, 128), torch.device("cpu"))["top1"] == log[-1]["test_top1"]

    real = train_mod.train_one_epoch

    def killed_in_epoch_2(*args, **kwargs):
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "train_one_epoch", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_mod.fit(_on_device_cfg(tmp_path, "resumed"), on_device=True, on_eval=log_locality)
    train_mod.fit(
        _on_device_cfg(tmp_path, "resumed", resume=str(tmp_path / "resumed")),
        on_device=True,
        on_eval=log_locality,
    )
    assert _without_timings(read_jsonl(tmp_path / "resumed" / "log.jsonl")) == _without_timings(log)
    a, _ = read_checkpoint(tmp_path / "straight" / "model.safetensors")
    b, _ = read_checkpoint(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_timings(entries):
    return [{k: v for k, v in e.items() if "time" not in k and "per_s" not in k} for e in entries]


def test_device_splits_on_a_tiny_slice_of_cifar10(cifar_npz):
    """The cifar10-gpu data path, on CPU, on 0.2% of CIFAR-10 (90 training images)."""
    sp = device_splits("cifar10", "cpu", str(cifar_npz), sampling_ratio=0.002, seed=0, val_fraction=0.1)
    train, val, test = sp["train"], sp["val"], sp["test"]
    assert train.images.dtype == torch.uint8 and train.shape == (3, 32, 32)  # kept as uint8
    assert len(train) == 90 and len(val) == 5000 and len(test) == 10000
    assert torch.bincount(train.labels, minlength=10).tolist() == [9] * 10  # per class
    assert train.pad == 4 and train.hflip
    batches = TrainBatches(train, 32, seed=0)
    batches.set_epoch(1)
    xb, yb = next(iter(batches))
    assert xb.shape == (32, 3, 32, 32) and xb.dtype == torch.float32 and yb.shape == (32,)
    # normalised with CIFAR-10's statistics: the test split is about zero-mean, unit-std
    xt, _ = val.batch(torch.arange(2000))
    assert xt.mean().abs() < 0.15 and 0.8 < xt.std() < 1.2


def test_cifar10_gpu_preset_runs_on_cpu(tmp_path, cifar_npz):
    """The cifar10-gpu preset's wiring (on-device backend) end to end, shrunk to seconds on CPU."""
    specs = plan_runs(
        "sample-efficiency",
        "cifar10-gpu",
        tmp_path,
        fractions=[0.002],
        seeds=1,
        base_epochs=0.002,
        model_overrides=dict(patch_size=16, embed_dim=16, num_heads=2, depth=2, local_up_to_layer=1),
        train_overrides=dict(device="cpu", data_path=str(cifar_npz), batch_size=32, val_fraction=0.02),
    )
    assert [s.backend for s in specs] == ["device", "device"] and specs[0].overrides["epochs"] == 1
    recs = run_sweep(specs, tmp_path, say=lambda s: None)
    assert [r.train_images for r in recs] == [100, 100]  # 10 per class
    for r, spec in zip(recs, specs):
        check_record_is_the_runs_log(r, spec.folder)
        assert "on device" in (spec.folder / "config.yaml").read_text()  # it took the on-device path
    assert (tmp_path / "results.md").is_file() and (tmp_path / "top1_vs_fraction.png").is_file()
