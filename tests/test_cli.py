"""``convit eval``, ``predict`` and ``export`` on checkpoints of ours and of timm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image

from convit.cli import main
from convit.core.fileio import read_jsonl
from convit.weights.checkpoint import CheckpointError, save_model
from convit.weights.zoo import create_model


@pytest.fixture
def run_dir(trained_run) -> Path:
    """The folder of the tiny 2-epoch run shared by the whole session (conftest): read only."""
    return trained_run.folder


def test_eval_our_checkpoint_matches_the_training_log(run_dir, capsys):
    """The test and val top-1 logged by the trainer are exactly what `convit eval` measures on
    the saved final model: same split, same transform, same weights."""
    assert main(["eval", "--checkpoint", str(run_dir / "model.safetensors"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    last = read_jsonl(run_dir / "log.jsonl")[-1]
    assert metrics["dataset"] == "digits" and metrics["n"] == 360
    assert metrics["top1"] == last["test_top1"] and metrics["top5"] == last["test_top5"]
    assert metrics["loss"] == pytest.approx(last["test_loss"], rel=1e-5)  # summed in another batch order
    assert main(["eval", "--checkpoint", str(run_dir / "model.safetensors"), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == last["val_top1"]


def test_eval_wrong_number_of_classes_says_so(run_dir, tmp_path, capsys):
    model = create_model(checkpoint_path=run_dir / "model.safetensors")
    model.reset_classifier(5)
    save_model(model, tmp_path / "five.safetensors")
    assert main(["eval", "--checkpoint", str(tmp_path / "five.safetensors"), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "5 classes" in err and "10" in err and "--finetune" in err


def test_eval_checkpoint_of_another_architecture_says_which_keys(run_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    # A foreign file (weights only, as timm writes them) given with the wrong zoo name.
    model = create_model(checkpoint_path=run_dir / "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "w.safetensors"),
                "--model",
                "deit_digits",
                "--dataset",
                "digits",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not match the model" in err and "blocks.0.attn.pos_proj.weight" in err and "--model" in err


def test_finetune_from_a_checkpoint_with_another_head(run_dir, tmp_path, capsys, train_tiny):
    model = create_model(checkpoint_path=run_dir / "model.safetensors")
    model.reset_classifier(7)
    save_model(model, tmp_path / "seven.safetensors")
    assert (
        train_tiny(
            "--epochs", "1", "--finetune", str(tmp_path / "seven.safetensors"), "--no-locality", name="ft"
        )
        == 0
    )
    assert "7-class head is replaced by a new 10-class head" in capsys.readouterr().out


def test_finetune_from_another_architecture_names_the_mismatch(run_dir, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--epochs",
                "1",
                "--model",
                "deit_digits",
                "--finetune",
                str(run_dir / "model.safetensors"),
                "--output",
                str(tmp_path / "ft"),
                "--no-report",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not match the model deit_digits" in err
    assert "local_up_to_layer 1 (file) vs 0 (deit_digits)" in err and "--model convit_digits" in err


def _timm_convit_tiny(tmp_path: Path):
    """timm's convit_tiny (random weights) at 32x32 input, saved as timm would (safetensors)."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("convit_tiny", num_classes=10, img_size=32).eval()
    # Random (not zero-initialised) head and gates so that predictions differ between images.
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.startswith("head") or "gating" in n:
                p.normal_(0, 1)
    path = tmp_path / "timm_convit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, path


def test_eval_timm_checkpoint_gives_timms_predictions(tmp_path, capsys):
    from convit.data import build_data
    from convit.weights.zoo import load_model

    ref, path = _timm_convit_tiny(tmp_path)
    # timm's file has no config: its name and size are needed (its shapes do not tell the pooling).
    with pytest.raises(CheckpointError, match="pass the model name"):
        load_model(str(path))
    # Same logits as timm through the loader `convit eval` uses.
    model, info = load_model(str(path), "convit_tiny", img_size=32)
    assert info["class_names"] is None
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
    # End to end: `convit eval` on a small image folder reports timm's accuracy on it.
    root = write_image_folder(tmp_path / "imgs", classes=[f"c{c}" for c in range(10)], per_class=2, size=40)
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(path),
                "--model",
                "convit_tiny",
                "--img-size",
                "32",
                "--dataset",
                "imagefolder",
                "--data-path",
                str(root),
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    test = build_data("imagefolder", str(root), img_size=32).test
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        expected = 100.0 * (ref(images).argmax(1) == labels).float().mean().item()
    assert metrics["n"] == 20 and metrics["top1"] == pytest.approx(expected)


def test_predict_prints_class_names_and_probabilities(run_dir, tmp_path, capsys):
    from sklearn.datasets import load_digits

    from convit.data import build_data
    from convit.weights.zoo import load_model

    digits = load_digits()
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[i] / 16 * 255).round().astype(np.uint8)).save(p)
        paths.append(str(p))
    assert (
        main(["predict", "--checkpoint", str(run_dir / "model.safetensors"), *paths, "--topk", "3", "--json"])
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == paths
    model, _ = load_model(str(run_dir / "model.safetensors"))
    bundle = build_data("digits")
    norm = (torch.tensor(digits.images[:3], dtype=torch.float32)[:, None] / 16 - bundle.mean[0]) / bundle.std[
        0
    ]
    with torch.no_grad():
        probs = model(norm).softmax(-1)
    for r, p in zip(rows, probs):
        assert len(r["top"]) == 3
        for t in r["top"]:  # PNG stores 8-bit pixels: probabilities agree to rounding
            assert t["prob"] == pytest.approx(p[int(t["class"])].item(), abs=1e-2)
        assert [t["prob"] for t in r["top"]] == sorted((t["prob"] for t in r["top"]), reverse=True)
    assert main(["predict", "--checkpoint", str(run_dir / "model.safetensors"), paths[0]]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(paths[0] + ": ") and line.count("%") == 5


def test_predict_unreadable_image_is_a_clear_error(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    assert main(["predict", "--checkpoint", str(run_dir / "model.safetensors"), str(bad)]) == 1
    assert f"{bad}: not an image file Pillow can identify" in capsys.readouterr().err


def test_export_onnx(run_dir, tmp_path, capsys):
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        assert (
            main(
                [
                    "export",
                    "--checkpoint",
                    str(run_dir / "model.safetensors"),
                    "--output",
                    str(tmp_path / "m.onnx"),
                ]
            )
            == 2
        )
        assert "pip install onnx onnxscript" in capsys.readouterr().err
        pytest.skip("onnx/onnxscript are not installed (checked the error message instead)")
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(run_dir / "model.safetensors"),
                "--output",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert not (tmp_path / "m.onnx.data").exists()  # one self-contained file, weights inside
    ort = pytest.importorskip("onnxruntime")
    from convit.weights.zoo import load_model

    model, _ = load_model(str(run_dir / "model.safetensors"))
    x = torch.randn(3, 1, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)
