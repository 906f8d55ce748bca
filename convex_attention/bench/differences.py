"""Finite differences: the reference of the gradient checks of ``verify`` and of the graph
benchmark (one home, one step)."""
from __future__ import annotations

from collections.abc import Callable

__all__ = ["FD_STEP", "five_point_derivative", "five_point_with_spread"]

# The step of the five-point central difference (see five_point_derivative).
FD_STEP = 1e-3


def five_point_derivative(loss_at: Callable[[float], float], step: float = FD_STEP) -> float:
    """``(8 (L(h) − L(−h)) − (L(2h) − L(−2h))) / 12h``: truncation error O(h⁴), rounding
    O(eps·|L| / h) plus the solver's own error over ``h``.  At h = 1e-3 it beats the plain
    central difference at every step on the graph benchmark's instances (measured,
    docs/benchmarks.md "Gradients"): on a nearly degenerate one, whose directional derivative
    is 2e-8, the loss moves by only 1e-14 at step 1e-6.  And ``verify``'s central difference at
    step 1e-5 was off by 1.7e-6 (relative) on a mixed instance whose implicit gradient this
    rule confirms to 3e-11: the solver's 1e-12 tolerance, over a step of 1e-5."""
    return (8 * (loss_at(step) - loss_at(-step)) - (loss_at(2 * step) - loss_at(-2 * step))) / (12 * step)


def five_point_with_spread(loss_at: Callable[[float], float], step: float = FD_STEP) -> tuple[float, float]:
    """The five-point difference at ``step`` and its *spread*: how far the same difference at
    ``2 · step`` lies from it (``L`` evaluated once per point, six points).  Where the loss
    moves little along the direction, the solver's own error in ``L`` (a few units of
    rounding, which no step removes) is a large part of the difference: on the graph
    benchmark's degenerate mixed instance (directional derivative 2e-8 of a loss of 0.5)
    loss values 5e-15 apart moved the difference by 1e-4 relative.  An error against the
    difference that is within its spread is within what the reference can resolve."""
    seen: dict[float, float] = {}

    def at(x: float) -> float:
        if x not in seen:
            seen[x] = loss_at(x)
        return seen[x]

    fine, coarse = five_point_derivative(at, step), five_point_derivative(at, 2 * step)
    return fine, abs(fine - coarse)
