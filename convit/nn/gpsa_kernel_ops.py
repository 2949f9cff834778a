"""GPSA's forward as one fused Triton kernel, registered as the torch op ``convit::gpsa_fused``.

Imported only through :mod:`convit.nn.triton_gpsa` (which decides when the kernel runs), and only
on first use: this module imports triton, and ``TRITON_INTERPRET=1`` (Triton's CPU interpreter,
used by the tests) must be set before ``triton.jit`` decorates the kernels below.

One head of GPSA with attention dropout 0 is exactly (eq. 6; the mixed rows already sum to 1,
so its renormalisation changes nothing)

    out = (1 - g) softmax(Q K^T / sqrt(d)) V  +  g P V,      P = softmax_j(v_pos^T r_ij + b)

The kernel computes both terms flash-attention style: a program owns one (image, head, block of
queries) and walks over blocks of keys, keeping the online-softmax state of the content term and
a second accumulator for P_tile @ V_tile, where P_tile is made in registers from the patch
coordinates of the queries and keys, the head's ``pos_proj`` row and a per-query normaliser
(the log-sum-exp of the positional scores over keys, [heads, N], from a small kernel run once per
forward).  No N x N map is written to memory.  The gate mixes the two terms at the end.

Backward is today's: :func:`reference_output` recomputes the output with FastGPSA's torch ops
(SDPA, softmax of the positional scores, P @ v, one lerp) under autograd and returns their
gradients, so gradients are exact gradients of the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .attention import relative_offsets

#: dtypes the kernel takes (it accumulates in float32).
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: The widest head the kernel takes (padded to a power of two; registers bound it).
MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634


@triton.jit
def _head_params(Heads, h):
    """The head's v_pos (3 weights) and bias b, and its gate, from the [heads, 5] table."""
    w0 = tl.load(Heads + h * 5)
    w1 = tl.load(Heads + h * 5 + 1)
    w2 = tl.load(Heads + h * 5 + 2)
    bias = tl.load(Heads + h * 5 + 3)
    gate = tl.load(Heads + h * 5 + 4)
    return w0, w1, w2, bias, gate


@triton.jit
def _pos_scores(offs_m, offs_n, w0, w1, w2, bias, GRID_W):
    """v_pos^T r_ij + b for queries offs_m and keys offs_n of a row-major grid GRID_W wide;
    r_ij = (dx, dy, dx^2 + dy^2) in the official channel order."""
    dx = ((offs_n % GRID_W)[None, :] - (offs_m % GRID_W)[:, None]).to(tl.float32)
    dy = ((offs_n // GRID_W)[None, :] - (offs_m // GRID_W)[:, None]).to(tl.float32)
    return w0 * dx + w1 * dy + w2 * (dx * dx + dy * dy) + bias


@triton.jit
def _pos_lse_kernel(Heads, Lse, N, GRID_W, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Lse[h, i] = log sum_j exp(v_pos,h^T r_ij + b_h): the normaliser of P's rows."""
    h = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    w0, w1, w2, bias, gate = _head_params(Heads, h)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s = _pos_scores(offs_m, offs_n, w0, w1, w2, bias, GRID_W)
        s = tl.where((offs_n < N)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m_i = m_new
    tl.store(Lse + h * N + offs_m, m_i + tl.log(l_i), mask=offs_m < N)


@triton.jit
def _load_rows(ptr, offs, offs_d, N, D, stride_n):
    """Rows ``offs`` of one head's [N, D] matrix (last stride 1), zero past N and past D."""
    mask = (offs < N)[:, None] & (offs_d < D)[None, :]
    return tl.load(ptr + offs[:, None] * stride_n + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _content_step(q, k, v, key_ok, m_i, l_i, acc, qk_scale):
    """One key block of online softmax(Q K^T / sqrt(d)) V, in base 2 (qk_scale has log2 e)."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
    s = tl.where(key_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _positional_step(s, lse, row_ok, key_ok, v, acc):
    """acc + P_tile @ V_tile with P_tile = exp(score - lse) (P's rows are complete: no rescale)."""
    ok = row_ok[:, None] & key_ok[None, :]
    p = tl.math.exp2(tl.where(ok, (s - lse[:, None]) * 1.4426950408889634, float("-inf")))
    return acc + tl.dot(p.to(v.dtype), v, input_precision="ieee")


@triton.jit
def _gpsa_fwd_kernel(
    Q,
    K,
    V,
    Heads,
    Lse,
    Out,
    stride_b,
    stride_h,
    stride_n,
    H,
    N,
    D,
    GRID_W,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CONTENT: tl.constexpr,
    POSITIONAL: tl.constexpr,
):
    """Out[b, i, h, :] = (1 - g_h) content + g_h (P V)[i] for one (image, head, query block)."""
    bh = tl.program_id(0)
    h = bh % H
    b = (bh // H).to(tl.int64)
    base = b * stride_b + h * stride_h
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N
    q = _load_rows(Q + base, offs_m, offs_d, N, D, stride_n)
    w0, w1, w2, bias, gate = _head_params(Heads, h)
    lse = tl.load(Lse + h * N + offs_m, mask=row_ok, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_c = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc_p = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        v = _load_rows(V + base, offs_n, offs_d, N, D, stride_n)
        if CONTENT:
            k = _load_rows(K + base, offs_n, offs_d, N, D, stride_n)
            m_i, l_i, acc_c = _content_step(q, k, v, offs_n < N, m_i, l_i, acc_c, qk_scale)
        if POSITIONAL:
            s = _pos_scores(offs_m, offs_n, w0, w1, w2, bias, GRID_W)
            acc_p = _positional_step(s, lse, row_ok, offs_n < N, v, acc_p)
    if CONTENT:
        out = acc_c / l_i[:, None]
        if POSITIONAL:
            out = out + gate * (acc_p - out)  # lerp(content, P V, g)
    else:
        out = acc_p
    out_ptrs = Out + b * N * H * D + offs_m[:, None] * (H * D) + h * D + offs_d[None, :]
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_d < D)[None, :])


def _blocks(n: int, d: int) -> tuple[int, int]:
    """(block of queries/keys, padded head dim): powers of two of at least 16 (tl.dot's minimum)."""
    return max(16, min(64, triton.next_power_of_2(n))), max(16, triton.next_power_of_2(d))


def _wrap(kernel):
    # wrap_triton (torch >= 2.6) lets torch.compile see the kernel; older torch launches it directly.
    wrap = getattr(torch.library, "wrap_triton", None)
    return kernel if wrap is None else wrap(kernel)


def _launch(q, k, v, heads, grid_w: int, content: bool, positional: bool) -> torch.Tensor:
    """Both kernels on q, k, v [B, heads, N, d] (equal strides, last one 1) -> [B, N, heads, d]."""
    B, H, N, D = q.shape
    out = q.new_empty(B, N, H, D)
    if out.numel() == 0:
        return out
    block, block_d = _blocks(N, D)
    lse = torch.zeros(H, N, device=q.device, dtype=torch.float32)
    if positional:
        _wrap(_pos_lse_kernel)[(H, triton.cdiv(N, block))](
            heads, lse, N, grid_w, BLOCK_M=block, BLOCK_N=block
        )
    _wrap(_gpsa_fwd_kernel)[(B * H, triton.cdiv(N, block))](
        q,
        k,
        v,
        heads,
        lse,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        H,
        N,
        D,
        grid_w,
        D**-0.5 * _LOG2E,
        BLOCK_M=block,
        BLOCK_N=block,
        BLOCK_D=block_d,
        CONTENT=content,
        POSITIONAL=positional,
    )
    return out


def _same_layout(q, k, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v as the kernel reads them: one set of strides, the last one 1.  Views of one
    qkv matmul (FastGPSA's) already are; anything else is copied."""
    if q.stride() == k.stride() == v.stride() and q.stride(-1) == 1:
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()


# torch.library.triton_op (torch >= 2.6) lets torch.compile trace the kernels without a graph
# break; custom_op (torch 2.4, 2.5) keeps the op opaque to it.
_define = getattr(torch.library, "triton_op", None) or torch.library.custom_op


@_define("convit::gpsa_fused", mutates_args=())
def gpsa_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    gate: torch.Tensor,
    grid_h: int,
    grid_w: int,
    content: bool,
    positional: bool,
) -> torch.Tensor:
    """GPSA's attention output [B, N, heads, d] from q, k, v [B, heads, N, d] (one dtype of
    :data:`DTYPES`), v_pos [heads, 3], b [heads] and g [heads] (float32), on an H x W grid.
    ``content`` / ``positional`` False: that term has weight 0 (a gate fixed at 1.0 / 0.0) and
    is not computed."""
    q, k, v = _same_layout(q, k, v)
    heads = torch.cat([pos_weight, pos_bias[:, None], gate[:, None]], dim=1).float().contiguous()
    return _launch(q, k, v, heads, grid_w, content, positional)


@gpsa_fused.register_fake
def _gpsa_fused_fake(q, k, v, pos_weight, pos_bias, gate, grid_h, grid_w, content, positional):
    B, H, N, D = q.shape
    return q.new_empty(B, N, H, D)


def reference_output(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    gate: torch.Tensor,
    grid_h: int,
    grid_w: int,
    content: bool,
    positional: bool,
) -> torch.Tensor:
    """What :func:`gpsa_fused` computes, as FastGPSA's torch ops (SDPA, P in float32, one bmm
    for P @ v over heads with the batch in the columns, lerp), [B, N, heads, d]: the function
    whose autograd gradients the op returns."""
    c = F.scaled_dot_product_attention(q, k, v).transpose(1, 2) if content else None
    if not positional:
        return c
    rel = relative_offsets((grid_h, grid_w), device=q.device)  # [N, N, 3], exact
    N = rel.shape[0]
    scores = torch.addmm(pos_bias.float().unsqueeze(1), pos_weight.float(), rel.reshape(N * N, 3).t())
    pos = scores.view(-1, N, N).softmax(dim=-1).to(v.dtype)  # P, [heads, N, N]
    B, h, _, d = v.shape
    v_cols = v.permute(1, 2, 0, 3).reshape(h, N, B * d)
    y = torch.bmm(pos, v_cols).view(h, N, B, d).permute(2, 1, 0, 3)  # [B, N, heads, d]
    if c is None:
        return y
    return torch.lerp(c, y, gate.to(c.dtype).view(1, 1, -1, 1))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, pos_weight, pos_bias, gate, *settings = inputs
    ctx.save_for_backward(q, k, v, pos_weight, pos_bias, gate)
    ctx.settings = settings  # grid_h, grid_w, content, positional


def _backward(ctx, grad: torch.Tensor):
    """Gradients of :func:`reference_output` at the saved inputs (recomputed under autograd)."""
    saved = ctx.saved_tensors
    needed = ctx.needs_input_grad[: len(saved)]
    with torch.enable_grad(), torch.autocast(saved[0].device.type, enabled=False):
        leaves = [t.detach().requires_grad_(need) for t, need in zip(saved, needed)]
        out = reference_output(*leaves, *ctx.settings)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True) if wanted else ())
    tensor_grads = tuple(next(grads) if need else None for need in needed)
    return tensor_grads + (None,) * len(ctx.settings)


gpsa_fused.register_autograd(_backward, setup_context=_setup_context)
