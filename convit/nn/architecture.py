"""What a ConViT/DeiT is, without building one: :class:`ConViTConfig` and timm's data contract.

Every architectural knob lives in :class:`ConViTConfig`; :mod:`convit.nn.model` builds the
network from it.  Its own module so that the config can be read, checked and sized (the zoo,
the memory estimate, a study's plan) apart from the network's code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from .attention import Grid

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ConViTConfig",
    "ARCHITECTURE_FIELDS",
    "DATA_DERIVED_FIELDS",
    "architecture_cfg",
]

#: ImageNet's channel statistics (timm's IMAGENET_DEFAULT_MEAN / _STD; tests/test_model.py checks).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _pair(v: Union[int, Sequence[int]]) -> tuple[int, int]:
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

    img_size: Union[int, tuple[int, int]] = 224
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
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not 0 <= self.local_up_to_layer <= self.depth:
            raise ValueError(
                f"local_up_to_layer={self.local_up_to_layer} must be between 0 and depth={self.depth}"
            )
        if self.global_pool not in ("", "token", "avg"):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {self.global_pool!r}")
        if self.global_pool == "token" and self.local_up_to_layer == self.depth:
            # The class token joins after the last GPSA block; with no block after it, it would
            # reach the head untouched (timm then silently pools patch 0 instead).
            raise ValueError(
                f"global_pool='token' needs at least one MHSA block, but all {self.depth} blocks are GPSA "
                "(local_up_to_layer == depth): use global_pool='avg' or fewer GPSA blocks"
            )
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
    def from_dict(cls, d: dict) -> ConViTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ConViT config keys: {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


#: ConViTConfig fields that define the weights' shapes and meaning, apart from those of
#: :data:`DATA_DERIVED_FIELDS`: a file trained with other values cannot be fine-tuned as this
#: model (convit.training.recipe checks them before fine-tuning).
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "local_up_to_layer",
    "use_pos_embed",
)
#: ConViTConfig fields that convit.training.recipe.build_model derives from the data (image size,
#: channels, classes) and the recipe (drop path), whatever the zoo name says; the experiment
#: runner pins every other field.
DATA_DERIVED_FIELDS: tuple[str, ...] = ("img_size", "in_chans", "num_classes", "drop_path_rate")


def architecture_cfg(cfg: ConViTConfig) -> dict:
    """The part of timm's ``pretrained_cfg`` that follows from the architecture alone.

    Mean/std and crop are ImageNet's (DeiT's eval: bicubic resize to img_size / 0.875, centre
    crop); :func:`convit.weights.zoo.create_model` replaces them for models trained on other data.
    """
    return dict(
        url="",
        hf_hub_id=None,
        architecture=None,
        tag=None,
        num_classes=cfg.num_classes,
        input_size=(cfg.in_chans, *cfg.img_size),
        fixed_input_size=not cfg.dynamic_img_size,
        interpolation="bicubic",
        crop_pct=0.875,
        crop_mode="center",
        mean=IMAGENET_MEAN if cfg.in_chans == 3 else (0.5,) * cfg.in_chans,
        std=IMAGENET_STD if cfg.in_chans == 3 else (0.5,) * cfg.in_chans,
        pool_size=None,
        first_conv="patch_embed.proj",
        classifier="head",
        license="apache-2.0",
    )
