"""convex-attention: consistent multi-level attention from convex optimisation layers.

    import convex_attention as ca
    h = ca.Hierarchy.grid([(64, 64), (32, 32)])
    sol = ca.solve([theta0, theta1], h, method="exact")
    sol.probs, sol.duals, sol.violation, sol.objective, sol.dual_objective

    g = ca.Graph.from_edges([4096, 64, 64], [(0, 1, rows), (0, 2, cols)])   # a graph of maps
    sol = ca.solve([theta, theta_rows, theta_cols], g, method="dual")

See docs/design.md (§4) for the public API and docs/math.md for the mathematics.

The public names load on first use (a module ``__getattr__``): ``import convex_attention``
alone imports no torch, so the command line's ``--help`` stays fast; ``ca.solve`` and the
other names below import the core when first read.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the core module that defines it (docs/design.md §4)
_PUBLIC = {
    "SolverFailure": "cvx",
    "ConvergenceError": "dual",
    "TemperatureGradientWarning": "dual",
    "Graph": "graph",
    "ImplicitSolveError": "hessian",
    "Hierarchy": "hierarchy",
    "METHODS": "methods", "REGISTRY": "methods", "Method": "methods", "get_method": "methods",
    "register_method": "methods",
    "AmortisedDuals": "nn", "Attended": "nn", "ConsistentAttention": "nn", "LearnedDuals": "nn", "ScoreHead": "nn",
    "fit_amortised_duals": "nn",
    "Solution": "solve", "StaleSolution": "solve", "consistency_loss": "solve", "solve": "solve",
}

__all__ = ["Hierarchy", "Graph", "ImplicitSolveError", "solve", "Solution", "consistency_loss", "METHODS",
           "LearnedDuals", "ConsistentAttention", "ScoreHead", "ConvergenceError", "SolverFailure", "__version__",
           "Method", "REGISTRY", "get_method", "register_method", "AmortisedDuals", "Attended",
           "fit_amortised_duals", "StaleSolution", "TemperatureGradientWarning"]

if TYPE_CHECKING:  # what type checkers and editors see: the same names, imported eagerly
    from .cvx import SolverFailure
    from .dual import ConvergenceError, TemperatureGradientWarning
    from .graph import Graph
    from .hessian import ImplicitSolveError
    from .hierarchy import Hierarchy
    from .methods import METHODS, REGISTRY, Method, get_method, register_method
    from .nn import AmortisedDuals, Attended, ConsistentAttention, LearnedDuals, ScoreHead, fit_amortised_duals
    from .solve import Solution, StaleSolution, consistency_loss, solve


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # read once: later reads are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module type: importing a submodule binds it to the package's attribute
    of its name, and the public function ``solve`` shares its name with the submodule
    ``solve.py``; the public name keeps it (as when the package imported it eagerly)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


class _BaselinesBeside:
    """Finds ``convex_attention.baselines`` in the ``baselines/`` folder beside this package,
    for a source checkout run in place: that folder becomes the subpackage through setup.cfg's
    ``package_dir`` in an install alone, and the checkout's ``convex_attention/``, first on the
    path, hid the installed one (tests and ``explain`` failed to import it: ca_rev121).  Asked
    first, for this name alone: the folder beside the package imported, not one an editable
    install's finder maps to another checkout (ca_rev122); an install holds its own copy, and
    then this finder is not added."""

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, name: str, path=None, target=None):
        if name != f"{__name__}.baselines":
            return None
        import importlib.util
        import os

        package = sys.modules.get(__name__)  # (only for the package this finder came with: ca_rev124)
        here = os.path.dirname(os.path.abspath(getattr(package, "__file__", "") or ""))
        if os.path.join(os.path.dirname(here), "baselines") != self.folder:
            return None

        return importlib.util.spec_from_file_location(name, os.path.join(self.folder, "__init__.py"),
                                                      submodule_search_locations=[self.folder])


def _find_baselines_beside() -> None:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    beside = os.path.join(os.path.dirname(here), "baselines")
    if not os.path.isdir(os.path.join(here, "baselines")) and os.path.isfile(os.path.join(beside, "__init__.py")) \
            and not any(isinstance(f, _BaselinesBeside) and f.folder == beside for f in sys.meta_path):
        sys.meta_path.insert(0, _BaselinesBeside(beside))


_find_baselines_beside()
