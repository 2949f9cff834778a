"""One export that loads back everywhere: ``convit export --format timm`` of a run trained on an
image folder gives a hub-repo folder that convit, timm and transformers load with the same
logits (within 1e-5) and the real class names, and a model card with the run's command and
results.  All offline: the hub is a cache folder built by hand, and conftest's guard fails a
test at any network use.  transformers is a test-only dependency: its tests skip without it.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from conftest import hub_snapshot, write_image_folder
from PIL import Image

from convit.cli import main
from convit.core.fileio import read_jsonl
from convit.weights.hub import export_timm
from convit.weights.zoo import create_model

CLASSES = ("blue square", "green triangle", "red circle")
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A tiny ConViT trained 2 epochs on a 3-class RGB image folder (class names with spaces),
    then exported with the CLI: ``run`` (the run folder), ``out`` (the export)."""
    root = tmp_path_factory.mktemp("repo")
    data = write_image_folder(root / "shapes", classes=CLASSES, per_class=4, size=16)
    flags = [
        "--dataset",
        "imagefolder",
        "--data-path",
        str(data),
        "--preset",
        "digits",
        "--img-size",
        "16",
        "--model-kwargs",
        "depth=2",
        "local_up_to_layer=1",
        "embed_dim=16",
        "patch_size=4",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--no-report",
        "--no-locality",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", *flags, "--output", str(root / "run")]) == 0
        assert (
            main(
                [
                    "export",
                    "--format",
                    "timm",
                    "--checkpoint",
                    str(root / "run" / "model.safetensors"),
                    "--output",
                    str(root / "out"),
                ]
            )
            == 0
        )
    return {"run": root / "run", "out": root / "out", "data": data}


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1 and an empty Hugging Face cache (returned), as read now and at import."""
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    return hub


def _trained(exported) -> torch.nn.Module:
    return create_model(checkpoint_path=exported["run"] / "model.safetensors").eval()


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5, (a - b).abs().max().item()


def test_the_folder_is_a_complete_hub_repo(exported):
    out = exported["out"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == list(CLASSES) and config["num_classes"] == 3
    assert "num_classes" not in config["model_args"]  # only once: transformers passes its own
    assert config["architecture"] == "convit_tiny" and timm.is_model(config["architecture"])


def test_convit_and_timm_load_it_with_the_same_logits(exported, offline):
    ours, out = _trained(exported), exported["out"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = ours(x)
        for model in (
            create_model(checkpoint_path=out),
            create_model(f"local-dir:{out}", pretrained=True),
            timm.create_model(f"local-dir:{out}", pretrained=True),
        ):
            _same(model.eval()(x), want)
        config = json.loads((out / "config.json").read_text())
        overlay = dict(config["pretrained_cfg"], file=str(out / "model.safetensors"))
        _same(
            timm.create_model(
                config["architecture"],
                pretrained=True,
                pretrained_cfg_overlay=overlay,
                **config["model_args"],
            ).eval()(x),
            want,
        )
        snap = hub_snapshot(offline, "me/shapes", "ab" * 20)  # as if uploaded, then downloaded
        for f in out.iterdir():
            shutil.copy(f, snap / f.name)
        _same(timm.create_model("hf-hub:me/shapes", pretrained=True).eval()(x), want)
        _same(create_model("hf-hub:me/shapes", pretrained=True).eval()(x), want)
    assert create_model(checkpoint_path=out).pretrained_cfg["label_names"] == list(CLASSES)


def test_transformers_loads_it_with_the_class_names(exported, offline):
    transformers = pytest.importorskip(
        "transformers",
        reason="transformers is not installed (pip install "
        "'convit[test]'): the transformers round trip is skipped",
    )
    ours, out = _trained(exported), str(exported["out"])
    hf = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    assert [hf.config.id2label[i] for i in range(3)] == list(CLASSES)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _same(hf(pixel_values=x).logits, ours(x))

    image = Image.open(next((exported["data"] / "val" / "red circle").iterdir())).convert("RGB")
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    timm_transform = timm.data.create_transform(**timm.data.resolve_data_config(model=theirs))
    _same(pixels, timm_transform(image)[None])  # the processor is timm's eval transform
    with torch.no_grad():
        probs = ours(pixels).softmax(-1)[0]
    results = transformers.pipeline("image-classification", model=out)(image, top_k=3)
    assert sorted(r["label"] for r in results) == sorted(CLASSES)
    for r in results:
        assert abs(r["score"] - probs[CLASSES.index(r["label"])].item()) < 1e-5

    snap = hub_snapshot(offline, "me/shapes", "cd" * 20)  # from a hub cache too
    for f in Path(out).iterdir():
        shutil.copy(f, snap / f.name)
    cached = transformers.AutoModelForImageClassification.from_pretrained("me/shapes").eval()
    with torch.no_grad():
        _same(cached(pixel_values=x).logits, ours(x))


def test_model_card_has_hub_metadata_command_and_results(exported):
    card = huggingface_hub.ModelCard.load(exported["out"] / "README.md")
    data = card.data
    assert data.library_name == "timm" and data.license == "apache-2.0"
    assert {"image-classification", "timm", "convit"} <= set(data.tags) and data.datasets == ["shapes"]
    last = read_jsonl(exported["run"] / "log.jsonl")[-1]
    result = data.eval_results[0]
    assert result.metric_type == "accuracy" and result.metric_value == round(last["test_top1"], 2)
    assert result.dataset_split == "test"
    text = card.text
    assert "convit train --config config.yaml" in text
    assert (exported["run"] / "config.yaml").read_text().strip() in text
    for key, words in (("test_top1", "test top-1"), ("test_top5", "test top-5")):
        assert f"| {words} | {last[key]:.2f} % |" in text
    assert "`blue square`, `green triangle`, `red circle`" in text


def test_without_its_run_folder_the_card_says_unknown(exported, tmp_path):
    alone = tmp_path / "alone.safetensors"
    shutil.copy(exported["run"] / "model.safetensors", alone)  # still carries its own test top-1
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            main(["export", "--format", "hf", "--checkpoint", str(alone), "--output", str(tmp_path / "a")])
            == 0
        )
    text = (tmp_path / "a" / "README.md").read_text()
    assert "## Training\n\nUnknown: no `config.yaml`" in text and "| test top-1 |" in text

    export_timm(_trained(exported), tmp_path / "c")  # from Python, knowing nothing of the run
    card = huggingface_hub.ModelCard.load(tmp_path / "c" / "README.md")
    assert card.data.eval_results is None and "model-index" not in (tmp_path / "c" / "README.md").read_text()
    assert "## Results\n\nUnknown" in card.text and "Classes (3):** unknown" in card.text
