"""How much memory training a model takes, and how much the machine has, so that a run that
cannot fit is refused before it starts instead of being killed by the kernel with nothing printed.

:func:`estimate_training_memory` adds up what training a :class:`~convit.nn.model.ConViTConfig` at
a batch size holds at its peak: weights and buffers (counted exactly on a model built on the
meta device), gradients and optimizer state, then the largest of three phases:

* **training step**: activations saved for backward.  Per token and block these are linear in
  the width; what grows with the square of the token count N is, per GPSA block, its
  ``[heads, N, N]`` positional attention (shared by the batch) and, where attention is
  materialised, ``[batch, heads, N, N]`` maps: GPSA with attention dropout (the reference path
  of :class:`~convit.nn.fast_gpsa.FastGPSA`) and, on the CPU, MHSA with attention dropout
  (PyTorch's CPU flash kernel has no dropout, so SDPA falls back to its math kernel);
* **locality measure** (``convit train``'s per-epoch log): every block's ``[32, heads, T, T]``
  maps at once;
* **building the model**: each GPSA block's ``[N, N, 3]`` offset table, built in int64.

The constants were calibrated against the measured peaks of real runs (docs/images.md, "Runs
too large for the machine", with the command).  :func:`available_memory` reads what the device
has (free GPU memory; on the CPU the smaller of ``MemAvailable`` and the cgroup's room), and
:func:`check_training_memory` raises :class:`MemoryRefused` naming both numbers and the fixes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from .model import ConViT, ConViTConfig

__all__ = [
    "MemoryEstimate",
    "MemoryRefused",
    "estimate_training_memory",
    "available_memory",
    "check_training_memory",
    "LOCALITY_CHUNK",
]

#: Images whose attention maps the locality measure holds at once (``nonlocality``'s chunk).
LOCALITY_CHUNK = 32
#: Tensors of the block's width saved for backward per token and block, besides the MLP's
#: hidden layer (twice): layer norms, q/k/v, attention output, projections and residuals.
_LINEAR_SAVED = 10.0
#: Measured peaks hold this many times the activations counted (autograd's and the allocator's
#: own: gradients of the last block, workspaces); fitted on the growth from batch 32 to 128.
_LINEAR_MEASURED = 1.6
#: What any training step adds besides the terms below (allocator pools, small tensors).
_OVERHEAD = 30_000_000
#: Peak bytes per pair of patches while one offset table is built (its int64 temporaries and
#: the float32 table itself, 12 of them), as measured.
_OFFSETS_BUILD = 53


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes training is expected to hold at its peak: ``parts`` (what always stays: weights and
    buffers, gradients and optimizer state, and the largest ``phase``), and every phase."""

    parts: dict[str, int]
    phases: dict[str, int]
    tokens: int  # patch tokens an image

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """``about 23.4 GB (weights and buffers 5.6 GB, ...)``."""
        return f"about {_gb(self.total)} (" + ", ".join(f"{k} {_gb(v)}" for k, v in self.parts.items()) + ")"


class MemoryRefused(ValueError):
    """Training would need more memory than the device has (the message says what to change)."""


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _sizes(cfg: ConViTConfig) -> tuple[int, int]:
    """(parameters, buffer bytes) of the model, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = ConViT(cfg)
    return (
        sum(p.numel() for p in model.parameters()),
        sum(b.numel() * b.element_size() for b in model.buffers()),
    )


def _phases(cfg: ConViTConfig, batch: int, act: int, cpu: bool, locality_images: int) -> dict[str, int]:
    """Peak bytes of each phase beyond weights and optimizer state (module docstring)."""
    n = cfg.grid[0] * cfg.grid[1]
    t = n + 1  # MHSA blocks also see the class token
    gpsa = cfg.local_up_to_layer
    mhsa = cfg.depth - cfg.local_up_to_layer
    h = cfg.num_heads
    dropout = cfg.attn_drop_rate > 0
    width = cfg.embed_dim * (_LINEAR_SAVED + 2 * cfg.mlp_ratio) * act * _LINEAR_MEASURED
    linear = batch * (gpsa * n + mhsa * t) * width
    positional = gpsa * 5 * h * n * n + (13 * h * n * n if gpsa else 0)  # P and its mask, + one being built
    if (
        dropout
    ):  # materialised [B, heads, N, N]: softmax, dropout mask (bytes) and output; + scores being built
        positional += gpsa * (2 * act + 1) * batch * h * n * n + (act * batch * h * n * n if gpsa else 0)
    # SDPA's math kernel: weights, dropout mask and output saved, + scores being built
    dense = (3 * mhsa + 1) * act * batch * h * t * t if dropout and cpu and mhsa else 0
    phases = {"training activations": int(linear + positional + dense)}
    if locality_images:
        c = min(LOCALITY_CHUNK, locality_images)
        maps = 4 * c * h * (gpsa * n * n + mhsa * t * t) + 4 * gpsa * h * n * n
        phases["locality measure"] = int(maps + 3 * 4 * c * h * t * t + _OFFSETS_BUILD * n * n)
    if gpsa:
        phases["building the model"] = (_OFFSETS_BUILD - 12) * n * n  # the table is among the buffers
    return phases


def estimate_training_memory(
    cfg: ConViTConfig,
    batch_size: int,
    *,
    amp: bool = False,
    ema: bool = False,
    optimizer_states: int = 2,
    locality_images: int = 0,
    device: str = "cpu",
) -> MemoryEstimate:
    """Peak bytes of training ``cfg`` on batches of ``batch_size`` (one process; module docstring).

    amp: activations in 16 bits.  ema: a copy of the weights.  optimizer_states: tensors per
    parameter (AdamW: 2, SGD with momentum: 1).  locality_images: images the per-epoch locality
    measure looks at (0: not measured).  device: its type (``cpu`` or ``cuda``), which decides
    whether MHSA with attention dropout materialises its maps.
    """
    params, buffers = _sizes(cfg)
    # The inference cache of P (FastGPSA) stays alive between evaluations.
    cached = 4 * cfg.local_up_to_layer * cfg.num_heads * (cfg.grid[0] * cfg.grid[1]) ** 2
    phases = _phases(cfg, batch_size, 2 if amp else 4, device == "cpu", locality_images)
    peak = max(phases, key=lambda k: phases[k])
    parts = {
        "weights and buffers": 4 * params + buffers + _OVERHEAD,
        "gradients and optimizer state": 4 * params * (1 + optimizer_states + int(ema)),
        **({"cached positional attention": cached} if cached > _OVERHEAD else {}),
        peak: phases[peak],
    }
    return MemoryEstimate(parts, phases, cfg.grid[0] * cfg.grid[1])


# ---------------------------------------------------------------------------------------------
# What the machine has
# ---------------------------------------------------------------------------------------------


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == key and words[1].isdigit():
                return int(words[1])
    except OSError:
        pass
    return 0


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> Optional[tuple[int, str]]:
    """Bytes the cgroup still lets this process use (limit - usage + reclaimable page cache),
    cgroup v2 or v1; None without a limit."""
    for limit_f, usage_f, inactive in (
        ("memory.max", "memory.current", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"),
    ):
        limit = _read_int(root / limit_f)
        usage = _read_int(root / usage_f)
        if limit is None or usage is None or limit >= 1 << 60:  # "max", or v1's "unlimited"
            continue
        stat = root / limit_f.replace(Path(limit_f).name, "memory.stat")
        return max(0, limit - usage + _stat(stat, inactive)), f"the cgroup limit in {root / limit_f}"
    return None


def available_memory(
    device: torch.device, *, meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> Optional[tuple[int, str]]:
    """(bytes free for this run, where that was read), or None when it cannot be told (MPS, no
    /proc).  CUDA: ``torch.cuda.mem_get_info``.  CPU: the smaller of ``MemAvailable`` and the
    cgroup's room."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (torch.cuda.mem_get_info)"
    if device.type != "cpu":
        return None
    found: list[tuple[int, str]] = []
    avail = _stat(meminfo, "MemAvailable:") if meminfo.is_file() else 0
    if avail:
        found.append((avail * 1024, f"MemAvailable in {meminfo}"))  # kB
    room = _cgroup_room(cgroup)
    if room is not None:
        found.append(room)
    return min(found) if found else None


# ---------------------------------------------------------------------------------------------
# The refusal
# ---------------------------------------------------------------------------------------------


def _fixes(cfg: ConViTConfig, batch: int, room: int, est: MemoryEstimate, **kw) -> list[str]:
    """What would fit in ``room`` bytes: a smaller image, larger patches, a smaller batch."""

    def need(c: ConViTConfig, b: int = batch) -> int:
        return estimate_training_memory(c, b, **kw).total

    fixes = []
    h, w = cfg.img_size
    p = cfg.patch_size
    lo, hi = 0, min(h, w) // p - 1  # the largest square size k * p below this one that fits
    while h == w and lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(replace(cfg, img_size=(mid * p,) * 2)) <= room else (lo, mid - 1)
    if lo and h == w:
        fixes.append(f"--img-size {lo * p} ({_gb(need(replace(cfg, img_size=(lo * p,) * 2)))})")
    for q in (q for q in range(p + 1, min(h, w) + 1) if h % q == 0 and w % q == 0):
        if need(replace(cfg, patch_size=q)) <= room:
            fixes.append(f"--model-kwargs patch_size={q} ({_gb(need(replace(cfg, patch_size=q)))})")
            break
    b = batch // 2
    while b >= 1 and need(cfg, b) > room:
        b //= 2
    if b >= 1:
        fixes.append(f"--batch-size {b} ({_gb(need(cfg, b))})")
    else:
        fixes.append(f"not --batch-size alone (batch 1 needs {_gb(need(cfg, 1))})")
    without = estimate_training_memory(cfg, batch, **{**kw, "locality_images": 0}).total
    if "locality measure" in est.parts and without <= room:
        fixes.append(
            f"--no-locality ({_gb(without)}: the per-epoch locality measure alone needs "
            f"{_gb(est.parts['locality measure'])})"
        )
    return fixes


def check_training_memory(
    cfg: ConViTConfig,
    batch_size: int,
    device: torch.device,
    *,
    processes: int = 1,
    what: str = "training",
    **kw,
) -> MemoryEstimate:
    """The estimate of :func:`estimate_training_memory` (``kw``: its options), or
    :class:`MemoryRefused` when it exceeds :func:`available_memory` (``processes`` on one CPU
    share it); the message names both numbers, the token count and what would fit."""
    est = estimate_training_memory(cfg, batch_size, device=device.type, **kw)
    have = available_memory(device)
    shared = processes if device.type == "cpu" else 1
    if have is None or est.total * shared <= have[0]:
        return est
    room = have[0] // shared
    h, w = cfg.img_size
    p = cfg.patch_size
    fixes = _fixes(cfg, batch_size, room, est, device=device.type, **kw)
    raise MemoryRefused(
        f"{what} would need {est.describe()}{f' in each of {shared} processes' if shared > 1 else ''}, "
        f"but {_gb(have[0])} is available ({have[1]}): {h}x{w} px images in {p}x{p} patches are "
        f"{est.tokens:,} tokens each, and attention memory grows with the square of that (batch "
        f"{batch_size}). "
        + (
            "What would fit: " + "; ".join(fixes)
            if fixes
            else "Lower --img-size, raise the patch size (--model-kwargs patch_size=N) or lower --batch-size"
        )
        + ". --no-memory-check starts it anyway."
    )
