"""The finite differences behind the gradient checks (convex_attention/bench/differences.py)."""
import math

import pytest

from convex_attention.bench.differences import FD_STEP, five_point_derivative


def test_the_five_point_derivative_is_fourth_order():
    """Of sin at 1 (derivative cos 1): the error falls 10⁴-fold per decade of the step while
    truncation dominates, where the plain central difference's falls 10²-fold."""
    def loss_at(t):
        return math.sin(1.0 + t)

    errors = [abs(five_point_derivative(loss_at, h) - math.cos(1.0)) for h in (1e-1, 1e-2)]
    assert 5e3 < errors[0] / errors[1] < 2e4
    assert abs(five_point_derivative(loss_at) - math.cos(1.0)) < 1e-12


def test_the_default_step_is_the_one_both_checks_record():
    from convex_attention.bench import graph_targets

    assert FD_STEP == graph_targets.FD_STEP == 1e-3


def test_the_default_step_is_fd_step_and_the_stencil_samples_plus_minus_one_and_two_steps():
    points = []

    def loss_at(t):
        points.append(t)
        return 0.0

    assert five_point_derivative(loss_at) == 0.0
    assert sorted(points) == [-2 * FD_STEP, -FD_STEP, FD_STEP, 2 * FD_STEP]


def test_the_five_point_derivative_is_exact_to_degree_four_and_its_error_is_minus_h4_over_30_f5():
    """(8 (L(h) − L(−h)) − (L(2h) − L(−2h))) / 12h at h = 1/2 (every value a dyadic rational, so
    no rounding): exact for a quartic; for t⁵ (derivative 0 at 0) it is −h⁴ f⁽⁵⁾ / 30 = −4h⁴."""
    def quartic(t):
        return 3 + 2 * t - 5 * t**2 + 7 * t**3 + 4 * t**4

    assert five_point_derivative(quartic, 0.5) == 2.0
    assert five_point_derivative(lambda t: (1.0 + t) ** 4, 0.25) == 4.0  # d/dt (1+t)⁴ at 0
    assert five_point_derivative(lambda t: t**5, 0.5) == -4 * 0.5**4


def test_the_spread_is_the_distance_to_the_difference_at_twice_the_step_from_six_evaluations():
    from convex_attention.bench.differences import five_point_with_spread

    calls = []

    def loss_at(t):
        calls.append(t)
        return math.sin(1.0 + t)

    fine, spread = five_point_with_spread(loss_at, 1e-3)
    assert fine == five_point_derivative(lambda t: math.sin(1.0 + t), 1e-3)
    assert spread == abs(fine - five_point_derivative(lambda t: math.sin(1.0 + t), 2e-3))
    assert sorted(calls) == [-4e-3, -2e-3, -1e-3, 1e-3, 2e-3, 4e-3]  # each point once
    assert spread < 1e-11  # smooth: truncation (O(h⁴)) and rounding alone
    # the solver's own error in the loss (here 1e-12 at one point) shows in the spread: 8e-12 / 12h
    noisy = five_point_with_spread(lambda t: math.sin(1.0 + t) + (1e-12 if t == 1e-3 else 0.0), 1e-3)
    assert noisy[1] == pytest.approx(8e-12 / 12e-3, rel=1e-3)


# ---- ca_rev216 (mutation review of 7358deb, benchmark scripts): tests that kill surviving mutants

def test_ca_rev216_the_spread_is_a_distance_where_the_coarse_difference_is_the_larger():
    """For -t⁵ at step 1/2 (dyadic, no rounding) the fine difference is 4h⁴ = 0.25 and the coarse one
    (step 1) is 4: the spread is |0.25 - 4| = 3.75, never the signed -3.75."""
    from convex_attention.bench.differences import five_point_with_spread

    fine, spread = five_point_with_spread(lambda t: -(t**5), 0.5)
    assert fine == 0.25 and spread == 3.75
