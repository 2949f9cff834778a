"""The two building blocks of ConViT besides attention: the patch embedding and the
pre-norm transformer block (attention + MLP, each with a residual and drop-path)."""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn as nn

from .attention import MHSA, Grid
from .fast_gpsa import FastGPSA


# torch.fx.wrap: FX records this check as one call instead of failing on `!=` between traced
# sizes, so fx.symbolic_trace and torchvision's feature extractor see past it (as timm's
# notrace registry does for its models).
@torch.fx.wrap
def check_images(
    x: torch.Tensor, in_chans: int, patch_size: int, img_size: tuple[int, int], dynamic: bool
) -> None:
    """Raise a clear error for images the model cannot take."""
    if x.ndim != 4:
        raise ValueError(f"expected images as [B, C, H, W], got shape {tuple(x.shape)}")
    _, c, h, w = x.shape
    if c != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {c} (input shape {tuple(x.shape)})")
    if h % patch_size or w % patch_size:
        raise ValueError(f"input size {h}x{w} is not divisible by the patch size {patch_size}")
    if not dynamic and (h, w) != tuple(img_size):
        raise ValueError(
            f"input size {h}x{w} differs from the model's img_size {img_size[0]}x{img_size[1]}; "
            "build the model with dynamic_img_size=True to accept other sizes"
        )


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: [B, C_in, H, W] -> [B, N, C], N = (H/p)(W/p)."""

    def __init__(
        self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, dynamic: bool = False
    ) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.dynamic = dynamic
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def grid_for(self, x: torch.Tensor) -> Grid:
        """The (H, W) patch grid of images x, after checking that the model can take them."""
        check_images(x, self.in_chans, self.patch_size, self.img_size, self.dynamic)
        if not self.dynamic:
            return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        if isinstance(x, torch.fx.Proxy):
            raise RuntimeError(
                "torch.fx symbolic tracing needs a fixed input size: build the model "
                "with dynamic_img_size=False (torch.jit.trace and torch.export handle both)"
            )
        return (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, C]


@torch.no_grad()
def trunc_normal_(
    tensor: torch.Tensor, std: float = 1.0, mean: float = 0.0, a: float = -2.0, b: float = 2.0
) -> torch.Tensor:
    """Fill ``tensor`` in place from N(mean, std^2) truncated to [a, b] (absolute bounds).

    Inverse-CDF sampling: draw u uniformly between the normal CDF values of the bounds (mapped
    to the erf scale, 2 * cdf - 1), then x = mean + std * sqrt(2) * erfinv(u).  The same draws
    and the same operations in the same order as timm's ``trunc_normal_``, which the official
    code used, so a seed gives timm's initial weights bit for bit (tests/test_model.py checks);
    ``torch.nn.init.trunc_normal_`` now samples differently.  Written here so that building a
    model does not import timm (whose package imports huggingface_hub).
    """

    def cdf(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    lo = cdf((a - mean) / std)
    hi = cdf((b - mean) / std)
    tensor.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_()
    return tensor.mul_(std * math.sqrt(2.0)).add_(mean).clamp_(min=a, max=b)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a whole sample with probability
    ``p`` and scale the kept ones by 1 / (1 - p) (one Bernoulli draw per sample, as timm)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # [B, 1, 1]
        return x * (mask.div_(keep) if keep > 0 else mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """The block's feed-forward part: fc1 -> GELU -> dropout -> fc2 -> dropout (timm's key names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block whose attention is GPSA (patch tokens only) or MHSA."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_gpsa: bool = False,
        locality_strength: float = 1.0,
        grid: Grid = (14, 14),
    ) -> None:
        super().__init__()
        self.use_gpsa = use_gpsa
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if use_gpsa:
            self.attn = FastGPSA(dim, num_heads, qkv_bias, attn_drop, proj_drop, locality_strength, grid)
        else:
            self.attn = MHSA(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
