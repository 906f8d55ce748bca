import math

import pytest
import torch
from helpers import random_instance

import convex_attention as ca

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _solve(inst, method, **kw):
    if method == "learned_dual":
        kw["duals"] = [torch.randn(s, dtype=inst.scores[0].dtype) for s in inst.h.shapes[1:]]
    return ca.solve(inst.scores, inst.h, method, temperature=inst.temps, **kw)


@pytest.mark.parametrize("method", ca.METHODS)
def test_every_field_is_filled(method):
    inst = random_instance("2d-3lvl-unequal", batch=3)
    sol = _solve(inst, method)
    B = 3
    assert sol.method == method and len(sol.probs) == 3
    for p, s in zip(sol.probs, inst.h.shapes):
        assert p.shape == (B,) + s and p.dtype == torch.float64
        torch.testing.assert_close(p.flatten(1).sum(1), torch.ones(B, dtype=torch.float64))
        assert (p >= -1e-12).all()
    assert sol.violation.shape == (B,) and sol.objective.shape == (B,)
    if method == "softmax":
        assert sol.duals is None and sol.dual_objective is None
    else:
        assert len(sol.duals) == 2
        for d, s in zip(sol.duals, inst.h.shapes[1:]):
            assert d.shape == (B,) + s
            torch.testing.assert_close(d.flatten(1).mean(1), torch.zeros(B, dtype=torch.float64), atol=1e-9, rtol=0)
        assert sol.dual_objective.shape == (B,)
        assert (sol.dual_objective >= sol.objective - 1e-6).all() or method == "learned_dual"
    assert "Solution(method=" in repr(sol)


@pytest.mark.parametrize("method", ["softmax", "exact", "dual", "learned_dual", "cvxpylayers"])
def test_every_method_is_differentiable(method):
    inst = random_instance("1d-3lvl", batch=2)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    kw = {}
    if method == "learned_dual":
        kw["duals"] = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in inst.h.shapes[1:]]
    sol = ca.solve(scores, inst.h, method, temperature=inst.temps, **kw)
    sum((p * torch.arange(p.numel(), dtype=p.dtype).view_as(p)).sum() for p in sol.probs).backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in scores)
    if method == "learned_dual":
        assert all(d.grad is not None for d in kw["duals"])


def test_softmax_is_each_level_on_its_own():
    inst = random_instance("3d-2lvl", batch=2)
    sol = ca.solve(inst.scores, inst.h, "softmax", temperature=inst.temps)
    for p, s, t in zip(sol.probs, inst.scores, inst.temps):
        torch.testing.assert_close(p.flatten(1), torch.softmax(s.flatten(1) / t, 1))


def test_exact_is_consistent_where_softmax_is_not():
    inst = random_instance("2d-2lvl", batch=4, scale=3.0)
    assert (ca.solve(inst.scores, inst.h, "softmax").violation > 1e-2).all()
    assert (ca.solve(inst.scores, inst.h, "exact").violation < 1e-12).all()


def test_scalar_and_per_level_temperatures():
    inst = random_instance("2d-2lvl", batch=1)
    a = ca.solve(inst.scores, inst.h, "exact", temperature=0.5)
    b = ca.solve(inst.scores, inst.h, "exact", temperature=[0.5, 0.5])
    c = ca.solve(inst.scores, inst.h, "exact", temperature=torch.tensor([0.5, 0.5]))
    for x, y, z in zip(a.probs, b.probs, c.probs):
        assert torch.equal(x, y) and torch.equal(x, z)


# ------------------------------------------------------------------ bad input

H = ca.Hierarchy.grid([(4, 4), (2, 2)])
GOOD = [torch.randn(2, 4, 4), torch.randn(2, 2, 2)]


@pytest.mark.parametrize("scores, exc, message", [
    (GOOD[:1], ValueError, "2 levels, got 1"),
    (GOOD + [torch.randn(2, 1, 1)], ValueError, "2 levels, got 3"),
    ([torch.randn(2, 4, 5), GOOD[1]], ValueError, r"scores\[0\] must have shape \(B, 4, 4\)"),
    ([torch.randn(2, 16), GOOD[1]], ValueError, r"scores\[0\] must have shape"),
    ([GOOD[0], torch.randn(3, 2, 2)], ValueError, "batch size"),
    ([GOOD[0], torch.randn(2, 2, 2, dtype=torch.float64)], TypeError, "dtype"),
    ([torch.ones(2, 4, 4, dtype=torch.long), GOOD[1]], TypeError, "floating"),
    (torch.randn(2, 4, 4), TypeError, "list of 2 tensors"),
    ([GOOD[0], GOOD[1].numpy()], TypeError, "torch.Tensor"),
    ([GOOD[0].clone().index_fill_(1, torch.tensor([1]), float("nan")), GOOD[1]], ValueError, r"scores\[0\] contains NaN"),
    ([GOOD[0], GOOD[1].clone().fill_(float("inf"))], ValueError, r"scores\[1\] contains Inf"),
])
def test_bad_scores(scores, exc, message):
    with pytest.raises(exc, match=message):
        ca.solve(scores, H, "exact")


@pytest.mark.parametrize("temperature, exc, message", [
    (0.0, ValueError, "positive"),
    (-1.0, ValueError, "positive"),
    ([1.0, -0.5], ValueError, "level 1 must be positive"),
    ([1.0, float("nan")], ValueError, "positive and finite"),
    ([1.0, 1.0, 1.0], ValueError, "one per level"),
    ("hot", TypeError, "temperature"),
    (True, TypeError, "temperature"),
])
def test_bad_temperatures(temperature, exc, message):
    with pytest.raises(exc, match=message):
        ca.solve(GOOD, H, "exact", temperature=temperature)


def test_unknown_method_and_options():
    with pytest.raises(ValueError, match="unknown method 'sinkhorn'.*softmax, exact"):
        ca.solve(GOOD, H, "sinkhorn")
    with pytest.raises(TypeError, match="takes no option"):
        ca.solve(GOOD, H, "exact", tol=1e-3)
    with pytest.raises(TypeError, match="accepts"):
        ca.solve(GOOD, H, "dual", eps=1e-3)


def test_duals_missing_or_malformed():
    with pytest.raises(ValueError, match="needs duals"):
        ca.solve(GOOD, H, "learned_dual")
    with pytest.raises(ValueError, match="one tensor per constraint"):
        ca.solve(GOOD, H, "learned_dual", duals=[torch.zeros(2, 2), torch.zeros(2, 2)])
    with pytest.raises(ValueError, match=r"duals\[0\] must have shape"):
        ca.solve(GOOD, H, "learned_dual", duals=[torch.zeros(3, 3)])
    with pytest.raises(ValueError, match=r"duals\[0\] contains NaN"):
        ca.solve(GOOD, H, "learned_dual", duals=[torch.full((2, 2), math.nan)])
    with pytest.raises(TypeError, match="list of 1 tensors"):
        ca.solve(GOOD, H, "learned_dual", duals=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="only used by method 'learned_dual'"):
        ca.solve(GOOD, H, "exact", duals=[torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="needs duals"):
        ca.consistency_loss(GOOD, None, H)


def test_hierarchy_type_is_checked():
    with pytest.raises(TypeError, match="Hierarchy"):
        ca.solve(GOOD, [(4, 4), (2, 2)], "exact")


def test_check_finite_can_be_turned_off_for_hot_paths():
    bad = [GOOD[0].clone().fill_(float("nan")), GOOD[1]]
    sol = ca.solve(bad, H, "softmax", check_finite=False)
    assert torch.isnan(sol.probs[0]).all()
