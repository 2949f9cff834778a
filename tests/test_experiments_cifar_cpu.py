"""The cifar10-cpu experiment scale: its definition, and a shrunken copy run end to end
(on-device batches on the CPU, two runs at once, CPU time and locality in each result)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from convit.core.presets import experiment_scale
from convit.experiments.results import write_results
from convit.experiments.run_record import RunRecord
from convit.experiments.runner import load_results, plan_runs, run_sweep


def test_cifar10_cpu_scale_definition(tmp_path):
    scale = experiment_scale("cifar10-cpu")
    assert scale.backend == "device" and scale.train["device"] == "cpu" and scale.train["threads"] == 1
    assert scale.train["val_fraction"] == 0.1 and scale.seeds >= 2
    # fractions named in images per class of the 4,500 per class left after the hold-out
    assert [round(f * 4500) for f in scale.fractions] == [50, 100, 250, 1000]
    specs = plan_runs("sample-efficiency", scale, tmp_path)
    assert len(specs) == 2 * 4 * scale.seeds
    # the paper's scheme: every run sees about the same number of images (epochs x subset)
    seen = {s.key: s.overrides["epochs"] * round(s.fraction * 4500) * 10 for s in specs}
    assert max(seen.values()) <= 1.02 * min(seen.values())
    conv, deit = specs[0], specs[1]
    assert (conv.variant.name, deit.variant.name) == ("convit", "deit")
    assert conv.overrides["locality"] and conv.overrides["model_kwargs"]["patch_size"] == 4  # 8x8 grid
    for k in ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio"):
        assert conv.overrides["model_kwargs"][k] == deit.overrides["model_kwargs"][k]
    assert conv.overrides["model_kwargs"]["local_up_to_layer"] == 5
    assert deit.overrides["model_kwargs"]["local_up_to_layer"] == 0
    abl = plan_runs("ablation", scale, tmp_path, seeds=1)
    assert len(abl) == 7 and {round(s.fraction * 4500) for s in abl} == {100}


def test_cifar10_cpu_scale_shrunk_runs_two_at_once(tmp_path, cifar_npz):
    """The scale's wiring in seconds: 10 images per class, 1 epoch, a 2x2-grid model, 2 jobs."""
    f = 10 / 4900  # of the 4,900 per class left after a 2% hold-out
    specs = plan_runs(
        "sample-efficiency",
        "cifar10-cpu",
        tmp_path,
        fractions=[f],
        seeds=1,
        base_epochs=f,
        model_overrides=dict(patch_size=16, embed_dim=16, num_heads=2, depth=2, local_up_to_layer=1),
        train_overrides=dict(data_path=str(cifar_npz), batch_size=32, val_fraction=0.02),
    )
    assert [s.overrides["epochs"] for s in specs] == [1, 1]
    recs = run_sweep(specs, tmp_path, say=lambda s: None, jobs=2)
    assert [r.variant for r in recs] == ["convit", "deit"]
    for r, spec in zip(recs, specs):
        assert r.images_per_class == 10 and r.train_images == 100
        assert r.cpu_s > 0 and r.params > 0
        stored = json.loads((spec.folder / "result.json").read_text())
        assert stored["evals"] and stored["evals"][-1]["epoch"] == 1
        assert stored["evals"][-1]["test_top1"] == r.test_top1
        assert "on device" in (spec.folder / "config.yaml").read_text()
    gates = recs[0].evals[-1]["locality"]
    assert gates, "ConViT's result.json holds the locality of its evaluated epochs"
    md = write_results(load_results(tmp_path, grid="sample-efficiency"), tmp_path)["md"].read_text()
    assert "images/class" in md and "| 10 |" in md and "CPU-hours" in md
    assert "Locality over training" in md and "→" in md  # per-block nonlocality and gates


def test_settings_diff_tolerates_knobs_added_since(tmp_path):
    """A sweep committed by one version of the code resumes under a later one that added
    TrainConfig fields (left at their defaults); any changed setting is still refused."""
    from convit.experiments.runner import settings_diff
    from convit.training.config import TrainConfig, build_config

    spec = plan_runs("sample-efficiency", "cifar10-cpu", tmp_path, seeds=1)[0]
    planned = json.loads(json.dumps(build_config(spec.overrides).to_dict()))
    for k in ("output", "resume", "overwrite"):
        planned.pop(k)
    stored = dict(planned)
    assert settings_diff(stored, planned) == []
    stored.pop("clip_grad")  # a field the stored run's code did not have yet, planned at its default
    assert TrainConfig().clip_grad is None and settings_diff(stored, planned) == []
    assert settings_diff(stored, {**planned, "clip_grad": 1.0}) == ["clip_grad"]
    assert settings_diff({**stored, "removed_knob": 3}, planned) == []  # a field since removed
    assert settings_diff({**stored, "lr": 1.0}, planned) == ["lr"]
    assert settings_diff(None, planned) == sorted(planned)


def _record(variant: str, seed: int) -> RunRecord:
    return RunRecord.from_json(
        {
            "grid": "sample-efficiency",
            "preset": "cifar10-cpu",
            "variant": variant,
            "label": variant,
            "fraction": 0.1,
            "seed": seed,
            "test_top1": 50.0,
            "val_top1": 50.0,
            "baseline": variant == "deit",
            "train_images": 100,
            "wall_s": 1.0,
        }
    )


def test_locality_over_training_is_averaged_per_block_over_heads_and_seeds(tmp_path):
    from convit.experiments.summary import locality_curves

    def rec(seed, last_gate):
        return dataclasses.replace(
            _record("convit", seed),
            epochs=10,
            evals=[
                {"epoch": 5, "locality": {"nonlocality": [[1.0, 3.0], [2.0, None]], "gates": [[0.7, 0.9]]}},
                {"epoch": 10, "val_top1": 50.0},  # an evaluation without locality is left out
                {
                    "epoch": 10,
                    "locality": {"nonlocality": [[2.0, 4.0], [5.0, None]], "gates": [[last_gate, last_gate]]},
                },
            ],
        )

    recs = [rec(0, 0.5), rec(1, 0.3), _record("deit", 0)]
    assert locality_curves(recs[:2], "nonlocality") == ([0.5, 1.0], [[2.0, 2.0], [3.0, 5.0]])
    xs, ys = locality_curves(recs[:2], "gates")
    assert xs == [0.5, 1.0] and ys[0] == [pytest.approx(0.8)] and ys[1] == [pytest.approx(0.4)]
    assert locality_curves(recs[2:], "gates") == ([], [])
    paths = write_results(recs, tmp_path, grid="sample-efficiency")
    assert paths["locality_figure"].name == "locality_over_training.png"
    assert paths["locality_figure"].stat().st_size > 1000


def test_cpu_time_of_a_resumed_run_counts_every_attempt():
    from convit.experiments.results import summarize

    whole = dataclasses.replace(
        _record("convit", 0), cpu_s=100.0, epochs_cpu_s=95.0
    )  # one attempt: its process time
    resumed = dataclasses.replace(
        _record("convit", 1), cpu_s=40.0, epochs_cpu_s=90.0
    )  # resumed: every attempt's epochs
    older = dataclasses.replace(_record("convit", 2), cpu_s=30.0)  # from before epochs_cpu_s: what it has
    assert summarize([whole, resumed, older])[0].cpu_s == pytest.approx(100.0 + 90.0 + 30.0)
