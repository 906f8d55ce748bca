import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import (
    ALL_CASES,
    flat_np,
    linear_loss_gradient,
    random_instance,
    reference_solve,
)

import convex_attention as ca
from convex_attention.cvx import (
    CvxpyAttentionLayer,
    SolverFailure,
    get_layer,
    solve_cvxpylayers,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("batch", [1, 4])
def test_cvxpylayers_matches_reference(case, batch):
    inst = random_instance(case, batch=batch, seed=20 + batch)
    sol = ca.solve(inst.scores, inst.h, "cvxpylayers", temperature=inst.temps)
    ref_p, ref_d, ref_v = reference_solve(inst.h, inst.scores, inst.temps)
    # held to its own solver tolerance (Clarabel, eps=1e-12): ~1e-9 on probabilities
    for got, want in zip(flat_np(sol.probs), ref_p):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    for got, want in zip(flat_np(sol.duals), ref_d):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(sol.objective.numpy(), ref_v, atol=1e-8)
    np.testing.assert_allclose(sol.dual_objective.numpy(), sol.objective.numpy(), atol=1e-8)


def test_scs_with_its_own_tolerance():
    inst = random_instance("2d-3lvl-unequal", batch=2, seed=1)
    sol = ca.solve(inst.scores, inst.h, "cvxpylayers", temperature=inst.temps, solve_method="SCS", eps=1e-10)
    exact = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    assert ca.metrics.max_abs_err(sol.probs, exact.probs).max() < 1e-6
    assert sol.info["solver_options"]["solve_method"] == "SCS"


def test_layer_is_built_once_per_hierarchy_and_temperatures():
    inst = random_instance("2d-2lvl", batch=1)
    a = get_layer(inst.h, inst.temps)
    b = get_layer(ca.Hierarchy.grid([(4, 4), (2, 2)]), list(inst.temps))
    c = get_layer(inst.h, [1.0, 1.0])
    assert a is b and a is not c
    assert isinstance(a, CvxpyAttentionLayer) and a.problem.is_dpp()


@pytest.mark.parametrize("case", ["2d-2lvl", "irregular-3lvl", "1d-3lvl"])
def test_gradient_matches_exact_with_tight_scs(case):
    inst = random_instance(case, batch=2, seed=3)
    w = [torch.randn_like(s) for s in inst.scores]
    g1 = linear_loss_gradient(inst, "cvxpylayers", w, solve_method="SCS", eps=1e-11)
    g2 = linear_loss_gradient(inst, "exact", w)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_float32_input_returns_float32_and_duals_in_gauge():
    inst = random_instance("3d-2lvl", batch=2, dtype=torch.float32)
    sol = ca.solve(inst.scores, inst.h, "cvxpylayers", temperature=inst.temps)
    assert all(p.dtype == torch.float32 for p in sol.probs) and sol.duals[0].dtype == torch.float32
    assert sol.duals[0].flatten(1).mean(1).abs().max() < 1e-6


@pytest.mark.parametrize("method, options, status", [
    ("SCS", {"max_iters": 2}, "optimal_inaccurate"),
    ("Clarabel", {"max_iters": 2}, "user_limit"),
])
def test_failed_solve_names_sample_and_status(method, options, status):
    inst = random_instance("2d-2lvl", batch=2, seed=4)
    with pytest.raises(SolverFailure, match=rf"sample 0: .*{method} status '{status}'"):
        ca.solve(inst.scores, inst.h, "cvxpylayers", temperature=inst.temps, solve_method=method, **options)


def test_inaccurate_scs_on_a_larger_problem_is_caught_by_the_duality_gap():
    """SCS reports success but stalls near 1e-5 on a few thousand cells: not silently accepted."""
    h = ca.Hierarchy.grid([(32, 32), (16, 16)])
    raised = 0
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        scores = [torch.randn((1,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
        try:
            probs, _ = solve_cvxpylayers(scores, h, [1.0, 1.0], solve_method="SCS", eps=1e-9)
        except SolverFailure as err:
            assert "duality gap" in str(err) and "sample 0" in str(err)
            raised += 1
            continue
        exact = ca.solve(scores, h, "exact")
        assert ca.metrics.max_abs_err(probs, exact.probs).max() < 1e-6, "accepted a wrong answer"
    assert raised >= 1  # seed 1 stalls at ~3e-5 (measured)


def test_unknown_solve_method():
    inst = random_instance("2d-2lvl", batch=1)
    with pytest.raises(ValueError, match="solve_method"):
        ca.solve(inst.scores, inst.h, "cvxpylayers", solve_method="ECOS")


def test_cvxpy_is_imported_lazily():
    code = ("import sys, torch, convex_attention as ca; "
            "h = ca.Hierarchy.grid([(4, 4), (2, 2)]); "
            "ca.solve([torch.randn(1, 4, 4), torch.randn(1, 2, 2)], h, 'exact'); "
            "assert 'cvxpy' not in sys.modules and 'cvxpylayers' not in sys.modules and 'diffcp' not in sys.modules; "
            "ca.solve([torch.randn(1, 4, 4), torch.randn(1, 2, 2)], h, 'cvxpylayers'); "
            "assert 'cvxpylayers' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("method", ["Clarabel", "SCS"])
def test_unknown_solver_option_is_a_clear_type_error(method):
    inst = random_instance("2d-2lvl", batch=1)
    with pytest.raises(TypeError, match=r"rejected the option\(s\) \['tolerance_typo'\]"):
        ca.solve(inst.scores, inst.h, "cvxpylayers", solve_method=method, tolerance_typo=1e-3)
