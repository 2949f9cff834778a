"""Self-attention layers of ConViT: gated positional self-attention (GPSA) and plain MHSA.

Read beside d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft
Convolutional Inductive Biases" (ICML 2021), section 3:

* eq. 5  positional self-attention:  A^pos_h,ij = softmax_j(v_pos,h^T r_ij)
* eq. 6  GPSA:  A_h,ij = (1 - sigma(lambda_h)) softmax_j(Q_h,i K_h,j^T / sqrt(d))
                       + sigma(lambda_h)     softmax_j(v_pos,h^T r_ij)
* eq. 7  convolutional ("local") initialisation of v_pos and W_val.

The file has three parts:

1. **The paper** (``relative_offsets``, ``head_centres``, ``positional_attention_reference``,
   ``gpsa_attention``, ``gpsa_reference``): eq. 5-7 as written, one screen.  Analysis code
   reads these maps; the tests use ``gpsa_reference`` as the oracle of the fast path.
2. **The layers** (``GPSA``, ``MHSA``): parameters, the eq. 7 init, and ``forward``.
3. **The fast path**: the same function as ``gpsa_reference``, computed faster (batch-shared
   P, one fused q/k/v matmul, SDPA, a custom autograd Function, a cache of P in inference,
   no subnormal numbers in P).  docs/speed.md has the measurements.

Parameter names (``qk``, ``v``, ``proj``, ``pos_proj``, ``gating_param``, ``qkv``) and the
channel order of r_ij = (dx, dy, dx^2 + dy^2) are those of the official code and of timm,
so their checkpoints load unchanged.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

Grid = Tuple[int, int]


# =============================================================================================
# 1. The paper
# =============================================================================================
def relative_offsets(grid: Grid, device=None, dtype=torch.float32) -> torch.Tensor:
    """r_ij for every pair of patches of an (H, W) grid, as an [N, N, 3] tensor.

    Patches are numbered row-major (p = row * W + col).  Channel 0 is dx = col_j - col_i,
    channel 1 is dy = row_j - row_i, channel 2 is dx^2 + dy^2 (the official/timm order).
    """
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    dx = cols[None, :] - cols[:, None]
    dy = rows[None, :] - rows[:, None]
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1).to(dtype)


def head_centres(num_heads: int) -> torch.Tensor:
    """Attention centres Delta_h (in patches) of the convolutional init (eq. 7), [heads, 2] (dx, dy).

    The first k^2 heads (k = floor(sqrt(heads))) sit on a k x k grid around the query, centred
    for even k as in the official code (so a 2x2 grid has centres at +-0.5).  Head
    h1 + k * h2 gets dx = h2 - c and dy = h1 - c, which reproduces the official weights exactly.
    When the head count is not a perfect square, the remaining heads are centred on the query
    itself (Delta = 0): a local average around the patch.  (timm and the official code leave
    those heads at their random init.)
    """
    k = math.isqrt(num_heads)
    c = (k - 1) / 2
    centres = [[0.0, 0.0] for _ in range(num_heads)]
    for h1 in range(k):
        for h2 in range(k):
            centres[h1 + k * h2] = [h2 - c, h1 - c]
    # Built from Python numbers on the CPU explicitly, so it also works under
    # ``with torch.device("meta")`` (local_init moves it to the weights' device).
    return torch.tensor(centres, dtype=torch.float32, device="cpu")


class AttentionMaps(NamedTuple):
    """One block's attention, for analysis.

    content:    [B, heads, N, N] softmax(QK^T/sqrt(d)) (the only part of an MHSA block).
    positional: [heads, N, N] softmax(v_pos^T r), shared by the batch (None for MHSA).
    gate:       [heads] sigma(lambda_h), the weight of the positional part (None for MHSA).
    """

    content: torch.Tensor
    positional: Optional[torch.Tensor] = None
    gate: Optional[torch.Tensor] = None

    @property
    def combined(self) -> torch.Tensor:
        """The attention the layer applies (eq. 6), [B, heads, N, N]."""
        if self.positional is None or self.gate is None:
            return self.content
        g = self.gate.view(1, -1, 1, 1).to(self.content.dtype)
        return (1.0 - g) * self.content + g * self.positional.unsqueeze(0).to(self.content.dtype)


def positional_attention_reference(attn: "GPSA") -> torch.Tensor:
    """Eq. 5 for every head: P_h,ij = softmax_j(v_pos,h^T r_ij + b_h), [heads, N, N] float32."""
    r = relative_offsets(attn.grid, device=attn.pos_proj.weight.device)    # [N, N, 3], exact
    N = r.shape[0]
    w, b = attn.pos_proj.weight.float(), attn.pos_proj.bias.float()         # [heads, 3], [heads]
    with torch.autocast(r.device.type, enabled=False):
        scores = torch.addmm(b.unsqueeze(1), w, r.reshape(N * N, 3).t())    # [heads, N*N]
        return scores.view(-1, N, N).softmax(dim=-1)                       # [heads, N, N]


def gpsa_attention(attn: "GPSA", x: torch.Tensor) -> Tuple[AttentionMaps, torch.Tensor]:
    """The terms of eq. 6 for patch tokens x [B, N, C], and the values v [B, heads, N, d]."""
    B, N, C = x.shape
    _check_tokens(x, attn.grid)
    h, d = attn.num_heads, attn.head_dim
    q, k = attn.qk(x).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)      # each [B, heads, N, d]
    v = attn.v(x).view(B, N, h, d).transpose(1, 2)                     # [B, heads, N, d]
    content = (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)   # [B, heads, N, N]
    return AttentionMaps(content, positional_attention_reference(attn), attn.gate()), v


def gpsa_reference(attn: "GPSA", x: torch.Tensor) -> torch.Tensor:
    """GPSA's output as the paper writes it (eq. 6 with A materialised): [B, N, C] -> [B, N, C]."""
    B, N, C = x.shape
    maps, v = gpsa_attention(attn, x)
    a = attn.attn_drop(maps.combined)                                  # [B, heads, N, N], eq. 6
    out = (a @ v).transpose(1, 2).reshape(B, N, C)                     # heads concatenated
    return attn.proj_drop(attn.proj(out))


# torch.fx.wrap: FX records this check as one call (it cannot trace through `!=` on a traced
# size), so torchvision's feature extractor and fx.symbolic_trace see past it.
@torch.fx.wrap
def _check_tokens(x: torch.Tensor, grid: Grid) -> None:
    if x.shape[1] != grid[0] * grid[1]:
        raise ValueError(
            f"GPSA got {x.shape[1]} tokens but its patch grid is {grid[0]}x{grid[1]}="
            f"{grid[0] * grid[1]}; GPSA blocks take patch tokens only (no class token)")


# =============================================================================================
# 2. The layers
# =============================================================================================
class GPSA(nn.Module):
    """Gated positional self-attention (eq. 6).  ``forward`` is the fast path (part 3)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        grid: Grid = (14, 14),
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.locality_strength = locality_strength
        self.attn_drop_p = attn_drop

        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = nn.Linear(3, num_heads)  # v_pos, one row per head
        self.gating_param = nn.Parameter(torch.ones(num_heads))  # lambda_h, init 1
        # Test-time masking (paper tables 5-6): None, or a value that replaces sigma(lambda):
        # 0.0 keeps only the content part, 1.0 only the positional part.
        self.gate_override: Optional[float] = None
        self.grid: Grid = tuple(grid)
        self.register_buffer("rel_indices", relative_offsets(self.grid), persistent=False)
        self._pos_cache: Optional[tuple] = None

    @torch.no_grad()
    def local_init(self) -> None:
        """Eq. 7: W_val = I and v_pos,h = -alpha (-2 Delta_h,x, -2 Delta_h,y, 1) (r order: dx, dy, d^2)."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        centres = head_centres(self.num_heads).to(self.pos_proj.weight)
        w = torch.empty_like(self.pos_proj.weight)
        w[:, 0] = 2 * centres[:, 0]
        w[:, 1] = 2 * centres[:, 1]
        w[:, 2] = -1.0
        self.pos_proj.weight.copy_(w * self.locality_strength)

    def gate(self) -> torch.Tensor:
        """sigma(lambda_h), [heads]; the weight of the positional part."""
        g = torch.sigmoid(self.gating_param)
        if self.gate_override is not None:
            g = torch.full_like(g, float(self.gate_override))
        return g

    def set_grid(self, grid: Grid) -> None:
        """Rebuild the relative-offset table for another (H, W) patch grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid != self.grid:
            self.grid = grid
            self.rel_indices = relative_offsets(grid, self.rel_indices.device, self.rel_indices.dtype)
            self._pos_cache = None

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """Content, positional and gate tensors of this layer for input tokens x (eq. 6 terms)."""
        return gpsa_attention(self, x)[0]

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output computed as the paper writes it (see :func:`gpsa_reference`)."""
        return gpsa_reference(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """out = proj((1 - sigma) SDPA(q, k, v) + sigma P @ v): eq. 6 without materialising A."""
        B, N, C = x.shape
        _check_tokens(x, self.grid)
        if self.training and self.attn_drop_p > 0:
            # Dropout acts on the mixed A, so it cannot be split between the two terms.
            return gpsa_reference(self, x)
        qkv = self._qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                   # each [B, heads, N, d]
        g = self.gate()
        if self.gate_override == 0.0:  # masking: content only (exact, one branch skipped)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        elif self.gate_override == 1.0:  # masking: positional only
            out = _positional_values(self.positional_attention().to(v.dtype), v)
        else:
            content = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, N, heads, d]
            pos = self.positional_attention().to(content.dtype)                # [heads, N, N]
            out = gated_positional_mix(content, v, pos, g.to(content.dtype))  # [B, N, heads, d]
        return self.proj_drop(self.proj(out.reshape(B, N, C)))

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, 3C] = x @ [W_qk; W_v]^T: q, k and v from ONE matmul.

        The weights are concatenated at every call (a [3C, C] copy, ~0.1% of the layer's
        time), so the parameters and state-dict keys stay ``qk`` and ``v`` and nothing can go
        stale; autograd splits the gradient back.  Row order q | k | v matches ``qk``'s own
        q | k split, so column blocks of the result are exactly ``qk(x)`` and ``v(x)``.
        """
        w = torch.cat([self.qk.weight, self.v.weight])
        bq, bv = self.qk.bias, self.v.bias
        if bq is None and bv is None:
            b = None
        else:
            b = torch.cat([bq if bq is not None else w.new_zeros(w.shape[0] - self.v.weight.shape[0]),
                           bv if bv is not None else w.new_zeros(self.v.weight.shape[0])])
        return F.linear(x, w, b)

    def positional_attention(self) -> torch.Tensor:
        """P of eq. 5 as [heads, N, N] float32, computed once per forward for the whole batch.

        In inference (no autograd, not tracing) P is cached until ``pos_proj``'s weights
        change: an optimizer step, ``load_state_dict``, ``copy_``, ``.to(...)`` or ``set_grid``
        all invalidate it (the key is each tensor's version counter and address, and the cache
        keeps the old tensors alive so an address cannot be reused).  Writing through
        ``weight.data`` bypasses version counters; call :meth:`clear_cache` after doing that.
        While a tool records a graph (:func:`is_tracing`) P is always computed from the
        weights, so the graph cannot hold a stale P as a constant.
        """
        w, b = self.pos_proj.weight, self.pos_proj.bias
        if torch.is_grad_enabled() or is_tracing():
            return positional_attention_fast(w, b, self.rel_indices, self.grid)
        key = (w._version, b._version, w.data_ptr(), b.data_ptr(), self.grid, self.rel_indices.device)
        if self._pos_cache is None or self._pos_cache[0] != key:
            # w.detach()/b.detach() keep the keyed storages alive (no address reuse).
            pos = positional_attention_fast(w, b, self.rel_indices, self.grid)
            self._pos_cache = (key, pos, w.detach(), b.detach())
        return self._pos_cache[1]

    def clear_cache(self) -> None:
        """Drop the cached positional attention (only needed after writes through ``.data``)."""
        self._pos_cache = None


class MHSA(nn.Module):
    """Multi-head self-attention (the non-local blocks of ConViT, and every block of DeiT)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_drop_p = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _project(self, x: torch.Tensor):
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # each [B, heads, N, d]

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """softmax(QK^T/sqrt(d)) as [B, heads, N, N]."""
        q, k, _ = self._project(x)
        return AttentionMaps(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._project(x)
        p = self.attn_drop_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


# =============================================================================================
# 3. The fast path: the same function as gpsa_reference, computed faster
# =============================================================================================
# The layer output is linear in A, so instead of materialising A for every image
# (B x heads x N x N, twice) GPSA.forward computes
#
#     out = (1 - sigma) * SDPA(q, k, v)  +  sigma * (P @ v),
#
# where P = softmax(v_pos^T r) is one [heads, N, N] tensor per forward, shared by the whole
# batch (and cached in inference).  SDPA picks flash / memory-efficient kernels on GPU.
# q, k and v come from one matmul, P @ v is one bmm over heads with the batch folded into the
# columns, the two terms are mixed by a single torch.lerp, P has no subnormal numbers, and a
# custom autograd Function keeps only SDPA's own tensors for backward.
# tests/test_speed_paths.py checks outputs and gradients against gpsa_reference.

def is_tracing() -> bool:
    """True while a tool records the model as a graph: ``torch.jit.trace`` / ``script``,
    ``torch.fx.symbolic_trace``, ``torch.compile`` / ``torch.export`` and ONNX export.

    The inference cache of P is eager-only state keyed by version counters and addresses; a
    graph recorded from it would hold P as a constant, silently wrong once other weights are
    loaded.
    """
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export() or _fx_tracing())


def _fx_tracing() -> bool:
    # torch.fx exports no public flag; newer torch names it is_fx_symbolic_tracing.
    st = torch.fx._symbolic_trace
    flag = getattr(st, "is_fx_symbolic_tracing", None) or getattr(st, "is_fx_tracing", None)
    return bool(flag()) if flag is not None else False


@torch.fx.wrap  # one graph node under FX (it reads the dtype of a buffer)
def positional_attention_fast(w: torch.Tensor, b: torch.Tensor, rel: torch.Tensor, grid: Grid) -> torch.Tensor:
    """P of eq. 5 ([heads, N, N] float32) with no subnormal numbers, outside autocast.

    Outside autocast because P is tiny and the squared distances exceed bf16's exact integer
    range on large grids.  ``model.to(bfloat16)`` also converts the ``rel`` buffer (bf16
    rounds squared distances above 256; a 14x14 grid reaches 338), so then the exact table is
    rebuilt.
    """
    if rel.dtype not in (torch.float32, torch.float64):
        rel = relative_offsets(grid, device=rel.device)
    N = rel.shape[0]
    with torch.autocast(device_type=rel.device.type, enabled=False):
        # scores[h, i*N + j] = v_pos,h . r_ij + b_h, produced directly in [heads, N*N] layout
        # (r viewed as [3, N*N], no copy) so the softmax runs on contiguous rows.
        scores = torch.addmm(b.float().unsqueeze(1), w.float(), rel.float().reshape(N * N, 3).t())
        scores = scores.view(-1, N, N)
        # No subnormal numbers in P.  With the local init (and in trained models) far patches
        # get exp(-alpha d^2) ~ 1e-40: thousands of float32 subnormals per head, on which x86
        # CPUs run the softmax, its backward and the P @ v matmuls 5-10x slower
        # (docs/speed.md).  Scores below their row's maximum + thr get probability exactly 0
        # instead of less than exp(thr) = e^20 * N * 1.2e-38 (1.1e-27 for N = 196); every kept
        # probability is >= exp(thr) / N = 5.7e-30, so P and g * P (gates down to 1e-8, in
        # backward) hold no subnormal number.  The change to any output is below
        # N * exp(thr) * max|v| (2e-25 max|v| for N = 196), far under float32 resolution, and
        # so is the change to the gradients.
        thr = math.log(torch.finfo(torch.float32).tiny) + math.log(N) + 20.0
        far = scores < scores.amax(dim=-1, keepdim=True) + thr
        return scores.masked_fill(far, float("-inf")).softmax(dim=-1)


def _positional_values(pos: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """P @ v for every head as ONE bmm with the batch folded into the columns:
    pos [h, N, N], v [B, h, N, d] (any strides) -> [B, N, h, d] (a strided view).
    P is never expanded over the batch; the permuted copy of v is the only copy."""
    B, h, N, d = v.shape
    v_cols = v.permute(1, 2, 0, 3).reshape(h, N, B * d)
    return torch.bmm(pos, v_cols).view(h, N, B, d).permute(2, 1, 0, 3)


def _mix_forward(content, v, pos, g):
    # content [B, N, h, d]; v [B, h, N, d] (any strides); pos [h, N, N]; g [h]
    y = _positional_values(pos, v)
    # content (contiguous [B, N, h, d] from SDPA) goes first so the result keeps its layout.
    return torch.lerp(content, y, g.view(1, 1, -1, 1))


class _GatedPositionalMix(torch.autograd.Function):
    """out = (1 - g_h) content + g_h (P_h @ v_h) for every head h, in [B, N, heads, d].

    Autograd of the same ops would keep v's [heads, N, B*d] copy and P @ v alive until
    backward (2 x B*N*C per layer); this Function keeps only its inputs (content is SDPA's
    output and v a view of the qkv matmul, both saved by SDPA anyway) and recomputes the copy
    of v in backward.  Gradients (y = P @ v, M = dL/dy @ v^T per head):
        dL/dcontent = (1 - g) dL/dout      dL/dP = g M      dL/dv = (g P)^T dL/dy
        dL/dg = sum(P * M) - sum(dL/dout * content)   (= sum(dL/dout * (y - content)))
    The backward is written with differentiable ops, so double backward works too.
    """

    @staticmethod
    def forward(ctx, content, v, pos, g):
        ctx.save_for_backward(content, v, pos, g)
        return _mix_forward(content, v, pos, g)

    @staticmethod
    def backward(ctx, grad):
        content, v, pos, g = ctx.saved_tensors
        need_content, need_v, need_pos, need_g = ctx.needs_input_grad
        B, h, N, d = v.shape
        gh = g.view(h, 1, 1)
        grad_cols = grad.permute(2, 1, 0, 3).reshape(h, N, B * d)
        grad_content = grad_v = grad_pos = grad_g = None
        if need_content:
            grad_content = grad * (1.0 - g.view(1, 1, h, 1))
        if need_v:  # (g * P has no subnormals: see positional_attention_fast)
            grad_v = torch.bmm((gh * pos).transpose(1, 2), grad_cols).view(h, N, B, d).permute(2, 0, 1, 3)
        if need_pos or need_g:
            v_cols = v.permute(1, 2, 0, 3).reshape(h, N, B * d)  # recomputed, not saved
            m = torch.bmm(grad_cols, v_cols.transpose(1, 2))  # [h, N, N]
            if need_pos:
                grad_pos = gh * m
            if need_g:
                grad_g = (pos * m).sum((1, 2)) - (grad * content).sum((0, 1, 3))
        return grad_content, grad_v, grad_pos, grad_g


@torch.fx.wrap  # one graph node under FX (it branches on requires_grad)
def gated_positional_mix(content: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                         g: torch.Tensor) -> torch.Tensor:
    """(1 - g_h) content + g_h P_h @ v_h; content [B, N, heads, d], v [B, heads, N, d],
    pos [heads, N, N], g [heads]; all of one dtype.  Returns [B, N, heads, d].

    The custom autograd Function is only used when a gradient is needed; inference, and
    TorchScript tracing (ONNX export), see the same ops as plain aten calls.
    """
    if torch.is_grad_enabled() and not torch.jit.is_tracing() and (
            content.requires_grad or v.requires_grad or pos.requires_grad or g.requires_grad):
        return _GatedPositionalMix.apply(content, v, pos, g)
    return _mix_forward(content, v, pos, g)
