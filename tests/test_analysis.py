"""Tests of convit.analysis: known cases computed independently (numpy), masking, report, CLI."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from convit import ConViT, ConViTConfig, create_model
from convit.analysis import (attention_grids, attention_nonlocality, evaluate_masked, gates,
                             locality_summary, masked, nonlocality, patch_attention,
                             positional_centres, positional_spans)
from convit.attention import GPSA
from convit.checkpoint import save_model
from convit.data import build_data
from convit.fileio import read_jsonl

GRID = (5, 7)  # non-square on purpose: H=5 rows, W=7 columns
# Centres of the convolutional init (dx, dy), written out by hand (paper eq. 7 / official code):
# 4 heads on a 2x2 grid centred on the query, 9 heads on a 3x3 grid, head = h1 + k * h2 with
# dx = h2 - c, dy = h1 - c.
CENTRES = {
    4: [(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)],
    9: [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)],
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: on a shared CPU, more intra-op threads only add contention (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def np_offsets(grid):
    """(dx, dy) of every (query i, key j) pair, row-major patches; numpy, independent of convit."""
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    return cols[None, :] - cols[:, None], rows[None, :] - rows[:, None]


def np_closed_form_nonlocality(grid, centres, alpha):
    """D_h of the positional attention softmax_j(-alpha ||delta_ij - Delta_h||^2) (eqs. 7-8)."""
    dx, dy = np_offsets(grid)
    dist = np.sqrt(dx ** 2 + dy ** 2)
    out = []
    for cx, cy in centres:
        s = -alpha * ((dx - cx) ** 2 + (dy - cy) ** 2)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out.append((p * dist).sum(axis=1).mean())
    return np.array(out)


def np_mean_pairwise_distance(grid):
    dx, dy = np_offsets(grid)
    return np.sqrt(dx ** 2 + dy ** 2).mean()


def tiny_cfg(**kw) -> ConViTConfig:
    base = dict(img_size=(5, 7), patch_size=1, in_chans=1, num_classes=3, embed_dim=16, num_heads=4,
                depth=3, local_up_to_layer=2, locality_strength=1.0)
    base.update(kw)
    return ConViTConfig(**base)


def gpsa_layer(heads=4, alpha=1.0, grid=GRID) -> GPSA:
    torch.manual_seed(0)
    layer = GPSA(8 * heads, heads, locality_strength=alpha, grid=grid)
    layer.local_init()
    return layer


# -- nonlocality (eq. 8) --------------------------------------------------------------------

@pytest.mark.parametrize("heads,alpha", [(4, 1.0), (9, 0.4), (9, 2.5)])
def test_positional_nonlocality_matches_closed_form(heads, alpha):
    layer = gpsa_layer(heads, alpha)
    layer.gate_override = 1.0  # sigma(lambda) = 1: only the positional part
    maps = layer.attention_maps(torch.randn(3, GRID[0] * GRID[1], 8 * heads))
    got = attention_nonlocality(maps.combined, GRID).numpy()
    want = np_closed_form_nonlocality(GRID, CENTRES[heads], alpha)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attention_nonlocality(maps.positional, GRID).numpy(), want, rtol=1e-5)


def test_model_nonlocality_gates_to_one_is_closed_form():
    """Through the whole model, each GPSA layer on its own input: with sigma(lambda) = 1 the
    applied attention is the positional one, whatever the input."""
    torch.manual_seed(0)
    model = ConViT(tiny_cfg(locality_strength=1.7))
    with torch.no_grad():
        for b in model.gpsa_blocks():
            b.attn.gating_param.fill_(1e4)  # sigmoid(1e4) == 1.0 in float32
    layers = nonlocality(model, torch.randn(4, 1, *GRID))
    want = np_closed_form_nonlocality(GRID, CENTRES[4], 1.7)
    for l in range(2):
        np.testing.assert_allclose(layers[l]["full"].numpy(), want, rtol=1e-5)
        np.testing.assert_allclose(layers[l]["positional"].numpy(), want, rtol=1e-5)
        assert layers[l]["content"] is not None
    assert layers[2]["content"] is None and layers[2]["positional"] is None


def test_uniform_head_has_mean_pairwise_distance():
    n = GRID[0] * GRID[1]
    uniform = torch.full((2, 3, n, n), 1.0 / n)
    np.testing.assert_allclose(attention_nonlocality(uniform, GRID).numpy(),
                               [np_mean_pairwise_distance(GRID)] * 3, rtol=1e-6)
    # the same through GPSA: zero positional weights give a uniform positional attention
    layer = gpsa_layer(4)
    with torch.no_grad():
        layer.pos_proj.weight.zero_()
    np.testing.assert_allclose(attention_nonlocality(layer.positional_attention(), GRID).numpy(),
                               [np_mean_pairwise_distance(GRID)] * 4, rtol=1e-6)
    # a head that only looks at its query patch is perfectly local
    assert attention_nonlocality(torch.eye(n)[None], GRID).item() == 0.0


def test_class_token_is_dropped_and_rows_renormalised():
    """docs/analysis.md: for MHSA maps (class token at index 0) the class-token row and column
    are removed and each query row is renormalised over the patches."""
    n = GRID[0] * GRID[1]
    dx, dy = np_offsets(GRID)
    dist = np.sqrt(dx ** 2 + dy ** 2)
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
    model = ConViT(tiny_cfg())
    values = [[-2.0, 0.0, 0.5, 3.0], [1.0, -1.0, 4.0, -4.0]]
    with torch.no_grad():
        for b, v in zip(model.gpsa_blocks(), values):
            b.attn.gating_param.copy_(torch.tensor(v))
    want = [[1 / (1 + math.exp(-x)) for x in v] for v in values]
    for got, w in zip(gates(model), want):
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-6)
    summary = locality_summary(model, torch.randn(2, 1, *GRID))
    np.testing.assert_allclose(summary["gates"], want, rtol=1e-6)
    model.blocks[0].attn.gate_override = 0.0  # masking does not change what is reported
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
    layer.gate_override = 1.0
    grids = attention_grids_from_layer(layer, (4, 4))
    r, c = divmod(int(grids[0].argmax()), 9)
    assert (r, c) == (4 - 4, 4 + 2)  # dy = -4 rows up, dx = +2 columns right


def attention_grids_from_layer(layer: GPSA, query):
    h, w = layer.grid
    pos = layer.positional_attention()
    return pos[:, query[0] * w + query[1]].reshape(-1, h, w)


def test_attention_grids_orientation_and_class_token():
    torch.manual_seed(0)
    model = ConViT(tiny_cfg(num_heads=9, embed_dim=18, img_size=(5, 7)))
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
    torch.manual_seed(0)
    model = ConViT(tiny_cfg(drop_path_rate=0.1, attn_drop_rate=0.1))
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
    assert locality_summary(model, torch.randn(70, 1, *GRID).fill_(0.3)) == \
        locality_summary(model, torch.randn(70, 1, *GRID).fill_(0.3))


def test_nonlocality_in_chunks_equals_one_batch():
    torch.manual_seed(0)
    model = ConViT(tiny_cfg())
    x = torch.randn(11, 1, *GRID)
    whole, parts = nonlocality(model, x, chunk=11), nonlocality(model, x, chunk=4)
    for a, b in zip(whole, parts):
        for key in ("full", "content", "positional"):
            if a[key] is None:
                assert b[key] is None
            else:
                torch.testing.assert_close(a[key], b[key])


# -- test-time masking ----------------------------------------------------------------------

def _with_gating(model, k, value):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for b in other.gpsa_blocks()[:k]:
            b.attn.gating_param.fill_(value)
    return other.eval()


@pytest.mark.parametrize("k", [1, 2])
def test_masking_equals_extreme_gates(k):
    torch.manual_seed(0)
    model = ConViT(tiny_cfg()).eval()
    x = torch.randn(6, 1, *GRID)
    with torch.no_grad():
        base = model(x)
        with masked(model, "positional", k):  # content only == sigma(lambda) = 0
            pos_masked = model(x)
        with masked(model, "content", k):  # positional only == sigma(lambda) = 1
            content_masked = model(x)
        torch.testing.assert_close(pos_masked, _with_gating(model, k, -1e4)(x))
        torch.testing.assert_close(content_masked, _with_gating(model, k, 1e4)(x))
        assert not torch.allclose(pos_masked, base) and not torch.allclose(content_masked, base)
        assert all(b.attn.gate_override is None for b in model.gpsa_blocks())
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)


def test_removing_position_embedding_and_restoring_it():
    torch.manual_seed(0)
    model = ConViT(tiny_cfg()).eval()
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
    assert torch.equal(model.pos_embed, saved) and model.blocks[0].attn.gate_override is None
    with pytest.raises(ValueError, match="mode"):
        with masked(model, "everything"):
            pass
    with pytest.raises(ValueError, match="outside"):
        with masked(model, "content", 3):
            pass


def test_evaluate_masked_counts_and_restores_mode():
    torch.manual_seed(0)
    model = ConViT(tiny_cfg())
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
    from convit.analysis import masking_table

    torch.manual_seed(0)
    model = ConViT(tiny_cfg()).eval()
    x = torch.randn(12, 1, *GRID)
    with torch.no_grad():
        y = model(x).argmax(-1)
    loader = [(x[:7], y[:7]), (x[7:], y[7:])]
    rows = masking_table(model, loader, ks=[2])
    assert [(r["mode"], r["k"], r["remove_pos_embed"]) for r in rows] == [
        ("none", 0, False), ("content", 2, False), ("positional", 2, False), ("none", 0, True)]
    assert rows[0]["top1"] == 100.0
    assert rows[2]["top1"] == evaluate_masked(_with_gating(model, 2, -1e4), loader)


# -- report and CLI (integration) -----------------------------------------------------------

def _digits_meta():
    return {"class_names": [str(i) for i in range(10)],
            "data": {"mean": [0.3], "std": [0.4], "img_size": 8, "in_chans": 1, "dataset": "digits"}}


def make_run(run_dir: Path, name: str, epochs: int = 2) -> Path:
    """A run directory made by hand: our model file and a fabricated log whose locality entries
    come from locality_summary."""
    torch.manual_seed(0)
    model = create_model(name, depth=3, local_up_to_layer=2 if name.startswith("convit") else 0,
                         embed_dim=32)
    images = torch.randn(16, 1, 8, 8)
    run_dir.mkdir(parents=True)
    with open(run_dir / "log.jsonl", "w") as f:
        for epoch in range(epochs):
            with torch.no_grad():
                for b in model.gpsa_blocks():
                    b.attn.gating_param.sub_(0.5)
            f.write(json.dumps({"epoch": epoch + 1, "train_loss": 2.0 - 0.3 * epoch, "lr": 1e-3,
                                "val_top1": 20.0 + 10 * epoch, "val_top5": 60.0, "val_loss": 2.1 - 0.3 * epoch,
                                "test_top1": 18.0 + 10 * epoch, "locality": locality_summary(model, images)})
                    + "\n")
        f.write('{"epoch": 3, "train_lo')  # a run still writing its log: skipped
    save_model(model, run_dir / "model.safetensors", extra=_digits_meta())
    return run_dir


EXPECTED_CONVIT = {"nonlocality_training.png", "training_curves.png", "nonlocality_layers.png",
                   "gates.png", "centres_spans.png", "attention_layer1.png", "attention_layer2.png",
                   "attention_layer3.png", "locality.json"}


def test_load_inputs_falls_back_to_random_with_a_note():
    from convit.analysis.report import load_inputs

    inputs = load_inputs(tiny_cfg(), {})
    assert inputs.source == "random input" and "random" in inputs.note
    assert inputs.images.shape == (8, 1, 5, 7) and inputs.display.min() >= 0 and inputs.display.max() <= 1
    meta = {"data": json.dumps({"dataset": "no-such-set", "mean": [0.5], "std": [0.5]})}
    inputs = load_inputs(tiny_cfg(), meta)
    assert "no-such-set" in inputs.note and "random" in inputs.note
    with pytest.raises(ValueError, match="metadata"):
        load_inputs(tiny_cfg(), {}, image=Path("x.png"))


def test_write_run_report(tmp_path):
    from convit.analysis.report import write_run_report

    run = make_run(tmp_path / "convit_run", "convit_digits")
    paths = write_run_report(run, masking=True)
    assert {p.name for p in paths} == EXPECTED_CONVIT | {"masking.json", "report.html"}
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    assert all(p.parent == run / "figures" for p in paths if p.suffix == ".png")
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 8
    assert "Gates and nonlocality per layer" in html and "first test image of digits" in html
    assert "Test-time masking" in html
    assert (run / "figures" / "gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((run / "figures" / "masking.json").read_text())
    assert [(r["mode"], r["k"], r["remove_pos_embed"]) for r in rows] == [
        ("none", 0, False), ("content", 1, False), ("content", 2, False),
        ("positional", 1, False), ("positional", 2, False), ("none", 0, True)]
    # The table is measured on the whole test split of the run's dataset: its unmasked row is the
    # model's test accuracy, and a masked row that of the model with those gates forced.
    model = create_model(checkpoint_path=run / "model.safetensors").eval()
    test = torch.utils.data.DataLoader(build_data("digits", augment="none").test, batch_size=256)
    assert rows[0]["top1"] == evaluate_masked(model, test)
    assert rows[4]["top1"] == evaluate_masked(_with_gating(model, 2, -1e4), test)  # positional masked


def test_cli_analyze_two_runs_and_image(tmp_path, capsys):
    from PIL import Image

    from convit.cli import main

    a = make_run(tmp_path / "convit", "convit_digits")
    b = make_run(tmp_path / "deit", "deit_digits")
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["analyze", str(a / "model.safetensors"), "--log", str(a / "log.jsonl"),
               "--log", str(b / "log.jsonl"), "--image", str(img), "--output", str(out),
               "--layers", "2", "--heads", "1", "3", "--query", "1", "2"])
    assert rc == 0
    printed = [Path(l) for l in capsys.readouterr().out.split()]
    assert {p.name for p in printed} == {"nonlocality_training.png", "training_curves.png",
                                         "nonlocality_layers.png", "gates.png", "centres_spans.png",
                                         "attention_layer2.png", "locality.json", "report.html"}
    assert all(p.is_file() for p in printed)
    assert "image digit.png" in (out / "report.html").read_text()
    # a DeiT: no GPSA figures; default output beside the checkpoint; default log beside it
    rc = main(["analyze", str(b / "model.safetensors"), "--no-html"])
    assert rc == 0
    names = {Path(l).name for l in capsys.readouterr().out.split()}
    assert names == {"nonlocality_training.png", "training_curves.png", "nonlocality_layers.png",
                     "attention_layer1.png", "attention_layer3.png", "locality.json"}
    assert (b / "analysis" / "attention_layer1.png").is_file()
    assert main(["analyze", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["analyze", str(a / "model.safetensors"), "--heads", "9"]) == 2
    assert "out of range" in capsys.readouterr().err


# -- end to end with the trainer --------------------------------------------------------------

def test_train_then_analyze(trained_run, tmp_path, capsys):
    """`convit train` (the shared 2-epoch tiny ConViT run) logs locality every epoch and writes
    the report through write_run_report; `convit analyze` then works on the run folder."""
    from convit.cli import main

    run = trained_run.folder
    entries = read_jsonl(run / "log.jsonl")
    assert [e["epoch"] for e in entries] == [1, 2]
    loc = entries[-1]["locality"]
    assert loc["layer_types"] == ["gpsa", "mhsa"] and len(loc["gates"]) == 1
    # The logged locality is that of the final model on the first 64 validation images.
    model = create_model(checkpoint_path=run / "model.safetensors")
    val = build_data("digits", val_fraction=0.1, sampling_ratio=0.2, augment="none").val
    assert locality_summary(model, torch.stack([val[i][0] for i in range(64)])) == loc
    figures = {p.name for p in (run / "figures").iterdir()}
    assert {"nonlocality_training.png", "gates.png", "centres_spans.png", "attention_layer1.png",
            "training_curves.png"} <= figures
    assert (run / "report.html").read_text().count("data:image/png;base64,") >= 7
    rc = main(["analyze", str(run / "model.safetensors"), "--output", str(tmp_path / "a"),
               "--layers", "1", "--no-html"])
    assert rc == 0
    printed = {Path(l).name for l in capsys.readouterr().out.split()}
    assert {"nonlocality_training.png", "gates.png", "attention_layer1.png"} <= printed
