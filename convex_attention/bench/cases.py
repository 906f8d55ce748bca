"""Timed cases: one forward closure per method, as :func:`measure_interleaved` times them.

Every case times ``ca.solve`` (the public entry point, validation included) followed by a
linear loss ``Σ_k <p_k, w_k>``; ``learned_dual`` adds the paper's consistency loss, as its
training does.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..hierarchy import Hierarchy
from ..solve import consistency_loss, solve

__all__ = ["make_case", "timed_case", "shape_str"]


def make_case(method: str, h: Hierarchy, batch: int, dtype=torch.float32, device="cpu", temperature=1.0,
              seed: int = 0, scores: Sequence[torch.Tensor] | None = None, options: dict | None = None,
              last: dict | None = None):
    """A forward closure for :func:`measure_interleaved` on seeded random scores.

    ``learned_dual`` adds the paper's ``consistency_loss`` (as its training does); its
    duals are learnable parameters shared over the batch.
    """
    g = torch.Generator().manual_seed(seed)
    if scores is None:
        scores = [torch.randn((batch,) + s, generator=g) for s in h.shapes]
    scores = [s.to(device=device, dtype=dtype).detach().requires_grad_() for s in scores]
    weights = [torch.randn(s.shape, generator=g).to(device=device, dtype=dtype) for s in scores]
    duals = None
    if method == "learned_dual":
        duals = [(0.1 * torch.randn((1,) + s, generator=g)).to(device=device, dtype=dtype).requires_grad_()
                 for s in h.shapes[1:]]
    return timed_case(method, h, scores, weights, temperature, duals, options or {}, last)


def timed_case(method, h, scores, weights, temps, duals, options, last: dict | None = None):
    """The forward closure of one timed method; ``last["solution"]`` keeps the latest
    Solution when ``last`` is given (so a slow solver is not run again for its accuracy)."""
    def forward():
        sol = solve(scores, h, method, temperature=temps, duals=duals, **options)
        if last is not None:
            last["solution"] = sol
        loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
        if method == "learned_dual":
            loss = loss + consistency_loss(scores, duals, h, temps)
        return loss

    return forward


def shape_str(h: Hierarchy) -> str:
    return "+".join("x".join(map(str, s)) for s in h.shapes)
