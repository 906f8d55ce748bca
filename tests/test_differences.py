"""The finite differences behind the gradient checks (convex_attention/bench/differences.py)."""
import math

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
