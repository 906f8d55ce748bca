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
``cpu_only``              solves on the CPU in float64 whatever the input's device
``check_options``         ``fn(options, h)`` that validates option values before any work
                          (``None``: only the names are checked); the modules call it at
                          construction
========================  =================================================================

A method function has the signature
``fn(scores, h, temps, duals, options) -> (probs, duals | callable | None, info)`` and is
called by :func:`convex_attention.solve` after every input has been validated.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import cvx
from ._ops import level_softmax
from .dual import check_dual_options, solve_dual_method, solve_learned_dual
from .exact import solve_exact

__all__ = ["Method", "REGISTRY", "METHODS", "get_method", "register_method"]


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

    def check_option_names(self, options) -> None:
        """TypeError naming any option this method does not take (``options`` None: passed
        through to the solver, which checks them itself)."""
        if self.options is None:
            return
        unknown = set(options) - self.options
        if unknown:
            raise TypeError(f"method {self.name!r} takes no option(s) {sorted(unknown)}"
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
    # init depends on the batch: solve checks it with the scores
    static = {k: v for k, v in options.items() if k != "init"}
    check_dual_options(static, h, 1, None)


def _check_cvxpylayers_options(options, h):
    cvx.check_options(options)


def _cvxpylayers(scores, h, temps, duals, options):
    resolved = cvx.check_options(options)  # before any work; also names what was used
    probs, lam = cvx.solve_cvxpylayers(scores, h, temps, **options)
    return probs, lam, {"solver_options": dict(options), "backend": resolved["backend"].name,
                        "eps": resolved["eps"], "accept_tol": resolved["accept_tol"]}


for _record in (
    Method("softmax", _softmax, "every level on its own (no consistency; the usual attention)",
           has_duals=False, tensor_temperature=True),
    Method("exact", _exact, "the closed form of the tree problem; analytic backward",
           exact=True, consistent=True, tensor_temperature=True),
    Method("cvxpylayers", _cvxpylayers, "the CVXPY problem in a cvxpylayers layer (the slow reference)",
           options=None, exact=True, consistent=True, cpu_only=True, check_options=_check_cvxpylayers_options),
    Method("dual", _dual, "per-sample minimisation of the dual function to a tolerance",
           options=frozenset({"tol", "max_iter", "strict", "record_history", "init", "dtype"}),
           exact=True, consistent=True, check_options=_check_dual_options),
    Method("learned_dual", _learned_dual, "the paper's reparameterisation p(λ) at given duals",
           needs_duals=True, tensor_temperature=True),
):
    register_method(_record)

# The built-in methods' names (``REGISTRY`` also holds any registered later).
METHODS: tuple = tuple(REGISTRY)
