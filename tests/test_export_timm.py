"""Export to timm's hub layout: timm's own classes, built from ``config.json`` and loaded from
``model.safetensors``, give our logits (within 1e-5) for every zoo model and for the custom
sizes timm can express; what it cannot express is refused, naming the field.

Each model is saved with :func:`convit.save_model` (as ``convit train`` does), read back
through the CLI's loader and exported; its weights are first moved away from their init
(gates and ``pos_proj`` too) so that no agreement is trivial.  Zoo models run at 32x32 (a
2x2 grid of 16-pixel patches) to stay fast; the widest ones are marked slow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from conftest import hub_snapshot, randomise, zoo_params

from convit import ConViT, model_spec, save_model
from convit.cli import main
from convit.weights.hub import TimmExportError, export_timm, timm_model_args
from convit.weights.zoo import create_model, load_model

DATA = {"dataset": "digits", "mean": [0.25], "std": [0.5], "img_size": 8, "in_chans": 1, "native_size": True}
CLASS_NAMES = [f"digit {i}" for i in range(10)]


def _saved_and_exported(model: ConViT, tmp_path: Path, extra: Optional[dict] = None, **export_kw):
    """Save ``model`` as a training run would, load it back with the CLI's loader and export it
    to ``tmp_path/timm``.  Returns (our reloaded model, export folder, config.json)."""
    run = tmp_path / "run" / "model.safetensors"
    save_model(model, run, extra=extra)
    ours, info = load_model(str(run))
    out = export_timm(ours, tmp_path / "timm", label_names=info["class_names"], **export_kw)
    return ours, out, json.loads((out / "config.json").read_text())


def _timm_from_overlay(out: Path, config: dict, overlay: Optional[dict] = None) -> torch.nn.Module:
    """``timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=..., **model_args)``;
    the overlay defaults to the exported pretrained_cfg plus the file."""
    overlay = (
        dict(config["pretrained_cfg"], file=str(out / "model.safetensors")) if overlay is None else overlay
    )
    return timm.create_model(
        config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **config["model_args"]
    ).eval()


def _assert_same_logits(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = ours.eval()(x), theirs.eval()(x)
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err < 1e-5, err
    assert a.abs().max().item() > 1e-3  # not trivially zero


@pytest.mark.parametrize("name", zoo_params())
def test_every_zoo_model_loads_in_timm_with_our_logits(name, tmp_path):
    size = model_spec(name).config.get("img_size", 224)
    overrides = {"img_size": 32} if size == 224 else {}
    torch.manual_seed(0)
    model = randomise(create_model(name, **overrides))
    ours, out, config = _saved_and_exported(model, tmp_path, extra={"model_name": name})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    family = "convit_" if model.cfg.local_up_to_layer else "deit_"
    assert config["architecture"].startswith(family) and timm.is_model(config["architecture"])
    assert config["num_classes"] == model.num_classes and config["num_features"] == model.cfg.embed_dim
    theirs = _timm_from_overlay(out, config)
    assert type(theirs).__name__ == ("ConVit" if family == "convit_" else "VisionTransformer")
    assert set(theirs.state_dict()) == set(ours.state_dict())
    x = torch.randn(2, model.cfg.in_chans, *model.cfg.img_size)
    _assert_same_logits(ours, theirs, x)
    _assert_same_logits(ours, timm.create_model(f"local-dir:{out}", pretrained=True), x)
    # ... and back in convit: the folder, its weight file alone, and local-dir:
    for back in (
        create_model(checkpoint_path=out),
        create_model(checkpoint_path=out / "model.safetensors"),
        create_model(f"local-dir:{out}", pretrained=True),
    ):
        assert back.cfg == ours.cfg
        _assert_same_logits(ours, back, x)
    if model.num_classes == 1000:  # timm's default head size: the file alone is enough
        _assert_same_logits(
            ours, _timm_from_overlay(out, config, dict(file=str(out / "model.safetensors"))), x
        )


def test_config_json_is_timms_layout_with_the_training_data(tmp_path):
    model = randomise(create_model("convit_digits"))
    _, out, config = _saved_and_exported(model, tmp_path, extra={"class_names": CLASS_NAMES, "data": DATA})
    assert list(config) == [
        "architecture",
        "num_classes",
        "num_features",
        "global_pool",
        "label_names",
        "model_args",
        "pretrained_cfg",
    ]
    assert config["architecture"] == "convit_tiny" and config["label_names"] == CLASS_NAMES
    # timm's ConVit takes the width per head: 48 in total over 4 heads.
    # num_classes only at the top level (and in pretrained_cfg): transformers passes its own.
    assert config["model_args"] == dict(
        img_size=8,
        patch_size=2,
        in_chans=1,
        global_pool="avg",
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        qkv_bias=False,
        embed_dim=12,
        local_up_to_layer=3,
        locality_strength=1.0,
        use_pos_embed=True,
    )
    pcfg = config["pretrained_cfg"]
    assert pcfg["mean"] == [0.25] and pcfg["std"] == [0.5] and pcfg["crop_pct"] == 1.0  # from training
    assert pcfg["input_size"] == [1, 8, 8] and pcfg["num_classes"] == 10 and pcfg["fixed_input_size"] is True
    assert not {"url", "hf_hub_id", "file", "architecture"} & set(pcfg)  # weight locations left out
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert tuple(theirs.pretrained_cfg["mean"]) == (0.25,)
    data_cfg = timm.data.resolve_data_config({}, model=theirs)
    assert tuple(data_cfg["input_size"]) == (1, 8, 8) and tuple(data_cfg["std"]) == (0.5,)


def test_timm_loads_the_export_from_a_hugging_face_cache_offline(tmp_path, monkeypatch, no_network):
    """``timm.create_model('hf-hub:...')`` reads config.json and model.safetensors from a hub
    cache built by hand, with the hub offline; any network use fails the test."""
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both at import time (done long before this test): set what it read.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    for i, name in enumerate(("convit_digits", "deit_digits")):
        model = randomise(create_model(name), seed=i)
        ours, out, _ = _saved_and_exported(model, tmp_path / name)
        snap = hub_snapshot(hub, f"me/{name}", "%040x" % (i + 1))
        for f in ("config.json", "model.safetensors", "README.md"):
            shutil.copy(out / f, snap / f)
        x = torch.randn(3, 1, 8, 8)
        _assert_same_logits(ours, timm.create_model(f"hf-hub:me/{name}", pretrained=True), x)
        back = create_model(f"hf-hub:me/{name}", pretrained=True)  # convit reads the same cache
        assert back.pretrained_cfg["hf_hub_id"] == f"me/{name}"
        _assert_same_logits(ours, back, x)


# Custom sizes timm's classes express.  The init-only fields (gate_init, use_local_init,
# train_gates, train_gpsa, a non-square head count whose extra heads we init differently,
# drop rates) are included on purpose: the loaded weights compute the same in timm.
EXPRESSIBLE: dict[str, dict] = {
    "convit_deeper_more_heads": dict(
        embed_dim=36,
        num_heads=9,
        depth=3,
        local_up_to_layer=2,
        mlp_ratio=3.0,
        img_size=24,
        patch_size=4,
        locality_strength=0.5,
        qkv_bias=True,
        num_classes=7,
    ),
    "convit_grey_avg_no_pos_embed": dict(
        embed_dim=24,
        num_heads=6,
        depth=3,
        local_up_to_layer=1,
        in_chans=1,
        img_size=16,
        patch_size=4,
        global_pool="avg",
        use_pos_embed=False,
        num_classes=3,
    ),
    "convit_init_only_switches": dict(
        embed_dim=24,
        num_heads=6,
        depth=2,
        local_up_to_layer=1,
        img_size=12,
        patch_size=4,
        gate_init=0.3,
        use_local_init=False,
        train_gates=False,
        train_gpsa=False,
        drop_path_rate=0.1,
        attn_drop_rate=0.1,
        num_classes=4,
    ),
    "convit_no_pool_no_head": dict(
        embed_dim=16,
        num_heads=4,
        depth=2,
        local_up_to_layer=1,
        img_size=8,
        patch_size=2,
        global_pool="",
        num_classes=0,
    ),
    "deit_non_square_avg": dict(
        embed_dim=32,
        num_heads=4,
        depth=2,
        local_up_to_layer=0,
        img_size=(16, 24),
        patch_size=8,
        global_pool="avg",
        qkv_bias=True,
        num_classes=5,
    ),
    "deit_no_pos_embed_no_bias": dict(
        embed_dim=32,
        num_heads=2,
        depth=2,
        local_up_to_layer=0,
        img_size=16,
        patch_size=4,
        use_pos_embed=False,
        qkv_bias=False,
        in_chans=2,
        mlp_ratio=1.5,
        num_classes=6,
    ),
    "deit_no_pool_no_head": dict(
        embed_dim=16,
        num_heads=4,
        depth=1,
        local_up_to_layer=0,
        img_size=8,
        patch_size=4,
        global_pool="",
        num_classes=0,
    ),
}


@pytest.mark.parametrize("kind", list(EXPRESSIBLE))
def test_custom_sizes_timm_can_express(kind, tmp_path):
    torch.manual_seed(1)
    model = randomise(ConViT(**EXPRESSIBLE[kind]))
    ours, out, config = _saved_and_exported(model, tmp_path)
    x = torch.randn(2, model.cfg.in_chans, *model.cfg.img_size)
    _assert_same_logits(ours, _timm_from_overlay(out, config), x)
    _assert_same_logits(ours, timm.create_model(f"local-dir:{out}", pretrained=True), x)


def test_dynamic_size_deit_stays_dynamic_in_timm(tmp_path):
    model = randomise(
        ConViT(
            embed_dim=32,
            num_heads=4,
            depth=2,
            local_up_to_layer=0,
            img_size=(16, 24),
            patch_size=8,
            dynamic_img_size=True,
            num_classes=5,
        )
    )
    ours, out, config = _saved_and_exported(model, tmp_path)
    assert config["model_args"]["dynamic_img_size"] is True
    assert config["pretrained_cfg"]["fixed_input_size"] is False
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True)
    for size in ((16, 24), (32, 16), (40, 40)):  # the position embedding is resampled alike
        _assert_same_logits(ours, theirs, torch.randn(2, 3, *size))


def test_what_timm_cannot_express_is_refused_naming_the_field(tmp_path):
    cases = {
        "local_up_to_layer=2 == depth": dict(
            embed_dim=16,
            num_heads=4,
            depth=2,
            local_up_to_layer=2,
            img_size=8,
            patch_size=2,
            global_pool="avg",
        ),
        "4x6 patch grid": dict(
            embed_dim=16, num_heads=4, depth=2, local_up_to_layer=1, img_size=(8, 12), patch_size=2
        ),
        "dynamic_img_size=True": dict(
            embed_dim=16,
            num_heads=4,
            depth=2,
            local_up_to_layer=1,
            img_size=8,
            patch_size=2,
            dynamic_img_size=True,
        ),
    }
    for field, kw in cases.items():
        model = ConViT(**kw)
        with pytest.raises(TimmExportError, match=field.replace("(", r"\(")):
            export_timm(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()  # nothing written


def test_all_gpsa_really_differs_in_timm():
    """Why local_up_to_layer == depth is refused: timm's ConVit, given the very same weights,
    computes something else (it never inserts the class token; 'avg' drops the first patch)."""
    from timm.models.convit import ConVit

    kw = dict(
        num_heads=4, depth=2, local_up_to_layer=2, img_size=8, patch_size=2, global_pool="avg", num_classes=3
    )
    ours = randomise(ConViT(embed_dim=16, **kw))
    theirs = ConVit(embed_dim=4, **kw).eval()
    theirs.load_state_dict(ours.state_dict())
    with pytest.raises(TimmExportError):
        timm_model_args(ours.cfg)
    with torch.no_grad():
        x = torch.randn(2, 3, 8, 8)
        assert (ours(x) - theirs(x)).abs().max().item() > 1e-3


def test_dynamic_convit_exports_for_its_trained_size_when_asked(tmp_path):
    model = randomise(
        ConViT(
            embed_dim=16,
            num_heads=4,
            depth=2,
            local_up_to_layer=1,
            img_size=8,
            patch_size=2,
            dynamic_img_size=True,
            num_classes=3,
        )
    )
    ours, out, config = _saved_and_exported(model, tmp_path, fixed_size=True)
    assert (
        config["pretrained_cfg"]["fixed_input_size"] is True
        and "dynamic_img_size" not in config["model_args"]
    )
    _assert_same_logits(ours, timm.create_model(f"local-dir:{out}", pretrained=True), torch.randn(2, 3, 8, 8))


def test_cli_export_timm(tmp_path, capsys):
    model = randomise(create_model("convit_digits"))
    ckpt = save_model(
        model,
        tmp_path / "run" / "model.safetensors",
        extra={"class_names": CLASS_NAMES, "data": DATA, "model_name": "convit_digits"},
    )
    out = tmp_path / "exported"
    assert main(["export", "--format", "timm", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "config.json") in printed and f"local-dir:{out}" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == CLASS_NAMES and config["pretrained_cfg"]["mean"] == [0.25]
    _assert_same_logits(
        model, timm.create_model(f"local-dir:{out}", pretrained=True), torch.randn(4, 1, 8, 8)
    )

    dyn = save_model(
        ConViT(
            embed_dim=16,
            num_heads=4,
            depth=2,
            local_up_to_layer=1,
            img_size=8,
            patch_size=2,
            dynamic_img_size=True,
        ),
        tmp_path / "dyn" / "model.safetensors",
    )
    assert (
        main(["export", "--format", "timm", "--checkpoint", str(dyn), "--output", str(tmp_path / "d")]) == 2
    )
    assert "dynamic_img_size=True" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert (
        main(
            [
                "export",
                "--format",
                "timm",
                "--fixed-size",
                "--checkpoint",
                str(dyn),
                "--output",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    assert (tmp_path / "d" / "model.safetensors").is_file()
