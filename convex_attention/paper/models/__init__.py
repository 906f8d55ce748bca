"""The paper's networks: the attention CNN (a U-Net encoder classifier with consistent
multi-level attention) and the plain CNN without attention it is compared with, and their
checkpoints."""
from .checkpoint import (
    NonFiniteWeights,
    check_optimizer_fits,
    load_any_model,
    load_checkpoint,
    load_model,
    load_plain_cnn,
    model_from_state,
    read_checkpoint,
    save_checkpoint,
)
from .plain_cnn import PlainCNN, is_plain_cnn_checkpoint
from .unet import AttentionOutput, AttentionUNet, ConfigError, ModelConfig, NonFiniteOutput, non_finite_parts

__all__ = ["AttentionUNet", "AttentionOutput", "ModelConfig", "ConfigError", "PlainCNN", "is_plain_cnn_checkpoint",
           "save_checkpoint", "load_checkpoint", "load_model", "load_plain_cnn", "load_any_model", "read_checkpoint",
           "model_from_state", "check_optimizer_fits", "NonFiniteWeights", "NonFiniteOutput", "non_finite_parts"]
