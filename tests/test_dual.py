import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    ALL_CASES,
    flat_np,
    linear_loss_gradient,
    pool_sum,
    random_instance,
    reference_solve,
)

import convex_attention as ca
from convex_attention.dual import (
    ConvergenceError,
    dual_function,
    reparameterized_probs,
    solve_dual,
)


@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("batch", [1, 4])
def test_dual_matches_reference(case, batch):
    inst = random_instance(case, batch=batch, seed=10 + batch)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-11, max_iter=20000)
    ref_p, ref_d, ref_v = reference_solve(inst.h, inst.scores, inst.temps)
    for got, want in zip(flat_np(sol.probs), ref_p):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    for got, want in zip(flat_np(sol.duals), ref_d):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(sol.dual_objective.numpy(), ref_v, atol=1e-8, rtol=0)
    assert (sol.violation <= 1e-11).all()
    assert sol.info["converged"].all() and (sol.info["iterations"] >= 1).all()


@pytest.mark.parametrize("case", ["2d-2lvl", "3d-3lvl", "irregular-3lvl"])
def test_dual_agrees_with_exact_at_default_tolerance(case):
    inst = random_instance(case, batch=4, seed=2)
    exact = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    dual = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps)
    assert (dual.violation <= 1e-6).all()
    assert ca.metrics.max_abs_err(dual.probs, exact.probs).max() < 1e-5
    gap = dual.dual_objective - exact.objective  # dual_gap >= 0, small
    assert (gap >= -1e-12).all() and (gap < 1e-8).all()


def test_two_levels_converge_in_one_sweep():
    inst = random_instance("2d-2lvl", batch=4, seed=5, scale=10.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12)
    assert sol.info["iterations"].tolist() == [1, 1, 1, 1]


def test_stops_at_tolerance_and_reports_iterations_and_history():
    inst = random_instance("2d-3lvl-unequal", batch=3, seed=1)
    loose = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-3, record_history=True)
    tight = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, record_history=True)
    assert (loose.info["iterations"] <= tight.info["iterations"]).all()
    assert (loose.info["iterations"] < tight.info["iterations"]).any()
    assert (loose.violation <= 1e-3).all() and (tight.violation <= 1e-10).all()
    hist = tight.info["history"]
    n = int(tight.info["iterations"].max()) + 1
    assert hist["violation"].shape == (n, 3) and hist["dual_objective"].shape == (n, 3)
    g = hist["dual_objective"]
    assert (g[1:] <= g[:-1] + 1e-12).all(), "exact block steps never increase the dual"


def test_not_converged_raises_naming_samples_or_warns():
    inst = random_instance("1d-3lvl", batch=3, seed=3, scale=8.0)
    with pytest.raises(ConvergenceError, match=r"sample\(s\) \[0, 1, 2\]"):
        ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-14, max_iter=1)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-14, max_iter=1, strict=False)
    assert not sol.info["converged"].any()


def test_dual_batched_equals_looped():
    inst = random_instance("3d-3lvl", batch=4, seed=4)
    batched = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-9)
    for b in range(4):
        single = ca.solve([s[b:b + 1] for s in inst.scores], inst.h, "dual", temperature=inst.temps, tol=1e-9)
        assert batched.info["iterations"][b] == single.info["iterations"][0]
        for x, y in zip(batched.probs, single.probs):
            torch.testing.assert_close(x[b:b + 1], y, atol=1e-13, rtol=0)


def test_dual_gradient_is_the_implicit_gradient():
    inst = random_instance("irregular-3lvl", batch=2, seed=6)
    w = [torch.randn_like(s) for s in inst.scores]
    g1 = linear_loss_gradient(inst, "dual", w, tol=1e-12)
    g2 = linear_loss_gradient(inst, "exact", w)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_dual_float32_input_is_solved_in_float64_and_returned_in_float32():
    inst = random_instance("2d-3lvl-unequal", batch=2, dtype=torch.float32, scale=20.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps)
    assert sol.probs[0].dtype == torch.float32 and sol.duals[0].dtype == torch.float32
    assert sol.info["converged"].all()


# ------------------------------------------------------------------ learned_dual

def test_learned_dual_gradcheck_scores_and_duals():
    inst = random_instance("2d-3lvl-unequal", batch=2, seed=7)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    duals = [torch.randn((1,) + s, dtype=torch.float64, requires_grad=True) for s in inst.h.shapes[1:]]

    def fn(*args):
        sc, du = list(args[: len(scores)]), list(args[len(scores):])
        return tuple(ca.solve(sc, inst.h, "learned_dual", temperature=inst.temps, duals=du).probs)

    assert torch.autograd.gradcheck(fn, (*scores, *duals))

    def loss(*args):
        sc, du = list(args[: len(scores)]), list(args[len(scores):])
        return ca.consistency_loss(sc, du, inst.h, temperature=inst.temps)

    assert torch.autograd.gradcheck(loss, (*scores, *duals))


def test_learned_dual_at_optimal_duals_is_exact():
    inst = random_instance("irregular-3lvl", batch=3, seed=8)
    exact = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    learned = ca.solve(inst.scores, inst.h, "learned_dual", temperature=inst.temps, duals=exact.duals)
    for a, b in zip(learned.probs, exact.probs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    loss = ca.consistency_loss(inst.scores, exact.duals, inst.h, temperature=inst.temps)
    assert abs(float(loss)) < 1e-12
    torch.testing.assert_close(learned.dual_objective, exact.objective)


def test_learned_dual_with_zero_duals_is_softmax():
    inst = random_instance("3d-2lvl", batch=2)
    zeros = [torch.zeros(s, dtype=torch.float64) for s in inst.h.shapes[1:]]
    learned = ca.solve(inst.scores, inst.h, "learned_dual", temperature=inst.temps, duals=zeros)
    soft = ca.solve(inst.scores, inst.h, "softmax", temperature=inst.temps)
    for a, b in zip(learned.probs, soft.probs):
        torch.testing.assert_close(a, b)
    assert soft.duals is None and soft.dual_objective is None


def test_paper_equivalence_two_levels_2x2_tau1():
    """The paper's formulas, written out independently (per-sample normalisation)."""
    g = torch.Generator().manual_seed(0)
    B = 3
    theta0 = torch.randn(B, 8, 8, generator=g, dtype=torch.float64)
    theta1 = torch.randn(B, 4, 4, generator=g, dtype=torch.float64)
    lam = torch.randn(4, 4, generator=g, dtype=torch.float64)
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])

    soft0 = torch.softmax(theta0.flatten(1), 1).view(B, 8, 8)
    soft1 = torch.softmax(theta1.flatten(1), 1).view(B, 4, 4)
    a = pool_sum(soft0, (2, 2)) * torch.exp(-lam)
    a = a / a.flatten(1).sum(1).view(B, 1, 1)
    b = soft1 * torch.exp(lam)
    b = b / b.flatten(1).sum(1).view(B, 1, 1)
    kl = (b * (b.log() - a.log())).flatten(1).sum(1).mean()
    ours = ca.consistency_loss([theta0, theta1], [lam], h)
    torch.testing.assert_close(ours, kl, atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(ours, F.kl_div(a.log().flatten(1), b.flatten(1), reduction="batchmean"))

    sol = ca.solve([theta0, theta1], h, "learned_dual", duals=[lam])
    up = lam.repeat_interleave(2, 0).repeat_interleave(2, 1)
    p0 = soft0 * torch.exp(-up)
    torch.testing.assert_close(sol.probs[0], p0 / p0.flatten(1).sum(1).view(B, 1, 1))
    torch.testing.assert_close(sol.probs[1], b)
    torch.testing.assert_close(ca.metrics.violation(sol.probs, h),
                               (pool_sum(sol.probs[0], (2, 2)) - b).abs().flatten(1).sum(1))


def test_consistency_loss_detach_target_and_batch_dual_shapes():
    inst = random_instance("2d-2lvl", batch=4)
    lam = torch.randn(1, 2, 2, dtype=torch.float64, requires_grad=True)
    s1 = inst.scores[1].clone().requires_grad_()
    loss = ca.consistency_loss([inst.scores[0], s1], [lam], inst.h, temperature=inst.temps, detach_target=True)
    loss.backward()
    assert s1.grad is None or s1.grad.abs().max() == 0
    # a per-sample dual (B, ...) is accepted and gives per-sample losses averaged
    per = [torch.randn(4, 2, 2, dtype=torch.float64)]
    total = ca.consistency_loss(inst.scores, per, inst.h, temperature=inst.temps)
    singles = [ca.consistency_loss([s[b:b + 1] for s in inst.scores], [per[0][b:b + 1]], inst.h,
                                   temperature=inst.temps) for b in range(4)]
    torch.testing.assert_close(total, torch.stack(singles).mean())


def test_dual_function_is_gauge_invariant_and_bounds_the_primal():
    inst = random_instance("2d-3lvl-unequal", batch=2, seed=9)
    lam = [torch.randn((2,) + s, dtype=torch.float64) for s in inst.h.shapes[1:]]
    shifted = [d + 3.7 for d in lam]
    torch.testing.assert_close(dual_function(inst.scores, lam, inst.h, inst.temps),
                               dual_function(inst.scores, shifted, inst.h, inst.temps))
    exact = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    assert (dual_function(inst.scores, lam, inst.h, inst.temps) >= exact.objective - 1e-12).all()
    probs = reparameterized_probs(inst.scores, lam, inst.h, inst.temps)
    assert all(torch.allclose(p.flatten(1).sum(1), torch.ones(2, dtype=torch.float64)) for p in probs)


def test_solve_dual_init_warm_start_converges_immediately():
    inst = random_instance("1d-3lvl", batch=2, seed=2)
    first = solve_dual(inst.scores, inst.h, inst.temps, tol=1e-10)
    again = solve_dual(inst.scores, inst.h, inst.temps, tol=1e-10, init=first["duals"])
    assert again["iterations"].max() <= 1
