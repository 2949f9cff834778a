"""ConViT: vision transformers with soft convolutional inductive biases (d'Ascoli et al., 2021).

Data flow of the package: data -> model (attention, layers, model, zoo, checkpoint) -> engine
(train/eval) -> analysis -> experiments -> cli.
"""
from .attention import GPSA, MHSA, AttentionMaps, relative_offsets
from .checkpoint import CheckpointError, read_checkpoint, save_model
from .model import ConViT, ConViTConfig, count_params
from .zoo import Pretrained, create_model, list_models, load_model, model_spec, register

__version__ = "0.1.0"
__all__ = [
    "GPSA", "MHSA", "AttentionMaps", "relative_offsets", "CheckpointError", "read_checkpoint",
    "save_model", "ConViT", "ConViTConfig", "count_params", "Pretrained", "create_model",
    "list_models", "load_model", "model_spec", "register",
]
