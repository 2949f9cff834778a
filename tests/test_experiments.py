"""Tests of convit.experiments: sweep, resumption, arithmetic of the tables, on-device data."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import convit.training.fit as train_mod
from convit.analysis import locality_summary, log_locality
from convit.core.fileio import read_jsonl
from convit.core.presets import EXPERIMENT_SCALES, experiment_scale
from convit.data import build_data
from convit.data.device import DeviceImages, EvalBatches, TrainBatches, device_splits
from convit.experiments import grids
from convit.experiments.results import mean_std, relative_gain, summarize, write_results
from convit.experiments.runner import load_results, plan_runs, run_sweep
from convit.training.config import build_config
from convit.training.engine import evaluate
from convit.weights.checkpoint import read_checkpoint
from convit.weights.zoo import create_model

# A minuscule model: 8x8 digits as a 2x2 grid of 4x4 patches, 16 wide, 2 blocks (1 GPSA); sweeps
# pin every architecture field, so this is not conftest's TINY_MODEL (2x2 patches) on purpose:
# 4 tokens keep a sweep run at a fraction of a second.
TINY = dict(patch_size=4, embed_dim=16, num_heads=2, depth=2, mlp_ratio=1.0, local_up_to_layer=1)
FAST = {"eval_every": 1, "batch_size": 32}


def _check_record_is_the_runs_log(record, folder):
    """A sweep's record (and so its table) holds the final epoch's numbers of the run's log."""
    last = read_jsonl(folder / "log.jsonl")[-1]
    assert record["test_top1"] == last["test_top1"] and record["val_top1"] == last["val_top1"]
    assert record["epochs"] == last["epoch"]


def _plan(out, **kw):
    args = dict(fractions=[0.1], seeds=1, base_epochs=0.1, model_overrides=TINY, train_overrides=FAST)
    args.update(kw)
    return plan_runs("sample-efficiency", "digits-cpu", out, **args)


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def test_plan_scales_epochs_and_matches_sizes(tmp_path):
    specs = plan_runs(
        "sample-efficiency", "digits-cpu", tmp_path, fractions=[0.25, 1.0], seeds=2, base_epochs=30
    )
    assert len(specs) == 2 * 2 * 2
    by_key = {s.key: s for s in specs}
    conv, deit = by_key["convit/f0.25/seed1"], by_key["deit/f0.25/seed1"]
    assert conv.overrides["epochs"] == 120 and by_key["convit/f1/seed0"].overrides["epochs"] == 30
    assert conv.overrides["sampling_ratio"] == 0.25 and conv.overrides["seed"] == 1
    assert conv.folder == tmp_path / "convit" / "f0.25" / "seed1"
    # matched size: same widths/depth, only ConViT has GPSA blocks
    for k in ("patch_size", "embed_dim", "depth", "num_heads"):
        assert conv.overrides["model_kwargs"][k] == deit.overrides["model_kwargs"][k]
    assert conv.overrides["model_kwargs"]["local_up_to_layer"] == 3
    assert (
        deit.overrides["model"] == "deit_digits" and deit.overrides["model_kwargs"]["local_up_to_layer"] == 0
    )
    # the architecture and the recipe are pinned in full (zoo or preset retuning cannot leak in)
    assert (
        conv.overrides["model_kwargs"]["global_pool"] == "token"
        and "qkv_bias" in conv.overrides["model_kwargs"]
    )
    assert "img_size" not in conv.overrides["model_kwargs"]  # taken from the data
    from convit.training.config import TrainConfig

    assert set(TrainConfig().to_dict()) <= set(conv.overrides)
    # the test split is never used for selection: every run holds out validation data
    assert all(s.overrides["val_fraction"] > 0 for s in specs)


def test_grids_have_the_papers_variants():
    p = experiment_scale("digits-cpu")
    abl = {v.name: v for v in grids.grid_variants("ablation", p)}
    assert set(abl) == set(grids.PAPER_ABLATION)
    assert abl["frozen-gates"].model_kwargs == {"train_gates": False, "gate_init": 0.0}
    assert abl["frozen-random-gpsa"].model_kwargs == {"train_gpsa": False, "use_local_init": False}
    assert abl["deit"].baseline and abl["deit"].role == "deit"
    layers = grids.grid_variants("gpsa-layers", p)
    assert [v.model_kwargs["local_up_to_layer"] for v in layers] == list(range(grids.scale_depth(p) + 1))
    alphas = [v.model_kwargs.get("locality_strength") for v in grids.grid_variants("locality-strength", p)]
    assert alphas[:3] == [0.01, 0.1, 1.0]
    with pytest.raises(ValueError, match="unknown variant"):
        grids.grid_variants("ablation", p, ["nope"])
    # every variant of every grid is a valid model config at every preset's size
    from convit.experiments.runner import _model_for
    from convit.nn.model import ConViTConfig
    from convit.weights.zoo import model_spec

    sizes = {"digits": 8, "fashion-mnist": 28, "cifar10": 32}
    for preset in EXPERIMENT_SCALES.values():
        for g in grids.GRIDS:
            for v in grids.grid_variants(g, preset):
                m = _model_for(preset, v)
                ConViTConfig.from_dict(
                    {**model_spec(m["model"]).config, **m["model_kwargs"], "img_size": sizes[preset.dataset]}
                )


def test_epochs_for_fraction():
    assert grids.epochs_for_fraction(30, 0.1) == 300
    assert grids.epochs_for_fraction(0.6, 0.01) == 60
    assert grids.epochs_for_fraction(0.1, 1.0) == 1  # at least one
    with pytest.raises(ValueError):
        grids.epochs_for_fraction(30, 0)


# ---------------------------------------------------------------------------------------------
# Arithmetic of the tables
# ---------------------------------------------------------------------------------------------


def test_mean_std_and_relative_gain_by_hand():
    m, s = mean_std([80.0, 90.0])
    assert m == 85.0 and s == pytest.approx(math.sqrt(50.0))  # sample std: ((5^2 + 5^2) / 1) ** .5
    assert math.isnan(mean_std([70.0])[1])
    assert relative_gain(47.8, 34.8) == pytest.approx(0.3736, abs=1e-4)  # the paper's 37% at f = 5%
    assert relative_gain(81.4, 79.9) == pytest.approx(0.0188, abs=1e-4)  # and 2% at f = 100%


def _rec(variant, f, seed, test, val, baseline=False):
    return {
        "grid": "sample-efficiency",
        "preset": "digits-cpu",
        "variant": variant,
        "label": variant,
        "fraction": f,
        "seed": seed,
        "test_top1": test,
        "val_top1": val,
        "baseline": baseline,
        "train_images": 100,
        "wall_s": 1.0,
    }


def test_summarize_hand_computed(tmp_path):
    recs = [
        _rec("convit", 0.1, 0, 60.0, 50.0),
        _rec("convit", 0.1, 1, 70.0, 60.0),
        _rec("deit", 0.1, 0, 40.0, 40.0, True),
        _rec("deit", 0.1, 1, 60.0, 50.0, True),
        _rec("convit", 1.0, 0, 90.0, 88.0),
        _rec("deit", 1.0, 0, 90.0, 80.0, True),
    ]
    cells = {(c.variant, c.fraction): c for c in summarize(recs)}
    c = cells[("convit", 0.1)]
    assert (c.n, c.test_mean, c.val_mean) == (2, 65.0, 55.0)
    assert c.test_std == pytest.approx(math.sqrt(50.0))
    assert c.gain_test == pytest.approx((65 - 50) / 50)  # ratio of means: +30%
    assert c.gain_val == pytest.approx((55 - 45) / 45)
    # paired per-seed gains: (60-40)/40 = 0.5 and (70-60)/60 = 1/6
    assert c.gain_test_sd == pytest.approx(mean_std([0.5, 1 / 6])[1])
    assert cells[("deit", 0.1)].gain_test == 0.0
    assert cells[("convit", 1.0)].gain_test == 0.0 and cells[("convit", 1.0)].gain_val == pytest.approx(0.1)
    paths = write_results(recs, tmp_path, grid="sample-efficiency")
    md = paths["md"].read_text()
    assert "65.00 ± 7.07" in md and "+30.0%" in md and "+22.2%" in md
    assert "34.8 → 47.8 (+37%)" not in md  # f = 0.05 was not run: no paper row invented
    assert paths["figure"].is_file() and paths["figure"].stat().st_size > 1000
    rows = list(csv.DictReader(open(paths["summary"])))
    assert len(rows) == 4 and float(rows[0]["gain_test"]) == pytest.approx(0.3)
    assert "locality_figure" not in paths  # no run logged locality: no empty figure


# ---------------------------------------------------------------------------------------------
# A real (tiny) sweep, interrupted and resumed
# ---------------------------------------------------------------------------------------------


def test_tiny_sweep_then_interrupted_sweep_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    specs = _plan(out)
    assert [s.key for s in specs] == ["convit/f0.1/seed0", "deit/f0.1/seed0"]
    assert all(s.overrides["epochs"] == 1 for s in specs)
    assert specs[0].overrides["model_kwargs"]["local_up_to_layer"] == 1
    assert specs[1].overrides["model_kwargs"]["local_up_to_layer"] == 0  # DeiT stays GPSA-free

    calls = []

    def flaky_fit(cfg):
        calls.append(cfg.model)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the sweep is killed during the second run
        return train_mod.fit(cfg)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(specs, out, fit_fn=flaky_fit, say=lambda s: None)
    first = specs[0].folder / "result.json"
    assert first.is_file() and not (specs[1].folder / "result.json").exists()
    stamp = first.stat().st_mtime_ns
    rec0 = json.loads(first.read_text())
    assert rec0["epochs"] == 1
    _check_record_is_the_runs_log(rec0, specs[0].folder)

    calls.clear()
    records = run_sweep(
        specs, out, fit_fn=lambda cfg: (calls.append(cfg.model), train_mod.fit(cfg))[1], say=lambda s: None
    )
    assert calls == ["deit_digits"]  # the finished run was not redone
    assert first.stat().st_mtime_ns == stamp
    assert [r["skipped"] for r in records] == [True, False]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["variant"] for r in rows] == ["convit", "deit"]
    for row, spec in zip(rows, specs):  # the table's numbers are the runs' logged numbers
        last = read_jsonl(spec.folder / "log.jsonl")[-1]
        assert float(row["test_top1"]) == last["test_top1"] and float(row["val_top1"]) == last["val_top1"]
    md = (out / "results.md").read_text()
    assert "| 0.1 |" in md and "gain (test)" in md
    assert (out / "top1_vs_fraction.png").stat().st_size > 1000
    assert len(load_results(out)) == 2
    assert [r["variant"] for r in load_results(out, grid="sample-efficiency")] == ["convit", "deit"]
    assert load_results(out, grid="ablation") == []

    # a third call trains nothing at all
    calls.clear()
    run_sweep(specs, out, fit_fn=lambda cfg: calls.append(cfg) or {}, say=lambda s: None)
    assert calls == []
    # a changed recipe is refused rather than mixed into the table
    changed = _plan(out, train_overrides={**FAST, "lr": 1e-4})
    with pytest.raises(ValueError, match="different settings"):
        run_sweep(changed, out, fit_fn=lambda cfg: {}, say=lambda s: None)


def test_unfinished_run_resumes_from_last_pt(tmp_path, monkeypatch):
    """A run killed in its 2nd epoch continues from the last.pt of its 1st, not from scratch."""
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    spec = _plan(out, base_epochs=0.2, variants=["deit"])[0]
    assert spec.overrides["epochs"] == 2
    real_epoch = train_mod.train_one_epoch
    epochs_trained = []

    def killed_in_epoch_2(*args, **kwargs):
        epoch = kwargs["epoch"]
        if epoch == 2 and not epochs_trained.count("resumed"):
            raise KeyboardInterrupt  # Ctrl-C / kill in the middle of epoch 2
        epochs_trained.append(epoch)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([spec], out, say=lambda s: None)
    assert (spec.folder / "last.pt").is_file() and not (spec.folder / "result.json").exists()
    assert epochs_trained == [1]

    resumes = []

    def fit_recording(cfg):
        resumes.append(cfg.resume)
        epochs_trained.append("resumed")
        return train_mod.fit(cfg)

    recs = run_sweep([spec], out, fit_fn=fit_recording, say=lambda s: None)
    assert resumes[0] is not None and resumes[0].endswith("last.pt")
    assert epochs_trained == [1, "resumed", 2]  # epoch 1 was not trained again
    assert recs[0]["resumed"] is True and recs[0]["epochs"] == 2 and recs[0]["test_top1"] is not None
    log = read_jsonl(spec.folder / "log.jsonl")
    assert [e["epoch"] for e in log] == [1, 2]
    # cpu_s is this attempt's; epochs_cpu_s adds every attempt's logged epochs (both epochs here)
    assert (
        recs[0]["epochs_cpu_s"] == pytest.approx(sum(e["epoch_cpu_time_s"] for e in log))
        and recs[0]["epochs_cpu_s"] > log[1]["epoch_cpu_time_s"] > 0
    )


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
    assert len(ev) == 4 and torch.equal(torch.cat([l for _, l in ev]), y)


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
    assert s["test_top1"] == log[-1]["test_top1"] and s["val_top1"] == log[-1]["val_top1"]
    assert s["train_images"] == len(build_data("digits", sampling_ratio=0.5, val_fraction=0.1).train)
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
    assert [r["train_images"] for r in recs] == [100, 100]  # 10 per class
    for r, spec in zip(recs, specs):
        _check_record_is_the_runs_log(r, spec.folder)
        assert "on device" in (spec.folder / "config.yaml").read_text()  # it took the on-device path
    assert (tmp_path / "results.md").is_file() and (tmp_path / "top1_vs_fraction.png").is_file()
