"""``convit.create_model`` follows ``timm.create_model``'s conventions, with timm as the oracle:
``pretrained=True`` with ``num_classes`` (a new head) and ``in_chans`` (adapted input weights),
pretrained tags, ``hf-hub:`` and ``local-dir:`` names, folders written by timm itself, and
the architecture read from ``config.json``.

Weights are never downloaded: the published files are random state dicts of timm's models in
a temporary ``CONVIT_HOME`` or Hugging Face cache, offline, behind conftest's guard that fails a
test at any network use.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from conftest import hub_snapshot, randomise
from safetensors.torch import save_file
from timm.models import save_for_hf
from timm.models._hub import save_config_for_hf

from convit import ConViT
from convit.weights.checkpoint import adapt_input_conv
from convit.weights.timm_format import TIMM_BUILDERS, TimmExportError, config_from_timm
from convit.weights.zoo import create_model, parse_model_name

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def offline(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty CONVIT_HOME and Hugging Face cache, HF_HUB_OFFLINE=1 (also the flag
    huggingface_hub read at import, which timm's hub code reads)."""
    home, hub = tmp_path / "home", tmp_path / "hf" / "hub"
    home.mkdir()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONVIT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    return {"home": home, "hub": hub}


@pytest.fixture(scope="module")
def published() -> torch.nn.Module:
    """timm's convit_tiny with random weights: stands in for the published file."""
    torch.manual_seed(0)
    return randomise(timm.create_model("convit_tiny"))


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    la, lb = _logits(a, x), _logits(b, x)
    assert la.shape == lb.shape and (la - lb).abs().max().item() < 1e-5
    assert la.abs().max().item() > 1e-3


@pytest.mark.parametrize("in_chans,base", [(1, 3), (2, 3), (4, 3), (7, 3), (3, 1), (5, 2)])
def test_adapt_input_conv_is_timms(in_chans, base):
    w = torch.randn(8, base, 4, 4)
    assert torch.equal(adapt_input_conv(in_chans, w, base), timm.models.adapt_input_conv(in_chans, w, base))
    half = w.half()
    assert torch.equal(
        adapt_input_conv(in_chans, half, base), timm.models.adapt_input_conv(in_chans, half, base)
    )


def test_pretrained_with_num_classes_and_in_chans_as_timm(offline, published):
    """The published file in CONVIT_HOME; timm loads the same file through its overlay."""
    path = offline["home"] / "convit_tiny.pth"
    torch.save(published.state_dict(), path)
    overlay = dict(file=str(path))
    x = torch.randn(2, 3, 224, 224)
    _same(create_model("convit_tiny", pretrained=True), published, x)
    for kw in (dict(in_chans=1), dict(in_chans=4), dict(in_chans=1, num_classes=5), dict(num_classes=5)):
        ours = create_model("convit_tiny", pretrained=True, **kw)
        theirs = timm.create_model("convit_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **kw)
        xi = torch.randn(2, kw.get("in_chans", 3), 224, 224)
        assert torch.equal(ours.patch_embed.proj.weight, theirs.patch_embed.proj.weight), kw
        if "num_classes" in kw:  # a new head (random in both); everything before it is loaded
            assert ours.head.weight.shape == (5, 192)
            with torch.no_grad():
                a = ours.eval().forward_head(ours.forward_features(xi), pre_logits=True)
                b = theirs.eval().forward_head(theirs.forward_features(xi), pre_logits=True)
            assert (a - b).abs().max().item() < 1e-5
        else:
            _same(ours, theirs, xi)
        assert ours.pretrained_cfg["input_size"][0] == kw.get("in_chans", 3)
    assert len(create_model("convit_tiny", pretrained=True, in_chans=1).pretrained_cfg["mean"]) == 1


def test_pretrained_tags(offline, published):
    torch.save(published.state_dict(), offline["home"] / "convit_tiny.pth")
    model = create_model("convit_tiny.fb_in1k", pretrained=True)
    assert model.pretrained_cfg["tag"] == "fb_in1k"
    _same(model, published, torch.randn(1, 3, 224, 224))
    assert parse_model_name("convit_tiny.fb_in1k") == (None, "convit_tiny", "fb_in1k")
    assert parse_model_name("hf-hub:timm/convit_tiny.fb_in1k") == ("hf-hub", "timm/convit_tiny.fb_in1k", "")
    assert parse_model_name("local-dir:/a/b.c") == ("local-dir", "/a/b.c", "")
    with pytest.raises(
        ValueError,
        match="unknown pretrained tag 'in22k' for convit_tiny: its weights are convit_tiny.fb_in1k",
    ):
        create_model("convit_tiny.in22k", pretrained=True)
    with pytest.raises(ValueError, match="convit_tiny_plus: it has no published weights"):
        create_model("convit_tiny_plus.fb_in1k")


def _timm_repo(hub: Path, repo_id: str, model: torch.nn.Module, commit: str) -> None:
    """A hub repo of ``model`` in timm's own layout (timm writes config.json) in the cache."""
    snap = hub_snapshot(hub, repo_id, commit)
    save_config_for_hf(model, str(snap / "config.json"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))


def test_hf_hub_names_read_timms_own_repos(offline, published):
    torch.manual_seed(1)
    deit = randomise(timm.create_model("deit_tiny_patch16_224"))
    _timm_repo(offline["hub"], "timm/convit_tiny.fb_in1k", published, "1" * 40)
    _timm_repo(offline["hub"], "timm/deit_tiny_patch16_224.fb_in1k", deit, "2" * 40)
    x = torch.randn(2, 3, 224, 224)
    for repo, theirs in (
        ("timm/convit_tiny.fb_in1k", published),
        ("timm/deit_tiny_patch16_224.fb_in1k", deit),
    ):
        ours = create_model(f"hf-hub:{repo}", pretrained=True)
        _same(ours, theirs, x)
        _same(ours, timm.create_model(f"hf-hub:{repo}", pretrained=True), x)
        assert ours.pretrained_cfg["hf_hub_id"] == repo
    # The same names with timm's adaptations; without pretrained, the architecture only.
    grey = create_model("hf-hub:timm/convit_tiny.fb_in1k", pretrained=True, in_chans=1, num_classes=3)
    ref = timm.create_model("hf-hub:timm/convit_tiny.fb_in1k", pretrained=True, in_chans=1, num_classes=3)
    assert torch.equal(grey.patch_embed.proj.weight, ref.patch_embed.proj.weight) and grey.num_classes == 3
    fresh = create_model("hf-hub:timm/convit_tiny.fb_in1k")
    assert fresh.cfg == create_model("convit_tiny").cfg
    assert not torch.equal(
        fresh.pos_embed, create_model("hf-hub:timm/convit_tiny.fb_in1k", pretrained=True).pos_embed
    )


def test_local_dir_of_a_folder_timm_wrote(tmp_path):
    """timm's own export (save_for_hf) of an avg-pooled ConViT loads with its pooling: the
    architecture comes from config.json, not from the shapes."""
    torch.manual_seed(2)
    theirs = randomise(
        timm.create_model(
            "convit_tiny", img_size=32, depth=3, local_up_to_layer=2, num_classes=5, global_pool="avg"
        )
    )
    save_for_hf(theirs, tmp_path / "repo")
    x = torch.randn(2, 3, 32, 32)
    for ours in (
        create_model(f"local-dir:{tmp_path / 'repo'}", pretrained=True),
        create_model(checkpoint_path=tmp_path / "repo"),
        create_model(checkpoint_path=tmp_path / "repo" / "pytorch_model.bin"),
    ):  # timm's default
        assert ours.cfg.global_pool == "avg" and ours.cfg.depth == 3
        _same(ours, theirs, x)
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        create_model(f"local-dir:{tmp_path}")


@pytest.mark.parametrize("arch", list(TIMM_BUILDERS))
def test_every_timm_builder_reads_back_as_our_architecture(arch):
    """config_from_timm of each builder gives a model with timm's parameter names and shapes
    (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        theirs = timm.create_model(arch)
        ours = ConViT(**config_from_timm({"architecture": arch, "num_classes": 1000}))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_what_our_models_cannot_compute_is_refused_from_config_json():
    base = {"architecture": "deit_tiny_patch16_224", "num_classes": 10}
    cases = {
        "fc_norm": dict(global_pool="avg"),
        "reg_tokens=4": dict(reg_tokens=4),
        "pos_embed='rope'": dict(pos_embed="rope"),
        "'use_fancy'": dict(use_fancy=True),
    }
    for words, args in cases.items():
        with pytest.raises(TimmExportError, match=words):
            config_from_timm({**base, "model_args": args})
    with pytest.raises(TimmExportError, match="'resnet50' is not a ConViT or DeiT"):
        config_from_timm({"architecture": "resnet50"})
    with pytest.raises(TimmExportError, match="local_up_to_layer=3 == depth"):
        config_from_timm(
            {
                "architecture": "convit_tiny",
                "model_args": dict(depth=3, local_up_to_layer=3, global_pool="avg"),
            }
        )
    ok = config_from_timm({**base, "model_args": dict(global_pool="avg", fc_norm=False, drop_path_rate=0.1)})
    assert ok["global_pool"] == "avg" and ok["local_up_to_layer"] == 0


def test_label_names_of_a_config_json_become_the_class_names(tmp_path):
    model = randomise(
        ConViT(
            img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=4, local_up_to_layer=1, num_classes=3
        )
    )
    from convit.weights.hub import export_timm
    from convit.weights.zoo import load_model

    out = export_timm(model, tmp_path / "out", label_names=["cat", "dog", "emu"])
    assert create_model(checkpoint_path=out).pretrained_cfg["label_names"] == ["cat", "dog", "emu"]
    config = json.loads((out / "config.json").read_text())
    (out / "model.safetensors").unlink()  # a foreign file with the same config: names from config.json
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    back, info = load_model(str(out))
    assert info["class_names"] == config["label_names"] and back.cfg.global_pool == model.cfg.global_pool
