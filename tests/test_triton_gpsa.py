"""The fused GPSA kernel (convit/nn/triton_gpsa.py, convit/nn/gpsa_kernel_ops.py) against eq. 6.

With CUDA the checks run the compiled kernel on the GPU.  Without, they run it in Triton's CPU
interpreter: ``TRITON_INTERPRET=1`` is set for this module's tests (the kernel module is first
imported under it, so ``triton.jit`` makes interpreted kernels, and Triton reads it again at
launch), and the layer may choose the kernel on the CPU (``triton_gpsa.DEVICES``).  Only where
triton cannot import are the kernel's tests skipped; the tests of when the kernel is chosen run
everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from contextlib import nullcontext

import pytest
import torch
from conftest import REPO, rel_error, sharp_gpsa

from convit.nn import triton_gpsa
from convit.nn.attention import GPSA, gates_fixed

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
NO_TRITON = "triton cannot import here: the fused GPSA kernel is not tested"


def _interpreting() -> bool:
    """Whether kernels run in Triton's interpreter in this process: TRITON_INTERPRET=1 was set
    before triton was imported (its own library functions are decorated at import, and pytest's
    conftest already imports torch._dynamo, which imports triton)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    if "triton" not in sys.modules:
        return True
    import triton.language as tl

    return type(tl.sum).__name__ == "InterpretedFunction"


@pytest.fixture(scope="module")
def kernel():
    """The kernel module: compiled with CUDA, interpreted without (in the child process of
    :func:`test_kernel_checks_in_triton_interpreter`); skips where triton cannot import."""
    if importlib.util.find_spec("triton") is None or not hasattr(torch.library, "custom_op"):
        pytest.skip(NO_TRITON)
    if not CUDA and not _interpreting():
        pytest.skip(
            "no GPU: run interpreted by test_kernel_checks_in_triton_interpreter (TRITON_INTERPRET=1)"
        )
    try:
        return triton_gpsa.kernel_ops()
    except ImportError as e:
        pytest.skip(f"{NO_TRITON} ({e})")


@pytest.mark.slow  # a child pytest: torch's import alone takes seconds
def test_kernel_checks_in_triton_interpreter(request):
    """Without a GPU, this module's kernel tests run in one child pytest with TRITON_INTERPRET=1
    from the start (the same marker selection as this run)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip(NO_TRITON)
    if CUDA or _interpreting():
        pytest.skip("the kernel tests run in this process")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    cmd += ["-m", request.config.getoption("markexpr") or "", "-k", "not in_triton_interpreter"]
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-2000:]


@pytest.fixture
def calls(monkeypatch) -> list:
    """The layer may choose the kernel on this test's device; the list grows by one per call."""
    seen: list = []
    real = triton_gpsa.fused_gpsa

    def counted(*args, **kwargs):
        seen.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_gpsa, "fused_gpsa", counted)
    monkeypatch.setattr(triton_gpsa, "DEVICES", ("cuda", DEVICE.type))
    return seen


def fixed(layer, gate):
    """The gates fixed at ``gate`` within the block (None: left free)."""
    return nullcontext() if gate is None else gates_fixed(layer, gate)


def _layer(heads, d, grid, gates=None, train=False):
    return sharp_gpsa(heads, heads * d, grid, gates=gates).to(DEVICE).train(train)


def _x(batch, grid, dim, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, grid[0] * grid[1], dim, generator=g).to(DEVICE)


def _eq6_float64(layer, x):
    """The paper's eq. 6 in float64 on a float64 copy of ``layer`` (gates_fixed included)."""
    ref = _layer(layer.num_heads, layer.head_dim, layer.grid)
    ref.load_state_dict(layer.state_dict())
    ref._gate_fixed = layer._gate_fixed
    with torch.no_grad():
        return GPSA.forward(ref.double(), x.double())


def test_kernel_is_interpreted_without_a_gpu(kernel):
    if CUDA:
        pytest.skip("with CUDA the kernel is compiled, not interpreted")
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(kernel._gpsa_fwd_kernel, InterpretedFunction)
    assert isinstance(kernel._pos_lse_kernel, InterpretedFunction)


# (heads, head dim, grid, batch): ConViT's head dim 48 and 64, square and non-square grids.
SHAPES = [(4, 48, (4, 4), 3), (9, 48, (3, 5), 1), (4, 64, (7, 7), 1), (9, 64, (3, 5), 3)]


@pytest.mark.parametrize("gate", [None, 0.0, 1.0], ids=["free", "fixed0", "fixed1"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"h{s[0]}d{s[1]}g{s[2][0]}x{s[2][1]}b{s[3]}")
def test_kernel_equals_eq6_in_float32(kernel, calls, shape, gate):
    heads, d, grid, batch = shape
    layer = _layer(heads, d, grid)
    x = _x(batch, grid, heads * d)
    with torch.no_grad(), fixed(layer, gate):
        out = layer(x)
        ref = _eq6_float64(layer, x)
    assert calls == [torch.float32]
    assert rel_error(out.double(), ref) < 1e-5


@pytest.mark.parametrize("lam", [-9.0, 9.0], ids=["gates_near_0", "gates_near_1"])
@pytest.mark.parametrize("shape", SHAPES[:2], ids=["h4g4x4", "h9g3x5"])
def test_kernel_equals_eq6_with_extreme_gates(kernel, calls, shape, lam):
    heads, d, grid, batch = shape
    layer = _layer(heads, d, grid, gates=[lam] * heads)
    x = _x(batch, grid, heads * d)
    with torch.no_grad():
        out = layer(x)
    assert calls and rel_error(out.double(), _eq6_float64(layer, x)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernel_in_half_precision_is_as_close_as_eq6(kernel, calls, dtype):
    """In float16 / bfloat16 (float32 accumulation) the kernel is no further from float64 than
    eq. 6 computed in the same dtype."""
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("Triton 3.8's interpreter computes bf16 tl.dot wrongly: bf16 is checked on CUDA")
    layer = _layer(9, 48, (3, 5))
    x = _x(2, (3, 5), 9 * 48)
    ref = _eq6_float64(layer, x)
    layer.to(dtype)
    with torch.no_grad():
        out = layer(x.to(dtype))
        same_dtype = GPSA.forward(layer, x.to(dtype))
    assert calls == [dtype]
    assert rel_error(out.double(), ref) <= 1.25 * rel_error(same_dtype.double(), ref) + 1e-4


def _grads(layer, x):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    params = [p for p in layer.parameters() if p.requires_grad]
    return out.detach(), torch.autograd.grad((out * w).sum(), [x] + params, allow_unused=True)


@pytest.mark.parametrize("gate", [None, 0.0, 1.0], ids=["free", "fixed0", "fixed1"])
def test_gradients_through_the_op_equal_fast_gpsa(kernel, calls, gate):
    layer = _layer(4, 48, (3, 5), train=True)
    x = _x(2, (3, 5), 4 * 48)
    names = ["x"] + [n for n, p in layer.named_parameters() if p.requires_grad]
    with fixed(layer, gate):
        out, fused = _grads(layer, x)
        assert calls
        with triton_gpsa.enabled(False):
            ref, fast = _grads(layer, x)
    assert len(calls) == 1 and rel_error(out, ref) < 1e-5
    for name, a, b in zip(names, fused, fast):
        if name == "pos_proj.bias":  # exactly 0 in exact arithmetic (softmax shift): noise only
            continue
        if a is None or b is None or (b == 0).all():
            assert (a is None or (a == 0).all()) and (b is None or (b == 0).all()), name
        else:
            assert rel_error(a, b) < 1e-4, (name, rel_error(a, b))


def _reference_args(layer, x):
    """q, k, v and the per-head tensors of ``layer`` on x, as FastGPSA passes them."""
    B, N, C = x.shape
    qkv = layer._qkv(x).view(B, N, 3, layer.num_heads, layer.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v, layer.pos_proj.weight, layer.pos_proj.bias, layer.gate()


@pytest.mark.parametrize("gate", [None, 0.0, 1.0], ids=["free", "fixed0", "fixed1"])
def test_the_backward_differentiates_eq6_exactly_in_float64(kernel, gate):
    """The op's backward is autograd of ``reference_output``: in float64 that function and its
    gradients equal eq. 6's (so the op's gradients are exact gradients of GPSA)."""
    layer = _layer(9, 48, (3, 5)).double()
    x = _x(2, (3, 5), 9 * 48).double()
    with fixed(layer, gate):
        ref_out, ref = _grads(layer, x)  # FastGPSA's path is not used: eq. 6 below
        x_ = x.clone().requires_grad_(True)
        out = GPSA.forward(layer, x_)
        q, k, v, w, b, g = _reference_args(layer, x_)
        mine = kernel.reference_output(q, k, v, w, b, g, 3, 5, gate != 1.0, gate != 0.0)
        mine = layer.proj(mine.reshape(out.shape))
    assert rel_error(mine, out) < 1e-12
    wts = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    params = [x_] + [p for p in layer.parameters()]
    a = torch.autograd.grad((mine * wts).sum(), params, allow_unused=True)
    e = torch.autograd.grad((out * wts).sum(), params, allow_unused=True)
    for name, ga, ge in zip(["x"] + [n for n, _ in layer.named_parameters()], a, e):
        if ge is None or name == "pos_proj.bias" or (ge == 0).all():
            continue
        assert rel_error(ga, ge) < 1e-10, name


def test_compile_captures_the_kernel_without_a_graph_break(kernel, calls):
    """torch.compile(fullgraph=True) traces FastGPSA with the kernel (the eager backend: the
    graph dynamo records, run by the same kernels)."""
    layer = _layer(4, 48, (3, 5))
    x = _x(2, (3, 5), 4 * 48)
    with torch.no_grad():
        eager = layer(x)
        compiled = torch.compile(layer, backend="eager", fullgraph=True)(x)
    assert len(calls) == 2 and torch.equal(eager, compiled)


@pytest.mark.slow  # inductor compiles the model
def test_compiled_training_on_cuda_follows_eager(kernel, calls):
    """torch.compile (inductor) of a forward and backward with the kernel, against eager."""
    if not CUDA:
        pytest.skip("inductor compiles the Triton kernel only on CUDA")
    layer = _layer(9, 48, (7, 7), train=True)
    x = _x(4, (7, 7), 9 * 48)
    out, grads = _grads(layer, x)
    c_out, c_grads = _grads(torch.compile(layer), x)
    assert calls and rel_error(c_out, out) < 1e-5
    for a, b in zip(c_grads[:-1], grads[:-1]):  # the last: pos_proj.bias, rounding noise
        assert rel_error(a, b) < 1e-4


_REF_OP = "convit_test::gpsa_reference"


@pytest.mark.slow  # compiling takes seconds
def test_the_backward_traces_under_aot_autograd(kernel):
    """torch.compile of training traces the op's backward (autograd inside it) with AOTAutograd.
    An opaque op with the same backward, whose forward is ``reference_output``, stands in for the
    kernel (the interpreter cannot run under fake tensors)."""
    if not hasattr(torch.library, "register_autograd"):
        pytest.skip("torch.library.register_autograd needs torch >= 2.4")

    @torch.library.custom_op(_REF_OP, mutates_args=())
    def ref_op(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor,
        g: torch.Tensor,
        gh: int,
        gw: int,
        content: bool,
        positional: bool,
    ) -> torch.Tensor:
        return kernel.reference_output(q, k, v, w, b, g, gh, gw, content, positional).contiguous()

    ref_op.register_fake(lambda q, *rest: q.new_empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3]))
    ref_op.register_autograd(kernel._backward, setup_context=kernel._setup_context)
    layer = _layer(4, 48, (3, 5), train=True)
    x = _x(2, (3, 5), 4 * 48)

    def step(x):
        q, k, v, w, b, g = _reference_args(layer, x)
        return ref_op(q, k, v, w, b, g, 3, 5, True, True).square().sum()

    params = [p for name, p in layer.named_parameters() if not name.startswith("proj.")]  # used ones
    eager = torch.autograd.grad(step(x), params)
    compiled = torch.autograd.grad(torch.compile(step, backend="aot_eager", fullgraph=True)(x), params)
    for a, e in zip(compiled, eager):
        assert torch.allclose(a, e, rtol=1e-5, atol=1e-6)


# -- when the kernel is chosen (these run with or without triton) ---------------------------


def test_not_chosen_on_the_cpu_by_default(monkeypatch):
    seen = []
    monkeypatch.setattr(triton_gpsa, "fused_gpsa", lambda *a: seen.append(1))
    layer = _layer(4, 8, (3, 5)).cpu()
    layer(_x(2, (3, 5), 32).cpu())
    assert triton_gpsa.DEVICES == ("cuda",) and not seen


def test_not_chosen_where_it_does_not_apply(calls):
    layer = _layer(4, 8, (3, 5))
    x = _x(2, (3, 5), 32)
    with torch.no_grad():
        with triton_gpsa.enabled(False):
            layer(x)  # switched off
        layer.double()(x.double())  # float64
        layer.float()
        wide = _layer(1, 160, (2, 2))  # head dim above MAX_HEAD_DIM
        wide(_x(1, (2, 2), 160))
        torch.jit.trace(layer, x, check_trace=False)  # a graph recorder other than compile
        torch.fx.symbolic_trace(layer)
    dropout = _layer(4, 8, (3, 5), train=True)
    dropout.attn_drop_p = 0.1
    dropout.attn_drop.p = 0.1
    dropout(x)  # attention dropout in training: the reference runs
    assert not calls
    assert triton_gpsa.is_enabled()


def test_the_environment_variable_switches_it_off(monkeypatch):
    monkeypatch.setenv("CONVIT_GPSA_KERNEL", "0")
    try:
        importlib.reload(triton_gpsa)  # the variable is read when the module is imported
        assert not triton_gpsa.is_enabled()
    finally:
        monkeypatch.undo()
        importlib.reload(triton_gpsa)
    assert triton_gpsa.is_enabled() == (os.environ.get("CONVIT_GPSA_KERNEL", "1").strip() != "0")


_COMPILE_FOR_H100 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from convit.nn import gpsa_kernel_ops as ops

for dt in ("bf16", "fp32"):
    sig = {n: "*" + (dt if n in "QKVOut" else "fp32") for n in ("Q", "K", "V", "Heads", "Lse", "Out")}
    sig.update({n: "i32" for n in ("stride_b", "stride_h", "stride_n", "H", "N", "D", "GRID_W")})
    sig["qk_scale"] = "fp32"
    consts = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, CONTENT=True, POSITIONAL=True)
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(fn=ops._gpsa_fwd_kernel, signature=sig, constexprs=consts)
    assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm
sig = {"Heads": "*fp32", "Lse": "*fp32", "N": "i32", "GRID_W": "i32"}
sig.update(BLOCK_M="constexpr", BLOCK_N="constexpr")
src = ASTSource(fn=ops._pos_lse_kernel, signature=sig, constexprs=dict(BLOCK_M=64, BLOCK_N=64))
assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_an_h100_without_a_gpu(kernel):
    """Triton's compiler (not the interpreter) takes the kernels: bf16 and fp32 down to sm_90 cubin."""
    if CUDA:
        pytest.skip("with CUDA the other tests run the compiled kernels")
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_COMPILE_FOR_H100)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "compiled", out.stderr[-3000:]
