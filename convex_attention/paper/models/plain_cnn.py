"""A plain CNN without attention: the model the post-hoc methods explain in the paper's code.

The authors run GradCAM, DeepLIFT and LRP on a separate classifier without attention.
:class:`PlainCNN` is that model for this project's experiment, built so that attention is
the only difference from :class:`convex_attention.paper.models.AttentionUNet`: the same
encoder (blocks 1 .. the last attention block, the same norm), and the classifier sees
the *uniform* average of each attention block's features (global average pooling)
instead of their attention-weighted average.  It is therefore also the "uniform
attention" model of the benchmark's validity check (c).

It takes the same :class:`~convex_attention.paper.models.ModelConfig` (its attention
fields, ``method``, ``temperature``, ``alpha``, ``head``, ... are ignored) and returns the
same :class:`~convex_attention.paper.models.AttentionOutput` (``maps``: the uniform maps
it pools with, which are consistent; ``aux_loss`` 0), so the training loop
(``train(config, model_class=PlainCNN)``), checkpoints and evaluation are shared.
:func:`convex_attention.paper.models.checkpoint.load_plain_cnn` restores one from a
checkpoint; :func:`is_plain_cnn_checkpoint` tells its checkpoints from attention models'
(they have no score heads).
"""
from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from ...hierarchy import Hierarchy
from ...solve import Solution
from .unet import (
    AttentionOutput,
    ModelConfig,
    attention_block,
    build_encoder,
    check_images,
    classifier_features,
    encoder_features,
)

__all__ = ["PlainCNN", "is_plain_cnn_checkpoint"]


class PlainCNN(nn.Module):
    """``forward(images (B, C, S, S)) -> AttentionOutput``: global average pooling of the
    attention blocks' features, then a linear classifier.  See the module docstring.

    Built like :class:`~convex_attention.paper.models.AttentionUNet`: from a
    :class:`ModelConfig`, from its fields by keyword, or both.
    """

    #: the explanation code reads this: a plain CNN has no attention maps of its own
    has_attention = False

    def __init__(self, config: ModelConfig | None = None, **fields_):
        super().__init__()
        if config is not None and not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = ModelConfig.from_dict({**(config or ModelConfig()).to_dict(), **fields_}).validate()
        cfg = self.config
        blocks = list(cfg.attention_blocks)
        channels, self.last_block, self.blocks, self.pools = build_encoder(cfg)
        self.hierarchy = Hierarchy.grid([(cfg.image_size // 2 ** (k - 1),) * 2 for k in blocks])
        self.classifier = nn.Linear(classifier_features(cfg, channels), cfg.num_classes)

    @property
    def method(self) -> str:
        return "plain_cnn"

    def features(self, images: Tensor) -> dict[int, Tensor]:
        """The block outputs by 1-based block index (as the attention model's)."""
        check_images(self.config, images)
        return encoder_features(self.blocks, self.pools, images)

    def forward(self, images: Tensor) -> AttentionOutput:
        feats = self.features(images)
        blocks = self.config.attention_blocks
        pooled = [feats[k].mean((2, 3)) for k in blocks]
        if self.config.bottleneck_in_classifier:
            pooled.append(feats[5].mean((2, 3)))
        logits = self.classifier(torch.cat(pooled, dim=1))
        B = images.shape[0]
        maps = [torch.full((B,) + tuple(s), 1.0 / feats[k].shape[2] / feats[k].shape[3], dtype=logits.dtype,
                           device=logits.device) for k, s in zip(blocks, self.hierarchy.shapes)]
        zeros = [torch.zeros_like(m) for m in maps]
        temps = [1.0] * len(maps)
        solution = Solution(maps, zeros, self.hierarchy, temps, "softmax")
        return AttentionOutput(logits, maps, solution, zeros, torch.zeros((), dtype=logits.dtype,
                                                                           device=logits.device))

    def loss(self, output: AttentionOutput, labels: Tensor) -> Tensor:
        """Cross-entropy of ``logits`` against ``labels`` ``(B,)``."""
        return nn.functional.cross_entropy(output.logits, labels)

    def attention_layer(self, level: int) -> nn.Module:
        """The last ReLU of the block of attention level ``level`` (for GradCAM), as in the attention model."""
        return cast(nn.Sequential, self.blocks[attention_block(self.config, level)])[-1]


def is_plain_cnn_checkpoint(state: dict) -> bool:
    """True for a checkpoint dict (:func:`read_checkpoint`) of a :class:`PlainCNN`: its
    weights have a classifier and no score heads (every attention model has heads)."""
    keys = state.get("model", {}).keys()
    return any(k.startswith("classifier.") for k in keys) and not any(k.startswith("heads.") for k in keys)
