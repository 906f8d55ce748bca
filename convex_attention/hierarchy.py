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
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Hierarchy"]

# Above this block factor a single strided reduction beats a chain of slice combinations.
_CHAIN_LIMIT = 8


def _as_shape(shape, level: int) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape of level {level} must be an int or a tuple of ints, got {shape!r}") from None
    if len(shape) == 0:
        raise ValueError(f"shape of level {level} is empty")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"shape of level {level} must contain ints, got {shape!r}")
        if s <= 0:
            raise ValueError(f"shape of level {level} must be positive, got {shape!r}")
    return shape


class Hierarchy:
    """Nested partitions of ``L >= 2`` levels (finest first).

    Build one with :meth:`grid` (regular 1-D/2-D/3-D grids, any integer factor per
    dimension) or :meth:`from_parents` (irregular partitions: superpixels, regions).

    Attributes:
        num_levels: ``L``.
        shapes: list of ``L`` tuples, the grid shape of each level (``(n_k,)`` for
            irregular levels).
        sizes: list of ``L`` ints, ``n_k = prod(shapes[k])``.
        factors: for grids, the per-dimension pooling factor between level ``k`` and
            ``k+1`` (list of ``L-1`` tuples); ``None`` for irregular partitions.
    """

    def __init__(self, shapes, parents: list[Tensor], factors=None):
        # Use Hierarchy.grid or Hierarchy.from_parents; they validate their input.
        self.shapes: list[tuple[int, ...]] = [tuple(s) for s in shapes]
        self.sizes: list[int] = [math.prod(s) for s in self.shapes]
        self.num_levels: int = len(self.shapes)
        self.factors: list[tuple[int, ...]] | None = factors
        self._parents: list[Tensor] = [p.to(torch.long).contiguous() for p in parents]
        self._parents_on: dict[torch.device, list[Tensor]] = {torch.device("cpu"): self._parents}
        if factors is None:
            self._key = ("parents", tuple(self.sizes),
                         tuple(hash(p.numpy().tobytes()) for p in self._parents))
        else:
            self._key = ("grid", tuple(self.shapes))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def grid(cls, shapes: Sequence) -> "Hierarchy":
        """Regular grids, finest first: ``Hierarchy.grid([(64, 64), (32, 32)])``.

        Every level has the same number of dimensions (1-D levels may be given as ints)
        and every dimension of level ``k+1`` must divide the same dimension of level
        ``k``.  The factors may differ per dimension and per level (2×2, 4×4, 2×2×2, 3…).
        """
        if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence):
            raise TypeError(f"shapes must be a sequence of level shapes, got {type(shapes).__name__}")
        shapes = [_as_shape(s, k) for k, s in enumerate(shapes)]
        if len(shapes) < 2:
            raise ValueError(f"a hierarchy needs at least 2 levels, got {len(shapes)}")
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
        parents = [cls._grid_parents(shapes[k], factors[k]) for k in range(len(shapes) - 1)]
        return cls(shapes, parents, factors)

    @classmethod
    def from_parents(cls, sizes: Sequence[int], parents: Sequence) -> "Hierarchy":
        """Irregular nested partitions given by parent maps.

        Args:
            sizes: ``[n_0, …, n_{L-1}]``, the number of cells per level.
            parents: ``L-1`` integer tensors (or sequences); ``parents[k]`` has shape
                ``(n_k,)`` and gives, for each level-k cell, its level-(k+1) cell.  Every
                level-(k+1) cell must receive at least one child.
        """
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(f"sizes must be a sequence of ints, got {type(sizes).__name__}")
        sizes = [_as_shape(n, k) for k, n in enumerate(sizes)]
        if any(len(s) != 1 for s in sizes):
            raise ValueError(f"from_parents takes flat level sizes (ints), got {sizes}")
        sizes = [s[0] for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"a hierarchy needs at least 2 levels, got {len(sizes)}")
        if isinstance(parents, Tensor) or not isinstance(parents, Sequence):
            raise TypeError("parents must be a list of L-1 integer tensors, one per level but the last")
        if len(parents) != len(sizes) - 1:
            raise ValueError(f"expected {len(sizes) - 1} parent maps for {len(sizes)} levels, got {len(parents)}")
        checked = []
        for k, par in enumerate(parents):
            par = torch.as_tensor(par).detach().cpu()
            if par.dtype.is_floating_point or par.dtype.is_complex or par.dtype == torch.bool:
                raise TypeError(f"parents[{k}] must hold integers, got dtype {par.dtype}")
            if par.dim() != 1 or par.numel() != sizes[k]:
                raise ValueError(
                    f"parents[{k}] must have shape ({sizes[k]},) (one entry per level-{k} cell), "
                    f"got {tuple(par.shape)}")
            lo, hi = int(par.min()), int(par.max())
            if lo < 0 or hi >= sizes[k + 1]:
                bad = par[(par < 0) | (par >= sizes[k + 1])]
                raise ValueError(
                    f"parents[{k}] out of range: level {k + 1} has {sizes[k + 1]} cells, "
                    f"got parent index {int(bad[0])}")
            counts = torch.bincount(par, minlength=sizes[k + 1])
            empty = torch.nonzero(counts == 0).flatten()
            if empty.numel() > 0:
                raise ValueError(
                    f"parents[{k}] leaves {empty.numel()} cell(s) of level {k + 1} empty "
                    f"(first: cell {int(empty[0])}); every coarse cell needs at least one child")
            checked.append(par.to(torch.long))
        return cls([(n,) for n in sizes], checked, None)

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

    def parents(self, k: int, device=None) -> Tensor:
        """The flat parent map of level ``k``: LongTensor ``(n_k,)`` with values in ``[0, n_{k+1})``."""
        self._check_k(k)
        device = torch.device("cpu") if device is None else torch.device(device)
        if device not in self._parents_on:
            # One copy per device, made once: no transfer on later calls.
            self._parents_on[device] = [p.to(device) for p in self._parents]
        return self._parents_on[device][k]

    def flat(self) -> "Hierarchy":
        """The same partition as flat levels with parent maps (the scatter/gather path)."""
        return Hierarchy([(n,) for n in self.sizes], self._parents, None)

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
