import math

import pytest
import torch
from helpers import random_instance

import convex_attention as ca
from convex_attention import metrics

H = ca.Hierarchy.grid([(2,), (1,)])


def test_violation_by_hand():
    p0 = torch.tensor([[0.2, 0.3], [0.5, 0.5]], dtype=torch.float64)
    p1 = torch.tensor([[0.4], [1.0]], dtype=torch.float64)
    torch.testing.assert_close(metrics.violation([p0, p1], H), torch.tensor([0.1, 0.0], dtype=torch.float64))


def test_violation_is_max_over_constraints():
    h = ca.Hierarchy.grid([(4,), (2,), (1,)])
    p0 = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    p1 = torch.tensor([[0.7, 0.3]])  # |0.5-0.7| + |0.5-0.3| = 0.4
    p2 = torch.tensor([[0.9]])       # |1.0-0.9| = 0.1
    torch.testing.assert_close(metrics.violation([p0, p1, p2], h), torch.tensor([0.4]))
    torch.testing.assert_close(torch.stack(metrics.consistency_residuals([p0, p1, p2], h)).squeeze(1),
                               torch.tensor([0.4, 0.1]))


def test_objective_by_hand_with_zero_probability():
    theta = [torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[3.0]], dtype=torch.float64)]
    probs = [torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)]
    torch.testing.assert_close(metrics.objective(theta, probs, [1.0, 2.0]), torch.tensor([5.0], dtype=torch.float64))
    probs = [torch.tensor([[0.5, 0.5]], dtype=torch.float64), probs[1]]
    want = 1.5 + 1.0 * math.log(2) + 3.0
    torch.testing.assert_close(metrics.objective(theta, probs, [1.0, 2.0]), torch.tensor([want], dtype=torch.float64))


def test_gaps_are_zero_at_the_optimum_and_positive_elsewhere():
    inst = random_instance("2d-3lvl-unequal", batch=3)
    exact = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    f_star = exact.objective
    torch.testing.assert_close(metrics.primal_gap(f_star, inst.scores, exact.probs, inst.temps),
                               torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(metrics.dual_gap(f_star, inst.scores, exact.duals, inst.h, inst.temps),
                               torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    zeros = [torch.zeros_like(d) for d in exact.duals]
    assert (metrics.dual_gap(f_star, inst.scores, zeros, inst.h, inst.temps) > 0).all()


def test_max_abs_err():
    a = [torch.tensor([[0.1, 0.9]]), torch.tensor([[1.0]])]
    b = [torch.tensor([[0.3, 0.7]]), torch.tensor([[1.0]])]
    torch.testing.assert_close(metrics.max_abs_err(a, b), torch.tensor([0.2]))
    # unequal errors per cell, per map and per sample: the largest, not a mean (before, the
    # errors above were equal, and a mean passed; found by mutation testing)
    a = [torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0]]), torch.tensor([[0.6, 0.4], [0.5, 0.5]])]
    b = [torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.4, 0.1]]), torch.tensor([[0.5, 0.5], [0.9, 0.1]])]
    torch.testing.assert_close(metrics.max_abs_err(a, b), torch.tensor([0.3, 0.4]))


def test_half_precision_measures_in_float32():
    inst = random_instance("2d-2lvl", batch=2, dtype=torch.float16)
    sol = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    assert sol.violation.dtype == torch.float32 and sol.objective.dtype == torch.float32
    assert sol.violation.max() < 1e-2


def test_violation_on_a_graph_is_the_max_over_edges_by_hand():
    g = ca.Graph.axial((2, 2))  # rows (2, 1) and columns (1, 2) of a 2x2 map
    p = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    rows = torch.tensor([[[0.3], [0.7]]])      # exact: |0.3-0.3| + |0.7-0.7| = 0
    cols = torch.tensor([[[0.5, 0.5]]])        # |0.4-0.5| + |0.6-0.5| = 0.2
    torch.testing.assert_close(metrics.violation([p, rows, cols], g), torch.tensor([0.2]))
    torch.testing.assert_close(torch.stack(metrics.consistency_residuals([p, rows, cols], g)).squeeze(1),
                               torch.tensor([0.0, 0.2]))


@pytest.mark.parametrize("method", ["softmax", "exact", "learned_dual"])
def test_the_objective_s_gradient_is_finite_where_a_probability_underflows(method):
    """p = [1, 0] exactly: xlogy's derivative at 0 is −inf, and −inf times the zero derivative
    of the underflowed probability made the gradient NaN (found by a hostile review). For
    softmax, df/dθ = p (the envelope theorem); every method's gradient is finite."""
    h = ca.Hierarchy.grid([(2,), (1,)])
    for dtype in (torch.float32, torch.float64):
        theta = [torch.tensor([[0.0, -800.0]], dtype=dtype, requires_grad=True),
                 torch.tensor([[0.0]], dtype=dtype, requires_grad=True)]
        duals = [torch.zeros(1, 1, dtype=dtype)] if method == "learned_dual" else None
        sol = ca.solve(theta, h, method, temperature=1.0, duals=duals)
        assert float(sol.probs[0][0, 1].detach()) == 0.0
        sol.objective.sum().backward()
        assert bool(torch.isfinite(theta[0].grad).all())
        if method == "softmax":
            torch.testing.assert_close(theta[0].grad, sol.probs[0].detach())


def test_objective_of_an_exact_solve_with_a_masked_cell_is_finite():
    """docs/design.md §4: a masked -inf cell is for 'exact' (and with check_finite=False exact
    solves it: that cell gets 0, the dual objective is finite); Solution.objective was NaN.  A
    cell with zero probability adds nothing to <θ, p>, whatever its score."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    s0 = torch.tensor([[0.3, -math.inf, 1.0, 0.5]], dtype=torch.float64)
    s1 = torch.tensor([[0.1, 0.4]], dtype=torch.float64)
    sol = ca.solve([s0, s1], h, "exact", check_finite=False)
    assert float(sol.probs[0][0, 1]) == 0.0
    assert torch.isfinite(sol.dual_objective).all()
    torch.testing.assert_close(sol.objective, sol.dual_objective)


# ----------------------------------------------------------------------------- review 47 (strict xfail: known defects)

def test_review47_the_measures_refuse_per_map_lists_of_the_wrong_length():
    """docs/design.md §6: the objective sums every map's term, max_abs_err is over all maps.
    With temps = [1.0] for two maps objective() returned map 0's term alone (2.193 where the
    two maps give 5.193), dual_objective() map 0's logsumexp alone, and max_abs_err() against a
    reference one map short compared map 0 only (0.0 where map 1 is 0.5 off).  A wrong-length
    list is a caller's slip that must be an error, never a smaller number."""
    h = ca.Hierarchy.grid([(2,), (1,)])
    theta = [torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[3.0]], dtype=torch.float64)]
    probs = [torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)]
    off = [probs[0], torch.tensor([[0.5]], dtype=torch.float64)]
    lam = [torch.zeros(1, 1, dtype=torch.float64)]
    with pytest.raises((ValueError, TypeError, IndexError)):
        metrics.objective(theta, probs, [1.0])  # one temperature for two maps
    with pytest.raises((ValueError, TypeError, IndexError)):
        metrics.objective(theta[:1], probs, [1.0, 1.0])  # one map's scores for two maps
    with pytest.raises((ValueError, TypeError, IndexError)):
        metrics.dual_objective(theta, lam, h, [1.0])
    with pytest.raises((ValueError, TypeError, IndexError)):
        metrics.stationarity(theta, probs[:1], lam, h, [1.0, 1.0])
    with pytest.raises((ValueError, TypeError, IndexError)):
        metrics.max_abs_err(off, probs[:1])


def test_review47_mass_on_a_masked_cell_makes_the_objective_minus_infinity():
    """docs/design.md §1/§4: a masked cell (score -inf) is infeasible for any positive
    probability; f(p) = <θ, p> + τH(p) is -inf there.  The masked-cell rule exists for cells
    with probability 0 (0·(-inf) is taken as 0, tests above); objective() applied it to every
    masked cell, and p = (0.5, 0.5) with θ = (0, -inf) scored log 2 = 0.693, higher than the
    feasible optimum p = (1, 0), whose objective is 0: primal_gap was then negative."""
    theta = [torch.tensor([[0.0, -math.inf]], dtype=torch.float64)]
    wrong = [torch.tensor([[0.5, 0.5]], dtype=torch.float64)]
    right = [torch.tensor([[1.0, 0.0]], dtype=torch.float64)]
    assert float(metrics.objective(theta, right, [1.0])[0]) == 0.0  # holds today: zero mass counts nothing
    assert float(metrics.objective(theta, wrong, [1.0])[0]) == -math.inf


# ----------------------------------------------------------------------------- ca_rev79 (strict xfail: known defects)

def test_ca_rev79_violation_refuses_maps_whose_shapes_only_broadcast():
    """design.md §6: violation is max_e ‖P_e p_a − p_b‖₁ per sample.  A coarse map missing its
    trailing dimension ((B,) for (B, 1)) broadcasts against the pooled fine map to (B, B):
    [0.6, 0.6] came back where the maps give [0.1, 0.0]; a coarse map of batch 1 against a
    fine map of batch 2 compared sample 1 with sample 0's map ([0.1, 0.6]).  Neither is refused."""
    p0 = torch.tensor([[0.2, 0.3], [0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(metrics.violation([p0, torch.tensor([[0.4], [1.0]], dtype=torch.float64)], H),
                               torch.tensor([0.1, 0.0], dtype=torch.float64))  # holds today
    with pytest.raises(ValueError):
        metrics.violation([p0, torch.tensor([0.4, 1.0], dtype=torch.float64)], H)  # gave [0.6, 0.6]
    with pytest.raises(ValueError):
        metrics.violation([p0, torch.tensor([[0.4]], dtype=torch.float64)], H)  # gave [0.1, 0.6]


# ----------------------------------------------------------------------------- ca_rev80 (strict xfail: known defects)

def test_ca_rev80_dual_objective_refuses_scores_whose_shapes_only_broadcast():
    """b376849 gave objective, stationarity, consistency_residuals and max_abs_err a shape check
    (_same_shapes), not dual_objective: scores of the (1, 1) top map given as (B,) or (B, 1)
    give g = [6.84, 7.33, 6.73] where the right shapes give [4.44, 5.08, 6.51]; stationarity,
    given the same scores, refuses them."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((3,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    duals = [d.detach() for d in ca.solve(scores, h, "exact").duals]
    temps = [1.0, 1.0, 1.0]
    right = metrics.dual_objective(scores, duals, h, temps)
    with pytest.raises(ValueError):
        metrics.stationarity([*scores[:2], scores[2].reshape(3)], [p.detach() for p in
                             ca.solve(scores, h, "exact").probs], duals, h, temps)  # holds today
    for top in (scores[2].reshape(3), scores[2].reshape(3, 1)):
        try:
            got = metrics.dual_objective([*scores[:2], top], duals, h, temps)
        except ValueError:
            continue
        raise AssertionError(f"dual_objective gave {got.tolist()} for {right.tolist()} with scores[2] of shape "
                             f"{tuple(top.shape)}")


# ---- ca_rev119 (strict xfail: review of b4dc226)

def test_ca_rev119_the_gaps_refuse_an_optimal_value_that_is_not_one_per_sample():
    """docs/design.md §6: dual_gap is g(λ) − f* ≥ 0, zero exactly at the optimal λ; both gaps are
    (B,).  _same_shapes (ca_rev80) checks the lists, not optimal_value.  Run: random_instance(
    '2d-3lvl-unequal', batch=3), f* = exact's objective, λ = exact's duals.  With f* shaped (3,)
    the dual gap is [0, 1.8e-15, -8.9e-16].  Observed with f* shaped (3, 1): a (3, 3) table whose
    max is 1.91 (primal_gap of softmax's maps: max -0.23 for -2.04); with f* of sample 0 alone
    (shape (1,)): dual gaps [0, 0.176, -1.73] at the optimal duals, no error.  Expected: a
    ValueError, or the (B,) gaps."""
    inst = random_instance("2d-3lvl-unequal", batch=3)
    exact = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    soft = ca.solve(inst.scores, inst.h, "softmax", temperature=inst.temps)
    f_star = exact.objective.detach()
    duals = [d.detach() for d in exact.duals]
    probs = [p.detach() for p in soft.probs]
    right_dual = metrics.dual_gap(f_star, inst.scores, duals, inst.h, inst.temps)
    right_primal = metrics.primal_gap(f_star, inst.scores, probs, inst.temps)
    assert float(right_dual.abs().max()) < 1e-12  # holds today
    for bad in (f_star.reshape(3, 1), f_star[:1]):
        try:
            got_dual = metrics.dual_gap(bad, inst.scores, duals, inst.h, inst.temps)
            got_primal = metrics.primal_gap(bad, inst.scores, probs, inst.temps)
        except ValueError:
            continue
        assert got_dual.shape == (3,) and got_primal.shape == (3,), (tuple(got_dual.shape), tuple(got_primal.shape))
        torch.testing.assert_close(got_dual, right_dual)
        torch.testing.assert_close(got_primal, right_primal)


# ---- ca_rev126 (strict xfail: review of eb4ed2c)

def test_ca_rev126_the_dual_measures_refuse_duals_whose_shapes_only_broadcast():
    """Run: a 4×4 → 2×2 hierarchy, float64 scores N(0, 1) batch 3, τ = (0.5, 1.5); λ = exact's duals,
    (3, 2, 2); metrics.dual_objective(scores, [λ.unsqueeze(1)], h, τ), i.e. the duals shaped (3, 1, 2, 2).
    Expected: a ValueError (ca.solve refuses these duals: "duals[0] must have shape (2, 2), (1, *(2, 2))
    or (3, *(2, 2))"; docs/design.md §4: shapes that merely broadcast must not give a number), or g at λ,
    [4.30, 4.66, 4.14].  Observed: [7.25, 7.42, 7.42] (η of map 1 broadcast to (3, 3, 2, 2)); stationarity
    [0.33, 0.31, 0.33] for [1e-16, ...], dual_gap [2.95, 2.76, 3.27] for 0; duals flattened to (3, 4) raise
    torch's "shape '[2, 1, 4]' is invalid for input of size 24"."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((3,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    temps = [0.5, 1.5]
    sol = ca.solve(scores, h, "exact", temperature=temps)
    duals = [d.detach() for d in sol.duals]
    probs = [p.detach() for p in sol.probs]
    right = metrics.dual_objective(scores, duals, h, temps)
    torch.testing.assert_close(right, sol.objective)  # holds today
    with pytest.raises(ValueError, match=r"duals\[0\] must have shape \(2, 2\)"):  # flattened: torch's error was
        metrics.dual_objective(scores, [duals[0].flatten(1)], h, temps)
    bad = [duals[0].unsqueeze(1)]
    for name, measure in (("dual_objective", lambda: metrics.dual_objective(scores, bad, h, temps)),
                          ("stationarity", lambda: metrics.stationarity(scores, probs, bad, h, temps)),
                          ("dual_gap", lambda: metrics.dual_gap(right, scores, bad, h, temps))):
        with pytest.raises(ValueError):
            got = measure()
            raise AssertionError(f"{name} gave {got.tolist()} for duals of shape {tuple(bad[0].shape)}")


# ---- ca_rev190 (review of 406d517; its strict xfails pass, one a documented limit)


def test_ca_rev190_stationarity_takes_given_maps_or_refuses_them_by_name():
    """Run: Graph.axial((4, 3)) with maps 1 and 2 given (the rows and columns of a random consistent
    point), float64 scores on map 0, ``sol = ca.solve(scores, h, "dual", given=..., tol=1e-10)``; then
    ``metrics.stationarity(scores, sol.probs, sol.duals, h, temps)`` with ``scores[1] = scores[2] = None``
    (as solve takes them, and metrics.objective / dual_objective too).  Expected: about 0 (the maps are
    the ones the duals imply at the optimum), or a ValueError saying given maps are not taken.
    Observed: AttributeError: 'NoneType' object has no attribute 'to' (upcast of the None scores)."""
    h = ca.Graph.axial((4, 3))
    g = torch.Generator().manual_seed(0)
    other = [torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    feasible = ca.solve(other, h, "dual", tol=1e-12).probs
    scores = [torch.randn(2, 4, 3, generator=g, dtype=torch.float64), None, None]
    temps = [0.7, 1.0, 1.0]
    sol = ca.solve(scores, h, "dual", temperature=temps, given={1: feasible[1], 2: feasible[2]}, tol=1e-10)
    try:
        value = metrics.stationarity(scores, sol.probs, sol.duals, h, temps)
    except ValueError:
        return
    assert float(value.max()) < 1e-8


# ---- ca_rev204 (mutation review of 31dcde3)


def test_ca_rev204_stationarity_by_hand_is_the_largest_absolute_cell_gap_over_maps():
    """Kills, in metrics.stationarity, the per-map reduction ``amax`` → ``sum`` over cells (0.5), the reduction over
    maps ``amax`` → ``mean`` (0.2), and the dropped ``abs`` (0.1): at zero duals p_k(λ) = softmax(θ_k / τ_k), here
    (0.5, 0.5) and (1,), so the maps (0.1, 0.6) and (1,) are 0.4 from it at most (a cell below its implied value)."""
    h = ca.Hierarchy.grid([(2,), (1,)])
    scores = [torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)]
    probs = [torch.tensor([[0.1, 0.6]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)]
    got = metrics.stationarity(scores, probs, [torch.zeros(1, 1, dtype=torch.float64)], h, [1.0, 2.0])
    torch.testing.assert_close(got, torch.tensor([0.4], dtype=torch.float64), rtol=0, atol=1e-15)


def test_ca_rev204_primal_gap_is_optimal_value_minus_the_objective_and_positive_off_the_optimum():
    """Kills the swapped sign of metrics.primal_gap (``f(p) − f*``): the uniform maps are feasible on a hierarchy and
    not optimal for random scores, so ``f* − f(p)`` is positive, and equals it by definition."""
    inst = random_instance("2d-3lvl-unequal", batch=3)
    f_star = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps).objective
    uniform = [torch.full_like(s, 1.0 / s[0].numel()) for s in inst.scores]
    gap = metrics.primal_gap(f_star, inst.scores, uniform, inst.temps)
    assert bool((gap > 1e-3).all()), gap
    torch.testing.assert_close(gap, f_star - metrics.objective(inst.scores, uniform, inst.temps), rtol=0, atol=0)


def test_ca_rev204_objective_clamps_a_negative_round_off_probability_inside_the_entropy():
    """Kills metrics.objective without ``p.clamp(min=0)`` in the entropy: a probability of −1e-3 (solver round-off)
    then entered ``p log p`` as −1e-3·log(tiny) = +0.708 through the floored logarithm.  By hand: θ = 0 leaves
    ``τ H(p) = −τ (0 + 1.001 log 1.001)`` with τ = 1."""
    theta = [torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)]
    probs = [torch.tensor([[-1e-3, 1.001]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)]
    want = -1.001 * math.log(1.001)
    torch.testing.assert_close(metrics.objective(theta, probs, [1.0, 1.0]), torch.tensor([want], dtype=torch.float64),
                               rtol=0, atol=1e-15)


# ---- ca_rev232 (design.md §1-3, §5, §6 audit): the dual gap by hand

def test_ca_rev232_dual_gap_is_g_of_the_duals_minus_the_optimal_value_by_hand():
    """design.md §6: ``dual_gap`` is ``g(λ) − f*``.  Chain 4 → 2 (blocks {0, 1}, {2, 3}), τ = (0.5, 2), one sample.
    By hand (§2, §3): η_0 = θ_0 − P_0ᵀλ, η_1 = θ_1 + λ, g = Σ_k τ_k logsumexp(η_k / τ_k);
    A(j) = τ_0 logsumexp over block j of θ_0 / τ_0, f* = T_1 logsumexp((θ_1 + A) / T_1), T_1 = τ_0 + τ_1."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    t0, t1, lam, tau = [0.3, -1.2, 0.8, 0.1], [0.5, -0.4], [0.7, -0.2], (0.5, 2.0)

    def lse(xs):
        top = max(xs)
        return top + math.log(sum(math.exp(x - top) for x in xs))

    eta0 = [t0[i] - lam[i // 2] for i in range(4)]
    eta1 = [t1[j] + lam[j] for j in range(2)]
    g = tau[0] * lse([x / tau[0] for x in eta0]) + tau[1] * lse([x / tau[1] for x in eta1])
    big_a = [tau[0] * lse([t0[2 * j] / tau[0], t0[2 * j + 1] / tau[0]]) for j in range(2)]
    f_star = sum(tau) * lse([(t1[j] + big_a[j]) / sum(tau) for j in range(2)])
    scores = [torch.tensor([t0], dtype=torch.float64), torch.tensor([t1], dtype=torch.float64)]
    f_lib = ca.solve(scores, h, "exact", temperature=list(tau)).objective
    torch.testing.assert_close(f_lib, torch.tensor([f_star], dtype=torch.float64), rtol=0, atol=1e-14)
    got = metrics.dual_gap(torch.tensor([f_star], dtype=torch.float64), scores,
                           [torch.tensor([lam], dtype=torch.float64)], h, list(tau))
    assert g - f_star > 1e-3  # these duals are not optimal
    torch.testing.assert_close(got, torch.tensor([g - f_star], dtype=torch.float64), rtol=0, atol=1e-14)
