"""The analysis report and ``convit analyze``: figures, locality.json, the masking table and
the HTML page of a run made by hand, the CLI on two runs and an image, and the report
``convit train`` writes at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import grid_config, with_gates
from PIL import Image

from convit import create_model
from convit.analysis import evaluate_masked, locality_summary
from convit.analysis.inputs import load_inputs
from convit.analysis.run_report import write_run_report
from convit.cli import main
from convit.core.fileio import read_jsonl
from convit.data import build_data
from convit.weights.checkpoint import save_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _digits_meta():
    return {
        "class_names": [str(i) for i in range(10)],
        "data": {"mean": [0.3], "std": [0.4], "img_size": 8, "in_chans": 1, "dataset": "digits"},
    }


def make_run(run_dir: Path, name: str, epochs: int = 2) -> Path:
    """A run directory made by hand: our model file and a fabricated log whose locality entries
    come from locality_summary."""
    torch.manual_seed(0)
    model = create_model(name, depth=3, local_up_to_layer=2 if name.startswith("convit") else 0, embed_dim=32)
    images = torch.randn(16, 1, 8, 8)
    run_dir.mkdir(parents=True)
    with open(run_dir / "log.jsonl", "w") as f:
        for epoch in range(epochs):
            with torch.no_grad():
                for b in model.gpsa_blocks():
                    b.attn.gating_param.sub_(0.5)
            f.write(
                json.dumps(
                    {
                        "epoch": epoch + 1,
                        "train_loss": 2.0 - 0.3 * epoch,
                        "lr": 1e-3,
                        "val_top1": 20.0 + 10 * epoch,
                        "val_top5": 60.0,
                        "val_loss": 2.1 - 0.3 * epoch,
                        "test_top1": 18.0 + 10 * epoch,
                        "locality": locality_summary(model, images),
                    }
                )
                + "\n"
            )
        f.write('{"epoch": 3, "train_lo')  # a run still writing its log: skipped
    save_model(model, run_dir / "model.safetensors", extra=_digits_meta())
    return run_dir


EXPECTED_CONVIT = {
    "nonlocality_training.png",
    "training_curves.png",
    "nonlocality_layers.png",
    "gates.png",
    "centres_spans.png",
    "attention_layer1.png",
    "attention_layer2.png",
    "attention_layer3.png",
    "locality.json",
}


def test_load_inputs_falls_back_to_random_with_a_note():
    inputs = load_inputs(grid_config(), {})
    assert inputs.source == "random input" and "random" in inputs.note
    assert inputs.images.shape == (8, 1, 5, 7) and torch.equal(inputs.image, inputs.images[0])
    # no normalisation known: the image is shown stretched to exactly [0, 1]
    x = inputs.image.numpy()
    np.testing.assert_allclose(inputs.display, (x - x.min()) / (x.max() - x.min()), rtol=1e-6, atol=1e-7)
    assert (inputs.display.min(), inputs.display.max()) == (0.0, 1.0)
    meta = {"data": json.dumps({"dataset": "no-such-set", "mean": [0.5], "std": [0.5]})}
    inputs = load_inputs(grid_config(), meta)
    assert "no-such-set" in inputs.note and "random" in inputs.note
    with pytest.raises(ValueError, match="metadata"):
        load_inputs(grid_config(), {}, image=Path("x.png"))


def test_write_run_report(tmp_path):
    run = make_run(tmp_path / "convit_run", "convit_digits")
    paths = write_run_report(run, masking=True)
    assert {p.name for p in paths} == EXPECTED_CONVIT | {"masking.json", "report.html"}
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    assert all(p.parent == run / "figures" for p in paths if p.suffix == ".png")
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 8
    assert "Gates and nonlocality per layer" in html and "first test image of digits" in html
    assert "Test-time masking" in html
    assert (run / "figures" / "gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((run / "figures" / "masking.json").read_text())
    assert [(r["mode"], r["k"], r["remove_pos_embed"]) for r in rows] == [
        ("none", 0, False),
        ("content", 1, False),
        ("content", 2, False),
        ("positional", 1, False),
        ("positional", 2, False),
        ("none", 0, True),
    ]
    # The table is measured on the whole test split of the run's dataset: its unmasked row is the
    # model's test accuracy, and a masked row that of the model with those gates forced.
    model = create_model(checkpoint_path=run / "model.safetensors").eval()
    test = torch.utils.data.DataLoader(build_data("digits", augment="none").test, batch_size=256)
    assert rows[0]["top1"] == evaluate_masked(model, test)
    assert rows[4]["top1"] == evaluate_masked(with_gates(model, 2, -1e4), test)  # positional masked


def test_cli_analyze_two_runs_and_image(tmp_path, capsys):
    a = make_run(tmp_path / "convit", "convit_digits")
    b = make_run(tmp_path / "deit", "deit_digits")
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(
        [
            "analyze",
            str(a / "model.safetensors"),
            "--log",
            str(a / "log.jsonl"),
            "--log",
            str(b / "log.jsonl"),
            "--image",
            str(img),
            "--output",
            str(out),
            "--layers",
            "2",
            "--heads",
            "1",
            "3",
            "--query",
            "1",
            "2",
        ]
    )
    assert rc == 0
    printed = [Path(word) for word in capsys.readouterr().out.split()]
    assert {p.name for p in printed} == {
        "nonlocality_training.png",
        "training_curves.png",
        "nonlocality_layers.png",
        "gates.png",
        "centres_spans.png",
        "attention_layer2.png",
        "locality.json",
        "report.html",
    }
    assert all(p.is_file() for p in printed)
    assert "image digit.png" in (out / "report.html").read_text()
    # a DeiT: no GPSA figures; default output beside the checkpoint; default log beside it
    rc = main(["analyze", str(b / "model.safetensors"), "--no-html"])
    assert rc == 0
    names = {Path(word).name for word in capsys.readouterr().out.split()}
    assert names == {
        "nonlocality_training.png",
        "training_curves.png",
        "nonlocality_layers.png",
        "attention_layer1.png",
        "attention_layer3.png",
        "locality.json",
    }
    assert (b / "analysis" / "attention_layer1.png").is_file()
    assert main(["analyze", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["analyze", str(a / "model.safetensors"), "--heads", "9"]) == 2
    assert "out of range" in capsys.readouterr().err


# -- end to end with the trainer --------------------------------------------------------------


def test_train_then_analyze(trained_run, tmp_path, capsys):
    """`convit train` (the shared 2-epoch tiny ConViT run) logs locality every epoch and writes
    the report through write_run_report; `convit analyze` then works on the run folder."""
    run = trained_run.folder
    entries = read_jsonl(run / "log.jsonl")
    assert [e["epoch"] for e in entries] == [1, 2]
    loc = entries[-1]["locality"]
    assert loc["layer_types"] == ["gpsa", "mhsa"] and len(loc["gates"]) == 1
    # The logged locality is that of the final model on the first 64 validation images.
    model = create_model(checkpoint_path=run / "model.safetensors")
    val = build_data("digits", val_fraction=0.1, sampling_ratio=0.2, augment="none").val
    assert locality_summary(model, torch.stack([val[i][0] for i in range(64)])) == loc
    figures = {p.name for p in (run / "figures").iterdir()}
    assert {
        "nonlocality_training.png",
        "gates.png",
        "centres_spans.png",
        "attention_layer1.png",
        "training_curves.png",
    } <= figures
    assert (run / "report.html").read_text().count("data:image/png;base64,") >= 7
    rc = main(
        [
            "analyze",
            str(run / "model.safetensors"),
            "--output",
            str(tmp_path / "a"),
            "--layers",
            "1",
            "--no-html",
        ]
    )
    assert rc == 0
    printed = {Path(word).name for word in capsys.readouterr().out.split()}
    assert {"nonlocality_training.png", "gates.png", "attention_layer1.png"} <= printed
