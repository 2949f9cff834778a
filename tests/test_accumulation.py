"""Micro-batches (``--micro-batches N``, convit/training/engine.py): a batch forwarded and
backpropagated in N slices whose gradients add up gives the update of the whole batch.

Compared without any randomness inside the step (no dropout, drop-path, mixup or augmentation),
so the only difference is float rounding: the sum of the slices' gradients against the
gradient of the whole batch.  Tolerances: SGD, one epoch of 4 updates: 1e-6 of the weights'
scale; a whole ``fit`` (AdamW, whose update divides by the gradient's running RMS, which
magnifies rounding in near-zero gradients): 1e-4 of each tensor's scale (at least 1) after 2
epochs."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL

from convit.core.fileio import read_jsonl
from convit.training.config import build_config
from convit.training.engine import TrainStep, train_one_epoch
from convit.training.fit import fit
from convit.weights.checkpoint import read_checkpoint
from convit.weights.zoo import create_model


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("convit_digits", num_classes=10, drop_path_rate=0.0, **TINY_MODEL)


def _epoch(micro_batches: int, batches: list) -> tuple[torch.nn.Module, dict]:
    model = _model()
    step = TrainStep(
        torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
        torch.nn.CrossEntropyLoss(),
        micro_batches=micro_batches,
    )
    stats = train_one_epoch(model, batches, step, torch.device("cpu"), epoch=1, progress=False)
    return model, stats


@pytest.mark.parametrize("micro_batches", [2, 3, 8])
def test_micro_batches_give_the_update_of_the_whole_batch(micro_batches, one_thread):
    """Batches of 8 in 2, 3 (3 + 3 + 2: slices weighted by their images) or 8 slices: the
    weights after 4 SGD updates and the epoch's loss are those of whole batches."""
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(4)
    ]
    whole, stats_whole = _epoch(1, batches)
    sliced, stats_sliced = _epoch(micro_batches, batches)
    for (name, a), b in zip(whole.state_dict().items(), sliced.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6 * max(1.0, a.abs().max().item())), name
    assert stats_sliced["train_loss"] == pytest.approx(stats_whole["train_loss"], rel=1e-6)
    assert stats_sliced["train_images"] == stats_whole["train_images"] == 32
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(whole.state_dict().values(), _model().state_dict().values())
    )
    assert moved > 1e-3  # the weights did move: the comparison is not of two untrained models


def _fit(tmp_path, name: str, **extra):
    cfg = build_config(
        dict(
            model_kwargs=TINY_MODEL,
            sampling_ratio=0.2,
            epochs=2,
            warmup_epochs=1,
            batch_size=32,
            threads=1,
            augment="none",
            locality=False,
            report=False,
            output=str(tmp_path / name),
            **extra,
        )
    )
    assert cfg.drop_path == 0 and cfg.mixup == 0 and cfg.cutmix == 0  # the digits preset: no randomness
    fit(cfg)
    return read_jsonl(tmp_path / name / "log.jsonl"), read_checkpoint(tmp_path / name / "model.safetensors")[
        0
    ]


def test_fit_with_micro_batches_follows_the_whole_batch_run(tmp_path, one_thread):
    """``convit train --micro-batches 2`` (batches of 32 as 2 x 16) against the same run with
    whole batches: same learning rates and image counts, losses and accuracies within
    rounding, weights within 1e-4 of each tensor's scale (at least 1); its log says how it was sliced."""
    log_whole, whole = _fit(tmp_path, "whole")
    log_sliced, sliced = _fit(tmp_path, "sliced", micro_batches=2)
    assert [e["lr"] for e in log_sliced] == [e["lr"] for e in log_whole]
    for a, b in zip(log_whole, log_sliced):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_top1"] == pytest.approx(a["val_top1"], abs=1.0)  # at most a borderline image
        assert (b["micro_batch"], b["micro_batches"]) == (16, 2) and "micro_batches" not in a
    for name, a in whole.items():
        assert (sliced[name] - a).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item()), name


def test_micro_batches_are_checked():
    with pytest.raises(ValueError, match="micro-batches 65 is more than the 64 images"):
        build_config(dict(batch_size=64, micro_batches=65))
    with pytest.raises(ValueError, match="--micro-batches must be at least 1"):
        build_config(dict(micro_batches=0))
    assert build_config(dict(batch_size=64, micro_batches=64)).micro_batches == 64
