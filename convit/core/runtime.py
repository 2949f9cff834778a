"""Where and how a process computes: device, autocast dtype, CPU threads, random generators.

Small and free of policy about runs or models, so the trainer, ``convit eval`` and
``convit predict`` resolve ``--device`` / ``--amp`` the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any, Callable, Optional

import numpy as np
import torch

__all__ = [
    "resolve_device",
    "resolve_amp",
    "cpu_count",
    "set_threads",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "tf32_matmuls",
]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's GPU under torchrun) if available, else CPU.

    Asking for a device that is not there is an error here rather than a crash later.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was asked for but MPS is not available")
    return device


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype: ``auto`` is bf16 on CUDA (no loss scaling needed) and full precision elsewhere."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, which containers and ``taskset`` set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: Optional[int], device: torch.device, processes_per_machine: int = 1) -> None:
    """Intra-op threads: ``threads`` if given; on CPU, otherwise the CPUs shared out between the
    processes of this machine (torch's default would give every DDP process all of them)."""
    if threads is not None or device.type == "cpu":
        torch.set_num_threads(threads or max(1, cpu_count() // processes_per_machine))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (callers add their rank).

    timm.utils.random_seed does the same but hands ``seed + rank`` to numpy unreduced, which
    rejects seeds < 0 or >= 2**32 that torch and convit.data accept; below 2**32 the streams
    are identical, so ours is kept for the wider range.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's random generators, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (the CUDA part only on as many GPUs as before)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True) -> Iterator[None]:
    """CUDA float32 matmuls and cuDNN convolutions in TF32 (``enabled``) for the duration of the
    ``with`` block, the process's previous settings restored after it, even on an error.

    Scoped rather than set once for the process: the setting changes numerics, so only the code
    that asks for it (a run whose numbers were measured with it) may have it, and code running
    after it in the same process gets what it had before.
    """
    restore = _tf32_restorer()
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        restore()


def _tf32_restorer() -> Callable[[], None]:
    """A function that puts the float32 precision settings back as they are now.

    torch has two ways to set them: the float32 matmul precision ("highest", "high", "medium";
    the ``allow_tf32`` flags are faces of it) and, in newer versions, a precision per backend,
    after whose use the first way's reads raise.  The settings are saved in the terms that can
    be read; restoring the matmul precision rather than its flag keeps a "medium" as it was.
    """
    try:
        precision = torch.get_float32_matmul_precision()
        cudnn = torch.backends.cudnn.allow_tf32
    except RuntimeError:  # the per-backend settings were used
        backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
        saved = [b.fp32_precision for b in backends]

        def put_back_each() -> None:
            for backend, value in zip(backends, saved):
                backend.fp32_precision = value

        return put_back_each

    def put_back() -> None:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn

    return put_back
