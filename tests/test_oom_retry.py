"""A run out of GPU memory is run again with half the micro-batch (convit/training/oom_retry.py).

There is no GPU here: the out-of-memory error is injected.  ``torch.OutOfMemoryError`` (what
CUDA raises; ``torch.cuda.OutOfMemoryError`` is the same class) is raised by the training step
whenever its slices hold more than ``limit`` images, from a given epoch on."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
import torch
import yaml
from conftest import TINY_MODEL

import convit.training.engine as engine
from convit.core.fileio import read_jsonl
from convit.training.config import build_config
from convit.training.fit import fit
from convit.training.oom_retry import out_of_memory_in, retry_note
from convit.weights.checkpoint import read_checkpoint


def _config(out, epochs=3, **extra):
    return build_config(
        dict(
            model_kwargs=TINY_MODEL,
            sampling_ratio=0.2,
            epochs=epochs,
            warmup_epochs=1,
            batch_size=32,
            threads=1,
            locality=False,
            report=False,
            output=str(out),
            **extra,
        )
    )


def _out_of_memory_above(monkeypatch, limit: int, from_epoch: int = 1) -> list[int]:
    """Make every training step whose slices exceed ``limit`` images raise out of memory, from
    epoch ``from_epoch`` on; returns the list of slice sizes that failed."""
    real_backward = engine._backward
    real_epoch = engine.train_one_epoch
    failed: list[int] = []
    epoch = [0]

    def backward(model, images, targets, step, *args, **kwargs):
        size = -(-images.shape[0] // step.micro_batches)
        if epoch[0] >= from_epoch and size > limit:
            failed.append(size)
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {size} MiB (injected)")
        return real_backward(model, images, targets, step, *args, **kwargs)

    def train_one_epoch(*args, **kwargs):
        epoch[0] = kwargs["epoch"]
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(engine, "_backward", backward)
    monkeypatch.setattr("convit.training.fit.train_one_epoch", train_one_epoch)
    return failed


def _numbers(entry: dict) -> dict:
    """A log entry without its timings."""
    return {k: v for k, v in entry.items() if "time" not in k and "per_s" not in k}


def _fit(cfg) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        fit(cfg)
    return out.getvalue()


def test_out_of_memory_resumes_from_the_last_checkpoint_with_half_the_micro_batch(
    tmp_path, monkeypatch, one_thread
):
    """Out of memory at micro-batch 32 in epoch 2: the run resumes from epoch 1's last.pt with
    16 x 2, logs each epoch once (epoch 1 exactly as the run that never ran out, the others
    within rounding of it), and says so in its output, its config.yaml and its log."""
    straight = tmp_path / "straight"
    _fit(_config(straight, epochs=2))
    failed = _out_of_memory_above(monkeypatch, limit=16, from_epoch=2)
    printed = _fit(_config(tmp_path / "retried", epochs=2))
    assert failed == [32]
    assert "out of memory" in printed and "at micro-batch 32 x 1: resuming from" in printed
    assert "with micro-batch 16 x 2 (the same batch of 32 per update)" in printed
    a = read_jsonl(straight / "log.jsonl")
    b = read_jsonl(tmp_path / "retried" / "log.jsonl")
    assert [e["epoch"] for e in b] == [1, 2]
    assert _numbers(b[0]) == _numbers(a[0])
    assert [e.get("micro_batches") for e in b] == [None, 2] and b[-1]["micro_batch"] == 16
    assert [e["lr"] for e in b] == [e["lr"] for e in a]
    for ea, eb in zip(a, b):
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-4)
    wa = read_checkpoint(straight / "model.safetensors")[0]
    wb = read_checkpoint(tmp_path / "retried" / "model.safetensors")[0]
    for name, w in wa.items():
        assert (wb[name] - w).abs().max().item() <= 1e-4 * max(1.0, w.abs().max().item()), name
    assert yaml.safe_load((tmp_path / "retried" / "config.yaml").read_text())["micro_batches"] == 2
    assert retry_note(tmp_path / "retried") == "retried with micro-batch 16 x 2"
    assert retry_note(straight) is None


def test_out_of_memory_before_any_checkpoint_starts_again_halving_until_it_fits(
    tmp_path, monkeypatch, one_thread
):
    """Out of memory in epoch 1 (no last.pt yet) above 8 images: 32, then 16 fail, the run
    starts again in its folder each time and trains at 8 x 4."""
    failed = _out_of_memory_above(monkeypatch, limit=8)
    printed = _fit(_config(tmp_path / "run", epochs=2))
    assert failed == [32, 16]
    assert printed.count("starting again (no checkpoint yet)") == 2
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [(e["epoch"], e["micro_batch"], e["micro_batches"]) for e in log] == [(1, 8, 4), (2, 8, 4)]
    assert retry_note(tmp_path / "run") == "retried with micro-batch 8 x 4"


def test_out_of_memory_at_one_image_per_micro_batch_is_raised(tmp_path, monkeypatch, one_thread):
    """Every size fails: 32, 16, 8, 4, 2 and 1 image(s) per slice are tried, then the error
    itself is raised."""
    failed = _out_of_memory_above(monkeypatch, limit=0)
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 1 MiB"):
        _fit(_config(tmp_path / "run", epochs=1))
    assert failed == [32, 16, 8, 4, 2, 1]


def test_other_processes_errors_pass_through(tmp_path):
    """Under torchrun (``retry=False``) the error is raised as it is; other errors always are."""
    with pytest.raises(torch.OutOfMemoryError):
        with out_of_memory_in(tmp_path, retry=False):
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(KeyError):
        with out_of_memory_in(tmp_path, retry=True):
            raise KeyError("x")
