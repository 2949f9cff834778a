"""Locality measures of a ConViT/DeiT: nonlocality, gates, attention centres and spans.

Read beside d'Ascoli et al. (ICML 2021):

* eq. 5  positional attention  A^pos_ij = softmax_j(v_pos,h^T r_ij), r_ij = (dx, dy, dx^2+dy^2)
* eq. 6  GPSA mixes content and positional attention with the gate sigma(lambda_h)
* eq. 7  convolutional init  v_pos,h = -alpha_h (1, -2 Delta_h,x, -2 Delta_h,y)  (paper order)
* eq. 8  nonlocality  D^{l,h} = (1/L) sum_ij A^{l,h}_ij ||delta_ij||

Conventions used everywhere in this module (and in ``docs/analysis.md``):

* Distances ||delta_ij|| are Euclidean, in patches, between the centres of patches i and j of
  the model's (H, W) patch grid (row-major; non-square grids are fine).
* Every layer is measured on its OWN input (``ConViT.attention_maps``: norm1 of the block
  input, in a single forward pass).  The official script fed the patch embeddings to every
  layer, which is only right for the first one.
* Class token (MHSA blocks only; GPSA blocks never see it): its row and column are dropped and
  each remaining query row is renormalised to sum to 1 over the patches.  D then measures how
  far from the query the head looks *within the image*, whatever share of its attention goes
  to the class token.  L is the number of query patches, N = H * W.
* Results are averaged over the images of the batch (the positional part does not depend on
  the image).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn as nn

from ..nn.attention import GPSA, AttentionMaps, Grid, relative_offsets

__all__ = [
    "pairwise_distances",
    "patch_attention",
    "attention_nonlocality",
    "layer_nonlocality",
    "nonlocality",
    "gates",
    "positional_centres",
    "positional_spans",
    "centres_and_spans",
    "attention_grids",
    "locality_summary",
    "eval_mode",
    "mean_pairwise_distance",
]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration of the block, then restore every module's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t


def pairwise_distances(grid: Grid, device=None) -> torch.Tensor:
    """||delta_ij|| in patches for every pair of patches of an (H, W) grid, as [N, N] (eq. 8)."""
    return _distances(tuple(grid), None if device is None else torch.device(device)).clone()


@functools.lru_cache(maxsize=32)
def _distances(grid: Grid, device: Optional[torch.device]) -> torch.Tensor:
    """:func:`pairwise_distances`, made once per grid and device for the measures below, which
    read it once per block and term (read only: shared between calls)."""
    return relative_offsets(grid, device=device)[..., 2].sqrt()


def patch_attention(attn: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The patch-to-patch part of an attention tensor [..., T, T], rows summing to 1.

    T == num_patches: returned as is (GPSA maps).  T == num_patches + 1: the class token is at
    index 0 (MHSA maps); its row and column are removed and each query row is renormalised over
    the patches (the class-token convention of this module).
    """
    t = attn.shape[-1]
    if t == num_patches:
        return attn
    if t != num_patches + 1:
        raise ValueError(
            f"attention over {t} tokens does not match a grid of {num_patches} patches "
            "(with or without one class token)"
        )
    a = attn[..., 1:, 1:]
    return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def attention_nonlocality(attn: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Paper eq. 8 per head: D_h = (1/L) sum_ij A_hij ||delta_ij||, averaged over leading dims.

    attn: [heads, T, T] or [B, heads, T, T] (T = N or N + 1 with the class token first; see
    :func:`patch_attention`).  Returns [heads] in patches.
    """
    n = grid[0] * grid[1]
    a = patch_attention(attn.detach().float(), n)  # a measurement: no gradient
    d = _distances(tuple(grid), a.device)
    per_query = (a * d).sum(dim=-1)  # [..., heads, L]: expected distance of each query
    per_head = per_query.mean(dim=-1)  # (1/L) sum_i
    while per_head.ndim > 1:  # average over the batch
        per_head = per_head.mean(dim=0)
    return per_head


def layer_nonlocality(maps: AttentionMaps, grid: Grid) -> dict[str, Optional[torch.Tensor]]:
    """Nonlocality of one block: ``full`` (the attention it applies, eq. 6), and for GPSA blocks
    the ``content`` and ``positional`` parts separately (None for MHSA)."""
    out: dict[str, Optional[torch.Tensor]] = {
        "full": attention_nonlocality(maps.combined, grid),
        "content": None,
        "positional": None,
    }
    if maps.positional is not None:
        out["content"] = attention_nonlocality(maps.content, grid)
        out["positional"] = attention_nonlocality(maps.positional, grid)
    return out


def _model_grid(model: nn.Module, images: torch.Tensor) -> Grid:
    return model.patch_embed.grid_for(images)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def nonlocality(
    model: nn.Module, images: torch.Tensor, chunk: int = 32
) -> list[dict[str, Optional[torch.Tensor]]]:
    """:func:`layer_nonlocality` of every block (in order), each on its own input, in eval mode.

    Images go through in chunks of ``chunk`` (every block's [B, heads, T, T] maps are held at
    once, which is large for big models); the per-chunk means are weighted by chunk size.
    """
    grid = _model_grid(model, images)
    images = images.to(_device(model))
    total: list[dict[str, Optional[torch.Tensor]]] = []
    with eval_mode(model):
        for start in range(0, images.shape[0], chunk):
            x = images[start : start + chunk]
            w = x.shape[0] / images.shape[0]
            layers = [layer_nonlocality(m, grid) for m in model.attention_maps(x)]
            if not total:
                total = [{k: None if v is None else v * w for k, v in entry.items()} for entry in layers]
            else:
                for acc, entry in zip(total, layers):
                    for k, v in entry.items():
                        if v is not None:
                            acc[k] = acc[k] + v * w
    return total


def gates(model: nn.Module) -> list[torch.Tensor]:
    """sigma(lambda_h) per head for each GPSA block (eq. 6), ignoring any gate fixed by ``gates_fixed``."""
    return [torch.sigmoid(b.attn.gating_param.detach().float()).cpu() for b in model.gpsa_blocks()]


def _pos_weights(layer: GPSA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = layer.pos_proj.weight.detach().float().cpu()  # [heads, 3] in r order (dx, dy, d^2)
    return w[:, 0], w[:, 1], w[:, 2]


def positional_centres(layer: GPSA) -> torch.Tensor:
    """Attention centre Delta_h of each head's positional score, [heads, 2] as (dx, dy) patches.

    The score v_dx dx + v_dy dy + v_d2 (dx^2 + dy^2) is a paraboloid; for v_d2 < 0 it peaks at
    Delta = -(v_dx, v_dy) / (2 v_d2).  At the convolutional init (eq. 7, v = alpha (2 Delta, -1))
    this gives back ``head_centres``.  Heads with v_d2 >= 0 have no maximum (they are pushed
    away from the query): their centre is NaN.
    """
    vx, vy, v2 = _pos_weights(layer)
    centres = torch.stack([-vx / (2 * v2), -vy / (2 * v2)], dim=-1)
    centres[v2 >= 0] = float("nan")
    return centres


def positional_spans(layer: GPSA) -> torch.Tensor:
    """Span 1/|v_d2| of each head's positional attention, [heads] (1/alpha at init, eq. 7).

    A head with v_d2 < 0 attends like exp(-|v_d2| ||delta - Delta||^2), a Gaussian of standard
    deviation sqrt(span / 2) patches; larger span = less local.  v_d2 == 0 gives inf.
    """
    _, _, v2 = _pos_weights(layer)
    return 1.0 / v2.abs()


def centres_and_spans(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(centres [heads, 2], spans [heads]) for each GPSA block."""
    blocks = model.gpsa_blocks()
    return [positional_centres(b.attn) for b in blocks], [positional_spans(b.attn) for b in blocks]


@torch.no_grad()
def attention_grids(
    model: nn.Module, image: torch.Tensor, query: tuple[int, int]
) -> list[dict[str, Optional[torch.Tensor]]]:
    """What each head of each block attends to from one query patch, as [heads, H, W] grids.

    image: [C, H, W] or [1, C, H, W] (already normalised for the model).  query: (row, col) of
    the query patch.  For each block returns ``content``, ``positional`` and ``combined``
    (eq. 6); MHSA blocks have only content == combined (positional None), with the class token
    removed and renormalised as in :func:`patch_attention`.  Also ``gate`` ([heads] or None)
    and ``cls_mass`` ([heads]: the query's attention on the class token before renormalising,
    MHSA only, else None).
    """
    if image.ndim == 3:
        image = image.unsqueeze(0)
    grid = _model_grid(model, image)
    image = image.to(_device(model))
    h, w = grid
    r, c = query
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"query patch {query} is outside the {h}x{w} patch grid")
    q = r * w + c
    n = h * w
    with eval_mode(model):
        maps = model.attention_maps(image)
    out = []
    for m in maps:

        def row(a: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if a is None:
                return None
            if a.ndim == 4:
                a = a[0]
            return patch_attention(a.float(), n)[:, q].reshape(-1, h, w).cpu()

        cls_mass = None
        if m.content.shape[-1] == n + 1:  # MHSA with the class token at index 0
            cls_mass = m.content[0, :, q + 1, 0].float().cpu()
        out.append(
            {
                "content": row(m.content),
                "positional": row(m.positional),
                "combined": row(m.combined),
                "gate": None if m.gate is None else m.gate.detach().float().cpu(),
                "cls_mass": cls_mass,
            }
        )
    return out


def _floats(t: Optional[torch.Tensor]) -> Optional[list]:
    """Tensor -> nested lists of floats, with None for non-finite values (strict JSON)."""
    if t is None:
        return None

    def conv(x):
        if isinstance(x, list):
            return [conv(v) for v in x]
        return float(x) if math.isfinite(x) else None

    return conv(t.tolist())


@torch.no_grad()
def locality_summary(model: nn.Module, images: torch.Tensor, max_images: int = 64) -> dict:
    """All locality measures of a model in one JSON-serialisable dict (logged every epoch).

    One forward pass over at most ``max_images`` images in eval mode (the caller's training
    mode is restored).  Keys (layers in block order; GPSA-only keys in GPSA-block order):

    * ``nonlocality``: [[D per head] per block] of the applied attention (eq. 8, patches)
    * ``nonlocality_content`` / ``nonlocality_positional``: same for the two terms of eq. 6,
      None for MHSA blocks
    * ``gates``: [[sigma(lambda_h)] per GPSA block]
    * ``centres``: [[[dx, dy] per head] per GPSA block] (None where the head has no maximum)
    * ``spans``: [[1/|v_d2|] per GPSA block]
    * ``layer_types``: "gpsa" / "mhsa" per block; ``grid``: [H, W]; ``num_images``.
    """
    images = images[:max_images]
    layers = nonlocality(model, images)
    centres, spans = centres_and_spans(model)
    return {
        "nonlocality": [_floats(entry["full"]) for entry in layers],
        "nonlocality_content": [_floats(entry["content"]) for entry in layers],
        "nonlocality_positional": [_floats(entry["positional"]) for entry in layers],
        "gates": [_floats(g) for g in gates(model)],
        "centres": [_floats(c) for c in centres],
        "spans": [_floats(s) for s in spans],
        "layer_types": ["gpsa" if b.use_gpsa else "mhsa" for b in model.blocks],
        "grid": list(_model_grid(model, images)),
        "num_images": int(images.shape[0]),
    }


def mean_pairwise_distance(grid: Grid) -> float:
    """Mean ||delta_ij|| over all ordered pairs (i, j) of patches: D of a uniform head."""
    return float(pairwise_distances(grid).mean())
