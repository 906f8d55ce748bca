r"""The consistency-constrained attention problem as a CVXPY problem inside a
``cvxpylayers`` ``CvxpyLayer``: the slow, trusted reference solver.

For every sample::

    maximise   Σ_k θ_kᵀ p_k + τ_k Σ_i entr(p_k)_i
    subject to P_k p_k = p_{k+1}   (k = 0 … L-2),     1ᵀ p_{L-1} = 1

(``entr`` keeps ``p_k >= 0``; the consistency constraints carry the simplex constraint of
the top level down to every other level.)  The problem is DPP in the parameters ``θ_k``,
so it is canonicalised once per ``(hierarchy, temperatures)`` and cached.  The layer
returns the probabilities and the consistency-constraint duals, which in CVXPY's sign
convention are exactly the ``λ_k`` of DESIGN.md §2; they are centred per sample.

``cvxpy``, ``cvxpylayers`` and ``diffcp`` are imported lazily, on first use.

Data movement: the layer solves on the CPU in float64 (diffcp's conic solvers).  Inputs
on another device are copied to the CPU and the results copied back, which synchronises
the device: this method is a reference, not a hot path.
"""
from __future__ import annotations

import threading
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .hierarchy import Hierarchy

__all__ = ["CvxpyAttentionLayer", "get_layer", "solve_cvxpylayers", "SolverFailure",
           "DEFAULT_SOLVER_OPTIONS", "CVX_PRIOR", "prior_seconds_per_sample"]

# Clarabel (interior point) reaches ~1e-10 on the probabilities at eps=1e-12 in a few
# dozen iterations; SCS stalls near 1e-5 on problems of a few thousand cells whatever its
# eps (measured: docs/performance.md).  SCS stays available through solve_method.
DEFAULT_SOLVER_OPTIONS = {"solve_method": "Clarabel", "eps": 1e-12, "max_iters": None}

# Cost model of one sample (forward + backward, Clarabel through diffcp, float64 on the CPU):
# (reference cells n0, seconds t0 at n0, exponent): t(n) = t0 · (n / n0)^exponent.
# Measured on a 2-core x86-64 CPU (docs/performance.md); the benchmark harness replaces
# it by a fit to the cells it has measured once their sizes spread enough.
CVX_PRIOR = (1280, 0.25, 1.3)


def prior_seconds_per_sample(n_cells: int, prior: tuple = CVX_PRIOR) -> float:
    """The cost model's estimate of one sample's forward + backward time, in seconds."""
    n0, t0, exponent = prior
    return t0 * (n_cells / n0) ** exponent


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


class SolverFailure(RuntimeError):
    """A conic solve failed or returned an inaccurate point; the message names the sample."""


def aggregation_matrix(h: Hierarchy, k: int):
    """``P_k`` as a scipy CSR matrix ``(n_{k+1}, n_k)`` on the flattened (C-order) cells."""
    import scipy.sparse as sp

    parents = h.parents(k).numpy()
    n = h.sizes[k]
    return sp.csr_matrix((np.ones(n), (parents, np.arange(n))), shape=(h.sizes[k + 1], n))


class CvxpyAttentionLayer:
    """The CVXPY problem of one ``(hierarchy, temperatures)`` and its ``CvxpyLayer``.

    Build it once (or take it from :func:`get_layer`, which caches) and call it on
    batches of flattened scores.
    """

    def __init__(self, h: Hierarchy, temps: Sequence[float]):
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        self.h, self.temps = h, tuple(float(t) for t in temps)
        L = h.num_levels
        self.thetas = [cp.Parameter(n, name=f"theta{k}") for k, n in enumerate(h.sizes)]
        self.probs = [cp.Variable(n, name=f"p{k}") for k, n in enumerate(h.sizes)]
        objective = sum(self.thetas[k] @ self.probs[k] + self.temps[k] * cp.sum(cp.entr(self.probs[k]))
                        for k in range(L))
        self.consistency = [aggregation_matrix(h, k) @ self.probs[k] == self.probs[k + 1]
                            for k in range(L - 1)]
        constraints = self.consistency + [cp.sum(self.probs[-1]) == 1]
        self.problem = cp.Problem(cp.Maximize(objective), constraints)
        if not self.problem.is_dpp():  # pragma: no cover - a guard on the formulation
            raise RuntimeError("the attention problem must be DPP for cvxpylayers")
        self.layer = CvxpyLayer(self.problem, parameters=self.thetas,
                                variables=self.probs + [c.dual_variables[0] for c in self.consistency])

    def __call__(self, flat_scores: Sequence[Tensor], solver_args: dict) -> tuple[list[Tensor], list[Tensor]]:
        """Solve a batch. ``flat_scores[k]``: ``(B, n_k)`` float64 CPU tensors.

        Returns ``(probs, duals)`` as lists of ``(B, n_k)`` / ``(B, n_{k+1})`` tensors.
        """
        out = self.layer(*flat_scores, solver_args=solver_args)
        L = self.h.num_levels
        return list(out[:L]), list(out[L:])

    def reference_solve(self, flat_scores: Sequence[np.ndarray], eps: float = 1e-12):
        """A plain CVXPY solve of one sample (no cvxpylayers, no diffcp): Clarabel at ``eps``.

        Returns ``(probs, duals, value, status)`` with numpy arrays (duals centred).
        Clarabel's reduced-accuracy exit ("optimal_inaccurate") is reported in ``status``;
        callers check the certificate.
        """
        import cvxpy as cp

        for param, value in zip(self.thetas, flat_scores):
            param.value = np.asarray(value, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            self.problem.solve(solver=cp.CLARABEL, tol_gap_abs=eps, tol_gap_rel=eps, tol_feas=eps, tol_ktratio=eps)
        probs = [np.asarray(p.value, dtype=np.float64) for p in self.probs]
        duals = [np.asarray(c.dual_value, dtype=np.float64) for c in self.consistency]
        return probs, [d - d.mean() for d in duals], float(self.problem.value), str(self.problem.status)

    def diagnose(self, flat_scores: Sequence[np.ndarray], solver_args: dict) -> str:
        """Re-solve one sample with CVXPY and the same solver; returns its status."""
        import cvxpy as cp

        for param, value in zip(self.thetas, flat_scores):
            param.value = value
        args = dict(solver_args)
        method = str(args.pop("solve_method", "SCS")).upper()
        try:
            if method == "SCS":
                eps = args.pop("eps", None)
                if eps is not None:
                    args.setdefault("eps_abs", eps)
                    args.setdefault("eps_rel", eps)
                self.problem.solve(solver=cp.SCS, **args)
            else:
                self.problem.solve(solver=cp.CLARABEL, **args)
        except cp.error.SolverError as err:
            return f"solver error: {err}"
        return str(self.problem.status)


def get_layer(h: Hierarchy, temps: Sequence[float]) -> CvxpyAttentionLayer:
    """The cached layer of ``(h, temps)``: the CVXPY problem is built once per key."""
    key = (h, tuple(float(t) for t in temps))
    with _CACHE_LOCK:
        layer = _CACHE.get(key)
        if layer is None:
            layer = _CACHE[key] = CvxpyAttentionLayer(h, temps)
    return layer


def _solver_args(options: dict) -> tuple[dict, float]:
    """Translate this project's options to diffcp keyword arguments, and the tolerance
    used to accept a solution."""
    opts = {**DEFAULT_SOLVER_OPTIONS, **options}
    accept_tol = opts.pop("accept_tol", None)
    method = str(opts.pop("solve_method"))
    eps = float(opts.pop("eps"))
    max_iters = opts.pop("max_iters")
    if method.upper() == "SCS":
        args = {"solve_method": "SCS", "eps": eps, **opts}
        if max_iters is not None:
            args["max_iters"] = int(max_iters)
    elif method.upper() == "CLARABEL":
        args = {"solve_method": "Clarabel", "tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps,
                "tol_ktratio": eps, **opts}
        if max_iters is not None:
            args["max_iter"] = int(max_iters)
    else:
        raise ValueError(f"solve_method must be 'SCS' or 'Clarabel', got {method!r}")
    if accept_tol is None:
        accept_tol = max(1e3 * eps, 1e-9)
    return args, float(accept_tol)


def solve_cvxpylayers(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], **options):
    """Solve with the cached CVXPY layer. Differentiable through the layer (diffcp).

    Args:
        scores: ``L`` tensors ``(B, *h.shapes[k])`` on any device.
        temps: ``L`` positive floats.
        **options: ``solve_method`` (``"Clarabel"``, the default, or ``"SCS"``),
            ``eps`` (solver tolerance, default 1e-12), ``max_iters`` (default: the
            solver's), ``accept_tol`` (largest accepted primal residual and relative
            duality gap, default ``max(1e3·eps, 1e-9)``); other keys go to the solver
            unchanged (diffcp passes them to SCS or to Clarabel's settings).

    Returns:
        ``(probs, duals)``: ``probs[k]`` ``(B, *shapes[k])``, ``duals[k]``
        ``(B, *shapes[k+1])`` centred, both in the dtype and on the device of ``scores``.

    Raises:
        SolverFailure: when the solver fails, or when a sample's primal residual
        (simplex, sign or consistency; max-abs) or its duality gap ``g(λ) − f(p)``
        (relative to ``max(1, |f(p)|)``) exceeds ``accept_tol``: diffcp's Clarabel path
        never raises and its SCS path only warns, so the certificate is checked here.
        The message names the sample index and the solver status.
    """
    import diffcp

    args, accept_tol = _solver_args(options)
    layer = get_layer(h, temps)
    dtype, device = scores[0].dtype, scores[0].device
    flat = [s.to(device="cpu", dtype=torch.float64).reshape(s.shape[0], -1) for s in scores]
    with warnings.catch_warnings():
        # diffcp only warns on inaccurate solves; the residual check below decides.
        warnings.filterwarnings("ignore", message="Solved/Inaccurate")
        try:
            probs, duals = layer(flat, args)
        except (AttributeError, TypeError) as err:
            passed = sorted(set(options) - {"solve_method", "eps", "max_iters", "accept_tol"})
            if not passed:  # not a rejected pass-through option: a genuine error
                raise
            raise TypeError(f"solver {args['solve_method']} rejected the option(s) {passed}: {err}") from err
        except diffcp.cone_program.SolverError as err:
            _raise_failure(layer, flat, args, list(range(flat[0].shape[0])), accept_tol, str(err))
    certificate = _certificate(h, temps, flat, probs, duals)
    bad = (~(certificate <= accept_tol)).nonzero().flatten().tolist()  # NaN counts as bad
    if bad:
        _raise_failure(layer, flat, args, bad, accept_tol, None, certificate)
    B = scores[0].shape[0]
    probs = [p.reshape((B,) + h.shapes[k]).to(device=device, dtype=dtype) for k, p in enumerate(probs)]
    duals = [d.reshape((B,) + h.shapes[k + 1]) for k, d in enumerate(duals)]
    duals = [(d - d.mean(tuple(range(1, d.dim())), keepdim=True)).to(device=device, dtype=dtype) for d in duals]
    return probs, duals


def primal_residual(h: Hierarchy, probs: Sequence[Tensor]) -> Tensor:
    """Max-abs primal residual per sample of flat probabilities ``(B, n_k)``: ``(B,)``."""
    flat_h = h.flat()
    with torch.no_grad():
        res = (probs[-1].sum(1) - 1).abs()
        for k, p in enumerate(probs):
            res = torch.maximum(res, (-p).clamp(min=0).amax(1))
            if k < h.num_levels - 1:
                res = torch.maximum(res, (flat_h.aggregate(p, k) - probs[k + 1]).abs().amax(1))
        return res


def _certificate(h: Hierarchy, temps, flat_scores, probs, duals) -> Tensor:
    """Per sample: the larger of the primal residual and the relative duality gap."""
    from .metrics import dual_objective, objective

    with torch.no_grad():
        flat_h = h.flat()
        f = objective(flat_scores, probs, temps)
        gap = (dual_objective(flat_scores, duals, flat_h, temps) - f).abs() / f.abs().clamp(min=1)
        return torch.maximum(primal_residual(h, probs), gap)


def _raise_failure(layer, flat, args, samples, accept_tol, error, certificate=None):
    lines = []
    for i in samples:
        status = layer.diagnose([f[i].numpy() for f in flat], args)
        if certificate is not None:
            lines.append(f"sample {i}: primal residual or duality gap {float(certificate[i]):.2e} > "
                         f"accept_tol {accept_tol:.1e}; solver {args['solve_method']} status '{status}'")
        elif status != "optimal":  # the batch failed as a whole: find the culprits
            lines.append(f"sample {i}: solver {args['solve_method']} status '{status}'")
        if len(lines) == 5:
            break
    if not lines:
        lines = [f"the batch: diffcp raised '{error}'"]
    raise SolverFailure("cvxpylayers solve failed for " + "; ".join(lines) +
                        ". Tighten eps, raise max_iters or try solve_method='Clarabel'.")
