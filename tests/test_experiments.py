"""Tests of convit.experiments: planning, sweep, resumption, arithmetic of the tables, records
(on-device data: test_experiments_device.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import convit.training.fit as train_mod
from convit.core.fileio import read_jsonl
from convit.core.presets import EXPERIMENT_SCALES, experiment_scale
from convit.core.provenance import file_sha256
from convit.experiments import grids
from convit.experiments.results import mean_std, relative_gain, summarize, write_results
from convit.experiments.run_record import RunRecord
from convit.experiments.runner import execute_run, load_results, plan_runs, run_sweep
from convit.training import FitResult

# A minuscule model: 8x8 digits as a 2x2 grid of 4x4 patches, 16 wide, 2 blocks (1 GPSA); sweeps
# pin every architecture field, so this is not conftest's TINY_MODEL (2x2 patches) on purpose:
# 4 tokens keep a sweep run at a fraction of a second.
TINY = dict(patch_size=4, embed_dim=16, num_heads=2, depth=2, mlp_ratio=1.0, local_up_to_layer=1)
FAST = {"eval_every": 1, "batch_size": 32}


def check_record_is_the_runs_log(record, folder):
    """A sweep's record (and so its table) holds the final epoch's numbers of the run's log."""
    last = read_jsonl(folder / "log.jsonl")[-1]
    assert record.test_top1 == last["test_top1"] and record.val_top1 == last["val_top1"]
    assert record.epochs == last["epoch"]


def _never_fit(cfg):
    """A trainer for sweeps that must train nothing."""
    raise AssertionError(f"{cfg.output} was trained")


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
    from convit.experiments.sweep_plan import _model_for
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
    return RunRecord(
        grid="sample-efficiency",
        preset="digits-cpu",
        variant=variant,
        label=variant,
        fraction=f,
        seed=seed,
        test_top1=test,
        val_top1=val,
        baseline=baseline,
        train_images=100,
        wall_s=1.0,
    )


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
    rec0 = RunRecord.read(first)
    assert rec0.epochs == 1
    check_record_is_the_runs_log(rec0, specs[0].folder)
    (start,) = rec0.provenance  # one start; the data file hashed, the code and CPU named
    digits_file = next(iter(start["data_files"]))
    assert digits_file.endswith("digits.csv.gz") and start["data_files"][digits_file] == file_sha256(
        digits_file
    )
    assert start["torch"] == torch.__version__ and start["cpu_capability"]

    calls.clear()
    records = run_sweep(
        specs, out, fit_fn=lambda cfg: (calls.append(cfg.model), train_mod.fit(cfg))[1], say=lambda s: None
    )
    assert calls == ["deit_digits"]  # the finished run was not redone
    assert first.stat().st_mtime_ns == stamp
    assert [r.skipped for r in records] == [True, False]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["variant"] for r in rows] == ["convit", "deit"]
    for row, spec in zip(rows, specs):  # the table's numbers are the runs' logged numbers
        last = read_jsonl(spec.folder / "log.jsonl")[-1]
        assert float(row["test_top1"]) == last["test_top1"] and float(row["val_top1"]) == last["val_top1"]
    md = (out / "results.md").read_text()
    assert "| 0.1 |" in md and "gain (test)" in md
    assert (out / "top1_vs_fraction.png").stat().st_size > 1000
    assert len(load_results(out)) == 2
    assert [r.variant for r in load_results(out, grid="sample-efficiency")] == ["convit", "deit"]
    assert load_results(out, grid="ablation") == []

    # a third call trains nothing at all
    run_sweep(specs, out, fit_fn=_never_fit, say=lambda s: None)
    # a changed recipe is refused rather than mixed into the table
    changed = _plan(out, train_overrides={**FAST, "lr": 1e-4})
    with pytest.raises(ValueError, match="different settings"):
        run_sweep(changed, out, fit_fn=_never_fit, say=lambda s: None)


def test_a_resumed_sweep_keeps_when_it_began(tmp_path, monkeypatch):
    """sweep.json keeps the first call's start and says when the sweep was last resumed."""
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    specs = _plan(out)
    run_sweep(specs, out, say=lambda s: None, meta={"started": "then"})
    assert json.loads((out / "sweep.json").read_text()) == {"started": "then"}
    run_sweep(specs, out, fit_fn=_never_fit, say=lambda s: None, meta={"started": "now"})
    assert json.loads((out / "sweep.json").read_text()) == {"started": "then", "resumed": "now"}


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
    assert recs[0].resumed is True and recs[0].epochs == 2 and recs[0].test_top1 is not None
    log = read_jsonl(spec.folder / "log.jsonl")
    assert [e["epoch"] for e in log] == [1, 2]
    # cpu_s is this attempt's; epochs_cpu_s adds every attempt's logged epochs (both epochs here)
    assert (
        recs[0].epochs_cpu_s == pytest.approx(sum(e["epoch_cpu_time_s"] for e in log))
        and recs[0].epochs_cpu_s > log[1]["epoch_cpu_time_s"] > 0
    )


# ---------------------------------------------------------------------------------------------
# Records: result.json's format
# ---------------------------------------------------------------------------------------------

COMMITTED = sorted((Path(__file__).parents[1] / "docs" / "results").glob("**/result.json"))


def test_committed_records_read_back_unchanged():
    assert COMMITTED, "docs/results holds finished runs"
    for path in COMMITTED:
        stored = json.loads(path.read_text())
        record = RunRecord.from_json(stored)
        assert record.label == stored["label"] and record.test_top1 == stored["test_top1"]
        assert {k: v for k, v in record.to_json().items() if k in stored} == stored


def test_a_new_record_has_the_keys_of_the_committed_ones(tmp_path):
    spec = _plan(tmp_path)[0]
    result = FitResult(
        **{f.name: None for f in dataclasses.fields(FitResult)} | {"epochs": 1, "train_images": 20}
    )
    record = execute_run(spec, fit_fn=lambda cfg: result)
    stored = json.loads((spec.folder / "result.json").read_text())
    committed_keys = max((set(json.loads(p.read_text())) for p in COMMITTED), key=len)
    assert set(stored) == committed_keys | {"provenance"}  # runs before provenance have no such key
    assert RunRecord.from_json(stored) == record and not record.skipped
    assert (stored["epochs"], stored["train_images"], stored["evals"]) == (1, 20, [])
