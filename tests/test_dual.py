import contextlib
import inspect
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    ALL_CASES,
    FOREST_CASES,
    GRAPH_CASES,
    NONTREE_CASES,
    REFERENCE_ATOL,
    Instance,
    benchmark_instance,
    flat_np,
    linear_loss_gradient,
    make_graph,
    peaked_mixed_instances,
    pool_sum,
    random_graph_instance,
    random_instance,
    reference_solve,
    slow_beyond,
)

import convex_attention as ca
from convex_attention import given_maps
from convex_attention.dual import (
    ConvergenceError,
    _centred_scores,
    _conditionals,
    _rounding_squares,
    check_dual_options,
    dual_function,
    dual_probs,
    reparameterized_logits,
    reparameterized_probs,
    score_offset,
    solve_dual,
)
from convex_attention.hessian import ImplicitSolveError


@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("batch", [1, 4])
def test_dual_matches_reference(case, batch):
    inst = random_instance(case, batch=batch, seed=10 + batch)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-11, max_iter=20000)
    ref_p, ref_d, ref_v = reference_solve(inst.h, inst.scores, inst.temps)
    for got, want in zip(flat_np(sol.probs), ref_p):
        np.testing.assert_allclose(got, want, atol=REFERENCE_ATOL["probs"], rtol=0)
    for got, want in zip(flat_np(sol.duals), ref_d):
        np.testing.assert_allclose(got, want, atol=REFERENCE_ATOL["duals"], rtol=0)
    np.testing.assert_allclose(sol.dual_objective.numpy(), ref_v, atol=REFERENCE_ATOL["objective"], rtol=0)
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
    # Four levels: three-level problems reach rounding in three accelerated sweeps, so
    # that both tolerances would stop at the same sweep.
    h = ca.Hierarchy.grid([(16, 16), (8, 8), (4, 4), (2, 2)])
    g = torch.Generator().manual_seed(1)
    inst = Instance(h, [2.0 * torch.randn((3,) + s, generator=g, dtype=torch.float64) for s in h.shapes],
                    [0.5, 2.0, 0.3, 1.5])
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


@pytest.mark.slow  # ~0.5 s: the star at τ = 0.05 takes a few hundred sweeps
@pytest.mark.parametrize("case", ["star", "axial"])
def test_the_report_is_measured_at_the_start_and_at_the_returned_duals(case):
    """``init`` is where the solve starts on every graph (the default warm start is the closed
    form only without it), and the report says what holds there and at the end: history row 0
    is ``g``, the violation and the relative gap ``|g(λ) − f(p(λ))| / max(1, |f̄(p(λ))|)`` at
    ``init``; ``violation`` and ``gap`` are those of ``p(λ*)`` at the returned duals, which are
    mean-zero per sample.  Small scores at low temperatures: ``|f̄| < 1``, the gap's floor."""
    from convex_attention.metrics import objective, violation

    h = make_graph(case)
    gen = torch.Generator().manual_seed(7)
    scores = [0.1 * torch.randn((2,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    temps = [0.05] * h.num_maps
    init = [torch.randn((2,) + h.shapes[b], generator=gen, dtype=torch.float64) for _, b in h.edges]
    res = solve_dual(scores, h, temps, tol=1e-9, init=init, record_history=True)
    centred = [s - s.flatten(1).mean(1).view((-1,) + (1,) * (s.dim() - 1)) for s in scores]

    def report(duals):
        probs = reparameterized_probs(scores, duals, h, temps)
        g = dual_function(scores, duals, h, temps)
        gap = (g - objective(scores, probs, temps)).abs() / objective(centred, probs, temps).abs().clamp_min(1.0)
        return g, violation(probs, h), gap, objective(centred, probs, temps)

    g0, viol0, gap0, fbar0 = report(init)
    assert (fbar0.abs() < 1).all() and (gap0 > 1e-3).all()  # the floor decides, and the start is far off
    hist = res["history"]
    assert hist["violation"].shape[0] > 1
    torch.testing.assert_close(hist["dual_objective"][0], g0, rtol=1e-12, atol=0)
    torch.testing.assert_close(hist["violation"][0], viol0, rtol=1e-9, atol=0)
    torch.testing.assert_close(hist["gap"][0], gap0, rtol=1e-9, atol=0)
    _, viol, gap, _ = report(res["duals"])
    assert bool(res["converged"].all()) and (res["violation"] <= 1e-9).all() and (res["gap"] <= 1e-9).all()
    torch.testing.assert_close(res["violation"], viol, rtol=0, atol=1e-12)
    torch.testing.assert_close(res["gap"], gap, rtol=0, atol=1e-12)
    for dual in res["duals"]:
        torch.testing.assert_close(dual.flatten(1).mean(1), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_not_converged_raises_naming_samples_or_warns():
    inst = random_instance("1d-3lvl", batch=3, seed=3, scale=8.0)
    with pytest.raises(ConvergenceError, match=r"sample\(s\) \[0, 1, 2\]"):
        ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-14, max_iter=1)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-14, max_iter=1, strict=False)
    assert not sol.info["converged"].any()


def test_the_failure_names_at_most_ten_samples_and_says_when_there_are_more():
    inst = random_instance("1d-3lvl", batch=11, seed=3, scale=8.0)
    for batch, shown in ((10, "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9];"), (11, "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] …;")):
        with pytest.raises(ConvergenceError, match=r"did not reach tol=1e-14 for sample\(s\) (.*?);") as err:
            solve_dual([s[:batch] for s in inst.scores], inst.h, inst.temps, tol=1e-14, max_iter=1)
        assert f"for sample(s) {shown}" in str(err.value)


def test_a_failure_with_maps_returned_in_a_coarser_dtype_says_how_far_the_iterate_must_go():
    """With ``round_to`` the iterate stops at ``tol`` less :func:`rounding_margin`; a failure
    says so (the violation it reports is measured against that, not ``tol``)."""
    from convex_attention.dual import rounding_margin

    inst = random_instance("1d-3lvl", batch=1, seed=3, scale=8.0)
    stop = 1e-6 - rounding_margin(inst.h, torch.float32)
    with pytest.raises(ConvergenceError, match=rf"did not reach tol={stop:g} ") as err:
        solve_dual(inst.scores, inst.h, inst.temps, tol=1e-6, max_iter=1, round_to=torch.float32)
    assert (f"(The maps are returned in float32: the iterate must reach {stop:.3g} for them to meet tol 1e-06 "
            f"once rounded.)") in str(err.value)
    with pytest.raises(ConvergenceError) as err:
        solve_dual(inst.scores, inst.h, inst.temps, tol=1e-6, max_iter=1)
    assert "once rounded" not in str(err.value)


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


# ------------------------------------------------------------------ trust: options and NaN

def _three_level(batch=2, seed=0, scale=2.0):
    inst = random_instance("2d-3lvl-unequal", batch=batch, seed=seed, scale=scale)
    return inst.scores, inst.h, inst.temps


@pytest.mark.parametrize("options, exc, message", [
    ({"tol": float("nan")}, ValueError, r"tol must be a positive finite number"),
    ({"tol": float("inf")}, ValueError, r"tol must be a positive finite number"),
    ({"tol": 0.0}, ValueError, r"tol must be a positive finite number"),
    ({"tol": -1e-6}, ValueError, r"tol must be a positive finite number"),
    ({"tol": "1e-6"}, TypeError, r"tol must be a positive finite number"),
    ({"tol": True}, TypeError, r"tol must be"),
    ({"max_iter": 0}, ValueError, r"max_iter must be an int >= 1"),
    ({"max_iter": -5}, ValueError, r"max_iter must be an int >= 1"),
    ({"max_iter": 2.5}, TypeError, r"max_iter must be an int >= 1"),
    ({"max_iter": True}, TypeError, r"max_iter must be an int >= 1"),
    ({"strict": 1}, TypeError, r"strict must be True or False"),
    ({"strict": None}, TypeError, r"strict must be True or False"),
    ({"record_history": "yes"}, TypeError, r"record_history must be True or False"),
    ({"dtype": torch.float16}, ValueError, r"dtype must be torch.float32 or torch.float64"),
    ({"dtype": torch.int64}, ValueError, r"dtype must be torch.float32 or torch.float64"),
    ({"dtype": "float64"}, ValueError, r"dtype must be torch.float32 or torch.float64"),
    ({"init": torch.zeros(2, 3, 2)}, TypeError, r"init must be None or a list of 2 tensors"),
    ({"init": [torch.zeros(3, 2)]}, ValueError, r"init must hold one tensor per constraint \(2\)"),
    ({"init": [torch.zeros(3, 2), torch.zeros(2, 2)]}, ValueError, r"init\[1\] must have shape \(1, 2\)"),
    ({"init": [torch.zeros(5, 3, 2), torch.zeros(1, 2)]}, ValueError, r"init\[0\] must have shape"),
    ({"init": [torch.full((3, 2), float("nan")), torch.zeros(1, 2)]}, ValueError, r"init\[0\] contains NaN"),
    ({"init": [torch.zeros(3, 2), torch.tensor([[float("inf"), 0.0]])]}, ValueError, r"init\[1\] contains NaN or Inf"),
    ({"init": [torch.zeros(3, 2, dtype=torch.long), torch.zeros(1, 2)]}, TypeError, r"init\[0\] must be a dense"),
    ({"init": [[0.0] * 6, torch.zeros(1, 2)]}, TypeError, r"init\[0\] must be a torch.Tensor"),
    # a string of the right length is not a list of tensors (it was read as one, item by item)
    ({"init": "ab"}, TypeError, r"init must be None or a list of 2 tensors"),
    ({"init": [torch.zeros(3, 2), torch.zeros(1, 2)], "warm_start": True}, ValueError, r"init and warm_start=True"),
    ({"init": [torch.zeros(3, 2, device="meta"), torch.zeros(1, 2)]}, ValueError, r"init\[0\] is on meta"),
])
def test_every_dual_option_is_validated_before_any_work(options, exc, message, monkeypatch):
    """Through ``ca.solve`` (the registry entry) and the kernel ``solve_dual``: a clear
    error naming the option and its range, raised before the solver starts."""
    import convex_attention.dual as dual_module

    scores, h, temps = _three_level()

    def no_work(*args, **kwargs):
        raise AssertionError("the solver started before its options were checked")

    monkeypatch.setattr(dual_module, "_evaluate", no_work)
    monkeypatch.setattr(dual_module.DualSolveFunction, "apply", no_work)
    with pytest.raises(exc, match=message):
        ca.solve(scores, h, "dual", temperature=temps, **options)
    kernel_options = {k: v for k, v in options.items() if k != "dtype"}
    if kernel_options:
        with pytest.raises(exc, match=message):
            solve_dual(scores, h, temps, **kernel_options)


def test_valid_init_shapes_are_accepted():
    scores, h, temps = _three_level(batch=2)
    first = solve_dual(scores, h, temps, tol=1e-10)
    for init in (first["duals"], [d[:1] for d in first["duals"]], [d[0] for d in first["duals"]]):
        sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-10, init=init)
        assert sol.info["converged"].all()


def test_the_registry_fills_in_the_kernel_s_defaults():
    """``check_dual_options`` fills in the defaults of ``solve_dual``'s own signature (tol 1e-6,
    max_iter 1000 sweeps, strict, newton and warm_start 'auto'; docs/design.md), gap_tol = tol and
    the float64 working dtype: ``method='dual'`` and the kernel solve the same problem."""
    scores, h, _ = _three_level()
    filled = check_dual_options({}, h, 2, "cpu")
    assert set(filled) == {"tol", "gap_tol", "max_iter", "strict", "record_history", "init", "newton",
                           "warm_start", "dtype"}
    kernel = inspect.signature(solve_dual).parameters
    for name in ("tol", "max_iter", "strict", "record_history", "init", "newton", "warm_start"):
        default = kernel[name].default
        assert type(filled[name]) is type(default) and filled[name] == default, name
    assert filled["gap_tol"] == filled["tol"] and filled["dtype"] is torch.float64


def test_temperatures_at_the_ends_of_the_working_dtype_s_range_are_accepted():
    """Every τ_k at least ``tau_min`` and their sum at most ``total_max``
    (:func:`convex_attention.validation.temperature_range`): both ends are accepted."""
    from convex_attention.validation import temperature_range

    scores, h, _ = _three_level()
    low, high = temperature_range(torch.float32)
    check_dual_options({"dtype": torch.float32}, h, 2, "cpu", temps=[low, low, high])  # fsum: high, rounded
    with pytest.raises(ValueError, match="below the smallest"):
        check_dual_options({"dtype": torch.float32}, h, 2, "cpu", temps=[low / 2, low, 1.0])
    with pytest.raises(ValueError, match="temperatures sum to"):
        check_dual_options({"dtype": torch.float32}, h, 2, "cpu", temps=[high, high, 1.0])


def test_solve_dual_checks_the_problem_of_direct_callers(monkeypatch):
    """The kernel's own checks of the graph, the scores and the temperatures (``solve`` makes
    them before it): a clear error naming what is wrong, raised before the solver starts."""
    import convex_attention.dual as dual_module

    scores, h, temps = _three_level()

    def no_work(*args, **kwargs):
        raise AssertionError("the solver started before the problem was checked")

    monkeypatch.setattr(dual_module, "_evaluate", no_work)
    refused = [
        (TypeError, r"h must be a convex_attention.Hierarchy or Graph", scores, h.shapes, temps),
        (ValueError, r"scores must be a list of 3 tensors", scores[:2], h, temps),
        (ValueError, r"scores\[1\] must be a float32/float64 tensor", [scores[0], scores[1].float(), scores[2]], h,
         temps),  # the dtype of scores[0]
        (ValueError, r"scores\[2\] must be .* batch of scores\[0\]", [scores[0], scores[1], scores[2][:1]], h, temps),
        (ValueError, r"scores\[0\] must be", [s[:0] for s in scores], h, temps),  # an empty batch
        (ValueError, r"temps must hold one positive temperature per level \(3\)", scores, h, temps[:2]),
        (ValueError, r"temperature of level 1 must be positive and finite, got 0.0", scores, h, [1.0, 0.0, 1.0]),
        (ValueError, r"temperature of level 2 must be positive and finite, got inf", scores, h,
         [1.0, 1.0, float("inf")]),
        (ValueError, r"temperature of level 0 must be positive and finite, got nan", scores, h,
         [float("nan"), 1.0, 1.0]),
    ]
    for exc, message, bad_scores, bad_h, bad_temps in refused:
        with pytest.raises(exc, match=message):
            solve_dual(bad_scores, bad_h, bad_temps)


def test_nan_tol_and_nan_init_never_report_converged():
    """Once ``tol=nan`` or a NaN ``init`` gave NaN probabilities with converged=True."""
    scores, h, temps = _three_level()
    with pytest.raises(ValueError, match="tol"):
        ca.solve(scores, h, "dual", temperature=temps, tol=float("nan"), strict=False)
    bad_init = [torch.full((2,) + s, float("nan"), dtype=torch.float64) for s in h.shapes[1:]]
    with pytest.raises(ValueError, match=r"init\[0\] contains NaN"):
        ca.solve(scores, h, "dual", temperature=temps, init=bad_init, strict=False)


def test_huge_scores_at_tiny_temperature_are_solved_never_nan():
    """Finite float64 scores × 1e10 at τ = 1e-300: ``θ/τ`` overflows float64, which once gave
    NaN probabilities with converged=True.  The steps are formed from max-shifted logits,
    so the solve is finite and is the exact solution."""
    scores, h, _ = _three_level(scale=1e10)
    temps = [1e-300] * h.num_levels
    sol = ca.solve(scores, h, "dual", temperature=temps)
    exact = ca.solve(scores, h, "exact", temperature=temps)
    assert sol.info["converged"].all() and (sol.violation <= 1e-6).all()
    assert all(torch.isfinite(p).all() for p in sol.probs) and all(torch.isfinite(d).all() for d in sol.duals)
    assert ca.metrics.max_abs_err(sol.probs, exact.probs).max() < 1e-6


def test_unresolvable_temperatures_fail_with_the_reason():
    """τ = [1e-300, 1, 1]: the optimum needs logits resolved to ~1e-300, beyond float64, so
    the dual cannot converge; it says so (no 'raise max_iter') and returns finite output."""
    scores, h, _ = _three_level()
    temps = [1e-300, 1.0, 1.0]
    with pytest.raises(ConvergenceError,
                       match=r"stalled.*cannot resolve the optimum in float64.*method='exact'") as err:
        solve_dual(scores, h, temps, max_iter=30)
    assert "raise max_iter" not in str(err.value)
    with pytest.warns(RuntimeWarning, match="cannot resolve"):
        sol = ca.solve(scores, h, "dual", temperature=temps, max_iter=30, strict=False)
    assert not sol.info["converged"].any() and all(torch.isfinite(p).all() for p in sol.probs)


def test_float32_working_dtype_checks_the_temperature_range_first():
    scores, h, _ = _three_level()
    with pytest.raises(ValueError, match=r"dtype=torch.float32: temperature of level 0 is 1e-300"):
        ca.solve(scores, h, "dual", temperature=[1e-300, 1.0, 1.0], dtype=torch.float32)
    with pytest.raises(ValueError, match=r"dtype=torch.float32: the temperatures sum to"):
        ca.solve(scores, h, "dual", temperature=1e25, dtype=torch.float32)


def test_float32_working_dtype_refuses_float64_scores_beyond_its_range():
    """Before: float64 scores above float32's range became Inf in the working dtype and the
    failure blamed the scores ('pass finite scores')."""
    scores, h, _ = _three_level()
    big = [s * 1e300 for s in scores]
    with pytest.raises(ValueError, match=r"dtype=torch.float32: the largest \|score\| of each map sums to .* use "
                                         r"dtype=torch.float64"):
        ca.solve(big, h, "dual", dtype=torch.float32)
    sol = ca.solve(big, h, "dual")  # the default working dtype solves them
    assert sol.info["converged"].all()


@pytest.mark.parametrize("case", ["axial", "grid-regions", "star"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scores_at_the_score_limit_at_the_largest_temperatures_are_solved_on_graphs(case, dtype):
    """Before: on a graph that is not a forest, a block step formed τ · η, which overflows
    where both are large (scores near the limit, τ near the largest accepted), and the
    solve ended NaN (not converged) within the documented limits."""
    h = make_graph(case)
    limit, (_, high) = ca.validation.score_limit(dtype), ca.validation.temperature_range(dtype)
    g = torch.Generator().manual_seed(1)
    scores = []
    for shape in h.shapes:
        s = 2 * torch.rand((2,) + shape, generator=g, dtype=torch.float64) - 1
        s[0].view(-1)[0], s[1].view(-1)[-1] = 1.0, -1.0
        scores.append((s * (0.9999 * limit / h.num_maps)).to(dtype))
    for tau in (high / h.num_maps / 1.01, high / h.num_maps * 1e-6):
        sol = ca.solve(scores, h, "dual", temperature=tau)
        assert sol.info["converged"].all()
        assert all(bool(torch.isfinite(p).all()) for p in sol.probs)
        assert all(bool(torch.isfinite(d).all()) for d in sol.duals)
        assert float(sol.violation.max()) <= 1e-6


@pytest.mark.parametrize("case", ["2d-3lvl-unequal", "axial", "star"])
def test_second_order_differentiation_through_dual_is_refused_not_a_silent_none(case):
    """Before: the gradient came back once-differentiable, and differentiating it again
    with allow_unused=True gave None: a second derivative silently missing."""
    inst = random_instance(case, batch=2) if case in ALL_CASES else random_graph_instance(case, batch=2)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    sol = ca.solve(scores, inst.h, "dual", temperature=inst.temps, tol=1e-10)
    loss = sum((p * p).sum() for p in sol.probs)
    with pytest.raises(NotImplementedError, match="second-order differentiation through method 'dual' is not "
                                                  "supported"):
        torch.autograd.grad(loss, scores, create_graph=True)
    grads = torch.autograd.grad(loss, scores)  # the first order is unchanged
    assert all(bool(torch.isfinite(x).all()) for x in grads)


def test_nan_scores_given_to_the_kernel_are_a_failure_not_converged():
    """``solve_dual`` does not re-check finiteness (``solve`` does); NaN in its state still
    ends as not converged, strict or not."""
    scores, h, temps = _three_level(batch=3)
    scores = [s.clone() for s in scores]
    scores[1][2, 0, 0] = float("nan")
    with pytest.raises(ConvergenceError,
                       match=r"sample\(s\) \[2\]: the solver state became NaN/Inf \(the scores contain NaN"):
        solve_dual(scores, h, temps)
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        res = solve_dual(scores, h, temps, strict=False)
    assert res["converged"].tolist() == [True, True, False]


def test_nan_in_the_solver_state_mid_solve_is_a_failure(monkeypatch):
    """A NaN produced by a sweep (not in the input) ends that sample as not converged;
    the other samples are unaffected."""
    import convex_attention.dual as dual_module

    scores, h, temps = _three_level(batch=3)
    clean = solve_dual(scores, h, temps, tol=1e-10)
    real_sweep, calls = dual_module._sweep, []

    def poisoned(*args):
        lam, etas = real_sweep(*args)
        calls.append(1)
        if len(calls) == 2:  # the second sweep corrupts sample 1
            lam[0] = lam[0].clone()
            lam[0][1] = float("nan")
        return lam, etas

    monkeypatch.setattr(dual_module, "_sweep", poisoned)
    with pytest.raises(ConvergenceError, match=r"sample\(s\) \[1\]; sample\(s\) \[1\]: the solver state became NaN"):
        solve_dual(scores, h, temps, tol=1e-10)
    with pytest.warns(RuntimeWarning):
        calls.clear()
        res = solve_dual(scores, h, temps, tol=1e-10, strict=False)
    assert res["converged"].tolist() == [True, False, True]
    for k in range(h.num_levels - 1):
        torch.testing.assert_close(res["duals"][k][[0, 2]], clean["duals"][k][[0, 2]], atol=1e-9, rtol=0)


def test_the_safeguard_rejects_a_bad_extrapolation(monkeypatch):
    """A garbage Anderson point (NaN, or one that raises g) is never taken: the solver still
    converges, and g never increases."""
    import convex_attention.dual as dual_module

    for garbage in (lambda xs, gxs: torch.full_like(xs[-1], float("nan")),
                    lambda xs, gxs: xs[-1] + 50.0 * torch.randn_like(xs[-1])):
        monkeypatch.setattr(dual_module, "_anderson", garbage)
        scores, h, temps = _three_level(batch=2)
        res = solve_dual(scores, h, temps, tol=1e-8, record_history=True)
        assert res["converged"].all()
        g = res["history"]["dual_objective"]
        assert (g[1:] <= g[:-1] + 1e-12).all()


# ------------------------------------------------------------------ convergence speed

def test_dual_reaches_1e6_within_50_sweeps_on_verify_random_set():
    from convex_attention.bench.verify import random_instances

    for seed in (0, 1):
        for name, h, scores, temps in random_instances(24, seed):
            res = solve_dual([s.double() for s in scores], h, temps, tol=1e-6, max_iter=50)
            assert res["converged"].all() and int(res["iterations"].max()) <= 50, name


@pytest.mark.parametrize("temps", [
    [1e3, 1e-3, 1e3],      # plain sweeps sat at violation 1.2e-3 from sweep 10 to 1000
    [1e-3, 1e3, 1e-3],
    [1e6, 1.0, 1e6],
    [1.0, 1e-6, 1.0],
    [1.0, 1e-6, 1e-6],
    [1e-3, 1e-3, 1e3],
])
def test_dual_converges_at_temperature_ratios_up_to_1e6(temps):
    from convex_attention.bench.generators import generate

    h = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)])
    for gen in ("gaussian", "lesion"):
        scores = generate(gen, h, 4, seed=0, scale=2.0)
        sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-6, max_iter=50)
        # math.md §5: at most 5 sweeps (seeds 0-4, torch's native and portable kernels: ca_rev228);
        # one more allowed for a safeguard's tie at g's rounding
        assert sol.info["converged"].all() and int(sol.info["iterations"].max()) <= 6
        exact = ca.solve(scores, h, "exact", temperature=temps)
        assert ca.metrics.max_abs_err(sol.probs, exact.probs).max() < 1e-5


def test_dual_converges_on_deep_hierarchies_with_extreme_temperatures():
    h = ca.Hierarchy.grid([(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)])
    g = torch.Generator().manual_seed(0)
    scores = [15.0 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [0.3, 20.0, 1e-3, 3e-2, 1e-2, 9e-3]
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-6, max_iter=50, record_history=True)
    assert sol.info["converged"].all()
    hist = sol.info["history"]["dual_objective"]
    assert (hist[1:] <= hist[:-1] + 1e-9 * hist[0].abs()).all()


def test_failure_advice_is_true():
    """'raise max_iter' only while the violation is still falling; at a rounding floor the
    message says that more sweeps will not help and what will."""
    scores, h, temps = _three_level(batch=2, seed=1, scale=5.0)
    with pytest.raises(ConvergenceError, match=r"still converging after max_iter=1 sweeps.*raise max_iter"):
        ca.solve(scores, h, "dual", temperature=temps, tol=1e-14, max_iter=1)
    with pytest.raises(ConvergenceError) as err:
        ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, max_iter=40, dtype=torch.float32)
    msg = str(err.value)
    assert "stalled" in msg and "unlikely to help" in msg and "dtype=torch.float64" in msg
    assert "raise max_iter" not in msg
    with pytest.raises(ConvergenceError, match=r"stalled.*method='exact'"):
        ca.solve(scores, h, "dual", temperature=temps, tol=1e-19, max_iter=40)


@pytest.mark.parametrize("grain, said", [(3e-3, True), (3e-4, False)])
def test_a_stall_is_blamed_on_the_temperature_only_beyond_the_rounding_grain(grain, said):
    """A stall says the dual cannot resolve the optimum only where one rounding step of the
    logits moves log p by more than 1e-3 (``eps · max|θ_k| / τ_k``, of the scores the solver
    centres per map); below it, the advice is float64 or a larger tol, without blaming the
    temperature."""
    scores, h, temps = _three_level(batch=2, seed=1, scale=5.0)
    eps = torch.finfo(torch.float32).eps
    temps = [eps * float(scores[0].abs().max()) / grain] + list(temps[1:])
    assert max(eps * float(s.abs().max()) / t for s, t in zip(scores, temps)) == pytest.approx(grain)
    with pytest.raises(ConvergenceError, match="stalled") as err:
        ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, max_iter=15, dtype=torch.float32)
    assert ("cannot resolve the optimum in float32" in str(err.value)) == said
    # the logits the solver works with are the scores less the midpoint of each map's range
    centred = [s.flatten(1) - (s.flatten(1).amax(1, keepdim=True) / 2 + s.flatten(1).amin(1, keepdim=True) / 2)
               for s in scores]
    seen = max(eps * float(s.abs().max()) / t for s, t in zip(centred, temps))
    assert 1e-3 < seen <= grain if said else seen <= grain < 1e-3
    assert (f"log p by up to {seen:.1e}" in str(err.value)) == said


# ------------------------------------------------------------------ graphs of maps

GRAPH_RUNS = [(case, "auto") for case in GRAPH_CASES] + [(case, False) for case in FOREST_CASES]


@pytest.mark.parametrize("case, warm_start", GRAPH_RUNS)
@pytest.mark.parametrize("batch", [1, 3])
def test_dual_on_graphs_matches_reference(case, warm_start, batch):
    """Every family (chain as a graph, stars, trees, axial, grid + cutting regions, mixed,
    disconnected) against the independent CVXPY reference, float64, to REFERENCE_ATOL; by default forests
    start at their closed form, cold (``warm_start=False``) they are solved by the sweeps alone."""
    inst = random_graph_instance(case, batch=batch, seed=10 + batch)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12, warm_start=warm_start)
    if warm_start is False:
        assert (sol.info["iterations"] >= 1).all()
    ref_p, ref_d, ref_v = reference_solve(inst.h, inst.scores, inst.temps)
    for got, want in zip(flat_np(sol.probs), ref_p):
        np.testing.assert_allclose(got, want, atol=REFERENCE_ATOL["probs"], rtol=0)
    for got, want in zip(flat_np(sol.duals), ref_d):
        np.testing.assert_allclose(got, want, atol=REFERENCE_ATOL["duals"], rtol=0)
    np.testing.assert_allclose(sol.dual_objective.numpy(), ref_v, atol=REFERENCE_ATOL["objective"], rtol=0)
    assert (sol.violation <= 1e-12).all() and (sol.info["gap"] <= 1e-12).all() and sol.info["converged"].all()
    # the certificate the solver reports is the relative gap |g(λ) − f(p(λ))| / max(1, |f̄|), f̄ the
    # objective of the scores centred per map
    f = ca.metrics.objective(inst.scores, sol.probs, inst.temps)
    gap = (sol.dual_objective - f).abs() / (f - score_offset(inst.scores)).abs().clamp_min(1.0)
    torch.testing.assert_close(gap, sol.info["gap"], atol=1e-12, rtol=0)


@pytest.mark.slow  # end to end or a boundary of a path lighter tests take (fast suite < 1 min)
def test_maps_returned_in_float32_meet_tol_after_rounding():
    """The solver stopped its float64 iterate at tol, and rounding the maps to float32 took
    them above it (mixed hard instance 78 of the graph benchmark at 64²: iterate 9.76e-7,
    returned maps 1.018e-6 measured in float64; found by a review of the graph harness).

    Where the iterate stops depends on the machine's floating point (on one Intel Xeon this
    instance stopped at 9.94e-7, on one AMD EPYC at 3.44e-7), so tol is placed from the
    trajectory measured here: just above the first violation below 1e-6, where plain stopping
    accepts that iterate and the float32 margin must not."""
    from convex_attention.metrics import violation

    h, scores, temps = benchmark_instance(64, 42, dtype=torch.float32)
    wide = [s.double() for s in scores]
    eps = torch.finfo(torch.float32).eps
    loose_gap = {"gap_tol": 1.0, "max_iter": 200}  # only the violation decides where each run stops
    path = solve_dual(wide, h, temps, tol=1e-6, record_history=True, **loose_gap)["history"]["violation"][:, 0]
    first = int(torch.nonzero(path <= 1e-6)[0])
    tol = min(1e-6, float(path[first]) + eps / 2)  # above that iterate, below every earlier one
    assert float(path[first]) > tol - eps
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=tol, **loose_gap)
    assert sol.probs[0].dtype == torch.float32 and bool(sol.info["converged"].all())
    assert float(violation([p.double() for p in sol.probs], h)[0]) <= tol
    assert float(sol.info["violation"][0]) <= tol - eps
    # float64 maps are not rounded: the iterate stops at tol itself, as without round_to
    out = solve_dual(wide, h, temps, tol=tol, round_to=torch.float64, **loose_gap)
    plain = solve_dual(wide, h, temps, tol=tol, **loose_gap)
    assert int(plain["iterations"][0]) == first
    assert torch.equal(out["violation"], plain["violation"]) and torch.equal(out["iterations"], plain["iterations"])
    rounded = solve_dual(wide, h, temps, tol=tol, round_to=torch.float32, **loose_gap)
    assert float(rounded["violation"][0]) <= tol - eps < float(plain["violation"][0])
    assert int(rounded["iterations"][0]) > first


def test_the_rounding_margin_counts_float16_s_subnormal_steps():
    """float16 rounds probabilities below 6.1e-5 by an absolute step: on a 300 x 300 map that
    alone reached 2.4e-3 (found by a review), so no margin below tol / 2 is promised there."""
    from convex_attention.dual import rounding_margin

    small, large = ca.Graph.axial((8, 8)), ca.Graph.axial((300, 300))
    assert rounding_margin(small, torch.float32) == pytest.approx(torch.finfo(torch.float32).eps)
    assert rounding_margin(large, torch.float16) > 2.7e-3
    scores = [torch.zeros((1,) + s, dtype=torch.float16) for s in large.shapes]
    # the margin is not applied (it is above tol / 2): the iterate meets tol, the float16 maps
    # do not, and the sample is not called converged (it used to be)
    with pytest.raises(ConvergenceError, match=r"maps returned in float16 miss tol=0.002 for sample\(s\) \[0\]"):
        ca.solve(scores, large, "dual", temperature=1.0, tol=2e-3)
    with pytest.warns(RuntimeWarning, match="maps returned in float16 miss tol"):
        sol = ca.solve(scores, large, "dual", temperature=1.0, tol=2e-3, strict=False)
    assert not bool(sol.info["converged"].any()) and float(sol.info["violation"][0]) <= 2e-3
    assert float(sol.info["returned_violation"][0]) == pytest.approx(float(sol.violation[0].double()), rel=1e-3)
    assert float(sol.info["returned_violation"][0]) > 2e-3
    assert bool(ca.solve(scores, large, "dual", temperature=1.0, tol=5e-3).info["converged"].all())


# axial 64² in float32, three draws (~2.5 s); the float32 rounding rule has a fast test of its own,
# test_maps_returned_in_float32_meet_tol_after_rounding
@pytest.mark.slow
def test_maps_that_miss_tol_as_returned_are_never_called_converged():
    """A float32 working dtype judged its iterate in float32 arithmetic: on axial 64² it called
    a sample converged at 9.7e-7 whose returned maps measured 1.001e-6 (up to 3.9e-6 on other
    draws), and float16 maps at the default tol came back 500 times above it (a hostile review)."""
    h = ca.Graph.axial((64, 64))
    temps = [0.5, 1.0, 2.0]
    options = {"temperature": temps, "dtype": torch.float32, "gap_tol": 1.0}  # the violation alone stops a sample
    exercised = 0
    for seed in (0, 2, 10):
        g = torch.Generator().manual_seed(seed)
        scores = [10 * torch.randn((4,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sol = ca.solve(scores, h, "dual", strict=False, **options)
        returned = ca.metrics.violation(sol.probs, h)
        torch.testing.assert_close(sol.info["returned_violation"], returned, rtol=1e-12, atol=0)
        assert torch.equal(sol.info["converged"], sol.info["converged"] & (returned <= 1e-6))
        # the case itself, placed on this machine's trajectory (drawing it relied on one
        # machine's rounding): a sample whose maps measure above its iterate is solved again with
        # tol at the iterate's violation; it stops at the same iterate (every earlier one was
        # above 1e-6), whose maps then miss tol, and is not called converged
        for i in torch.nonzero(returned > sol.info["violation"].double()).flatten().tolist():
            if exercised:  # once is enough
                break
            tol = float(sol.info["violation"][i])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                # the sample alone: at its tol the others of the batch sweep to max_iter (5 s)
                again = ca.solve([x[i:i + 1] for x in scores], h, "dual", strict=False, tol=tol, **options)
            iterate, maps = float(again.info["violation"][0]), float(again.info["returned_violation"][0])
            assert not (bool(again.info["converged"][0]) and maps > tol)  # whatever the trajectory
            # the case, where the solve stops at that same iterate (another torch's rounding can take it to
            # another, whose maps meet tol: torch 2.7.1 on seed 0's first candidate, 6.7e-7 below 7.3e-7)
            if iterate <= tol < maps:
                assert not bool(again.info["converged"][0])
                exercised += 1
    assert exercised  # the check is exercised, not vacuous (on 12 samples, each about even odds)
    half = [torch.randn((2,) + s, generator=torch.Generator().manual_seed(0)).half() for s in h.shapes]
    with pytest.raises(ConvergenceError, match="maps returned in float16 miss tol=1e-06"):
        ca.solve(half, h, "dual", temperature=temps)


def test_float64_maps_of_a_float64_solve_are_the_maps_its_violation_was_measured_on():
    """The solver confirms a stopping sample at the logits recomputed at its centred duals,
    where its maps are returned: the reported violation is theirs, and a tol set at it is met
    (a review of the returned-maps check had a tol at the iterate's own violation raise)."""
    h = ca.Graph.axial((16, 16))
    for seed in range(4):
        scores = [3 * torch.randn((1,) + s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                  for s in h.shapes]
        first = ca.solve(scores, h, "dual", temperature=[0.5, 1.0, 2.0], tol=1e-12, gap_tol=1.0)
        tol = float(first.info["violation"][0])
        again = ca.solve(scores, h, "dual", temperature=[0.5, 1.0, 2.0], tol=tol, gap_tol=1.0)  # no error
        assert bool(again.info["converged"].all()) and float(again.info["violation"][0]) <= tol
        for sol in (first, again):  # the same maps up to the rounding of two ways of computing them
            assert float(sol.info["returned_violation"][0]) == pytest.approx(float(sol.info["violation"][0]), rel=0,
                                                                              abs=1e-15)


def test_half_precision_maps_get_half_of_tol_for_their_rounding():
    """bfloat16's worst-case rounding margin is above tol / 2 at tol 1e-2, so the iterate used to
    stop at tol itself and one sample's maps came back at 7.8e-3 (a review); it now stops at tol / 2."""
    h = ca.Graph.axial((16, 16))
    scores = [torch.randn((8,) + s, generator=torch.Generator().manual_seed(1)).bfloat16() for s in h.shapes]
    sol = ca.solve(scores, h, "dual", temperature=[0.5, 1.0, 2.0], tol=1e-2)
    assert bool((sol.info["violation"] <= 5e-3).all()) and bool((sol.info["returned_violation"] <= 1e-2).all())


def test_the_relative_gap_does_not_shrink_when_a_constant_is_added_to_a_map_s_scores():
    """A constant per map moves no solution; the gap used to be divided by max(1, |f|), which
    such a constant inflates (the same defect let cvxpylayers' certificate pass a wrong point)."""
    inst = random_graph_instance("axial", batch=2, seed=3)
    gaps = []
    for offsets in ((0.0, 0.0, 0.0), (1e6, -2e5, 3e6)):
        scores = [s + c for s, c in zip(inst.scores, offsets)]
        with pytest.warns(RuntimeWarning):  # one sweep: not converged, the gap still large
            out = solve_dual(scores, inst.h, inst.temps, tol=1e-14, max_iter=1, strict=False, newton=False)
        gaps.append(out["gap"])
    assert float(gaps[0].min()) > 1e-6
    torch.testing.assert_close(gaps[1], gaps[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("case", NONTREE_CASES)
def test_newton_steps_are_taken_on_graphs_that_are_not_forests_and_g_never_increases(case):
    inst = random_graph_instance(case, batch=3, seed=3, scale=3.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, record_history=True)
    assert sol.info["converged"].all() and (sol.info["newton_steps"] >= 1).all()
    g = sol.info["history"]["dual_objective"]
    assert (g[1:] <= g[:-1] + 1e-12 * g[0].abs()).all()
    assert set(sol.info["history"]) == {"violation", "dual_objective", "gap"}
    plain = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, newton=False, max_iter=5000)
    assert (plain.info["newton_steps"] == 0).all() and plain.info["converged"].all()
    assert ca.metrics.max_abs_err(plain.probs, sol.probs).max() < 1e-8


def test_newton_makes_a_peaked_two_resolution_graph_converge_where_sweeps_crawl():
    """Measured: plain accelerated sweeps need hundreds of sweeps (or stall) on peaked maps of
    a graph with an undirected cycle; the safeguarded Newton step needs a few."""
    inst = random_graph_instance("mixed-two-resolutions", batch=4, seed=1, scale=4.0, temps=[0.3, 0.25, 0.2, 0.3])
    newton = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, max_iter=50)
    assert newton.info["converged"].all() and int(newton.info["iterations"].max()) <= 50
    plain = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, max_iter=50, newton=False,
                     strict=False)
    assert (plain.info["iterations"] > newton.info["iterations"]).all()


@pytest.mark.parametrize("case", ["axial", "mixed", "disconnected", "star"])
def test_dual_on_graphs_batched_equals_looped(case):
    inst = random_graph_instance(case, batch=4, seed=4, scale=3.0)
    batched = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-9)
    for b in range(4):
        single = ca.solve([s[b:b + 1] for s in inst.scores], inst.h, "dual", temperature=inst.temps, tol=1e-9)
        assert batched.info["iterations"][b] == single.info["iterations"][0]
        for x, y in zip(batched.probs, single.probs):
            torch.testing.assert_close(x[b:b + 1], y, atol=1e-13, rtol=0)


# the first case checks the implicit backward on a graph with cycles in the fast suite; the other
# structures (1-2 s of gradcheck each) run in CI
@pytest.mark.parametrize("case", slow_beyond(["axial", "grid-regions", "mixed-two-resolutions", "disconnected"]))
def test_dual_gradcheck_on_graphs_that_are_not_trees(case):
    """The implicit backward (conjugate gradients on the dual's Hessian), scores and temperatures."""
    inst = random_graph_instance(case, batch=2, seed=5)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)

    def fn(t, *s):
        return tuple(ca.solve(list(s), inst.h, "dual", temperature=t, tol=1e-13).probs)

    assert torch.autograd.gradcheck(fn, (tau, *scores), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", slow_beyond(["star", "tree"]))  # the tree: the same forest backward as the star
def test_dual_gradcheck_on_stars_and_trees(case):
    inst = random_graph_instance(case, batch=2, seed=6)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)

    def fn(t, *s):
        return tuple(ca.solve(list(s), inst.h, "dual", temperature=t, tol=1e-13).probs)

    assert torch.autograd.gradcheck(fn, (tau, *scores), atol=1e-6, rtol=1e-5)


def test_dual_backward_is_implicit_not_unrolled():
    inst = random_graph_instance("axial", batch=2, seed=7)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    sol = ca.solve(scores, inst.h, "dual", temperature=inst.temps)
    assert all(type(p.grad_fn).__name__ == "DualSolveFunctionBackward" for p in sol.probs)
    assert sol.info["iterations"].max() >= 2  # several sweeps, one backward node


@pytest.mark.parametrize("case", ["axial", "grid-regions", "mixed"])
def test_dual_gradient_matches_cvxpylayers_on_graphs(case):
    """diffcp's derivative of the Clarabel solution, on mild instances (N(0, 1) scores, τ near 1,
    where its derivative is accurate: on peaked maps it is off by orders of magnitude even on
    chains, measured): relative error below 1e-4."""
    inst = random_graph_instance(case, batch=2, seed=8, scale=1.0, temps=None)
    inst.temps = [1.0 + 0.1 * k for k in range(inst.h.num_maps)]
    w = [torch.randn_like(s) for s in inst.scores]
    ours = linear_loss_gradient(inst, "dual", w, tol=1e-13)
    theirs = linear_loss_gradient(inst, "cvxpylayers", w)
    num = sum(float((a - b).square().sum()) for a, b in zip(ours, theirs)) ** 0.5
    den = sum(float(b.square().sum()) for b in theirs) ** 0.5
    assert num / den < 1e-4, num / den


def test_dual_temperature_gradient_matches_finite_differences_on_a_graph():
    inst = random_graph_instance("grid-regions", batch=2, seed=9)
    w = [torch.randn_like(s) for s in inst.scores]

    def loss(t):
        sol = ca.solve(inst.scores, inst.h, "dual", temperature=t, tol=1e-13)
        return sum((p * x).sum() for p, x in zip(sol.probs, w))

    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(tau), tau)
    for k in range(len(inst.temps)):
        step = torch.zeros_like(tau)
        step[k] = 1e-6
        fd = (loss(tau.detach() + step) - loss(tau.detach() - step)) / 2e-6
        assert abs(float(grad[k]) - float(fd)) < 1e-6 * (1 + abs(float(fd))), (k, float(grad[k]), float(fd))


# a forest (checked against exact) and a graph with cycles in the fast suite; the rest in CI
@pytest.mark.parametrize("case", slow_beyond(["star", "axial", "chain-graph", "mixed"], keep=2))
def test_the_duals_of_dual_are_differentiable(case):
    """λ* is returned differentiable (Solution.duals): its gradient was a silent zero (a loss
    on the duals got no gradient from 'dual', and the right one from 'exact' and cvxpylayers).
    float64 gradcheck in the scores and the temperatures; on forests, exact's gradient."""
    inst = random_graph_instance(case, batch=2, seed=5)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn((2,) + inst.h.shapes[b], generator=g, dtype=torch.float64) for _, b in inst.h.edges]

    def loss(method, scores, temps, with_probs=True):
        options = {"tol": 1e-12, "max_iter": 5000} if method == "dual" else {}
        sol = ca.solve(list(scores), inst.h, method, temperature=temps, **options)
        value = sum((d * w).sum() for d, w in zip(sol.duals, weights))
        return value + sum(p.square().sum() for p in sol.probs) if with_probs else value

    x = tuple(s.clone().requires_grad_() for s in inst.scores)
    # step 1e-5, not 1e-6: the duals stop within ~1e-12 of λ* along directions of little
    # curvature, and over a step of 1e-6 that error alone is 1e-6 of the quotient (one entry of
    # "mixed" missed atol by 5e-7 on an AMD EPYC, where the perturbed solves took 3 and 6 sweeps)
    assert torch.autograd.gradcheck(lambda *s: loss("dual", s, inst.temps), x, eps=1e-5, atol=1e-6, rtol=1e-5)
    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: loss("dual", inst.scores, t, with_probs=False), (tau,), eps=1e-5,
                                    atol=1e-6, rtol=1e-5)
    if inst.h.is_forest:
        ours = torch.autograd.grad(loss("dual", x, inst.temps), x)
        closed = torch.autograd.grad(loss("exact", x, inst.temps), x)
        for a, b in zip(ours, closed):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_a_loss_on_duals_that_are_not_unique_is_an_error_that_says_so():
    """Two paths pool map 0 onto map 3 in the same way: the constraints are redundant, λ* is
    not unique and has no derivative; the probabilities still have one."""
    h = ca.Graph.from_edges([4, 2, 2, 2], [(0, 1, [0, 0, 1, 1]), (0, 2, [0, 0, 1, 1]), (1, 3, [0, 1]), (2, 3, [0, 1])])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((2, n), generator=g, dtype=torch.float64).requires_grad_() for n in h.sizes]
    sol = ca.solve(scores, h, "dual", temperature=[0.5, 1.0, 2.0, 1.5], tol=1e-12)
    torch.autograd.grad(sum(p.square().sum() for p in sol.probs), scores, retain_graph=True)
    with pytest.raises(ImplicitSolveError, match=r"a loss on the duals needs them unique.*redundant constraints"):
        torch.autograd.grad(sum(d.square().sum() for d in sol.duals), scores)


def test_the_duals_are_differentiable_in_a_given_map():
    h = ca.Graph.from_edges([4, 2, 2], [(0, 1, [0, 0, 1, 1]), (0, 2, [0, 1, 0, 1])])
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 4, generator=g, dtype=torch.float64)
    logits = torch.tensor([[0.3, -0.4]], dtype=torch.float64, requires_grad=True)  # the prior, on the simplex
    weights = [torch.randn(2, 2, generator=g, dtype=torch.float64) for _ in h.edges]

    def loss(z):
        sol = ca.solve([scores, None, torch.zeros(2, 2, dtype=torch.float64)], h, "dual",
                       given={1: torch.softmax(z, 1)}, temperature=[0.5, 1.0, 2.0], tol=1e-12, max_iter=5000)
        return sum((d * w).sum() for d, w in zip(sol.duals, weights))

    assert torch.autograd.gradcheck(loss, (logits,), eps=1e-5, atol=1e-6, rtol=1e-5)  # step: see the test above


@pytest.mark.parametrize("case", FOREST_CASES + NONTREE_CASES)
def test_warm_start_from_a_spanning_forest(case):
    """On a forest the spanning forest's closed form is the optimum: no sweep is needed."""
    inst = random_graph_instance(case, batch=2, seed=11)
    warm = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, warm_start=True)
    cold = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, warm_start=False)
    auto = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10)
    assert ca.metrics.max_abs_err(warm.probs, cold.probs).max() < 1e-8
    assert (cold.info["iterations"] >= 1).all()
    if inst.h.is_forest:
        assert (warm.info["iterations"] == 0).all()
    # the default: the closed form on forests that are not chains, the cold start elsewhere
    same = warm if inst.h.is_forest and not inst.h.is_chain else cold
    assert torch.equal(auto.info["iterations"], same.info["iterations"])


@pytest.mark.parametrize("options, exc, message", [
    ({"gap_tol": 0.0}, ValueError, r"gap_tol must be a positive finite number"),
    ({"gap_tol": "1e-6"}, TypeError, r"gap_tol must be a positive finite number"),
    ({"newton": "yes"}, ValueError, r"newton must be 'auto'"),
    ({"newton": 1}, ValueError, r"newton must be 'auto'"),
    ({"warm_start": "forest"}, ValueError, r"warm_start must be .auto. \(the closed form on forests"),
    ({"warm_start": 1}, ValueError, r"warm_start must be .auto."),  # 1 == True, but not True
    ({"tolerance": 1e-6}, TypeError, r"method 'dual' takes no option\(s\) \['tolerance'\]"),
    ({"warm_start": True, "init": [torch.zeros(4), torch.zeros(3)]}, ValueError, r"init and warm_start=True"),
    ({"init": [torch.zeros(4)]}, ValueError, r"init must hold one tensor per constraint \(2\)"),
    ({"init": [torch.zeros(4), torch.zeros(4)]}, ValueError, r"init\[1\] must have shape \(3,\)"),
])
def test_new_dual_options_are_validated_before_any_work(options, exc, message, monkeypatch):
    import convex_attention.dual as dual_module

    inst = random_graph_instance("axial", batch=2)

    def no_work(*args, **kwargs):
        raise AssertionError("the solver started before its options were checked")

    monkeypatch.setattr(dual_module, "_evaluate", no_work)
    monkeypatch.setattr(dual_module.DualSolveFunction, "apply", no_work)
    with pytest.raises(exc, match=message):
        ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, **options)
    with pytest.raises(exc, match=message):
        ca.ConsistentAttention(inst.h, "dual", **options)


def test_a_gap_above_gap_tol_is_not_converged_and_says_so():
    inst = random_graph_instance("axial", batch=2, seed=2, scale=3.0)
    with pytest.raises(ConvergenceError, match=r"reached the violation tol but not the relative duality gap"):
        solve_dual(inst.scores, inst.h, inst.temps, tol=1e-1, gap_tol=1e-15, max_iter=1)


@pytest.mark.parametrize("scale, tol", [(1e4, 1e-3), (1e3, 1e-6)])
def test_the_gap_stops_the_solver_at_tol_when_gap_tol_is_not_given(scale, tol):
    """gap_tol defaults to tol.  Where the scores cancel across maps the duals are large next
    to the objective, and the violation reaches tol before the gap does: a default gap_tol of
    1e3 stopped there at gaps of 1.7e-2 (found by mutation testing: no test pinned it)."""
    h = ca.Graph.axial((4, 4))
    rows, cols = torch.arange(4.0, dtype=torch.float64).view(4, 1), torch.arange(4.0, dtype=torch.float64).view(1, 4)
    noise = torch.randn((2, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scores = [scale * (rows + cols) + noise, (-scale * rows).expand(2, 4, 1), (-scale * cols).expand(2, 1, 4)]
    assert check_dual_options({"tol": tol}, h, 2, "cpu")["gap_tol"] == tol
    for info in (solve_dual(scores, h, [1.0, 1.0, 1.0], tol=tol), ca.solve(scores, h, "dual", tol=tol).info):
        assert bool(info["converged"].all())
        assert float(info["gap"].max()) <= tol and float(info["violation"].max()) <= tol


def test_solve_dual_checks_given_maps_of_direct_callers():
    """solve_dual's own checks of ``given`` (solve checks more before it): one entry per map,
    scores or probabilities for each, probabilities positive and shaped as their map.  None
    was tested; accepting a zero probability passed every test (found by mutation testing)."""
    h = ca.Graph.grid_regions([(4, 4), (2, 2)], torch.tensor([0, 1, 2] * 5 + [0]))
    z = torch.randn(2, 4, 4, dtype=torch.float64)
    q = torch.softmax(torch.randn(2, 4, dtype=torch.float64), 1).view(2, 2, 2)
    temps = [1.0, 1.0, 1.0]
    solve_dual([z, None, torch.zeros(2, 3, dtype=torch.float64)], h, temps, given=[None, q, None])  # accepted
    refused = [
        ([z, None, None], None, "scores of a map are None but no given probabilities"),
        ([z, None, None], [None, q], "given must hold one entry per map"),
        ([z, q.log(), None], [None, q, None], "map 1: give either its scores or its probabilities"),
        ([z, None, None], [None, torch.where(q == q.max(), 0.0, q), None], r"given\[1\] must be a tensor .* positive"),
        ([z, None, None], [None, q.flatten(1), None], r"given\[1\] must be a tensor \(B, \*\(2, 2\)\)"),
    ]
    for scores, given, message in refused:
        with pytest.raises(ValueError, match=message):
            solve_dual(scores, h, temps, given=given)


def test_nan_in_a_graph_solve_is_never_converged():
    inst = random_graph_instance("grid-regions", batch=3, seed=1)
    scores = [s.clone() for s in inst.scores]
    scores[2][1, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        res = solve_dual(scores, inst.h, inst.temps, strict=False)
    assert res["converged"].tolist() == [True, False, True]


def test_the_failure_advice_on_a_graph_points_to_cvxpylayers_not_exact():
    inst = random_graph_instance("axial", batch=1, seed=3, scale=5.0)
    with pytest.raises(ConvergenceError, match=r"method='cvxpylayers'"):
        solve_dual(inst.scores, inst.h, inst.temps, tol=1e-19, max_iter=30)


def test_a_solve_with_given_maps_starts_from_zero_duals_on_a_forest():
    """There is no warm start with given maps (``solve_dual``'s ``given``): on a forest that is
    not a chain, where ``warm_start='auto'`` would start at a closed form, the solve starts at
    ``λ = 0`` (history row 0) and still reaches the optimum."""
    h = ca.Graph.from_edges([2, 4, 4], [(1, 0, [0, 0, 1, 1]), (2, 0, [0, 1, 0, 1])])  # a star
    assert h.is_forest and not h.is_chain
    gen = torch.Generator().manual_seed(5)
    scores = [torch.randn(2, 2, generator=gen, dtype=torch.float64), None,
              torch.randn(2, 4, generator=gen, dtype=torch.float64)]
    given = [None, torch.softmax(torch.randn(2, 4, generator=gen, dtype=torch.float64), 1), None]
    temps = [0.5, 1.0, 2.0]
    res = solve_dual(scores, h, temps, given=given, tol=1e-10, record_history=True)
    zeros = [torch.zeros(2, 2, dtype=torch.float64) for _ in h.edges]
    torch.testing.assert_close(res["history"]["dual_objective"][0], dual_function(scores, zeros, h, temps, given),
                               rtol=1e-12, atol=0)
    assert bool(res["converged"].all()) and (res["iterations"] >= 1).all()


def test_the_failure_advice_with_given_maps_names_no_method_that_refuses_them():
    """Two given maps that contradict each other: the advice was 'raise tol, or use
    cvxpylayers', which refuses given maps (and a larger tol would accept the disagreement)."""
    h = ca.Graph.from_edges([2, 2, 2], [(0, 1, [0, 1]), (0, 2, [0, 1])])
    first, second = (torch.tensor([[0.3, 0.7]], dtype=torch.float64), torch.tensor([[0.6, 0.4]], dtype=torch.float64))
    with pytest.raises(ConvergenceError, match=r"stalled.*check the given maps.*contradict") as err:
        # max_iter=30: the stall is told by then (the default's 1000 sweeps took 1.5 s to say the same)
        ca.solve([torch.zeros(1, 2, dtype=torch.float64), None, None], h, "dual", given={1: first, 2: second},
                 max_iter=30)
    assert "cvxpylayers" not in str(err.value) and "raise tol" not in str(err.value)


def test_the_inexact_newton_path_for_large_duals(monkeypatch):
    """Above DENSE_LIMIT entries the Newton system is solved by a few conjugate-gradient
    iterations instead of a Cholesky factor: same optimum, still Newton steps taken."""
    import convex_attention.dual as dual_module

    inst = random_graph_instance("mixed-two-resolutions", batch=3, seed=12, scale=3.0)
    dense = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-11)
    monkeypatch.setattr(dual_module, "DENSE_LIMIT", 0)
    iterative = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-11)
    assert iterative.info["converged"].all() and (iterative.info["newton_steps"] >= 1).all()
    assert ca.metrics.max_abs_err(iterative.probs, dense.probs).max() < 1e-9


# ------------------------------------------------------------------ convergence on graph families

def _family(name, size, rng):
    """Scaled-down members of the measured families (docs/math.md §7.4)."""
    from helpers import cutting_regions

    if name == "axial":
        return ca.Graph.axial((size, size))
    regions = cutting_regions((size, size), max(3, size), int(rng.integers(1 << 16))).reshape(size, size)
    if name == "grid-regions":
        return ca.Graph([(size, size), (size // 4, size // 4), int(regions.max()) + 1], [(0, 1), (0, 2, regions)])
    if name == "mixed":  # the chain pools by 4x4 blocks: the stacked dual stays below the dense limit
        return ca.Graph.grid_regions([(size, size), (size // 4, size // 4), (size // 16, size // 16)], regions)
    if name == "star":
        return ca.Graph.star([(size, size)] * 3, (size // 4, size // 4))
    raise KeyError(name)


@pytest.mark.parametrize("name", ["axial", "grid-regions", "mixed", "star"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-10)])
def test_every_instance_of_the_families_converges_within_50_sweeps(name, dtype, tol):
    """N(0, 3²) scores, per-map τ log-uniform in [0.1, 10], 16×16 maps, 24 instances."""
    rng = np.random.default_rng(0)
    for _ in range(6):
        h = _family(name, 16, rng)
        temps = (10 ** rng.uniform(-1, 1, h.num_maps)).tolist()
        g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
        scores = [(3 * torch.randn((4,) + s, generator=g, dtype=torch.float64)).to(dtype) for s in h.shapes]
        sol = ca.solve(scores, h, "dual", temperature=temps, tol=tol, max_iter=50, warm_start=False)
        assert sol.info["converged"].all() and int(sol.info["iterations"].max()) <= 50
        assert float(sol.info["violation"].max()) <= tol


@pytest.mark.slow  # 100 instances per family at 64×64, normal and hard temperatures
@pytest.mark.parametrize("name", ["axial", "grid-regions", "mixed"])
def test_every_instance_converges_at_64x64_normal_and_hard(name):
    rng = np.random.default_rng(1)
    for hard in (False, True):
        for _ in range(25):
            h = _family(name, 64, rng)
            temps = (10 ** rng.uniform(-2 if hard else -1, 1, h.num_maps)).tolist()
            g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
            scores = [3 * torch.randn((4,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
            sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-10, max_iter=200 if hard else 50)
            assert sol.info["converged"].all(), (hard, temps)


def test_a_graph_without_a_strictly_positive_feasible_point_is_still_solved():
    """X's cells sit at (row, column) = (1,1), (2,2) and Y's at (1,1), (1,2), (2,2): X makes the
    row and column marginals equal, so Y's cell (1,2) must be 0 and the dual's infimum is only
    approached as the duals grow (docs/math.md §7.1).  The solver reaches its tolerances, with
    that probability driven to zero, and never reports NaN as converged."""
    g = ca.Graph.from_edges([2, 3, 2, 2], [(0, 2, [0, 1]), (0, 3, [0, 1]), (1, 2, [0, 0, 1]), (1, 3, [0, 1, 1])])
    scores = [torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) for n in g.sizes]
    sol = ca.solve(scores, g, "dual", tol=1e-10)
    assert sol.info["converged"].all() and (sol.violation <= 1e-10).all()
    assert float(sol.probs[1][:, 1].max()) < 1e-9
    assert all(torch.isfinite(d).all() for d in sol.duals)


def test_the_consistency_loss_is_never_negative_at_consistent_maps():
    """One coarse cell: every pair of maps is consistent; rounding gave -6e-8 in float32."""
    h = ca.Hierarchy.grid([(2, 2, 2, 2), (1, 1, 1, 1)])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = [torch.randn((2,) + s, generator=g) for s in h.shapes]
        assert float(ca.consistency_loss(scores, [torch.zeros(1, 1, 1, 1, 1)], h)) >= 0.0


def test_a_newton_direction_too_long_for_every_step_length_is_regularised_instead_of_stalling():
    """Mixed hard instance 64 at 16² (τ = 0.01, 10, 0.029, 0.24: the range's two ends pinned)
    stalled at violation 0.45 after 200 sweeps: its Hessian has directions of almost no
    curvature (cells of probability ~0 at τ = 0.01), so even 1/32 of every Newton direction
    raised g, and 3 Newton steps were taken in 200 sweeps.  Regularised directions
    (∇²g + ρ s I) d = −∇g converge it in about a dozen sweeps."""
    h, scores, temps = benchmark_instance(16, 64)
    assert min(temps) == 0.01 and max(temps) == 10.0
    out = solve_dual(scores, h, temps, tol=1e-10, max_iter=50, record_history=True)
    assert bool(out["converged"].all()) and int(out["iterations"][0]) <= 30
    assert int(out["newton_steps"][0]) >= int(out["iterations"][0]) - 5  # Newton candidates are taken again
    objective = out["history"]["dual_objective"][:, 0]
    # the safeguard: g never increases, up to the rounding of its evaluation (once converged
    # it sits at its floor, where rounding alone moved sibling instances by 0.5-1 ulp)
    slack = 8 * torch.finfo(objective.dtype).eps * objective.abs()
    assert bool((objective[1:] <= objective[:-1] + slack[:-1]).all())
    assert float(ca.metrics.violation(ca.solve(scores, h, "dual", temperature=temps, tol=1e-10).probs, h)[0]) <= 1e-10


@pytest.mark.slow  # ~8 s: the inexact path's crawl, and CVXPY at 32²; the per-sample test below is fast
def test_a_sample_crawling_on_the_inexact_newton_path_takes_dense_newton_steps(monkeypatch):
    """Above DENSE_LIMIT stacked-dual entries the Newton system was only ever solved by 20
    block-Jacobi conjugate-gradient iterations, which cannot solve it on peaked maps: at 160²
    (D = 1600) 27 of 40 hard mixed instances missed 1e-10 in 200 sweeps.  A sample whose
    violation fell less than tenfold over 5 sweeps now takes its Newton directions from the
    dense Hessian.  Here the inexact path is forced on small instances (DENSE_LIMIT 0)."""
    from convex_attention import dual as dual_module
    from convex_attention import hessian as hessian_module

    monkeypatch.setattr(dual_module, "DENSE_LIMIT", 0)
    shipped = hessian_module.DENSE_FALLBACK_LIMIT
    for i, (h, scores, temps) in enumerate(peaked_mixed_instances()):
        monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 0)  # the inexact path alone, as before
        with pytest.warns(RuntimeWarning, match="did not reach tol"):
            before = solve_dual(scores, h, temps, tol=1e-10, max_iter=50, strict=False)
        assert not bool(before["converged"].any())  # (nor within 200 sweeps: 9e-10 and 1e-3 there)
        monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", shipped)
        after = solve_dual(scores, h, temps, tol=1e-10, max_iter=100)
        assert bool(after["converged"].all()) and int(after["iterations"][0]) <= 50
        probs = reparameterized_probs(scores, after["duals"], h, temps)
        assert float(ca.metrics.violation(probs, h)[0]) <= 1e-10
        if i == 1:  # against CVXPY once (the violation and gap certify the other)
            ref_p, _, _ = reference_solve(h, scores, temps)
            for got, want in zip(flat_np(probs), ref_p):
                np.testing.assert_allclose(got, want, atol=1e-7, rtol=0)


def test_a_sample_that_crawls_above_the_fallback_limit_is_told_why(monkeypatch):
    """Above DENSE_FALLBACK_LIMIT a crawling sample stays on the inexact Newton path: the error
    says so, with the stacked dual's size and the limit; below it, the advice does not appear."""
    from convex_attention import dual as dual_module
    from convex_attention import hessian as hessian_module

    (h, scores, temps), _ = peaked_mixed_instances()
    monkeypatch.setattr(dual_module, "DENSE_LIMIT", 0)
    monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 10)  # the 32² instance has 64 entries
    with pytest.raises(ConvergenceError, match=r"the stacked dual has 64 entries, above the 10 up to which a sample "
                                               r"that crawls takes dense Newton steps"):
        solve_dual(scores, h, temps, tol=1e-10, max_iter=20)
    monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 64)
    with pytest.raises(ConvergenceError) as error:  # 8 sweeps are too few either way
        solve_dual(scores, h, temps, tol=1e-10, max_iter=8)
    assert "stacked dual" not in str(error.value)


def test_the_dense_fallback_is_decided_per_sample(monkeypatch):
    """A crawling sample moves to dense Newton directions alone, and for good: batched with a
    sample that does not crawl, only the crawling one is given dense directions, on every sweep
    from its first, and each gets the sweeps and maps it gets on its own."""
    from convex_attention import dual as dual_module

    monkeypatch.setattr(dual_module, "DENSE_LIMIT", 0)
    dense_rows: list[int] = []
    paths: list[str] = []  # the path of sample 0's plain Newton direction, sweep by sweep
    dense_directions, cg_directions = dual_module._dense_newton_directions, dual_module._cg_newton_directions

    def recording(hess, probs, temps, grad, rows, regularisation=0.0):
        dense_rows.extend(rows.tolist())
        if not regularisation and 0 in rows.tolist():
            paths.append("dense")
        return dense_directions(hess, probs, temps, grad, rows, regularisation)

    def recording_cg(hess, probs, temps, grad, rows):
        if 0 in rows.tolist():
            paths.append("cg")
        return cg_directions(hess, probs, temps, grad, rows)

    monkeypatch.setattr(dual_module, "_dense_newton_directions", recording)
    monkeypatch.setattr(dual_module, "_cg_newton_directions", recording_cg)
    (h, crawling, temps), _ = peaked_mixed_instances()
    easy = [torch.randn_like(s) * 0.1 for s in crawling]  # nearly uniform maps
    alone = []
    for scores in (crawling, easy):
        dense_rows.clear()
        alone.append((solve_dual(scores, h, temps, tol=1e-10, max_iter=200), len(dense_rows)))
    assert alone[0][1] > 0 and alone[1][1] == 0  # the crawling sample took dense directions, the other none
    dense_rows.clear()
    paths.clear()
    batch = solve_dual([torch.cat([a, b]) for a, b in zip(crawling, easy)], h, temps, tol=1e-10, max_iter=200)
    assert set(dense_rows) == {0}
    # one plain direction per sweep; sticky: once dense, dense on every later sweep (a switch
    # judged afresh each sweep went back to conjugate gradients whenever a window fell tenfold)
    switched = paths.index("dense")
    assert len(paths) == int(batch["iterations"][0]) and dual_module._CRAWL_WINDOW <= switched
    assert paths == ["cg"] * switched + ["dense"] * (len(paths) - switched)
    together = reparameterized_probs([torch.cat([a, b]) for a, b in zip(crawling, easy)], batch["duals"], h, temps)
    for i, ((one, _), scores) in enumerate(zip(alone, (crawling, easy))):
        assert int(batch["iterations"][i]) == int(one["iterations"][0])
        # the maps, not the duals: on the crawling sample λ is determined only to ~1e-5 along
        # directions of almost no curvature (the batch's rounding moved it by 3e-5)
        for got, want in zip(together, reparameterized_probs(scores, one["duals"], h, temps)):
            torch.testing.assert_close(got[i], want[0], atol=1e-9, rtol=0)


@pytest.mark.slow  # ~8 s: a 160² graph whose dual is above DENSE_LIMIT, solved and differentiated as shipped
def test_a_graph_above_the_dense_limit_converges_and_differentiates_as_shipped(monkeypatch):
    """Mixed instance 9 of the hard stream at 160² (τ = 0.23, 0.28, 7.6, 3.7; D = 1600): on the
    inexact Newton path alone it had not converged after 100 sweeps; as shipped (the dense
    fallback of crawling samples, the backward's dense retry) it converges within 50 and its
    implicit gradient agrees with a five-point difference."""
    from convex_attention import hessian as hessian_module
    from convex_attention.bench.differences import five_point_derivative

    h, scores, temps = benchmark_instance(160, 9)
    assert hessian_module.DENSE_LIMIT < hessian_module.get_hessian(h, "cpu").dim <= hessian_module.DENSE_FALLBACK_LIMIT
    rng = torch.Generator().manual_seed(3)
    weights = [torch.randn(s.shape, generator=rng, dtype=torch.float64) for s in scores]
    direction = [torch.randn(s.shape, generator=rng, dtype=torch.float64) for s in scores]

    def loss(x, **options):
        sol = ca.solve(x, h, "dual", temperature=temps, tol=1e-12, max_iter=100, **options)
        return sum((p * w).sum() for p, w in zip(sol.probs, weights)), sol

    leaves = [s.clone().requires_grad_() for s in scores]
    value, sol = loss(leaves)
    assert bool(sol.info["converged"].all()) and int(sol.info["iterations"][0]) <= 50
    grads = torch.autograd.grad(value, leaves)
    along = float(sum((gk * d).sum() for gk, d in zip(grads, direction)))
    with torch.no_grad():
        reference = five_point_derivative(lambda t: float(loss([s + t * d for s, d in zip(scores, direction)])[0]))
    assert abs(along - reference) <= 1e-6 * max(1.0, abs(reference))
    monkeypatch.setattr(hessian_module, "DENSE_FALLBACK_LIMIT", 0)  # the inexact path alone, as before
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        _, before = loss(scores, strict=False)
    assert not bool(before.info["converged"].any())


def test_warm_start_true_with_given_maps_is_refused_before_any_work():
    """A structure with given maps has no closed form to start from (found by mutation testing:
    the refusal was untested)."""
    h = ca.Graph.from_edges([2, 2], [(0, 1, [0, 1])])
    given = {1: torch.tensor([[0.3, 0.7]], dtype=torch.float64)}
    scores = [torch.zeros(1, 2, dtype=torch.float64), None]
    with pytest.raises(ValueError, match=r"warm_start=True starts from a closed form, which a structure with given "
                                         r"maps does not have"):
        ca.solve(scores, h, "dual", given=given, warm_start=True)
    assert bool(ca.solve(scores, h, "dual", given=given).info["converged"].all())  # 'auto' starts from zero


def test_a_stall_is_judged_over_a_full_window_of_sweeps_only():
    """Fewer sweeps than the window: 'still converging, raise max_iter', even where the violation
    has not halved; from a full window on, the same sample is called stalled (the window's
    clause survived mutation testing)."""
    from convex_attention.dual import _PROGRESS_WINDOW

    h = ca.Graph.from_edges([2, 2, 2], [(0, 1, [0, 1]), (0, 2, [0, 1])])
    given = {1: torch.tensor([[0.3, 0.7]], dtype=torch.float64), 2: torch.tensor([[0.6, 0.4]], dtype=torch.float64)}
    scores = [torch.zeros(1, 2, dtype=torch.float64), None, None]
    with pytest.raises(ConvergenceError, match=rf"still converging after max_iter={_PROGRESS_WINDOW - 1} sweeps"):
        ca.solve(scores, h, "dual", given=given, max_iter=_PROGRESS_WINDOW - 1)
    with pytest.raises(ConvergenceError, match=rf"stalled .*less than halved over the last {_PROGRESS_WINDOW} sweeps"):
        ca.solve(scores, h, "dual", given=given, max_iter=_PROGRESS_WINDOW)


def test_dual_converged_float64_maps_meet_tol_with_offsets_and_cold_maps():
    """A hostile review: with a constant per map (~3e4) at τ ~ 1e-6 the maps recomputed at the
    duals missed tol (2e-6) behind an iterate at 7.8e-7, returned as converged: float64 work
    was not judged as returned, and the logits had lost their differences' digits.  The
    solver now works on scores centred per map (a constant changes no solution)."""
    # the axial (4, 3) graph; scores 3τ·N(0, 1) plus a constant per map (which moves no solution)
    h = make_graph("axial")
    gen = torch.Generator().manual_seed(60)
    tau = 10 ** float(-6 + 4 * torch.rand(1, generator=gen))
    off = 10 ** float(3 + 4 * torch.rand(1, generator=gen))
    base = [tau * 3 * torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    scores = [b + off * float(torch.randn(1, generator=gen)) for b in base]
    temps = [tau * 10 ** float(torch.rand(1, generator=gen)) for _ in range(h.num_maps)]
    sol = ca.solve(scores, h, "dual", temperature=temps)  # strict: returning means converged
    assert bool(sol.info["converged"].all())
    # documented: a sample counts as converged only if the maps *as returned* meet tol
    assert float(sol.violation.max()) <= 1e-6


def test_dual_unresolvable_temperatures_raise_or_meet_tol_on_star():
    """A hostile review: at τ = 1e∓20 the iterate measured violation 0 and the returned maps
    1.5 (0.75 from exact's), returned as converged."""
    h = make_graph("star")  # maps 0, 1, 2 pooled onto map 3: a forest, 'exact' is the reference
    temps = [1e-20, 1e20, 1e-20, 1e20]  # within validation.temperature_range(float64)
    gen = torch.Generator().manual_seed(0)
    scores = [2 * torch.rand((1,) + s, generator=gen, dtype=torch.float64) - 1 for s in h.shapes]
    # documented: where float64 cannot resolve the optimum, ConvergenceError says so; else tol is met
    try:  # the stall shows within 60 sweeps (1000, the default, take 1.4 s)
        sol = ca.solve(scores, h, "dual", temperature=temps, max_iter=60)
    except ConvergenceError:
        return
    exact = ca.solve(scores, h, "exact", temperature=temps)
    assert float(exact.violation.max()) <= 1e-12
    assert float(sol.violation.max()) <= 1e-6
    assert max(float((p - q).abs().max()) for p, q in zip(sol.probs, exact.probs)) <= 1e-6


def test_dual_large_finite_init_still_meets_tol_when_converged():
    """A hostile review: from init ~1e30 the iterate's logits drifted from η(λ); it measured
    violation 0 and gap 0, and the returned maps violated by 2.0, returned as converged."""
    h = make_graph("axial")
    gen = torch.Generator().manual_seed(1)
    scores = [2.0 * torch.randn((2,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    temps = [0.5, 0.7, 0.9]
    gen = torch.Generator().manual_seed(5)
    init = [1e30 * torch.randn((2,) + h.shapes[b], generator=gen, dtype=torch.float64) for _, b in h.edges]
    try:  # documented: the answer is the optimum to tol, or an error (a start that swamps the scores is refused)
        sol = ca.solve(scores, h, "dual", temperature=temps, init=init)
    except ValueError as err:
        assert "init" in str(err)
        return
    except ConvergenceError:
        return
    reference = ca.solve(scores, h, "dual", temperature=temps)
    assert float(sol.violation.max()) <= 1e-6
    assert max(float((p - q).abs().max()) for p, q in zip(sol.probs, reference.probs)) <= 1e-5


def test_a_constant_per_map_moves_the_history_of_g_by_itself_and_nothing_else():
    """The solver works on centred scores; ``history``'s ``g`` stays that of the scores as
    passed (each map's probabilities sum to one: a constant c_k adds c_k to g)."""
    h = make_graph("axial")
    gen = torch.Generator().manual_seed(3)
    scores = [torch.randn((2,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    constants = torch.tensor([[5.0, -2.0, 7.5], [0.25, 1.0, -3.0]], dtype=torch.float64)  # (B, M)
    temps = [0.5, 1.0, 2.0]
    # tol 1e-6: both samples stop after sweep 2 (violation 1.6e-10 and 2.2e-7, gap <= 1.6e-8), and every choice
    # of the safeguard there is decided by g differences of 6e-11 or more, 7e4 times g's rounding (8.9e-16).  At
    # tol 1e-10 the sweeps went on to where candidates' g tie at their rounding (sample 1's full Newton step
    # refused at 1 ulp, 5.287801239381648 against 5.287801239381647): which choice the shift's rounding flipped
    # was the CPU's, and so the sweeps it cost (none with torch's AVX2 and AVX-512 kernels, 1 on an Intel Xeon,
    # 2 with ATEN_CPU_CAPABILITY=default: ca_rev220)
    plain = solve_dual(scores, h, temps, tol=1e-6, record_history=True)
    shifted = solve_dual([s + constants[:, k].reshape((2,) + (1,) * (s.dim() - 1)) for k, s in enumerate(scores)],
                         h, temps, tol=1e-6, record_history=True)
    assert plain["iterations"].tolist() == shifted["iterations"].tolist()  # (2 and 2 here)
    for a, b in zip(plain["duals"], shifted["duals"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    g_plain, g_shifted = plain["history"]["dual_objective"], shifted["history"]["dual_objective"]
    n = min(len(g_plain), len(g_shifted))
    assert n >= 3
    torch.testing.assert_close(g_shifted[:n] - g_plain[:n], constants.sum(1).expand_as(g_plain[:n]), atol=1e-12,
                               rtol=0)


def test_float64_maps_float64_cannot_resolve_warn_and_are_not_converged_without_strict():
    """τ = 1e∓20 on a star: the iterate's logits measured violation 0 while the maps returned
    at its duals violated by 1.5 (a review); confirmed at the recomputed logits, the sample
    goes on sweeping, stalls, and says why."""
    h = make_graph("star")
    gen = torch.Generator().manual_seed(0)
    scores = [2 * torch.rand((1,) + s, generator=gen, dtype=torch.float64) - 1 for s in h.shapes]
    with pytest.warns(RuntimeWarning, match="stalled at violation 1.5.*cannot resolve the optimum in float64.*"
                                            "method='exact'"):
        sol = ca.solve(scores, h, "dual", temperature=[1e-20, 1e20, 1e-20, 1e20], strict=False, max_iter=60)
    assert not bool(sol.info["converged"].any()) and float(sol.info["returned_violation"][0]) > 1.0


def test_dual_centring_keeps_scores_within_the_score_limit_finite():
    """solve_dual_method's docstring: it takes every input solve accepts (scores within
    validation.score_limit) and its iterates stay finite there.  A review: centring the scores
    by their mean overflowed (the sum of 16 cells at 0.45 of the limit) and the solve said the
    scores were not finite."""
    from convex_attention.validation import score_limit

    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    c = 0.45 * score_limit(torch.float64)  # Σ_k max |θ_k| = 0.9 of the limit
    scores = [torch.full((1,) + s, c, dtype=torch.float64) for s in h.shapes]
    for s in scores:
        s.view(-1)[0] = 0.0
    exact = ca.solve(scores, h, "exact", temperature=[1.0, 1.0])
    sol = ca.solve(scores, h, "dual", temperature=[1.0, 1.0])
    assert float(sol.violation.max()) <= 1e-6
    assert max(float((p - q).abs().max()) for p, q in zip(sol.probs, exact.probs)) <= 1e-6


def test_float64_maps_of_a_confirmed_stop_meet_tol_at_a_cold_temperature():
    """Documented (docs/design.md §4): a stopping sample is confirmed at the logits recomputed at
    its centred duals, where its maps are returned; float64 maps may differ from that measure by
    16 units of ``dual.rounding_margin``.  At τ = 0.003 the returned maps measured 1.457e-13
    behind a confirmed iterate at 3.59e-14, and tol=1e-13 raised ConvergenceError: the returned
    duals were centred a second time, a rounding step that τ = 0.003 magnified (a review)."""
    h = ca.Graph.axial((16, 16))
    scores = [3 * torch.randn((1,) + s, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
              for s in h.shapes]
    sol = ca.solve(scores, h, "dual", temperature=[0.003, 0.5, 1.0], tol=1e-13, gap_tol=1.0, max_iter=300)
    assert bool(sol.info["converged"].all())


def _review10_maps(seed, top, spread, low):
    g = torch.Generator().manual_seed(seed)
    s0 = top + spread * torch.randn((4, 8, 8), generator=g, dtype=torch.float64)
    s0[:, 0, 0] = low
    s1 = spread * torch.randn((4, 4, 4), generator=g, dtype=torch.float64)
    return [s0, s1]


def test_float64_maps_are_computed_at_the_scores_the_solver_confirmed_them_at():
    """The returned float64 maps are those the reported violation was measured on, up to the
    rounding of computing them again (docs/design.md §4: 16 units of rounding_margin), and a tol
    at that violation stays met.  A review: the maps were computed at scores centred once and
    confirmed at scores centred twice (the midpoint is not idempotent to the last bit; τ 1e-3
    magnified it): 5.7e-14 returned for 4.5e-14 measured, and that tol raised."""
    h = ca.Hierarchy([(8, 8), (4, 4)])
    scores = [s[:1] for s in _review10_maps(1, 0.3, 1e-3, -1.211)]
    first = ca.solve(scores, h, "dual", temperature=1e-3, tol=1e-9, gap_tol=1.0)
    tol = float(first.info["violation"][0])
    again = ca.solve(scores, h, "dual", temperature=1e-3, tol=tol, gap_tol=1.0)  # raised ConvergenceError
    for sol in (first, again):
        assert float(sol.info["returned_violation"][0]) == pytest.approx(float(sol.info["violation"][0]), rel=0,
                                                                          abs=1e-15)


def test_float64_maps_at_a_warm_temperature_and_large_logits_are_the_maps_that_were_confirmed():
    """A review: the confirmation measured (η − max η)/τ, the returned maps were level_softmax's,
    which divides by τ first for τ > 1: at logits of 3e5 and τ 7.3 they were 4e-13 apart."""
    h = ca.Hierarchy([(8, 8), (4, 4)])
    scores = [s[2:3] for s in _review10_maps(4, 3e5, 2.0, -3e5)]
    first = ca.solve(scores, h, "dual", temperature=7.3, tol=1e-9, gap_tol=1.0)
    tol = float(first.info["violation"][0])
    again = ca.solve(scores, h, "dual", temperature=7.3, tol=tol, gap_tol=1.0)  # raised ConvergenceError
    for sol in (first, again):
        assert float(sol.info["returned_violation"][0]) == pytest.approx(float(sol.info["violation"][0]), rel=0,
                                                                          abs=1e-15)


def test_public_dual_probs_of_half_precision_inputs_are_the_softmax_computed_in_float32():
    """A review: computed as the solver measures the maps, in the inputs' dtype, η − max η
    overflowed float16 at ±6e4, and a cell of probability 0.126 came back as 0."""
    h = ca.Hierarchy([(4,), (2,)])
    scores = [torch.tensor([[6e4, -6e4, 1.0, 0.0]]).half(), torch.zeros(1, 2).half()]
    duals = [torch.zeros(1, 2).half()]
    probs, _ = dual_probs(scores, duals, h, [1e5, 1e5])
    want = torch.softmax(scores[0].double() / 1e5, dim=1)
    assert torch.allclose(probs[0].double(), want, atol=2e-3)


def test_public_dual_probs_temperature_gradient_is_finite_at_a_tiny_tensor_temperature():
    """A review: a plain division by a tensor τ of 1e-30 made its gradient 0·inf = NaN."""
    h = ca.Hierarchy([(4,), (2,)])
    scores = [torch.tensor([[1.0, 0.0, -1.0, 0.5]]), torch.zeros(1, 2)]
    tau = torch.tensor(1e-30, requires_grad=True)
    probs, _ = dual_probs(scores, [torch.zeros(1, 2)], h, [tau, torch.tensor(1.0)])
    (grad,) = torch.autograd.grad(probs[0][0, 1], tau)
    assert torch.isfinite(grad)


@pytest.mark.parametrize("case", ["2d-2lvl", "3d-3lvl"] + GRAPH_CASES)
def test_the_maps_of_a_converged_batch_are_the_ones_measured_where_each_sample_stopped(case):
    """A batch whose every sample stopped at a confirmed point returns the maps the solver
    measured there (not computed again: the forests paid 20-30 % for that), bit for bit
    p(λ) at the returned duals as dual_probs computes it.  On the grid chains one sample
    meets tol at its start (constant scores: the uniform maps, λ = 0) and is never swept
    while the others are; the forests start at their closed form (no sweep at all).  The
    method solves each component with a constraint apart (Graph.solved_apart): per part."""
    inst = random_instance(case, batch=3) if case in ALL_CASES else random_graph_instance(case, batch=3)
    scores = [s.clone() for s in inst.scores]
    for s in scores:
        s[1] = 0.7
    sol = ca.solve(scores, inst.h, "dual", temperature=inst.temps, tol=1e-10)  # the method returns them
    warm = "auto" if inst.h.is_chain else inst.h.is_forest  # the method's default, decided on the whole graph
    for maps, _, part in inst.h.solved_apart():
        sub, temps = [scores[k] for k in maps], [inst.temps[k] for k in maps]
        returned: dict = {}
        result = solve_dual(sub, part, temps, tol=1e-10, warm_start=warm, _returned=returned)
        assert returned, "the whole batch converged in float64: its measured maps are kept"
        if case in ALL_CASES:
            assert int(result["iterations"][1]) == 0 and int(result["iterations"].max()) > 0
        elif case in NONTREE_CASES and not part.is_forest:
            assert int(result["iterations"].max()) > 0  # swept, and confirmed where they stopped
        centred, _ = _centred_scores(sub)
        want, cond = dual_probs(centred, result["duals"], part, temps)
        assert all(torch.equal(p, w) for p, w in zip(returned["probs"], want))
        assert all(torch.equal(c, d) for c, d in zip(_conditionals(part, returned["etas"], temps), cond))
        assert all(torch.equal(sol.probs[k], w) for k, w in zip(maps, want))


def test_maps_are_computed_again_where_a_sample_missed_or_the_work_is_float32_or_maps_are_given():
    """The measured maps are kept only where they are every sample's returned maps: not when
    a sample missed tol (its maps are at its last duals), not in float32 work (no
    confirmation there), not with given maps (returned as given)."""
    inst = random_graph_instance("axial", batch=2, seed=3, scale=3.0)
    for options in ({"tol": 1e-12, "max_iter": 1, "strict": False},):
        returned: dict = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = solve_dual(inst.scores, inst.h, inst.temps, _returned=returned, **options)
        assert not bool(result["converged"].all()) and returned == {}
    returned = {}
    solve_dual([s.float() for s in inst.scores], inst.h, inst.temps, tol=1e-5, _returned=returned)
    assert returned == {}
    q = torch.full((2, 4), 0.25, dtype=torch.float64)
    returned = {}
    solve_dual([inst.scores[0], None, inst.scores[2]], inst.h, inst.temps, given=[None, q, None], _returned=returned)
    assert returned == {}


def test_maps_kept_after_a_refused_confirmation_are_those_of_the_confirmation_that_held(monkeypatch):
    """A sample whose first confirmation is refused sweeps on from the recomputed state and
    stops at a later one: the maps returned are those measured there, bit for bit p(λ) at
    the returned duals (a review's suggested case; the first confirmation of every sample is
    refused here by hand, as drift refuses it after a start of 1e30)."""
    from convex_attention import dual

    real, calls = dual._confirm_as_returned, []

    def refuse_first(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(bool(out[5].any()))
        if len(calls) == 1:
            out = (*out[:5], torch.zeros_like(out[5]), out[6])  # every stopping sample refused, once
        return out

    monkeypatch.setattr(dual, "_confirm_as_returned", refuse_first)
    inst = random_graph_instance("axial", batch=4, seed=3)
    returned: dict = {}
    result = solve_dual(inst.scores, inst.h, inst.temps, tol=1e-10, _returned=returned)
    assert len(calls) >= 2 and calls[0] and returned and bool(result["converged"].all())
    centred, _ = _centred_scores(inst.scores)
    want, _ = dual_probs(centred, result["duals"], inst.h, inst.temps)
    assert all(torch.equal(p, w) for p, w in zip(returned["probs"], want))


def test_a_constant_added_to_the_incoming_gradient_changes_nothing():
    """Σ_k ⟨c + w_k, p_k⟩ and Σ_k ⟨w_k, p_k⟩ differ by the constant c·M, so their gradients are
    equal (a cross-entropy against a near-uniform or smoothed target has this form). Moderate
    maps (N(0, 3²) scores, τ = 0.1), where the backward of the unshifted loss succeeds; the
    shifted one raised ImplicitSolveError (a review: the rounding of <p, v> left the right-hand
    side outside the Hessian's range)."""
    inst = random_graph_instance("disconnected", batch=4, seed=3, scale=3.0)
    temps = [0.1] * inst.h.num_maps
    scores = [s.clone().requires_grad_() for s in inst.scores]
    sol = ca.solve(scores, inst.h, "dual", temperature=temps, tol=1e-12)
    g = torch.Generator().manual_seed(0)
    w = [1e-3 * torch.randn(p.shape, generator=g, dtype=torch.float64) for p in sol.probs]
    plain = torch.autograd.grad(sum((p * x).sum() for p, x in zip(sol.probs, w)), scores, retain_graph=True)
    shifted = torch.autograd.grad(sum((p * (5.0 + x)).sum() for p, x in zip(sol.probs, w)), scores)
    scale = max(float(a.abs().max()) for a in plain)
    for a, b in zip(shifted, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8 * scale)


def test_the_gradient_of_a_constant_loss_is_zero():
    """A review: sol.probs[0].sum() (the constant 1 per sample) made the backward raise
    ImplicitSolveError blaming the Hessian's conditioning."""
    inst = random_graph_instance("axial", batch=4, seed=3, scale=3.0)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    sol = ca.solve(scores, inst.h, "dual", temperature=[0.1] * inst.h.num_maps, tol=1e-12)
    grads = torch.autograd.grad(sol.probs[0].sum(), scores)
    for x in grads:
        assert float(x.abs().max()) <= 1e-12


# ------------------------------------------------------------------ given maps: a review of b0ee9fd

def test_the_gradient_in_a_given_map_is_the_one_math_md_states():
    """A review: math.md §7.6 gave q̄_k = v_k − A_k w, but each given map is divided by its sum
    first, so the gradient in the q passed is its projection q̄_k − <q̄_k, q_k> 1."""
    reg = torch.tensor([[0, 1, 2, 2], [0, 1, 1, 2], [0, 0, 1, 2], [2, 2, 1, 0]])
    h = ca.Graph.grid_regions([(4, 4), (2, 2)], reg)
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(1, 4, 4, generator=gen, dtype=torch.float64),
              torch.randn(1, 2, 2, generator=gen, dtype=torch.float64), None]
    q = torch.softmax(torch.randn(1, 3, generator=gen, dtype=torch.float64), 1).requires_grad_()
    sol = ca.solve(scores, h, "dual", given={2: q}, tol=1e-12)
    c = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    (sol.probs[2] * c).sum().backward()
    # math.md §7.6: v_2 = c, and w = 0 (no scored map's loss): q̄_2 = c, projected off q
    torch.testing.assert_close(q.grad, c - (c * q.detach()).sum(), atol=1e-9, rtol=0)


def test_a_large_constant_in_the_incoming_gradient_does_not_zero_an_exactly_representable_signal():
    """Σ_k ⟨c + w_k, p_k⟩ with c = 2²⁷ and w_k integer multiples of ulp(c) = 2⁻²⁵ in [-100, 100]
    (c + w_k is exact in float64, so v carries w_k with no rounding at all): its gradient is that
    of Σ_k ⟨w_k, p_k⟩.  8×8 axial graph, N(0, 2²) scores, τ = 0.5.  The recentred right-hand side
    is computed to full precision, but the noise test compares it with 16·eps·|v| ≈ 16·eps·c and
    zeroes it: the gradient was off by 90 % of itself (directional derivative 2.50e-6 against
    central differences' 3.383e-6); floored on the recentred v it agrees to the output's own
    rounding (eps·c·p/τ, 1-3 % here), and recentring the output too, to 1e-12."""
    h = ca.Graph.axial((8, 8))
    g = torch.Generator().manual_seed(1)
    base = [2.0 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [0.5] * h.num_maps
    c, ulp = 2.0 ** 27, 2.0 ** -25
    w = [torch.randint(-100, 101, (2,) + s, generator=g).double() * ulp for s in h.shapes]
    assert all(torch.equal((c + x) - c, x) for x in w)  # the signal survives in v exactly

    def grads(shift):
        scores = [s.clone().requires_grad_() for s in base]
        sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-13)
        return torch.autograd.grad(sum((p * (shift + x)).sum() for p, x in zip(sol.probs, w)), scores)

    plain, shifted = grads(0.0), grads(c)
    # the plain gradient is right: central differences (Richardson) of its loss
    d = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in base]

    def loss(step):
        sol = ca.solve([s + step * u for s, u in zip(base, d)], h, "dual", temperature=temps, tol=1e-14)
        return float(sum((p * x).sum() for p, x in zip(sol.probs, w)))

    central = [(loss(s) - loss(-s)) / (2 * s) for s in (5e-4, 1e-3)]
    richardson = (4 * central[0] - central[1]) / 3
    assert float(sum((a * u).sum() for a, u in zip(plain, d))) == pytest.approx(richardson, rel=1e-6)
    for a, b in zip(shifted, plain):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 0.1 * scale


# ---------------------------------------------------------------- hostile review 25 (forward, graphs)

def _flat_union(*graphs):
    """Disconnected union of graphs, as flat maps (``Graph.from_edges``)."""
    sizes, edges, offset = [], [], 0
    for g in graphs:
        sizes += list(g.sizes)
        edges += [(a + offset, b + offset, g.parents(e).reshape(-1)) for e, (a, b) in enumerate(g.edges)]
        offset += g.num_maps
    return ca.Graph.from_edges(sizes, edges)


def test_dual_components_at_different_scales_are_solved_as_alone():
    """docs/design.md §1: 'disconnected parts are independent problems solved in one call'; and a
    common factor on a component's scores and temperatures leaves its solution unchanged (§4,
    the advice of the score limit).  The oracle: each component solved on its own graph."""
    from convex_attention.bench.graph_targets import draw_instance

    g, scores, temps = draw_instance("mixed", 16, torch.Generator().manual_seed(1), (-2, 1), 1, pin_ends=True)
    h = _flat_union(g)
    scores = [s.reshape(1, -1) for s in scores]
    alone = []
    for c in (1e8, 1e-8):
        sol = ca.solve([c * s for s in scores], h, "dual", temperature=[c * t for t in temps], tol=1e-10,
                       max_iter=100)
        assert sol.info["converged"].all() and int(sol.info["iterations"].max()) <= 20
        alone.append(sol)
    both = _flat_union(h, h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sol = ca.solve([1e8 * s for s in scores] + [1e-8 * s for s in scores], both, "dual",
                       temperature=[1e8 * t for t in temps] + [1e-8 * t for t in temps], tol=1e-10, max_iter=100,
                       strict=False)
    assert bool(sol.info["converged"].all()), (sol.info["iterations"], sol.info["violation"])
    for got, want in zip(sol.probs, alone[0].probs + alone[1].probs):
        assert float((got - want).abs().max()) <= 1e-8


@pytest.mark.parametrize("start, work", [(1e308, torch.float64), (6e307, torch.float64), (1e39, torch.float32)])
def test_dual_constant_init_is_only_a_gauge(start, work):
    """docs/design.md §2: 'Adding a constant to λ_k changes neither g nor p(λ)'; `init` is
    validated before any work (finite).  A constant start is the zero start: it must either be
    refused naming `init` (a ValueError) or give the zero start's solution."""
    inst = random_graph_instance("axial", batch=2, seed=3)
    h = inst.h
    init = [torch.full(h.shapes[b], start, dtype=torch.float64) for _, b in h.edges]
    tol = 1e-8 if work == torch.float64 else 1e-5
    ref = ca.solve(inst.scores, h, "dual", temperature=inst.temps, tol=tol, dtype=work)
    try:
        sol = ca.solve(inst.scores, h, "dual", temperature=inst.temps, tol=tol, dtype=work, init=init,
                       max_iter=100)
    except ValueError as err:
        assert "init" in str(err)
        return
    assert bool(sol.info["converged"].all())
    for got, want in zip(sol.probs, ref.probs):
        assert float((got - want).abs().max()) <= 1e-6


@pytest.mark.parametrize("name", ["tol", "gap_tol"])
def test_dual_huge_integer_tolerance_is_refused_naming_it(name):
    """check_dual_options: 'Raises TypeError/ValueError naming the option and its accepted range'."""
    inst = random_graph_instance("axial", batch=1, seed=0)
    with pytest.raises((TypeError, ValueError), match=name):
        ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, **{name: 10 ** 400})


# ---------------------------------------------------------------- components solved apart

def _part_solutions(inst, **options):
    """Each part of ``inst.h.solved_apart()`` solved as a graph of its own: the oracle of the
    method's per-component solve (docs/design.md §1)."""
    return [(maps, edges, ca.solve([inst.scores[k] for k in maps], part, "dual",
                                   temperature=[inst.temps[k] for k in maps], **options))
            for maps, edges, part in inst.h.solved_apart()]


def test_components_are_solved_apart_and_reported_by_their_worst():
    """The 'disconnected' graph (an axial part, a chain, a map on its own): every map and dual
    is its part's, solved alone, and info gives per sample the worst part (the most sweeps,
    the largest violation, converged where every part is); the history pads a part that
    stopped, and its dual objective is the sum of the parts' (g is their sum)."""
    inst = random_graph_instance("disconnected", batch=3, seed=4, scale=3.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10, record_history=True)
    parts = _part_solutions(inst, tol=1e-10, record_history=True, warm_start=False)
    assert [maps for maps, _, _ in parts] == [[0, 1, 2, 5], [3, 4]]
    for maps, edges, alone in parts:
        assert all(torch.equal(sol.probs[k], p) for k, p in zip(maps, alone.probs))
        assert all(torch.equal(sol.duals[e], d) for e, d in zip(edges, alone.duals))
    infos = [alone.info for _, _, alone in parts]
    assert torch.equal(sol.info["iterations"], torch.maximum(*[i["iterations"] for i in infos]))
    assert torch.equal(sol.info["violation"], torch.maximum(*[i["violation"] for i in infos]))
    assert torch.equal(sol.info["converged"], infos[0]["converged"] & infos[1]["converged"])
    history = sol.info["history"]
    assert len(history["violation"]) == max(len(i["history"]["violation"]) for i in infos)
    final = sum(i["history"]["dual_objective"][-1] for i in infos)
    assert torch.allclose(history["dual_objective"][-1], final, rtol=1e-14, atol=0)
    assert torch.allclose(history["dual_objective"][-1], sol.dual_objective, rtol=1e-12, atol=1e-12)


def test_components_solved_apart_carry_their_own_gradients():
    """The gradient of a loss on every map, scores and temperatures, equals the parts' own
    (each part has its own implicit backward): the isolated map's is its softmax's."""
    inst = random_graph_instance("disconnected", batch=2, seed=1)
    weights = [torch.randn(s.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
               for k, s in enumerate(inst.scores)]
    leaves = [s.clone().requires_grad_() for s in inst.scores]
    taus = [torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in inst.temps]
    sol = ca.solve(leaves, inst.h, "dual", temperature=taus, tol=1e-12)
    whole = torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), leaves + taus)
    for maps, _, part in inst.h.solved_apart():
        sub = [inst.scores[k].clone().requires_grad_() for k in maps]
        sub_taus = [torch.tensor(inst.temps[k], dtype=torch.float64, requires_grad=True) for k in maps]
        alone = ca.solve(sub, part, "dual", temperature=sub_taus, tol=1e-12, warm_start=False)
        grads = torch.autograd.grad(sum((p * weights[k]).sum() for k, p in zip(maps, alone.probs)), sub + sub_taus)
        for i, k in enumerate(maps):
            assert torch.allclose(whole[k], grads[i], rtol=1e-10, atol=1e-12)
            assert torch.allclose(whole[len(leaves) + k], grads[len(maps) + i], rtol=1e-10, atol=1e-12)


def test_a_component_that_fails_is_named_in_the_error_and_the_warning():
    """A part that misses tol raises (strict) or warns (strict=False) naming its maps, whose
    numbers in the part's own message are the part's."""
    inst = random_graph_instance("disconnected", batch=2, seed=2, scale=4.0, temps=[0.05, 2.0, 0.1, 0.05, 3.0, 1.0])
    with pytest.raises(ConvergenceError, match=r"in the component of maps \[0, 1, 2, 5\]"):
        ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12, max_iter=1)
    with pytest.warns(RuntimeWarning, match=r"in the component of maps \[0, 1, 2, 5\]"):
        sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-12, max_iter=1, strict=False)
    assert not bool(sol.info["converged"].any())


def test_components_solved_apart_take_their_share_of_init_and_given_maps():
    """init (one start per edge) and given maps reach the part that owns them: the same as each
    part solved alone with its own."""
    inst = random_graph_instance("disconnected", batch=2, seed=5)
    g = torch.Generator().manual_seed(9)
    init = [torch.randn((2,) + inst.h.shapes[b], generator=g, dtype=torch.float64) for _, b in inst.h.edges]
    prior = torch.softmax(torch.randn((2,) + inst.h.shapes[4], generator=g, dtype=torch.float64), 1)
    scored = [None if k == 4 else s for k, s in enumerate(inst.scores)]
    sol = ca.solve(scored, inst.h, "dual", temperature=inst.temps, given={4: prior}, init=init, tol=1e-11)
    for maps, edges, part in inst.h.solved_apart():
        given = {i: prior for i, k in enumerate(maps) if k == 4}
        alone = ca.solve([scored[k] for k in maps], part, "dual", temperature=[inst.temps[k] for k in maps],
                         given=given or None, init=[init[e] for e in edges], tol=1e-11)
        assert all(torch.equal(sol.probs[k], p) for k, p in zip(maps, alone.probs))


# ---------------------------------------------------------------- hostile review 27 (components solved apart)

def _opposite_parts_instance(seed: int = 2):
    """Two components whose centred objectives f̄ are about +250 and -250 (a 2-cell identity pair;
    a 4-cell map with two coarsenings whose pooled scores are all negative), so that the whole
    problem's f̄ is O(1): one noise draw per seed."""
    c = 1e3
    h = ca.Graph.from_edges([2, 2, 4, 2, 2], [(0, 1, torch.arange(2)), (2, 3, torch.tensor([0, 0, 0, 1])),
                                              (2, 4, torch.tensor([0, 1, 1, 1]))])
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn((1, n), generator=g, dtype=torch.float64) for n in (2, 2, 4, 2, 2)]
    base = [[c / 4, -c / 4], [c / 4, -c / 4], [c / 2, c / 2, c / 2, -3 * c / 2], [-c, c], [0.0, 0.0]]
    return h, [torch.tensor([b], dtype=torch.float64) + n for b, n in zip(base, noise)]


def test_review27_converged_certifies_the_relative_gap_of_the_whole_problem():
    """docs/design.md §4: gap_tol bounds 'the relative duality gap |g(λ) − f(p(λ))| / max(1, |f̄(p(λ))|)'
    and info's gap is what the solve certifies (Solution docstring).  The oracle: that quantity
    computed from the returned maps and duals (Solution.objective, dual_gap_terms), independent of
    how the solve was split.  93ee0e3 returned a whole gap of 6.4e-12 here."""
    from convex_attention.dual import dual_gap_terms
    h, scores = _opposite_parts_instance()
    sol = ca.solve(scores, h, "dual", temperature=0.3, tol=1e-6)
    assert bool(sol.info["converged"].all())
    whole = dual_gap_terms(sol.dual_objective, sol.probs, sol.duals, h, score_offset(scores))[1]
    assert float(whole.max()) <= 1e-6, (float(whole.max()), sol.info["gap"])


def test_review27_the_advice_of_a_stalled_component_names_a_method_that_accepts_the_graph():
    """_failure_message gives 'only advice that is true'; a part's message is said of the whole
    graph (docs/design.md §4: 'An error or warning of a part names the part's maps').  An axial
    component and a chain at temperatures 1e∓20 (unresolvable in float64, so it stalls): the
    advice must name a method that solves the graph passed.  Oracle: 'exact' refuses it."""
    h = ca.Graph.from_edges([6, 3, 2, 8, 4, 2], [(0, 1, torch.tensor([0, 0, 1, 1, 2, 2])),
                                                 (0, 2, torch.tensor([0, 1, 0, 1, 0, 1])),
                                                 (3, 4, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])),
                                                 (4, 5, torch.tensor([0, 0, 1, 1]))])
    gen = torch.Generator().manual_seed(0)
    scores = [3 * torch.randn((2, n), generator=gen, dtype=torch.float64) for n in h.sizes]
    temps = [1.0, 1.0, 1.0, 1e-20, 1e20, 1e-20]
    with pytest.raises(ValueError, match="forests only"):
        ca.solve(scores, h, "exact", temperature=temps)
    with pytest.raises(ConvergenceError) as err:
        ca.solve(scores, h, "dual", temperature=temps, tol=1e-10, max_iter=30)
    assert "method='exact'" not in str(err.value), str(err.value)


def test_review27_an_init_too_large_for_a_later_component_is_refused_before_any_work():
    """solve_dual_method: options are 'validated here, before any work'; design.md §4: an init too
    large for the working dtype is 'refused, naming it'.  The chain component's start [-1e308, 1e308]
    (finite, midpoint 0) is too large; the axial component, solved first, cannot meet tol in one sweep."""
    inst = random_graph_instance("disconnected", batch=2, seed=2, scale=4.0, temps=[0.05, 2.0, 0.1, 0.05, 3.0, 1.0])
    h = inst.h
    init = [torch.zeros(h.shapes[b], dtype=torch.float64) for _, b in h.edges]
    init[2] = torch.tensor([-1e308, 1e308], dtype=torch.float64)  # edge 2: the chain 3 → 4
    with pytest.raises(ValueError, match="init"):  # the component alone refuses it so
        ca.solve([inst.scores[3], inst.scores[4]], h.solved_apart()[1][2], "dual", temperature=inst.temps[3:5],
                 init=[init[2]])
    with pytest.raises(ValueError, match="init"):
        ca.solve(inst.scores, h, "dual", temperature=inst.temps, tol=1e-12, max_iter=1, init=init)


def test_review27_the_duals_of_a_solve_are_accepted_as_its_init():
    """design.md §4: init is refused only 'where what is left is too large for the working dtype'.
    Scores at 0.9 of the float64 score limit (accepted by solve) on a star: the duals the solve
    returns, given back as init, must be accepted (93ee0e3 accepted them and returned the same
    maps, bit for bit, after 0 sweeps)."""
    from convex_attention.validation import score_limit
    inst = random_graph_instance("star", batch=2, seed=0)
    c = 0.9 * score_limit(torch.float64) / sum(float(s.abs().max()) for s in inst.scores)
    scores, temps = [c * s for s in inst.scores], [1e150 * t for t in inst.temps]
    sol = ca.solve(scores, inst.h, "dual", temperature=temps, tol=1e-8)
    again = ca.solve(scores, inst.h, "dual", temperature=temps, tol=1e-8, init=sol.duals)
    assert all(torch.equal(a, b) for a, b in zip(sol.probs, again.probs))


# ---------------------------------------------------------------- hostile review 28 (retry, init)

def test_review28_a_start_with_many_large_cells_is_solved_or_refused_naming_init():
    """design.md §4: init is 'taken less its midpoint per sample where that exceeds its spread',
    and 'refused before any work, naming it, where what is left is too large for the working
    dtype'.  A start [0, L, L, L, L, L] (L = 0.9 of the float64 score limit: finite, within the
    per-map fit check, midpoint L/2 below its spread L, so kept as is) on a 6-cell identity pair.
    Oracle: 7e7f16c (midpoint always taken) solved it to the maps of a solve without init; the
    only other acceptable outcome is a ValueError naming init.  Now its centring (a mean of five
    values of 4e307) overflows and the solve raises ConvergenceError blaming the scores ('rescale the
    scores or raise the temperatures')."""
    from convex_attention.validation import score_limit
    h = ca.Graph.from_edges([6, 6], [(0, 1, torch.arange(6))])
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1, 6), generator=gen, dtype=torch.float64) for _ in range(2)]
    big = 0.9 * score_limit(torch.float64)
    init = [torch.tensor([0.0] + [big] * 5, dtype=torch.float64)]
    want = ca.solve(scores, h, "dual").probs
    try:
        got = ca.solve(scores, h, "dual", init=init).probs
    except ValueError as err:
        assert "init" in str(err)
        return
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


def test_review28_an_init_whose_maps_each_fit_but_whose_sum_overflows_is_refused_naming_init():
    """design.md §4: an init is 'refused before any work, naming it, where what is left is too
    large for the working dtype'; solve_dual_method: 'its iterates stay finite' for accepted inputs.
    A chain of six 2-cell maps (identity edges), starts [L, -L] on edges 0, 2, 4 and 0 on 1, 3
    (L = 0.9 of the float64 score limit): every map's logits are within the limit (the per-map
    check passes), but g = Σ_k τ_k logsumexp(η_k/τ_k) ≈ 6 L = 1.35 × the float64 maximum.
    Oracle: 7e7f16c refused it with a ValueError naming init; now a ConvergenceError blames the
    scores ('max |θ_k|/τ_k = 1.4e+00: rescale the scores or raise the temperatures')."""
    from convex_attention.validation import score_limit
    n = 6
    h = ca.Graph.from_edges([2] * n, [(i, i + 1, torch.arange(2)) for i in range(n - 1)])
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1, 2), generator=gen, dtype=torch.float64) for _ in range(n)]
    big = 0.9 * score_limit(torch.float64)
    init = [torch.tensor([big, -big], dtype=torch.float64) if e % 2 == 0 else torch.zeros(2, dtype=torch.float64)
            for e in range(n - 1)]
    with pytest.raises(ValueError, match="init"):
        ca.solve(scores, h, "dual", init=init, max_iter=50)


def test_review28_a_sample_that_missed_max_iter_is_not_converged_by_another_samples_retry():
    """solve_dual: 'a batch gives the result of a loop over its samples'; max_iter bounds the
    sweeps.  Sample 0: components whose objectives cancel (_opposite_parts_instance), so its
    parts are solved again; sample 1: ordinary scores that need more than max_iter=4 sweeps on the
    axial component.  Oracle: sample 1 solved alone (strict=False) is not converged after 4 sweeps.
    In the batch, the retry (which re-solves every sample from its duals with max_iter more sweeps)
    reports it converged after 8, while the first pass's warning still says it did not converge."""
    h = ca.Graph.from_edges([2, 2, 4, 2, 2, 6, 3, 2], [(0, 1, torch.arange(2)), (2, 3, torch.tensor([0, 0, 0, 1])),
                                                       (2, 4, torch.tensor([0, 1, 1, 1])),
                                                       (5, 6, torch.tensor([0, 0, 1, 1, 2, 2])),
                                                       (5, 7, torch.tensor([0, 1, 0, 1, 0, 1]))])
    _, opposite = _opposite_parts_instance()
    first = opposite + [torch.zeros((1, n), dtype=torch.float64) for n in (6, 3, 2)]
    gen = torch.Generator().manual_seed(4)
    second = [2.0 * torch.randn((1, n), generator=gen, dtype=torch.float64) for n in h.sizes]
    kw = dict(temperature=0.3, tol=1e-8, strict=False, newton=False, max_iter=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = ca.solve(second, h, "dual", **kw)
        batch = ca.solve([torch.cat([a, b]) for a, b in zip(first, second)], h, "dual", **kw)
    assert not bool(alone.info["converged"][0])
    assert int(batch.info["iterations"][1]) <= 4
    assert bool(batch.info["converged"][1]) == bool(alone.info["converged"][0])


# ---------------------------------------------------------------- hostile review 29 (retry, init)

def _retried_second_sample():
    """A batch of two on _opposite_parts_instance's graph: sample 0 ordinary (no retry), sample 1
    the opposite parts (its parts are solved again, alone, as a sub-batch of one)."""
    h, opp = _opposite_parts_instance(3)
    gen = torch.Generator().manual_seed(1)
    ordinary = [torch.randn((1, n), generator=gen, dtype=torch.float64) for n in h.sizes]
    return h, ordinary, opp, [torch.cat([a, b]) for a, b in zip(ordinary, opp)]


def test_review29_a_retry_warning_names_the_sample_in_the_users_batch():
    """solve_dual_method re-solves only the samples that missed the whole gap (torch.nonzero(missed))
    as a sub-batch; a part's warning or error is then said of that sub-batch.  Here the retry of
    sample 1 cannot meet its tightened share of gap_tol=1e-13 in max_iter=20 sweeps.  Oracle: the
    solve's own info says sample 1 (not 0) is the one not converged; every message naming a sample
    must name it as info does (design.md §4: 'an error or warning of a part names the part's maps')."""
    h, _, _, batch = _retried_second_sample()
    kw = dict(temperature=0.3, gap_tol=1e-13, max_iter=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = ca.solve(batch, h, "dual", strict=False, **kw)
    assert sol.info["converged"].tolist() == [True, False]  # the oracle: only sample 1 failed
    named = [str(w.message) for w in caught if "sample(s)" in str(w.message)]
    assert named and all("sample(s) [1]" in m and "sample(s) [0]" not in m for m in named), named
    with pytest.raises(ConvergenceError) as err:
        ca.solve(batch, h, "dual", strict=True, **kw)
    assert "sample(s) [1]" in str(err.value) and "sample(s) [0]" not in str(err.value), str(err.value)


def test_review29_a_backward_error_of_a_retried_sample_names_it_in_the_users_batch():
    """A loss on sol.duals at T=0.3: sample 1 (opposite parts, peaked maps) has no solvable Hessian
    system (alone it raises ImplicitSolveError), sample 0 differentiates alone.  In the batch, sample 1
    is retried as a sub-batch of one and the error names 'sample(s) [0]'.  Oracle: each sample
    differentiated alone (which of them raises)."""
    h, ordinary, opp, batch = _retried_second_sample()
    kw = dict(temperature=0.3, tol=1e-10, newton=False)

    def backward(scores):
        leaves = [s.clone().requires_grad_() for s in scores]
        sol = ca.solve(leaves, h, "dual", **kw)
        weights = torch.Generator().manual_seed(5)
        loss = sum((d * torch.randn(d.shape[1:], generator=weights, dtype=d.dtype)).sum() for d in sol.duals)
        torch.autograd.grad(loss, leaves)

    backward(ordinary)  # sample 0 alone: fine
    with pytest.raises(ImplicitSolveError):
        backward(opp)  # sample 1 alone: the failing one
    with pytest.raises(ImplicitSolveError) as err:
        backward(batch)
    assert "sample(s) [1]" in str(err.value) and "sample(s) [0]" not in str(err.value), str(err.value)


def test_review29_an_accepted_init_that_swamps_the_scores_is_not_called_converged():
    """design.md §4: init is 'refused before any work, naming it, where what is left is too large
    for the working dtype beside the scores'; converged certifies tol and gap_tol.  Duals (v, -v,
    w, -w) on a diamond 0->1->3, 0->2->3 (identity, identity, [0,0,1,1] twice) change no logit
    (A λ = 0), so the optimum is that of init=None; at x = 1e20 float64 cannot hold θ + x - x
    (ulp(1e20) = 16384 > |θ|).  Oracle: the same solve without init.  Acceptable: those maps, or a
    refusal naming init, or not converged; not 'converged' with other maps."""
    h = ca.Graph.from_edges([4, 4, 4, 2], [(0, 1, torch.arange(4)), (0, 2, torch.arange(4)),
                                           (1, 3, torch.tensor([0, 0, 1, 1])), (2, 3, torch.tensor([0, 0, 1, 1]))])
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1, n), generator=gen, dtype=torch.float64) for n in h.sizes]
    x = 1e20
    v, w = torch.tensor([x, x, -x, -x], dtype=torch.float64), torch.tensor([x, -x], dtype=torch.float64)
    init = [v, -v, w, -w]
    want = ca.solve(scores, h, "dual", temperature=1.0).probs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = ca.solve(scores, h, "dual", temperature=1.0, init=init, strict=False)
    except ValueError as err:
        assert "init" in str(err)
        return
    if bool(sol.info["converged"].all()):
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(sol.probs, want)), \
            max(float((a - b).abs().max()) for a, b in zip(sol.probs, want))


# ---------------------------------------------------------------- hostile review 32 (init swamp check)

def _two_scale_hierarchy(scales, seed=0, dtype=torch.float64):
    """A 3-level hierarchy 8 -> 4 -> 2 whose levels' scores are N(0, 1) times ``scales``."""
    h = ca.Graph.from_edges([8, 4, 2], [(0, 1, torch.arange(8) // 2), (1, 2, torch.arange(4) // 2)])
    gen = torch.Generator().manual_seed(seed)
    return h, [s * torch.randn((1, n), generator=gen, dtype=torch.float64).to(dtype) for s, n in zip(scales, h.sizes)]


@pytest.mark.parametrize("case", ["float64-tol1e-10-tau1e-4", "float32-tol1e-6-tau1e-3"])
def test_review32_the_duals_a_solve_returned_are_accepted_as_init(case):
    """docs/design.md §4: init is refused only where it swamps the scores 'beyond the scores' own
    rounding'.  A start equal to the duals the same solve (no init) just returned, converged, cannot
    swamp anything that solve did not: its logits are the optimum's.  Oracle: method 'exact' (closed
    form on this forest) and the solve without init; 93ee0e3 accepts the start and returns them."""
    if case.startswith("float64"):
        h, scores = _two_scale_hierarchy([1.0, 1.0, 1e3])
        kw = dict(temperature=1e-4, tol=1e-10)
    else:
        h, scores = _two_scale_hierarchy([1.0, 1e-3, 1.0])
        kw = dict(temperature=1e-3, tol=1e-6, dtype=torch.float32)
    first = ca.solve(scores, h, "dual", **kw)
    assert bool(first.info["converged"].all())
    exact = ca.solve(scores, h, "exact", temperature=kw["temperature"]).probs
    again = ca.solve(scores, h, "dual", init=first.duals, **kw)  # refused: ValueError 'swamp the scores'
    assert bool(again.info["converged"].all())
    for a, b, c in zip(again.probs, first.probs, exact):
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-5)


def test_review32_a_retry_without_user_init_is_not_refused_for_init():
    """No init is passed.  Two components whose centred objectives cancel (+980, -980): the
    hierarchy of _two_scale_hierarchy([1, 1, 1e3]) at τ 1e-4 and a 4-cell map with two coarsenings;
    gap_tol=3e-12 makes the parts be solved again from their duals (design.md §4).  Oracle: the user
    gave no init, so no ValueError may name one; strict=False documents 'warn instead' (93ee0e3
    returns the maps with a RuntimeWarning, converged False)."""
    _, hier = _two_scale_hierarchy([1.0, 1.0, 1e3])
    c = 1966.79
    gen = torch.Generator().manual_seed(3)
    base = [[0.5, 0.5, 0.5, -1.5], [-1.0, 1.0], [0.0, 0.0]]
    neg = [c * (torch.tensor([b], dtype=torch.float64) + 1e-3 * torch.randn((1, len(b)), generator=gen,
                                                                            dtype=torch.float64)) for b in base]
    h = ca.Graph.from_edges([8, 4, 2, 4, 2, 2], [(0, 1, torch.arange(8) // 2), (1, 2, torch.arange(4) // 2),
                                                 (3, 4, torch.tensor([0, 0, 0, 1])),
                                                 (3, 5, torch.tensor([0, 1, 1, 1]))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = ca.solve(hier + neg, h, "dual", temperature=[1e-4] * 3 + [0.3 * c / 1000] * 3, tol=1e-10,
                       gap_tol=3e-12, strict=False, max_iter=200)
    assert sol.info["converged"].shape == (1,)


def test_review32_a_large_sample_does_not_let_a_swamping_start_through_for_another():
    """The diamond of test_review29_an_accepted_init_that_swamps_the_scores_is_not_called_converged, start
    (v, -v, w, -w) at x = 1e16 (A λ = 0) for sample 1 (N(0, 1) scores), zero for sample 0 (scores 1e14·N(0, 1),
    within the score limit).  Alone, sample 1's start is refused.  Oracle: sample 1 solved alone without
    init; acceptable: a refusal naming init, sample 1 not converged, or its maps (a batch gives what its
    samples alone give: solve_dual's docstring)."""
    h = ca.Graph.from_edges([4, 4, 4, 2], [(0, 1, torch.arange(4)), (0, 2, torch.arange(4)),
                                           (1, 3, torch.tensor([0, 0, 1, 1])), (2, 3, torch.tensor([0, 0, 1, 1]))])
    gen = torch.Generator().manual_seed(1)
    ordinary = [torch.randn((1, n), generator=gen, dtype=torch.float64) for n in h.sizes]
    large = torch.Generator().manual_seed(100)
    big = [1e14 * torch.randn((1, n), generator=large, dtype=torch.float64) for n in h.sizes]
    x = 1e16
    v, w = torch.tensor([x, x, -x, -x], dtype=torch.float64), torch.tensor([x, -x], dtype=torch.float64)
    with pytest.raises(ValueError, match="init"):  # alone: refused
        ca.solve(ordinary, h, "dual", temperature=1.0, init=[v, -v, w, -w])
    want = ca.solve(ordinary, h, "dual", temperature=1.0).probs
    init = [torch.stack([0 * d, d]) for d in (v, -v, w, -w)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = ca.solve([torch.cat([a, b]) for a, b in zip(big, ordinary)], h, "dual", temperature=1.0,
                           init=init, strict=False)
    except ValueError as err:
        assert "init" in str(err)
        return
    if bool(sol.info["converged"][1]):
        err = max(float((a[1] - b[0]).abs().max()) for a, b in zip(sol.probs, want))
        assert err <= 1e-5, err


def test_rev39_float32_work_converged_solution_meets_gap_tol_at_a_wide_temperature_ratio():
    h = make_graph("mixed", 0)
    temps = [0.5140002146696799, 942.0000585892229, 0.34049040548914117, 0.0010316305010542775]
    torch.manual_seed(1023)
    scores = [torch.randn(1, *shape, dtype=torch.float64) * 6042.472038706039 for shape in h.shapes]
    # converged only where the solution returned meets gap_tol (a refusal is fine)
    _assert_float32_converged_only_within_gap_tol(h, scores, temps, tol=1e-3, gap_tol=1e-5)


def _assert_float32_converged_only_within_gap_tol(h, scores, temps, tol, gap_tol):
    """Solve in float32 work (strict=False): sample 0 is converged only where the relative gap of
    the solution returned, measured in float64 from its objectives, is within gap_tol."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = ca.solve(scores, h, "dual", temperature=temps, tol=tol, gap_tol=gap_tol, dtype=torch.float32,
                       strict=False)
    offset = sum(s.flatten(1).mean(1) for s in scores)
    relative = (sol.dual_objective - sol.objective).abs() / (sol.objective - offset).abs().clamp_min(1.0)
    assert not bool(sol.info["converged"][0]) or float(relative[0]) <= gap_tol, (sol.info, float(relative[0]))


def _rev40_disconnected_forest_sample():
    """disconnected-forest (seed 1), N(0, 3²) scores, τ in [0.1, 10]: one sample whose whole-problem
    relative gap at the returned duals is 5.7e-8 (float64 oracle 5.6e-8), below gap_tol=1e-7,
    while one part's gap relative to its own objective is 1.3e-7."""
    h = make_graph("disconnected-forest", 1)
    g = torch.Generator().manual_seed(1)
    scores = [3 * torch.randn((4,) + s, generator=g, dtype=torch.float64)[:1] for s in h.shapes]
    temps = (10 ** (2 * torch.rand(h.num_maps, generator=g, dtype=torch.float64) - 1)).tolist()
    return h, scores, temps


def test_rev40_disconnected_float32_converged_is_not_withdrawn_where_the_whole_gap_meets_gap_tol():
    h, scores, temps = _rev40_disconnected_forest_sample()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-5, gap_tol=1e-7, dtype=torch.float32,
                       strict=False)
    offset = sum(s.flatten(1).mean(1) for s in scores)
    whole = float(((sol.dual_objective - sol.objective).abs() / (sol.objective - offset).abs().clamp_min(1.0))[0])
    assert whole <= 1e-7 and float(sol.info["gap"][0]) <= 1e-7
    assert float(sol.info["returned_violation"][0]) <= 1e-5
    assert bool(sol.info["converged"][0]), sol.info


def test_rev40_disconnected_float32_strict_solve_meeting_the_whole_gap_does_not_raise():
    h, scores, temps = _rev40_disconnected_forest_sample()
    sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-5, gap_tol=1e-7, dtype=torch.float32)
    assert bool(sol.info["converged"].all())


@pytest.mark.slow  # forty float32 solves (~1.2 s)
@pytest.mark.xfail(strict=True, reason="the maps as returned are rounded to float32: axial, ordinary N(0,3²) scores "
                   "and τ in [0.1, 10], converged is kept at a gap of 1.1e-8 at the duals returned (float64), while "
                   "the gap at the returned maps, their rounding included, is 1.14e-7 > gap_tol 1e-7: a gap_tol at "
                   "float32's unit roundoff that float32 maps cannot carry (documented in design.md)")
def test_rev40_float32_converged_solution_meets_gap_tol_on_ordinary_scores():
    """Which draws show it depends on the CPU's rounding (seed 2 of 40 on an Intel Xeon, 1.14e-7;
    seed 29 on an AMD EPYC, 1.45e-7, where seed 2 meets gap_tol): every draw of forty must."""
    for seed in range(40):
        h = make_graph("axial", seed)
        g = torch.Generator().manual_seed(seed)
        scores = [3 * torch.randn((4,) + s, generator=g, dtype=torch.float64)[:1] for s in h.shapes]
        temps = (10 ** (2 * torch.rand(h.num_maps, generator=g, dtype=torch.float64) - 1)).tolist()
        _assert_float32_converged_only_within_gap_tol(h, scores, temps, tol=1e-5, gap_tol=1e-7)


def test_float32_work_judges_its_gap_in_float64_at_the_duals_returned():
    """float32 work measured the gap at its returned duals in float32, whose own rounding
    misjudged it near float32's resolution: on this axial sample (float32 scores, gap_tol 1e-7)
    converged was kept at a gap of 2.0e-7 measured in float64 (4.4e-8 in float32); 23 of 480
    such samples at up to 7× gap_tol.  The oracle: learned_dual in float64 at the duals returned,
    its primal and dual objectives at p(λ)."""
    h = make_graph("axial", 5)
    g = torch.Generator().manual_seed(5)
    scores = [3 * torch.randn((4,) + s, generator=g, dtype=torch.float64)[:1].float() for s in h.shapes]
    temps = (10 ** (2 * torch.rand(h.num_maps, generator=g, dtype=torch.float64) - 1)).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = ca.solve(scores, h, "dual", temperature=temps, tol=1e-5, gap_tol=1e-7, dtype=torch.float32,
                       strict=False)
    at = ca.solve([s.double() for s in scores], h, "learned_dual", temperature=temps,
                  duals=[d.double() for d in sol.duals])
    offset = sum(s.double().flatten(1).mean(1) for s in scores)
    gap = float(((at.dual_objective - at.objective).abs() / (at.objective - offset).abs().clamp_min(1.0))[0])
    assert not bool(sol.info["converged"][0]) or gap <= 1e-7, gap
    assert float(sol.info["gap"][0]) == pytest.approx(gap, rel=1e-3, abs=1e-9)
    # kept in float64: rounded to float32 a gap just above gap_tol could read as within it
    assert sol.info["gap"].dtype == torch.float64


@pytest.mark.parametrize("structure", ["chain", "axial"])
def test_the_float32_dual_solver_is_unaffected_by_the_callers_autocast(structure):
    """A mixed-precision model (torch.autocast on CPU, bfloat16) that solves with ``dtype=torch.float32``
    must get the solve it gets without autocast: the solver's own products are not the model's."""
    h = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)]) if structure == "chain" else ca.Graph.axial((6, 6))
    g = torch.Generator().manual_seed(1)
    base = [torch.randn((3,) + s, generator=g) for s in h.shapes]
    weights = [torch.randn((3,) + s, generator=g) for s in h.shapes]

    def run(autocast: bool):
        scores = [b.clone().requires_grad_() for b in base]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            sol = ca.solve(scores, h, "dual", 0.8, dtype=torch.float32)
            loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
        loss.backward()
        return [p.detach() for p in sol.probs] + [s.grad for s in scores]

    plain, mixed = run(False), run(True)
    assert all(a.dtype == b.dtype for a, b in zip(plain, mixed))
    assert max(float((a - b).abs().max()) for a, b in zip(plain, mixed)) < 1e-6


# ---------------------------------------------------------------- hostile review 61 (ca_rev61)

def test_rev61_a_whole_gap_retry_gives_each_sample_what_it_gets_alone():
    """solve_dual: 'a batch gives the result of a loop over its samples up to the rounding of batched
    kernels (about 1e-14)'; solve_dual_method retries 'only the samples that missed it, so that a batch
    gives what its samples alone give'.  Two samples of _opposite_parts_instance's graph (seeds 2 and 9),
    both of whose parts are solved again: each retried part is held to gap_tol times one share for the
    whole sub-batch, float((scale[rows] / (len(parts) * part_scale)).min()), the smallest over the retried
    rows.  Oracle: each sample solved alone (batch of one).  Sample 0 alone: 5 sweeps, gap 3.7e-5; in
    the batch it is held to sample 1's tighter share: 6 sweeps, gap 6.5e-12, maps 2.3e-8 away."""
    h, first = _opposite_parts_instance(2)
    _, second = _opposite_parts_instance(9)
    kw = dict(temperature=0.3, tol=1e-4, newton=False, max_iter=100)
    alone = [ca.solve(first, h, "dual", **kw), ca.solve(second, h, "dual", **kw)]
    batch = ca.solve([torch.cat([a, b]) for a, b in zip(first, second)], h, "dual", **kw)
    for i, sol in enumerate(alone):
        assert int(batch.info["iterations"][i]) == int(sol.info["iterations"][0]), (i, batch.info["iterations"])
        err = max(float((p[i] - q[0]).abs().max()) for p, q in zip(batch.probs, sol.probs))
        assert err <= 1e-12, (i, err)


@pytest.fixture
def float32_duals_kept(monkeypatch):
    """Switch off the float64 path of a float32 solve's temperature gradient (the optimum's duals and a float64
    backward there): log p and θ̄ are formed at the solve's own duals and maps and judged by the duals' rounding, as
    for a sample whose float64 backward fails.  The judgement's tests take this path: on the float64 path nothing
    is left for the duals' rounding to leave undetermined (an exactly uniform chain's share is 0, exact)."""
    import convex_attention.dual as dual_module

    monkeypatch.setattr(dual_module, "_temperature_gradient_in_float64", lambda work: False)


@pytest.mark.usefixtures("float32_duals_kept")
def test_the_temperature_gradient_is_refused_where_float32_duals_do_not_determine_it():
    """Axial 2×3, τ = (1e6, 1, 1), a float32 solve, log p formed at its own duals (the float64
    polish switched off, as for a sample it does not converge): the two-cell map's probabilities
    are (0.49999997, 0.5), their log-probabilities one float32 unit apart, so the rounding of the
    duals to float32 moves that map's ∂L/∂τ by 42 % of itself (it came back 11 % off the
    float64 optimum's, silently, once the score gradients were resolved in float64).  Its
    components are NaN, with a TemperatureGradientWarning naming the maps and the way out (an
    error refused the score gradients too: ca_rev93); map 0's is returned, and float64 work
    gives them all.  With the polish they are right: the next test."""
    h = ca.Graph.axial((2, 3))
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    weights = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]

    def gradients(dtype, with_tau=True):
        leaves = [s.clone().requires_grad_(True) for s in scores]
        tau = torch.tensor([1e6, 1.0, 1.0], dtype=torch.float64, requires_grad=with_tau)
        sol = ca.solve(leaves, h, "dual", temperature=tau, tol=1e-6 if dtype == torch.float32 else 1e-12,
                       dtype=dtype)
        loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
        return torch.autograd.grad(loss, leaves + ([tau] if with_tau else []))

    with pytest.warns(ca.TemperatureGradientWarning, match=r"temperature gradient of method 'dual' for map\(s\) "
                                                          r"\[1, 2\] cannot be resolved to 1e-03 of itself in "
                                                          r"torch\.float32.*it is NaN; solve in float64"):
        got = gradients(torch.float32)
    assert torch.isnan(got[-1][1:]).all() and torch.isfinite(got[-1][0])
    assert all(torch.isfinite(g).all() for g in got[:-1])
    assert torch.isfinite(gradients(torch.float64)[-1]).all()


def test_a_float32_temperature_gradient_at_polished_duals_is_right_where_the_float32_duals_left_it_undetermined():
    """The instance above as a user runs it: log p is formed at the float32 duals polished in float64
    (_optimum_duals), and every component is within 1e-6 of the float64 optimum's at the same
    (float32-rounded) scores (it is 1e-8), with no warning (ca_rev104: judged by the float32 duals'
    rounding, which no longer forms log p, they were refused)."""
    h = ca.Graph.axial((2, 3))
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64).float().double() for s in h.shapes]
    weights = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]

    def tau_grad(**options):
        tau = torch.tensor([1e6, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, "dual", temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]

    want = tau_grad(tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ca.TemperatureGradientWarning)
        got = tau_grad(tol=1e-6, dtype=torch.float32)
    assert bool(((got - want).abs() <= 1e-6 * want.abs()).all()), (got, want)


def test_rev92_dual_temperature_gradient_is_not_floored_at_a_subnormal_probability():
    """As exact's (test_exact.py): θ = (0, −720 τ, −0.5 τ) over one coarse cell, τ = (1e-20, 1),
    L = p_0[1] = 1.2e-313 (subnormal, 4e-10 relative in float64).  The logits η/τ give its
    log-probability −720.47, clamped at log(tiny) = −708.4 by temperature_gradient, so
    ∂L/∂τ_0 = 8.9587e-291 against the closed form's 9.1055e-291: 1.6 % off, no refusal."""
    h = ca.Graph.from_edges([3, 1], [(0, 1, torch.tensor([0, 0, 0]))])
    tau0, gap = 1e-20, 720.0
    scores = [torch.tensor([[0.0, -gap * tau0, -0.5 * tau0]], dtype=torch.float64),
              torch.zeros(1, 1, dtype=torch.float64)]
    tau = torch.tensor([tau0, 1.0], dtype=torch.float64, requires_grad=True)
    sol = ca.solve(scores, h, "dual", temperature=tau, tol=1e-12)
    got = torch.autograd.grad(sol.probs[0][0, 1], tau)[0]
    log_z = np.log1p(np.exp(-0.5))
    want = np.exp(-gap - log_z - 2 * np.log(tau0)) * (gap * tau0 - 0.5 * tau0 * np.exp(-0.5 - log_z))
    assert abs(float(got[0]) - want) <= 1e-6 * want, (float(got[0]), want)


def test_rev92_float32_temperature_gradient_is_not_refused_on_an_ordinary_tree():
    """A false alarm of _check_temperature_gradient on ordinary training data: the 'tree' graph
    (make_graph('tree', 11)), 16 samples of N(0, 1) scores, τ = (10, 10, 0.1, 10, 0.1), a
    linear loss, float32 work (dtype=torch.float32, tol=1e-5).  Its bound puts the duals'
    rounding at 1.57× GRADIENT_RTOL of map 2's ∂L/∂τ (−2.7259e-3) and raises; the τ-gradient
    it computes (check bypassed) is −2.72581e-3, 6.4e-8 off the float64 closed form's at the
    float32-rounded scores: 2.3 % of the 1e-3 it is held to (every map within 2.6 %)."""
    h = make_graph("tree", 11)
    g = torch.Generator().manual_seed(111)
    scores = [torch.randn((16,) + s, generator=g, dtype=torch.float64).float().double() for s in h.shapes]
    weights = [torch.randn((16,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [10.0, 10.0, 0.1, 10.0, 0.1]

    def tau_grad(method, **options):
        tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, method, temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]

    want = tau_grad("exact")
    got = tau_grad("dual", dtype=torch.float32, tol=1e-5)  # raises ImplicitSolveError today
    held = torch.maximum(want.abs(), want.abs().max() * 1e-3 ** 0.5)
    assert bool(((got - want).abs() <= 1e-3 * held).all()), (got, want)


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev93_temperature_gradient_refusal_names_the_user_s_maps_on_a_disconnected_graph():
    """A chain 0 → 1 beside the axial 2×3 graph of the float32 refusal above (maps 2, 3, 4; edges
    (0, 1), (2, 3), (2, 4)), τ = (1, 1, 1e6, 1, 1), float32 work, tol 1e-6, the float64 polish
    switched off (as for a sample it does not converge).  The two components are
    solved apart, each by its own DualSolveFunction, and _check_temperature_gradient raises in the
    part's numbering: 'map(s) [1, 2]' (the chain's coarse map and the axial map), where the maps that
    cannot be resolved are the user's 3 and 4 (a forward ConvergenceError says which component)."""
    h = ca.Graph([(2,), (1,), (2, 3), (2, 1), (1, 3)], [(0, 1), (2, 3), (2, 4)])
    gen = torch.Generator().manual_seed(0)
    axial = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in ca.Graph.axial((2, 3)).shapes]
    weights = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in ca.Graph.axial((2, 3)).shapes]
    scores = [torch.tensor([[0.3, -0.8]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)] + axial
    weights = [torch.tensor([[1.0, -0.5]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)] + weights
    tau = torch.tensor([1.0, 1.0, 1e6, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    sol = ca.solve(scores, h, "dual", temperature=tau, tol=1e-6, dtype=torch.float32)
    loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
    with pytest.warns(ca.TemperatureGradientWarning, match=r"for map\(s\) \[3, 4\] cannot be resolved"):
        got = torch.autograd.grad(loss, tau)[0]
    assert torch.isnan(got[3:]).all() and torch.isfinite(got[:3]).all()


@pytest.mark.filterwarnings("ignore::convex_attention.dual.TemperatureGradientWarning")  # (the τ part is NaN)
def test_rev93_score_gradients_are_not_refused_for_a_temperature_gradient_nobody_asked_for():
    """The axial 2×3 instance of the float32 refusal above (τ = (1e6, 1, 1), float32 work, tol 1e-6)
    with a learnable temperature (requires_grad=True), differentiated for the scores only:
    torch.autograd.grad(loss, scores).  The backward computes and checks the temperature gradient
    whenever τ requires grad (ctx.needs_input_grad is fixed at the forward), so the score gradients,
    which the same solve returns with τ detached (max 6.3e-7, finite), are refused: ImplicitSolveError
    'temperature gradient ... cannot be resolved', telling the user to keep the temperatures fixed.

    With a learned temperature the score gradients are the float64 backward's at the optimum's maps
    (DualSolveFunction._wide_score_gradients), with it fixed the float32 backward's at the returned
    maps: both are held to the float64 solve's at tol 1e-12 (measured 3.9e-8 and 8.7e-8 of each map's
    largest), and so to each other."""
    h = ca.Graph.axial((2, 3))
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    weights = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]

    def score_gradients(tau):
        leaves = [s.clone().requires_grad_(True) for s in scores]
        sol = ca.solve(leaves, h, "dual", temperature=tau, tol=1e-6, dtype=torch.float32)
        return torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), leaves)

    tau = torch.tensor([1e6, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    fixed = score_gradients(tau.detach())
    learned = score_gradients(tau)  # raised ImplicitSolveError (ca_rev93)
    leaves = [s.clone().requires_grad_(True) for s in scores]
    sol = ca.solve(leaves, h, "dual", temperature=tau.detach(), tol=1e-12)
    reference = torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), leaves)
    for a, b, ref in zip(learned, fixed, reference):
        size = float(ref.abs().max())
        assert size > 0
        assert float((a - ref).abs().max()) <= 1e-6 * size
        assert float((b - ref).abs().max()) <= 1e-6 * size


def test_rev93_a_zero_temperature_gradient_is_not_refused_in_float64():
    """Fine map of 4 cells over 2 coarse cells, θ_0 = (1, 1, −1, −1), θ_1 = (−1, 1), τ = (1, 1), float64
    work, tol 1e-12: the duals (±1) exactly cancel the scores, every map is uniform, and ∂L/∂τ = (0, 0)
    for any loss (exact returns [0, 0] to float64 rounding).  _check_temperature_gradient holds each map to
    max(|τ̄_k|, √tol·max|τ̄|) = 0, so the duals' float64 rounding 'moves it by about inf of itself' and the
    backward raises ImplicitSolveError, advising to solve in float64, which it already does."""
    h = ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))])
    scores = [torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64),
              torch.tensor([[-1.0, 1.0]], dtype=torch.float64)]
    weights = [torch.tensor([[1.0, -2.0, 0.5, 0.3]], dtype=torch.float64),
               torch.tensor([[0.4, -0.9]], dtype=torch.float64)]

    def tau_grad(method, **options):
        tau = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, method, temperature=tau, **options)
        return torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]

    assert float(tau_grad("exact").abs().max()) <= 1e-15  # 0 to float64 rounding (offsets taken at a tie)
    got = tau_grad("dual", tol=1e-12)  # raises ImplicitSolveError today
    assert float(got.abs().max()) <= 1e-12, got


# ------------------------------------------------------------------------- ca_rev94 (strict xfail: review of 5f02b81)
def test_rev94_a_shared_temperature_is_not_nan_for_an_undetermined_component_of_zero():
    """Two chains 4 → 2 side by side (maps 0 → 1, 2 → 3), one 0-d temperature τ = 1 shared by all four maps
    (``temperature=tau``, requires_grad), float32 work, tol 1e-6, loss Σ <p_k, w_k>.  Chain 0 → 1 is the instance
    of test_rev93_a_zero_temperature_gradient_is_not_refused_in_float64 (θ_0 = (1, 1, −1, −1), θ_1 = (−1, 1): every
    map uniform, its maps' ∂L/∂τ_k exactly 0); chain 2 → 3 is ordinary (∂L/∂τ_k = 0.2866, 0.1903).  dL/dτ is their
    sum, 0.4769 ('exact' in float32 and float64, 'dual' in float64); the float32 duals' rounding moves the zero
    maps' terms by ~1e-7 in absolute terms, far below 1e-3 of the sum.  The backward of the part 0 → 1 holds its
    maps to themselves (0), sets both NaN with a TemperatureGradientWarning ('map(s) [0, 1]'), and autograd's sum
    makes the user's one temperature gradient NaN: a determined number refused (the parent commit raised).
    A τ shared by maps is held as one number: finite and within 1e-3 of 0.4769."""
    h = ca.Graph.from_edges([4, 2, 4, 2], [(0, 1, torch.tensor([0, 0, 1, 1])), (2, 3, torch.tensor([0, 1, 0, 1]))])
    scores = [torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64),
              torch.tensor([[-1.0, 1.0]], dtype=torch.float64),
              torch.tensor([[0.3, -1.2, 0.8, 0.1]], dtype=torch.float64),
              torch.tensor([[0.5, -0.4]], dtype=torch.float64)]
    weights = [torch.tensor([[1.0, -2.0, 0.5, 0.3]], dtype=torch.float64),
               torch.tensor([[0.4, -0.9]], dtype=torch.float64),
               torch.tensor([[0.7, 0.2, -1.1, 0.6]], dtype=torch.float64),
               torch.tensor([[-0.3, 0.8]], dtype=torch.float64)]

    def tau_grad(method, **options):
        tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, method, temperature=tau, **options)
        return float(torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), tau)[0])

    want = tau_grad("exact")
    assert want == pytest.approx(0.4769, abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.TemperatureGradientWarning)
        got = tau_grad("dual", tol=1e-6, dtype=torch.float32)  # NaN when judged per map
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


# ------------------------------------------------- a temperature tensor shared by maps: its gradient judged summed
def _two_chains_shared():
    """ca_rev94's two chains 4 → 2 side by side: maps 0 → 1 exactly uniform at τ = 1 (their ∂L/∂τ_k is 0, and
    float32 duals do not determine it), maps 2 → 3 ordinary.  ``(graph, scores, weights)``, float64, batch 1."""
    h = ca.Graph.from_edges([4, 2, 4, 2], [(0, 1, torch.tensor([0, 0, 1, 1])), (2, 3, torch.tensor([0, 1, 0, 1]))])
    rows = [[1.0, 1.0, -1.0, -1.0], [-1.0, 1.0], [0.3, -1.2, 0.8, 0.1], [0.5, -0.4]]
    weights = [[1.0, -2.0, 0.5, 0.3], [0.4, -0.9], [0.7, 0.2, -1.1, 0.6], [-0.3, 0.8]]
    return (h, [torch.tensor([r], dtype=torch.float64) for r in rows],
            [torch.tensor([w], dtype=torch.float64) for w in weights])


def _tau_grads(h, scores, weights, temperature, leaves, method="dual", **options):
    """The gradients of Σ <p_k, w_k> in ``leaves`` (the tensors ``temperature`` is made of)."""
    sol = ca.solve(scores, h, method, temperature=temperature, **options)
    loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
    return [float(g) for g in torch.autograd.grad(loss, leaves)]


def _float32_tau_grads_and_warnings(h, scores, weights, temperature, leaves):
    """:func:`_tau_grads` of method 'dual' in float32 work (tol 1e-6), and the TemperatureGradientWarnings' texts."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _tau_grads(h, scores, weights, temperature, leaves, tol=1e-6, dtype=torch.float32)
    return got, [str(w.message) for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]


def _assert_float32_tau_grad_determined(h, scores, weights, temperature, leaves, want):
    """The first leaf's float32 'dual' gradient (:func:`_float32_tau_grads_and_warnings`) is within 1e-3 of ``want``,
    with no TemperatureGradientWarning."""
    got, said = _float32_tau_grads_and_warnings(h, scores, weights, temperature, leaves)
    assert abs(got[0] - want) <= 1e-3 * abs(want) and not said, (got, want, said)


@pytest.mark.usefixtures("float32_duals_kept")
def test_a_shared_temperature_whose_sum_is_undetermined_is_nan_with_a_warning_naming_its_maps():
    """The uniform chain alone (maps 0 → 1), one 0-d τ for both, float32: the sum of two undetermined zeros is
    undetermined: NaN, and the warning names the temperature shared by maps [0, 1] (not a wrong number)."""
    h, scores, weights = _two_chains_shared()
    part = ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))])
    tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    with pytest.warns(ca.TemperatureGradientWarning, match=r"shared by maps \[0, 1\]"):
        got = _tau_grads(part, scores[:2], weights[:2], tau, [tau], tol=1e-6, dtype=torch.float32)
    assert math.isnan(got[0])


@pytest.mark.usefixtures("float32_duals_kept")
def test_maps_sharing_a_temperature_are_judged_per_shared_tensor():
    """Temperatures (a, a, b, b) on the two chains, float32: a's maps are the uniform chain (its sum
    undetermined: NaN, one warning naming maps [0, 1]); b's sum is determined and within 1e-3 of exact's."""
    h, scores, weights = _two_chains_shared()
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    want = _tau_grads(h, scores, weights, [a, a, b, b], [a, b], "exact")
    got, said = _float32_tau_grads_and_warnings(h, scores, weights, [a, a, b, b], [a, b])
    assert len(said) == 1 and "shared by maps [0, 1]" in said[0], said
    assert math.isnan(got[0]) and abs(got[1] - want[1]) <= 1e-3 * abs(want[1]), (got, want)


def test_a_shared_temperature_is_judged_once_per_backward_pass():
    """A first pass that asks for the score gradients only records the parts' shares but never reaches the
    shared temperature's node; a second pass over the same graph (retain_graph) that reaches it is judged on its
    own records, and a third gives the same number (records neither pile up nor go stale)."""
    h, scores, weights = _two_chains_shared()
    free = [s.clone().requires_grad_() for s in scores]
    tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    sol = ca.solve(free, h, "dual", temperature=tau, tol=1e-6, dtype=torch.float32)
    loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
    torch.autograd.grad(loss, free, retain_graph=True)
    first = float(torch.autograd.grad(loss, tau, retain_graph=True)[0])
    second = float(torch.autograd.grad(loss, tau)[0])
    assert first == second and first == pytest.approx(0.4769, abs=5e-4), (first, second)


def test_a_loss_on_one_part_judges_a_shared_temperature_on_that_part_alone():
    """After a pass over both chains that asked for the scores' gradients only, a loss on the ordinary chain's
    maps alone: the shared temperature's gradient is that chain's (exact's, to 1e-3), not NaN and not the sum
    of a stale record."""
    h, scores, weights = _two_chains_shared()
    tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    free = [s.clone().requires_grad_() for s in scores]
    sol = ca.solve(free, h, "dual", temperature=tau, tol=1e-6, dtype=torch.float32)
    torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), free, retain_graph=True)
    got = float(torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs[2:], weights[2:])), tau)[0])
    ref = ca.solve(scores, h, "exact", temperature=tau)
    want = float(torch.autograd.grad(sum((p * w).sum() for p, w in zip(ref.probs[2:], weights[2:])), tau)[0])
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


@pytest.mark.parametrize("family", ["axial", "grid-regions", "mixed", "tree"])
def test_the_rounding_move_of_maps_sharing_a_temperature_is_the_autograd_coefficient(family):
    """_rounding_squares(maps) = Σ_e ‖c_e ∘ r_e‖², c_e the derivative of −τ Σ_{k in maps} <θ̄_k, log p_k(λ)> in
    λ_e (log p_k from the logits θ_k + A_k λ, by autograd): signs included, so the two ends of an edge offset."""
    h = make_graph(family, 2)
    gen = torch.Generator().manual_seed(5)
    lam = [torch.randn((1,) + h.shapes[b], generator=gen, dtype=torch.float64, requires_grad=True)
           for _, b in h.edges]
    scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    gscores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    rounding = [torch.rand((1,) + h.shapes[b], generator=gen, dtype=torch.float64) for _, b in h.edges]
    for maps in ([0], list(range(h.num_maps)), [0, h.num_maps - 1]):
        etas = reparameterized_logits(scores, lam, h)
        moved = -sum((gscores[k] * etas[k]).sum() for k in maps)
        coefficients = torch.autograd.grad(moved, lam, allow_unused=True)
        want = sum(float(((c * r) ** 2).sum()) for c, r in zip(coefficients, rounding) if c is not None)
        assert float(_rounding_squares(h, gscores, rounding, maps)) == pytest.approx(want, rel=1e-12), maps

def _rev94_axial_beside_an_isolated_map(isolated_first):
    """The axial 2×3 instance of the float32 refusal (maps (2, 3), (2, 1), (1, 3) at τ = (1e6, 1, 1)), a chain
    (2,) → (1,) and a map (3,) with no constraint, in two numberings of the same problem: the isolated map first
    (it joins the axial part: parts [0, 1, 2, 3] and [4, 5]) or between the chain and the axial maps (it joins the
    chain's part: [0, 1, 2] and [3, 4, 5]).  ``(graph, scores, weights, τ, the axial maps' numbers)``."""
    gen = torch.Generator().manual_seed(0)
    axial = ca.Graph.axial((2, 3))
    ax_scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in axial.shapes]
    ax_weights = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in axial.shapes]
    lone = (torch.tensor([[0.1, 0.2, -0.3]], dtype=torch.float64),
            torch.tensor([[0.5, -0.2, 0.1]], dtype=torch.float64))
    chain = ([torch.tensor([[0.3, -0.8]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)],
             [torch.tensor([[1.0, -0.5]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)])
    if isolated_first:
        h = ca.Graph([(3,), (2, 3), (2, 1), (1, 3), (2,), (1,)], [(1, 2), (1, 3), (4, 5)])
        return (h, [lone[0]] + ax_scores + chain[0], [lone[1]] + ax_weights + chain[1], [1.0, 1e6, 1.0, 1.0, 1.0, 1.0],
                [1, 2, 3])
    h = ca.Graph([(2,), (1,), (3,), (2, 3), (2, 1), (1, 3)], [(0, 1), (3, 4), (3, 5)])
    return (h, chain[0] + [lone[0]] + ax_scores, chain[1] + [lone[1]] + ax_weights, [1.0, 1.0, 1.0, 1e6, 1.0, 1.0],
            [3, 4, 5])


def test_rev94_an_isolated_map_does_not_hide_an_undetermined_temperature_gradient():
    """The axial 2×3 float32 instance (τ = (1e6, 1, 1)) beside a chain and an isolated map, float32 work, tol 1e-6,
    a (6,) temperature tensor (_rev94_axial_beside_an_isolated_map).  With the isolated map numbered between the
    chain and the axial maps, it joins the chain's part, and the axial maps' two-cell and three-cell maps come back
    NaN with a TemperatureGradientWarning naming [4, 5], as in test_rev93's disconnected graph.  Numbered first, the
    isolated map joins the axial part (solved_apart: maps without constraints join the first part); its own
    ∂L/∂τ (0.0105) becomes that part's largest, the axial maps (1.7e-12, 5.1e-14) are held to √1e-3 of it, and they
    come back 3.1 % and 11.6 % off the float64 optimum's, finite, with no warning.  The same problem, renumbered:
    each axial map's temperature gradient within 1e-3 of itself, or NaN with the warning, in both numberings."""
    for isolated_first in (False, True):
        h, scores, weights, temps, axial = _rev94_axial_beside_an_isolated_map(isolated_first)
        g32, want = _float32_and_float64_temperature_gradients(scores, h, weights, temps)
        for k in axial:
            assert bool(torch.isnan(g32[k])) or float((g32[k] - want[k]).abs()) <= 1e-3 * float(want[k].abs()), (
                isolated_first, k, float(g32[k]), float(want[k]))


def _float32_and_float64_temperature_gradients(scores, h, weights, temps):
    """``∂L/∂τ`` of ``L = Σ <w_k, p_k>`` by method 'dual' in float32 work (tol 1e-6; NaN where undetermined, its
    TemperatureGradientWarning ignored) and in float64 work (tol 1e-12): ``(float32's, float64's)``."""
    got = {}
    for dtype in (torch.float32, torch.float64):
        tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ca.TemperatureGradientWarning)
            sol = ca.solve(scores, h, "dual", temperature=tau, tol=1e-6 if dtype == torch.float32 else 1e-12,
                           dtype=dtype)
            got[dtype] = torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]
    return got[torch.float32], got[torch.float64]


# ------------------------------------------------------------------------- ca_rev95 (strict xfail: review of d408c90)
def test_rev95_a_map_constrained_only_through_a_one_cell_map_does_not_hide_an_undetermined_gradient():
    """ca_rev94's instance (_rev94_axial_beside_an_isolated_map's axial 2×3 maps at τ = (1e6, 1, 1) and its lone
    map (1, 3), scores (0.1, 0.2, −0.3), weights (0.5, −0.2, 0.1)), the lone map now joined to the axial maps through
    a one-cell map (1, 1): Graph([(2, 3), (2, 1), (1, 3), (1, 3), (1, 1)], [(0, 1), (0, 2), (2, 4), (3, 4)]), τ = (1e6,
    1, 1, 1, 1).  Pooling onto one cell only says each map sums to one: the same problem as the axial maps beside an
    isolated lone map (ca_rev94's graph), the same maps and gradients, and no dual of edge (3, 4) moves map 3's
    ∂L/∂τ (Σ θ̄ = 0).  _undetermined_temperatures counts map 3 as constrained (it has an edge), its ∂L/∂τ (0.0105)
    is the largest, the axial maps (1.8e-12, 5.1e-14, 1.7e-12 in float64) are held to √1e-3 of it, and float32
    returns 5.70e-14 (11.6 % off) and 1.617e-12 (3.1 % off) for maps 1 and 2, finite, with no warning, where the
    axial graph alone (or beside the isolated map, since ca_rev94) gives NaN with the warning.  Each axial map's
    ∂L/∂τ within 1e-3 of itself, or NaN with the warning."""
    gen = torch.Generator().manual_seed(0)
    axial = ca.Graph.axial((2, 3))
    scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in axial.shapes]
    weights = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in axial.shapes]
    scores += [torch.tensor([[[0.1, 0.2, -0.3]]], dtype=torch.float64), torch.zeros(1, 1, 1, dtype=torch.float64)]
    weights += [torch.tensor([[[0.5, -0.2, 0.1]]], dtype=torch.float64), torch.zeros(1, 1, 1, dtype=torch.float64)]
    h = ca.Graph([(2, 3), (2, 1), (1, 3), (1, 3), (1, 1)], [(0, 1), (0, 2), (2, 4), (3, 4)])
    g32, want = _float32_and_float64_temperature_gradients(scores, h, weights, [1e6, 1.0, 1.0, 1.0, 1.0])
    for k in (1, 2):
        assert bool(torch.isnan(g32[k])) or float((g32[k] - want[k]).abs()) <= 1e-3 * float(want[k].abs()), (
            k, float(g32[k]), float(want[k]))


# ------------------------------------------------------------------------- ca_rev97 (strict xfail: review of 3e79175)
def test_rev97_a_float32_temperature_tensor_given_for_every_map_is_judged_summed():
    """_two_chains_shared (ca_rev94's two chains 4 → 2, float64 scores), float32 work, tol 1e-6, and one 0-d
    temperature tensor τ = 1 that requires grad given for every map as a list, ``temperature=[a, a, a, a]``, the
    case design.md names ('or one tensor given for several maps').  With ``a`` in float64 the sum is judged and
    'dual' returns 0.4768663 ('exact': 0.4768663).  With ``a`` in float32, check_temperatures promotes each list
    entry on its own (_promoted: ``a.to(float64)`` per map), so the solve sees four distinct tensors,
    _sharing_judged finds no group, and the maps are judged one by one: the uniform chain's components are NaN
    with a TemperatureGradientWarning ('map(s) [0, 1]') and the user's gradient is NaN.  The same tensor, in
    either dtype, is one temperature: within 1e-3 of 'exact', and no warning."""
    h, scores, weights = _two_chains_shared()
    a64 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    want = _tau_grads(h, scores, weights, [a64] * 4, [a64], "exact")[0]
    assert want == pytest.approx(0.4769, abs=1e-4)
    a = torch.tensor(1.0, dtype=torch.float32, requires_grad=True)
    _assert_float32_tau_grad_determined(h, scores, weights, [a] * 4, [a], want)


@pytest.mark.parametrize("duals", ["optimum", pytest.param("float32", marks=pytest.mark.xfail(
    strict=True, reason="ca_rev97, open where log p is formed at the float32 duals (a sample whose polish does not "
                        "converge): a temperature given to two solves is judged per solve (a hook on the user's tensor "
                        "is not run on every path: ca_rev102); NaN where the sum (0.4769) is determined; documented in "
                        "design.md"))])
def test_rev97_a_temperature_shared_by_two_solves_is_not_nan_for_a_determined_sum(duals, request):
    """ca_rev94's instance split into two calls: one 0-d τ = 1 (requires grad) passed to ca.solve for the uniform
    chain 4 → 2 (maps 0 → 1 of _two_chains_shared, ∂L/∂τ exactly 0) and again for the ordinary chain (maps 2 → 3),
    float32 work, tol 1e-6, loss Σ <p_k, w_k> over both solves (as a ConsistentAttention with a learned 0-d
    temperature applied to two inputs, or two layers sharing it).  The user receives the sum, 0.4768663 ('exact';
    the same as the one solve of the two chains, which 'dual' in float32 now returns to 3e-8).  Each solve has
    its own ledger and node (3e79175), so the uniform chain's share (two undetermined zeros) was judged alone: NaN
    with 'the temperature shared by maps [0, 1]', and autograd's sum was NaN.  The sum the user receives is judged
    (a hook on the tensor): within 1e-3 of 'exact'.  With the optimum's duals forming log p (the closed form on these
    chains, as a user runs them) the uniform share is exactly 0, determined, and the sum is right; with the float32
    duals kept (``duals="float32"``: as for a sample whose polish does not converge) the case stays open."""
    if duals == "float32":
        request.getfixturevalue("float32_duals_kept")
    h, scores, weights = _two_chains_shared()
    chains = [ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))]),
              ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 1, 0, 1]))])]

    def tau_grad(method, **options):
        tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        loss = 0
        for i, part in enumerate(chains):
            sol = ca.solve(scores[2 * i:2 * i + 2], part, method, temperature=tau, **options)
            loss = loss + sum((p * w).sum() for p, w in zip(sol.probs, weights[2 * i:2 * i + 2]))
        return float(torch.autograd.grad(loss, tau)[0])

    want = tau_grad("exact")
    assert want == pytest.approx(0.4769, abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.TemperatureGradientWarning)
        got = tau_grad("dual", tol=1e-6, dtype=torch.float32)
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


# ------------------------------------------------------------- the gradient is the returned solution's (design.md §4)
@pytest.mark.parametrize("case, seed, scale, tau", [("chain-graph", 0, 2.0, 0.05), ("axial", 1, 3.0, 0.2),
                                                     ("grid-regions", 2, 1.0, 1.0), ("mixed", 3, 3.0, 0.05)])
def test_gradients_at_the_default_tol_are_within_tol_times_the_loss_scale_of_the_optimums(case, seed, scale, tau):
    """At tol 1e-6 (float64) the score gradients of a linear loss <p, v> are the exact gradients at the returned
    maps, within about tol·‖v‖/τ of the optimum's (tol 1e-12): held to 1e-6·‖v‖/τ (measured at most 2e-7 on 676
    samples).  Relative to themselves they may be far off where maps are nearly one-hot: the chain at τ = 0.05
    (p_max = 1 − 4.7e-7) is 4.6e-3 off, as design.md says."""
    inst = random_graph_instance(case, batch=3, seed=seed, scale=scale)
    v = [torch.randn(s.shape, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
         for s in inst.scores]

    def gradients(tol):
        free = [s.clone().requires_grad_() for s in inst.scores]
        sol = ca.solve(free, inst.h, "dual", temperature=tau, tol=tol)
        return torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, v)), free)

    loose, tight = gradients(1e-6), gradients(1e-12)
    scale_of_loss = max(float(w.flatten(1).norm(dim=1).max()) for w in v) / tau
    off = max(float((a - b).flatten(1).norm(dim=1).max()) for a, b in zip(loose, tight))
    assert off <= 1e-6 * scale_of_loss, (off, scale_of_loss)
    if case == "chain-graph":  # nearly one-hot maps: off relative to themselves (documented, not flagged)
        relative = max(float((a - b).norm() / b.norm()) for a, b in zip(loose, tight))
        assert relative > 1e-3, relative


@pytest.mark.parametrize("duals", ["optimum", pytest.param("float32", marks=pytest.mark.xfail(
    strict=True, reason="ca_rev97, open where log p is formed at the float32 duals: a layer's learned temperature is "
                        "judged per call; NaN where the sum over its calls is determined; documented in design.md"))])
def test_a_learned_float32_temperature_of_a_layer_called_twice_is_judged_on_its_whole_gradient(duals, request):
    """ConsistentAttention(chain 4 → 2, 'dual', float32 work) with one learned float32 0-d Parameter τ and float64
    scores, called on the uniform instance (its share exactly 0, undetermined) and on an ordinary one: the
    Parameter's gradient is their sum, determined (exact's, to 1e-3).  Each call is judged on its own: the uniform
    call's NaN makes the sum NaN (a hook on the Parameter, which would judge the sum, is not run on every path:
    ca_rev102).  Right with the optimum's duals forming log p (the closed form, as a user runs it); open with the
    float32 duals kept (``duals="float32"``)."""
    if duals == "float32":
        request.getfixturevalue("float32_duals_kept")
    _, scores, weights = _two_chains_shared()
    part = ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))])
    ordinary = [torch.tensor([[0.3, -1.2, 0.8, 0.1]], dtype=torch.float64), torch.tensor([[0.5, -0.4]],
                                                                                        dtype=torch.float64)]

    def grad_of(method):
        layer = ca.ConsistentAttention(part, method, temperature=torch.nn.Parameter(torch.tensor(1.0)), **(
            {"tol": 1e-6, "dtype": torch.float32} if method == "dual" else {}))
        (tau,) = layer.parameters()
        loss = 0
        for x in (scores[:2], ordinary):
            loss = loss + sum((p * w).sum() for p, w in zip(layer(x).probs, weights[:2]))
        loss.backward()
        return float(tau.grad)

    want = grad_of("exact")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.TemperatureGradientWarning)
        got = grad_of("dual")
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


@pytest.mark.usefixtures("float32_duals_kept")
def test_a_temperature_given_to_two_solves_is_nan_where_their_sum_is_undetermined():
    """The uniform chain solved twice with one 0-d τ (float32 work): the sum of undetermined zeros is undetermined:
    NaN, with a warning naming the maps that share it (each solve judged on its own)."""
    _, scores, weights = _two_chains_shared()
    part = ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))])
    tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss = 0
    for _ in range(2):
        sol = ca.solve(scores[:2], part, "dual", temperature=tau, tol=1e-6, dtype=torch.float32)
        loss = loss + sum((p * w).sum() for p, w in zip(sol.probs, weights[:2]))
    with pytest.warns(ca.TemperatureGradientWarning, match=r"shared by maps \[0, 1\]"):
        (got,) = torch.autograd.grad(loss, tau)
    assert math.isnan(float(got))


def test_rev100_a_0d_view_temperature_given_for_every_map_is_judged_summed():
    """ca_rev94's two chains (float32 work, tol 1e-6) with the temperature p.squeeze(), p a (1,) float64 tensor
    that requires grad (a learned nn.Parameter(torch.ones(1)), squeezed: one 0-d tensor for all four maps).  'exact'
    gives ∂L/∂p = 0.4768663; a leaf 0-d τ gives 0.4768663 in 'dual'.  _sharing_judged skips a source that is a view,
    so the four maps are judged one by one and the uniform chain's exact zeros are NaN ('for map(s) [0, 1]'): p's
    gradient is NaN.  The parent (3e79175/43d1291) grouped the tensor by identity and returned 0.4768663."""
    h, scores, weights = _two_chains_shared()
    p = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    want = _tau_grads(h, scores, weights, p.squeeze(), [p], "exact")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.TemperatureGradientWarning)
        got = _tau_grads(h, scores, weights, p.squeeze(), [p], tol=1e-6, dtype=torch.float32)[0]
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


# (ca_rev100–102 reviewed a hook on the user's temperature tensor, withdrawn in f188796: their scenarios stay as
# regression tests of the per-solve node, which judges them all)
def _rev100_uniform_and_ordinary_chains():
    """The uniform chain 4 → 2 of _two_chains_shared (∂L/∂τ exactly 0, undetermined in float32) and an ordinary
    input on the same graph: ``(graph, [uniform scores, ordinary scores], weights)``, float64."""
    _, scores, weights = _two_chains_shared()
    part = ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))])
    ordinary = [torch.tensor([[0.3, -1.2, 0.8, 0.1]], dtype=torch.float64),
                torch.tensor([[0.5, -0.4]], dtype=torch.float64)]
    return part, [scores[:2], ordinary], weights[:2]


def _learned_temperature_layer(graph):
    """ConsistentAttention(graph, 'dual', float32 work, tol 1e-6) with a learned float32 Parameter τ = 1."""
    return ca.ConsistentAttention(graph, "dual", temperature=torch.nn.Parameter(torch.tensor(1.0)), tol=1e-6,
                                  dtype=torch.float32)


@contextlib.contextmanager
def _swapping_on_conversion():
    """torch.__future__.set_swap_module_params_on_conversion(True) inside, the setting as it was after."""
    swapping = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swapping)


def test_rev100_a_module_whose_learned_temperature_was_trained_converts_with_swapped_parameters():
    """ConsistentAttention(chain 4 → 2, 'dual', float32 work) with a learned float32 Parameter τ, after one
    backward: with torch.__future__.set_swap_module_params_on_conversion(True) (and for tensor subclasses, where
    nn.Module._apply always swaps) layer.double() raises RuntimeError "_apply(): Couldn't swap
    ConsistentAttention.temperature" (torch.utils.swap_tensors: "Cannot swap t1 because it has weakref associated
    with it", the weakref _LEDGERS keeps).  Before the backward, or on the parent commit, it converts: τ float64."""
    part, inputs, weights = _rev100_uniform_and_ordinary_chains()
    layer = _learned_temperature_layer(part)
    sum((p * w).sum() for p, w in zip(layer(inputs[1]).probs, weights)).backward()
    with _swapping_on_conversion():
        layer.double()
    (tau,) = layer.parameters()
    assert tau.dtype == torch.float64


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev100_a_backward_pass_in_another_thread_does_not_drop_this_passs_records():
    """One float32 leaf τ (float64 scores, float32 work, tol 1e-6).  Thread A: torch.autograd.grad of the uniform
    chain's loss in τ (alone: undetermined, NaN with a warning, as in the single-threaded run); its solve's backward
    records, then (a node created before the solve, run after it) A waits while the main thread takes its own
    torch.autograd.grad of the ordinary input's loss in τ (−0.4259356).  _TemperatureLedger.record keeps only the
    records of the pass recording now, so the main thread's record drops A's: A's hook finds no record of its pass
    and returns 0.0 unjudged, no warning.  The parent (a ledger per solve) returned NaN for A."""
    uniform, _, ordinary = _pass_in_flight(1, in_tau=True)
    assert ordinary == pytest.approx(-0.4259356, abs=1e-5), ordinary
    assert math.isnan(uniform), uniform


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev101_a_learned_temperature_swapped_by_a_conversion_is_still_judged():
    """ConsistentAttention(chain 4 → 2, 'dual', float32 work, tol 1e-6) with a learned float32 Parameter τ, after
    one pass on the ordinary input (−0.4259356; the ledger's hook registered).  With
    torch.__future__.set_swap_module_params_on_conversion(True), layer.cpu() (a no-op move, as .double() then
    .float()) runs torch.utils.swap_tensors(τ, new): τ keeps its Python _backward_hooks dict, whose hook holds the
    ledger, but the hook autograd runs moves with the tensor's impl to the discarded one.  _ledger_of(τ) finds the
    ledger in the dict and records into it; no hook of τ judges it: the uniform input's undetermined gradient came
    back −0.0 with no warning (NaN with 'shared by maps [0, 1]' before the conversion, or without the swap).  Since
    f188796 the solve's own node judges it: NaN with a warning."""
    part, inputs, weights = _rev100_uniform_and_ordinary_chains()
    layer = _learned_temperature_layer(part)
    (tau,) = layer.parameters()

    def grad_of(x):
        loss = sum((p * w).sum() for p, w in zip(layer(x).probs, weights))
        return float(torch.autograd.grad(loss, tau)[0])

    assert grad_of(inputs[1]) == pytest.approx(-0.4259356, abs=1e-5)
    with _swapping_on_conversion():
        layer.cpu()
    assert next(layer.parameters()) is tau
    with pytest.warns(ca.TemperatureGradientWarning, match=r"\[0, 1\] cannot be resolved"):
        got = grad_of(inputs[0])
    assert math.isnan(got), got


def test_rev101_a_0d_leaf_that_is_a_view_given_for_every_map_is_judged_summed():
    """ca_rev94's two chains (float32 work, tol 1e-6) with one temperature for all four maps, the 0-d leaf
    torch.ones(4, dtype=torch.float64)[0].requires_grad_() (a leaf of its own: its base does not require grad, and
    the user receives its whole gradient).  'exact' gives 0.4768663, as does 'dual' with torch.tensor(1.0).
    _sharing_judged skips any source that is a view of a tensor of more than one element, so the maps are judged
    one by one and the uniform chain's exact zeros are NaN ('for map(s) [0, 1]'): the gradient is NaN."""
    h, scores, weights = _two_chains_shared()
    tau = torch.ones(4, dtype=torch.float64)[0].requires_grad_()
    assert tau.is_leaf
    want = _tau_grads(h, scores, weights, tau, [tau], "exact")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.TemperatureGradientWarning)
        got = _tau_grads(h, scores, weights, tau, [tau], tol=1e-6, dtype=torch.float32)[0]
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev101_a_pass_in_flight_keeps_its_records_while_other_passes_record():
    """One float32 leaf τ (float64 scores, float32 work, tol 1e-6).  Thread A: torch.autograd.grad of the uniform
    chain's loss in τ (alone: undetermined, NaN with a warning); its solve's backward records, then A waits (a node
    made before the solve, run after it) while the main thread takes _PASSES_KEPT = 16 gradients of the ordinary
    input's loss in its scores only (passes that record and never reach τ's hook).  _TemperatureLedger.record keeps
    the 16 latest passes and drops A's, which is still running: A's hook finds no record of its pass and returns
    0.0 with no warning (with 15 such passes, NaN).  A pass that reaches the hook should be judged."""
    import convex_attention.dual as dual

    uniform, _, _ = _pass_in_flight(dual._PASSES_KEPT)
    assert math.isnan(uniform), uniform


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev102_a_loaded_module_converted_with_swapped_parameters_judges_its_temperature():
    """ConsistentAttention(chain 4 → 2, 'dual', float32 work, tol 1e-6) with a learned float32 Parameter τ, saved
    with torch.save and loaded with torch.load (τ's _backward_hooks is an empty OrderedDict, the one unpickling
    sets), then layer.cpu() under set_swap_module_params_on_conversion(True): torch.utils.swap_tensors leaves τ
    that empty dict, stale (registered with the internals that moved to the discarded tensor).  _ledger_of sees no
    hooks ({} is falsy), registers the ledger's hook into the stale dict, where it never runs, and marks τ: the
    uniform input's undetermined gradient comes back −0.0 with no warning (NaN with a warning without the
    save/load round trip: rev101).  The same holds for a τ whose own hook the user removed (handle.remove())."""
    import io

    part, inputs, weights = _rev100_uniform_and_ordinary_chains()
    layer = _learned_temperature_layer(part)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    layer = torch.load(buffer, weights_only=False)
    with _swapping_on_conversion():
        layer.cpu()
    (tau,) = layer.parameters()
    loss = sum((p * w).sum() for p, w in zip(layer(inputs[0]).probs, weights))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = float(torch.autograd.grad(loss, tau)[0])
    assert math.isnan(got), got
    assert any(issubclass(w.category, ca.TemperatureGradientWarning) for w in caught)


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev102_a_temperature_swapped_with_its_deep_copy_is_judged():
    """A float32 leaf τ = 1 (chain 4 → 2, float64 scores, float32 work, tol 1e-6): one gradient of the ordinary
    input's loss (−0.4259356; the ledger L's hook registered, τ marked id(L)).  copy.deepcopy(τ) copies the mark in
    __dict__ (no hooks); torch.utils.swap_tensors(τ, copy) gives τ the copy's __dict__ (mark id(L)) and internals
    and leaves it its stale hooks dict, whose hook holds L.  _ledger_of matches mark and hook and records into L,
    whose hook never runs: the uniform input's undetermined gradient comes back −0.0 with no warning.  (The
    Parameter's deepcopy does not copy __dict__, and is judged map by map: NaN.)"""
    import copy

    part, inputs, weights = _rev100_uniform_and_ordinary_chains()
    tau = torch.tensor(1.0, requires_grad=True)

    def grad_of(x):
        sol = ca.solve(x, part, "dual", temperature=tau, tol=1e-6, dtype=torch.float32)
        return float(torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), tau)[0])

    assert grad_of(inputs[1]) == pytest.approx(-0.4259356, abs=1e-5)
    torch.utils.swap_tensors(tau, copy.deepcopy(tau))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = grad_of(inputs[0])
    assert math.isnan(got), got
    assert any(issubclass(w.category, ca.TemperatureGradientWarning) for w in caught)


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev102_the_gradient_taken_in_a_cast_temperature_is_judged():
    """A float32 leaf τ = 1 and its cast t = τ.double(), the temperature of the uniform chain 4 → 2 (float64 scores,
    float32 work, tol 1e-6); the user asks torch.autograd.grad(loss, t).  _temperature_source looks through the
    cast (ToCopyBackward0) to τ and records into τ's ledger, which judges only in τ's hook; the pass stops at t and
    never reaches τ, and the maps the ledger was to judge are not judged one by one: the undetermined gradient comes
    back −0.0 with no warning (NaN, 'shared by maps [0, 1]', in τ itself).  The same for a float32 cast of a float64
    leaf beside float32 scores.  (Since aefeb54.)"""
    part, inputs, weights = _rev100_uniform_and_ordinary_chains()
    tau = torch.tensor(1.0, requires_grad=True)
    cast = tau.double()
    sol = ca.solve(inputs[0], part, "dual", temperature=cast, tol=1e-6, dtype=torch.float32)
    loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = float(torch.autograd.grad(loss, cast)[0])
    assert math.isnan(got), got
    assert any(issubclass(w.category, ca.TemperatureGradientWarning) for w in caught)


def _pass_in_flight(others, in_tau=False):
    """The uniform chain's gradient in a float32 leaf τ (float64 scores, float32 work, tol 1e-6) taken in a thread
    that pauses after its solve's backward recorded, while the main thread takes ``others`` gradients of the ordinary
    input's loss, in its scores only (passes that record and never reach τ's node) or, ``in_tau``, in τ:
    ``(gradient, warning texts, the main thread's last gradient in τ or None)``."""
    import threading

    part, inputs, weights = _rev100_uniform_and_ordinary_chains()
    tau = torch.tensor(1.0, requires_grad=True)
    paused, done, got = threading.Event(), threading.Event(), {}

    class Wait(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            paused.set()
            done.wait(120)
            return grad

    def loss_of(x):
        sol = ca.solve(x, part, "dual", temperature=tau, tol=1e-6, dtype=torch.float32)
        return sum((p * w).sum() for p, w in zip(sol.probs, weights))

    def uniform_pass():
        loss = Wait.apply(tau) * 0 + loss_of(inputs[0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got["uniform"] = float(torch.autograd.grad(loss, tau)[0])
        got["texts"] = [str(w.message) for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]

    thread = threading.Thread(target=uniform_pass)
    thread.start()
    paused.wait(60)
    main = None
    for _ in range(others):
        x = [s.clone().requires_grad_() for s in inputs[1]]
        if in_tau:
            main = float(torch.autograd.grad(loss_of(x), tau)[0])
        else:
            torch.autograd.grad(loss_of(x), x)
    done.set()
    thread.join(120)
    return got["uniform"], got["texts"], main


@pytest.mark.usefixtures("float32_duals_kept")
@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_rev102_a_pass_in_flight_stays_judged_however_many_other_passes_record():
    """As rev101's pass in flight, with 1040 score-only passes recorded meanwhile instead of 16 (about 3 s): the
    pass's records go at the 16th, its id into _TemperatureLedger.dropped (a deque of maxlen _PASSES_KEPT·64 =
    1024), and each later pass drops one more id, so after 1040 its id is gone as well: its hook finds neither
    records nor the drop and returns 0.0 with no warning (1039: NaN with the warning).  A pass whose records went
    should not be judged, however long it ran."""
    import convex_attention.dual as dual

    got, texts = _pass_in_flight(dual._PASSES_KEPT * 65)[:2]
    assert math.isnan(got) and texts, (got, texts)


@pytest.mark.usefixtures("float32_duals_kept")
def test_rev102_the_dropped_records_warning_counts_the_other_passes_right():
    """rev101's instance: exactly _PASSES_KEPT = 16 other passes record while the uniform pass is in flight, and its
    records go (with 15 they are kept).  The warning says 'the records of this backward pass were dropped while
    more than 16 other passes recorded': 16 did; the text should not say more than 16."""
    import convex_attention.dual as dual

    got, texts = _pass_in_flight(dual._PASSES_KEPT)[:2]
    assert math.isnan(got) and len(texts) == 1, (got, texts)
    assert f"more than {dual._PASSES_KEPT} other" not in texts[0], texts


# ------------------------------------------------------------------------- ca_rev103 (strict xfail: review of f188796)
@pytest.mark.slow  # end to end or a boundary of a path lighter tests take (fast suite < 1 min)
def test_rev103_the_add_up_check_allows_autograd_s_rounding_of_a_sum_of_many_shares():
    """256 identical ordinary chains 4 → 2 (_two_chains_shared's maps 2 → 3, float32 scores) side by side, 512 maps,
    one 0-d float64 τ = 1 (requires grad) for all of them, float32 work, tol 1e-6.  'exact' gives 256 × 0.4768663 =
    122.0777; each part's share is determined.  Autograd sums the 512 float64 shares one by one into the shared
    node's input, 9.4e-13 off their exact sum (math.fsum of the records); _SharingLedger.judged allows
    16·eps·Σ|share| = 4.3e-13, a bound that does not grow with the number of terms added (recursive summation's is
    (n − 1)·eps/2·Σ|x|), and returns NaN with 'its backward passes recorded 122.078, not the 122.078 it received'.
    (128 chains: 2.7e-13 off, 2.2e-13 allowed, NaN; a float32 τ with 100 chains: 9.3e-5 off, 9.1e-5 allowed,
    NaN.)  A determined gradient: finite, within 1e-3 of 'exact', no TemperatureGradientWarning."""
    chains = 256
    h = ca.Graph.from_edges([4, 2] * chains, [(2 * i, 2 * i + 1, torch.tensor([0, 1, 0, 1])) for i in range(chains)])
    scores = [torch.tensor([[0.3, -1.2, 0.8, 0.1]]), torch.tensor([[0.5, -0.4]])] * chains
    weights = [torch.tensor([[0.7, 0.2, -1.1, 0.6]]), torch.tensor([[-0.3, 0.8]])] * chains
    tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    want = _tau_grads(h, scores, weights, tau, [tau], "exact")[0]
    assert want == pytest.approx(chains * 0.4768663, rel=1e-6)
    _assert_float32_tau_grad_determined(h, scores, weights, tau, [tau], want)


def test_rev103_a_shared_temperature_s_sum_off_by_more_than_1e_3_is_nan_with_a_warning():
    """The axial 2×3 instance of test_the_temperature_gradient_is_refused_where_float32_duals_do_not_determine_it
    (seed 0) at τ = (6e4, b, b), b one 0-d float64 tensor = 1 (requires grad) shared by maps 1 and 2, float32 work,
    tol 1e-6.  'dual' in float64 (tol 1e-6 and 1e-12 alike; scores rounded to float32 first: the same to 1e-8)
    gives ∂L/∂b = 4.7787e-10; float32 work returned 4.7937e-10, 3.2e-3 off, finite, with no warning: the ledger's
    three-sigma move of the duals' rounding is 0.62 × 1e-3 of the sum.  Not the backward's rounding (θ̄ formed in
    float64 from the same maps moved ∂L/∂b by 3e-8 of itself): log p was formed at the float32 solve's duals, 3.5 to
    25 float32 units of each dual off the optimum's (the solve at float32's floor, violation 1.2e-7), against
    log-probabilities ~1e-5 apart.  (At τ = (8e4, b, b): 3.4e-3 off, bound 0.83; per map, a (3,) tensor at
    (1e5, 1, 1): map 2 4.2e-3 off, bound 0.57.)  Now log p is formed at the duals polished in float64
    (_optimum_duals).  A gradient the float32 solution does not determine to 1e-3: NaN with a
    TemperatureGradientWarning, or within 1e-3 of float64's."""
    h = ca.Graph.axial((2, 3))
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]
    weights = [torch.randn((1,) + s, generator=gen, dtype=torch.float64) for s in h.shapes]

    def grad_of(dtype):
        b = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        return _tau_grads(h, scores, weights, [6e4, b, b], [b], tol=1e-6, dtype=dtype)[0]

    want = grad_of(torch.float64)
    assert want == pytest.approx(4.7787e-10, rel=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = grad_of(torch.float32)
    said = [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    assert (math.isnan(got) and said) or abs(got - want) <= 1e-3 * abs(want), (got, want, len(said))


# ------------------------------------------ float32 temperature gradients of hot maps: log p at the optimum


def _hot_tau_grads(h, temps, seed, reference):
    """∂L/∂τ of Σ <p_k, w_k> for one sample of N(0, 1) scores (float32 values), float32 'dual' work (tol 1e-6),
    against ``reference`` (a method and its options), and the size each component is held to, as the check
    holds it (``max(|g_k|, max_j |g_j| · sqrt(1e-3))``)."""
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randn((1,) + s, generator=g, dtype=torch.float64).float().double() for s in h.shapes]
    weights = [torch.randn((1,) + s, generator=g, dtype=torch.float64) for s in h.shapes]

    def grad(method, **options):
        tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, method, temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]

    want = grad(*reference[:1], **reference[1])
    got = grad("dual", tol=1e-6, dtype=torch.float32)
    return got, want, torch.maximum(want.abs(), want.abs().max() * 1e-3 ** 0.5)


@pytest.mark.parametrize("seed", range(4))
def test_float32_temperature_gradients_of_hot_maps_on_a_chain_match_the_closed_form(seed):
    """A 16² → 8² chain at τ = (7e4, 2.5e3), float32 work: the coarse map's ∂L/∂τ came back 0.2-10 % of its held
    size off exact's (19 of 20 seeds past 1e-3), unwarned.  log p was formed at the float32 solve's duals, which sit
    at float32's floor in logit units (eps·τ·|log p| in score units: 5.8e-4), against a hot map's log-probabilities
    ~1e-5 apart; exact forms them in float64 and was right to 1e-7.  On a forest the temperature gradient's log p now
    comes from the closed form in float64: within 1e-4 (it is about 1e-6)."""
    got, want, held = _hot_tau_grads(ca.Hierarchy.grid([(16, 16), (8, 8)]), [7e4, 2.5e3], seed, ("exact", {}))
    assert bool(((got - want).abs() <= 1e-4 * held).all()), (got, want)


@pytest.mark.parametrize("seed", range(4))
def test_float32_temperature_gradients_of_hot_maps_on_an_axial_graph_match_float64(seed):
    """An axial 8×8 map at τ = (1e4, 1e3, 50), float32 work: components up to 5 % of their held size off the float64
    optimum's (seeds 0, 2, 3 past 1e-3), unwarned, for the same reason as on the chain above.  On a graph that is not
    a forest the float32 duals are now polished by a float64 solve started at them (_optimum_duals) before log p is
    formed: within 1e-4 (about 1e-6)."""
    got, want, held = _hot_tau_grads(ca.Graph.axial((8, 8)), [1e4, 1e3, 50.0], seed, ("dual", {"tol": 1e-12}))
    assert bool(((got - want).abs() <= 1e-4 * held).all()), (got, want)


def test_a_sample_the_polish_does_not_bring_to_its_tol_keeps_the_float32_duals(monkeypatch):
    """_optimum_duals takes the polished duals of the samples whose float64 solve converged, keeps the float32
    solve's for the others (their gradient judged by the duals' rounding, as before), and keeps them all where the
    polish raises."""
    import convex_attention.dual as dual_module

    h = ca.Graph.axial((2, 3))
    lam = [torch.full((2,) + h.shapes[b], 0.5, dtype=torch.float64) for _, b in h.edges]
    polished = [torch.full_like(d, -1.0) for d in lam]

    def half_converged(*args, **kwargs):
        assert kwargs["tol"] == dual_module.POLISH_TOL and kwargs["init"] is lam
        return {"duals": polished, "converged": torch.tensor([False, True])}

    monkeypatch.setattr(dual_module, "solve_dual", half_converged)
    out, done = dual_module._optimum_duals([], h, [1.0] * 3, lam)
    assert all(torch.equal(o[0], d[0]) and torch.equal(o[1], p[1]) for o, d, p in zip(out, lam, polished))
    assert done.tolist() == [False, True]

    def raising(*args, **kwargs):
        raise ca.ConvergenceError("the polish stalled")

    monkeypatch.setattr(dual_module, "solve_dual", raising)
    out, done = dual_module._optimum_duals([], h, [1.0] * 3, lam)
    assert out is lam and done.tolist() == [False, False]


def test_rev104_a_polished_hot_axial_gradient_that_is_right_is_not_refused():
    """Axial 16² at τ = (1e6, 1e4, 100), seed 1 of _hot_tau_grads, float32 work: log p is now formed at the duals
    polished in float64, and the backward's map-2 component before the judgement is 4.5e-8 of its held size off the
    float64 optimum's (tol 1e-12), yet _undetermined_temperatures (still judging the float32 duals' rounding, which
    no longer enters log p) returns it as NaN with a TemperatureGradientWarning (seed 2: 1.8e-7 off, NaN too).
    got NaN, want the float64 value, relative error 4.5e-8 before the NaN.  A false refusal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, want, held = _hot_tau_grads(ca.Graph.axial((16, 16)), [1e6, 1e4, 100.0], 1, ("dual", {"tol": 1e-12}))
    said = [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    assert not said and bool(((got - want).abs() <= 1e-3 * held).all()), (got, want, len(said))


def _axial_cold_instance():
    """ca_rev104's instance: an axial 8×8 map, batch 2, scores 3·N(0, 1) (seed 0) rounded to float32, weights
    N(0, 1); ``(graph, scores, weights)`` in float64."""
    h = ca.Graph.axial((8, 8))
    g = torch.Generator().manual_seed(0)
    scores = [(3.0 * torch.randn((2,) + s, generator=g, dtype=torch.float64)).float().double() for s in h.shapes]
    weights = [torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    return h, scores, weights


def test_rev104_a_cold_axial_float32_temperature_gradient_is_right_or_refused():
    """Axial 8×8, batch 2, scores 3·N(0, 1) (seed 0, rounded to float32), weights N(0, 1), τ = (0.01, 0.01, 0.01),
    float32 'dual' work (tol 1e-6): ∂L/∂τ = (1.3349e-8, 1.3348e-8, 1.3345e-8) against float64 'dual' at tol 1e-12
    (1.7284e-8, 1.7284e-8, 1.7280e-8): 23 % off each, finite, no TemperatureGradientWarning (before this change:
    (1.366e-8, 1.272e-8, 1.366e-8), 21-26 % off; the polish leaves it: not log p's error, but θ̄ formed at the
    float32 maps, whose second cell is 1.07e-11 against the optimum's 1.92e-11).  A gradient the float32 solution
    does not determine to 1e-3: NaN with a TemperatureGradientWarning, or within 1e-3 of float64's.  Now θ̄ for the
    temperature gradient is formed by a float64 backward at the optimum's maps (_wide_score_gradients)."""
    h, scores, weights = _axial_cold_instance()

    def grad(**options):
        tau = torch.tensor([0.01] * 3, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, "dual", temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]

    want = grad(tol=1e-12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = grad(tol=1e-6, dtype=torch.float32)
    said = [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    held = torch.maximum(want.abs(), want.abs().max() * 1e-3 ** 0.5)
    ok = [(bool(torch.isnan(a)) and bool(said)) or bool((a - b).abs() <= 1e-3 * c) for a, b, c in zip(got, want, held)]
    assert all(ok), (got, want, len(said))


def test_ca_rev105_hot_grid_regions_float32_temperature_gradient_centred():
    """A float32 solve (tol 1e-5) of a grid_regions 16² map at τ = (1.57e3, 2.88e4, 1.02e6), N(0, 3²) scores,
    batch 8: ∂L/∂τ_0 came back 6.8356e-9, unwarned, where the float64 optimum's (tol 1e-12) is 7.0023e-9:
    2.4e-2 off (the old code, 490257d, 6.8413e-9, 2.3e-2 off, unwarned too; float64 at tol 1e-5: 2.6e-4).  The
    duals forming log p are the optimum's now (eps 0, so nothing is judged), and the float32 score gradient θ̄_0 is
    3e-7 off, but its per-sample sums are ~1e-10 (float64's ~1e-19): −Σ θ̄_0 log p is invariant to a constant per
    sample only where Σ θ̄_0 = 0, and the log p saved is shifted by the maximum logit.  With θ̄_0 centred per sample:
    7.0088e-9 (9e-4 off).  log p less its mean under p fixed it (850ea21) and was withdrawn: where the sum's
    rounding sits at a block's dominant cell, the mean is the wrong constant (ca_rev106, 7.8e-3 off).  Now θ̄ for
    the temperature gradient is formed by a float64 backward at the optimum's maps (_wide_score_gradients)."""
    from convex_attention.bench.graph_targets import draw_instance
    g = torch.Generator().manual_seed(103)
    for _ in range(6):
        h, scores, temps = draw_instance("grid_regions", 16, g, (2.0, 8.0), 8, scale=3.0)
        weights = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]
    scores = [s.float() for s in scores]

    def grad(scores, **options):
        tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, "dual", temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]

    want = grad([s.double() for s in scores], tol=1e-12, max_iter=20000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = grad(scores, tol=1e-5, dtype=torch.float32)
    said = [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    held = torch.maximum(want.abs(), want.abs().max() * 1e-3 ** 0.5)
    ok = [(bool(torch.isnan(a)) and bool(said)) or bool((a - b).abs() <= 1e-3 * c) for a, b, c in zip(got, want, held)]
    assert all(ok), (got, want, len(said))


def test_ca_rev106_dual_float32_temperature_gradient_mean_centring_of_a_cold_block():
    """As test_exact.py's ca_rev106 test, through method 'dual' (dtype float32, tol 1e-4): a forest, so log p is
    formed at exact_duals (eps 0, nothing judged) and θ̄ by the float32 tree backward, whose per-sample sum (its
    rounding, θ̄_0[1] ~ 1e-5) sits at the dominant cell of cell 1's block, not spread as p.  ∂L/∂τ_0: got
    −3.90143e-5, want −3.87121e-5 (float64, tol 1e-13): 7.8e-3 off, no TemperatureGradientWarning, with log p
    centred at its mean under p (850ea21, withdrawn); with the largest log p taken off (as now) −3.87128e-5, 1.8e-5
    off."""
    h = ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))])
    w = torch.tensor([[1.0, 3.0, 0.0, 0.0]], dtype=torch.float64)
    scores = [torch.tensor([[0.0, -0.09, 0.0, -1.0]], dtype=torch.float64),
              torch.tensor([[0.0, -100.0]], dtype=torch.float64)]

    def grad(scores, **options):
        tau = torch.tensor([5e-3, 500.0], dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, h, "dual", temperature=tau, **options)
        return torch.autograd.grad((sol.probs[0].double() * w).sum(), tau)[0]

    want = grad(scores, tol=1e-13, max_iter=50000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = grad([s.float() for s in scores], dtype=torch.float32, tol=1e-4)
    said = [x for x in caught if issubclass(x.category, ca.TemperatureGradientWarning)]
    assert (bool(torch.isnan(got[0])) and bool(said)) or abs(float(got[0] / want[0]) - 1) <= 1e-3, \
        (float(got[0]), float(want[0]), len(said))


# ------------------------------------------------------------------------- ca_rev107 (strict xfail: review of 1c60b18)
def _ca_rev107_axial_cold_gradients(**options):
    """ca_rev104's instance (axial 8², τ = 0.01 each, N(0, 3²) float32-rounded scores, batch 2): the temperature
    gradient (float64 tol 1e-12 without options) and the TemperatureGradientWarnings it raised."""
    h, scores, weights = _axial_cold_instance()
    tau = torch.tensor([0.01] * 3, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = ca.solve(scores, h, "dual", temperature=tau, **(options or {"tol": 1e-12}))
        got = torch.autograd.grad(sum((p.double() * w).sum() for p, w in zip(sol.probs, weights)), tau)[0]
    return got, [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]


def _ca_rev107_judged(got, want, said):
    held = torch.maximum(want.abs(), want.abs().max() * 1e-3 ** 0.5)
    return all((bool(torch.isnan(a)) and bool(said)) or bool((a - b).abs() <= 1e-3 * c)
               for a, b, c in zip(got, want, held))


@pytest.mark.xfail(strict=True, reason="ca_rev107, open (forced only): where the float64 backward fails the float32 "
                                       "backward's θ̄ is used and judged by the duals' rounding, which does not see "
                                       "its error on a nearly one-hot map (22.8 % off); NaN there refused right zeros "
                                       "on saturated maps, where it fails unforced (ca_rev108); in design.md")
def test_ca_rev107_wide_vjp_fallback_unjudged(monkeypatch):
    """Where the float64 implicit VJP of _wide_score_gradients refuses every sample (forced here, by its
    hessian.resolved_vjp; its rtol is 1e-10 against float32's 1e-5), it falls back to the float32 backward's θ̄ at
    the float32 maps, but log p is the
    polished duals' and their rounding eps was set to 0, so nothing is judged: ca_rev104's instance (float32, tol
    1e-6) gives ∂L/∂τ = (1.3349e-8, 1.3348e-8, 1.3345e-8) against float64's (1.7284e-8, 1.7284e-8, 1.7280e-8):
    22.8 % off, no TemperatureGradientWarning (without the forced failure 5e-5 off).  Should be NaN and warned (or
    right) wherever θ̄ is not the float64 backward's."""
    import convex_attention.dual as dual_module
    want, _ = _ca_rev107_axial_cold_gradients()

    def refusing_every_sample(*args, **kwargs):  # forced: the float64 Hessian system not solved for any sample
        return [], []

    monkeypatch.setattr(dual_module, "resolved_vjp", refusing_every_sample)
    got, said = _ca_rev107_axial_cold_gradients(tol=1e-6, dtype=torch.float32)
    assert _ca_rev107_judged(got, want, said), (got, want, len(said))


def _polish_misses_sample_0(monkeypatch):
    """Force the float64 polish of a float32 solve's duals (_optimum_duals) to miss sample 0: its solve_dual at
    POLISH_TOL reports that sample unconverged, at violation inf; every other solve is left alone."""
    import convex_attention.dual as dual_module

    real = dual_module.solve_dual

    def polish_misses_sample_0(*args, **kwargs):
        result = real(*args, **kwargs)
        if kwargs.get("tol") == dual_module.POLISH_TOL:
            result["converged"] = result["converged"].clone()
            result["converged"][0] = False
            result["violation"] = result["violation"].clone()
            result["violation"][0] = math.inf
        return result

    monkeypatch.setattr(dual_module, "solve_dual", polish_misses_sample_0)


def test_ca_rev107_unpolished_sample_unwarned(monkeypatch):
    """_optimum_duals: 'a sample the polish does not bring there keeps its own (its gradient judged by their
    rounding)'.  With the polish of sample 0 failing (forced: converged False; the same when solve_dual raises
    ConvergenceError, every sample), ca_rev104's instance (float32, tol 1e-6) gives ∂L/∂τ = (1.3662e-8, 1.2721e-8,
    1.3658e-8) against float64's (1.7284e-8, 1.7284e-8, 1.7280e-8): 21-26 % off, no TemperatureGradientWarning:
    θ̄ by the float64 VJP at the unpolished duals' maps (whose small cells are off the optimum's) and the rounding
    check of the float32 duals do not see it."""
    want, _ = _ca_rev107_axial_cold_gradients()
    _polish_misses_sample_0(monkeypatch)
    got, said = _ca_rev107_axial_cold_gradients(tol=1e-6, dtype=torch.float32)
    assert _ca_rev107_judged(got, want, said), (got, want, len(said))


# ------------------------------------------------------------------------- ca_rev108 (strict xfail: review of c73ba86)
def _ca_rev108_saturated(tau_wanted=True, **options):
    """Axial 8², τ = 1e-3 each (maps saturated to one-hot), N(0, 3²) scores drawn in float64 (seed 0), batch 4, a
    random linear loss: (∂L/∂τ or None, ∂L/∂scores, the TemperatureGradientWarnings raised)."""
    h = ca.Graph.axial((8, 8))
    g = torch.Generator().manual_seed(0)
    dtype = options.pop("scores_dtype", torch.float32)
    scores = [(3.0 * torch.randn((4,) + s, generator=g, dtype=torch.float64)).float().to(dtype).requires_grad_()
              for s in h.shapes]
    weights = [torch.randn((4,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    tau = torch.tensor([1e-3] * 3, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = ca.solve(scores, h, "dual", temperature=tau, **options)
        loss = sum((p.double() * w).sum() for p, w in zip(sol.probs, weights))
        got = torch.autograd.grad(loss, [tau] + scores if tau_wanted else scores)
    said = [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    return (got[0] if tau_wanted else None), got[1:] if tau_wanted else got, said


def test_ca_rev108_saturated_float32_temperature_gradient_nan():
    """A float32 solve (dtype float32, tol 1e-5) whose float32 implicit backward succeeds, but whose new float64
    backward at the optimum (_wide_score_gradients) raises ImplicitSolveError (samples [0, 2] not resolved to 1e-6
    in float64): the whole ∂L/∂τ is NaN with a TemperatureGradientWarning.  The gradient is 0: float64 central
    differences (tol 1e-13, step 1e-7) give (0.0, 0.0, 0.0), and 490257d returned (0., 0., 0.) unwarned; the
    same at τ = 2e-3.  A float32 learned temperature that used to train now stops at NaN."""
    got, _, said = _ca_rev108_saturated(dtype=torch.float32, tol=1e-5)
    assert bool(torch.isfinite(got).all()) and float(got.abs().max()) <= 1e-6, (got, [str(w.message) for w in said])


def test_ca_rev108_score_only_backward_warns_of_temperature():
    """autograd.grad(loss, scores) only, the temperature requiring grad (a learned τ), on the saturated instance:
    the backward still forms the temperature gradient, and now runs the float64 backward at the optimum, which
    fails: a TemperatureGradientWarning ('... it is NaN; solve in float64 ...') for a gradient nobody asked for,
    1 warning; 490257d raised none (its τ-gradient there was 0).  The score gradients themselves are finite."""
    _, gscores, said = _ca_rev108_saturated(tau_wanted=False, dtype=torch.float32, tol=1e-5)
    assert all(bool(torch.isfinite(x).all()) for x in gscores)
    assert not said, [str(w.message) for w in said]


def test_ca_rev108_float64_advice_of_a_failed_float64_backward():
    """Where the τ-gradient is NaN because the float64 backward at the optimum failed, the warning still ends
    'solve in float64 (dtype=torch.float64), or keep those temperatures fixed' (and nests the ImplicitSolveError's
    whole text in its own: one 787-character line with two sets of advice); on the saturated instance, solved in
    float64 (float64 scores and τ, tol 1e-12, max_iter 20000) as advised, the backward raises ImplicitSolveError
    (samples [0, 2] not resolved to 1e-6 in float64): the advice turns a NaN into an exception."""
    from convex_attention.hessian import ImplicitSolveError
    _, _, said = _ca_rev108_saturated(dtype=torch.float32, tol=1e-5)
    advised = [str(w.message) for w in said if "solve in float64" in str(w.message)]
    if advised:
        try:
            _ca_rev108_saturated(scores_dtype=torch.float64, tol=1e-12, max_iter=20000)
        except ImplicitSolveError as err:
            pytest.fail(f"advised float64 raised: {err}; the advice: {advised[0]}")


# ------------------------------------------------------------------------- ca_rev109 (strict xfail: review of ac34a57)
def test_ca_rev109_unpolished_sample_without_loss_refuses_the_gradient(monkeypatch):
    """Axial 8², batch 2, N(0, 3²) scores rounded to float32 (seed 0), τ = 0.5 each, a linear loss on sample 1's maps
    only; float32 work (tol 1e-6), the float64 polish forced to miss sample 0 (converged False).  Sample 0 carries
    no loss, so its θ̄ is 0 and its unpolished duals' log p enter ∂L/∂τ = −Σ θ̄ log p multiplied by 0; yet
    the backward returns (nan, nan, nan) with one TemperatureGradientWarning ('... did not converge for sample(s)
    [0]'), where float64 (tol 1e-12) gives (0.3398, 0.2778, 0.1163) and the float32 solve unforced gives it within
    1e-3.  A padded or masked sample whose polish misses stops a learned temperature of the whole batch."""
    h, scores, weights = _axial_cold_instance()

    def grad(**options):
        tau = torch.tensor([0.5] * 3, dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sol = ca.solve(scores, h, "dual", temperature=tau, **options)
            loss = sum((p.double()[1] * w[1]).sum() for p, w in zip(sol.probs, weights))
            got = torch.autograd.grad(loss, tau)[0]
        return got, [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]

    want, _ = grad(tol=1e-12)
    _polish_misses_sample_0(monkeypatch)
    got, said = grad(tol=1e-6, dtype=torch.float32)
    held = torch.maximum(want.abs(), want.abs().max() * 1e-3 ** 0.5)
    assert bool(((got - want).abs() <= 1e-3 * held).all()), (got, want, [str(w.message) for w in said])


def test_a_learned_float32_temperature_returns_the_optimum_s_score_gradients():
    """ca_rev104's nearly one-hot axial 8×8 map (:func:`_axial_cold_instance`, τ = 0.01, float32 work, tol 1e-6):
    with the temperature learned, the score gradients returned are the float64 backward's at the optimum's maps
    (DualSolveFunction._wide_score_gradients, which the temperature gradient needs anyway), within 5.5e-7 of the
    largest of each sample's map against float64 'dual' at tol 1e-12; the float32 backward's at the returned maps,
    which a fixed temperature gets, are 23 % off on sample 0 (the maps' error δp over 1 − p_max: design.md §4)
    and were returned with a learned one too, at the cost of that backward as well."""
    h, scores, weights = _axial_cold_instance()

    def score_gradients(tau, **options):
        leaves = [s.clone().requires_grad_(True) for s in scores]
        sol = ca.solve(leaves, h, "dual", temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * w).sum() for p, w in zip(sol.probs, weights)), leaves)

    reference = score_gradients(torch.full((3,), 0.01, dtype=torch.float64), tol=1e-12)
    learned = score_gradients(torch.full((3,), 0.01, dtype=torch.float64, requires_grad=True), tol=1e-6,
                              dtype=torch.float32)
    for got, want in zip(learned, reference):
        for i in range(want.shape[0]):
            size = float(want[i].abs().max())
            assert size > 0
            assert float((got[i].double() - want[i]).abs().max()) <= 1e-4 * size, (i, size)


# ------------------------------------------ float32 temperature gradients with given maps: log p at the optimum
def _given_map_temperature_gradients(family: str, seed: int, given_map: int, weights_on=None):
    """``draw_instance(family, 16, seed, log τ in [2, 8], batch 8, N(0, 3²) scores)`` rounded to float32, map
    ``given_map`` given as the float64 optimum's, rounded to float32 (both works solve one problem, as the scores are
    rounded), a random linear loss on the other maps: ``(float32 work at tol 1e-5, float64 at tol 1e-12, the
    TemperatureGradientWarnings, the held sizes, the largest ∂L/∂τ with every map scored)``, the sizes
    max(|g_k|, max_j |g_j|·√1e-3) as benchmarks/study_temperature_gradients.py holds them."""
    from convex_attention.bench.graph_targets import draw_instance
    g = torch.Generator().manual_seed(seed)
    h, scores, temps = draw_instance(family, 16, g, (2.0, 8.0), 8, scale=3.0)
    weights = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]
    wide = [s.float().double() for s in scores]
    tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
    sol = ca.solve(wide, h, "dual", temperature=tau, tol=1e-12, max_iter=20000)
    loss = sum((p * w).sum() for k, (p, w) in enumerate(zip(sol.probs, weights)) if k != given_map)
    natural = float(torch.autograd.grad(loss, tau)[0].abs().max())
    q = sol.probs[given_map].detach().float().double()
    q = q / q.sum(dim=tuple(range(1, q.dim())), keepdim=True)

    def grad(rest, q, **options):
        tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(rest, h, "dual", temperature=tau, given={given_map: q}, **options)
        loss = sum((p.double() * w).sum() for k, (p, w) in enumerate(zip(sol.probs, weights)) if k != given_map)
        return torch.autograd.grad(loss, tau)[0]

    rest = [None if k == given_map else s for k, s in enumerate(wide)]
    want = grad(rest, q, tol=1e-12, max_iter=20000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = grad([None if s is None else s.float() for s in rest], q.float(), tol=1e-5, dtype=torch.float32)
    said = [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    return got, want, said, torch.maximum(want.abs(), want.abs().max() * 1e-3 ** 0.5), natural


def test_a_hot_float32_temperature_gradient_with_a_given_map_is_the_optimum_s():
    """Axial 16², seed 1007, τ = (…) hot (log τ in [2, 8]), map 1 (the rows) given: with given maps log p was formed
    at the float32 solve's own duals (no float64 polish), and ∂L/∂τ of maps 0 and 2 came back 117 % and 166 % of
    their held sizes off, unwarned (9888703; study_temperature_gradients.py --given, docs/benchmarks.md: 39 of 2,609
    maps more than 1e-3 off, unwarned, worst 4.57).  The duals polished in float64 with the given maps renormalised,
    and θ̄ from the float64 backward there (as for scored maps): within 1e-3 (2.9e-6 measured)."""
    got, want, said, held, _ = _given_map_temperature_gradients("axial", 1007, 1)
    assert not said, [str(w.message) for w in said]
    assert bool(((got - want).abs() <= 1e-3 * held).all()), (got, want)


def test_determined_maps_have_zero_temperature_gradients_with_a_given_map():
    """Grid + regions 16², seed 109, map 0 (the 16² map) given: the grid and the regions are its poolings, fixed by
    it, so their temperature (and score) gradients are 0; the float64 solve returns about 1e-16 (rounding).  The
    float32 one is held to 1e-3 of the gradient's size with every map scored (9.6e-6 here), not of its own (which
    is rounding: held so, 6e-17 against −5.9e-17 looked 3e-3 off and 1.7e-11 at f047fa7 2.9e5 times off, a
    strict xfail and a regression test until 2026-12-06 that measured noise; 1.7e-11 is 1.8e-6 of 9.6e-6)."""
    got, want, said, _, natural = _given_map_temperature_gradients("grid_regions", 109, 0)
    assert natural > 1e-7 and float(want.abs().max()) <= 1e-9 * natural, (want, natural)
    assert not said and float(got.abs().max()) <= 1e-3 * natural, (got, natural, len(said))


def _two_given_coarsenings(seed: int = 3):
    """A 6-cell map scored, with two given coarsenings that share a block ({0, 1, 2}): onto 2 cells
    ([0, 0, 0, 1, 1, 1]) and onto 3 ([0, 0, 0, 1, 2, 2]), batch 4, pooled from a random float64 map p: ``(graph,
    scores rounded to float32, weights, the pools in float64, the pools each rounded to float32)``.  Rounded apart,
    the two pools of the shared block differ by up to 4.7e-9 once each is renormalised: no map pools onto both."""
    h = ca.Graph.from_edges([6, 2, 3], [(0, 1, torch.tensor([0, 0, 0, 1, 1, 1])),
                                        (0, 2, torch.tensor([0, 0, 0, 1, 2, 2]))])
    g = torch.Generator().manual_seed(seed)
    scores = (2 * torch.randn(4, 6, generator=g, dtype=torch.float64)).float().double()
    weights = torch.randn(4, 6, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    pools = [torch.stack([p[:, :3].sum(-1), p[:, 3:].sum(-1)], -1),
             torch.stack([p[:, :3].sum(-1), p[:, 3], p[:, 4:].sum(-1)], -1)]
    return h, scores, weights, pools, [q.float() for q in pools]


def _two_given_coarsenings_gradient(h, scores, weights, pools, **options) -> torch.Tensor:
    tau = torch.tensor([0.7, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    sol = ca.solve([scores, None, None], h, "dual", temperature=tau, given={1: pools[0], 2: pools[1]}, **options)
    return torch.autograd.grad((sol.probs[0].double() * weights).sum(), tau)[0]


@pytest.mark.parametrize("seed", [0, 3, 6, 11])
def test_given_maps_that_round_apart_keep_their_temperature_gradient(monkeypatch, seed):
    """:func:`_two_given_coarsenings`: float32 work (tol 1e-6) solves it, but the rounded given maps contradict each
    other by up to 4.7e-9 (seed 3) and no map pools onto both: the float64 polish of the duals could not converge
    (samples 0 and 2 of seed 3 ran to the default 1000 sweeps; 75f10c2 took duals within rounding_margin, which had
    drifted, and refused seeds 0, 6 and 11 above it: ca_rev111).  The given maps are made to agree first
    (given_maps.agreeing_given): every sample polished, finite, no warning, within 1e-3 of float64's at the consistent
    float64 pools."""
    import convex_attention.dual as dual_module
    h, scores, weights, pools, rounded = _two_given_coarsenings(seed)
    real, polished = dual_module._optimum_duals, []

    def recorded(*args, **kwargs):
        out = real(*args, **kwargs)
        polished.append(out[1].tolist())
        return out

    monkeypatch.setattr(dual_module, "_optimum_duals", recorded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _two_given_coarsenings_gradient(h, scores.float(), weights, rounded, tol=1e-6, dtype=torch.float32)
    assert polished == [[True] * 4], polished
    assert not [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    want = _two_given_coarsenings_gradient(h, scores, weights, pools, tol=1e-12, max_iter=20000)
    assert bool(torch.isfinite(got).all()) and bool(((got - want).abs() <= 1e-3 * want.abs().max()).all()), (got, want)


def _chain_joined_given_maps():
    """Map 0 (6 cells, scored) pools into map 1 (3 cells, scored), which pools into map 2 (given); map 0 also pools
    into map 3 (given) with the same two blocks of its cells ({0..3}, {4, 5}): maps 2 and 3 must be equal, joined
    only through a chain of scored maps.  Batch 4, pooled from a random float64 map; map 3 is map 2 rounded to
    float32 and moved one float32 unit in block 0 (rounded apart, as two float32 computations of one pooling can be).
    ``(graph, scores rounded to float32, weights on map 0, the float64 pools, the rounded pools)``."""
    h = ca.Graph.from_edges([6, 3, 2, 2], [(0, 1, torch.tensor([0, 0, 1, 1, 2, 2])), (1, 2, torch.tensor([0, 0, 1])),
                                           (0, 3, torch.tensor([0, 0, 0, 0, 1, 1]))])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(4, n, generator=g, dtype=torch.float64).float().double() for n in (6, 3)]
    weights = torch.randn(4, 6, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    pool = torch.stack([p[:, :4].sum(-1), p[:, 4:].sum(-1)], -1)
    apart = pool.float().clone()
    apart[:, 0] = torch.nextafter(apart[:, 0], torch.tensor(1.0))
    return h, scores, weights, [pool, pool], [pool.float(), apart]


def _chain_joined_gradient(h, scores, weights, pools, **options) -> torch.Tensor:
    tau = torch.tensor([0.7, 1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    sol = ca.solve([*scores, None, None], h, "dual", temperature=tau, given={2: pools[0], 3: pools[1]}, **options)
    return torch.autograd.grad((sol.probs[0].double() * weights).sum(), tau)[0]


def test_given_maps_joined_through_scored_maps_are_made_to_agree():
    """:func:`_chain_joined_given_maps`: given_maps.joined_given_blocks joins block i of map 2 with block i of map 3
    (map 0's cells reach both, map 2 through map 1); given_maps.agreeing_given scales each block pair to its mean,
    after which they are equal (to a few float64 units), each map still sums to one, and nothing moved more than the
    one unit they were apart. The float32 temperature gradient is then the float64 one's at the consistent pools
    within 1e-6, unwarned (at 75f10c2 its float64 polish could not converge: NaN with a warning)."""
    h, scores, weights, pools, rounded = _chain_joined_given_maps()
    joined = given_maps.joined_given_blocks(h, [False, False, True, True])
    assert joined is not None and joined[2].tolist() == joined[3].tolist() and len(set(joined[2].tolist())) == 2
    wide = [None, None, *[given_maps.normalised(q.double()) for q in rounded]]
    agreed = given_maps.agreeing_given(h, wide)
    assert float((agreed[2] - agreed[3]).abs().max()) <= 4e-16
    assert bool(((agreed[2].sum(-1) - 1).abs() <= 1e-15).all())
    assert float((agreed[3] - wide[3]).abs().max()) <= float((wide[3] - wide[2]).abs().max())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _chain_joined_gradient(h, [s.float() for s in scores], weights, rounded, tol=1e-6, dtype=torch.float32)
    assert not [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    want = _chain_joined_gradient(h, scores, weights, pools, tol=1e-12, max_iter=20000)
    assert bool(((got - want).abs() <= 1e-6 * want.abs().max()).all()), (got, want)


@pytest.mark.parametrize("seed", slow_beyond([1, 4, 7, 10]))  # one seed in the fast suite, the rest in CI
def test_given_maps_sharing_a_block_have_score_gradients_in_float64(seed):
    """:func:`_two_given_coarsenings` with its consistent float64 pools, float64 work at tol 1e-12, a fixed
    temperature, a linear loss on the scored map: the backward raised ImplicitSolveError ('could not resolve the
    gradient ... to 1e-06 of itself', blaming hot or saturated maps) on these 4 of 12 seeds (found by ca_rev111).
    The two given maps share a block, so ``w`` is free along a redundant direction that moves their gradients (1.7e-5
    of 0.2 between refinements) and no score gradient (1e-13): the refinement measured gradients nobody asked for.
    Now only the maps whose gradients are used are measured: the score gradients match float64 central differences
    (step 1e-6) within 1e-6 of their largest; and asked for the given maps' too, the error names the cause."""
    h, scores, weights, pools, _ = _two_given_coarsenings(seed)
    options = dict(temperature=[0.7, 1.0, 1.0], given={1: pools[0], 2: pools[1]}, tol=1e-12, max_iter=20000)
    x = scores.clone().requires_grad_(True)
    got = torch.autograd.grad((ca.solve([x, None, None], h, "dual", **options).probs[0] * weights).sum(), x)[0]

    def loss(s):
        return float((ca.solve([s, None, None], h, "dual", **options).probs[0] * weights).sum())

    want = torch.zeros_like(scores)
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            step = torch.zeros_like(scores)
            step[i, j] = 1e-6
            want[i, j] = (loss(scores + step) - loss(scores - step)) / 2e-6
    assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max()), (got - want).abs().max()
    wanted = [q.clone().requires_grad_(True) for q in pools]
    sol = ca.solve([scores, None, None], h, "dual", **{**options, "given": {1: wanted[0], 2: wanted[1]}})
    with pytest.raises(ca.ImplicitSolveError, match="no unique gradient"):
        torch.autograd.grad((sol.probs[0] * weights).sum(), wanted)


def test_a_given_map_s_missed_polish_refuses_the_temperature_gradient(monkeypatch):
    """The polish forced to miss sample 0 (violation inf) of :func:`_given_map_temperature_gradients`' hot axial
    instance with map 1 given: formed at sample 0's float32 duals the gradient came back 41 % and 58 % of its held
    size off, unwarned (judged by the duals' rounding, as all given-map gradients were at 9888703).  NaN with a
    TemperatureGradientWarning naming the sample, as for scored maps (ca_rev107)."""
    _polish_misses_sample_0(monkeypatch)
    got, _, said, _, _ = _given_map_temperature_gradients("axial", 1007, 1)
    assert bool(torch.isnan(got).all()), got
    messages = [str(w.message) for w in said]
    assert len(messages) == 1 and "did not converge for sample(s) [0]" in messages[0], messages


def test_ca_rev110_a_saturated_batch_mate_moves_a_learned_temperature_s_score_gradients():
    """c77d5d6: with a learned temperature in float32 work the score gradients are the float64 backward's at the
    optimum's maps, 'where that backward succeeds'; where it raises ImplicitSolveError for any sample, the whole
    batch falls back to the backward at the returned float32 maps.  Instance: ca_rev104's nearly one-hot axial 8×8
    sample 0 (:func:`_axial_cold_instance`, τ = 0.01 each, tol 1e-6, dtype float32) batched with one saturated
    sample (ca_rev108's draw 2: N(0, 30²) scores, float32-rounded, seed 0, i.e. its τ = 1e-3 instance at τ = 0.01),
    whose float64 system is singular.  Sample 0's score gradients come back 22.8 % of the sample's largest off
    float64 'dual' at tol 1e-12 on sample 0 alone (and ∂L/∂τ (1.3349e-8, …) against (1.7284e-8, …), 22.8 % off,
    no TemperatureGradientWarning: ca_rev107's 'forced only' fallback, met unforced); sample 0 solved alone in the
    same float32 call is 5.5e-7 off.  A batch should give what its samples alone give: per-sample fallback (as
    hessian._widened_vjp does) would keep sample 0 at the optimum's.  Measured: max |got − want| / max |want| over
    the three maps of sample 0.  Fixed: the float64 backward at the optimum falls back per sample
    (hessian.resolved_vjp); sample 0's score gradients and ∂L/∂τ (1.7285e-8, …) are the optimum's."""
    h, scores, weights = _axial_cold_instance()
    g = torch.Generator().manual_seed(0)
    saturated = [(3.0 * torch.randn((4,) + s, generator=g, dtype=torch.float64)).float().double() * 10
                 for s in h.shapes]
    sat_weights = [torch.randn((4,) + s, generator=g, dtype=torch.float64) for s in h.shapes]

    def score_gradients(sc, w, **options):
        leaves = [s.clone().requires_grad_(True) for s in sc]
        tau = torch.tensor([0.01] * 3, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(leaves, h, "dual", temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * x).sum() for p, x in zip(sol.probs, w)), leaves)

    reference = score_gradients([s[:1] for s in scores], [x[:1] for x in weights], tol=1e-12)
    batch = [torch.cat([s[:1], t[2:3]]) for s, t in zip(scores, saturated)]
    batch_weights = [torch.cat([a[:1], b[2:3]]) for a, b in zip(weights, sat_weights)]
    got = score_gradients(batch, batch_weights, tol=1e-6, dtype=torch.float32)
    size = max(float(r[0].abs().max()) for r in reference)
    off = max(float((a[0].double() - r[0]).abs().max()) for a, r in zip(got, reference)) / size
    assert off <= 1e-4, off

    def temperature_gradient(sc, w, **options):  # (the saturated sample's share is about 0)
        tau = torch.tensor([0.01] * 3, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(sc, h, "dual", temperature=tau, **options)
        return torch.autograd.grad(sum((p.double() * x).sum() for p, x in zip(sol.probs, w)), tau)[0]

    want = temperature_gradient([s[:1] for s in scores], [x[:1] for x in weights], tol=1e-12)
    tau_got = temperature_gradient(batch, batch_weights, tol=1e-6, dtype=torch.float32)
    assert bool(((tau_got - want).abs() <= 1e-3 * want.abs()).all()), (tau_got, want)


def _ca_rev111_quadrants_and_halves(n: int, batch: int, seed: int, left_right: bool = False):
    """A scored n² map (flattened) with two given coarsenings that share blocks: its 2×2 quadrants and its top and
    bottom halves (each half the union of two quadrants), and with ``left_right`` its left and right halves as a
    third, pooled from a random float64 map: ``(graph, scores rounded to float32, weights, the pools in float64)``.
    Rounded to float32 the pools of a half differ by rounding."""
    cells = torch.arange(n * n)
    rows, cols = cells // n, cells % n
    quadrant, half = (rows // (n // 2)) * 2 + cols // (n // 2), rows // (n // 2)
    partitions = [(4, quadrant), (2, half)] + ([(2, cols // (n // 2))] if left_right else [])
    h = ca.Graph.from_edges([n * n] + [k for k, _ in partitions], [(0, i + 1, par) for i, (_, par) in
                                                                   enumerate(partitions)])
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, n * n, generator=g, dtype=torch.float64).float().double()
    weights = torch.randn(batch, n * n, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(batch, n * n, generator=g, dtype=torch.float64), -1)
    pools = [torch.zeros(batch, k, dtype=torch.float64).index_add_(1, par, p) for k, par in partitions]
    return h, scores, weights, pools


def _ca_rev111_quadrants_and_halves_loss(h, scores, weights, pools, tau, **options):
    sol = ca.solve([scores, None, None], h, "dual", temperature=tau, given={1: pools[0], 2: pools[1]}, **options)
    return (sol.probs[0].double() * weights).sum()


def test_ca_rev111_given_maps_rounded_apart_refuse_a_right_temperature_gradient():
    """:func:`_ca_rev111_quadrants_and_halves` (16², batch 8, seed 0), τ = (0.7, 1, 1) learned, both pools rounded
    to float32, float32 work at tol 1e-5: the case the accepted-stall rule of _optimum_duals was written for (given
    maps rounded apart, no map pools onto both).  75f10c2 returns ∂L/∂τ = NaN with a TemperatureGradientWarning ("the
    float64 polish of the float32 duals did not converge"): the polish of the infeasible float64 problem drifts
    (its duality gap grows) and stops above rounding_margin (1.19e-7), far above the pools' own disagreement.  The
    float64 central difference of the loss at the consistent float64 pools gives ∂L/∂τ_0 = 0.972436, and 9888703
    returned 0.972436 (4.7e-8 off), unwarned.  Across 16 such draws (16² and 64², τ_0 in {0.1, 0.7, 10, 1e3}, two
    seeds) 9 were refused, none at 9888703 (worst 1.5e-5).  Expected: finite, unwarned, within 1e-3."""
    h, scores, weights, pools = _ca_rev111_quadrants_and_halves(16, 8, 0)

    def loss_at(t0):
        tau = [t0, 1.0, 1.0]
        return float(_ca_rev111_quadrants_and_halves_loss(h, scores, weights, pools, tau, tol=1e-13, max_iter=20000))

    step = 1e-5 * 0.7
    want = (loss_at(0.7 + step) - loss_at(0.7 - step)) / (2 * step)
    tau = torch.tensor([0.7, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = _ca_rev111_quadrants_and_halves_loss(h, scores.float(), weights, [q.float() for q in pools], tau,
                                                    tol=1e-5, dtype=torch.float32)
        got = torch.autograd.grad(loss, tau)[0]
    said = [str(w.message)[:160] for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    assert not said and bool(torch.isfinite(got).all()), (got, said)
    assert abs(float(got[0]) - want) <= 1e-3 * abs(want), (got, want)


def test_ca_rev111_given_maps_rounded_apart_polish_cost(monkeypatch):
    """:func:`_ca_rev111_quadrants_and_halves` (64², batch 16, seed 0), τ = (0.7, 1, 1), pools rounded to float32,
    float32 work at tol 1e-5, forward + backward of a linear loss on map 0: with the temperature fixed 0.025 s, with
    it learned 2.5 s (100x; 9888703: 0.026 s, 1.1x): the float64 polish of 13 of the 16 samples cannot reach
    POLISH_TOL on the (infeasible) rounded pools and runs all POLISH_MAX_ITER = 100 sweeps, where the float32 solve
    took a few (docs/design.md measured 1.20-1.26x with one given map).  Its ∂L/∂τ_0 is also further off than
    9888703's: −1.2956668 against −1.2955507 (float64, tol 1e-12, consistent pools; 9888703: −1.2955508).
    Fixed (the given maps made to agree first, given_maps.agreeing_given): the polish converges in 1 sweep; held here by
    its sweeps (a timing is not asserted in a test) and by ∂L/∂τ_0 within 1e-6 of float64's."""
    import convex_attention.dual as dual_module
    h, scores, weights, pools = _ca_rev111_quadrants_and_halves(64, 16, 0)
    real, polishes = dual_module.solve_dual, []

    def recorded(*args, **kwargs):
        result = real(*args, **kwargs)
        if kwargs.get("tol") == dual_module.POLISH_TOL and kwargs.get("init") is not None:
            polishes.append((int(result["iterations"].max()), bool(result["converged"].all())))
        return result

    tau = torch.tensor([0.7, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(_ca_rev111_quadrants_and_halves_loss(h, scores, weights, pools, tau, tol=1e-12,
                                                                    max_iter=20000), tau)[0]
    monkeypatch.setattr(dual_module, "solve_dual", recorded)
    loss = _ca_rev111_quadrants_and_halves_loss(h, scores.float(), weights, [q.float() for q in pools], tau,
                                                tol=1e-5, dtype=torch.float32)
    got = torch.autograd.grad(loss, tau)[0]
    assert len(polishes) == 1 and polishes[0][1] and polishes[0][0] <= 5, polishes
    assert abs(float(got[0] - want[0])) <= 1e-6 * abs(float(want[0])), (got, want)


def _ca_rev111_hot_quadrants_and_halves_gradients(learned: bool, **options):
    """:func:`_ca_rev111_quadrants_and_halves` (32², batch 16, seed 3), τ = (1e5, 1, 1) (a hot scored map), a linear
    loss on map 0: ``(∂L/∂scores, ∂L/∂τ or None)``; with ``options["dtype"]`` float32 the scores and pools are
    rounded to float32 (the pools then round apart), else the float64 pools are used as they are."""
    h, scores, weights, pools = _ca_rev111_quadrants_and_halves(32, 16, 3)
    if options.get("dtype") == torch.float32:
        scores, pools = scores.float(), [q.float() for q in pools]
    x = scores.clone().requires_grad_(True)
    tau = torch.tensor([1e5, 1.0, 1.0], dtype=torch.float64, requires_grad=learned)
    loss = _ca_rev111_quadrants_and_halves_loss(h, x, weights, pools, tau, **options)
    out = torch.autograd.grad(loss, [x, tau] if learned else [x])
    return out[0].double(), (out[1] if learned else None)


def test_ca_rev111_drifted_given_map_polish_gives_a_wrong_temperature_gradient():
    """:func:`_ca_rev111_hot_quadrants_and_halves_gradients`, float32 work at tol 1e-5: the float64 polish of the
    rounded-apart pools (an infeasible problem: its dual is unbounded along a direction no map sees) runs its 100
    sweeps and drifts the duals from 4e5 to 8.4e17 (max |λ|), ends with violation within rounding_margin, and every
    sample counts as polished; log p is then formed from θ + Aλ with those duals.  ∂L/∂τ_0 = 3.080e-12 against
    8.0511e-12 (float64 implicit at tol 1e-12 on the consistent pools; a float64 central difference: 8.0511e-12):
    62 % off, unwarned.  9888703 returned 8.0496e-12 (1.9e-4 off).  Expected: within 1e-3, or NaN with a
    TemperatureGradientWarning."""
    _, want = _ca_rev111_hot_quadrants_and_halves_gradients(True, tol=1e-12, max_iter=20000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, got = _ca_rev111_hot_quadrants_and_halves_gradients(True, tol=1e-5, dtype=torch.float32)
    said = [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    refused = bool(torch.isnan(got[0])) and bool(said)
    assert refused or abs(float(got[0] - want[0])) <= 1e-3 * abs(float(want[0])), (got, want, len(said))


def test_ca_rev111_drifted_given_map_polish_moves_the_score_gradients():
    """:func:`_ca_rev111_hot_quadrants_and_halves_gradients`, float32 work at tol 1e-5: with the temperature learned
    the score gradients are the float64 backward's at the polished maps, whose duals the polish of the rounded-apart
    pools drifted to 8.4e17 (accepted within rounding_margin): 9.95e-4 of their size (3.9e-8) off the float64
    optimum's (tol 1e-12, consistent pools), where the same solve with the temperature fixed gives 6.8e-7 (and
    9888703 gave 6.8e-7 learned too).  Expected: as the fixed temperature's, within 1e-4 of their size (as
    test_a_learned_float32_temperature_returns_the_optimum_s_score_gradients holds them)."""
    want, _ = _ca_rev111_hot_quadrants_and_halves_gradients(False, tol=1e-12, max_iter=20000)
    fixed, _ = _ca_rev111_hot_quadrants_and_halves_gradients(False, tol=1e-5, dtype=torch.float32)
    size = float(want.abs().max())
    assert float((fixed - want).abs().max()) <= 1e-4 * size  # the fixed temperature's are right
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.TemperatureGradientWarning)
        got, _ = _ca_rev111_hot_quadrants_and_halves_gradients(True, tol=1e-5, dtype=torch.float32)
    assert float((got - want).abs().max()) <= 1e-4 * size, float((got - want).abs().max()) / size


# ------------------------------------------------------------------------------------------- ca_rev112 (9193438)
def _ca_rev112_quadrants_and_both_halves(n: int, batch: int, seed: int):
    """:func:`_ca_rev111_quadrants_and_halves` with a third given coarsening: the n² map's quadrants, its top and
    bottom halves and its left and right halves, all pooled from one random float64 map (consistent): ``(graph,
    scores rounded to float32, weights, the three pools in float64)``.  Every quadrant lies in one half of each kind,
    so given_maps.joined_given_blocks joins all eight blocks into ONE component, whose mass is 1 in every map."""
    return _ca_rev111_quadrants_and_halves(n, batch, seed, left_right=True)


# fixed: each pair of halves becomes the quadrants' pooling (given_maps.agreeing_given), before the mass per component
def test_ca_rev112_quadrants_and_both_halves_given_refuse_a_right_temperature_gradient():
    """:func:`_ca_rev112_quadrants_and_both_halves` (16², batch 8, seed 0), τ = (0.7, 1, 1, 1) learned, the three
    pools rounded to float32, float32 work at tol 1e-5, a linear loss on map 0. given_maps.joined_given_blocks joins
    all eight blocks into one component (every map's mass there is 1), so given_maps.agreeing_given changes nothing
    (scale 1), and a half still differs from the sum of its two quadrants by rounding: the float64 polish has no
    solution, misses every sample, and ∂L/∂τ comes back NaN for all four maps with a TemperatureGradientWarning
    ("the float64 polish of the float32 duals did not converge for sample(s) [0, 1, ...]"). Component-level mass is
    only enough when the blocks are poolings of a scored map; a given quadrant map fixes each half cell by cell.
    float64 (tol 1e-12, consistent pools): ∂L/∂τ = (0.972436, 0, 0, 0); 9888703 returned it unwarned (75f10c2
    refused sample 0 only). Expected: finite, unwarned, within 1e-3 of float64's."""
    h, scores, weights, pools = _ca_rev112_quadrants_and_both_halves(16, 8, 0)

    def gradient(sc, qs, **options):
        tau = torch.tensor([0.7, 1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
        sol = ca.solve([sc, None, None, None], h, "dual", temperature=tau, given={1: qs[0], 2: qs[1], 3: qs[2]},
                       **options)
        return torch.autograd.grad((sol.probs[0].double() * weights).sum(), tau)[0]

    want = gradient(scores, pools, tol=1e-12, max_iter=20000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = gradient(scores.float(), [q.float() for q in pools], tol=1e-5, dtype=torch.float32)
    said = [str(w.message)[:160] for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    assert not said and bool(torch.isfinite(got).all()), (got, said)
    assert bool(((got - want).abs() <= 1e-3 * want.abs().max()).all()), (got, want)


# fixed: given maps pooled onto a common map are joined cell by cell of it (given_maps.given_reach's up)
def test_ca_rev112_star_with_two_given_leaves_refuses_a_right_temperature_gradient():
    """A star: leaves 0, 1, 2 (16 cells each) pool onto centre 3 (4 cells; leaf 1 through a permuted partition),
    batch 8, seed 0, τ = (1, 1, 0.7, 1.3) learned; leaves 0 and 1 given as the float64 optimum's maps of the
    all-scored problem (so they agree on the centre), rounded to float32; float32 work at tol 1e-5, a linear loss on
    maps 2 and 3.  Both leaves must pool onto the same centre, but dual._pooled_into_given only walks from a map to
    its coarsenings, and no map pools INTO both leaves, so given_maps.joined_given_blocks returns None (the test
    test_given_maps_with_no_cell_in_common_are_left_alone asserts exactly this for a star) and the leaves' pools onto
    the centre stay rounded apart: the float64 polish has no solution, and ∂L/∂τ is NaN for every map with a
    TemperatureGradientWarning.  float64 (tol 1e-12): (0, 0, −0.3907126345, −2.7e-17); 75f10c2 returned
    −0.3907126340 and 9888703 −0.3907128048, unwarned.  (The cells of two given maps that pool into one cell of a
    scored map are joined as much as those one cell pools into.)  Expected: finite, unwarned, within 1e-3."""
    n, batch = 16, 8
    block = torch.arange(n) // 4
    permuted = block[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    h = ca.Graph.from_edges([n, n, n, 4], [(0, 3, block), (1, 3, permuted), (2, 3, block)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(batch, k, generator=g, dtype=torch.float64).float().double() for k in (n, n, n, 4)]
    weights = [torch.randn(batch, k, generator=g, dtype=torch.float64) for k in (n, n, n, 4)]
    temps = [1.0, 1.0, 0.7, 1.3]
    full = ca.solve(scores, h, "dual", temperature=temps, tol=1e-13, max_iter=20000)
    leaves = [full.probs[0].detach(), full.probs[1].detach()]

    def gradient(sc, qs, **options):
        tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
        sol = ca.solve([None, None, sc[2], sc[3]], h, "dual", temperature=tau, given={0: qs[0], 1: qs[1]}, **options)
        return torch.autograd.grad(sum((sol.probs[k].double() * weights[k]).sum() for k in (2, 3)), tau)[0]

    want = gradient(scores, leaves, tol=1e-12, max_iter=20000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = gradient([s.float() for s in scores], [q.float() for q in leaves], tol=1e-5, dtype=torch.float32)
    said = [str(w.message)[:160] for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    assert not said and bool(torch.isfinite(got).all()), (got, said)
    assert bool(((got - want).abs() <= 1e-3 * want.abs().max()).all()), (got, want)


# fixed: the forward's given maps made to agree within GIVEN_SUM_TOLERANCE (dual._work_inputs)
def test_ca_rev112_float32_given_maps_sharing_cells_refused_by_default_float64_work():
    """:func:`_ca_rev111_quadrants_and_halves` (16², batch 8, seed 0), τ = (0.7, 1, 1) fixed, scores and both pools
    rounded to float32, tol 1e-5, the default working dtype (float64): ConvergenceError, samples [0, 1, 2, 3, 4, 7]
    'reached the violation tol but not the relative duality gap' (gap 0.46, 0.077, 0.42, 1.6, 21): each given map
    renormalised in float64 (given_maps.normalised) leaves a half and its two quadrants about 1.5e-8 apart, the float64
    problem has no solution and its duals drift.  The same call with dtype=torch.float32 solves every sample (gap
    6.9e-9), and float64 scores and pools solve at gap 1e-17.  9193438 makes such maps agree (given_maps.agreeing_given)
    only for the float32 work's float64 polish, not for float64 work's own solve.  Expected: solved, map 0 within
    1e-4 (of its largest cell) of the float64 solve at the float64 pools."""
    h, scores, _, pools = _ca_rev111_quadrants_and_halves(16, 8, 0)
    want = ca.solve([scores, None, None], h, "dual", temperature=[0.7, 1.0, 1.0], given={1: pools[0], 2: pools[1]},
                    tol=1e-12, max_iter=20000).probs[0]
    got = ca.solve([scores.float(), None, None], h, "dual", temperature=[0.7, 1.0, 1.0],
                   given={1: pools[0].float(), 2: pools[1].float()}, tol=1e-5).probs[0]
    assert float((got.double() - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_given_maps_that_contradict_each_other_are_not_made_to_agree():
    """:func:`_ca_rev111_quadrants_and_halves` (16², batch 4) in float64 work, the halves moved by 1e-3 (then
    renormalised): 1e3 times what a given map's sum may be off in float64 (validation.GIVEN_SUM_TOLERANCE), so not
    made to agree (dual._work_inputs): the solve stalls and says the given maps may contradict each other, as it did
    before given maps were made to agree; a move of 1e-8 (rounding) is agreed and solved."""
    h, scores, _, pools = _ca_rev111_quadrants_and_halves(16, 4, 0)
    # max_iter=60: the stall is told by then (the default's 1000 sweeps took 1.5 s to say the same)
    options = dict(temperature=[0.7, 1.0, 1.0], tol=1e-6, max_iter=60)
    for move, solved in ((1e-3, False), (1e-8, True)):
        halves = pools[1].clone()
        halves[:, 0] += move
        halves = halves / halves.sum(-1, keepdim=True)
        if solved:
            ca.solve([scores, None, None], h, "dual", given={1: pools[0], 2: halves}, **options)
        else:
            with pytest.raises(ca.ConvergenceError, match="contradict each other"):
                ca.solve([scores, None, None], h, "dual", given={1: pools[0], 2: halves}, **options)


def test_a_given_fine_map_fixes_the_given_maps_below_it():
    """An 8² map given (float32), pooled into its quadrants (scored), which pool into top/bottom and left/right
    halves (both given, float32, pooled from the same float64 map): each pair of halves is the given fine map's
    pooling, and the two pairs overlap, so mass per joined component cannot make them agree; the given fine map's
    own partition must count among the nested ones (given_maps.agreeing_given). Left out (07bd8f8), ∂L/∂τ of a
    learned temperature was NaN with a warning; now finite, unwarned, and 0 for every map (the quadrants are fixed
    by the given map) to 1e-9 of the loss's size."""
    n = 8
    cells = torch.arange(n * n)
    quadrant = (cells // n // (n // 2)) * 2 + cells % n // (n // 2)
    h = ca.Graph.from_edges([n * n, 4, 2, 2], [(0, 1, quadrant), (1, 2, torch.tensor([0, 0, 1, 1])),
                                               (1, 3, torch.tensor([0, 1, 0, 1]))])
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, n * n, generator=g, dtype=torch.float64), -1)
    q = torch.zeros(4, 4, dtype=torch.float64).index_add_(1, quadrant, p)
    halves = [torch.stack([q[:, :2].sum(-1), q[:, 2:].sum(-1)], -1), torch.stack([q[:, [0, 2]].sum(-1),
                                                                                  q[:, [1, 3]].sum(-1)], -1)]
    scores = torch.randn(4, 4, generator=g, dtype=torch.float64).float()
    weights = torch.randn(4, 4, generator=g, dtype=torch.float64)
    tau = torch.tensor([1.0, 0.7, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = ca.solve([None, scores, None, None], h, "dual", temperature=tau, tol=1e-6, dtype=torch.float32,
                       given={0: p.float(), 2: halves[0].float(), 3: halves[1].float()})
        got = torch.autograd.grad((sol.probs[1].double() * weights).sum(), tau)[0]
    assert not [w for w in caught if issubclass(w.category, ca.TemperatureGradientWarning)]
    assert bool(torch.isfinite(got).all()) and float(got.abs().max()) <= 1e-9 * float(weights.abs().sum()), got


# ------------------------------------------------------------------------------------------- ca_rev113 (053bdc5)
def _ca_rev113_three_coarsenings(batch: int = 4, seed: int = 0):
    """A 6-cell map scored, three given coarsenings none of which refines another: A = [0,0,1,1,2,2], C =
    [0,0,1,2,1,2] (A and C share the block {0, 1}, split the rest differently) and B = [0,1,1,0,0,1] (joins everything
    into one component); pooled from a random float64 map: ``(graph, scores rounded to float32, the float64 pools)``.
    The stacked pooling matrix (8 blocks × 6 cells) has rank 5: besides the three sums, A's block 0 must equal C's."""
    a, c, b = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 1, 2, 1, 2]), torch.tensor([0, 1, 1, 0, 0, 1])
    h = ca.Graph.from_edges([6, 3, 3, 2], [(0, 1, a), (0, 2, c), (0, 3, b)])
    g = torch.Generator().manual_seed(seed)
    scores = (2 * torch.randn(batch, 6, generator=g, dtype=torch.float64)).float().double()
    torch.randn(batch, 6, generator=g, dtype=torch.float64)  # (weights, unused here: keeps the draws)
    p = torch.softmax(torch.randn(batch, 6, generator=g, dtype=torch.float64), -1)
    pools = [torch.zeros(batch, n, dtype=torch.float64).index_add_(1, par, p) for n, par in ((3, a), (3, c), (2, b))]
    return h, scores, pools


# fixed: the given maps a map pools into become pools of the least-squares fit of its cells (given_maps.agreeing_given)
def test_ca_rev113_three_given_coarsenings_rounded_apart_refused_by_float64_work():
    """:func:`_ca_rev113_three_coarsenings` (batch 4, seed 0), τ = (0.7, 1, 1, 1), scores and the three pools rounded
    to float32, default float64 work at tol 1e-6.  given_maps.joined_given_blocks puts all 8 blocks into ONE component
    (mass 1 in every map, so the mean-mass scaling changes nothing) and no map's blocks are unions of another's (A and
    C have 3 blocks each, B splits {0, 1}): given_maps.agreeing_given leaves A's and C's shared block 1.2e-9 to 5.9e-9
    apart (the lstsq residual of the stacked pooling system 6e-10 to 3e-9, against 1e-16 for consistent maps), the
    float64 problem has no solution, and the solve raises ConvergenceError on all 4 samples (sample 1 'gap 6.92e+03',
    0, 2, 3 'stalled at violation 0.53, 0.16, 0.38 ... check the given maps').  Float32 work with τ learned returns
    ∂L/∂τ NaN for all four maps with a TemperatureGradientWarning (float64 at the float64 pools: 0.0220).  Component
    mass and nesting are not all the relations three coarsenings can have: of 300 random draws of three coarsenings
    of a 12-cell map (2-5 blocks each, pools rounded to float32), 60 were apart (lstsq residual, gelsd, above 1e-13)
    and 59 still were after given_maps.agreeing_given (up to 1.0e-8); of two coarsenings 9 and 0.  Expected: solved, map
    0 within 1e-4 of the float64 solve at the float64 pools (as the same maps with float64 pools solve)."""
    h, scores, pools = _ca_rev113_three_coarsenings()
    temps = [0.7, 1.0, 1.0, 1.0]
    want = ca.solve([scores, None, None, None], h, "dual", temperature=temps, given={1: pools[0], 2: pools[1],
                    3: pools[2]}, tol=1e-12, max_iter=20000).probs[0]
    got = ca.solve([scores.float(), None, None, None], h, "dual", temperature=temps,
                   given={1: pools[0].float(), 2: pools[1].float(), 3: pools[2].float()}, tol=1e-6).probs[0]
    assert float((got.double() - want).abs().max()) <= 1e-4 * float(want.abs().max())




# ---- ca_rev131 (strict xfail: review of a83c028)


def test_ca_rev131_with_implied_masks_reaches_every_cell_the_local_rules_imply():
    """A (5 cells) and E (6 cells) both pooled onto B and C (4 cells each, a 'graph'): each fine
    cell is a pair (b, c).  A holds (i, i) for i <= 2 and (3, 3) twice; E holds (i + 1, i) for
    i < 2, (0, 3), (3, 2) and (3, 3) twice.  Masking B's cell 0 implies, by the two local rules
    alone, a chain B0 -> A(0,0) -> C0 -> E(1,0) -> B1 -> A(1,1) -> C1 -> E(2,1) -> B2 -> ...
    that ends with only the (3, 3) cells open.  Expected (design.md: 'elsewhere local rules that
    can leave open a cell only the maps' masses together rule out'): every cell the rules imply is
    masked, and the consistency loss at finite duals is finite.  Observed: the up/down passes,
    repeated num_maps = 4 times, stop part-way (each round advances the chain one up and one down
    step), so B2 keeps its softmax share while its block of E is masked."""
    from convex_attention.dual import with_implied_masks

    K, z = 2, 3
    A = [(i, i) for i in range(K + 1)] + [(z, z), (z, z)]
    E = [(i + 1, i) for i in range(K)] + [(0, z), (z, K), (z, z), (z, z)]
    h = ca.Graph.from_edges([len(A), len(E), K + 2, K + 2],
                            [(0, 2, [b for b, _ in A]), (0, 3, [c for _, c in A]),
                             (1, 2, [b for b, _ in E]), (1, 3, [c for _, c in E])])
    scores = [torch.zeros(1, n, dtype=torch.float64) for n in h.sizes]
    scores[2][0, 0] = -math.inf
    dead = [torch.isneginf(s) for s in scores]  # the rules applied until nothing changes (brute force)
    for _ in range(sum(h.sizes)):
        for e, (a, b) in enumerate(h.edges):
            dead[b] = dead[b] | (h.block_max((~dead[a]).double(), e) == 0)
            dead[a] = dead[a] | h.broadcast(dead[b], e)
    assert [int(d.sum()) for d in dead] == [3, 4, 3, 3]
    got = with_implied_masks(scores, h)
    assert [torch.isneginf(g).tolist() for g in got] == [d.tolist() for d in dead]
    lam = [torch.zeros(1, h.sizes[b], dtype=torch.float64) for _, b in h.edges]
    assert math.isfinite(float(ca.consistency_loss(scores, lam, h, check_finite=False)))


# ---- ca_rev136 (strict xfail: review of 8f7bdd7)


def test_ca_rev136_max_iter_bounds_the_sweeps_of_a_graph_solved_apart_with_its_retry():
    """solve_dual: 'max_iter: maximum number of sweeps'; design.md §4: 'max_iter (sweeps, 1000)'.  Two components
    whose objectives cancel (_opposite_parts_instance, τ 0.3, tol 1e-6): each part meets tol and gap_tol within 2
    sweeps, the whole problem's gap misses, and _solve_dual_method solves the parts again from their duals with the
    same max_iter.  Observed at max_iter=2: converged after info['iterations'] = 3 sweeps (history 4 rows).
    Expected: at most max_iter sweeps per sample, converged or not."""
    h, scores = _opposite_parts_instance()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = ca.solve(scores, h, "dual", temperature=0.3, tol=1e-6, max_iter=2, strict=False, record_history=True)
    assert int(sol.info["iterations"].max()) <= 2, sol.info["iterations"]
    assert len(sol.info["history"]["violation"]) <= 3


def test_a_graph_solved_apart_whose_retry_has_no_sweeps_left_is_not_converged_and_says_max_iter():
    """The mirror of ca_rev136: at max_iter=2 each part meets its tolerances in 2 sweeps, the whole
    problem's gap misses, and no sweep is left for a retry: the sample is not converged, and the
    warning names max_iter beside gap_tol."""
    h, scores = _opposite_parts_instance()
    with pytest.warns(RuntimeWarning, match="max_iter"):
        sol = ca.solve(scores, h, "dual", temperature=0.3, tol=1e-6, max_iter=2, strict=False)
    assert not bool(sol.info["converged"].any()) and int(sol.info["iterations"].max()) == 2
    assert bool(ca.solve(scores, h, "dual", temperature=0.3, tol=1e-6).info["converged"].all())  # with sweeps left


# ---- ca_rev168 (review of 560040b..HEAD; its strict xfails now pass)


def test_ca_rev168_implied_mask_of_an_inf_coarse_cell_is_minus_inf():
    """with_implied_masks' docstring: a coarse cell whose block of a finer map is wholly masked is masked
    (-inf).  d1ff286 (ca_rev157) masks it by adding -inf instead of masked_fill.  Run, check_finite=False:
    Graph([4, 2], [(0, 1)]), scores [[-inf, -inf, 1, 2]] and [[+inf, 0.5]] (float64);
    with_implied_masks, then solve(..., 'learned_dual', duals=[zeros(1, 2)]) and consistency_loss.
    Expected (as at 560040b): the coarse scores [-inf, 0.5], its map [0, 1], the loss 0.  Observed: the
    coarse scores [nan, 0.5] (+inf + -inf), learned_dual's coarse map [nan, nan], the loss nan."""
    g = ca.Graph([4, 2], [(0, 1)])
    inf = math.inf
    scores = [torch.tensor([[-inf, -inf, 1.0, 2.0]], dtype=torch.float64),
              torch.tensor([[inf, 0.5]], dtype=torch.float64)]
    duals = [torch.zeros(1, 2, dtype=torch.float64)]
    masked = ca.dual.with_implied_masks(scores, g)
    probs = ca.solve(scores, g, "learned_dual", duals=duals, check_finite=False).probs
    loss = ca.consistency_loss(scores, duals, g, check_finite=False)
    assert masked[1].tolist() == [[-inf, 0.5]]
    assert probs[1].tolist() == [[0.0, 1.0]] and float(loss) == 0.0


# ---- ca_rev170 (review of 230b1fc: math.md corrected)

def test_slaters_point_is_uniform_at_the_top_and_within_blocks_not_the_uniform_maps():
    """docs/math.md §2 (corrected, ca_rev170): the strictly feasible point is uniform at the top and
    spread uniformly within each block downwards (§7.1); the uniform maps are not feasible where blocks
    differ in size (0.367 from consistent on the 12 → 5 → 2 hierarchy)."""
    h = random_instance("irregular-3lvl", batch=1).h
    uniform = [torch.full((1, n), 1.0 / n, dtype=torch.float64) for n in h.sizes]
    assert float(ca.metrics.violation(uniform, h).max()) > 0.3
    point = [None] * h.num_levels
    point[-1] = uniform[-1]
    for k in range(h.num_levels - 2, -1, -1):  # each coarse cell's mass spread evenly over its block
        counts = h.aggregate(torch.ones(1, h.sizes[k], dtype=torch.float64), k)
        point[k] = h.broadcast(point[k + 1] / counts, k)
    assert float(ca.metrics.violation(point, h).max()) < 1e-15 and all(bool((p > 0).all()) for p in point)


def test_verify_random_instances_converge_within_the_sweeps_math_md_states():
    """docs/math.md §5 and benchmarks.md (corrected, ca_rev170): at most 3 sweeps to tol 1e-6 on verify's
    chains, axial and grid + regions graphs, 4 on its mixed graphs (instance 9 of seed 0 takes 4)."""
    from convex_attention.bench.verify import random_instances

    worst: dict = {}
    for name, h, scores, temps in random_instances(24, 0):
        res = solve_dual([s.double() for s in scores], h, temps, tol=1e-6, max_iter=50)
        family = "mixed" if name.startswith("mixed") else "other"
        worst[family] = max(worst.get(family, 0), int(res["iterations"].max()))
    assert worst == {"other": 3, "mixed": 4}, worst


# ---- ca_rev185 (review of 27e63b8; its strict xfails now pass)

def _ca_rev185_rows_given_with_a_cell_below_float32() -> torch.Tensor:
    """A given rows map of the 4 × 3 axial graph, strictly positive in float64 (as solve's check
    finds it) but with a cell (1e-50) that rounds to 0 in float32."""
    q = torch.tensor([[0.5, 0.5 - 1e-50, 1e-50, 1e-60]], dtype=torch.float64)
    return q / q.sum()


def test_ca_rev185_float32_work_refuses_underflowing_given_maps_naming_the_dtype_option():
    """float64 scores with dtype=torch.float32 and a given map holding a cell of 1e-50 (strictly
    positive, as solve's own check accepts): the working dtype turns it into 0, which the solver
    cannot take; the refusal says 'given[1] must be a tensor (B, *(4, 1)) of positive
    probabilities', though the given map is one, and never names the option that caused it (the
    scores' analogue, _check_scores_fit, names 'dual option dtype=torch.float32')."""
    h = ca.Graph.axial((4, 3))
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((2, 4, 3), generator=g, dtype=torch.float64), None,
              torch.randn((2, 1, 3), generator=g, dtype=torch.float64)]
    given = {1: _ca_rev185_rows_given_with_a_cell_below_float32().view(1, 4, 1)}
    ca.solve([scores[0], None, scores[2]], h, "dual", given=given)  # float64 work: accepted, solved
    with pytest.raises(ValueError) as err:
        ca.solve(scores, h, "dual", given=given, dtype=torch.float32)
    assert "dtype" in str(err.value), str(err.value)


def test_ca_rev185_underflowing_given_map_is_refused_before_any_component_is_solved():
    """The same given map (1e-50 in a cell) on a graph of two components, a scored chain (maps 0, 1)
    and an axial part (maps 2, 3, 4) with its rows (map 3) given: with dtype=torch.float32 the chain
    is solved first (one sweep per sample, measured), then the refusal names 'given[1]', map 3's
    number inside its component, not the user's map 3."""
    from unittest import mock

    import convex_attention.dual as dual_module

    rows, cols = torch.arange(12) // 3, torch.arange(12) % 3
    h = ca.Graph.from_edges([6, 3, 12, 4, 3], [(0, 1, torch.tensor([0, 1, 2, 0, 1, 2])), (2, 3, rows),
                                               (2, 4, cols)])
    g = torch.Generator().manual_seed(1)
    scores = [None if k == 3 else torch.randn((2, n), generator=g, dtype=torch.float64) for k, n in enumerate(h.sizes)]
    given = {3: _ca_rev185_rows_given_with_a_cell_below_float32()}
    solved = []
    real = dual_module.solve_dual

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        solved.append(out["iterations"].tolist())
        return out

    with mock.patch.object(dual_module, "solve_dual", spy), pytest.raises(ValueError) as err:
        ca.solve(scores, h, "dual", given=given, dtype=torch.float32)
    assert solved == [], f"components solved before the refusal: {solved}"
    assert "given[3]" in str(err.value), str(err.value)


def test_given_maps_not_positive_as_given_are_refused_as_such_with_check_finite_off():
    """With check_finite=False solve leaves the given maps' values to the solver: NaN, negative
    and zero cells are refused before any work, as not positive (the working-dtype check of
    ca_rev185 had said they round to 0 there)."""
    h = ca.Graph.axial((4, 3))
    scores = [torch.randn((2, 4, 3), dtype=torch.float64), None, torch.randn((2, 1, 3), dtype=torch.float64)]
    for bad in (float("nan"), -0.1, 0.0):
        q = torch.full((1, 4, 1), 0.25, dtype=torch.float64)
        q[0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"given\[1\] must hold positive probabilities"):
            ca.solve(scores, h, "dual", given={1: q}, check_finite=False)


# ---- float32 work on float64 scores far from zero (centred before the cast)

@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5, 1e6])
def test_float32_work_keeps_the_digits_of_float64_scores_far_from_zero(offset):
    """Scores of offset + N(0, 1) per map (the offsets unlike: a constant per map changes no
    solution): with dtype=torch.float32 work the maps and the scores' gradient match exact's to
    float32's accuracy at any offset.  Cast before centring, 1e5 had cost the maps 3.4e-4."""
    g = ca.Hierarchy.grid([(8, 8), (4, 4)])
    gen = torch.Generator().manual_seed(7)
    s = [(torch.randn(3, 8, 8, generator=gen, dtype=torch.float64) + offset).requires_grad_(),
         (torch.randn(3, 4, 4, generator=gen, dtype=torch.float64) - 2 * offset).requires_grad_()]
    w = [torch.randn(3, 8, 8, generator=gen, dtype=torch.float64), torch.randn(3, 4, 4, generator=gen,
                                                                                dtype=torch.float64)]
    ref = ca.solve(s, g, method="exact", temperature=[1.0, 0.5])
    got = ca.solve(s, g, method="dual", temperature=[1.0, 0.5], dtype=torch.float32)
    assert got.probs[0].dtype == torch.float64
    assert max(float((a - b).detach().abs().max()) for a, b in zip(ref.probs, got.probs)) < 2e-7
    ga = torch.autograd.grad(sum((p * x).sum() for p, x in zip(ref.probs, w)), s)
    gb = torch.autograd.grad(sum((p * x).sum() for p, x in zip(got.probs, w)), s)
    assert max(float((a - b).abs().max()) for a, b in zip(ga, gb)) < 1e-5


def test_float64_work_passes_the_scores_on_as_they_are(monkeypatch):
    """Only a coarser working dtype centres the scores before the cast: float64 work on float64
    scores gives the solver the user's tensors' values bit for bit (it centres them itself)."""
    import convex_attention.dual as D

    seen = []
    real = D._solve_checked
    monkeypatch.setattr(D, "_solve_checked", lambda inputs, *a, **k: seen.append(inputs) or real(inputs, *a, **k))
    g = ca.Hierarchy.grid([(4, 4), (2, 2)])
    s = [torch.randn(2, 4, 4, dtype=torch.float64) + 1e5, torch.randn(2, 2, 2, dtype=torch.float64)]
    ca.solve(s, g, method="dual", temperature=1.0)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], s))


# ---- ca_rev195 (mutation review of 14d15bc)
def test_ca_rev195_float32_solve_does_not_stop_at_the_violation_tol_before_the_gap_tol():
    """Kills dual.py solve_dual (line ~1540) ``stopping = active & finite & (viol <= stop_tol) & (gap <= gap_tol)``
    with the gap test dropped: in float32 work there is no confirmation at recomputed logits, so a sample whose
    violation meets a loose tol (3e-2 at sweep 2) while its gap (3e-3) misses gap_tol=1e-6 stopped there and
    was then reported not converged (ConvergenceError), instead of sweeping on until both are met."""
    h = ca.Hierarchy.from_parents([8, 4, 2], [[0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1]])
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, n, generator=g, dtype=torch.float32) * 3 for n in (8, 4, 2)]
    out = solve_dual(s, h, [0.5, 1.0, 2.0], tol=3e-2, gap_tol=1e-6, record_history=True)
    v, gap = out["history"]["violation"], out["history"]["gap"]
    # the case the test is about: a sweep before the last met tol but not gap_tol
    assert bool(((v[1:-1] <= 3e-2) & (gap[1:-1] > 1e-6)).any())
    assert bool(out["converged"].all())
    assert float(out["gap"].max()) <= 1e-6 and float(out["violation"].max()) <= 3e-2


def test_ca_rev195_block_step_at_overflowing_tau_times_eta_keeps_its_weights():
    """Kills dual.py _sweep (line ~1159), the finite fallback of the block step with its weights swapped
    (``message * (ta / (ta + tb)) - etas[b] * (tb / (ta + tb))``): where τ·η overflows float32 (τ = 1e18, 1.6e19,
    centred scores ±3e19) that step is taken; swapped it is no longer the block minimiser and the solve stalled
    at violation 0.89.  Right, it agrees with the closed form."""
    h = ca.Hierarchy.from_parents([4, 2], [[0, 0, 1, 1]])
    temps = [1e18, 1.6e19]
    s = [torch.tensor([[3.0e19, 2.9e19, -3.0e19, -2.9e19]]), torch.tensor([[0.0, 0.0]])]
    want = ca.solve(s, h, "exact", temperature=temps).probs
    assert float(want[0].min()) > 1e-3  # not one-hot: the block step matters
    out = solve_dual(s, h, temps, tol=1e-6)
    assert bool(out["converged"].all())
    got = ca.solve(s, h, "dual", temperature=temps).probs
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


# ---- ca_rev199 (review of fabf323; its strict xfails now pass)

def test_ca_rev199_float32_work_history_dual_objective_is_g_of_the_users_scores():
    """Run: solve(float64 scores of 3 + N(0, 1) and -1 + N(0, 1), dtype=torch.float32, record_history=True).
    Expected: the history's last dual objective is g of the user's scores, as Solution.dual_objective and
    float64 work give (and float32 work did before 445ff2b). Got: g of the scores _scores_in centred, off by
    the sum of the maps' midpoints (1.0 and 1.6 here): solve_dual adds back only the offset it removed itself."""
    g = ca.Hierarchy.grid([(4, 4), (2, 2)])
    gen = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 4, 4, generator=gen, dtype=torch.float64) + 3.0,
         torch.randn(2, 2, 2, generator=gen, dtype=torch.float64) - 1.0]
    wide = ca.solve(s, g, method="dual", temperature=1.0, record_history=True)
    got = ca.solve(s, g, method="dual", temperature=1.0, record_history=True, dtype=torch.float32)
    assert torch.allclose(got.dual_objective, wide.dual_objective, atol=1e-5)  # the Solution's own: right
    last = got.info["history"]["dual_objective"][-1].double()
    assert torch.allclose(last, wide.info["history"]["dual_objective"][-1], atol=1e-4), (last, wide.dual_objective)


# ---- ca_rev218 (mutation review of 00a44e2, the dual solver): tests that kill surviving mutants

def _rev218_two_level_pair():
    """Two samples on a 4 → 2 hierarchy: one exact block step solves each."""
    h = ca.Hierarchy.from_parents([4, 2], [[0, 0, 1, 1]])
    s = [torch.tensor([[1.0, -1.0, 0.5, 2.0], [0.3, 0.1, -0.2, 0.4]], dtype=torch.float64),
         torch.tensor([[0.0, 1.0], [0.5, -0.5]], dtype=torch.float64)]
    return s, h


def _poison_sample_one_objective(monkeypatch, dual_module, call: int, value: float) -> None:
    """The dual objective the solver computes at its ``call``-th evaluation reads ``value`` for sample 1."""
    real, calls = dual_module._objective, []

    def poisoned(etas, temps, given=None):
        g, pieces = real(etas, temps, given)
        calls.append(1)
        if len(calls) == call:
            g = g.clone()
            g[1] = value
        return g, pieces

    monkeypatch.setattr(dual_module, "_objective", poisoned)

def test_ca_rev218_an_infinite_dual_objective_mid_solve_is_never_converged(monkeypatch):
    """g = +inf at a sweep whose maps are finite and solved makes the relative gap |inner| / inf = 0: the sample
    must still end as failed (docs: NaN or Inf in g ends a sample as not converged), not converged on its violation
    and that gap."""
    import convex_attention.dual as dual_module

    s, h = _rev218_two_level_pair()
    _poison_sample_one_objective(monkeypatch, dual_module, call=2, value=math.inf)  # the first sweep's g
    with pytest.warns(RuntimeWarning):
        res = solve_dual(s, h, [1.0, 1.0], tol=1e-8, strict=False)
    assert res["converged"].tolist() == [True, False]


def test_ca_rev218_a_sample_non_finite_at_the_start_takes_no_sweep(monkeypatch):
    """A sample whose starting state is NaN ends there: not converged, 0 sweeps, its starting (zero) duals; the
    other sample solves as it does alone."""
    import convex_attention.dual as dual_module

    s, h = _rev218_two_level_pair()
    clean = solve_dual(s, h, [1.0, 1.0], tol=1e-10)
    _poison_sample_one_objective(monkeypatch, dual_module, call=1, value=math.nan)  # the starting g
    with pytest.warns(RuntimeWarning):
        res = solve_dual(s, h, [1.0, 1.0], tol=1e-10, strict=False)
    assert res["converged"].tolist() == [True, False]
    assert res["iterations"].tolist() == [int(clean["iterations"][0]), 0]
    assert bool((res["duals"][0][1] == 0).all())


def test_ca_rev218_a_confirmation_whose_gap_misses_gap_tol_does_not_stop_the_sample(monkeypatch):
    """A float64 stop is confirmed at the recomputed logits on the violation AND the gap: a confirmation whose gap
    misses gap_tol (forced once here) refuses the stop, and the sample goes on to one that meets both."""
    import convex_attention.dual as dual_module

    s, h = _rev218_two_level_pair()
    real, calls = dual_module._evaluate, []

    def poisoned(*args, **kwargs):
        g, viol, gap, probs = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the first confirmation (call 1 is the start)
            gap = torch.full_like(gap, 1.0)
        return g, viol, gap, probs

    monkeypatch.setattr(dual_module, "_evaluate", poisoned)
    res = solve_dual(s, h, [1.0, 1.0], tol=1e-8)
    assert len(calls) >= 3
    assert bool(res["converged"].all()) and float(res["gap"].max()) <= 1e-8


def _rev218_rounded_window_instance(dtype=torch.float64):
    """1d-3lvl (seed 0): its second sweep's violation (8.8e-3) lies between tol − margin and tol for maps returned
    in float16 (margin 9.8e-4), with tol that violation plus half the margin."""
    from convex_attention.dual import rounding_margin

    inst = random_instance("1d-3lvl", batch=1, seed=0, dtype=dtype)
    margin = rounding_margin(inst.h, torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        free = solve_dual(inst.scores, inst.h, inst.temps, tol=1e-12, gap_tol=1.0, record_history=True, max_iter=3,
                          strict=False)
    second = float(free["history"]["violation"][2, 0])
    assert 2 * margin < second < float(free["history"]["violation"][1, 0]) - margin
    return inst, second + margin / 2, margin


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ca_rev218_with_maps_rounded_the_iterate_stops_at_tol_less_the_rounding_margin(dtype):
    """round_to: the iterate stops at tol − rounding_margin, so that the rounded maps meet tol. float32 work has no
    confirmation at recomputed logits: its stopping test itself must use tol − margin."""
    inst, tol, margin = _rev218_rounded_window_instance(dtype)
    out = solve_dual(inst.scores, inst.h, inst.temps, tol=tol, gap_tol=1.0, round_to=torch.float16)
    assert bool(out["converged"].all())
    assert float(out["violation"].max()) <= tol - margin
    assert int(out["iterations"][0]) >= 3  # the second sweep met tol but not tol − margin


def test_ca_rev218_an_iterate_between_tol_less_margin_and_tol_is_not_converged():
    """An iterate stopped by max_iter at a violation within tol but above tol − margin (maps returned in float16)
    is not converged: a warning without strict, ConvergenceError with it."""
    inst, tol, margin = _rev218_rounded_window_instance()
    with pytest.warns(RuntimeWarning, match="float16"):
        out = solve_dual(inst.scores, inst.h, inst.temps, tol=tol, gap_tol=1.0, round_to=torch.float16, max_iter=2,
                         strict=False)
    assert tol - margin < float(out["violation"][0]) <= tol
    assert out["converged"].tolist() == [False]
    with pytest.raises(ConvergenceError):
        solve_dual(inst.scores, inst.h, inst.temps, tol=tol, gap_tol=1.0, round_to=torch.float16, max_iter=2)


@pytest.mark.parametrize("graph", ["hierarchy", "axial"])
def test_ca_rev218_the_reported_gap_and_violation_are_those_of_the_returned_duals_after_each_sweep(graph):
    """Stopped after 1 … 5 sweeps (accelerated and Newton points taken), info's violation and gap are the ones
    measured at the duals returned (recomputed independently here), not at the plain sweep's point."""
    from convex_attention.dual import dual_gap_terms

    inst = random_instance("2d-3lvl-unequal", batch=3, seed=1) if graph == "hierarchy" else \
        random_graph_instance("axial", batch=3, seed=1)
    centred, _ = _centred_scores(inst.scores)
    offset = score_offset(centred)
    for sweeps in range(1, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = solve_dual(inst.scores, inst.h, inst.temps, tol=1e-14, max_iter=sweeps, strict=False)
        g = dual_function(centred, out["duals"], inst.h, inst.temps)
        probs, _ = dual_probs(centred, out["duals"], inst.h, inst.temps)
        _, gap = dual_gap_terms(g, probs, out["duals"], inst.h, offset)
        torch.testing.assert_close(out["gap"], gap, rtol=1e-6, atol=1e-13)
        viol = torch.stack([(inst.h.aggregate(probs[a], e) - probs[b]).abs().flatten(1).sum(1)
                            for e, (a, b) in enumerate(inst.h.edges)]).amax(0)
        torch.testing.assert_close(out["violation"], viol, rtol=1e-6, atol=1e-13)


@pytest.mark.parametrize("kind", ["skewed", "small"])
def test_ca_rev218_the_relative_gap_is_relative_to_the_objective_of_mean_centred_scores(kind):
    """Hand-formed: gap = |g(λ) − f(p(λ))| / max(1, |f̄(p(λ))|), f̄ the entropy-regularised objective at the scores
    less their mean per map (docs/math.md). Skewed: one cell at 60 puts a map's midpoint (the solver's centring) far
    from its mean, a scale about 2x apart. Small: scores and temperatures of 1e-3, |f̄| far below the floor of 1."""
    from convex_attention.dual import dual_gap_terms

    h = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)])
    gen = torch.Generator().manual_seed(3)
    s = [torch.randn((2,) + shape, generator=gen, dtype=torch.float64) for shape in h.shapes]
    temps = [2.0, 1.0, 0.5]
    if kind == "skewed":
        s[0][:, 0, 0] = 60.0
    else:
        s, temps = [1e-3 * x for x in s], [1e-3 * t for t in temps]
    for sweeps in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = solve_dual(s, h, temps, tol=1e-14, max_iter=sweeps, strict=False)
        g = dual_function(s, out["duals"], h, temps)
        probs, _ = dual_probs(s, out["duals"], h, temps)

        def f(scores, probs=probs):
            return sum((x * p).flatten(1).sum(1) - t * (p * p.log()).flatten(1).sum(1)
                       for x, p, t in zip(scores, probs, temps))
        bar = f([x - x.flatten(1).mean(1).view(-1, 1, 1) for x in s])
        want = (g - f(s)).abs() / bar.abs().clamp_min(1.0)
        assert float(want.min()) > 1e-12  # not converged: the scale matters
        torch.testing.assert_close(out["gap"], want, rtol=1e-5, atol=0)
        # and dual_gap_terms's f is the primal objective f(p(λ)) itself
        torch.testing.assert_close(dual_gap_terms(g, probs, out["duals"], h)[0], f(s), rtol=1e-12, atol=1e-12)


def test_ca_rev218_a_retried_sample_reports_the_sweeps_of_both_passes():
    """Components whose objectives cancel (_opposite_parts_instance): the first pass alone (gap_tol 1: no retry),
    then with the retry held to its share of gap_tol. info's iterations count the sweeps of both passes, as its
    history does."""
    h, scores = _opposite_parts_instance()
    first = ca.solve(scores, h, "dual", temperature=0.3, tol=1e-6, gap_tol=1.0, record_history=True)
    both = ca.solve(scores, h, "dual", temperature=0.3, tol=1e-6, record_history=True)
    assert bool(both.info["converged"].all())
    n_first, n_both = int(first.info["iterations"][0]), int(both.info["iterations"][0])
    assert len(both.info["history"]["violation"]) > len(first.info["history"]["violation"])  # a retry ran
    assert n_both > n_first
    assert n_both == len(both.info["history"]["violation"]) - 1


def test_ca_rev218_the_history_ends_at_the_reported_violation_and_gap():
    """record_history: (iterations + 1) rows, row 0 the start (λ = 0: gap 0); the last row of violation and of gap
    is the reported one, and a sample that stopped early keeps its last values."""
    inst = random_instance("2d-3lvl-unequal", batch=3, seed=2)
    out = solve_dual(inst.scores, inst.h, inst.temps, tol=1e-10, record_history=True)
    hist = out["history"]
    assert len(hist["violation"]) == int(out["iterations"].max()) + 1
    torch.testing.assert_close(hist["violation"][-1], out["violation"], rtol=0, atol=0)
    torch.testing.assert_close(hist["gap"][-1], out["gap"], rtol=0, atol=0)
    for b in range(3):
        k = int(out["iterations"][b])
        assert float(hist["gap"][k, b]) <= 1e-10 and float(hist["gap"][0, b]) == 0.0
        assert bool((hist["gap"][k:, b] == hist["gap"][k, b]).all())


def test_ca_rev218_a_disconnected_graph_is_converged_only_where_every_component_is():
    """Two components: a single edge (solved by its one exact sweep) and a cycle of four maps (not solved in one
    sweep at tol 1e-12; gap_tol 1, so that only the violation decides). With max_iter=1 the first converges and the
    second does not: info's converged is False, and its violation the larger of the two."""
    h = ca.Graph.from_edges([2, 2, 4, 2, 2, 4], [(0, 1, torch.arange(2)), (2, 3, torch.tensor([0, 0, 1, 1])),
                                                 (2, 4, torch.tensor([0, 1, 0, 1])), (5, 3, torch.tensor([0, 1, 0, 1])),
                                                 (5, 4, torch.tensor([0, 0, 1, 1]))])
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn((1, n), generator=gen, dtype=torch.float64) for n in h.sizes]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = ca.solve(scores, h, "dual", tol=1e-12, gap_tol=1.0, max_iter=1, strict=False, newton=False)
    assert caught
    assert sol.info["converged"].tolist() == [False]
    assert float(sol.info["violation"][0]) > 1e-12
    assert int(sol.info["iterations"][0]) == 1


def test_ca_rev218_a_nan_gap_at_the_returned_float32_duals_is_not_converged(monkeypatch):
    """float32 work: the gap at the duals returned is measured again in float64 (_gap_and_scale); a NaN there
    (forced here) is never within gap_tol: ConvergenceError with strict, not converged without."""
    import convex_attention.dual as dual_module

    real = dual_module._gap_and_scale

    def poisoned(*args, **kwargs):
        gap, scale = real(*args, **kwargs)
        return torch.full_like(gap, math.nan), scale

    monkeypatch.setattr(dual_module, "_gap_and_scale", poisoned)
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    gen = torch.Generator().manual_seed(0)
    s = [torch.randn((1,) + shape, generator=gen) for shape in h.shapes]
    with pytest.raises(ConvergenceError, match="gap_tol"):
        ca.solve(s, h, "dual", tol=1e-5, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="gap_tol"):
        sol = ca.solve(s, h, "dual", tol=1e-5, strict=False, dtype=torch.float32)
    assert sol.info["converged"].tolist() == [False]


def test_ca_rev218_warm_start_auto_keeps_the_callers_init_on_a_forest():
    """warm_start='auto' starts from the spanning forest's closed form only where no init is given: on a star (a
    forest, not a chain) with init, the solve starts at init (history row 0 is g(init), above the optimum's)."""
    inst = random_graph_instance("star", batch=2, seed=0)
    gen = torch.Generator().manual_seed(5)
    init = [0.5 * torch.randn((2,) + inst.h.shapes[b], generator=gen, dtype=torch.float64) for _, b in inst.h.edges]
    out = solve_dual(inst.scores, inst.h, inst.temps, tol=1e-10, init=init, record_history=True)
    g0 = out["history"]["dual_objective"][0]
    torch.testing.assert_close(g0, dual_function(inst.scores, init, inst.h, inst.temps), rtol=1e-12, atol=1e-10)
    assert bool((g0 > out["history"]["dual_objective"][-1] + 1e-6).all())
    assert bool((out["iterations"] >= 1).all())


# ---- ca_rev222 (tolerance slack audit): the implicit backward against a dense formula, to 1e-10

def _ca_rev222_dense_vjp(h, probs, temps, weights):
    """The gradients of ``L = Σ_k <w_k, p_k>`` at the optimum, in numpy from the dense KKT system
    (written out here from docs/design.md §2, not from hessian.py): ``J_k = (diag p_k − p_k p_kᵀ) / τ_k``,
    ``η_k = θ_k + A_k λ``, ``H = Σ A_kᵀ J_k A_k``, ``μ = −H⁺ Σ A_kᵀ J_k w_k``, ``θ̄_k = J_k (w_k + A_k μ)``,
    and ``τ̄_k = −Σ θ̄_k log p_k`` (a change of τ_k acts on the optimum as ``dθ_k = −log p_k dτ_k``)."""
    from helpers import aggregation_matrix, dual_incidence

    A, _ = dual_incidence(h.sizes, h.edges, [aggregation_matrix(h, e) for e in range(h.num_edges)])
    P, W = flat_np(probs), flat_np(weights)
    scores_bar, tau_bar = [np.zeros_like(p) for p in P], np.zeros(len(P))
    for i in range(P[0].shape[0]):
        J = [(np.diag(p[i]) - np.outer(p[i], p[i])) / t for p, t in zip(P, temps)]
        H = sum(a.T @ j @ a for a, j in zip(A, J))
        mu = -np.linalg.pinv(H, rcond=1e-13, hermitian=True) @ sum(a.T @ j @ w[i] for a, j, w in zip(A, J, W))
        for k in range(len(P)):
            scores_bar[k][i] = J[k] @ (W[k][i] + A[k] @ mu)
            tau_bar[k] -= scores_bar[k][i] @ np.log(P[k][i])
    return scores_bar, tau_bar


@pytest.mark.parametrize("case", NONTREE_CASES)
def test_ca_rev222_implicit_gradient_in_scores_and_temperatures_matches_the_dense_formula(case):
    """The suite checked dual's implicit backward on graphs with cycles only by finite differences
    (gradcheck at atol 1e-6, rtol 1e-5; the τ-gradient to 1e-6 (1 + |fd|)) and against diffcp (1e-4),
    while it is right to 2e-12 relative (20 seeds of each family, native and ATEN_CPU_CAPABILITY=default):
    log p rounded to float32 in the τ-gradient of a float64 solve (3e-9 to 3e-8 off) passed all of them.
    Relative to max(1, the largest entry of each gradient), held to 1e-10 (50x the worst seen)."""
    for seed in range(3):
        inst = random_graph_instance(case, batch=2, seed=seed)
        g = torch.Generator().manual_seed(seed)
        weights = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in inst.scores]
        scores = [s.clone().requires_grad_() for s in inst.scores]
        tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
        sol = ca.solve(scores, inst.h, "dual", temperature=tau, tol=1e-13)
        assert bool(sol.info["converged"].all())
        got = torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), [*scores, tau])
        want_scores, want_tau = _ca_rev222_dense_vjp(inst.h, sol.probs, inst.temps, weights)
        for k, (a, b) in enumerate(zip(flat_np(got[:-1]), want_scores)):
            err = float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))
            assert err <= 1e-10, (case, seed, k, err)
        err = float(np.abs(got[-1].numpy() - want_tau).max()) / max(1.0, float(np.abs(want_tau).max()))
        assert err <= 1e-10, (case, seed, "tau", err)


# ---- ca_rev226 (design.md §4 truth audit, part 2): the polish's and the ledger's constants design.md quotes


def test_ca_rev226_the_polish_and_the_shared_temperature_ledger_use_the_documented_numbers():
    """design.md §4: the float32 duals are polished by a float64 solve_dual "to ``POLISH_TOL`` = 1e-12", which
    "stops at ``POLISH_TOL`` or after ``POLISH_MAX_ITER`` = 100 sweeps"; a shared temperature's records of passes
    that never reach the solve's node "go once 16 later passes have recorded"."""
    import convex_attention.dual as dual_module

    assert dual_module.POLISH_TOL == 1e-12
    assert dual_module.POLISH_MAX_ITER == 100
    assert dual_module._PASSES_KEPT == 16


# ---- ca_rev225 (design.md §4 truth audit, part 1): given sums unchecked without check_finite; parts' info

def test_ca_rev225_without_check_finite_a_given_map_off_its_sum_is_taken_and_returned_normalised():
    """design.md §4 `given`: sums that are not one are refused "unless check_finite=False", and each
    given map is divided by its sum before the solve; the solution returns that q_k / Σ q_k."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(2, 4, dtype=torch.float64), None]
    q = torch.tensor([0.33, 0.77], dtype=torch.float64)  # sums to 1.1
    with pytest.raises(ValueError, match=r"given\[1\] must sum to one per sample \(to 1e-06 in float64\)"):
        ca.solve(scores, h, "dual", given={1: q})
    sol = ca.solve(scores, h, "dual", given={1: q}, check_finite=False)
    assert sol.given == (1,)
    assert torch.equal(sol.probs[1], given_maps.normalised(q[None]).expand(2, 2))
    assert float(ca.metrics.violation(sol.probs, h).max()) <= 1e-6


def test_ca_rev225_a_graph_solved_apart_reports_the_worst_part_s_newton_steps_and_returned_violation():
    """design.md §4 `dual`: on a graph of several parts `info` gives per sample "the most
    `iterations` and `newton_steps`, the largest `violation` and `returned_violation`" (the test
    above pins iterations and violation only)."""
    inst = random_graph_instance("disconnected", batch=3, seed=4, scale=3.0)
    sol = ca.solve(inst.scores, inst.h, "dual", temperature=inst.temps, tol=1e-10)
    infos = [alone.info for _, _, alone in _part_solutions(inst, tol=1e-10, warm_start=False)]
    assert torch.equal(sol.info["newton_steps"], torch.maximum(*[i["newton_steps"] for i in infos]))
    assert torch.equal(sol.info["returned_violation"], torch.maximum(*[i["returned_violation"] for i in infos]))


@pytest.mark.parametrize("q, dtype, words", [
    ([math.inf, 1.0], None, r"^given\[1\] must hold finite probabilities$"),
    ([1e308, 1e308], None, r"^given\[1\]'s sum overflows the working dtype \(float64\): divide the map by a constant"),
    ([5e-324, 1e10], None, r"^given\[1\] holds cells that round to 0 in float64 once divided by the map's sum "
                           r"\(below its smallest subnormal number\), .*: raise them$"),
    ([1e-50, 1.0], torch.float32, r"dual option dtype=torch.float32: .*; use dtype=torch.float64 \(the default\)$"),
])
def test_ca_rev225_a_given_map_that_cannot_be_normalised_is_told_why_with_check_finite_off(q, dtype, words):
    """With check_finite=False an infinite given cell and a sum that overflows had been refused as
    "probabilities that round to 0 in that working dtype ... use dtype=torch.float64 (the default)",
    in float64 work too, where that advice is no advice (ca_rev225)."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    options = {} if dtype is None else {"dtype": dtype}
    with pytest.raises(ValueError, match=words):
        ca.solve([torch.zeros(1, 4, dtype=torch.float64), None], h, "dual",
                 given={1: torch.tensor([q], dtype=torch.float64)}, check_finite=False, **options)


# ---- ca_rev228 (math.md / performance.md audit): the solver constants and block steps math.md states


def test_ca_rev228_the_solver_constants_are_those_math_md_states():
    """math.md §5 and §7.4: Anderson acceleration "(memory 8)"; Newton step lengths "1, ½, … 1/32"; the
    Levenberg–Marquardt ladder "ρ = 1e-4, 1e-3, 1e-2, 1e-1, 1 in turn, each at step lengths 1, ½, ¼"; above 1024
    entries "at most 20 iterations of block-Jacobi conjugate gradients to a relative residual of 1e-2", until the
    "violation fell less than tenfold over its last 5 sweeps"."""
    from convex_attention import dual

    assert dual._ANDERSON_MEMORY == 8
    assert dual._NEWTON_STEPS == tuple(0.5 ** i for i in range(6)) and dual._NEWTON_STEPS[-1] == 1 / 32
    assert dual._REGULARISED_NEWTON == (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert dual._REGULARISED_STEPS == (1.0, 0.5, 0.25)
    assert (dual._NEWTON_CG_RTOL, dual._NEWTON_CG_ITERATIONS) == (1e-2, 20)
    assert (dual._CRAWL_WINDOW, dual._CRAWL_FACTOR) == (5, 10.0)
    assert dual.DENSE_LIMIT == 1024


def test_ca_rev228_one_edge_s_block_step_makes_both_sides_agree_and_minimises_g_over_that_edge():
    """math.md §7.3: on a graph that is not a forest, ``λ_e ← λ_e + τ_a τ_b / (τ_a + τ_b) · (blocklogsumexp_e(η_a /
    τ_a) − η_b / τ_b)`` makes the two sides of constraint ``e`` agree in every block ("the other constraints move"),
    and it is the minimiser of ``g`` over ``λ_e``."""
    torch.manual_seed(1)
    g = ca.Graph.axial((3, 4))
    taus = [0.6, 1.7, 0.3]
    scores = [2 * torch.randn(2, *s, dtype=torch.float64) for s in g.shapes]
    lam = [torch.randn(2, *g.shapes[b], dtype=torch.float64) for _, b in g.edges]
    for e, (a, b) in enumerate(g.edges):
        eta = reparameterized_logits(scores, lam, g)
        step = taus[a] * taus[b] / (taus[a] + taus[b]) * (g.block_logsumexp(eta[a] / taus[a], e) - eta[b] / taus[b])
        stepped = list(lam)
        stepped[e] = lam[e] + step
        p = reparameterized_probs(scores, stepped, g, taus)
        assert float((g.aggregate(p[a], e) - p[b]).abs().max()) < 1e-14
        other = 1 - e
        assert float((g.aggregate(p[0], other) - p[other + 1]).abs().max()) > 1e-3  # the other constraint moved
        best = dual_function(scores, stepped, g, taus)
        for _ in range(3):
            moved = list(stepped)
            moved[e] = stepped[e] + 1e-3 * torch.randn_like(stepped[e])
            assert bool((dual_function(scores, moved, g, taus) >= best - 1e-14).all())


def test_ca_rev228_a_given_side_s_block_step_matches_the_scored_side_to_the_data():
    """math.md §7.6: with ``b`` given, ``λ_e ← λ_e + τ_a blocklogsumexp_e(η_a / τ_a) − τ_a log q_b`` makes the
    block masses of ``p_a`` equal ``q_b``; with ``a`` given, ``λ_e ← λ_e + τ_b log(P_e q_a) − η_b`` makes
    ``p_b = P_e q_a``."""
    from convex_attention.dual import _sweep

    torch.manual_seed(2)
    h = ca.Hierarchy.grid([(6,), (3,)])
    taus = [0.4, 2.5]
    scores = [3 * torch.randn(2, 6, dtype=torch.float64), 3 * torch.randn(2, 3, dtype=torch.float64)]
    zero, ones = [torch.zeros(2, 3, dtype=torch.float64)], torch.ones(2, dtype=torch.float64)
    q_b = torch.softmax(torch.randn(2, 3, dtype=torch.float64), 1)
    inputs = [scores[0], torch.zeros(2, 3, dtype=torch.float64)]
    lam, _ = _sweep(h, taus, zero, reparameterized_logits(inputs, zero, h), ones, given=[None, q_b])
    assert float((h.aggregate(reparameterized_probs(scores, lam, h, taus)[0], 0) - q_b).abs().max()) < 1e-14
    q_a = torch.softmax(torch.randn(2, 6, dtype=torch.float64), 1)
    inputs = [torch.zeros(2, 6, dtype=torch.float64), scores[1]]
    lam, _ = _sweep(h, taus, zero, reparameterized_logits(inputs, zero, h), ones, given=[q_a, None])
    assert float((h.aggregate(q_a, 0) - reparameterized_probs(scores, lam, h, taus)[1]).abs().max()) < 1e-14


def test_ca_rev228_the_gap_is_the_duals_inner_product_with_the_residuals_at_any_duals():
    """math.md §7.4: at ``p = p(λ)``, ``g(λ) − f(p(λ)) = Σ_e ⟨λ_e, p_b(λ) − P_e p_a(λ)⟩`` for any ``λ``, not only
    near the optimum (a graph that is not a forest, random duals)."""
    torch.manual_seed(3)
    g = ca.Graph.axial((3, 4))
    taus = [0.6, 1.7, 0.3]
    scores = [2 * torch.randn(2, *s, dtype=torch.float64) for s in g.shapes]
    lam = [torch.randn(2, *g.shapes[b], dtype=torch.float64) for _, b in g.edges]
    p = reparameterized_probs(scores, lam, g, taus)
    f = sum((s * q).flatten(1).sum(1) - t * (q * q.log()).flatten(1).sum(1) for s, q, t in zip(scores, p, taus))
    inner = sum((lam[e] * (p[b] - g.aggregate(p[a], e))).flatten(1).sum(1) for e, (a, b) in enumerate(g.edges))
    assert float((dual_function(scores, lam, g, taus) - f - inner).abs().max()) < 1e-12


# ---- ca_rev235 (mutation review of the 42nd session's code): the overflow check sums in the working dtype


def test_ca_rev235_a_given_sum_that_overflows_only_the_float32_work_is_told_as_an_overflow():
    """[3e38, 3e38, 1e-50, 1] is finite, positive and sums finitely in float64, but its sum overflows
    float32: with dtype=torch.float32 the sum in the working dtype is what overflows (summed as given, in
    float64, the map had been blamed for a cell that rounds to 0)."""
    h = ca.Hierarchy.grid([(8,), (4,)])
    with pytest.raises(ValueError, match=r"^given\[1\]'s sum overflows the working dtype \(float32\)"):
        ca.solve([torch.zeros(1, 8, dtype=torch.float64), None], h, "dual", dtype=torch.float32,
                 given={1: torch.tensor([[3e38, 3e38, 1e-50, 1.0]], dtype=torch.float64)}, check_finite=False)


# ---- shared duals in the reparameterisation (one map's P_eᵀλ, added negated)

@pytest.mark.parametrize("structure", ["grid", "parents", "axial"])
def test_shared_duals_give_the_block_views_values_and_gradients(structure):
    """reparameterized_logits forms a dual shared by the batch (batch dimension 1) as one map's
    P_eᵀλ added negated, so that autograd sums its gradient over the batch alone: the same
    logits, bit for bit, and the scores' gradients, as η formed with dense P_eᵀ matrices (float64;
    λ's gradient summed in another order, to rounding)."""
    from helpers import aggregation_matrix

    from convex_attention.dual import reparameterized_logits

    h = {"grid": ca.Hierarchy.grid([(8, 6), (4, 3), (2, 1)]),
         "parents": ca.Graph.from_edges([6, 3], [(0, 1, torch.tensor([2, 0, 1, 1, 0, 2]))]),
         "axial": ca.Graph.axial((4, 6))}[structure]
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn((5,) + s, generator=g, dtype=torch.float64, requires_grad=True) for s in h.shapes]
    duals = [torch.randn((1,) + h.shapes[b], generator=g, dtype=torch.float64, requires_grad=True)
             for _, b in h.edges]
    weights = [torch.randn((5,) + s, generator=g, dtype=torch.float64) for s in h.shapes]

    dense = [torch.from_numpy(aggregation_matrix(h, e)) for e in range(h.num_edges)]

    def block_view(scores, duals):
        """η_k = θ_k + Σ_{e into k} λ_e − Σ_{e out of k} P_eᵀλ_e, P_eᵀ a dense 0/1 matrix: each of its sums
        holds one λ and zeros, so exact, as the broadcast's copy is."""
        etas = []
        for k in range(h.num_maps):
            eta = scores[k].flatten(1)
            for e in h.in_edges[k]:
                eta = eta + duals[e].flatten(1)
            for e in h.out_edges[k]:
                eta = eta - duals[e].flatten(1) @ dense[e]
            etas.append(eta.reshape(scores[k].shape))
        return etas

    got, want = reparameterized_logits(scores, duals, h), block_view(scores, duals)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    grads = [torch.autograd.grad(sum((x * w).sum() for x, w in zip(etas, weights)), scores + duals)
             for etas in (got, want)]
    for a, b in zip(grads[0][:h.num_maps], grads[1][:h.num_maps]):
        assert torch.equal(a, b)
    for a, b in zip(grads[0][h.num_maps:], grads[1][h.num_maps:]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    # per-sample duals (the amortised ones) keep the block view
    per_sample = [d.detach().expand((5,) + tuple(d.shape[1:])).clone() for d in duals]
    assert all(torch.equal(a, b) for a, b in zip(reparameterized_logits(scores, per_sample, h),
                                                  block_view(scores, per_sample)))


# ---- ca_rev277 (mutation testing of dual's certificate)

def test_ca_rev277_a_violation_equal_to_tol_stops_the_sample():
    """The stopping test is ``violation <= tol`` (inclusive, as the final verdict): float32 work (no
    confirmation at recomputed logits), tol set to the first sweep's own violation exactly, stops after that
    sweep, converged.  Kills ``viol <= stop_tol`` → ``viol < stop_tol`` in the loop's stopping test (the sample
    swept on)."""
    scores, h, temps = _three_level(batch=1)
    scores = [s.float() for s in scores]
    with pytest.warns(RuntimeWarning):
        first = solve_dual(scores, h, temps, tol=1e-12, gap_tol=1.0, max_iter=1, strict=False, record_history=True)
    v0, v1 = first["history"]["violation"][:, 0].tolist()
    assert v1 < v0 and v1 > 0
    res = solve_dual(scores, h, temps, tol=v1, gap_tol=1.0, max_iter=5)
    assert res["iterations"].tolist() == [1] and res["converged"].tolist() == [True]
    assert res["violation"].tolist() == [v1]


def test_ca_rev277_a_nan_gap_mid_solve_is_a_failure(monkeypatch):
    """A relative gap that is NaN at a sweep whose g, violation and duals are finite ends that sample there as
    failed ("NaN is never converged"): not swept on, and said to be NaN/Inf.  Kills dropping
    ``isfinite(gap)`` from the loop's finiteness test (the sample swept on and converged at the next sweep)."""
    import convex_attention.dual as dual_module

    s, h = _rev218_two_level_pair()
    real, calls = dual_module.dual_gap_terms, []

    def poisoned(*args, **kwargs):
        f, gap = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the first sweep's gap of sample 1
            gap = gap.clone()
            gap[1] = math.nan
        return f, gap

    monkeypatch.setattr(dual_module, "dual_gap_terms", poisoned)
    with pytest.raises(ConvergenceError, match=r"sample\(s\) \[1\]: the solver state became NaN/Inf"):
        solve_dual(s, h, [1.0, 1.0], tol=1e-10)
    calls.clear()
    with pytest.warns(RuntimeWarning, match="became NaN/Inf"):
        res = solve_dual(s, h, [1.0, 1.0], tol=1e-10, strict=False)
    assert res["converged"].tolist() == [True, False]
    assert res["iterations"].tolist() == [1, 1]
    assert math.isnan(float(res["gap"][1]))


def test_ca_rev277_an_infinite_g_at_the_confirmation_refuses_the_stop(monkeypatch):
    """The confirmation at the recomputed logits requires a finite g: +inf there makes the relative gap
    |inner| / inf = 0, which the gap test alone passes.  Forced once (sample 1's first confirmation), the stop is
    refused and the sample goes on to a finite confirmation (one more sweep), its reported gap finite.  Kills
    dropping ``isfinite(g)`` from ``_confirm_as_returned``'s test (the sample stopped at g = inf, gap 0)."""
    import convex_attention.dual as dual_module

    s, h = _rev218_two_level_pair()
    clean = solve_dual(s, h, [1.0, 1.0], tol=1e-10)
    assert clean["iterations"].tolist() == [1, 1]
    _poison_sample_one_objective(monkeypatch, dual_module, call=3, value=math.inf)  # the first confirmation's g
    res = solve_dual(s, h, [1.0, 1.0], tol=1e-10)
    assert res["converged"].tolist() == [True, True]
    assert res["iterations"].tolist() == [1, 2]
    assert bool(torch.isfinite(res["gap"]).all()) and float(res["gap"][1]) > 0


def _rev277_one_edge_maps(excess: float):
    """A 2 → 1 edge whose float64 L1 residual is ``excess`` exactly: ``p_a = (0.5, 0.5 − excess)``, ``p_b = 1``
    (the check measures the residual, not the sums)."""
    h = ca.Hierarchy.from_parents([2, 1], [[0, 0]])
    return h, [torch.tensor([[0.5, 0.5 - excess]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)]


def test_ca_rev277_returned_maps_above_tol_by_less_than_the_recompute_allowance_are_refused_when_rounded():
    """``_check_returned_maps``: maps whose violation (by hand, in float64) exceeds tol by 1e-15 miss it where
    something was rounded (``rounded=True``: no allowance), and meet it where nothing was (tol plus
    RECOMPUTE_ROUNDING units of float64, 3.6e-15 here).  Kills giving the allowance to rounded solves too."""
    from convex_attention.dual import RECOMPUTE_ROUNDING, _check_returned_maps, rounding_margin

    excess = 2.0 ** -20
    h, probs = _rev277_one_edge_maps(excess)
    tol = excess - 1e-15
    assert 1e-15 < RECOMPUTE_ROUNDING * rounding_margin(h, torch.float64) < 1e-14
    info = {"converged": torch.tensor([True]), "violation": torch.tensor([tol], dtype=torch.float64)}
    _check_returned_maps(probs, h, tol, True, torch.float64, info, rounded=False)
    assert info["converged"].tolist() == [True] and info["returned_violation"].tolist() == [excess]
    with pytest.raises(ConvergenceError, match=r"miss tol=.*measured in float64, is up to 9\.537e-07"):
        _check_returned_maps(probs, h, tol, True, torch.float32, dict(info), rounded=True)
    with pytest.warns(RuntimeWarning, match="miss tol"):
        _check_returned_maps(probs, h, tol, False, torch.float32, info, rounded=True)
    assert info["converged"].tolist() == [False]


def test_ca_rev277_nan_returned_maps_are_never_converged():
    """``_check_returned_maps``: maps returned NaN (their violation NaN) are not converged, whatever the
    iterate said ("NaN is never converged"): ConvergenceError with strict, else a warning and converged False.
    Kills ``~(returned <= allowed)`` → ``returned > allowed`` (False for NaN: the maps passed)."""
    from convex_attention.dual import _check_returned_maps

    h, probs = _rev277_one_edge_maps(0.0)
    probs[0][0, 1] = math.nan
    info = {"converged": torch.tensor([True]), "violation": torch.tensor([0.0], dtype=torch.float64)}
    for rounded in (True, False):
        with pytest.raises(ConvergenceError, match="miss tol"):
            _check_returned_maps(probs, h, 1e-6, True, torch.float64, dict(info), rounded=rounded)
    with pytest.warns(RuntimeWarning, match="miss tol"):
        _check_returned_maps(probs, h, 1e-6, False, torch.float64, info)
    assert info["converged"].tolist() == [False] and math.isnan(float(info["returned_violation"][0]))


def test_ca_rev277_maps_rounded_to_the_scores_dtype_blame_that_rounding():
    """float16 scores solved in float64 work: the iterate is exact (uniform scores, zero duals), but 30000
    uniform float16 cells of 1/30000 (subnormal there) each round by 1.4e-8, so the returned maps miss tol
    by 4.3e-4 (by hand).  Something was rounded: the message blames the rounding to the scores' dtype, not a
    recomputation to report.  Kills ``rounded`` ignoring maps returned in a narrower dtype than the work's."""
    n = 30000
    h = ca.Hierarchy.from_parents([n, 2], [[0] * (n // 2) + [1] * (n // 2)])
    scores = [torch.zeros(1, n, dtype=torch.float16), torch.zeros(1, 2, dtype=torch.float16)]
    cell = float(torch.tensor(1.0 / n, dtype=torch.float16).double())
    by_hand = 2 * abs(n // 2 * cell - 0.5)
    assert 4e-4 < by_hand < 5e-4
    with pytest.warns(RuntimeWarning, match=r"miss tol=0\.0002 .*\(rounding in the working dtype or to the scores' "
                                            r"dtype\)") as caught:
        sol = ca.solve(scores, h, "dual", temperature=1.0, tol=2e-4, strict=False)
    assert not any("please report it" in str(w.message) for w in caught)
    assert sol.info["converged"].tolist() == [False]
    assert float(sol.info["returned_violation"][0]) == pytest.approx(by_hand, rel=1e-12)


# ---- the 47th session (a given map's incoming gradient and the implicit backward)

def test_a_loss_on_a_given_maps_output_never_reaches_the_scores_gradients():
    """A given map's probabilities are its given values (normalised), which the duals do not move: a loss on them,
    however large (2^40, whose rounding in the implicit backward's w would reach every map: ca_rev285), leaves the
    scored maps' gradients unchanged bit for bit, and reaches the given values alone."""
    g = torch.Generator().manual_seed(0)
    h = ca.Graph.from_edges([8, 4, 2], [(0, 1, torch.arange(8) // 2), (0, 2, torch.tensor([0, 1, 1, 1, 1, 1, 1, 0]))])
    q = torch.softmax(torch.randn(3, 2, generator=g, dtype=torch.float64), -1)
    scores = [torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)]
    w0, wq = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    grads = []
    for big in (0.0, 2.0 ** 40):
        a, b = (s.clone().requires_grad_() for s in scores)
        given = q.clone().requires_grad_()
        sol = ca.solve([a, b, None], h, method="dual", temperature=[0.5, 2.0, 1.0], given={2: given}, tol=1e-12)
        ((sol.probs[0] * w0).sum() + big * (sol.probs[2] * wq).sum()).backward()
        grads.append((a.grad, b.grad, given.grad))
    for before, after in zip(grads[0][:2], grads[1][:2]):
        assert torch.equal(before, after)
    assert float((grads[1][2] - grads[0][2]).abs().max()) > 1e6  # (the loss reached the given values)
