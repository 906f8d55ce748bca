"""The paper's network: a U-Net encoder classifier with consistent multi-level attention."""
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .unet import AttentionOutput, AttentionUNet, ModelConfig

__all__ = ["AttentionUNet", "AttentionOutput", "ModelConfig", "save_checkpoint", "load_checkpoint", "load_model"]
