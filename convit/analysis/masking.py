"""Test-time masking of a trained ConViT (the masking experiment of the paper, tables 5-6).

A GPSA layer applies A = (1 - sigma(lambda)) A^content + sigma(lambda) A^pos (eq. 6).  Masking
one part means evaluating the trained model with sigma(lambda) forced to a constant:

* mask the **content** part: sigma := 1, the layer keeps only its positional attention;
* mask the **positional** part: sigma := 0, the layer keeps only its content attention
  (exactly what lambda -> -inf would give).

This is done with :func:`convit.nn.attention.gates_fixed` on the first k GPSA blocks.  Separately, the
absolute position embedding can be removed (temporarily zeroed; adding zero is the same as
skipping it), which tells how much the model relies on it rather than on GPSA's relative
positions.  Everything is restored on exit, even after an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Optional

import torch
import torch.nn as nn

from ..nn.attention import gates_fixed
from .locality import eval_mode

__all__ = ["MASK_MODES", "masked", "evaluate_masked", "masking_table"]

# mode -> value that replaces sigma(lambda) in the masked GPSA blocks
MASK_MODES = {"none": None, "content": 1.0, "positional": 0.0}


@contextmanager
def masked(
    model: nn.Module, mode: str = "none", k: Optional[int] = None, remove_pos_embed: bool = False
) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs with a part of its first k GPSA layers masked.

    mode: "none", "content" (keep only positional attention) or "positional" (keep only content
        attention).
    k: number of leading GPSA blocks to mask (None = all of them; 0 = none).
    remove_pos_embed: also zero the absolute position embedding (a no-op for models without one).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {sorted(MASK_MODES)}, got {mode!r}")
    blocks = model.gpsa_blocks()
    k = len(blocks) if k is None else int(k)
    if not 0 <= k <= len(blocks):
        raise ValueError(f"k={k} is outside 0..{len(blocks)} (the model has {len(blocks)} GPSA blocks)")
    value = MASK_MODES[mode]
    with ExitStack() as stack:
        if value is not None:
            stack.enter_context(gates_fixed([b.attn for b in blocks[:k]], value))
        if remove_pos_embed:
            stack.enter_context(_no_pos_embed(model))
        yield model


@contextmanager
def _no_pos_embed(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s position embedding is zero (a no-op without one)."""
    pos = getattr(model, "pos_embed", None)
    if pos is None:
        yield
        return
    saved = pos.detach().clone()
    try:
        with torch.no_grad():
            pos.zero_()
        yield
    finally:
        with torch.no_grad():
            pos.copy_(saved)


@torch.no_grad()
def evaluate_masked(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mode: str = "none",
    k: Optional[int] = None,
    remove_pos_embed: bool = False,
    device: Optional[torch.device] = None,
    max_batches: Optional[int] = None,
) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``loader`` under :func:`masked` (eval mode; the
    model's training mode, gates and position embedding are restored afterwards)."""
    device = device or next(model.parameters()).device
    correct = total = 0
    with eval_mode(model), masked(model, mode, k, remove_pos_embed):
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            pred = model(x.to(device)).argmax(dim=-1).cpu()
            correct += int((pred == y.cpu()).sum())
            total += int(y.numel())
    if total == 0:
        raise ValueError("the loader yielded no images")
    return 100.0 * correct / total


def masking_table(
    model: nn.Module,
    loader,
    ks: Optional[list[int]] = None,
    device: Optional[torch.device] = None,
    max_batches: Optional[int] = None,
) -> list[dict]:
    """Top-1 of the unmasked model, then with the content / positional part of the first k GPSA
    blocks masked for each k in ``ks`` (default: every k from 1 to the number of GPSA blocks),
    then without the position embedding.  Rows: {"mode", "k", "remove_pos_embed", "top1"}."""
    n = len(model.gpsa_blocks())
    ks = list(range(1, n + 1)) if ks is None else ks
    rows = [
        dict(
            mode="none",
            k=0,
            remove_pos_embed=False,
            top1=evaluate_masked(model, loader, device=device, max_batches=max_batches),
        )
    ]
    for mode in ("content", "positional"):
        for k in ks:
            rows.append(
                dict(
                    mode=mode,
                    k=k,
                    remove_pos_embed=False,
                    top1=evaluate_masked(model, loader, mode, k, device=device, max_batches=max_batches),
                )
            )
    if getattr(model, "pos_embed", None) is not None:
        rows.append(
            dict(
                mode="none",
                k=0,
                remove_pos_embed=True,
                top1=evaluate_masked(
                    model, loader, remove_pos_embed=True, device=device, max_batches=max_batches
                ),
            )
        )
    return rows
