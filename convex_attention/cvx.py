r"""The consistency-constrained attention problem as a CVXPY problem inside a
``cvxpylayers`` ``CvxpyLayer``: the slow, trusted reference solver.

For every sample, on a hierarchy or any graph of maps (edges ``e = (a → b)``)::

    maximise   Σ_k θ_kᵀ p_k + τ_k Σ_i entr(p_k)_i
    subject to P_e p_a = p_b   (every edge),     1ᵀ p_s = 1   (one map s per connected component)

(``entr`` keeps ``p_k >= 0``; the consistency constraints carry the simplex constraint of
one map to every other map of its component: pooling preserves sums.  Each component's
simplex constraint sits on its smallest map, ties to the highest index: the top level of a
hierarchy.  More simplex constraints would be redundant equalities, which interior-point
solvers handle badly.)  The problem is DPP in the parameters ``θ_k``, so it is canonicalised
once per ``(structure, temperatures, backend)`` and kept in a bounded (LRU) cache.  The
layer returns the probabilities and the consistency-constraint duals, which in CVXPY's sign
convention are exactly the ``λ_e`` of docs/design.md §2; they are centred per sample.

**Backends** (option ``backend``; :data:`BACKENDS`, :func:`available_backends`): the
``cvxpylayers`` interface and its conic solver.

=================  ==============  =========================================================
``backend``        interface       solver, device
=================  ==============  =========================================================
diffcp-clarabel    DIFFCP          Clarabel (interior point), CPU; the default
diffcp-scs         DIFFCP          SCS (first order), CPU
moreau             MOREAU          Moreau (batched interior point), CPU; CUDA when the
                                   installed ``moreau`` build has it and the scores are there
cuclarabel         CUCLARABEL      CuClarabel through Julia and JAX, CUDA only
mpax               MPAX            named for completeness: MPAX solves LPs and QPs only and
                                   this problem needs exponential cones, so it is refused
=================  ==============  =========================================================

Whatever the backend, a solution is accepted only on its own certificate (primal residual
and relative duality gap: :func:`certificate`), never on a solver's
status label; a failure raises :class:`SolverFailure` naming the backend, the sample and
the solver's status.  A panic of a solver's Rust code (pyo3's ``PanicException``, a
``BaseException``) in the forward or the backward pass is a :class:`SolverFailure` too
(:func:`is_solver_panic`), and the layer then rebuilds the backend's solver objects.

``cvxpy``, ``cvxpylayers`` and the solvers are imported lazily, on first use.

Data movement: the layer solves in float64 on the CPU (on CUDA for ``moreau`` with CUDA
scores and a CUDA build; ``cuclarabel`` always on CUDA).  Inputs elsewhere are copied and
the results copied back, which synchronises the device: this method is a reference, not a
hot path.
"""
from __future__ import annotations

import importlib.util
import math
import operator
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor

from ._ops import centre, compute_dtype, sample_dims
from .graph import Graph
from .hessian import ImplicitSolveError, implicit_vjp
from .metrics import dual_objective, objective, stationarity
from .validation import is_grad_temperature

__all__ = ["CvxpyAttentionLayer", "get_layer", "solve_cvxpylayers", "SolverFailure", "BackendUnavailable",
           "certificate", "acceptance", "centred_scores", "primal_residual", "is_solver_panic", "solve_device",
           "Backend", "BACKENDS",
           "DEFAULT_BACKEND", "available_backends", "backend_unavailable_reason", "unavailable_backends_reason",
           "get_backend", "check_options",
           "CACHE_SIZE", "clear_cache", "DEFAULT_SOLVER_OPTIONS", "CVX_PRIOR", "CVX_PRIORS", "prior_seconds_per_sample",
           "DIFFCP_MODES"]


@dataclass(frozen=True)
class Backend:
    """One way of solving the CVXPY layer: a ``cvxpylayers`` interface and its solver.

    ``modules`` must be importable for the backend to run (looked up without importing
    them); ``pip`` is what installs them.  ``default_eps`` is the solver tolerance used
    when the caller gives none: about the tightest at which the solver still converges on
    this problem (measured: docs/performance.md).  ``default_accept_tol`` is the
    certificate's threshold when the caller gives neither ``eps`` nor ``accept_tol``
    (``None``: ``min(max(1e3·eps, 1e-9), 1e-3)``, as for an explicit ``eps``).
    """

    name: str
    interface: str
    solve_method: str | None
    modules: tuple
    pip: str
    default_eps: float
    devices: tuple = ("cpu",)
    exp_cones: bool = True  # can it solve the entropy's exponential cones at all?
    default_accept_tol: float | None = None

    @property
    def batched(self) -> bool:
        """Whether one call solves the batch together.  diffcp solves (and differentiates)
        sample by sample, so its time per sample does not fall with the batch
        (docs/benchmarks.md); the other interfaces take the batch at once."""
        return self.interface != "DIFFCP"


# Defaults, measured on this problem (docs/performance.md).  Clarabel (interior point)
# reaches a certificate ~1e-13 at eps=1e-12 in a few dozen iterations.  Moreau (interior
# point) reaches ~1e-12 at eps=1e-11, but stalls near 1e-9 on some 16²+8² instances, so
# its default eps 1e-11 gives the threshold 1e-8; it reported false infeasibility at eps
# <= 1e-10 until its infeasibility tolerances were tightened too (_moreau_settings).
# SCS (first order) stalls with certificates 1e-6 to 4e-5 at score scale 2-5 whatever
# its eps; below eps=1e-9 it runs to its iteration limit (15x slower at 1e-12) and at
# 1e-10 it returned a point with certificate 0.85 on a verify instance where 1e-9 gave
# 2e-9.  So eps=1e-9, accepted at 1e-4 unless told otherwise: its rows are that accurate.
_BACKENDS = {
    "diffcp-clarabel": Backend("diffcp-clarabel", "DIFFCP", "Clarabel", ("cvxpylayers", "diffcp", "clarabel"),
                               "cvxpylayers diffcp clarabel", 1e-12),
    "diffcp-scs": Backend("diffcp-scs", "DIFFCP", "SCS", ("cvxpylayers", "diffcp", "scs"),
                          "cvxpylayers diffcp scs", 1e-9, default_accept_tol=1e-4),
    "moreau": Backend("moreau", "MOREAU", None, ("cvxpylayers", "moreau"), "'convex-attention[moreau]'", 1e-11,
                      devices=("cpu", "cuda")),
    "cuclarabel": Backend("cuclarabel", "CUCLARABEL", None, ("cvxpylayers", "cupy", "juliacall", "jax", "diffqcp"),
                          "cvxpylayers cupy juliacall jax diffqcp (and the Julia package CuClarabel)", 1e-10,
                          devices=("cuda",)),
    "mpax": Backend("mpax", "MPAX", None, ("cvxpylayers", "jax", "mpax"), "cvxpylayers jax mpax", 1e-8,
                    exp_cones=False),
}
BACKENDS: tuple = tuple(_BACKENDS)
DEFAULT_BACKEND = "diffcp-clarabel"
# diffcp's exact ways of solving its derivative system (option ``mode`` of the diffcp backends;
# its lpgd modes give approximate gradients by design and are not offered): lsqr, iterative, is
# diffcp's default; dense, a direct solve, is more accurate and slower (docs/benchmarks.md).
DIFFCP_MODES = ("lsqr", "lsmr", "dense")

# Clarabel settings retried, in order, when the reference solve ends "optimal_inaccurate".
_REFERENCE_RETRIES = ({"static_regularization_constant": 1e-10}, {"static_regularization_constant": 1e-12},
                      {"static_regularization_constant": 1e-9, "iterative_refinement_reltol": 1e-16,
                       "iterative_refinement_abstol": 1e-16})

# Kept for callers of the old name: the default backend and its tolerance.
DEFAULT_SOLVER_OPTIONS = {"backend": DEFAULT_BACKEND, "eps": _BACKENDS[DEFAULT_BACKEND].default_eps,
                          "max_iters": None}

# Cost model of one sample (forward + backward, Clarabel through diffcp, float64 on the CPU):
# (reference cells n0, seconds t0 at n0, exponent): t(n) = t0 · (n / n0)^exponent.
# Measured (docs/performance.md); the benchmark harness replaces
# it by a fit to the cells it has measured once their sizes spread enough.
CVX_PRIOR = (1280, 0.25, 1.3)

# The same per backend: Clarabel's prior with its time scaled by the backend's measured
# ratio to Clarabel at 32²+16² (batch 16, forward + backward: Moreau ~0.2-0.25x, SCS ~1.4x)
# and the exponent of its own growth from 16²+8² to 32²+16² (docs/performance.md).  The
# GPU backends were not measured: Clarabel's prior stands in.
CVX_PRIORS = {"diffcp-clarabel": CVX_PRIOR, "diffcp-scs": (1280, 0.35, 1.1), "moreau": (1280, 0.06, 1.0),
              "cuclarabel": CVX_PRIOR, "mpax": CVX_PRIOR}


def prior_seconds_per_sample(n_cells: int, prior: tuple = CVX_PRIOR) -> float:
    """The cost model's estimate of one sample's forward + backward time, in seconds."""
    n0, t0, exponent = prior
    return t0 * (n_cells / n0) ** exponent


class BackendUnavailable(ImportError, ValueError):
    """The backend's packages are not installed, or it cannot solve this problem here.

    An ``ImportError`` (a package is missing) and a ``ValueError`` (a bad option value),
    so that either kind of handler catches it.
    """


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-installed package
        return False


def unavailable_backends_reason(names: Sequence[str]) -> str | None:
    """The reason of each of ``names`` that cannot run here (:func:`backend_unavailable_reason`),
    backend by backend, or None where all can: one home for the benchmark scripts' refusals
    (each named with its own reason: ca_rev121, ca_rev122, ca_rev124)."""
    refused = [(b, backend_unavailable_reason(b)) for b in names if b not in available_backends()]
    return "; ".join(f"{b}: {why or 'cannot run here'}" for b, why in refused) or None


def backend_unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or ``None`` when it can.

    Checked without importing the solvers (``importlib.util.find_spec``), except that a
    CUDA-only backend asks ``torch.cuda.is_available()``.
    """
    backend = get_backend(name, check_installed=False)
    if not backend.exp_cones:
        return (f"{backend.interface} solves LPs and QPs only, and this problem's entropy needs exponential "
                f"cones; choose one of {', '.join(b for b in BACKENDS if _BACKENDS[b].exp_cones)}")
    missing = [m for m in backend.modules if not _installed(m)]
    if missing:
        return f"not installed (missing {', '.join(missing)}): pip install {backend.pip}"
    if "cpu" not in backend.devices and not torch.cuda.is_available():
        return f"needs a CUDA GPU ({', '.join(backend.devices)} only) and none is available"
    return None


def available_backends() -> list[str]:
    """The backends that can run here (installed, and able to solve this problem), in
    :data:`BACKENDS` order."""
    return [name for name in BACKENDS if backend_unavailable_reason(name) is None]


def get_backend(name, check_installed: bool = True) -> Backend:
    """The record of backend ``name``.

    Raises:
        ValueError: an unknown name (the message lists :data:`BACKENDS`).
        BackendUnavailable: with ``check_installed``, a backend that cannot run here; the
            message names what to ``pip install``.
    """
    if not isinstance(name, str) or name not in _BACKENDS:
        raise ValueError(f"option backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if check_installed:
        reason = backend_unavailable_reason(name)
        if reason is not None:
            raise BackendUnavailable(f"cvxpylayers backend {name!r} cannot run: {reason}")
    return _BACKENDS[name]


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
# Layers kept at once (least recently used evicted first).  One layer holds its CVXPY
# problem and canonicalised matrices: memory grows with the problem size.
CACHE_SIZE = 16


def clear_cache() -> None:
    """Drop every cached layer."""
    with _CACHE_LOCK:
        _CACHE.clear()


class SolverFailure(RuntimeError):
    """A conic solve failed or returned an inaccurate point; the message names the backend,
    the sample and the solver's status."""


def aggregation_matrix(h: Graph, e: int):
    """``P_e`` of edge ``e = (a → b)`` as a scipy CSR matrix ``(n_b, n_a)`` on the flattened
    (C-order) cells (on a hierarchy ``P_k``, ``(n_{k+1}, n_k)``)."""
    import scipy.sparse as sp

    a, b = h.edges[e]
    parents = h.parents(e).numpy()
    n = h.sizes[a]
    return sp.csr_matrix((np.ones(n), (parents, np.arange(n))), shape=(h.sizes[b], n))


def simplex_maps(h: Graph) -> list[int]:
    """The map of each connected component that carries its simplex constraint: the smallest,
    ties to the highest index (the top level of a hierarchy)."""
    return [max(comp, key=lambda k: (-h.sizes[k], k)) for comp in h.components]


def is_solver_panic(err: BaseException) -> bool:
    """Whether ``err`` is a Rust panic raised through pyo3 (``pyo3_runtime.PanicException``:
    Moreau's and Clarabel's bindings).  It derives from ``BaseException``, so it passes every
    ``except Exception``; the layer turns it into a :class:`SolverFailure`."""
    kind = type(err)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


#: SCS's status value for a solve that SIGINT stopped (its own handler catches it while it solves)
SCS_INTERRUPTED = -5


def solver_interrupted(err: BaseException) -> bool:
    """Whether ``err`` is diffcp's error for an SCS solve that Ctrl-C stopped.  SCS handles SIGINT
    itself while it solves (Python's handler never runs), returns the status 'interrupted', and
    diffcp raises that as a ``SolverError``: the layer raises ``KeyboardInterrupt`` instead, as
    Ctrl-C anywhere else does (it had been a failed solve, recorded as an error row of ``bench``,
    which went on with the sweep: ca_rev236)."""
    return type(err).__name__ == "SolverError" and str(err).rstrip().endswith("status interrupted")


def _message_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): a panic's,
    or a solver error's, quoted in a one-line failure."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _other_backend_hint(name: str) -> str | None:
    """``"try backend='…'"`` naming the most accurate other backend that can run here, or None."""
    others = [b for b in ("diffcp-clarabel", "moreau", "diffcp-scs", "cuclarabel")
              if b != name and b in available_backends()]
    return f"try backend={others[0]!r}" if others else None


#: The most the certificate's threshold derived from an explicit ``eps`` (``1e3·eps``) may be:
#: beyond it a "certified" point need not be a distribution at all.
MAX_DERIVED_ACCEPT_TOL = 1e-3

#: A certified solution's maps must also lie within this many ``accept_tol`` of the maps its
#: duals imply (:func:`convex_attention.metrics.stationarity`), measured per sample.  The
#: residual and the relative gap alone passed diffcp-clarabel's maps 2.6e-5 from the optimum
#: at a certificate of 6.9e-10 (a 16² grid + regions, τ in [0.26, 1.8]), and moreau's 4.3e-4
#: off at τ = (1e-6, 1e6): the gap is quadratic in the maps' error and relative to |f|.  The
#: distance is of the size of the error (0.28-93x it over 120 solves of 16² families, up to
#: 2.9e3x at τ ratios of 1e6, where the duals' error over τ dominates: docs/design.md §4).
STATIONARITY_FACTOR = 1e3

#: diffcp-clarabel's retries of a batch the certificate refuses (where the caller set no
#: regularisation of their own): Clarabel's reduced-accuracy exit comes from its static
#: regularisation (1e-8), and at 1e-8 it left maps 2.6e-5 from the optimum on an ordinary 16²
#: grid + regions instance and 3.9e-6 on a 3-D cell of bench --quick, which the stationarity
#: check refuses; at 1e-10 both are certified (1.8e-10 and 7e-7 off).  No one setting serves
#: every instance (at 1e-10 a small star of the tests came back 6.9e-6 off, certified at
#: 1e-8), so the refused samples are solved again with each in turn, each keeping the first
#: that certifies it: the reference solve's retries (docs/design.md §4).
CLARABEL_RETRIES = _REFERENCE_RETRIES

#: Below this largest temperature the problem is solved divided by it, the duals multiplied back
#: (the solvers' tolerances are absolute; docs/design.md §4).
SMALL_SCALE = 1e-2

#: The largest ``max_iters`` the solvers hold (their iteration limits are 32-bit integers).
MAX_ITERS = 2 ** 31 - 1

#: Options of diffcp's derivative, and every option diffcp's batched solve (the one cvxpylayers
#: calls) takes itself, not its conic solver (Clarabel and SCS reject them): diffcp 1.1's
#: ``raise_on_error``, ``warm_starts`` and ``Ps`` had been refused as Clarabel's (ca_rev142).
#: Its single solve's ``warm_start`` and ``P`` are not among them: the batch passes its own
#: (``warm_starts[i]``, ``Ps[i]``), and a second value failed at the first solve (ca_rev145).
_DERIVATIVE_OPTIONS = ("mode", "n_jobs_backward")
_DIFFCP_OWN_OPTIONS = ("n_jobs_forward", "raise_on_error", "warm_starts", "Ps") + _DERIVATIVE_OPTIONS


class _PanicGuard(torch.autograd.Function):
    """The layer's call as one autograd node whose backward runs the layer's own backward, so
    that a solver panic there (Moreau: "LDL refactor failed in backward pass") surfaces as a
    :class:`SolverFailure` raised by this package, not as a ``BaseException`` from inside
    autograd.  ``apply(run, layer, *inputs)``: ``run(inputs)`` solves; the outputs, values
    and gradients are the layer's own.

    The inner graph is held by ``save_for_backward``, so it lives exactly as long as this
    node's saved tensors: freed after a backward unless the caller retains the graph (the
    inner backward itself always retains it; freeing follows the outer graph), and a second
    backward through a freed graph is torch's usual error."""

    @staticmethod
    def forward(ctx, run, layer: CvxpyAttentionLayer, *inputs: Tensor):
        with torch.enable_grad():
            detached = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
            outs = tuple(run(detached))
        ctx.save_for_backward(*detached, *outs)
        ctx.num_inputs, ctx.layer = len(detached), layer
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        if torch.is_grad_enabled():
            # create_graph=True: cvxpylayers' backward (diffcp's or moreau's derivative, NumPy and
            # Rust) is not itself differentiated; its gradients came back unconnected to the scores,
            # and a gradient penalty's second-order term was exactly 0, silently (ca_rev181)
            raise NotImplementedError(
                "second-order differentiation through method 'cvxpylayers' is not supported: the backend's "
                "derivative is not itself differentiated (create_graph=True); on a forest of maps (a hierarchy, "
                "a star) method 'exact' gives the same solution and supports second-order differentiation")
        saved = ctx.saved_tensors
        detached, outs = saved[:ctx.num_inputs], saved[ctx.num_inputs:]
        wanted = [i for i in range(ctx.num_inputs) if ctx.needs_input_grad[2 + i]]
        result: list[Tensor | None] = [None] * len(detached)
        live = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
        if wanted and live:
            try:
                with ctx.layer.lock:
                    got = torch.autograd.grad([o for o, _ in live], [detached[i] for i in wanted],
                                              [g for _, g in live], allow_unused=True, retain_graph=True)
            except BaseException as err:  # noqa: B036  (a Rust panic is a BaseException)
                if not is_solver_panic(err):
                    raise
                raise ctx.layer.panic_failure(err, "backward") from err
            for i, g in zip(wanted, got):
                result[i] = g
        return (None, None, *result)


#: How far a backend's gradient may lie from the implicit gradient at its own certified maps
#: (:class:`_GradientCheck`), per sample, in the largest entry: relative to that gradient's, and
#: absolutely to ``GRADIENT_CHECK_ATOL`` × the largest ``|v_k| / τ_k`` or ``|ū_e|`` of the incoming
#: gradient (the most a score gradient can be), for a gradient that is nearly zero.  The certified maps
#: are about 1e-6 from the optimum; diffcp-clarabel's gradients measured 7e-7 off `exact`'s,
#: moreau's up to 0.44 (ca_rev119).
GRADIENT_CHECK_RTOL = 1e-3
GRADIENT_CHECK_ATOL = 1e-5


class _GradientCheck:
    """The backward of one :func:`solve_cvxpylayers` call around the backend's.

    Each sample's incoming gradient is handed to the backend divided by its largest entry, and
    the backend's gradient multiplied back (the derivative is linear in it: the same gradient):
    diffcp's derivative came back exactly 0 for a loss on the duals scaled by 1e-8 or less, where
    its absolute tolerances met the cotangent's size, and so did every loss stationary in the
    duals (the dual objective), whose gradient there is the forward's rounding (ca_rev120,
    ca_rev124).

    With ``judging`` (option ``check_gradient``), the gradient certificate: the backend's own
    derivative (cvxpylayers' backward) is compared with the implicit gradient at the maps the
    forward certified (:func:`convex_attention.hessian.implicit_vjp`: the same problem
    differentiated at the same point, independently of the backend), and a disagreement is a
    :class:`SolverFailure`.  :class:`_Checkpoint` on the outputs records and scales the incoming
    gradient; on the scores it receives the backend's, scales it back and judges it."""

    def __init__(self, h: Graph, temps: Sequence[float], backend: str, judging: bool = True):
        self.h, self.temps, self.backend, self.judging = h, tuple(temps), backend, judging
        self.probs: list[Tensor] | None = None  # the certified maps, float64 (B, *shapes[k])
        self.incoming: list[Tensor] | None = None  # dL/d(probs, duals), from the outputs' node
        self.scale: Tensor | None = None  # (B,) what each sample's incoming gradient was divided by

    def scaled_down(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """``grads`` (the incoming gradient on the outputs, each ``(B, ...)``), each sample divided
        by its largest |entry| (1 where that is 0 or not finite: NaN is passed on as it came)."""
        largest = torch.stack([g.detach().flatten(1).abs().amax(1).to(torch.float64) for g in grads]).amax(0)
        self.scale = torch.where((largest > 0) & torch.isfinite(largest), largest, torch.ones_like(largest))
        return [g / self._scale_like(g) for g in grads]

    def scaled_back(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """The backend's gradient on the scores (each ``(B, n_k)``) times each sample's scale."""
        if self.scale is None:  # (the outputs' node never ran: nothing was scaled)
            return list(grads)
        return [g * self._scale_like(g) for g in grads]

    def _scale_like(self, g: Tensor) -> Tensor:
        """Each sample's scale in ``g``'s dtype, shaped to broadcast over ``g`` ``(B, ...)``."""
        assert self.scale is not None
        return self.scale.to(g.dtype).view((-1,) + (1,) * (g.dim() - 1))

    def judge(self, got: Sequence[Tensor | None]) -> None:
        """SolverFailure unless ``got`` (the backend's gradient on each map's centred scores,
        ``(B, n_k)``) is the implicit gradient's within the tolerances above."""
        if self.probs is None or self.incoming is None:
            return
        h, M = self.h, self.h.num_maps
        B = self.probs[0].shape[0]
        v = [x.detach().to(torch.float64).reshape((B,) + h.shapes[k]) for k, x in enumerate(self.incoming[:M])]
        u = [x.detach().to(torch.float64).reshape((B,) + h.shapes[b]) for x, (_, b) in zip(self.incoming[M:], h.edges)]
        # every sample whose loss reaches the layer (a sample with none: nothing to judge); one
        # reaching it through its duals alone is judged too: passed on unchecked, a loss on the
        # duals got diffcp's gradient 3.25 off and moreau's 0.43 through (ca_rev122)
        rows = [i for i in range(B) if any(bool(x[i].any()) for x in v + u)]
        # the most a score gradient can be: |v_k| / τ_k from the maps, about |u_e| from the duals
        reach = torch.stack([x.flatten(1).abs().amax(1) / t for x, t in zip(v, self.temps)]
                            + [x.flatten(1).abs().amax(1) for x in u]).amax(0)
        self._judge_unreached(got, sorted(set(range(B)) - set(rows)), float(reach.max()) if B else 0.0)
        if not rows:
            return
        try:
            index = torch.tensor(rows, dtype=torch.long)
            # held to its first solve's residual alone (no map 'measured'): the check needs it to
            # GRADIENT_CHECK_RTOL, and the layer's share of a loss on the objective is about zero,
            # which the refinement could not resolve to 1e-6 of itself (ca_rev120)
            want = implicit_vjp(h, [p[index] for p in self.probs], self.temps, [x[index] for x in v],
                                dual_grads=[x[index] for x in u], measured=[False] * M, sample_names=rows)
        except ImplicitSolveError as err:
            raise SolverFailure(f"method 'cvxpylayers' ({self.backend}): its gradient could not be checked, the "
                                f"implicit gradient at its certified maps was refused ({err}); nothing is returned "
                                f"unchecked: {self._instead()}") from None
        reach = reach[index]
        for k, (g, w) in enumerate(zip(got, want)):
            if g is None:  # (a map whose scores do not require grad: the backend gave it none)
                continue
            # (not centred: the gradient is passed on as it is, and a constant per map reached the
            # caller, 2.76 off, where the check had taken it off: ca_rev120)
            g = g.detach().to(torch.float64).reshape(B, -1)[index.to(g.device)].to(w.device)
            w = w.reshape(len(rows), -1)
            off = (g - w).abs().amax(1)
            allowed = GRADIENT_CHECK_RTOL * w.abs().amax(1) + GRADIENT_CHECK_ATOL * reach
            bad = torch.nonzero(~(off <= allowed)).flatten().tolist()  # (NaN is never within)
            if bad:
                i = bad[0]  # (its position among rows; the message names the sample)
                raise SolverFailure(
                    f"method 'cvxpylayers' ({self.backend}): its gradient on map {k}'s scores is {float(off[i]):.3g} "
                    f"from the implicit gradient at its own certified maps (sample {rows[i]}, whose largest entry is "
                    f"{float(w[i].abs().max()):.3g}; allowed {float(allowed[i]):.3g}); the backend's derivative is "
                    f"wrong there: {self._instead()}")

    def _judge_unreached(self, got: Sequence[Tensor | None], rows: list[int], reach: float) -> None:
        """SolverFailure where the backend gives a gradient to a sample ``rows`` names, which the
        loss does not reach (its implicit gradient is 0): a backend that mixed a batch's samples
        had passed 0.19 to such a sample unjudged (ca_rev140).  Allowed: the absolute part of the
        check, at the batch's ``reach`` (0 where no sample's loss reaches the layer)."""
        if not rows:
            return
        B = self.probs[0].shape[0] if self.probs is not None else 0
        for k, g in enumerate(got):
            if g is None:
                continue
            off = g.detach().to(torch.float64).reshape(B, -1)[torch.tensor(rows, device=g.device)].abs().amax(1)
            bad = torch.nonzero(~(off <= GRADIENT_CHECK_ATOL * reach)).flatten().tolist()  # (NaN is never within)
            if bad:
                i = bad[0]
                raise SolverFailure(
                    f"method 'cvxpylayers' ({self.backend}): its gradient on map {k}'s scores is {float(off[i]):.3g} "
                    f"at sample {rows[i]}, which the loss does not reach (its gradient there is 0); the backend's "
                    f"derivative is wrong there: {self._instead()}")

    def _instead(self) -> str:
        """What to use instead: neither the backend refused (ca_rev120) nor a method that cannot
        solve the structure (``exact`` on a graph that is not a forest: ca_rev122)."""
        other = "" if self.backend == "diffcp-clarabel" else "backend 'diffcp-clarabel', or "
        methods = "method 'dual' or 'exact'" if self.h.is_forest else "method 'dual'"
        return f"use {other}{methods} for this gradient"


class _Checkpoint(torch.autograd.Function):
    """Identity on tensors, whose backward hands their incoming gradient to a
    :class:`_GradientCheck` before passing it on: on the outputs ``(probs, duals)``
    (``judge=False``) it records the loss's gradient and passes it on scaled per sample; on the
    centred scores the backend solves (``judge=True``) it scales the backend's gradient back and
    judges it (where the check is on)."""

    @staticmethod
    def forward(ctx, check: _GradientCheck, judge: bool, *tensors: Tensor):
        ctx.check, ctx.judge = check, judge
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        check = ctx.check
        if ctx.judge:
            grads = tuple(check.scaled_back(grads))
            if check.judging:
                check.judge(grads)
        else:
            check.incoming = list(grads)
            grads = tuple(check.scaled_down(grads))
        return (None, None, *grads)


class CvxpyAttentionLayer:
    """The CVXPY problem of one ``(structure, temperatures)`` and its ``CvxpyLayer`` on one
    backend (a name of :data:`BACKENDS`).

    Build it once (or take it from :func:`get_layer`, which caches) and call it on
    batches of flattened scores.  One solve at a time per layer: :attr:`lock` (re-entrant)
    is held by every call, its backward, :meth:`reference_solve` and :meth:`diagnose`, and by
    :func:`solve_cvxpylayers` from the call to the certificate's verdict, so threads that share
    the cached layer take turns (two threads on one Moreau layer raised "Already borrowed" or
    solved with the other thread's settings, measured).
    """

    def __init__(self, h: Graph, temps: Sequence[float], backend: str = DEFAULT_BACKEND):
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        self.backend = get_backend(backend)
        self.h, self.temps = h, tuple(float(t) for t in temps)
        M = h.num_maps
        self.thetas = [cp.Parameter(n, name=f"theta{k}") for k, n in enumerate(h.sizes)]
        self.probs = [cp.Variable(n, name=f"p{k}") for k, n in enumerate(h.sizes)]
        objective = sum(self.thetas[k] @ self.probs[k] + self.temps[k] * cp.sum(cp.entr(self.probs[k]))
                        for k in range(M))
        self.consistency = [aggregation_matrix(h, e) @ self.probs[a] == self.probs[b]
                            for e, (a, b) in enumerate(h.edges)]
        constraints = self.consistency + [cp.sum(self.probs[k]) == 1 for k in simplex_maps(h)]
        self.problem = cp.Problem(cp.Maximize(objective), constraints)
        if not self.problem.is_dpp():  # pragma: no cover - a guard on the formulation
            raise RuntimeError("the attention problem must be DPP for cvxpylayers")
        self.layer = CvxpyLayer(self.problem, parameters=self.thetas,
                                variables=self.probs + [c.dual_variables[0] for c in self.consistency],
                                solver=self.backend.interface)
        # Per-sample status labels of the last solve, where the backend reports them.
        self.last_status: list[str] | None = None
        self._moreau_options: dict | None = None
        self.lock = threading.RLock()

    def __call__(self, flat_scores: Sequence[Tensor], solver_args: dict,
                 derivative_mode: str | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Solve a batch. ``flat_scores[k]``: ``(B, n_k)`` float64 tensors (CPU, or CUDA
        where the backend runs there).

        Returns ``(probs, duals)`` as lists of ``(B, n_k)`` (per map) / ``(B, n_coarse(e))``
        (per edge) tensors.
        """
        with self.lock:
            return self._call(flat_scores, solver_args, derivative_mode)

    def _call(self, flat_scores: Sequence[Tensor], solver_args: dict,
              derivative_mode: str | None) -> tuple[list[Tensor], list[Tensor]]:
        self.last_status = None
        needs_grad = torch.is_grad_enabled() and any(s.requires_grad for s in flat_scores)
        solver_args = dict(solver_args)
        if derivative_mode is not None:
            solver_args["mode"] = derivative_mode
        if self.backend.interface == "DIFFCP":
            # diffcp's thread pools follow torch's thread count, as every other method does
            # (its default, every core, timed it with more threads than --threads gave the others)
            threads = torch.get_num_threads()
            solver_args = {"n_jobs_forward": threads, "n_jobs_backward": threads, **solver_args}
        if not needs_grad:
            # diffcp's options of the derivative, a user's too: without one cvxpylayers would
            # hand them to the conic solver, which rejects them (measured: Clarabel)
            for name in _DERIVATIVE_OPTIONS:
                solver_args.pop(name, None)

        def run(inputs: Sequence[Tensor]):
            if self.backend.interface == "MOREAU":
                return self._moreau_solve(inputs, solver_args)
            return self.layer(*inputs, solver_args=solver_args)

        try:
            if needs_grad:
                out = _PanicGuard.apply(run, self, *flat_scores)
            else:
                # no graph: moreau's outputs required grad whatever the inputs, and a backward
                # then ran its derivative outside the panic guard (a review)
                with torch.no_grad():
                    out = run(flat_scores)
        except BaseException as err:  # noqa: B036  (a Rust panic is a BaseException: see is_solver_panic)
            if solver_interrupted(err):
                raise KeyboardInterrupt(f"cvxpylayers[{self.backend.name}]: {_message_line(err)}") from err
            if not is_solver_panic(err):
                raise
            raise self.panic_failure(err, "forward") from err
        M = self.h.num_maps
        return list(out[:M]), list(out[M:])

    def panic_failure(self, err: BaseException, stage: str) -> SolverFailure:
        """The :class:`SolverFailure` for a panic of the solver in the ``stage`` ("forward" or
        "backward") pass.  The backend's solver objects are dropped, so the next call builds
        fresh ones (a panic can leave a Rust mutex poisoned: later calls on it panicked too, measured)."""
        self._moreau_options = None
        hint = _other_backend_hint(self.backend.name)
        return SolverFailure(f"cvxpylayers[{self.backend.name}] failed in its {stage} pass: the solver panicked "
                             f"({_message_line(err)})" + (f"; {hint}" if hint else ""))

    def _moreau_solve(self, flat_scores, settings: dict):
        # cvxpylayers 1.2 creates Moreau's solver once, from the options held by the layer's
        # solver context, and per-call settings do not reach it (measured: max_iter=1 per
        # call still solved).  So the options are set on the context and its solvers are
        # rebuilt whenever they change.
        # the Moreau context of cvxpylayers 1.2 (its attributes are checked below, not typed there)
        ctx: Any = self.layer.ctx.solver_ctx
        if settings != self._moreau_options:
            if not all(hasattr(ctx, a) for a in ("options", "_torch_solver_cpu", "_torch_solver_cuda")):
                raise RuntimeError("this cvxpylayers version's Moreau interface is not the one this module "
                                   "was written for (1.2); pin cvxpylayers==1.2.* or use another backend")
            ctx.options = dict(settings)
            ctx._torch_solver_cpu = ctx._torch_solver_cuda = None
            self._moreau_options = dict(settings)
        out = self.layer(*flat_scores)
        device = "cuda" if flat_scores[0].device.type == "cuda" else "cpu"
        status = ctx.get_torch_solver(device).info.status
        status = status if isinstance(status, (list, tuple)) else [status]
        self.last_status = [getattr(st, "name", str(st)) for st in status]
        return out

    def reference_solve(self, flat_scores: Sequence[np.ndarray], eps: float = 1e-12):
        """A plain CVXPY solve of one sample (no cvxpylayers, no diffcp): Clarabel at ``eps``.

        Returns ``(probs, duals, value, status)`` with numpy arrays (duals centred).
        Clarabel's reduced-accuracy exit ("optimal_inaccurate") comes from its static
        regularisation (1e-8) on some instances: it is retried with smaller ones
        (:data:`_REFERENCE_RETRIES`), which reached certificates ~1e-13 where the first
        solve stopped at ~4e-10 (measured), and the attempt with the best certificate is
        returned.  A status that stays inaccurate is reported in ``status``: callers check
        the certificate.  ``value`` is CVXPY's for the centred scores (each map's minus its mean,
        :func:`centred_scores`: the same solution), and ``-inf`` when a probability ends a
        hair below zero: callers that need ``f*`` evaluate the objective at ``probs``.
        """
        with self.lock:
            return self._reference_solve(flat_scores, eps)

    def _reference_solve(self, flat_scores: Sequence[np.ndarray], eps: float):
        import cvxpy as cp

        # centred, as the layer solves them: a constant per map moves no solution
        values = [np.asarray(v, dtype=np.float64) for v in flat_scores]
        values = [v - v.mean() for v in values]
        for param, value in zip(self.thetas, values):
            param.value = value
        flat = [torch.from_numpy(v)[None] for v in values]
        tolerances = {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps, "tol_ktratio": eps}
        best, best_cert = None, math.inf
        for extra in ({},) + _REFERENCE_RETRIES:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                try:
                    self.problem.solve(solver=cp.CLARABEL, **tolerances, **extra)
                except cp.error.SolverError:
                    continue
                except BaseException as err:  # noqa: B036  (Clarabel is Rust: a panic is a BaseException)
                    if not is_solver_panic(err):
                        raise
                    continue
            if self.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
                continue
            result = self._reference_values()
            cert = float(certificate(self.h, self.temps, flat, [torch.from_numpy(p)[None] for p in result[0]],
                                     [torch.from_numpy(d)[None] for d in result[1]])[0])
            # NaN never replaces a finite certificate, and a finite one always replaces NaN (cert <
            # nan is False: a first attempt without a certificate had been kept over a certified retry)
            if best is None or cert < best_cert or (math.isnan(best_cert) and not math.isnan(cert)):
                best, best_cert = result, cert
            if result[-1] == cp.OPTIMAL:
                break
        if best is None:
            raise SolverFailure(f"the CVXPY reference (Clarabel) failed: status '{self.problem.status}'")
        return best

    def _reference_values(self):
        probs = [np.asarray(p.value, dtype=np.float64) for p in self.probs]
        duals = [np.asarray(c.dual_value, dtype=np.float64) for c in self.consistency]
        return probs, [d - d.mean() for d in duals], float(self.problem.value), str(self.problem.status)

    def sample_status(self, i: int, flat_scores: Sequence[np.ndarray], solver_args: dict) -> str:
        """The solver's status label for sample ``i`` of the last batch: reported by the
        backend where it reports one (Moreau), else found by :meth:`diagnose`."""
        if self.last_status is not None and i < len(self.last_status):
            return self.last_status[i]
        if self.backend.interface != "DIFFCP":
            return "unknown (the backend reports none)"
        return self.diagnose(flat_scores, solver_args)

    def diagnose(self, flat_scores: Sequence[np.ndarray], solver_args: dict) -> str:
        """Re-solve one sample with CVXPY and the same diffcp solver; returns its status."""
        with self.lock:
            return self._diagnose(flat_scores, solver_args)

    def _diagnose(self, flat_scores: Sequence[np.ndarray], solver_args: dict) -> str:
        import cvxpy as cp

        for param, value in zip(self.thetas, flat_scores):
            param.value = value
        # diffcp's own options, which the conic solver called here would reject
        args = {k: v for k, v in solver_args.items() if k not in _DIFFCP_OWN_OPTIONS}
        method = str(args.pop("solve_method", "SCS")).upper()
        if method == "SCS":
            eps = args.pop("eps", None)
            if eps is not None:
                args.setdefault("eps_abs", eps)
                args.setdefault("eps_rel", eps)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                if method == "SCS":
                    self._solve_scs(args)
                else:
                    self.problem.solve(solver=cp.CLARABEL, **args)
        except cp.error.SolverError as err:
            return f"solver error: {err}"
        except BaseException as err:  # noqa: B036  (Clarabel is Rust: a panic is a BaseException)
            if not is_solver_panic(err):
                raise
            return f"solver panicked: {_message_line(err)}"
        return str(self.problem.status)

    def _solve_scs(self, options: dict) -> None:
        """``problem.solve(solver=SCS)`` in its steps, so that the solver's own status is seen: SCS
        handles Ctrl-C itself while it solves, and cvxpy reports that status (-5, "interrupted") as a
        solver error like any other; here it is Ctrl-C (a diagnosis re-solve had turned it into a
        failed sample, and ``bench`` swept on: ca_rev238)."""
        import cvxpy as cp

        data, chain, inverse = self.problem.get_problem_data(cp.SCS)
        raw = chain.solve_via_data(self.problem, data, solver_opts=options)
        if raw.get("info", {}).get("status_val") == SCS_INTERRUPTED:
            raise KeyboardInterrupt("SCS: interrupted")
        self.problem.unpack_results(raw, chain, inverse)


def get_layer(h: Graph, temps: Sequence[float], backend: str = DEFAULT_BACKEND) -> CvxpyAttentionLayer:
    """The cached layer of ``(h, temps, backend)``: the CVXPY problem is built once per key.

    The cache keeps the :data:`CACHE_SIZE` most recently used layers (a sweep over many
    temperatures or sizes does not grow it without bound).
    """
    name = get_backend(backend).name
    key = (h._kernels_key(), tuple(float(t) for t in temps), name)
    with _CACHE_LOCK:
        layer = _CACHE.get(key)
        if layer is not None:
            _CACHE.move_to_end(key)
            return layer
        layer = _CACHE[key] = CvxpyAttentionLayer(h, temps, name)
        while len(_CACHE) > max(1, int(CACHE_SIZE)):
            _CACHE.popitem(last=False)
    return layer


def _real(name: str, value, rule: str) -> float:
    """``value`` as a float, or TypeError naming the option and ``rule``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"option {name} must be {rule}; got {value!r} ({type(value).__name__})")
    return float(value)


def _positive_finite(name: str, value, example: str) -> float:
    rule = f"a finite number > 0 (e.g. {example})"
    x = _real(name, value, rule)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"option {name} must be {rule}; got {value!r}")
    return x


def check_options(options: dict) -> dict:
    """Validate the options of method ``"cvxpylayers"`` before any work.

    Returns ``{"backend": Backend, "eps": float, "max_iters": int | None,
    "accept_tol": float, "mode": str | None, "check_gradient": bool, "extra": dict}``: ``mode``
    diffcp's derivative mode (given to diffcp only with a derivative), ``check_gradient``
    whether the backward checks the backend's gradient (:class:`_GradientCheck`; default
    True), ``extra`` the options passed to the solver unchanged.

    Raises:
        ValueError / TypeError: a bad value or type; the message names the option and its
            accepted range.
        BackendUnavailable: the backend cannot run here (names what to install).
    """
    opts = dict(options)
    check_gradient = opts.pop("check_gradient", True)
    if not isinstance(check_gradient, (bool, np.bool_)):
        raise TypeError(f"option check_gradient must be True or False, got {check_gradient!r}")
    backend = opts.pop("backend", None)
    method = opts.pop("solve_method", None)
    if backend is not None and (not isinstance(backend, str) or backend not in _BACKENDS):
        raise ValueError(f"option backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if method is not None:
        # solve_method is diffcp's own choice of conic solver, kept from before backends.
        if not isinstance(method, str) or method.upper() not in ("SCS", "CLARABEL"):
            raise ValueError(f"option solve_method must be 'SCS' or 'Clarabel' (diffcp's solvers), got {method!r}; "
                             f"other solvers are chosen with backend= ({', '.join(BACKENDS)})")
        implied = "diffcp-" + method.lower()
        if backend is not None and backend != implied:
            raise ValueError(f"option solve_method={method!r} contradicts backend={backend!r} (solve_method "
                             f"{method!r} is backend {implied!r}); give only backend")
        backend = implied
    backend = get_backend(backend or DEFAULT_BACKEND, check_installed=False)
    eps = opts.pop("eps", None)
    default_eps = eps is None
    eps = backend.default_eps if default_eps else _positive_finite("eps", eps, "1e-10")
    max_iters = _iteration_limit("max_iters", opts.pop("max_iters", None))
    if "max_iter" in opts:  # Clarabel's and Moreau's own name, passed through to them: the same limit
        opts["max_iter"] = _iteration_limit("max_iter", opts["max_iter"])
        if opts["max_iter"] is None:  # the solver's default: as not given (passed on, it replaced max_iters)
            del opts["max_iter"]
        elif max_iters is not None and opts["max_iter"] != max_iters:
            # one of them was dropped, silently, and not the same one on every backend (a review)
            raise ValueError(f"options max_iters={max_iters} and max_iter={opts['max_iter']} contradict each "
                             f"other; give max_iters only")
    accept_tol = opts.pop("accept_tol", None)
    if accept_tol is not None:
        accept_tol = _positive_finite("accept_tol", accept_tol, "1e-7")
    elif default_eps and backend.default_accept_tol is not None:
        accept_tol = backend.default_accept_tol
    else:
        # capped: a loose eps (1e-2, 1) made it 10 or 1e3, and a point with negative
        # probabilities was certified (a review); an explicit accept_tol is the caller's
        accept_tol = min(max(1e3 * eps, 1e-9), MAX_DERIVED_ACCEPT_TOL)
    given_mode = "mode" in opts
    mode = opts.pop("mode", None)
    if given_mode:
        if backend.interface != "DIFFCP":
            raise ValueError(f"option mode is diffcp's (how it solves its derivative system): backends "
                             f"{', '.join(b for b in BACKENDS if _BACKENDS[b].interface == 'DIFFCP')} only, not "
                             f"{backend.name!r}")
        if not isinstance(mode, str) or mode not in DIFFCP_MODES:
            raise ValueError(f"option mode (diffcp's derivative) must be one of {', '.join(DIFFCP_MODES)}; "
                             f"got {mode!r}")
    for name in ("n_jobs_forward", "n_jobs_backward"):
        if name in opts:
            value = opts[name]
            if backend.interface != "DIFFCP":
                raise ValueError(f"option {name} is diffcp's (its thread pool): backends "
                                 f"{', '.join(b for b in BACKENDS if _BACKENDS[b].interface == 'DIFFCP')} only, "
                                 f"not {backend.name!r}")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (value >= 1 or value == -1):
                raise ValueError(f"option {name} (diffcp's thread pool) must be an integer >= 1, or -1 for every "
                                 f"core; got {value!r}")
    if backend.solve_method == "SCS":
        given = sorted({"eps_abs", "eps_rel"} & set(opts))
        if given:
            # diffcp sets both to eps whenever eps is given, and this layer always gives it
            raise ValueError(f"option(s) {', '.join(given)} would be replaced by eps in diffcp's call of SCS: "
                             f"give eps (SCS's eps_abs and eps_rel both)")
    get_backend(backend.name)  # installed? (after the values: a typo is reported first)
    _check_solver_settings(backend, eps, max_iters, opts)
    return {"backend": backend, "eps": eps, "max_iters": max_iters, "accept_tol": accept_tol, "mode": mode,
            "check_gradient": bool(check_gradient), "extra": opts}


def _check_solver_settings(backend: Backend, eps: float, max_iters: int | None, extra: dict) -> None:
    """TypeError, before any work, for a setting the backend's solver rejects (a name it has
    not, a value it refuses), where the solver's settings can be built without solving:
    Moreau's (:func:`_moreau_settings`) and Clarabel's (as diffcp sets them, attribute by
    attribute).  Found only at the first forward before, after the layer was built and cached
    (ca_rev140); SCS's and the GPU backends' settings are checked by their solve."""
    if backend.interface == "MOREAU":
        _moreau_settings(eps, max_iters, extra)
    elif backend.interface == "DIFFCP" and backend.solve_method == "Clarabel":
        import clarabel

        settings = clarabel.DefaultSettings()
        passed = {k: v for k, v in extra.items() if k not in _DIFFCP_OWN_OPTIONS}
        for key, value in _solver_args(backend, eps, max_iters, passed).items():
            if key == "solve_method":
                continue
            try:
                setattr(settings, key, value)
            except (AttributeError, TypeError, ValueError, OverflowError) as err:
                raise TypeError(f"solver Clarabel rejected the option(s) {[key]}: {err} (value {value!r})") from None


def _solver_args(backend: Backend, eps: float, max_iters: int | None, extra: dict) -> dict:
    """This project's options as the keyword arguments of the backend's solver."""
    if backend.solve_method == "SCS":
        args = {"solve_method": "SCS", "eps": eps, **extra}
        if max_iters is not None:
            args["max_iters"] = max_iters
        return args
    if backend.interface == "MOREAU":
        return _moreau_settings(eps, max_iters, extra)
    # Clarabel, through diffcp or CuClarabel: the same settings.
    args = {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps, "tol_ktratio": eps, **extra}
    if backend.solve_method is not None:
        args["solve_method"] = backend.solve_method
    if max_iters is not None:
        args["max_iter"] = max_iters
    return args


def _moreau_settings(eps: float, max_iters: int | None, extra: dict) -> dict:
    """``moreau.Settings`` fields (with ``ipm_settings`` as a dict).  Moreau ignores
    unknown fields silently, so they are rejected here."""
    import moreau

    top, ipm_fields = set(moreau.Settings.model_fields), set(moreau.IPMSettings.model_fields)
    # Tight infeasibility tolerances: with the defaults (1e-8) Moreau declared this always
    # feasible, bounded problem infeasible at eps <= 1e-10 (measured).
    tight = min(eps, 1e-8) * 1e-2
    ipm = {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps, "tol_infeas_abs": tight,
           "tol_infeas_rel": tight, "tol_ktratio": min(1e-6, 1e2 * eps)}
    args = {} if max_iters is None else {"max_iter": max_iters}
    rejected = []
    for key, value in extra.items():
        if key == "ipm_settings" and isinstance(value, dict):
            rejected += [f"ipm_settings.{k}" for k in value if k not in ipm_fields]
            ipm.update(value)
        elif key in ipm_fields:
            ipm[key] = value
        elif key in top and key != "ipm_settings":
            args[key] = value
        else:
            rejected.append(key)
    if rejected:
        raise TypeError(f"solver moreau rejected the option(s) {sorted(rejected)}: moreau.Settings and "
                        f"moreau.IPMSettings have no such field")
    # the values too, before any work (pydantic's ValidationError, a ValueError, escaped from
    # inside the solve after the layer was built and cached: ca_rev119)
    for fields, values in ((moreau.IPMSettings, ipm), (moreau.Settings, args)):
        try:
            fields(**values)
        except ValueError as err:
            errors = err.errors() if hasattr(err, "errors") else []
            named = [".".join(map(str, e.get("loc", ()))) for e in errors] or ["?"]
            first = errors[0].get("msg", "") if errors else str(err)
            raise TypeError(f"solver moreau rejected the option(s) {named}: {first}") from None
    return {**args, "ipm_settings": ipm}


def solve_device(backend: Backend | str, device: torch.device | str) -> torch.device:
    """Where the backend solves inputs that live on ``device``: the CPU unless the backend
    has a CUDA build installed here (moreau: ``moreau.device_available("cuda")``, which
    needs the ``moreau-cuda13`` package) and the inputs are on a CUDA device; a CUDA-only
    backend always on the GPU.  Its inputs are copied there and the solution back."""
    backend = get_backend(backend, check_installed=False) if isinstance(backend, str) else backend
    device = torch.device(device)
    if "cpu" not in backend.devices:
        return torch.device("cuda")
    if device.type == "cuda" and "cuda" in backend.devices:
        import moreau

        if moreau.device_available("cuda"):
            return device
    return torch.device("cpu")


def _float_temperatures(temps) -> list[float]:
    if isinstance(temps, Tensor):
        temps = temps.reshape(-1) if temps.dim() else [temps]
    out = []
    for t in temps:
        if isinstance(t, Tensor):
            # a forward-mode tangent too (torch.func.jvp, forward_ad): read with .item() it was
            # dropped, the maps carrying none (a review)
            if t.requires_grad or is_grad_temperature(t):
                raise TypeError("method 'cvxpylayers' does not differentiate through the temperature; pass "
                                "floats, or detach the temperature tensor")
            t = t.item()
        if isinstance(t, (bool, np.bool_)) or np.asarray(t).dtype.kind == "b":  # numpy's too, 0-d arrays
            # included (np.True_ and np.array(True) read as 1.0: reviews)
            raise ValueError(f"method 'cvxpylayers' needs temperatures as numbers, got {t!r}")
        out.append(float(t))
    return out


def solve_cvxpylayers(scores: Sequence[Tensor], h: Graph, temps: Sequence[float], **options):
    """Solve with the cached CVXPY layer. Differentiable through the layer: the gradient is
    the backend's own derivative and, unlike the solution, it is not certified (on peaked maps
    it can be off by more than its own size: docs/design.md §4).

    Args:
        scores: ``M`` tensors ``(B, *h.shapes[k])`` on any device, finite (a NaN or an
            infinite score is a ValueError naming the map).
        temps: ``M`` finite positive floats, one per map (tensors that do not require grad
            are read as floats).
        **options: ``backend`` (one of :data:`BACKENDS`, default ``"diffcp-clarabel"``);
            ``solve_method`` (``"Clarabel"`` or ``"SCS"``: the same as backend
            ``"diffcp-clarabel"`` / ``"diffcp-scs"``); ``eps`` (solver tolerance, finite
            > 0, default the backend's ``default_eps``: Clarabel 1e-12, Moreau 1e-11,
            SCS 1e-9); ``max_iters`` (an integer from 1 to :data:`MAX_ITERS`, default: the
            solver's; the solvers' own ``max_iter`` is held to the same range);
            ``accept_tol`` (largest accepted primal residual and relative duality gap,
            finite > 0, default ``max(1e3·eps, 1e-9)`` capped at
            :data:`MAX_DERIVED_ACCEPT_TOL` (1e-3), or the backend's
            ``default_accept_tol`` when ``eps`` is not given: 1e-4 for SCS, which
            stalls near 1e-5 on this problem); ``mode`` (diffcp backends: how diffcp
            solves its derivative system, one of :data:`DIFFCP_MODES`; default
            ``"lsqr"``; ``"dense"`` is more accurate and slower); diffcp-clarabel solves the
            samples the certificate refuses (the whole batch where its solve raised) again with
            each of :data:`CLARABEL_RETRIES` in turn, each sample keeping the first attempt that
            certifies it, unless ``static_regularization_constant`` is given; diffcp's ``n_jobs_forward``
            and ``n_jobs_backward`` (its thread pools: integers >= 1, or -1 for every core)
            default to ``torch.get_num_threads()``; SCS's ``eps_abs`` and ``eps_rel`` are
            refused (diffcp replaces them by ``eps``); other keys go to the solver
            unchanged (diffcp passes them to SCS or to Clarabel's settings; Moreau takes
            ``moreau.Settings`` and ``moreau.IPMSettings`` fields), and one the solver
            rejects is a TypeError.

    Returns:
        ``(probs, duals)``: ``probs[k]`` ``(B, *shapes[k])``, ``duals[e]``
        ``(B, *shapes[coarse(e)])`` centred, both in the dtype and on the device of ``scores``.

    Raises:
        ValueError / TypeError: a bad option (validated before any work).
        BackendUnavailable: the backend is not installed (the message names the package).
        SolverFailure: when the solver fails, or when a sample's primal residual
        (simplex, sign or consistency; max-abs) or its duality gap ``g(λ) − f(p)``
        (relative to ``max(1, |f̄(p)|)``, ``f̄`` the objective of the scores centred per map,
        :func:`certificate`) exceeds ``accept_tol``, or its maps lie more than
        :data:`STATIONARITY_FACTOR` × ``accept_tol`` from the maps its duals imply
        (:func:`convex_attention.metrics.stationarity`): diffcp's Clarabel path
        never raises, its SCS path only warns and Moreau returns whatever it reached, so
        the certificate is checked here.  The message names the backend, the sample
        index and the solver status.
    """
    opts = check_options(options)
    temps = _float_temperatures(temps)
    if len(temps) != h.num_maps or not all(math.isfinite(t) and t > 0 for t in temps):
        # ca.solve checks them; this public entry point too (a third one was ignored, a negative
        # one read "the attention problem must be DPP": a review)
        raise ValueError(f"method 'cvxpylayers' needs {h.num_maps} temperatures, one finite positive float per "
                         f"map; got {temps}")
    backend = opts["backend"]
    args = _solver_args(backend, opts["eps"], opts["max_iters"], opts["extra"])
    _check_score_shapes(scores, h)
    for k, s in enumerate(scores):
        if not bool(torch.isfinite(s).all()):
            # check_finite=False skips the check of ca.solve; CVXPY's own refusal ("Parameter
            # value must be real") names neither the scores nor the map
            raise ValueError(f"method 'cvxpylayers' needs finite scores: map {k} has NaN or infinite entries (a "
                             f"masked cell is -inf: method 'exact' solves it)")
    # the solvers' tolerances are absolute: a problem scaled down (scores and temperatures times
    # 1e-5) was solved only to the unit-scale problem's absolute accuracy, and refused (ca_rev62:
    # 66 of 150 tiny chains at 10^U(-5, -2) by diffcp-clarabel, every one solved at unit scale).
    # Below SMALL_SCALE the problem is solved divided by its largest temperature: the same maps,
    # the duals multiplied back
    factor = max(temps) if max(temps) < SMALL_SCALE else 1.0
    temps = [t / factor for t in temps]
    layer = get_layer(h, temps, backend.name)
    solving_on = solve_device(backend, scores[0].device)
    # each map's scores centred per sample: a constant per map moves no solution (every map sums
    # to one), but an offset of 1e9 left SCS 0.35 from the optimum
    flat = centred_scores([s.to(device=solving_on, dtype=torch.float64).reshape(s.shape[0], -1) / factor
                           for s in scores])
    if not all(bool(torch.isfinite(f).all()) for f in flat):  # (whatever the factor: CVXPY's refusal names none)
        raise ValueError("method 'cvxpylayers': the scores, centred per map" + (
            f" and divided by the largest temperature ({factor:.3g}), overflow float64; the problem is too cold "
            f"for any solver (method 'exact' or 'dual')" if factor != 1.0 else
            ", overflow float64: they are beyond validation.score_limit (check_finite=False lets such scores in)"))
    # The certificate and any diagnosis read detached CPU copies (inputs may require grad).
    flat_cpu = [f.detach().cpu() for f in flat]
    # the backend's gradient is checked against the implicit gradient at the certified maps
    # (moreau's was 0.44 off on an ordinary chain, unwarned: ca_rev119)
    check = _GradientCheck(h, temps, backend.name, judging=opts["check_gradient"]) \
        if torch.is_grad_enabled() and any(f.requires_grad for f in flat) else None
    if check is not None:
        flat = list(_Checkpoint.apply(check, True, *flat))
    # the layer is shared (cached): held from the solve to the certificate's verdict, so that
    # the statuses a failure reports are this call's
    with layer.lock:
        probs, duals = _solve_certified(layer, h, temps, scores, flat, flat_cpu, opts, args, check)
    return probs, [d * factor for d in duals] if factor != 1.0 else duals


def _iteration_limit(name: str, value):
    """``value`` as an iteration limit (None: the solver's default), else TypeError/ValueError
    naming the option ``name``: an integer from 1 to :data:`MAX_ITERS` (Clarabel's and Moreau's
    limits are 32-bit: 2**40 passed, then raised a bare OverflowError from the solver after the
    layer was built; a review)."""
    if value is None:
        return None
    rule = "an integer >= 1, or None for the solver's default"
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, Tensor) and (
            value.dim() != 0 or value.dtype == torch.bool or value.is_floating_point() or value.is_complex())):
        # a bool tensor read as 1 iteration, tensor([7]) as 7 (a review)
        raise TypeError(f"option {name} must be {rule}; got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"option {name} must be {rule}; got {value!r} ({type(value).__name__})") from None
    if not 1 <= value <= MAX_ITERS:
        raise ValueError(f"option {name} must be {rule}, at most {MAX_ITERS} (the solvers' 32-bit limit); got {value}")
    return value


def _check_score_shapes(scores: Sequence[Tensor], h: Graph) -> None:
    """ValueError unless ``scores`` are ``M`` tensors ``(B, *h.shapes[k])`` with one ``B``: each is
    flattened to ``(B, n_k)``, so scores of a (2, 4) map given as (1, 4, 2) were solved as another
    problem, silently (a review; ``ca.solve`` checks them, this public entry point too)."""
    if len(scores) != h.num_maps:
        raise ValueError(f"method 'cvxpylayers' needs {h.num_maps} score tensors, one per map; got {len(scores)}")
    first = scores[0]
    batch = first.shape[0] if isinstance(first, Tensor) and first.dim() else None
    for k, s in enumerate(scores):
        if not isinstance(s, Tensor) or s.dim() != 1 + len(h.shapes[k]) or tuple(s.shape[1:]) != h.shapes[k] \
                or s.shape[0] != batch:
            raise ValueError(f"method 'cvxpylayers': scores[{k}] must have shape (B, "
                             f"{', '.join(map(str, h.shapes[k]))}) with the batch B of scores[0]; got "
                             f"{tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}")
        # (as ca.solve checks them: integer scores came back as maps truncated to 0, scores of
        # two dtypes as maps all in the first's, and an empty batch as torch's reshape error: ca_rev119)
        if not s.dtype.is_floating_point:
            raise TypeError(f"method 'cvxpylayers': scores[{k}] must be a floating tensor, got {s.dtype}")
        if s.dtype != first.dtype:
            raise TypeError(f"method 'cvxpylayers': scores[{k}] has dtype {s.dtype}, scores[0] has {first.dtype}; "
                            f"use one dtype")
    if batch == 0:
        raise ValueError("method 'cvxpylayers': the scores have batch size 0; give at least one sample")


def _solve_certified(layer: CvxpyAttentionLayer, h: Graph, temps, scores, flat, flat_cpu, opts: dict, args: dict,
                     check: _GradientCheck | None = None):
    """The body of :func:`solve_cvxpylayers` under the layer's lock: the solve, its certificate
    (:class:`SolverFailure` above ``accept_tol``) and the outputs in the scores' dtype and device;
    ``check`` (where the gradient is checked) keeps the certified maps in float64 (checked at
    float32-rounded maps, every float32 backward was refused: ca_rev120)."""
    backend, accept_tol = opts["backend"], opts["accept_tol"]
    dtype, device = scores[0].dtype, scores[0].device
    solver_errors: tuple = ()
    if backend.interface == "DIFFCP":
        import diffcp

        solver_errors = (diffcp.cone_program.SolverError,)
    retries: tuple[dict, ...] = CLARABEL_RETRIES if backend.solve_method == "Clarabel" and not \
        {"static_regularization_constant"} & set(opts["extra"]) else ()
    B = flat[0].shape[0]
    pending = list(range(B))  # the samples no attempt has certified yet
    # the outputs so far: every sample's from the first attempt that returned, each refused one
    # replaced by the first retry that certifies it (a retry solves the refused samples only)
    probs: list[Tensor] | None = None
    duals: list[Tensor] | None = None
    # the first refusal (the first attempt's, or where that raised, the first retry's that returned):
    # (args, certificate, distance), indexed by sample of the whole batch
    first_failure: tuple | None = None
    first_error: tuple | None = None  # the error the first attempt raised: (args, error)
    solved_retries: list[dict] = []  # each retry's own settings as solved (the caller's values kept)
    for index, attempt in enumerate(({},) + retries):
        # a retry changes only what the caller left to the layer (their own keys go unchanged)
        attempt_args = {**args, **{k: v for k, v in attempt.items() if k not in opts["extra"]}}
        if index:
            solved_retries.append({k: attempt_args[k] for k in attempt})
        rows = pending if index else list(range(B))
        part = torch.tensor(rows, dtype=torch.long)
        with warnings.catch_warnings():
            # diffcp only warns on inaccurate solves; the residual check below decides.
            warnings.filterwarnings("ignore", message="Solved/Inaccurate")
            try:
                inputs = flat if len(rows) == B else [f[part.to(f.device)] for f in flat]
                got_probs, got_duals = layer(inputs, attempt_args, derivative_mode=opts["mode"])
            except (*solver_errors, SolverFailure) as err:
                if index:  # a retry is an extra chance: one that fails (a panic too) leaves the next
                    continue
                if not retries:
                    if isinstance(err, SolverFailure):
                        raise
                    _raise_failure(layer, flat_cpu, attempt_args, rows, accept_tol, err, max_iters=opts["max_iters"])
                # the reference solve goes on past a first attempt that raised: so do the retries
                first_error = (attempt_args, err)
                continue
            except (AttributeError, TypeError) as err:
                passed = sorted(opts["extra"])
                if not passed:  # not a rejected pass-through option: a genuine error
                    raise
                raise TypeError(f"solver {backend.solve_method or backend.name} rejected the option(s) {passed}: "
                                f"{err}") from err
        cert, distance, accepted = acceptance(h, temps, flat_cpu if len(rows) == B else [f[part] for f in flat_cpu],
                                              [p.detach().cpu() for p in got_probs],
                                              [d.detach().cpu() for d in got_duals], accept_tol)
        if probs is None or duals is None:  # the first outputs (a retry's where the first attempt raised)
            assert len(rows) == B
            probs, duals = got_probs, got_duals
        else:
            taken = accepted.nonzero().flatten()
            if len(taken):
                where = part[taken]
                probs = [p.index_copy(0, where.to(p.device), q[taken.to(q.device)])
                         for p, q in zip(probs, got_probs)]
                duals = [d.index_copy(0, where.to(d.device), q[taken.to(q.device)])
                         for d, q in zip(duals, got_duals)]
        if first_failure is None and not bool(accepted.all()):
            whole = [torch.full((B,), math.nan, dtype=x.dtype) for x in (cert, distance)]
            for x, y in zip(whole, (cert, distance)):
                x[part] = y
            first_failure = (attempt_args, *whole)
        pending = [r for r, ok in zip(rows, accepted.tolist()) if not ok]
        if not pending:
            break
    if pending:  # no attempt certified these samples: the first refusal (or error), with the retries said
        raised = None if first_error is None else first_error[1]
        if first_failure is None:  # every attempt raised
            assert first_error is not None
            _raise_failure(layer, flat_cpu, first_error[0], pending, accept_tol, raised, max_iters=opts["max_iters"],
                           retried=tuple(solved_retries))
        attempt_args, cert, distance = first_failure
        # where the first attempt raised, the refusal is a retry's: the message says both (it
        # blamed "the batch" and named no sample: a review)
        _raise_failure(layer, flat_cpu, attempt_args, pending, accept_tol, None, cert, max_iters=opts["max_iters"],
                       distance=distance, retried=tuple(solved_retries), first_raised=raised)
    assert probs is not None and duals is not None
    if check is not None:
        if check.judging:
            check.probs = [p.detach().to(torch.float64).reshape((B,) + h.shapes[k]) for k, p in enumerate(probs)]
        # on the float64 outputs, before the casts: the incoming gradient is scaled in float64 (in
        # float16 a scale of 1e-9 was 0, and the gradient NaN: ca_rev128)
        outs = _Checkpoint.apply(check, False, *probs, *duals)
        probs, duals = list(outs[:h.num_maps]), list(outs[h.num_maps:])
    probs = [p.reshape((B,) + h.shapes[k]).to(device=device, dtype=dtype) for k, p in enumerate(probs)]
    duals = [d.reshape((B,) + h.shapes[b]) for d, (_, b) in zip(duals, h.edges)]
    # duals in the compute dtype: half precision's range is narrower than theirs (Solution.duals)
    duals = [centre(d).to(device=device, dtype=compute_dtype(dtype)) for d in duals]
    return probs, duals


def centred_scores(flat_scores: Sequence[Tensor]) -> list[Tensor]:
    """Each map's scores ``(B, n_k)`` (or ``(B, *shapes[k])``) minus their per-sample mean: the
    same solution (every map sums to one), an objective whose size does not depend on an
    arbitrary constant.  The mean is detached: the gradient passes through unchanged.  Where
    torch's mean overflows (it sums first: 8 cells of 4e307 gave -inf, ca_rev140) it is summed
    over the cells divided by their count, which never overflows for scores within
    :func:`~convex_attention.validation.score_limit`."""
    out = []
    for s in flat_scores:
        x, dims = s.detach(), sample_dims(s)
        mean = x.mean(dims, keepdim=True)
        mean = torch.where(torch.isfinite(mean), mean, (x / max(1, x[:1].numel())).sum(dims, keepdim=True))
        out.append(s - mean)
    return out


def primal_residual(h: Graph, probs: Sequence[Tensor]) -> Tensor:
    """Max-abs primal residual per sample of flat probabilities ``(B, n_k)``: ``(B,)``.

    The simplex residual of each component's simplex map (:func:`simplex_maps`), the negative
    parts of every map and the consistency residual of every edge."""
    flat_h = h.flat()
    with torch.no_grad():
        res = torch.stack([(probs[k].sum(1) - 1).abs() for k in simplex_maps(h)]).amax(0)
        for k, p in enumerate(probs):
            res = torch.maximum(res, (-p).clamp(min=0).amax(1))
            for e in h.out_edges[k]:
                res = torch.maximum(res, (flat_h.aggregate(p, e) - probs[h.edges[e][1]]).abs().amax(1))
        return res


def certificate(h: Graph, temps, flat_scores, probs, duals) -> Tensor:
    """Per sample: the larger of the primal residual (:func:`primal_residual`) and the
    relative duality gap ``|g(λ) − f(p)| / max(1, |f(p)|)``: ``(B,)``, with ``f`` and ``g``
    evaluated on each map's scores centred per sample (:func:`centred_scores`).

    ``flat_scores[k]``, ``probs[k]``: ``(B, n_k)``; ``duals[e]``: ``(B, n_coarse(e))``.
    A solution is accepted when this is at most ``accept_tol``; then, by the strong
    concavity of ``τ_k H`` on the simplex, ``‖p_k − p*_k‖₁ <= sqrt(2·gap/τ_k)`` for a
    feasible ``p`` (what ``verify`` holds each backend to).  Centring changes neither the
    solution nor ``g − f`` on the simplices, only the scale: on raw scores a constant of
    1e9 added to a map made ``|f|`` 1e9 and let a solution 0.35 from the optimum pass.
    """
    with torch.no_grad():
        flat_scores = centred_scores(flat_scores)
        flat_h = h.flat()
        f = objective(flat_scores, probs, temps)
        gap = (dual_objective(flat_scores, duals, flat_h, temps) - f).abs() / f.abs().clamp(min=1)
        return torch.maximum(primal_residual(h, probs), gap)


_certificate = certificate


def acceptance(h: Graph, temps, flat_scores, probs, duals, accept_tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """The layer's acceptance test of a solution, per sample: ``(certificate, stationarity,
    accepted)``, each ``(B,)``.  Accepted where :func:`certificate` is at most ``accept_tol``
    and the maps lie within :data:`STATIONARITY_FACTOR` × ``accept_tol`` of the maps the duals
    imply (:func:`convex_attention.metrics.stationarity`); NaN is never accepted.  Arguments
    as for :func:`certificate`."""
    cert = certificate(h, temps, flat_scores, probs, duals)
    with torch.no_grad():
        distance = stationarity(centred_scores(flat_scores), probs, duals, h.flat(), temps)
    return cert, distance, (cert <= accept_tol) & (distance <= STATIONARITY_FACTOR * accept_tol)


def _raise_failure(layer: CvxpyAttentionLayer, flat, args, samples, accept_tol, error, certificate=None,
                   max_iters=None, distance=None, retried=(), first_raised: BaseException | None = None) -> NoReturn:
    """Raise :class:`SolverFailure` naming the backend, the first failing samples and
    their statuses.  ``flat``: detached CPU float64 scores ``(B, n_k)``; ``error``: the
    exception the batch's solve raised, or None where the certificate failed."""
    backend = layer.backend
    solver = backend.solve_method or backend.name
    lines = []
    for i in samples:
        status = layer.sample_status(i, [f[i].numpy() for f in flat], args)
        if certificate is not None and not float(certificate[i]) <= accept_tol:
            lines.append(f"sample {i}: primal residual or duality gap {float(certificate[i]):.2e} > "
                         f"accept_tol {accept_tol:.1e}; solver {solver} status '{status}'")
        elif certificate is not None and distance is not None:
            lines.append(f"sample {i}: its maps lie {float(distance[i]):.2e} from the maps its duals imply, > "
                         f"{STATIONARITY_FACTOR:g} x accept_tol {accept_tol:.1e} (primal residual and duality gap "
                         f"{float(certificate[i]):.2e}); solver {solver} status '{status}'")
        elif status != "optimal":  # the batch failed as a whole: find the culprits
            lines.append(f"sample {i}: solver {solver} status '{status}'")
        if len(lines) == 5:
            break
    if not lines:
        lines = [f"the batch: the solver raised '{_message_line(error)}'"]
    elif certificate is None:  # the statuses are a diagnosis's, not the failed run's: say both
        lines[-1] += (f" (each sample re-solved alone by CVXPY with {solver}; the batch's solve raised "
                      f"'{_message_line(error)}')")
    other = _other_backend_hint(backend.name)
    # loosening accept_tol is advice only where the refused maps are near an optimum: a residual
    # of 4.1 is no matter of accuracy, and no accept_tol the layer derives (at most
    # MAX_DERIVED_ACCEPT_TOL) would take it (a review found that advice given for it)
    measures = [float(certificate[i]) for i in samples] if certificate is not None and samples else [math.inf]
    if distance is not None and samples:
        measures += [float(distance[i]) / STATIONARITY_FACTOR for i in samples]
    # every one near, NaN never (Python's max drops a NaN after a finite value: ca_rev203)
    near = all(m <= MAX_DERIVED_ACCEPT_TOL for m in measures)
    hints = ([f"raise max_iters (it was {max_iters})"] if max_iters is not None else []) + \
        ([f"loosen accept_tol if {accept_tol:.0e} is more accuracy than you need"] if near else []) + \
        ([other] if other else [])
    if not hints:
        hints = ["solve more tightly (a smaller eps) or with more iterations (max_iters)"]
    advice = ", ".join(hints[:-1]) + ", or " + hints[-1] if len(hints) > 1 else hints[0]
    again = (f" (and again with each of {', '.join(str(r) for r in retried)}: none certified these samples)"
             if retried else "")
    if first_raised is not None:
        again += f"; the first attempt raised '{_message_line(first_raised)}': these are the first retry's refusals"
    raise SolverFailure(f"cvxpylayers[{backend.name}] solve failed for " + "; ".join(lines) + again + ". "
                        + advice[0].upper() + advice[1:] + ".")
