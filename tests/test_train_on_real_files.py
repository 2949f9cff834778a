"""``convit train --dataset imagefolder`` on real image files (conftest's ``image_files``), under
DeiT's recipe and at its worst-case RandAugment policy, then ``convit eval`` and
``convit predict`` on the result, and ``predict`` with a foreign one-channel checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import convit
from convit.cli import main
from convit.data import transforms

TINY_RUN = [
    "--model-kwargs",
    "depth=2",
    "local_up_to_layer=1",
    "embed_dim=16",
    "num_heads=2",
    "patch_size=8",
    "--img-size",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--warmup-epochs",
    "0",
    "--threads",
    "1",
    "--num-workers",
    "0",
    "--device",
    "cpu",
    "--no-report",
    "--no-locality",
]


def train_on_files(root: Path, out: Path) -> int:
    """``convit train --dataset imagefolder --data-path root`` of a tiny model for one epoch
    (the imagenet preset otherwise) into ``out``; returns the exit code."""
    return main(
        ["train", "--dataset", "imagefolder", "--data-path", str(root), *TINY_RUN, "--output", str(out)]
    )


def test_train_cli_on_real_files(image_files, tmp_path):
    """``convit train --dataset imagefolder --data-path DIR``: the imagenet preset (DeiT's
    augmentation, repeated augmentation), one epoch of a tiny model."""
    root, _ = image_files
    out = tmp_path / "run"
    assert train_on_files(root, out) == 0
    assert (out / "model.safetensors").is_file()
    assert "preset: imagenet" in (out / "config.yaml").read_text()
    # ... and the user's next steps on that checkpoint: eval on the folder, predict on files.
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "model.safetensors"),
                "--dataset",
                "imagefolder",
                "--data-path",
                str(root),
                "--json",
            ]
        )
        == 0
    )
    some = sorted((root / "val").rglob("*.*"))[:5]
    assert main(["predict", "--checkpoint", str(out / "model.safetensors"), "--json", *map(str, some)]) == 0


def test_predict_with_a_foreign_one_channel_checkpoint(image_files, tmp_path, capsys):
    """A raw state dict of a 1-channel model (no metadata, so its name is given): predict falls
    back on the model's pretrained_cfg statistics, which have one channel (ImageNet's three
    would not fit)."""
    root, _ = image_files
    model = convit.create_model("convit_digits")
    torch.save(model.state_dict(), tmp_path / "raw.pth")
    files = sorted((root / "val").rglob("*.*"))[:6]
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "raw.pth"),
                "--model",
                "convit_digits",
                "--json",
                *map(str, files),
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["image"] for d in lines] == [str(f) for f in files]
    for d in lines:
        probs = [t["prob"] for t in d["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)


def test_train_cli_on_real_files_at_the_worst_case_policy(image_files, tmp_path, monkeypatch):
    """The same run with every op at magnitude 10 (DeiT's draws reach it 2.3 % of the time):
    posterize then runs on about a quarter of the images, at the magnitude that crashed."""
    root, _ = image_files
    monkeypatch.setitem(transforms._DEIT_AUG, "auto_augment", "rand-m10-n4-mstd0-p1.0-inc1")
    out = tmp_path / "run"
    assert train_on_files(root, out) == 0
