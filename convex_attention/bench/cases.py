"""Timed cases: one forward closure per method, as :func:`measure_interleaved` times them.

Every case times ``ca.solve`` (the public entry point, validation included) followed by a
linear loss ``Σ_k <p_k, w_k>``; a method that needs duals (``learned_dual``) adds the
paper's consistency loss, as its training does; the amortised case also runs the network
that predicts the duals.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..graph import Graph
from ..methods import get_method
from ..solve import consistency_loss, solve

__all__ = ["make_case", "timed_case", "amortised_case", "shape_str"]


def make_case(method: str, h: Graph, batch: int, dtype=torch.float32, device="cpu", temperature=1.0,
              seed: int = 0, scores: Sequence[torch.Tensor] | None = None, options: dict | None = None,
              last: dict | None = None):
    """A forward closure for :func:`measure_interleaved` on seeded random scores.

    ``scores`` (optional): ``L`` tensors ``(batch, *h.shapes[k])``, copied to ``dtype`` and
    ``device`` as leaves that require grad; otherwise standard normal ones.  The loss's
    weights have the same shapes.  A method that needs duals gets learnable ones shared
    over the batch, ``(1, *h.shapes[k+1])``, and adds the paper's ``consistency_loss`` (as
    its training does).  ``options`` go to ``solve``.
    """
    g = torch.Generator().manual_seed(seed)
    if scores is None:
        scores = [torch.randn((batch,) + s, generator=g) for s in h.shapes]
    scores = [s.to(device=device, dtype=dtype).detach().requires_grad_() for s in scores]
    weights = [torch.randn(s.shape, generator=g).to(device=device, dtype=dtype) for s in scores]
    duals = None
    if get_method(method).needs_duals:
        duals = [(0.1 * torch.randn((1,) + h.shapes[b], generator=g)).to(device=device, dtype=dtype).requires_grad_()
                 for _, b in h.edges]
    return timed_case(method, h, scores, weights, temperature, duals, options or {}, last)


def timed_case(method, h, scores, weights, temps, duals, options, last: dict | None = None):
    """The forward closure of one timed method: ``solve`` then ``Σ_k <p_k, w_k>`` (plus the
    consistency loss for a method that needs duals).

    ``scores``, ``weights``: ``L`` tensors ``(B, *h.shapes[k])``; ``duals``: ``L-1`` tensors
    ``(1 or B, *h.shapes[k+1])`` or None.  ``last["solution"]`` keeps the latest Solution
    when ``last`` is given (so a slow solver is not run again for its accuracy).  cvxpylayers
    is timed without its gradient check (``check_gradient=False``, unless the options say
    otherwise): the backend's own cost, the strongest alternative a user could pick."""
    if method == "cvxpylayers":
        options = {"check_gradient": False, **options}

    def forward():
        sol = solve(scores, h, method, temperature=temps, duals=duals, **options)
        if last is not None:
            last["solution"] = sol
        loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
        if needs_duals:
            loss = loss + consistency_loss(scores, duals, h, temps)
        return loss

    needs_duals = get_method(method).needs_duals
    return forward


def amortised_case(method, h, scores, weights, temps, amortiser, last: dict | None = None):
    """The forward closure of the amortised dual: the network predicts each sample's
    duals from its scores, then ``method`` (the reparameterisation) and its loss run as
    in :func:`timed_case`, so the time includes the network.

    ``amortiser(scores) -> L-1`` tensors ``(B, *h.shapes[k+1])``; it runs in its own
    dtype (float32 for half-precision scores) and its duals are cast to the scores'.
    """
    net_dtype = next(amortiser.parameters()).dtype

    def forward():
        duals = [d.to(scores[0].dtype) for d in amortiser([s.to(net_dtype) for s in scores])]
        sol = solve(scores, h, method, temperature=temps, duals=duals)
        if last is not None:
            last["solution"] = sol
        loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
        return loss + consistency_loss(scores, duals, h, temps)

    return forward


def shape_str(h: Graph) -> str:
    return "+".join("x".join(map(str, s)) for s in h.shapes)
