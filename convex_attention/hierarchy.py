"""Nested partitions of attention cells: the levels of a consistent-attention problem.

A :class:`Hierarchy` has ``L >= 2`` levels, finest first.  Level ``k`` has ``n_k`` cells
arranged as a grid of shape ``shapes[k]``; every cell ``i`` of level ``k`` belongs to
exactly one cell ``parent_k(i)`` of level ``k+1``.  Two operators connect the levels:

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
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Hierarchy", "MAX_CELLS"]

# Above this block factor a single strided reduction beats a chain of slice combinations.
_CHAIN_LIMIT = 8

# The most cells one level may have: 2**36 ≈ 6.9e10, a float32 level of 275 GB, beyond any
# single accelerator's memory.  Checked on the sizes alone, before anything is allocated.
MAX_CELLS = 2 ** 36


def _as_shape(shape, level: int, what: str = "shape") -> tuple[int, ...]:
    """A level's grid shape as a tuple of positive ints, at most ``MAX_CELLS`` cells."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes, Tensor)) or shape is None:
        raise TypeError(f"{what} of level {level} must be an int or a tuple of ints, got {shape!r}")
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{what} of level {level} must be an int or a tuple of ints, got {shape!r}") from None
    if len(shape) == 0:
        raise ValueError(f"{what} of level {level} is empty; give at least one dimension, e.g. (8, 8)")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{what} of level {level} must contain ints, got {shape!r}")
        if s <= 0:
            raise ValueError(f"{what} of level {level} must be positive in every dimension, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    cells = math.prod(shape)
    if cells > MAX_CELLS:
        raise ValueError(f"level {level} has {cells} cells ({what} {shape}), above the limit of {MAX_CELLS} "
                         f"(2**36, convex_attention.hierarchy.MAX_CELLS) cells per level")
    return shape


def _level_list(shapes, what: str) -> list:
    if isinstance(shapes, (str, bytes, Tensor)) or not isinstance(shapes, Sequence):
        raise TypeError(f"{what} must be a list of level {'shapes' if what == 'shapes' else 'sizes'}, finest "
                        f"first, got {type(shapes).__name__}")
    if len(shapes) < 2:
        raise ValueError(f"a hierarchy needs at least 2 levels, got {len(shapes)}")
    return list(shapes)


def _check_grid(shapes) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Validated grid shapes (finest first) and the per-dimension factors between levels."""
    shapes = [_as_shape(s, k) for k, s in enumerate(_level_list(shapes, "shapes"))]
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
    shapes = [_as_shape(n, k, "size") for k, n in enumerate(_level_list(sizes, "sizes"))]
    if any(len(s) != 1 for s in shapes):
        raise ValueError(f"a partition given by parent maps has flat levels: give the sizes as ints "
                         f"(cells per level), got {[s if len(s) > 1 else s[0] for s in shapes]}")
    sizes = [s[0] for s in shapes]
    for k in range(len(sizes) - 1):
        if sizes[k + 1] > sizes[k]:
            raise ValueError(f"level {k + 1} has more cells ({sizes[k + 1]}) than level {k} ({sizes[k]}); "
                             f"every coarse cell needs at least one child, so sizes must not grow")
    return sizes


def _as_parent_map(par, k: int, n_fine: int, n_coarse: int) -> Tensor:
    """``parents[k]`` as a validated LongTensor ``(n_fine,)`` with values in ``[0, n_coarse)``."""
    expected = (f"parents[{k}] must be a 1-D integer tensor (or sequence of ints) of shape ({n_fine},), "
                f"one level-{k + 1} cell id in [0, {n_coarse}) per level-{k} cell")
    if isinstance(par, Tensor):
        par = par.detach().cpu()
    else:
        if par is None or isinstance(par, (str, bytes, numbers.Number)):
            raise TypeError(f"{expected}; got {type(par).__name__}")
        try:
            par = torch.as_tensor(par)
        except (OverflowError, RuntimeError, TypeError, ValueError) as err:
            if "overflow" in str(err).lower():
                raise ValueError(f"parents[{k}] out of range: an id does not fit a 64-bit integer; "
                                 f"ids must be in [0, {n_coarse})") from None
            raise TypeError(f"{expected}; could not read it ({err})") from None
    if par.dim() != 1 or par.numel() != n_fine:
        raise ValueError(f"{expected}; got shape {tuple(par.shape)}")
    if par.dtype.is_floating_point or par.dtype.is_complex or par.dtype == torch.bool:
        raise TypeError(f"parents[{k}] must hold integers, got dtype {par.dtype}")
    par = par.to(torch.long)
    lo, hi = int(par.min()), int(par.max())
    if lo < 0 or hi >= n_coarse:
        bad = par[(par < 0) | (par >= n_coarse)]
        raise ValueError(
            f"parents[{k}] out of range: level {k + 1} has {n_coarse} cells, "
            f"got parent index {int(bad[0])}")
    counts = torch.bincount(par, minlength=n_coarse)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel() > 0:
        raise ValueError(
            f"parents[{k}] leaves {empty.numel()} cell(s) of level {k + 1} empty "
            f"(first: cell {int(empty[0])}); every coarse cell needs at least one child")
    return par.contiguous()


def _check_parents(sizes: list[int], parents) -> list[Tensor]:
    if isinstance(parents, (Tensor, str, bytes)) or not isinstance(parents, Sequence):
        raise TypeError(f"parents must be a list of {len(sizes) - 1} integer tensors, one per level but the "
                        f"last, got {type(parents).__name__}")
    if len(parents) != len(sizes) - 1:
        flat = len(parents) > 0 and all(isinstance(p, (numbers.Number, str, bytes)) for p in parents)
        raise ValueError(f"expected {len(sizes) - 1} parent maps for {len(sizes)} levels, got {len(parents)}"
                         + ("; parents is a list of maps, one per level but the last: wrap a single map "
                            "in a list, e.g. [torch.tensor([...])]" if flat else ""))
    return [_as_parent_map(par, k, sizes[k], sizes[k + 1]) for k, par in enumerate(parents)]


def _check_factors(factors, shapes, derived) -> None:
    """``factors`` given to the constructor must be the ones the grid shapes imply."""
    try:
        given = [tuple(int(x) for x in ((f,) if isinstance(f, numbers.Integral) else f)) for f in factors]
    except (TypeError, ValueError):
        raise TypeError(f"factors must be a list of {len(derived)} tuples of ints, got {factors!r}") from None
    if given != derived:
        raise ValueError(f"factors {given} do not match the shapes {shapes} (which give {derived}); "
                         f"leave factors out: they follow from the shapes")


class Hierarchy:
    """Nested partitions of ``L >= 2`` levels (finest first).

    Build one with :meth:`grid` (regular 1-D/2-D/3-D grids, any integer factor per
    dimension) or :meth:`from_parents` (irregular partitions: superpixels, regions).
    The constructor validates exactly as they do: ``Hierarchy(shapes)`` is
    ``Hierarchy.grid(shapes)`` and ``Hierarchy(sizes, parents)`` is
    ``Hierarchy.from_parents(sizes, parents)`` (``factors``, if given, must match the
    shapes).  Sizes are checked (at most :data:`MAX_CELLS` cells per level) before
    anything is allocated, and a grid builds its parent maps only when :meth:`parents`
    or :meth:`flat` asks for them: its operators use strided views.

    Attributes:
        num_levels: ``L``.
        shapes: list of ``L`` tuples, the grid shape of each level (``(n_k,)`` for
            irregular levels).
        sizes: list of ``L`` ints, ``n_k = prod(shapes[k])``.
        factors: for grids, the per-dimension pooling factor between level ``k`` and
            ``k+1`` (list of ``L-1`` tuples); ``None`` for irregular partitions.
    """

    def __init__(self, shapes, parents: Sequence | None = None, factors: Sequence | None = None):
        if parents is None or factors is not None:
            shapes, derived = _check_grid(shapes)
            if factors is not None:
                _check_factors(factors, shapes, derived)
            checked = [None] * (len(shapes) - 1)
            if parents is not None:
                checked = _check_parents([math.prod(s) for s in shapes], parents)
                for k, par in enumerate(checked):
                    if not torch.equal(par, self._grid_parents(shapes[k], derived[k])):
                        raise ValueError(f"parents[{k}] is not the parent map of the grid {shapes[k]} -> "
                                         f"{shapes[k + 1]}; leave parents out for a grid (Hierarchy.grid)")
            self._setup(shapes, checked, derived)
        else:
            sizes = _check_sizes(shapes)
            self._setup([(n,) for n in sizes], _check_parents(sizes, parents), None)

    def _setup(self, shapes: list[tuple[int, ...]], parents: list[Tensor | None], factors) -> None:
        self.shapes: list[tuple[int, ...]] = [tuple(s) for s in shapes]
        self.sizes: list[int] = [math.prod(s) for s in self.shapes]
        self.num_levels: int = len(self.shapes)
        self.factors: list[tuple[int, ...]] | None = factors
        # CPU parent maps; for grids None until first asked for (lazy).
        self._parents: list[Tensor | None] = list(parents)
        self._parents_on: dict[torch.device, dict[int, Tensor]] = {}
        self._flat: Hierarchy | None = None
        if factors is None:
            self._key = ("parents", tuple(self.sizes),
                         tuple(hash(p.numpy().tobytes()) for p in self._parents))
        else:
            self._key = ("grid", tuple(self.shapes))

    @classmethod
    def _trusted(cls, shapes, parents: list[Tensor | None], factors) -> Hierarchy:
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

    @staticmethod
    def _grid_parents(fine: tuple[int, ...], factor: tuple[int, ...]) -> Tensor:
        coords = torch.meshgrid(*[torch.arange(n) // f for n, f in zip(fine, factor)], indexing="ij")
        coarse = tuple(n // f for n, f in zip(fine, factor))
        flat = torch.zeros(fine, dtype=torch.long)
        for d, c in enumerate(coords):
            flat = flat * coarse[d] + c
        return flat.flatten()

    # ------------------------------------------------------------------ basic facts
    @property
    def is_grid(self) -> bool:
        return self.factors is not None

    def _cpu_parents(self, k: int) -> Tensor:
        if self._parents[k] is None:
            self._parents[k] = self._grid_parents(self.shapes[k], self.factors[k])
        return self._parents[k]

    def parents(self, k: int, device=None) -> Tensor:
        """The flat parent map of level ``k``: LongTensor ``(n_k,)`` with values in ``[0, n_{k+1})``.

        Built on first use for grids (``8·n_k`` bytes), then kept, once per device.
        """
        self._check_k(k)
        device = torch.device("cpu") if device is None else torch.device(device)
        cpu = self._cpu_parents(k)
        if device.type == "cpu":
            return cpu
        on = self._parents_on.setdefault(device, {})
        if k not in on:
            # One copy per device, made once: no transfer on later calls.
            on[k] = cpu.to(device)
        return on[k]

    def flat(self) -> Hierarchy:
        """The same partition as flat levels with parent maps (the scatter/gather path)."""
        if not self.is_grid:
            return self
        if self._flat is None:
            self._flat = Hierarchy._trusted([(n,) for n in self.sizes],
                                            [self._cpu_parents(k) for k in range(self.num_levels - 1)], None)
        return self._flat

    def __eq__(self, other) -> bool:
        return isinstance(other, Hierarchy) and self._key == other._key and (
            self.is_grid or all(torch.equal(a, b) for a, b in zip(self._parents, other._parents)))

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        kind = "grid" if self.is_grid else "from_parents"
        return f"Hierarchy.{kind}({self.shapes if self.is_grid else self.sizes})"

    def _check_k(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k < self.num_levels - 1:
            raise ValueError(f"constraint index k must be in [0, {self.num_levels - 2}], got {k!r}")

    def _split(self, x: Tensor, k: int, what: str) -> tuple[int, ...]:
        shape = self.shapes[k]
        nd = len(shape)
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < nd or tuple(x.shape[x.dim() - nd:]) != shape:
            raise ValueError(f"{what} must have shape (..., {', '.join(map(str, shape))}) for level {k}, "
                             f"got {tuple(x.shape)}")
        return tuple(x.shape[: x.dim() - nd])

    # ------------------------------------------------------------------ operators
    def aggregate(self, p: Tensor, k: int) -> Tensor:
        """``P_k p``: sum over the children of each level-(k+1) cell.

        ``(..., *shapes[k]) -> (..., *shapes[k+1])``.
        """
        self._check_k(k)
        self._split(p, k, "aggregate input")
        return self._reduce(p, k, torch.add, "sum")

    def broadcast(self, y: Tensor, k: int) -> Tensor:
        """``P_kᵀ y``: copy each level-(k+1) value onto its children.

        ``(..., *shapes[k+1]) -> (..., *shapes[k])``.
        """
        self._check_k(k)
        lead = self._split(y, k + 1, "broadcast input")
        if self.is_grid:
            return self._grid_broadcast(y, k, lead)
        return y.index_select(-1, self.parents(k, y.device))

    def block_max(self, x: Tensor, k: int) -> Tensor:
        """Maximum over the children of each level-(k+1) cell: ``(..., *shapes[k]) -> (..., *shapes[k+1])``."""
        self._check_k(k)
        self._split(x, k, "block_max input")
        return self._reduce(x, k, torch.maximum, "amax")

    def block_logsumexp(self, x: Tensor, k: int) -> Tensor:
        """``log Σ_{children} exp(x)``, stabilised by the block maxima; differentiable."""
        m = self.block_max(x, k).detach()
        return m + self.aggregate(torch.exp(self.combine_broadcast(x, m, k, torch.sub)), k).log()

    def block_exp(self, z: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """``e = exp(z − P_kᵀ blockmax(z))`` and its block sums: the stable core of a block softmax.

        Returns ``(e, blocksum, blockmax)``: ``e`` shaped like ``z`` (its largest entry in
        every block is 1, so nothing overflows), ``blocksum`` and ``blockmax`` shaped
        ``(..., *shapes[k+1])``; the block log-sum-exp is ``blockmax + log(blocksum)``.
        Not differentiable (a kernel for the solvers).
        """
        zmax = self.block_max(z, k)
        e = self.combine_broadcast(z, zmax, k, torch.sub).exp_()
        return e, self.aggregate(e, k), zmax

    def block_softmax(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Softmax of ``z`` ``(..., *shapes[k])`` within every level-(k+1) block.

        Returns ``(q, lse)``: ``q`` shaped like ``z`` (sums to one per block) and the block
        log-sum-exps ``(..., *shapes[k+1])``.  Not differentiable (a kernel for the solvers).
        """
        q, s, zmax = self.block_exp(z, k)
        self.combine_broadcast(q, s.reciprocal(), k, Tensor.mul_)
        return q, zmax + s.log()

    def combine_broadcast(self, x: Tensor, y: Tensor, k: int, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """``op(x, P_kᵀ y)`` without materialising the full broadcast on grids.

        ``x``: ``(..., *shapes[k])``; ``y``: ``(..., *shapes[k+1])`` (leading dimensions
        broadcast against each other); the result has ``x``'s grid shape.  An in-place
        ``op`` such as ``Tensor.mul_`` updates a contiguous ``x`` in place.
        """
        out = op(self.fine_view(x, k), self.coarse_view(y, k))
        return out.reshape(tuple(out.shape[: out.dim() - self._view_ndim(k)]) + self.shapes[k])

    def fine_view(self, x: Tensor, k: int) -> Tensor:
        """``x`` ``(..., *shapes[k])`` reshaped to pair with :meth:`coarse_view` (a view if contiguous)."""
        if not self.is_grid:
            return x
        fine, factors = self.shapes[k], self.factors[k]
        shape = []
        for d in range(len(fine) - 1):
            shape += [fine[d] // factors[d], factors[d]]
        return x.reshape(tuple(x.shape[: x.dim() - len(fine)]) + tuple(shape) + (fine[-1],))

    def coarse_view(self, y: Tensor, k: int) -> Tensor:
        """``y`` ``(..., *shapes[k+1])`` as a tensor that broadcasts against :meth:`fine_view`.

        On grids only the innermost dimension is copied out (a strided copy is slow
        there); the outer dimensions broadcast through stride-0 views, which stay fast
        because their inner rows are contiguous.
        """
        if not self.is_grid:
            return y.index_select(-1, self.parents(k, y.device))
        coarse, factors = self.shapes[k + 1], self.factors[k]
        y = self._expand_last(y, factors[-1])
        shape = []
        for d in range(len(coarse) - 1):
            shape += [coarse[d], 1]
        return y.reshape(tuple(y.shape[: y.dim() - len(coarse)]) + tuple(shape) + (self.shapes[k][-1],))

    def _view_ndim(self, k: int) -> int:
        return 2 * len(self.shapes[k]) - 1 if self.is_grid else 1

    # ------------------------------------------------------------------ kernels
    def _reduce(self, x: Tensor, k: int, combine, reduction: str) -> Tensor:
        if not self.is_grid:
            return self._scatter_reduce(x, k, reduction)
        lead = tuple(x.shape[: x.dim() - len(self.shapes[k])])
        cur = list(self.shapes[k])
        for d, f in enumerate(self.factors[k]):
            if f == 1:
                continue
            v = x.reshape(lead + tuple(cur[:d]) + (cur[d] // f, f, math.prod(cur[d + 1:])))
            if f > _CHAIN_LIMIT:
                y = v.sum(-2) if reduction == "sum" else v.amax(-2)
            else:
                y = v.select(-2, 0)
                for r in range(1, f):
                    y = combine(y, v.select(-2, r))
            cur[d] //= f
            x = y.reshape(lead + tuple(cur))
        return x

    def _scatter_reduce(self, x: Tensor, k: int, reduction: str) -> Tensor:
        par = self.parents(k, x.device)
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        n_out = self.sizes[k + 1]
        if reduction == "sum":
            out = flat.new_zeros(flat.shape[0], n_out).index_add(1, par, flat)
        else:
            out = flat.new_full((flat.shape[0], n_out), -math.inf).scatter_reduce(
                1, par.expand_as(flat), flat, reduce="amax", include_self=True)
        return out.reshape(lead + (n_out,))

    @staticmethod
    def _expand_last(y: Tensor, f: int) -> Tensor:
        if f == 1:
            return y
        if f <= _CHAIN_LIMIT:
            return torch.stack([y] * f, dim=-1).flatten(-2)
        return y.unsqueeze(-1).expand(y.shape + (f,)).flatten(-2)

    def _grid_broadcast(self, y: Tensor, k: int, lead: tuple[int, ...]) -> Tensor:
        factors = self.factors[k]
        cur = list(self.shapes[k + 1])
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
        return y
