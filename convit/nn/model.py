"""The ConViT model: a DeiT whose first ``local_up_to_layer`` blocks use GPSA.

With ``local_up_to_layer=0`` the same class is a DeiT (the class token joins at the start and
gets a slot in the position embedding, exactly as in timm's ``vit_*``/``deit_*`` models).
Every knob lives in :class:`ConViTConfig`; the state-dict keys are those of the official code
and timm.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .architecture import (
    ARCHITECTURE_FIELDS,
    DATA_DERIVED_FIELDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConViTConfig,
    architecture_cfg,
)
from .attention import AttentionMaps, Grid
from .layers import Block, PatchEmbed, trunc_normal_

# timm is imported only inside the few functions that use it (resampling the position
# embedding for another grid, timm's feature-index rules): timm's package imports
# huggingface_hub, which building a bare model must not need.

# The config and its field groups are re-exported here, where they were first defined.
__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ConViTConfig",
    "ARCHITECTURE_FIELDS",
    "DATA_DERIVED_FIELDS",
    "architecture_cfg",
    "ConViT",
    "count_params",
]


class ConViT(nn.Module):
    """ConViT (and, with no GPSA block, DeiT) with timm's uniform model API."""

    def __init__(self, cfg: Optional[ConViTConfig] = None, **kwargs) -> None:
        super().__init__()
        if cfg is None:
            cfg = ConViTConfig(**kwargs)
        elif kwargs:
            cfg = dataclasses.replace(cfg, **kwargs)
        self.cfg = cfg
        self._set_attributes(cfg)
        # The parameters are created in the order of the official code (embedding, blocks,
        # head): each layer draws its default init from the random stream as it is made.
        self._make_embedding(cfg)
        self._make_blocks(cfg)
        self._make_head(cfg)
        self._init_weights()

    def _set_attributes(self, cfg: ConViTConfig) -> None:
        """timm's model attributes, read by its factories and wrappers."""
        self.num_classes = cfg.num_classes
        self.global_pool = cfg.global_pool
        self.local_up_to_layer = cfg.local_up_to_layer
        self.num_features = self.head_hidden_size = self.embed_dim = cfg.embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        # timm's data contract (read by timm.data.resolve_data_config); the zoo overlays the
        # published weights' metadata (url, hub id, mean/std, crop) for named models.
        self.pretrained_cfg: dict = architecture_cfg(cfg)

    def _make_embedding(self, cfg: ConViTConfig) -> None:
        """Patch embedding, class token, position embedding and its dropout."""
        self.patch_embed = PatchEmbed(
            cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim, cfg.dynamic_img_size
        )
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

    def _make_blocks(self, cfg: ConViTConfig) -> None:
        """The blocks, GPSA first, with drop-path rates rising linearly to ``drop_path_rate``."""
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            [
                Block(
                    cfg.embed_dim,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    cfg.qkv_bias,
                    cfg.proj_drop_rate,
                    cfg.attn_drop_rate,
                    dpr[i],
                    use_gpsa=i < cfg.local_up_to_layer,
                    locality_strength=cfg.locality_strength,
                    grid=cfg.grid,
                )
                for i in range(cfg.depth)
            ]
        )
        # timm's feature contract: every block's patch tokens, at stride patch_size.
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=cfg.embed_dim, reduction=cfg.patch_size)
            for i in range(cfg.depth)
        ]

    def _make_head(self, cfg: ConViTConfig) -> None:
        """The final norm and the classifier (none for ``num_classes=0``)."""
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

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

    def gpsa_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.use_gpsa]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameters the DeiT recipe does not decay (biases and norms are 1-D and skipped anyway)."""
        names = {"cls_token"} | ({"pos_embed"} if self.pos_embed is not None else set())
        names |= {f"blocks.{i}.attn.gating_param" for i, b in enumerate(self.blocks) if b.use_gpsa}
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups, as its ViTs: stem, one per block, the norm with the last
        (what timm's layer-wise lr decay, ``create_optimizer_v2(layer_decay=...)``, reads)."""
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

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
        w = self.cls_token  # (device and dtype of the model; the norm may be pruned)
        self.head = (
            nn.Linear(self.embed_dim, num_classes, device=w.device, dtype=w.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes, global_pool=self.global_pool)

    # -- forward ----------------------------------------------------------------------------
    def _cls_joins_at(self) -> int:
        """Where the class token joins: -1 = with the patches, before the position embedding
        (DeiT: it has a position); otherwise before block ``local_up_to_layer``, the first MHSA
        block (paper sec. 3), or after the last block when every block is GPSA."""
        return -1 if self.pos_embed_has_cls else min(self.local_up_to_layer, len(self.blocks))

    def _join_cls(self, x: torch.Tensor, at: int) -> torch.Tensor:
        """Prepend the class token if it joins at ``at`` (block index; -1 = before the position
        embedding).  The only place the class token enters the sequence."""
        if at != self._cls_joins_at():
            return x
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + N, C]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> patch tokens (+ DeiT's class token) with positions added."""
        grid = self.patch_embed.grid_for(x)
        if grid != self.grid:
            self.grid = grid
            for blk in self.gpsa_blocks():
                blk.attn.set_grid(grid)
        x = self._join_cls(self.patch_embed(x), -1)  # [B, N (+1), C]
        if self.pos_embed is not None:
            pos = self.pos_embed
            if grid != self.cfg.grid:  # bicubically resampled for another grid
                from timm.layers import resample_abs_pos_embed

                pos = resample_abs_pos_embed(
                    pos, list(grid), list(self.cfg.grid), num_prefix_tokens=int(self.pos_embed_has_cls)
                )
            x = x + pos
        return self.pos_drop(x)

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = self._join_cls(x, i)
        blk = self.blocks[i]
        if (
            self.grad_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and not torch.jit.is_scripting()
        ):
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> normalised tokens [B, 1 + N, C] (class token first)."""
        x = self._embed(x)
        for i in range(len(self.blocks)):
            x = self._block(i, x)
        return self.norm(self._join_cls(x, len(self.blocks)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- timm's feature-extraction contract --------------------------------------------------
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Patch tokens after chosen blocks, with timm's signature and behaviour.

        indices: None for every block, an int n for the last n, or block indices (negative
            count from the end); out of range (including 0) raises, as in timm.
        norm: apply the final norm to each intermediate.  stop_early: run no block after the
            last one taken.  output_fmt: 'NCHW' ([B, C, H, W] maps) or 'NLC' ([B, N, C]).
        Returns the list of intermediates (class token removed) or, unless intermediates_only,
        (what forward_features returns, the list).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        from timm.models._features import feature_take_indices

        take, max_index = feature_take_indices(len(self.blocks), indices)
        last = max_index if stop_early else len(self.blocks) - 1
        x = self._embed(x)
        B = x.shape[0]
        H, W = self.grid
        intermediates = []
        for i in range(last + 1):
            x = self._block(i, x)
            if i in take:
                y = self.norm(x) if norm else x
                y = y[:, int(i >= self._cls_joins_at()) :]  # patch tokens only, [B, N, C]
                intermediates.append(
                    y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y
                )
        if intermediates_only:
            return intermediates
        return self.norm(self._join_cls(x, last + 1)), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the norm / head), as timm's
        ``features_only`` wrapper does; returns the absolute block indices kept for output."""
        from timm.models._features import feature_take_indices

        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[AttentionMaps]:
        """Each block's attention on its own input (for analysis), in block order.

        Runs the model once; at block i the attention module's ``attention_maps`` (the paper's
        eq. 6 terms, :meth:`convit.nn.attention.GPSA.attention_maps`) is evaluated on ``norm1`` of that
        block's input.  Token axes: GPSA maps are over patches only; MHSA maps include the
        class token at index 0.
        """
        x = self._embed(x)
        maps = []
        for i, blk in enumerate(self.blocks):
            x = self._join_cls(x, i)
            maps.append(blk.attn.attention_maps(blk.norm1(x)))
            x = blk(x)
        return maps


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
