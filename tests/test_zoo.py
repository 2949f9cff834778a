"""timm's ``pretrained_cfg`` of zoo models and of our own files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import timm.data
import torch

import convit
import convit.weights.names
from convit.core.presets import DIGITS_DATA_CFG
from convit.data import build_data
from convit.weights.checkpoint import save_model
from convit.weights.timm_arch import TimmArchitecture
from convit.weights.zoo import config_of


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
    """grep finds each name's registration: the names table has literal keys only."""
    tree = ast.parse(Path(convit.weights.names.__file__).read_text())
    table = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_REGISTRY"
    )
    assert all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in table.keys)
    names = [k.value for k in table.keys]
    assert len(names) == len(set(names)) and set(names) <= set(convit.list_models())
    assert {"convit_tiny", "convit_small_plus", "deit_base", "convit_digits", "deit_digits"} <= set(names)


def test_a_config_names_a_model_as_its_zoo_name_does():
    """create_model takes a ConViTConfig or a dict of its fields as the name: the same model
    (same random init) as the zoo name, with overrides on top; a config has no published weights."""
    cfg = config_of("convit_digits")
    torch.manual_seed(0)
    named = convit.create_model("convit_digits")
    torch.manual_seed(0)
    from_cfg = convit.create_model(cfg)
    assert from_cfg.cfg == cfg and from_cfg.pretrained_cfg["architecture"] is None
    assert all(torch.equal(a, b) for a, b in zip(named.state_dict().values(), from_cfg.state_dict().values()))
    assert convit.create_model(cfg.to_dict(), num_classes=3).cfg == config_of(cfg, num_classes=3)
    with pytest.raises(ValueError, match="no published weights"):
        convit.create_model(cfg, pretrained=True)


def test_a_timm_model_round_trips_through_our_safetensors(tmp_path):
    """timm:NAME builds one of timm's own models (no weights fetched); our safetensors store its
    timm name and arguments, so the file alone rebuilds it, weights and outputs equal."""
    torch.manual_seed(0)
    model = convit.create_model("timm:test_resnet", num_classes=3, in_chans=1).eval()
    assert model.timm_architecture == TimmArchitecture("test_resnet", {"num_classes": 3, "in_chans": 1})
    path = save_model(model, tmp_path / "r.safetensors", extra={"class_names": ["a", "b", "c"]})
    back, info = convit.load_model(path)
    assert type(back) is type(model) and back.timm_architecture == model.timm_architecture
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert info["class_names"] == ["a", "b", "c"] and back.pretrained_cfg["file"] == str(path)
    named = convit.create_model("timm:test_resnet", checkpoint_path=path)
    assert named.num_classes == 3  # the file's arguments
    with pytest.raises(ValueError, match="unknown timm model"):
        convit.create_model("timm:no_such_net")
    with pytest.raises(ValueError, match="without pretrained weights"):
        convit.create_model("timm:test_resnet", pretrained=True)


#: The weights layer's modules, bottom to top: each imports only modules before it.
WEIGHTS_ORDER = (
    "pretrained",
    "timm_arch",
    "cnn",
    "checkpoint",
    "timm_format",
    "model_card",
    "hub",
    "names",
    "resolve",
    "zoo",
    "training_start",
)


def test_the_weights_modules_import_one_way():
    """checkpoint -> timm_format -> hub -> the names table -> the resolution -> the entry: no
    module imports one above it (imports inside functions count)."""
    folder = Path(convit.weights.names.__file__).parent
    assert sorted(WEIGHTS_ORDER) == sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    for rank, module in enumerate(WEIGHTS_ORDER):
        tree = ast.parse((folder / f"{module}.py").read_text())
        imported = {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
        }
        above = imported & set(WEIGHTS_ORDER[rank:])
        assert not above, f"convit.weights.{module} imports {sorted(above)}, above it"
