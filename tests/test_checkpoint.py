"""Weight files: official .pth, timm safetensors/bin, ours (config embedded), and clear errors."""

import json
import urllib.error

import pytest
import timm
import torch
from safetensors.torch import save_file

from convit import CheckpointError, create_model, save_model
from convit.weights.checkpoint import infer_config, read_checkpoint

KW = dict(img_size=32, num_classes=5, depth=3, local_up_to_layer=2)


@pytest.fixture(scope="module")
def timm_tiny():
    torch.manual_seed(0)
    model = timm.create_model("convit_tiny", **KW).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _logits(model, seed=1):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize(
    "layout",
    ["official_raw.pth", "official_wrapped.pth", "pytorch_model.bin", "model.safetensors", "ddp_module.pth"],
)
def test_foreign_files_load_unchanged(tmp_path, timm_tiny, layout):
    sd = timm_tiny.state_dict()
    path = tmp_path / layout
    if layout == "model.safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif layout == "official_wrapped.pth":
        torch.save({"model": sd, "epoch": 299}, path)
    elif layout == "ddp_module.pth":
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save(sd, path)
    ours = create_model("convit_tiny", checkpoint_path=path, **KW)
    assert (_logits(ours) - _logits(timm_tiny)).abs().max() < 1e-5


def test_a_file_without_config_needs_its_name(tmp_path, timm_tiny):
    """Shapes cannot tell global_pool (nor the input size): a file with no config and no name is
    an error saying so, never a guess; with its name it loads."""
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_tiny.state_dict().items()}, str(path))
    cfg = infer_config(read_checkpoint(path)[0])  # what the shapes do tell
    assert cfg["num_heads"] == 4 and cfg["embed_dim"] == 192 and cfg["local_up_to_layer"] == 2
    with pytest.raises(CheckpointError, match=r"global_pool \('token' or 'avg'\).*pass the model name"):
        create_model(checkpoint_path=path)
    ours = create_model("convit_tiny", checkpoint_path=path, **KW)
    assert (_logits(ours) - _logits(timm_tiny)).abs().max() < 1e-5
    # An avg-pooled model's file, read as the token-pooled default, would load without error and
    # give other logits: the reason no file is read without its config.
    avg = timm.create_model("convit_tiny", global_pool="avg", **KW).eval()
    save_file({k: v.contiguous() for k, v in avg.state_dict().items()}, str(path))
    wrong = create_model("convit_tiny", checkpoint_path=path, **KW)
    assert (_logits(wrong) - _logits(avg)).abs().max() > 1e-3
    assert (
        _logits(create_model("convit_tiny", checkpoint_path=path, global_pool="avg", **KW)) - _logits(avg)
    ).abs().max() < 1e-5


def test_a_full_size_file_without_config_names_the_zoo_models_it_fits(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    torch.save(timm.create_model("convit_tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match="Its shapes fit convit_tiny"):
        create_model(checkpoint_path=path)


def test_our_files_rebuild_the_architecture(tmp_path):
    model = create_model(
        "convit_tiny", img_size=48, num_classes=7, depth=4, local_up_to_layer=2, locality_strength=0.3
    )
    path = save_model(model, tmp_path / "run" / "model.safetensors", extra={"class_names": list("abcdefg")})
    back = create_model(checkpoint_path=path)
    assert back.cfg == model.cfg
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    _, meta = read_checkpoint(path)
    assert json.loads(meta["class_names"]) == list("abcdefg")
    assert not list(tmp_path.glob("run/*.tmp"))


def test_pos_embed_is_resampled_for_a_new_resolution(tmp_path):
    src = create_model("convit_tiny", **KW)
    path = save_model(src, tmp_path / "m.safetensors")
    dst = create_model("convit_tiny", checkpoint_path=path, img_size=64)
    assert dst.pos_embed.shape == (1, 16, 192)


def test_shape_mismatch_names_keys_and_shapes(tmp_path, timm_tiny):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_tiny.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError) as e:
        create_model("convit_tiny", checkpoint_path=path, **dict(KW, num_classes=10))
    msg = str(e.value)
    assert "shape mismatch for head.weight: checkpoint [5, 192] vs model [10, 192]" in msg
    assert "reset_classifier" in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path, timm_tiny):
    sd = dict(timm_tiny.state_dict())
    sd.pop("blocks.1.attn.gating_param")
    sd["blocks.9.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks.1.attn.gating_param") as e:
        create_model("convit_tiny", checkpoint_path=path, **KW)
    assert "unexpected keys (1): blocks.9.extra" in str(e.value)


def test_deit_file_needs_a_name(tmp_path):
    save_file(
        {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)},
        str(tmp_path / "deit.safetensors"),
    )
    with pytest.raises(CheckpointError, match="pass the model name"):
        create_model(checkpoint_path=tmp_path / "deit.safetensors")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        create_model("convit_tiny", checkpoint_path=tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        create_model("convit_tiny", checkpoint_path=tmp_path / "junk.safetensors")


def test_pretrained_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVIT_HOME", str(tmp_path))
    # The hub step must not download timm's weights on a machine that has internet.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError) as e:
        create_model("convit_tiny", pretrained=True)
    msg = str(e.value)
    assert "https://dl.fbaipublicfiles.com/convit/convit_tiny.pth" in msg
    assert str(tmp_path / "convit_tiny.pth") in msg and "timm/convit_tiny.fb_in1k" in msg


def test_pretrained_found_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVIT_HOME", str(tmp_path))
    model = create_model("convit_tiny")
    torch.save(model.state_dict(), tmp_path / "convit_tiny.pth")  # stands in for the official file
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download"))
    loaded = create_model("convit_tiny", pretrained=True)
    assert torch.equal(loaded.pos_embed, model.pos_embed)
    with pytest.raises(ValueError, match="no published weights for 'convit_tiny_plus'"):
        create_model("convit_tiny_plus", pretrained=True)
