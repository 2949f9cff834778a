"""Self-attention layers of ConViT: gated positional self-attention (GPSA) and plain MHSA.

Read beside d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft
Convolutional Inductive Biases" (ICML 2021), section 3:

* eq. 5  positional self-attention:  A^pos_ij = softmax_j(v_pos^T r_ij)
* eq. 6  GPSA:  A_ij = (1 - sigma(lambda_h)) softmax_j(Q_i K_j^T / sqrt(d))
                     + sigma(lambda_h)     softmax_j(v_pos,h^T r_ij)
* eq. 7  convolutional ("local") initialisation of v_pos and W_val.

Parameter names (``qk``, ``v``, ``proj``, ``pos_proj``, ``gating_param``, ``qkv``) and the
channel order of the relative offsets r_ij = (dx, dy, dx^2 + dy^2) are those of the official
code and of timm, so their checkpoints load unchanged.

Speed.  The layer output is linear in A, so instead of materialising A for every image
(B x heads x N x N, twice) we compute

    out = (1 - sigma) * SDPA(q, k, v)  +  sigma * (P @ v),

where P = softmax(v_pos^T r) is one [heads, N, N] tensor per forward, shared by the whole
batch (and cached in inference).  SDPA picks flash / memory-efficient kernels on GPU.
The explicit formula (eq. 6 with A materialised) is kept in :meth:`GPSA.attention_maps`;
it is what analysis code reads, what the tests compare the fast path with, and what the
forward pass falls back on when attention dropout is active (dropout acts on the mixed A,
so it cannot be split between the two terms without changing its distribution).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Grid = Tuple[int, int]


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
        """The attention the layer applies (paper eq. 6), [B, heads, N, N]."""
        if self.positional is None or self.gate is None:
            return self.content
        g = self.gate.view(1, -1, 1, 1).to(self.content.dtype)
        return (1.0 - g) * self.content + g * self.positional.unsqueeze(0).to(self.content.dtype)


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
    """Attention centres Delta_h (in patches) of the convolutional init, as [heads, 2] (dx, dy).

    The first k^2 heads (k = floor(sqrt(heads))) sit on a k x k grid around the query, centred
    for even k as in the official code (so a 2x2 grid has centres at +-0.5).  Head
    h1 + k * h2 gets dx = h2 - c and dy = h1 - c, which reproduces the official weights exactly.
    When the head count is not a perfect square, the remaining heads are centred on the query
    itself (Delta = 0): a local average around the patch.  (timm and the official code leave
    those heads at their random init.)
    """
    k = math.isqrt(num_heads)
    c = (k - 1) / 2
    centres = torch.zeros(num_heads, 2)
    for h1 in range(k):
        for h2 in range(k):
            centres[h1 + k * h2] = torch.tensor([h2 - c, h1 - c])
    return centres


class GPSA(nn.Module):
    """Gated positional self-attention (paper eq. 6), with a batch-shared positional part."""

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

    # -- eq. 7: convolutional initialisation -------------------------------------------------
    @torch.no_grad()
    def local_init(self) -> None:
        """W_val = I and v_pos,h = -alpha (-2 Delta_h,x, -2 Delta_h,y, 1) (r order: dx, dy, d^2)."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        centres = head_centres(self.num_heads).to(self.pos_proj.weight)
        w = torch.empty_like(self.pos_proj.weight)
        w[:, 0] = 2 * centres[:, 0]
        w[:, 1] = 2 * centres[:, 1]
        w[:, 2] = -1.0
        self.pos_proj.weight.copy_(w * self.locality_strength)

    # -- building blocks shared by the fast path and the explicit formula --------------------
    def set_grid(self, grid: Grid) -> None:
        """Rebuild the relative-offset table for another (H, W) patch grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid != self.grid:
            self.grid = grid
            self.rel_indices = relative_offsets(grid, self.rel_indices.device, self.rel_indices.dtype)
            self._pos_cache = None

    def gate(self) -> torch.Tensor:
        """sigma(lambda_h), [heads]; the weight of the positional part."""
        g = torch.sigmoid(self.gating_param)
        if self.gate_override is not None:
            g = torch.full_like(g, float(self.gate_override))
        return g

    def positional_attention(self) -> torch.Tensor:
        """P = softmax_j(v_pos,h^T r_ij) as [heads, N, N] in float32 (eq. 5).

        Computed once per forward for the whole batch, outside autocast (it is tiny, and the
        squared distances exceed bf16's exact integer range on large grids).  In inference
        (no autograd) it is cached until the weights, the grid, the device or dtype change.
        """
        use_cache = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        w, b = self.pos_proj.weight, self.pos_proj.bias
        key = (w._version, b._version, w.data_ptr(), b.data_ptr(), self.grid, self.rel_indices.device)
        if use_cache and self._pos_cache is not None and self._pos_cache[0] == key:
            return self._pos_cache[1]
        with torch.autocast(device_type=self.rel_indices.device.type, enabled=False):
            scores = F.linear(self.rel_indices.float(), w.float(), b.float())  # [N, N, heads]
            pos = scores.permute(2, 0, 1).softmax(dim=-1)
        if use_cache:
            self._pos_cache = (key, pos)
        return pos

    def _project(self, x: torch.Tensor):
        B, N, C = x.shape
        qk = self.qk(x).view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = qk.unbind(0)  # [B, heads, N, d]
        v = self.v(x).view(B, N, self.num_heads, self.head_dim)  # [B, N, heads, d]
        return q, k, v

    def _check_tokens(self, n: int) -> None:
        if n != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"GPSA got {n} tokens but its patch grid is {self.grid[0]}x{self.grid[1]}="
                f"{self.grid[0] * self.grid[1]}; GPSA blocks take patch tokens only (no class token)")

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """Content, positional and gate tensors of this layer for input tokens x (eq. 6 terms)."""
        self._check_tokens(x.shape[1])
        q, k, _ = self._project(x)
        content = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return AttentionMaps(content, self.positional_attention(), self.gate())

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        self._check_tokens(N)
        if self.training and self.attn_drop_p > 0:
            return self._forward_explicit(x)
        q, k, v = self._project(x)
        g = self.gate().to(v.dtype)
        pos = self.positional_attention().to(v.dtype)  # [heads, N, N]
        # Content term: (1 - sigma) SDPA(q, k, v); SDPA wants [B, heads, N, d].
        content = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))  # [B, heads, N, d]
        # Positional term: one bmm over heads with the batch folded into the columns,
        # (sigma P)[heads, N, N] @ v[heads, N, B*d]; P is never expanded over the batch.
        v_cols = v.permute(2, 1, 0, 3).reshape(self.num_heads, N, B * self.head_dim)
        positional = torch.bmm(g.view(-1, 1, 1) * pos, v_cols)
        positional = positional.view(self.num_heads, N, B, self.head_dim).permute(2, 1, 0, 3)
        out = torch.addcmul(positional, content.transpose(1, 2), (1.0 - g).view(1, 1, -1, 1))
        return self.proj_drop(self.proj(out.reshape(B, N, C)))

    def _forward_explicit(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 6 with A materialised; used when attention dropout is on (dropout on the mixed A)."""
        B, N, C = x.shape
        maps = self.attention_maps(x)
        attn = self.attn_drop(maps.combined)
        v = self.v(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


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
