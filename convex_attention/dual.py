r"""Dual decomposition (DESIGN.md §2): the reparameterisation p(λ), the dual function g(λ),
a per-sample dual solver, and the paper's consistency loss.

With a multiplier ``λ_k`` (shape ``shapes[k+1]``) for every constraint ``P_k p_k = p_{k+1}``
the Lagrangian separates level by level::

    p_k(λ) = softmax(η_k / τ_k),    η_k = θ_k + λ_{k-1} - P_kᵀ λ_k     (λ_{-1}, λ_{L-1} absent)
    g(λ)   = Σ_k τ_k logsumexp(η_k / τ_k),    ∇_{λ_k} g = p_{k+1}(λ) - P_k p_k(λ)

``g`` is convex, its minimiser makes every constraint hold, and ``min g`` equals the
optimal primal value.  Each ``λ_k`` is defined up to an additive constant; duals are
reported mean-zero per sample.

The solver (:func:`solve_dual`) is block-coordinate descent with *exact* block steps:
with every other multiplier fixed, ``g`` is minimised over ``λ_k`` in closed form by

    λ_k ← λ_k + τ_k τ_{k+1} / (τ_k + τ_{k+1}) · (blocklogsumexp_k(η_k / τ_k) - η_{k+1} / τ_{k+1})

(both sides of constraint ``k`` become proportional, hence equal).  For two levels one step
is optimal; for more levels the sweeps converge linearly, like iterative proportional
fitting.  The gradient of the ``"dual"`` method is the implicit-function gradient at its
solution, computed by the tree VJP of :func:`convex_attention.exact.tree_backward`.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor

from ._ops import centre, compute_dtype, level_softmax
from .exact import tree_backward
from .hierarchy import Hierarchy

__all__ = ["reparameterized_logits", "reparameterized_probs", "dual_function",
           "consistency_loss_unchecked", "solve_dual", "DualSolveFunction", "ConvergenceError",
           "dual_probs"]


class ConvergenceError(RuntimeError):
    """The per-sample dual solver did not reach its tolerance."""


def reparameterized_logits(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy) -> list[Tensor]:
    """``η_k = θ_k + λ_{k-1} - P_kᵀ λ_k``; ``duals[k]`` may have batch dimension 1 (shared)."""
    L = h.num_levels
    etas = []
    for k in range(L):
        eta = scores[k]
        if k > 0:
            eta = eta + duals[k - 1]
        if k < L - 1:
            eta = h.combine_broadcast(eta, duals[k], k, torch.sub)
        etas.append(eta)
    return etas


def reparameterized_probs(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy,
                          temps: Sequence[float]) -> list[Tensor]:
    """``p_k(λ) = softmax(η_k / τ_k)`` for every level; each ``(B, *shapes[k])``."""
    etas = reparameterized_logits(scores, duals, h)
    return [level_softmax(e, t) for e, t in zip(etas, temps)]


def dual_function(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy,
                  temps: Sequence[float]) -> Tensor:
    """``g(λ) = Σ_k τ_k logsumexp(η_k / τ_k)`` per sample: ``(B,)``."""
    etas = reparameterized_logits(scores, duals, h)
    return sum(t * torch.logsumexp(e.flatten(1) / t, dim=1) for e, t in zip(etas, temps))


def consistency_loss_unchecked(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy,
                               temps: Sequence[float], detach_target: bool = False) -> Tensor:
    """Σ_k KL(b_k ‖ a_k), ``a_k = P_k p_k(λ)``, ``b_k = p_{k+1}(λ)``, averaged over the batch.

    Computed in log space (``log a_k`` is a block log-sum-exp of ``log p_k``), so it is
    finite for any finite input.  ``detach_target`` stops the gradient through ``b_k``.
    """
    etas = reparameterized_logits(scores, duals, h)
    logp = [level_softmax(e, t, log=True) for e, t in zip(etas, temps)]
    total = 0.0
    for k in range(h.num_levels - 1):
        log_a = h.block_logsumexp(logp[k], k)
        log_b = logp[k + 1].detach() if detach_target else logp[k + 1]
        kl = (log_b.exp() * (log_b - log_a)).flatten(1).sum(1)
        total = total + kl
    return total.mean()


def dual_probs(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy, temps: Sequence[float]):
    """``p(λ)`` and the within-block conditionals ``q_k`` at ``λ`` (for the tree VJP)."""
    etas = reparameterized_logits(scores, duals, h)
    probs = [level_softmax(e, t) for e, t in zip(etas, temps)]
    cond = [h.block_softmax(etas[k] / temps[k], k)[0] for k in range(h.num_levels - 1)]
    return probs, cond


def _violation(probs: Sequence[Tensor], h: Hierarchy) -> Tensor:
    """``max_k ‖P_k p_k − p_{k+1}‖₁`` per sample (the measure of :mod:`.metrics`, inlined
    here so that the solvers never import the measures)."""
    return torch.stack([(h.aggregate(probs[k], k) - probs[k + 1]).abs().flatten(1).sum(1)
                        for k in range(h.num_levels - 1)]).amax(0)


def solve_learned_dual(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], lam: Sequence[Tensor]):
    """The ``"learned_dual"`` method of the registry: ``p(λ)`` at the given duals."""
    dtype = scores[0].dtype
    work = compute_dtype(dtype)
    probs = reparameterized_probs([s.to(work) for s in scores], lam, h, temps)
    B = scores[0].shape[0]

    def duals_fn():
        return [centre(dual.expand((B,) + h.shapes[k + 1])).to(dtype) for k, dual in enumerate(lam)]

    return [p.to(dtype) for p in probs], duals_fn, {}


def solve_dual_method(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], options: dict):
    """The ``"dual"`` method of the registry: per-sample dual solve, implicit gradient."""
    dtype = scores[0].dtype
    # The dual iterates in float64 by default: the stopping test compares an L1 norm
    # of differences of probabilities with tol=1e-6, which float32 rounding can reach.
    work = options.pop("dtype", torch.float64)
    info: dict = {}
    probs = DualSolveFunction.apply(h, tuple(temps), options, info, *[s.to(work) for s in scores])
    lam = [d.to(dtype) for d in info.pop("duals")]
    return [p.to(dtype) for p in probs], lam, info


@torch.no_grad()
def solve_dual(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], tol: float = 1e-6,
               max_iter: int = 1000, strict: bool = True, record_history: bool = False,
               init: Sequence[Tensor] | None = None):
    """Minimise ``g(λ)`` per sample by exact block-coordinate steps until ``violation <= tol``.

    Args:
        scores: ``L`` tensors ``(B, *h.shapes[k])`` (float32/float64).
        tol: target of ``violation = max_k ‖P_k p_k(λ) - p_{k+1}(λ)‖₁`` per sample.
        max_iter: maximum number of sweeps (one sweep updates every ``λ_k`` once).
        strict: raise :class:`ConvergenceError` naming the samples that miss ``tol``;
            if False, warn instead.
        record_history: also return per-sweep ``violation`` and ``g(λ)``.
        init: optional starting duals (``L-1`` tensors ``(B, *shapes[k+1])``).

    Returns:
        dict with ``duals`` (centred, ``(B, *shapes[k+1])``), ``iterations`` ``(B,)``
        (sweeps each sample needed), ``converged`` ``(B,)`` bool, ``violation`` ``(B,)``
        and, if asked, ``history``: ``{"violation": (iters+1, B), "dual_objective": (iters+1, B)}``
        (row 0 is the starting point).

    Converged samples are frozen, so a batch gives the same result as a loop over its
    samples.  Each sweep ends with one host synchronisation (the stopping test).
    """
    L = h.num_levels
    B = scores[0].shape[0]
    if init is None:
        lam = [scores[0].new_zeros((B,) + h.shapes[k + 1]) for k in range(L - 1)]
    else:
        lam = [centre(start.detach().to(scores[0].dtype).expand((B,) + h.shapes[k + 1]).clone())
               for k, start in enumerate(init)]
    etas = reparameterized_logits(scores, lam, h)
    step = [temps[k] * temps[k + 1] / (temps[k] + temps[k + 1]) for k in range(L - 1)]
    iterations = torch.zeros(B, dtype=torch.long, device=scores[0].device)

    def measure():
        return _violation([level_softmax(e, t) for e, t in zip(etas, temps)], h)

    viol = measure()
    history_v, history_g = [], []
    if record_history:
        history_v.append(viol.clone())
        history_g.append(dual_function(scores, lam, h, temps))
    active = viol > tol
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        mask = active.to(scores[0].dtype).view((B,) + (1,) * (scores[0].dim() - 1))
        for k in range(L - 1):
            a = h.block_logsumexp(etas[k] / temps[k], k)
            delta = step[k] * (a - etas[k + 1] / temps[k + 1])
            delta = centre(delta) * mask.view((B,) + (1,) * len(h.shapes[k + 1]))
            lam[k] = lam[k] + delta
            etas[k] = h.combine_broadcast(etas[k], delta, k, torch.sub)
            etas[k + 1] = etas[k + 1] + delta
        iterations += active.long()
        viol = torch.where(active, measure(), viol)
        if record_history:
            history_v.append(viol.clone())
            history_g.append(dual_function(scores, lam, h, temps))
        active = viol > tol
    converged = ~active
    if not bool(converged.all()):
        bad = torch.nonzero(active).flatten().tolist()
        msg = (f"dual solver did not reach tol={tol:g} within max_iter={max_iter} sweeps for "
               f"sample(s) {bad[:10]}{' …' if len(bad) > 10 else ''} (violation "
               f"{', '.join(f'{float(viol[i]):.2e}' for i in bad[:5])}); raise max_iter or tol")
        if strict:
            raise ConvergenceError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    out = {"duals": [centre(dual) for dual in lam], "iterations": iterations, "converged": converged,
           "violation": viol}
    if record_history:
        out["history"] = {"violation": torch.stack(history_v), "dual_objective": torch.stack(history_g)}
    return out


class DualSolveFunction(torch.autograd.Function):
    """``autograd.Function``: forward = per-sample dual solve, backward = implicit gradient.

    ``DualSolveFunction.apply(h, temps, options, info, *scores) -> L probability tensors``;
    ``info`` (a dict) receives the solver's report.
    """

    @staticmethod
    def forward(ctx, h: Hierarchy, temps: tuple, options: dict, info: dict, *scores: Tensor):
        result = solve_dual(scores, h, temps, **options)
        probs, cond = dual_probs(scores, result["duals"], h, temps)
        info.update(result)
        ctx.h, ctx.temps, ctx.L = h, temps, len(probs)
        ctx.save_for_backward(*probs, *cond)
        return tuple(probs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        saved = ctx.saved_tensors
        gscores = tree_backward(ctx.h, saved[: ctx.L], saved[ctx.L:], ctx.temps, grads)
        return (None, None, None, None, *gscores)
