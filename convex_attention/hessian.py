r"""The Hessian of the dual function on a graph of maps, and the implicit backward (docs/math.md §7).

Stack the duals of all edges into one vector ``λ`` (edge order, each ``λ_e`` flattened, ``D =
Σ_e n_coarse(e)`` entries).  Map ``k``'s logits are ``η_k = θ_k + A_k λ`` with

    A_k λ = Σ_{e: coarse(e)=k} λ_e − Σ_{e: fine(e)=k} P_eᵀ λ_e,

so ``g(λ) = Σ_k τ_k logsumexp(η_k / τ_k)`` has gradient ``Σ_k A_kᵀ p_k`` (edge ``e = (a → b)``:
``p_b − P_e p_a``, the constraint residual) and Hessian

    ∇²g = Σ_k A_kᵀ J_k A_k,        J_k = (diag p_k − p_k p_kᵀ) / τ_k.

Every product with it is a few poolings and broadcasts (:meth:`DualHessian.matvec`).  It is
positive semi-definite and singular along the gauge directions (a constant added to one
``λ_e`` moves nothing), so linear systems are solved on the subspace where every ``λ_e`` has
mean zero; there the Hessian is definite unless the graph has redundant constraints (two
paths that pool one map onto another in the same way), and the right-hand sides that
occur here lie in its range either way.

* :meth:`DualHessian.dense` assembles it per sample, ``(B, D, D)``, for the Newton steps of the
  dual solver and as the preconditioner of the implicit backward when ``D`` is small.
* :func:`solve_psd` solves ``H w = r`` by preconditioned conjugate gradients (block-Jacobi per
  edge, or the dense Cholesky factor), per sample, to a relative tolerance, or until the
  residual is as small as its own rounding error (:meth:`DualHessian.rounding_floor`) and
  the iteration has stalled: near degenerate solutions make the tolerance unreachable in
  the working precision, and there no solver could do better; :func:`implicit_vjp` raises
  :class:`ImplicitSolveError` naming the samples that reach neither.
* :func:`implicit_vjp` is the vector–Jacobian product of the solution map ``θ ↦ p*(θ)`` at a
  solution of any graph: with ``v_k = ∂L/∂p_k``,
  ``θ̄_k = J_k (v_k − A_k w)``, ``H w = Σ_k A_kᵀ J_k v_k``.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from ._ops import GRADIENT_RTOL, gradient_rtol, named, sample_dims
from .graph import Graph

__all__ = ["DualHessian", "get_hessian", "solve_psd", "implicit_vjp", "ImplicitSolveError", "DENSE_LIMIT",
           "DENSE_FALLBACK_LIMIT", "RETRY_PRECONDITIONERS",
           "dense_chunks", "cholesky_apply", "ROUNDING_UNITS", "STALL_ITERATIONS", "GRADIENT_RTOL", "REFINEMENTS",
           "CORRECTION_RTOL"]

# The largest stacked dual (entries per sample) whose Hessian is assembled densely and
# factorised (Cholesky, O(D³) per sample; D = 1344 takes ~0.1 s per factorisation on one core).
# Above it Newton systems are solved by conjugate gradients: faster per instance, but on a
# hard stress family (D = 1344, τ down to 0.01) 2 of 100 instances missed 1e-10 in 200 sweeps
# where the dense path needed at most 21 (measured, docs/math.md §7.4, before the fallback below).
DENSE_LIMIT = 1024
# Up to this many entries a system that conjugate gradients alone could not solve is solved
# again with the dense Hessian: block-Jacobi conjugate gradients fail on peaked maps, e.g. at
# the same solutions of 12 hard mixed instances at 160² (D = 1600) 8 were left unsolved after
# 1000 iterations, 1 with the retry (every map at τ ≤ 0.1; measured, docs/math.md §7.5).  The
# dual solver's Newton steps fall back likewise (it reads the limit from here at call time).
# The cap is a cost: a dense direction grows as D³ (2.4 s and 620 MiB per sample at D = 4094,
# where a crawling sample then took 45 s for 14 sweeps against 0.8 s without it, a review);
# at D = 1600 the fallback made the runs faster, not slower.
DENSE_FALLBACK_LIMIT = 2048
# The preconditioners the implicit backward tries again, in turn, on the samples the first solve
# left unsolved (up to DENSE_FALLBACK_LIMIT entries): the dense Hessian's Cholesky factor (where
# the first solve was block-Jacobi), then its pseudo-inverse, which solved a peaked instance the
# factor could not (rank 18 of 256; docs/math.md §7.5); with the pseudo-inverse among them, the
# Cholesky-preconditioned solves stop at their stall, and a last one is run again without that stop.
# benchmarks/ablate_newton.py (--ablate pseudo_inverse) leaves the pseudo-inverse out.
RETRY_PRECONDITIONERS = ("cholesky", "pseudo_inverse")
# Dense Hessians are built for at most this many entries at once (128 MiB in float64): the
# batch is split into chunks of samples.
DENSE_ENTRIES = 2 ** 24
# A solve is also accepted where its true residual is at most this many units of rounding of
# the residual's own computation (:meth:`DualHessian.rounding_floor`) and its relative residual
# at most the square root of the dtype's epsilon.  On a nearly degenerate solution (probabilities
# down to 1e-75, Hessian condition 2e7) the matrix-free product itself differs from the dense
# one by 1e-9 relative, so 1e-10 cannot be verified; the solves there reached 0.2-0.3 units
# (measured, docs/benchmarks.md "Gradients"), and their gradient agreed with central differences.
ROUNDING_UNITS = 16.0
# ... and only once conjugate gradients have stalled (the residual did not halve over this
# many iterations), and in float64 only.  The floor is a worst-case bound: in float32 it was up
# to 500x the rounding the product actually makes, and it stopped solves that were still
# converging, with gradients 5-16x worse than the tolerance gives (a hostile review,
# 2026-12-03: 21 of 61 float32 solves; in float64, 38 acceptances, each within 3x of a dense
# solve's own error).
STALL_ITERATIONS = 3
# GRADIENT_RTOL (from _ops): how far the implicit backward's gradient may move under one more
# refinement of its solve, relative to each map's own gradient (:func:`implicit_vjp`): checked
# where the terms that cancel in ``J_k (v_k − A_k w)`` are large against the gradient.
#: The refinements of that solve before the gradient is declared unresolved.
REFINEMENTS = 3
#: The loosest relative residual a refinement's correction is asked for (of its own right-hand
#: side, the residual it corrects), per dtype.
CORRECTION_RTOL = {torch.float64: 1e-3, torch.float32: 1e-2}
#: How many draws of the rounding's signs :func:`_reached_by_rounding` measures (one missed a
#: measured map 1.31e-6 of itself off, against GRADIENT_RTOL's 1e-6: ca_rev286).
ROUNDING_PROBES = 4


def dense_chunks(batch: int, dim: int) -> list[slice]:
    """Slices of the batch whose dense ``(chunk, D, D)`` Hessians hold at most :data:`DENSE_ENTRIES`."""
    size = max(1, DENSE_ENTRIES // max(1, dim * dim))
    return [slice(i, min(batch, i + size)) for i in range(0, batch, size)]


class ImplicitSolveError(RuntimeError):
    """The linear system of the implicit backward could not be solved to its tolerance.

    ``rows``: the samples it names, as rows of the call that raised it (the message numbers them
    as the caller does)."""

    def __init__(self, message: str, rows: Sequence[int] = ()):
        super().__init__(message)
        self.rows = list(rows)


class DualHessian:
    """The structure of ``∇²g`` on one graph and device: offsets of each edge in the stacked dual,
    and, per map, the columns its cells touch (built once, see :func:`get_hessian`)."""

    def __init__(self, g: Graph, device: torch.device):
        self.g = g
        self.device = device
        self.offsets = [0]
        for _, b in g.edges:
            self.offsets.append(self.offsets[-1] + g.sizes[b])
        self.dim = self.offsets[-1]
        self._incidence: list[list[tuple[Tensor, float]]] | None = None
        self._gauge: Tensor | None = None

    # ------------------------------------------------------------------ stacking
    def flatten(self, parts: Sequence[Tensor]) -> Tensor:
        """``E`` tensors ``(B, *shapes[coarse(e)])`` -> ``(B, D)``."""
        return torch.cat([x.reshape(x.shape[0], -1) for x in parts], dim=1)

    def split(self, x: Tensor) -> list[Tensor]:
        """``(B, D)`` -> ``E`` tensors ``(B, *shapes[coarse(e)])`` (views)."""
        g = self.g
        return [x[:, self.offsets[e]:self.offsets[e + 1]].reshape((x.shape[0],) + g.shapes[b])
                for e, (_, b) in enumerate(g.edges)]

    def centre(self, x: Tensor) -> Tensor:
        """Remove each edge's mean per sample (the gauge) from ``(B, D)``."""
        return self.flatten([p - p.reshape(p.shape[0], -1).mean(1).view((-1,) + (1,) * (p.dim() - 1))
                             for p in self.split(x)])

    # ------------------------------------------------------------------ operators
    def apply_A(self, x: Tensor) -> list[Tensor | None]:
        """``A_k x`` for every map (``None`` for a map without edges): ``(B, *shapes[k])``."""
        g = self.g
        parts = self.split(x)
        out: list[Tensor | None] = []
        for k in range(g.num_maps):
            y: Tensor | None = None
            for e in g.in_edges[k]:
                y = parts[e] if y is None else y + parts[e]
            for e in g.out_edges[k]:
                down = g.broadcast(parts[e], e)
                y = -down if y is None else y - down
            out.append(y)
        return out

    def apply_At(self, z: Sequence[Tensor | None]) -> Tensor:
        """``Σ_k A_kᵀ z_k``: edge ``e = (a → b)`` gets ``z_b − P_e z_a``; ``(B, D)``."""
        g = self.g
        parts = []
        for e, (a, b) in enumerate(g.edges):
            za, zb = z[a], z[b]
            assert za is not None and zb is not None
            parts.append(zb - g.aggregate(za, e))
        return self.flatten(parts)

    @staticmethod
    def apply_J(p: Tensor, y: Tensor, tau: float, peak: Tensor | None = None) -> Tensor:
        """``(diag p − p pᵀ) y / τ`` per sample (``p``, ``y``: ``(B, *shape)``), at ``p`` normalised.

        Formed as ``p ∘ (y' − <p, y'>) / τ`` with ``y' = y − y_m``, ``m`` each sample's most
        probable cell (``J 1 = 0``): at a cell of probability near one, ``y_m − <p, y>`` otherwise
        cancels to ``(1 − p_m)``'s share of ``y_m`` and keeps ``eps·|y_m|`` of rounding, which is
        relatively ``eps / (1 − p_m)`` of it (one-hot maps: 1e4 in float64, a float32 gradient
        2.2x its tolerance off a 60-digit solve: ca_rev89).  The form is also the one of ``p``
        normalised, to a relative ``|1 − Σp|``: ``diag p − p pᵀ`` at ``p`` as given is
        ill-conditioned in ``p`` there (its ``p_m − p_m²`` moves by ``eps`` as ``p_m`` does).
        ``peak``: ``m`` per sample, ``(B, 1)`` (:meth:`peaks`; None: found here)."""
        y = _less_peak(y, _peak(p) if peak is None else peak)
        inner = (p * y).flatten(1).sum(1).view((-1,) + (1,) * (p.dim() - 1))
        return p * (y - inner) / tau

    @staticmethod
    def peaks(probs: Sequence[Tensor]) -> list[Tensor]:
        """Each map's most probable cell per sample, ``(B, 1)`` (:meth:`apply_J`'s ``m``): found
        once per solve (finding it in every product doubled the product's cost)."""
        return [_peak(p) for p in probs]

    def matvec(self, probs: Sequence[Tensor], temps: Sequence[float], x: Tensor,
               peaks: Sequence[Tensor] | None = None) -> Tensor:
        """``∇²g x`` at the probabilities ``probs``, matrix-free: ``(B, D) -> (B, D)``
        (``peaks``: :meth:`peaks` of ``probs``, or None)."""
        return self._matvec_of(probs, temps, self.apply_A(x), peaks)

    def _matvec_of(self, probs: Sequence[Tensor], temps: Sequence[float], y: Sequence[Tensor | None],
                   peaks: Sequence[Tensor] | None = None) -> Tensor:
        """:meth:`matvec` from ``y = A x`` (:meth:`apply_A`)."""
        peaks = self.peaks(probs) if peaks is None else peaks
        z = [None if yk is None else self.apply_J(p, yk, t, m) for p, yk, t, m in zip(probs, y, temps, peaks)]
        return self.apply_At(z)

    def rounding_floor(self, probs: Sequence[Tensor], temps: Sequence[float], x: Tensor, rhs: Tensor) -> Tensor:
        """The rounding error to expect in ``‖∇²g x − rhs‖``: ``ROUNDING_UNITS · eps ·
        (‖ |A|ᵀ z ‖ + ‖rhs‖)`` per sample, ``z_k`` the size of the terms that cancel in
        :meth:`apply_J` on ``A_k x`` (:func:`_product_rounding`); ``(B,)``.  A residual below it
        cannot be told from zero."""
        return self._floor_of(probs, temps, self.apply_A(x), rhs)

    def residual_and_floor(self, probs: Sequence[Tensor], temps: Sequence[float], x: Tensor,
                           rhs: Tensor, peaks: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``(‖∇²g x − rhs‖, rounding_floor(...))`` per sample, ``(B,)`` each, with ``A x``
        computed once for both."""
        y = self.apply_A(x)
        peaks = self.peaks(probs) if peaks is None else peaks
        residual = _norm(self._matvec_of(probs, temps, y, peaks) - rhs)
        return residual, self._floor_of(probs, temps, y, rhs, peaks)

    def _floor_of(self, probs: Sequence[Tensor], temps: Sequence[float], y: Sequence[Tensor | None],
                  rhs: Tensor, peaks: Sequence[Tensor] | None = None) -> Tensor:
        """:meth:`rounding_floor` from ``y = A x``."""
        size = _norm(self._product_rounding_of(probs, temps, y, peaks)) + _norm(rhs)
        return ROUNDING_UNITS * torch.finfo(rhs.dtype).eps * size

    def _product_rounding_of(self, probs: Sequence[Tensor], temps: Sequence[float], y: Sequence[Tensor | None],
                             peaks: Sequence[Tensor] | None = None) -> Tensor:
        """Per entry of the dual, ``(B, D)``: the size of the terms whose rounding the product
        ``∇²g x`` (``y = A x``) leaves there, ``|A|ᵀ z`` (:meth:`rounding_floor`)."""
        g = self.g
        peaks = self.peaks(probs) if peaks is None else peaks
        z: list[Tensor | None] = []
        for p, yk, t, m in zip(probs, y, temps, peaks):
            if yk is None:
                z.append(None)
                continue
            z.append(_product_rounding(p, yk, t, m))
        parts = []
        for e, (a, b) in enumerate(g.edges):
            za, zb = z[a], z[b]
            assert za is not None and zb is not None
            parts.append(zb + g.aggregate(za, e))
        return self.flatten(parts)

    def gradient(self, probs: Sequence[Tensor]) -> Tensor:
        """``∇g = Σ_k A_kᵀ p_k``: per edge the residual ``p_b − P_e p_a``; ``(B, D)``."""
        return self.apply_At(list(probs))

    def block_diagonal(self, probs: Sequence[Tensor], temps: Sequence[float]) -> Tensor:
        """The diagonal part of each edge's block of ``∇²g``, ``P_e p_a / τ_a + p_b / τ_b``: ``(B, D)``.

        Each edge's block is this diagonal minus two rank-one terms; on the mean-zero
        subspace dividing by it is the block-Jacobi preconditioner."""
        g = self.g
        return self.flatten([g.aggregate(probs[a], e) / temps[a] + probs[b] / temps[b]
                             for e, (a, b) in enumerate(g.edges)])

    # ------------------------------------------------------------------ dense
    def incidence(self) -> list[list[tuple[Tensor, float]]]:
        """Per map, ``(columns, sign)`` of every edge it touches: the column of each of its
        cells in the stacked dual (``+1`` as an edge's coarse map, ``−1`` as its fine map)."""
        if self._incidence is None:
            g = self.g
            inc: list[list[tuple[Tensor, float]]] = []
            for k in range(g.num_maps):
                sides: list[tuple[Tensor, float]] = []
                for e in g.in_edges[k]:
                    sides.append((self.offsets[e] + torch.arange(g.sizes[k], device=self.device), 1.0))
                for e in g.out_edges[k]:
                    sides.append((self.offsets[e] + g.parents(e, self.device), -1.0))
                inc.append(sides)
            self._incidence = inc
        return self._incidence

    def gauge(self, dtype: torch.dtype) -> Tensor:
        """``Σ_e 1_e 1_eᵀ / n_e``: added to the Hessian it removes the gauge's null space without
        changing solutions on the mean-zero subspace; ``(D, D)``."""
        if self._gauge is None or self._gauge.dtype != dtype:
            G = torch.zeros(self.dim, self.dim, dtype=dtype, device=self.device)
            for e in range(self.g.num_edges):
                lo, hi = self.offsets[e], self.offsets[e + 1]
                G[lo:hi, lo:hi] = 1.0 / (hi - lo)
            self._gauge = G
        return self._gauge

    def dense(self, probs: Sequence[Tensor], temps: Sequence[float]) -> Tensor:
        """``∇²g`` per sample, ``(B, D, D)``, assembled from the sparse part
        ``Σ_k A_kᵀ diag(p_k) A_k / τ_k`` (scatter-adds, one per pair of edges at a map) and the
        rank-one parts ``(A_kᵀ p_k)(A_kᵀ p_k)ᵀ / τ_k``."""
        D = self.dim
        B = probs[0].shape[0]
        H = probs[0].new_zeros(B, D * D)
        low_rank = []
        for k, sides in enumerate(self.incidence()):
            if not sides:
                continue
            p = probs[k].reshape(B, -1)
            w = p / temps[k]
            for cu, su in sides:
                for cv, sv in sides:
                    H.index_add_(1, cu * D + cv, w if su * sv > 0 else -w)
            v = p.new_zeros(B, D)
            for cu, su in sides:
                v.index_add_(1, cu, p if su > 0 else -p)
            low_rank.append(v / math.sqrt(temps[k]))
        V = torch.stack(low_rank, 2)  # (B, D, maps)
        return H.view(B, D, D).baddbmm_(V, V.transpose(1, 2), alpha=-1.0)

    def factor(self, H: Tensor, ridge: float = 1e-12) -> tuple[Tensor, Tensor]:
        """Cholesky factors of ``H + scale·(gauge + ridge·I)`` per sample (``scale``: the mean
        diagonal), with a larger ridge for samples where it fails.  ``H`` ``(B, D, D)`` is
        overwritten.  Returns ``(L, ok)``: ``L`` ``(B, D, D)`` and ``ok`` ``(B,)`` (False where
        no factor was found)."""
        eye = torch.eye(self.dim, dtype=H.dtype, device=H.device)
        scale = self._add_gauge(H, ridge * eye)
        L, info = torch.linalg.cholesky_ex(H)
        ok = info == 0
        if bool(ok.all()):
            return L, ok
        for bump in (1e-9, 1e-6):
            L2, info2 = torch.linalg.cholesky_ex(H + (bump * scale) * eye)
            fixed = ~ok & (info2 == 0)
            L = torch.where(fixed.view(-1, 1, 1), L2, L)
            ok = ok | fixed
            if bool(ok.all()):
                break
        return L, ok

    def pseudo_inverse(self, H: Tensor) -> tuple[Tensor, Tensor]:
        """The spectral pseudo-inverse of ``H + scale·gauge`` per sample (``scale``: the mean
        diagonal): ``(V, inverse)``, ``(B, D, D)`` eigenvectors and ``(B, D)`` inverse
        eigenvalues, 0 for an eigenvalue at most ``D·eps`` times the largest (null to working
        precision: the blocks of probability near zero on peaked maps).  ``H`` is overwritten.
        Apply as ``V (inverse ⊙ Vᵀ r)``.  Where the Cholesky factor of :meth:`factor` inverts
        those directions by its ridge, and conjugate gradients then fail, this leaves them out."""
        self._add_gauge(H)
        values, vectors = torch.linalg.eigh(H)
        floor = self.dim * torch.finfo(H.dtype).eps * values[:, -1:].clamp_min(0)
        return vectors, torch.where(values > floor, values.reciprocal(), torch.zeros_like(values))

    def _add_gauge(self, H: Tensor, extra: Tensor | None = None) -> Tensor:
        """``H += scale·(gauge + extra)`` in place, per sample (``scale``: the mean diagonal,
        so that the gauge's null space is removed at the Hessian's own scale); returns
        ``scale``, ``(B, 1, 1)``."""
        scale = H.diagonal(dim1=1, dim2=2).mean(1).clamp_min(torch.finfo(H.dtype).tiny).view(-1, 1, 1)
        gauge = self.gauge(H.dtype)
        H.addcmul_(scale, gauge if extra is None else gauge + extra)
        return scale


def _norm(x: Tensor) -> Tensor:
    """The 2-norm of each row of ``x`` ``(B, D)``, scaled by the row's largest entry first: the
    sum of squares of entries beyond ``sqrt`` of the dtype's range (1e19 in float32) overflowed,
    and that of entries below ``sqrt`` of its smallest number underflowed to 0, which read a
    right-hand side of 1e-25 as zero and one of 1e18 as rounding (ca_rev91)."""
    norm = x.norm(dim=1)
    finfo = torch.finfo(x.dtype)
    # a finite norm at least sqrt(tiny / eps) lost nothing that matters (squares that underflowed
    # are below D·eps of it): only the other rows are formed again, scaled (a third of the
    # backward's norms' cost, measured, where scaling every row doubled it)
    risky = ~(torch.isfinite(norm) & (norm >= math.sqrt(finfo.tiny / finfo.eps)))
    if not bool(risky.any()):
        return norm
    top = x.abs().amax(1)
    unit = torch.where((top > 0) & torch.isfinite(top), top, torch.ones_like(top))
    scaled = (x / unit.unsqueeze(1)).norm(dim=1) * unit
    return torch.where(risky, torch.where(torch.isinf(top), top, scaled), norm)


def _peak(p: Tensor) -> Tensor:
    """The most probable cell of each sample of one map, ``(B, 1)``, over its flattened cells."""
    return p.flatten(1).argmax(1, keepdim=True)


def _less_peak(y: Tensor, peak: Tensor) -> Tensor:
    """``y − y_m`` per sample, ``m`` the cell ``peak`` ``(B, 1)`` of the flattened map."""
    flat = y.flatten(1)
    return (flat - flat.gather(1, peak)).view_as(y)


def _product_rounding(p: Tensor, y: Tensor, tau: float, peak: Tensor) -> Tensor:
    """Per cell, the size of the terms whose rounding :meth:`DualHessian.apply_J` leaves in
    ``J y``: those of ``y' = y − y_m`` as it forms them, ``p ∘ (|y'| + |<p, y'>|) / τ``, and
    those of ``y``'s own rounding carried through ``J``, ``p ∘ ((1 − 2p) ∘ |y| + <p, |y|>) / τ``
    (:func:`_cancelling`'s bound: a cell's own error cancels where its probability is near one).
    Sized on ``|y|`` at every cell (``p ∘ (|y| + |<p, y>|)``, the form before the product was
    cancellation-free) it was up to ``1 / (1 − p_m)`` times the product's rounding at a cell of
    probability near one, and accepted as rounding residuals a solve could still lower."""
    shifted = _less_peak(y, peak)
    shape = (-1,) + (1,) * (p.dim() - 1)
    inner = (p * shifted).flatten(1).sum(1).abs().view(shape)
    carried = ((1 - 2 * p) * y.abs() + (p * y.abs()).flatten(1).sum(1).view(shape)).clamp_min(0)
    return p * (shifted.abs() + inner + carried) / tau


def cholesky_apply(L: Tensor, rhs: Tensor) -> Tensor:
    """``(L Lᵀ)⁻¹ rhs`` per sample: ``L`` ``(B, D, D)`` lower triangular, ``rhs`` ``(B, D)``.
    Two triangular solves: on the CPU, 5-6x faster than ``torch.cholesky_solve`` at D = 256
    (16 samples, float64: 0.48 against 3.0 ms, measured), the same arithmetic.  TypeError
    when the two dtypes differ (``torch.cholesky_solve`` refused them too)."""
    if L.dtype != rhs.dtype:
        raise TypeError(f"cholesky_apply: the factor is {L.dtype} and the right-hand side {rhs.dtype}; give one dtype")
    forward = torch.linalg.solve_triangular(L, rhs.unsqueeze(2), upper=False)
    return torch.linalg.solve_triangular(L.transpose(1, 2), forward, upper=True).squeeze(2)


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def get_hessian(g: Graph, device) -> DualHessian:
    """The cached :class:`DualHessian` of ``(g, device)`` (its index tensors are built once)."""
    key = (g._kernels_key(), torch.device(device))
    with _CACHE_LOCK:
        hess = _CACHE.get(key)
        if hess is None:
            hess = _CACHE[key] = DualHessian(g, torch.device(device))
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
    return hess


def floor_acceptance_cap(dtype: torch.dtype) -> float:
    """The largest relative residual at which :func:`solve_psd` accepts a stalled solve at its
    rounding floor: ``sqrt(eps)`` in float64; 0 otherwise (the floor test is made in float64
    only: in float32 it overestimated the product's rounding up to 500x)."""
    return math.sqrt(torch.finfo(dtype).eps) if dtype == torch.float64 else 0.0


def solve_psd(hess: DualHessian, probs: Sequence[Tensor], temps: Sequence[float], rhs: Tensor, rtol: float | Tensor,
              max_iter: int, dense_limit: int = DENSE_LIMIT,
              spectral: bool = False, stop_stalled: bool = False,
              _restart: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Solve ``∇²g w = rhs`` on the mean-zero subspace by preconditioned conjugate gradients.

    ``rhs``: ``(B, D)`` in the Hessian's range (each edge's part sums to zero).  The
    preconditioner is the dense Cholesky factor of the Hessian (plus the gauge) when
    ``D <= dense_limit`` (one or two iterations then), else block-Jacobi per edge
    (:meth:`DualHessian.block_diagonal`); with ``spectral`` (and ``D <= dense_limit``) it is the
    Hessian's pseudo-inverse instead (:meth:`DualHessian.pseudo_inverse`: an eigendecomposition,
    11-14 factorisations' cost, for the systems the Cholesky factor leaves unsolved).
    Each sample stops, and is frozen, once
    ``‖∇²g w − rhs‖ <= rtol ‖rhs‖`` (``rtol``: a float or one per sample, ``(B,)``), or once
    it has stalled (its residual did not halve over :data:`STALL_ITERATIONS` iterations) with
    a relative residual of at most ``sqrt(eps)`` and a true residual of at most
    :meth:`DualHessian.rounding_floor` (the tolerance is then below what the working
    precision can verify).  The second test is made in float64 only.

    With ``spectral``, a sample that has stalled without passing either test stops unsolved:
    the part of its residual that the pseudo-inverse leaves out cannot fall.  With
    ``stop_stalled``, a stalled sample stops likewise (for a solve that a retry follows: it
    saves the retry's samples the rest of ``max_iter``).  A sample whose
    right-hand side is not finite is not iterated: its ``w`` is NaN, and it is not solved.

    Returns ``(w, relative_residual, iterations, solved)``: ``(B, D)``, ``(B,)``, ``(B,)``,
    ``(B,)`` (bool: one of the two stopping tests held, on the true residual
    ``‖∇²g w − rhs‖``, which is the relative residual returned: the one the iteration tracks
    drifts from it).
    """
    B = rhs.shape[0]
    rhs = hess.centre(rhs)
    if hess.dim <= dense_limit and len(dense_chunks(rhs.shape[0], hess.dim)) > 1:
        # one chunk of samples at a time: their Cholesky factors are kept through the iterations
        parts = [solve_psd(hess, [p[c] for p in probs], temps, rhs[c],
                           rtol[c] if isinstance(rtol, Tensor) else rtol, max_iter, dense_limit, spectral,
                           stop_stalled, _restart)
                 for c in dense_chunks(rhs.shape[0], hess.dim)]
        ws, relres_parts, iteration_parts, solved_parts = zip(*parts)
        return torch.cat(ws), torch.cat(relres_parts), torch.cat(iteration_parts), torch.cat(solved_parts)
    # solved at unit size, by a power of two per sample (exact), and w scaled back: conjugate
    # gradients' inner products of a right-hand side of 1e-25 underflowed in float32 (ca_rev91)
    rhs, exponent = _unit_scaled(rhs)
    norm_b = _norm(rhs)
    tiny = torch.finfo(rhs.dtype).tiny
    if hess.dim <= dense_limit and spectral:
        vectors, inverse = hess.pseudo_inverse(hess.dense(probs, temps))

        def inverse_of(r: Tensor) -> Tensor:
            coordinates = (r.unsqueeze(1) @ vectors).squeeze(1)  # Vᵀ r
            return (vectors @ (inverse * coordinates).unsqueeze(2)).squeeze(2)
    elif hess.dim <= dense_limit:
        L, ok = hess.factor(hess.dense(probs, temps))

        def inverse_of(r: Tensor) -> Tensor:
            return torch.where(ok.unsqueeze(1), cholesky_apply(L, r), r)  # no factor found: unpreconditioned
    else:
        diag = hess.block_diagonal(probs, temps)
        # An entry without curvature (probabilities that underflowed to 0 on both sides) has
        # a zero row and column in ∇²g: the pseudo-inverse's 0 there, not 1/tiny, which
        # blew the centring's rounding on that entry up to ~1e290 (found by mutation testing).
        inverse_diag = torch.where(diag > 0, 1 / diag.clamp_min(tiny), torch.zeros_like(diag))

        def inverse_of(r: Tensor) -> Tensor:
            return r * inverse_diag

    def precondition(r: Tensor) -> Tensor:
        return hess.centre(inverse_of(r))

    peaks = hess.peaks(probs)
    w = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition(r)
    d = z.clone()
    rz = (r * z).sum(1)
    active = norm_b > 0
    iterations = torch.zeros(B, dtype=torch.long, device=rhs.device)
    relres = torch.zeros(B, dtype=rhs.dtype, device=rhs.device)
    solved = norm_b == 0  # a zero right-hand side; a non-finite one is never solved (nor iterated)
    floored = torch.zeros(B, dtype=torch.bool, device=rhs.device)  # accepted at the rounding floor (stalled)
    # the floor in float64 only: in float32 it overestimated the product's rounding up to 500x
    # and accepted solves with gradients 5x worse than the tolerance gives (hostile review)
    cap = floor_acceptance_cap(rhs.dtype)
    recent: list[Tensor] = []  # the relative residuals of the last STALL_ITERATIONS + 1 iterations

    def stalled() -> Tensor:
        """Per sample: its residual did not halve over the last :data:`STALL_ITERATIONS`
        iterations (False until there were that many)."""
        if len(recent) <= STALL_ITERATIONS:
            return torch.zeros(B, dtype=torch.bool, device=rhs.device)
        return recent[-1] > 0.5 * recent[0]

    def at_rounding(candidates: Tensor) -> Tensor:
        """Which ``candidates`` have stalled (a solve still making progress is not finished,
        however small its residual) with a true residual below its rounding floor."""
        candidates = candidates & stalled()
        if not bool(candidates.any()):
            return candidates
        true_residual, floor = hess.residual_and_floor(probs, temps, w, rhs, peaks)
        return candidates & (true_residual <= floor)

    def stopped(relres: Tensor) -> Tensor:
        """``solved`` after this iterate, whose relative residual is ``relres``."""
        nonlocal floored
        recent.append(relres)
        del recent[:-(STALL_ITERATIONS + 1)]
        done = solved | (active & (relres <= rtol))
        # the true residual and its floor cost a product more: computed only where the tolerance is not met yet
        unverifiable = active & ~done & (relres <= cap)
        if not bool(unverifiable.any()):
            return done
        at_floor = at_rounding(unverifiable)
        floored = floored | at_floor
        return done | at_floor

    for _ in range(max_iter):
        relres = _norm(r) / norm_b.clamp_min(tiny)
        solved = stopped(relres)
        active = active & ~solved & torch.isfinite(relres)
        if spectral or stop_stalled:
            # the part of the residual in the directions the pseudo-inverse leaves out cannot
            # fall: a stalled solve that the tests above did not accept never will (a review
            # measured 168 of 172 such retries running on to max_iter); a stalled Cholesky-
            # preconditioned solve rarely recovers, and implicit_vjp runs it again last, without this stop
            active = active & ~stalled()
        if not bool(active.any()):
            break
        Hd = hess.matvec(probs, temps, d, peaks)
        dHd = (d * Hd).sum(1)
        alpha = torch.where(active & (dHd > 0), rz / torch.where(dHd > 0, dHd, torch.ones_like(dHd)),
                            torch.zeros_like(dHd)).unsqueeze(1)
        w = w + alpha * d
        r = r - alpha * Hd
        z = precondition(r)
        rz_new = (r * z).sum(1)
        beta = torch.where(active & (rz != 0), rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)),
                           torch.zeros_like(rz)).unsqueeze(1)
        d = torch.where(active.unsqueeze(1), z + beta * d, d)
        rz = torch.where(active, rz_new, rz)
        iterations += active.long()
    relres = torch.where(norm_b == 0, torch.zeros_like(norm_b), _norm(r) / norm_b.clamp_min(tiny))
    if bool(active.any()):  # out of iterations: the last iterate may still have stopped
        solved = stopped(relres)
    # accepted on the residual the iteration tracks, which drifts from the true one: checked on
    # the true residual, and reported as it (a review: tracked 1.2e-8, true 3.6e-7, and accepted
    # at "at most sqrt(eps)"; tracked below 1e-10 with a true 9e-10).  One product more.
    checked = (norm_b > 0) & torch.isfinite(norm_b)
    if bool(checked.any()):
        true_residual, floor = hess.residual_and_floor(probs, temps, w, rhs, peaks)
        true_relres = true_residual / norm_b.clamp_min(tiny)
        # the tolerance on the true residual; the rounding floor only where the iteration had
        # accepted it there (a stalled solve: at_rounding; a review found solves stopped after
        # 2 iterations on the tracked tolerance accepted at the floor, never having stalled)
        holds = (true_relres <= rtol) | (floored & (true_relres <= cap) & (true_residual <= floor))
        # stopped on the tracked residual, which the true one misses: restarted once from the true
        # residual (a retry from w = 0 stops in the same place), for the iterations left
        missed = checked & solved & ~holds & torch.isfinite(true_relres)
        # each sample restarted with the iterations it has left, as alone (the batch's most used had
        # cut every sample's restart short, and a batch gave other gradients than its samples alone)
        left = max_iter - iterations
        restarting = missed & (left > 0)
        for budget in sorted(set(left[restarting].tolist())) if _restart else []:
            rows = torch.nonzero(restarting & (left == budget)).flatten()
            sub = [p[rows] for p in probs]
            remainder = rhs[rows] - hess.matvec(sub, temps, w[rows])
            # the correction's own tolerance, relative to its right-hand side, that leaves rtol of rhs
            scale = norm_b[rows] / _norm(remainder).clamp_min(tiny)
            rtol_rows = rtol[rows] if isinstance(rtol, Tensor) else rtol
            wanted = rtol_rows * scale
            delta, _, more, _ = solve_psd(hess, sub, temps, remainder, wanted, int(budget), dense_limit,
                                          spectral, stop_stalled, _restart=False)
            candidate = w[rows] + torch.where(torch.isfinite(delta).all(1, keepdim=True), delta,
                                              torch.zeros_like(delta))
            iterations[rows] += more
            again = _norm(hess.matvec(sub, temps, candidate) - rhs[rows])
            # kept only where it lowers the true residual (an unsolved correction, applied, took one
            # sample from 3.6e-7 to 2.7e-5: ca_rev83's near-miss)
            better = again < true_residual[rows]
            w[rows] = torch.where(better.unsqueeze(1), candidate, w[rows])
            true_residual[rows] = torch.where(better, again, true_residual[rows])
            true_relres[rows] = true_residual[rows] / norm_b[rows].clamp_min(tiny)
            # held to the tolerance alone: whether the correction stalled at the floor is its own solve's
            holds[rows] = true_relres[rows] <= rtol_rows
        solved = torch.where(checked, holds, solved)
        relres = torch.where(checked, true_relres, relres)
    # a non-finite right-hand side (NaN in an incoming gradient) gives NaN, as autograd would: a
    # zero solution there dropped the NaN of a loss on the duals from the gradient (a review)
    w = torch.where(torch.isfinite(norm_b).unsqueeze(1), w, torch.full_like(w, math.nan))
    return torch.ldexp(w, exponent.unsqueeze(1)).to(w.dtype), relres, iterations, solved


def _unit_scaled(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x · 2^−e, e)``: each row of ``x`` ``(B, D)`` scaled by a power of two (exactly) so that
    its largest entry is in [0.5, 1); ``e`` ``(B,)`` integers (0 for a zero or non-finite row;
    clamped to the dtype's exponent range, so that ``2^±e`` stays finite)."""
    exponent = _unit_exponent(x.abs().amax(1), x.dtype)
    return torch.ldexp(x, -exponent.unsqueeze(1)).to(x.dtype), exponent


def _unit_exponent(top: Tensor, dtype: torch.dtype) -> Tensor:
    """Per sample, the ``e`` with ``top · 2^−e`` in [0.5, 1) (``top``: each sample's largest
    magnitude, ``(B,)``); 0 where ``top`` is zero or not finite; clamped to ``dtype``'s exponent
    range, so that ``2^±e`` stays finite there."""
    usable = torch.isfinite(top) & (top > 0)
    exponent = torch.frexp(torch.where(usable, top, torch.ones_like(top)))[1]
    limit = int(math.log2(torch.finfo(dtype).max)) - 1
    return torch.where(usable, exponent.clamp(-limit, limit), torch.zeros_like(exponent))


def _right_hand_side(hess: DualHessian, probs, temps, grads) -> tuple[list[Tensor], Tensor]:
    """``(centred, rhs)``: each map's incoming gradient recentred (:func:`_recentred`) and the
    implicit backward's right-hand side ``Σ_k A_kᵀ J_k v_k`` formed from them."""
    centred = [_recentred(p, v) for p, v in zip(probs, grads)]
    return centred, hess.apply_At([DualHessian.apply_J(p, vc, t) for p, vc, t in zip(probs, centred, temps)])


def _recentred(p: Tensor, v: Tensor) -> Tensor:
    """``v − <p, v>`` per sample: the same ``J v`` (``J 1 = 0``), whose inner product ``J``
    then forms again on a vector of its own size.  A constant ``c`` in ``v`` (a loss
    ``Σ <c + w, p>``) otherwise left ``c·(Σp − 1)/τ`` along ``p`` in ``J v``, which no
    right-hand side in the Hessian's range has (``p`` sums to one only to rounding)."""
    return v - (p * v).sum(sample_dims(v), keepdim=True)


def implicit_vjp(g: Graph, probs: Sequence[Tensor], temps: Sequence[float], grads: Sequence[Tensor],
                 rtol: float | None = None, max_iter: int = 1000, dense_limit: int | None = None,
                 given: Sequence[bool] | None = None,
                 dual_grads: Sequence[Tensor | None] | None = None,
                 sample_names: Sequence[int] | None = None, widen: bool = False,
                 measured: Sequence[bool] | None = None) -> list[Tensor]:
    """``∂L/∂θ_k`` at a solution of any graph by implicit differentiation of ``∇g(λ*) = 0``.

    With ``v_k = grads[k]`` and ``ū`` the gradient on the mean-zero multipliers λ*
    (``dual_grads``, one per edge or None, centred here: λ* is returned centred): solve
    ``∇²g w = Σ_k A_kᵀ J_k v_k + ū`` (:func:`solve_psd`), then ``θ̄_k = J_k (v_k − A_k w)``
    (``dλ*/dθ_k = −(∇²g)⁻¹ A_kᵀ J_k``).  Each ``θ̄_k`` sums to zero per sample.  ``rtol`` (default
    1e-10 in float64, 1e-5 in float32) is the relative residual the solve must reach, or
    else a residual at its rounding error (:func:`solve_psd`); otherwise
    :class:`ImplicitSolveError` names the samples.  ``dense_limit``: the largest stacked dual
    whose Hessian is factorised for the first solve (default :data:`DENSE_FALLBACK_LIMIT`, or
    :data:`DENSE_LIMIT` if larger, read at call time; above it block-Jacobi, then the retries
    of :data:`RETRY_PRECONDITIONERS`).

    Args:
        probs: ``M`` tensors ``(B, *g.shapes[k])``, the optimum (p(λ*) of the dual).
        temps: ``M`` floats (``inf`` for a given map: no curvature).
        grads: ``M`` tensors shaped like ``probs``.
        given: one bool per map (None: none given).  A given map's entry of the result is the
            gradient with respect to its given probabilities, ``q̄_k = v_k − A_k w``
            (docs/math.md §7.6), not a score gradient.
        sample_names: the samples' numbers in the caller's batch, for the error (None: their rows).
        widen: a narrower dtype's system is solved in float64 at its maps widened
            (:func:`_widened_vjp`, to float64's own ``rtol``), and in that dtype (to ``rtol``) only
            for the samples float64 cannot resolve.
        measured: one bool per map (None: all), the maps whose gradients the caller uses: only
            those are held to :data:`GRADIENT_RTOL` (:func:`_refined`).  Given maps that hold the
            same cells (two given coarsenings of one map sharing a block) leave ``w`` free along
            a redundant direction that moves their gradients and no score gradient: theirs are
            not unique, and measured where nobody asked for them they refused right score
            gradients (float64, 4 of 12 six-cell draws).
    """
    if widen and probs[0].dtype != torch.float64:
        return _widened_vjp(g, probs, temps, grads, rtol, max_iter, dense_limit, given, dual_grads, sample_names,
                            measured)
    # the incoming gradients at unit size per sample, by a power of two (exact), and the result
    # scaled back: the rounding floor of a right-hand side near the top of the dtype's range (float32
    # gradients of 2^123) overflowed to inf and zeroed it as rounding (ca_rev94)
    B = probs[0].shape[0]
    grads = [v.expand_as(p) for v, p in zip(grads, probs)]  # (a batch of 1 broadcast: ldexp would resize it)
    if dual_grads is not None:  # each in float64 (as the system takes it), with the batch's first dimension
        dual_grads = _batched_dual_grads(g, dual_grads, B)
    given_size = list(grads) + ([u for u in dual_grads if u is not None] if dual_grads is not None else [])
    top = torch.stack([x.detach().abs().reshape(B, -1).amax(1) for x in given_size]).amax(0)
    exponent = _unit_exponent(top, probs[0].dtype)

    def scaled(x: Tensor, sign: int) -> Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        return torch.ldexp(x, (sign * exponent).view(shape).to(x.device)).to(x.dtype)

    out = _implicit_vjp(g, probs, temps, [scaled(v, -1) for v in grads], rtol=rtol, max_iter=max_iter,
                        dense_limit=dense_limit, given=given,
                        dual_grads=None if dual_grads is None else [None if u is None else scaled(u, -1)
                                                                    for u in dual_grads],
                        sample_names=sample_names, measured=measured)
    return [scaled(o, 1) for o in out]


def _widened_vjp(g: Graph, probs: Sequence[Tensor], temps: Sequence[float], grads: Sequence[Tensor],
                 rtol: float | None, max_iter: int, dense_limit: int | None, given: Sequence[bool] | None,
                 dual_grads: Sequence[Tensor | None] | None,
                 sample_names: Sequence[int] | None, measured: Sequence[bool] | None = None) -> list[Tensor]:
    """:func:`implicit_vjp` of narrower maps solved in float64 at the maps widened (renormalised:
    :func:`_widened`), held to float64's tolerances, and returned in their dtype; the samples that
    float64 cannot resolve (:class:`ImplicitSolveError`: saturated maps, whose float32 cells are
    zero and whose system is singular to float64 precision) are solved in the narrower dtype, to
    its tolerances, and only those refused there too are named in the error.  The float32 solve
    refines its flagged samples in float64 (:func:`_refined`) after a first solve in float32, a
    second factorisation: measured slower (axial, grid + regions and mixed at 16² and 64², batch
    16, one thread, two runs: the float64 backward 0.54-0.84x its time) and held to float32's 1e-3
    of each map's gradient rather than float64's 1e-6; on maps of temperatures 1e-3 to 1e4 apart
    it refused samples that float64 resolves to 3e-8-1.5e-7 of a 60-digit solve
    (tests/test_hessian.py).  ``rtol`` is the narrower solve's (float64's is its default)."""
    batch = probs[0].shape[0]
    grads = [v.expand_as(p) for v, p in zip(grads, probs)]  # (a batch of 1 broadcast)
    dual = None if dual_grads is None else _batched_dual_grads(g, dual_grads, batch)
    options = {"max_iter": max_iter, "dense_limit": dense_limit, "given": given, "measured": measured}
    kept, wide = _resolved_rows(g, _widened(probs), temps, [v.detach().to(torch.float64) for v in grads], dual,
                                sample_names, options)
    out = [torch.empty_like(p) for p in probs]
    if kept:
        rows = torch.tensor(kept, dtype=torch.long, device=probs[0].device)
        for o, w in zip(out, wide):
            o[rows] = w.to(o.dtype)
    resolved = set(kept)
    refused = [i for i in range(batch) if i not in resolved]
    if refused:
        rows = torch.tensor(refused, dtype=torch.long, device=probs[0].device)
        try:  # (the caller's rtol is the narrower dtype's)
            narrow = _vjp_of_rows(g, refused, probs, temps, grads, dual, sample_names, {**options, "rtol": rtol})
        except ImplicitSolveError as err:  # its rows as this call's
            raise ImplicitSolveError(str(err), [refused[r] for r in err.rows]) from None
        for o, n in zip(out, narrow):
            o[rows] = n.to(o.dtype)
    return out


def resolved_vjp(g: Graph, probs: Sequence[Tensor], temps: Sequence[float], grads: Sequence[Tensor],
                 dual_grads: Sequence[Tensor | None] | None = None, sample_names: Sequence[int] | None = None,
                 **options) -> tuple[list[int], list[Tensor]]:
    """:func:`implicit_vjp` (its ``options``) of the samples it resolves: ``(rows, gradients)``,
    the gradients of those rows only, in order.  Tried on every sample, then again without the
    samples each try refused (:class:`ImplicitSolveError`, ``.rows``; a sample refused at the
    refinement is named only once the solve has passed for all): at most one try per sample.  A
    sample's answer then does not depend on which samples share its batch (one saturated
    batch-mate sent every sample to a fallback: ca_rev110)."""
    batch = probs[0].shape[0]
    grads = [v.expand_as(p) for v, p in zip(grads, probs)]
    dual = None if dual_grads is None else _batched_dual_grads(g, dual_grads, batch)
    return _resolved_rows(g, probs, temps, grads, dual, sample_names, options)


def _resolved_rows(g: Graph, probs, temps, grads, dual, sample_names, options: dict) -> tuple[list[int], list[Tensor]]:
    """:func:`resolved_vjp` on inputs of the whole batch (``dual`` batched, or None)."""
    refused: set[int] = set()
    while True:
        kept = [i for i in range(probs[0].shape[0]) if i not in refused]
        try:
            return kept, (_vjp_of_rows(g, kept, probs, temps, grads, dual, sample_names, options) if kept else [])
        except ImplicitSolveError as err:
            refused.update([kept[r] for r in err.rows] or kept)  # (an error naming none: every sample of the try)


def _vjp_of_rows(g: Graph, rows: list[int], probs, temps, grads, dual, sample_names, options: dict) -> list[Tensor]:
    """:func:`implicit_vjp` of the samples ``rows`` of whole-batch inputs (``dual`` batched, or
    None), the samples named in its error as the caller numbers them."""
    index = torch.tensor(rows, dtype=torch.long, device=probs[0].device)

    def picked(tensors):
        return [None if x is None else x[index] for x in tensors]

    return implicit_vjp(g, picked(probs), temps, picked(grads), dual_grads=None if dual is None else picked(dual),
                        sample_names=named(rows, sample_names), **options)


def _batched_dual_grads(g: Graph, dual_grads: Sequence[Tensor | None], batch: int) -> list[Tensor | None]:
    """``dual_grads`` (one per edge, or None) each ``(batch, *shapes[coarse])`` in float64: given
    without a batch dimension, or with one of 1, broadcast; any other shape refused.  Scaled in
    their own dtype, a float16 loss on the duals underflowed to 0 and was dropped; expanded as
    given, a (1, 1, 2) loss on a 2×2 map was copied across its rows (ca_rev96)."""
    if len(dual_grads) != g.num_edges:
        raise ValueError(f"dual_grads must hold one entry per edge ({g.num_edges}), got {len(dual_grads)}")
    out: list[Tensor | None] = []
    for e, (u, (_, b)) in enumerate(zip(dual_grads, g.edges)):
        if u is None:
            out.append(None)
            continue
        shape = tuple(u.shape)
        if shape != g.shapes[b] and shape not in ((1,) + g.shapes[b], (batch,) + g.shapes[b]):
            raise ValueError(f"dual_grads[{e}] must have shape {g.shapes[b]}, (1, *that) or ({batch}, *that) (edge "
                             f"{e}'s coarse map), got {shape}")
        out.append(u.to(torch.float64).expand((batch,) + g.shapes[b]))
    return out


def _implicit_vjp(g: Graph, probs: Sequence[Tensor], temps: Sequence[float], grads: Sequence[Tensor],
                  rtol: float | None = None, max_iter: int = 1000, dense_limit: int | None = None,
                  given: Sequence[bool] | None = None,
                  dual_grads: Sequence[Tensor | None] | None = None,
                  sample_names: Sequence[int] | None = None, measured: Sequence[bool] | None = None) -> list[Tensor]:
    """:func:`implicit_vjp` at incoming gradients of unit size (per sample)."""
    hess = get_hessian(g, probs[0].device)
    dtype = probs[0].dtype
    if rtol is None:
        rtol = 1e-10 if dtype == torch.float64 else 1e-5
    if dense_limit is None:
        # one factorisation beats block-Jacobi's hundreds of iterations up to the fallback's cap:
        # at D = 1600 (160² mixed, 20 instances each, one thread) the backward's median fell from
        # 332 to 92 ms (normal) and 804 to 75 ms (hard), from 2.6 to 0.58 s for a batch of 8
        dense_limit = max(DENSE_LIMIT, DENSE_FALLBACK_LIMIT)  # read at call time (an ablation sets the cap to 0)
    # J_k v_k sums to zero per sample (J_k 1 = 0), but where v_k carries a constant c (a loss
    # Σ <c + w_k, p_k>, e.g. the +1 of a KL divergence's gradient) the rounding left c·eps along
    # p_k: outside the Hessian's range, it made the system inconsistent and the backward raise
    # ImplicitSolveError on an ordinary loss (a review).  v_k is recentred first.
    centred, rhs = _right_hand_side(hess, probs, temps, grads)
    # a right-hand side within its own rounding error is zero: a loss constant on the simplices
    # (∂L/∂p_k = c, e.g. sol.probs[0].sum()) gave one of pure rounding, which no solve reaches to a
    # relative tolerance (ImplicitSolveError: a review); its gradient is 0.  The rounding is that
    # of the recentred gradients (sized on v itself, a constant of 2**27 zeroed a signal held
    # exactly in it: a review)
    noise = _norm(rhs) <= hess._floor_of(probs, temps, centred, rhs)
    rhs = torch.where(noise.unsqueeze(1), torch.zeros_like(rhs), rhs)
    on_duals = None  # ū, centred, (B, D): the second opinion of _refined adds it to its own right-hand side
    if dual_grads is not None:  # (each (B, *shape) in float64, or None: _batched_dual_grads)
        on_duals = hess.centre(hess.flatten([torch.zeros((rhs.shape[0],) + g.shapes[b], dtype=torch.float64,
                                                         device=rhs.device) if u is None else u
                                             for u, (_, b) in zip(dual_grads, g.edges)]))
        rhs = rhs + on_duals.to(rhs.dtype)
    # where the pseudo-inverse retry follows, a Cholesky-preconditioned solve that stalled stops
    # there, and goes on to max_iter only if that retry fails too: going on first took 0.3-0.6 s
    # per failing 64² sample (measured), where the retry solves most of them at once
    pseudo_inverse_follows = "pseudo_inverse" in RETRY_PRECONDITIONERS and hess.dim <= DENSE_FALLBACK_LIMIT
    w, relres, iterations, solved = solve_psd(hess, probs, temps, rhs, rtol, max_iter, dense_limit,
                                              stop_stalled=pseudo_inverse_follows and hess.dim <= dense_limit)
    finite = torch.isfinite(rhs).all(1)  # elsewhere w is NaN, and so is the gradient: NaN in, NaN out
    attempts = []  # (what preconditions it, spectral, stop_stalled), in turn, on the samples still unsolved
    if hess.dim <= DENSE_FALLBACK_LIMIT:
        for preconditioner in RETRY_PRECONDITIONERS:  # read at call time
            if preconditioner == "pseudo_inverse":
                attempts.append(("the dense Hessian's pseudo-inverse", True, True))
            elif hess.dim > dense_limit:  # (else the Cholesky factor preconditioned the first solve)
                attempts.append(("the dense Hessian", False, pseudo_inverse_follows))
        if pseudo_inverse_follows:
            # stopped at its stall, the Cholesky-preconditioned solve left 3 of 600 hard-set
            # systems unsolved that going on solves (measured, three losses at 64²)
            attempts.append(("the dense Hessian again, without the stall stop", False, False))
    closest = relres.clone()  # each sample's smallest relative residual over the attempts, for the error
    by_pseudo_inverse = torch.zeros_like(solved)  # the samples the pseudo-inverse retry solved
    retries = []
    for description, spectral, stop_stalled in attempts:
        unsolved = ~solved & finite
        if not bool(unsolved.any()):
            break
        rows = torch.nonzero(unsolved).flatten()
        again = solve_psd(hess, [p[rows] for p in probs], temps, rhs[rows], rtol, max_iter, DENSE_FALLBACK_LIMIT,
                          spectral=spectral, stop_stalled=stop_stalled)
        w[rows], solved[rows] = again[0], again[3]  # (tensors of this call's own: written in place)
        by_pseudo_inverse[rows] = again[3] & spectral
        closest[rows] = torch.fmin(closest[rows], again[1])
        iterations[rows] += again[2]
        retries.append(description)
    bad = torch.nonzero(~solved & finite).flatten().tolist()
    if bad:
        # at best: every attempt starts at w = 0, relative residual 1 (a diverged last iterate read
        # "inf at best": ca_rev83's near-miss)
        worst = min(float(closest[bad].max()), 1.0)
        tried = ", by ".join(retries[:-1]) + (" and by " if len(retries) > 1 else "") + (retries[-1] if retries else "")
        raise ImplicitSolveError(
            f"the implicit backward of method 'dual' could not solve the dual's Hessian system for sample(s) "
            f"{named(bad, sample_names)[:10]}: conjugate gradients reached relative residual {worst:.1e} at best "
            f"(tolerance {rtol:.0e}"
            f"{', nor a stalled residual at its rounding error' if dtype == torch.float64 else ''}) after "
            f"{int(iterations[bad].max())} iterations{' over all attempts' if retries else ''}"
            f"{f' (with retries preconditioned by {tried})' if retries else ''}"
            f"; the Hessian is too ill-conditioned at this solution (whole blocks "
            f"of near-zero probability, or temperatures far apart): "
            f"{'solve in float64 (dtype=torch.float64), ' if dtype != torch.float64 else ''}raise "
            f"the temperatures, keep the loss off near-zero probabilities (-log(p + eps) rather than -log p), or "
            f"use method 'exact' where the graph is a forest"
            + ("; and a loss on the duals needs them unique: where two paths pool one map onto another in the "
               "same way (redundant constraints) they are not, and have no derivative (differentiate the "
               "probabilities only)" if dual_grads is not None else ""), bad)
    out, Aw = _formed(hess, probs, temps, grads, centred, w, given)
    return _refined(hess, probs, temps, grads, centred, rhs, w, out, Aw, given, rtol, max_iter, dense_limit,
                    finite, noise if dual_grads is None else torch.zeros_like(noise), sample_names, on_duals,
                    by_pseudo_inverse, measured)


def _formed(hess: DualHessian, probs: Sequence[Tensor], temps: Sequence[float], grads: Sequence[Tensor],
            centred: Sequence[Tensor], w: Tensor, given: Sequence[bool] | None) -> tuple[list[Tensor], list]:
    """``(θ̄, A w)``: each map's gradient ``J_k (v_k − A_k w)`` (a given map's ``v_k − A_k w``)."""
    Aw = hess.apply_A(w)
    out = []
    for k, (p, v, vc, t, aw) in enumerate(zip(probs, grads, centred, temps, Aw)):
        if given is not None and given[k]:
            out.append(v if aw is None else v - aw)
        else:  # J of the recentred gradient: the same, without a constant's rounding in it
            out.append(DualHessian.apply_J(p, vc if aw is None else vc - aw, t))
    return out, Aw


def _cancelling(probs, temps, grads, centred, Aw, given) -> Tensor:
    """Per sample and map, ``(B, M)``: the largest error that a unit rounding of each term of
    ``v_k − A_k w`` (an error of ``|v_k| + |A_k w|``) leaves in the map's gradient after ``J_k``
    (``J_k e = p ∘ (e − <p, e>) / τ``, at most ``p ∘ ((1 − 2p) ∘ |e| + <p, |e|>) / τ``: a cell's
    own error cancels from both terms where its probability is near 1); a given map: ``|e|``."""
    sizes = []
    for k, (p, v, vc, t, aw) in enumerate(zip(probs, grads, centred, temps, Aw)):
        if given is not None and given[k]:
            e = v.abs() if aw is None else v.abs() + aw.abs()
            sizes.append(e.flatten(1).amax(1))
            continue
        e = vc.abs() if aw is None else vc.abs() + aw.abs()
        inner = (p * e).flatten(1).sum(1).view((-1,) + (1,) * (p.dim() - 1))
        sizes.append((p * ((1 - 2 * p) * e + inner) / t).flatten(1).amax(1))
    return torch.stack(sizes, 1)


def _beyond_rounding(out: Sequence[Tensor], cancelling: Tensor, tol: float, dtype: torch.dtype,
                     rows: Tensor) -> Tensor:
    """The samples of ``rows`` where some map's gradient is below what its dtype's rounding of
    the terms that cancel (:func:`_cancelling`) lets it resolve to ``tol`` of itself (of the
    sample's largest, for a map below its square root): no solve can make those accurate.
    (A map not measured has ``cancelling`` 0: :func:`_refined`.)"""
    scale = _held_to(_sizes([o[rows] for o in out]), tol)
    return rows[(torch.finfo(dtype).eps * cancelling[rows] > tol * scale).any(1)]


def _held_to(sizes: Tensor, tol: float) -> Tensor:
    """What each map's gradient (``sizes``, :func:`_sizes`) is held to ``tol`` of: itself, or for
    a map below the square root of ``tol`` times the sample's largest, that."""
    return torch.maximum(sizes, sizes.amax(1, keepdim=True) * tol ** 0.5)


def _sizes(out: Sequence[Tensor], keep: Tensor | None = None) -> Tensor:
    """Each map's largest gradient entry per sample: ``(B, M)``; 0 for a map that ``keep``
    (``(M,)`` bool, :func:`implicit_vjp`'s ``measured``) leaves out: used on errors (how far a
    map's gradient moved), never on what they are held to, to which every map's size counts."""
    sizes = torch.stack([o.flatten(1).abs().amax(1) for o in out], 1)
    return sizes if keep is None else sizes * keep.to(sizes.device, sizes.dtype)


def _moved_by(hess: DualHessian, probs: Sequence[Tensor], temps: Sequence[float], delta: Tensor, given,
              keep: Tensor | None) -> Tensor:
    """How far ``w + delta`` moves each map's gradient from ``w``'s, ``(B, M)`` (:func:`_sizes`:
    0 for a map ``keep`` leaves out): ``J_k A_k delta``, a given map's ``A_k delta``."""
    zeros = [torch.zeros_like(p) for p in probs]
    return _sizes(_formed(hess, probs, temps, zeros, zeros, -delta, given)[0], keep)


def _reached_by_rounding(hess: DualHessian, probs: Sequence[Tensor], temps: Sequence[float], w: Tensor, rhs: Tensor,
                         given, keep: Tensor, held: Tensor, tol: float, max_iter: int, dense_limit: int) -> Tensor:
    """Per sample, ``(B,)`` bool: whether the rounding that the system at ``w`` carries can move
    a map that ``keep`` measures by more than ``tol`` of what it is held to (``held``, ``(B, M)``:
    :func:`_held_to`), or could not be measured.  No correction sees that rounding (the residual is computed with
    it), so it is measured as the effect ``J_k A_k δ`` of ``∇²g δ = e``, ``e`` the product's and
    the right-hand side's rounding per entry (:meth:`DualHessian.rounding_floor`'s terms) with
    signs drawn from a fixed seed, :data:`ROUNDING_PROBES` draws (the same for every sample: a
    sample's verdict does not depend on the batch), the largest effect of them.  Solved by the
    dense Hessian's pseudo-inverse where it has at most :data:`DENSE_FALLBACK_LIMIT` entries
    (``e``'s part outside the Hessian's range moves nothing: left to conjugate gradients, a
    near-singular Hessian's probe stopped at a relative residual of 1e3 and refused the sample,
    ca_rev286), else by conjugate gradients.  For a scored map left out of ``keep`` whose own
    terms are beyond its rounding: its rounding reaches ``w`` and every measured map (ca_rev285)."""
    dtype = w.dtype
    batch, dim = w.shape
    terms = hess._product_rounding_of(probs, temps, hess.apply_A(w)) + rhs.abs()
    signs = torch.randint(0, 2, (ROUNDING_PROBES, 1, dim), generator=torch.Generator().manual_seed(0)) * 2 - 1
    e = hess.centre((ROUNDING_UNITS * torch.finfo(dtype).eps * terms * signs.to(terms)).reshape(-1, dim))
    size = _norm(e).clamp_min(torch.finfo(dtype).tiny)
    wide = [p.repeat((ROUNDING_PROBES,) + (1,) * (p.dim() - 1)) for p in probs]  # (probe-major, as e)
    spectral = hess.dim <= DENSE_FALLBACK_LIMIT
    delta, _, _, ok = solve_psd(hess, wide, temps, e / size.unsqueeze(1), 1e-2, max_iter,
                                max(dense_limit, DENSE_FALLBACK_LIMIT), spectral=spectral, stop_stalled=spectral)
    ok = (ok | spectral) & torch.isfinite(delta).all(1)
    moved = _moved_by(hess, wide, temps, delta * size.unsqueeze(1), given, keep)
    reached = ~ok | (moved > tol * held.to(moved).repeat(ROUNDING_PROBES, 1)).any(1)
    return reached.reshape(ROUNDING_PROBES, batch).any(0)


def _widened(probs: Sequence[Tensor]) -> list[Tensor]:
    """``probs`` in float64, renormalised where they were narrower (float32's do not sum to one in
    float64); float64 probabilities as they are."""
    wide = [p.detach().to(torch.float64) for p in probs]
    if probs[0].dtype == torch.float64:
        return wide
    return [p / p.flatten(1).sum(1).view((-1,) + (1,) * (p.dim() - 1)) for p in wide]


def _second_opinion(hess: DualHessian, probs, temps, grads, given, formed: list, tol: float,
                    max_iter: int, on_duals: Tensor | None = None, spectral: Tensor | None = None,
                    keep: Tensor | None = None) -> Tensor:
    """Per sample, whether the gradients ``formed`` agree, to ``tol`` of what each map is held to
    (:func:`_held_to`, on the smaller of the two answers' sizes: held to the size of a gradient
    first formed in float32, whose rounding made it 1e5 times too large, a gradient 2.7x its
    tolerance off agreed), with a second solve by the dense Hessian's pseudo-inverse, always in
    float64: in float32 a second solve shares the first one's rounded system and agreed on a
    gradient 1.75x its tolerance off (ca_rev89).  The probabilities are taken in float64, a
    narrower dtype's renormalised (:func:`_widened`: float32's do not sum to one in float64,
    and the Hessian's gauge would not close).  The second solve is held to
    what a first one is accepted at (rtol, or sqrt(eps) at its rounding: held to rtol alone,
    one 58x better than the first was refused, ca_rev89).  ``on_duals``: the loss's centred
    gradient on the duals, in float64, part of the system (left out, a right gradient was
    refused: ca_rev90).

    ``spectral`` (per sample, None: all): solved by the pseudo-inverse where True, else by
    conjugate gradients preconditioned by the Cholesky factor: a float64 sample whose first
    answer came from the pseudo-inverse retry is checked by the other solve (by the same one,
    of the same system, it agreed with a gradient 198x its tolerance off: ca_rev91)."""
    wide = _widened(probs)
    grads64 = [v.detach().to(torch.float64) for v in grads]
    centred, rhs = _right_hand_side(hess, wide, temps, grads64)
    if on_duals is not None:
        rhs = rhs + on_duals
    spectral = torch.ones(rhs.shape[0], dtype=torch.bool, device=rhs.device) if spectral is None else spectral
    second = torch.zeros_like(rhs)
    relres = torch.zeros(rhs.shape[0], dtype=rhs.dtype, device=rhs.device)
    ok = torch.zeros(rhs.shape[0], dtype=torch.bool, device=rhs.device)
    for by_pseudo_inverse in (True, False):
        rows = torch.nonzero(spectral == by_pseudo_inverse).flatten()
        if rows.numel():
            got = solve_psd(hess, [p[rows] for p in wide], temps, rhs[rows], 1e-10, max_iter, DENSE_FALLBACK_LIMIT,
                            spectral=by_pseudo_inverse, stop_stalled=by_pseudo_inverse)
            second[rows], relres[rows], ok[rows] = got[0], got[1], got[3]
    other, _ = _formed(hess, wide, temps, grads64, centred, second, given)
    formed = [b.to(torch.float64) for b in formed]
    apart = _sizes([a - b for a, b in zip(other, formed)], keep)
    held = torch.minimum(_held_to(_sizes(other), tol), _held_to(_sizes(formed), tol))
    usable = (ok | (relres <= floor_acceptance_cap(torch.float64))) & torch.isfinite(second).all(1)
    return usable & (apart <= tol * held).all(1)


def _refined(hess: DualHessian, probs, temps, grads, centred, rhs: Tensor, w: Tensor, out: list, Aw: list,
             given, rtol: float, max_iter: int, dense_limit: int, finite: Tensor, zeroed: Tensor,
             sample_names, on_duals: Tensor | None = None, by_pseudo_inverse: Tensor | None = None,
             measured: Sequence[bool] | None = None) -> list[Tensor]:
    """``out`` made as accurate as :data:`GRADIENT_RTOL` asks, or ImplicitSolveError.

    ``θ̄_k = J_k (v_k − A_k w)`` cancels where a map is far hotter than its neighbours (its
    ``J_k`` is small, ``v_k − A_k w`` nearly zero): a solve stopped at ``rtol ‖rhs‖``, which the
    coldest map dominates, left the gradients of the others percent off, returned as solved
    (τ = (1e8, 1, 1e-3) on an axial graph: up to 35 %; a review).  Where the size of the terms
    that cancel, over the gradient, times ``max(rtol, sqrt(eps))`` exceeds the gradient's
    tolerance, the sample's error is measured: refined (``w += (∇²g)⁻¹ (rhs − ∇²g w)``, up to
    :data:`REFINEMENTS` times; a correction not solved is not applied) until a correction
    moves each map's gradient by at most ``GRADIENT_RTOL`` of itself (of the sample's largest,
    for a map whose gradient is below its square root), or, where no correction can be solved
    (a residual at its rounding), until a second solve by the dense Hessian's pseudo-inverse
    agrees with it to that.  A sample that does not get there, or whose dtype's rounding of
    those terms alone can exceed that (refused before any correction, which cannot measure it),
    is named in the error.  Only the ``measured`` maps (None: all) are held so."""
    dtype = rhs.dtype
    tol = gradient_rtol(dtype)
    keep = None if measured is None else torch.tensor(list(measured), dtype=torch.bool)
    sizes = _sizes(out)  # (every map's size counts to what the others are held to: only errors are masked)
    largest = sizes.amax(1)
    held = _held_to(sizes, tol)  # each map to itself (to the sample's largest below its square root)
    cancelling = _cancelling(probs, temps, grads, centred, Aw, given)
    # every scored map's terms flag its sample for refinement, measured or not: they
    # size w, whose error (a solve's to rtol of the whole right-hand side) spreads over every edge
    # into the measured maps' gradients.  Only the measured maps are refused for their own terms'
    # rounding (_beyond_rounding) and measured by the corrections; where a scored map left out is
    # beyond its rounding, what that rounding does to the measured maps is measured after the
    # refinement (_reached_by_rounding: unflagged, terms of 2^40 on unmeasured maps left the
    # measured ones' gradients 5-6 % off, and refined, 9.4e-6 of themselves: ca_rev285)
    # (a given map's incoming gradient never reaches w: one left out flags nothing, so the path of
    # solve, which leaves out given maps only, is as before)
    flagging = cancelling
    unmeasured_scored = None
    if keep is not None:
        # (a caller that measures no map, cvx's judge, holds the gradient to its first solve alone:
        # flagged for the scored maps' terms, it was refined and 9 of its calls refused, ca_rev286)
        scored = torch.tensor([not (given is not None and given[k]) for k in range(len(out))], dtype=torch.bool)
        scored = scored & keep.any()
        flagging = cancelling * (keep | scored).to(cancelling.device, cancelling.dtype)
        unmeasured_scored = cancelling * (scored & ~keep).to(cancelling.device, cancelling.dtype)
        cancelling = cancelling * keep.to(cancelling.device, cancelling.dtype)
    # a sample whose right-hand side was rounding alone (a loss constant on the simplices) has no
    # gradient: what is left of it is rounding, zero, not unresolved.  Screened at the most a
    # solve can have left, or the square root of the dtype's eps where that is more (rtol of a
    # float32 solve let a gradient 8x its tolerance off through: ca_rev83), map by map (screened
    # on the sample's largest, a small map went unchecked: ca_rev81)
    candidates = finite & ~zeroed & (largest > 0)
    bound = max(float(rtol) if not isinstance(rtol, Tensor) else float(rtol.max()), math.sqrt(torch.finfo(dtype).eps))
    rows = torch.nonzero(candidates & (flagging * bound > tol * held).any(1)).flatten()
    # A flagged sample's error is measured, by at least one correction, never estimated from the
    # relative residual its solve reached: the Hessian's conditioning multiplies that residual,
    # for a factorised solve as for conjugate gradients (on the default path, D = 10, float64: a
    # residual of 5.1e-13 left a gradient 64x its tolerance off, the estimate 0.0018 of it:
    # ca_rev86; block-Jacobi: 8x and 16x, ca_rev83).  The correction is asked for what brings the
    # whole residual to rtol of the right-hand side, and at least CORRECTION_RTOL of its own (a
    # residual at its rounding floor cannot be divided by rtol again).
    # A sample is settled once a correction moves no map's gradient by more than GRADIENT_RTOL;
    # one whose correction cannot be solved is not (a check that did not run never passes).  A
    # correction measures the error of w only, not the rounding of the terms that cancel as the
    # gradient is formed: a sample where that rounding alone can exceed the tolerance
    # (_beyond_rounding, a worst-case bound) is refused before any correction (measured without
    # it, float32 gradients 3-330x their tolerance off a 50-digit solve came back settled)
    # The refinement is mixed-precision: the residual, w and the gradient are carried in float64,
    # and only the corrections are solved in the working dtype.  In float32, a correction solved
    # against the float32 product cannot see the error that product's rounding leaves in w (it
    # settled a gradient 2.2x its tolerance off: ca_rev89), and a gradient formed in float32 from
    # a float32 w keeps eps32 of the terms that cancel, which the worst-case refusal below then
    # had to refuse, right gradients with the wrong ones (ca_rev86).  In float64 nothing changes.
    wide = torch.float64
    by_pseudo_inverse = torch.zeros_like(finite) if by_pseudo_inverse is None else by_pseudo_inverse
    unresolved = _beyond_rounding(out, cancelling, tol, wide, rows)
    rows = rows[~torch.isin(rows, unresolved)]
    probed = rows[:0] if unmeasured_scored is None else _beyond_rounding(out, unmeasured_scored, tol, wide, rows)
    if rows.numel() and dtype != wide:
        probs_w = _widened(probs)
        grads_w = [v.detach().to(wide) for v in grads]
        centred_w, rhs_w = _right_hand_side(hess, probs_w, temps, grads_w)
        if on_duals is not None:
            rhs_w = rhs_w + on_duals
        w_w = w.to(wide)
    else:
        probs_w, grads_w, centred_w, rhs_w, w_w = probs, grads, centred, rhs, w
    rhs_norms = _norm(rhs_w)
    tiny = torch.finfo(wide).tiny
    loosest = CORRECTION_RTOL.get(dtype, 1e-2)
    for _ in range(REFINEMENTS):
        if rows.numel() == 0:
            break
        sub = [p[rows] for p in probs]
        sub_w = [p[rows] for p in probs_w]
        residual = hess.centre(rhs_w[rows] - hess.matvec(sub_w, temps, w_w[rows]))
        size = _norm(residual).clamp_min(tiny)
        wanted = (rtol * rhs_norms[rows] / size).clamp(max=loosest)
        # solved at unit size in the working dtype (a float64 residual can be below float32's range)
        unit = (residual / size.unsqueeze(1)).to(dtype)
        delta, _, _, ok = solve_psd(hess, sub, temps, unit, wanted, max_iter, dense_limit, stop_stalled=True)
        ok = ok & torch.isfinite(delta).all(1)
        if hess.dim > dense_limit and hess.dim <= DENSE_FALLBACK_LIMIT and not bool(ok.all()):
            # as the first solve: a correction block-Jacobi left unsolved, with the dense Hessian
            redo = torch.nonzero(~ok).flatten()
            again, _, _, again_ok = solve_psd(hess, [p[redo] for p in sub], temps, unit[redo], wanted[redo],
                                              max_iter, DENSE_FALLBACK_LIMIT, stop_stalled=True)
            delta[redo], ok[redo] = again, again_ok & torch.isfinite(again).all(1)
        # a correction that was not solved is not applied (one that ran to max_iter at a relative
        # residual of 3e3 made w worse: a review), nor is its sample settled by it
        delta = torch.where(ok.unsqueeze(1), delta, torch.zeros_like(delta)).to(wide) * size.unsqueeze(1)
        w_w[rows] = w_w[rows] + delta
        moved = _moved_by(hess, sub_w, temps, delta, given, keep)
        formed, _ = _formed(hess, sub_w, temps, [v[rows] for v in grads_w], [c[rows] for c in centred_w],
                            w_w[rows], given)
        for k in range(len(out)):
            out[k] = out[k].index_copy(0, rows, formed[k].to(out[k].dtype))
        settled = (moved <= tol * _held_to(_sizes(formed), tol)).all(1) & ok
        # a residual at its rounding (its part outside the Hessian's range, where two paths pool
        # one map onto another alike, cannot fall) leaves no correction to solve: the gradient is
        # measured against a second solve by the dense Hessian's pseudo-inverse instead, and
        # settled where the two agree (ca_rev38's right gradient was refused without it); a float64
        # sample first solved by the pseudo-inverse is checked by the Cholesky-preconditioned solve
        if not bool(ok.all()) and hess.dim <= DENSE_FALLBACK_LIMIT:
            redo = torch.nonzero(~ok).flatten()
            independent = ~(by_pseudo_inverse[rows[redo]] & (dtype == wide))
            settled[redo] = _second_opinion(hess, [p[rows[redo]] for p in probs], temps,
                                            [v[rows[redo]] for v in grads], given, [o[redo] for o in formed],
                                            tol, max_iter,
                                            None if on_duals is None else on_duals[rows[redo]], independent, keep)
        rows = rows[~settled]
    probed = probed[~torch.isin(probed, rows)]
    if probed.numel() and keep is not None:  # (probed is empty where keep is None)
        held_now = _held_to(_sizes([o[probed] for o in out]), tol)
        reached = _reached_by_rounding(hess, [p[probed] for p in probs_w], temps, w_w[probed], rhs_w[probed],
                                       given, keep, held_now, tol, max_iter, dense_limit)
        unresolved = torch.cat([unresolved, probed[reached]])
    bad = sorted(set(rows.tolist()) | set(unresolved.tolist()))
    if not bad:
        return out
    raise ImplicitSolveError(
        f"the implicit backward of method 'dual' could not resolve the gradient of sample(s) "
        f"{named(bad, sample_names)[:10]} to {tol:.0e} of itself in {dtype}: a map far hotter than its "
        f"neighbours (temperatures far apart), or maps saturated to one-hot blocks (scores far apart against "
        f"the temperature), make its gradient the small difference of large terms, which the dtype's rounding "
        f"of them alone, or {REFINEMENTS} refinements of the solve, leave unsettled; "
        + ("solve in float64 (dtype=torch.float64), " if dtype != torch.float64 else "")
        + "bring the temperatures closer (or raise them against the scores' spread), or use method 'exact' "
          "where the graph is a forest"
        + ("; given maps that hold the same cells (two given coarsenings of one map sharing a block) have no unique "
           "gradient: leave them out of what is differentiated (detach them)"
           if given is not None and any(q and (measured is None or measured[k]) for k, q in enumerate(given))
           else ""), bad)
