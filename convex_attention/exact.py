r"""The exact consistent attention in closed form (DESIGN.md §3).

Problem (for every sample of the batch)::

    maximise_p   Σ_k <θ_k, p_k> + τ_k H(p_k)
    subject to   p_k ∈ Δ_{n_k},   P_k p_k = p_{k+1}   (k = 0 … L-2)

Because the partitions nest, the problem is a tree.  An upward pass of block
log-sum-exps collects, for every coarse cell, the value of its best sub-tree, and a
downward pass multiplies each coarse probability by the within-block conditionals::

    m_0 = θ_0,  T_0 = τ_0
    A_k = T_k · blocklogsumexp_k(m_k / T_k),   m_{k+1} = θ_{k+1} + A_k,   T_{k+1} = T_k + τ_{k+1}
    p_{L-1} = softmax(m_{L-1} / T_{L-1}),      p_k = P_kᵀ p_{k+1} ⊙ q_k,   q_k = exp((m_k - P_kᵀA_k) / T_k)

Layers, as in entmax: :func:`exact_forward` / :func:`tree_backward` are the kernels,
:class:`ExactAttentionFunction` the ``autograd.Function`` with the analytic backward,
:func:`exact_attention` the functional, and ``nn.ConsistentAttention`` the module.

The backward is the vector–Jacobian product of the solution map θ ↦ p*(θ), written as
reverse-mode through the two passes above: O(Σ n_k), no graph of the forward is kept.
Block maxima are subtracted before every exponential, so scores of ±1e4 neither overflow
nor produce NaN; half-precision inputs are computed in float32.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._ops import centre, compute_dtype, sample_dims
from .hierarchy import Hierarchy

__all__ = ["exact_forward", "tree_backward", "ExactAttentionFunction", "exact_attention",
           "exact_log_probs", "exact_duals", "cumulative_temperatures", "solve_exact"]


def cumulative_temperatures(temps: Sequence[float]) -> list[float]:
    """``T_k = τ_0 + … + τ_k``: the temperature of the sub-tree rooted at level ``k``."""
    out, acc = [], 0.0
    for t in temps:
        acc += t
        out.append(acc)
    return out


def exact_forward(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float]):
    """Kernel of the closed form.

    Args:
        scores: ``L`` tensors, ``scores[k]``: ``(B, *h.shapes[k])``, float32/float64.
        h: the hierarchy.
        temps: ``L`` positive floats.

    Returns:
        ``(probs, cond, blocksum)``: ``probs[k]`` ``(B, *shapes[k])``; for ``k < L-1``,
        ``cond[k]`` ``(B, *shapes[k])`` holds ``exp(m_k/T_k − blockmax)`` and
        ``blocksum[k]`` ``(B, *shapes[k+1])`` its block sums, so the within-block
        conditional is ``q_k = cond[k] / P_kᵀ blocksum[k]`` (never materialised: each
        broadcast to the fine grid costs a pass).
    """
    T = cumulative_temperatures(temps)
    L = h.num_levels
    cond, blocksum = [], []
    m = scores[0]
    for k in range(L - 1):
        z = m / T[k] if T[k] != 1.0 else m
        e, s, zmax = h.block_exp(z, k)
        cond.append(e)
        blocksum.append(s)
        m = scores[k + 1] + T[k] * (zmax + s.log())
    top = torch.softmax((m / T[-1]).flatten(1), dim=1).view_as(m)
    probs = [top]
    for k in reversed(range(L - 1)):
        probs.insert(0, h.combine_broadcast(cond[k], probs[0] / blocksum[k], k, torch.mul))
    return probs, cond, blocksum


def tree_backward(h: Hierarchy, probs: Sequence[Tensor], cond: Sequence[Tensor],
                  temps: Sequence[float], grads: Sequence[Tensor],
                  blocksum: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Vector–Jacobian product of the solution map θ ↦ p*(θ) at a solution.

    Needs only the solution ``probs`` and the within-block conditionals
    ``q_k = p_k / P_kᵀ p_{k+1}``, given as ``cond[k] / P_kᵀ blocksum[k]`` (or as ``cond``
    itself when ``blocksum`` is None).  So it is also the implicit-function gradient of
    any solver that reaches the optimum (the ``"dual"`` method uses it).

    Args:
        grads: ``L`` tensors, ``∂loss/∂p_k`` shaped like ``probs[k]``.

    Returns:
        ``L`` tensors ``∂loss/∂θ_k``; each sums to zero per sample (a constant added to a
        level's scores does not move the solution).
    """
    T = cumulative_temperatures(temps)
    L = len(probs)
    G, pooled = [], []
    for k in range(L):
        g = (probs[k] * grads[k]).contiguous()
        if k > 0:
            g += pooled[k - 1]
        G.append(g)
        if k < L - 1:
            pooled.append(h.aggregate(g, k))
    top = G[-1]
    mbar = (top - probs[-1] * top.sum(sample_dims(top), keepdim=True)) / T[-1]
    out = [mbar]
    for k in reversed(range(L - 1)):
        abar = mbar - pooled[k] / T[k]
        if blocksum is not None:
            abar = abar / blocksum[k]
        # θ̄_k = G_k / T_k + q_k ⊙ P_kᵀ Ā_k, accumulated in G_k's storage.
        gk = G[k].mul_(1.0 / T[k])
        h.fine_view(gk, k).addcmul_(h.fine_view(cond[k], k), h.coarse_view(abar, k))
        mbar = gk
        out.insert(0, mbar)
    return out


class ExactAttentionFunction(torch.autograd.Function):
    """``autograd.Function``: forward = closed form, backward = analytic tree VJP.

    ``ExactAttentionFunction.apply(h, temps, *scores) -> tuple of L probability tensors``.
    Inputs must be float32 or float64 (see :func:`exact_attention` for other dtypes).
    """

    @staticmethod
    def forward(ctx, h: Hierarchy, temps: tuple, *scores: Tensor):
        probs, cond, blocksum = exact_forward(scores, h, temps)
        ctx.h, ctx.temps, ctx.L = h, temps, len(probs)
        ctx.save_for_backward(*probs, *cond, *blocksum)
        return tuple(probs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        L = ctx.L
        saved = ctx.saved_tensors
        gscores = tree_backward(ctx.h, saved[:L], saved[L:2 * L - 1], ctx.temps, grads, saved[2 * L - 1:])
        return (None, None, *gscores)


def exact_attention(scores: Sequence[Tensor], h: Hierarchy, temperature: Sequence[float]) -> list[Tensor]:
    """Probabilities of the exact consistent attention.

    Args:
        scores: ``L`` tensors ``(B, *h.shapes[k])`` (validated by the caller).
        temperature: ``L`` positive floats.

    Returns:
        ``L`` tensors ``(B, *h.shapes[k])`` in the input dtype, each summing to one per
        sample and exactly consistent (``P_k p_k = p_{k+1}`` up to rounding).
    """
    dtype = scores[0].dtype
    work = compute_dtype(dtype)
    probs = ExactAttentionFunction.apply(h, tuple(temperature), *[s.to(work) for s in scores])
    return [p.to(dtype) for p in probs]


def exact_log_probs(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float]) -> list[Tensor]:
    """``log p_k`` of the exact solution, by differentiable torch operations (finite
    even where ``p_k`` underflows to zero)."""
    T = cumulative_temperatures(temps)
    L = h.num_levels
    zs, lses = [], []
    m = scores[0]
    for k in range(L - 1):
        z = m / T[k]
        a = h.block_logsumexp(z, k)
        zs.append(z)
        lses.append(a)
        m = scores[k + 1] + T[k] * a
    logp = [torch.log_softmax((m / T[-1]).flatten(1), dim=1).view_as(m)]
    for k in reversed(range(L - 1)):
        logp.insert(0, h.combine_broadcast(zs[k], logp[0] - lses[k], k, torch.add))
    return logp


def exact_duals(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float]) -> list[Tensor]:
    """Optimal duals by the top-down recursion of §3, centred per sample.

    ``λ_{L-2} = τ_{L-1} log p_{L-1} - θ_{L-1}``;  ``λ_{k-1} = τ_k log p_k - θ_k + P_kᵀ λ_k``.
    Returns ``L-1`` tensors, ``duals[k]``: ``(B, *h.shapes[k+1])``.
    """
    logp = exact_log_probs(scores, h, temps)
    L = h.num_levels
    lam = temps[L - 1] * logp[L - 1] - scores[L - 1]
    duals = [lam]
    for k in range(L - 2, 0, -1):
        lam = temps[k] * logp[k] - scores[k] + h.broadcast(lam, k)
        duals.insert(0, lam)
    return [centre(d) for d in duals]


def solve_exact(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float]):
    """The ``"exact"`` method of the registry: probabilities now, duals when first read."""
    probs = exact_attention(scores, h, temps)
    work = compute_dtype(scores[0].dtype)

    def duals_fn():
        return [d.to(scores[0].dtype) for d in exact_duals([s.to(work) for s in scores], h, temps)]

    return probs, duals_fn, {}
