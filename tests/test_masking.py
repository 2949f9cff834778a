"""Test-time masking (convit.analysis.masking): masking the content or positional part of the
first k GPSA layers equals forcing their gates, the position embedding can be removed, and
everything is restored afterwards."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import GRID, grid_model, with_gates

from convit.analysis import evaluate_masked, masked, masking_table

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("k", [1, 2])
def test_masking_equals_extreme_gates(k):
    model = grid_model().eval()
    x = torch.randn(6, 1, *GRID)
    with torch.no_grad():
        base = model(x)
        with masked(model, "positional", k):  # content only == sigma(lambda) = 0
            pos_masked = model(x)
        with masked(model, "content", k):  # positional only == sigma(lambda) = 1
            content_masked = model(x)
        torch.testing.assert_close(pos_masked, with_gates(model, k, -1e4)(x))
        torch.testing.assert_close(content_masked, with_gates(model, k, 1e4)(x))
        assert not torch.allclose(pos_masked, base) and not torch.allclose(content_masked, base)
        assert all(
            torch.equal(b.attn.gate(), torch.sigmoid(b.attn.gating_param)) for b in model.gpsa_blocks()
        )
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)


def test_removing_position_embedding_and_restoring_it():
    model = grid_model().eval()
    x = torch.randn(4, 1, *GRID)
    saved = model.pos_embed.detach().clone()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.pos_embed.zero_()
        with masked(model, remove_pos_embed=True):
            torch.testing.assert_close(model(x), other(x))
    assert torch.equal(model.pos_embed, saved)
    with pytest.raises(RuntimeError):  # restored even when the block raises
        with masked(model, "positional", 1, remove_pos_embed=True):
            raise RuntimeError("boom")
    attn = model.blocks[0].attn
    assert torch.equal(model.pos_embed, saved) and torch.equal(attn.gate(), torch.sigmoid(attn.gating_param))
    with pytest.raises(ValueError, match="mode"):
        with masked(model, "everything"):
            pass
    with pytest.raises(ValueError, match="outside"):
        with masked(model, "content", 3):
            pass


def test_evaluate_masked_counts_and_restores_mode():
    model = grid_model()
    model.train()
    x = torch.randn(10, 1, *GRID)
    with torch.no_grad():
        model.eval()
        y = model(x).argmax(-1)
        model.train()
    loader = [(x[:6], y[:6]), (x[6:], (y[6:] + 1) % 3)]  # 6 right, 4 wrong
    assert evaluate_masked(model, loader) == pytest.approx(60.0)
    assert model.training


def test_masking_table_rows_match_evaluate_masked():
    model = grid_model().eval()
    x = torch.randn(12, 1, *GRID)
    with torch.no_grad():
        y = model(x).argmax(-1)
    loader = [(x[:7], y[:7]), (x[7:], y[7:])]
    rows = masking_table(model, loader, ks=[2])
    assert [(r["mode"], r["k"], r["remove_pos_embed"]) for r in rows] == [
        ("none", 0, False),
        ("content", 2, False),
        ("positional", 2, False),
        ("none", 0, True),
    ]
    assert rows[0]["top1"] == 100.0
    assert rows[2]["top1"] == evaluate_masked(with_gates(model, 2, -1e4), loader)
