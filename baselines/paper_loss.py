"""The consistency loss as the paper's public reference code computes it.

That code normalises ``a`` and ``b`` over the whole batch at once (a broadcasting slip:
the sum runs over every axis, not over each sample's cells), so for a batch of B samples
each sample's distributions sum to about 1/B and the samples are coupled.  This project
normalises per sample, as the mathematics says (``convex_attention.consistency_loss``);
the two agree for B = 1.  Kept here, for two levels and 2×2 pooling, to document and test
the difference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paper_code_consistency_loss"]


def paper_code_consistency_loss(theta0: Tensor, theta1: Tensor, lam: Tensor) -> Tensor:
    """``theta0`` ``(B, 2H, 2W)``, ``theta1`` ``(B, H, W)``, ``lam`` ``(H, W)``; τ = 1."""
    soft0 = torch.softmax(theta0.flatten(1), 1).view_as(theta0)
    soft1 = torch.softmax(theta1.flatten(1), 1).view_as(theta1)
    a = F.avg_pool2d(soft0.unsqueeze(1), 2).squeeze(1) * 4 * torch.exp(-lam)
    b = soft1 * torch.exp(lam)
    a = a / a.sum()  # the slip: one normaliser for the whole batch
    b = b / b.sum()
    # with batch-wide normalisation the KL is already a single number for the whole batch
    return (b * (b.log() - a.log())).sum()
