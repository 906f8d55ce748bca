"""The λ of the learned-dual rows: zero, fitted on training instances (the paper's shared λ)
and the per-sample optimum."""
from __future__ import annotations

import torch

from ..hierarchy import Hierarchy
from ..nn import LearnedDuals
from ..solve import consistency_loss

__all__ = ["fit_shared_duals"]


def fit_shared_duals(h: Hierarchy, train_scores, temps, steps: int, dtype=torch.float32, device="cpu",
                     lr: float = 0.05) -> list[torch.Tensor]:
    """The paper's setting: one λ for all inputs, fitted by Adam on the consistency loss
    of training instances drawn from the same score distribution."""
    duals = LearnedDuals(h).to(device=device, dtype=dtype)
    train = [s.to(device=device, dtype=dtype) for s in train_scores]
    opt = torch.optim.Adam(duals.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = consistency_loss(train, duals(), h, temps, check_finite=False)
        loss.backward()
        opt.step()
    return [d.detach() for d in duals()]
