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
learned_dual) learn with the model; ``duals`` is the dual source of the methods that
need duals (``"shared"``: the paper's learned λ, or ``"amortised"``: λ predicted per
sample from the scores).  Checkpoints saved before these fields existed load with the
defaults (bounded head, fixed temperature, shared duals), which is what they were.

The method (``ModelConfig.method``) is a name of the method registry
(:mod:`convex_attention.methods`).  The layer's ``attend`` returns the maps the
classifier uses and the method's auxiliary loss: for the paper's ``"learned_dual"`` the
per-level softmax maps and the consistency loss at the learned duals (weighted here by
``alpha`` = 10); for every other method the solution's maps and a zero loss.  Methods
that solve per sample on the CPU (cvxpylayers) are refused for sizes whose solves would
take hours.

Configuration: one :class:`ModelConfig` (keyword fields, one ``validate()``), the first
link of the chain ``ModelConfig`` ⊂ ``TrainConfig`` ⊂ ``ExperimentConfig``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor, nn

from ...hierarchy import Hierarchy
from ...methods import REGISTRY, get_method
from ...nn import ConsistentAttention, ScoreHead
from ...solve import Solution
from ...validation import check_temperatures

__all__ = ["AttentionUNet", "AttentionOutput", "ModelConfig", "ConfigError", "NORMS", "HEADS", "DUAL_SOURCES"]

# A per-sample CPU solver is refused when one pass over 1000 images would exceed this (seconds).
CVX_REFUSE_S_PER_1000 = 3600.0

NORMS = ("batch", "group")
HEADS = ("bounded", "learned")  # ScoreHead(scale=...): the paper's head, or one with a learnable gain
DUAL_SOURCES = ("shared", "amortised")  # ConsistentAttention(duals=...), for methods that need duals
# The learnable log-temperature's bound: the temperatures move by at most a factor e^7 ≈ 1100.
LOG_TEMPERATURE_BOUND = 7.0


class ConfigError(ValueError):
    """An invalid configuration field; ``field`` names it (the command line maps it to its flag)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_int(name: str, value, minimum: int = 1, what: str = "") -> None:
    """``value`` must be an integer >= ``minimum`` (ConfigError naming ``name`` otherwise)."""
    if not _is_int(value) or value < minimum:
        raise ConfigError(name, f"{name} must be an integer >= {minimum}{what}, got {value!r}")


def check_real(name: str, value, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """``value`` must be a finite number in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    ok = _is_real(value) and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
            (f"> {low:g}" if low_open else f">= {low:g}")
        raise ConfigError(name, f"{name} must be a finite number {interval}, got {value!r}")


@dataclass
class ModelConfig:
    """The attention CNN's settings: what :class:`AttentionUNet` is built from.

    Defaults follow the paper where it states them (width 32, two attention levels on
    blocks 3 and 4, τ = 1, α = 10, BatchNorm); ``image_size`` 128 is the synthetic
    data's size (the paper resizes BraTS slices to 256: pass 256 there).
    """

    in_channels: int = 4
    num_classes: int = 2
    width: int = 32
    image_size: int = 128
    attention_blocks: tuple = (3, 4)
    method: str = "learned_dual"
    temperature: float | tuple = 1.0
    alpha: float = 10.0
    embed_channels: int = 64
    bottleneck_in_classifier: bool = False
    norm: str = "batch"
    solver_options: dict = field(default_factory=dict)
    head: str = "bounded"
    learn_temperature: bool = False
    duals: str = "shared"

    # the fields that decide the parameter shapes and the computation (what a checkpoint must match)
    ARCHITECTURE = ("in_channels", "num_classes", "width", "image_size", "attention_blocks", "method",
                    "embed_channels", "bottleneck_in_classifier", "norm", "head", "learn_temperature", "duals")

    def __post_init__(self):
        if isinstance(self.attention_blocks, list):
            self.attention_blocks = tuple(self.attention_blocks)
        if isinstance(self.temperature, list):
            self.temperature = tuple(self.temperature)

    def validate(self) -> ModelConfig:
        """Check every field; ConfigError (a ValueError) naming the field and the accepted values."""
        try:
            method = get_method(self.method)
        except ValueError as err:
            raise ConfigError("method", str(err)) from None
        check_int("in_channels", self.in_channels)
        check_int("num_classes", self.num_classes, 2)
        check_int("width", self.width)
        check_int("embed_channels", self.embed_channels)
        if not _is_int(self.image_size) or self.image_size < 16 or self.image_size % 16:
            raise ConfigError("image_size", f"image size {self.image_size!r} is not divisible through the pooling "
                                            f"stack: the encoder halves it four times, so it must be a positive "
                                            f"multiple of 16 (e.g. 128 or 256)")
        blocks = list(self.attention_blocks) if isinstance(self.attention_blocks, Sequence) else []
        if not all(_is_int(b) for b in blocks) or not 2 <= len(blocks) <= 3 \
                or blocks != list(range(blocks[0], blocks[0] + len(blocks))) or blocks[0] < 1 or blocks[-1] > 5:
            raise ConfigError("attention_blocks", f"attention_blocks must be 2 or 3 consecutive blocks among 1..5 "
                                                  f"(5 = bottleneck), got {self.attention_blocks!r}")
        try:
            check_temperatures(self.temperature, len(blocks))
        except (TypeError, ValueError) as err:
            raise ConfigError("temperature", str(err)) from None
        check_real("alpha", self.alpha, 0.0)
        if self.norm not in NORMS:
            raise ConfigError("norm", f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not isinstance(self.bottleneck_in_classifier, bool):
            raise ConfigError("bottleneck_in_classifier",
                              f"bottleneck_in_classifier must be True or False, got {self.bottleneck_in_classifier!r}")
        if not isinstance(self.solver_options, dict):
            raise ConfigError("solver_options", f"solver_options must be a dict, got {self.solver_options!r}")
        if self.head not in HEADS:
            raise ConfigError("head", f"head must be one of {', '.join(HEADS)} (the paper's bounded score head, or "
                                      f"one with a learnable gain), got {self.head!r}")
        if not isinstance(self.learn_temperature, bool):
            raise ConfigError("learn_temperature", f"learn_temperature must be True or False, got "
                                                   f"{self.learn_temperature!r}")
        if self.learn_temperature and not method.tensor_temperature:
            learnable = ", ".join(n for n, r in REGISTRY.items() if r.tensor_temperature)
            raise ConfigError("learn_temperature", f"method {self.method!r} cannot differentiate through the "
                                                   f"temperature, so it cannot learn one; use a fixed temperature, "
                                                   f"or one of the methods {learnable}")
        if self.duals not in DUAL_SOURCES:
            raise ConfigError("duals", f"duals must be one of {', '.join(DUAL_SOURCES)}, got {self.duals!r}")
        if self.duals != "shared" and not method.needs_duals:
            raise ConfigError("duals", f"duals={self.duals!r} is the dual source of methods that need duals "
                                       f"(learned_dual), not of {self.method!r}; leave it 'shared'")
        if method.cpu_only:
            # a per-sample CPU solver: its cost grows steeply with the number of cells
            from ...cvx import prior_seconds_per_sample

            cells = sum((self.image_size // 2 ** (k - 1)) ** 2 for k in blocks)
            per_image = prior_seconds_per_sample(cells)
            if per_image * 1000 > CVX_REFUSE_S_PER_1000:
                raise ConfigError(
                    "method",
                    f"method {self.method!r} refused for {self.image_size}x{self.image_size} images: the attention "
                    f"problem has {cells} cells, estimated {per_image:.1f} s per image forward+backward on a CPU, "
                    f"about {per_image * 1000 / 3600:.1f} h per 1000 images. Use method 'exact' (the same solution "
                    f"in closed form) or smaller images.")
        return self

    def architecture(self) -> dict:
        """The fields that decide the parameter shapes and the computation (what a checkpoint must match)."""
        return {k: getattr(self, k) for k in self.ARCHITECTURE}

    def to_dict(self) -> dict:
        """Plain containers only (what a checkpoint and ``config.json`` hold)."""
        out = asdict(self)
        out["attention_blocks"] = list(self.attention_blocks)
        if isinstance(self.temperature, tuple):
            out["temperature"] = list(self.temperature)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`; ConfigError for a field this version does not know.
        Fields missing from ``data`` (older checkpoints) take their defaults."""
        if not isinstance(data, dict):
            raise ConfigError("model", f"a model configuration must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown model configuration field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


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


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)  # up to 8 groups that divide the channels
    return nn.BatchNorm2d(channels)


def build_encoder(cfg: ModelConfig) -> tuple[list[int], int, nn.ModuleList, nn.ModuleList]:
    """The encoder of ``cfg``: ``(channels, last_block, blocks, pools)``, where ``channels[k-1]``
    is block ``k``'s width (blocks 1..4 and the bottleneck) and ``last_block`` the deepest block
    used.  Shared by the attention model and the plain CNN, so the two trunks are identical."""
    used = list(cfg.attention_blocks) + ([5] if cfg.bottleneck_in_classifier else [])
    last_block = max(used)
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

    def __init__(self, config: ModelConfig | None = None, **fields_):
        super().__init__()
        if config is not None and not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        known = set(ModelConfig.__dataclass_fields__)
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise TypeError(f"unknown ModelConfig field(s) {unknown}; solver options go in solver_options={{...}}")
        base = (config or ModelConfig()).to_dict()
        self.config = ModelConfig.from_dict({**base, **fields_}).validate()
        cfg = self.config
        blocks = list(cfg.attention_blocks)
        channels, self.last_block, self.blocks, self.pools = build_encoder(cfg)
        self.heads = nn.ModuleDict({str(k): ScoreHead(channels[k - 1], cfg.embed_channels, scale=cfg.head)
                                    for k in blocks})
        self.hierarchy = Hierarchy.grid([(cfg.image_size // 2 ** (k - 1),) * 2 for k in blocks])
        record = get_method(cfg.method)
        self.attention = ConsistentAttention(self.hierarchy, method=cfg.method, temperature=cfg.temperature,
                                             check_finite=False, duals=cfg.duals if record.needs_duals else "shared",
                                             **cfg.solver_options)
        # the fixed temperatures τ_k; with learn_temperature they are scaled by e^s, s learned
        self.register_buffer("base_temperature", torch.tensor(check_temperatures(cfg.temperature, len(blocks)),
                                                               dtype=torch.float32), persistent=False)
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
        return self.blocks[self.config.attention_blocks[level] - 1][-1]


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
