"""What :func:`convit.training.fit.fit` promises its callers besides the run folder: a typed
:class:`~convit.training.fit_result.FitResult`, and the process's TF32 settings left as they
were (the on-device path trains in TF32 on CUDA, for the duration of the fit only).

On CPU the flags can still be read and set, so the scope is checked here with a CUDA device
object; the fit test checks the flags during the run too (TF32 on a GPU, untouched on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL

import convit.training
import convit.training.fit as T
from convit.core.fileio import read_jsonl
from convit.core.runtime import resolve_device, tf32_matmuls
from convit.training.config import build_config
from convit.training.fit_result import FitResult

FIELDS = [
    "output",
    "epochs",
    "time_s",
    "skipped",
    "skipped_list",
    "test_top1",
    "test_top5",
    "test_loss",
    "val_top1",
    "best_val_top1",
    "best_epoch",
    "lr",
    "world_size",
    "train_images",
    "checkpoint",
    "best",
    "last",
    "log",
    "config",
    "figures",
    "report",
]


def _settings() -> tuple[str, bool]:
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


def _flags() -> tuple[bool, bool]:
    """The TF32 flags (readable in every state the settings pass through)."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def odd_settings():
    """Settings no code path sets by itself ("medium" matmuls, cuDNN without TF32), restored
    after the test."""
    before = _settings()
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = False
    yield ("medium", False)
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def test_tf32_matmuls_restores_the_settings_even_on_error(odd_settings):
    with tf32_matmuls(True):
        assert _flags() == (True, True)
    assert _settings() == odd_settings
    with pytest.raises(KeyError), tf32_matmuls(True):
        raise KeyError
    assert _settings() == odd_settings
    with tf32_matmuls(False):
        assert _flags() == (False, False)
    assert _settings() == odd_settings


def test_the_fit_scope_turns_tf32_on_for_the_on_device_path_on_cuda_only(odd_settings):
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    with T.tf32_scope(cuda, on_device=True):
        assert _flags() == (True, True)
    assert _settings() == odd_settings
    for device, on_device in ((cuda, False), (torch.device("cpu"), True)):
        with T.tf32_scope(device, on_device):
            assert _settings() == odd_settings


def _one_epoch(out):
    """One epoch of a tiny model on a fifth of digits, into ``out``."""
    settings = dict(sampling_ratio=0.2, batch_size=32, threads=1, epochs=1, warmup_epochs=0, report=False)
    return build_config(dict(model_kwargs=TINY_MODEL, output=str(out), **settings))


def test_fit_returns_a_fit_result_and_leaves_tf32_as_it_was(tmp_path, monkeypatch, odd_settings):
    during = []
    real = T.train_one_epoch

    def spy(*args, **kwargs):
        during.append(_flags())
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", spy)
    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    cfg = _one_epoch(tmp_path / "run")
    flags = _flags()
    result = T.fit(cfg, on_device=True)
    assert during == [(True, True) if resolve_device(cfg.device).type == "cuda" else flags]
    assert _settings() == odd_settings
    assert isinstance(result, FitResult)
    assert list(result.to_dict()) == FIELDS and json.loads(json.dumps(result.to_dict()))
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert result.test_top1 == log[-1]["test_top1"] and result.val_top1 == log[-1]["val_top1"]
    assert result.epochs == 1 and result.report is None and result.world_size == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.epochs = 2  # type: ignore[misc]


def test_fit_result_fields_and_a_light_import():
    assert [f.name for f in dataclasses.fields(FitResult)] == FIELDS
    assert convit.training.FitResult is FitResult is T.FitResult
    code = "import sys, convit.training; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # naming the result type does not load the trainer


@pytest.mark.parametrize("on_device", [False, True])
def test_fit_keeps_the_final_models_per_image_test_outcomes(tmp_path, monkeypatch, on_device):
    """test_correct.npy: one bool per test image, in the split's order, written by the final
    evaluation itself; equal to evaluating the saved final model again (what a study did before)."""
    import numpy as np

    from convit.study.outcomes import per_image_correct, write_test_correct

    monkeypatch.setenv("CONVIT_CACHE", str(tmp_path / "cache"))
    cfg = _one_epoch(tmp_path / "run")
    result = T.fit(cfg, on_device=on_device)
    correct = np.load(tmp_path / "run" / "test_correct.npy")
    assert correct.dtype == bool and len(correct) == 360  # digits' test split
    assert 100 * correct.mean() == pytest.approx(result.test_top1)
    again = per_image_correct(cfg, tmp_path / "run" / "model.safetensors")
    assert np.array_equal(correct, again)
    # a run without the file (resumed with nothing left to train) gets it from its final weights
    (tmp_path / "run" / "test_correct.npy").unlink()
    written = write_test_correct(cfg, tmp_path / "run")
    assert np.array_equal(np.load(written), correct)
