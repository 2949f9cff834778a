"""GPSA computed faster: exactly the function of :class:`convit.nn.attention.GPSA`, eq. 5-6.

``FastGPSA`` is a subclass of ``GPSA`` with the same parameters, buffers and state dict; only
``forward`` and ``positional_attention`` differ, and they compute the reference's output
(equal to rounding; in float64 to 1e-12, ``tests/test_speed_paths.py``).  The model's blocks
use it.  How, and why each step is exact:

* **A is never materialised.**  The output is linear in A, so instead of building the mixed
  [B, heads, N, N] map (eq. 6) for every image the layer computes

      out = (1 - sigma) * SDPA(q, k, v)  +  sigma * (P @ v),      P = softmax(v_pos^T r)

  SDPA (``scaled_dot_product_attention``) picks fused flash / memory-efficient kernels, and
  P, which does not depend on the image, is one [heads, N, N] tensor for the whole batch.
* **P @ v is one bmm over heads** with the batch folded into the columns; P is never
  expanded over the batch.
* **P is cached in inference** (no autograd, not tracing) until ``pos_proj``'s weights, the
  grid or the device change.
* **P has no subnormal numbers.**  Probabilities that would be subnormal (far patches after
  the local init) are set to exactly 0: x86 CPUs run arithmetic on subnormals in microcode,
  far slower than on normal numbers, and the change to any output is far below float32
  resolution (bound in :func:`positional_attention_fast`).
* **q, k and v come from one matmul** (``FastGPSA._qkv``) over the concatenated weights.
* **One** ``torch.lerp`` **mixes the two terms**, and a custom autograd Function
  (:class:`_GatedPositionalMix`) keeps only SDPA's own tensors for backward, so training
  saves less memory than autograd of the same ops would.
* **Tracing** (``jit.trace``, FX, ``torch.export``/``compile``, ONNX) never sees the cache:
  under :func:`is_tracing` P is computed from the weights, so a captured graph cannot hold a
  stale P as a constant.

With the gates fixed at 0.0 or 1.0 (test-time masking, :func:`convit.nn.attention.gates_fixed`)
only the branch that counts runs.  With attention dropout in training the layer falls back to
the reference: dropout acts on the mixed A, which cannot be split between the two terms.
On CUDA the layer runs both terms as one fused Triton kernel instead, where
:func:`convit.nn.triton_gpsa.applies` (switch: ``CONVIT_GPSA_KERNEL=0``).  Timings: docs/speed.md.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.fx
import torch.nn.functional as F

from . import triton_gpsa
from .attention import GPSA, Grid, _check_tokens, relative_offsets

# torch.fx.wrap patches a name in the globals of the module that registers it; register
# ``_check_tokens`` here too, so FX records it as one call from FastGPSA.forward as well.
torch.fx.wrap("_check_tokens")


def is_tracing() -> bool:
    """True while a tool records the model as a graph: ``torch.jit.trace`` / ``script``,
    ``torch.fx.symbolic_trace``, ``torch.compile`` / ``torch.export`` and ONNX export.

    The inference cache of P is eager-only state keyed by version counters and addresses; a
    graph recorded from it would hold P as a constant, silently wrong once other weights are
    loaded.
    """
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
        or _fx_tracing()
    )


def _fx_tracing() -> bool:
    # torch.fx exports no public flag; newer torch names it is_fx_symbolic_tracing.
    st = torch.fx._symbolic_trace
    flag = getattr(st, "is_fx_symbolic_tracing", None) or getattr(st, "is_fx_tracing", None)
    return bool(flag()) if flag is not None else False


@torch.fx.wrap  # one graph node under FX (it reads the dtype of a buffer)
def positional_attention_fast(
    w: torch.Tensor, b: torch.Tensor, rel: torch.Tensor, grid: Grid
) -> torch.Tensor:
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
        scores = scores.view(-1, N, N)  # [heads, N, N]
        # No subnormal numbers in P.  With the local init (and in trained models) far patches
        # get exp(-alpha d^2) ~ 1e-40: thousands of float32 subnormals per head, on which x86
        # CPUs run the softmax, its backward and the P @ v matmuls several times slower
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
    v_cols = v.permute(1, 2, 0, 3).reshape(h, N, B * d)  # [h, N, B*d]
    return torch.bmm(pos, v_cols).view(h, N, B, d).permute(2, 1, 0, 3)


def _mix_forward(content: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # content [B, N, h, d]; v [B, h, N, d] (any strides); pos [h, N, N]; g [h]
    y = _positional_values(pos, v)  # [B, N, h, d]
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
        grad_cols = grad.permute(2, 1, 0, 3).reshape(h, N, B * d)  # [h, N, B*d]
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
def gated_positional_mix(
    content: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """(1 - g_h) content + g_h P_h @ v_h; content [B, N, heads, d], v [B, heads, N, d],
    pos [heads, N, N], g [heads]; all of one dtype.  Returns [B, N, heads, d].

    The custom autograd Function is only used when a gradient is needed; inference, and
    TorchScript tracing (ONNX export), see the same ops as plain aten calls.
    """
    if (
        torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and (content.requires_grad or v.requires_grad or pos.requires_grad or g.requires_grad)
    ):
        return _GatedPositionalMix.apply(content, v, pos, g)
    return _mix_forward(content, v, pos, g)


class FastGPSA(GPSA):
    """:class:`~convit.nn.attention.GPSA` computed faster (module docstring); same parameters,
    same state dict, same outputs.  ``GPSA.forward(layer, x)`` still runs the paper's eq. 6."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # GPSA's arguments
        self._pos_cache: Optional[tuple] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """out = proj((1 - sigma) SDPA(q, k, v) + sigma P @ v): eq. 6 without materialising A."""
        B, N, C = x.shape
        _check_tokens(x, self.grid)
        if self.training and self.attn_drop_p > 0:
            # Dropout acts on the mixed A, so it cannot be split between the two terms.
            return super().forward(x)
        qkv = self._qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, d]
        g = self.gate()
        if triton_gpsa.applies(q) and (torch.compiler.is_compiling() or not is_tracing()):
            # CUDA: both terms in one fused Triton kernel (convit/nn/triton_gpsa.py); no dropout here.
            w = self.pos_proj.weight
            b = self.pos_proj.bias
            out = triton_gpsa.fused_gpsa(q, k, v, w, b, g, self.grid, self._gate_fixed)
        elif self._gate_fixed == 0.0:  # masking: content only (exact, one branch skipped)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        elif self._gate_fixed == 1.0:  # masking: positional only
            out = _positional_values(self.positional_attention().to(v.dtype), v)
        else:
            content = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, N, heads, d]
            pos = self.positional_attention().to(content.dtype)  # [heads, N, N]
            out = gated_positional_mix(content, v, pos, g.to(content.dtype))  # [B, N, heads, d]
        return self.proj_drop(self.proj(out.reshape(B, N, C)))

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, 3C] = x @ [W_qk; W_v]^T: q, k and v from ONE matmul.

        The weights are concatenated at every call (a [3C, C] copy, small next to the matmul
        itself), so the parameters and state-dict keys stay ``qk`` and ``v`` and nothing can go
        stale; autograd splits the gradient back.  Row order q | k | v matches ``qk``'s own
        q | k split, so column blocks of the result are exactly ``qk(x)`` and ``v(x)``.
        """
        w = torch.cat([self.qk.weight, self.v.weight])  # [3C, C]
        bq = self.qk.bias
        bv = self.v.bias
        if bq is None and bv is None:
            b = None
        else:
            b = torch.cat(
                [
                    bq if bq is not None else w.new_zeros(w.shape[0] - self.v.weight.shape[0]),
                    bv if bv is not None else w.new_zeros(self.v.weight.shape[0]),
                ]
            )
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
        w = self.pos_proj.weight
        b = self.pos_proj.bias
        if torch.is_grad_enabled() or is_tracing():
            return positional_attention_fast(w, b, self.rel_indices, self.grid)
        key = (w._version, b._version, w.data_ptr(), b.data_ptr(), self.grid, self.rel_indices.device)
        if self._pos_cache is None or self._pos_cache[0] != key:
            # w.detach()/b.detach() keep the keyed storages alive (no address reuse).
            pos = positional_attention_fast(w, b, self.rel_indices, self.grid)
            self._pos_cache = (key, pos, w.detach(), b.detach())
        return self._pos_cache[1]

    def set_grid(self, grid: Grid) -> None:
        """Rebuild the relative-offset table for another (H, W) patch grid; drop the cached P."""
        super().set_grid(grid)
        self._pos_cache = None

    def clear_cache(self) -> None:
        """Drop the cached positional attention (only needed after writes through ``.data``)."""
        self._pos_cache = None
