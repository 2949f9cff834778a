"""The CNN arm: timm's ResNet, sized to the transformer it is compared with.

The paper's practitioner dilemma -- a CNN has the higher floor on little data, a ViT the higher
ceiling -- needs a CNN beside ConViT and DeiT at the same parameter count.  The arm is timm's
own :class:`timm.models.resnet.ResNet` with BasicBlocks (the ResNet-18 family), so its blocks,
initialisation and ``set_grad_checkpointing`` / ``reset_classifier`` are timm's, not ours.

* :class:`CNNConfig` says exactly which network (widths, blocks per stage, stem, data shape);
  it rides in our safetensors' metadata (``cnn_config``), so a saved CNN loads with no name.
* :func:`cnn_for` sizes one: it searches a small family (1 or 2 blocks per stage, widths
  ``(w, 2w, 4w, 8w)`` for ``w`` from 8 to 64) for the parameter count closest to a target,
  within +-15 %.
* :func:`cnn_config` turns what a caller names (a target, a base width, or explicit widths, and
  the data's shape) into a :class:`CNNConfig`; :func:`build_cnn` builds it.

Inputs of 64 px or less get a small-image stem (one 3x3 convolution, stride 1, no max-pool), as
ResNets for CIFAR have: timm's ImageNet stem (7x7 stride 2, then a max-pool) would shrink a
32 px image to 8 px before the first block.  Either stem has timm's 64 channels.  Parameters
are counted from the config by :func:`param_count` (the sizing search builds nothing).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.resnet import BasicBlock, ResNet

__all__ = [
    "CNNConfig",
    "cnn_for",
    "cnn_config",
    "build_cnn",
    "cnn_config_of",
    "param_count",
    "macs",
    "cnn_metadata",
    "cnn_from_metadata",
    "SMALL_STEM_MAX",
    "TOLERANCE",
]

#: Inputs up to this many pixels a side get the small-image stem.
SMALL_STEM_MAX = 64
#: How far the sized CNN's parameter count may be from its target (a fraction of the target).
TOLERANCE = 0.15
#: The family :func:`cnn_for` searches: blocks per stage, and base widths.
LAYER_CHOICES: tuple[tuple[int, ...], ...] = ((1, 1, 1, 1), (2, 2, 2, 2))
WIDTH_CHOICES = range(8, 65)
#: timm's ResNet stem has 64 channels whatever the stages' widths (a 1x1 projection in the
#: first block of the first stage adapts it to a narrower one).
STEM_WIDTH = 64
#: The metadata key of a saved CNN (a ConViT's file has ``config``, timm's models ``timm_architecture``).
METADATA_KEY = "cnn_config"


def _pair(size: Any) -> tuple[int, int]:
    """An image size as (height, width): an int is a square."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


@dataclass(frozen=True)
class CNNConfig:
    """Exactly which ResNet: BasicBlock stages of ``widths`` channels with ``layers`` blocks each
    (stage ``i > 0`` halves the resolution), the stem (``small_stem``: one 3x3 convolution of
    stride 1 and no max-pool; else timm's 7x7 stride-2 convolution and max-pool), the data's
    channels, classes and image size, and the drop-path rate of training."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    layers: tuple[int, ...] = (2, 2, 2, 2)
    small_stem: bool = False
    in_chans: int = 3
    num_classes: int = 1000
    img_size: tuple[int, int] = (224, 224)
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        object.__setattr__(self, "img_size", _pair(self.img_size))
        if not self.widths or len(self.widths) != len(self.layers):
            raise ValueError(f"a CNN needs one width per stage: widths {self.widths}, layers {self.layers}")
        if min(self.widths) < 1 or min(self.layers) < 1:
            raise ValueError(f"widths and blocks per stage must be positive: {self.widths}, {self.layers}")

    def to_dict(self) -> dict[str, Any]:
        """JSON values (lists for tuples), as the metadata and config.yaml hold them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> CNNConfig:
        """The config of ``fields``; an unknown field is a ValueError naming the known ones."""
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown CNN field(s) {unknown}; known: {', '.join(FIELDS)}")
        return cls(**fields)

    def describe(self) -> str:
        """One line: the widths, blocks per stage and stem."""
        stem = "3x3 stem" if self.small_stem else "7x7 stem + max-pool"
        return (
            f"ResNet widths {'-'.join(map(str, self.widths))}, "
            f"blocks {'-'.join(map(str, self.layers))}, {stem}"
        )


#: Every field of :class:`CNNConfig`.
FIELDS = tuple(f.name for f in dataclasses.fields(CNNConfig))


def param_count(cfg: CNNConfig) -> int:
    """The parameters of ``build_cnn(cfg)``, counted from the config: the stem convolution (to
    :data:`STEM_WIDTH` channels) and its norm, each BasicBlock's two 3x3 convolutions and norms,
    a 1x1 projection (and norm) where a stage changes the width or the resolution, and the
    classifier."""
    kernel = 3 if cfg.small_stem else 7
    inplanes = STEM_WIDTH
    total = kernel * kernel * cfg.in_chans * inplanes + 2 * inplanes
    for stage, (width, blocks) in enumerate(zip(cfg.widths, cfg.layers)):
        if stage > 0 or inplanes != width:
            total += inplanes * width + 2 * width
        for _ in range(blocks):
            total += 9 * inplanes * width + 9 * width * width + 4 * width
            inplanes = width
    if cfg.num_classes > 0:
        total += cfg.widths[-1] * cfg.num_classes + cfg.num_classes
    return total


def _strided(size: int, stride: int = 2) -> int:
    """The output size of a padded convolution or pooling of this stride ('same' padding)."""
    return (size - 1) // stride + 1


def macs(cfg: CNNConfig) -> int:
    """Multiply-accumulates of one forward pass (convolutions and classifier), as
    :mod:`convit.commands.models` reports them for every zoo model."""
    h, w = cfg.img_size
    kernel = 3 if cfg.small_stem else 7
    if not cfg.small_stem:
        h, w = _strided(h), _strided(w)
    inplanes = STEM_WIDTH
    total = h * w * kernel * kernel * cfg.in_chans * inplanes
    if not cfg.small_stem:
        h, w = _strided(h), _strided(w)  # the max-pool
    for stage, (width, blocks) in enumerate(zip(cfg.widths, cfg.layers)):
        if stage > 0:
            h, w = _strided(h), _strided(w)
        if stage > 0 or inplanes != width:
            total += h * w * inplanes * width
        for _ in range(blocks):
            total += h * w * 9 * (inplanes * width + width * width)
            inplanes = width
    return total + cfg.widths[-1] * max(cfg.num_classes, 0)


def _widths(base: int) -> tuple[int, ...]:
    return (base, 2 * base, 4 * base, 8 * base)


def cnn_for(
    target_params: int,
    img_size: Any = 224,
    in_chans: int = 3,
    num_classes: int = 1000,
    layers: Optional[Sequence[int]] = None,
) -> tuple[CNNConfig, int]:
    """The CNN of the family (``layers`` given: only that) whose parameter count is closest to
    ``target_params``, and that count; a ValueError when none is within :data:`TOLERANCE`.
    The small-image stem for inputs of :data:`SMALL_STEM_MAX` px or less."""
    size = _pair(img_size)
    small = max(size) <= SMALL_STEM_MAX
    choices = [tuple(layers)] if layers is not None else LAYER_CHOICES
    best: Optional[tuple[CNNConfig, int]] = None
    for stages in choices:
        for base in WIDTH_CHOICES:
            cfg = CNNConfig(_widths(base), stages, small, in_chans, num_classes, size)
            n = param_count(cfg)
            if best is None or abs(n - target_params) < abs(best[1] - target_params):
                best = cfg, n
    assert best is not None
    if abs(best[1] - target_params) > TOLERANCE * target_params:
        raise ValueError(
            f"no ResNet of the family (base width {WIDTH_CHOICES.start}-{WIDTH_CHOICES.stop - 1}, "
            f"blocks {', '.join(map(str, choices))}) has {target_params:,} parameters within "
            f"{TOLERANCE:.0%}: the closest has {best[1]:,}"
        )
    return best


def cnn_config(**fields: Any) -> CNNConfig:
    """The CNN ``fields`` name: :class:`CNNConfig` fields, where the widths may instead be given
    as ``base_width`` (widths ``(w, 2w, 4w, 8w)``, 2 blocks per stage unless ``layers`` says) or
    as ``target_params`` (sized by :func:`cnn_for`).  Explicit widths win over a base width,
    which wins over a target (a zoo entry's default target gives way to either).  Without
    ``small_stem``, inputs of :data:`SMALL_STEM_MAX` px or less get the small-image stem."""
    fields = dict(fields)
    target = fields.pop("target_params", None)
    base = fields.pop("base_width", None)
    size = _pair(fields.get("img_size", CNNConfig.img_size))
    if "widths" not in fields and base is not None:
        fields["widths"] = _widths(int(base))
        fields.setdefault("layers", (2, 2, 2, 2))
    elif "widths" not in fields:
        if target is None:
            raise ValueError("a CNN needs its widths, a base_width or a target_params")
        data = {k: fields[k] for k in ("in_chans", "num_classes") if k in fields}
        sized, _ = cnn_for(int(target), size, layers=fields.get("layers"), **data)
        fields.update(widths=sized.widths, layers=sized.layers)
    fields.setdefault("small_stem", max(size) <= SMALL_STEM_MAX)
    return CNNConfig.from_dict(fields)


def data_cfg(cfg: CNNConfig) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of the architecture: ImageNet's statistics for 3 channels (0.5
    otherwise), the eval crop of timm's ResNets; :func:`convit.weights.zoo.build_model` puts the
    statistics of the data a saved model was trained on over these."""
    rgb = cfg.in_chans == 3
    return dict(
        url="",
        hf_hub_id=None,
        architecture="resnet",
        tag=None,
        num_classes=cfg.num_classes,
        input_size=(cfg.in_chans, *cfg.img_size),
        fixed_input_size=False,
        interpolation="bilinear",
        crop_pct=0.875,
        crop_mode="center",
        mean=tuple(IMAGENET_DEFAULT_MEAN) if rgb else (0.5,) * cfg.in_chans,
        std=tuple(IMAGENET_DEFAULT_STD) if rgb else (0.5,) * cfg.in_chans,
        pool_size=None,
        first_conv="conv1",
        classifier="fc",
        license="apache-2.0",
    )


def _small_stem(model: ResNet, cfg: CNNConfig) -> None:
    """Replace timm's ImageNet stem by one 3x3 convolution of stride 1 and no max-pool,
    initialised as timm initialises every ResNet convolution; the feature maps keep their size
    until the second stage, which ``feature_info`` then says."""
    model.conv1 = nn.Conv2d(cfg.in_chans, STEM_WIDTH, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    for info in model.feature_info:
        info["reduction"] = max(1, info["reduction"] // 4) if info["module"] != "act1" else 1


def build_cnn(cfg: CNNConfig) -> ResNet:
    """timm's ``ResNet(block=BasicBlock, ...)`` of ``cfg``, randomly initialised, with the
    config as ``model.cfg`` (what saving stores, and what ``convit eval`` reads the input size
    and channels from) and timm's ``pretrained_cfg``."""
    model = ResNet(
        block=BasicBlock,
        layers=cfg.layers,
        channels=cfg.widths,
        num_classes=cfg.num_classes,
        in_chans=cfg.in_chans,
        drop_path_rate=cfg.drop_path_rate,
    )
    if cfg.small_stem:
        _small_stem(model, cfg)
    model.cfg = cfg  # a plain attribute: not in the state dict
    model.pretrained_cfg = model.default_cfg = data_cfg(cfg)
    return model


def cnn_config_of(model: nn.Module) -> Optional[CNNConfig]:
    """The config of a CNN :func:`build_cnn` built (None for another model), with the classes
    its classifier has now (``reset_classifier`` may have changed them)."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, CNNConfig):
        return None
    return dataclasses.replace(cfg, num_classes=int(getattr(model, "num_classes", cfg.num_classes)))


def cnn_metadata(cfg: CNNConfig) -> dict[str, str]:
    """The safetensors metadata entry that rebuilds the CNN."""
    return {METADATA_KEY: json.dumps(cfg.to_dict())}


def cnn_from_metadata(meta: dict[str, str]) -> Optional[dict[str, Any]]:
    """The CNN fields a file's metadata stores, or None for a file of another model."""
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
