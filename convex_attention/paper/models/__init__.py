"""The paper's network: a U-Net encoder classifier with consistent multi-level attention."""
from .checkpoint import load_checkpoint, load_model, read_checkpoint, save_checkpoint
from .unet import AttentionOutput, AttentionUNet, ConfigError, ModelConfig

__all__ = ["AttentionUNet", "AttentionOutput", "ModelConfig", "ConfigError", "save_checkpoint", "load_checkpoint",
           "load_model", "read_checkpoint"]
