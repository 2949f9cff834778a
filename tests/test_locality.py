"""The locality measures of convit.analysis on known cases computed independently (numpy):
nonlocality (eq. 8), gates, attention centres and spans (eq. 7), per-query attention maps and
``locality_summary``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import GRID, grid_model

from convit.analysis import (
    attention_grids,
    attention_nonlocality,
    gates,
    locality_summary,
    nonlocality,
    patch_attention,
    positional_centres,
    positional_spans,
)
from convit.nn.attention import GPSA, gates_fixed

pytestmark = pytest.mark.usefixtures("one_thread")

# Centres of the convolutional init (dx, dy), written out by hand (paper eq. 7 / official code):
# 4 heads on a 2x2 grid centred on the query, 9 heads on a 3x3 grid, head = h1 + k * h2 with
# dx = h2 - c, dy = h1 - c.
CENTRES = {
    4: [(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)],
    9: [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)],
}


def np_offsets(grid):
    """(dx, dy) of every (query i, key j) pair, row-major patches; numpy, independent of convit."""
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    return cols[None, :] - cols[:, None], rows[None, :] - rows[:, None]


def np_closed_form_nonlocality(grid, centres, alpha):
    """D_h of the positional attention softmax_j(-alpha ||delta_ij - Delta_h||^2) (eqs. 7-8)."""
    dx, dy = np_offsets(grid)
    dist = np.sqrt(dx**2 + dy**2)
    out = []
    for cx, cy in centres:
        s = -alpha * ((dx - cx) ** 2 + (dy - cy) ** 2)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out.append((p * dist).sum(axis=1).mean())
    return np.array(out)


def np_mean_pairwise_distance(grid):
    dx, dy = np_offsets(grid)
    return np.sqrt(dx**2 + dy**2).mean()


def gpsa_layer(heads=4, alpha=1.0, grid=GRID) -> GPSA:
    torch.manual_seed(0)
    layer = GPSA(8 * heads, heads, locality_strength=alpha, grid=grid)
    layer.local_init()
    return layer


# -- nonlocality (eq. 8) --------------------------------------------------------------------


@pytest.mark.parametrize("heads,alpha", [(4, 1.0), (9, 0.4), (9, 2.5)])
def test_positional_nonlocality_matches_closed_form(heads, alpha):
    layer = gpsa_layer(heads, alpha)
    with gates_fixed(layer, 1.0):  # sigma(lambda) = 1: only the positional part
        maps = layer.attention_maps(torch.randn(3, GRID[0] * GRID[1], 8 * heads))
    got = attention_nonlocality(maps.combined, GRID).numpy()
    want = np_closed_form_nonlocality(GRID, CENTRES[heads], alpha)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attention_nonlocality(maps.positional, GRID).numpy(), want, rtol=1e-5)


def test_model_nonlocality_gates_to_one_is_closed_form():
    """Through the whole model, each GPSA layer on its own input: with sigma(lambda) = 1 the
    applied attention is the positional one, whatever the input."""
    model = grid_model(locality_strength=1.7)
    with torch.no_grad():
        for b in model.gpsa_blocks():
            b.attn.gating_param.fill_(1e4)  # sigmoid(1e4) == 1.0 in float32
    layers = nonlocality(model, torch.randn(4, 1, *GRID))
    want = np_closed_form_nonlocality(GRID, CENTRES[4], 1.7)
    for block in range(2):
        np.testing.assert_allclose(layers[block]["full"].numpy(), want, rtol=1e-5)
        np.testing.assert_allclose(layers[block]["positional"].numpy(), want, rtol=1e-5)
        assert layers[block]["content"] is not None
    assert layers[2]["content"] is None and layers[2]["positional"] is None


def test_uniform_head_has_mean_pairwise_distance():
    n = GRID[0] * GRID[1]
    uniform = torch.full((2, 3, n, n), 1.0 / n)
    np.testing.assert_allclose(
        attention_nonlocality(uniform, GRID).numpy(), [np_mean_pairwise_distance(GRID)] * 3, rtol=1e-6
    )
    # the same through GPSA: zero positional weights give a uniform positional attention
    layer = gpsa_layer(4)
    with torch.no_grad():
        layer.pos_proj.weight.zero_()
    np.testing.assert_allclose(
        attention_nonlocality(layer.positional_attention(), GRID).numpy(),
        [np_mean_pairwise_distance(GRID)] * 4,
        rtol=1e-6,
    )
    # a head that only looks at its query patch is perfectly local
    assert attention_nonlocality(torch.eye(n)[None], GRID).item() == 0.0


def test_class_token_is_dropped_and_rows_renormalised():
    """docs/analysis.md: for MHSA maps (class token at index 0) the class-token row and column
    are removed and each query row is renormalised over the patches."""
    n = GRID[0] * GRID[1]
    dx, dy = np_offsets(GRID)
    dist = np.sqrt(dx**2 + dy**2)
    rng = np.random.default_rng(0)
    p = rng.random((n, n))
    p /= p.sum(axis=1, keepdims=True)  # patch-to-patch part, rows sum to 1
    a = np.zeros((n + 1, n + 1))
    a[1:, 0] = 0.6  # 60 % of each patch query's attention on the class token
    a[1:, 1:] = 0.4 * p
    a[0] = rng.random(n + 1)  # class-token query: must be ignored
    a[0] /= a[0].sum()
    want = (p * dist).sum(axis=1).mean()  # renormalised: the 0.6 on the class token does not count
    got = attention_nonlocality(torch.tensor(a, dtype=torch.float32)[None, None], GRID).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(0.4 * want, rel=1e-2)  # not the unnormalised patch-to-patch mass
    np.testing.assert_allclose(patch_attention(torch.tensor(a)[None], n)[0].numpy(), p, rtol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        patch_attention(torch.ones(1, n + 2, n + 2), n)


# -- gates, centres, spans --------------------------------------------------------------------


def test_gates_read_back_exactly():
    model = grid_model()
    values = [[-2.0, 0.0, 0.5, 3.0], [1.0, -1.0, 4.0, -4.0]]
    with torch.no_grad():
        for b, v in zip(model.gpsa_blocks(), values):
            b.attn.gating_param.copy_(torch.tensor(v))
    want = [[1 / (1 + math.exp(-x)) for x in v] for v in values]
    for got, w in zip(gates(model), want):
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-6)
    summary = locality_summary(model, torch.randn(2, 1, *GRID))
    np.testing.assert_allclose(summary["gates"], want, rtol=1e-6)
    with gates_fixed(model, 0.0):  # masking does not change what is reported
        np.testing.assert_allclose(gates(model)[0].numpy(), want[0], rtol=1e-6)


@pytest.mark.parametrize("heads,alpha", [(4, 1.0), (9, 0.25), (9, 3.0)])
def test_centres_and_spans_at_init(heads, alpha):
    layer = gpsa_layer(heads, alpha)
    np.testing.assert_allclose(positional_centres(layer).numpy(), np.array(CENTRES[heads]), atol=1e-6)
    np.testing.assert_allclose(positional_spans(layer).numpy(), [1 / alpha] * heads, rtol=1e-6)


def test_centre_is_where_positional_attention_peaks():
    layer = gpsa_layer(4, 2.0, grid=(9, 9))
    with torch.no_grad():  # head 0: score 2 dx - 4 dy - 0.5 d^2 peaks at Delta = (2, -4); span 2
        layer.pos_proj.weight[0] = torch.tensor([2.0, -4.0, -0.5])
        layer.pos_proj.weight[1] = torch.tensor([1.0, 0.0, 0.5])  # convex: no peak
    assert positional_centres(layer)[0].tolist() == pytest.approx([2.0, -4.0])
    assert positional_spans(layer)[0].item() == pytest.approx(2.0)
    assert torch.isnan(positional_centres(layer)[1]).all()
    with gates_fixed(layer, 1.0):
        grids = attention_grids_from_layer(layer, (4, 4))
    r, c = divmod(int(grids[0].argmax()), 9)
    assert (r, c) == (4 - 4, 4 + 2)  # dy = -4 rows up, dx = +2 columns right


def attention_grids_from_layer(layer: GPSA, query):
    h, w = layer.grid
    pos = layer.positional_attention()
    return pos[:, query[0] * w + query[1]].reshape(-1, h, w)


def test_attention_grids_orientation_and_class_token():
    model = grid_model(num_heads=9, embed_dim=18, img_size=(5, 7))
    with torch.no_grad():
        for b in model.gpsa_blocks():
            b.attn.gating_param.fill_(1e4)
    grids = attention_grids(model, torch.randn(1, *GRID), query=(2, 3))
    assert grids[0]["positional"].shape == (9, 5, 7)
    for head, (cx, cy) in enumerate(CENTRES[9]):  # peak at the query + Delta_h (row + dy, col + dx)
        r, c = divmod(int(grids[0]["combined"][head].argmax()), 7)
        assert (r, c) == (2 + cy, 3 + cx)
    mhsa = grids[2]
    assert mhsa["positional"] is None and mhsa["gate"] is None
    assert mhsa["cls_mass"].shape == (9,)
    np.testing.assert_allclose(mhsa["combined"].sum(dim=(1, 2)).numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        attention_grids(model, torch.randn(1, *GRID), query=(5, 0))


# -- locality_summary -----------------------------------------------------------------------


def test_locality_summary_is_json_and_restores_training_mode():
    model = grid_model(drop_path_rate=0.1, attn_drop_rate=0.1)
    model.train()
    model.blocks[2].eval()  # a mixed state must come back as it was
    summary = locality_summary(model, torch.randn(70, 1, *GRID))
    assert model.training and not model.blocks[2].training and model.blocks[1].training
    json.dumps(summary, allow_nan=False)
    assert summary["num_images"] == 64
    assert summary["layer_types"] == ["gpsa", "gpsa", "mhsa"]
    assert len(summary["nonlocality"]) == 3 and all(len(h) == 4 for h in summary["nonlocality"])
    assert summary["nonlocality_content"][2] is None and summary["nonlocality_positional"][2] is None
    assert len(summary["gates"]) == len(summary["centres"]) == len(summary["spans"]) == 2
    assert summary["grid"] == [5, 7]
    # eval mode inside: the same call twice gives the same numbers despite dropout
    assert locality_summary(model, torch.randn(70, 1, *GRID).fill_(0.3)) == locality_summary(
        model, torch.randn(70, 1, *GRID).fill_(0.3)
    )


def test_nonlocality_in_chunks_equals_one_batch():
    model = grid_model()
    x = torch.randn(11, 1, *GRID)
    whole, parts = nonlocality(model, x, chunk=11), nonlocality(model, x, chunk=4)
    for a, b in zip(whole, parts):
        for key in ("full", "content", "positional"):
            if a[key] is None:
                assert b[key] is None
            else:
                torch.testing.assert_close(a[key], b[key])
