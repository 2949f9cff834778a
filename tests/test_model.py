"""The ConViT model: zoo sizes, the uniform API, dynamic input sizes and clear errors."""

import pytest
import torch
from conftest import small_convit

import convit
from convit import count_params, create_model

PARAMS = {
    "convit_tiny": 5_710_512,
    "convit_small": 27_777_322,
    "convit_base": 86_540_040,
    "convit_tiny_plus": 9_972_912,
    "convit_small_plus": 48_979_882,
    "convit_base_plus": 153_134_856,
    "deit_tiny": 5_717_416,
    "deit_tiny_plus": 9_982_184,
    "deit_small": 22_050_664,
    "deit_small_plus": 49_000_744,
    "deit_base": 86_567_656,
    "deit_base_plus": 153_171_944,
}


@pytest.mark.parametrize("name,expected", sorted(PARAMS.items()))
def test_parameter_counts_equal_timm(name, expected):
    with torch.device("meta"):  # no memory, no init cost
        model = create_model(name)
    assert count_params(model) == expected


def test_zoo_heads_and_widths():
    for name, heads, width in [("convit_tiny", 4, 48), ("convit_small_plus", 9, 64), ("deit_small", 6, 64)]:
        cfg = convit.model_spec(name).config
        assert cfg["num_heads"] == heads and cfg["embed_dim"] == heads * width
    assert "convit_base" in convit.list_models("convit_*") and "deit_base" not in convit.list_models(
        "convit_*"
    )


@pytest.mark.parametrize("name", ["convit_tiny", "deit_tiny"])
def test_non_square_input_and_resolution_change(name):
    """224x320 (a 14x20 grid) and 224 -> 288 run; at the trained size logits are identical."""
    torch.manual_seed(0)
    kw = dict(num_classes=3, depth=3, local_up_to_layer=2 if name.startswith("convit") else 0)
    fixed = create_model(name, **kw).eval()
    dyn = create_model(name, dynamic_img_size=True, **kw).eval()
    dyn.load_state_dict(fixed.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(fixed(x), dyn(x))  # identical at the trained size
        assert dyn(torch.randn(1, 3, 224, 320)).shape == (1, 3)
        if name.startswith("convit"):
            assert dyn.blocks[0].attn.rel_indices.shape == (280, 280, 3)
        assert dyn(torch.randn(2, 3, 288, 288)).shape == (2, 3)
        assert torch.equal(fixed(x), dyn(x))  # and again after the grid came back


def test_forward_head_and_intermediates():
    model = small_convit().eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 17, 32)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    final, inter = model.forward_intermediates(x, indices=[0, 2])
    assert [t.shape for t in inter] == [(2, 32, 4, 4)] * 2
    assert torch.allclose(final, feats)
    nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
    assert len(nlc) == 1 and nlc[0].shape == (2, 16, 32)
    for bad in ([5], 0, 4, [-4]):  # timm's feature_take_indices raises AssertionError for these
        with pytest.raises(AssertionError, match="out of range"):
            model.forward_intermediates(x, indices=bad)


def test_reset_classifier_and_avg_pool():
    model = small_convit()
    model.reset_classifier(11, "avg")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 11)
    assert model.cfg.num_classes == 11 and model.cfg.global_pool == "avg"
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_no_weight_decay_names_exist():
    model = small_convit()
    names = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "blocks.0.attn.gating_param", "blocks.1.attn.gating_param"} == nwd
    assert nwd <= set(names)


def test_grad_checkpointing_recomputes_blocks_and_keeps_gradients():
    torch.manual_seed(0)
    model = small_convit().train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls = []
    hook = model.blocks[1].register_forward_pre_hook(lambda *a: calls.append(1))
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    hook.remove()
    assert len(calls) == 2  # the forward ran again during backward: checkpointing is on
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-6), n


def test_deit_has_class_token_position():
    deit = small_convit(local_up_to_layer=0)
    assert deit.pos_embed.shape == (1, 17, 32) and deit.pos_embed_has_cls
    assert deit(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert small_convit(use_pos_embed=False).pos_embed is None


def test_attention_maps_per_block():
    model = small_convit().eval()
    maps = model.attention_maps(torch.randn(2, 3, 32, 32))
    assert len(maps) == 3
    assert maps[0].content.shape == (2, 4, 16, 16) and maps[0].positional.shape == (4, 16, 16)
    assert maps[2].positional is None and maps[2].content.shape == (2, 4, 17, 17)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(embed_dim=30, num_heads=4), "embed_dim=30 is not divisible by num_heads=4"),
        (dict(local_up_to_layer=4), "local_up_to_layer=4 must be between 0 and depth=3"),
        (dict(img_size=30), "not divisible by patch_size=8"),
        (dict(global_pool="max"), "global_pool must be"),
        (dict(local_up_to_layer=3), "needs at least one MHSA block"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_convit(**kwargs)


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 1, 32, 32), "expected 3 input channels, got 1"),
        ((1, 3, 30, 32), "input size 30x32 is not divisible by the patch size 8"),
        (
            (1, 3, 40, 40),
            "differs from the model's img_size 32x32; build the model with dynamic_img_size=True",
        ),
        ((3, 32, 32), r"expected images as \[B, C, H, W\]"),
    ],
)
def test_bad_input(shape, message):
    with pytest.raises(ValueError, match=message):
        small_convit()(torch.randn(*shape))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'convit_tiy'. Did you mean convit_tiny"):
        create_model("convit_tiy")


@pytest.mark.slow
def test_torch_compile_same_logits():
    torch.manual_seed(0)
    model = small_convit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    assert (out - ref).abs().max() < 1e-5


def test_torchscript_trace_of_eval_model():
    model = small_convit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        assert (traced(x) - model(x)).abs().max() < 1e-5


def test_ablation_switches_freeze_what_they_say():
    frozen_gates = small_convit(train_gates=False, gate_init=0.0)
    for blk in frozen_gates.gpsa_blocks():
        assert not blk.attn.gating_param.requires_grad
        assert torch.equal(blk.attn.gating_param, torch.zeros(4))
    frozen = small_convit(train_gpsa=False, use_local_init=False)
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("blocks.0.attn.", "blocks.1.attn.")) for n in trainable)
    assert "blocks.0.mlp.fc1.weight" in trainable and "blocks.2.attn.qkv.weight" in trainable
    assert not torch.equal(frozen.blocks[0].attn.v.weight, torch.eye(32))  # no conv init


def test_layers_written_here_match_timms():
    """The model builds without importing timm (whose package imports huggingface_hub), so its
    initialiser, stochastic depth, MLP and ImageNet statistics are ours: timm is the oracle."""
    import timm.data
    import timm.layers

    from convit.nn.layers import DropPath, Mlp, trunc_normal_
    from convit.nn.model import IMAGENET_MEAN, IMAGENET_STD

    assert IMAGENET_MEAN == tuple(timm.data.IMAGENET_DEFAULT_MEAN)
    assert IMAGENET_STD == tuple(timm.data.IMAGENET_DEFAULT_STD)
    for std in (0.02, 1.0):
        ours, theirs = torch.empty(64, 48), torch.empty(64, 48)
        torch.manual_seed(3)
        trunc_normal_(ours, std=std)
        torch.manual_seed(3)
        timm.layers.trunc_normal_(theirs, std=std)
        assert torch.equal(ours, theirs)
    x = torch.randn(8, 5, 16)
    ours, theirs = DropPath(0.3).train(), timm.layers.DropPath(0.3).train()
    torch.manual_seed(4)
    a = ours(x)
    torch.manual_seed(4)
    assert torch.equal(a, theirs(x)) and not torch.equal(a, x)
    mlp, ref = Mlp(16, 32), timm.layers.Mlp(16, 32)
    assert set(mlp.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(mlp.state_dict())
    assert torch.equal(mlp(x), ref(x))
