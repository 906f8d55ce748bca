r"""Graphs of attention maps: the structure of a consistent-attention problem (docs/design.md §1).

A :class:`Graph` has ``M`` maps and ``E >= 1`` edges.  Map ``k`` has ``n_k`` cells arranged as a
grid of shape ``shapes[k]`` (stored flattened in C order).  Edge ``e = (a → b)`` says that map
``b`` is a *coarsening* of map ``a``: every cell ``i`` of ``a`` lies in exactly one cell
``π_e(i)`` of ``b``, and no cell of ``b`` is empty.  The edge's constraint is ``P_e p_a = p_b``.
Two operators connect the two maps of an edge:

* ``aggregate(p, e)``  = ``P_e p``   sums the cells of ``a`` inside every cell of ``b``;
* ``broadcast(y, e)``  = ``P_eᵀ y``  copies each value of ``b`` onto the cells of ``a`` inside it.

An edge is either a *grid* edge (both maps are grids with the same number of dimensions and
every dimension of ``b`` divides the same dimension of ``a``: blocks of the factors
``shapes[a][d] // shapes[b][d]``) or a *parent-map* edge (an integer tensor ``π_e`` of shape
``(n_a,)`` with values in ``[0, n_b)``: superpixels, regions, any partition).  Grid edges use
separable strided reductions (one per grid dimension, each an elementwise combination of
contiguous slices: several times faster than ``avg_pool`` on one channel on the CPU, and any
number of dimensions); parent-map edges use ``index_add`` / ``scatter_reduce`` /
``index_select``.  Every kernel accepts any leading batch dimensions and any floating dtype,
runs on the device of its input and is differentiable.

The edges form a directed acyclic graph with no edge implied by a path through others.  A
chain of nested partitions (:class:`~convex_attention.hierarchy.Hierarchy`, edge ``k = (k →
k+1)``) is the first case; a *forest* (every map has at most one coarsening: chains, stars) has
the closed form of docs/design.md §3; any other graph (a map with two coarsenings that do not
nest: rows and columns, a grid and regions) is solved through its dual.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet

import numpy as np
import torch
from torch import Tensor

__all__ = ["Graph", "MAX_CELLS", "KINDS"]

# Above this block factor a single strided reduction beats a chain of slice combinations.
_CHAIN_LIMIT = 8

# Graph._expand_last copies by nearest-exact upsampling up to this factor (beyond it no faster),
# and rows up to this many fine cells: its source index floor((i + 1/2) * fl(1/f)) is formed in
# float32, whose rounding, about (i/f) * 2**-23, must stay below 1/(2f), the distance of
# (i + 1/2)/f from an integer: exact for i below 2**22 at any f (the limit keeps 64x inside).
_UPSAMPLE_FACTOR_LIMIT = 4
_UPSAMPLE_WIDTH_LIMIT = 2 ** 16
# (not bfloat16: its upsampling goes through float32 and gives a NaN other bits than the input's; nor
# float16, whose upsampling quiets a signalling NaN, 0x7c01 -> 0x7e01, on every kernel: ca_rev243)
_UPSAMPLE_DTYPES = (torch.float32, torch.float64)

# The most cells one map may have: 2**36 ≈ 6.9e10, a float32 map of 275 GB, beyond any
# single accelerator's memory.  Checked on the sizes alone, before anything is allocated.
MAX_CELLS = 2 ** 36

#: How many (map, composed partition) states the check for implied edges explores in all before
#: it stops with a warning (paths that compose differently can be exponentially many).
IMPLIED_CHECK_STATES = 20_000

# The structure kinds, from the most special to the most general (each includes the ones before).
KINDS = ("chain", "forest", "graph")


def _upsamples(y: Tensor, f: int) -> bool:
    """Whether :meth:`Graph._expand_last` copies ``y`` by upsampling: on the CPU (elsewhere
    repeat_interleave is not the cost), for a floating ``y`` whose last dimension times ``f`` is
    within the limits above, outside autograd (repeat_interleave's backward sums the ``f``
    gradients in its own order) and torch.func (a wrapped tensor keeps torch's own path), and not
    where torch.compile traces it (its tracer cannot follow the torch.func check: ``fullgraph=True``
    failed on every grid kernel) or on an empty last dimension (``reshape(-1, 1, 0)``): ca_rev243."""
    return (y.device.type == "cpu" and y.dtype in _UPSAMPLE_DTYPES and 1 < f <= _UPSAMPLE_FACTOR_LIMIT
            and y.dim() > 0 and 0 < y.shape[-1] * f <= _UPSAMPLE_WIDTH_LIMIT
            and not (y.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(y))


def _finite_or_zero(m: Tensor) -> Tensor:
    """Block maxima that are not finite replaced by 0: the shift that keeps a block whose every
    cell is masked (``-inf``) at log-sum-exp ``-inf``, and one holding ``+inf`` at ``+inf`` as
    ``torch.logsumexp`` gives, rather than ``∓inf - (∓inf)`` = NaN (ca_rev140)."""
    return torch.where(torch.isfinite(m), m, 0.0)


class FrozenList(list):
    """A list that refuses to change: the structure a graph hands out (``edges``, ``shapes``,
    ``order``, …) is the one its kernels read, so changing it in place (``g.edges.sort()``)
    paired an edge's maps with another edge's partition and solved another problem silently,
    while the graph still compared equal to a fresh one (a review).  It compares equal to a
    plain list of the same items; ``list(x)`` gives a copy to change."""

    def __init__(self, items=()):
        if getattr(self, "_built", False):  # list.__init__ would refill it in place
            self._refuse()
        super().__init__(items)
        self._built = True

    def _refuse(self, *args, **kwargs):
        raise TypeError("a graph's structure cannot be changed in place (its kernels and its cache key read it); "
                        "take a copy with list(...) and build a new Graph")

    append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce_ex__(self, protocol):  # pickle and deepcopy rebuild it whole (not by extend)
        return (type(self), (list(self),))


def _as_shape(shape, owner: str, what: str = "shape", unit: str = "level") -> tuple[int, ...]:
    """A map's grid shape as a tuple of positive ints, at most ``MAX_CELLS`` cells.

    ``owner`` names the map in messages ("level 3", "map 3"); ``unit`` is its kind ("level", "map")."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    # (a set or a mapping has no order of its own: {2, 16} had built a (16, 2) map, ca_rev179)
    if isinstance(shape, (str, bytes, Tensor, AbstractSet, Mapping)) or shape is None:
        raise TypeError(f"{what} of {owner} must be an int or a tuple of ints, got {shape!r}")
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{what} of {owner} must be an int or a tuple of ints, got {shape!r}") from None
    if len(shape) == 0:
        raise ValueError(f"{what} of {owner} is empty; give at least one dimension, e.g. (8, 8)")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{what} of {owner} must contain ints, got {shape!r}")
        if s <= 0:
            raise ValueError(f"{what} of {owner} must be positive in every dimension, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    cells = math.prod(shape)
    if cells > MAX_CELLS:
        raise ValueError(f"{owner} has {cells} cells ({what} {shape}), above the limit of {MAX_CELLS} "
                         f"(2**36, convex_attention.hierarchy.MAX_CELLS) cells per {unit}")
    return shape


def _as_parent_map(par, label: str, n_fine: int, n_coarse: int, fine: str, coarse: str,
                   fine_shape: tuple[int, ...] | None = None) -> Tensor:
    """A parent map as a validated LongTensor ``(n_fine,)`` with values in ``[0, n_coarse)``.

    ``label`` names the argument ("parents[0]", "edge 1 (map 0 → map 2): parents"); ``fine``
    and ``coarse`` name the two maps ("level 0", "map 2").  A tensor shaped like the fine
    map's grid (``fine_shape``) is read in C order."""
    expected = (f"{label} must be a 1-D integer tensor (or sequence of ints) of shape ({n_fine},), "
                f"one {coarse} cell id in [0, {n_coarse}) per {fine} cell")
    if isinstance(par, Tensor):
        if par.is_meta:  # (torch's own error, from deep inside: "Cannot copy out of meta tensor": ca_rev159)
            raise TypeError(f"{label} is on the meta device, which holds no values: give the ids as host data "
                            f"(a tensor on the CPU or another device, a NumPy array, a list)")
        par = par.detach().cpu()
        if par.layout != torch.strided:  # a sparse tensor of ids is read as its dense values (ca_rev159)
            par = par.to_dense()
        if par.dtype == torch.uint64 and par.numel() and int(par.numpy().max()) > torch.iinfo(torch.long).max:
            # (cast to int64 it read "got parent index -9223372036854775807", as numpy's did: review 47;
            # torch has no max of uint64, numpy has)
            raise ValueError(f"{label} out of range: {coarse} has {n_coarse} cells, got parent index "
                             f"{int(par.numpy().max())}")
    else:
        if par is None or isinstance(par, (str, bytes, numbers.Number)):
            raise TypeError(f"{expected}; got {type(par).__name__}")
        if isinstance(par, Sequence) and _holds_bool(par):
            # torch.as_tensor promotes [0, True, 1] to int64 and read True as cell 1 (a review)
            raise TypeError(f"{label} must hold integers, got a bool among them")
        if isinstance(par, np.ndarray):
            if par.dtype.kind == "u" and par.size and int(par.max()) > torch.iinfo(torch.long).max:
                # (as int64 it read "got parent index -9223372036854775808": a review)
                raise ValueError(f"{label} out of range: {coarse} has {n_coarse} cells, got parent index "
                                 f"{int(par.max())}")
            # a copy: a flipped array (negative stride) is read, a read-only one without torch's
            # warning that it is not writable (the graph copies it anyway)
            par = np.array(par)
        try:
            par = torch.as_tensor(par, device="cpu")  # host data whatever the default device (ca_rev159)
        except (OverflowError, RuntimeError, TypeError, ValueError) as err:
            # torch cannot read a sequence of numpy uint64 ids (or of torch.uint64 0-d tensors), which
            # numpy reads as the uint64 array that is taken (review 50)
            unsigned = np.array(par) if isinstance(par, Sequence) and "integer is required" in str(err) else None
            if unsigned is not None and unsigned.dtype == np.uint64:
                return _as_parent_map(unsigned, label, n_fine, n_coarse, fine, coarse, fine_shape)
            if "overflow" in str(err).lower():
                raise ValueError(f"{label} out of range: an id does not fit a 64-bit integer; "
                                 f"ids must be in [0, {n_coarse})") from None
            raise TypeError(f"{expected}; could not read it ({err})") from None
    if fine_shape is not None and len(fine_shape) > 1 and tuple(par.shape) == fine_shape:
        par = par.reshape(-1)
    if par.dim() != 1 or par.numel() != n_fine:
        raise ValueError(f"{expected}; got shape {tuple(par.shape)}")
    if not _integer_dtype(par):  # (a quantized or bits tensor was torch's own error from .to: ca_rev268)
        raise TypeError(f"{label} must hold integers, got dtype {par.dtype}")
    par = par.to(torch.long, copy=True)  # the graph's own: a later write to the caller's array changes nothing
    lo, hi = int(par.min()), int(par.max())
    if lo < 0 or hi >= n_coarse:
        bad = par[(par < 0) | (par >= n_coarse)]
        raise ValueError(f"{label} out of range: {coarse} has {n_coarse} cells, got parent index {int(bad[0])}")
    counts = torch.bincount(par, minlength=n_coarse)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel() > 0:
        raise ValueError(f"{label} leaves {empty.numel()} cell(s) of {coarse} empty (first: cell {int(empty[0])}); "
                         f"every coarse cell needs at least one child")
    return par.contiguous()


def _differentiated(x: Tensor) -> bool:
    """Whether autograd will differentiate an operation on ``x`` now: the block maxima then take
    the kernels whose ties share the gradient evenly, else the faster ones (ca_rev159)."""
    return x.requires_grad and torch.is_grad_enabled()


def _holds_bool(values: Sequence) -> bool:
    """Whether a (nested) sequence holds a bool anywhere: a grid-shaped nested list too (a review)."""
    # the element types first, in C: a list of plain ints (the common case) holds no bool, and
    # the per-element tests below cost 3x reading the list (0.51 s for 10**6 ids: review 50)
    if all(k is not bool and issubclass(k, (int, np.integer)) for k in set(map(type, values))):
        return False
    return any(isinstance(x, (bool, np.bool_))
               # a bool carried by a tensor or array element: torch.as_tensor promoted it to int64 too (review 47)
               or (isinstance(x, Tensor) and x.dtype == torch.bool)
               or (isinstance(x, np.ndarray) and x.dtype == np.bool_)
               or (isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and _holds_bool(x))
               for x in values)


def _grid_factor(fine: tuple[int, ...], coarse: tuple[int, ...], fine_name: str, coarse_name: str,
                 what: str) -> tuple[int, ...]:
    """The per-dimension factor of a grid edge, or ValueError naming ``what`` and the maps."""
    if len(coarse) != len(fine):
        raise ValueError(f"{what}: a grid edge needs maps with the same number of dimensions, {fine_name} is "
                         f"{len(fine)}-D {fine} and {coarse_name} is {len(coarse)}-D {coarse}; give a parent map "
                         f"for other partitions (or shape the coarse map like {tuple(1 for _ in fine)} with "
                         f"the kept dimensions)")
    for d, (nf, nc) in enumerate(zip(fine, coarse)):
        if nf % nc != 0:
            raise ValueError(f"{what}: grid does not divide: dimension {d} of {coarse_name} ({nc}) does not divide "
                             f"dimension {d} of {fine_name} ({nf}); shapes {fine} -> {coarse}")
    return tuple(nf // nc for nf, nc in zip(fine, coarse))


def _edge_list(edges) -> list:
    if isinstance(edges, (str, bytes, Tensor)) or not isinstance(edges, Sequence):
        raise TypeError(f"edges must be a list of (fine, coarse) or (fine, coarse, parents) tuples, "
                        f"got {type(edges).__name__}")
    if len(edges) == 0:
        raise ValueError("a graph needs at least one edge (fine, coarse[, parents]); for maps that need not "
                         "agree use method='softmax' on each")
    return list(edges)


def _map_index(value, num_maps: int, e: int, end: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"edge {e}: its {end} map must be a map index (an int in [0, {num_maps})), got {value!r}")
    if not 0 <= int(value) < num_maps:
        raise ValueError(f"edge {e} refers to map {int(value)}, which is not given: the graph has {num_maps} maps "
                         f"(indices 0 … {num_maps - 1}); add its shape or size, or fix the index")
    return int(value)


# torch's integer dtypes (not bool, nor the quantized qint8 … and bits8 … ones, which hold no plain ids)
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                   torch.uint64)


def _integer_dtype(array: Tensor | np.ndarray) -> bool:
    """Whether a tensor or numpy array holds integers (bool is not one, nor a quantized or bits dtype)."""
    if isinstance(array, Tensor):
        return array.dtype in _INTEGER_DTYPES and not array.is_quantized
    return array.dtype.kind in ("i", "u")


class Graph:
    r"""A graph of attention maps: maps with their own grids, edges "map b is a coarsening of map a".

    Build one with the constructor (grid shapes; each edge ``(fine, coarse)`` is a grid edge
    whose factors follow from the shapes, ``(fine, coarse, parents)`` a parent-map edge),
    :meth:`from_edges` (flat maps and parent maps: the fixed entry point for outside scripts)
    or the builders of the common families (:meth:`star`, :meth:`axial`, :meth:`grid_regions`).
    :class:`~convex_attention.hierarchy.Hierarchy` is the chain ``0 → 1 → … → L-1``.

    Validation refuses, naming the map or edge: a map that is not given, a malformed or
    non-partition edge, an edge given twice, a directed cycle, and an edge implied by a path
    through other edges (``a → b → c`` together with ``a → c``).  Disconnected parts are
    independent problems solved in one call.

    Attributes:
        num_maps: ``M``.
        shapes: ``M`` tuples, the grid shape of each map (``(n_k,)`` for flat maps).
        sizes: ``M`` ints, ``n_k = prod(shapes[k])``.
        edges: ``E`` pairs ``(fine, coarse)`` of map indices; edge ``e``'s dual ``λ_e`` has the
            coarse map's shape.
        num_edges: ``E``.
        kind: ``"chain"`` (one path), ``"forest"`` (every map has at most one coarsening) or
            ``"graph"``; facts :attr:`is_chain` and :attr:`is_forest`.
    """

    # How maps and edge indices are named in messages (the chain says "level" and "k").
    _map_word = "map"
    _edge_index = "e"

    def __init__(self, shapes: Sequence, edges: Sequence):
        shapes = self._check_shapes(shapes)
        edge_pairs, factors, parents = self._check_edges(shapes, edges)
        self._init_graph(shapes, edge_pairs, factors, parents)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_shapes(shapes) -> list[tuple[int, ...]]:
        if isinstance(shapes, (str, bytes, Tensor)) or not isinstance(shapes, Sequence):
            raise TypeError(f"shapes must be a list of map shapes (an int or a tuple of ints each), "
                            f"got {type(shapes).__name__}")
        if len(shapes) < 2:
            raise ValueError(f"a graph needs at least 2 maps, got {len(shapes)}")
        return [_as_shape(s, f"map {k}", unit="map") for k, s in enumerate(shapes)]

    @classmethod
    def _check_edges(cls, shapes: list[tuple[int, ...]], edges, need_parents: bool = False):
        """Validated edges: ``(pairs, factors, parents)``, one entry per edge; then the structure
        (no edge given twice, no directed cycle, no implied edge)."""
        M = len(shapes)
        sizes = [math.prod(s) for s in shapes]
        pairs: list[tuple[int, int]] = []
        factors: list[tuple[int, ...] | None] = []
        parents: list[Tensor | None] = []
        for e, edge in enumerate(_edge_list(edges)):
            form = "(fine, coarse, parents)" if need_parents else "(fine, coarse) or (fine, coarse, parents)"
            if isinstance(edge, (str, bytes, Tensor)) or not isinstance(edge, Sequence) or len(edge) not in (2, 3):
                raise TypeError(f"edge {e} must be a tuple {form}, got {edge!r}")
            a = _map_index(edge[0], M, e, "fine")
            b = _map_index(edge[1], M, e, "coarse")
            what = f"edge {e} (map {a} → map {b})"
            if a == b:
                raise ValueError(f"{what} joins a map to itself: a directed cycle; an edge goes from a finer map "
                                 f"to a coarser one")
            if len(edge) == 3 and edge[2] is None:  # (a grid edge is (fine, coarse): ca_rev179)
                grid = "" if need_parents else ", or (fine, coarse) for a grid edge"  # (from_edges takes none)
                raise TypeError(f"{what}: its parent map is None; give the map, an integer tensor of shape "
                                f"({sizes[a]},) with values in [0, {sizes[b]}){grid}")
            spec = edge[2] if len(edge) == 3 else None
            if spec is None:
                if need_parents:
                    raise TypeError(f"{what}: give its parent map, an integer tensor of shape ({sizes[a]},) with "
                                    f"values in [0, {sizes[b]})")
                factors.append(_grid_factor(shapes[a], shapes[b], f"map {a}", f"map {b}", what))
                parents.append(None)
            else:
                parents.append(_as_parent_map(spec, f"{what}: parents", sizes[a], sizes[b], f"map {a}", f"map {b}",
                                              shapes[a]))
                factors.append(None)
            for f, (a2, b2) in enumerate(pairs):
                if (a2, b2) == (a, b):
                    raise ValueError(f"{what} repeats edge {f}: one map is a coarsening of another in one way "
                                     f"only; drop one of them")
            pairs.append((a, b))
        cls._check_acyclic(M, pairs)

        def flat_parents(e: int) -> Tensor:
            par, factor = parents[e], factors[e]
            return par if par is not None else cls._grid_parents(shapes[pairs[e][0]], factor)  # type: ignore[arg-type]

        cls._check_not_implied(M, pairs, flat_parents, [f is not None for f in factors])
        return pairs, factors, parents

    @staticmethod
    def _check_acyclic(M: int, pairs: list[tuple[int, int]]) -> None:
        """ValueError naming a directed cycle of the edges, if any.  Depth-first with an explicit
        stack (a recursive search raised RecursionError on a chain of 1200 maps: a review)."""
        out: list[list[int]] = [[] for _ in range(M)]
        for a, b in pairs:
            out[a].append(b)
        state = [0] * M  # 0 unseen, 1 on the current path, 2 done
        for root in range(M):
            if state[root]:
                continue
            path = [root]
            todo = [iter(out[root])]
            state[root] = 1
            while todo:
                nxt = next(todo[-1], None)
                if nxt is None:
                    state[path.pop()] = 2
                    todo.pop()
                elif state[nxt] == 1:
                    cycle = path[path.index(nxt):] + [nxt]
                    raise ValueError("the edges form a directed cycle: " + " → ".join(f"map {k}" for k in cycle)
                                     + "; every edge must go from a finer map to a coarser one")
                elif state[nxt] == 0:
                    state[nxt] = 1
                    path.append(nxt)
                    todo.append(iter(out[nxt]))

    @staticmethod
    def _check_not_implied(M: int, pairs: list[tuple[int, int]], flat_parents: Callable[[int], Tensor],
                           grid: Sequence[bool] = ()) -> None:
        """ValueError where an edge ``a → c`` is the composition of the partitions along some
        path ``a → … → c`` of the other edges (it adds no constraint), naming that path.  An
        edge whose partition differs from every path's is a constraint of its own: kept.  Every
        path is considered (the first one found alone let an edge implied by a second path
        pass: a review); partitions that two paths compose alike are followed once.  Paths
        that compose differently can be exponentially many (a chain of diamonds of
        relabellings: 2**D): after :data:`IMPLIED_CHECK_STATES` (map, partition) states in all
        the check stops with a RuntimeWarning, and the edges it did not decide are kept (an
        implied edge is a redundant constraint, which ``dual`` solves).  ``grid[e]``: edge ``e`` is a
        grid edge; one with a path of grid edges beside it is implied (blocks of blocks are the blocks
        of the product factors), decided without building a parent map (a 1024**3 grid's took 40 GB
        to refuse: ca_rev268)."""
        out: list[list[tuple[int, int]]] = [[] for _ in range(M)]
        into: list[list[int]] = [[] for _ in range(M)]
        for f, (x, y) in enumerate(pairs):
            out[x].append((f, y))
            into[y].append(x)
        budget = IMPLIED_CHECK_STATES

        def implied(e: int, path: list[int]) -> None:
            a, c = pairs[e]
            route = " → ".join(f"map {k}" for k in path)
            raise ValueError(f"edge {e} (map {a} → map {c}) is implied by the path {route}: consistency along the "
                             f"path already makes map {c} the same coarsening of map {a}; drop edge {e}")

        for e, (a, c) in enumerate(pairs):
            # the maps on some path a → … → c: reachable from a and reaching c (c's ancestors)
            reaches_c = {c}
            stack = [c]
            while stack:
                for x in into[stack.pop()]:
                    if x not in reaches_c:
                        reaches_c.add(x)
                        stack.append(x)
            # another route a → … → c at all (a plain search: parent maps are built only if so, a
            # grid edge of 2**36 cells builds none)
            found, stack = False, [a]
            visited = {a}
            while stack and not found:
                for f, y in out[stack.pop()]:
                    if f != e and y in reaches_c and y not in visited:
                        found = found or y == c
                        visited.add(y)
                        stack.append(y)
            if not found:
                continue
            if e < len(grid) and grid[e]:
                came = {a: a}  # a path a → … → c of grid edges but e, breadth first
                stack = [a]
                while stack and c not in came:
                    x = stack.pop(0)
                    for f, y in out[x]:
                        if f != e and grid[f] and y in reaches_c and y not in came:
                            came[y] = x
                            stack.append(y)
                if c in came:
                    path = [c]
                    while path[-1] != a:
                        path.append(came[path[-1]])
                    implied(e, path[::-1])
            target = flat_parents(e)
            # depth-first over (map, composed partition of a's cells onto it, path), without edge e
            seen: set[tuple[int, bytes]] = set()
            todo: list[tuple[int, Tensor, list[int]]] = [(a, torch.arange(len(target), device="cpu"), [a])]
            while todo:
                node, along, path = todo.pop()
                for f, y in out[node]:
                    if f == e or y not in reaches_c:
                        continue
                    composed = flat_parents(f)[along]
                    if y == c:
                        if bool(torch.equal(composed, target)):
                            implied(e, path + [c])
                        continue
                    key = (y, composed.numpy().tobytes())
                    if key not in seen:
                        seen.add(key)
                        todo.append((y, composed, path + [y]))
                        budget -= 1
                        if budget < 0:
                            warnings.warn(f"Graph: the check for edges implied by paths stopped at edge {e} after "
                                          f"{IMPLIED_CHECK_STATES} path states (paths that compose differently "
                                          f"multiply); edges {e} to {len(pairs) - 1} were not checked and are kept "
                                          f"(an implied edge is a redundant constraint: 'dual' solves it)",
                                          RuntimeWarning, stacklevel=4)
                            return

    # ------------------------------------------------------------------ set-up
    def _init_graph(self, shapes: list[tuple[int, ...]], edges: list[tuple[int, int]],
                    factors: list[tuple[int, ...] | None], parents: list[Tensor | None]) -> None:
        self.shapes: list[tuple[int, ...]] = [tuple(s) for s in shapes]
        self.sizes: list[int] = [math.prod(s) for s in self.shapes]
        self.num_maps: int = len(self.shapes)
        self.edges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in edges]
        self.num_edges: int = len(self.edges)
        self._factors: list[tuple[int, ...] | None] = list(factors)
        # CPU parent maps; for grid edges None until first asked for (lazy).
        self._parents: list[Tensor | None] = list(parents)
        self._parents_on: dict[torch.device, dict[int, Tensor]] = {}
        self._flat: Graph | None = None
        self._solved_apart: list[tuple[list[int], list[int], Graph]] | None = None
        self._facts()
        self._structure: tuple | None = None  # (shapes, edges, each edge's partition): _partitions()
        self._fingerprint: bytes | None = None

    def _facts(self) -> None:
        """Derived structure: coarsenings and finer maps of each map, an order with every map
        after the maps finer than it, the sweep order of the edges, components, kind."""
        M = self.num_maps
        self.out_edges: list[list[int]] = [[] for _ in range(M)]
        self.in_edges: list[list[int]] = [[] for _ in range(M)]
        for e, (a, b) in enumerate(self.edges):
            self.out_edges[a].append(e)
            self.in_edges[b].append(e)
        # Kahn's algorithm, smallest index first: finest maps first
        remaining = [len(self.in_edges[k]) for k in range(M)]
        ready = sorted(k for k in range(M) if remaining[k] == 0)
        order: list[int] = []
        while ready:
            k = ready.pop(0)
            order.append(k)
            for e in self.out_edges[k]:
                b = self.edges[e][1]
                remaining[b] -= 1
                if remaining[b] == 0:
                    ready.append(b)
                    ready.sort()
        self.order: list[int] = order
        position = {k: i for i, k in enumerate(order)}
        self.sweep_order: list[int] = sorted(range(self.num_edges), key=lambda e: (position[self.edges[e][0]], e))
        # undirected components, each a sorted list of maps, ordered by their first map
        label = list(range(M))

        def find(x: int) -> int:
            while label[x] != x:
                label[x] = label[label[x]]
                x = label[x]
            return x

        for a, b in self.edges:
            ra, rb = find(a), find(b)
            if ra != rb:
                label[max(ra, rb)] = min(ra, rb)
        groups: dict[int, list[int]] = {}
        for k in range(M):
            groups.setdefault(find(k), []).append(k)
        self.components: list[list[int]] = [groups[r] for r in sorted(groups)]
        self.is_forest: bool = all(len(out) <= 1 for out in self.out_edges)
        self.is_chain: bool = (self.is_forest and len(self.components) == 1
                               and all(len(i) <= 1 for i in self.in_edges))
        self.kind: str = "chain" if self.is_chain else "forest" if self.is_forest else "graph"
        self.roots: list[int] = [k for k in order if not self.out_edges[k]]
        # the chain of the old API: edge k = (k → k+1)
        self._index_chain = self.edges == [(k, k + 1) for k in range(M - 1)]
        self._freeze()

    def _freeze(self) -> None:
        """The structure a graph hands out, as :class:`FrozenList` s."""
        for name in ("shapes", "sizes", "edges", "order", "sweep_order", "roots"):
            setattr(self, name, FrozenList(getattr(self, name)))
        for name in ("out_edges", "in_edges", "components"):
            setattr(self, name, FrozenList(FrozenList(x) for x in getattr(self, name)))
        factors = vars(self).get("factors")
        if type(factors) is list:  # a Hierarchy's, pickled before they were frozen
            vars(self)["factors"] = FrozenList(factors)

    @classmethod
    def _build(cls, shapes, edges, factors, parents) -> Graph:
        # Internal: structures this module built itself (no second validation pass).
        g = cls.__new__(cls)
        Graph._init_graph(g, shapes, edges, factors, parents)
        return g

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edges(cls, sizes: Sequence[int] | Tensor | np.ndarray, edges: Sequence) -> Graph:
        """Flat maps and parent-map edges: the fixed entry point for outside scripts.

        Args:
            sizes: ``M`` positive ints, the number of cells of each map.
            edges: ``E`` tuples ``(fine, coarse, parents)``: map indices in ``[0, M)`` and an
                integer tensor (or sequence) ``parents`` of shape ``(sizes[fine],)`` with values in
                ``[0, sizes[coarse])``, every coarse cell receiving at least one fine cell.

        ``scores[k]`` for :func:`convex_attention.solve` then has shape ``(B, sizes[k])``.
        ``sizes`` may also be a one-dimensional integer tensor or numpy array.
        """
        if isinstance(sizes, (Tensor, np.ndarray)):
            if sizes.ndim != 1 or not _integer_dtype(sizes):
                raise TypeError(f"sizes must be a list of map sizes (cells per map), or a one-dimensional "
                                f"integer array of them, got {type(sizes).__name__} of shape "
                                f"{tuple(sizes.shape)} and dtype {sizes.dtype}")
            sizes = sizes.tolist()
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(f"sizes must be a list of map sizes (cells per map), got {type(sizes).__name__}")
        if len(sizes) < 2:
            raise ValueError(f"a graph needs at least 2 maps, got {len(sizes)}")
        shapes = [_as_shape(n, f"map {k}", "size", "map") for k, n in enumerate(sizes)]
        if any(len(s) != 1 for s in shapes):
            raise ValueError(f"Graph.from_edges takes flat maps: give the sizes as ints (cells per map), got "
                             f"{[s if len(s) > 1 else s[0] for s in shapes]}; for grids use Graph(shapes, edges)")
        pairs, factors, parents = cls._check_edges(shapes, edges, need_parents=True)
        g = cls.__new__(cls)
        Graph._init_graph(g, shapes, pairs, factors, parents)
        return g

    @classmethod
    def star(cls, shapes: Sequence, coarse) -> Graph:
        """Several maps pooled onto one shared coarse map: maps ``0 … n-1`` are ``shapes`` (grids,
        each divisible by ``coarse``), map ``n`` is ``coarse``; edge ``k = (k → n)``.

        ``Graph.star([(64, 64)] * 4, (16, 16))``: four heads (or MRI sequences) that must agree
        after pooling onto one 16×16 map."""
        if isinstance(shapes, (str, bytes, Tensor)) or not isinstance(shapes, Sequence) or len(shapes) == 0:
            raise TypeError("shapes must be a non-empty list of the fine maps' grid shapes")
        n = len(shapes)
        return cls(list(shapes) + [coarse], [(k, n) for k in range(n)])

    @classmethod
    def axial(cls, shape) -> Graph:
        """A map and one coarsening per axis: its marginals.  For a 2-D ``(H, W)`` map, map 0 is
        ``(H, W)``, map 1 its rows ``(H, 1)`` and map 2 its columns ``(1, W)`` (grid edges
        ``0 → 1`` and ``0 → 2``): axial attention consistent with full attention.  Any number of
        dimensions >= 2 (map ``d+1`` keeps axis ``d``)."""
        shape = _as_shape(shape, "map 0", unit="map")
        if len(shape) < 2:
            raise ValueError(f"an axial graph needs a map with at least 2 dimensions, got shape {shape}")
        margins = [tuple(n if i == d else 1 for i, n in enumerate(shape)) for d in range(len(shape))]
        return cls([shape] + margins, [(0, d + 1) for d in range(len(shape))])

    @classmethod
    def grid_regions(cls, shapes: Sequence, regions, num_regions: int | None = None) -> Graph:
        """A chain of grids (finest first, as :meth:`Hierarchy.grid`) plus a region partition of
        its finest map that may cut across the grid.

        Maps ``0 … L-1`` are the grids (edges ``k = (k → k+1)``); map ``L`` holds the regions,
        ``(R,)`` cells; edge ``L-1 = (0 → L)``.  ``regions``: integer tensor shaped like
        ``shapes[0]`` (or flat) with values in ``[0, R)``, every region non-empty;
        ``num_regions`` defaults to ``max + 1``."""
        if isinstance(shapes, (str, bytes, Tensor)) or not isinstance(shapes, Sequence) or len(shapes) == 0:
            raise TypeError("shapes must be a non-empty list of grid shapes, finest first")
        if num_regions is None:
            try:
                counted = np.array(regions) if isinstance(regions, np.ndarray) else regions
                ids = torch.as_tensor(counted, device="cpu")  # host data whatever the default device (ca_rev159)
                # torch has no max for uint16/32/64 (they were refused); their ids are checked in range later
                if ids.dtype in (torch.uint16, torch.uint32, torch.uint64):
                    num_regions = int(ids.cpu().numpy().max()) + 1 if ids.numel() else 0
                else:
                    num_regions = int(ids.max()) + 1
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"regions must be an integer tensor shaped like the finest grid, got "
                                f"{type(regions).__name__} ({err})") from None
            if num_regions < 1:  # it read "shape of map L must be positive" (a review)
                raise ValueError(f"regions must hold region ids in [0, R), one per cell of the finest grid; got "
                                 f"ids up to {num_regions - 1}")
        L = len(shapes)
        edges: list[tuple] = [(k, k + 1) for k in range(L - 1)]
        edges.append((0, L, regions))
        return cls(list(shapes) + [num_regions], edges)

    @staticmethod
    def _grid_parents(fine: tuple[int, ...], factor: tuple[int, ...]) -> Tensor:
        # on the CPU whatever the default device (under torch.device("meta") they were meta
        # tensors, kept as the graph's CPU parent map: ca_rev98)
        coords = torch.meshgrid(*[torch.arange(n, device="cpu") // f for n, f in zip(fine, factor)], indexing="ij")
        coarse = tuple(n // f for n, f in zip(fine, factor))
        flat = torch.zeros(fine, dtype=torch.long, device="cpu")
        for d, c in enumerate(coords):
            flat = flat * coarse[d] + c
        return flat.flatten()

    # ------------------------------------------------------------------ basic facts
    def is_grid_edge(self, e: int) -> bool:
        """True for a grid edge (strided kernels), False for a parent-map edge."""
        return self._factors[e] is not None

    def pools_blocks(self, e: int) -> bool:
        """True where edge ``e`` pools blocks of a grid, however it was given (a grid factor, or a
        parent map that is a grid's pooling): a fact of the graph, as equality judges it, where
        :meth:`is_grid_edge` says how the edge was written."""
        return self._partitions()[2][e][0] == "grid"

    def edge_factor(self, e: int) -> tuple[int, ...] | None:
        """The per-dimension block factor of grid edge ``e``; ``None`` for a parent-map edge."""
        return self._factors[e]

    def coarsening(self, k: int) -> int | None:
        """The edge out of map ``k`` when it has exactly one coarsening, else ``None``."""
        return self.out_edges[k][0] if len(self.out_edges[k]) == 1 else None

    def not_forest_reason(self) -> str | None:
        """Why the graph is not a forest (names the first map with two or more coarsenings, and
        whether they nest: where one's cells are unions of another's, the graph says the same as
        one with that edge from the finer coarsening, which is named where the graph lacks it;
        only where every two of them nest can that make it a forest), or None.  Builds no grid
        edge's parent map (a 2**36-cell edge's is 512 GiB: ca_rev98, ca_rev116)."""
        for k, out in enumerate(self.out_edges):
            if len(out) > 1:
                reason = f"map {k} has {len(out)} coarsenings (" + \
                    ", ".join(f"map {self.edges[e][1]} (edge {e})" for e in out) + ")"
                nested = {(e, f) for e in out for f in out if e != f and self._blocks_nest(e, f)}
                if not nested:
                    return f"{reason}, which do not nest"
                apart = [(e, f) for e in out for f in out if e < f and (e, f) not in nested and (f, e) not in nested]
                # (advice only where no path joins the two maps already: the edge it names would repeat
                # an edge, be implied by a path, or close a cycle, ca_rev116)
                advice = [(e, f) for e, f in sorted(nested)
                          if not self._reaches(self.edges[e][1], self.edges[f][1])
                          and not self._reaches(self.edges[f][1], self.edges[e][1])]
                said = ""
                if advice:
                    e, f = advice[0]
                    finer, coarser = self.edges[e][1], self.edges[f][1]
                    said = (f"map {coarser}'s cells are unions of map {finer}'s, so edge {f} ({k} → {coarser}) can "
                            f"be replaced by an edge {finer} → {coarser} (its parents: map {coarser}'s cell of each "
                            f"cell of map {finer}), the same constraints")
                if not apart:
                    return f"{reason}, which nest" + (f": {said}, which may make the graph a forest" if said else "")
                a, b = (self.edges[e][1] for e in apart[0])
                return f"{reason}, not all nested" + (f": {said}" if said else "") + \
                    f"; maps {a} and {b} do not nest"
        return None

    def _reaches(self, a: int, b: int) -> bool:
        """Whether a path of edges leads from map ``a`` to map ``b``."""
        seen, todo = {a}, [a]
        while todo:
            for e in self.out_edges[todo.pop()]:
                n = self.edges[e][1]
                if n == b:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    def _blocks_nest(self, e: int, f: int) -> bool:
        """Whether the coarse map of edge ``f`` has cells that are unions of the coarse map of edge
        ``e``'s (both edges from one map): by their factors where both pool grid blocks (no parent
        map built), else by the parent maps (a grid edge's built only beside a parent map of the
        same size)."""
        ge, gf = (self._partitions()[2][x] for x in (e, f))
        if ge[0] == gf[0] == "grid":
            return len(ge[1]) == len(gf[1]) and all(b % a == 0 for a, b in zip(ge[1], gf[1]))
        pairs = self._cpu_parents(e) * self.sizes[self.edges[f][1]] + self._cpu_parents(f)
        return int(torch.unique(pairs).numel()) == self.sizes[self.edges[e][1]]  # each cell of e's map in one of f's

    def spanning_forest(self) -> list[int]:
        """Edges of a spanning forest: for every map its coarsening with the most cells (ties:
        the lowest edge index).  The whole graph for a forest."""
        keep = []
        for out in self.out_edges:
            if out:
                keep.append(max(out, key=lambda e: (self.sizes[self.edges[e][1]], -e)))
        return sorted(keep)

    def _cpu_parents(self, e: int) -> Tensor:
        par = self._parents[e]
        if par is None:
            factor = self._factors[e]
            assert factor is not None
            par = self._parents[e] = self._grid_parents(self.shapes[self.edges[e][0]], factor)
        return par

    def parents(self, e: int, device=None) -> Tensor:
        """The flat parent map of edge ``e``: LongTensor ``(n_fine,)`` with values in ``[0, n_coarse)``.

        A copy, the caller's to change: the graph keeps its own (a write to the tensor this
        returned changed the partition, unchecked: a review).
        """
        return self._device_parents(e, device).clone()

    def _device_parents(self, e: int, device=None) -> Tensor:
        """The graph's own parent map of edge ``e`` on ``device`` (never handed out): built on
        first use for grid edges (``8·n_fine`` bytes), then kept, once per device."""
        self._check_edge(e)
        device = torch.device("cpu") if device is None else torch.device(device)
        cpu = self._cpu_parents(e)
        if device.type == "cpu":
            return cpu
        on = self._parents_on.setdefault(device, {})
        if e not in on:
            # One copy per device, made once: no transfer on later calls.
            on[e] = cpu.to(device)
        return on[e]

    def flat(self) -> Graph:
        """The same structure with flat maps and parent-map edges (the scatter/gather path)."""
        if all(f is None for f in self._factors) and all(len(s) == 1 for s in self.shapes):
            return self
        if self._flat is None:
            self._flat = Graph._build([(n,) for n in self.sizes], self.edges, [None] * self.num_edges,
                                        [self._cpu_parents(e) for e in range(self.num_edges)])
        return self._flat

    def solved_apart(self) -> list[tuple[list[int], list[int], Graph]]:
        """The parts a solver treats as problems of their own: ``(maps, edges, graph)`` for each
        connected component with a constraint (``maps`` and ``edges`` ascending, numbered as in
        this graph; ``graph`` the part alone, its maps and edges renumbered in that order).  Maps
        without a constraint join the first part (they have no multiplier).  One part, this
        graph itself, where at most one component has a constraint.  Built once, then kept
        (the lists returned are copies, the caller's to change)."""
        # (getattr: a graph pickled before this attribute existed has none)
        if getattr(self, "_solved_apart", None) is None:
            joined = [c for c in self.components if len(c) > 1]
            if len(joined) <= 1:
                self._solved_apart = [(list(range(self.num_maps)), list(range(self.num_edges)), self)]
            else:
                joined[0] = sorted(joined[0] + [c[0] for c in self.components if len(c) == 1])
                parts = []
                for maps in joined:
                    index = {k: i for i, k in enumerate(maps)}
                    edges = [e for e, (a, _) in enumerate(self.edges) if a in index]
                    parts.append((maps, edges, Graph._build(
                        [self.shapes[k] for k in maps], [(index[a], index[b]) for a, b in
                                                          (self.edges[e] for e in edges)],
                        [self._factors[e] for e in edges], [self._parents[e] for e in edges])))
                self._solved_apart = parts
        assert self._solved_apart is not None
        return [(list(maps), list(edges), part) for maps, edges, part in self._solved_apart]

    def __getstate__(self) -> dict:
        """The graph as pickled (``torch.save`` of a model holding it, ``copy.deepcopy``): without
        its copies of the parent maps on other devices, a cache made again on first use, so that
        a model saved after running on a GPU loads where there is none (a review)."""
        state = dict(self.__dict__)
        state["_parents_on"] = {}
        # the parent maps as host data (NumPy), which torch.load's map_location leaves alone: as
        # tensors, map_location="meta" had made them meta tensors, holding none of their values,
        # and the graph could not be loaded (ca_rev182)
        state["_parents"] = [None if p is None else p.numpy() for p in self._parents]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        parents = []
        for e, p in enumerate(self._parents):
            if isinstance(p, Tensor) and p.is_meta:  # pickled as a tensor (before 2026-12-07), loaded onto meta
                raise ValueError(f"edge {e}'s parent map was saved as a tensor, which this load put on the meta "
                                 f"device, where it holds no values: load without map_location='meta' (the "
                                 f"graph keeps its parent maps on the CPU)")
            # on the CPU, as the graph keeps them, whatever map_location a load gave (torch.load(...,
            # map_location="cuda") of a model holding it had moved them)
            parents.append(None if p is None else torch.from_numpy(p) if isinstance(p, np.ndarray) else p.cpu())
        self._parents = parents
        self._freeze()  # a graph pickled before its lists were frozen (plain lists) gets them frozen

    def _partitions(self) -> tuple:
        """``(shapes, edges, per edge its partition)``, the partition as ``("grid", factor)`` for
        an edge that pools blocks, however it was given (a parent map that is a grid's pooling
        too), else ``("parents", digest)``: what equality, the hash and the fingerprint compare.
        Made on first use and kept; a grid edge's parent map is never built for it (a 2**36-cell
        edge's is 512 GiB, and under ``torch.device("meta")`` it was a meta tensor: ca_rev98)."""
        if getattr(self, "_structure", None) is None:  # (a graph pickled before it was kept has none)
            signatures: list[tuple] = []
            for e, factor in enumerate(self._factors):
                if factor is None:
                    factor = self._grid_factor_of(e)
                if factor is not None:
                    signatures.append(("grid", tuple(factor)))
                else:
                    # a digest, not hash(): Python salts hash(bytes) per process, so a graph
                    # unpickled elsewhere compared unequal to the same graph built there (a review)
                    par = self._parents[e]
                    assert par is not None
                    signatures.append(("parents", hashlib.blake2b(par.numpy().tobytes(), digest_size=16).digest()))
            self._structure = (tuple(self.shapes), tuple(self.edges), tuple(signatures))
        assert self._structure is not None
        return self._structure

    def _grid_factor_of(self, e: int) -> tuple[int, ...] | None:
        """The block factor of parent-map edge ``e`` where its parent map is exactly a grid's
        pooling of the fine map onto the coarse one (same dimensions, each divisible), else None."""
        a, b = self.edges[e]
        fine, coarse = self.shapes[a], self.shapes[b]
        if len(fine) != len(coarse) or any(n % c for n, c in zip(fine, coarse)):
            return None
        factor = tuple(n // c for n, c in zip(fine, coarse))
        par = self._parents[e]
        return factor if par is not None and torch.equal(par, self._grid_parents(fine, factor)) else None

    def __eq__(self, other) -> bool:
        """The same maps and the same partitions, however each edge was given: a grid edge equals
        the parent map it implies (built as ``Graph.grid`` and as ``Graph.from_edges`` with its
        parents, the same graph compared unequal, and a module refused duals made for it)."""
        return type(self) is type(other) and self._partitions() == other._partitions()

    def __hash__(self) -> int:
        return hash(self._partitions())

    def _kernels_key(self) -> tuple:
        """What decides the graph's kernels, for caches of objects built from them: the graph and
        how each edge was given (a grid factor, or None for a parent map).  Equal graphs whose
        edges are given otherwise pool in other summation orders; keyed by the graph alone, a
        cached Hessian built for one served the other, and a solve's last bits depended on which
        had run before (ca_rev99)."""
        return (self, tuple(self._factors))

    def fingerprint(self) -> bytes:
        """16 bytes (BLAKE2b) of the structure's kind (``Graph`` or ``Hierarchy``), the maps'
        shapes, the edges and every edge's partition: graphs equal as :meth:`__eq__` judges them
        have one fingerprint, in any process, and a grid edge builds no parent map for it.
        Modules whose parameters belong to the graph keep it in their state
        (:class:`convex_attention.nn.LearnedDuals`)."""
        known = getattr(self, "_fingerprint", None)  # (a graph pickled before it was kept has none)
        if known is None:
            known = self._fingerprint = hashlib.blake2b(repr((type(self).__name__,) + self._partitions()).encode(),
                                                        digest_size=16).digest()
        return known

    def __repr__(self) -> str:
        edges = [(a, b) if f is not None else (a, b, "parents") for (a, b), f in zip(self.edges, self._factors)]
        return f"Graph(shapes={self.shapes}, edges={edges})"

    def _check_edge(self, e: int) -> None:
        # any integer, NumPy's too, as edge endpoints take (np.int64(0) read "must be in [0, 0]")
        if isinstance(e, bool) or not isinstance(e, numbers.Integral) or not 0 <= e < self.num_edges:
            raise ValueError(f"constraint index {self._edge_index} must be in [0, {self.num_edges - 1}], got {e!r}")

    def _split(self, x: Tensor, k: int, what: str) -> tuple[int, ...]:
        shape = self.shapes[k]
        nd = len(shape)
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < nd or tuple(x.shape[x.dim() - nd:]) != shape:
            raise ValueError(f"{what} must have shape (..., {', '.join(map(str, shape))}) for {self._map_word} {k}, "
                             f"got {tuple(x.shape)}")
        return tuple(x.shape[: x.dim() - nd])

    # ------------------------------------------------------------------ operators
    def aggregate(self, p: Tensor, e: int) -> Tensor:
        """``P_e p``: sum over the fine cells inside each coarse cell of edge ``e``.

        ``(..., *shapes[fine]) -> (..., *shapes[coarse])``.
        """
        self._check_edge(e)
        self._split(p, self.edges[e][0], "aggregate input")
        return self._reduce(p, e, torch.add, "sum")

    def broadcast(self, y: Tensor, e: int) -> Tensor:
        """``P_eᵀ y``: copy each coarse value of edge ``e`` onto the fine cells inside it.

        ``(..., *shapes[coarse]) -> (..., *shapes[fine])``.
        """
        self._check_edge(e)
        a, b = self.edges[e]
        lead = self._split(y, b, "broadcast input")
        if self._factors[e] is not None:
            return self._grid_broadcast(y, e, lead)
        if len(self.shapes[b]) != 1:
            y = y.reshape(lead + (self.sizes[b],))
        out = y.index_select(-1, self._device_parents(e, y.device))
        return out if len(self.shapes[a]) == 1 else out.reshape(lead + self.shapes[a])

    def block_max(self, x: Tensor, e: int) -> Tensor:
        """Maximum over the fine cells of each coarse cell: ``(..., *shapes[fine]) -> (..., *shapes[coarse])``."""
        self._check_edge(e)
        self._split(x, self.edges[e][0], "block_max input")
        return self._reduce(x, e, torch.maximum, "amax")

    def block_logsumexp(self, x: Tensor, e: int) -> Tensor:
        """``log Σ_{fine cells} exp(x)`` per coarse cell, stabilised by the block maxima; differentiable.
        A block whose every cell is ``-inf`` gives ``-inf`` (log 0), as ``torch.logsumexp`` does, and
        passes no gradient (log 0's derivative times the zero a caller gives it was NaN: ca_rev126)."""
        m = _finite_or_zero(self.block_max(x.detach(), e))
        sums = self.aggregate(torch.exp(self._combine(x, m, e, torch.sub)), e)
        empty = sums == 0
        return (m + torch.where(empty, torch.ones_like(sums), sums).log()).masked_fill(empty, -math.inf)

    def block_exp(self, z: Tensor, e: int) -> tuple[Tensor, Tensor, Tensor]:
        """``q = exp(z − P_eᵀ blockmax(z))`` and its block sums: the stable core of a block softmax.

        Returns ``(q, blocksum, blockmax)``: ``q`` shaped like ``z`` (its largest entry in every
        block is 1, so nothing overflows), ``blocksum`` and ``blockmax`` shaped
        ``(..., *shapes[coarse])``; the block log-sum-exp is ``blockmax + log(blocksum)``.  A
        block whose every cell is ``-inf`` has ``blockmax`` 0, ``q`` and ``blocksum`` 0 there.
        Not differentiable (a kernel for the solvers).
        """
        # a block whose every cell is -inf has maximum -inf, and -inf - (-inf) was NaN: it is shifted
        # by 0 instead, so its q and sum are 0 and its log-sum-exp -inf (a review)
        zmax = _finite_or_zero(self.block_max(z, e))
        q = self._combine(z, zmax, e, torch.sub).exp_()
        return q, self.aggregate(q, e), zmax

    def block_softmax(self, z: Tensor, e: int) -> tuple[Tensor, Tensor]:
        """Softmax of ``z`` ``(..., *shapes[fine])`` within every coarse cell of edge ``e``.

        Returns ``(q, lse)``: ``q`` shaped like ``z`` (sums to one per block) and the block
        log-sum-exps ``(..., *shapes[coarse])``.  Not differentiable (a kernel for the solvers).
        """
        q, s, zmax = self.block_exp(z, e)
        self._combine(q, s.reciprocal(), e, Tensor.mul_)
        return q, zmax + s.log()

    def combine_broadcast(self, x: Tensor, y: Tensor, e: int, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """``op(x, P_eᵀ y)`` without materialising the full broadcast on grids.

        ``x``: ``(..., *shapes[fine])``; ``y``: ``(..., *shapes[coarse])`` (leading dimensions
        broadcast against each other); the result has ``x``'s grid shape.  An in-place
        ``op`` such as ``Tensor.mul_`` updates a contiguous ``x`` in place.
        """
        self._check_edge(e)
        # a map of another shape was reshaped into this one, its cells scrambled (a review)
        self._split(x, self.edges[e][0], "fine map")
        self._split(y, self.edges[e][1], "coarse map")
        return self._combine(x, y, e, op)

    def _combine(self, x: Tensor, y: Tensor, e: int, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """:meth:`combine_broadcast` without its checks: the solvers' inner loops, whose maps are
        shaped by construction (the checks cost a few per cent of a dual solve)."""
        out = op(self._fine_view(x, e), self._coarse_view(y, e))
        return out.reshape(tuple(out.shape[: out.dim() - self._view_ndim(e)]) + self.shapes[self.edges[e][0]])

    def fine_view(self, x: Tensor, e: int) -> Tensor:
        """``x`` ``(..., *shapes[fine])`` reshaped to pair with :meth:`coarse_view` (a view if contiguous)."""
        self._check_edge(e)
        self._split(x, self.edges[e][0], "fine map")
        return self._fine_view(x, e)

    def _fine_view(self, x: Tensor, e: int) -> Tensor:
        fine = self.shapes[self.edges[e][0]]
        factors = self._factors[e]
        if factors is None:
            return x if len(fine) == 1 else x.reshape(tuple(x.shape[: x.dim() - len(fine)]) + (math.prod(fine),))
        shape: list[int] = []
        for d in range(len(fine) - 1):
            shape += [fine[d] // factors[d], factors[d]]
        return x.reshape(tuple(x.shape[: x.dim() - len(fine)]) + tuple(shape) + (fine[-1],))

    def coarse_view(self, y: Tensor, e: int) -> Tensor:
        """``y`` ``(..., *shapes[coarse])`` as a tensor that broadcasts against :meth:`fine_view`.

        On grids only the innermost dimension is copied out (a strided copy is slow
        there); the outer dimensions broadcast through stride-0 views, which stay fast
        because their inner rows are contiguous.
        """
        self._check_edge(e)
        self._split(y, self.edges[e][1], "coarse map")
        return self._coarse_view(y, e)

    def _coarse_view(self, y: Tensor, e: int) -> Tensor:
        a, b = self.edges[e]
        factors = self._factors[e]
        coarse = self.shapes[b]
        if factors is None:
            if len(coarse) != 1:
                y = y.reshape(tuple(y.shape[: y.dim() - len(coarse)]) + (self.sizes[b],))
            return y.index_select(-1, self._device_parents(e, y.device))
        y = self._expand_last(y, factors[-1])
        shape: list[int] = []
        for d in range(len(coarse) - 1):
            shape += [coarse[d], 1]
        return y.reshape(tuple(y.shape[: y.dim() - len(coarse)]) + tuple(shape) + (self.shapes[a][-1],))

    def _view_ndim(self, e: int) -> int:
        return 2 * len(self.shapes[self.edges[e][0]]) - 1 if self._factors[e] is not None else 1

    # ------------------------------------------------------------------ kernels
    def _reduce(self, x: Tensor, e: int, combine, reduction: str) -> Tensor:
        factors = self._factors[e]
        if factors is None:
            return self._scatter_reduce(x, e, reduction)
        a = self.edges[e][0]
        lead = tuple(x.shape[: x.dim() - len(self.shapes[a])])
        cur = list(self.shapes[a])
        if reduction != "sum" and _differentiated(x):
            # a maximum to differentiate is one amax over the whole block, which shares a tie's gradient
            # evenly: a chain of torch.maximum split it by halves (1/4, 1/4, 1/2), unlike the same graph
            # given by parents (ca_rev159), and so did an amax per dimension on a 2-D block (ca_rev168)
            split = lead + tuple(n for size, f in zip(cur, factors) for n in (size // f, f))
            return x.reshape(split).amax(tuple(len(lead) + 2 * d + 1 for d in range(len(factors))))
        for d, f in enumerate(factors):
            if f == 1:
                continue
            v = x.reshape(lead + tuple(cur[:d]) + (cur[d] // f, f, math.prod(cur[d + 1:])))
            if f > _CHAIN_LIMIT:
                y = v.sum(-2) if reduction == "sum" else v.amax(-2)
            else:
                # the slices by unbind, not one select each: differentiated (a block sum's gradient), its
                # backward is one stack of the slices' gradients, where each select's filled a zero tensor
                # of the whole map and copied its slice in (forward and backward of a (16, 128, 128) map,
                # one thread: by 4, 325 against 502-552 µs; by 8, 320-357 against 1011-1643; by 2, a few
                # per cent: ca_rev244); the same slices, summed in the same order
                parts = v.unbind(-2)
                y = parts[0]
                for part in parts[1:]:
                    y = combine(y, part)
            cur[d] //= f
            x = y.reshape(lead + tuple(cur))
        # one-cell blocks everywhere (an identity edge) left x itself: a new tensor, as on other
        # edges, so that an update of the result in place leaves the caller's map alone (a review)
        return x.clone() if all(f == 1 for f in factors) else x

    def _scatter_reduce(self, x: Tensor, e: int, reduction: str) -> Tensor:
        a, b = self.edges[e]
        par = self._device_parents(e, x.device)
        lead = x.shape[: x.dim() - len(self.shapes[a])]
        flat = x.reshape(-1, self.sizes[a])
        n_out = self.sizes[b]
        if reduction == "sum":
            out = flat.new_zeros(flat.shape[0], n_out).index_add(1, par, flat)
        else:
            # to differentiate, the start values are left out (every coarse cell has a child): NaN, which
            # equals no maximum, so that the backward counts none as one more tie (a start of -inf took a
            # quarter of a wholly -inf 3-cell block's gradient: ca_rev159); 1.7x slower, so only then
            grad = _differentiated(x)
            out = flat.new_full((flat.shape[0], n_out), math.nan if grad else -math.inf).scatter_reduce(
                1, par.expand_as(flat), flat, reduce="amax", include_self=not grad)
        return out.reshape(tuple(lead) + self.shapes[b])

    @staticmethod
    def _expand_last(y: Tensor, f: int) -> Tensor:
        """Each value of ``y``'s last dimension ``f`` times (``repeat_interleave``).  Where
        :func:`_upsamples` allows, by torch's nearest-exact upsampling, which gives the same
        values (a copy) faster: its loop runs along the row, repeat_interleave's over runs of
        ``f`` (by 2, 3, 4: 2.0, 1.6 and 1.3x faster for a (64, 32, ·) float32 map, one thread; by
        8 no faster).  exact's forward and backward make four such copies on a 2-D grid chain."""
        if f == 1:
            return y
        if _upsamples(y, f):
            n = y.shape[-1]
            out = torch.nn.functional.interpolate(y.reshape(-1, 1, n), scale_factor=f, mode="nearest-exact")
            return out.view(tuple(y.shape[:-1]) + (n * f,))
        return y.repeat_interleave(f, dim=-1)

    def _grid_broadcast(self, y: Tensor, e: int, lead: tuple[int, ...]) -> Tensor:
        factors = self._factors[e]
        assert factors is not None
        cur = list(self.shapes[self.edges[e][1]])
        y = self._expand_last(y, factors[-1])
        cur[-1] *= factors[-1]
        for d in reversed(range(len(cur) - 1)):
            f = factors[d]
            if f == 1:
                continue
            rest = math.prod(cur[d + 1:])
            v = y.reshape(lead + tuple(cur[:d]) + (cur[d], 1, rest))
            v = v.expand(lead + tuple(cur[:d]) + (cur[d], f, rest))
            cur[d] *= f
            y = v.reshape(lead + tuple(cur))
        return y.clone() if all(f == 1 for f in factors) else y  # a new tensor, as _reduce gives
