"""GPSA: the fast path against the paper's explicit formula, the offsets and the local init."""
import math

import pytest
import torch

from convit.attention import GPSA, MHSA, head_centres, relative_offsets


def _random_gpsa(heads=4, dim=32, grid=(4, 5), seed=0, **kw) -> GPSA:
    torch.manual_seed(seed)
    layer = GPSA(dim, heads, grid=grid, **kw)
    layer.local_init()
    with torch.no_grad():  # move away from the init: random gates, positions, values
        layer.gating_param.copy_(torch.randn(heads) * 2)
        layer.pos_proj.weight.add_(torch.randn_like(layer.pos_proj.weight) * 0.3)
        layer.v.weight.add_(torch.randn_like(layer.v.weight) * 0.1)
    return layer


def _paper_eq6(layer: GPSA, x: torch.Tensor) -> torch.Tensor:
    """Eq. 6 written out independently of the layer's helpers, in float64."""
    layer = layer.double()
    x = x.double()
    B, N, C = x.shape
    h, d = layer.num_heads, C // layer.num_heads
    q, k = layer.qk(x).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
    v = layer.v(x).view(B, N, h, d).transpose(1, 2)
    H, W = layer.grid
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    rows, cols = rows.flatten().double(), cols.flatten().double()
    dx, dy = cols[None] - cols[:, None], rows[None] - rows[:, None]
    r = torch.stack([dx, dy, dx ** 2 + dy ** 2], -1)  # [N, N, 3]
    pos = (r @ layer.pos_proj.weight.T + layer.pos_proj.bias).permute(2, 0, 1).softmax(-1)
    content = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)
    g = torch.sigmoid(layer.gating_param).view(1, h, 1, 1)
    attn = (1 - g) * content + g * pos
    out = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return layer.proj(out)


@pytest.mark.parametrize("train", [False, True])
def test_fast_path_equals_explicit_formula(train):
    layer = _random_gpsa()
    x = torch.randn(3, 20, 32)
    ref = _paper_eq6(_random_gpsa(), x)
    layer.train(train)
    out = layer(x)
    assert (out.double() - ref).abs().max() < 1e-5


def test_fast_path_gradients_equal_explicit_path():
    layer = _random_gpsa()
    x = torch.randn(2, 20, 32, requires_grad=True)
    layer.train()
    fast = layer(x)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), [x])
    slow = layer.forward_reference(x)
    (g_slow,) = torch.autograd.grad(slow.square().sum(), [x])
    assert (fast - slow).abs().max() < 1e-5
    assert (g_fast - g_slow).norm() / g_slow.norm() < 1e-5


def test_fast_path_under_bf16_autocast():
    layer = _random_gpsa(heads=9, dim=72, grid=(6, 6))
    x = torch.randn(4, 36, 72)
    ref = _paper_eq6(_random_gpsa(heads=9, dim=72, grid=(6, 6)), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < 1e-2


def test_explicit_maps_sum_to_one_and_mix_with_gate():
    layer = _random_gpsa()
    maps = layer.attention_maps(torch.randn(2, 20, 32))
    assert maps.content.shape == (2, 4, 20, 20) and maps.positional.shape == (4, 20, 20)
    assert torch.allclose(maps.combined.sum(-1), torch.ones(2, 4, 20), atol=1e-5)
    assert torch.allclose(maps.gate, torch.sigmoid(layer.gating_param))
    layer.gate_override = 0.0
    assert torch.equal(layer.attention_maps(torch.randn(1, 20, 32)).gate, torch.zeros(4))


def test_positional_cache_follows_weight_updates():
    layer = _random_gpsa().eval()
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        a = layer(x)
        layer.pos_proj.weight.mul_(0.5)  # an optimizer step or load_state_dict does the same
        b = layer(x)
    assert (a - b).abs().max() > 1e-4
    assert (b.double() - _paper_eq6(layer, x)).abs().max() < 1e-5


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


def test_gpsa_rejects_class_token():
    layer = GPSA(32, 4, grid=(4, 5))
    with pytest.raises(ValueError, match="21 tokens but its patch grid is 4x5"):
        layer(torch.randn(1, 21, 32))
