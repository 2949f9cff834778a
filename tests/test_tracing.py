"""Graph capture is correct: jit.trace, torch.export and ONNX record P from ``pos_proj``.

GPSA caches its positional attention P in eager inference.  A tracer that recorded the
cached tensor would keep it as a constant: the captured model then ignores the ``pos_proj``
weights loaded into it later.  Each test therefore warms the cache with one set of weights,
captures, loads *different* weights and compares with an eager model that holds them.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import convit
from convit.commands.export import export_onnx
from convit.nn.fast_gpsa import is_tracing

# Small but real: 3 GPSA + 1 MHSA blocks on a 4x4 grid, 3 input channels, class token.
KW = dict(img_size=16, patch_size=4, embed_dim=32, num_heads=4, depth=4, local_up_to_layer=3, num_classes=5)


def _models():
    """Model ``a`` holding weights B behind a STALE cache of A's P, and model ``b`` with B.

    Writing through ``.data`` bypasses the version counters the eager cache is keyed on (the
    documented way to make it stale), so eager ``a`` would still use A's P.  Any capture that
    reads the cache gives A's P; one that computes P from ``pos_proj`` gives ``b``'s logits.
    """
    torch.manual_seed(0)
    a = convit.create_model("convit_tiny", **KW).eval()
    b = convit.create_model("convit_tiny", **KW).eval()
    with torch.no_grad():
        for p in b.parameters():  # move every weight, pos_proj included, far from a's
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        a(x)  # warms every GPSA block's cache of P (A's weights)
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.data.copy_(pb.data)
    assert all(blk.attn._pos_cache is not None for blk in a.gpsa_blocks())
    with torch.no_grad():  # the premise: eager a now differs from b only through the stale P
        assert (a(x) - b(x)).abs().max() > 1e-2
        assert torch.equal(a.gpsa_blocks()[0].attn.pos_proj.weight, b.gpsa_blocks()[0].attn.pos_proj.weight)
    return a, b, x


def _other_weights(model):
    """A state dict of the same architecture with other weights."""
    sd = {
        k: v + torch.randn_like(v) * 0.3 if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    return sd


def test_is_tracing_is_false_in_eager_and_true_under_fx_and_jit():
    assert not is_tracing()
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(is_tracing())
            return x + 1

    torch.fx.symbolic_trace(Probe())
    torch.jit.trace(Probe(), torch.zeros(1))
    assert seen[0] is True and seen[1] is True


def test_jit_trace_of_a_cold_model_passes_check_trace_and_follows_loaded_weights():
    torch.manual_seed(0)
    cold = convit.create_model("convit_tiny", **KW).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(cold, x, check_trace=True)  # raises if two invocations differ
    _, b, _ = _models()
    missing = traced.load_state_dict(b.state_dict(), strict=False).missing_keys
    assert missing and all(k.endswith("attn.rel_indices") for k in missing)  # non-persistent buffer
    with torch.no_grad():
        torch.testing.assert_close(traced(x), b(x), rtol=1e-5, atol=1e-5)


def test_jit_trace_with_a_stale_cache_computes_p_from_the_weights():
    a, b, x = _models()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(a, x, check_trace=True)
        torch.testing.assert_close(traced(x), b(x), rtol=1e-5, atol=1e-5)
        # ... and keeps following the weights loaded later (it shares a's parameters).
        sd = _other_weights(b)
        b.load_state_dict(sd)
        traced.load_state_dict(sd, strict=False)
        torch.testing.assert_close(traced(x), b(x), rtol=1e-5, atol=1e-5)


def test_fx_symbolic_trace_with_a_stale_cache_computes_p_from_the_weights():
    a, b, x = _models()
    with torch.no_grad():
        gm = torch.fx.symbolic_trace(a)
        torch.testing.assert_close(gm(x), b(x), rtol=1e-5, atol=1e-5)
        sd = _other_weights(b)
        b.load_state_dict(sd)
        gm.load_state_dict(sd, strict=False)
        torch.testing.assert_close(gm(x), b(x), rtol=1e-5, atol=1e-5)
        # The input checks are graph calls, so the traced module still refuses wrong images.
        with pytest.raises(ValueError, match="input channels"):
            gm(torch.randn(1, 1, *x.shape[-2:]))


def test_torch_export_follows_loaded_weights():
    a, b, x = _models()
    with torch.no_grad():
        gm = torch.export.export(a, (x,)).module()
        torch.testing.assert_close(gm(x), b(x), rtol=1e-5, atol=1e-5)
        sd = _other_weights(b)
        b.load_state_dict(sd)
        gm.load_state_dict(sd, strict=False)
        torch.testing.assert_close(gm(x), b(x), rtol=1e-5, atol=1e-5)


def _run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime", reason="running the ONNX file needs `pip install onnxruntime`")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])


def test_onnx_export_with_a_stale_cache(tmp_path):
    """`convit export`'s ONNX path (the dynamo-based exporter, dynamic batch axis)."""
    onnx = pytest.importorskip("onnx", reason="ONNX export needs `pip install onnx onnxscript`")
    pytest.importorskip("onnxscript", reason="ONNX export needs `pip install onnx onnxscript`")
    a, b, x = _models()
    path = export_onnx(a, tmp_path / "model.onnx")
    onnx.checker.check_model(str(path))
    with torch.no_grad():
        for xb in (x, x[:1], torch.cat([x, x])):  # batch 3 (the example was 2), 1 and 6: dynamic
            torch.testing.assert_close(_run_onnx(path, xb), b(xb), rtol=1e-4, atol=1e-4)
