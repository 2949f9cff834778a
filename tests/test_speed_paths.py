"""FastGPSA (convit/nn/fast_gpsa.py) against GPSA, the paper's eq. 5-6 (convit/nn/attention.py).

The fast path (fused q/k/v matmul, SDPA, batch-shared P @ v, lerp mix, subnormal flush,
the inference cache, masking with the gates fixed) must give the reference's outputs and
gradients, for random weights and gates (not the init), in train and eval.
"""

from contextlib import nullcontext
from functools import partial

import pytest
import torch
from conftest import rel_error, sharp_gpsa, small_convit

from convit import ConViT
from convit.nn.attention import GPSA, gates_fixed
from convit.nn.fast_gpsa import FastGPSA, gated_positional_mix


def eq6(layer: GPSA):
    """The paper's eq. 6 on ``layer`` (GPSA.forward, unbound: also on a FastGPSA)."""
    return partial(GPSA.forward, layer)


def fixed(layer: GPSA, gate):
    """The gates fixed at ``gate`` within the block (None: left free)."""
    return nullcontext() if gate is None else gates_fixed(layer, gate)


def _grads(layer, x, fn):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)  # same for all paths
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * w).sum(), [x] + params, allow_unused=True)
    return out.detach(), grads


def _assert_grads_close(names, fast, slow, tol=1e-4):
    """Relative ``tol`` per tensor.  A gradient one path leaves None (an unused branch under
    fixed gates) must be zero in the other.  pos_proj.bias's gradient is 0 in exact
    arithmetic (the softmax over j is shift-invariant), so both must just be rounding noise
    next to pos_proj.weight's gradient."""
    like = next(g for g in fast if g is not None)
    zero = lambda g: torch.zeros(()).to(like) if g is None else g  # noqa: E731
    by_name = dict(zip(names, slow))
    for name, a, b in zip(names, fast, slow):
        a, b = zero(a), zero(b)
        if name.endswith("pos_proj.bias"):
            scale = zero(by_name[name.replace("bias", "weight")]).abs().max()
            assert a.abs().max() <= 1e-4 * scale and b.abs().max() <= 1e-4 * scale, name
        elif (a == 0).all() or (b == 0).all():
            assert (a == 0).all() and (b == 0).all(), name
        else:
            assert rel_error(a, b) < tol, (name, rel_error(a, b))


# -- the fast path computes the reference's function -----------------------------------
# (heads, dim, grid): a square head count, 9 heads, and an 8x8 grid whose far patches get
# probabilities below the subnormal threshold (so the flush is exercised).
SHAPES = [(4, 32, (4, 5)), (9, 36, (3, 3)), (2, 16, (8, 8))]
# dtype: (output abs. tolerance, gradient rel. tolerance)
TOL = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-5, 1e-4)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("gate", [None, 0.0, 1.0])
@pytest.mark.parametrize("qkv_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("heads,dim,grid", SHAPES)
def test_fast_path_equals_reference(heads, dim, grid, qkv_bias, gate, train, dtype):
    """Values and gradients (input and every parameter) of FastGPSA.forward equal GPSA's
    eq. 6, with free or fixed gates; in eval also the no-grad path that caches P, called
    twice (the cache is read)."""
    out_tol, grad_tol = TOL[dtype]
    layer = sharp_gpsa(heads, dim, grid, qkv_bias=qkv_bias).to(dtype).train(train)
    x = torch.randn(3, grid[0] * grid[1], dim, dtype=dtype)
    with fixed(layer, gate):
        out_f, g_f = _grads(layer, x, layer)
        out_r, g_r = _grads(layer, x, eq6(layer))
        assert (out_f - out_r).abs().max() < out_tol
        _assert_grads_close(["x"] + [n for n, _ in layer.named_parameters()], g_f, g_r, grad_tol)
        if not train:
            with torch.no_grad():
                first, second = layer(x), layer(x)
            assert torch.equal(first, second)
            assert (layer._pos_cache is None) == (gate == 0.0)  # P unused at gate 0
            assert (second - out_r).abs().max() < out_tol


def test_fast_layer_is_a_gpsa_with_the_same_state_dict():
    """Checkpoints and analysis code see a GPSA: same keys, loadable both ways, isinstance."""
    ref, fast = GPSA(32, 4, qkv_bias=True, grid=(4, 5)), sharp_gpsa(qkv_bias=True)
    assert isinstance(fast, GPSA)
    assert ref.state_dict().keys() == fast.state_dict().keys()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        assert (ref(x) - fast(x)).abs().max() < 1e-5
    fresh = FastGPSA(32, 4, qkv_bias=True, grid=(4, 5))
    fresh.load_state_dict(ref.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), fast(x))
    model = ConViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, local_up_to_layer=1)
    assert all(type(blk.attn) is FastGPSA for blk in model.gpsa_blocks())


def test_gated_positional_mix_gradcheck_and_double_backward():
    torch.manual_seed(0)
    B, h, N, d = 2, 3, 5, 4
    content = torch.randn(B, N, h, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, N, 3, h, d, dtype=torch.float64)[:, :, 2].transpose(1, 2)  # strided view
    v.requires_grad_(True)
    pos = torch.randn(h, N, N, dtype=torch.float64).softmax(-1).requires_grad_(True)
    g = torch.rand(h, dtype=torch.float64, requires_grad=True)
    args = (content, v, pos, g)
    ref = torch.lerp(content, (pos.unsqueeze(0) @ v).transpose(1, 2), g.view(1, 1, h, 1))
    assert torch.allclose(gated_positional_mix(*args), ref, atol=1e-12)
    assert torch.autograd.gradcheck(gated_positional_mix, args)
    assert torch.autograd.gradgradcheck(gated_positional_mix, args)


@pytest.mark.parametrize("heads,dim,grid,grads", [(4, 32, (4, 5), True), (9, 72, (6, 6), False)])
def test_bf16_autocast_as_accurate_as_explicit_path(heads, dim, grid, grads):
    """Under bf16 autocast the fast path's output (and, for 4 heads, its gradients) are no
    further from float64 than those of the explicit formula under the same autocast (sharp
    content attention: qk x 10).  With 9 heads the pos_proj gradient is within 0.1 of float64
    but not within 1.25x the explicit path's error, so only the output is compared there."""
    layer = sharp_gpsa(heads=heads, dim=dim, grid=grid).train()
    x = torch.randn(3, grid[0] * grid[1], dim)
    out64, g64 = _grads(layer.double(), x.double(), layer)
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, g_fast = _grads(layer, x, layer)
        out_expl, g_expl = _grads(layer, x, eq6(layer))
    assert out.dtype == torch.bfloat16
    names = ["out", "x"] + [n for n, _ in layer.named_parameters()]
    compared = list(zip(names, (out,) + g_fast, (out_expl,) + g_expl, (out64,) + g64))
    for name, a, e, b in compared if grads else compared[:1]:
        if not name.endswith("pos_proj.bias"):  # exactly 0 in exact arithmetic
            err_fast, err_expl = rel_error(a.double(), b), rel_error(e.double(), b)
            assert err_fast <= 1.25 * err_expl + 1e-3 and err_fast < 0.1, (name, err_fast, err_expl)


def test_partial_gradients_constant_gate_and_frozen_positions():
    """Only some inputs of the mix need a gradient: a constant gate (fixed) and a frozen
    pos_proj.  The gradients that remain still equal the explicit path's."""
    layer = sharp_gpsa().train()
    layer.pos_proj.requires_grad_(False)
    x = torch.randn(2, 20, 32)
    with gates_fixed(layer, 0.3):
        out_f, g_f = _grads(layer, x, layer)
        out_e, g_e = _grads(layer, x, eq6(layer))
    assert (out_f - out_e).abs().max() < 1e-5
    names = ["x"] + [n for n, p in layer.named_parameters() if p.requires_grad]
    assert len(names) == len(g_f) and "pos_proj.weight" not in names
    for name, a, b in zip(names, g_f, g_e):
        assert (a is None) == (b is None), name
        if a is not None:
            assert rel_error(a, b) < 1e-4, name


def test_fused_projection_equals_separate_linears():
    for bias in (False, True):
        layer = sharp_gpsa(qkv_bias=bias)
        x = torch.randn(2, 20, 32)
        assert torch.allclose(layer._qkv(x), torch.cat([layer.qk(x), layer.v(x)], -1), atol=1e-6)
    assert {n for n, _ in layer.named_parameters()} == {
        "qk.weight",
        "qk.bias",
        "v.weight",
        "v.bias",
        "proj.weight",
        "proj.bias",
        "pos_proj.weight",
        "pos_proj.bias",
        "gating_param",
    }


def test_positional_attention_has_no_subnormals():
    layer = FastGPSA(16, 4, grid=(14, 14), locality_strength=1.0)
    layer.local_init()  # far patches get exp(-d^2): far below the normal range
    pos = layer.positional_attention()
    tiny = torch.finfo(torch.float32).tiny
    assert ((pos > 0) & (pos < tiny)).sum() == 0
    with torch.no_grad():
        raw = (
            torch.nn.functional.linear(layer.rel_indices, layer.pos_proj.weight, layer.pos_proj.bias)
            .permute(2, 0, 1)
            .softmax(-1)
        )
    assert ((raw > 0) & (raw < tiny)).sum() > 0  # the plain softmax has subnormals here
    assert (pos - raw).abs().max() < 2e-27  # only entries below e^20 * N * 1.2e-38 were zeroed
    assert pos[pos > 0].min() * 1e-8 > tiny  # g * P stays normal for gates >= 1e-8
    assert torch.allclose(pos[raw > 1e-26], raw[raw > 1e-26], rtol=1e-6, atol=0)
    assert torch.allclose(pos.sum(-1), torch.ones(4, 196), atol=1e-6)


# -- the inference cache of P -------------------------------------------------------------
def _fresh_pos(layer: FastGPSA) -> torch.Tensor:
    layer.clear_cache()
    with torch.no_grad():
        p = layer.positional_attention()
    layer.clear_cache()
    return p


def _cached_pos(layer: FastGPSA) -> torch.Tensor:
    with torch.no_grad():
        layer.positional_attention()  # fills (or reuses) the cache
        return layer.positional_attention()


def test_cache_is_used_only_without_grad():
    layer = sharp_gpsa().eval()
    with torch.no_grad():
        a = layer.positional_attention()
        assert layer.positional_attention() is a
    b = layer.positional_attention()
    assert b is not a and b.requires_grad


def test_cache_invalidates_after_optimizer_step():
    layer = sharp_gpsa()
    x = torch.randn(2, 20, 32)
    before = _cached_pos(layer)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer.train()(x).square().sum().backward()
    opt.step()
    after = _cached_pos(layer)
    assert (after - before).abs().max() > 1e-4
    assert torch.equal(after, _fresh_pos(layer))
    with torch.no_grad():
        assert (layer.eval()(x) - GPSA.forward(layer, x)).abs().max() < 1e-5


def test_cache_invalidates_after_load_state_dict_and_copy():
    layer, other = sharp_gpsa(seed=0), sharp_gpsa(seed=1)
    before = _cached_pos(layer)
    layer.load_state_dict(other.state_dict())
    after = _cached_pos(layer)
    assert not torch.equal(before, after) and torch.equal(after, _fresh_pos(other))
    with torch.no_grad():
        layer.pos_proj.bias.copy_(torch.zeros(4))
    assert torch.equal(_cached_pos(layer), _fresh_pos(layer))


def test_cache_invalidates_after_dtype_round_trip_and_set_grid():
    layer = sharp_gpsa()
    before = _cached_pos(layer)
    layer.to(torch.bfloat16).to(torch.float32)  # weights rounded to bf16 and back
    after = _cached_pos(layer)
    assert not torch.equal(before, after)
    assert torch.equal(after, _fresh_pos(layer))
    layer.to(torch.float64)
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    with torch.no_grad():
        assert (layer.eval()(x) - GPSA.forward(layer, x)).abs().max() < 1e-6
    layer.to(torch.float32).set_grid((5, 4))
    assert _cached_pos(layer).shape == (4, 20, 20)
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        assert (layer(x) - GPSA.forward(layer, x)).abs().max() < 1e-5


# -- masking: gates fixed at 0 or 1 compute one branch only ----------------------------
def test_fixed_gate_skips_a_branch_exactly(monkeypatch):
    """Gates fixed at 0 run only SDPA, at 1 only P @ v, anything else both; outputs equal eq. 6."""
    import convit.nn.fast_gpsa as A

    layer = sharp_gpsa().eval()
    x = torch.randn(2, 20, 32)
    calls = []
    sdpa, pv = A.F.scaled_dot_product_attention, A._positional_values
    monkeypatch.setattr(
        A.F, "scaled_dot_product_attention", lambda *a, **k: calls.append("sdpa") or sdpa(*a, **k)
    )
    monkeypatch.setattr(A, "_positional_values", lambda *a: calls.append("P@v") or pv(*a))
    for o, expect in ((0.0, ["sdpa"]), (1.0, ["P@v"]), (0.3, ["sdpa", "P@v"])):
        with gates_fixed(layer, o):
            for grad in (False, True):
                calls.clear()
                with torch.set_grad_enabled(grad):
                    out = layer(x)
                assert calls == expect, (o, grad, calls)
                assert (out - GPSA.forward(layer, x)).abs().max() < 1e-5


def test_model_fast_path_equals_explicit_blocks():
    torch.manual_seed(0)
    model = small_convit()
    with torch.no_grad():
        for blk in model.gpsa_blocks():
            blk.attn.gating_param.normal_(0, 2)
            blk.attn.qk.weight.mul_(10)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    fast = model(x)
    g_fast = torch.autograd.grad(fast.square().sum(), list(model.parameters()))
    originals = [blk.attn.forward for blk in model.gpsa_blocks()]
    for blk in model.gpsa_blocks():
        blk.attn.forward = eq6(blk.attn)
    slow = model(x)
    g_slow = torch.autograd.grad(slow.square().sum(), list(model.parameters()))
    for blk, f in zip(model.gpsa_blocks(), originals):
        blk.attn.forward = f
    assert (fast - slow).abs().max() < 1e-5
    _assert_grads_close([n for n, _ in model.named_parameters()], g_fast, g_slow)
