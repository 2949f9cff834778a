"""Self-attention layers of ConViT, as the paper writes them: GPSA and plain MHSA.

Read beside d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft
Convolutional Inductive Biases" (ICML 2021), section 3:

* eq. 5  positional self-attention:  A^pos_h,ij = softmax_j(v_pos,h^T r_ij)
* eq. 6  GPSA:  A_h,ij = (1 - sigma(lambda_h)) softmax_j(Q_h,i K_h,j^T / sqrt(d))
                       + sigma(lambda_h)     softmax_j(v_pos,h^T r_ij)
* eq. 7  convolutional ("local") initialisation of v_pos and W_val.

``GPSA`` computes eq. 5 and 6 literally (A materialised for every image): it is the
reference.  The model's blocks hold :class:`convit.nn.fast_gpsa.FastGPSA`, a subclass with the
same parameters that computes the same function faster; ``tests/test_speed_paths.py``
keeps the two equal.  ``GPSA.forward(layer, x)`` (unbound) runs eq. 6 as written on any GPSA
layer, FastGPSA included.  This module does not import ``fast_gpsa``.

Test-time masking fixes the gates only inside :func:`gates_fixed`, a context manager: no
attribute that the forward pass reads can be left set by mistake.

Parameter names (``qk``, ``v``, ``proj``, ``pos_proj``, ``gating_param``, ``qkv``) and the
channel order of r_ij = (dx, dy, dx^2 + dy^2) are those of the official code and of timm,
so their checkpoints load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple, Optional, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

Grid = tuple[int, int]


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


# torch.fx.wrap: FX records this check as one call (it cannot trace through `!=` on a traced
# size), so torchvision's feature extractor and fx.symbolic_trace see past it.
@torch.fx.wrap
def _check_tokens(x: torch.Tensor, grid: Grid) -> None:
    if x.shape[1] != grid[0] * grid[1]:
        raise ValueError(
            f"GPSA got {x.shape[1]} tokens but its patch grid is {grid[0]}x{grid[1]}="
            f"{grid[0] * grid[1]}; GPSA blocks take patch tokens only (no class token)"
        )


class GPSA(nn.Module):
    """Gated positional self-attention (eq. 5-7), computed as the paper writes it.

    Read top to bottom: the parameters, eq. 5 (``positional_attention_reference``), eq. 6
    (``gate``, ``attention_maps``, ``forward``), eq. 7 (``local_init``).
    """

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
        self.scale = self.head_dim**-0.5
        self.locality_strength = locality_strength
        self.attn_drop_p = attn_drop

        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)  # W_qry | W_key
        self.v = nn.Linear(dim, dim, bias=qkv_bias)  # W_val
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)  # W_out
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = nn.Linear(3, num_heads)  # v_pos, one row per head
        self.gating_param = nn.Parameter(torch.ones(num_heads))  # lambda_h, init 1
        # Test-time masking (paper tables 5-6): a value that replaces sigma(lambda), set only
        # inside :func:`gates_fixed` (0.0 keeps the content part, 1.0 the positional part).
        self._gate_fixed: Optional[float] = None
        self.grid: Grid = tuple(grid)
        self.register_buffer("rel_indices", relative_offsets(self.grid), persistent=False)

    def positional_attention_reference(self) -> torch.Tensor:
        """Eq. 5 for every head: P_h,ij = softmax_j(v_pos,h^T r_ij + b_h), [heads, N, N] float32.

        In float32 outside autocast (P is one small tensor for the whole batch), from an exact
        r: not the buffer, which ``.to(bf16)`` rounds once squared distances pass 256.
        """
        r = relative_offsets(self.grid, device=self.pos_proj.weight.device)  # [N, N, 3]
        N = r.shape[0]
        w, b = self.pos_proj.weight.float(), self.pos_proj.bias.float()  # [heads, 3], [heads]
        with torch.autocast(r.device.type, enabled=False):
            scores = torch.addmm(b.unsqueeze(1), w, r.reshape(N * N, 3).t())  # [heads, N*N]
            return scores.view(-1, N, N).softmax(dim=-1)  # [heads, N, N]

    # The P a layer's forward uses: eq. 5 as written here; FastGPSA overrides it (cached P).
    positional_attention = positional_attention_reference

    def gate(self) -> torch.Tensor:
        """sigma(lambda_h), [heads]; the weight of the positional part (inside
        :func:`gates_fixed`, the value it fixes)."""
        g = torch.sigmoid(self.gating_param)
        if self._gate_fixed is not None:
            g = torch.full_like(g, float(self._gate_fixed))
        return g

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """The three terms of eq. 6 for patch tokens x [B, N, C]: content, P and the gate."""
        B, N, C = x.shape
        _check_tokens(x, self.grid)
        h = self.num_heads
        d = self.head_dim
        q, k = self.qk(x).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)  # each [B, heads, N, d]
        content = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # [B, heads, N, N]
        return AttentionMaps(content, self.positional_attention_reference(), self.gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 6 with A materialised, then W_out: [B, N, C] -> [B, N, C]."""
        B, N, C = x.shape
        a = self.attn_drop(self.attention_maps(x).combined)  # [B, heads, N, N]
        v = self.v(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, heads, N, d]
        out = (a @ v).transpose(1, 2).reshape(B, N, C)  # heads concatenated
        return self.proj_drop(self.proj(out))

    @torch.no_grad()
    def local_init(self) -> None:
        """Eq. 7: W_val = I and v_pos,h = -alpha (-2 Delta_h,x, -2 Delta_h,y, 1) (r order: dx, dy, d^2).

        Then v_pos,h^T r_ij = -alpha ||delta_ij - Delta_h||^2 + const: head h attends to the
        patch at Delta_h from the query, with a spread of 1/alpha (a soft convolution).
        """
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        centres = head_centres(self.num_heads).to(self.pos_proj.weight)
        w = torch.empty_like(self.pos_proj.weight)
        w[:, 0] = 2 * centres[:, 0]
        w[:, 1] = 2 * centres[:, 1]
        w[:, 2] = -1.0
        self.pos_proj.weight.copy_(w * self.locality_strength)

    def set_grid(self, grid: Grid) -> None:
        """Rebuild the relative-offset table for another (H, W) patch grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid != self.grid:
            self.grid = grid
            self.rel_indices = relative_offsets(grid, self.rel_indices.device, self.rel_indices.dtype)


@contextmanager
def gates_fixed(modules: Union[nn.Module, Iterable[nn.Module]], value: float) -> Iterator[None]:
    """Within the block, every GPSA layer in ``modules`` (a model, blocks or layers, searched
    recursively) uses ``value`` in place of sigma(lambda_h) for all heads: 0.0 keeps only the
    content attention, 1.0 only the positional attention (test-time masking, paper tables 5-6).

    Each layer's previous setting comes back on exit, also after an exception, so nothing
    outside the block sees the fixed gate; blocks nest.  The gating parameters are untouched.
    """
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    layers = list({id(m): m for root in roots for m in root.modules() if isinstance(m, GPSA)}.values())
    saved = [layer._gate_fixed for layer in layers]
    try:
        for layer in layers:
            layer._gate_fixed = float(value)
        yield
    finally:
        for layer, before in zip(layers, saved):
            layer._gate_fixed = before


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
        self.scale = self.head_dim**-0.5
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
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # [B, heads, N, d]
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
