"""convex_attention.bench.duals: the λ of the learned-dual rows (fitted shared, amortised)."""
import torch

import convex_attention as ca
from convex_attention.bench.duals import fit_shared_duals
from convex_attention.bench.generators import generate


def test_fitted_shared_duals_lower_the_training_consistency_loss():
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    # scores with a fixed structure shared by all inputs: one λ can fix it
    base = generate("lesion", h, 1, seed=3)
    train = [b + 0.1 * torch.randn((32,) + b.shape[1:], dtype=torch.float64) for b in base]
    temps = [1.0, 1.0]
    lam = fit_shared_duals(h, train, temps, steps=200, dtype=torch.float64)
    zero = [torch.zeros_like(d) for d in lam]
    assert ca.consistency_loss(train, lam, h) < 0.2 * ca.consistency_loss(train, zero, h)
