"""When FastGPSA runs GPSA as one fused Triton kernel, and the switch that turns it off.

The kernel (:mod:`convit.nn.gpsa_kernel_ops`, the op ``convit::gpsa_fused``) computes
``(1 - g) softmax(Q K^T / sqrt(d)) V + g P V`` per head in one pass over the keys, with P made
in registers from the patch coordinates: exactly GPSA's eq. 6 when attention dropout is off.
:meth:`convit.nn.fast_gpsa.FastGPSA.forward` asks :func:`applies` and otherwise runs its torch
path unchanged; so CPUs, float64, attention dropout in training and graph recorders other than
``torch.compile`` (jit trace/script, FX, ONNX: see ``FastGPSA.forward``) never see the kernel.

Switching it off, e.g. to measure both paths:

* ``CONVIT_GPSA_KERNEL=0`` in the environment (read when this module is imported);
* ``with convit.nn.triton_gpsa.enabled(False): ...`` at run time (nests; restored on exit).
  Under ``torch.compile`` the setting is a guard: changing it recompiles.

This module does not import triton; the kernel module is imported on the first call that runs
it, so ``TRITON_INTERPRET=1`` (Triton's CPU interpreter) can still be set before that.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch

from .attention import Grid

#: The environment variable that turns the kernel off ("0") for the whole process.
ENV_VAR = "CONVIT_GPSA_KERNEL"
#: Device types the kernel is chosen on.  Only CUDA: the tests add "cpu" to run the kernel in
#: Triton's interpreter through the layer.
DEVICES: tuple[str, ...] = ("cuda",)
#: The dtypes and the widest head the kernel takes (gpsa_kernel_ops.DTYPES / MAX_HEAD_DIM,
#: repeated here so that deciding does not import triton).
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128

_enabled: bool = os.environ.get(ENV_VAR, "1").strip() != "0"
# triton is installed and torch can register an op around it (custom_op: torch >= 2.4).
_found: bool = importlib.util.find_spec("triton") is not None and hasattr(torch.library, "custom_op")


@contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Within the block, FastGPSA uses the kernel (where it applies) only if ``on``."""
    global _enabled
    before = _enabled
    _enabled = bool(on)
    try:
        yield
    finally:
        _enabled = before


def is_enabled() -> bool:
    """Whether the switch is on (``CONVIT_GPSA_KERNEL`` and :func:`enabled`)."""
    return _enabled


def available() -> bool:
    """Whether the kernel module imports here (triton and a torch that can register it)."""
    if not _found:
        return False
    try:
        kernel_ops()
    except ImportError:
        return False
    return True


def applies(q: torch.Tensor) -> bool:
    """Whether FastGPSA may run the kernel on q ([B, heads, N, d]): on CUDA, switched on, triton
    present, a dtype of :data:`DTYPES` and a head of at most :data:`MAX_HEAD_DIM`.  The caller
    checks attention dropout and graph recorders."""
    return (
        _enabled
        and _found
        and isinstance(q, torch.Tensor)
        and q.device.type in DEVICES
        and q.dtype in DTYPES
        and q.shape[-1] <= MAX_HEAD_DIM
    )


def kernel_ops():
    """The kernel module (imports triton on the first call)."""
    from . import gpsa_kernel_ops

    return gpsa_kernel_ops


def fused_gpsa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    gate: torch.Tensor,
    grid: Grid,
    gate_fixed: Optional[float] = None,
) -> torch.Tensor:
    """GPSA's mixed attention applied to v, [B, N, heads, d], from q, k, v [B, heads, N, d],
    ``pos_proj``'s weight [heads, 3] and bias [heads], the gates g [heads] and the (H, W) grid.
    With the gate fixed at 0.0 or 1.0 (:func:`convit.nn.attention.gates_fixed`) only the term
    that counts is computed, as in FastGPSA."""
    return kernel_ops().gpsa_fused(
        q,
        k,
        v,
        pos_weight.float(),
        pos_bias.float(),
        gate.float(),
        int(grid[0]),
        int(grid[1]),
        gate_fixed != 1.0,
        gate_fixed != 0.0,
    )
