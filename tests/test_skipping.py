"""Unreadable files in training and evaluation: skipped and named, never replaced by another
sample, so metrics are over the images actually read (``ImageFileDataset`` returns an
``UnreadableSample``; ``collate_skipping`` drops it)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from convit.data import (ImageFileDataset, ImageReadError, UnreadableSample, collate_skipping,
                         collate_skipping_even, eval_transform)

RNG = np.random.default_rng(0)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _folder(root: Path, n: int, broken: int) -> list:
    samples = []
    for i in range(n):
        p = root / f"{i}.png"
        Image.fromarray(RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(p)
        samples.append((str(p), i % 3))
    good = Path(samples[broken][0]).read_bytes()
    Path(samples[broken][0]).write_bytes(good[: len(good) // 2])  # header fine, pixels cut
    return samples


def test_evaluate_counts_only_the_images_read(tmp_path):
    from convit.engine import evaluate

    samples = _folder(tmp_path, 7, broken=3)
    ds = ImageFileDataset(samples, eval_transform(16, MEAN, STD, 3), failed_log=tmp_path / "skipped.tsv")
    assert ds.collate_fn is collate_skipping
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    with pytest.warns(UserWarning, match=r"3\.png"):
        metrics = evaluate(model, DataLoader(ds, batch_size=4, collate_fn=collate_skipping), torch.device("cpu"))
    assert metrics["n"] == 6
    assert ds.failed == [samples[3][0]] and "truncated" in ds.reasons[samples[3][0]]
    assert list(ds.skipped()) == [samples[3][0]]
    assert (tmp_path / "skipped.tsv").read_text().startswith(samples[3][0] + "\t")
    assert isinstance(ds[3], UnreadableSample)
    strict = ImageFileDataset(samples, eval_transform(16, MEAN, STD, 3), strict=True)
    with pytest.raises(ImageReadError, match=r"3\.png \(PNG\)"):
        strict[3]


def test_failures_in_dataloader_workers_reach_the_log(tmp_path):
    samples = _folder(tmp_path, 6, broken=1)
    ds = ImageFileDataset(samples, eval_transform(16, MEAN, STD, 3), failed_log=tmp_path / "s.tsv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = sum(len(y) for _, y in DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_skipping))
    assert n == 5 and ds.failed == [] and list(ds.skipped()) == [samples[1][0]]


def test_skipping_collates():
    x = [(torch.zeros(3, 4, 4), 1), (torch.ones(3, 4, 4), 2), (torch.ones(3, 4, 4), 0)]
    gone = UnreadableSample("a.png", "broken", (3, 4, 4))
    images, labels = collate_skipping([x[0], gone, x[1]])
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 2]
    images, labels = collate_skipping([gone, gone])
    assert images.shape == (0, 3, 4, 4) and labels.shape == (0,)
    images, labels = collate_skipping_even([x[0], gone, x[1], x[2]])
    assert images.shape[0] == 2 and labels.tolist() == [1, 2]
    assert collate_skipping_even([x[0], gone])[0].shape == (0, 3, 4, 4)
