"""The paper's classifier: a U-Net encoder with consistent multi-level attention.

Trunk: four blocks of two 3×3 conv–BatchNorm–ReLU layers (``width``·1, 2, 4, 8 channels,
32–64–128–256 in the paper), each followed by 2×2 max-pooling, then a bottleneck of
``width``·16 channels (512).  Block ``k`` (1-based; 5 is the bottleneck) outputs a map of
side ``image_size / 2^(k-1)``.

Attention: on the outputs of consecutive blocks (default blocks 3 and 4; 2–3 levels).
Each head (:class:`convex_attention.ScoreHead`) gives scores θ_k; the consistency layer
turns all levels' scores into maps ``p_k`` *jointly*, so the trunk must not depend on the
maps: the block features are multiplied by their attention map (rescaled by the number of
cells, so uniform attention is the identity) and globally average pooled, i.e. each level
contributes the attention-weighted mean of its features ``Σ_i p_k(i) f_k(i)``; the
concatenation feeds the linear classifier.  The classifier sees only attended features
(as in Jetley et al., "Learn to pay attention", 2018), so the maps are what the decision
rests on; ``bottleneck_in_classifier=True`` adds the bottleneck's plain global average.

Consistency methods (``method``):

* ``"softmax"``: each level's map on its own (baseline).
* ``"learned_dual"`` (the paper): the forward pass uses the per-level softmax maps; the
  loss adds ``alpha · consistency_loss`` with a learned shared λ (``alpha`` = 10).
* ``"exact"``: the exact consistent maps (closed form); no extra loss.
* ``"dual"``: per-sample dual solving in the forward pass.
* ``"cvxpylayers"``: the reference layer; refused for sizes whose solves would take hours.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...hierarchy import Hierarchy
from ...methods import METHODS
from ...nn import ConsistentAttention, ScoreHead
from ...solve import Solution

__all__ = ["AttentionUNet", "AttentionOutput", "ModelConfig"]

# cvxpylayers is refused when one pass over 1000 images would exceed this (seconds).
CVX_REFUSE_S_PER_1000 = 3600.0


@dataclass
class ModelConfig:
    in_channels: int = 4
    num_classes: int = 2
    width: int = 32
    image_size: int = 256
    attention_blocks: tuple = (3, 4)
    method: str = "learned_dual"
    temperature: float = 1.0
    alpha: float = 10.0
    embed_channels: int = 64
    bottleneck_in_classifier: bool = False
    solver_options: dict = field(default_factory=dict)

    def architecture(self) -> dict:
        """The fields that decide the parameter shapes (what a checkpoint must match)."""
        return {k: getattr(self, k) for k in ("in_channels", "num_classes", "width", "image_size",
                                               "attention_blocks", "method", "embed_channels",
                                               "bottleneck_in_classifier")}


@dataclass
class AttentionOutput:
    """``logits`` ``(B, num_classes)``; ``maps``: ``L`` tensors ``(B, H_k, W_k)``, the attention
    used by the classifier; ``solution``: the :class:`Solution` behind them; ``scores``: the
    heads' outputs; ``aux_loss``: ``alpha · consistency_loss`` for ``learned_dual`` (else 0)."""
    logits: Tensor
    maps: list
    solution: Solution
    scores: list
    aux_loss: Tensor


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False))


class AttentionUNet(nn.Module):
    """``forward(images (B, in_channels, S, S)) -> AttentionOutput``.  See the module docstring."""

    def __init__(self, in_channels: int = 4, num_classes: int = 2, width: int = 32, image_size: int = 256,
                 attention_blocks=(3, 4), method: str = "learned_dual", temperature: float = 1.0,
                 alpha: float = 10.0, embed_channels: int = 64, bottleneck_in_classifier: bool = False,
                 **solver_options):
        super().__init__()
        self.config = ModelConfig(in_channels, num_classes, width, image_size, tuple(attention_blocks), method,
                                  float(temperature), float(alpha), embed_channels, bottleneck_in_classifier,
                                  dict(solver_options))
        _check_config(self.config)
        blocks = list(self.config.attention_blocks)
        self.last_block = max(blocks + ([5] if bottleneck_in_classifier else []))
        channels = [width * 2 ** i for i in range(5)]  # blocks 1..4 and the bottleneck
        self.blocks = nn.ModuleList()
        cin = in_channels
        for k in range(self.last_block):
            self.blocks.append(_conv_block(cin, channels[k]))
            cin = channels[k]
        # one pooling module per use: attribution hooks (DeepLIFT, LRP) need unshared modules
        self.pools = nn.ModuleList(nn.MaxPool2d(2) for _ in range(self.last_block - 1))
        self.heads = nn.ModuleDict({str(k): ScoreHead(channels[k - 1], embed_channels) for k in blocks})
        self.hierarchy = Hierarchy.grid([(image_size // 2 ** (k - 1),) * 2 for k in blocks])
        self.attention = ConsistentAttention(self.hierarchy, method=method, temperature=temperature,
                                             check_finite=False, **solver_options)
        features = sum(channels[k - 1] for k in blocks) + (channels[4] if bottleneck_in_classifier else 0)
        self.classifier = nn.Linear(features, num_classes)

    @property
    def method(self) -> str:
        return self.config.method

    def features(self, images: Tensor) -> dict[int, Tensor]:
        """The block outputs (before pooling), by 1-based block index, up to the last one used."""
        self._check_input(images)
        out, x = {}, images
        for k, block in enumerate(self.blocks, start=1):
            x = block(x if k == 1 else self.pools[k - 2](x))
            out[k] = x
        return out

    def forward(self, images: Tensor) -> AttentionOutput:
        feats = self.features(images)
        blocks = self.config.attention_blocks
        scores = [self.heads[str(k)](feats[k]) for k in blocks]
        if self.method == "learned_dual":
            # the paper: per-level softmax maps forward, consistency through the loss
            solution = self._solve_softmax(scores)
            aux = self.config.alpha * self.attention.consistency_loss(scores)
        else:
            solution = self.attention(scores)
            aux = scores[0].new_zeros(())
        maps = solution.probs
        pooled = [(feats[k] * p.unsqueeze(1)).sum((2, 3)) for k, p in zip(blocks, maps)]
        if self.config.bottleneck_in_classifier:
            pooled.append(feats[5].mean((2, 3)))
        logits = self.classifier(torch.cat(pooled, dim=1))
        return AttentionOutput(logits, list(maps), solution, scores, aux)

    def _solve_softmax(self, scores) -> Solution:
        from ...solve import solve

        return solve(scores, self.hierarchy, "softmax", temperature=self.attention.temperature, check_finite=False)

    def loss(self, output: AttentionOutput, labels: Tensor) -> Tensor:
        """Cross-entropy plus the method's auxiliary loss."""
        return nn.functional.cross_entropy(output.logits, labels) + output.aux_loss

    def _check_input(self, images: Tensor) -> None:
        cfg = self.config
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) tensor, "
                             f"got {getattr(images, 'shape', type(images))}")
        if images.shape[1] != cfg.in_channels:
            raise ValueError(f"the model expects {cfg.in_channels} input channels, got {images.shape[1]} "
                             f"(images of shape {tuple(images.shape)})")
        if tuple(images.shape[2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"the model was built for {cfg.image_size}x{cfg.image_size} images, got "
                             f"{images.shape[2]}x{images.shape[3]}")

    def attention_layer(self, level: int) -> nn.Module:
        """The last ReLU of the block behind attention level ``level`` (for GradCAM)."""
        return self.blocks[self.config.attention_blocks[level] - 1][-1]


def _check_config(cfg: ModelConfig) -> None:
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.in_channels <= 0 or cfg.width <= 0 or cfg.num_classes < 2:
        raise ValueError(f"in_channels and width must be positive and num_classes >= 2, got {cfg}")
    if cfg.image_size <= 0 or cfg.image_size % 16 != 0:
        raise ValueError(f"image size {cfg.image_size} is not divisible through the pooling stack: the encoder "
                         f"halves it four times, so it must be a multiple of 16")
    blocks = list(cfg.attention_blocks)
    if not 2 <= len(blocks) <= 3 or blocks != list(range(blocks[0], blocks[0] + len(blocks))) \
            or blocks[0] < 1 or blocks[-1] > 5:
        raise ValueError(f"attention_blocks must be 2 or 3 consecutive blocks among 1..5 (5 = bottleneck), "
                         f"got {tuple(blocks)}")
    if cfg.method == "cvxpylayers":
        from ...cvx import prior_seconds_per_sample

        cells = sum((cfg.image_size // 2 ** (k - 1)) ** 2 for k in blocks)
        per_image = prior_seconds_per_sample(cells)
        if per_image * 1000 > CVX_REFUSE_S_PER_1000:
            raise ValueError(
                f"method 'cvxpylayers' refused for {cfg.image_size}x{cfg.image_size} images: the attention problem "
                f"has {cells} cells, estimated {per_image:.1f} s per image forward+backward on this CPU class, "
                f"about {per_image * 1000 / 3600:.1f} h per 1000 images. Use method 'exact' (the same solution in "
                f"closed form) or smaller images.")
