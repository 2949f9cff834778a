"""GPSA as the paper writes it (eq. 5-7): the layer against eq. 6 written out, the offsets,
the head centres and the local init.  The fast path: tests/test_speed_paths.py."""

import math
from contextlib import nullcontext
from typing import Optional

import pytest
import torch

from convit.nn.attention import GPSA, MHSA, gates_fixed, head_centres, relative_offsets
from convit.nn.fast_gpsa import FastGPSA
from convit.nn.model import ConViT


def _random_gpsa(heads=4, dim=32, grid=(4, 5), seed=0, **kw) -> GPSA:
    torch.manual_seed(seed)
    layer = GPSA(dim, heads, grid=grid, **kw)
    layer.local_init()
    with torch.no_grad():  # move away from the init: random gates, positions, values
        layer.gating_param.copy_(torch.randn(heads) * 2)
        layer.pos_proj.weight.add_(torch.randn_like(layer.pos_proj.weight) * 0.3)
        layer.v.weight.add_(torch.randn_like(layer.v.weight) * 0.1)
    return layer


def _paper_eq6(layer: GPSA, x: torch.Tensor, fixed: Optional[float] = None) -> torch.Tensor:
    """Eq. 6 written out independently of the layer's helpers, in float64 (``fixed``: the gate
    value of :func:`gates_fixed`, if any)."""
    B, N, C = x.shape
    h, d = layer.num_heads, C // layer.num_heads
    q, k = layer.qk(x).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
    v = layer.v(x).view(B, N, h, d).transpose(1, 2)
    H, W = layer.grid
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    rows, cols = rows.flatten().double(), cols.flatten().double()
    dx, dy = cols[None] - cols[:, None], rows[None] - rows[:, None]
    r = torch.stack([dx, dy, dx**2 + dy**2], -1)  # [N, N, 3]
    pos = (r @ layer.pos_proj.weight.T + layer.pos_proj.bias).permute(2, 0, 1).softmax(-1)
    content = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    g = torch.sigmoid(layer.gating_param) if fixed is None else torch.full((h,), fixed, dtype=torch.float64)
    g = g.view(1, h, 1, 1)
    attn = (1 - g) * content + g * pos
    out = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return layer.proj(out)


@pytest.mark.parametrize("heads,dim,grid", [(4, 32, (4, 5)), (9, 72, (6, 6))])
@pytest.mark.parametrize("fixed", [None, 0.0, 1.0])
def test_reference_equals_independent_eq6(heads, dim, grid, fixed):
    """GPSA.forward (the paper's computation, the oracle of the fast path) against eq. 5-6
    written out here in float64.  The layer computes P in float32, hence 1e-6."""
    layer = _random_gpsa(heads, dim, grid).double()
    x = torch.randn(3, grid[0] * grid[1], dim, dtype=torch.float64)
    with nullcontext() if fixed is None else gates_fixed(layer, fixed):
        got = layer(x)
    assert (got - _paper_eq6(layer, x, fixed)).abs().max() < 1e-6


def test_explicit_maps_sum_to_one_and_mix_with_gate():
    layer = _random_gpsa()
    maps = layer.attention_maps(torch.randn(2, 20, 32))
    assert maps.content.shape == (2, 4, 20, 20) and maps.positional.shape == (4, 20, 20)
    assert torch.allclose(maps.combined.sum(-1), torch.ones(2, 4, 20), atol=1e-5)
    assert torch.allclose(maps.gate, torch.sigmoid(layer.gating_param))
    with gates_fixed(layer, 0.0):
        assert torch.equal(layer.attention_maps(torch.randn(1, 20, 32)).gate, torch.zeros(4))
    assert torch.equal(layer.gate(), torch.sigmoid(layer.gating_param))


def test_gates_fixed_only_inside_the_block_even_after_an_exception():
    """The fixed gate is seen inside the block only: restored on exit and after an exception,
    nested blocks restore the outer value, a model is searched for its GPSA layers, and there
    is no public attribute to leave set."""
    torch.manual_seed(0)
    model = ConViT(
        img_size=8,
        patch_size=2,
        in_chans=1,
        num_classes=3,
        embed_dim=16,
        depth=3,
        num_heads=4,
        local_up_to_layer=2,
        global_pool="avg",
    )
    layers = [b.attn for b in model.gpsa_blocks()]
    free = [layer.gate() for layer in layers]
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    with pytest.raises(RuntimeError, match="inside"):
        with gates_fixed(model, 1.0):
            assert all(torch.equal(layer.gate(), torch.ones(4)) for layer in layers)
            assert not torch.equal(model(x), before)
            raise RuntimeError("inside")
    assert all(torch.equal(layer.gate(), g) for layer, g in zip(layers, free))
    assert torch.equal(model(x), before)
    with gates_fixed(layers[:1], 0.0):
        with gates_fixed(layers, 1.0):
            assert torch.equal(layers[0].gate(), torch.ones(4))
        assert torch.equal(layers[0].gate(), torch.zeros(4)) and torch.equal(layers[1].gate(), free[1])
    assert torch.equal(layers[0].gate(), free[0])
    assert not hasattr(layers[0], "gate_override") and not hasattr(layers[0], "forward_reference")


def test_relative_offsets_non_square_grid():
    r = relative_offsets((2, 3))  # patches numbered row-major: p = row * 3 + col
    assert r.shape == (6, 6, 3)
    # patch 1 = (row 0, col 1) to patch 5 = (row 1, col 2): dx = 1, dy = 1
    assert r[1, 5].tolist() == [1.0, 1.0, 2.0]
    assert r[5, 0].tolist() == [-2.0, -1.0, 5.0]
    assert torch.equal(r[..., 0], -r[..., 0].T)


def test_local_init_attends_to_the_head_centres():
    """At init with a large locality strength each head's positional attention peaks on
    query + Delta_h: a 3x3 convolution for 9 heads."""
    layer = GPSA(36, 9, grid=(7, 7), locality_strength=5.0)
    layer.local_init()
    assert torch.equal(layer.v.weight, torch.eye(36))
    pos = layer.positional_attention()
    query = 3 * 7 + 3  # centre patch
    targets = {tuple(int(t) for t in (query + c[1] * 7 + c[0],)) for c in head_centres(9).long()}
    peaks = {(int(pos[h, query].argmax()),) for h in range(9)}
    assert peaks == targets and len(peaks) == 9


def test_head_centres_even_and_non_square():
    c4 = head_centres(4)
    assert sorted(map(tuple, c4.tolist())) == [(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)]
    c6 = head_centres(6)  # 4 on the 2x2 grid, the 2 extra heads centred on the query
    assert c6[:4].tolist() == c4.tolist() and c6[4:].abs().sum() == 0
    layer = GPSA(24, 6, grid=(4, 4))
    layer.local_init()
    assert torch.equal(layer.pos_proj.weight[4:], torch.tensor([[0.0, 0.0, -1.0]] * 2))


def test_mhsa_dropout_only_in_training():
    torch.manual_seed(0)
    layer = MHSA(32, 4, attn_drop=0.5)
    x = torch.randn(2, 9, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("cls", [GPSA, FastGPSA])
def test_gpsa_rejects_class_token(cls):
    layer = cls(32, 4, grid=(4, 5))
    with pytest.raises(ValueError, match="21 tokens but its patch grid is 4x5"):
        layer(torch.randn(1, 21, 32))
