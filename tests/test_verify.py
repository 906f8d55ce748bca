import torch

import convex_attention as ca
from convex_attention.bench.verify import (
    kkt_residual,
    load_solver,
    random_instances,
    verify_instances,
)


def test_random_instances_cover_the_kinds():
    names = [name for name, *_ in random_instances(6, seed=0, quick=True)]
    assert {n.split()[0] for n in names} == {"2d-2lvl", "3d-2lvl", "irregular-3lvl", "2d-3lvl", "3d-3lvl",
                                             "irregular-2lvl"}
    temps = [t for *_, t in random_instances(6, seed=0, quick=True)]
    assert all(0.3 <= x <= 3.0 for ts in temps for x in ts) and any(len(set(ts)) > 1 for ts in temps)


def test_every_check_passes_for_the_builtin_dual_solver():
    results = verify_instances(random_instances(3, seed=2, quick=True), progress=False)
    assert results and all(r.passed for r in results)


def test_zero_duals_fail_stationarity_and_the_gap():
    bad = lambda scores, h, temps: [torch.zeros((scores[0].shape[0],) + s, dtype=torch.float64)  # noqa: E731
                                    for s in h.shapes[1:]]
    results = verify_instances(random_instances(2, seed=0, quick=True), dual_solver=bad, progress=False)
    failed = {r.check for r in results if not r.passed}
    assert {"dual.kkt_stationarity", "dual.duality_gap", "dual.feasibility", "dual.primal_vs_cvxpy"} <= failed


def test_kkt_residual_is_zero_at_the_exact_pair_only():
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 2, dtype=torch.float64)]
    sol = ca.solve(scores, h, "exact", temperature=[0.5, 2.0])
    assert kkt_residual(sol.probs, sol.duals, scores, h, [0.5, 2.0]) < 1e-12
    assert kkt_residual(sol.probs, [d + torch.randn_like(d) for d in sol.duals], scores, h, [0.5, 2.0]) > 1e-3


def test_load_solver_by_module_name():
    fn = load_solver("convex_attention.bench.verify:kkt_residual")
    assert fn is kkt_residual
