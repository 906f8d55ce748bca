"""The named structure families of the harness: the graphs of maps a sweep, ``verify`` and the
graph benchmark run on (docs/design.md §1, docs/results_format.md).

A family and a finest side ``size`` (and the grid dimensionality ``dims``) give one graph:

==================  ==============================================================  ========
family              maps and edges                                                   M maps
==================  ==============================================================  ========
``chain``           ``levels`` grids of side ``size / factor^k`` (today's sweep)     levels
``star``            4 maps of side ``size`` pooled onto one of side ``size / 4``      5
``axial``           one map of side ``size`` pooled onto each of its axes           dims + 1
                    (rows and columns in 2-D)
``grid_regions``    one map of side ``size``, its grid of side ``size / 8`` and      3
                    ``(size / 8)^dims`` regions that cut across that grid
``mixed``           a map X of side ``size`` and a map Y of side ``size / 2``, both   4
                    pooled onto one shared grid of side ``size / 8`` and onto one
                    shared set of at most ``(size / 8)^dims`` regions (a centre that
                    captures no cell of Y gives none: 5 of 420 2-D draws had one fewer)
==================  ==============================================================  ========

Regions are the Voronoi cells of random centres (seeded); at the benchmark's sizes they cut
across the grid (checked by a review: 2-D sides 16-64 × 60 seeds, never nested in the grid nor
the grid in them).  ``grid_regions`` needs 2 or 3 dimensions: on a line the regions are intervals,
a tree of cells with the grid's blocks in every draw (:func:`check_structure`, ca_rev265).  In
``mixed`` a cell of X lies in the region of the Y cell that holds it, except the cells with every
coordinate odd, which take the region of the next Y cell along the diagonal: X's
regions are then not Y's pooled back, and the two maps meet only through the grid and the
regions.  ``chain`` and ``star`` are forests (the closed form applies); the others are not.

:func:`random_structure` draws small random members of every family for ``verify``.
"""
from __future__ import annotations

import math

import torch

from ..graph import Graph
from ..hierarchy import Hierarchy
from .config import REGION_FACTOR, STAR_ARMS, STAR_FACTOR, STRUCTURES, check_structure, structure_cells, structure_maps

__all__ = ["STRUCTURES", "STAR_ARMS", "STAR_FACTOR", "REGION_FACTOR", "structure_graph", "check_structure",
           "structure_maps", "structure_cells", "cutting_regions", "random_structure"]

def _cells(shape: tuple[int, ...]) -> torch.Tensor:
    """Cell centres of a grid, ``(prod(shape), len(shape))``, in C order, in units of the grid."""
    axes = [torch.arange(n, dtype=torch.float64) + 0.5 for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))


def cutting_regions(shape: tuple[int, ...], num_regions: int, generator: torch.Generator) -> torch.Tensor:
    """Regions of a grid of ``shape``: the Voronoi cells of ``num_regions`` random centres,
    relabelled ``0 … R-1`` (a centre that captures no cell is dropped, so ``R <= num_regions``).
    Returns an integer tensor shaped like the grid."""
    cells = _cells(shape)
    centres = torch.rand((num_regions, len(shape)), generator=generator, dtype=torch.float64) * torch.tensor(
        shape, dtype=torch.float64)
    # in chunks of cells, so that the distance table stays small (a 256x256 map has 65536 cells)
    chunk = max(1, 2 ** 22 // num_regions)
    nearest = torch.cat([torch.cdist(cells[i:i + chunk], centres).argmin(1) for i in range(0, len(cells), chunk)])
    return torch.unique(nearest, return_inverse=True)[1].reshape(shape)


def _lifted_with_a_twist(coarse_regions: torch.Tensor) -> torch.Tensor:
    """Regions of a grid twice as fine as ``coarse_regions`` (any dimensionality): each fine cell
    takes its coarse cell's region, except the cells with every coordinate odd, which take the
    region of the next coarse cell along the diagonal (wrapping)."""
    shape = tuple(coarse_regions.shape)
    fine = coarse_regions
    for d in range(len(shape)):
        fine = fine.repeat_interleave(2, dim=d)
    shifted = torch.roll(coarse_regions, shifts=tuple(-1 for _ in shape), dims=tuple(range(len(shape))))
    odd = tuple(slice(1, None, 2) for _ in shape)
    fine = fine.clone()
    fine[odd] = shifted
    return fine


def structure_graph(structure: str, size: int, dims: int = 2, levels: int = 2, factor: int = 2,
                    seed: int = 0) -> Graph:
    """The graph of ``structure`` at finest side ``size`` (see the module docstring).

    ``levels`` and ``factor`` shape the chain; ``seed`` draws the regions.  Checked by
    :func:`check_structure` (ValueError)."""
    check_structure(structure, size, dims, levels, factor)
    side = (size,) * dims
    if structure == "chain":
        return Hierarchy.grid([(size // factor ** k,) * dims for k in range(levels)])
    if structure == "star":
        return Graph.star([side] * STAR_ARMS, (size // STAR_FACTOR,) * dims)
    if structure == "axial":
        return Graph.axial(side)
    generator = torch.Generator().manual_seed(seed)
    grid = (size // REGION_FACTOR,) * dims
    if structure == "grid_regions":
        return Graph.grid_regions([side, grid], cutting_regions(side, math.prod(grid), generator))
    # mixed: X (size) and Y (size / 2) onto a shared grid and shared regions
    half = (size // 2,) * dims
    return _mixed(side, half, grid, cutting_regions(half, math.prod(grid), generator))


def _mixed(side: tuple, half: tuple, grid: tuple, y_regions: torch.Tensor) -> Graph:
    """The mixed family: X (``side``) and Y (``half``) onto a shared ``grid`` and onto shared
    regions (``y_regions`` on Y; X's are them lifted, with the twist)."""
    return Graph([side, half, grid, int(y_regions.max()) + 1],
                 [(0, 2), (1, 2), (0, 3, _lifted_with_a_twist(y_regions)), (1, 3, y_regions)])


def random_structure(structure: str, generator: torch.Generator, quick: bool = False) -> Graph:
    """A small random member of a family, for ``verify`` (a few dozen cells, so that CVXPY
    solves it at tight tolerances in a moment): random grid sides, numbers of maps and regions.
    ``chain`` gives a 2- or 3-level hierarchy (2-D, and a 3-D one in full mode).  At these
    sizes a few draws of regions do not cut across the grid: they equal its blocks, refine or
    coarsen them, or are a single region (a review counted 5 in 600 draws), and in quick mode
    ``mixed``'s 2 × 2 map Y is the grid itself.  More often, cell by cell, the grid and the
    regions link without a cycle (ca_rev258: ``grid_regions`` 135 of 600 draws, 347 of 600 in
    quick mode; ``mixed`` never: its map Y closes a cycle, 0 of 600 in either mode, ca_rev265):
    such a draw is a tree at the level of cells, though not of maps, so ``exact`` refuses it and
    ``dual`` solves it (median 4 sweeps on those against 3 on the rest, over 200 draws).  They are
    kept on purpose: their redundant constraints and these trees are cases a solver must handle too."""
    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    if structure == "chain":
        return Hierarchy.grid(pick([[(4, 4), (2, 2)], [(4, 4), (2, 2), (1, 1)]] if quick else
                                   [[(8, 8), (4, 4)], [(6, 4), (3, 2), (1, 2)], [(4, 4, 2), (2, 2, 1)]]))
    if structure == "star":
        arms = pick([2, 3] if quick else [2, 3, 4])
        coarse = pick([(2, 2), (2, 1)])
        fine = [(coarse[0] * pick([1, 2]), coarse[1] * pick([2, 3])) for _ in range(arms)]
        return Graph.star(fine, coarse)
    if structure == "axial":
        return Graph.axial(pick([(4, 3), (3, 5)] if quick else [(5, 4), (6, 3), (3, 3, 2)]))
    grid = (2, 2)
    if structure == "grid_regions":
        side = pick([(4, 4)] if quick else [(6, 6), (8, 4)])
        regions = cutting_regions(side, pick([3, 4, 5]), generator)
        return Graph.grid_regions([side, grid], regions)
    if structure != "mixed":
        raise ValueError(f"unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}")
    side = pick([(4, 4)] if quick else [(8, 4), (4, 8)])
    half = tuple(n // 2 for n in side)
    return _mixed(side, half, grid, cutting_regions(half, pick([3, 4]), generator))
