r"""The exact consistent attention in closed form (docs/design.md §3), on any forest of maps.

Problem (for every sample of the batch), on a :class:`~convex_attention.graph.Graph` whose maps
have at most one coarsening each (a forest of rooted trees: chains, stars)::

    maximise_p   Σ_k <θ_k, p_k> + τ_k H(p_k)
    subject to   p_k ∈ Δ_{n_k},   P_e p_c = p_b   for every edge e = (c → b)

Each tree is solved by an upward pass of block log-sum-exps, which collects, for every coarse
cell, the value of its best sub-trees, and a downward pass that multiplies each coarse
probability by the within-block conditionals.  With maps visited finest first::

    m_b = θ_b + Σ_{c → b} A_c,        T_b = τ_b + Σ_{c → b} T_c       (leaves: m = θ, T = τ)
    A_c = T_c · blocklogsumexp_c(m_c / T_c)                            (per edge c → b)
    p_root = softmax(m_root / T_root),   p_c = P_cᵀ p_b ⊙ q_c,   q_c = exp((m_c − P_cᵀA_c) / T_c)

For the chain (:class:`~convex_attention.hierarchy.Hierarchy`) this is ``m_{k+1} = θ_{k+1} + A_k``,
``T_{k+1} = T_k + τ_{k+1}``.

Layers, as in entmax: :func:`exact_forward` / :func:`tree_backward` are the kernels,
:class:`ExactAttentionFunction` the ``autograd.Function`` with the analytic backward,
:func:`exact_attention` the functional, and ``nn.ConsistentAttention`` the module.

The backward is the vector–Jacobian product of the solution map θ ↦ p*(θ), written as
reverse-mode through the two passes above: O(Σ n_k), no graph of the forward is kept.
Temperatures (floats, or a ``(M,)`` tensor that requires grad): the solution depends on
``τ`` only through the optimality condition ``θ_k − τ_k (1 + log p_k) + … = 0``, so a change
of ``τ_k`` acts like the score change ``−log p_k · dτ_k`` (the constant is absorbed: one
constant per map moves nothing).  By the implicit function theorem
``∂L/∂τ_k = −Σ_{b,i} θ̄_k(b, i) · log p_k(b, i)`` with ``θ̄_k = ∂L/∂θ_k`` from the tree VJP:
one extra pass per map, only when the temperature requires grad.  (Differentiating the
closed form itself, where ``τ`` enters through the sub-tree temperatures ``T_k``, gives the
same numbers but would need the forward's graph; the tests check both against finite
differences.)

A graph with a map of two coarsenings has no closed form: every function here refuses it,
naming the map, and points to the ``"dual"`` method.

Numerics: block maxima of ``m_k`` (and each root's maximum) are subtracted *before*
dividing by ``T_k``, so neither ±1e4 scores nor a tiny temperature overflow, and the upward
pass carries ``m_k`` in score units (``A_c = blockmax + T_c log Σ e``), so a huge
temperature does not either: the output is finite for every temperature that
``validation.temperature_range`` accepts.  Half-precision inputs are computed in float32.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._ops import (
    FirstOrderOnly,
    SecondOrderGuard,
    centre,
    compute_dtype,
    divide_by_temperature,
    gradient_rtol,
    guard_below_floor,
    less_max,
    log_at_least_one,
    sample_dims,
    second_order_temperature_floor,
    temperature_floats,
)
from .graph import Graph

__all__ = ["exact_forward", "tree_backward", "ExactAttentionFunction", "exact_attention",
           "exact_log_probs", "exact_duals", "cumulative_temperatures", "subtree_temperatures", "solve_exact",
           "temperature_gradient", "require_forest", "second_order_temperature_floor", "second_order_ratio",
           "second_order_ratio_limit", "SECOND_ORDER_ROUNDING"]


#: How the refusals of a second derivative name this method.
WHO = "method 'exact'"


def require_forest(g: Graph, who: str = WHO) -> None:
    """ValueError naming the first map with two coarsenings when ``g`` is not a forest."""
    reason = g.not_forest_reason()
    if reason is not None:
        raise ValueError(f"{who} solves forests only (every map with at most one coarsening: chains, stars), "
                         f"but {reason}; use method 'dual' (or 'cvxpylayers') for this graph")


def cumulative_temperatures(temps: Sequence) -> list:
    """``T_k = τ_0 + … + τ_k``: the temperature of the sub-tree rooted at level ``k`` of a
    chain (floats, or 0-d tensors where ``temps`` holds tensors)."""
    out, acc = [], 0.0
    for t in temps:
        acc = acc + t  # not +=: tensors would be updated in place
        out.append(acc)
    return out


def subtree_temperatures(g: Graph, temps: Sequence) -> list:
    """``T_b = τ_b + Σ_{c → b} T_c``: the temperature of the sub-tree rooted at each map of a
    forest (floats, or 0-d tensors where ``temps`` holds tensors); on a chain,
    :func:`cumulative_temperatures`."""
    T: list = [None] * g.num_maps
    for k in g.order:
        acc = temps[k]
        for e in g.in_edges[k]:
            acc = acc + T[g.edges[e][0]]  # not +=: tensors would be updated in place
        T[k] = acc
    return T


def exact_forward(scores: Sequence[Tensor], g: Graph, temps: Sequence[float]):
    """Kernel of the closed form.

    Args:
        scores: ``M`` tensors, ``scores[k]``: ``(B, *g.shapes[k])``, float32/float64.
        g: a forest of maps (a :class:`~convex_attention.hierarchy.Hierarchy`, a star, …).
        temps: ``M`` positive floats.

    Returns:
        ``(probs, cond, blocksum)``: ``probs[k]`` ``(B, *shapes[k])``; for every edge
        ``e = (c → b)``, ``cond[e]`` ``(B, *shapes[c])`` holds ``exp((m_c − blockmax) / T_c)``
        and ``blocksum[e]`` ``(B, *shapes[b])`` its block sums, so the within-block
        conditional is ``q_c = cond[e] / P_eᵀ blocksum[e]`` (never materialised: each
        broadcast to the fine grid costs a pass).
    """
    require_forest(g)
    T = subtree_temperatures(g, temps)
    E = g.num_edges
    cond: list = [None] * E
    blocksum: list = [None] * E
    m: list = [None] * g.num_maps
    peaks: list = [None] * E  # per edge, its block maxima and T log Σ: the message before its centring
    dead, leaf_max = _dead_from_above(g, scores)
    for k in g.order:
        mk = scores[k]
        if g.in_edges[k]:
            mk = _met_messages(mk, [peaks[e] for e in g.in_edges[k]], dead[k])[0]
        m[k] = mk
        e = g.coarsening(k)
        if e is None:
            continue
        raw = leaf_max.pop(e) if e in leaf_max else g.block_max(mk, e)
        mmax = raw.clamp_min(torch.finfo(raw.dtype).min)  # (not in place: over one-cell blocks raw may be mk)
        # (m − blockmax) ≤ 0 before the division: no overflow at any accepted T_k
        ex = g._combine(mk, mmax, e, torch.sub)
        if T[k] != 1.0:
            ex.div_(T[k])
        ex.exp_()
        s = g.aggregate(ex, e)
        peaks[e] = (mmax, T[k] * s.log())
        # a block's sum is >= 1 (its maximum contributes exp(0) = 1) unless every cell of it is
        # masked (-inf): then 0, and its coarse cell has probability 0, which the floor keeps
        # from turning into 0/0 in p_c = cond · p_b / blocksum and in the backward
        # (not in place: over one-cell blocks the sums may be a view of ex)
        cond[e], blocksum[e] = ex, s.clamp_min(1.0)
    probs: list = [None] * g.num_maps
    for r in g.roots:
        flat = m[r].flatten(1)
        probs[r] = torch.softmax(torch.sub(flat, flat.amax(1, keepdim=True)).div_(T[r]), dim=1).view_as(m[r])
    for k in reversed(g.order):
        e = g.coarsening(k)
        if e is not None:
            probs[k] = g._combine(cond[e], probs[g.edges[e][1]] / blocksum[e], e, torch.mul)
    return probs, cond, blocksum


def _dead_from_above(g: Graph, scores: Sequence[Tensor]) -> tuple[list, dict]:
    """``(dead, leaf_max)``: per map that has finer maps and a coarsening, its cells that hold no
    mass because of the maps above it (boolean, shaped like ``scores[k]``; ``None`` elsewhere): a
    cell under a masked (−∞) coarse cell, or under one that a sibling's wholly masked block rules
    out, to the root.  A map's own masks and its finer maps' (a −∞ message) are seen by
    :func:`_met_messages` itself; these it cannot see before the pass reaches the maps above (a
    huge score under a cell masked two levels up rounded every other cell: ca_rev148).

    Coarse maps alone are read: on a tree of two levels (a chain of two maps, a star) nothing is
    computed; where no map above another has two finer maps, the masks of the maps above are
    all there is to see.  Only where it has (siblings) are the siblings' sub-trees read, from the
    coarse maps and the leaves' block maxima, which the pass then uses in turn (``leaf_max``:
    ``{e: block maxima of the leaf's scores}`` per edge out of a leaf; else empty, and the pass
    takes each leaf's maxima just before it reads the leaf again, while it is in cache)."""
    dead: list = [None] * g.num_maps
    middle = {k for k in range(g.num_maps) if g.in_edges[k] and g.coarsening(k) is not None}
    if not middle:
        return dead, {}
    above = {g.edges[g.coarsening(k)][1] for k in middle}  # type: ignore[index]
    siblings = any(len(g.in_edges[b]) > 1 for b in above)
    leaf_max: dict = {}
    down: list = [None] * g.num_maps  # finest first: a masked cell, and (siblings) one dead from below
    if siblings:
        leaf_max = {e: g.block_max(scores[c], e) for c in range(g.num_maps) if not g.in_edges[c]
                    for e in g.out_edges[c]}
    for k in g.order:
        if not g.in_edges[k] or not (siblings or k in above):  # (a map's own masks are its own to see)
            continue
        d = torch.isneginf(scores[k].detach())
        for below in g.in_edges[k] if siblings else ():
            c = g.edges[below][0]
            d = d | (torch.isneginf(leaf_max[below].detach()) if down[c] is None
                     else g.block_max((~down[c]).to(scores[c].dtype), below) == 0)
        down[k] = d
    for k in reversed(g.order):  # coarsest first: a cell under a dead one
        up = g.coarsening(k)
        if up is None or k not in middle:
            continue
        b = g.edges[up][1]
        src = down[b] if dead[b] is None else down[b] | dead[b]
        dead[k] = g.broadcast(src, up)
    return dead, leaf_max


def _met_messages(score: Tensor, parts: Sequence[tuple], dead: Tensor | None) -> tuple[Tensor, list]:
    """``m_b = θ_b + Σ_c A_c`` for a coarse map, from ``parts``: per incoming edge its block maxima
    and ``T_c log Σ``, with one constant per map and per message taken out (which moves no
    solution and is absent from the centred duals): at the live cell where ``θ_b`` plus every
    message is largest (not ``dead``: :func:`_dead_from_above`), ``θ_b`` and each message's block
    maximum are subtracted exactly, before the message meets the scores.

    Why: added in first, an offset's rounding (ε·|offset|) was divided by the small sub-tree
    temperatures and moved the maps (float32 scores 1024 + 2⁻¹²·δ at τ = 1e-3: 5e-3 off; a
    review); taken at a cell that holds no mass (a masked coarse cell, a wholly masked block, a
    sibling's wholly masked block, a mask further up) it rounded every other cell to the spacing
    of a huge score there (float32 1e7: 0.378 for 0.549, two cells' order reversed; ca_rev126,
    ca_rev147, ca_rev148).  The offsets are added together before any ``T_c log Σ``: at another
    cell ``θ_b − θ_b(at)`` and a block maximum's ``mmax − mmax(at)`` may be large and cancel,
    and ``T log Σ`` added to one first was rounded to their spacing (a block shift of 1024 that
    its coarse cell cancels moved float32 maps 3.3e-3 at τ = 1e-3: ca_rev163).  Returns
    ``(m_b, offsets)``: ``m_b`` shaped like ``score``, and per part its block maxima less their
    offset (the centred message is that plus the part's ``T log Σ``)."""
    batch = score.shape[0]
    total = score.detach().reshape(batch, -1)
    for mmax, log_sum in parts:
        total = total + mmax.detach().reshape(batch, -1) + log_sum.detach().reshape(batch, -1)
    if dead is not None:
        total = total.masked_fill(dead.reshape(batch, -1), -math.inf)
    at = total.argmax(1, keepdim=True)
    # (a coarse map every cell of which holds no mass is infeasible: its offsets are its largest
    # block maxima, and none for its scores, as before)
    feasible = torch.isfinite(total.gather(1, at))
    leading = score.detach().reshape(batch, -1).gather(1, at)
    leading = torch.where(feasible & torch.isfinite(leading), leading, torch.zeros_like(leading))
    shape = (batch,) + (1,) * (score.dim() - 1)
    m = score - leading.view(shape)
    offsets = []
    for mmax, _ in parts:
        flat = mmax.detach().reshape(batch, -1)
        lead = torch.where(feasible, flat.gather(1, at), flat.amax(1, keepdim=True))
        offsets.append(mmax - lead.view(shape))
        m = m + offsets[-1]
    for _, log_sum in parts:
        m = m + log_sum
    return m, offsets


def tree_backward(g: Graph, probs: Sequence[Tensor], cond: Sequence[Tensor],
                  temps: Sequence[float], grads: Sequence[Tensor],
                  blocksum: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Vector–Jacobian product of the solution map θ ↦ p*(θ) at a solution, on a forest.

    Needs only the solution ``probs`` and, per edge ``e = (c → b)``, the within-block
    conditionals ``q_c = p_c / P_eᵀ p_b``, given as ``cond[e] / P_eᵀ blocksum[e]`` (or as
    ``cond`` itself when ``blocksum`` is None).  So it is also the implicit-function gradient
    of any solver that reaches the optimum (the ``"dual"`` method uses it on forests).

    Args:
        grads: ``M`` tensors, ``∂loss/∂p_k`` shaped like ``probs[k]``.

    Returns:
        ``M`` tensors ``∂loss/∂θ_k``; each sums to zero per sample (a constant added to a
        map's scores does not move the solution).
    """
    require_forest(g, "tree_backward")
    T = subtree_temperatures(g, temps)
    inverse = [1.0 / t for t in T]
    # G_k is carried scaled by S_k = 1/T_k where T_k >= 1 (the division then costs no pass of its
    # own and cannot overflow) and unscaled where T_k < 1: there 1/T_k (up to 8.5e37 in float32,
    # 4.5e307 in float64) times |G_k| overflowed to inf, and inf - inf made every gradient NaN where
    # the true one is finite (0 for a one-hot solution at the smallest accepted temperature);
    # such a map's difference is divided by T_k after its cancelling terms are subtracted
    wide = [float(t.detach() if isinstance(t, Tensor) else t) >= 1.0 for t in T]
    scale = [inv if w else 1.0 for inv, w in zip(inverse, wide)]
    after = [1.0 if w else inv for inv, w in zip(inverse, wide)]
    # under grad mode (a backward that builds its own graph) nothing is updated in place, nor under
    # vmap (jacobian(vectorize=True), is_grads_batched): an unused map's gradient is an unbatched
    # zero there, and adding batched terms into it in place raised (ca_rev126)
    in_place = not torch.is_grad_enabled() and not any(_is_vmapped(x) for x in grads)
    # upward: Gs_k = S_k G_k, G_k = p_k ⊙ ∂L/∂p_k + Σ_{c → k} P_c G_c, scaled as it is formed;
    # pooled[e] = P_e Gs_c, the child's scaled block sums
    G: list = [None] * g.num_maps
    pooled: list = [None] * g.num_edges
    for k in g.order:
        if isinstance(scale[k], float):
            gk = torch.addcmul(probs[k].new_zeros(()), probs[k], grads[k], value=scale[k]).contiguous()
        else:
            gk = (probs[k] * grads[k]).mul_(scale[k]).contiguous()
        for c in g.in_edges[k]:
            child = pooled[c] * (scale[k] / scale[g.edges[c][0]])  # S_k P_c G_c, on the coarse map
            gk = gk.add_(child) if in_place else gk + child
        G[k] = gk
        e = g.coarsening(k)
        if e is not None:
            pooled[e] = g.aggregate(gk, e)
    out: list = [None] * g.num_maps
    for r in g.roots:
        top = G[r]
        out[r] = top - probs[r] * top.sum(sample_dims(top), keepdim=True)
        if not wide[r]:
            out[r] = out[r] * after[r]
    for k in reversed(g.order):
        e = g.coarsening(k)
        if e is None:
            continue
        # θ̄_c = Gs_c − q_c ⊙ P_eᵀ (P_e Gs_c) + q_c ⊙ P_eᵀ θ̄_b: the two terms that cancel where a
        # block is one-hot cancel first (exactly: the block's sum is its one cell there), and the
        # coarse gradient θ̄_b is added after; formed as G_c/T_c + q_c ⊙ P_eᵀ(θ̄_b − P_e G_c/T_c),
        # θ̄_b was lost below ε·|G_c|/T_c (float32 at τ = (1e-6, 1): a fine map's gradient 7 % off,
        # a review). Gs is scaled by one reciprocal, so both cancelling terms carry its rounding.
        pooled_e, coarse = pooled[e], out[g.edges[e][1]]
        if blocksum is not None:
            pooled_e, coarse = pooled_e / blocksum[e], coarse / blocksum[e]
        if in_place:
            gk = G[k]
            g._fine_view(gk, e).addcmul_(g._fine_view(cond[e], e), g._coarse_view(pooled_e, e), value=-1.0)
            if not wide[k]:
                gk.mul_(after[k])
            g._fine_view(gk, e).addcmul_(g._fine_view(cond[e], e), g._coarse_view(coarse, e))
        else:
            gk = ((G[k] - g._combine(cond[e], pooled_e, e, torch.mul)) * after[k]
                  + g._combine(cond[e], coarse, e, torch.mul))
        out[k] = gk
    return out


def _is_vmapped(x: Tensor) -> bool:
    """Whether ``x`` is batched by a vmap: ``torch.vmap``'s, or the one ``torch.autograd.grad``
    runs for ``is_grads_batched`` (``jacobian(vectorize=True)``), by functorch's checks where torch
    has them."""
    functorch = getattr(torch._C, "_functorch", None)
    checks = [getattr(functorch, name, None) for name in ("is_batchedtensor", "is_legacy_batchedtensor")]
    return any(bool(check(x)) for check in checks if check is not None)


def _log_floor(dtype: torch.dtype) -> float:
    """Just below the log of ``dtype``'s smallest subnormal number: where a probability is 0 its
    gradient is too, and ``0 · (−∞)`` would be NaN (:func:`temperature_gradient`)."""
    finfo = torch.finfo(dtype)
    return math.log(finfo.tiny * finfo.eps) - 1


def temperature_gradient(probs: Sequence[Tensor], gscores: Sequence[Tensor],
                         log_probs: Sequence[Tensor] | None = None) -> Tensor:
    """``∂L/∂τ_k = −Σ_{b,i} θ̄_k(b, i) · log p_k(b, i)``: ``(M,)`` (see the module docstring).

    Holds at the optimum of any graph (the implicit function theorem needs only the
    optimality condition).  ``log_probs``: each map's ``log p_k`` up to one constant per
    sample, formed from the logits (:func:`exact_log_probs`, or the dual's ``η_k / τ_k``);
    None: the log of ``probs``.  The log of rounded probabilities is not enough where a map is
    hot: its cells' log-probabilities differ by ``Δθ / τ``, which the rounding of ``p`` (``eps``
    relative) swamps (float32, a chain with τ = (1e4, 1): 4.5 % off; (1e6, 1): 560 %).
    ``θ̄_k`` vanishes wherever ``p_k`` underflows to zero, so ``log p_k`` is floored just below the
    log of the dtype's smallest subnormal number, where ``0 · (−∞)`` would be NaN (floored at the
    smallest normal number, a subnormal probability's term was cut: 1.6 % off at log p = −720 in
    float64, ca_rev92).  ``θ̄_k`` sums
    to zero per sample, so one constant per sample moves nothing: each sample's largest
    ``log p_k`` comes off first, so that the rounding of that sum (about 1000 eps of the terms in
    float32) is not multiplied by the log of the dominant cells into a result that is itself a
    small difference (3.5 % off at τ = (2.5e-3, 500) in float32: ca_rev87).
    """
    out = []
    for k, (p, g) in enumerate(zip(probs, gscores)):
        if log_probs is None:
            log_p = p.clamp_min(torch.finfo(p.dtype).tiny).log()
        else:
            log_p = log_probs[k]
        log_p = (log_p - log_p.amax(sample_dims(log_p), keepdim=True)).clamp_min(_log_floor(log_p.dtype))
        out.append(-(g.to(log_p.dtype) * log_p).sum())
    return torch.stack(out)


class ExactAttentionFunction(torch.autograd.Function):
    """``autograd.Function``: forward = closed form, backward = analytic tree VJP.

    ``ExactAttentionFunction.apply(g, temps, *scores) -> tuple of M probability tensors``.
    ``temps``: ``M`` positive floats, or a ``(M,)`` tensor whose gradient the backward
    returns (:func:`temperature_gradient`).  Scores must be float32 or float64 (see
    :func:`exact_attention` for other dtypes).

    Second order: a backward asked to build its own graph (``create_graph=True``, e.g. for
    Hessian–vector products) differentiates the closed form written in differentiable
    torch operations (:func:`exact_log_probs`), so every higher derivative, in the scores
    and in a tensor temperature, is the closed form's own.  An ordinary backward takes the
    analytic tree VJP and keeps no graph.
    """

    @staticmethod
    def forward(ctx, g: Graph, temps, *scores: Tensor):
        tau_tensor = isinstance(temps, Tensor)
        floats = tuple(temperature_floats(temps))
        if tau_tensor:
            ctx.tau_like = (temps.dtype, temps.device)
        probs, cond, blocksum = exact_forward(scores, g, floats)
        ctx.g, ctx.temps, ctx.M, ctx.E, ctx.tau_tensor = g, floats, len(probs), len(cond), tau_tensor
        # the inputs too, for a backward that builds its own graph (second order)
        ctx.save_for_backward(*probs, *cond, *blocksum, *scores, *((temps,) if tau_tensor else ()))
        return tuple(probs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        M, E = ctx.M, ctx.E
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the derivative of this backward is asked for
            return _differentiable_backward(ctx, saved[M + 2 * E:M + 2 * E + M], saved[-1] if ctx.tau_tensor
                                            else ctx.temps, grads)
        gscores = tree_backward(ctx.g, saved[:M], saved[M:M + E], ctx.temps, grads, saved[M + E:M + 2 * E])
        gtau = None
        if ctx.needs_input_grad[1]:
            dtype, device = ctx.tau_like
            # log p from the closed form of the scores, in float64 (the log of the returned
            # probabilities loses a hot map's differences: temperature_gradient)
            scores = [s.to(torch.float64) for s in saved[M + 2 * E:2 * M + 2 * E]]
            if saved[0].dtype == torch.float64:
                log_probs, probs, tau_scores = exact_log_probs(scores, ctx.g, ctx.temps), saved[:M], gscores
            else:
                # and the score gradients it is formed from, in float64 too, from the same upward
                # pass: a float32 backward's per-sample sums carry its rounding, which the constant
                # of log p multiplies, and no one constant is right wherever that rounding sits
                # (ca_rev105, ca_rev106)
                log_probs, probs, cond = _closed_form_in_float64(scores, ctx.g, ctx.temps)
                tau_scores = tree_backward(ctx.g, probs, cond, ctx.temps, [x.to(torch.float64) for x in grads])
            gtau = temperature_gradient(probs, tau_scores, log_probs)
            gtau = gtau.to(device=device, dtype=dtype)
        return (None, gtau, *gscores)


def _differentiable_backward(ctx, scores: Sequence[Tensor], temps, grads: Sequence[Tensor]) -> tuple:
    """The vector–Jacobian product of :class:`ExactAttentionFunction` as a differentiable
    function of the scores, the temperatures and ``grads``: :func:`tree_backward` and the
    temperature identity evaluated on the closed form written in torch operations
    (:func:`_log_terms`), so that autograd can differentiate it again.

    The same VJP formulas as the first-order backward, not autograd through the closed form:
    that formed ``∂p/∂θ`` from a term divided by τ and one multiplied by a rounded ``1/τ``,
    which cancel only up to ``ε·|grad|/τ`` where the solution is one-hot (5.9e284 in float64
    at τ = 1e-300, 2.4e-4 in float32 at τ = 1e-3, where the true gradient is 0).
    """
    g = ctx.g
    tau = [temps[k] for k in range(ctx.M)] if ctx.tau_tensor else list(temps)
    dtype = scores[0].dtype
    # below the floor the second derivatives pass through 1/τ² (inf) times exact zeros: NaN, where
    # the true value is about 0 (a review: Hessian-vector products at τ 1e-20 in float32); the
    # first derivatives computed here stay right, a second one that overflows raises instead
    n, m = len(scores), len(grads)
    guarded = guard_below_floor([*scores, *grads, *(tau if ctx.tau_tensor else [])], ctx.temps, dtype, WHO,
                                SecondOrderGuard)
    scores, grads = guarded[:n], guarded[n:n + m]
    if ctx.tau_tensor:
        tau = guarded[n + m:]
    scores, tau = _guard_wide_ratio(scores, g, ctx.temps, tau if ctx.tau_tensor else None, SecondOrderGuard,
                                    compute_dtype(dtype))
    if not ctx.tau_tensor:
        tau = list(temps)
    # formed in float64 whatever the scores' dtype (their rounding grows as eps·R², and float32's
    # was 8 % off at R = 60, a review), and returned in it
    scores = [s.to(torch.float64) for s in scores]
    grads = [x.to(torch.float64) for x in grads]
    with torch.enable_grad():
        log_probs, probs, cond = _closed_form_in_float64(scores, g, tau)
        gscores = tree_backward(g, probs, cond, tau, grads)
    out = [gs.to(dtype) if ctx.needs_input_grad[2 + i] else None for i, gs in enumerate(gscores)]
    gtau = None
    if ctx.needs_input_grad[1]:
        # ∂L/∂τ_k = −Σ θ̄_k · log p_k (module docstring), with log p_k finite where p_k underflows
        # log p floored just below the dtype's smallest subnormal number, as temperature_gradient floors
        # it: where log p is beyond the dtype (-inf) θ̄ is 0, and 0·(-inf) was NaN (float32 [0, -1e4] at
        # τ 1e-36); a floor at the smallest normal number cut a subnormal probability's term (ca_rev92)
        gtau = torch.stack([-(gs * lp.clamp_min(_log_floor(lp.dtype))).sum()
                            for gs, lp in zip(gscores, log_probs)]).to(device=temps.device, dtype=temps.dtype)
    return (None, gtau, *out)


def _closed_form_in_float64(scores: Sequence[Tensor], g: Graph, temps) -> tuple[list, list, list]:
    """``(log p_k, p_k, per edge c → b the within-block conditionals q_c)`` of the closed form by
    one upward pass of differentiable torch operations (:func:`_log_terms`), for ``scores`` in
    float64: ``q_c = exp(r_c / T_c)`` (``log p_c − P_cᵀ log p_b``), given to
    :func:`tree_backward` as its conditionals (``blocksum`` None)."""
    T, r, _ = _log_terms(scores, g, temps)
    log_probs = [_scaled_log_probs(g, T, r, k, 1.0) for k in range(g.num_maps)]
    cond: list = [None] * g.num_edges
    for k in range(g.num_maps):
        e = g.coarsening(k)
        if e is not None:
            cond[e] = torch.exp(divide_by_temperature(r[k], T[k]))
    return log_probs, [lp.exp() for lp in log_probs], cond


def second_order_ratio(g: Graph, temps: Sequence[float]) -> float:
    """The widest ratio ``T_r / T_k`` of a root's sub-tree temperature (:func:`subtree_temperatures`)
    to that of a map ``k`` of its tree, over the maps of the forest ``g`` (1 without edges): the
    product of the ratios ``T_b / T_k`` along the path from ``k`` to its root (a chain whose every
    edge's ratio was within the limit lost all the digits of its finest map's second derivatives:
    τ = (1e-4, 8.9e-3, 0.8) in float32, a review)."""
    T = subtree_temperatures(g, temperature_floats(temps))
    top = list(T)
    for k in reversed(g.order):  # coarsest first: a map's coarsening is visited before it
        e = g.coarsening(k)
        if e is not None:
            top[k] = top[g.edges[e][1]]
    return max((top[k] / T[k] for k in range(g.num_maps)), default=1.0)


#: The constant ``C`` of the second derivatives' rounding error, ``C·eps·R²`` relative to their
#: largest entry (:func:`second_order_ratio_limit`), with a margin: measured up to 25 on a 4 → 2
#: chain at R = 6e4 (a review) and up to 69 over 232 random chains and stars (8 + 4 + 2 and
#: 6, 4 → 2 maps, scores N(0, S²), S in 1..10, R in 1e3..3e4, float64) against five-point
#: differences of the analytic gradient resolved to 1e-8 of the product (docs/design.md §4).
SECOND_ORDER_ROUNDING = 400.0


def second_order_ratio_limit(dtype: torch.dtype) -> float:
    """The widest :func:`second_order_ratio` at which :class:`ExactAttentionFunction`'s second
    derivatives for scores of ``dtype`` hold its ``GRADIENT_RTOL``: they are formed in float64,
    whose rounding error grows as ``C·eps·ratio²`` (:data:`SECOND_ORDER_ROUNDING`), so
    ``sqrt(GRADIENT_RTOL / (C·eps))``: 1.1e5 for float32 scores, 3.4e3 in float64.  Beyond it a
    second derivative raises (:class:`~convex_attention._ops.SecondOrderGuard`)."""
    eps = torch.finfo(torch.float64).eps
    return math.sqrt(gradient_rtol(compute_dtype(dtype)) / (SECOND_ORDER_ROUNDING * eps))


def _guard_wide_ratio(scores: Sequence[Tensor], g: Graph, temps: Sequence[float], tau, guard, work: torch.dtype):
    """``scores`` and ``tau`` (a list of 0-d tensors, or None) behind ``guard`` where the
    sub-tree temperature ratio is beyond :func:`second_order_ratio_limit`: the second
    derivatives in a fine map's scores pass through terms of size ``|G|/T_k`` whose derivatives
    cancel at the ``(T_root/T_k)²`` scale, and the O(1) part is lost in the rounding (reviews:
    13 % off in float32 at 1e3, exactly 0 from 1e4; 2e-5 off in float64 at 6e4); first
    derivatives are right, a second one raises instead.  The incoming gradients are not
    guarded: the backward is linear in them, and its derivative in them
    (torch.autograd.functional.jvp's double backward) is a first derivative.  ``work``: the
    dtype the scores were given in, whose limit applies."""
    ratio = second_order_ratio(g, temps)
    if not ratio > second_order_ratio_limit(work):
        return list(scores), tau
    too_wide = functools.partial(_too_wide, ratio, work)
    return ([guard.apply(s, too_wide) for s in scores],
            None if tau is None else [guard.apply(t, too_wide) for t in tau])


def _too_wide(ratio: float, work: torch.dtype, grad: Tensor) -> str:
    """Why a second derivative at a sub-tree temperature ratio beyond
    :func:`second_order_ratio_limit` is refused, whatever its value: its digits are lost.  ``work``:
    the working dtype, whose limit was passed (not ``grad``'s: a float64 temperature beside float32
    scores was told "beyond 6.7e4" of a ratio of 1e3)."""
    limit = second_order_ratio_limit(work)
    return (f"method 'exact': a second derivative at temperatures whose sub-tree ratio is {ratio:.3g}, beyond "
            f"{limit:.2g} for {work} scores, would lose its digits (its rounding grows as eps·ratio²); bring "
            f"the temperatures closer; first derivatives are right at every ratio")


def temperature_argument(temperature):
    """Floats stay a tuple (the fast path); tensors become one ``(M,)`` float64 tensor that
    carries their gradients."""
    if isinstance(temperature, Tensor):
        return temperature.reshape(-1).to(torch.float64)
    if any(isinstance(t, Tensor) for t in temperature):
        device = next(t.device for t in temperature if isinstance(t, Tensor))
        return torch.stack([t.to(device, torch.float64).reshape(()) if isinstance(t, Tensor)
                            else torch.tensor(float(t), dtype=torch.float64, device=device) for t in temperature])
    return tuple(temperature)


def exact_attention(scores: Sequence[Tensor], g: Graph, temperature) -> list[Tensor]:
    """Probabilities of the exact consistent attention on a forest.

    Args:
        scores: ``M`` tensors ``(B, *g.shapes[k])`` (validated by the caller).
        temperature: ``M`` positive floats, ``M`` 0-d tensors or a ``(M,)`` tensor
            (differentiated through when it requires grad).

    Returns:
        ``M`` tensors ``(B, *g.shapes[k])`` in the input dtype, each summing to one per
        sample and exactly consistent (``P_e p_c = p_b`` up to rounding).
    """
    require_forest(g)
    dtype = scores[0].dtype
    work = compute_dtype(dtype)
    probs = ExactAttentionFunction.apply(g, temperature_argument(temperature), *[s.to(work) for s in scores])
    return [p.to(dtype) for p in probs]


def _log_terms(scores: Sequence[Tensor], g: Graph, temps):
    """The closed form's upward pass by differentiable torch operations, in score units.

    Returns ``(T, r, A)``: ``T`` the sub-tree temperatures, ``M`` tensors ``r_k ≤ 0`` shaped
    like ``scores[k]``, ``r_c = m_c − P_eᵀ A_c`` for a map with coarsening ``e`` and
    ``r_root = m_root − T_root logsumexp(m_root / T_root)``, so that
    ``log p_k = Σ_{j on the path from k to its root} (P^T … P^T) r_j / T_j``; and the
    messages ``A_c`` per edge.  Every ``r_k`` is finite for any accepted temperature (maxima
    are subtracted before dividing).
    """
    require_forest(g)
    T = subtree_temperatures(g, temps)
    r: list = [None] * g.num_maps
    A: list = [None] * g.num_edges
    dead, leaf_max = _dead_from_above(g, [s.detach() for s in scores])
    parts: list = [None] * g.num_edges
    for k in g.order:
        m = scores[k]
        if g.in_edges[k]:  # as exact_forward
            m, offsets = _met_messages(m, [parts[c] for c in g.in_edges[k]], dead[k])
            for c, offset in zip(g.in_edges[k], offsets):
                A[c] = offset + parts[c][1]
        e = g.coarsening(k)
        if e is not None:
            raw = leaf_max.pop(e) if e in leaf_max else g.block_max(m.detach(), e)
            masked = torch.isneginf(raw)  # blocks whose every cell is masked
            mmax = raw.clamp_min(torch.finfo(raw.dtype).min)
            d = g._combine(m, mmax, e, torch.sub)
            # the sums floored at 1, as in exact_forward: r stays -inf on a masked block's cells
            # (not -inf - (-inf) = NaN, which made the create_graph backward NaN: a review), and
            # the message is -inf there (its coarse cell gets probability 0), with no gradient
            log_sum = T[k] * log_at_least_one(g.aggregate(torch.exp(divide_by_temperature(d, T[k])), e))
            r[k] = g._combine(d, log_sum, e, torch.sub)  # m − A_c, as (m − blockmax) − T log Σ
            parts[e] = (mmax, log_sum.masked_fill(masked, -math.inf))
        else:
            flat = m.flatten(1)
            d = flat - flat.detach().amax(1, keepdim=True)
            r[k] = (d - T[k] * torch.logsumexp(divide_by_temperature(d, T[k]), dim=1, keepdim=True)).view_as(m)
    return T, r, A


def _scaled_log_probs(g: Graph, T, r, k: int, c) -> Tensor:
    """``c · log p_k`` from :func:`_log_terms`; for ``0 < c ≤ T_k`` every factor ``c / T_j``
    is at most one (sub-tree temperatures grow towards the root), so the result is finite
    even where ``p_k`` underflows."""
    path = [k]
    while (up := g.coarsening(path[-1])) is not None:
        path.append(g.edges[up][1])
    out = _scaled(r[path[-1]], c / T[path[-1]])
    for j in reversed(path[:-1]):
        e = g.coarsening(j)
        assert e is not None
        out = g._combine(_scaled(r[j], c / T[j]), out, e, torch.add)
    return out


def _scaled(r: Tensor, factor) -> Tensor:
    """``r · factor``; where ``r`` is −∞ (a masked cell) and the factor a tensor that requires
    grad, the product is −∞ with no gradient: its derivative in the factor, 0·(−∞), made the
    second derivative in a tensor temperature NaN (a review)."""
    if isinstance(factor, Tensor) and factor.requires_grad:
        masked = torch.isneginf(r)
        return torch.where(masked, r.detach(), r.masked_fill(masked, 0.0) * factor)
    return r * factor


def exact_log_probs(scores: Sequence[Tensor], g: Graph, temps) -> list[Tensor]:
    """``log p_k`` of the exact solution, by differentiable torch operations (finite
    even where ``p_k`` underflows to zero, unless ``log p_k`` itself is beyond the dtype)."""
    T, r, _ = _log_terms(scores, g, temps)
    return [_scaled_log_probs(g, T, r, k, 1.0) for k in range(g.num_maps)]


def exact_duals(scores: Sequence[Tensor], g: Graph, temps) -> list[Tensor]:
    """Optimal duals, centred per sample.

    On a forest, edge ``e = (c → b)`` has ``λ_e = A_c − T_c log p_b`` (+ a constant), with
    ``T_c log p_b`` formed from :func:`_log_terms` (finite for every accepted temperature,
    since ``T_c < T_b``).  On the chain ``0 → … → L-1`` the top-down recursion of §3 gives the
    same duals (and is kept there):
    ``λ_{L-2} = τ_{L-1} log p_{L-1} - θ_{L-1}``;  ``λ_{k-1} = τ_k log p_k - θ_k + P_kᵀ λ_k``.
    Returns ``E`` tensors, ``duals[e]``: ``(B, *g.shapes[coarse(e)])``; differentiable in the
    scores and in tensor temperatures.
    """
    dtype = scores[0].dtype
    scores = [s.to(torch.float64) for s in scores]  # formed in float64 (second derivatives: as the layer's)
    floats = temperature_floats(temps)
    tensors = [t for t in temps if isinstance(t, Tensor)]
    # the scores and the temperatures, as the layer's second-order path guards them (a tensor
    # temperature's second derivative came back NaN here: a review)
    guarded = guard_below_floor([*scores, *tensors], floats, dtype, WHO)
    scores, wide = _guard_wide_ratio(guarded[:len(scores)], g, floats, guarded[len(scores):] or None,
                                     FirstOrderOnly, compute_dtype(dtype))
    if wide is not None:
        given = iter(wide)
        temps = [next(given) if isinstance(t, Tensor) else t for t in temps]
    return [d.to(dtype) for d in _exact_duals(scores, g, temps)]


def _exact_duals(scores: Sequence[Tensor], g: Graph, temps) -> list[Tensor]:
    """:func:`exact_duals`, in the scores' dtype, with no guard."""
    T, r, A = _log_terms(scores, g, temps)
    if not g._index_chain:
        duals = [A[e] - _scaled_log_probs(g, T, r, b, T[c]) for e, (c, b) in enumerate(g.edges)]
        return [centre(d) for d in duals]
    L = g.num_maps
    # each map's scores less their per-sample maximum: a constant per map, which the centred duals
    # do not see, but which carried into the sums of centre() overflowed (a constant coarse map of
    # -8e37 in float32, within score_limit, gave duals of -inf: a review)
    top = [less_max(s) for s in scores]
    lam = _scaled_log_probs(g, T, r, L - 1, temps[L - 1]) - top[L - 1]
    duals = [lam]
    for k in range(L - 2, 0, -1):
        lam = _scaled_log_probs(g, T, r, k, temps[k]) - top[k] + g.broadcast(lam, k)
        duals.insert(0, lam)
    return [centre(d) for d in duals]


def solve_exact(scores: Sequence[Tensor], g: Graph, temps):
    """The ``"exact"`` method of the registry: probabilities now (in the scores' dtype),
    duals when first read (in the compute dtype: float32 for half-precision scores).

    ``temps``: ``M`` floats, or ``M`` 0-d tensors to differentiate through."""
    probs = exact_attention(scores, g, temps)
    # computed when first read; a partial of a module function, not a closure, so that the
    # Solution holding it pickles
    return probs, functools.partial(_duals_in_compute_dtype, list(scores), g, temps), {}


def _duals_in_compute_dtype(scores: Sequence[Tensor], g: Graph, temps) -> list[Tensor]:
    """:func:`exact_duals` in the compute dtype: duals of half-precision scores can exceed
    float16's range."""
    work = compute_dtype(scores[0].dtype)
    return exact_duals([s.to(work) for s in scores], g, temps)
