"""Nested partitions of attention cells: the levels of a consistent-attention problem.

A :class:`Hierarchy` has ``L >= 2`` levels, finest first.  Level ``k`` has ``n_k`` cells
arranged as a grid of shape ``shapes[k]``; every cell ``i`` of level ``k`` belongs to
exactly one cell ``parent_k(i)`` of level ``k+1``.  It is the chain of
:class:`~convex_attention.graph.Graph`: its maps are the levels and edge ``k`` is
``(k → k+1)``, so the kernels of the graph take the constraint index ``k``:

* ``aggregate(p, k)``  = ``P_k p``   sums the children of every level-(k+1) cell;
* ``broadcast(y, k)``  = ``P_kᵀ y``  copies each level-(k+1) value onto its children.

Regular grids (``Hierarchy.grid``) use separable strided reductions: one reduction per
grid dimension, each an elementwise combination of contiguous slices.  On CPU this is
several times faster than ``avg_pool`` / ``max_pool`` (which parallelise poorly over a
single channel) and works for any number of dimensions.  Irregular partitions
(``Hierarchy.from_parents``) use ``index_add`` / ``scatter_reduce`` / ``index_select``.
Both paths accept any leading batch dimensions and any floating dtype, run on the
device of their input, and are differentiable.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .graph import MAX_CELLS, FrozenList, Graph, _as_parent_map, _as_shape

__all__ = ["Hierarchy", "MAX_CELLS"]


def _level_list(shapes, what: str) -> list:
    if isinstance(shapes, (str, bytes, Tensor)) or not isinstance(shapes, Sequence):
        raise TypeError(f"{what} must be a list of level {'shapes' if what == 'shapes' else 'sizes'}, finest "
                        f"first, got {type(shapes).__name__}")
    if len(shapes) < 2:
        raise ValueError(f"a hierarchy needs at least 2 levels, got {len(shapes)}")
    return list(shapes)


def _check_grid(shapes) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Validated grid shapes (finest first) and the per-dimension factors between levels."""
    shapes = [_as_shape(s, f"level {k}") for k, s in enumerate(_level_list(shapes, "shapes"))]
    ndim = len(shapes[0])
    factors = []
    for k in range(len(shapes) - 1):
        fine, coarse = shapes[k], shapes[k + 1]
        if len(coarse) != ndim:
            raise ValueError(
                f"all levels must have the same number of dimensions: level 0 is {ndim}-D "
                f"{shapes[0]}, level {k + 1} is {len(coarse)}-D {coarse}")
        for d, (nf, nc) in enumerate(zip(fine, coarse)):
            if nf % nc != 0:
                raise ValueError(
                    f"grid does not divide: dimension {d} of level {k + 1} ({nc}) does not "
                    f"divide dimension {d} of level {k} ({nf}); shapes {fine} -> {coarse}")
        factors.append(tuple(nf // nc for nf, nc in zip(fine, coarse)))
    return shapes, factors


def _check_sizes(sizes) -> list[int]:
    """Validated flat level sizes: positive ints, at most ``MAX_CELLS``, never growing."""
    shapes = [_as_shape(n, f"level {k}", "size") for k, n in enumerate(_level_list(sizes, "sizes"))]
    if any(len(s) != 1 for s in shapes):
        raise ValueError(f"a partition given by parent maps has flat levels: give the sizes as ints "
                         f"(cells per level), got {[s if len(s) > 1 else s[0] for s in shapes]}")
    sizes = [s[0] for s in shapes]
    for k in range(len(sizes) - 1):
        if sizes[k + 1] > sizes[k]:
            raise ValueError(f"level {k + 1} has more cells ({sizes[k + 1]}) than level {k} ({sizes[k]}); "
                             f"every coarse cell needs at least one child, so sizes must not grow")
    return sizes


def _check_parents(sizes: list[int], parents) -> list[Tensor]:
    if isinstance(parents, (Tensor, str, bytes)) or not isinstance(parents, Sequence):
        raise TypeError(f"parents must be a list of {len(sizes) - 1} integer tensors, one per level but the "
                        f"last, got {type(parents).__name__}")
    if len(parents) != len(sizes) - 1:
        flat = len(parents) > 0 and all(isinstance(p, (numbers.Number, str, bytes)) for p in parents)
        raise ValueError(f"expected {len(sizes) - 1} parent maps for {len(sizes)} levels, got {len(parents)}"
                         + ("; parents is a list of maps, one per level but the last: wrap a single map "
                            "in a list, e.g. [torch.tensor([...])]" if flat else ""))
    return [_as_parent_map(par, f"parents[{k}]", sizes[k], sizes[k + 1], f"level {k}", f"level {k + 1}")
            for k, par in enumerate(parents)]


def _check_factors(factors, shapes, derived) -> None:
    """``factors`` given to the constructor must be the ones the grid shapes imply."""
    def whole(x) -> bool:  # (NumPy's bool is no Integral)
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    def listing(x):
        """``x`` as a list where it is a sequence (an array or a tensor of at least one dimension
        read by ``tolist``: its ints as ints, its bools and floats as such), else None."""
        if isinstance(x, (np.ndarray, Tensor)):
            return x.tolist() if x.ndim else None  # (a 0-d array is no sequence: NumPy's own error, ca_rev183)
        return list(x) if isinstance(x, Sequence) and not isinstance(x, (str, bytes)) else None

    # each factor an int or a sequence of ints, read as given (int() had read "22" as (2, 2), 2.9 as 2
    # and True as 1: ca_rev179)
    items = listing(factors)
    if items is not None:
        items = [f if whole(f) else listing(f) for f in items]
    if items is None or not all(whole(f) or (f is not None and all(map(whole, f))) for f in items):
        raise TypeError(f"factors must be a list of {len(derived)} tuples of ints, got {factors!r}")
    given = [(int(f),) if whole(f) else tuple(int(x) for x in f) for f in items]
    if given != derived:
        raise ValueError(f"factors {given} do not match the shapes {shapes} (which give {derived}); "
                         f"leave factors out: they follow from the shapes")


class Hierarchy(Graph):
    """Nested partitions of ``L >= 2`` levels (finest first): the chain ``0 → 1 → … → L-1``.

    Build one with :meth:`grid` (regular 1-D/2-D/3-D grids, any integer factor per
    dimension) or :meth:`from_parents` (irregular partitions: superpixels, regions).
    The constructor validates exactly as they do: ``Hierarchy(shapes)`` is
    ``Hierarchy.grid(shapes)`` and ``Hierarchy(sizes, parents)`` is
    ``Hierarchy.from_parents(sizes, parents)`` (``factors``, if given, must match the
    shapes).  Sizes are checked (at most :data:`MAX_CELLS` cells per level) before
    anything is allocated, and a grid builds its parent maps only when :meth:`parents`
    or :meth:`flat` asks for them: its operators use strided views.

    Every kernel of :class:`~convex_attention.graph.Graph` applies, with the constraint
    index ``k`` as the edge index (edge ``k`` is ``(k → k+1)``).

    Attributes:
        num_levels: ``L`` (the graph's ``num_maps``).
        shapes: list of ``L`` tuples, the grid shape of each level (``(n_k,)`` for
            irregular levels).
        sizes: list of ``L`` ints, ``n_k = prod(shapes[k])``.
        factors: for grids, the per-dimension pooling factor between level ``k`` and
            ``k+1`` (list of ``L-1`` tuples); ``None`` for irregular partitions.
    """

    _map_word = "level"
    _edge_index = "k"

    def __init__(self, shapes, parents: Sequence | None = None, factors: Sequence | None = None):
        if parents is None or factors is not None:
            shapes, derived = _check_grid(shapes)
            if factors is not None:
                _check_factors(factors, shapes, derived)
            checked: list[Tensor | None] = [None] * (len(shapes) - 1)
            if parents is not None:
                given = _check_parents([math.prod(s) for s in shapes], parents)
                for k, par in enumerate(given):
                    if not torch.equal(par, self._grid_parents(shapes[k], derived[k])):
                        raise ValueError(f"parents[{k}] is not the parent map of the grid {shapes[k]} -> "
                                         f"{shapes[k + 1]}; leave parents out for a grid (Hierarchy.grid)")
                checked = list(given)
            self._setup(shapes, checked, derived)
        else:
            sizes = _check_sizes(shapes)
            self._setup([(n,) for n in sizes], list(_check_parents(sizes, parents)), None)

    def _setup(self, shapes: Sequence[tuple[int, ...]], parents: Sequence[Tensor | None],
               factors: Sequence[tuple[int, ...]] | None) -> None:
        L = len(shapes)
        edge_factors: list[tuple[int, ...] | None] = list(factors) if factors is not None else [None] * (L - 1)
        self._init_graph(list(shapes), [(k, k + 1) for k in range(L - 1)], edge_factors, list(parents))
        self.num_levels: int = self.num_maps
        self.factors: list[tuple[int, ...]] | None = None if factors is None else FrozenList(tuple(f) for f in factors)

    @classmethod
    def _trusted(cls, shapes, parents, factors) -> Hierarchy:
        # Internal: structures this module built itself (no second validation pass).
        h = cls.__new__(cls)
        h._setup(shapes, parents, factors)
        return h

    # ------------------------------------------------------------------ constructors
    @classmethod
    def grid(cls, shapes: Sequence) -> Hierarchy:
        """Regular grids, finest first: ``Hierarchy.grid([(64, 64), (32, 32)])``.

        Every level has the same number of dimensions (1-D levels may be given as ints)
        and every dimension of level ``k+1`` must divide the same dimension of level
        ``k``.  The factors may differ per dimension and per level (2×2, 4×4, 2×2×2, 3…).
        No parent map is built (the operators use strided views), so large grids cost
        nothing to describe.
        """
        shapes, factors = _check_grid(shapes)
        return cls._trusted(shapes, [None] * (len(shapes) - 1), factors)

    @classmethod
    def from_parents(cls, sizes: Sequence[int], parents: Sequence) -> Hierarchy:
        """Irregular nested partitions given by parent maps.

        Args:
            sizes: ``[n_0, …, n_{L-1}]``, the number of cells per level (positive ints,
                non-increasing, at most :data:`MAX_CELLS`).
            parents: ``L-1`` integer tensors (or sequences); ``parents[k]`` has shape
                ``(n_k,)`` and gives, for each level-k cell, its level-(k+1) cell.  Every
                level-(k+1) cell must receive at least one child.
        """
        sizes = _check_sizes(sizes)
        return cls._trusted([(n,) for n in sizes], _check_parents(sizes, parents), None)

    # Graph's constructors of other structures: a Hierarchy is a chain (they built objects
    # without its set-up, or failed with "a partition given by parent maps has flat levels")
    @classmethod
    def from_edges(cls, sizes, edges: Sequence) -> Graph:
        raise TypeError("Hierarchy.from_edges: a Hierarchy is the chain of Hierarchy.grid or Hierarchy.from_parents; "
                        "use Graph.from_edges(sizes, edges) for a graph of maps (or Hierarchy.from_parents(sizes, "
                        "parents) for a chain)")

    @classmethod
    def star(cls, shapes: Sequence, coarse) -> Graph:
        raise TypeError("Hierarchy.star: a star is not a chain; use Graph.star(shapes, coarse)")

    @classmethod
    def axial(cls, shape) -> Graph:
        raise TypeError("Hierarchy.axial: rows and columns are not a chain; use Graph.axial(shape)")

    @classmethod
    def grid_regions(cls, shapes: Sequence, regions, num_regions: int | None = None) -> Graph:
        raise TypeError("Hierarchy.grid_regions: grids plus regions are not a chain; use Graph.grid_regions(shapes, "
                        "regions)")

    # ------------------------------------------------------------------ basic facts
    @property
    def is_grid(self) -> bool:
        return self.factors is not None

    def flat(self) -> Hierarchy:
        """The same partition as flat levels with parent maps (the scatter/gather path)."""
        if not self.is_grid:
            return self
        if self._flat is None:
            self._flat = Hierarchy._trusted([(n,) for n in self.sizes],
                                            [self._cpu_parents(k) for k in range(self.num_levels - 1)], None)
        assert isinstance(self._flat, Hierarchy)
        return self._flat

    def __repr__(self) -> str:
        kind = "grid" if self.is_grid else "from_parents"
        return f"Hierarchy.{kind}({self.shapes if self.is_grid else self.sizes})"
