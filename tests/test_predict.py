"""``convit predict`` on many files: folders, globs, CSV / JSON-lines output, batches, and files
that cannot be read (named on stderr, the others still predicted, exit status 1 at the end)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convit.cli import main
from convit.weights.checkpoint import save_model
from convit.weights.zoo import create_model

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny random 3-class ConViT at 32 px with the metadata ``convit train`` writes."""
    torch.manual_seed(0)
    model = create_model(
        "convit_tiny",
        img_size=32,
        patch_size=8,
        depth=2,
        local_up_to_layer=1,
        embed_dim=16,
        num_heads=4,
        num_classes=3,
    )
    with torch.no_grad():
        model.head.weight.normal_(0, 1)
    data = {
        "img_size": 32,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "in_chans": 3,
        "native_size": None,
        "dataset": "imagefolder",
    }
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(model, path, {"class_names": CLASSES, "data": data})
    return str(path)


def _images(folder: Path, names: list[str]) -> list[str]:
    rng = np.random.default_rng(len(names))
    out = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


def _truncated(path: Path) -> str:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(path)
    path.write_bytes(path.read_bytes()[:90])
    return str(path)


def test_bad_files_are_named_and_the_good_ones_still_predicted(checkpoint, tmp_path, capsys):
    good = _images(tmp_path, ["a.png", "b.jpg", "c.webp"])
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    cut = _truncated(tmp_path / "cut.png")
    args = [good[0], str(tmp_path / "bad.jpg"), good[1], cut, good[2]]
    assert main(["predict", "--checkpoint", checkpoint, *args, "--topk", "2", "--batch-size", "2"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(": ")[0] for line in lines] == good
    assert all(line.count("%") == 2 for line in lines)
    errors = [e for e in err.splitlines() if not e.startswith("convit predict:")]
    assert errors == [
        f"{tmp_path / 'bad.jpg'}: not an image file Pillow can identify (unknown format, or not an image)",
        f"{cut}: (PNG) the file is truncated or damaged (image file is truncated)",
    ]
    assert err.splitlines()[-1] == "convit predict: 3 predicted, 2 failed"


def test_all_good_exits_0_and_json_lines(checkpoint, tmp_path, capsys):
    good = _images(tmp_path, ["a.png", "b.png"])
    assert main(["predict", "--checkpoint", checkpoint, *good, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == good
    assert all(len(r["top"]) == 3 and {t["class"] for t in r["top"]} == set(CLASSES) for r in rows)
    assert all(abs(sum(t["prob"] for t in r["top"]) - 1) < 1e-5 for r in rows)


def test_folders_and_globs_are_expanded(checkpoint, tmp_path, capsys):
    files = _images(tmp_path / "photos", ["x.png", "sub/y.png", "sub/deeper/z.JPG", "w.tif"])
    (tmp_path / "photos" / "notes.txt").write_text("not an image: not listed")
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", checkpoint, str(tmp_path / "photos"), "--json"]) == 0
    assert [json.loads(r)["image"] for r in capsys.readouterr().out.splitlines()] == sorted(files)
    pattern = str(tmp_path / "photos" / "**" / "*.png")  # quoted: no shell expands it
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                checkpoint,
                pattern,
                str(tmp_path / "photos" / "x.png"),
                str(tmp_path / "nothing-*.png"),
                str(tmp_path / "empty"),
                str(tmp_path / "missing.png"),
                "--json",
            ]
        )
        == 1
    )
    out, err = capsys.readouterr()
    assert [json.loads(r)["image"] for r in out.splitlines()] == sorted(
        f for f in files if f.endswith(".png")
    )
    assert f"{tmp_path / 'nothing-*.png'}: no file matches this pattern" in err
    assert f"{tmp_path / 'empty'}: no image files in this folder" in err
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in err
    assert "2 predicted, 3 failed" in err


def test_csv_and_jsonl_outputs_read_back(checkpoint, tmp_path, capsys):
    good = _images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "bad.png").write_bytes(b"garbage")
    paths = [good[0], str(tmp_path / "bad.png"), good[1]]
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                checkpoint,
                *paths,
                "--topk",
                "2",
                "--output",
                str(tmp_path / "r.csv"),
            ]
        )
        == 1
    )
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == paths
    assert list(rows[0]) == ["image", "class_1", "index_1", "prob_1", "class_2", "index_2", "prob_2", "error"]
    assert rows[0]["class_1"] in CLASSES and float(rows[0]["prob_1"]) >= float(rows[0]["prob_2"])
    assert rows[1]["class_1"] == "" and "not an image file" in rows[1]["error"] and rows[2]["error"] == ""
    out, err = capsys.readouterr()
    assert out == "" and "bad.png" in err and f"results in {tmp_path / 'r.csv'}" in err
    assert main(["predict", "--checkpoint", checkpoint, *paths, "--output", str(tmp_path / "r.jsonl")]) == 1
    recs = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["image"] for r in recs] == paths and "error" in recs[1] and len(recs[2]["top"]) == 3
    assert recs[0]["top"][0]["class"] == rows[0]["class_1"]
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", checkpoint, good[0], "--output"])
    assert main(["predict", "--checkpoint", checkpoint, good[0], "--output", str(tmp_path / "r.txt")]) == 2


def test_batches_bound_memory_and_do_not_change_predictions(checkpoint, tmp_path, capsys, monkeypatch):
    import convit.commands.predict as predict

    files = _images(tmp_path, [f"{i}.png" for i in range(5)])
    seen: list[int] = []
    real = predict.load_model

    def spy(*a, **k):
        model, info = real(*a, **k)
        model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
        return model, info

    monkeypatch.setattr(predict, "load_model", spy)
    results = []
    for extra in (["--batch-size", "2", "--num-workers", "1"], ["--batch-size", "64"]):
        assert main(["predict", "--checkpoint", checkpoint, *files, "--json", *extra]) == 0
        results.append([json.loads(r) for r in capsys.readouterr().out.splitlines()])
    assert seen == [2, 2, 1, 5]
    for a, b in zip(*results):
        assert a["image"] == b["image"] and [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-5)


def test_max_image_pixels_flag(checkpoint, tmp_path, capsys):
    (big,) = _images(tmp_path, ["big.png"])  # 50 x 40 = 2000 pixels
    assert main(["predict", "--checkpoint", checkpoint, big, "--max-image-pixels", "1999"]) == 1
    assert "50x40 = 2,000 pixels is over the limit of 1,999" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", checkpoint, big, "--max-image-pixels", "0"]) == 0
    assert main(["predict", "--checkpoint", checkpoint, big, "--max-image-pixels", "-5"]) == 2
