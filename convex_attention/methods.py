r"""The method registry: one record per way of solving the problem, the one home of "method".

Every part of the toolkit (``solve``, the modules, the models, the benchmark harness and
the command line) asks this registry what a method is and can do, instead of comparing
method names.  A record holds the method's function and its facts:

========================  =================================================================
``options``               the option names ``solve(..., **options)`` accepts (``None``: the
                          solver validates them itself)
``needs_duals``           ``solve`` must be given ``duals`` (the reparameterisation)
``has_duals``             the :class:`~convex_attention.Solution` carries duals
``differentiable``        gradients flow to the scores (and to ``duals`` where needed)
``exact``                 the result is the optimum of the problem (to a tolerance)
``consistent``            the result satisfies ``P_k p_k = p_{k+1}`` (to a tolerance)
``tensor_temperature``    a temperature tensor that requires grad is differentiated through
``cpu_only``              solves in float64 on the CPU, whatever the input's device, unless a
                          backend built for CUDA is installed (cvxpylayers: cvx.solve_device)
``check_options``         ``fn(options, h)`` that validates option values before any work
                          (``None``: only the names are checked); the modules call it at
                          construction
``given_maps``            maps whose probabilities are given (``solve(..., given=...)``) are
                          accepted
``implied_masks``         with ``check_finite=False``, ``solve`` first masks the cells that
                          pooling rules out (:func:`~convex_attention.dual.with_implied_masks`):
                          the method's own arithmetic would give them mass (``"exact"``
                          finds them itself, at no pass over the fine maps)
``second_order``          its backward is itself differentiable (``create_graph=True`` gives
                          second derivatives); for an ``exact`` method without it, the
                          Solution's ``objective`` and ``dual_objective`` take their first
                          derivatives from the envelope theorem (``p``, ``H(p)``) at the solution
``func_transforms``       ``torch.func.grad``, ``jacrev`` and ``jvp`` differentiate it (plain torch
                          operations); the others refuse every torch.func transform with an
                          error that says so, and ``vmap`` is refused for every method
``shape_tracing``         its forward is torch operations on the scores alone, so with
                          ``check_finite=False`` it runs on meta tensors (shapes without
                          values); ``solve`` refuses meta scores for the others, which solve
                          numerically on the values, before any work
``structures``            the most general structure the method solves, one of
                          :data:`~convex_attention.graph.KINDS`: ``"chain"`` (a hierarchy),
                          ``"forest"`` (every map has at most one coarsening) or ``"graph"``
                          (any consistency graph); ``solve`` and the modules refuse a
                          structure beyond it before any work, naming a method that can
========================  =================================================================

A method function has the signature
``fn(scores, h, temps, duals, options) -> (probs, duals | callable | None, info)`` and is
called by :func:`convex_attention.solve` after every input has been validated.  ``info`` is
a dict of the method's own diagnostics (``Solution.info``), or None for none (read as ``{}``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import cvx
from ._ops import level_softmax
from .dual import check_dual_options, solve_dual_method, solve_learned_dual
from .exact import solve_exact
from .graph import KINDS, Graph

__all__ = ["Method", "REGISTRY", "METHODS", "get_method", "register_method"]


def _kind(h: Graph) -> str:
    """``h.kind``, except that a chain not numbered as a hierarchy's (edge ``k = (k → k+1)``)
    counts as a forest: a method for chains indexes its maps and edges that way."""
    return "forest" if h.kind == "chain" and not h._index_chain else h.kind


@dataclass(frozen=True)
class Method:
    """What one method is and can do (see the module docstring)."""

    name: str
    function: Callable
    description: str
    options: frozenset | None = frozenset()
    needs_duals: bool = False
    has_duals: bool = True
    differentiable: bool = True
    exact: bool = False
    consistent: bool = False
    tensor_temperature: bool = False
    cpu_only: bool = False
    check_options: Callable | None = None
    structures: str = "chain"
    given_maps: bool = False
    implied_masks: bool = False
    second_order: bool = False
    func_transforms: bool = False
    shape_tracing: bool = False

    def __post_init__(self) -> None:
        if self.structures not in KINDS:
            raise ValueError(f"Method {self.name!r}: structures must be one of {', '.join(KINDS)}, "
                             f"got {self.structures!r}")

    def accepts(self, h: Graph) -> bool:
        """True when the method solves structures like ``h`` (its kind is within :attr:`structures`).

        A method for chains is written for a hierarchy: level ``k`` pools onto level ``k + 1``
        through edge ``k``.  A chain numbered otherwise (coarsest first, or edges in another
        order) is therefore a forest to it, never handed over as a chain."""
        return KINDS.index(_kind(h)) <= KINDS.index(self.structures)

    def check_structure(self, h: Graph) -> None:
        """ValueError, before any work, when the method cannot solve ``h``: names why and a method that can."""
        if self.accepts(h):
            return
        # consistent methods first, the ones that run on the scores' device before the CPU references
        able = [m.name for m in sorted(REGISTRY.values(), key=lambda m: (not m.consistent, m.cpu_only))
                if m.accepts(h)]
        if h.kind == "graph":
            why = h.not_forest_reason()
        elif h.kind == "chain":
            why = (f"its edges {h.edges} are not numbered as a hierarchy's (edge k = (k → k+1), from the finest "
                   f"map: build it with Hierarchy, or number the maps finest first)")
        else:
            several = [k for k in range(h.num_maps) if len(h.in_edges[k]) > 1]
            why = (f"map {several[0]} has {len(h.in_edges[several[0]])} finer maps" if several else
                   f"it has {len(h.components)} separate components")
        raise ValueError(f"method {self.name!r} solves {self.structures}s only, and this structure is a "
                         f"{'chain numbered otherwise' if h.kind == 'chain' else h.kind}: "
                         f"{why}; use method " + " or ".join(repr(n) for n in able[:2]))

    def check_option_names(self, options) -> None:
        """TypeError naming any option this method does not take (``options`` None: passed
        through to the solver, which checks them itself)."""
        if self.options is None:
            return
        unknown = set(options) - self.options
        if unknown:
            raise TypeError(f"method {self.name!r} takes no option(s) {sorted(unknown, key=repr)}"
                            + (f"; it accepts {sorted(self.options)}" if self.options else ""))


REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add (or replace) a method; ``solve`` and every command see it at once."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method record, got {type(method).__name__}")
    REGISTRY[method.name] = method
    return method


def get_method(name) -> Method:
    """The record of ``name``; ValueError naming the choices for an unknown one."""
    if isinstance(name, Method):
        return name
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _softmax(scores, h, temps, duals, options):
    return [level_softmax(s, t) for s, t in zip(scores, temps)], None, {}


def _exact(scores, h, temps, duals, options):
    return solve_exact(scores, h, temps)


def _learned_dual(scores, h, temps, duals, options):
    return solve_learned_dual(scores, h, temps, duals)


def _dual(scores, h, temps, duals, options):
    return solve_dual_method(scores, h, temps, options)


def _check_dual_options(options, h):
    # the batch of init is checked with the scores, and its values, by the solver itself
    check_dual_options(options, h, None, None, init_values=False)


def _check_cvxpylayers_options(options, h):
    cvx.check_options(options)


def _cvxpylayers(scores, h, temps, duals, options):
    resolved = cvx.check_options(options)  # before any work; also names what was used
    probs, lam = cvx.solve_cvxpylayers(scores, h, temps, **options)
    return probs, lam, {"solver_options": dict(options), "backend": resolved["backend"].name,
                        "eps": resolved["eps"], "accept_tol": resolved["accept_tol"]}


for _record in (
    Method("softmax", _softmax, "every map on its own (no consistency; the usual attention)",
           has_duals=False, tensor_temperature=True, structures="graph", second_order=True, func_transforms=True,
           shape_tracing=True),
    Method("exact", _exact, "the closed form on a forest of maps; analytic backward",
           exact=True, consistent=True, tensor_temperature=True, structures="forest", second_order=True,
           shape_tracing=True),
    Method("cvxpylayers", _cvxpylayers, "the CVXPY problem in a cvxpylayers layer (the slow reference)",
           options=None, exact=True, consistent=True, cpu_only=True, check_options=_check_cvxpylayers_options,
           structures="graph"),
    Method("dual", _dual, "per-sample minimisation of the dual function to a tolerance; implicit backward",
           options=frozenset({"tol", "gap_tol", "max_iter", "strict", "record_history", "init", "newton",
                              "warm_start", "dtype"}),
           exact=True, consistent=True, tensor_temperature=True, check_options=_check_dual_options,
           structures="graph", given_maps=True),
    Method("learned_dual", _learned_dual, "the paper's reparameterisation p(λ) at given duals",
           needs_duals=True, tensor_temperature=True, structures="graph", implied_masks=True,
           second_order=True, func_transforms=True, shape_tracing=True),
):
    register_method(_record)

# The built-in methods' names (``REGISTRY`` also holds any registered later).
METHODS: tuple = tuple(REGISTRY)
