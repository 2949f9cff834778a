"""The model a training run starts from: from scratch, from a file to fine-tune, or from the
published weights -- one call each for the trainer (:func:`training_model`, :func:`training_config`).

What the run asks is a :class:`TrainingStart`; this module turns it into a model through the
one entry (:func:`convit.weights.zoo.create_model`, :func:`~convit.weights.zoo.build_model`),
so the trainer never reads a checkpoint itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..nn.architecture import ARCHITECTURE_FIELDS, ConViTConfig
from ..nn.model import ConViT
from .checkpoint import CheckpointError, config_from_metadata, read_metadata_json
from .cnn import cnn_from_metadata
from .resolve import resolve_source
from .zoo import build_model, config_of, create_model

__all__ = ["TrainingStart", "training_model", "training_config"]


@dataclass(frozen=True)
class TrainingStart:
    """What a run trains: the model ``name`` (a zoo name) with ``overrides`` on top (ConViTConfig
    fields, or the CNN arm's: the run's ``--model-kwargs``, then those derived from the data),
    for ``num_classes`` classes, from scratch, from ``finetune`` (a weight file) or from the
    ``pretrained`` weights."""

    name: str
    num_classes: int
    overrides: dict[str, Any] = field(default_factory=dict)
    finetune: Optional[Union[str, Path]] = None
    pretrained: bool = False


def training_config(start: TrainingStart) -> Optional[ConViTConfig]:
    """The architecture :func:`training_model` builds, without building it (nothing allocated):
    what :mod:`convit.nn.memory` estimates before the model exists.  None for a model that is
    not a ConViT (the CNN arm, timm's models), which that estimate does not cover."""
    if not resolve_source(start.name).is_convit:
        return None
    return config_of(start.name, **{**start.overrides, "num_classes": start.num_classes})


def training_model(start: TrainingStart, say: Callable[[str], None] = print) -> ConViT:
    """The model a run starts from.

    With ``finetune`` the file's weights are loaded with the file's own head, which is then
    replaced by a fresh ``num_classes`` head if the sizes differ; ``pretrained`` does what timm's
    ``pretrained=True`` does (a new head for another class count, input weights adapted to the
    data's channels).  ``say`` tells the user when a head is replaced.
    """
    if start.finetune:
        return _finetuned(start, say)
    overrides = {**start.overrides, "num_classes": start.num_classes}
    if not start.pretrained:
        return create_model(start.name, **overrides)
    model = create_model(start.name, pretrained=True, **overrides)
    published = _published_classes(start.name)
    if published != start.num_classes:
        say(
            f"fine-tuning from the published {start.name} weights: their {published}-class head is replaced "
            f"by a new {start.num_classes}-class head"
        )
    return model


def _published_classes(name: str) -> Optional[int]:
    """The classes of ``name``'s published weights: its config's, or, for one of timm's own models
    (a published ResNet in a hub repo), the repo's."""
    src = resolve_source(name)
    if src.is_convit:
        return config_of(name).num_classes
    return (src.timm.kwargs if src.timm is not None else {}).get("num_classes")


def _finetuned(start: TrainingStart, say: Callable[[str], None]) -> ConViT:
    """The model of ``start.finetune`` with its own head, then one for ``num_classes``."""
    src = resolve_source(start.name, checkpoint_path=start.finetune)
    _check_same_architecture(start, src.meta)
    model = build_model(src, {**start.overrides, "num_classes": src.head_classes})
    if model.num_classes != start.num_classes:
        say(
            f"fine-tuning from {start.finetune}: its {model.num_classes}-class head is replaced by a new "
            f"{start.num_classes}-class head"
        )
        model.reset_classifier(start.num_classes)
    return model


def _check_same_architecture(start: TrainingStart, meta: dict) -> None:
    """Our files carry their architecture, which ``create_model`` would silently prefer to the
    zoo name: fine-tuning a file as another model is an error that names the differences."""
    stored = config_from_metadata(meta)
    named_convit = resolve_source(start.name).is_convit
    if cnn_from_metadata(meta) is not None and named_convit:
        raise _other_family(start, meta, "holds the CNN arm")
    if not stored:
        return  # foreign files: load_into reports any mismatch key by key
    if not named_convit:
        raise _other_family(start, meta, "holds a ConViT")
    asked = {k: v for k, v in start.overrides.items() if k in ARCHITECTURE_FIELDS}
    wanted = config_of(start.name, **asked).to_dict()
    diff = [
        f"{k} {stored[k]} (file) vs {wanted[k]} ({start.name})"
        for k in ARCHITECTURE_FIELDS
        if k in stored and stored[k] != wanted[k]
    ]
    if diff:
        trained_as = read_metadata_json(meta, "model_name")
        raise CheckpointError(
            f"{start.finetune} does not match the model {start.name}: {'; '.join(diff)}. "
            + (
                f"It was trained as {trained_as}: pass --model {trained_as}"
                if trained_as
                else "Pass the --model (and --model-kwargs) it was trained with"
            )
            + " (a different head size is fine: it is replaced)"
        )


def _other_family(start: TrainingStart, meta: dict, holds: str) -> CheckpointError:
    """The error for fine-tuning a file of one family (a ConViT, the CNN arm) as the other."""
    trained_as = read_metadata_json(meta, "model_name")
    return CheckpointError(
        f"{start.finetune} {holds}, not a {start.name}: "
        + (f"pass --model {trained_as}" if trained_as else "pass the --model it was trained with")
    )
