"""``convex-attention verify``: dual solutions checked against exact solvers.

On random instances (chains: 2-D/3-D grids, irregular partitions, 2–3 levels; and small random
graphs of every structure family of :mod:`convex_attention.bench.structures`: stars, axial,
grid + regions, mixed; temperatures in [0.3, 3] that differ per map) the dual solver's ``λ``
and ``p(λ)`` are compared with

* a plain CVXPY solve (Clarabel, tolerances 1e-12; no cvxpylayers involved), itself held to
  its certificate (``reference.certificate``) and to its stationarity
  (``reference.stationarity``: its maps within ``reference_stationarity`` of the maps its
  duals imply; the certificate alone, quadratic in the maps' error, passed a reference 1e-5
  off the optimum, and the right solvers were then blamed),
* the ``cvxpylayers`` layer (default backend; probabilities to the larger of the primal
  tolerance and the distance the layer's own certificate allows, see below),

and the closed form is compared with both where it applies (forests: chains and stars; on
other graphs no ``exact`` row is requested).  Optimality is checked directly too: the
duality gap ``g(λ) − f*``, KKT stationarity (``p_k ∝ exp(η_k/τ_k)``, i.e. the reference
primal equals ``p(λ)``) and feasibility (``violation``).  Each check has its tolerance.
Duals are compared less the directions that move no map (the per-edge constants, and where
constraints are redundant the directions along which the optimal duals are not unique:
:func:`_dual_distance`).

With the built-in solver, its implicit gradients are checked against central finite
differences of the solution (``dual.gradient_vs_fd``: scores, ``dual.temperature_gradient_vs_fd``:
temperatures, along random directions, relative error).  cvxpylayers' own gradient (default
backend) against the same finite differences is *reported* beside them
(``info.cvxpylayers[<backend>].gradient_vs_fd``, status ``info``, no
tolerance: its gradients are known to be inaccurate, docs/benchmarks.md), never a check.

Every requested ``cvxpylayers`` backend (default: every one that can run here) is checked
against the plain CVXPY reference at its default options: its own certificate
(``cvxpylayers[<backend>].certificate`` <= its ``accept_tol``), its stationarity
(``.stationarity`` <= ``cvx.STATIONARITY_FACTOR`` × ``accept_tol``: the layer's own
acceptance, checked here again, since the certificate alone passed maps 1.5e-5 off), its probabilities
(``.primal_vs_cvxpy`` within ``sqrt(2·accept_tol·max(1, |f̄*|) / min τ) + accept_tol``, the
distance its certificate allows) and its duals' objective (``.dual_gap_vs_cvxpy``:
``(g(λ) − f*) / max(1, |f̄*|)`` <= ``accept_tol`` + the reference's own tolerance; ``f̄*`` is
``f*`` of the scores centred per map, as in ``cvx.certificate``).

A user's own dual solver can be verified with ``dual_solver``: a callable
``(scores, h, temperatures) -> duals`` (``L-1`` real floating tensors ``(B, *h.shapes[k+1])``:
anything else fails with the reason), called in this process, or an
:class:`~.isolation.IsolatedSolver`, which runs it in a process of its own with a timeout per
instance (what ``convex-attention verify --dual-solver`` does: a solver that exits,
crashes, hangs or is killed then fails its rows, and cannot hang the verifier or make it
report a pass; isolation.py says what code written to fool it can still do, with the
user's rights); its rows carry its name (:func:`solver_label`).  The guarantee that the
solver's mistakes cannot fool the verifier holds for the isolated solver only.  A
callable is *trusted code*: it runs in the verifier's process, where it could read or
change anything (the results, the functions that compute the checks).  It is called
before the instance's reference exists (the reference is computed once it has returned)
and is given copies of the scores, the structure and the temperatures, so that a solver
that reads its caller's state or changes its inputs in place by mistake finds no answer
to copy and cannot alter the problem the verifier checks; that protects against
mistakes, not against deliberate tampering.

Every requested check gets a row (:class:`CheckResult`) with a ``status``: ``pass``,
``fail`` (ran, error above tolerance or NaN), ``error`` (the part it belongs to raised,
called ``sys.exit``, returned something that is not duals or, isolated, ended its process,
crashed or ran past its timeout: one ``<part>.run`` row with the reason in one line) or
``skipped`` (requested but not run, because a part it needs failed).  Only ``pass`` counts
as passed, so a check that did not run never passes.  Rows of status ``info`` are
measurements reported beside the checks, not checks: they neither pass nor fail.  Backends that cannot run here (not
installed) are not requested by default; :func:`backend_skips` says why, in one line each.
"""
from __future__ import annotations

import copy
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from ..cvx import (
    BACKENDS,
    DEFAULT_BACKEND,
    STATIONARITY_FACTOR,
    available_backends,
    backend_unavailable_reason,
    centred_scores,
    certificate,
    check_options,
    clear_cache,
    get_backend,
    get_layer,
)
from ..dual import reparameterized_logits, reparameterized_probs, score_offset
from ..graph import Graph
from ..hierarchy import Hierarchy
from ..io.files import atomic_csv, one_line
from ..methods import get_method
from ..solve import Solution, solve
from .differences import five_point_derivative
from .generators import generate, random_parents
from .isolation import IsolatedSolver, SolverFailed, describe, load_solver, returned_duals
from .structures import random_structure
from .timing import nan_max

__all__ = ["TOLERANCES", "CheckResult", "COLUMNS", "verify_instances", "random_instances", "load_solver",
           "solver_label", "backend_skips", "check_backends", "write_csv", "format_table", "all_passed", "KINDS",
           "QUICK_INSTANCES", "check_tolerances", "import_what_a_run_imports", "WARM_UP_INSTANCE"]

# Probabilities in float64 to 1e-6 (the reference's own accuracy is ~1e-9); duals are
# less well conditioned (small probabilities), 1e-4; objectives to 1e-8 (relative).
# The reference's maps lie within reference_stationarity of the maps its duals imply: a tenth of
# the primal tolerance, so that the reference's own error cannot decide a candidate's
# primal_vs_cvxpy row (measured 2e-10 to 7e-9 on the quick set's instances, a review).
TOLERANCES = {"primal": 1e-6, "duals": 1e-4, "gap": 1e-8, "kkt": 1e-6, "feasibility": 1e-6,
              "exact_kkt": 1e-9, "exact_feasibility": 1e-9, "reference": 1e-9, "reference_stationarity": 1e-7,
              "gradient": 1e-6}
# Gradients by five-point central differences (differences.five_point_derivative, step 1e-3)
# along a random direction, of the solution at tolerance _FD_TOL.  The plain central difference
# at step 1e-5 it replaced carried the solver's error over the step: 1.7e-6 relative on the
# default run's instance 9, where the implicit gradient was right to 3e-11.
_FD_TOL = 1e-12

# The rows of each part, so that a part that cannot run still lists what it did not check.
_SOLVER_CHECKS = ("primal_vs_cvxpy", "duals_vs_cvxpy", "primal_vs_layer", "duals_vs_layer", "duality_gap",
                  "kkt_stationarity", "feasibility")
_EXACT_CHECKS = ("primal_vs_cvxpy", "duals_vs_cvxpy", "primal_vs_layer", "duals_vs_layer", "kkt_stationarity",
                 "duality_gap", "feasibility")
_BACKEND_CHECKS = ("certificate", "stationarity", "primal_vs_cvxpy", "dual_gap_vs_cvxpy")
_GRADIENT_CHECKS = ("gradient_vs_fd", "temperature_gradient_vs_fd")

# The kinds of random instances, in the order they cycle: the chains (as before graphs existed,
# so the first six instances of a seed are unchanged), then every other structure family.
KINDS = ("2d-2lvl", "3d-2lvl", "irregular-3lvl", "2d-3lvl", "3d-3lvl", "irregular-2lvl", "star", "axial",
         "grid_regions", "mixed")
_FAMILIES = ("star", "axial", "grid_regions", "mixed")
#: ``verify --quick``: one small instance of every kind.
QUICK_INSTANCES = len(KINDS)


@dataclass
class CheckResult:
    """One check on one instance.  ``passed`` is ``status == "pass"``."""
    instance: int
    case: str
    check: str
    error: float
    tol: float
    passed: bool
    status: str = ""
    message: str = ""

    def __post_init__(self):
        if not self.status:
            self.status = "pass" if self.passed else "fail"
        self.passed = self.status == "pass"
        # one line, bounded: a reason may carry text the solver under test chose (a type's
        # name, its process's message), and a newline in it forged a line of the table
        self.message = one_line(self.message, 400)


COLUMNS = tuple(f.name for f in fields(CheckResult))


def random_instances(n: int, seed: int = 0, quick: bool = False):
    """``n`` instances cycling through :data:`KINDS` (chains, then a random graph of each
    structure family in turn); yields ``(name, h, scores, temps)``."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
        h: Graph
        if kind in _FAMILIES:
            h = random_structure(kind, g, quick)
        else:
            h = _irregular(kind, g, quick) if kind.startswith("irregular") else _grid(kind, pick, quick)
        batch = 2
        temps = (0.3 + 2.7 * torch.rand(h.num_maps, generator=g, dtype=torch.float64)).tolist()
        gen = "lesion" if i % 2 == 0 else "gaussian"  # lesion_scores falls back to gaussian on irregular chains
        scores = generate(gen, h, batch, seed=_score_seed(seed, i), scale=2.0)
        yield f"{kind} {'+'.join('x'.join(map(str, s)) for s in h.shapes)}", h, scores, temps


def _score_seed(seed: int, i: int) -> int:
    """The seed of instance ``i``'s scores: ``seed * 1000 + i`` for the first 1000 instances (the
    instances every run so far drew), a key of ``(seed, i)`` of its own beyond them.  ``seed * 1000 + i``
    alone gave instance 1000 + j of seed s the scores of instance j of seed s + 1 (536 of 1000
    instances of ``--seed 0 --n 2000`` and ``--seed 1 --n 1000`` had identical scores, ca_rev258), and
    torch keeps 32 bits of a seed: where ``seed * 1000 + i >= 2**32`` (``--seed`` 4294967 from instance
    296, every larger seed throughout) the scores differ from those before ca_rev258, whose wrapped keys
    repeated a smaller seed's (ca_rev259)."""
    if 0 <= i < 1000 and 0 <= seed * 1000 + i < 2 ** 32:
        return seed * 1000 + i
    return int(np.random.SeedSequence([seed % 2 ** 64, i, 258]).generate_state(1)[0])


def _grid(kind: str, pick, quick: bool) -> Hierarchy:
    if kind == "2d-2lvl":
        return Hierarchy.grid(pick([[(4, 4), (2, 2)], [(6, 4), (3, 2)]] if quick else
                                   [[(8, 8), (4, 4)], [(12, 8), (4, 4)], [(8, 6), (4, 3)]]))
    if kind == "2d-3lvl":
        return Hierarchy.grid(pick([[(4, 4), (2, 2), (1, 1)]] if quick else
                                   [[(8, 8), (4, 4), (2, 2)], [(12, 6), (6, 3), (2, 1)]]))
    if kind == "3d-2lvl":
        return Hierarchy.grid(pick([[(4, 4, 2), (2, 2, 1)]] if quick else [[(4, 4, 4), (2, 2, 2)]]))
    return Hierarchy.grid(pick([[(4, 2, 2), (2, 1, 1), (1, 1, 1)]] if quick else
                               [[(4, 4, 4), (2, 2, 2), (1, 1, 2)]]))


def _irregular(kind: str, g: torch.Generator, quick: bool) -> Hierarchy:
    sizes = ([10, 4] if kind == "irregular-2lvl" else [14, 5, 2]) if quick else \
        ([40, 9] if kind == "irregular-2lvl" else [48, 12, 3])
    return Hierarchy.from_parents(sizes, random_parents(sizes, g))


# Row prefixes the built-in parts use (``info``: measurements, not checks); a user's solver with
# one of these names is renamed.
_RESERVED = ("dual", "exact", "reference", "cvxpylayers", "info")


def solver_label(fn: Callable | IsolatedSolver | str | None) -> str:
    """The row prefix of a dual solver: ``"dual"`` for the built-in one, else the
    function's name (an :class:`IsolatedSolver`'s, or ``fn`` itself when it is a name;
    ``"user:<name>"`` where it would clash with a built-in part)."""
    if fn is None:
        return "dual"
    if isinstance(fn, IsolatedSolver):
        fn = fn.name
    raw = fn if isinstance(fn, str) else getattr(fn, "__name__", "") or type(fn).__name__
    name = str(raw).strip("<>")  # "<lambda>" -> "lambda"
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "custom"
    return f"user:{name}" if name in _RESERVED or name.startswith("cvxpylayers") else name


def check_tolerances(tolerances: dict | None = None) -> dict:
    """:data:`TOLERANCES` with ``tolerances`` over them; ValueError, before any work, for a
    name that is not one of them (a misspelt one was ignored) or a value that is not a
    positive finite number (an infinite one passed every check)."""
    given = dict(tolerances or {})
    unknown = sorted(set(given) - set(TOLERANCES))
    if unknown:
        raise ValueError(f"tolerances: unknown name(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(TOLERANCES)}")
    out = dict(TOLERANCES)
    for name, value in given.items():
        try:  # numpy's floats too; an int too large for a float (10**400) is refused, not an OverflowError
            number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
        except OverflowError:
            number = math.nan
        if not 0 < number < math.inf:
            raise ValueError(f"tolerances: {name} must be a positive finite number, got {value!r}")
        out[name] = number
    return out


def check_backends(backends=None) -> list[str]:
    """The backends to verify: ``None`` -> every one that can run here; else each name is
    checked (ValueError for an unknown one or one listed twice, as bench's grid options
    refuse it; ``BackendUnavailable`` with what to install for one that cannot run)."""
    if backends is None:
        return available_backends()
    names = [get_backend(b).name for b in backends]
    twice = next((b for i, b in enumerate(names) if b in names[:i]), None)
    if twice is not None:
        raise ValueError(f"{twice} listed twice; list each backend once")
    return names


def backend_skips(backends=None) -> list[str]:
    """One line per backend that is not verified because it cannot run here (only when
    ``backends`` is ``None``, i.e. every installed one was asked for)."""
    if backends is not None:
        return []
    lines = []
    for name in BACKENDS:
        reason = backend_unavailable_reason(name)
        if reason is not None:
            lines.append(f"skipped cvxpylayers[{name}]: {reason} (not a failure; no check of it ran)")
    return lines


def _default_dual_solver(scores, h, temps):
    return solve(scores, h, "dual", temperature=temps, tol=1e-11, max_iter=20000).duals


def kkt_residual(probs, duals, scores, h: Graph, temps) -> float:
    """Stationarity of the Lagrangian: ``r_k = η_k(λ) − τ_k log p_k`` must be constant over
    the cells of each level.  Returns ``max_k max_i p_k(i) |r_k(i) − Σ_j p_k(j) r_k(j)|``
    (weighted by ``p`` so that vanishing probabilities, whose logarithm is ill-determined,
    do not dominate).  Taken on the scores centred per map: a constant per map moves neither
    the solution nor ``r_k − <p_k, r_k>``, and a constant of 1e8 left its rounding there,
    failing right solutions (a review)."""
    etas = reparameterized_logits(centred_scores(scores), duals, h)
    worst = 0.0
    for eta, p, t in zip(etas, probs, temps):
        p = p.reshape(eta.shape).clamp(min=0)
        r = eta - t * torch.log(p.clamp(min=1e-300))
        mean = (p * r).flatten(1).sum(1).view((-1,) + (1,) * (r.dim() - 1))
        worst = nan_max([worst, float((p * (r - mean).abs()).max())])
    return worst


def _max_abs(a, b) -> float:
    """The largest absolute difference between the tensors of ``a`` and ``b``, NaN (a
    failed check) when there is nothing to compare or the lists differ in length."""
    a, b = list(a), list(b)
    if not a or len(a) != len(b):
        return math.nan
    return nan_max(float((x.detach().reshape(x.shape[0], -1) - y.detach().reshape(y.shape[0], -1)).abs().max())
                   for x, y in zip(a, b))


class _Rows:
    """The rows of one instance: each check added once, with its status."""

    def __init__(self, results: list, index: int, case: str):
        self.results, self.index, self.case = results, index, case

    def add(self, check: str, err, t, status: str = "", message: str = "") -> None:
        # a NaN error fails (NaN <= t is False)
        self.results.append(CheckResult(self.index, self.case, check, float(err), float(t), bool(err <= t), status,
                                        message))

    def broke(self, part: str, checks, exc: BaseException | str) -> None:
        """``part`` raised (or failed for the reason ``exc``): one error row, and its checks
        listed as not run (no error, no tolerance: docs/results_format.md)."""
        why = exc if isinstance(exc, str) else describe(exc)
        self.add(f"{part}.run", math.nan, math.nan, "error", why)
        for c in checks:
            self.add(f"{part}.{c}", math.nan, math.nan, "skipped", f"not run: {part} {why}")


@dataclass
class _Reference:
    """The plain CVXPY solve of one instance: probabilities, duals, ``f*``, and ``max(1, |f̄*|)``
    per sample (``f̄*``: ``f*`` of the scores centred per map, ``dual.score_offset``), the
    normaliser of the relative measures as in ``cvx.certificate``."""

    probs: list
    duals: list
    f_star: torch.Tensor  # f̄*: at the scores centred per map (less their mean per sample), as gaps compare it
    normaliser: torch.Tensor

    @property
    def scale(self) -> float:
        """The largest normaliser of the batch: what the distance bounds use."""
        return float(self.normaliser.max())


def verify_instances(instances, dual_solver: Callable | IsolatedSolver | None = None, tolerances: dict | None = None,
                     progress: bool = True, backends=None, solver_name: str | None = None) -> list[CheckResult]:
    """Run every check on every instance; returns one :class:`CheckResult` per check.

    Args:
        instances: ``(name, h, scores, temps)`` tuples (:func:`random_instances`).
        dual_solver: ``(scores, h, temps) -> duals``, called in this process (trusted
            code: see the module docstring; it gets copies of the instance, before its
            reference is computed), or an :class:`~.isolation.IsolatedSolver` (started;
            its own process, a timeout per instance: what it returns cannot fool the
            checks); default: the built-in ``"dual"`` method at ``tol=1e-11``.  Whatever
            it raises (``sys.exit`` and every other ``BaseException`` included, except a
            ``KeyboardInterrupt`` in this process, which is Ctrl-C and stops the run), a
            return value that is not one real floating tensor per edge of the documented
            shape, and, isolated, an ended, crashed, killed or late process become a
            failed ``<label>.run`` row with the reason, and its checks are listed as skipped.
        backends: the ``cvxpylayers`` backends to check (:func:`check_backends`).
        solver_name: the rows' prefix for ``dual_solver`` (default :func:`solver_label`).
    """
    tol = check_tolerances(tolerances)
    backends = check_backends(backends)  # before any work
    if dual_solver is not None and not (callable(dual_solver) or isinstance(dual_solver, IsolatedSolver)):
        raise TypeError(f"dual_solver must be a function (scores, h, temps) -> duals or an IsolatedSolver, got "
                        f"{type(dual_solver).__name__}")
    return _run_checks(instances, dual_solver, tol, progress, backends, solver_name)


#: The ``instance`` of a warm-up row (:func:`import_what_a_run_imports`) in ``verify.csv``.
WARM_UP_INSTANCE = -1


def import_what_a_run_imports(backends) -> list[CheckResult]:
    """Run every check once, silently, on one small instance with the built-in solver:
    CVXPY, cvxpylayers' interfaces and the backends' solvers import parts of themselves on
    first use, which must happen before a verified solver's code runs (it could rewrite them
    first; an adversarial review found seven such modules).  Returns the checks that failed,
    raised or did not run there (``instance`` :data:`WARM_UP_INSTANCE`, ``case`` prefixed
    ``warm-up:``), for the run to report as its own: a backend that fails only on its first
    call in a process would otherwise fail here unseen and pass in the run (the layer, solved
    beside the checks when ``backends`` does not name it, leaves only ``skipped`` rows where
    it fails: a review).  The checks that passed, and the ``info`` rows, are dropped (the run
    repeats them)."""
    rows = _run_checks(list(random_instances(1, seed=0, quick=True)), None, check_tolerances(None), False,
                       check_backends(backends), None)
    clear_cache()  # the run builds its own layers, as without this: a failure there is the run's to report
    return [replace(r, instance=WARM_UP_INSTANCE, case=f"warm-up: {r.case}") for r in rows
            if r.status not in ("pass", "info")]


def _run_checks(instances, dual_solver, tol: dict, progress: bool, backends: list, solver_name) -> list[CheckResult]:
    """:func:`verify_instances` once its arguments are checked."""
    from tqdm.auto import tqdm

    label = solver_name or solver_label(dual_solver)
    builtin = dual_solver is None
    dual_solver = dual_solver or _default_dual_solver
    cvx_method = get_method("cvxpylayers").name
    results: list[CheckResult] = []
    instances = list(instances)
    for i, (name, h, scores, temps) in enumerate(tqdm(instances, desc="verify", disable=not progress)):
        rows = _Rows(results, i, name)
        # the solver under test first: while it runs, no reference of this instance exists
        found = _run_dual_solver(dual_solver, h, scores, temps)
        ref = _reference(rows, h, scores, temps, tol)
        closed_form = get_method("exact").accepts(h)
        if ref is None:  # every comparison needs it; the gradients' finite differences do not
            if isinstance(found, str):  # the solver failed whatever the reference did: its error row stays
                rows.broke(label, (), found)
            for part, checks in [(label, _SOLVER_CHECKS)] + ([("exact", _EXACT_CHECKS)] if closed_form else []) + \
                    [(f"{cvx_method}[{b}]", _BACKEND_CHECKS) for b in backends]:
                for c in checks:
                    rows.add(f"{part}.{c}", math.nan, math.nan, "skipped", "not run: the CVXPY reference failed")
        else:
            layer = _Layer(*_check_backends(rows, h, scores, temps, ref, backends, tol), tol["primal"])
            if layer.solution is not None:
                # The layer is certified to its own certificate, which on some instances allows a
                # few 1e-6 in probabilities (Clarabel's regularisation): held to what it promises.
                cert = _backend_certificate(h, temps, _flat(scores), layer.solution)
                layer.tol = max(layer.tol, math.sqrt(2 * cert * ref.scale / min(temps)) + cert)
            _check_dual_solver(rows, label, found, h, scores, temps, ref, layer, tol)
            if closed_form:  # the closed form exists on forests only
                _check_exact(rows, h, scores, temps, ref, layer, tol)
        if builtin:
            _check_gradients(rows, h, scores, temps, tol, DEFAULT_BACKEND in backends, seed=i)
    return results


@dataclass
class _Layer:
    """The default backend's solution ("the layer"), why it is missing, and the tolerance
    its own certificate allows."""

    solution: Solution | None
    error: str | None
    tol: float


def _flat(scores) -> list:
    B = scores[0].shape[0]
    return [s.reshape(B, -1) for s in scores]


def _reference(rows: _Rows, h: Graph, scores, temps, tol: dict) -> _Reference | None:
    """The plain CVXPY reference, certified by its own certificate (primal residual and
    relative duality gap, the test every backend passes), whatever Clarabel's status label;
    ``None`` (and an error row) when it fails."""
    B = scores[0].shape[0]
    flat = _flat(scores)
    try:
        layer = get_layer(h, temps)
        refs = [layer.reference_solve([s[b].reshape(-1).numpy() for s in scores]) for b in range(B)]
        ref_p = [torch.from_numpy(np.stack([r[0][k] for r in refs])) for k in range(h.num_maps)]
        ref_d = [torch.from_numpy(np.stack([r[1][e] for r in refs])) for e in range(h.num_edges)]
        # f* evaluated here: CVXPY's value is -inf when a probability ends a hair below 0
        # at the scores centred per map: the reference maps' sums are one only to ~1e-13, and a
        # constant of 1e6 added to the scores carried that into f* (a correct solver failed the gap
        # row at 7e-8: a review); a constant per map moves no solution, and g and f alike
        f_star = metrics.objective(centred_scores(flat), ref_p, temps)
    except (SystemExit, Exception) as exc:
        rows.broke("reference", ("certificate", "stationarity"), exc)
        return None
    rows.add("reference.certificate", float(certificate(h, temps, flat, ref_p, ref_d).max()), tol["reference"])
    rows.add("reference.stationarity", _stationarity(h, temps, flat, ref_p, ref_d), tol["reference_stationarity"])
    normaliser = f_star.abs().clamp(min=1)
    return _Reference(ref_p, ref_d, f_star, normaliser)


def _check_backends(rows: _Rows, h: Graph, scores, temps, ref: _Reference, backends,
                    tol: dict) -> tuple[Solution | None, str | None]:
    """Every backend against the reference; returns the default backend's solution (the
    layer, solved here if it was not among ``backends``) and why it is missing."""
    cvx_method = get_method("cvxpylayers").name
    flat = _flat(scores)
    lay = None
    for backend in backends:
        part = f"{cvx_method}[{backend}]"
        try:
            with torch.no_grad():  # values only (Moreau builds a graph otherwise)
                sol = solve(scores, h, cvx_method, temperature=temps, backend=backend)
            # the threshold of the backend's default options, not what its solution reports
            accept = float(check_options({"backend": backend})["accept_tol"])
            if sol.duals is None:  # (a failure of this backend's row, as any other of its errors)
                raise ValueError("the layer returned no duals")
            cert = _backend_certificate(h, temps, flat, sol)
            distance = _stationarity(h, temps, flat, sol.probs, sol.duals)
            bound = math.sqrt(2 * accept * ref.scale / min(temps)) + accept
            centred = centred_scores(scores)
            gap = (metrics.dual_objective(centred, sol.duals, h, temps) - ref.f_star) / ref.normaliser
            checks = [("certificate", cert, accept), ("stationarity", distance, STATIONARITY_FACTOR * accept),
                      ("primal_vs_cvxpy", _max_abs(sol.probs, ref.probs), bound),
                      ("dual_gap_vs_cvxpy", float(gap.abs().max()), accept + tol["reference"])]
        except (SystemExit, Exception) as exc:
            rows.broke(part, _BACKEND_CHECKS, exc)
            continue
        for check, err, t in checks:
            rows.add(f"{part}.{check}", err, t)
        if backend == DEFAULT_BACKEND:
            lay = sol
    if lay is not None:
        return lay, None
    try:
        with torch.no_grad():
            return solve(scores, h, cvx_method, temperature=temps), None
    except (SystemExit, Exception) as exc:
        return None, f"not run: {cvx_method}[{DEFAULT_BACKEND}] {describe(exc)}"


@functools.lru_cache(maxsize=32)
def _dual_null_space(h: Graph) -> Tensor:
    """An orthonormal basis ``(n_duals, r)`` (float64) of the dual directions that move no map's
    logits beyond a constant per map: the per-edge constants, and on a graph with redundant
    constraints (two paths that pool alike, a cycle of partitions) the directions along which
    λ* is not unique (docs/math.md).  The map from duals to logits is formed densely: verify's
    instances are small."""
    sizes = [h.sizes[b] for _, b in h.edges]
    starts = [sum(h.sizes[:k]) for k in range(h.num_maps)]
    effect = torch.zeros(sum(h.sizes), sum(sizes), dtype=torch.float64)
    column = 0
    for e, (a, b) in enumerate(h.edges):
        cells = torch.arange(sizes[e])
        effect[starts[b] + cells, column + cells] += 1.0  # η_b gains λ_e
        parents = h.parents(e).reshape(-1)
        effect[starts[a] + torch.arange(h.sizes[a]), column + parents] -= 1.0  # η_a loses P_eᵀ λ_e
        column += sizes[e]
    for k in range(h.num_maps):  # a constant per map moves no map
        block = effect[starts[k]:starts[k] + h.sizes[k]]
        block -= block.mean(0, keepdim=True)
    _, singular, vh = torch.linalg.svd(effect, full_matrices=True)
    rank = int((singular > 1e-9 * float(singular.max())).sum()) if singular.numel() else 0
    return vh[rank:].T.contiguous()


def _dual_distance(duals, ref, h: Graph) -> float:
    """The largest absolute difference between two dual solutions less its part along
    :func:`_dual_null_space`: two optimal duals differ by such a direction (compared entry by
    entry, the duals of a correct solver failed on graphs with redundant constraints, which
    verify draws: its own solver at ``--quick --seed 10``, ca_rev165); where the duals are unique
    up to the per-edge constants it is the entrywise difference of the centred duals.  NaN (a
    failed check) when there is nothing to compare or the lists differ in length."""
    a, b = list(duals), list(ref)
    if not a or len(a) != len(b):
        return math.nan
    diff = torch.cat([x.detach().double().reshape(x.shape[0], -1) - y.detach().double().reshape(y.shape[0], -1)
                      for x, y in zip(a, b)], 1)
    if not bool(torch.isfinite(diff).all()):
        return math.nan
    null = _dual_null_space(h)
    return float((diff - (diff @ null) @ null.T).abs().max())


def _compare(rows: _Rows, part: str, probs, duals, ref: _Reference, layer: _Layer, tol: dict, h: Graph) -> None:
    """The rows shared by the dual solver and the closed form."""
    rows.add(f"{part}.primal_vs_cvxpy", _max_abs(probs, ref.probs), tol["primal"])
    rows.add(f"{part}.duals_vs_cvxpy", _dual_distance(duals, ref.duals, h), tol["duals"])
    if layer.solution is None:
        rows.add(f"{part}.primal_vs_layer", math.nan, math.nan, "skipped", layer.error or "")
        rows.add(f"{part}.duals_vs_layer", math.nan, math.nan, "skipped", layer.error or "")
    else:
        rows.add(f"{part}.primal_vs_layer", _max_abs(probs, layer.solution.probs), layer.tol)
        rows.add(f"{part}.duals_vs_layer", _dual_distance(duals, layer.solution.duals, h), tol["duals"])


def _run_dual_solver(dual_solver, h: Graph, scores, temps) -> tuple[list, list] | str:
    """The dual solver under test on one instance (the user's code: anything may come out
    of it): its centred duals and ``p(λ)``, or why it failed, in one line."""
    B = scores[0].shape[0]
    try:
        found = _solver_duals(dual_solver, scores, h, temps)
        lam = [torch.from_numpy(d) for d in found]
        lam = [d - d.reshape(B, -1).mean(1).view((B,) + (1,) * (d.dim() - 1)) for d in lam]
        return lam, reparameterized_probs(scores, lam, h, temps)
    except SolverFailed as exc:
        return str(exc)
    except (SystemExit, Exception) as exc:
        return describe(exc)


def _check_dual_solver(rows: _Rows, label: str, found: tuple[list, list] | str, h: Graph, scores, temps,
                       ref: _Reference, layer: _Layer, tol: dict) -> None:
    """The rows of the dual solver under test, from what :func:`_run_dual_solver` found."""
    if isinstance(found, str):
        rows.broke(label, _SOLVER_CHECKS, found)
        return
    lam, p_dual = found
    _compare(rows, label, p_dual, lam, ref, layer, tol, h)
    gap = (metrics.dual_objective(centred_scores(scores), lam, h, temps) - ref.f_star) / ref.normaliser
    rows.add(f"{label}.duality_gap", float(gap.abs().max()), tol["gap"])
    rows.add(f"{label}.kkt_stationarity", kkt_residual(ref.probs, lam, scores, h, temps), tol["kkt"])
    rows.add(f"{label}.feasibility", float(metrics.violation(p_dual, h).max()), tol["feasibility"])


def _solver_duals(dual_solver, scores, h: Graph, temps) -> list:
    """The duals of one instance as float64 arrays (:func:`~.isolation.returned_duals`);
    SolverFailed with the reason otherwise.  A callable gets copies of the instance: what
    it does to them does not reach the problem the verifier checks."""
    if isinstance(dual_solver, IsolatedSolver):
        return dual_solver.solve(scores, h, temps)
    try:
        raw = dual_solver([s.detach().clone() for s in scores], copy.deepcopy(h), [float(t) for t in temps])
    except KeyboardInterrupt:
        raise  # in this process, Ctrl-C cannot be told from the solver's own: the run stops
    except BaseException as exc:  # noqa: BLE001 - sys.exit, GeneratorExit, ...: a failed row
        raise SolverFailed(describe(exc)) from None
    try:
        return returned_duals(raw, h, scores[0].shape[0])
    except ValueError as err:
        raise SolverFailed(str(err)) from None
    except Exception as exc:  # noqa: BLE001 - what it returned misbehaved when read
        raise SolverFailed(f"returned a value that {describe(exc)} when read") from None


def _check_exact(rows: _Rows, h: Graph, scores, temps, ref: _Reference, layer: _Layer, tol: dict) -> None:
    """The closed form against the reference and the layer, and its own optimality."""
    try:
        ex = solve(scores, h, "exact", temperature=temps)
    except (SystemExit, Exception) as exc:
        rows.broke("exact", _EXACT_CHECKS, exc)
        return
    _compare(rows, "exact", ex.probs, ex.duals, ref, layer, tol, h)
    rows.add("exact.kkt_stationarity", kkt_residual(ex.probs, ex.duals, scores, h, temps), tol["exact_kkt"])
    # relative to max(1, |f̄|), f̄ the objective of the centred scores, as the solver's row and
    # cvx.certificate: a constant added to a map's scores moves no solution and must not shrink it
    scale = (ex.objective - score_offset(_flat(scores))).abs().clamp(min=1)
    # (no duals, no gap: NaN, which fails)
    gap = math.nan if ex.dual_objective is None else float(((ex.dual_objective - ex.objective) / scale).abs().max())
    rows.add("exact.duality_gap", gap, tol["gap"])
    rows.add("exact.feasibility", float(ex.violation.max()), tol["exact_feasibility"])


def _check_gradients(rows: _Rows, h: Graph, scores, temps, tol: dict, report_layer: bool, seed: int) -> None:
    """The implicit gradients of the built-in ``"dual"`` method against five-point central
    differences of its solution (step 1e-3), along a random direction of the scores and one of the
    temperatures, for the loss ``Σ_k <w_k, p_k>`` with random ``w``; relative error
    ``|analytic − fd| / max(|analytic|, |fd|, 1e-8)``.  With ``report_layer``, the default
    cvxpylayers backend's gradient along the same score direction is reported (``info``)."""
    g = torch.Generator().manual_seed(7919 + seed)
    weights = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]
    direction = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]
    tau_direction = torch.tensor(temps, dtype=torch.float64) * (torch.rand(len(temps), generator=g,
                                                                            dtype=torch.float64) - 0.5)

    def loss(s, t, method="dual"):
        # (cvxpylayers' own derivative, reported as information: unchecked)
        options = {"tol": _FD_TOL, "max_iter": 20000} if method == "dual" else {"backend": DEFAULT_BACKEND,
                                                                                 "check_gradient": False}
        sol = solve(s, h, method, temperature=t, **options)
        return sum((p * w).sum() for p, w in zip(sol.probs, weights))

    def relative(a: float, b: float) -> float:
        return abs(a - b) / max(abs(a), abs(b), 1e-8)

    tau = torch.tensor(temps, dtype=torch.float64)
    try:
        x = [s.detach().clone().requires_grad_() for s in scores]
        t = tau.clone().requires_grad_()
        grads = torch.autograd.grad(loss(x, t), x + [t])
        along_scores = float(sum((gr * d).sum() for gr, d in zip(grads[:-1], direction)))
        along_tau = float((grads[-1] * tau_direction).sum())
        with torch.no_grad():
            fd_scores = five_point_derivative(
                lambda e: float(loss([s + e * d for s, d in zip(scores, direction)], tau)))
            fd_tau = five_point_derivative(lambda e: float(loss(list(scores), tau + e * tau_direction)))
    except (SystemExit, Exception) as exc:
        rows.broke("dual", _GRADIENT_CHECKS, exc)
        return
    rows.add("dual.gradient_vs_fd", relative(along_scores, fd_scores), tol["gradient"])
    rows.add("dual.temperature_gradient_vs_fd", relative(along_tau, fd_tau), tol["gradient"])
    if not report_layer:
        return
    part = f"info.{get_method('cvxpylayers').name}[{DEFAULT_BACKEND}].gradient_vs_fd"
    try:
        x = [s.detach().clone().requires_grad_() for s in scores]
        layer_grads = torch.autograd.grad(loss(x, list(temps), "cvxpylayers"), x)
        along = float(sum((gr * d).sum() for gr, d in zip(layer_grads, direction)))
    except (SystemExit, Exception) as exc:
        rows.add(part, math.nan, math.nan, "info", f"not a check: the layer's backward {describe(exc)}")
        return
    rows.add(part, relative(along, fd_scores), math.nan, "info",
             "cvxpylayers' own gradient against the same finite differences (not a check)")


def _flat64(tensors, batch: int) -> list:
    """Each of ``tensors`` detached, ``(batch, n)`` in float64: how the certificate and the
    stationarity read a solution."""
    return [t.detach().reshape(batch, -1).to(torch.float64) for t in tensors]


def _stationarity(h: Graph, temps, flat_scores, probs, duals) -> float:
    """The largest :func:`~convex_attention.metrics.stationarity` over the batch (NaN kept: a
    failed check), on the scores centred per map as the layer's acceptance takes it."""
    B = flat_scores[0].shape[0]
    distance = metrics.stationarity(centred_scores(flat_scores), _flat64(probs, B), _flat64(duals, B), h.flat(),
                                    temps)
    return nan_max(float(x) for x in distance)


def _backend_certificate(h: Graph, temps, flat_scores, sol) -> float:
    B = flat_scores[0].shape[0]
    return float(certificate(h, temps, flat_scores, _flat64(sol.probs, B), _flat64(sol.duals, B)).max())


def all_passed(results: list[CheckResult]) -> bool:
    """True only when there are checks and every one ran and passed (``info`` rows are
    reported measurements, not checks)."""
    checks = [r for r in results if r.status != "info"]
    return bool(checks) and all(r.status == "pass" for r in checks)


def format_table(results: list[CheckResult], skipped: Sequence[str] = ()) -> str:
    """The results as a text table, one row per check, then the skipped backends and a
    summary line."""
    width = max([len("check")] + [len(r.check) for r in results]) + 2
    case_width = max([len("instance")] + [len(r.case) for r in results]) + 2
    word = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "skipped": "SKIPPED (not run)", "info": "reported"}
    lines = [f"{'#':>3}  {'instance':<{case_width}}{'check':<{width}}{'error':>11}{'tol':>11}  result"]
    for r in results:
        err = "nan" if math.isnan(r.error) else f"{r.error:.2e}"
        t = "-" if math.isnan(r.tol) else f"{r.tol:.2e}"  # derived ones are not round (1.48e-06)
        lines.append(f"{r.instance:>3}  {r.case:<{case_width}}{r.check:<{width}}{err:>11}{t:>11}  "
                     f"{word.get(r.status, r.status)}" + (f": {r.message}" if r.message else ""))
    lines += [f"verify: {line}" for line in skipped]
    counts = {s: sum(r.status == s for r in results) for s in ("fail", "error", "skipped")}
    passed = sum(r.status == "pass" for r in results)
    reported = sum(r.status == "info" for r in results)
    summary = f"{passed}/{len(results) - reported} checks passed" + (f" ({reported} measurements reported "
                                                                       f"beside them)" if reported else "")
    extra = [f"{n} {'FAILED' if s == 'fail' else s.upper() if s == 'error' else 'not run'}"
             for s, n in counts.items() if n]
    lines.append(summary + (", " + ", ".join(extra) if extra else ""))
    return "\n".join(lines)


def write_csv(results: list[CheckResult], path: str) -> None:
    """``verify.csv``: one row per check (:data:`COLUMNS`), written atomically."""
    atomic_csv(path, COLUMNS, [asdict(r) for r in results])
