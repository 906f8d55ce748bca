"""The paper's classifier: a U-Net encoder with consistent multi-level attention.

Trunk: four blocks of two 3×3 conv–norm–ReLU layers (``width``·1, 2, 4, 8 channels,
32–64–128–256 in the paper), each followed by 2×2 max-pooling, then a bottleneck of
``width``·16 channels (512).  Block ``k`` (1-based; 5 is the bottleneck) outputs a map of
side ``image_size / 2^(k-1)``.  The norm is BatchNorm (``norm="batch"``, the paper) or
GroupNorm (``norm="group"``, whose statistics do not depend on the batch).

Attention: on the outputs of consecutive blocks (default blocks 3 and 4; 2–3 levels).
Each head (:class:`convex_attention.ScoreHead`) gives scores θ_k; the consistency layer
(:class:`convex_attention.ConsistentAttention`, one module for every method) turns all
levels' scores into maps ``p_k`` *jointly*, so the trunk must not depend on the maps:
the block features are multiplied by their attention map and summed, i.e. each level
contributes the attention-weighted mean of its features ``Σ_i p_k(i) f_k(i)``; the
concatenation feeds the linear classifier.  The classifier sees only attended features
(as in Jetley et al., "Learn to pay attention", 2018), so the maps are what the decision
rests on; ``bottleneck_in_classifier=True`` adds the bottleneck's plain global average.

Variants, the same for every method (docs/design.md §4): ``head`` picks the score head
(``"bounded"``, the paper's L2-normalised head, or ``"learned"``, with a learnable gain
that lets a map sharpen); ``learn_temperature`` adds one learnable log-temperature
``s`` shared by the levels, so that level ``k`` attends at ``τ_k · e^s`` (``τ_k`` from
``temperature``; ``s`` starts at 0 and is bounded to ``[-7, 7]``), passed to the layer as
a tensor temperature that the methods which differentiate through it (softmax, exact,
dual, learned_dual: the registry's ``tensor_temperature``) learn with the model; ``duals``
is the dual source of the methods that need duals (``"shared"``: the paper's learned λ, or
``"amortised"``: λ predicted per sample from the scores).  Checkpoints saved before these
fields existed load with the defaults (bounded head, fixed temperature, shared duals), which
is what they were.

The method (``ModelConfig.method``) is a name of the method registry
(:mod:`convex_attention.methods`).  The layer's ``attend`` returns the maps the
classifier uses and the method's auxiliary loss: for the paper's ``"learned_dual"`` the
per-level softmax maps and the consistency loss at the learned duals (weighted here by
``alpha`` = 10); for every other method the solution's maps and a zero loss.  Methods
that solve per sample on the CPU (cvxpylayers) are refused for sizes whose solves would
take hours.

Configuration: one :class:`~convex_attention.paper.config.ModelConfig` (every setting
declared once there), the first link of the chain ``ModelConfig`` ⊂ ``TrainConfig`` ⊂
``ExperimentConfig``; it is validated once, when the model is built.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from ...hierarchy import Hierarchy
from ...methods import get_method
from ...nn import ConsistentAttention, ScoreHead
from ...solve import Solution
from ..config import DUAL_SOURCES, HEADS, NORMS, ConfigError, ModelConfig, deepest_block

__all__ = ["AttentionUNet", "AttentionOutput", "ModelConfig", "ConfigError", "NORMS", "HEADS", "DUAL_SOURCES",
           "LOG_TEMPERATURE_BOUND", "NonFiniteOutput", "non_finite_parts"]

# The learnable log-temperature's bound: the temperatures move by at most a factor e^7 ≈ 1100.
LOG_TEMPERATURE_BOUND = 7.0


@dataclass
class AttentionOutput:
    """``logits`` ``(B, num_classes)``; ``maps``: ``L`` tensors ``(B, H_k, W_k)``, the attention
    used by the classifier; ``solution``: the :class:`Solution` behind them; ``scores``: the
    heads' outputs, ``L`` tensors ``(B, H_k, W_k)``; ``aux_loss``: a scalar,
    ``alpha · consistency_loss`` for ``learned_dual`` (else 0)."""
    logits: Tensor
    maps: list
    solution: Solution
    scores: list
    aux_loss: Tensor


class NonFiniteOutput(ValueError):
    """A model's outputs (logits, attention maps) or explanation maps hold NaN or Inf, so no
    metric of them is reported: the run that needs them fails, saying which."""


def non_finite_parts(output: AttentionOutput) -> list[str]:
    """The parts of ``output`` that hold NaN or Inf, named (``"logits"``, ``"the attention
    map of level 1"``), with the positions of the images in the batch; empty when all are
    finite."""
    parts = [("logits", output.logits)] + [(f"the attention map of level {k}", m) for k, m in enumerate(output.maps)]
    bad = []
    for name, tensor in parts:
        finite = torch.isfinite(tensor.detach()).flatten(1).all(1)
        if not bool(finite.all()):
            bad.append(f"{name} (images {torch.nonzero(~finite).flatten().tolist()[:10]} of the batch)")
    return bad


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)  # up to 8 groups that divide the channels
    return nn.BatchNorm2d(channels)


def build_encoder(cfg: ModelConfig) -> tuple[list[int], int, nn.ModuleList, nn.ModuleList]:
    """The encoder of ``cfg``: ``(channels, last_block, blocks, pools)``, where ``channels[k-1]``
    is block ``k``'s width (blocks 1..4 and the bottleneck) and ``last_block`` the deepest block
    used.  Shared by the attention model and the plain CNN, so the two trunks are identical."""
    last_block = deepest_block(cfg)  # (the one rule, which config's BatchNorm check reads too)
    channels = [cfg.width * 2 ** i for i in range(5)]
    blocks, cin = nn.ModuleList(), cfg.in_channels
    for k in range(last_block):
        blocks.append(_conv_block(cin, channels[k], cfg.norm))
        cin = channels[k]
    # one pooling module per use: attribution hooks (DeepLIFT, LRP) need unshared modules
    pools = nn.ModuleList(nn.MaxPool2d(2) for _ in range(last_block - 1))
    return channels, last_block, blocks, pools


def classifier_features(cfg: ModelConfig, channels: list[int]) -> int:
    """Width of the classifier's input: the pooled attention blocks (+ the bottleneck)."""
    return sum(channels[k - 1] for k in cfg.attention_blocks) + (channels[4] if cfg.bottleneck_in_classifier else 0)


def encoder_features(blocks: nn.ModuleList, pools: nn.ModuleList, images: Tensor) -> dict[int, Tensor]:
    """Run the encoder: block ``k`` (1-based) sees the 2×2 max-pooled output of block ``k-1``.
    Returns every block's output by index (shared by the attention model and the plain CNN)."""
    out, x = {}, images
    for k, block in enumerate(blocks, start=1):
        x = block(x if k == 1 else pools[k - 2](x))
        out[k] = x
    return out


def _conv_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=False),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=False))


class AttentionUNet(nn.Module):
    """``forward(images (B, in_channels, S, S)) -> AttentionOutput``.  See the module docstring.

    Built from a :class:`ModelConfig` (``AttentionUNet(config=cfg)``), or from its fields
    by keyword (``AttentionUNet(method="exact", width=16)``), or both (the keywords
    replace the config's fields).  The configuration is validated first.
    """

    base_temperature: Tensor  # a buffer (register_buffer)

    def __init__(self, config: ModelConfig | None = None, **fields_):
        super().__init__()
        if config is not None and not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        known = set(ModelConfig.__dataclass_fields__)
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise TypeError(f"unknown ModelConfig field(s) {unknown}; solver options go in solver_options={{...}}")
        # the configuration's one check, here where it enters the model
        self.config = replace(config or ModelConfig(), **fields_).validate()
        cfg = self.config
        blocks = list(cfg.attention_blocks)
        channels, self.last_block, self.blocks, self.pools = build_encoder(cfg)
        self.heads = nn.ModuleDict({str(k): ScoreHead(channels[k - 1], cfg.embed_channels, scale=cfg.head)
                                    for k in blocks})
        self.hierarchy = Hierarchy.grid([(cfg.image_size // 2 ** (k - 1),) * 2 for k in blocks])
        record = get_method(cfg.method)
        temps = list(cfg.temperature_per_level())
        self.attention = ConsistentAttention(self.hierarchy, method=cfg.method, temperature=temps,
                                             check_finite=False, duals=cfg.duals if record.needs_duals else "shared",
                                             **cfg.solver_options)
        # the fixed temperatures τ_k; with learn_temperature they are scaled by e^s, s learned
        self.register_buffer("base_temperature", torch.tensor(temps, dtype=torch.float32), persistent=False)
        self.log_temperature = nn.Parameter(torch.zeros(())) if cfg.learn_temperature else None
        self.classifier = nn.Linear(classifier_features(cfg, channels), cfg.num_classes)

    @property
    def method(self) -> str:
        return self.config.method

    def features(self, images: Tensor) -> dict[int, Tensor]:
        """The block outputs (before pooling), by 1-based block index, up to the last one used:
        block ``k`` gives ``(B, width·2^(k-1), S/2^(k-1), S/2^(k-1))``."""
        self._check_input(images)
        return encoder_features(self.blocks, self.pools, images)

    def forward(self, images: Tensor) -> AttentionOutput:
        feats = self.features(images)
        blocks = self.config.attention_blocks
        scores = [self.heads[str(k)](feats[k]) for k in blocks]
        # the maps the classifier uses and the method's own loss; a learned temperature is
        # computed for this pass and given to the layer, which keeps only its fixed floats
        temperature = None if self.log_temperature is None else self.temperatures()
        attended = self.attention.attend(scores, temperature)
        maps = list(attended.maps)
        pooled = [(feats[k] * p.unsqueeze(1)).sum((2, 3)) for k, p in zip(blocks, maps)]
        if self.config.bottleneck_in_classifier:
            pooled.append(feats[5].mean((2, 3)))
        logits = self.classifier(torch.cat(pooled, dim=1))
        return AttentionOutput(logits, maps, attended.solution, scores, self.config.alpha * attended.aux_loss)

    def temperatures(self) -> Tensor:
        """The temperatures the layer attends at, ``(L,)``: ``τ_k``, or ``τ_k · e^s`` with the
        learned log-temperature ``s`` (differentiable in ``s``; ``s`` bounded to ±7)."""
        if self.log_temperature is None:
            return self.base_temperature.clone()
        s = self.log_temperature.clamp(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND)
        return self.base_temperature.to(s.dtype) * s.exp()

    def loss(self, output: AttentionOutput, labels: Tensor) -> Tensor:
        """Cross-entropy of ``logits`` against ``labels`` ``(B,)`` plus the method's auxiliary loss."""
        return nn.functional.cross_entropy(output.logits, labels) + output.aux_loss

    def _check_input(self, images: Tensor) -> None:
        check_images(self.config, images)

    def attention_layer(self, level: int) -> nn.Module:
        """The last ReLU of the block behind attention level ``level`` (for GradCAM)."""
        return cast(nn.Sequential, self.blocks[attention_block(self.config, level)])[-1]


def attention_block(cfg: ModelConfig, level: int) -> int:
    """The index in ``blocks`` of attention level ``level``; ValueError for a level the model
    has not (a negative one too: -1, the experiment's code for the input, is no level)."""
    levels = len(cfg.attention_blocks)
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, numbers.Integral) or not 0 <= level < levels:
        raise ValueError(f"level must be an attention level of the model, an integer in [0, {levels}), got {level!r}")
    return cfg.attention_blocks[int(level)] - 1


def check_images(cfg: ModelConfig, images: Tensor) -> None:
    """``images`` must be ``(B, in_channels, image_size, image_size)``; ValueError naming the mismatch."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) tensor, "
                         f"got {getattr(images, 'shape', type(images))}")
    if images.shape[1] != cfg.in_channels:
        raise ValueError(f"the model expects {cfg.in_channels} input channels, got {images.shape[1]} "
                         f"(images of shape {tuple(images.shape)})")
    if tuple(images.shape[2:]) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"the model was built for {cfg.image_size}x{cfg.image_size} images, got "
                         f"{images.shape[2]}x{images.shape[3]}")
