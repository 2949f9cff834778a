"""The ConViT model: a DeiT whose first ``local_up_to_layer`` blocks use GPSA.

With ``local_up_to_layer=0`` the same class is a DeiT (the class token joins at the start and
gets a slot in the position embedding, exactly as in timm's ``vit_*``/``deit_*`` models).
Every knob lives in :class:`ConViTConfig`; the state-dict keys are those of the official code
and timm.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from torch.utils.checkpoint import checkpoint

from .attention import GPSA, MHSA, AttentionMaps, Grid


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v}")
    return v


@dataclass
class ConViTConfig:
    """Every architectural knob of ConViT/DeiT in one place.

    ``embed_dim`` is the total width (heads x head dim), unlike timm's ConVit which takes the
    per-head width.  ``local_up_to_layer`` is the number of leading GPSA blocks.
    """

    img_size: Union[int, Tuple[int, int]] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    local_up_to_layer: int = 10
    locality_strength: float = 1.0
    use_local_init: bool = True
    use_pos_embed: bool = True
    global_pool: str = "token"
    dynamic_img_size: bool = False
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # Ablation switches (paper table 3): the gates' initial value lambda and whether they train;
    # whether the GPSA blocks train at all (frozen conv-init or frozen random GPSA).
    gate_init: float = 1.0
    train_gates: bool = True
    train_gpsa: bool = True

    def __post_init__(self) -> None:
        self.img_size = _pair(self.img_size)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not 0 <= self.local_up_to_layer <= self.depth:
            raise ValueError(
                f"local_up_to_layer={self.local_up_to_layer} must be between 0 and depth={self.depth}")
        if self.global_pool not in ("", "token", "avg"):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {self.global_pool!r}")
        if self.global_pool == "token" and self.local_up_to_layer == self.depth:
            # The class token joins after the last GPSA block; with no block after it, it would
            # reach the head untouched (timm then silently pools patch 0 instead).
            raise ValueError(
                f"global_pool='token' needs at least one MHSA block, but all {self.depth} blocks are GPSA "
                "(local_up_to_layer == depth): use global_pool='avg' or fewer GPSA blocks")
        for s in self.img_size:
            if s % self.patch_size:
                raise ValueError(f"img_size {self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.in_chans < 1 or self.depth < 1 or self.patch_size < 1:
            raise ValueError("in_chans, depth and patch_size must be positive")

    @property
    def grid(self) -> Grid:
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ConViTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ConViT config keys: {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


def architecture_cfg(cfg: ConViTConfig) -> dict:
    """The part of timm's ``pretrained_cfg`` that follows from the architecture alone.

    Mean/std and crop are ImageNet's (DeiT's eval: bicubic resize to img_size / 0.875, centre
    crop); :func:`convit.zoo.create_model` replaces them for models trained on other data.
    """
    return dict(
        url="", hf_hub_id=None, architecture=None, tag=None,
        num_classes=cfg.num_classes, input_size=(cfg.in_chans, *cfg.img_size),
        fixed_input_size=not cfg.dynamic_img_size, interpolation="bicubic", crop_pct=0.875,
        crop_mode="center",
        mean=IMAGENET_DEFAULT_MEAN if cfg.in_chans == 3 else (0.5,) * cfg.in_chans,
        std=IMAGENET_DEFAULT_STD if cfg.in_chans == 3 else (0.5,) * cfg.in_chans,
        pool_size=None, first_conv="patch_embed.proj", classifier="head", license="apache-2.0")


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, with clear errors for wrong inputs."""

    def __init__(self, cfg: ConViTConfig) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = cfg.img_size, cfg.patch_size, cfg.in_chans
        self.dynamic = cfg.dynamic_img_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def grid_for(self, x: torch.Tensor) -> Grid:
        if x.ndim != 4:
            raise ValueError(f"expected images as [B, C, H, W], got shape {tuple(x.shape)}")
        _, c, h, w = x.shape
        if c != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {c} (input shape {tuple(x.shape)})")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {self.patch_size}")
        if not self.dynamic and (h, w) != tuple(self.img_size):
            raise ValueError(
                f"input size {h}x{w} differs from the model's img_size {self.img_size[0]}x{self.img_size[1]}; "
                "build the model with dynamic_img_size=True to accept other sizes")
        return (h // self.patch_size, w // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, C]


class Block(nn.Module):
    """Pre-norm transformer block whose attention is GPSA or MHSA."""

    def __init__(self, cfg: ConViTConfig, use_gpsa: bool, drop_path: float) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.use_gpsa = use_gpsa
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if use_gpsa:
            self.attn = GPSA(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.proj_drop_rate,
                             cfg.locality_strength, cfg.grid)
        else:
            self.attn = MHSA(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.proj_drop_rate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act_layer=nn.GELU, drop=cfg.proj_drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(nn.Module):
    """ConViT (and, with no GPSA block, DeiT) with timm's uniform model API."""

    def __init__(self, cfg: Optional[ConViTConfig] = None, **kwargs) -> None:
        super().__init__()
        if cfg is None:
            cfg = ConViTConfig(**kwargs)
        elif kwargs:
            cfg = dataclasses.replace(cfg, **kwargs)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.local_up_to_layer = cfg.local_up_to_layer
        self.num_features = self.head_hidden_size = self.embed_dim = cfg.embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        # timm's data contract (read by timm.data.resolve_data_config); the zoo overlays the
        # published weights' metadata (url, hub id, mean/std, crop) for named models.
        self.pretrained_cfg: dict = architecture_cfg(cfg)

        self.patch_embed = PatchEmbed(cfg)
        self.grid: Grid = cfg.grid
        num_patches = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # DeiT (class token at the start) gives the class token a position; ConViT does not.
        self.pos_embed_has_cls = cfg.local_up_to_layer == 0
        if cfg.use_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.pos_embed_has_cls, cfg.embed_dim))
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(cfg.pos_drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()  # stochastic depth decay rule
        self.blocks = nn.ModuleList(
            [Block(cfg, use_gpsa=i < cfg.local_up_to_layer, drop_path=dpr[i]) for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    # -- init -------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        """timm/official init: truncated normal (std .02), then the GPSA convolutional init."""
        if self.cls_token.is_meta:  # built on the meta device: nothing to initialise
            return
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.use_local_init:
            for blk in self.gpsa_blocks():
                blk.attn.local_init()
        self._apply_ablation_switches()

    def _apply_ablation_switches(self) -> None:
        """Gate init and frozen gates / frozen GPSA blocks (frozen = requires_grad False, so
        optimizers built from the trainable parameters leave them alone)."""
        for blk in self.gpsa_blocks():
            with torch.no_grad():
                blk.attn.gating_param.fill_(self.cfg.gate_init)
            blk.attn.gating_param.requires_grad_(self.cfg.train_gates and self.cfg.train_gpsa)
            if not self.cfg.train_gpsa:
                for p in blk.attn.parameters():
                    p.requires_grad_(False)

    # -- small API --------------------------------------------------------------------------
    @property
    def default_cfg(self) -> dict:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def gpsa_blocks(self) -> List[Block]:
        return [b for b in self.blocks if b.use_gpsa]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters the DeiT recipe does not decay (biases and norms are 1-D and skipped anyway)."""
        names = {"cls_token"} | ({"pos_embed"} if self.pos_embed is not None else set())
        names |= {f"blocks.{i}.attn.gating_param" for i, b in enumerate(self.blocks) if b.use_gpsa}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def set_gate_skip_tolerance(self, tol: Optional[float]) -> None:
        """Opt-in inference shortcut for every GPSA block (None turns it off, the default).

        In inference (no autograd) a head whose gate sigma(lambda) >= 1 - tol skips its
        content branch and one with sigma <= tol skips its positional branch; each attention
        output element (before ``proj``) moves by at most 2 * tol * max|v|.  See
        :meth:`convit.attention.GPSA._branches`.
        """
        if tol is not None and not 0.0 <= tol < 0.5:
            raise ValueError(f"the gate skip tolerance must be in [0, 0.5), got {tol}")
        for blk in self.gpsa_blocks():
            blk.attn.skip_gate_tol = tol

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head (e.g. for fine-tuning on another number of classes)."""
        if global_pool is not None:
            if global_pool not in ("", "token", "avg"):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        w = self.norm.weight
        self.head = nn.Linear(self.embed_dim, num_classes, device=w.device, dtype=w.dtype) \
            if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes, global_pool=self.global_pool)

    # -- forward ----------------------------------------------------------------------------
    def _set_grid(self, grid: Grid) -> None:
        if grid != self.grid:
            self.grid = grid
            for blk in self.gpsa_blocks():
                blk.attn.set_grid(grid)

    def _pos_embed(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Add the absolute position embedding (bicubically resampled for another grid)."""
        B = x.shape[0]
        cls = self.cls_token.expand(B, -1, -1)
        if self.pos_embed_has_cls:
            x = torch.cat([cls, x], dim=1)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if grid != self.cfg.grid:
                pos = resample_abs_pos_embed(pos, list(grid), list(self.cfg.grid),
                                             num_prefix_tokens=int(self.pos_embed_has_cls))
            x = x + pos
        return self.pos_drop(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embed.grid_for(x)
        self._set_grid(grid)
        return self._pos_embed(self.patch_embed(x), grid)

    def _run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == self.local_up_to_layer and not self.pos_embed_has_cls:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        blk = self.blocks[i]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled() \
                and not torch.jit.is_scripting():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> normalised tokens [B, 1 + N, C] (class token first)."""
        x = self._embed(x)
        for i in range(len(self.blocks)):
            x = self._run_block(i, x)
        if len(self.blocks) == self.local_up_to_layer:  # all blocks GPSA: class token joins last
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        stop_early: bool = False,
    ):
        """Patch tokens after chosen blocks (class token removed), like timm.

        indices: None for all blocks, an int n for the last n, or a list of block indices
        (negative counts from the end).  Returns (final normalised tokens, list) or the list alone.
        """
        depth = len(self.blocks)
        if indices is None:
            take = list(range(depth))
        elif isinstance(indices, int):
            take = list(range(depth - indices, depth))
        else:
            take = [i if i >= 0 else depth + i for i in indices]
        if any(not 0 <= i < depth for i in take):
            raise ValueError(f"block indices {indices} out of range for depth {depth}")
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError("output_fmt must be 'NCHW' or 'NLC'")
        B = x.shape[0]
        x = self._embed(x)
        H, W = self.grid
        out = []
        last = max(take) if (stop_early and take) else depth - 1
        for i in range(last + 1):
            x = self._run_block(i, x)
            if i in take:
                y = self.norm(x) if norm else x
                has_cls = self.pos_embed_has_cls or i >= self.local_up_to_layer
                y = y[:, 1:] if has_cls else y
                out.append(y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
                           if output_fmt == "NCHW" else y)
        if intermediates_only:
            return out
        if last == depth - 1 and depth == self.local_up_to_layer:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        return self.norm(x), out

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> List[AttentionMaps]:
        """Each block's attention on its own input (for analysis), in block order.

        Runs the model once; at block i the attention module's ``attention_maps`` (the explicit
        eq. 6 terms, the same code the layer uses) is evaluated on ``norm1`` of that block's
        input.  Token axes: GPSA maps are over patches only; MHSA maps include the class token
        at index 0.
        """
        x = self._embed(x)
        maps = []
        for i, blk in enumerate(self.blocks):
            if i == self.local_up_to_layer and not self.pos_embed_has_cls:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            maps.append(blk.attn.attention_maps(blk.norm1(x)))
            x = blk(x)
        return maps


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
