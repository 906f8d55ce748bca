r"""The exact consistent attention in closed form (docs/design.md §3).

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
Temperatures (floats, or a ``(L,)`` tensor that requires grad): the solution depends on
``τ`` only through the optimality condition ``θ_k − τ_k (1 + log p_k) + … = 0``, so a change
of ``τ_k`` acts like the score change ``−log p_k · dτ_k`` (the constant is absorbed: one
constant per level moves nothing).  By the implicit function theorem
``∂L/∂τ_k = −Σ_{b,i} θ̄_k(b, i) · log p_k(b, i)`` with ``θ̄_k = ∂L/∂θ_k`` from the tree VJP:
one extra pass per level, only when the temperature requires grad.  (Differentiating the
closed form itself, where ``τ`` enters through ``T_k = τ_0 + … + τ_k``, gives the same
numbers but would need the forward's graph; the tests check both against finite
differences.)

Numerics: block maxima of ``m_k`` (and the top level's maximum) are subtracted *before*
dividing by ``T_k``, so neither ±1e4 scores nor a tiny temperature overflow, and the upward
pass carries ``m_k`` in score units (``A_k = blockmax + T_k log Σ e``), so a huge
temperature does not either: the output is finite for every temperature that
``validation.temperature_range`` accepts.  Half-precision inputs are computed in float32.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._ops import centre, compute_dtype, sample_dims
from .hierarchy import Hierarchy

__all__ = ["exact_forward", "tree_backward", "ExactAttentionFunction", "exact_attention",
           "exact_log_probs", "exact_duals", "cumulative_temperatures", "solve_exact", "temperature_gradient"]


def cumulative_temperatures(temps: Sequence[float]) -> list[float]:
    """``T_k = τ_0 + … + τ_k``: the temperature of the sub-tree rooted at level ``k``
    (floats, or 0-d tensors where ``temps`` holds tensors)."""
    out, acc = [], 0.0
    for t in temps:
        acc = acc + t  # not +=: tensors would be updated in place
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
        ``cond[k]`` ``(B, *shapes[k])`` holds ``exp((m_k − blockmax) / T_k)`` and
        ``blocksum[k]`` ``(B, *shapes[k+1])`` its block sums, so the within-block
        conditional is ``q_k = cond[k] / P_kᵀ blocksum[k]`` (never materialised: each
        broadcast to the fine grid costs a pass).
    """
    T = cumulative_temperatures(temps)
    L = h.num_levels
    cond, blocksum = [], []
    m = scores[0]
    for k in range(L - 1):
        mmax = h.block_max(m, k)
        # (m − blockmax) ≤ 0 before the division: no overflow at any accepted T_k
        e = h.combine_broadcast(m, mmax, k, torch.sub)
        if T[k] != 1.0:
            e.div_(T[k])
        e.exp_()
        s = h.aggregate(e, k)
        cond.append(e)
        blocksum.append(s)
        m = scores[k + 1] + (mmax + T[k] * s.log())
    flat = m.flatten(1)
    top = torch.softmax(torch.sub(flat, flat.amax(1, keepdim=True)).div_(T[-1]), dim=1).view_as(m)
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


def temperature_gradient(probs: Sequence[Tensor], gscores: Sequence[Tensor]) -> Tensor:
    """``∂L/∂τ_k = −Σ_{b,i} θ̄_k(b, i) · log p_k(b, i)``: ``(L,)`` (see the module docstring).

    ``θ̄_k`` vanishes wherever ``p_k`` underflows to zero, so ``log p_k`` is floored at the
    dtype's smallest normal number: the omitted terms are below ``p · |log p|``.
    """
    out = []
    for p, g in zip(probs, gscores):
        floor = torch.finfo(p.dtype).tiny
        out.append(-(g * p.clamp_min(floor).log()).sum())
    return torch.stack(out)


class ExactAttentionFunction(torch.autograd.Function):
    """``autograd.Function``: forward = closed form, backward = analytic tree VJP.

    ``ExactAttentionFunction.apply(h, temps, *scores) -> tuple of L probability tensors``.
    ``temps``: ``L`` positive floats, or a ``(L,)`` tensor whose gradient the backward
    returns (:func:`temperature_gradient`).  Scores must be float32 or float64 (see
    :func:`exact_attention` for other dtypes).
    """

    @staticmethod
    def forward(ctx, h: Hierarchy, temps, *scores: Tensor):
        if isinstance(temps, Tensor):
            floats = tuple(float(t) for t in temps.detach().reshape(-1).tolist())
            ctx.tau_like = (temps.dtype, temps.device)
        else:
            floats = tuple(float(t) for t in temps)
        probs, cond, blocksum = exact_forward(scores, h, floats)
        ctx.h, ctx.temps, ctx.L = h, floats, len(probs)
        ctx.save_for_backward(*probs, *cond, *blocksum)
        return tuple(probs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        L = ctx.L
        saved = ctx.saved_tensors
        gscores = tree_backward(ctx.h, saved[:L], saved[L:2 * L - 1], ctx.temps, grads, saved[2 * L - 1:])
        gtau = None
        if ctx.needs_input_grad[1]:
            dtype, device = ctx.tau_like
            gtau = temperature_gradient(saved[:L], gscores).to(device=device, dtype=dtype)
        return (None, gtau, *gscores)


def _temperature_argument(temperature):
    """Floats stay a tuple (the fast path); tensors become one ``(L,)`` float64 tensor that
    carries their gradients."""
    if isinstance(temperature, Tensor):
        return temperature.reshape(-1).to(torch.float64)
    if any(isinstance(t, Tensor) for t in temperature):
        device = next(t.device for t in temperature if isinstance(t, Tensor))
        return torch.stack([t.to(device, torch.float64).reshape(()) if isinstance(t, Tensor)
                            else torch.tensor(float(t), dtype=torch.float64, device=device) for t in temperature])
    return tuple(temperature)


def exact_attention(scores: Sequence[Tensor], h: Hierarchy, temperature) -> list[Tensor]:
    """Probabilities of the exact consistent attention.

    Args:
        scores: ``L`` tensors ``(B, *h.shapes[k])`` (validated by the caller).
        temperature: ``L`` positive floats, ``L`` 0-d tensors or a ``(L,)`` tensor
            (differentiated through when it requires grad).

    Returns:
        ``L`` tensors ``(B, *h.shapes[k])`` in the input dtype, each summing to one per
        sample and exactly consistent (``P_k p_k = p_{k+1}`` up to rounding).
    """
    dtype = scores[0].dtype
    work = compute_dtype(dtype)
    probs = ExactAttentionFunction.apply(h, _temperature_argument(temperature), *[s.to(work) for s in scores])
    return [p.to(dtype) for p in probs]


def _log_terms(scores: Sequence[Tensor], h: Hierarchy, temps):
    """The closed form's upward pass by differentiable torch operations, in score units.

    Returns ``(T, r)``: ``T`` the cumulative temperatures and ``L`` tensors ``r_k ≤ 0``
    shaped like ``scores[k]``, ``r_k = m_k − P_kᵀ A_k`` (``k < L-1``) and
    ``r_{L-1} = m_{L-1} − T_{L-1} logsumexp(m_{L-1} / T_{L-1})``, so that
    ``log p_k = Σ_{j ≥ k} (P_k^T … P_{j-1}^T) r_j / T_j``.  Every ``r_k`` is finite for any
    accepted temperature (maxima are subtracted before dividing).
    """
    T = cumulative_temperatures(temps)
    L = h.num_levels
    r = []
    m = scores[0]
    for k in range(L - 1):
        mmax = h.block_max(m, k).detach()
        d = h.combine_broadcast(m, mmax, k, torch.sub)
        a = mmax + T[k] * h.aggregate(torch.exp(d / T[k]), k).log()
        r.append(h.combine_broadcast(m, a, k, torch.sub))
        m = scores[k + 1] + a
    flat = m.flatten(1)
    d = flat - flat.detach().amax(1, keepdim=True)
    r.append((d - T[-1] * torch.logsumexp(d / T[-1], dim=1, keepdim=True)).view_as(m))
    return T, r


def _scaled_log_probs(h: Hierarchy, T, r, k: int, c) -> Tensor:
    """``c · log p_k`` from :func:`_log_terms`; for ``0 < c ≤ T_k`` every factor ``c / T_j``
    is at most one, so the result is finite even where ``p_k`` underflows."""
    L = h.num_levels
    out = r[L - 1] * (c / T[L - 1])
    for j in range(L - 2, k - 1, -1):
        out = h.combine_broadcast(r[j] * (c / T[j]), out, j, torch.add)
    return out


def exact_log_probs(scores: Sequence[Tensor], h: Hierarchy, temps) -> list[Tensor]:
    """``log p_k`` of the exact solution, by differentiable torch operations (finite
    even where ``p_k`` underflows to zero, unless ``log p_k`` itself is beyond the dtype)."""
    T, r = _log_terms(scores, h, temps)
    return [_scaled_log_probs(h, T, r, k, 1.0) for k in range(h.num_levels)]


def exact_duals(scores: Sequence[Tensor], h: Hierarchy, temps) -> list[Tensor]:
    """Optimal duals by the top-down recursion of §3, centred per sample.

    ``λ_{L-2} = τ_{L-1} log p_{L-1} - θ_{L-1}``;  ``λ_{k-1} = τ_k log p_k - θ_k + P_kᵀ λ_k``,
    with ``τ_k log p_k`` formed from :func:`_log_terms` (finite for every accepted
    temperature).  Returns ``L-1`` tensors, ``duals[k]``: ``(B, *h.shapes[k+1])``;
    differentiable in the scores and in tensor temperatures.
    """
    T, r = _log_terms(scores, h, temps)
    L = h.num_levels
    lam = _scaled_log_probs(h, T, r, L - 1, temps[L - 1]) - scores[L - 1]
    duals = [lam]
    for k in range(L - 2, 0, -1):
        lam = _scaled_log_probs(h, T, r, k, temps[k]) - scores[k] + h.broadcast(lam, k)
        duals.insert(0, lam)
    return [centre(d) for d in duals]


def solve_exact(scores: Sequence[Tensor], h: Hierarchy, temps):
    """The ``"exact"`` method of the registry: probabilities now (in the scores' dtype),
    duals when first read (in the compute dtype: float32 for half-precision scores).

    ``temps``: ``L`` floats, or ``L`` 0-d tensors to differentiate through."""
    probs = exact_attention(scores, h, temps)
    work = compute_dtype(scores[0].dtype)

    def duals_fn():
        # in the compute dtype: duals of half-precision scores can exceed float16's range
        return exact_duals([s.to(work) for s in scores], h, temps)

    return probs, duals_fn, {}
