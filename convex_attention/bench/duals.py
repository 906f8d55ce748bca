"""The λ of the learned-dual rows: zero, fitted on training instances (the paper's shared λ),
amortised (predicted per input by a small network trained on training instances) and the
per-sample optimum."""
from __future__ import annotations

import torch

from .. import nn
from ..graph import Graph
from ..solve import consistency_loss

__all__ = ["fit_shared_duals", "fit_amortiser"]


def fit_shared_duals(h: Graph, train_scores, temps, steps: int, dtype=torch.float32, device="cpu",
                     lr: float = 0.05) -> list[torch.Tensor]:
    """The paper's setting: one λ for all inputs, fitted by Adam on the consistency loss
    of training instances drawn from the same score distribution."""
    duals = nn.LearnedDuals(h).to(device=device, dtype=dtype)
    train = [s.to(device=device, dtype=dtype) for s in train_scores]
    opt = torch.optim.Adam(duals.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = consistency_loss(train, duals(), h, temps, check_finite=False)
        loss.backward()
        opt.step()
    return [d.detach() for d in duals()]


def fit_amortiser(h: Graph, train_scores, temps, steps: int, dtype=torch.float32, device="cpu", seed: int = 0,
                  **kwargs):
    """The amortised dual: a :class:`convex_attention.nn.AmortisedDuals` network mapping a
    sample's scores to its duals, trained on ``train_scores`` (``L`` tensors
    ``(N, *h.shapes[k])``, instances disjoint from the evaluated ones) with the paper's
    consistency loss (:func:`convex_attention.nn.fit_amortised_duals`).

    Returns the trained module in ``dtype`` on ``device``, in eval mode;
    ``module(scores)`` gives ``L-1`` tensors ``(B, *h.shapes[k+1])``.  The initialisation
    is drawn from ``seed`` (not from the global generator), so a cell gives the same
    network whether or not other cells ran first (``--resume``); ``steps=0`` returns it
    untrained.  ``kwargs`` go to the module (``hidden``, ``layers``, ``sweeps``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = nn.AmortisedDuals(h, temps, **kwargs)
    module = module.to(device=device, dtype=dtype)
    train = [s.to(device=device, dtype=dtype) for s in train_scores]
    if steps:  # 0: the network as initialised (its features alone)
        nn.fit_amortised_duals(module, train, steps)
    return module.eval()
