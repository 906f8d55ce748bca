r"""LinSATNet (Wang, Zhang, Guo, Chen, Yang & Yan, ICML 2023; pip ``linsatnet``) on the problem
with given maps: one scored map held to several fixed marginals.

When the probabilities of every map but one are *given* (a prior over regions, a
segmentation), consistent attention becomes the projection of one scored map onto several
fixed marginals (docs/math.md §7.6)::

    maximise   <θ, p> + τ H(p)     subject to   P_e p = q_e   for every edge e = (scored → given)

LinSATNet solves ``max <θ, x> + τ Σ_i [h(x_i) + h(1 − x_i)]`` subject to ``E x = f`` with
``x ∈ [0, 1]^n`` and every entry of ``E`` and ``f`` non-negative, by Sinkhorn iterations over
the constraints (each variable paired with its complement ``1 − x_i``), and differentiates by
unrolling them.  With ``E`` the stacked poolings and ``f`` the stacked given maps this is the
problem above with one difference: LinSATNet's entropy is the binary entropy of every cell,
which adds ``−τ Σ_i (1 − x_i) log(1 − x_i) ≈ τ Σ_i x_i`` (constant on the simplex) up to
``O(x_i²)``: on maps whose cells are small the two optima agree to second order in the
cells' probabilities; where they are not small they do not (the benchmark measures the gap:
1.1e-2 between the two optima on its 16² instance, docs/benchmarks.md).

What it cannot express, and :func:`check_linsat_structure` refuses with the reason:

* two *scored* maps that must agree (a star of heads, a map and its scored coarsening): the
  right-hand side ``f`` must be fixed data, so an edge between two scored maps has no place in
  ``E x = f``;
* more than one scored map (each would be its own projection; call it once per map);
* an edge from a given map to a finer scored map (it would fix the scored map outright).

Its right-hand side is shared by the batch: per-sample given maps (one segmentation per
image) cost one constraint set-up and one call per sample (:func:`linsat_solve` loops).  It
builds part of its constraints in torch's default dtype, so :func:`linsat_solve` sets that to
the scores' dtype for the duration of the call (float32 and float64 both run).
"""
from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from convex_attention.cvx import aggregation_matrix
from convex_attention.given_maps import normalised
from convex_attention.graph import Graph
from convex_attention.validation import (
    GIVEN_SUM_TOLERANCE,
    check_flag,
    check_given,
    check_hierarchy,
    check_scores_and_peaks,
    check_temperatures,
    given_indices,
)

__all__ = ["linsat_solve", "linsat_constraints", "check_linsat_structure", "LINSAT_INSTALL"]

LINSAT_INSTALL = "pip install linsatnet (or the [linsat] extra: pip install 'convex-attention[linsat]')"


def _layer():
    try:
        from LinSATNet import linsat_layer
        from LinSATNet.linsat import init_constraints
    except ImportError as err:
        raise ImportError(f"the LinSATNet baseline needs the linsatnet package: {LINSAT_INSTALL}") from err
    return linsat_layer, init_constraints


def check_linsat_structure(h: Graph, given: Sequence[int]) -> int:
    """The scored map LinSATNet can project, or ValueError naming what it cannot express.

    ``given``: the maps whose probabilities are given.  There must be exactly one scored map,
    and every edge must go from it to a given map."""
    scored = [k for k in range(h.num_maps) if k not in set(given)]
    for e, (a, b) in enumerate(h.edges):
        if a not in given and b not in given:
            raise ValueError(f"LinSATNet cannot express edge {e} (map {a} → map {b}): both maps are scored, and "
                             f"LinSATNet's constraints E x = f need a fixed right-hand side (two free maps that must "
                             f"agree); use method 'dual'")
        if a in given and b not in given:
            raise ValueError(f"LinSATNet cannot express edge {e} (map {a} → map {b}): a given map pooled onto a scored "
                             f"map fixes it outright; give map {b} its pooled probabilities instead")
    if len(scored) != 1:
        raise ValueError(f"LinSATNet projects one scored map onto fixed marginals; this structure has {len(scored)} "
                         f"scored maps ({scored}): call it once per map, or use method 'dual'")
    for e, (a, b) in enumerate(h.edges):
        if a in given and b in given:  # left out of E x = f, it would go unchecked (ca.solve refuses it too)
            raise ValueError(f"LinSATNet cannot express edge {e} (map {a} → map {b}): it joins two given maps, whose "
                             f"agreement is data, not a constraint on the scored map; drop the edge (and check "
                             f"P_e q_{a} = q_{b} yourself)")
    return scored[0]


def linsat_constraints(h: Graph, free: int, dtype=torch.float64) -> tuple[Tensor, list[int]]:
    """``E`` ``(Σ_e n_coarse(e), n_free)``, the 0/1 pooling of the scored map onto each given map
    stacked by edge, and the edges in that order (every edge out of ``free``)."""
    edges = list(h.out_edges[free])
    # the reference layer's pooling matrices (one home for P_e), dense as LinSATNet takes them
    rows = [torch.from_numpy(aggregation_matrix(h, e).toarray()).to(dtype) for e in edges]
    return torch.cat(rows), edges


@functools.lru_cache(maxsize=16)
def _sparse_constraints(h: Graph, free: int, dtype: torch.dtype,
                        device: torch.device) -> tuple[Tensor, tuple[int, ...]]:
    """:func:`linsat_constraints` as the sparse tensor LinSATNet's sparse kernel takes (a dense
    ``E`` costs batch x constraints x cells per group), built once per structure, dtype and
    device, as a user of LinSATNet would (building it took 4-10 ms per call at 64², measured;
    LinSATNet does not modify it)."""
    E, edges = linsat_constraints(h, free, dtype)
    return E.to(device).to_sparse(), tuple(edges)


def linsat_solve(scores: Sequence[Tensor | None], h: Graph, given: dict, temperature: float = 1.0,
                 max_iter: int = 100, no_warning: bool = True) -> list[Tensor]:
    """LinSATNet's projection of the one scored map onto the given maps (see the module docstring).

    Args:
        scores: ``M`` entries, the scored map's ``(B, *h.shapes[k])``, None for the given maps.
        given: ``{k: q_k}``, ``q_k`` shaped ``(1 or B, *h.shapes[k])`` (taken in the scores' dtype and
            device), non-negative, summing to one (checked as :func:`convex_attention.solve` does, but
            for a zero cell, which LinSATNet holds near zero: it has no duals to diverge; it adds
            1e-7 to every right-hand side where one is 0, so such a block keeps about 1e-7); each is
            divided by its sum per sample, as ``dual`` does (sums off within the tolerance had been
            LinSATNet's right-hand side as they were: a scored map summing to 1 + 9e-5 and a
            violation floor of the data's, not the solver's, in float32: ca_rev263).
            With batch 1 (a prior shared by the batch) one LinSATNet call projects the whole
            batch; otherwise one call per sample.
        temperature: ``τ`` of the scored map (LinSATNet's ``tau``), a positive finite number or a
            0-d tensor (differentiated through where it requires grad).  A projection that is not
            finite (LinSATNet overflows at small ``τ``) is refused (ValueError).
        max_iter: LinSATNet's Sinkhorn iterations, at least 1 (it also stops, for the whole call, once every
            constraint of every sample holds to 1e-3 in log space: a hard-coded test, so its
            violation does not go much below 1e-3 of a cell's mass however many iterations).
        no_warning: LinSATNet's own flag, True or False (its warning on an unmet constraint, off
            by default); anything else is refused (TypeError: the string "False" had switched it off,
            ca_rev263).

    Returns:
        ``M`` tensors ``(B, *h.shapes[k])``: the projection (differentiable by LinSATNet's
        unrolled iterations) and the given maps, each divided by its sum, broadcast to the batch.
    """
    linsat_layer, init_constraints = _layer()
    free, theta, given_maps, tau, max_iter = _checked(scores, h, given, temperature, max_iter, no_warning)
    B = theta.shape[0]
    E, edges = _sparse_constraints(h, free, theta.dtype, theta.device)
    targets = [given_maps[h.edges[e][1]].reshape(given_maps[h.edges[e][1]].shape[0], -1) for e in edges]
    shared = all(t.shape[0] == 1 for t in targets)
    flat = theta.reshape(B, -1)

    def project(x: Tensor, f: Tensor) -> Tensor:
        # LinSATNet builds its empty constraint blocks in torch's default dtype: for a float64
        # problem it must be float64 while LinSATNet runs (restored afterwards)
        default = torch.get_default_dtype()
        torch.set_default_dtype(x.dtype)
        try:
            with warnings.catch_warnings():  # torch's note on sparse tensors LinSATNet builds
                warnings.filterwarnings("ignore", message="Sparse invariant checks")
                constraints = init_constraints(x.shape[1], E=E, f=f)
            return linsat_layer(x, constr_dict=constraints, tau=tau, max_iter=max_iter, no_warning=no_warning)
        finally:
            torch.set_default_dtype(default)

    if shared:
        out = project(flat, torch.cat([t[0] for t in targets]))
    else:
        out = torch.cat([project(flat[i:i + 1], torch.cat([t[i if t.shape[0] > 1 else 0] for t in targets]))
                         for i in range(B)])
    if not bool(torch.isfinite(out).all()):  # LinSATNet's own arithmetic: it says nothing of it
        raise ValueError(f"LinSATNet's projection of map {free} is not finite at temperature {float(tau):g}: its "
                         f"Sinkhorn iterations overflow at small temperatures against the scores' spread (below "
                         f"about 1e-2 for N(0, 1) scores); raise the temperature, or use method 'dual'")
    probs = []
    for k in range(h.num_maps):
        if k == free:
            probs.append(out.reshape((B,) + h.shapes[k]))
        else:
            probs.append(given_maps[k].expand((B,) + h.shapes[k]))
    return probs


def _checked(scores, h: Graph, given, temperature, max_iter,
             no_warning: bool = True) -> tuple[int, Tensor, list, float | Tensor, int]:
    """The scored map, its scores, the given maps (one entry per map, ``(1 or B, *shape)``, each
    divided by its sum per sample, as ``dual`` uses them), ``τ`` (a float, or a 0-d tensor to
    differentiate through) and ``max_iter`` (an int), checked before LinSATNet runs as
    :func:`convex_attention.solve` checks its inputs: a given map of no map, scores that do not
    fit the graph, given maps of another batch, negative or not summing to one (an infeasible
    ``E x = f``, whose unmet projection LinSATNet returns with its warning off), a temperature
    that is not one positive finite number, fewer than one iteration (LinSATNet's unprojected
    start) and a ``no_warning`` that is not a bool are refused (ValueError or TypeError).  A
    given map's zero cell is accepted: LinSATNet has no duals, and holds the cells inside it near
    zero (about 1e-7 in all: it adds that to its right-hand side where one is 0)."""
    check_hierarchy(h)
    check_flag(no_warning, "no_warning")
    if isinstance(max_iter, (bool, np.bool_)) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer of at least 1 (LinSATNet's Sinkhorn iterations), got "
                         f"{max_iter!r}")
    indices = given_indices(given, h)
    free = check_linsat_structure(h, sorted(indices))
    checked, _ = check_scores_and_peaks(scores, h, given=indices)
    theta = checked[free]
    tau = _checked_temperature(temperature, free, theta.dtype)
    # given maps of another floating dtype or device are taken in the scores' (as before the checks)
    given = {k: q.to(theta) if isinstance(q, Tensor) and q.dtype.is_floating_point else q for k, q in given.items()}
    given_maps = check_given(given, h, theta.shape[0], theta.dtype, theta.device, positive=False)
    given_maps = [None if q is None else normalised(q) for q in given_maps]  # (E x = f as dual's problem)
    _check_given_agree(h, free, given_maps, theta.dtype)
    return free, theta, given_maps, tau, int(max_iter)


@functools.lru_cache(maxsize=16)
def _block_tuples(h: Graph, free: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(A, edges)``: ``A`` the 0/1 matrix ``(Σ_e n_coarse(e), T)`` that pools the scored map's
    ``T`` distinct tuples of blocks (one block of each given map: the cells with one tuple are
    interchangeable in ``E x = f``, so ``E x = f, x ≥ 0`` is feasible exactly when ``A y = f,
    y ≥ 0`` is) onto each given map, stacked by edge; built once per structure."""
    edges = tuple(h.out_edges[free])
    tuples = torch.unique(torch.stack([h.parents(e) for e in edges], 1), dim=0).numpy()
    sizes = [h.sizes[h.edges[e][1]] for e in edges]
    A = np.zeros((sum(sizes), len(tuples)))
    for j, offset in enumerate(np.cumsum([0, *sizes[:-1]])):
        A[offset + tuples[:, j], np.arange(len(tuples))] = 1.0
    return A, edges


def _check_given_agree(h: Graph, free: int, given_maps: list, dtype: torch.dtype) -> None:
    """ValueError where no map of non-negative cells pools onto every given map to within the
    rounding their sums are allowed (:data:`~convex_attention.validation.GIVEN_SUM_TOLERANCE`):
    ``E x = f`` has no solution with ``x ≥ 0``, and LinSATNet returned its unmet projection
    beside them with its warning off (quadrants of 0.1, 0.2, 0.3, 0.4 and halves of 0.4, 0.6:
    violation 0.19, silently; ca_rev169).  Decided exactly, by non-negative least squares on the
    cells' distinct tuples of blocks (:func:`_block_tuples`), once per distinct given sample: a
    fit of cells of either sign had accepted maps that only a map with a negative cell meets,
    and a shared empty block had made the measure NaN, read as agreement (ca_rev187).  Measured:
    1 ms at 16² (10 tuples), 7 ms at 64² (244 tuples), in LinSATNet's time."""
    from scipy.optimize import nnls

    A, edges = _block_tuples(h, free)
    if len(edges) < 2:
        return  # one given map: met by any map of its block sums (each sums to one: checked)
    targets = [given_maps[h.edges[e][1]].detach().to("cpu", torch.float64) for e in edges]
    samples = max(q.shape[0] for q in targets)
    stacked = np.concatenate([q.reshape(q.shape[0], -1).expand(samples, -1).numpy() for q in targets], 1)
    # each distinct sample once (per-sample maps that repeat a prior had cost one solve each: ca_rev192)
    _, first = np.unique(stacked, axis=0, return_index=True)
    for i in sorted(first):
        f = stacked[i]
        y, _ = nnls(A, f, maxiter=50 * A.shape[1])
        apart = float(np.abs(A @ y - f).max())
        if not apart <= GIVEN_SUM_TOLERANCE.get(dtype, 1e-2):
            where = f"sample {i}'s " if samples > 1 else ""
            raise ValueError(f"the given maps contradict each other: no map of non-negative cells pools onto "
                             f"{where}given maps (the closest misses one by {apart:.3g} in a block), so LinSATNet's "
                             f"projection cannot meet them; give maps that agree where they hold the same cells")


def _checked_temperature(temperature, free: int, dtype: torch.dtype) -> float | Tensor:
    """LinSATNet's one ``τ`` (the scored map's): a real number, or a 0-d real tensor (one that
    requires grad is kept, for LinSATNet's ``x / τ`` to differentiate through), positive and
    finite and within ca.solve's range for ``dtype``; the refusal names map ``free``."""
    if isinstance(temperature, Tensor) and temperature.dim() != 0:
        raise ValueError(f"temperature must be one number (LinSATNet's τ of the scored map {free}) or a 0-d tensor, "
                         f"got a tensor of shape {tuple(temperature.shape)}")
    if not isinstance(temperature, Tensor) and (isinstance(temperature, (bool, np.bool_))
                                                 or not isinstance(temperature, numbers.Real)):
        raise TypeError(f"temperature must be one number (LinSATNet's τ of the scored map {free}) or a 0-d tensor, "
                        f"got {temperature!r}")
    try:
        (tau,) = check_temperatures(temperature, 1, dtype, allow_grad=True, unit="map")
    except (TypeError, ValueError) as err:  # it numbers the one temperature 0: the scored map is `free`
        raise type(err)(str(err).replace("of map 0", f"of the scored map {free}")) from None
    return tau
