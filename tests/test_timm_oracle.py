"""timm is the numerical oracle: its ConViT with random weights, loaded into ours, must agree."""

import pytest
import timm
import torch
from conftest import randomise
from timm.models.convit import ConVit

import convit


def _pair(timm_model: torch.nn.Module, ours: torch.nn.Module):
    randomise(timm_model)
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    return timm_model, ours


def _compare(timm_model, ours, x, train: bool):
    """Logits in eval mode (no grad, exercising the inference cache), then logits and every
    parameter's gradient in train mode (dropout and drop-path are off)."""
    with torch.no_grad():
        assert (timm_model.eval()(x) - ours.eval()(x)).abs().max().item() < 1e-5
    if not train:
        return
    timm_model.train()
    ours.train()
    a = timm_model(x)
    b = ours(x)
    assert (a - b).abs().max().item() < 1e-5
    a.square().sum().backward()
    b.square().sum().backward()
    ours_params = dict(ours.named_parameters())
    for name, p in timm_model.named_parameters():
        q = ours_params[name]
        if name.endswith("pos_proj.bias"):
            # softmax is shift-invariant: this gradient is exactly 0 in exact arithmetic, so both
            # sides hold rounding noise only; check it is negligible next to pos_proj.weight's.
            w = ours_params[name.replace("bias", "weight")].grad.norm()
            assert p.grad.norm() < 1e-4 * w and q.grad.norm() < 1e-4 * w, name
            continue
        rel = (p.grad - q.grad).norm() / p.grad.norm()
        assert rel < 1e-4, (name, rel.item())


# convit_base takes ~20 s on 2 cores at 224x224: the same code at another width, so slow tier.
@pytest.mark.parametrize(
    "name", ["convit_tiny", "convit_small", pytest.param("convit_base", marks=pytest.mark.slow)]
)
def test_zoo_models_match_timm(name):
    torch.manual_seed(0)
    t, o = _pair(timm.create_model(name), convit.create_model(name))
    assert set(t.state_dict()) == set(o.state_dict())
    x = torch.randn(2, 3, 224, 224)
    _compare(t, o, x, train=True)


def test_non_default_config_matches_timm():
    """9 heads, alpha = 0.5, 3 GPSA blocks, 64x64 input, avg pooling, qkv bias."""
    kw = dict(
        img_size=64,
        patch_size=8,
        num_classes=7,
        depth=5,
        num_heads=9,
        local_up_to_layer=3,
        locality_strength=0.5,
        qkv_bias=True,
        global_pool="avg",
    )
    torch.manual_seed(1)
    t = ConVit(embed_dim=16, **kw)
    o = convit.ConViT(embed_dim=16 * 9, **kw)
    # The convolutional init is deterministic: it must equal timm's before any randomising.
    for i in range(3):
        assert torch.equal(t.blocks[i].attn.pos_proj.weight, o.blocks[i].attn.pos_proj.weight)
        assert torch.equal(t.blocks[i].attn.v.weight, o.blocks[i].attn.v.weight)
    t, o = _pair(t, o)
    _compare(t, o, torch.randn(3, 3, 64, 64), train=True)


def test_attention_dropout_matches_timm_with_same_seed():
    """With attention dropout GPSA takes the explicit path: dropout on the mixed A, like timm."""
    kw = dict(
        img_size=32,
        patch_size=8,
        num_classes=5,
        depth=3,
        num_heads=4,
        local_up_to_layer=2,
        attn_drop_rate=0.3,
    )
    t = ConVit(embed_dim=8, **kw)
    o = convit.ConViT(embed_dim=32, **kw)
    t, o = _pair(t, o)
    t.train(), o.train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(123)
    a = t(x)
    torch.manual_seed(123)
    b = o(x)
    assert (a - b).abs().max() < 1e-5
    torch.manual_seed(124)
    assert (o(x) - b).abs().max() > 1e-4  # dropout is really on


def test_deit_loads_timm_deit_weights():
    t = timm.create_model("deit_tiny_patch16_224")
    o = convit.create_model("deit_tiny")
    t, o = _pair(t, o)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (t.eval()(x) - o.eval()(x)).abs().max() < 1e-5
