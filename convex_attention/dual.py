r"""Dual decomposition (docs/design.md §2): the reparameterisation p(λ), the dual function g(λ),
a per-sample dual solver for any graph of maps, and the paper's consistency loss.

With a multiplier ``λ_e`` (shaped like the coarse map) for every edge ``e = (a → b)``, i.e.
every constraint ``P_e p_a = p_b``, the Lagrangian separates map by map::

    p_k(λ) = softmax(η_k / τ_k),    η_k = θ_k + Σ_{e: coarse(e)=k} λ_e − Σ_{e: fine(e)=k} P_eᵀ λ_e
    g(λ)   = Σ_k τ_k logsumexp(η_k / τ_k),    ∇_{λ_e} g = p_b(λ) − P_e p_a(λ)

(on the chain, edge ``k = (k → k+1)``: ``η_k = θ_k + λ_{k-1} − P_kᵀ λ_k``).  ``g`` is convex, its
minimiser makes every constraint hold, and ``min g`` equals the optimal primal value.  Each
``λ_e`` is defined up to an additive constant; duals are reported mean-zero per sample.

The solver (:func:`solve_dual`) is block-coordinate descent with *exact* block steps: with
every other multiplier fixed, ``g`` is minimised over ``λ_e`` in closed form by

    λ_e ← λ_e + τ_a τ_b / (τ_a + τ_b) · (blocklogsumexp_e(η_a / τ_a) − η_b / τ_b)

(both sides of constraint ``e`` become proportional, hence equal).  For one edge one step is
optimal; otherwise plain sweeps converge linearly, like iterative proportional fitting, and
very slowly where the maps' temperatures differ by orders of magnitude or, on graphs that are
not forests, where the maps are peaked.  Every sweep is therefore followed by candidate
points, each taken only where it lowers ``g`` below the swept point (a safeguard, so ``g``
decreases monotonically): an Anderson extrapolation of the last sweeps and, on graphs that
are not forests, a damped Newton step (:mod:`convex_attention.hessian`, backtracking on ``g``,
then regularised directions where every step length fails).
A forest that is not a chain starts at its closed form by default (``warm_start``), so its
solve only certifies the optimum.  The solver stops a sample when both its violation and its
relative duality gap
``|g(λ) − f(p(λ))| / max(1, |f̄(p(λ))|)`` are small (``f̄``: ``f`` of the scores centred per
map, :func:`dual_gap_terms`).  The gradient of the ``"dual"`` method is
the implicit-function gradient at its solution: the tree VJP of
:func:`convex_attention.exact.tree_backward` on forests, conjugate gradients on the dual's
Hessian (:func:`convex_attention.hessian.implicit_vjp`) on other graphs; never the sweeps.
"""
from __future__ import annotations

import functools
import math
import numbers
import threading
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from . import hessian
from ._ops import (
    centre,
    compute_dtype,
    divide_by_temperature,
    gradient_rtol,
    less_max,
    level_softmax,
    named,
    sample_dims,
    temperature_floats,
    upcast,
)
from .exact import exact_duals, temperature_argument, temperature_gradient, tree_backward
from .given_maps import agreeing_given, agreement_factors, normalised
from .graph import Graph
from .hessian import (
    DENSE_LIMIT,
    cholesky_apply,
    dense_chunks,
    get_hessian,
    implicit_vjp,
    resolved_vjp,
    solve_psd,
)
from .validation import (
    GIVEN_SUM_TOLERANCE,
    check_dense_floating,
    check_flag,
    dtype_name,
    per_sample,
    score_limit,
    score_peaks,
    temperature_range,
)

__all__ = ["reparameterized_logits", "reparameterized_probs", "dual_function",
           "consistency_loss_unchecked", "solve_dual", "DualSolveFunction", "ConvergenceError",
           "dual_probs", "check_dual_options", "dual_gap_terms", "score_offset", "rounding_margin",
           "spanning_forest_duals"]


class ConvergenceError(RuntimeError):
    """The per-sample dual solver did not reach its tolerance."""


def reparameterized_logits(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Graph) -> list[Tensor]:
    """``η_k = θ_k + Σ_{e into k} λ_e − Σ_{e out of k} P_eᵀ λ_e``; ``duals[e]`` may have batch
    dimension 1 (shared)."""
    etas = []
    for k in range(h.num_maps):
        eta = scores[k]
        for e in h.in_edges[k]:
            eta = eta + duals[e]
        for e in h.out_edges[k]:
            if duals[e].shape[0] == 1 and eta.shape[0] != 1:
                # a dual shared by the batch (LearnedDuals): P_eᵀλ_e formed once, one map's size, and added
                # negated (the same values), so that autograd sums λ_e's gradient over the batch alone, a
                # contiguous reduction; through the block view it had summed over the batch and the blocks
                # in one strided reduction (565 against 44 µs at 64 × 64², factor 2) after negating it whole
                eta = eta + h.broadcast(duals[e], e).neg()
            else:
                eta = h._combine(eta, duals[e], e, torch.sub)
        etas.append(eta)
    return etas


def with_implied_masks(scores: Sequence[Tensor], h: Graph) -> list[Tensor]:
    """``scores`` with −∞ on the cells that pooling rules out, by two local rules applied until
    nothing changes: a coarse cell whose block of a finer map is wholly masked (−∞) is masked, and
    so are the fine cells under a masked coarse cell.  Each holds no mass at any feasible point,
    so the solution is unchanged; ``p(λ)`` at any finite duals then gives those cells 0, where it
    had given a coarse cell over a masked block its share (and amortised duals were NaN there:
    ca_rev126).  A cell that only the maps' masses together rule out (a linear program over
    several coarsenings) can stay open (9 of 56 random masks on a graph of two resolutions
    sharing a grid and regions, ca_rev128).

    On a forest one pass up the graph (finest maps first) and one down reach every cell the rules
    imply, by tensor operations alone: no value is read on the host (the no-synchronisation path
    of ``check_finite=False``; torch.equal had read them, and failed on the meta device,
    ca_rev128).  On another graph a chain of implications can zig-zag between maps for longer
    (ca_rev131: 13 cells, where a pass per map reached 9), so the passes repeat until one changes
    nothing, which reads one flag per pass (meta tensors, holding no values: a pass per map)."""
    upward = sorted(range(h.num_edges), key=lambda e: h.order.index(h.edges[e][0]))
    if h.is_forest:  # on the scores themselves: a block maximum and a coarse-to-fine sum per edge, no more
        return _spread_masks_once(list(scores), h, upward)
    # elsewhere on detached copies of the scores, -inf marking a masked cell, until a pass changes nothing
    work = [s.detach() for s in scores]
    meta = any(s.is_meta for s in scores)
    counts = None
    for round_ in range(sum(h.sizes) + 1):  # (each pass that changes something masks one more cell at least)
        work = _spread_masks_once(work, h, upward)
        if meta and round_ + 1 >= h.num_maps:
            break
        now = torch.stack([torch.isneginf(w).sum() for w in work])
        if not meta and counts is not None and bool((now == counts).all()):
            break
        counts = now
    return [_masked(s, w) for s, w in zip(scores, work)]


def _spread_masks_once(maps: list, h: Graph, upward: Sequence[int]) -> list:
    """One pass of :func:`with_implied_masks`' two rules over ``maps`` (scores, -inf masked): up the
    edges ``upward`` (finest maps first), a coarse cell over a wholly masked block masked; then down,
    the fine cells under a masked coarse cell masked.  Both by adding -inf, so that a score's gradient
    passes: a solution's gradient there is 0, but NaN for a sample with no feasible point, which a
    masked_fill had turned into 0 (ca_rev157)."""
    for e in upward:
        a, b = h.edges[e]
        maps[b] = _masked(maps[b], h.block_max(maps[a].detach(), e))
    for e in reversed(upward):
        a, b = h.edges[e]
        maps[a] = _masked(maps[a], h.broadcast(maps[b].detach(), e))
    return maps


def _masked(s: Tensor, by: Tensor) -> Tensor:
    """``s`` with −∞ where ``by`` (shaped like it) is −∞, by adding −∞ so that the gradient passes
    (ca_rev157); a +∞ score there is replaced instead (+∞ − ∞ was NaN: ca_rev168)."""
    mask = _masked_as_minus_inf(by)
    return torch.where(torch.isposinf(s.detach()) & torch.isneginf(mask), mask, s + mask)


def _masked_as_minus_inf(x: Tensor) -> Tensor:
    """-inf where ``x`` is -inf, 0 elsewhere (detached): added to the fine cells below, it masks them."""
    return torch.where(torch.isneginf(x.detach()), -math.inf, 0.0).to(x.dtype)


def reparameterized_probs(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Graph,
                          temps: Sequence[float]) -> list[Tensor]:
    """``p_k(λ) = softmax(η_k / τ_k)`` for every map; each ``(B, *shapes[k])``."""
    etas = reparameterized_logits(scores, duals, h)
    return [level_softmax(e, t) for e, t in zip(etas, temps)]


def with_given_scores(scores: Sequence[Tensor | None], given: Sequence[Tensor | None] | None) -> list[Tensor]:
    """The scores with zeros in place of the given maps' (which have none): ``θ_k = 0`` there,
    shaped like the batch of the free maps' scores (the given probabilities broadcast)."""
    if given is None or all(q is None for q in given):
        return list(scores)  # type: ignore[arg-type]
    free = next(s for s in scores if s is not None)
    out = []
    for s, q in zip(scores, given):
        if q is None:
            assert s is not None
            out.append(s)
        else:
            out.append(free.new_zeros((free.shape[0],) + tuple(q.shape[1:])))
    return out


def dual_function(scores: Sequence[Tensor | None], duals: Sequence[Tensor], h: Graph,
                  temps: Sequence[float], given: Sequence[Tensor | None] | None = None) -> Tensor:
    """``g(λ) = Σ_k τ_k logsumexp(η_k / τ_k)`` per sample: ``(B,)``.

    Each term is formed as ``max η_k + τ_k logsumexp((η_k − max η_k) / τ_k)``, finite for
    every accepted temperature (``η_k / τ_k`` alone overflows at tiny ``τ_k``).
    ``temps``: floats or 0-d tensors (differentiated through).  ``given``: per map the given
    probabilities ``q_k`` (or None); a given map's term is ``<η_k, q_k>`` (its scores are None,
    read as zero; docs/math.md §7.6).
    """
    scores = with_given_scores(scores, given)
    etas = reparameterized_logits(scores, duals, h)
    total: Tensor | float = 0.0
    for k, (e, t) in enumerate(zip(etas, temps)):
        q = None if given is None else given[k]
        if q is not None:
            total = total + (e * q).flatten(1).sum(1)
            continue
        flat = e.flatten(1)
        if not isinstance(t, Tensor) and t == 1.0:
            total = total + torch.logsumexp(flat, dim=1)
            continue
        top = flat.detach().amax(1, keepdim=True)
        total = total + (top.squeeze(1) + t * torch.logsumexp(divide_by_temperature(flat - top, t), dim=1))
    assert isinstance(total, Tensor)
    return total


def _gauge_free(scores: Sequence[Tensor], duals: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Each map's scores less their per-sample maximum and each edge's duals less their mean:
    a constant per map and one per edge move no ``p(λ)`` and no consistency loss, but added in
    as given they were rounded into ``η`` before the softmax took them off (float32 at
    τ = 1e-3: ``p(λ)`` 1.1e-2 off with 1024 added to the scores, 1.2e-2 with it added to the
    duals; a review), as ``exact`` takes a map's maximum off first (docs/math.md §3)."""
    return [less_max(s) for s in scores], [centre(d) for d in duals]


def consistency_loss_unchecked(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Graph,
                               temps: Sequence[float], detach_target: bool = False) -> Tensor:
    """Σ_e KL(b_e ‖ a_e), ``a_e = P_e p_a(λ)``, ``b_e = p_b(λ)`` for every edge ``e = (a → b)``,
    averaged over the batch.

    Computed in log space (``log a_e`` is a block log-sum-exp of ``log p_a``), so it is
    finite for any finite input at ordinary temperatures.  Near the smallest accepted
    temperature ``log p_k`` can be ``-inf`` (``p_k`` is zero in the dtype): cells with
    ``b_e = 0`` contribute ``0`` (``0 log 0 = 0``) and cells with ``b_e > 0 = a_e`` give
    ``+inf``, the KL divergence's value; never NaN.  ``temps``: floats or 0-d tensors
    (differentiated through).  ``detach_target`` stops the gradient through ``b_e``.
    """
    etas = reparameterized_logits(*_gauge_free(scores, duals), h)
    logp = [level_softmax(e, t, log=True) for e, t in zip(etas, temps)]
    total: Tensor | float = 0.0
    for e, (a, b) in enumerate(h.edges):
        log_a = h.block_logsumexp(logp[a], e)  # -inf (not NaN) for a block of -inf entries
        log_b = logp[b].detach() if detach_target else logp[b]
        # where b = 0 the term is 0; masking the difference (not the product) keeps the
        # gradient free of 0·inf
        pb = log_b.exp()
        # (a Python 0, not a 0-d CPU tensor: on CUDA that would be a synchronising host-to-device copy)
        diff = torch.where(pb > 0, log_b - log_a, 0.0)
        # a KL divergence is >= 0: rounding gave -6e-8 (float32) at consistent maps
        kl = (pb * diff).flatten(1).sum(1).clamp_min(0.0)
        total = total + kl
    assert isinstance(total, Tensor)
    return total.mean()


def _softmax_pieces(eta: Tensor, tau) -> tuple[Tensor, Tensor, Tensor]:
    """One map's softmax as the solver computes it, in one place: ``(top, z, lse)`` with
    ``top = max η`` ``(B, 1)``, ``z = (η − top) / τ`` flattened ``(B, n)`` and
    ``lse = log Σ exp z`` ``(B,)``, so that ``p = exp(z − lse)``.  The maximum is subtracted
    before dividing by τ (``z`` is finite for every accepted temperature); a 0-d tensor τ keeps
    a finite temperature gradient (:func:`~._ops.divide_by_temperature`)."""
    flat = eta.flatten(1)
    top = flat.detach().amax(1, keepdim=True)  # the shift changes no softmax: no gradient
    z = divide_by_temperature(flat - top, tau)
    return top, z, torch.logsumexp(z, dim=1)


def _softmax_as_measured(eta: Tensor, tau) -> Tensor:
    """One map's ``p(λ)`` from its logits, computed as the solver measures it
    (:func:`_softmax_pieces`), so that float64 maps are bit for bit the ones the stopping test
    confirmed (``level_softmax`` divides first for τ > 1, which at logits of 3e5 moved them by
    5e-13: a review).  As ``level_softmax`` does, half precision is computed in float32 (its
    subtraction overflowed in float16, a review)."""
    _, z, lse = _softmax_pieces(upcast(eta), tau)
    return torch.exp(z - lse.unsqueeze(1)).view(eta.shape).to(eta.dtype)


def dual_probs(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Graph, temps: Sequence[float],
               given: Sequence[Tensor | None] | None = None):
    """``p(λ)`` (each map computed as the solver measures it, :func:`_softmax_as_measured`) and,
    per edge ``e = (a → b)``, the within-block conditionals of ``p_a`` at ``λ`` (for the tree
    VJP; empty on graphs that are not forests, and with given maps, whose probabilities
    ``given[k]`` are returned as they are)."""
    etas = reparameterized_logits(scores, duals, h)
    probs = [_softmax_as_measured(e, t) if given is None or given[k] is None else given[k]
             for k, (e, t) in enumerate(zip(etas, temps))]
    if given is not None and any(q is not None for q in given):
        return probs, []
    return probs, _conditionals(h, etas, temps)


def _conditionals(h: Graph, etas: Sequence[Tensor], temps: Sequence[float]) -> list[Tensor]:
    """Per edge ``e = (a → b)`` the within-block conditionals of ``p_a`` at the logits ``etas``
    (the tree VJP's); none on a graph that is not a forest."""
    if not h.is_forest:
        return []
    return [h.block_softmax(_shifted(h, etas[a], e, temps[a]), e)[0] for e, (a, _) in enumerate(h.edges)]


def _shifted(h: Graph, eta: Tensor, e: int, tau: float) -> Tensor:
    """``(η − P_eᵀ blockmax_e(η)) / τ``: the block softmax's argument, shifted *before* the
    division so that it stays finite (≤ 0) at any accepted temperature (``η / τ`` alone
    overflows for tiny ``τ``)."""
    return h._combine(eta, h.block_max(eta, e), e, torch.sub).div_(tau)


def _residuals(probs: Sequence[Tensor], h: Graph) -> list[Tensor]:
    """``P_e p_a − p_b`` per edge ``e = (a → b)``."""
    return [h.aggregate(probs[a], e) - probs[b] for e, (a, b) in enumerate(h.edges)]


def _violation(probs: Sequence[Tensor], h: Graph) -> Tensor:
    """``max_e ‖P_e p_a − p_b‖₁`` per sample (the measure of :mod:`.metrics`, inlined
    here so that the solvers never import the measures)."""
    return torch.stack([r.abs().flatten(1).sum(1) for r in _residuals(probs, h)]).amax(0)


def _centred_scores(scores: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Each map's scores less the midpoint of their range, per sample, and the sum of the
    midpoints, ``(B,)`` (what they add to ``g`` and ``f`` on the simplices).  A constant per
    map changes no solution and no dual, but a large one (3e4 at τ 1e-6) costs the logits the
    digits of their differences.  The midpoint, ``max/2 + min/2``, never overflows for scores
    within :func:`~convex_attention.validation.score_limit` (a mean's sum did: 0.45 of the
    limit on a 16-cell map, a review), and the centred scores are within ``max |θ|``."""
    out, total = [], None
    for s in scores:
        mid, _ = _midpoint(s)
        out.append(s - mid.view((-1,) + (1,) * (s.dim() - 1)))
        total = mid if total is None else total + mid
    assert total is not None
    return out, total


def _midpoint(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the midpoint ``max/2 + min/2`` of ``x``'s values and their half-range
    ``max/2 − min/2``, each ``(B,)``: halved first, so that neither overflows."""
    flat = x.flatten(1)
    high, low = flat.amax(1) / 2, flat.amin(1) / 2
    return high + low, high - low


def score_offset(scores: Sequence[Tensor]) -> Tensor:
    """``Σ_k mean_i θ_k(b, i)`` per sample, ``(B,)``: what the maps' constants add to ``f`` and
    ``g`` alike on the simplices (zero for centred scores)."""
    total = sum(s.flatten(1).mean(1) for s in scores)
    assert isinstance(total, Tensor)
    return total


def dual_gap_terms(g_value: Tensor, probs: Sequence[Tensor], duals: Sequence[Tensor],
                   h: Graph, offset: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """``(f(p(λ)), relative gap)`` per sample from ``g(λ)`` and ``p = p(λ)``.

    At ``p = p(λ)`` the Lagrangian equals ``g``, so ``g(λ) − f(p(λ)) = Σ_e ⟨λ_e, p_b − P_e p_a⟩``
    exactly: computed so, without the cancellation of two large objectives.  The relative gap
    is ``|g(λ) − f(p(λ))| / max(1, |f(p(λ)) − offset|)`` with ``offset`` the scores'
    :func:`score_offset`: relative to the objective of the centred scores, as in
    ``cvx.certificate``, so that a constant added to a map's scores (which moves no solution)
    does not shrink it."""
    inner = sum(-(lam * r).flatten(1).sum(1) for lam, r in zip(duals, _residuals(probs, h)))
    assert isinstance(inner, Tensor)
    f = g_value - inner
    return f, inner.abs() / (f - offset).abs().clamp_min(1.0)


def solve_learned_dual(scores: Sequence[Tensor], h: Graph, temps: Sequence[float], lam: Sequence[Tensor]):
    """The ``"learned_dual"`` method of the registry: ``p(λ)`` at the given duals.

    Probabilities in the scores' dtype; duals (centred) in the compute dtype (float32 for
    half-precision scores, whose range they can exceed).  ``temps``: floats or 0-d tensors.
    """
    dtype = scores[0].dtype
    work = compute_dtype(dtype)
    probs = reparameterized_probs(*_gauge_free([s.to(work) for s in scores], lam), h, temps)
    # computed when first read; a partial of a module function, not a closure, so that the
    # Solution holding it pickles
    duals = functools.partial(_centred_duals, list(lam), h, scores[0].shape[0], work)
    return [p.to(dtype) for p in probs], duals, {}


def _centred_duals(lam: Sequence[Tensor], h: Graph, batch: int, work: torch.dtype) -> list[Tensor]:
    """The given duals expanded to the batch, centred per sample, in the compute dtype."""
    return [centre(dual.expand((batch,) + h.shapes[h.edges[e][1]])).to(work) for e, dual in enumerate(lam)]


def solve_dual_method(scores: Sequence[Tensor], h: Graph, temps: Sequence, options: dict):
    """The ``"dual"`` method of the registry: per-sample dual solve, implicit gradient.

    ``options`` (validated here, before any work, by :func:`check_dual_options`): ``tol``,
    ``gap_tol``, ``max_iter``, ``strict``, ``record_history``, ``init``, ``newton``,
    ``warm_start`` and ``dtype`` (the working dtype, float64 by default: the stopping test
    compares an L1 norm of differences of probabilities with ``tol = 1e-6``, which float32
    rounding can reach).  It takes every input ``solve`` accepts (scores within
    ``validation.score_limit``, temperatures within ``validation.temperature_range``), and
    its iterates stay finite there.  Narrower: ``dtype=torch.float32`` with float64 scores
    needs scores within float32's score limit and temperatures within float32's range,
    or it refuses before any work, saying so.  Where the working dtype cannot resolve the
    optimum (temperatures that differ by hundreds of orders of magnitude) it stops with a
    :class:`ConvergenceError` that says so.  ``temps``: floats or 0-d tensors (differentiated through).

    ``options["given"]`` (set by :func:`convex_attention.solve`, validated there): per map the
    given probabilities ``(1 or B, *shapes[k])`` or None; a given map's scores are None.  The
    given tensors are inputs of the autograd function (the gradient reaches them).
    """
    # never under the caller's autocast: in float32 work its matrix products (Anderson's Gram
    # matrices, Newton's and the backward's Hessians) would run in bfloat16/float16, and
    # torch.linalg refused them (a review: '"lu_cpu" not implemented for BFloat16')
    device = next(s for s in scores if s is not None).device
    with torch.autocast(device_type=device.type, enabled=False):
        return _solve_dual_method(scores, h, temps, options)


def _solve_dual_method(scores: Sequence[Tensor], h: Graph, temps: Sequence, options: dict):
    """:func:`solve_dual_method` outside any autocast."""
    given = options.pop("given", None)
    mask = tuple(q is not None for q in given) if given is not None else (False,) * h.num_maps
    free = next(s for s, m in zip(scores, mask) if not m)
    dtype, B = free.dtype, free.shape[0]
    floats = temperature_floats(temps)
    # None for a given map (its temperature is not used), so that a refusal names the right map
    options = check_dual_options(options, h, B, free.device, [None if m else t for t, m in zip(floats, mask)])
    work = options.pop("dtype")
    if torch.finfo(work).max < torch.finfo(compute_dtype(dtype)).max:
        _check_scores_fit([s for s in scores if s is not None], work)
    temps = _sharing_judged(temps, work, options)
    if any(mask):
        _check_given_structure(h, mask, options)
    parts = h.solved_apart()
    inputs, shift = _work_inputs(scores, given, h, B, work)
    if any(mask):  # (a pass over the given maps, which solve_dual's own check per component repeats)
        _check_given_fit(inputs, given, work)
    if options["init"] is not None:  # every part's starts, before any part is solved
        _check_init_fits(options["init"], _centred_scores(with_given_scores(*_split_given(inputs, mask)))[0],
                         work, h, floats, options["tol"], mask)
    if len(parts) == 1:
        maps_of_one, lam, info = _solve_checked(inputs, h, temps, options, mask, dtype, work)
        return maps_of_one, [d.to(compute_dtype(dtype)) for d in lam], _shifted_history(info, shift)
    # several components with constraints: each is solved as the problem of its own that it is
    # (docs/design.md §1).  Solved together, a component whose scores and temperatures were 1e16
    # times another's stalled it (one Newton system, one step length and one stopping test per
    # sample: a review); apart, each has its own, and its own implicit backward
    probs, duals, info = _solve_parts(inputs, h, temps, options, mask, dtype, work, parts)
    # gap_tol bounds the whole problem's relative gap: each part met it relative to its own
    # objective, and where the parts' objectives cancel (+3 and -3) the whole one's is larger (a
    # review: 4.5e-5 at gap_tol 1e-6).  Such parts are solved again, from their duals, each held to
    # its share of the whole problem's gap
    spent = False  # a sample that missed had no sweep of max_iter left for a retry
    for attempt in range(_WHOLE_GAP_RETRIES + 1):
        gap, scale = _gap_and_scale(inputs, h, floats, duals, mask)
        missed = info["converged"] & ~(gap <= options["gap_tol"])
        # a retry has the sweeps of max_iter its sample has left: max_iter bounds a sample's sweeps
        # over every pass (each retry had run max_iter more: 3 sweeps at max_iter=2, ca_rev136)
        left = options["max_iter"] - info["iterations"].to(torch.long)
        spent = spent or bool((missed & (left <= 0)).any())
        missed = missed & (left > 0)
        if not bool(missed.any()) or attempt == _WHOLE_GAP_RETRIES:
            break
        # only the samples that missed it, so that a batch gives what its samples alone give (a
        # review: a retry of every sample gave one that had run out of max_iter more sweeps), each
        # on its own, held to its own shares (one share for the rows together, the strictest,
        # solved a sample further than it alone: 6 sweeps for 5, a review)
        retried = torch.nonzero(missed).flatten()
        # each part's scale at those samples, measured once (a sample's own duals are those of this
        # pass until its retry)
        part_scales = [_gap_and_scale([inputs[k][retried] for k in maps], part, [floats[k] for k in maps],
                                      [duals[e][retried] for e in edges], tuple(mask[k] for k in maps))[1]
                       for maps, edges, part in parts]
        for i, row in enumerate(retried.tolist()):
            rows = retried[i:i + 1]
            shares = [float(scale[row] / (len(parts) * part_scale[i])) for part_scale in part_scales]
            again_probs, again_duals, again = _solve_parts(
                [x[rows] for x in inputs], h, temps, {**options, "max_iter": int(left[row])}, mask, dtype, work, parts,
                gap_tols=[options["gap_tol"] * min(1.0, x) for x in shares],
                starts=[[duals[e][rows].detach() for e in edges] for _, edges, _ in parts],
                sample_names=[row])  # a message of the retry names the user's sample (a review)
            probs = [p.index_copy(0, rows.to(p.device), q) for p, q in zip(probs, again_probs)]
            duals = [d.index_copy(0, rows.to(d.device), q) for d, q in zip(duals, again_duals)]
            info = _followed(info, again, rows)
    # the gap of the duals returned, measured by the last pass
    _check_returned_gap(gap, options, info, "each component met tol and its share of gap_tol, but the components' "
                        "objectives nearly cancel; raise gap_tol" + (", or max_iter (a retry had no sweeps left)"
                                                                     if spent else "")
                        + ", or solve the components as separate problems")
    return probs, [d.to(compute_dtype(dtype)) for d in duals], _shifted_history(info, shift)


def _shifted_history(info: dict, shift: Tensor | None) -> dict:
    """``info`` with its history's dual objective moved by ``shift`` ``(B,)``: what the scores'
    centring before a cast to a coarser working dtype (:func:`_scores_in`) took off g (a map's
    constant moves g by itself); the history had been g of the centred scores (ca_rev199)."""
    if shift is not None and "history" in info:
        history = info["history"]
        info["history"] = {**history, "dual_objective": history["dual_objective"] + shift.to(
            history["dual_objective"].dtype)}
    return info


# Times the parts of a disconnected graph are solved again, each held to its share of the whole
# problem's gap, where that gap missed gap_tol (parts' objectives that cancel).
_WHOLE_GAP_RETRIES = 2


def _solve_parts(inputs: Sequence[Tensor], h: Graph, temps: Sequence, options: dict, mask: tuple,
                 dtype: torch.dtype, work: torch.dtype, parts, gap_tols: Sequence[float] | None = None,
                 starts: Sequence[Sequence[Tensor]] | None = None, sample_names: Sequence[int] | None = None):
    """Each part of ``parts`` (:meth:`Graph.solved_apart`) solved by :func:`_solve_checked`:
    ``(probs, duals in work, merged info)`` in the whole graph's numbering.  ``gap_tols`` and
    ``starts``: per part, the gap_tol it is held to and its starting duals (a second pass);
    ``sample_names``: the inputs' rows' numbers in the caller's batch (its messages use them)."""
    probs: list = [None] * h.num_maps
    duals: list = [None] * h.num_edges
    infos = []
    for i, (maps, edges, part) in enumerate(parts):
        sub = dict(options, init=None if options["init"] is None else [options["init"][e] for e in edges],
                   whole_is_forest=h.is_forest,  # for its advice: 'exact' only if it solves the whole graph
                   map_names=list(maps),
                   sample_names=None if sample_names is None else list(sample_names))
        if sub["warm_start"] == "auto":  # decided on the whole graph: a chain among its parts starts warm too
            sub["warm_start"] = options["init"] is None and not any(mask) and h.is_forest and not h.is_chain
        where = (f" (in the component of {h._map_word}s {maps}, solved as a problem of its own, its "
                 f"{h._map_word}s numbered from 0 there")
        if gap_tols is not None and starts is not None:
            sub.update(gap_tol=gap_tols[i], init=list(starts[i]), warm_start=False)
            if gap_tols[i] < options["gap_tol"]:
                where += (f"; held to gap_tol {gap_tols[i]:.2g} so that the whole problem meets gap_tol "
                          f"{options['gap_tol']:g}, the components' objectives nearly cancelling")
        where += ")"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                p, d, info = _solve_checked([inputs[k] for k in maps], part, [temps[k] for k in maps], sub,
                                            tuple(mask[k] for k in maps), dtype, work, whole_gap_checked=True)
            except ConvergenceError as err:
                raise ConvergenceError(f"{err}{where}") from None
        for w in caught:  # the part's warnings, said of the whole graph
            warnings.warn(f"{w.message}{where}" if issubclass(w.category, RuntimeWarning) else w.message,
                          w.category, stacklevel=4)
        for j, k in enumerate(maps):
            probs[k] = p[j]
        for j, e in enumerate(edges):
            duals[e] = d[j]
        infos.append(info)
    return probs, duals, _merged_info(infos)


def _followed(first: dict, second: dict, rows: Tensor) -> dict:
    """The ``info`` of a batch whose samples ``rows`` were solved again from where ``first``
    left them (``second``, theirs alone): for those samples the second solve's report, with the
    sweeps and Newton steps of both; the history of both passes (the second's start is the
    first's end; the other samples keep their last values through it)."""
    out = dict(first)
    for key, value in second.items():
        if key == "history":
            continue
        was = first[key]
        out[key] = was.index_copy(0, rows, was[rows] + value if key in ("iterations", "newton_steps") else value)
    if "history" in second:
        out["history"] = {}
        for name, extra in second["history"].items():
            before = first["history"][name]
            more = before[-1:].expand(len(extra) - 1, *before.shape[1:]).clone()
            more[:, rows] = extra[1:]
            out["history"][name] = torch.cat([before, more])
    return out


def _gap_and_scale(inputs: Sequence[Tensor], h: Graph, temps: Sequence[float], duals: Sequence[Tensor],
                   mask: Sequence[bool]) -> tuple[Tensor, Tensor]:
    """The relative duality gap at ``duals`` and the objective's scale it is relative to,
    ``max(1, |f̄|)`` (:func:`dual_gap_terms`), per sample, measured in float64 whatever the
    working dtype.  Measured in float32, its own rounding misjudged it either way against a
    ``gap_tol`` near float32's resolution: at ``gap_tol`` 1e-7, 23 of 480 float32 samples
    (axial, grid + regions, mixed, star; 16², N(0, 3²), τ in [0.1, 10]) were called converged
    at gaps of up to 7× it (of the scores rounded to float32, the problem solved), and 2
    withdrawn within it."""
    inputs = [normalised(x.detach().double()) if m else x.detach().double() for x, m in zip(inputs, mask)]
    duals = [d.detach().double() for d in duals]
    scores, given = _split_given(inputs, mask)
    with torch.no_grad():
        centred, _ = _centred_scores(with_given_scores(scores, given))
        lam = [d.detach() for d in duals]
        offset = score_offset(centred)
        g, _, _, probs = _evaluate(reparameterized_logits(centred, lam, h), h, temps, duals=lam, given=given,
                                   offset=offset)
        f, gap = dual_gap_terms(g, probs, lam, h, offset)
    return gap, (f - offset).abs().clamp_min(1.0)


def _work_inputs(scores: Sequence, given, h: Graph, batch: int,
                 work: torch.dtype) -> tuple[list[Tensor], Tensor | None]:
    """The inputs of :class:`DualSolveFunction` in the working dtype, and what centring the scores
    before their cast took off g, ``(B,)`` (None where nothing: :func:`_scores_in`): the scores, and for a given
    map its probabilities, normalised (:func:`~convex_attention.given_maps.normalised`) and
    expanded to the batch; given maps that hold the same cells made to agree there
    (:func:`~convex_attention.given_maps.agreement_factors`, by factors that carry no gradient)
    where they disagree by more than ``POLISH_TOL`` and no more than a map's sum is allowed to be
    off (``validation.GIVEN_SUM_TOLERANCE``, in the given maps' dtype): rounded apart (float32
    pools of one map given to float64 work) the problem had no solution, and the solve stopped on
    its duality gap (0.04 to 7.6 at tol 1e-6: ca_rev111); given maps further apart are left to
    contradict each other, which the solve reports."""
    inputs, shift = [], None
    for k, (s, q) in enumerate(zip(scores, given if given is not None else [None] * h.num_maps)):
        if q is not None:
            inputs.append(normalised(q.expand((batch,) + h.shapes[k]).to(work)))
            continue
        x, mid = _scores_in(s, work)
        inputs.append(x)
        if mid is not None:
            shift = mid if shift is None else shift + mid
    if given is None:
        return inputs, shift
    wide = [None if q is None else normalised(x.detach().to(torch.float64)) for x, q in zip(inputs, given)]
    allowed = GIVEN_SUM_TOLERANCE.get(next(q for q in given if q is not None).dtype, 1e-2)
    # (apart by no more than POLISH_TOL, what no solve resolves, they are left bit for bit as given)
    for k, f in agreement_factors(h, wide, floor=POLISH_TOL, allowed=allowed).items():
        inputs[k] = (inputs[k].reshape(batch, -1) * f.to(work)).reshape(inputs[k].shape)
    return inputs, shift


def _scores_in(scores: Tensor, work: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``scores`` in the working dtype, and the constant per sample taken off them, ``(B,)`` (None
    where none): where the working dtype is coarser than theirs, they are centred per sample
    first (less their midpoint, held constant: no solution, dual or gradient changes; g moves by
    the constant, which :func:`_shifted_history` gives back), so that the cast keeps the digits
    of their differences.  Cast first, float64 scores of 1e5 + N(0, 1) had lost them to float32's
    rounding of 1e5 (maps 3.4e-4 off at τ = 1, 2e-8 about 0)."""
    if torch.finfo(work).eps <= torch.finfo(scores.dtype).eps:
        return scores.to(work), None  # (bit for bit as before: the solver centres them in its own dtype)
    mid, _ = _midpoint(scores.detach())
    mid = torch.where(torch.isfinite(mid), mid, 0.0)  # (a non-finite score under check_finite=False: refused later)
    return (scores - mid.view((-1,) + (1,) * (scores.dim() - 1))).to(work), mid


def _split_given(inputs: Sequence[Tensor], mask: Sequence[bool]):
    """``(scores, given)`` of :func:`with_given_scores` from the function's inputs and the mask."""
    return ([None if m else x for x, m in zip(inputs, mask)],
            [x if m else None for x, m in zip(inputs, mask)] if any(mask) else None)


def _check_returned_gap(gap: Tensor, options: dict, info: dict, cause: str) -> None:
    """Sets ``info["gap"]`` to ``gap``, the relative duality gap at the duals returned
    (:func:`_gap_and_scale`), which is what ``gap_tol`` bounds; a sample above it is not
    converged: ConvergenceError with ``strict``, else a warning, each saying why (``cause``)."""
    missed = info["converged"] & ~(gap <= options["gap_tol"])
    info["gap"] = gap  # float64: rounded to float32, a gap just above gap_tol could read as within it
    if not bool(missed.any()):
        return
    info["converged"] = info["converged"] & ~missed
    rows = named(torch.nonzero(missed).flatten().tolist(), options.get("sample_names"))
    msg = (f"dual solver did not reach gap_tol={options['gap_tol']:g} for sample(s) {rows[:10]}"
           f"{' …' if len(rows) > 10 else ''}: the relative duality gap at the duals returned is up to "
           f"{float(gap[missed].max()):.2e}; {cause}")
    if options["strict"]:
        raise ConvergenceError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _merged_info(infos: Sequence[dict]) -> dict:
    """One ``info`` for a graph solved component by component: per sample the worst component
    (converged only where every one did; the most sweeps and Newton steps, the largest
    violations and gaps).  ``history`` pads a component that stopped with its last values;
    its dual objective is the sum of the components' (g is their sum), the violation and
    gap per sweep the largest."""
    out: dict = {}
    for key in infos[0]:
        values = [info[key] for info in infos]
        if key == "converged":
            out[key] = torch.stack(values).all(0)
        elif key == "history":
            sweeps = max(len(v["violation"]) for v in values)
            out[key] = {}
            for name in values[0]:
                rows = torch.stack([_padded(v[name], sweeps) for v in values])
                out[key][name] = rows.sum(0) if name == "dual_objective" else rows.amax(0)
        else:
            out[key] = torch.stack(values).amax(0)
    return out


def _padded(x: Tensor, rows: int) -> Tensor:
    """``x`` ``(T, ...)`` with its last row repeated up to ``rows`` rows."""
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])]) if len(x) < rows else x


def _solve_checked(inputs: Sequence[Tensor], h: Graph, temps: Sequence, options: dict, mask: tuple,
                   dtype: torch.dtype, work: torch.dtype, whole_gap_checked: bool = False):
    """:func:`solve_dual_method` once its options are checked (``options`` without ``dtype``,
    which is ``work``), on one graph solved as a whole: ``(probs in dtype, duals in work, info)``;
    ``inputs`` as :func:`_work_inputs` makes them."""
    options = dict(options)
    if any(mask):
        options["given_mask"] = mask
    options["round_to"] = dtype  # the maps come back in the scores' dtype: they must meet tol there
    options["check_init"] = False  # (checked once, by solve_dual_method, before any part was solved)
    info: dict = {}
    outputs = DualSolveFunction.apply(h, temperature_argument(temps), options, info, *inputs)
    probs, lam = [p.to(dtype) for p in outputs[:h.num_maps]], outputs[h.num_maps:]
    # judged always: the maps are recomputed at the centred duals, and where the logits are
    # far larger than their differences (temperatures 1e∓20, a start of 1e30) float64
    # cannot resolve them there while the solver's own iterate met tol (a hostile review:
    # violations of 1.5 and 2 returned as converged)
    rounded = work != torch.float64 or torch.finfo(dtype).eps > torch.finfo(work).eps
    _check_returned_maps(probs, h, options["tol"], options["strict"], work, info, rounded=rounded,
                         sample_names=options.get("sample_names"))
    if work != torch.float64 and not whole_gap_checked:  # (a part: the whole problem's gap is judged)
        # float32 work confirms no stop at the returned (centred) duals: its gap was the iterate's,
        # and at the duals and maps returned it was 26x gap_tol (a review: 1.3e-4 at gap_tol 1e-5);
        # measured in float64, as float32's own rounding misjudges a gap_tol near its resolution
        gap, _ = _gap_and_scale(inputs, h, temperature_floats(temps), lam, mask)
        _check_returned_gap(gap, options, info, "the float32 iterate met it as measured in float32, before its "
                                                "duals were centred; solve in float64 (the default working dtype) "
                                                "or raise gap_tol")
    # (the caller returns the duals in the compute dtype: half precision's range is narrower than theirs)
    return probs, list(lam), info


def _check_returned_maps(probs: Sequence[Tensor], h: Graph, tol: float, strict: bool, work: torch.dtype,
                         info: dict, rounded: bool = True, sample_names: Sequence[int] | None = None) -> None:
    """The maps as returned must meet ``tol`` for a sample to count as converged.

    The solver judges its iterate in the working dtype; the maps then come back recomputed
    at the centred duals, in the scores' dtype.  Both steps can take them above ``tol``: a
    float32 working dtype sums the L1 norm of 4096 cells in float32 (an axial 64² solve
    reported 9.4e-7 for maps at 1.6e-6, a hostile review), float16 maps cannot resolve 1e-6
    at all (5e-4 measured), and in float64 the recomputation loses the logits' differences
    where the logits are far larger (temperatures 1e∓20, a start of 1e30: violations up to 2
    behind an iterate at 0, another review; a constant per map of 3e4 at τ 1e-6 did too
    before :func:`solve_dual` centred the scores).
    So the returned maps' violation is measured in float64 (``info["returned_violation"]``,
    ``(B,)``), and a sample the solver called converged but whose maps miss ``tol`` is not
    converged: :class:`ConvergenceError` with ``strict``, else a warning.  ``rounded``:
    something was rounded (a float32 working dtype, or maps returned in a less precise
    dtype); where nothing was (float64 work and maps), the maps may differ from the
    iterate's by the recomputation's own rounding, :data:`RECOMPUTE_ROUNDING` units of
    float64, which ``tol`` is given on top (a tol at the iterate's own violation stays met)."""
    returned = _violation([p.detach().to(torch.float64) for p in probs], h)
    info["returned_violation"] = returned
    allowed = tol if rounded else tol + RECOMPUTE_ROUNDING * rounding_margin(h, torch.float64)
    missed = info["converged"] & ~(returned <= allowed)
    if not bool(missed.any()):
        return
    info["converged"] = info["converged"] & ~missed
    rows = named(torch.nonzero(missed).flatten().tolist(), sample_names)
    shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
    dtype = dtype_name(probs[0].dtype)
    why = ("rounding in the working dtype or to the scores' dtype); raise tol above it, or solve in float64 "
           "(float64 scores, or the default working dtype)" if rounded else
           "the maps recomputed at the returned duals differ from the solver's own measure of them by more than "
           "their rounding, which the solver's confirmation at those duals should rule out: please report it)")
    msg = (f"dual solver: the maps returned in {dtype} miss tol={tol:g} for sample(s) [{shown}]: their violation, "
           f"measured in float64, is up to {float(returned[missed].max()):.4g}, where the solver's "
           f"{dtype_name(work)} iterate measured {float(info['violation'][missed].max()):.3g} ({why}")
    if strict:
        raise ConvergenceError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _check_given_fit(inputs: Sequence[Tensor], given: Sequence, work: torch.dtype) -> None:
    """ValueError, before any work, naming the map, when a given map positive as given holds a
    cell the working ``dtype`` option rounds to 0 (a float64 map of a 1e-50 cell solved with
    ``dtype=torch.float32``): the solver takes positive probabilities only, and its own check,
    per component, had blamed the map under the component's number after other components were
    solved (ca_rev185).  A map that is infinite, or whose sum overflows, is told as such (with
    check_finite=False both had been blamed on the working dtype, float64 included: ca_rev225)."""
    for k, (x, q) in enumerate(zip(inputs, given)):
        if q is None or bool((x > 0).all()):
            continue
        if not bool((q > 0).all()):  # not positive as given (NaN, negative, 0: with check_finite=False)
            raise ValueError(f"given[{k}] must hold positive probabilities")
        if not bool(torch.isfinite(q).all()):
            raise ValueError(f"given[{k}] must hold finite probabilities")
        name = dtype_name(work)
        if not bool(torch.isfinite(q.to(work).flatten(q.dim() - (x.dim() - 1)).sum(-1)).all()):
            raise ValueError(f"given[{k}]'s sum overflows the working dtype ({name}): divide the map by a constant "
                             f"(each map is divided by its sum anyway)")
        if work == torch.float64:  # the default working dtype: no option to blame
            raise ValueError(f"given[{k}] holds cells that round to 0 in float64 once divided by the map's sum "
                             f"(below its smallest subnormal number), and the solver takes positive probabilities "
                             f"only: raise them")
        raise ValueError(f"dual option dtype=torch.{name}: given[{k}] holds probabilities that round to 0 in "
                         f"that working dtype (below its smallest subnormal number), and the solver takes positive "
                         f"probabilities only; use dtype=torch.float64 (the default)")


def _check_scores_fit(scores: Sequence[Tensor], work: torch.dtype) -> None:
    """ValueError, before any work, when scores are too large for the working ``dtype``
    option (float64 scores solved with ``dtype=torch.float32``): the limit of
    :func:`~convex_attention.validation.score_limit` in the working dtype."""
    total, limit = math.fsum(score_peaks(scores)), score_limit(work)
    if not total <= limit:
        name = dtype_name(work)
        raise ValueError(f"dual option dtype=torch.{name}: the largest |score| of each map sums to {total:.3g}, "
                         f"above {limit:.3g}, the largest the {name} working dtype accepts (a quarter of its largest "
                         f"number); use dtype=torch.float64 (the default), or divide the scores and the temperature "
                         f"by the same factor")


# Secant pairs kept by the Anderson step (the sweep map's last _ANDERSON_MEMORY + 1 points).
_ANDERSON_MEMORY = 8
# Units of rounding_margin(h, float64) the maps recomputed at the centred duals may differ
# from the iterate's by, when nothing else was rounded: the recomputation rounds each logit
# and probability again (a few units per cell, relative; each map sums to one).
RECOMPUTE_ROUNDING = 16

# Sweeps over which a non-converged sample's progress is judged for the error's advice.
_PROGRESS_WINDOW = 10
# Step lengths tried, in order, along a Newton direction (the first that lowers g is taken).
_NEWTON_STEPS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125)
# Where none of them lowers g (dense Newton systems only): the regularisations ρ tried, in
# order, for the direction (∇²g + ρ s I) d = −∇g (s: the Hessian's mean diagonal), each with
# these step lengths.  Without them, 3 of 100 hard instances of the mixed family (two maps at
# τ = 0.01 and 10) stalled at violations 0.03-0.45 after 200 sweeps, every Newton direction
# rejected; with them those converged in 11-48 sweeps (measured, docs/math.md §7.4).
_REGULARISED_NEWTON = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_REGULARISED_STEPS = (1.0, 0.5, 0.25)
# Above DENSE_LIMIT the Newton system is solved inexactly: to this relative residual, or for
# this many block-Jacobi conjugate-gradient iterations (each costs about one sweep)...
_NEWTON_CG_RTOL = 1e-2
_NEWTON_CG_ITERATIONS = 20
# ... until the sample crawls: once its violation fell less than _CRAWL_FACTOR-fold over its
# last _CRAWL_WINDOW sweeps, its Newton directions come from the dense Hessian (regularised
# where needed), where the stacked dual has at most hessian.DENSE_FALLBACK_LIMIT entries (read
# there at call time: the implicit backward falls back likewise).  Conjugate gradients alone
# cannot solve these systems on peaked maps: forced on the 64² mixed hard set (D = 256), 46 of
# 100 instances missed 1e-10 in 200 sweeps, and 5 of 40 still did with 400 iterations to a
# relative residual of 1e-6; with the fallback none did (worst 53 sweeps; measured,
# docs/benchmarks.md, "Convergence of `dual`").
_CRAWL_WINDOW = 5
_CRAWL_FACTOR = 10.0
# violations kept per sample: the advice's window and the crawl test's
_RECENT_SWEEPS = max(_PROGRESS_WINDOW, _CRAWL_WINDOW) + 1
_DUAL_OPTIONS = ("tol", "gap_tol", "max_iter", "strict", "record_history", "init", "newton", "warm_start", "dtype")
_NEWTON_CHOICES = ("auto", True, False)
_WORK_DTYPES = (torch.float32, torch.float64)


def _check_tol(tol, name: str = "tol") -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"dual option {name} must be a positive finite number (e.g. 1e-6), got {tol!r}")
    try:
        tol = float(tol)
    except OverflowError:  # an int beyond float's range (10**400): not finite either
        tol = math.inf
    if not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"dual option {name} must be a positive finite number (0 < {name} < inf, e.g. 1e-6), "
                         f"got {tol}")
    return tol


def _check_max_iter(max_iter) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
        raise TypeError(f"dual option max_iter must be an int >= 1 (sweeps), got {max_iter!r}")
    if max_iter < 1:
        raise ValueError(f"dual option max_iter must be an int >= 1 (sweeps), got {max_iter}")
    return int(max_iter)


def _check_flag(value, name: str) -> bool:
    return check_flag(value, f"dual option {name}")


def _check_warm_start(value) -> str | bool:
    if not any(value is c or (isinstance(value, str) and value == c) for c in _NEWTON_CHOICES):
        raise ValueError(f"dual option warm_start must be 'auto' (the closed form on forests that are not chains), "
                         f"True or False, got {value!r}")
    return value


def _check_newton(value) -> str | bool:
    if not any(value is c or (isinstance(value, str) and value == c) for c in _NEWTON_CHOICES):
        raise ValueError(f"dual option newton must be 'auto' (Newton steps on graphs that are not forests), True or "
                         f"False, got {value!r}")
    return value


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in _WORK_DTYPES:
        raise ValueError(f"dual option dtype must be torch.float32 or torch.float64 (the working dtype), "
                         f"got {dtype!r}")
    return dtype


def _check_init(init, h: Graph, batch: int | None, device, values: bool = True) -> list[Tensor] | None:
    """``None``, or ``E`` finite floating tensors ``(B, *shapes[coarse(e)])``, ``(1, …)`` or ``shapes[coarse(e)]``
    (``batch`` None: any leading size, for checks made before the scores are known).  ``values``
    False: their form only (types, layout, shapes), not the passes over their values (finite,
    midpoint), which the solver's own check makes (solve's check before any work: twice cost a
    host sync per tensor on a GPU)."""
    if init is None:
        return None
    n = h.num_edges
    if isinstance(init, Tensor) or not isinstance(init, Sequence) or isinstance(init, (str, bytes)):
        raise TypeError(f"dual option init must be None or a list of {n} tensors (one per constraint), "
                        f"got {type(init).__name__}")
    if len(init) != n:
        raise ValueError(f"dual option init must hold one tensor per constraint ({n}), got {len(init)}")
    out = []
    for k, start in enumerate(init):
        if not isinstance(start, Tensor):
            raise TypeError(f"dual option init[{k}] must be a torch.Tensor, got {type(start).__name__}")
        check_dense_floating(start, f"dual option init[{k}]")
        start = per_sample(start, h.shapes[h.edges[k][1]], batch, f"dual option init[{k}]", f"constraint {k}")
        if device is not None and start.device != torch.device(device):
            raise ValueError(f"dual option init[{k}] is on {start.device}, the scores on {device}")
        if start.is_meta:  # checked before the scores' device is known too (solve's option check)
            raise ValueError(f"dual option init[{k}] is on meta: it holds no values to start from")
        if not values:
            out.append(start)
            continue
        if not bool(torch.isfinite(start).all()):
            raise ValueError(f"dual option init[{k}] contains NaN or Inf values; starting duals must be finite")
        out.append(start.detach())
    # less each one's midpoint per sample, a constant that changes neither g nor p(λ), where it
    # dominates the start's spread: a constant start of 1e308 overflowed the solver's centring (a
    # mean) and gave NaN maps, blamed on the scores (a review); the midpoint itself cannot
    # overflow.  An ordinary start (duals a solve returned: centred already) is left bit for bit
    return [_less_large_midpoint(x) for x in out] if values else out


def _less_large_midpoint(x: Tensor) -> Tensor:
    """``x`` less its per-sample midpoint ``max/2 + min/2`` where that exceeds its spread."""
    mid, half = _midpoint(x)
    shift = torch.where(mid.abs() > 2 * half, mid, torch.zeros_like(mid))
    return x - shift.view((-1,) + (1,) * (x.dim() - 1))


def _check_init_fits(init: Sequence[Tensor], scores: Sequence[Tensor], work: torch.dtype, h: Graph,
                     temps: Sequence[float], tol: float, given: Sequence[bool]) -> None:
    """ValueError naming ``init`` where the starting duals are too large for the working dtype
    beside the scores: the starting logits ``η_k = θ_k + A_k λ`` must obey the scores' own rule,
    the half-ranges of the maps summing within :func:`~convex_attention.validation.score_limit`
    (with ``init`` zero it is the scores' rule itself; a half-range is blind to the constant
    per constraint that changes nothing).  Checked per map, a start whose maps each fitted but
    whose dual objective overflowed was accepted; summed over the starts' own peaks, the duals a
    solve had just returned were refused (two reviews).  And the start must not swamp the
    scores: formed in the working dtype, ``θ_k + A_k λ − A_k λ`` must give back ``θ_k`` within
    ``tol·τ_k`` beside the rounding of the scores and logits themselves, per sample (a start
    of 1e20 that cancels in the logits,
    ``A λ = 0``, left N(0, 1) scores nothing but rounding, and the solve called maps 0.3 off
    the optimum converged: a review); given maps have no scores to swamp."""
    limit = score_limit(work)
    with torch.no_grad():
        # in float64, where the logits of any accepted start are finite or refused as inf
        etas = reparameterized_logits([s.detach().double() for s in scores], [x.double() for x in init], h)
        try:
            total = math.fsum(torch.stack([_midpoint(eta)[1].max() for eta in etas]).tolist())
        except OverflowError:  # (a sum beyond float's range is beyond the limit)
            total = math.inf
        if not total <= limit:
            name = dtype_name(work)
            raise ValueError(f"dual option init: the starting logits θ_k + A_k λ of the maps span half-ranges that sum "
                             f"to {total:.3g}, above {limit:.3g}, the most the {name} working dtype accepts (the "
                             f"scores' own rule); leave init out, or start from smaller duals")
        own = [s.detach().to(work) for s in scores]
        start = [x.to(work) for x in init]
        # (in float64 work, the logits just formed: the same operations on the same values)
        logits = etas if work == torch.float64 else reparameterized_logits(own, start, h)
        back = reparameterized_logits(logits, [-x for x in start], h)
        eps = torch.finfo(work).eps
        for k, (theta, eta, again) in enumerate(zip(own, logits, back)):
            if given[k]:
                continue
            # per sample (one sample's large scores allowed another's swamped ones: a review), and
            # beside the rounding of the logits themselves, which any solve has (the duals a solve
            # returned were refused where a map's logits are far larger than its scores: a review)
            lost = (again - theta).abs().flatten(1).amax(1)
            size = torch.maximum(theta.abs().flatten(1).amax(1), eta.abs().flatten(1).amax(1))
            allowed = tol * temps[k] + 64 * eps * size
            bad = ~(lost <= allowed)
            if bool(bad.any()):
                rows = torch.nonzero(bad).flatten().tolist()
                raise ValueError(f"dual option init: the starting duals swamp the scores of {h._map_word} {k} for "
                                 f"sample(s) {rows[:10]}: in the {dtype_name(work)} working dtype, θ + A λ − A λ is up "
                                 f"to {float(lost[bad].max()):.3g} away from θ, beyond tol·τ = {tol * temps[k]:.3g} "
                                 f"and the logits' own rounding (a start much larger than the scores loses them to "
                                 f"rounding, even where its terms cancel in the logits); leave init out, or start "
                                 f"from smaller duals")


def _centred_start(x: Tensor) -> Tensor:
    """:func:`centre` of a start, its mean formed without overflow where its cells could
    overflow a sum (a start of many cells near the score limit: a review)."""
    n = x[0].numel()
    if float(x.detach().abs().amax()) * n < torch.finfo(x.dtype).max / 2:
        return centre(x)  # (bit for bit as before for any ordinary start)
    return x - (x / n).sum(sample_dims(x), keepdim=True)


def check_dual_options(options: dict, h: Graph, batch: int | None, device,
                       temps: Sequence[float | None] | None = None, init_values: bool = True) -> dict:
    """Validate the options of the ``"dual"`` method before any work; returns them with the
    defaults filled in (``dtype`` included).  Raises TypeError/ValueError naming the option
    and its accepted range.  With ``temps``, also checks that the working ``dtype`` can
    represent them (float32 accepts a narrower range than float64; ``None`` for a map whose
    temperature is not used: a given map).  ``init_values`` False: ``init``'s form only
    (:func:`_check_init`)."""
    unknown = set(options) - set(_DUAL_OPTIONS)
    if unknown:
        raise TypeError(f"method 'dual' takes no option(s) {sorted(unknown)}; it accepts {sorted(_DUAL_OPTIONS)}")
    tol = _check_tol(options.get("tol", 1e-6))
    gap_tol = options.get("gap_tol")
    out = {"tol": tol,
           "gap_tol": tol if gap_tol is None else _check_tol(gap_tol, "gap_tol"),
           "max_iter": _check_max_iter(options.get("max_iter", 1000)),
           "strict": _check_flag(options.get("strict", True), "strict"),
           "record_history": _check_flag(options.get("record_history", False), "record_history"),
           "init": _check_init(options.get("init"), h, batch, device, values=init_values),
           "newton": _check_newton(options.get("newton", "auto")),
           "warm_start": _check_warm_start(options.get("warm_start", "auto")),
           "dtype": _check_dtype(options.get("dtype", torch.float64))}
    if out["init"] is not None and out["warm_start"] is True:
        raise ValueError("dual options init and warm_start=True contradict each other: give starting duals or ask "
                         "for the spanning forest's closed form, not both")
    if temps is not None:
        work = out["dtype"]
        assert isinstance(work, torch.dtype)
        _check_temperature_range([None if t is None else float(t) for t in temps], work,
                                 "dual option dtype=torch.float32: ", h._map_word)
    return out


def _check_temperature_range(temps: Sequence[float | None], dtype: torch.dtype, prefix: str = "",
                              unit: str = "level") -> None:
    """The working dtype must represent ``1/τ_k`` and the sum of the temperatures (``None``: a
    map whose temperature is not used; ``unit`` names the maps: "level" or "map")."""
    low, high = temperature_range(dtype)
    name = dtype_name(dtype)
    used = [t for t in temps if t is not None]
    for k, t in enumerate(temps):
        if t is not None and t < low:
            raise ValueError(f"{prefix}temperature of {unit} {k} is {t:g}, below the smallest that {name} can "
                             f"divide by ({low:.3g}); use dtype=torch.float64 or a larger temperature")
    if math.fsum(used) > high:
        raise ValueError(f"{prefix}the temperatures sum to {math.fsum(used):g}, above the largest accepted in "
                         f"{name} ({high:.3g}); use dtype=torch.float64 or smaller temperatures")


def _check_given(given, scores, h: Graph) -> list[Tensor | None] | None:
    """``given`` of :func:`solve_dual` for direct callers (``solve`` has checked more: the values):
    ``None`` or one entry per map, a tensor exactly where ``scores`` has None."""
    if given is None:
        if any(s is None for s in scores):
            raise ValueError("scores of a map are None but no given probabilities replace them (given=...)")
        return None
    if isinstance(given, Tensor) or not isinstance(given, Sequence) or len(given) != h.num_maps:
        raise ValueError(f"given must hold one entry per {h._map_word} ({h.num_maps}): the given probabilities or None")
    out: list[Tensor | None] = []
    for k, (q, s) in enumerate(zip(given, scores)):
        if (q is None) == (s is None):
            raise ValueError(f"{h._map_word} {k}: give either its scores or its probabilities (given), exactly one")
        if q is not None:
            if not isinstance(q, Tensor) or tuple(q.shape[1:]) != h.shapes[k] or not bool((q > 0).all()):
                raise ValueError(f"given[{k}] must be a tensor (B, *{h.shapes[k]}) of positive probabilities")
        out.append(q)
    return None if all(q is None for q in out) else out


def _check_problem(scores, h: Graph, temps, unused: frozenset = frozenset()) -> tuple[list[Tensor], list[float]]:
    """The kernel's own checks (``solve`` has done them already; direct callers have not).
    ``unused``: the given maps, whose temperatures are not used (nor range-checked)."""
    if not isinstance(h, Graph):
        raise TypeError(f"h must be a convex_attention.Hierarchy or Graph, got {type(h).__name__}")
    M = h.num_maps
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence) or len(scores) != M:
        raise ValueError(f"scores must be a list of {M} tensors (one per {h._map_word})")
    scores = list(scores)
    for k, s in enumerate(scores):
        if not isinstance(s, Tensor) or s.dtype not in _WORK_DTYPES or tuple(s.shape[1:]) != h.shapes[k] \
                or s.dim() != 1 + len(h.shapes[k]) or s.shape[0] != scores[0].shape[0] \
                or s.dtype != scores[0].dtype or s.shape[0] == 0:
            raise ValueError(f"scores[{k}] must be a float32/float64 tensor (B, *{h.shapes[k]}) with the dtype "
                             f"and batch of scores[0], got "
                             f"{tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}")
    if isinstance(temps, Tensor):
        temps = temps.detach().cpu().tolist()
    if isinstance(temps, (str, bytes)) or not isinstance(temps, Sequence) or len(temps) != M:
        raise ValueError(f"temps must hold one positive temperature per {h._map_word} ({M})")
    out = []
    for k, t in enumerate(temps):
        t = float(t)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature of {h._map_word} {k} must be positive and finite, got {t}")
        out.append(t)
    _check_temperature_range([None if k in unused else t for k, t in enumerate(out)], scores[0].dtype,
                             unit=h._map_word)
    return scores, out


_Pieces = list[tuple[Tensor, Tensor, torch.Size]]


def _objective(etas: Sequence[Tensor], temps: Sequence[float],
               given: Sequence[Tensor | None] | None = None) -> tuple[Tensor, _Pieces]:
    """``g(λ)`` at the logits ``η(λ)``, ``(B,)``, and per map the pieces ``(z, lse, shape)`` of
    its softmax, ``z = (η − max η) / τ`` flattened: ``p = exp(z − lse)``.

    Each map's maximum is subtracted before dividing by ``τ_k``, so ``g`` is finite for every
    accepted temperature and finite ``η``.  A given map (``given[k]`` its probabilities
    ``q_k``) adds ``<η_k, q_k>`` and its pieces are ``(log q_k, 0)``."""
    g: Tensor | float = 0.0
    probs: _Pieces = []
    for k, (e, t) in enumerate(zip(etas, temps)):
        if given is not None and given[k] is not None:
            q = given[k].flatten(1)  # type: ignore[union-attr]
            g = g + (e.flatten(1) * q).sum(1)
            probs.append((q.log(), q.new_zeros(q.shape[0]), e.shape))
            continue
        top, z, lse = _softmax_pieces(e, t)
        g = g + (top.squeeze(1) + t * lse)
        probs.append((z, lse, e.shape))
    assert isinstance(g, Tensor)
    return g, probs


def _evaluate(etas: Sequence[Tensor], h: Graph, temps: Sequence[float], violation: bool = True,
              duals: Sequence[Tensor] | None = None, given: Sequence[Tensor | None] | None = None,
              offset: Tensor | float = 0.0):
    """``g(λ)``, the violation and the relative duality gap (:func:`dual_gap_terms`, when
    ``duals`` are given; ``offset`` the scores' :func:`score_offset`) at the logits ``η(λ)``:
    three ``(B,)`` tensors (``None`` for the ones not asked for), and the probabilities
    ``p(λ)`` (empty without ``violation``)."""
    g, pieces = _objective(etas, temps, given)
    if not violation:
        return g, None, None, []
    viol, gap, probs = _measure(pieces, h, g, duals, offset)
    return g, viol, gap, probs


def _confirm_as_returned(scores, h: Graph, temps, lam, etas, g, viol, gap, stopping: Tensor, given, offset,
                         stop_tol: float, gap_tol: float):
    """The samples ``stopping`` (their iterate met the stopping test) measured again at the
    logits recomputed from scratch at their centred duals, which is where their maps are
    returned: the iterate's logits are updated sweep by sweep and drift from ``η(λ)`` by
    their rounding (hundreds of float64 units after long solves at logits of hundreds; a
    start of 1e30 left them nowhere near it, a review).  Those samples take the recomputed
    state; the ones it does not meet go on sweeping from it.  Returns ``lam, etas, g, viol,
    gap``, the samples that stop and the maps measured at ``etas`` (those of the stopping
    samples are the maps they return)."""
    centred = _pick(stopping, [centre(x) for x in lam], lam)
    fresh = _pick(stopping, reparameterized_logits(scores, centred, h), etas)
    fresh_g, fresh_viol, fresh_gap, probs = _evaluate(fresh, h, temps, duals=centred, given=given, offset=offset)
    g, viol, gap = (torch.where(stopping, new, old) for new, old in ((fresh_g, g), (fresh_viol, viol),
                                                                      (fresh_gap, gap)))
    met = torch.isfinite(g) & (viol <= stop_tol) & (gap <= gap_tol)
    return centred, fresh, g, viol, gap, stopping & met, probs


def _measure(pieces: _Pieces, h: Graph, g: Tensor, duals: Sequence[Tensor] | None = None,
             offset: Tensor | float = 0.0):
    """The violation, the relative duality gap (``None`` without ``duals``) and ``p(λ)`` from the
    softmax pieces of :func:`_objective` and ``g = g(λ)``."""
    probs = [torch.exp(z - lse.unsqueeze(1)).view(shape) for z, lse, shape in pieces]
    gap = None if duals is None else dual_gap_terms(g, probs, duals, h, offset)[1]
    return _violation(probs, h), gap, probs


def _pick_pieces(take: Tensor, a: _Pieces, b: _Pieces) -> _Pieces:
    """Per sample, the pieces ``a`` where ``take`` ``(B,)`` is True, else ``b``."""
    return [(torch.where(take.unsqueeze(1), za, zb), torch.where(take, la, lb), shape)
            for (za, la, shape), (zb, lb, _) in zip(a, b)]


def _sweep(h: Graph, temps: Sequence[float], lam: list[Tensor], etas: list[Tensor], mask: Tensor,
           given: Sequence[Tensor | None] | None = None):
    """One block-coordinate sweep: for every edge ``e = (a → b)`` in ``h.sweep_order`` (finest
    fine map first; on the chain ``k = 0 … L-2``), the exact minimiser of ``g`` over ``λ_e``.

    With every other multiplier fixed, ``λ_e ← λ_e + τ_a τ_b / (τ_a + τ_b) ·
    (blocklogsumexp_e(η_a / τ_a) − η_b / τ_b)`` makes both sides of constraint ``e``
    proportional, hence equal.  It is evaluated as the weighted average
    ``(τ_b A_e − τ_a η_b) / (τ_a + τ_b)`` with ``A_e = τ_a blocklogsumexp_e(η_a / τ_a)``
    formed from block-max-shifted logits: finite at every accepted temperature, where
    ``η / τ`` itself would overflow.  ``mask`` ``(B,)`` (1 or 0) freezes finished samples.
    Returns new lists (the inputs are not modified).

    With a given map (``given[k]``: its probabilities ``q_k``; the limit ``τ_k → ∞`` of the
    step, docs/math.md §7.6) the step matches the free side to it: ``λ_e ← λ_e + A_e − τ_a log q_b``
    when ``b`` is given, ``λ_e ← λ_e + τ_b log(P_e q_a) − η_b`` when ``a`` is given.
    """
    lam, etas = list(lam), list(etas)
    for e in h.sweep_order:
        a, b = h.edges[e]
        ta, tb = temps[a], temps[b]
        given_a = given is not None and given[a] is not None
        given_b = given is not None and given[b] is not None
        if given_a and given_b:
            continue  # data on both sides: nothing to solve (refused before the solve)
        if given_a:
            delta = centre(tb * h.aggregate(given[a], e).log() - etas[b])  # type: ignore[index, arg-type]
        else:
            bmax = h.block_max(etas[a], e)
            # (η_a − blockmax) / τ_a is at most 0 with a 0 in every block, so its exp needs no second shift
            blocksum = h.aggregate(h._combine(etas[a], bmax, e, torch.sub).div_(ta).exp_(), e)
            message = bmax + ta * blocksum.log()
            if given_b:
                delta = centre(message - ta * given[b].log())  # type: ignore[index, union-attr]
            else:
                weighted = (tb * message - ta * etas[b]) / (ta + tb)
                # τ · η overflows where both are large (τ near the largest accepted temperature, η
                # near the score limit); there the same average with weights in [0, 1] is finite.
                # Elsewhere the first form is kept, so results stay bit-identical.
                weighted = torch.where(torch.isfinite(weighted), weighted,
                                       message * (tb / (ta + tb)) - etas[b] * (ta / (ta + tb)))
                delta = centre(weighted)
        delta = delta * mask.view((-1,) + (1,) * len(h.shapes[b]))
        lam[e] = lam[e] + delta
        etas[a] = h._combine(etas[a], delta, e, torch.sub)
        etas[b] = etas[b] + delta
    return lam, etas


def _anderson(xs: Sequence[Tensor], gxs: Sequence[Tensor]) -> Tensor:
    """Anderson (type II) extrapolation of the fixed-point map ``x ↦ G(x)`` per sample.

    ``xs``, ``gxs``: the last ``m+1`` points and their images, each ``(B, N)`` (the duals
    flattened).  With residuals ``f_i = G(x_i) − x_i`` it finds the combination of the
    last ``m`` residual differences that best cancels the newest residual (least squares,
    columns normalised, a 1e-12 ridge for collinear columns) and returns
    ``G(x_m) − ΔG γ``: ``(B, N)``.  Non-finite or singular systems give a non-finite result,
    which the caller's safeguard rejects.
    """
    f = [gx - x for x, gx in zip(xs, gxs)]
    dF = torch.stack([f[i + 1] - f[i] for i in range(len(f) - 1)], dim=2)      # (B, N, m)
    dG = torch.stack([gxs[i + 1] - gxs[i] for i in range(len(f) - 1)], dim=2)  # (B, N, m)
    norm = dF.norm(dim=1, keepdim=True)                                         # (B, 1, m)
    A = dF / norm.clamp_min(torch.finfo(dF.dtype).tiny)
    gram = A.transpose(1, 2) @ A
    gram = gram + 1e-12 * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    gamma, info = torch.linalg.solve_ex(gram, A.transpose(1, 2) @ f[-1].unsqueeze(2))
    gamma = gamma / norm.clamp_min(torch.finfo(dF.dtype).tiny).transpose(1, 2)
    out = gxs[-1] - (dG @ gamma).squeeze(2)
    return torch.where((info == 0).unsqueeze(1), out, out.new_tensor(math.nan))


def _flatten(lam: Sequence[Tensor]) -> Tensor:
    return torch.cat([x.flatten(1) for x in lam], dim=1)


def _unflatten(x: Tensor, h: Graph) -> list[Tensor]:
    out, start = [], 0
    for _, b in h.edges:
        shape = h.shapes[b]
        n = math.prod(shape)
        out.append(centre(x[:, start:start + n].reshape((x.shape[0],) + shape)))
        start += n
    return out


def _pick(take: Tensor, a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
    """Per sample, ``a`` where ``take`` ``(B,)`` is True, else ``b``."""
    return [torch.where(take.view((-1,) + (1,) * (x.dim() - 1)), x, y) for x, y in zip(a, b)]


def _dense_newton_directions(hess, probs: Sequence[Tensor], temps: Sequence[float], grad: Tensor, rows: Tensor,
                             regularisation: float = 0.0) -> tuple[Tensor, Tensor]:
    """``−(∇²g + ρ s I)⁻¹ ∇g`` for the samples ``rows`` (indices), ``s`` the mean of each
    sample's Hessian diagonal and ``ρ`` ``regularisation``: ``(direction, ok)``, each
    ``(len(rows), D)`` and ``(len(rows),)``, ``ok`` False where no Cholesky factor was found.
    The dense Hessians are assembled for chunks of samples (each costs a factorisation, O(D³))."""
    direction = grad.new_empty((len(rows), grad.shape[1]))
    ok = torch.zeros(len(rows), dtype=torch.bool, device=grad.device)
    for chunk in dense_chunks(len(rows), hess.dim):
        pick = rows[chunk]
        H = hess.dense([p[pick] for p in probs], temps)
        if regularisation:
            diagonal = H.diagonal(dim1=1, dim2=2)
            diagonal.add_(regularisation * diagonal.mean(1, keepdim=True))
        factor, ok[chunk] = hess.factor(H)
        direction[chunk] = -cholesky_apply(factor, grad[pick])
    return direction, ok


def _cg_newton_directions(hess, probs: Sequence[Tensor], temps: Sequence[float], grad: Tensor,
                          rows: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_dense_newton_directions` above ``DENSE_LIMIT``, unregularised: a few
    block-Jacobi conjugate-gradient iterations on ``∇²g d = −∇g`` (:data:`_NEWTON_CG_RTOL`,
    :data:`_NEWTON_CG_ITERATIONS`) for the samples ``rows``; ``ok``: the direction is finite."""
    # (tightening the residual with the gradient, Eisenstat-Walker style, with up to 100
    # iterations, was three times slower and rescued no instance, measured)
    direction, _, _, _ = solve_psd(hess, [p[rows] for p in probs], temps, -grad[rows], _NEWTON_CG_RTOL,
                                   _NEWTON_CG_ITERATIONS, dense_limit=0)
    return direction, torch.isfinite(direction).all(1)


def _newton_directions(hess, probs: Sequence[Tensor], temps: Sequence[float], grad: Tensor, rows: Tensor,
                       dense: Tensor, regularisation: float = 0.0) -> tuple[Tensor, Tensor]:
    """The Newton directions of the samples ``rows`` (a bool mask, ``(B,)``), zero elsewhere:
    from the dense Hessian where ``dense`` ``(B,)`` is True, by conjugate gradients elsewhere;
    ``(direction, ok)``, ``(B, D)`` and ``(B,)``.  Regularised directions
    (``regularisation > 0``) are asked for dense samples only: a sample on the inexact path is
    moved to the dense one once it crawls (:data:`_CRAWL_WINDOW`; up to
    ``hessian.DENSE_FALLBACK_LIMIT`` entries), and regularising its conjugate-gradient system
    as well rescued no instance (measured)."""
    direction = torch.zeros_like(grad)
    ok = torch.zeros(grad.shape[0], dtype=torch.bool, device=grad.device)
    index = torch.nonzero(rows & dense).flatten()
    if len(index):
        direction[index], ok[index] = _dense_newton_directions(hess, probs, temps, grad, index, regularisation)
    index = torch.nonzero(rows & ~dense).flatten()
    if len(index):
        direction[index], ok[index] = _cg_newton_directions(hess, probs, temps, grad, index)
    return direction, ok


def _newton_candidate(h: Graph, scores: Sequence[Tensor], temps: Sequence[float], lam: list[Tensor],
                      etas: list[Tensor], g_now: Tensor, pieces: _Pieces, active: Tensor,
                      dense: Tensor, given: Sequence[Tensor | None] | None = None):
    """A damped Newton step on ``g`` from ``lam`` (logits ``etas``, value ``g_now``), per sample.

    The direction solves ``∇²g d = −∇g`` on the mean-zero subspace: with the dense Hessian and
    its Cholesky factor (:mod:`convex_attention.hessian`) for the samples where ``dense``
    ``(B,)`` is True (every sample when the stacked dual has at most ``DENSE_LIMIT`` entries;
    above, those that crawled: :func:`solve_dual`), else by a few conjugate-gradient
    iterations.  The step lengths of :data:`_NEWTON_STEPS` are tried in turn and the first
    with ``g ≤ g_now`` is taken (the safeguard: NaN never passes).  Where none is, on the
    dense samples, regularised directions ``(∇²g + ρ s I) d = −∇g`` follow, ``ρ`` up the
    ladder :data:`_REGULARISED_NEWTON` (``s`` the mean diagonal), each with the step lengths
    of :data:`_REGULARISED_STEPS`, until one lowers ``g``: on peaked maps the Hessian has
    directions of almost no curvature (cells of probability ~0 at τ = 0.01), along which the
    Newton direction is so long that even its 1/32 overshoots.  ``pieces``: the softmax
    pieces at ``lam`` (:func:`_objective`).  Returns ``(lam, etas, g, pieces, taken)`` with
    the old values where no step was taken.
    A given map adds no curvature (its ``J_k`` is the limit ``τ_k → ∞``: zero)."""
    hess = get_hessian(h, lam[0].device)
    probs = [torch.exp(z - lse.unsqueeze(1)).view(shape) for z, lse, shape in pieces]
    objective_temps, temps = temps, hessian_temperatures(temps, given)
    grad = hess.gradient(probs)
    # only the samples still solving
    direction, ok = _newton_directions(hess, probs, temps, grad, active, dense)
    start = _flatten(lam)
    taken = torch.zeros_like(active)
    best = (lam, etas, g_now, pieces)

    def search(direction: Tensor, ok: Tensor, steps: Sequence[float]) -> None:
        """The first of ``steps`` along ``direction`` with ``g ≤ g_now``, per sample."""
        nonlocal best, taken
        for step in steps:
            need = active & ok & ~taken
            if not bool(need.any()):
                break
            cand = _unflatten(start + step * direction, h)
            cand_etas = reparameterized_logits(scores, cand, h)
            cand_g, cand_pieces = _objective(cand_etas, objective_temps, given)
            take = need & (cand_g <= g_now)  # False for NaN: the safeguard
            best = (_pick(take, cand, best[0]), _pick(take, cand_etas, best[1]),
                    torch.where(take, cand_g, best[2]), _pick_pieces(take, cand_pieces, best[3]))
            taken = taken | take

    search(direction, ok, _NEWTON_STEPS)
    for regularisation in _REGULARISED_NEWTON:
        rows = active & ~taken & dense
        if not bool(rows.any()):
            break
        search(*_newton_directions(hess, probs, temps, grad, rows, dense, regularisation), _REGULARISED_STEPS)
    return (*best, taken)


def hessian_temperatures(temps: Sequence[float], given: Sequence | None) -> list[float]:
    """The temperatures the dual's Hessian sees: ``inf`` for a given map (no curvature), as
    :mod:`convex_attention.hessian` takes them."""
    if given is None:
        return list(temps)
    return [math.inf if q is not None and q is not False else t for t, q in zip(temps, given)]


def _check_given_structure(h: Graph, mask: Sequence[bool], options: dict) -> None:
    """A structure with given maps that the dual can solve: at least one scored map, no edge
    between two given maps, no warm start from a closed form (it has none)."""
    if all(mask):
        raise ValueError("every map is given: there is nothing to solve; give scores for at least one map")
    for e, (a, b) in enumerate(h.edges):
        if mask[a] and mask[b]:
            raise ValueError(f"edge {e} (map {a} → map {b}) joins two given maps: their agreement is data, not "
                             f"something to solve; drop the edge (and check P_e q_{a} = q_{b} yourself) or score "
                             f"one of the maps")
    if options.get("warm_start") is True:
        raise ValueError("dual option warm_start=True starts from a closed form, which a structure with given maps "
                         "does not have; leave warm_start at 'auto'")


def spanning_forest_duals(scores: Sequence[Tensor], h: Graph, temps: Sequence) -> list[Tensor]:
    """Duals of the closed form of a spanning forest (:meth:`Graph.spanning_forest`), zero on
    the other edges: the optimum itself on a forest.  Differentiable in the scores and in
    tensor temperatures; ``E`` tensors ``(B, *shapes[coarse(e)])``."""
    keep = h.spanning_forest()
    sub = Graph._build(h.shapes, [h.edges[e] for e in keep], [h.edge_factor(e) for e in keep],
                       [h._parents[e] for e in keep])
    tree = exact_duals(scores, sub, temps)
    out = [scores[0].new_zeros((scores[0].shape[0],) + h.shapes[b]) for _, b in h.edges]
    for i, e in enumerate(keep):
        out[e] = tree[i]
    return out


@torch.no_grad()
def solve_dual(scores: Sequence[Tensor | None], h: Graph, temps: Sequence[float], tol: float = 1e-6,
               max_iter: int = 1000, strict: bool = True, record_history: bool = False,
               init: Sequence[Tensor] | None = None, gap_tol: float | None = None, newton="auto",
               warm_start="auto", given: Sequence[Tensor | None] | None = None,
               round_to: torch.dtype | None = None, whole_is_forest: bool | None = None,
               sample_names: Sequence[int] | None = None, check_init: bool = True,
               _returned: dict | None = None):
    r"""Minimise ``g(λ)`` per sample until ``violation <= tol`` and ``gap <= gap_tol``:
    safeguarded, accelerated block-coordinate descent.

    Every sweep applies the exact block steps of :func:`_sweep` (one per edge), the map
    ``λ ↦ G(λ)``.  Alone, these sweeps converge linearly, and slowly where the maps'
    temperatures differ by orders of magnitude (a responsive cold level between two stiff
    hot ones absorbs each block step: at τ = [1e3, 1e-3, 1e3] the violation shrinks by a
    factor of only about 1 − 2e-6 per sweep) or, on graphs that are not forests, where the
    maps are peaked (the Hessian of ``g`` then has condition numbers of 1e8 and more).  After
    each sweep two candidates are tried, each taken only where ``g`` there is no larger than
    at the best point so far: an Anderson extrapolation of the last ``_ANDERSON_MEMORY``
    sweeps (:func:`_anderson`) and, with ``newton``, a damped Newton step
    (:func:`_newton_candidate`; regularised where no step length of the plain direction lowers
    ``g``, as on peaked maps at τ = 0.01).  So ``g`` never increases, every sweep lowers it at least as
    much as a plain sweep from the same point (the convergence of block-coordinate descent is
    kept), and it is a minimisation of the dual by iteration on λ, not a closed form.

    Args:
        scores: ``M`` tensors ``(B, *h.shapes[k])``, float32 or float64 (the working dtype).
        h: the graph (a :class:`~convex_attention.hierarchy.Hierarchy` or any
            :class:`~convex_attention.graph.Graph`).
        temps: ``M`` positive temperatures.
        tol: target of ``violation = max_e ‖P_e p_a(λ) - p_b(λ)‖₁`` per sample, a positive
            finite number.
        max_iter: maximum number of sweeps (int >= 1).
        strict: raise :class:`ConvergenceError` naming the samples that miss ``tol``, with
            the reason and what helps; if False, warn instead (and report them in
            ``converged``).
        record_history: also return per-sweep ``violation``, ``g(λ)`` and gap.
        init: optional starting duals: ``E`` finite tensors ``(B, *shapes[coarse(e)])``,
            ``(1, *shapes[coarse(e)])`` or ``shapes[coarse(e)]``.
        gap_tol: target of the relative duality gap
            ``|g(λ) − f(p(λ))| / max(1, |f̄(p(λ))|)``, ``f̄`` the objective of the scores
            centred per map (:func:`dual_gap_terms`); default ``tol``.
        newton: ``"auto"`` (default: Newton candidates on graphs that are not forests),
            ``True`` or ``False``.  The Newton system is solved with the dense Hessian's
            Cholesky factor when the stacked dual has at most
            :data:`~convex_attention.hessian.DENSE_LIMIT` entries, else inexactly by
            block-Jacobi conjugate gradients (relative residual 1e-2, at most 20 iterations,
            each costing about one sweep), until the sample crawls (its violation fell less
            than tenfold over 5 sweeps): from then on with the dense Hessian, where the stacked
            dual has at most :data:`~convex_attention.hessian.DENSE_FALLBACK_LIMIT` entries.
        warm_start: start from the closed form of a spanning forest (:func:`spanning_forest_duals`;
            on a forest, the optimum, so the solve only certifies it) instead of zero: ``True``,
            ``False`` or ``"auto"`` (default: on forests that are not chains; a chain keeps
            the cold start it always had, so its results are unchanged; on other graphs the
            closed form of a spanning forest saved no sweep, measured).
        given: per map ``None`` (a scored map) or the given probabilities ``q_k`` of the
            map, ``(B, *h.shapes[k])``, strictly positive, summing to one (the map's ``scores``
            entry is then None and its temperature unused; docs/math.md §7.6).  No edge may join
            two given maps, and there is no warm start.
        round_to: the dtype the maps will be returned in, when less precise than the scores'
            (the working dtype): the iterate then stops at ``tol`` less
            :func:`rounding_margin`, so that the rounded maps meet ``tol`` too (float32 maps
            of an iterate at 9.99e-7 measured 1.0018e-6).  Where the margin is above
            ``tol / 2`` (half precision at small ``tol``, or float16 maps of tens of
            thousands of cells: their rounding alone can reach ``tol``) the iterate stops at
            ``tol / 2``; the dual method then judges the maps as returned.
        check_init: whether ``init``'s values are checked (finite, less a dominating midpoint:
            :func:`_check_init`) and checked to fit the working dtype beside the scores
            (:func:`_check_init_fits`); False: only its form, the values being the caller's
            to have checked, detached from any graph.  The dual method checks the user's start
            once, before any part of the graph is solved, and passes False (its retries start
            from the solver's own duals, which are not the user's to refuse).
        sample_names: the samples' numbers in the caller's batch, for the messages (None: their
            rows here): a part of a disconnected graph solved again for some samples only.
        whole_is_forest: for ``h`` a part of a larger graph (:meth:`Graph.solved_apart`), whether
            that graph is a forest: a stall's advice names method 'exact' only if it solves the
            graph the user passed (None: ``h`` is that graph).
        _returned: private (the dual method's autograd function): a dict that receives, when
            every sample converged at a point where its maps were measured (float64 work, no
            given maps), those maps (``probs``) and their logits (``etas``), so that they are
            not computed again.

    Returns:
        dict with ``duals`` (centred, ``(B, *shapes[coarse(e)])``), ``iterations`` ``(B,)``
        (sweeps each sample needed), ``converged`` ``(B,)`` bool, ``violation`` ``(B,)``,
        ``gap`` ``(B,)``, ``newton_steps`` ``(B,)`` (Newton candidates taken) and, if asked,
        ``history``: ``{"violation", "dual_objective", "gap"}``, each ``(iters+1, B)`` (row 0
        is the starting point).

    The scores are centred per map and sample first (:func:`_centred_scores`): a constant per
    map changes neither the solution nor the duals, and a large one (3e4 at τ 1e-6) would cost
    the logits the digits of their differences (``history``'s ``g`` is given back at the
    scores as passed).  In float64 work a sample whose iterate meets the stopping test is
    measured again at the logits recomputed at its centred duals (the ``duals`` returned),
    where its maps are computed, and stops only if they meet it too
    (:func:`_confirm_as_returned`); ``violation`` and ``gap`` are theirs.  In float32 work
    that measure is too coarse near float32's floor; the dual method judges the maps as
    returned instead.

    NaN or Inf anywhere in a sample's state (scores, duals, ``g``, violation, gap) ends that
    sample as *not* converged.  Finished samples are frozen and every step is per sample,
    so a batch gives the result of a loop over its samples up to the rounding of batched
    kernels (duals 1.5e-14 apart and the same sweep counts on 64² mixed instances, measured by
    a review; bit for bit at 16²; a stopping test that close to tol could decide differently).
    Each sweep ends with
    one host synchronisation (the stopping test).
    """
    tol, max_iter = _check_tol(tol), _check_max_iter(max_iter)
    gap_tol = tol if gap_tol is None else _check_tol(gap_tol, "gap_tol")
    strict, record_history = _check_flag(strict, "strict"), _check_flag(record_history, "record_history")
    newton, warm_start = _check_newton(newton), _check_warm_start(warm_start)
    given = _check_given(given, scores, h)
    scores, temps = _check_problem(with_given_scores(scores, given), h, temps,
                                   unused=frozenset(k for k, q in enumerate(given or ()) if q is not None))
    # solved at scores centred per map and sample: a constant per map changes no solution and
    # no dual, but a large one (3e4 at τ 1e-6) cost the logits the digits of their
    # differences, and the maps recomputed at the duals missed tol (a hostile review)
    centred, history_offset = _centred_scores(scores)  # the offset: what the constants add to g(λ)
    scores = centred
    B, dtype, device = scores[0].shape[0], scores[0].dtype, scores[0].device
    # a stopping sample is confirmed at recomputed logits in float64 work only: a float32
    # measure of them is too coarse near float32's floor (a review: a sample whose maps met tol
    # 1e-5 as returned was refused nine times, then stalled); float32 maps are judged as
    # returned, in float64, by the dual method instead
    confirms = dtype == torch.float64
    # its form always (cheap); its values (a pass and a host sync per tensor) where the caller has not
    init = _check_init(init, h, B, device, values=check_init)
    if init is not None and check_init:
        _check_init_fits(init, scores, dtype, h, temps, tol, [False] * h.num_maps if given is None else
                         [q is not None for q in given])
    if init is not None and warm_start is True:
        raise ValueError("dual options init and warm_start=True contradict each other: give starting duals or ask "
                         "for the spanning forest's closed form, not both")
    if given is not None:
        _check_given_structure(h, [q is not None for q in given], {"warm_start": warm_start})
        given = [None if q is None else q.to(dtype).expand((B,) + h.shapes[k]) for k, q in enumerate(given)]
        warm_start = False if warm_start == "auto" else warm_start
    if warm_start == "auto":
        warm_start = init is None and h.is_forest and not h.is_chain
    use_newton = bool(newton) if newton != "auto" else not h.is_forest
    if warm_start is True:
        lam = [centre(x) for x in spanning_forest_duals(scores, h, temps)]
    elif init is None:
        lam = [scores[0].new_zeros((B,) + h.shapes[b]) for _, b in h.edges]
    else:
        lam = [_centred_start(start.to(dtype).expand((B,) + h.shapes[h.edges[e][1]]).clone())
               for e, start in enumerate(init)]
    etas = reparameterized_logits(scores, lam, h)
    offset = score_offset(scores)
    g, viol, gap, measured = _evaluate(etas, h, temps, duals=lam, given=given, offset=offset)
    # each sample's maps where it stopped: at the start (at centred duals, from the logits
    # computed from them) or at its confirmation (float64 work), recomputed nowhere else
    stopped_maps = measured
    finite = torch.isfinite(g) & torch.isfinite(viol) & torch.isfinite(gap)
    failed = ~finite
    stop_tol = tol
    if round_to is not None and torch.finfo(round_to).eps > torch.finfo(dtype).eps:
        margin = rounding_margin(h, round_to)
        # where the worst-case margin is above tol / 2 (half precision at small tol, large
        # float16 maps), half of tol is left for the rounding, whose actual size is usually far
        # below the bound; the returned maps are judged as returned either way
        stop_tol = tol - margin if margin <= tol / 2 else tol / 2
    active = finite & ~((viol <= stop_tol) & (gap <= gap_tol))
    recorded = ~active  # the samples whose stopped_maps are their returned maps: those done at the start
    iterations = torch.zeros(B, dtype=torch.long, device=device)
    newton_steps = torch.zeros(B, dtype=torch.long, device=device)
    history_v, history_g, history_gap = ([viol.clone()], [g.clone()], [gap.clone()]) if record_history else ([], [], [])
    recent = [viol.clone()]  # violations of the last sweeps (for the advice and the crawl test)
    dimension = get_hessian(h, device).dim if use_newton else 0
    # which samples take their Newton directions from the dense Hessian (see _CRAWL_WINDOW)
    dense = torch.full((B,), dimension <= DENSE_LIMIT, dtype=torch.bool, device=device)
    fallback = DENSE_LIMIT < dimension <= hessian.DENSE_FALLBACK_LIMIT
    xs: list[Tensor] = []
    gxs: list[Tensor] = []
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        mask = active.to(dtype)
        swept, swept_etas = _sweep(h, temps, lam, etas, mask, given)
        xs.append(_flatten(lam))
        gxs.append(_flatten(swept))
        del xs[:-(_ANDERSON_MEMORY + 1)], gxs[:-(_ANDERSON_MEMORY + 1)]
        new_g, new_pieces = _objective(swept_etas, temps, given)
        new, new_etas = swept, swept_etas
        if len(xs) > 1:
            extra = _unflatten(_anderson(xs, gxs), h)
            extra_etas = reparameterized_logits(scores, extra, h)
            extra_g, extra_pieces = _objective(extra_etas, temps, given)
            take = active & (extra_g <= new_g)  # False for NaN: the safeguard
            new, new_etas = _pick(take, extra, swept), _pick(take, extra_etas, swept_etas)
            new_g, new_pieces = torch.where(take, extra_g, new_g), _pick_pieces(take, extra_pieces, new_pieces)
        if use_newton:
            new, new_etas, new_g, new_pieces, took = _newton_candidate(h, scores, temps, new, new_etas, new_g,
                                                                       new_pieces, active, dense, given)
            newton_steps += took.long()
        lam, etas = _pick(active, new, lam), _pick(active, new_etas, etas)
        # measured at the chosen point from its own softmax pieces (g is not computed twice)
        new_viol, new_gap, _ = _measure(new_pieces, h, new_g, new, offset)
        g, viol = torch.where(active, new_g, g), torch.where(active, new_viol, viol)
        gap = torch.where(active, new_gap, gap)
        iterations += active.long()
        finite = torch.isfinite(g) & torch.isfinite(viol) & torch.isfinite(gap) & torch.stack(
            [torch.isfinite(x.flatten(1)).all(1) for x in lam]).all(0)
        failed |= active & ~finite
        stopping = active & finite & (viol <= stop_tol) & (gap <= gap_tol)
        if confirms and bool(stopping.any()):
            lam, etas, g, viol, gap, stopping, measured = _confirm_as_returned(
                scores, h, temps, lam, etas, g, viol, gap, stopping, given, offset, stop_tol, gap_tol)
            stopped_maps = _pick(stopping, measured, stopped_maps)
            recorded = recorded | stopping
        active = active & finite & ~stopping
        if record_history:
            history_v.append(viol.clone())
            history_g.append(g.clone())
            history_gap.append(gap.clone())
        recent = (recent + [viol.clone()])[-_RECENT_SWEEPS:]
        if fallback and len(recent) > _CRAWL_WINDOW:
            dense |= active & ~(viol * _CRAWL_FACTOR <= recent[-1 - _CRAWL_WINDOW])
    converged = ~failed & (viol <= stop_tol) & (gap <= gap_tol)
    if not bool(converged.all()):
        forest = h.is_forest if whole_is_forest is None else whole_is_forest
        msg = _failure_message(scores, h, temps, stop_tol, gap_tol, max_iter, converged, failed, viol, gap, recent,
                               dtype, closed_form=forest and given is None, given=given is not None,
                               sample_names=sample_names,
                               inexact_dimension=dimension if dimension > hessian.DENSE_FALLBACK_LIMIT else 0)
        if stop_tol != tol and round_to is not None:  # (only a round_to moves stop_tol)
            msg += (f" (The maps are returned in {dtype_name(round_to)}: the iterate must reach "
                    f"{stop_tol:.3g} for them to meet tol {tol:g} once rounded.)")
        if strict:
            raise ConvergenceError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    # a confirmed stop's duals are centred already (confirmed there, or started so): centring
    # them again moves them by a rounding step, which a cold map magnifies past a tol of 1e-13
    # (a review); the others are centred here
    confirmed = converged if confirms else torch.zeros_like(converged)
    if _returned is not None and confirms and given is None and bool((converged & recorded).all()):
        # (for DualSolveFunction) every sample stopped where its maps were measured: those
        # maps and their logits, not computed again (the forests paid 20-30 % for that)
        _returned.update(probs=stopped_maps, etas=etas)
    out = {"duals": _pick(confirmed, lam, [centre(dual) for dual in lam]), "iterations": iterations,
           "converged": converged,
           "violation": viol, "gap": gap, "newton_steps": newton_steps}
    if record_history:
        out["history"] = {"violation": torch.stack(history_v),
                          "dual_objective": torch.stack(history_g) + history_offset, "gap": torch.stack(history_gap)}
    return out


def rounding_margin(h: Graph, dtype: torch.dtype) -> float:
    """How far rounding the maps to ``dtype`` can move an edge's L1 residual: relative
    ``eps / 2`` on every probability (each map sums to one: ``eps`` per edge) plus, below
    the smallest normal number, an absolute half subnormal step per cell (float16's start at
    6.1e-5: on a 300 × 300 map they add up to 2.7e-3)."""
    info = torch.finfo(dtype)
    cells = max(h.sizes[a] + h.sizes[b] for a, b in h.edges)
    return info.eps + cells * info.tiny * info.eps / 2


def _failure_message(scores, h: Graph, temps, tol, gap_tol, max_iter, converged, failed, viol, gap, recent,
                     dtype, closed_form: bool = True, given: bool = False, inexact_dimension: int = 0,
                     sample_names: Sequence[int] | None = None) -> str:
    """Which samples missed ``tol``, why, and what helps (only advice that is true).
    ``inexact_dimension``: the stacked dual's size where its Newton systems are solved by
    conjugate gradients alone (above ``hessian.DENSE_FALLBACK_LIMIT``), else 0."""
    bad = torch.nonzero(~converged).flatten().tolist()

    def shown(rows: list[int]) -> list[int]:  # the first ten, numbered as the caller's batch
        return named(rows, sample_names)[:10]

    name = dtype_name(dtype)
    reasons = []
    broken = torch.nonzero(failed).flatten().tolist()
    if broken:
        if not all(bool(torch.isfinite(s[broken]).all()) for s in scores):
            why = "the scores contain NaN or Inf: pass finite scores"
        else:
            ratio = max(float(s[broken].abs().max()) / t for s, t in zip(scores, temps))
            big = torch.finfo(dtype).max
            why = (f"max |θ_k|/τ_k = {ratio:.1e}"
                   + (f" exceeds the range of {name} ({big:.1e})" if ratio >= big else "")
                   + ": rescale the scores or raise the temperatures")
        reasons.append(f"sample(s) {shown(broken)}: the solver state became NaN/Inf ({why})")
    rest = [i for i in bad if i not in set(broken)]
    gap_only = [i for i in rest if float(viol[i]) <= tol]
    rest = [i for i in rest if float(viol[i]) > tol]
    if gap_only:
        reasons.append(f"sample(s) {shown(gap_only)} reached the violation tol but not the relative duality gap "
                       f"gap_tol={gap_tol:g} (gap {', '.join(f'{float(gap[i]):.2e}' for i in gap_only[:5])}): raise "
                       f"max_iter or gap_tol")
    if rest:
        idx = torch.tensor(rest, device=viol.device)
        window = len(recent) - 1
        # Judged over a full window only (Anderson steps lower g, not necessarily the
        # violation, every sweep), against the window's best so that rounding noise does
        # not count as progress.
        best_before = torch.stack(recent[:-1]).amin(0)[idx]
        moving = ((viol[idx] < 0.5 * best_before) | (window < _PROGRESS_WINDOW)).tolist()
        slow = [i for i, m in zip(rest, moving) if m]
        stuck = [i for i, m in zip(rest, moving) if not m]
        if slow:
            reasons.append(f"sample(s) {shown(slow)} still converging after max_iter={max_iter} sweeps (violation "
                           f"{', '.join(f'{float(viol[i]):.2e}' for i in slow[:5])}): raise max_iter")
        if stuck:
            other = ("use method='exact' (the same optimum in closed form)" if closed_form else
                     "use method='cvxpylayers' (an interior-point solver)")
            fix = ("solve in float64 (dtype=torch.float64) or raise tol above it" if dtype == torch.float32 else
                   f"raise tol above it, or {other}")
            if given:
                # no other method takes given maps, and a larger tol would accept maps that disagree
                fix = ("check the given maps: a stall with given maps usually means that no scored map can pool "
                       "onto all of them (two given maps that contradict each other), or only with zero "
                       "probabilities (an optimum on the simplex's boundary, which the dual approaches without "
                       "reaching)" + ("; or solve in float64 (dtype=torch.float64)" if dtype == torch.float32
                                      else ""))
            # p(λ) = softmax(η/τ) moves by about eps·|η|/τ in log space for a one-ulp change
            # of η: beyond ~1e-3 the dual cannot place the optimum, however long it runs.
            rows = torch.tensor(stuck, device=viol.device)
            grain = max(torch.finfo(dtype).eps * float(s[rows].abs().max()) / t for s, t in zip(scores, temps))
            why = (f"; at these temperatures one rounding step of the logits moves log p by up to {grain:.1e}, "
                   f"so the dual cannot resolve the optimum in {name}" if grain > 1e-3 else "")
            reasons.append(f"sample(s) {shown(stuck)} stalled at violation "
                           f"{', '.join(f'{float(viol[i]):.2e}' for i in stuck[:5])} in {name} (less than "
                           f"halved over the last {window} sweeps; raising max_iter is unlikely to help{why}): {fix}")
        if inexact_dimension:
            reasons.append(f"the stacked dual has {inexact_dimension} entries, above the "
                           f"{hessian.DENSE_FALLBACK_LIMIT} up to which a sample that crawls takes dense Newton "
                           f"steps: its Newton systems are solved by a few conjugate-gradient iterations, which "
                           f"crawl on peaked maps (higher temperatures make the maps less peaked)")
    return (f"dual solver did not reach tol={tol:g} for sample(s) {shown(bad)}{' …' if len(bad) > 10 else ''}; "
            + "; ".join(reasons))


def _dual_rounding(lam: Sequence[Tensor], eps: float) -> list[Tensor]:
    """Per edge, how far the rounding of the duals to the working dtype can move them:
    ``eps · |λ_e|`` (float64, shaped like the duals)."""
    return [d.abs() * eps for d in lam]


def _rows(tensors: Sequence[Tensor | None], index: Tensor | None) -> list:
    """The samples ``index`` of each tensor (None kept; every sample where ``index`` is None)."""
    return [x if index is None or x is None else x[index] for x in tensors]


def _in_batch(parts: Sequence[Tensor], rows: list[int], batch: int) -> list[Tensor]:
    """``parts`` (the samples ``rows``, in order, of a batch of ``batch``) in a batch of zeros."""
    if len(rows) == batch:
        return list(parts)
    index = torch.tensor(rows, dtype=torch.long, device=parts[0].device)
    return [x.new_zeros((batch,) + tuple(x.shape[1:])).index_copy(0, index, x) for x in parts]


def _judged_samples_only(rounding: Sequence[Tensor], judged: list[int]) -> list[Tensor]:
    """``rounding`` kept for the samples ``judged`` and 0 for the others, whose duals are the
    optimum's in float64 (:func:`_optimum_duals`), as exact as the solution is: not judged, as
    float64 work is not (judged by the float32 duals' rounding, right gradients at polished
    duals were refused: ca_rev104)."""
    if not rounding:
        return list(rounding)
    kept = torch.zeros(rounding[0].shape[0], dtype=rounding[0].dtype, device=rounding[0].device)
    kept[judged] = 1.0
    return [r * kept.view((-1,) + (1,) * (r.dim() - 1)) for r in rounding]


def _rounding_squares(h: Graph, gscores: Sequence[Tensor], rounding: Sequence[Tensor], maps) -> Tensor:
    """``Σ_e ‖c_e ∘ rounding_e‖²`` (float64, 0-d): how far the duals' rounding moves the sum of the
    temperature gradients of ``maps`` (times their one τ), ``c_e = θ̄_b − P_e θ̄_a`` on an edge
    ``e = (a → b)`` (a term for each end in ``maps``): ``η_b`` carries ``+λ_e``, ``η_a`` carries
    ``−P_eᵀ λ_e``, so for one map alone the two ends' terms never meet, and for maps that share
    a temperature the two ends' moves offset each other."""
    chosen = set(maps)
    squares = torch.zeros((), dtype=torch.float64, device=rounding[0].device if rounding else None)
    for e, (a, b) in enumerate(h.edges):
        if a not in chosen and b not in chosen:
            continue
        coefficient = gscores[b].detach().to(torch.float64) if b in chosen else 0
        if a in chosen:
            coefficient = coefficient - h.aggregate(gscores[a].detach().to(torch.float64), e)
        squares = squares + ((coefficient * rounding[e]) ** 2).sum()
    return squares


def _constrained_maps(h: Graph) -> list[bool]:
    """Per map, whether an edge constrains it: an edge onto a one-cell map constrains nothing
    (its dual, centred, is 0: ca_rev95)."""
    return [any(h.sizes[h.edges[e][1]] > 1 for e in (*h.in_edges[k], *h.out_edges[k])) for k in range(h.num_maps)]


def _undetermined_temperatures(h: Graph, gtau: Tensor, gscores: Sequence[Tensor], rounding: Sequence[Tensor],
                               temps: Sequence[float], work: torch.dtype, judged_elsewhere=()) -> list[int]:
    """The maps whose ``∂L/∂τ_k = −Σ θ̄_k log p_k`` the duals' rounding to the working dtype
    (``rounding``, :func:`_dual_rounding`) moves by more than :data:`GRADIENT_RTOL` of itself (of
    the largest, for one below its square root, as the score gradients are held): the returned
    solution does not determine it.  A move ``δλ`` moves ``log p_k`` by ``A_k δλ / τ_k`` (and a
    constant), so ``τ̄_k`` by ``<A_kᵀ θ̄_k, δλ> / τ_k``: per edge, ``θ̄_k`` (``k`` its coarse map)
    or ``P_e θ̄_k`` (``k`` its fine map) against ``δλ_e``.  Each dual is rounded to nearest,
    independently, within ``±eps |λ_e| / 2``: the move is taken at three standard deviations of
    that sum, ``√3 / 2 · ‖(A_kᵀ θ̄_k) ∘ eps |λ|‖₂ / τ_k`` (the worst case, every rounding aligned
    with ``A_kᵀ θ̄_k``, refused ordinary float32 trees whose gradient was 2 % of its tolerance
    off, ca_rev92).  A float32 solve at τ = (1e6, 1, 1) on an axial 2×3 map returned the gradient
    of a two-cell map at p = (0.49999997, 0.5), whose log-probabilities differ by one float32
    unit, 11 % off the float64 optimum's (ca_rev37's test), silently.

    The maps in ``judged_elsewhere`` share one temperature tensor with others: the user receives
    their sum, which :class:`_SharingLedger` judges (a component alone may be undetermined where
    the sum is not, ca_rev94); they are never returned here."""
    tol = gradient_rtol(work)
    bound = torch.stack([math.sqrt(3) / 2 * _rounding_squares(h, gscores, rounding, [k]).sqrt() / temps[k]
                         for k in range(h.num_maps)]).to(gtau.device)
    size = gtau.abs()
    # the largest among the maps with a constraint: an isolated map (which joins whichever part is
    # first) excused the others' by its own size, so that the numbering decided (ca_rev94)
    constrained = torch.tensor(_constrained_maps(h), device=size.device)
    largest = torch.where(constrained, size, torch.zeros_like(size)).max()
    held = torch.maximum(size, largest * tol ** 0.5)
    return [k for k in torch.nonzero(constrained & (bound > tol * held)).flatten().tolist()
            if k not in judged_elsewhere]


class TemperatureGradientWarning(RuntimeWarning):
    """A temperature gradient that the working dtype's solution does not determine, returned NaN."""


def _unresolved_as_nan(gtau: Tensor, unresolved: list[int], map_names, work: torch.dtype) -> Tensor:
    """``gtau`` with NaN for the ``unresolved`` maps, and a warning naming them (in the whole
    graph's numbering, ``map_names``).  NaN, not an error: the backward computes the temperature
    gradient whenever the temperature requires grad, also for a call that asked for the score
    gradients only, which an error refused (ca_rev93); NaN is never a number taken for right."""
    if not unresolved:
        return gtau
    gtau = gtau.clone()
    gtau[unresolved] = math.nan
    _warn_unresolved(f"for map(s) {named(unresolved, map_names)}", work)
    return gtau


def _warn_unresolved(which: str, work: torch.dtype, why: str = "") -> None:
    """The :class:`TemperatureGradientWarning` of a temperature gradient returned NaN."""
    why = why or ("the duals' rounding to it moves it by more (maps whose cells are nearly equal, or hot maps, "
                  "against the duals' size)")
    warnings.warn(
        f"the temperature gradient of method 'dual' {which} cannot be resolved to {gradient_rtol(work):.0e} of "
        f"itself in {work}: {why}; it is NaN; solve in float64 (dtype=torch.float64), or keep those temperatures "
        f"fixed", TemperatureGradientWarning, stacklevel=3)


def _graph_task() -> int | None:
    """The autograd engine's id of the backward pass running now (None where this PyTorch has no
    such call): a ledger entry is judged only by the pass that wrote it."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return None if current is None else int(current())


class _SharingLedger:
    """The float32 temperature gradients of the maps of one solve that share one temperature
    tensor (a 0-d temperature given for every map, one tensor given for several maps), judged
    as the solve hands them on: summed.

    Each backward of the solve (one per part of a graph solved apart, and per retry) records,
    per group of maps that share a tensor, the sum of their components, their magnitudes, the
    squares of the duals' rounding move of that sum (:func:`_rounding_squares`) and its part's
    largest constrained component, tagged with the autograd engine's id of the backward pass;
    the group's :class:`_SharedTemperature` node, which autograd runs after every part's
    backward, judges the sum as :func:`_undetermined_temperatures` judges one map's.  Judged per
    map, a part whose maps were exactly uniform (gradient 0, undetermined) made a shared
    temperature's gradient NaN where the sum was determined (ca_rev94).  The node lies on every
    path from the solve to the user's tensor, so no gradient passes it unjudged: records that do
    not add up to the gradient it receives, and a pass whose records were dropped, give NaN.
    (A hook on the user's own tensor, which would judge the sum over several solves, is not run
    on every path: a gradient taken at a cast of it, or a tensor swapped by ``swap_tensors``,
    came back unjudged, ca_rev102.)"""

    def __init__(self, groups: list[list[int]], temps: Sequence[float], work: torch.dtype):
        self.groups = groups
        self.group_of = {k: i for i, group in enumerate(groups) for k in group}
        self.temps = [temps[group[0]] for group in groups]
        self.work = work
        # (pass, group, sum, magnitude, squares, the part's largest constrained component, shares)
        self.records: list[tuple] = []
        self.dropped: set[int | None] = set()  # passes whose records went (see record)
        self._lock = threading.Lock()

    def record(self, h: Graph, gtau: Tensor, gscores: Sequence[Tensor], rounding: Sequence[Tensor],
               map_names) -> list[int]:
        """Record the groups' shares of one backward (``h`` a part, its maps named ``map_names``
        in the whole graph); return the part's maps that a group judges."""
        whole = list(range(h.num_maps)) if map_names is None else list(map_names)
        mine: dict[int, list[int]] = {}
        for k, name in enumerate(whole):
            if name in self.group_of:
                mine.setdefault(self.group_of[name], []).append(k)
        values = gtau.detach().to(torch.float64).cpu().tolist()
        constrained = _constrained_maps(h)
        largest = max((abs(v) for v, c in zip(values, constrained) if c), default=0.0)
        task = _graph_task()
        new = [(task, group, math.fsum(values[k] for k in maps), math.fsum(abs(values[k]) for k in maps),
                float(_rounding_squares(h, gscores, rounding, maps)), largest, len(maps))
               for group, maps in mine.items()]
        with self._lock:
            self.records.extend(new)
            # every pass's records kept until its node runs (a pass in another thread must not drop
            # this one's: ca_rev100); those of passes that never reach it (asking for the score
            # gradients only) go once _PASSES_KEPT later passes have recorded, and a pass whose
            # records went so is not judged (NaN) if it does reach it (ca_rev101)
            passes = list(dict.fromkeys(r[0] for r in self.records))
            if len(passes) > _PASSES_KEPT:
                kept = set(passes[-_PASSES_KEPT:])
                self.dropped.update(p for p in passes if p not in kept)
                self.records = [r for r in self.records if r[0] in kept]
        return [k for maps in mine.values() for k in maps]

    def judged(self, group: int, grad: Tensor) -> Tensor:
        """``grad`` (the sum autograd formed for the group's tensor), or NaN with a warning where
        the duals' rounding moves it by more than :data:`GRADIENT_RTOL` of itself (of the largest
        component, below its square root), or where this pass's records do not determine it."""
        task = _graph_task()
        with self._lock:
            mine = [r for r in self.records if r[0] == task and r[1] == group]
            self.records = [r for r in self.records if not (r[0] == task and r[1] == group)]
            lost = task in self.dropped
        got = float(grad.detach().double().sum())
        if math.isnan(got):
            return grad
        which = f"for the temperature shared by maps {self.groups[group]}"
        if lost:
            _warn_unresolved(which, self.work, f"the records of this backward pass were dropped when {_PASSES_KEPT} "
                                               f"other passes had recorded")
            return torch.full_like(grad, math.nan)
        total, magnitude = math.fsum(r[2] for r in mine), math.fsum(r[3] for r in mine)
        # autograd adds the shares one by one, in the tensor's dtype: its rounding grows with their
        # number (a fixed 16 eps refused a right sum of 512 shares: ca_rev103)
        shares = sum(r[6] for r in mine)
        if abs(got - total) > (shares + 16) * torch.finfo(grad.dtype).eps * magnitude + torch.finfo(torch.float64).tiny:
            _warn_unresolved(which, self.work, f"its backward passes recorded {total:.6g}, not the {got:.6g} it "
                                               f"received")
            return torch.full_like(grad, math.nan)
        tol = gradient_rtol(self.work)
        bound = math.sqrt(3) / 2 * math.sqrt(math.fsum(r[4] for r in mine)) / self.temps[group]
        held = max(abs(total), max((r[5] for r in mine), default=0.0) * tol ** 0.5)
        if bound > tol * held:
            _warn_unresolved(which, self.work)
            return torch.full_like(grad, math.nan)
        return grad


# How many backward passes' records a ledger keeps that have not reached its node yet.
_PASSES_KEPT = 16


class _SharedTemperature(torch.autograd.Function):
    """``_SharedTemperature.apply(tau, ledger, group) -> tau``: the identity, whose backward hands
    the gradient of the group's shared temperature to :meth:`_SharingLedger.judged`."""

    @staticmethod
    def forward(ctx, tau: Tensor, ledger: _SharingLedger, group: int):
        ctx.ledger, ctx.group = ledger, group
        return tau.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.ledger.judged(ctx.group, grad), None, None


def _sharing_judged(temps: Sequence, work: torch.dtype, options: dict) -> list:
    """``temps`` with every tensor that several maps share (one object, that requires grad, in
    float32 work) passed through a :class:`_SharedTemperature` node, and ``options["sharing"]``
    the ledger their backward records to (None where no tensor is shared or the work is
    float64, whose duals are as exact as the solution).  Shared by identity: one tensor given
    for several maps (``validation.check_temperatures`` promotes it once), a 0-d view or leaf
    view given for every map, not two views of one vector."""
    temps = list(temps)
    options["sharing"] = None
    if work == torch.float64 or not torch.is_grad_enabled():
        return temps
    holders: dict[int, list[int]] = {}
    for k, t in enumerate(temps):
        if isinstance(t, Tensor) and t.requires_grad:
            holders.setdefault(id(t), []).append(k)
    groups = [maps for maps in holders.values() if len(maps) > 1]
    if not groups:
        return temps
    ledger = _SharingLedger(groups, temperature_floats(temps), work)
    options["sharing"] = ledger
    for i, maps in enumerate(groups):
        shared = _SharedTemperature.apply(temps[maps[0]], ledger, i)
        for k in maps:
            temps[k] = shared
    return temps


#: The float64 solve that polishes a narrower solve's duals for its temperature gradient
#: (:func:`_optimum_duals`, on graphs that are not forests or with given maps) stops at this
#: violation, or after ``POLISH_MAX_ITER`` sweeps: started at the float32 duals it took 1 to
#: 17 (benchmarks/study_temperature_gradients.py, 2026-12-06, with and without ``--given``),
#: and given maps rounded apart, which no map pools onto exactly, kept it at the default 1000.
POLISH_TOL = 1e-12
POLISH_MAX_ITER = 100


def _temperature_gradient_in_float64(work: torch.dtype) -> bool:
    """Whether a solve's temperature gradient is formed in float64 at the optimum
    (:func:`_optimum_duals`, :meth:`DualSolveFunction._wide_score_gradients`): in a narrower
    working dtype.  (Switched off, it is formed at the solve's own duals and maps, and judged by
    their rounding, :func:`_undetermined_temperatures`: the tests of that judgement do so.)"""
    return work != torch.float64


def _optimum_duals(scores: Sequence[Tensor], h: Graph, temps: Sequence[float], lam: list[Tensor],
                   given: Sequence[Tensor | None] | None = None) -> tuple[list[Tensor], Tensor]:
    """The optimum's duals in float64 for the log-probabilities of a narrower solve's temperature
    gradient (``scores`` and the solve's duals ``lam`` in float64; ``given``, the given maps'
    probabilities in float64, renormalised, or None), and which samples have them, ``(B,)``
    bool: on a forest without given maps the closed form's
    (:func:`~convex_attention.exact.exact_duals`); otherwise ``lam`` polished by a float64
    solve started at them, to :data:`POLISH_TOL`, where a sample the polish does not bring there
    keeps its own (and the temperature gradient is NaN: formed there it was 26 % off, unwarned,
    on a nearly one-hot map, ca_rev107; with a given map 41-58 % on a hot axial map).  Given maps
    are first made to agree where they hold the same cells
    (:func:`~convex_attention.given_maps.agreeing_given`): rounded apart, no map pools onto them
    all and the polish does not converge (its duals drift without bound; accepted at a small
    violation they were 8.4e17 and the gradient 62 % off, ca_rev111).  A
    float32 solve's duals sit at float32's floor in logit units, about ``eps·τ·|log p|`` in
    score units, and a hot, nearly uniform map's ``log p_k`` (cells ``Δθ/τ`` apart) lost its
    digits to them: up to 12 % off, unwarned (a 16² → 8² chain at τ = (7e4, 2.5e3): 0.2-10 %;
    an axial 16² map at τ up to 1e5; benchmarks/study_temperature_gradients.py)."""
    if h.is_forest and given is None:
        return exact_duals(scores, h, temps), torch.ones(lam[0].shape[0], dtype=torch.bool, device=lam[0].device)
    if given is not None:
        scores = [s if q is None else None for s, q in zip(scores, given)]  # type: ignore[misc]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a sample that misses keeps its own duals
        try:
            result = solve_dual(scores, h, temps, tol=POLISH_TOL, max_iter=POLISH_MAX_ITER, strict=False, init=lam,
                                check_init=False, given=given)
        except (ValueError, ConvergenceError, hessian.ImplicitSolveError):
            return lam, torch.zeros(lam[0].shape[0], dtype=torch.bool, device=lam[0].device)
    done = result["converged"]
    return [torch.where(done.view((-1,) + (1,) * (p.dim() - 1)), p, d)
            for p, d in zip(result["duals"], lam)], done


def _shifted_logits(eta: Tensor, tau: float) -> Tensor:
    """``(η − max η) / τ`` per sample in float64: ``log p`` up to a constant per sample."""
    eta = eta.detach().to(torch.float64)
    return (eta - eta.amax(sample_dims(eta), keepdim=True)) / tau


class DualSolveFunction(torch.autograd.Function):
    """``autograd.Function``: forward = per-sample dual solve, backward = implicit gradient.

    ``DualSolveFunction.apply(h, temps, options, info, *scores) -> M probability tensors,
    then E dual tensors`` (the mean-zero multipliers λ*, differentiable too);
    ``temps``: ``M`` floats, or a ``(M,)`` tensor whose gradient the backward returns
    (``∂L/∂τ_k = −Σ θ̄_k log p_k``, :func:`convex_attention.exact.temperature_gradient`);
    ``info`` (a dict) receives the solver's report.

    The backward never differentiates the sweeps: it is the implicit-function gradient at
    the solution, by the tree VJP on forests when only the probabilities carry a gradient,
    and by the dual's Hessian otherwise (:func:`convex_attention.hessian.implicit_vjp`; a
    gradient on λ* joins its right-hand side: ``dλ*/dθ_k = −(∇²g)⁻¹ A_kᵀ J_k``).

    With ``options["given_mask"]`` (one bool per map), the inputs of the given maps are their
    probabilities ``q_k`` (returned as their own outputs); their gradient is
    ``v_k − A_k w`` (docs/math.md §7.6) and always goes through the Hessian.
    """

    @staticmethod
    def forward(ctx, h: Graph, temps, options: dict, info: dict, *inputs: Tensor):
        floats = tuple(temperature_floats(temps))
        if isinstance(temps, Tensor):
            ctx.tau_like = (temps.dtype, temps.device)
        options = dict(options)
        mask = options.pop("given_mask", None)
        ctx.map_names = options.pop("map_names", None)  # the maps' numbers in the whole graph (a component)
        ctx.sharing = options.pop("sharing", None)  # maps that share a temperature tensor: judged summed
        scores, given = _split_given(inputs, mask) if mask is not None else (list(inputs), None)
        returned: dict = {}
        result = solve_dual(scores, h, floats, given=given, _returned=returned, **options)
        if returned:  # every sample stopped where its maps were measured: those maps
            probs, cond = returned["probs"], _conditionals(h, returned["etas"], floats)
        else:
            # the maps at the duals from the scores the solver solved at: centred once, as
            # solve_dual centres them (centring by the midpoint is not idempotent to the last
            # bit, and a cold map magnifies the difference: a review)
            centred, _ = _centred_scores(with_given_scores(scores, given))
            probs, cond = dual_probs(centred, result["duals"], h, floats, given)
        probs = [p.clone() if given is not None and given[k] is not None else p for k, p in enumerate(probs)]
        log_probs = []
        if ctx.needs_input_grad[1]:
            # for the temperature gradient, log p_k up to a constant per sample: the logits
            # η_k = θ_k + A_k λ* formed in float64 from the scores and duals (exact there, for a
            # float32 solve too), over τ_k.  The log of the probabilities loses a hot map's
            # differences, and float32 logits a map's whose cells are nearly equal (11 % off, a
            # two-cell map at p = (0.49999997, 0.5): temperature_gradient)
            wide = [s.detach().to(torch.float64) for s in with_given_scores(scores, given)]
            lam = [d.detach().to(torch.float64) for d in result["duals"]]
            in_float64 = _temperature_gradient_in_float64(probs[0].dtype)
            wide_given = None
            if in_float64:
                if given is not None:  # each renormalised in float64 (a float32 map's sum is 1 ± ulps), agreeing
                    wide_given = [None if q is None else normalised(q.detach().to(torch.float64)) for q in given]
                    wide_given = agreeing_given(h, wide_given) or wide_given
                lam, exact = _optimum_duals(wide, h, floats, lam, wide_given)
                unpolished = torch.nonzero(~exact).flatten().tolist()
            etas = reparameterized_logits(wide, lam, h)
            log_probs = [_shifted_logits(e, t) for e, t in zip(etas, floats)]
            log_probs += _dual_rounding(lam, torch.finfo(probs[0].dtype).eps)
            if in_float64:
                # and the maps at those duals in float64, for the temperature gradient's score
                # gradients (:meth:`_wide_score_gradients`)
                wide_probs, wide_cond = dual_probs(wide, lam, h, floats, wide_given)
                log_probs += [*wide_probs, *wide_cond]
        duals = result.pop("duals")
        info.update(result)
        ctx.h, ctx.temps, ctx.M, ctx.mask = h, floats, len(probs), mask
        ctx.conditionals = len(cond)
        ctx.wide = len(log_probs) > len(probs) + h.num_edges
        ctx.unpolished = unpolished if ctx.wide else []  # the samples whose duals are not the optimum's
        ctx.sample_names = options.get("sample_names")
        ctx.save_for_backward(*probs, *cond, *log_probs)
        ctx.set_materialize_grads(False)  # None for an output no loss used: the fast paths stay
        return (*probs, *duals)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        if torch.is_grad_enabled():
            # create_graph=True: the derivative of this backward is asked for, and the implicit
            # gradient is not differentiated; an error, never a silent None or zero
            raise NotImplementedError(
                "second-order differentiation through method 'dual' is not supported: its backward is the "
                "implicit gradient at the solution, which is not itself differentiated (create_graph=True); "
                "on a forest of maps (a hierarchy, a star) method 'exact' gives the same solution and supports "
                "second-order differentiation")
        saved = ctx.saved_tensors
        with torch.autocast(device_type=saved[0].device.type, enabled=False):  # as the forward
            return DualSolveFunction._backward(ctx, saved, grads)

    @staticmethod
    def _wide_score_gradients(ctx, wide_probs, wide_cond, grads, gdual) -> tuple[list[int], list[Tensor]]:
        """The score gradients in float64 at the optimum's maps (``wide_probs``, ``wide_cond``:
        the forward's, at :func:`_optimum_duals`), for a narrower solve whose temperature
        requires grad: ``(rows, gradients)`` of the samples whose float64 system is solved
        (:func:`~convex_attention.hessian.resolved_vjp`: not those of saturated maps,
        singular to float64 precision, ca_rev108; per sample, ca_rev110).
        The temperature gradient is formed from them: the backward's at the returned float32
        maps left it off (their small cells off the optimum's, ca_rev104; the rounding of a
        float32 θ̄'s per-sample sums, which the constant of ``log p`` multiplies, ca_rev105); and
        they are returned for the scores too, in place of that backward's (at most about
        ``tol·‖v‖/τ`` apart: the gradient at the optimum against that at the returned maps),
        which would cost a second solve."""
        wide_grads = [g.detach().to(torch.float64) for g in grads]
        if ctx.h.is_forest and gdual is None and ctx.mask is None:
            return list(range(len(wide_probs[0]))), tree_backward(ctx.h, wide_probs, wide_cond, ctx.temps, wide_grads)
        return resolved_vjp(ctx.h, wide_probs, hessian_temperatures(ctx.temps, ctx.mask), wide_grads,
                            dual_grads=gdual, given=ctx.mask, sample_names=ctx.sample_names,
                            measured=DualSolveFunction._measured(ctx))

    @staticmethod
    def _measured(ctx) -> list[bool] | None:
        """The maps whose gradients the caller uses (``hessian.implicit_vjp``'s ``measured``): every
        scored map (the temperature gradient contracts them all), and a given map only where its
        probabilities require grad (given maps that hold the same cells have no unique gradient)."""
        if ctx.mask is None:
            return None
        return [not given or bool(ctx.needs_input_grad[4 + k]) for k, given in enumerate(ctx.mask)]

    @staticmethod
    def _backward(ctx, saved, grads):
        probs = saved[: ctx.M]
        gdual: tuple | None = grads[ctx.M:]
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(probs, grads[: ctx.M]))
        if gdual is not None and all(g is None for g in gdual):
            gdual = None
        extra = saved[ctx.M + ctx.conditionals:]
        batch = probs[0].shape[0]
        wide_probs = extra[ctx.M + ctx.h.num_edges:ctx.M + ctx.h.num_edges + ctx.M]  # () but on the float64 path
        wide_rows: list[int] = []
        if ctx.needs_input_grad[1] and ctx.wide:
            wide_rows, wide_scored = DualSolveFunction._wide_score_gradients(
                ctx, wide_probs, extra[ctx.M + ctx.h.num_edges + ctx.M:], grads, gdual)
        # the samples whose score gradients come from the backward at the returned maps: every
        # sample, but where the float64 backward at the optimum gave them
        resolved = set(wide_rows)
        rest = [i for i in range(batch) if i not in resolved]
        index = torch.tensor(rest, dtype=torch.long, device=probs[0].device)
        narrow: list[Tensor] = []
        if not wide_rows and ctx.mask is None and ctx.h.is_forest and gdual is None:
            narrow = tree_backward(ctx.h, probs, saved[ctx.M:ctx.M + ctx.conditionals], ctx.temps, grads)
        elif rest:
            sub = index if wide_rows else None  # (None, the common case: the whole batch)
            narrow = implicit_vjp(ctx.h, _rows(probs, sub), hessian_temperatures(ctx.temps, ctx.mask),
                                  _rows(grads, sub), given=ctx.mask,
                                  dual_grads=None if gdual is None else _rows(gdual, sub),
                                  sample_names=ctx.sample_names if sub is None else named(rest, ctx.sample_names),
                                  widen=True, measured=DualSolveFunction._measured(ctx))
        if wide_rows:
            wide_full = _in_batch(wide_scored, wide_rows, batch)  # float64, zero at the rest
            gscores = [w.to(p.dtype) for w, p in zip(wide_full, probs)]
            if rest:
                gscores = [gs.index_copy(0, index, n.to(gs.dtype)) for gs, n in zip(gscores, narrow)]
        else:
            gscores = narrow
        gtau = None
        if ctx.needs_input_grad[1]:
            dtype, device = ctx.tau_like
            log_probs, rounding = extra[:ctx.M], extra[ctx.M:ctx.M + ctx.h.num_edges]
            tau_probs, scored = probs, gscores
            if wide_rows:
                # each sample's θ̄ and maps in float64: the optimum's where its float64 backward was
                # solved, else those at the returned maps, judged then as the float32 solution's (a
                # float64 system that fails is one of saturated maps, whose temperature gradient its
                # rounding leaves alone: NaN there refused right zeros, ca_rev108)
                tau_probs, scored = list(wide_probs), wide_full
                if rest:
                    tau_probs = [w.index_copy(0, index, p[index].to(w.dtype)) for w, p in zip(wide_probs, probs)]
                    scored = [w.index_copy(0, index, n.to(w.dtype)) for w, n in zip(wide_full, narrow)]
                rounding = _judged_samples_only(rounding, sorted(set(ctx.unpolished) | set(rest)))
            # a given map has no temperature in the problem: its share is zero
            scored = [torch.zeros_like(gs) if ctx.mask is not None and ctx.mask[k] else gs
                      for k, gs in enumerate(scored)]
            gtau = temperature_gradient(tau_probs, scored, log_probs)
            # a sample whose polish missed, formed at its float32 duals, may be far off (a nearly
            # one-hot map 26 % off, unwarned: ca_rev107), which the duals' rounding check does not
            # see; one whose score gradients are all zero adds nothing (a padded sample made the
            # batch's gradient NaN: ca_rev109)
            missed = [i for i in ctx.unpolished if any(bool(gs[i].ne(0).any()) for gs in scored)]
            if missed:
                gtau = torch.full_like(gtau, math.nan)
                _warn_unresolved(f"for map(s) {named(list(range(ctx.M)), ctx.map_names)}", probs[0].dtype,
                                 f"the float64 polish of the float32 duals did not converge for sample(s) "
                                 f"{named(missed, ctx.sample_names)}")
            if probs[0].dtype != torch.float64:  # (in float64 the duals are as exact as the solution is)
                summed = () if ctx.sharing is None else ctx.sharing.record(ctx.h, gtau, scored, rounding,
                                                                            ctx.map_names)
                gtau = _unresolved_as_nan(gtau, _undetermined_temperatures(ctx.h, gtau, scored, rounding, ctx.temps,
                                                                           probs[0].dtype, summed), ctx.map_names,
                                          probs[0].dtype)
            gtau = gtau.to(device=device, dtype=dtype)
        return (None, gtau, None, None, *gscores)
