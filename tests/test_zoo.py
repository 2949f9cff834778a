"""timm's ``pretrained_cfg`` of zoo models and of our own files."""

from __future__ import annotations

import ast
from pathlib import Path

import timm.data
import torch

import convit
import convit.weights.zoo
from convit.core.presets import DIGITS_DATA_CFG
from convit.data import build_data
from convit.weights.checkpoint import save_model


def test_digits_models_carry_the_statistics_the_data_module_computes():
    bundle = build_data("digits")
    for name in ("convit_digits", "deit_digits"):
        cfg = convit.create_model(name).pretrained_cfg
        assert cfg["mean"] == tuple(bundle.mean) and cfg["std"] == tuple(bundle.std), name
        assert cfg["input_size"] == (1, 8, 8) and cfg["crop_pct"] == 1.0
        assert {k: cfg[k] for k in DIGITS_DATA_CFG} == DIGITS_DATA_CFG, name


def test_timm_resolves_the_data_config_of_zoo_models():
    m = convit.create_model("convit_tiny")
    assert m.default_cfg is m.pretrained_cfg
    assert m.pretrained_cfg["hf_hub_id"] == "timm/convit_tiny.fb_in1k"
    assert m.pretrained_cfg["tag"] == "fb_in1k"
    assert timm.data.resolve_data_config(model=m) == dict(
        input_size=(3, 224, 224),
        interpolation="bicubic",
        mean=timm.data.IMAGENET_DEFAULT_MEAN,
        std=timm.data.IMAGENET_DEFAULT_STD,
        crop_pct=0.875,
        crop_mode="center",
    )
    deit = convit.create_model("deit_small")
    assert deit.pretrained_cfg["crop_pct"] == 0.9 and deit.pretrained_cfg["url"] == ""
    assert convit.create_model("convit_tiny_plus").pretrained_cfg["tag"] is None


def test_our_file_gives_the_statistics_it_was_trained_with(tmp_path):
    model = convit.create_model("convit_tiny", img_size=32, num_classes=3)
    data = {
        "dataset": "x",
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
        "img_size": 32,
        "in_chans": 3,
        "native_size": 32,
    }
    save_model(model, tmp_path / "m.safetensors", extra={"data": data, "model_name": "convit_tiny"})
    loaded = convit.create_model(checkpoint_path=tmp_path / "m.safetensors")
    cfg = loaded.pretrained_cfg
    assert cfg["mean"] == (0.1, 0.2, 0.3) and cfg["std"] == (0.4, 0.5, 0.6)
    assert cfg["crop_pct"] == 1.0 and cfg["architecture"] == "convit_tiny"
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 3
    torch.testing.assert_close(loaded.head.weight, model.head.weight)


def test_every_zoo_name_is_written_out_where_it_is_registered():
    """grep finds each name's registration: the zoo's table has literal keys only."""
    tree = ast.parse(Path(convit.weights.zoo.__file__).read_text())
    table = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_REGISTRY"
    )
    assert all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in table.keys)
    names = [k.value for k in table.keys]
    assert len(names) == len(set(names)) and set(names) <= set(convit.list_models())
    assert {"convit_tiny", "convit_small_plus", "deit_base", "convit_digits", "deit_digits"} <= set(names)
