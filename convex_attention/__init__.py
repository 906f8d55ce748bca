"""convex-attention: consistent multi-level attention from convex optimisation layers.

    import convex_attention as ca
    h = ca.Hierarchy.grid([(64, 64), (32, 32)])
    sol = ca.solve([theta0, theta1], h, method="exact")
    sol.probs, sol.duals, sol.violation, sol.objective, sol.dual_objective

    g = ca.Graph.from_edges([4096, 64, 64], [(0, 1, rows), (0, 2, cols)])   # a graph of maps
    sol = ca.solve([theta, theta_rows, theta_cols], g, method="dual")

See docs/design.md (§4) for the public API and docs/math.md for the mathematics.
"""
from .cvx import SolverFailure
from .dual import ConvergenceError
from .graph import Graph
from .hessian import ImplicitSolveError
from .hierarchy import Hierarchy
from .methods import METHODS, REGISTRY, Method, get_method, register_method
from .nn import (
    AmortisedDuals,
    Attended,
    ConsistentAttention,
    LearnedDuals,
    ScoreHead,
    fit_amortised_duals,
)
from .solve import Solution, consistency_loss, solve

__version__ = "0.1.0"

__all__ = ["Hierarchy", "Graph", "ImplicitSolveError", "solve", "Solution", "consistency_loss", "METHODS",
           "LearnedDuals", "ConsistentAttention", "ScoreHead", "ConvergenceError", "SolverFailure", "__version__",
           "Method", "REGISTRY", "get_method", "register_method", "AmortisedDuals", "Attended",
           "fit_amortised_duals"]

