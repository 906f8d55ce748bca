"""``convex-attention verify``: dual solutions checked against exact solvers.

On random instances (2-D/3-D grids, irregular partitions, 2–3 levels, temperatures in
[0.3, 3] that differ per level) the dual solver's ``λ`` and ``p(λ)`` are compared with

* a plain CVXPY solve (Clarabel, tolerances 1e-12; no cvxpylayers involved),
* the ``cvxpylayers`` layer,

and the closed form is compared with both.  Optimality is checked directly too: the
duality gap ``g(λ) − f*``, KKT stationarity (``p_k ∝ exp(η_k/τ_k)``, i.e. the reference
primal equals ``p(λ)``) and feasibility (``violation``).  Each check has its tolerance.

A user's own dual solver can be verified with ``dual_solver``: a callable
``(scores, h, temperatures) -> duals`` (``L-1`` tensors ``(B, *h.shapes[k+1])``).
"""
from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .. import metrics
from ..dual import reparameterized_probs
from ..hierarchy import Hierarchy
from ..solve import solve
from .generators import generate

__all__ = ["TOLERANCES", "CheckResult", "verify_instances", "random_instances", "load_solver", "write_csv",
           "format_table"]

# Probabilities in float64 to 1e-6 (the reference's own accuracy is ~1e-9); duals are
# less well conditioned (small probabilities), 1e-4; objectives to 1e-8 (relative).
TOLERANCES = {"primal": 1e-6, "duals": 1e-4, "gap": 1e-8, "kkt": 1e-6, "feasibility": 1e-6,
              "exact_kkt": 1e-9, "exact_feasibility": 1e-9, "reference": 1e-9}


@dataclass
class CheckResult:
    instance: int
    case: str
    check: str
    error: float
    tol: float
    passed: bool


def random_instances(n: int, seed: int = 0, quick: bool = False):
    """``n`` instances cycling through the kinds; yields ``(name, h, scores, temps)``."""
    g = torch.Generator().manual_seed(seed)
    kinds = ["2d-2lvl", "3d-2lvl", "irregular-3lvl", "2d-3lvl", "3d-3lvl", "irregular-2lvl"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
        h = _irregular(kind, g, quick) if kind.startswith("irregular") else _grid(kind, pick, quick)
        batch = 2
        temps = (0.3 + 2.7 * torch.rand(h.num_levels, generator=g, dtype=torch.float64)).tolist()
        gen = "lesion" if h.is_grid and i % 2 == 0 else "gaussian"
        scores = generate(gen, h, batch, seed=seed * 1000 + i, scale=2.0)
        yield f"{kind} {'+'.join('x'.join(map(str, s)) for s in h.shapes)}", h, scores, temps


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
    parents = []
    for n_fine, n_coarse in zip(sizes[:-1], sizes[1:]):
        par = torch.cat([torch.arange(n_coarse), torch.randint(0, n_coarse, (n_fine - n_coarse,), generator=g)])
        parents.append(par[torch.randperm(n_fine, generator=g)])
    return Hierarchy.from_parents(sizes, parents)


def load_solver(spec: str) -> Callable:
    """``module:function`` or ``path/to/file.py:function`` -> the callable."""
    if ":" not in spec:
        raise ValueError(f"--dual-solver must look like module:function or file.py:function, got {spec!r}")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        if not os.path.exists(target):
            raise ValueError(f"--dual-solver file {target!r} does not exist")
        module_spec = importlib.util.spec_from_file_location("user_dual_solver", target)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if not hasattr(module, name):
        raise ValueError(f"{target} has no function {name!r}")
    return getattr(module, name)


def _default_dual_solver(scores, h, temps):
    return solve(scores, h, "dual", temperature=temps, tol=1e-11, max_iter=20000).duals


def kkt_residual(probs, duals, scores, h: Hierarchy, temps) -> float:
    """Stationarity of the Lagrangian: ``r_k = η_k(λ) − τ_k log p_k`` must be constant over
    the cells of each level.  Returns ``max_k max_i p_k(i) |r_k(i) − Σ_j p_k(j) r_k(j)|``
    (weighted by ``p`` so that vanishing probabilities, whose logarithm is ill-determined,
    do not dominate)."""
    from ..dual import reparameterized_logits

    etas = reparameterized_logits(scores, duals, h)
    worst = 0.0
    for eta, p, t in zip(etas, probs, temps):
        p = p.reshape(eta.shape).clamp(min=0)
        r = eta - t * torch.log(p.clamp(min=1e-300))
        mean = (p * r).flatten(1).sum(1).view((-1,) + (1,) * (r.dim() - 1))
        worst = max(worst, float((p * (r - mean).abs()).max()))
    return worst


def _max_abs(a, b) -> float:
    return max(float((x.reshape(x.shape[0], -1) - y.reshape(y.shape[0], -1)).abs().max()) for x, y in zip(a, b))


def verify_instances(instances, dual_solver: Callable | None = None, tolerances: dict | None = None,
                     progress: bool = True) -> list[CheckResult]:
    """Run every check on every instance; returns one :class:`CheckResult` per check."""
    from tqdm.auto import tqdm

    from ..cvx import get_layer, primal_residual

    tol = {**TOLERANCES, **(tolerances or {})}
    dual_solver = dual_solver or _default_dual_solver
    results: list[CheckResult] = []
    instances = list(instances)
    for i, (name, h, scores, temps) in enumerate(tqdm(instances, desc="verify", disable=not progress)):
        B = scores[0].shape[0]
        layer = get_layer(h, temps)
        refs = [layer.reference_solve([s[b].reshape(-1).numpy() for s in scores]) for b in range(B)]
        ref_p = [torch.from_numpy(np.stack([r[0][k] for r in refs])) for k in range(h.num_levels)]
        ref_d = [torch.from_numpy(np.stack([r[1][k] for r in refs])) for k in range(h.num_levels - 1)]
        f_star = torch.tensor([r[2] for r in refs], dtype=torch.float64)
        lay = solve(scores, h, "cvxpylayers", temperature=temps)
        ex = solve(scores, h, "exact", temperature=temps)
        lam = [torch.as_tensor(d, dtype=torch.float64).reshape((B,) + h.shapes[k + 1])
               for k, d in enumerate(dual_solver(scores, h, temps))]
        lam = [d - d.reshape(B, -1).mean(1).view((B,) + (1,) * (d.dim() - 1)) for d in lam]
        p_dual = reparameterized_probs(scores, lam, h, temps)

        def add(check, err, t):
            results.append(CheckResult(i, name, check, err, t, bool(err <= t)))  # NaN fails

        # the reference earns trust by its own certificate, whatever Clarabel's status label
        ref_gap = (metrics.dual_objective([s.reshape(B, -1) for s in scores], ref_d, h.flat(), temps)
                   - metrics.objective([s.reshape(B, -1) for s in scores], ref_p, temps)).abs()
        add("reference.certificate", float(torch.maximum(primal_residual(h, ref_p), ref_gap).max()),
            tol["reference"])
        add("dual.primal_vs_cvxpy", _max_abs(p_dual, ref_p), tol["primal"])
        add("dual.duals_vs_cvxpy", _max_abs(lam, ref_d), tol["duals"])
        add("dual.primal_vs_layer", _max_abs(p_dual, lay.probs), tol["primal"])
        add("dual.duals_vs_layer", _max_abs(lam, lay.duals), tol["duals"])
        gap = (metrics.dual_objective(scores, lam, h, temps) - f_star) / f_star.abs().clamp(min=1)
        add("dual.duality_gap", float(gap.abs().max()), tol["gap"])
        add("dual.kkt_stationarity", kkt_residual(ref_p, lam, scores, h, temps), tol["kkt"])
        add("dual.feasibility", float(metrics.violation(p_dual, h).max()), tol["feasibility"])
        add("exact.primal_vs_cvxpy", _max_abs(ex.probs, ref_p), tol["primal"])
        add("exact.duals_vs_cvxpy", _max_abs(ex.duals, ref_d), tol["duals"])
        add("exact.primal_vs_layer", _max_abs(ex.probs, lay.probs), tol["primal"])
        add("exact.duals_vs_layer", _max_abs(ex.duals, lay.duals), tol["duals"])
        add("exact.kkt_stationarity", kkt_residual(ex.probs, ex.duals, scores, h, temps), tol["exact_kkt"])
        add("exact.duality_gap", float(((ex.dual_objective - ex.objective) / ex.objective.abs().clamp(min=1))
                                       .abs().max()), tol["gap"])
        add("exact.feasibility", float(ex.violation.max()), tol["exact_feasibility"])
    return results


def format_table(results: list[CheckResult]) -> str:
    lines = [f"{'#':>3}  {'instance':<28}{'check':<26}{'error':>11}{'tol':>9}  result"]
    for r in results:
        err = "nan" if math.isnan(r.error) else f"{r.error:.2e}"
        lines.append(f"{r.instance:>3}  {r.case:<28}{r.check:<26}{err:>11}{r.tol:>9.0e}  "
                     f"{'pass' if r.passed else 'FAIL'}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed}/{len(results)} checks passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)


def write_csv(results: list[CheckResult], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        for r in results:
            writer.writerow(asdict(r))
