"""Named, seeded generators of attention scores for benchmarks and verification.

* ``gaussian``: every level i.i.d. ``N(0, scale²)``.
* ``lesion``: "lesion-like" peaked maps: a few smooth blobs of random position, width
  and height on the finest level plus noise; every coarser level sees the pooled blob
  map plus its own noise, so the levels agree roughly, as trained attention heads do.  On
  a graph of maps, every map without a finer one gets blobs (one blob map, shared: heads
  and resolutions that look at the same lesions), and every other map the mean of its finer
  maps' blob maps, mean-pooled along its edges.
* ``model``: scores of a trained attention CNN (needs a checkpoint). The experiment wing
  registers it (:func:`register_generator`; :mod:`convex_attention.paper.model_scores`),
  so the harness never imports the experiment.

``generate(name, h, batch, seed, scale)`` returns ``M`` float64 tensors ``(B, *h.shapes[k])``
(``h``: a hierarchy or any graph of maps).
"""
from __future__ import annotations

import math
import numbers
from typing import cast

import torch
from torch import Tensor

from ..graph import Graph
from ..hierarchy import Hierarchy

__all__ = ["GENERATORS", "generate", "gaussian_scores", "lesion_scores", "register_generator", "random_parents"]


def gaussian_scores(h: Graph, batch: int, seed: int = 0, scale: float = 1.0) -> list[Tensor]:
    """N(0, scale²) scores (it takes no other option: a misspelt one is a TypeError, not dropped, ca_rev129)."""
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn((batch,) + s, generator=g, dtype=torch.float64) for s in h.shapes]


def _blob_map(shape: tuple[int, ...], batch: int, g: torch.Generator, max_blobs: int = 3) -> Tensor:
    """Sum of 1–max_blobs anisotropic Gaussian bumps on a grid of ``shape``, values in [0, 1]."""
    coords = torch.meshgrid(*[torch.linspace(0, 1, n, dtype=torch.float64) for n in shape], indexing="ij")
    out = torch.zeros((batch,) + shape, dtype=torch.float64)
    for b in range(batch):
        n_blobs = int(torch.randint(1, max_blobs + 1, (1,), generator=g))
        for _ in range(n_blobs):
            centre = torch.rand(len(shape), generator=g, dtype=torch.float64)
            width = 0.03 + 0.12 * torch.rand(len(shape), generator=g, dtype=torch.float64)
            height = 0.5 + 0.5 * float(torch.rand(1, generator=g, dtype=torch.float64))
            d2 = cast(Tensor, sum(((c - centre[i]) / width[i]) ** 2 for i, c in enumerate(coords)))
            out[b] += height * torch.exp(-0.5 * d2)
    return out.clamp(max=1.0)


def lesion_scores(h: Graph, batch: int, seed: int = 0, scale: float = 1.0, noise: float = 0.3) -> list[Tensor]:
    """Peaked maps: ``scale · (4·blobs + noise)`` with blobs shared across levels (maps);
    ``noise`` is the standard deviation of the Gaussian noise, a finite number ≥ 0 (ValueError
    otherwise).  On a hierarchy whose levels are not grids (``from_parents``) there are no
    blobs to place: the scores are :func:`gaussian_scores`."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(seed)
    if not isinstance(h, Hierarchy):
        return _graph_lesion_scores(h, batch, g, scale, noise)
    if not h.is_grid:
        return gaussian_scores(h, batch, seed, scale)
    blobs = _blob_map(h.shapes[0], batch, g)
    scores = []
    assert h.factors is not None  # (a grid: is_grid above)
    for k, shape in enumerate(h.shapes):
        if k > 0:
            blobs = h.aggregate(blobs, k - 1) / math.prod(h.factors[k - 1])
        scores.append(scale * (4.0 * blobs + noise * torch.randn((batch,) + shape, generator=g, dtype=torch.float64)))
    return scores


def _block_mean(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x`` ``(B, *fine)`` averaged over blocks onto ``(B, *shape)`` (each side of ``shape`` divides ``fine``'s)."""
    fine = x.shape[1:]
    split: list[int] = []
    for n, m in zip(fine, shape):
        split += [m, n // m]
    return x.reshape((x.shape[0],) + tuple(split)).mean(dim=tuple(range(2, 2 * len(shape) + 1, 2)))


def _graph_lesion_scores(h: Graph, batch: int, g: torch.Generator, scale: float, noise: float) -> list[Tensor]:
    """:func:`lesion_scores` on a graph: blobs on every map without a finer one (one blob map for
    the largest such grid, block-averaged for the smaller ones that divide it), the mean-pooled
    blobs of the finer maps on every other, then noise."""
    blobs: list[Tensor | None] = [None] * h.num_maps
    sources = [k for k in h.order if not h.in_edges[k]]
    largest = max((h.shapes[k] for k in sources), key=math.prod)
    drawn: dict = {largest: _blob_map(largest, batch, g)}
    for k in h.order:  # finer maps first
        if not h.in_edges[k]:
            shape = h.shapes[k]
            if shape not in drawn:
                if len(shape) == len(largest) and all(n % m == 0 for n, m in zip(largest, shape)):
                    drawn[shape] = _block_mean(drawn[largest], shape)  # the same lesions, seen coarser
                else:
                    drawn[shape] = _blob_map(shape, batch, g)
            blobs[k] = drawn[shape]
            continue
        pooled = []
        for e in h.in_edges[k]:
            fine = blobs[h.edges[e][0]]
            assert fine is not None
            counts = h.aggregate(torch.ones_like(fine[:1]), e)
            pooled.append(h.aggregate(fine, e) / counts)
        blobs[k] = sum(pooled[1:], pooled[0]) / len(pooled)
    out = []
    for b, shape in zip(blobs, h.shapes):
        assert b is not None
        out.append(scale * (4.0 * b + noise * torch.randn((batch,) + shape, generator=g, dtype=torch.float64)))
    return out


GENERATORS = {"gaussian": gaussian_scores, "lesion": lesion_scores}


def register_generator(name: str, fn) -> None:
    """Add a score generator ``fn(h, batch, seed, scale, **kwargs) -> L tensors``."""
    GENERATORS[name] = fn


def generate(name: str, h: Graph, batch: int, seed: int = 0, scale: float = 1.0, **kwargs) -> list[Tensor]:
    """Scores from a named generator (``gaussian``, ``lesion``, or a registered one):
    ``L`` float64 tensors ``(batch, *h.shapes[k])``.

    Raises:
        ValueError: an unknown name, a batch that is not a positive integer, or a scale
            that is not positive and finite; a generator checks its own options (``kwargs``:
            ``lesion``'s ``noise``).
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown score generator {name!r}; choose one of {', '.join(GENERATORS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    return GENERATORS[name](h, batch, seed, scale, **kwargs)


def random_parents(sizes, generator: torch.Generator) -> list[Tensor]:
    """A random nested partition: ``L-1`` parent maps for level sizes ``sizes`` (finest first),
    each coarse cell receiving at least one child (for irregular test and verification cases).
    ValueError unless the sizes are positive integers that never grow (a torch error, "negative
    dimension", before, ca_rev258)."""
    sizes = list(sizes)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in sizes) or \
            any(c > f for f, c in zip(sizes[:-1], sizes[1:])):
        raise ValueError(f"sizes must be positive integers, finest first, none larger than the one before, got {sizes}")
    parents = []
    for n_fine, n_coarse in zip(sizes[:-1], sizes[1:]):
        par = torch.cat([torch.arange(n_coarse),
                         torch.randint(0, n_coarse, (n_fine - n_coarse,), generator=generator)])
        parents.append(par[torch.randperm(n_fine, generator=generator)])
    return parents
