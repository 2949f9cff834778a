"""Unreadable files in training and evaluation: skipped and named, never replaced by another
sample, so metrics are over the images actually read (``ImageFileDataset`` returns an
``UnreadableSample``; ``collate_skipping`` drops it)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_IMAGEFOLDER, write_image_folder
from torch.utils.data import DataLoader

from convit.cli import main
from convit.core.fileio import read_jsonl
from convit.data import (
    ImageFileDataset,
    ImageReadError,
    UnreadableSample,
    WorkerImageReadError,
    collate_skipping,
    collate_skipping_even,
    eval_transform,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _folder(root: Path, per_class: int, broken: int) -> list:
    """``(path, label)`` of 3 classes of ``per_class`` 20x24 PNGs; sample ``broken`` cut in half."""
    write_image_folder(root, classes=("0", "1", "2"), per_class=per_class, size=(20, 24), splits=("s",))
    samples = [(str(p), int(p.parent.name)) for p in sorted((root / "s").glob("*/*.png"))]
    good = Path(samples[broken][0]).read_bytes()
    Path(samples[broken][0]).write_bytes(good[: len(good) // 2])  # header fine, pixels cut
    return samples


def test_evaluate_counts_only_the_images_read(tmp_path):
    from convit.training.engine import evaluate

    samples = _folder(tmp_path, 3, broken=4)  # 1/1.png
    ds = ImageFileDataset(samples, eval_transform(16, MEAN, STD, 3), failed_log=tmp_path / "skipped.tsv")
    assert ds.collate_fn is collate_skipping
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    with pytest.warns(UserWarning, match=r"1/1\.png"):
        metrics = evaluate(
            model, DataLoader(ds, batch_size=4, collate_fn=collate_skipping), torch.device("cpu")
        )
    assert metrics["n"] == 8
    assert ds.failed == [samples[4][0]] and "truncated" in ds.reasons[samples[4][0]]
    assert list(ds.skipped()) == [samples[4][0]]
    assert (tmp_path / "skipped.tsv").read_text().startswith(samples[4][0] + "\t")
    assert isinstance(ds[4], UnreadableSample)
    strict = ImageFileDataset(samples, eval_transform(16, MEAN, STD, 3), strict=True)
    with pytest.raises(ImageReadError, match=r"1/1\.png \(PNG\)"):
        strict[4]


def test_failures_in_dataloader_workers_reach_the_log(tmp_path):
    samples = _folder(tmp_path, 2, broken=1)
    ds = ImageFileDataset(samples, eval_transform(16, MEAN, STD, 3), failed_log=tmp_path / "s.tsv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = sum(len(y) for _, y in DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_skipping))
    assert n == 5 and ds.failed == [] and list(ds.skipped()) == [samples[1][0]]
    strict = ImageFileDataset(samples, eval_transform(16, MEAN, STD, 3), strict=True)
    with pytest.raises(
        WorkerImageReadError, match=r"^cannot read image .*0/1\.png \(PNG\): the file is truncated"
    ):
        list(DataLoader(strict, batch_size=3, num_workers=1, collate_fn=collate_skipping))


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


# -- through convit train and convit eval --------------------------------------------------------


def _broken_eval_folder(root: Path) -> str:
    """conftest's imagefolder (2 classes x 3 images in train and val) with val/b/1.png cut in
    half (its header reads, its pixels do not: only reading it finds out); returns that path."""
    write_image_folder(root)
    cut = root / "val" / "b" / "1.png"
    cut.write_bytes(cut.read_bytes()[:60])
    return str(cut)


def _eval(run: Path, data: Path, *flags: str) -> int:
    """``convit eval`` of the run's model on the folder ``data``, on the CPU."""
    model = str(run / "model.safetensors")
    return main(["eval", "--checkpoint", model, "--data-path", str(data), "--device", "cpu", *flags])


def test_train_and_eval_count_only_readable_images_and_name_the_skipped_one(tmp_path, capsys):
    broken = _broken_eval_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"1 unreadable image file\(s\) were left out"):
        assert (
            main(["train", *TINY_IMAGEFOLDER, "--data-path", str(tmp_path / "imgs"), "--output", str(run)])
            == 0
        )
    out = capsys.readouterr().out
    assert f"skipped:    1 unreadable image file(s), never replaced by others: {run / 'skipped.tsv'}" in out
    assert (run / "skipped.tsv").read_text().splitlines() == [
        f"{broken}\tthe file is truncated or damaged (image file is truncated)"
    ]
    logged = read_jsonl(run / "log.jsonl")[-1]["test_top1"]
    assert logged in {0.0, 20.0, 40.0, 60.0, 80.0, 100.0}  # over the 5 images read, not 6
    # read by a DataLoader worker process: its failure comes back through a file
    assert _eval(run, tmp_path / "imgs", "--json", "--num-workers", "1") == 0
    captured = capsys.readouterr()
    measured = json.loads(captured.out)
    assert (measured["n"], measured["skipped"], list(measured["skipped_files"])) == (5, 1, [broken])
    assert (
        measured["top1"] == logged and f"convit eval: skipped {broken}: the file is truncated" in captured.err
    )
    assert _eval(run, tmp_path / "imgs") == 0
    assert "(5 images," in capsys.readouterr().out
    assert _eval(run, tmp_path / "imgs", "--strict", "--num-workers", "1") == 2
    assert capsys.readouterr().err == (
        f"convit eval: error: cannot read image {broken} (PNG): the file is truncated "
        "or damaged (image file is truncated)\n"
    )


def test_strict_makes_an_unreadable_image_an_error_naming_it(tmp_path, capsys):
    broken = _broken_eval_folder(tmp_path / "imgs")
    assert (
        main(
            [
                "train",
                *TINY_IMAGEFOLDER,
                "--data-path",
                str(tmp_path / "imgs"),
                "--output",
                str(tmp_path / "r"),
                "--strict",
            ]
        )
        == 2
    )
    assert (
        f"convit train: error: cannot read image {broken} (PNG): the file is truncated"
        in capsys.readouterr().err
    )
    # a file the scan of the folder already rejects is an error too
    (tmp_path / "imgs" / "train" / "a" / "junk.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="junk.png"):
        assert (
            main(
                [
                    "train",
                    *TINY_IMAGEFOLDER,
                    "--data-path",
                    str(tmp_path / "imgs"),
                    "--output",
                    str(tmp_path / "r"),
                    "--strict-images",
                ]
            )
            == 2
        )
    err = capsys.readouterr().err
    assert "cannot be read and reading is strict" in err and "junk.png: not an image file" in err


def test_a_training_batch_with_no_readable_image_is_left_out():
    from convit.training.batches import _Epochs

    x, y = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])
    batches = [(x, y), (x[:0], y[:0]), (x, y)]
    sampler = torch.utils.data.SequentialSampler(range(2))
    assert [len(y) for _, y in _Epochs(batches, sampler, 0, 0, False)] == [2, 2]
    # under DDP the processes agree (a sum over them) to leave the step out together
    assert [len(y) for _, y in _Epochs(batches, sampler, 0, 1, False, sync=torch.device("cpu"))] == [2, 2]


def test_max_image_pixels_flag_sets_the_decompression_bomb_limit(tmp_path, capsys, monkeypatch):
    """--max-image-pixels of train and eval: a file over the limit is skipped and named; the
    default limit (Pillow's) reads it."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    root = write_image_folder(tmp_path / "imgs", per_class=3, size=12)
    big = root / "val" / "a" / "big.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(big)  # 400 pixels; the others have 144
    run = tmp_path / "run"
    with pytest.warns(UserWarning):
        assert (
            main(
                [
                    "train",
                    *TINY_IMAGEFOLDER,
                    "--data-path",
                    str(root),
                    "--output",
                    str(run),
                    "--max-image-pixels",
                    "200",
                ]
            )
            == 0
        )
    assert [line.split("\t")[0] for line in (run / "skipped.tsv").read_text().splitlines()] == [str(big)]
    capsys.readouterr()
    model = str(run / "model.safetensors")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                model,
                "--data-path",
                str(root),
                "--json",
                "--device",
                "cpu",
                "--max-image-pixels",
                "200",
            ]
        )
        == 0
    )
    assert (json.loads(capsys.readouterr().out)["n"], Image.MAX_IMAGE_PIXELS) == (6, 200)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    assert main(["eval", "--checkpoint", model, "--data-path", str(root), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 7
    assert main(["eval", "--checkpoint", model, "--data-path", str(root), "--max-image-pixels", "-5"]) == 2
    assert "--max-image-pixels must be 0 (no limit) or more, got -5" in capsys.readouterr().err
