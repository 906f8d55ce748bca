"""The measures of docs/design.md §6, under the same names everywhere (CSV columns, plots, docs).

Per-sample measures return ``(B,)`` tensors and are differentiable where that makes sense.
Explanation metrics (``ap``, ``qiou@q``, ``pointing``, ``mass``) live in
:mod:`convex_attention.explain_metrics`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._ops import upcast
from .dual import dual_function, reparameterized_probs
from .graph import Graph
from .validation import per_sample

__all__ = ["violation", "objective", "dual_objective", "primal_gap", "dual_gap", "max_abs_err",
           "consistency_residuals", "stationarity"]


def _flat_sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def _same_length(what: str, **lists) -> None:
    """ValueError unless every per-map (or per-edge) list has the length the others have: zip
    drops what is left over, and a list one map short gave a number without that map's terms
    (objective 2.19 for 5.19, max_abs_err 0 for 0.5: review 47)."""
    lengths = {name: len(x) for name, x in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{what}: one entry per map is needed in each list, got lengths "
                         + ", ".join(f"{name} {n}" for name, n in lengths.items()))


def _same_shapes(what: str, shapes: Sequence[tuple] | None = None, **per_map) -> None:
    """ValueError unless every map's tensors in ``per_map`` (lists, one entry per map; None
    skipped: a given map's scores) have shape ``(B, *shapes[k])``, one ``B`` for all (a given
    map, ``per_map["given"]``, may have batch 1: shared by the samples), or
    (without ``shapes``) one shape per map across the lists: shapes that merely broadcast
    gave a number (a coarse map of shape ``(B,)`` gave a violation of 0.6 for 0.1: a review)."""
    batch = None
    for k in range(max((len(x) for x in per_map.values()), default=0)):
        first = None
        for name, maps in per_map.items():
            t = maps[k] if k < len(maps) else None
            if t is None:
                continue
            if not isinstance(t, Tensor) or t.dim() < 1:
                raise ValueError(f"{what}: {name}[{k}] must be a tensor (B, ...) of map {k}, got "
                                 f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
            want = (t.shape[0], *shapes[k]) if shapes is not None else (first if first is not None else tuple(t.shape))
            shared = name == "given" and t.shape[0] == 1  # a given map of batch 1 is every sample's
            if tuple(t.shape) != tuple(want) or (batch is not None and t.shape[0] != batch and not shared):
                expected = f"(B, {', '.join(map(str, shapes[k]))})" if shapes is not None else str(tuple(want))
                raise ValueError(f"{what}: {name}[{k}] has shape {tuple(t.shape)}, map {k} needs {expected} with "
                                 f"one batch B for every map" + (f" (B = {batch})" if batch is not None else ""))
            if not shared:
                batch, first = t.shape[0], tuple(t.shape)


def _graph_lengths(what: str, h: Graph, duals: Sequence, **per_map) -> None:
    _same_length(what, maps=range(h.num_maps), **per_map)
    if len(duals) != h.num_edges:
        raise ValueError(f"{what}: one dual per edge is needed, the graph has {h.num_edges} edges, got {len(duals)}")


def _dual_shapes(what: str, h: Graph, duals: Sequence, scores: Sequence) -> list[Tensor]:
    """The duals, each of shape ``shapes[b]``, ``(1, *shapes[b])`` or ``(B, *shapes[b])`` for edge
    ``(a → b)`` (``B`` the scores'), as ``(1 or B, *shapes[b])``; ValueError otherwise, as
    ``ca.solve`` refuses them: duals ``(B, 1, 2, 2)`` of a ``(2, 2)`` map broadcast to a
    ``(B, B, 2, 2)`` η and gave g = 7.25 for 4.30 (ca_rev126)."""
    batch = next((s.shape[0] for s in scores if isinstance(s, Tensor) and s.dim()), None)
    out = []
    for e, (d, (a, b)) in enumerate(zip(duals, h.edges)):
        if not isinstance(d, Tensor):
            raise ValueError(f"{what}: duals[{e}] must be a tensor, got {type(d).__name__}")
        out.append(per_sample(d, tuple(h.shapes[b]), batch, f"{what}: duals[{e}]", f"edge {e} ({a} -> {b})"))
    return out


def consistency_residuals(probs: Sequence[Tensor], h: Graph) -> list[Tensor]:
    """``‖P_e p_a − p_b‖₁`` per constraint (edge ``e = (a → b)``; on a hierarchy ``P_k p_k − p_{k+1}``):
    ``E`` tensors ``(B,)``."""
    _same_length("consistency_residuals", maps=range(h.num_maps), probs=probs)
    _same_shapes("consistency_residuals", h.shapes, probs=probs)
    return [_flat_sum((h.aggregate(upcast(probs[a]), e) - upcast(probs[b])).abs())
            for e, (a, b) in enumerate(h.edges)]


def violation(probs: Sequence[Tensor], h: Graph) -> Tensor:
    """``max_e ‖P_e p_a − p_b‖₁`` per sample: ``(B,)`` (half inputs measured in float32)."""
    return torch.stack(consistency_residuals(probs, h)).amax(0)


def objective(scores: Sequence[Tensor | None], probs: Sequence[Tensor], temps: Sequence[float]) -> Tensor:
    """``f(p) = Σ_k <θ_k, p_k> + τ_k H(p_k)`` per sample: ``(B,)``.

    ``H(p) = −Σ p log p`` with ``0 log 0 = 0``; negative entries (solver round-off) are
    clamped to zero inside the entropy.  A map whose scores are None (a given map) is data,
    not a term of the problem: it adds nothing; nor does a masked cell (score −∞) with probability
    0 (mass on a masked cell makes ``f`` −∞: the point is infeasible).  Lists of another length
    than the others are a ValueError.
    """
    _same_length("objective", scores=scores, probs=probs, temps=temps)
    _same_shapes("objective", scores=scores, probs=probs)
    total: Tensor | float = 0.0
    for s, p, t in zip(scores, probs, temps):
        if s is None:
            continue
        s, p = upcast(s), upcast(p)
        pc = p.clamp(min=0)
        # p log p through a floored logarithm: xlogy's derivative at p = 0 is −inf, which times
        # the zero derivative of an underflowed probability made the objective's gradient NaN
        # (same value: 0 where p = 0; below the floor, p·log(tiny) for p·log p, both ~1e-305)
        plogp = pc * torch.log(pc.clamp(min=torch.finfo(pc.dtype).tiny))
        # a masked cell (score −∞, probability 0) adds nothing to <θ, p>: (−∞)·0 was NaN
        # (replaced before the product, so that no NaN reaches the gradient either); with
        # mass on it the point is infeasible and f is −∞ (filled whatever its probability, it
        # scored 0.693 for half the mass on a masked cell: review 47)
        s = torch.where(torch.isneginf(s) & (pc == 0), 0.0, s)
        total = total + _flat_sum(s * p) - t * _flat_sum(plogp)
    assert isinstance(total, Tensor)
    return total


def dual_objective(scores: Sequence[Tensor | None], duals: Sequence[Tensor], h: Graph,
                   temps: Sequence[float], given: Sequence[Tensor | None] | None = None) -> Tensor:
    """``g(λ) = Σ_k τ_k logsumexp(η_k / τ_k)`` per sample: ``(B,)`` (a given map ``k``, whose
    scores are None and probabilities ``given[k]``, adds ``<η_k, q_k>`` instead)."""
    _graph_lengths("dual_objective", h, duals, scores=scores, temps=temps,
                   **({} if given is None else {"given": given}))
    _same_shapes("dual_objective", h.shapes, scores=scores, **({} if given is None else {"given": given}))
    duals = _dual_shapes("dual_objective", h, duals, scores)
    return dual_function([None if s is None else upcast(s) for s in scores], [upcast(d) for d in duals], h, temps,
                         None if given is None else [None if q is None else upcast(q) for q in given])


def stationarity(scores: Sequence[Tensor | None], probs: Sequence[Tensor], duals: Sequence[Tensor], h: Graph,
                 temps: Sequence[float]) -> Tensor:
    """``max_k max_i |p_k − p_k(λ)|`` per sample, ``(B,)``: how far the maps lie from the maps
    the duals imply, ``p_k(λ) = softmax(η_k(λ) / τ_k)``, the Lagrangian's stationarity
    condition.  Both are exact at the optimum; unlike the duality gap, which is quadratic in
    an error of the maps, this is of the size of the error (or of the duals' error over
    ``τ``).  A given map (scores None, as ``solve`` takes them) has no such condition: the
    maximum is over the scored maps (it had raised AttributeError: ca_rev190)."""
    _graph_lengths("stationarity", h, duals, scores=scores, probs=probs, temps=temps)
    _same_shapes("stationarity", h.shapes, scores=scores, probs=probs)
    free = next((s for s in scores if s is not None), None)
    if free is None:
        raise ValueError("stationarity: every map is given (its scores None): no scored map to measure")
    duals = _dual_shapes("stationarity", h, duals, scores)
    # a given map's η_k(λ) is left at θ_k = 0: it changes no scored map's (each reads its own θ and duals)
    filled = [upcast(s) if s is not None else upcast(free).new_zeros((free.shape[0], *h.shapes[k]))
              for k, s in enumerate(scores)]
    implied = reparameterized_probs(filled, [upcast(d) for d in duals], h, temps)
    return torch.stack([(upcast(p) - q).abs().flatten(1).amax(1)
                        for p, q, s in zip(probs, implied, scores) if s is not None]).amax(0)


def primal_gap(optimal_value: Tensor, scores: Sequence[Tensor], probs: Sequence[Tensor],
               temps: Sequence[float]) -> Tensor:
    """``f* − f(p)`` (meaningful for feasible ``p``): ``(B,)``; ``optimal_value`` ``(B,)``, one
    per sample (another shape is a ValueError: a ``(B, 1)`` one broadcast to a ``(B, B)`` table,
    ca_rev119)."""
    value = objective(scores, probs, temps)
    return _one_per_sample("primal_gap", optimal_value, value) - value


def dual_gap(optimal_value: Tensor, scores: Sequence[Tensor | None], duals: Sequence[Tensor], h: Graph,
             temps: Sequence[float], given: Sequence[Tensor | None] | None = None) -> Tensor:
    """``g(λ) − f* ≥ 0``, zero exactly when ``λ`` is optimal: ``(B,)``; ``optimal_value`` ``(B,)``,
    one per sample (another shape is a ValueError, as :func:`primal_gap`'s)."""
    value = dual_objective(scores, duals, h, temps, given)
    return value - _one_per_sample("dual_gap", optimal_value, value)


def _one_per_sample(name: str, optimal_value, value: Tensor) -> Tensor:
    """``optimal_value`` as given, where it is a tensor shaped like ``value`` (``(B,)``)."""
    if not isinstance(optimal_value, Tensor) or tuple(optimal_value.shape) != tuple(value.shape):
        shape = tuple(optimal_value.shape) if isinstance(optimal_value, Tensor) else type(optimal_value).__name__
        raise ValueError(f"{name}: optimal_value must hold one value per sample, shape {tuple(value.shape)}; got "
                         f"{shape}")
    return optimal_value


def max_abs_err(probs: Sequence[Tensor], reference: Sequence[Tensor]) -> Tensor:
    """``max |p − p_ref|`` over all cells and maps, per sample: ``(B,)``."""
    _same_length("max_abs_err", probs=probs, reference=reference)
    _same_shapes("max_abs_err", probs=probs, reference=reference)
    return torch.stack([(upcast(p) - upcast(r)).abs().flatten(1).amax(1)
                        for p, r in zip(probs, reference)]).amax(0)
