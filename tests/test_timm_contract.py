"""timm's generic model tests, ported to every model of our zoo.

A port, written from reading timm's ``tests/test_models.py`` (huggingface/pytorch-image-models,
checked 2026-08): the same checks its CI runs on every timm model, here on ours, built at a
small image size (timm's tests also shrink inputs).  What is ported, under timm's names:

* ``test_model_forward``, ``test_model_backward``, ``test_model_default_cfgs_non_std`` (the
  variant timm applies to transformers, whose features are token sequences);
* ``test_model_forward_features`` and ``test_model_forward_intermediates_features``
  (``create_model(..., features_only=True)``: timm's ``FeatureGetterNet`` around our model);
* ``test_model_forward_intermediates``;
* ``test_model_forward_fx`` and ``test_model_backward_fx`` (torchvision's FX feature
  extractor with timm's tracer settings).

Not ported: TorchScript (``torch.jit.script``; deprecated upstream, and our models do not
script: see docs/model.md) and the tests that download pretrained weights.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from conftest import zoo_params
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import (
    NodePathTracer,
    create_feature_extractor,
    get_graph_node_names,
)

import convit

# Every zoo model; the ImageNet-size ones at 32x32 (a 2x2 grid of 16x16 patches: enough for
# every code path, GPSA on a grid included) so that the port runs in seconds.  The widest
# (conftest.zoo_params) are in the slow tier; the fast tier keeps tiny, tiny_plus, small, digits.
SMALL = dict(img_size=32)
NAMES = zoo_params()


def _create(name: str, **kwargs):
    if "digits" not in name:  # the digits models already take 8x8 images
        kwargs = {**SMALL, **kwargs}
    return convit.create_model(name, **kwargs)


def _input_size(model) -> tuple:
    """timm's _get_input_size for fixed-size models: the pretrained_cfg's input_size."""
    cfg = model.default_cfg
    assert cfg["fixed_input_size"]
    return tuple(cfg["input_size"])


@pytest.mark.parametrize("name", NAMES)
def test_model_forward(name):
    model = _create(name).eval()
    x = torch.randn(1, *_input_size(model))
    out = model(x)
    assert out.shape == (1, model.num_classes)
    assert not torch.isnan(out).any()
    model.set_grad_checkpointing()
    assert torch.allclose(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_model_backward(name):
    model = _create(name, num_classes=42).train()
    out = model(torch.randn(2, *_input_size(model)))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())
    assert out.shape == (2, 42) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", NAMES)
def test_model_default_cfgs_non_std(name):
    model = _create(name).eval()
    cfg, state_dict = model.default_cfg, model.state_dict()
    # the classifier matches the pretrained cfg, and the feature widths are the embedding width
    assert model.num_classes == cfg["num_classes"] == state_dict["head.weight"].shape[0]
    assert model.num_features == model.head_hidden_size == model.embed_dim
    x = torch.randn(1, *_input_size(model))
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert feats.ndim == 3 and feats.shape[-1] == model.num_features
    assert pre.shape[1] == model.head_hidden_size
    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.shape[-1] == model.head_hidden_size and out.shape == pre.shape
    out = _create(name, num_classes=0).eval()(x)
    assert out.shape[-1] == model.num_features
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    if cfg.get("num_classes"):
        assert all(f"{c}.weight" in state_dict for c in classifiers)
    first = cfg["first_conv"] if isinstance(cfg["first_conv"], (tuple, list)) else (cfg["first_conv"],)
    assert all(f"{c}.weight" in state_dict for c in first)


def _check_feature_maps(outputs, channels, reductions, size, batch):
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c
        assert o.shape[2] <= math.ceil(size[0] / r) + 1 and o.shape[3] <= math.ceil(size[1] / r) + 1
        assert o.shape[0] == batch and not torch.isnan(o).any()


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_features(name):
    model = _create(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3  # timm: every model has at least 3 default feature levels
    size = _input_size(model)
    _check_feature_maps(model(torch.randn(1, *size)), channels, reductions, size[-2:], 1)


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_intermediates_features(name):
    model = _create(name, features_only=True, out_indices=(0, -1)).eval()
    size = _input_size(model)
    outputs = model(torch.randn(1, *size))
    _check_feature_maps(outputs, model.feature_info.channels(), model.feature_info.reduction(), size[-2:], 1)
    assert len(outputs) == 2


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_intermediates(name):
    model = _create(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    channels, reductions = info.channels(), info.reduction()
    assert len(channels) >= 3
    size = _input_size(model)
    x = torch.randn(1, *size)
    final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
    _check_feature_maps(intermediates, channels, reductions, size[-2:], 1)
    assert torch.allclose(final, model.forward_features(x))
    model.set_grad_checkpointing()
    final3, _ = model.forward_intermediates(x, output_fmt="NCHW")
    assert torch.allclose(final, final3, rtol=1e-4, atol=1e-5)


def _fx_model(model, train: bool = False):
    """timm's _create_fx_model: torchvision's feature extractor, returning the model output."""
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(),
        autowrap_functions=get_notrace_functions(),
        param_shapes_constant=True,
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return, eval_return = [train_nodes[-1]], [eval_nodes[-1]]
    if train:  # the nodes that feed the graph's output, found on a fresh trace
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [n.name for n in nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in nodes[0]._input_nodes.keys()]
    return create_feature_extractor(
        model, train_return_nodes=train_return, eval_return_nodes=eval_return, tracer_kwargs=tracer_kwargs
    )


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_fx(name):
    model = _create(name).eval()
    with torch.inference_mode():
        x = torch.randn(1, *_input_size(model))
        out = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(fx_out, out)
    assert out.shape[0] == 1 and not torch.isnan(out).any()


@pytest.mark.parametrize("name", NAMES)
def test_model_backward_fx(name):
    model = _create(name, num_classes=42).train()
    n_params = sum(p.numel() for p in model.parameters())
    fx = _fx_model(model, train=True)
    out = torch.cat(tuple(fx(torch.randn(2, *_input_size(model))).values()))
    out.mean().backward()
    missing = [n for n, p in fx.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in fx.parameters()) == n_params
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


def test_timm_features_match_forward_intermediates_and_indices_follow_timm():
    """The features_only wrapper returns exactly the (pruned) model's intermediates, and the
    index rules are timm's: an int n is the last n blocks, 0 or out-of-range raises."""
    torch.manual_seed(0)
    model = _create("convit_tiny").eval()
    feats = convit.create_model("convit_tiny", features_only=True, out_indices=(1, 10, -1), **SMALL).eval()
    missing, unexpected = feats.model.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected == ["norm.weight", "norm.bias", "head.weight", "head.bias"]  # pruned
    x = torch.randn(2, 3, 32, 32)
    want = model.forward_intermediates(x, indices=[1, 10, 11], intermediates_only=True)
    got = feats(x)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))
    assert feats.feature_info.module_name() == ["blocks.1", "blocks.10", "blocks.11"]
    # block 9 is the last GPSA block (patch tokens only), block 10 the first with the class token
    nlc = model.forward_intermediates(x, indices=[9, 10], output_fmt="NLC", intermediates_only=True)
    assert [t.shape for t in nlc] == [(2, 4, 192)] * 2
    for bad in (0, 13, [12], [-13]):
        with pytest.raises(AssertionError, match="out of range"):
            model.forward_intermediates(x, indices=bad)
    # stop_early: no block after the last taken one runs
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(model.blocks)]
    model.forward_intermediates(x, indices=[3], stop_early=True, intermediates_only=True)
    assert ran == [0, 1, 2, 3]
    for h in hooks:
        h.remove()
    assert timm.data.resolve_data_config(model=feats)["input_size"] == (3, 32, 32)
