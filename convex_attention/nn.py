"""Thin ``nn.Module`` wrappers: learned duals, consistent attention, score heads."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_hierarchy, check_temperatures
from .hierarchy import Hierarchy
from .methods import METHODS
from .solve import Solution, consistency_loss, solve

__all__ = ["LearnedDuals", "ConsistentAttention", "ScoreHead"]


class LearnedDuals(nn.Module):
    """The paper's "dual witness": one learnable ``λ_k`` per constraint, shared across the batch.

    ``LearnedDuals(h)()`` returns ``L-1`` tensors shaped ``(1, *h.shapes[k+1])``,
    initialised to zero (the unconstrained softmax).
    """

    def __init__(self, h: Hierarchy):
        super().__init__()
        check_hierarchy(h)
        self.h = h
        self.duals = nn.ParameterList([nn.Parameter(torch.zeros((1,) + h.shapes[k + 1]))
                                       for k in range(h.num_levels - 1)])

    def forward(self) -> list[Tensor]:
        return list(self.duals)


class ConsistentAttention(nn.Module):
    """Multi-level attention with a switchable consistency method.

    ``forward(scores) -> Solution`` with ``scores[k]``: ``(B, *h.shapes[k])``.

    Args:
        h: the hierarchy of attention levels (finest first).
        method: one of ``"softmax"``, ``"exact"``, ``"dual"``, ``"learned_dual"``,
            ``"cvxpylayers"``.
        temperature: a positive float or one per level.
        check_finite: reject NaN/Inf scores (one host synchronisation on CUDA).
        **options: passed to :func:`convex_attention.solve`.

    With ``method="learned_dual"`` the module owns a :class:`LearnedDuals`; the forward
    pass returns ``p(λ)`` and :meth:`consistency_loss` gives the paper's loss for the
    same scores.
    """

    def __init__(self, h: Hierarchy, method: str = "exact", temperature=1.0, check_finite: bool = True,
                 **options):
        super().__init__()
        check_hierarchy(h)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.h, self.method = h, method
        self.temperature = check_temperatures(temperature, h.num_levels)
        self.check_finite, self.options = check_finite, options
        self.learned_duals = LearnedDuals(h) if method == "learned_dual" else None

    def forward(self, scores: Sequence[Tensor]) -> Solution:
        duals = self.learned_duals() if self.learned_duals is not None else None
        return solve(scores, self.h, self.method, self.temperature, duals=duals,
                     check_finite=self.check_finite, **self.options)

    def consistency_loss(self, scores: Sequence[Tensor], detach_target: bool = False) -> Tensor:
        """The paper's loss at the module's learned duals (zeros if it has none)."""
        duals = (self.learned_duals() if self.learned_duals is not None
                 else [torch.zeros((1,) + s, device=scores[0].device) for s in self.h.shapes[1:]])
        return consistency_loss(scores, duals, self.h, self.temperature, detach_target=detach_target,
                                check_finite=self.check_finite)

    def extra_repr(self) -> str:
        return f"{self.h}, method={self.method!r}, temperature={self.temperature}"


class ScoreHead(nn.Module):
    """Attention scores from a feature map, as in the paper's attention CNN.

    ``(B, C, *spatial) -> (B, *spatial)``: a 1×1 convolution to an embedding, L2
    normalisation over channels, ReLU, and a 1×1 convolution to one channel.
    """

    def __init__(self, in_channels: int, embed_channels: int = 64, ndim: int = 2):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        self.embed = conv(in_channels, embed_channels, kernel_size=1)
        self.relu = nn.ReLU()  # a module, so that attribution methods (DeepLIFT, LRP) see it
        self.score = conv(embed_channels, 1, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        x = F.normalize(self.embed(features), dim=1)
        return self.score(self.relu(x)).squeeze(1)
