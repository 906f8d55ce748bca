"""Given maps: a map's probabilities given rather than scored (a prior over regions, a
segmentation; docs/design.md §4).  Their normalisation in the working dtype, and given maps that
hold the same cells made to agree there before a float64 solve: rounded to float32 apart, no map
pools onto them all and the float64 problem has no solution (its duals drift without bound,
ca_rev111).  Used by :mod:`convex_attention.dual`; the structure each agreement needs depends on
the graph and which maps are given alone, and is built once per pair."""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from ._ops import sample_dims
from .graph import Graph

__all__ = ["normalised", "agreeing_given", "agreement_factors", "given_reach", "joined_given_blocks",
           "components_of_every_edge", "consistency_constraints", "REACH_PATHS", "AGREEMENT_PASSES",
           "AGREEMENT_MOVE", "PROJECTION_LIMIT", "PROJECTION_ENTRIES"]


def normalised(q: Tensor) -> Tensor:
    """A given map divided by its sum per sample, in the working dtype (differentiable).  Given
    maps are accepted within a tolerance of summing to one (``validation.check_given``: 1e-4 in
    float32); used as they were, a map off by 5e-5 could not be pooled onto by a scored map
    summing to one: the solve stalled at that error and blamed contradicting given maps (a
    review)."""
    return q / q.sum(sample_dims(q), keepdim=True)


#: How many differently pooling paths between a map and a given map :func:`given_reach` keeps:
#: where a diamond's two paths pool one map onto another differently, their compositions grow
#: 4x per stacked diamond (981 for 10, ca_rev113); paths past these are not used to make given
#: maps agree (where that leaves them apart, the polish misses and the gradient is NaN, warned).
REACH_PATHS = 2


#: At most how many passes :func:`agreeing_given` makes, and the largest move of a given value (of
#: a map summing to one) by the scalings of a pass (float64) at which the maps count as agreeing: a pass that makes
#: the given maps pooling into one map agree on its cells moves the given maps fitted as pools of
#: a finer one, and the passes approach the agreeing maps by a factor per pass that depends on the
#: structure: about 4 on random structures (at most 11 passes over 4,000); on zigzags of given maps
#: joined alternately by a scored common refinement and coarsening, about 1.25 with three moves
#: (median 13-19 passes, 2 of 230 at the cap: ca_rev289), 3-8 passes with the fourth (ca_rev291).  Past the cap
#: the maps are used as the last pass left them: a solve whose given maps stay apart refuses, as it
#: did before.
AGREEMENT_PASSES = 50
AGREEMENT_MOVE = 32 * torch.finfo(torch.float64).eps
#: The largest structure whose consistency constraints :func:`consistency_constraints` builds
#: (dense, float64): ``rows² × scored cells`` of every edge's equations, about the SVD's cost
#: (1e9: under a second), and ``rows × cells`` (2^22: 32 MB per matrix; a star of four 64² leaves
#: would have held 545 MB, and its check of the constraints cost 40 ms a call against 4.5 for
#: the passes).  Larger structures are agreed by the passes alone.
PROJECTION_LIMIT = 10 ** 9
PROJECTION_ENTRIES = 2 ** 22


def given_reach(h: Graph, mask: Sequence[bool]) -> tuple[list[list], list[list]]:
    """Per map ``m``, the given maps related to it along edges through scored maps only:
    ``down[m]``, those ``m`` pools into, each ``(given map, (n_m,) its block of each cell of m)``;
    ``up[m]``, those that pool into ``m``, each ``(given map, (n_g,) the cell of m of each of its
    cells)``.  Built once per map over the maps in order (``h.order``, fine before coarse), two
    paths that pool alike kept once (one entry per path grew 4x per stacked diamond: ca_rev112),
    and at most :data:`REACH_PATHS` that pool differently."""
    def add(entries: list, t: int, parents: Tensor) -> None:
        alike = [q for u, q in entries if u == t]
        if len(alike) < REACH_PATHS and not any(torch.equal(parents, q) for q in alike):
            entries.append((t, parents))

    def walk(order, edges_of: list[list[int]], end: int, compose) -> list[list]:
        out: list[list] = [[] for _ in range(h.num_maps)]
        for m in order:
            for e in edges_of[m]:
                n, par = h.edges[e][end], h._cpu_parents(e)
                if mask[n]:
                    add(out[m], n, par)
                for t, onto in out[n] if not mask[n] else []:
                    add(out[m], t, compose(onto, par))
        return out

    # (h.order: every map after the maps finer than it)
    down = walk(reversed(h.order), h.out_edges, 1, lambda onto, par: onto[par])
    up = walk(h.order, h.in_edges, 0, lambda into, par: par[into])
    return down, up


def joined_given_blocks(h: Graph, mask: Sequence[bool], reach=None) -> dict[int, Tensor] | None:
    """The cells of the given maps joined where they hold the same cells of some map: a cell of
    a map joins the blocks of the given maps it pools into, the cells of the given maps that pool
    into it, and itself in a given map (:func:`given_reach`); closed transitively (the connected
    components of that graph of cells, by scipy).  ``{given map: (n_k,) component ids}``, or None
    where no two given maps are related."""
    down, up = given_reach(h, mask) if reach is None else reach
    offset, total = {}, 0
    for k in range(h.num_maps):
        if mask[k]:
            offset[k], total = total, total + h.sizes[k]
    src, dst = [], []
    for m in range(h.num_maps):
        if len(down[m]) + len(up[m]) + int(mask[m]) < 2:
            continue
        cells = total + torch.arange(h.sizes[m])  # the map's own cells, as nodes of their own
        total += h.sizes[m]
        for t, onto in down[m]:
            src.append(cells)
            dst.append(offset[t] + onto)
        for g, into in up[m]:
            src.append(offset[g] + torch.arange(h.sizes[g]))
            dst.append(cells[into])
        if mask[m]:
            src.append(cells)
            dst.append(offset[m] + torch.arange(h.sizes[m]))
    if not src:
        return None
    return _components_of(torch.cat(src).numpy(), torch.cat(dst).numpy(), total,
                          {k: (o, h.sizes[k]) for k, o in offset.items()})


def _components_of(src, dst, total: int, spans: dict[int, tuple[int, int]]) -> dict[int, Tensor]:
    """The connected components of the graph of ``total`` nodes linked by ``src[i]`` – ``dst[i]``
    (numpy arrays; scipy), numbered 0, 1, … over the nodes that ``spans`` (``{given map: (first
    node, cells)}``) names: ``{given map: (cells,) component ids}``."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # (label propagation took sweeps that grow with the map where blocks are numbered at random:
    # 1,507 at 4,096 cells, 21,717 at 65,536, ca_rev113)
    _, found = connected_components(coo_matrix((np.ones(len(src)), (src, dst)), shape=(total, total)),
                                    directed=False)
    _, labels = torch.unique(torch.from_numpy(np.concatenate([found[o:o + n] for o, n in spans.values()])).long(),
                             return_inverse=True)
    ids, start = {}, 0
    for k, (_, n) in spans.items():
        ids[k], start = labels[start:start + n], start + n
    return ids


def components_of_every_edge(h: Graph, mask: Sequence[bool]) -> dict[int, Tensor] | None:
    """The cells of the given maps joined along every edge of the graph that constrains them,
    scored maps' cells included (the connected components of the graph whose nodes are every
    map's cells and whose links are the edges' poolings, by scipy), less the scored maps with
    one edge, repeatedly (a scored map pooled from one map only, or pooling into one map only,
    and nothing else, constrains nothing: kept, its cells joined blocks that no constraint
    joins, and a given map's pool through it was lost): ``{given map: (n_k,) component ids}``,
    or None where no component holds cells of two given maps and not all of either (their
    totals alone, which agree).  Each component is closed under the edges left, so every map of
    a consistent solution has the same mass on it: a condition the given maps must meet, which
    relates given maps that :func:`given_reach` does not (two given maps hanging off two scored
    maps that meet at a third: ca_rev288's strict xfail, now a test)."""
    import numpy as np

    edges = list(range(len(h.edges)))
    while True:  # (the scored maps with one edge left, until none is)
        degree = Counter(k for e in edges for k in h.edges[e])
        loose = {k for k, d in degree.items() if d == 1 and not mask[k]}
        if not loose:
            break
        edges = [e for e in edges if not loose & set(h.edges[e])]
    given = [k for k in range(h.num_maps) if mask[k]]
    if len(given) < 2 or not edges:
        return None
    offsets = np.cumsum([0] + list(h.sizes))
    src = np.concatenate([offsets[h.edges[e][0]] + np.arange(h.sizes[h.edges[e][0]]) for e in edges])
    dst = np.concatenate([offsets[h.edges[e][1]] + h._cpu_parents(e).numpy() for e in edges])
    ids = _components_of(src, dst, int(offsets[-1]), {k: (int(offsets[k]), h.sizes[k]) for k in given})
    components = int(max(int(c.max()) for c in ids.values())) + 1
    holds = torch.stack([torch.bincount(c, minlength=components) for c in ids.values()])  # (maps, components)
    sizes = torch.tensor([h.sizes[k] for k in given]).unsqueeze(1)
    partly = (holds > 0) & (holds < sizes)  # a map with some, not all, of its cells in the component
    shared = (holds > 0).sum(0) >= 2
    return ids if bool((shared & partly.any(0)).any()) else None


@functools.lru_cache(maxsize=16)
def consistency_constraints(h: Graph, mask: tuple[bool, ...]) -> tuple[Tensor, list[int], dict[int, int]] | None:
    """``(C, given maps, offsets)``: the linear constraints the given maps' values must meet for
    some scored maps to pool onto them all, ``C q = 0`` for ``q`` the given maps' cells stacked
    in map order (``offsets[k]``: where map ``k``'s start), ``C`` with orthonormal rows (float64,
    on the CPU).  Every edge's equations ``P_e u_a − u_b = 0`` split into the scored maps'
    columns ``A`` and the given maps' ``G``; the constraints are ``Nᵀ G`` for ``N`` the left
    null space of ``A`` (dense SVDs).  None where there are none, or where the structure is
    larger than :data:`PROJECTION_LIMIT` or :data:`PROJECTION_ENTRIES` allow (read when a
    structure is first built: cached)."""
    scored = [k for k in range(h.num_maps) if not mask[k]]
    given = [k for k in range(h.num_maps) if mask[k]]
    rows = sum(h.sizes[b] for _, b in h.edges)
    n_scored, n_given = sum(h.sizes[k] for k in scored), sum(h.sizes[k] for k in given)
    if not given or not rows or rows ** 2 * max(n_scored, 1) > PROJECTION_LIMIT or \
            rows * (n_scored + n_given) > PROJECTION_ENTRIES:
        return None
    offsets = {}
    for group in (scored, given):
        start = 0
        for k in group:
            offsets[k], start = start, start + h.sizes[k]
    A = torch.zeros(rows, n_scored, dtype=torch.float64)
    Gm = torch.zeros(rows, n_given, dtype=torch.float64)
    first = 0
    for e, (a, b) in enumerate(h.edges):
        for k, cells, sign in ((a, first + h._cpu_parents(e), 1.0), (b, first + torch.arange(h.sizes[b]), -1.0)):
            (Gm if mask[k] else A).index_put_((cells, offsets[k] + torch.arange(h.sizes[k])),
                                             torch.full((h.sizes[k],), sign, dtype=torch.float64), accumulate=True)
        first += h.sizes[b]
    if n_scored:
        U, S, _ = torch.linalg.svd(A, full_matrices=True)
        rank = int((S > float(S.max()) * rows * 1e-14).sum()) if S.numel() else 0
        C = U[:, rank:].T @ Gm
    else:
        C = Gm
    if not C.shape[0]:
        return None
    _, S, Vh = torch.linalg.svd(C, full_matrices=False)  # (an orthonormal basis of its rows)
    C = Vh[S > 1e-10 * max(1.0, float(S.max()))]
    if not C.shape[0]:
        return None
    return C, given, {k: offsets[k] for k in given}


def _projected(h: Graph, mask: tuple[bool, ...], flat: dict) -> None:
    """:func:`agreeing_given`'s last step, on ``flat`` in place: where the given maps still break
    a constraint of :func:`consistency_constraints` by more than :data:`AGREEMENT_MOVE`, their
    projection onto the consistent ones weighted by their values (``q − D Cᵀ (C D Cᵀ)⁻¹ C q``,
    ``D = diag q``, so that a cell moves in proportion to itself), each map then renormalised
    (related maps' totals agree, so the constraints, homogeneous, still hold)."""
    built = consistency_constraints(h, mask)
    if built is None:
        return
    C, given, offsets = built
    q = torch.cat([flat[k] for k in given], 1)
    C = C.to(q.device)
    broken = q @ C.T
    if not float(broken.abs().max()) > AGREEMENT_MOVE:  # (NaN: left to the solve's checks)
        return
    weighted = torch.einsum("kn,bn,jn->bkj", C, q, C)
    moved = q - q * (torch.linalg.solve(weighted, broken.unsqueeze(-1)).squeeze(-1) @ C)
    for k in given:
        part = moved[:, offsets[k]:offsets[k] + h.sizes[k]]
        flat[k] = part / part.sum(1, keepdim=True)


@functools.lru_cache(maxsize=16)
def _given_structure(h: Graph, mask: tuple[bool, ...]) -> tuple[tuple[list, list], dict | None, dict | None]:
    """:func:`given_reach`, :func:`joined_given_blocks` and :func:`components_of_every_edge` of
    ``(h, mask)``, built once: they depend on the structure alone, and :func:`agreeing_given`
    runs twice per forward with a learned temperature (the inputs, then the polish) and again
    every step of a training loop.  (Kept read-only by their users.)"""
    reach = given_reach(h, mask)
    joined, every_edge = joined_given_blocks(h, mask, reach), components_of_every_edge(h, mask)
    # where one grouping's agreement implies the other's, only the finer is kept: a star of four 64² leaves
    # onto a 16² centre (which the every-edge components hold, and given_reach's join only on the coarser
    # map the centre pools into), batch 16, took 8.1 ms with both, against 2.4 ms before either (ca_rev291)
    if joined is not None and every_edge is not None:
        if _implied(joined, every_edge):
            every_edge = None
        elif _implied(every_edge, joined):
            joined = None
    return reach, joined, every_edge


def _implied(finer: dict[int, Tensor], coarser: dict[int, Tensor]) -> bool:
    """Whether mass agreeing on every component of ``finer`` makes it agree on every component of
    ``coarser`` (both ``{given map: component ids}``): each finer component lies in one coarser
    component, and the given maps holding cells in a coarser component hold cells in each finer
    component inside it."""
    pairs = torch.unique(torch.stack([torch.cat(list(finer.values())), torch.cat(list(coarser.values()))]), dim=1)
    if len(torch.unique(pairs[0])) != pairs.shape[1]:  # (a finer component split over two coarser ones)
        return False
    inside = dict(zip(pairs[0].tolist(), pairs[1].tolist()))
    held_finer, held_coarser = _holders(finer), _holders(coarser)
    return all(held_finer[f] == held_coarser[inside[f]] for f in held_finer)


def _holders(ids: dict[int, Tensor]) -> dict[int, set[int]]:
    """``{component: the given maps holding cells in it}`` of ``{given map: component ids}``."""
    held: dict[int, set[int]] = {}
    for k, c in ids.items():
        for component in torch.unique(c).tolist():
            held.setdefault(component, set()).add(k)
    return held


def _least_squares_cells(size: int, parents: Sequence[Tensor], pools: Sequence[Tensor]) -> Tensor:
    """``x`` ``(B, size)`` of least norm minimising ``Σ_a ‖P_a x − q_a‖²`` (``P_a`` pools by
    ``parents[a]``, ``q_a = pools[a]``, float64), by conjugate gradients on the normal equations
    from zero (exact in at most their rank steps; twice that allowed for rounding)."""
    parents = [p.to(pools[0].device) for p in parents]

    def pooled(x: Tensor) -> list[Tensor]:
        return [x.new_zeros(x.shape[0], q.shape[1]).index_add_(1, p, x) for p, q in zip(parents, pools)]

    def spread(ys: Sequence[Tensor]) -> Tensor:
        return torch.stack([y[:, p] for y, p in zip(ys, parents)]).sum(0)

    rhs = spread(pools)
    x, r = torch.zeros_like(rhs), rhs.clone()
    d, rr = r.clone(), (r * r).sum(1)
    stop = 1e-30 * rr
    for _ in range(2 * sum(q.shape[1] for q in pools) + 10):
        if bool((rr <= stop).all()):
            break
        nd = spread(pooled(d))
        dnd = (d * nd).sum(1)
        alpha = torch.where(dnd > 0, rr / dnd.clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        x, r = x + alpha[:, None] * d, r - alpha[:, None] * nd
        new = (r * r).sum(1)
        beta = torch.where(rr > 0, new / rr.clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        d, rr = r + beta[:, None] * d, new
    return x


def agreeing_given(h: Graph, given: Sequence[Tensor | None]) -> list[Tensor | None] | None:
    """Given maps (float64, each summing to one) made to agree where they hold the same cells,
    or None where no two are related.  A pass makes up to four moves.  First the given maps a map
    pools into become pools of one map of its cells: of the given map itself, or of the cells
    that fit them best (:func:`_least_squares_cells`; a map's quadrants and both its pairs of
    halves, three coarsenings none nested in another: ca_rev112, ca_rev113), the finest maps
    first.  Then the given maps that pool into a map are scaled, cell by cell of that map, to
    their mean pool there, the finest maps first (the leaves of a star pooled onto its centre).
    Then the cells of each component of :func:`joined_given_blocks` are scaled, map by map, to
    the mean mass of the component over the given maps there (two coarsenings sharing a block),
    and last likewise those of :func:`components_of_every_edge` (given maps hanging off scored
    maps that meet at a third, which :func:`given_reach` does not relate: ca_rev291); where one
    grouping's agreement implies the other's, only the finer is used.
    Passes are made until the moves after the first move no value by more than
    :data:`AGREEMENT_MOVE` (one pass where no map has two given maps pooling into it
    and the components' masses agree: the first move's pools are exact by construction), at
    most :data:`AGREEMENT_PASSES`.  Rounded to float32 apart the given maps differ by rounding,
    no map pools onto them all, and a float64 solve drifts its duals without bound (to 8.4e17,
    its gradient 62 % off: ca_rev111).  With the components' masses alone, a star's given leaves
    pooled onto a centre that pools on into a coarser map agreed on the coarser map only, 6.8e-10
    apart on the centre, and the solve refused (ca_rev282).  After the passes, where a constraint
    of :func:`consistency_constraints` is still broken (a relation no move enforces: a difference
    of cells, ca_rev292), the given maps are projected onto the consistent ones
    (:func:`_projected`, ca_rev293); a structure too large for those constraints relies on the
    passes alone."""
    mask = tuple(q is not None for q in given)
    reach, joined, every_edge = _given_structure(h, mask)
    if joined is None and every_edge is None and consistency_constraints(h, mask) is None:
        return None  # (a relation that no grouping holds, a difference of cells, is still projected: ca_rev293)
    out = list(given)
    batch = next(q for q in given if q is not None).shape[0]
    flat = {k: q.reshape(batch, -1) for k, q in enumerate(given) if q is not None}
    device = next(iter(flat.values())).device
    groupings = [_grouping({k: c.to(device) for k, c in ids.items()})
                 for ids in (joined, every_edge) if ids is not None]
    for _ in range(AGREEMENT_PASSES):
        any_fit = _pooled_from_one_map(h, reach[0], mask, flat, batch)
        fitted = dict(flat)
        _agreeing_on_cells(h, reach[1], mask, flat, batch)
        for ids in groupings:
            _mass_per_component(ids, flat, batch)
        # (absolute: each map sums to one.  Relative, a small cell's rounding in the least squares of the
        # first move, 1e-12 of itself, kept one structure of 500 passing to the cap: ca_rev288)
        moved = max(float((flat[k] - fitted[k]).abs().max()) for k in flat)
        if not moved > AGREEMENT_MOVE:  # (NaN in: no pass can settle it; it is left to the solve's checks)
            break
        # with no map fitted, a next pass whose moves all find the maps agreeing moves nothing (the last
        # move's masses agree by construction): measured without it (a star of four 64² leaves onto a 16²
        # centre, batch 16: 14 ms in two passes, against 3.5 ms with the masses alone)
        if not any_fit and not max([_agreeing_on_cells(h, reach[1], mask, flat, batch, scale=False)]
                                   + [_mass_per_component(ids, flat, batch, scale=False)
                                      for ids in groupings]) > AGREEMENT_MOVE:
            break
    _projected(h, mask, flat)
    for k, q in enumerate(given):
        if q is not None:
            out[k] = flat[k].reshape(q.shape)
    return out


def _grouping(ids: dict[int, Tensor]) -> tuple[dict[int, Tensor], int, Tensor]:
    """``(ids, components, present)``: a grouping's component ids per given map, how many
    components, and how many given maps hold cells in each (``(components,)``)."""
    components = int(max(int(c.max()) for c in ids.values())) + 1
    present = torch.stack([torch.bincount(c, minlength=components).clamp(max=1) for c in ids.values()]).sum(0)
    return ids, components, present


def _mass_per_component(grouping: tuple[dict[int, Tensor], int, Tensor], flat: dict, batch: int,
                        scale: bool = True) -> float:
    """:func:`agreeing_given`'s third and fourth moves, on ``flat`` in place: each given map's
    cells of a component (:func:`_grouping` of :func:`joined_given_blocks`, or of
    :func:`components_of_every_edge`) scaled to the mean mass of the component over the given
    maps that hold cells in it.  The largest distance of a map's mass from that mean; with
    ``scale`` False that alone, nothing moved."""
    ids, components, present = grouping
    first = next(iter(flat.values()))
    mass = {k: first.new_zeros(batch, components).index_add_(1, c, flat[k]) for k, c in ids.items()}
    target = torch.stack(list(mass.values())).sum(0) / present.to(first.device, first.dtype)
    # (a map without cells in a component has mass 0 there, a given map's cells are positive)
    apart = max(float(torch.where(m > 0, m - target, torch.zeros_like(m)).abs().max()) for m in mass.values())
    if scale:
        for k, c in ids.items():
            flat[k] = flat[k] * (target[:, c] / mass[k][:, c])
    return apart


def _pooled_from_one_map(h: Graph, down: list[list], mask: tuple[bool, ...], flat: dict, batch: int) -> bool:
    """:func:`agreeing_given`'s first move, on ``flat`` (``{given map: (B, n_k)}``) in place;
    whether any map had given maps to pool onto."""
    # the given maps a map pools into become pools of one map of it, the finest maps first: a map's fit
    # moves the given maps it reaches, and a given map among them fixes those below it only afterwards
    # (coarsest first, a given map between scored maps had fixed them before a finer map's fit moved it,
    # and they stayed 1.6e-9 apart: a float32 solve's temperature gradient NaN, ca_rev280)
    any_fit = False
    for m in h.order:
        below = down[m]
        if len(below) + int(mask[m]) < 2:
            continue
        any_fit = True
        if mask[m]:  # a given map fixes those below it
            fixed = flat[m]
        else:
            fixed = _least_squares_cells(h.sizes[m], [onto for _, onto in below], [flat[t] for t, _ in below])
            fixed = fixed / fixed.sum(1, keepdim=True)  # (its pools then sum to one each, as a scored map must)
        for t, onto in below:
            flat[t] = fixed.new_zeros(batch, h.sizes[t]).index_add_(1, onto.to(fixed.device), fixed)
    return any_fit


def _agreeing_on_cells(h: Graph, up: list[list], mask: tuple[bool, ...], flat: dict, batch: int,
                       scale: bool = True) -> float:
    """:func:`agreeing_given`'s second move, on ``flat`` in place: the given maps that pool into a
    map (and the map itself, where given) scaled, cell by cell of that map, to their mean pool
    there, the finest maps first (a coarser map's scaling keeps a finer one's agreement: the
    given maps agreeing on the finer map's cells have the same pools on the coarser one).  The
    largest distance of a pool from the mean it met (0 where no map has two given maps pooling
    into it); with ``scale`` False that distance alone, nothing moved."""
    apart = 0.0
    for m in h.order:
        members = list(up[m]) + ([(m, None)] if mask[m] else [])
        if len(members) < 2 or (not mask[m] and len(h.in_edges[m]) == 1):
            # a scored map with one finer map: its given maps agree there already (that map scored), or it
            # is the one given map that pools into it (given: the walk stops there)
            continue
        pools = [flat[g] if into is None else
                 flat[g].new_zeros(batch, h.sizes[m]).index_add_(1, into.to(flat[g].device), flat[g])
                 for g, into in members]
        mean = torch.stack(pools).mean(0)
        apart = max(apart, max(float((pool - mean).abs().max()) for pool in pools))
        if not scale:
            continue
        for (g, into), pool in zip(members, pools):
            factor = mean / pool
            flat[g] = flat[g] * (factor if into is None else factor[:, into.to(factor.device)])
    return apart


def agreement_factors(h: Graph, given: Sequence[Tensor | None], floor: float, allowed: float) -> dict[int, Tensor]:
    """``{given map: (B, n_k) factors}`` that make the given maps ``given`` (float64, each summing
    to one, ``(B, *shape)``) agree (:func:`agreeing_given`), carrying no gradient, per sample only
    where they are apart by more than ``floor`` and no more than ``allowed`` (1 elsewhere: maps
    closer than a solve resolves are used bit for bit as given; maps further apart than a map's
    sum may be off are left to contradict each other, which the solve reports); empty where no
    two given maps are related."""
    agreed = agreeing_given(h, given)
    if agreed is None:
        return {}
    batch = next(q for q in given if q is not None).shape[0]
    factors = {k: (a / w).reshape(batch, -1) for k, (a, w) in enumerate(zip(agreed, given))
               if a is not None and w is not None}
    apart = torch.stack([(f - 1).abs().amax(1) for f in factors.values()]).amax(0)  # per sample
    near = ((apart <= allowed) & (apart > floor)).view(-1, 1)
    return {k: torch.where(near, f, torch.ones_like(f)) for k, f in factors.items()}
