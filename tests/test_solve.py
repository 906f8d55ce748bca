import io
import math
import pickle

import numpy as np
import pytest
import torch
from helpers import (
    GIVEN_CASES,
    GRAPH_CASES,
    aggregation_matrix,
    max_err,
    random_given_instance,
    random_graph_instance,
    random_instance,
    reference_solve_given,
    slow_beyond,
)
from hypothesis import given
from hypothesis import strategies as st

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
    ([GOOD[0].clone().index_fill_(1, torch.tensor([1]), float("nan")), GOOD[1]], ValueError,
     r"scores\[0\] contains NaN"),
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


# ------------------------------------------------------------------ differentiable temperature

def _learned_duals(inst):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in inst.h.shapes[1:]]


# every method with per-level and one scalar temperature tensor; the dual's scalar case (0.7 s of
# gradcheck of the same backward as its per-level case, whose temperatures it broadcasts) runs in CI
@pytest.mark.parametrize("method, per_level", [
    pytest.param(m, p, id=f"{p}-{m}", marks=pytest.mark.slow if (m, p) == ("dual", False) else ())
    for p in (True, False) for m in ("softmax", "exact", "dual", "learned_dual")])
def test_gradcheck_through_a_temperature_tensor(method, per_level):
    inst = random_instance("2d-3lvl-unequal", batch=2)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    tau = torch.tensor(inst.temps if per_level else 0.8, dtype=torch.float64, requires_grad=True)
    kw = {"duals": _learned_duals(inst)} if method == "learned_dual" else {"tol": 1e-12} if method == "dual" else {}

    def fn(t, *s):
        sol = ca.solve(list(s), inst.h, method, temperature=t, **kw)
        return tuple(sol.probs) + (sol.objective,)

    assert torch.autograd.gradcheck(fn, (tau, *scores))


def test_temperature_tensor_gets_a_gradient_that_a_float_would_not():
    """Before: a tensor temperature was silently detached (tau.grad stayed None)."""
    inst = random_instance("2d-2lvl", batch=2)
    for method in ("softmax", "exact", "dual", "learned_dual"):
        tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
        kw = {"duals": _learned_duals(inst)} if method == "learned_dual" else {}
        sol = ca.solve(inst.scores, inst.h, method, temperature=tau, **kw)
        sum((p * torch.arange(p.numel(), dtype=p.dtype).view_as(p)).sum() for p in sol.probs).backward()
        assert tau.grad is not None and tau.grad.abs().sum() > 0, method
        # the same numbers as the float path
        ref = ca.solve(inst.scores, inst.h, method, temperature=inst.temps, **kw)
        for a, b in zip(sol.probs, ref.probs):
            torch.testing.assert_close(a, b, atol=1e-15, rtol=0)
        for a, b in zip(sol.duals or [], ref.duals or []):
            torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
        torch.testing.assert_close(sol.objective, ref.objective, atol=1e-13, rtol=0)
        if ref.dual_objective is not None:
            torch.testing.assert_close(sol.dual_objective, ref.dual_objective, atol=1e-13, rtol=0)
        assert all(isinstance(t, float) for t in ref.temperature)


def test_consistency_loss_differentiates_through_the_temperature():
    inst = random_instance("irregular-3lvl", batch=2)
    duals = [d.requires_grad_() for d in _learned_duals(inst)]
    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ca.consistency_loss(inst.scores, duals, inst.h, temperature=t), (tau,))


@pytest.mark.parametrize("method", ["cvxpylayers"])
def test_methods_without_tensor_temperature_refuse_one_that_requires_grad(method):
    inst = random_instance("1d-2lvl", batch=1)
    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=f"method '{method}' cannot differentiate through the temperature"):
        ca.solve(inst.scores, inst.h, method, temperature=tau)
    # a tensor without grad (or under no_grad) is read as floats
    plain = ca.solve(inst.scores, inst.h, method, temperature=tau.detach())
    with torch.no_grad():
        quiet = ca.solve(inst.scores, inst.h, method, temperature=tau)
    ref = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    for a, b, c in zip(plain.probs, quiet.probs, ref.probs):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=0)
        torch.testing.assert_close(b, c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature, message", [
    (torch.ones(4), r"shape \(\) .* or \(2,\) .*got \(4,\); temperatures are per level, never per sample"),
    (torch.ones(1), r"got \(1,\)"),
    (torch.ones(2, 1), r"got \(2, 1\)"),
    (torch.ones(2, 2), r"got \(2, 2\)"),
])
def test_temperature_tensors_of_other_shapes_are_refused(temperature, message):
    with pytest.raises(ValueError, match=message):
        ca.solve(GOOD, H, "exact", temperature=temperature)
    with pytest.raises(ValueError, match=message):
        ca.consistency_loss(GOOD, [torch.zeros(2, 2)], H, temperature=temperature)


def test_complex_or_bool_temperature_tensors_are_refused():
    with pytest.raises(TypeError, match="real tensor"):
        ca.solve(GOOD, H, "exact", temperature=torch.ones(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="real tensor"):
        ca.solve(GOOD, H, "exact", temperature=torch.ones(2, dtype=torch.bool))


# ------------------------------------------------------------------ temperature range, NaN safety

F32_MIN, F32_MAX = ca.validation.temperature_range(torch.float32)


def test_accepted_range_is_documented_per_compute_dtype():
    assert F32_MIN == torch.finfo(torch.float32).tiny and F32_MAX == math.sqrt(torch.finfo(torch.float32).max)
    assert ca.validation.temperature_range(torch.float16) == (F32_MIN, F32_MAX)  # computed in float32
    lo64, hi64 = ca.validation.temperature_range(torch.float64)
    assert lo64 == torch.finfo(torch.float64).tiny and hi64 > 1e153


@pytest.mark.parametrize("temperature, message", [
    (1e-39, "below the smallest accepted for float32 computation"),
    (1e-45, "below the smallest accepted"),
    (1e39, "above the largest accepted for float32 computation"),
    ([1e19, 1e19], "temperatures sum to 2e"),
])
def test_temperatures_outside_the_float32_range_are_refused(temperature, message):
    """Before: τ = 1e-39 gave NaN (softmax, exact, learned_dual) and τ = 1e39 NaN (exact)."""
    for method in ("softmax", "exact", "learned_dual", "dual"):
        kw = {"duals": [torch.zeros(2, 2)]} if method == "learned_dual" else {}
        with pytest.raises(ValueError, match=message):
            ca.solve(GOOD, H, method, temperature=temperature, **kw)


def test_float64_accepts_what_float32_cannot():
    scores = [1e4 * s.double() for s in GOOD]
    for tau in (1e-39, 1e-300, 1e39, 1e150):
        for method in ("softmax", "exact", "learned_dual"):
            kw = {"duals": [torch.zeros(2, 2, dtype=torch.float64)]} if method == "learned_dual" else {}
            sol = ca.solve(scores, H, method, temperature=tau, **kw)
            assert all(torch.isfinite(p).all() for p in sol.probs), (tau, method)
            assert torch.isfinite(sol.objective).all()


def _all_outputs(sol):
    out = list(sol.probs) + [sol.violation, sol.objective]
    if sol.duals is not None:
        out += list(sol.duals) + [sol.dual_objective]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [F32_MIN, [F32_MIN, 1.0, F32_MIN], 0.1, [1e3, 1e-3, 1e3], F32_MAX / 3.0001,
                                         [F32_MAX / 2, F32_MIN, 1.0]])
@pytest.mark.parametrize("method", ["softmax", "exact", "learned_dual"])
def test_extremes_of_the_accepted_range_give_finite_consistent_output(dtype, temperature, method):
    """±1e4 scores at both ends of the range, in float32 and half precision: every field
    finite, probabilities on the simplex, exact consistent, and half precision agrees with
    float32 (fp16 softmax with ±1e4 scores and τ = 0.1 once gave NaN)."""
    h = ca.Hierarchy.grid([(8, 8), (4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    base = [1e4 * torch.randn((3,) + s, generator=g) for s in h.shapes]
    kw = {"duals": [torch.randn(s, generator=g) for s in h.shapes[1:]]} if method == "learned_dual" else {}
    scores = [s.to(dtype).requires_grad_() for s in base]
    sol = ca.solve(scores, h, method, temperature=temperature, **kw)
    assert all(bool(torch.isfinite(x).all()) for x in _all_outputs(sol))
    for p in sol.probs:
        assert p.dtype == dtype and (p >= 0).all()
        torch.testing.assert_close(p.float().flatten(1).sum(1), torch.ones(3), atol=2e-2, rtol=0)
    if method == "exact":
        assert float(sol.violation.max()) < 1e-2
    sum(p.float().square().sum() for p in sol.probs).backward()
    assert all(bool(torch.isfinite(s.grad).all()) for s in scores)
    ref = ca.solve([s.to(dtype).float() for s in base], h, method, temperature=temperature, **kw)
    for a, b in zip(sol.probs, ref.probs):
        torch.testing.assert_close(a.float(), b, atol=2e-2, rtol=0)
    if method == "learned_dual":
        loss = ca.consistency_loss(scores, kw["duals"], h, temperature=temperature)
        assert not bool(torch.isnan(loss))  # +inf where the KL is beyond the dtype, never NaN


@pytest.mark.parametrize("method", ["exact", "dual", "cvxpylayers"])
def test_half_precision_duals_come_back_in_float32_where_they_fit(method):
    """Scores ±65000 in float16 on a chain of identities: the middle multipliers are ±130000,
    beyond float16 (dual and cvxpylayers returned them as ±inf, and dual_objective inf)."""
    same = [0, 1]
    h = ca.Graph.from_edges([2, 2, 2, 2], [(0, 1, same), (1, 2, same), (2, 3, same)])
    a = 65000.0
    scores = [torch.tensor([[a, -a]]), torch.tensor([[a, -a]]), torch.tensor([[-a, a]]), torch.tensor([[-a, a]])]
    sol = ca.solve([x.half() for x in scores], h, method)
    ref = ca.solve([x.double() for x in scores], h, "exact")
    assert all(d.dtype == torch.float32 for d in sol.duals) and sol.probs[0].dtype == torch.float16
    for d, r in zip(sol.duals, ref.duals):
        torch.testing.assert_close(d.double(), r, rtol=1e-3, atol=0)
    torch.testing.assert_close(sol.dual_objective.double(), ref.dual_objective, rtol=1e-3, atol=0)


@given(st.floats(0.0, 1.0), st.floats(-1e4, 1e4), st.integers(0, 2 ** 16),
       st.sampled_from(["softmax", "exact", "learned_dual"]),
       st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_property_no_nan_over_the_accepted_range(where, spread, seed, method, dtype):
    """τ log-uniform over the whole accepted range of the dtype, scores up to ±1e4."""
    lo, hi = ca.validation.temperature_range(dtype)
    log_tau = math.log(lo) + where * (math.log(hi / 4) - math.log(lo))
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 2)])
    g = torch.Generator().manual_seed(seed)
    tau = [math.exp(log_tau) * float(f) for f in (1.0, 1.0 + torch.rand(1, generator=g), 1.0)]
    scores = [(spread * torch.randn((2,) + s, generator=g)).clamp(-6e4, 6e4).to(dtype) for s in h.shapes]
    kw = {"duals": [spread * torch.randn(s, generator=g) for s in h.shapes[1:]]} if method == "learned_dual" else {}
    sol = ca.solve(scores, h, method, temperature=tau, **kw)
    assert all(bool(torch.isfinite(x).all()) for x in _all_outputs(sol))
    for p in sol.probs:
        assert abs(float(p.float().flatten(1).sum(1).sub(1).abs().max())) < 2e-2
    if method == "exact":
        assert float(sol.violation.max()) < 1e-2
    if method == "learned_dual":
        assert not bool(torch.isnan(ca.consistency_loss(scores, kw["duals"], h, temperature=tau)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", ["tiny", 1.0, "huge"])
@pytest.mark.parametrize("method", ["softmax", "exact", "dual", "learned_dual"])
def test_scores_up_to_the_score_limit_give_finite_output_and_beyond_it_a_clear_error(dtype, temperature, method):
    """Before: exact turned float32 scores near ±3.4e38 into NaN (the upward pass adds a
    parent score to a block log-sum-exp, and the sum overflowed), silently."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 2)])
    limit = ca.validation.score_limit(dtype)
    lo, hi = ca.validation.temperature_range(dtype)
    tau = {"tiny": lo, "huge": hi / 4}.get(temperature, temperature)
    g = torch.Generator().manual_seed(1)
    scores = []
    for shape in h.shapes:  # every level reaches +peak and -peak; the peaks sum to the limit
        s = 2 * torch.rand((2,) + shape, generator=g, dtype=torch.float64) - 1
        s[0].view(-1)[0], s[1].view(-1)[-1] = 1.0, -1.0
        scores.append((s * (0.9999 * limit / 3)).to(dtype))  # the sum rounds to just below the limit
    assert sum(ca.validation.score_peaks(scores)) <= limit
    kw = {"duals": [torch.zeros((2,) + s, dtype=dtype) for s in h.shapes[1:]]} if method == "learned_dual" else {}
    sol = ca.solve(scores, h, method, temperature=tau, **kw)
    assert all(bool(torch.isfinite(x).all()) for x in sol.probs), method
    for p in sol.probs:
        torch.testing.assert_close(p.flatten(1).sum(1), torch.ones(2, dtype=dtype))
    if method in ("exact", "dual"):
        assert float(sol.violation.max()) < 1e-4
    too_large = [2 * s for s in scores]
    with pytest.raises(ValueError, match=r"too large for .*divide the scores and the temperature by the same factor"):
        ca.solve(too_large, h, method, temperature=tau, **kw)


def test_finite_scores_whose_peaks_overflow_when_summed_are_refused_as_too_large():
    """Before: scores of 1e308 on two levels (finite, but their peaks sum beyond float64)
    raised OverflowError from math.fsum, not the ValueError the limit promises, and `plot`
    of such an example.npz printed a traceback."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.full((1,) + s, 1e308, dtype=torch.float64) for s in h.shapes]
    with pytest.raises(ValueError, match=r"too large for .*sums to inf"):
        ca.solve(scores, h, "exact")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_learned_duals_count_towards_the_limit_of_the_logits(dtype):
    """The learned dual's logits are θ_k + λ_(k-1) − P_kᵀ λ_k: scores and duals that are
    each fine but together overflow are refused by solve and consistency_loss alike."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    limit = ca.validation.score_limit(dtype)
    g = torch.Generator().manual_seed(2)
    scores = [(2 * torch.rand((2,) + s, generator=g, dtype=torch.float64) - 1).mul(0.3 * limit).to(dtype)
              for s in h.shapes]
    fine = [torch.full((1,) + h.shapes[1], 0.15 * limit, dtype=dtype)]  # 0.6 + 2 * 0.15 < 1 of the limit
    sol = ca.solve(scores, h, "learned_dual", duals=fine)
    assert all(bool(torch.isfinite(p).all()) for p in sol.probs)
    assert not bool(torch.isnan(ca.consistency_loss(scores, fine, h)))
    too_large = [torch.full((1,) + h.shapes[1], 0.3 * limit, dtype=dtype)]
    with pytest.raises(ValueError, match="scores and duals are too large"):
        ca.solve(scores, h, "learned_dual", duals=too_large)
    with pytest.raises(ValueError, match="scores and duals are too large"):
        ca.consistency_loss(scores, too_large, h)
    with pytest.raises(ValueError, match=r"duals\[0\] contains NaN or Inf"):
        ca.solve(scores, h, "learned_dual", duals=[torch.full((1,) + h.shapes[1], math.inf, dtype=dtype)])
    ca.solve(scores, h, "learned_dual", duals=too_large, check_finite=False)  # the caller's choice on a hot path


def test_the_score_limit_is_a_quarter_of_the_compute_dtypes_largest_number():
    assert ca.validation.score_limit(torch.float32) == float(torch.finfo(torch.float32).max) / 4
    assert ca.validation.score_limit(torch.float16) == ca.validation.score_limit(torch.float32)  # computed in float32
    assert ca.validation.score_limit(torch.float64) == float(torch.finfo(torch.float64).max) / 4
    peaks = ca.validation.score_peaks([torch.tensor([[1.0, -5.0]]), torch.tensor([[float("nan")]])])
    assert peaks[0] == 5.0 and math.isnan(peaks[1])


def test_one_zero_d_tensor_per_level_is_accepted_and_differentiated():
    inst = random_instance("2d-2lvl", batch=2)
    t0 = torch.tensor(inst.temps[0], dtype=torch.float64, requires_grad=True)
    sol = ca.solve(inst.scores, inst.h, "exact", temperature=[t0, inst.temps[1]])
    ref = ca.solve(inst.scores, inst.h, "exact", temperature=inst.temps)
    for a, b in zip(sol.probs, ref.probs):
        torch.testing.assert_close(a, b, atol=1e-15, rtol=0)
    sum((p * torch.randn_like(p)).sum() for p in sol.probs).backward()
    assert t0.grad is not None
    with pytest.raises(ValueError, match=r"temperature\[1\] must be a number or a 0-d real tensor"):
        ca.solve(inst.scores, inst.h, "exact", temperature=[t0, torch.ones(2)])
    with pytest.raises(TypeError, match="method 'cvxpylayers' cannot differentiate"):
        ca.solve(inst.scores, inst.h, "cvxpylayers", temperature=[t0, 1.0])


# ------------------------------------------------------------------ graphs of maps

def _methods_for(h):
    return [m for m in ca.METHODS if ca.get_method(m).accepts(h)]


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_every_method_on_every_family_fills_every_field(case):
    inst = random_graph_instance(case, batch=2, seed=1)
    h = inst.h
    methods = _methods_for(h)
    assert ("exact" in methods) == h.is_forest and {"softmax", "dual", "cvxpylayers", "learned_dual"} <= set(methods)
    reference = ca.solve(inst.scores, h, "dual", temperature=inst.temps, tol=1e-12)
    for method in methods:
        kw = {"duals": [torch.randn((1,) + h.shapes[b], dtype=torch.float64) for _, b in h.edges]} \
            if method == "learned_dual" else {}
        sol = ca.solve(inst.scores, h, method, temperature=inst.temps, **kw)
        assert len(sol.probs) == h.num_maps
        for p, shape in zip(sol.probs, h.shapes):
            assert p.shape == (2,) + shape
            torch.testing.assert_close(p.flatten(1).sum(1), torch.ones(2, dtype=torch.float64))
        assert sol.violation.shape == (2,) and sol.objective.shape == (2,)
        if method == "softmax":
            assert sol.duals is None
            continue
        assert len(sol.duals) == h.num_edges
        for d, (_, b) in zip(sol.duals, h.edges):
            assert d.shape == (2,) + h.shapes[b]
            assert d.flatten(1).mean(1).abs().max() < 1e-9
        if ca.get_method(method).consistent:
            assert float(sol.violation.max()) < 1e-6
            assert ca.metrics.max_abs_err(sol.probs, reference.probs).max() < 1e-6
            # at the optimal duals the reparameterisation is the optimum
            learned = ca.solve(inst.scores, h, "learned_dual", temperature=inst.temps, duals=sol.duals)
            assert ca.metrics.max_abs_err(learned.probs, reference.probs).max() < 1e-5


def test_a_method_is_refused_on_a_structure_it_cannot_solve_before_any_work(monkeypatch):
    import convex_attention.exact as exact_module

    def no_work(*args, **kwargs):
        raise AssertionError("the method ran")

    monkeypatch.setattr(exact_module, "solve_exact", no_work)
    axial = ca.Graph.axial((4, 3))
    bad = [torch.randn(2, 5, 5)] * 3  # wrong shapes too: the structure is refused first
    with pytest.raises(ValueError, match=r"method 'exact' solves forests only, and this structure is a graph: map 0 "
                                         r"has 2 coarsenings .*; use method 'dual'"):
        ca.solve(bad, axial, "exact")


def test_a_custom_chain_method_is_refused_on_a_star_naming_one_that_can():
    from convex_attention.methods import REGISTRY, Method, register_method

    def fn(scores, h, temps, duals, options):
        raise AssertionError("ran")

    register_method(Method("chain_only", fn, "a method written for hierarchies"))
    try:
        assert ca.get_method("chain_only").structures == "chain"
        star = ca.Graph.star([(4,), (4,)], (2,))
        with pytest.raises(ValueError, match=r"method 'chain_only' solves chains only, and this structure is a forest: "
                                             r"map 2 has 2 finer maps; use method 'exact' or 'dual'"):
            ca.solve([torch.randn(1, 4)] * 2 + [torch.randn(1, 2)], star, "chain_only")
        with pytest.raises(ValueError, match="solves chains only"):
            ca.ConsistentAttention(star, "chain_only")
        ca.solve([torch.randn(1, 4), torch.randn(1, 2)], ca.Hierarchy.grid([4, 2]), "exact")
    finally:
        del REGISTRY["chain_only"]
    with pytest.raises(ValueError, match="structures must be one of chain, forest, graph"):
        Method("bad", fn, "x", structures="tree")


def test_a_custom_chain_method_is_refused_on_a_chain_not_numbered_as_a_hierarchy():
    """A method for chains indexes its maps as a hierarchy does (edge k = (k → k+1)); a chain
    given coarsest first was handed to it, which then pooled the wrong maps (a hostile review)."""
    from convex_attention.methods import REGISTRY, Method, register_method

    ran = []
    register_method(Method("chain_only", lambda *args: ran.append(args), "a method written for hierarchies"))
    try:
        coarsest_first = ca.Graph.from_edges([2, 4, 8], [(1, 0, [0, 0, 1, 1]), (2, 1, [0, 1, 2, 3, 0, 1, 2, 3])])
        assert coarsest_first.kind == "chain" and not ca.get_method("chain_only").accepts(coarsest_first)
        scores = [torch.randn(1, 2), torch.randn(1, 4), torch.randn(1, 8)]
        with pytest.raises(ValueError, match=r"solves chains only, and this structure is a chain numbered otherwise: "
                                             r"its edges \[\(1, 0\), \(2, 1\)\] are not numbered as a hierarchy's.*"
                                             r"use method 'exact' or 'dual'"):
            ca.solve(scores, coarsest_first, "chain_only")
        assert not ran
        finest_first = ca.Graph.from_edges([8, 4, 2], [(0, 1, [0, 1, 2, 3, 0, 1, 2, 3]), (1, 2, [0, 0, 1, 1])])
        assert ca.get_method("chain_only").accepts(finest_first) and ca.get_method("chain_only").accepts(
            ca.Hierarchy.grid([4, 2]))
        exact = ca.solve(scores, coarsest_first, "exact", temperature=[1.0, 0.5, 2.0])
        assert float(ca.metrics.violation(exact.probs, coarsest_first).max()) < 1e-6  # a forest method solves it
    finally:
        del REGISTRY["chain_only"]


@pytest.mark.parametrize("case", ["axial", "star", "mixed-two-resolutions"])
def test_consistency_loss_on_graphs_is_the_sum_of_the_edges_kl(case):
    inst = random_graph_instance(case, batch=3, seed=2)
    h = inst.h
    duals = [torch.randn((1,) + h.shapes[b], dtype=torch.float64) for _, b in h.edges]
    probs = ca.solve(inst.scores, h, "learned_dual", temperature=inst.temps, duals=duals).probs
    want = 0.0
    for e, (a, b) in enumerate(h.edges):
        pa = probs[a].reshape(3, -1) @ torch.from_numpy(aggregation_matrix(h, e)).T
        pb = probs[b].reshape(3, -1)
        want = want + (pb * (pb.log() - pa.log())).sum(1)
    torch.testing.assert_close(ca.consistency_loss(inst.scores, duals, h, inst.temps), want.mean())
    zero = [torch.zeros_like(d) for d in duals]
    soft = ca.solve(inst.scores, h, "softmax", temperature=inst.temps)
    assert float(ca.consistency_loss(inst.scores, zero, h, inst.temps)) > 0 and float(soft.violation.min()) > 0


def test_graph_messages_speak_of_maps():
    h = ca.Graph.axial((4, 3))
    with pytest.raises(ValueError, match=r"scores must hold one tensor per map: the graph has 3 maps, got 2"):
        ca.solve([torch.randn(1, 4, 3), torch.randn(1, 4, 1)], h, "dual")
    with pytest.raises(ValueError, match=r"scores\[1\] must have shape \(B, 4, 1\) for map 1"):
        ca.solve([torch.randn(1, 4, 3), torch.randn(1, 4), torch.randn(1, 1, 3)], h, "dual")
    with pytest.raises(ValueError, match=r"temperature must be one float or one per map \(3\)"):
        ca.solve([torch.randn(1, 4, 3), torch.randn(1, 4, 1), torch.randn(1, 1, 3)], h, "dual", temperature=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"duals must hold one tensor per constraint \(2\)"):
        ca.solve([torch.randn(1, 4, 3), torch.randn(1, 4, 1), torch.randn(1, 1, 3)], h, "learned_dual",
                 duals=[torch.zeros(4, 1)])
    with pytest.raises(ValueError, match=r"duals\[1\] must have shape \(1, 3\)"):
        ca.solve([torch.randn(1, 4, 3), torch.randn(1, 4, 1), torch.randn(1, 1, 3)], h, "learned_dual",
                 duals=[torch.zeros(4, 1), torch.zeros(3, 1)])


@st.composite
def graph_problems(draw):
    case = draw(st.sampled_from(["axial", "grid-regions", "mixed", "star", "tree", "disconnected"]))
    seed = draw(st.integers(0, 1000))
    inst = random_graph_instance(case, batch=draw(st.integers(1, 2)), seed=seed, scale=draw(st.floats(0.5, 4.0)))
    shifts = [draw(st.floats(-30, 30)) for _ in inst.h.shapes]
    return inst, shifts


@given(graph_problems())
def test_property_a_constant_per_map_changes_nothing_on_graphs(problem):
    inst, shifts = problem
    methods = ["dual"] + (["exact"] if inst.h.is_forest else [])
    for method in methods:
        a = ca.solve(inst.scores, inst.h, method, temperature=inst.temps, tol=1e-12) if method == "dual" else \
            ca.solve(inst.scores, inst.h, method, temperature=inst.temps)
        shifted = [s + c for s, c in zip(inst.scores, shifts)]
        b = ca.solve(shifted, inst.h, method, temperature=inst.temps, tol=1e-12) if method == "dual" else \
            ca.solve(shifted, inst.h, method, temperature=inst.temps)
        assert float(ca.metrics.max_abs_err(a.probs, b.probs).max()) < 1e-9


@given(graph_problems(), st.randoms(use_true_random=False))
def test_property_permuting_maps_and_edges_changes_nothing(problem, rnd):
    inst, _ = problem
    h = inst.h
    perm = list(range(h.num_maps))
    rnd.shuffle(perm)  # new index of old map k: perm[k]
    order = list(range(h.num_edges))
    rnd.shuffle(order)
    shapes = [None] * h.num_maps
    for k, p in enumerate(perm):
        shapes[p] = h.shapes[k]
    edges = [(perm[h.edges[e][0]], perm[h.edges[e][1]], h.parents(e)) for e in order]
    permuted = ca.Graph(shapes, edges)
    scores = [None] * h.num_maps
    temps = [0.0] * h.num_maps
    for k, p in enumerate(perm):
        scores[p], temps[p] = inst.scores[k], inst.temps[k]
    methods = ["dual"] + (["exact"] if h.is_forest else [])
    for method in methods:
        kw = {"tol": 1e-12} if method == "dual" else {}
        a = ca.solve(inst.scores, h, method, temperature=inst.temps, **kw)
        b = ca.solve(scores, permuted, method, temperature=temps, **kw)
        for k, p in enumerate(perm):
            torch.testing.assert_close(a.probs[k], b.probs[p], atol=1e-9, rtol=0)
        for i, e in enumerate(order):
            torch.testing.assert_close(a.duals[e], b.duals[i], atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- given maps

@pytest.mark.parametrize("case", sorted(GIVEN_CASES))
def test_given_maps_match_an_independent_cvxpy_reference(case):
    h, scores, temps, given = random_given_instance(case)
    sol = ca.solve(scores, h, "dual", temperature=temps, given=given, tol=1e-12)
    ref, value = reference_solve_given(h, scores, temps, given)
    assert max_err(sol.probs, ref) < 1e-7
    assert sol.given == tuple(sorted(given))
    for k, q in given.items():
        # as given, divided by its sum (the map the solve used): equal to rounding
        torch.testing.assert_close(sol.probs[k], q.expand_as(sol.probs[k]), atol=1e-15, rtol=0)
    torch.testing.assert_close(sol.objective, torch.from_numpy(value), atol=1e-7, rtol=0)
    # strong duality with the given maps' terms <η_k, q_k>
    torch.testing.assert_close(sol.dual_objective, sol.objective, atol=1e-9, rtol=0)
    assert float(sol.violation.max()) < 1e-11


# the first case differentiates in every input kind (scores, temperatures, given maps) in the fast
# suite; the other structures (1-3 s of gradcheck each) run in CI
@pytest.mark.parametrize("case", slow_beyond(["axial-rows-cols", "mixed-free-and-given", "given-fine-map"]))
def test_given_maps_gradcheck_in_scores_temperatures_and_the_given_probabilities(case):
    h, scores, temps, given = random_given_instance(case, batch=2, scale=1.0)
    free = [k for k, s in enumerate(scores) if s is not None]
    logits = {k: q.log().clone().requires_grad_() for k, q in given.items()}  # q = softmax(logits): on the simplex
    thetas = [scores[k].clone().requires_grad_() for k in free]
    tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)

    def fn(tau, *inputs):
        th, lg = inputs[:len(free)], inputs[len(free):]
        s = [None] * h.num_maps
        for k, t in zip(free, th):
            s[k] = t
        q = {k: torch.softmax(x.flatten(1), 1).reshape(x.shape) for k, x in zip(logits, lg)}
        return tuple(ca.solve(s, h, "dual", temperature=tau, given=q, tol=1e-13).probs)

    assert torch.autograd.gradcheck(fn, (tau, *thetas, *logits.values()), atol=1e-6)


def test_given_maps_share_one_prior_over_the_batch():
    h, scores, temps, given = random_given_instance("grid-regions", batch=3)
    prior = {k: q[:1] for k, q in given.items()}  # (1, …): one prior for every sample
    sol = ca.solve(scores, h, "dual", temperature=temps, given=prior, tol=1e-12)
    for k, q in prior.items():
        assert sol.probs[k].shape == (3,) + h.shapes[k] and torch.equal(sol.probs[k], q.expand_as(sol.probs[k]))
    assert float(sol.violation.max()) < 1e-11


@pytest.mark.parametrize("change, message", [
    (lambda s, q: ("softmax", s, q), r"method 'softmax' does not take given maps \(given=...\); use method 'dual'"),
    (lambda s, q: ("dual", [s[0], s[0][:, :, :1], None], q), r"scores\[1\] must be None"),
    (lambda s, q: ("dual", [None, None, None], {**q, 0: torch.full((2, 4, 3), 1 / 12, dtype=torch.float64)}),
     "every map is given"),
    (lambda s, q: ("dual", s, {**q, 1: q[1] * 2}), r"given\[1\] must sum to one"),
    (lambda s, q: ("dual", s, {**q, 1: torch.cat([q[1][:, :1] * 0, q[1][:, 1:]], 1)}), "zero"),
    (lambda s, q: ("dual", s, {**q, 1: q[1].float()}), "dtype"),
    (lambda s, q: ("dual", s, {**q, 1: q[1][:, :2]}), r"given\[1\] must have shape"),
    (lambda s, q: ("dual", s, {**q, 5: q[1]}), "key 5"),
    # a bool key was taken for map 1 (True == 1), and the scores of map 1 were blamed instead
    (lambda s, q: ("dual", [s[0], torch.zeros(2, 4, 1, dtype=torch.float64), None], {True: q[1], 2: q[2]}),
     "given has key True: a map index"),
    (lambda s, q: ("dual", [s[0], None, s[0][:, :1, :2]], {1: q[1]}), r"scores\[2\] must have shape"),
    (lambda s, q: ("dual", s, [q[1]]), "given must be a dict"),
])
def test_given_maps_are_refused_with_a_message_before_any_work(change, message):
    h = ca.Graph.axial((4, 3))
    s = [torch.randn(2, 4, 3, dtype=torch.float64), None, None]
    q = {1: torch.full((2, 4, 1), 0.25, dtype=torch.float64), 2: torch.full((2, 1, 3), 1 / 3, dtype=torch.float64)}
    method, scores, given = change(s, q)
    with pytest.raises((TypeError, ValueError), match=message):
        ca.solve(scores, h, method, given=given)


def test_an_empty_given_dict_gives_no_map_to_every_method():
    # as None: dual treated {} so already, while the methods without given maps refused it
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 2, dtype=torch.float64)]
    for name in ("softmax", "exact", "dual"):  # without, without and with given maps in their records
        plain = ca.solve(scores, h, name)
        empty = ca.solve(scores, h, name, given={})
        assert empty.given == () and all(torch.equal(a, b) for a, b in zip(plain.probs, empty.probs)), name
    with pytest.raises(TypeError, match="given must be a dict"):  # the type is checked first, for every method
        ca.solve(scores, h, "exact", given=[])


def test_an_edge_between_two_given_maps_is_refused():
    h = ca.Graph([(4, 4), (2, 2), (1, 1)], [(0, 1), (1, 2)])
    q1 = torch.full((1, 2, 2), 0.25, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"edge 1 \(map 1 → map 2\) joins two given maps"):
        ca.solve([torch.randn(1, 4, 4, dtype=torch.float64), None, None], h, "dual",
                 given={1: q1, 2: torch.ones(1, 1, 1, dtype=torch.float64)})


def test_given_maps_no_point_can_agree_with_are_never_reported_converged():
    # a 4x4 map with its 2x2 grid and three regions given: region 0 is grid cell 0, but the two
    # given maps weigh it differently, so no map has both as coarsenings
    regions = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    h = ca.Graph([(4, 4), (2, 2), 3], [(0, 1), (0, 2, regions)])
    grid = torch.full((1, 2, 2), 0.25, dtype=torch.float64)
    region = torch.tensor([[0.5, 0.1, 0.4]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        sol = ca.solve([torch.randn(2, 4, 4, dtype=torch.float64), None, None], h, "dual", given={1: grid, 2: region},
                       strict=False, max_iter=50)  # the stall is told by then (200 sweeps took 1.2 s)
    assert not bool(sol.info["converged"].any())


# ------------------------------------------------------------------ ordinary Python and PyTorch objects


def _filled(sol):
    """Every field of a Solution, read (the lazy ones computed)."""
    return [sol.probs, sol.duals, sol.violation, sol.objective, sol.dual_objective]


def _same(a, b):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif a is None:
        assert b is None
    else:
        torch.testing.assert_close(a.detach(), b.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("method", ca.METHODS)
@pytest.mark.parametrize("read_first", [False, True])
def test_solutions_pickle_and_torch_save_round_trips_them(method, read_first):
    """Before: exact and learned_dual stored a closure for their lazy duals, which pickle
    refuses.  Round trips with the lazy fields read before and after pickling."""
    inst = random_instance("2d-3lvl-unequal", batch=2)
    scores = [s.clone().requires_grad_() for s in inst.scores]
    kw = {"duals": [torch.randn(s, dtype=torch.float64) for s in inst.h.shapes[1:]]} \
        if method == "learned_dual" else {}
    sol = ca.solve(scores, inst.h, method, temperature=inst.temps, **kw)
    reference = ca.solve(inst.scores, inst.h, method, temperature=inst.temps, **kw)
    if read_first:
        _filled(sol)
    back = pickle.loads(pickle.dumps(sol))
    buffer = io.BytesIO()
    torch.save(sol, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)  # a Solution is a Python object, not only tensors
    for copy in (back, saved):
        assert copy.method == sol.method and copy.temperature == sol.temperature
        _same(_filled(copy), _filled(reference))
    assert not any(callable(v) and getattr(v, "__closure__", None) for v in vars(back).values())


def test_a_solution_with_a_tensor_temperature_pickles():
    inst = random_instance("2d-2lvl", batch=2)
    tau = torch.tensor(inst.temps, dtype=torch.float64, requires_grad=True)
    sol = ca.solve(inst.scores, inst.h, "exact", temperature=tau)
    back = pickle.loads(pickle.dumps(sol))
    _same(back.duals, sol.duals)
    _same(back.objective, sol.objective)


@pytest.mark.parametrize("method", ["softmax", "exact", "dual", "learned_dual"])
@pytest.mark.parametrize("make", [np.float32, np.float16, np.float64, lambda t: np.array(t, dtype=np.float32),
                                  lambda t: np.array([t, 2 * t], dtype=np.float32)])
def test_numpy_temperatures_give_the_answer_of_python_floats(method, make):
    inst = random_instance("2d-2lvl", batch=2)
    temperature = make(0.7)
    as_floats = [float(t) for t in np.broadcast_to(np.asarray(temperature, dtype=np.float64), (2,))]
    kw = {"duals": [torch.randn(inst.h.shapes[1], dtype=torch.float64)]} if method == "learned_dual" else {}
    got = ca.solve(inst.scores, inst.h, method, temperature=temperature, **kw)
    want = ca.solve(inst.scores, inst.h, method, temperature=as_floats, **kw)
    _same(got.probs, want.probs)
    assert got.temperature == want.temperature and all(type(t) is float for t in got.temperature)


# torch.func: methods built of plain torch operations work under grad and jacrev; the
# methods that are autograd Functions refuse every transform, and vmap is refused everywhere

def _func_case():
    inst = random_instance("2d-2lvl", batch=2)
    kw = {m: ({"duals": [torch.randn(inst.h.shapes[1], dtype=torch.float64)]} if m == "learned_dual" else {})
          for m in ca.METHODS}
    return inst, kw


@pytest.mark.parametrize("method", ["softmax", "learned_dual"])
def test_torch_func_grad_and_jacrev_work_for_methods_of_plain_operations(method):
    inst, kw = _func_case()
    w = torch.randn_like(inst.scores[0])

    def loss(x):
        return (ca.solve([x, inst.scores[1]], inst.h, method, temperature=inst.temps, **kw[method]).probs[0]
                * w).sum()

    x = inst.scores[0].clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(x), x)
    torch.testing.assert_close(torch.func.grad(loss)(inst.scores[0]), want)
    jac = torch.func.jacrev(lambda x: ca.solve([x, inst.scores[1]], inst.h, method, temperature=inst.temps,
                                               **kw[method]).probs[0])(inst.scores[0])
    torch.testing.assert_close((jac * w.reshape(w.shape + (1,) * w.dim())).sum(tuple(range(w.dim()))), want)
    _, tangent = torch.func.jvp(loss, (inst.scores[0],), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, (want * 1).sum())


@pytest.mark.parametrize("method", ["exact", "dual", "cvxpylayers"])
@pytest.mark.parametrize("transform", ["grad", "jacrev", "vmap"])
def test_torch_func_transforms_are_refused_clearly_where_they_cannot_work(method, transform):
    inst, kw = _func_case()

    def probs(x):
        return ca.solve([x, inst.scores[1]], inst.h, method, temperature=inst.temps, **kw[method]).probs[0]

    run = {"grad": lambda: torch.func.grad(lambda x: probs(x).square().sum())(inst.scores[0]),
           "jacrev": lambda: torch.func.jacrev(probs)(inst.scores[0]),
           "vmap": lambda: torch.func.vmap(lambda x: probs(x.unsqueeze(0)))(inst.scores[0])}[transform]
    what = "torch.func.vmap" if transform == "vmap" else "torch.func transforms"
    with pytest.raises(NotImplementedError, match=rf"solve\(method='{method}'\) does not support {what}"):
        run()


@pytest.mark.parametrize("method", ["softmax", "learned_dual"])
def test_vmap_is_refused_clearly_for_every_method(method):
    inst, kw = _func_case()
    with pytest.raises(NotImplementedError, match="does not support torch.func.vmap.*first dimension"):
        torch.func.vmap(lambda x: ca.solve([x.unsqueeze(0), inst.scores[1][:1]], inst.h, method,
                                           temperature=inst.temps, **kw[method]).probs[0])(inst.scores[0])
    with pytest.raises(NotImplementedError, match="consistency_loss does not support torch.func.vmap"):
        torch.func.vmap(lambda x: ca.consistency_loss([x.unsqueeze(0), inst.scores[1][:1]],
                                                      [torch.zeros(inst.h.shapes[1], dtype=torch.float64)],
                                                      inst.h))(inst.scores[0])


# factories that make a tensor on the host unless told a device, and the reads that bring a
# tensor to the host: on CUDA either is a synchronisation in the hot path (found on an H200: a
# 0-d CPU zero in consistency_loss's torch.where made learned_dual's training step synchronise)
_HOST_FACTORIES = ("zeros", "ones", "full", "empty", "tensor", "as_tensor", "arange", "eye", "scalar_tensor")
_HOST_READS = ("cpu", "tolist", "item", "numpy", "__bool__", "__float__", "__int__", "nonzero")


def _watch_host(monkeypatch) -> list:
    """Replace the factories and reads above by recording wrappers (a monkeypatch, unlike a
    TorchFunctionMode, also sees the code autograd runs in a backward pass); the calls made from
    the package (a frame in convex_attention) are recorded as ``(name, file, line)``."""
    import traceback

    calls: list = []

    def wrap(name, fn, is_factory):
        def watched(*args, **kwargs):
            if not is_factory or kwargs.get("device") is None:
                frames = [f for f in traceback.extract_stack()[:-1] if "convex_attention" in f.filename]
                if frames:
                    calls.append((name, frames[-1].filename.split("convex_attention")[-1], frames[-1].lineno))
            return fn(*args, **kwargs)
        return watched

    for name in _HOST_FACTORIES:
        monkeypatch.setattr(torch, name, wrap(name, getattr(torch, name), True))
    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name), False))
    return calls


@pytest.mark.parametrize("method", ["softmax", "exact", "learned_dual"])
def test_the_training_hot_path_makes_no_tensor_on_the_host(method, monkeypatch):
    """Forward and backward of ``solve(..., check_finite=False)`` (and the consistency loss for
    learned_dual), with float temperatures, create every tensor on the scores' device and read
    none back: the CPU stand-in for the GPU check's no-synchronisation test
    (benchmarks/gpu_check.py), which needs CUDA.  (A tensor temperature is read on the host
    once per call for its range check: docs/user_guide.md.)"""
    h = ca.Hierarchy.grid([(16, 16), (8, 8), (4, 4)])
    scores = [torch.randn((2,) + s, requires_grad=True) for s in h.shapes]
    lam = [torch.zeros((1,) + s, requires_grad=True) for s in h.shapes[1:]]
    kw = {"duals": lam} if method == "learned_dual" else {}

    def step():
        sol = ca.solve(scores, h, method, check_finite=False, temperature=[0.5, 1.0, 2.0], **kw)
        loss = sum((p * p.detach()).sum() for p in sol.probs)
        if method == "learned_dual":
            loss = loss + ca.consistency_loss(scores, lam, h, [0.5, 1.0, 2.0], check_finite=False)
        loss.backward()

    step()  # caches (index tensors) are built on the first call
    calls = _watch_host(monkeypatch)
    step()
    assert calls == []


@pytest.mark.parametrize("dtype, tau, low", [(torch.float32, 1e-20, -0.2), (torch.float64, 1e-160, -0.2),
                                             (torch.float32, 1e-37, -50.0), (torch.float64, 1e-307, -50.0)])
@pytest.mark.parametrize("method", ["softmax", "learned_dual", "exact"])
def test_the_temperature_gradient_is_finite_at_tiny_accepted_temperatures(dtype, tau, low, method):
    """One-hot maps: the gradients in τ are 0. Autograd's −x/τ² overflowed and met a zero
    softmax weight: NaN (found by a hostile review); _ops.divide_by_temperature.  A score far
    below the others (``low``) at τ near the smallest accepted makes (x − max)/τ itself
    −inf: its zero weight times it must not make NaN either (found by mutation testing)."""
    h = ca.Hierarchy.grid([4, 2])
    scores = [torch.tensor([[0.3, low, 1.0, 0.5]], dtype=dtype), torch.tensor([[0.1, 0.4]], dtype=dtype)]
    duals = [torch.zeros(2, dtype=dtype)] if method == "learned_dual" else None
    for field in ("probs", "dual_objective"):
        t = torch.tensor(tau, dtype=dtype, requires_grad=True)
        sol = ca.solve(scores, h, method, temperature=t, duals=duals)
        value = (sol.probs[0] * torch.arange(1.0, 5.0, dtype=dtype)).sum() if field == "probs" else \
            (sol.dual_objective.sum() if sol.dual_objective is not None else None)
        if value is None:
            continue
        (grad,) = torch.autograd.grad(value, t)
        assert float(grad) == 0.0, (field, float(grad))


def test_a_solution_read_after_its_inputs_changed_in_place_refuses_rather_than_describe_another_problem():
    """Its lazy fields read the inputs of the solve; after an optimiser step on learned duals,
    or scores.mul_, they described another problem than the one solved (found by a review)."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)]
    sol = ca.solve(scores, h, "exact")
    objective = sol.objective  # read before: cached, and still right afterwards
    scores[0].mul_(3)
    assert sol.objective is objective
    with pytest.raises(ca.StaleSolution, match="duals"):
        _ = sol.duals
    layer = ca.ConsistentAttention(h, "learned_dual")
    sol = layer([torch.randn(3, 4), torch.randn(3, 2)])
    sum(p.sum() * (k + 1) for k, p in enumerate(sol.probs)).backward()
    torch.optim.SGD(layer.parameters(), lr=1.0).step()
    assert float(sol.violation.max()) >= 0  # the probabilities alone: still readable after the step
    with pytest.raises(ca.StaleSolution, match=r"Solution\.duals"):  # what dual_objective reads first
        _ = sol.dual_objective
    fresh = ca.solve(scores, h, "exact")
    again = pickle.loads(pickle.dumps(fresh))  # a copy starts afresh
    torch.testing.assert_close(again.objective, fresh.objective)
    scores[1].add_(1)
    with pytest.raises(ca.StaleSolution):
        _ = pickle.loads(pickle.dumps(fresh)).duals  # pickled after the change: stays refused
    with torch.inference_mode():  # inference tensors keep no version counter: not watched
        assert ca.solve([s.clone() for s in scores], h, "exact").duals is not None


def test_learned_duals_beyond_half_precision_are_validated_and_returned_in_float32():
    """Half-precision scores are computed in float32 (docstring of Solution.duals): given
    duals beyond float16's range (±65504) are neither refused nor rounded to float16."""
    h = ca.Hierarchy.grid([4, 2])
    scores = [torch.zeros(1, 4, dtype=torch.float16), torch.zeros(1, 2, dtype=torch.float16)]
    lam = [torch.tensor([[7.0e4 + 0.5, -7.0e4 - 0.5]])]
    sol = ca.solve(scores, h, "learned_dual", duals=lam)
    assert sol.duals[0].dtype == torch.float32 and torch.equal(sol.duals[0], lam[0])
    assert all(p.dtype == torch.float16 and torch.isfinite(p).all() for p in sol.probs)


def test_objectives_read_first_after_an_input_changed_in_place_are_refused():
    """Not only duals: objective and dual_objective, computed on first read, refuse to
    describe a problem other than the one solved once its scores were modified in place."""
    g = torch.Generator().manual_seed(0)
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)]
    sol = ca.solve(scores, h, "exact")
    duals = sol.duals  # read before the change
    scores[0].mul_(3)
    assert sol.duals is duals
    with pytest.raises(ca.StaleSolution, match=r"Solution\.objective"):
        _ = sol.objective
    with pytest.raises(ca.StaleSolution, match=r"Solution\.dual_objective"):
        _ = sol.dual_objective


@pytest.mark.parametrize("method", ["exact", "learned_dual", "module"])
def test_scores_changed_in_place_after_a_masked_solve_make_it_stale(method):
    """With check_finite=False, solve (and the module) masks the cells pooling rules out on copies of the
    scores for learned_dual: the Solution still watches the scores as given (a change to them read as fresh:
    ca_rev157); exact's Solution holds them as given."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.tensor([[0.1, -0.2, 0.3, 0.0]]), torch.tensor([[-math.inf, 0.4]])]
    if method == "module":
        sol = ca.ConsistentAttention(h, "learned_dual", check_finite=False)(scores)
    else:
        sol = ca.solve(scores, h, method, check_finite=False,
                       **({"duals": [torch.zeros(1, 2)]} if method == "learned_dual" else {}))
    # learned_dual's copies were masked; exact finds the cells itself and holds the scores as given
    assert bool(torch.isneginf(sol._scores[0][0, :2]).all()) == (method != "exact") and torch.isfinite(scores[0]).all()
    scores[0][0, 2] += 1.0
    with pytest.raises(ca.StaleSolution, match=r"Solution\.objective"):
        _ = sol.objective


# ------------------------------------------------------------------ found by mutation testing


def test_the_default_method_is_exact():
    """solve's signature and docs/design.md §4: ``method="exact"``."""
    sol = ca.solve(GOOD, H)
    assert sol.method == "exact"
    _same(sol.probs, ca.solve(GOOD, H, "exact").probs)


def test_check_finite_off_reads_no_given_values_but_still_checks_their_shape_and_dtype():
    """solve's docstring: ``check_finite`` rejects given maps that do not sum to one; turned off,
    "given's shape, dtype and device are checked still" (the values are not read)."""
    g = torch.Generator().manual_seed(3)
    h = ca.Graph.axial((4, 3))
    scores = [torch.randn(2, 4, 3, generator=g, dtype=torch.float64), None,
              torch.randn(2, 1, 3, generator=g, dtype=torch.float64)]
    off = torch.full((1, 4, 1), 0.25 + 1e-5, dtype=torch.float64)  # sums to 1 + 4e-5: beyond float64's 1e-6
    with pytest.raises(ValueError, match=r"given\[1\] must sum to one"):
        ca.solve(scores, h, "dual", given={1: off}, tol=1e-3)
    sol = ca.solve(scores, h, "dual", given={1: off}, check_finite=False, tol=1e-3)
    assert sol.given == (1,)
    with pytest.raises(ValueError, match=r"given\[1\] must have shape"):
        ca.solve(scores, h, "dual", given={1: off[:, :2]}, check_finite=False)
    with pytest.raises(TypeError, match=r"given\[1\] has dtype"):
        ca.solve(scores, h, "dual", given={1: off.float()}, check_finite=False)


def test_a_solution_unpickled_under_inference_mode_is_readable():
    """Inference tensors keep no version counter, so they are not watched; a copy loaded in
    ``torch.inference_mode()`` (an evaluation script) starts afresh like any other copy."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)]
    sol = ca.solve(scores, h, "exact")
    data = pickle.dumps(sol)
    with torch.inference_mode():
        back = pickle.loads(data)
        _same([back.duals, back.objective], [sol.duals, sol.objective])


def test_consistency_loss_works_under_torch_func_grad():
    """The loss is plain torch operations (like methods 'softmax' and 'learned_dual'), which
    torch.func.grad differentiates: its gradient is autograd's."""
    inst = random_instance("1d-3lvl", batch=2)
    duals = _learned_duals(inst)
    by_func = torch.func.grad(lambda lam: ca.consistency_loss(inst.scores, [lam, duals[1]], inst.h, inst.temps))(
        duals[0])
    lam = duals[0].clone().requires_grad_()
    (by_autograd,) = torch.autograd.grad(ca.consistency_loss(inst.scores, [lam, duals[1]], inst.h, inst.temps), lam)
    torch.testing.assert_close(by_func, by_autograd)


def test_cvxpylayers_takes_solver_options_and_reports_what_it_used():
    """solve's docstring: ``"cvxpylayers"`` takes ``backend``, ``eps``, ... ; its ``info`` holds
    ``backend`` (its name), ``eps``, ``accept_tol`` and ``solver_options`` (the options as given)."""
    from convex_attention import cvx

    inst = random_instance("1d-2lvl", batch=1)
    options = {"backend": "diffcp-clarabel", "eps": 1e-9}
    sol = ca.solve(inst.scores, inst.h, "cvxpylayers", temperature=inst.temps, **options)
    assert sol.info == {"solver_options": options, "backend": "diffcp-clarabel", "eps": 1e-9,
                        "accept_tol": cvx.check_options(options)["accept_tol"]}


def test_dual_float32_temperature_refusal_names_the_map_with_given_maps():
    g = ca.Graph.from_edges([4, 2, 2], [(0, 1, [0, 0, 1, 1]), (0, 2, [0, 1, 0, 1])])
    scores = [torch.zeros(2, 4, dtype=torch.float64), None, torch.zeros(2, 2, dtype=torch.float64)]
    given = {1: torch.tensor([0.5, 0.5], dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"temperature of map 2 is 1e-40"):
        ca.solve(scores, g, "dual", temperature=[1.0, 1.0, 1e-40], given=given, dtype=torch.float32)


# ------------------------------------------------------------------ given maps: a hostile review (each failed before)

@pytest.mark.parametrize("dtype, off, tol", [(torch.float32, 5e-5, 1e-6), (torch.float64, 5e-7, 1e-10)])
def test_given_maps_summing_to_one_within_the_accepted_tolerance_are_solved(dtype, off, tol):
    h = ca.Graph.axial((4, 3))
    rows = torch.tensor([[[0.25], [0.25], [0.25], [0.25 + off]]], dtype=dtype)  # accepted: within the check
    cols = torch.full((1, 1, 3), 1 / 3, dtype=dtype)
    scores = [torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0), dtype=dtype), None, None]
    sol = ca.solve(scores, h, "dual", given={1: rows, 2: cols}, tol=tol, max_iter=100)  # 8 sweeps when exact
    assert bool(sol.info["converged"].all())


def test_the_unused_temperature_of_a_given_map_is_not_range_checked():
    h = ca.Graph.axial((4, 3))
    given = {1: torch.full((1, 4, 1), 0.25, dtype=torch.float64), 2: torch.full((1, 1, 3), 1 / 3, dtype=torch.float64)}
    scores = [torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), None, None]
    plain = ca.solve(scores, h, "dual", temperature=[0.7, 1.0, 1.0], given=given, tol=1e-10)
    unused = ca.solve(scores, h, "dual", temperature=[0.7, 1e200, 1.0], given=given, tol=1e-10)
    torch.testing.assert_close(unused.probs[0], plain.probs[0], atol=1e-12, rtol=0)


# ------------------------------------------------------------------ given maps: a review of b0ee9fd

def test_the_dual_objective_uses_the_given_map_the_solve_used():
    """A review: sol.dual_objective used the caller's q (summing to 1 + 9e-7, accepted), the solve
    q / Σq: 3.5e-6 off the objective at the optimum."""
    reg = torch.tensor([[0, 1, 2, 2], [0, 1, 1, 2], [0, 0, 1, 2], [2, 2, 1, 0]])
    h = ca.Graph.grid_regions([(4, 4), (2, 2)], reg)
    gen = torch.Generator().manual_seed(0)
    scores = [30 * torch.randn(2, 4, 4, generator=gen, dtype=torch.float64),
              30 * torch.randn(2, 2, 2, generator=gen, dtype=torch.float64), None]
    q = torch.softmax(torch.randn(1, 3, generator=gen, dtype=torch.float64), 1) * (1 + 9e-7)  # accepted: 1e-6
    sol = ca.solve(scores, h, "dual", given={2: q})
    assert bool(sol.info["converged"].all())
    used = [None, None, q / q.sum()]
    torch.testing.assert_close(ca.metrics.dual_objective(scores, sol.duals, h, sol.temperature, used),
                               sol.objective, atol=1e-9, rtol=0)  # holds: strong duality with the map used
    torch.testing.assert_close(sol.dual_objective, sol.objective, atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- review 41

@pytest.mark.parametrize("method", ["softmax", "learned_dual", "consistency_loss"])
def test_torch_func_jvp_differentiates_through_a_tensor_temperature(method):
    """docs/design.md §4: ``torch.func.grad``, ``jacrev`` and ``jvp`` work for ``softmax`` and
    ``learned_dual`` (and ``consistency_loss``), and these differentiate through a tensor
    temperature.  jvp's directional derivative along a temperature direction ``v`` must be
    autograd's ⟨∇_τ, v⟩ (it was 0 where autograd gives −0.18, −0.82 and 0.59 for softmax,
    learned_dual and consistency_loss on this axial instance)."""
    inst = random_graph_instance("axial", batch=2)
    h = inst.h
    g = torch.Generator().manual_seed(3)
    lam = [torch.randn((2,) + h.shapes[b], generator=g, dtype=torch.float64) for _, b in h.edges]
    w = torch.randn(inst.scores[0].shape, generator=g, dtype=torch.float64)

    def out(t):
        if method == "consistency_loss":
            return ca.consistency_loss(inst.scores, lam, h, temperature=t)
        kw = {"duals": lam} if method == "learned_dual" else {}
        return (ca.solve(inst.scores, h, method, temperature=t, **kw).probs[0] * w).sum()

    tau = torch.tensor(inst.temps, dtype=torch.float64)
    v = torch.randn(tau.shape, generator=g, dtype=torch.float64)
    t = tau.clone().requires_grad_()
    (grad,) = torch.autograd.grad(out(t), t)
    assert float(grad.abs().max()) > 1e-3  # a temperature direction that matters
    _, tangent = torch.func.jvp(out, (tau,), (v,))
    torch.testing.assert_close(tangent, (grad * v).sum())


@pytest.mark.parametrize("method", ["exact", "dual"])
def test_forward_mode_along_a_temperature_is_refused_by_the_autograd_functions(method):
    """``exact`` and ``dual`` have no forward-mode rule: a temperature carrying a tangent is
    refused (torch's NotImplementedError), never read as floats with its tangent dropped
    (review 41: the output then had no tangent at all, a silent zero derivative)."""
    import torch.autograd.forward_ad as fwAD

    inst = random_instance("2d-2lvl", batch=2)
    with fwAD.dual_level():
        tau = fwAD.make_dual(torch.tensor([1.0, 2.0], dtype=torch.float64),
                             torch.tensor([1.0, 0.0], dtype=torch.float64))
        with pytest.raises(NotImplementedError):
            ca.solve(inst.scores, inst.h, method, temperature=tau)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("method", ["exact", "dual"])
def test_a_field_first_read_without_grad_still_differentiates_when_read_with_grad(method, context):
    """design.md §4: ``duals``, ``objective`` and ``dual_objective`` are differentiable functions of the
    scores.  Reading them first for a log line under ``torch.no_grad()`` must not take that away from
    the loss that reads them next, with grad on."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((2,) + s, generator=g, dtype=torch.float64, requires_grad=True) for s in h.shapes]
    w = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)

    def loss(sol):
        return sol.objective.sum() + sol.dual_objective.sum() + (sol.duals[0] * w).sum() + sol.probs[0].pow(2).sum()

    expected = torch.autograd.grad(loss(ca.solve(scores, h, method, 0.8)), scores)
    sol = ca.solve(scores, h, method, 0.8)
    with context():  # a training loop's logging
        logged = [float(sol.objective.mean()), float(sol.dual_objective.mean()), float(sol.duals[0].abs().max())]
    assert all(math.isfinite(v) for v in logged)
    got = torch.autograd.grad(loss(sol), scores)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("method", ["exact", "dual"])
def test_a_field_logged_without_grad_before_an_optimiser_step_reads_the_same_after_it(method, context):
    """design.md §4: the lazy fields raise StaleSolution when read *for the first time* after an input
    of the solve was modified in place; one read before (here under no_grad, as a training loop's log
    line reads it) describes the problem solved and stays readable: a metrics line outside no_grad
    after ``optimizer.step()`` must give the value logged, not raise."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((2,) + s, generator=g, dtype=torch.float64, requires_grad=True) for s in h.shapes]
    tau = torch.nn.Parameter(torch.tensor([0.8, 1.3], dtype=torch.float64))
    sol = ca.solve(scores, h, method, temperature=tau)
    with context():  # the training step's log line
        logged = [sol.objective.clone(), sol.dual_objective.clone(), sol.violation.clone()]
    loss = sum((p * p).sum() for p in sol.probs)
    loss.backward()
    torch.optim.SGD([tau, *scores], lr=0.1).step()  # an in-place step on the solve's inputs
    after = [sol.objective, sol.dual_objective, sol.violation]  # the epoch's metrics, grad on
    for a, b in zip(after, logged):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


@pytest.mark.parametrize("field", ["objective", "dual_objective", "duals"])
def test_rev54_an_inference_input_changed_in_place_is_never_read_as_the_solved_problem(field):
    """design.md §4: the lazy fields "read the solve's inputs, which are not copied: read for the
    first time after one of them was modified in place ..., they raise ca.StaleSolution instead of
    describing another problem than the one solved".  Inference tensors (an evaluation script
    under torch.inference_mode(), where in-place ops are allowed) keep no version counter and are
    not watched: after ``scores[0].mul_(3)`` the objective read 5.0985 for the solved problem's
    2.2406 and the dual objective 5.7008 (no longer equal to it).  Either refused, or the value of
    the problem solved."""
    h = ca.Hierarchy.from_parents([4, 2], [[0, 0, 1, 1]])
    with torch.inference_mode():
        scores = [torch.tensor([[0.5, -1.0, 2.0, 0.3]], dtype=torch.float64),
                  torch.tensor([[0.1, -0.4]], dtype=torch.float64)]
        want = getattr(ca.solve([s.clone() for s in scores], h, "exact", temperature=[0.5, 1.0]), field)
        sol = ca.solve(scores, h, "exact", temperature=[0.5, 1.0])
        scores[0].mul_(3.0)
        try:
            got = getattr(sol, field)
        except ca.StaleSolution:
            return  # refused: right
    for a, b in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rev58_an_inference_input_resized_in_place_is_stale():
    """ca_rev54 (Solution._stale): a copy of each inference input is compared with it when a
    field is read, StaleSolution where it changed.  The comparison is torch.allclose, which
    raises "The size of tensor a (8) must match the size of tensor b (4)" when the input was
    resized in place (``resize_``), so the changed input gives a RuntimeError from inside
    allclose instead of StaleSolution (compare shapes and dtypes before values)."""
    h = ca.Hierarchy.from_parents([4, 2], [[0, 0, 1, 1]])
    with torch.inference_mode():
        s = [torch.tensor([[0.9685, -0.5962, -0.7224, 1.2194]], dtype=torch.float64),
             torch.tensor([[-0.5223, 0.0264]], dtype=torch.float64)]
    sol = ca.solve(s, h, "exact", temperature=[0.3, 1.0])
    with torch.inference_mode():
        s[0].resize_(1, 8)
    try:
        _ = sol.objective
    except ca.StaleSolution:
        return  # refused: right
    except RuntimeError as exc:
        raise AssertionError(f"a changed inference input gave {exc!r}, not StaleSolution") from exc
    raise AssertionError("a resized inference input was read as the solved problem")


# ----------------------------------------------------------------------------- ca_rev79 (strict xfail: known defects)

def test_ca_rev79_exact_duals_are_not_computed_in_a_half_precision_temperature():
    """A float16 temperature tensor that requires grad is accepted (its values are checked
    against the scores' range) and handed to exact as 0-d float16 tensors; the lazy duals
    then do temperature arithmetic in float16: at τ = (0.3, 1, 3) (float16 values) they are
    1.3e-3 off the duals at the same values given as floats (float64 scores), and where the
    temperatures sum beyond 65504 (τ = (4e4, 4e4, 1), accepted: float64's bound is 1.3e154)
    duals and dual_objective are NaN while probs and objective are right."""
    h = ca.Hierarchy.grid([(4,), (2,), (1,)])
    g = torch.Generator().manual_seed(0)
    scores = [3 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    for values in ([0.3, 1.0, 3.0], [40000.0, 40000.0, 1.0]):
        tau = torch.tensor(values, dtype=torch.float16, requires_grad=True)
        got = ca.solve(scores, h, "exact", temperature=tau)
        want = ca.solve(scores, h, "exact", temperature=tau.detach().double().tolist())
        assert torch.isfinite(got.dual_objective).all()
        for a, b in zip(got.duals, want.duals):
            torch.testing.assert_close(a.detach(), b, atol=1e-9, rtol=0)


def test_ca_rev79_dual_refuses_a_float8_init_with_a_message_naming_it():
    """dual option init: '_check_init' accepts any floating dtype, float8 included, then calls
    torch.isfinite on it: NotImplementedError '"isfinite" not implemented for Float8_e4m3fn'
    from inside torch, not a TypeError naming the option."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)]
    with pytest.raises(TypeError, match="init"):
        ca.solve(scores, h, "dual", init=[torch.zeros(2).to(torch.float8_e4m3fn)])


def test_ca_rev79_exact_refuses_forward_mode_tangents_before_any_work_naming_itself():
    """validation.is_grad_temperature detects a torch.autograd.forward_ad tangent and
    cvxpylayers refuses it up front, but exact (an autograd.Function without jvp) accepts a
    tangent on the scores or the temperature, solves, and then fails with torch's generic
    'You must implement the jvp function for custom autograd.Function', naming neither the
    method nor the alternatives that design.md §4 gives for torch.func transforms."""
    import torch.autograd.forward_ad as fwad
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    with fwad.dual_level():
        tangent = fwad.make_dual(scores[0], torch.ones_like(scores[0]))
        with pytest.raises(NotImplementedError, match="'exact'"):
            ca.solve([tangent, scores[1]], h, "exact")


# ----------------------------------------------------------------------------- ca_rev80 (strict xfail: known defects)

def test_ca_rev80_a_float64_grad_temperature_is_not_rounded_to_the_scores_compute_dtype():
    """check_temperatures casts a grad temperature to compute_dtype(scores) (b376849), down as well
    as up: a float64 τ = 0.7 with float32 scores is used as float32(0.7), while the float 0.7 is
    used as itself ('a value is used as float(value)'); 'dual' solves in float64, and its maps
    then differ by 1.5e-8 (bitwise equal before b376849).  Only a less precise temperature
    (float16, bfloat16) needs the cast (torch.promote_types)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)])
    g = torch.Generator().manual_seed(0)
    scores = [30 * torch.randn((2,) + s, generator=g) for s in h.shapes]
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    got = ca.solve(scores, h, "dual", temperature=tau)
    want = ca.solve(scores, h, "dual", temperature=0.7)
    for a, b in zip(got.probs, want.probs):
        assert torch.equal(a.detach(), b)


def test_ca_rev80_dual_refuses_a_forward_mode_tangent_on_a_given_map_before_the_solve():
    """solve refuses tangents on the scores and the temperature for methods without
    func_transforms, but a given map is an input of dual's autograd.Function too (the
    gradient reaches it): with a tangent on it the whole solve runs, then torch raises 'You
    must implement the jvp function for custom autograd.Function', naming neither 'given' nor
    the alternatives."""
    import torch.autograd.forward_ad as fwad
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, generator=g, dtype=torch.float64)
    q = torch.tensor([[0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    with fwad.dual_level():
        dual_q = fwad.make_dual(q, torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64))
        with pytest.raises(NotImplementedError, match="given"):
            ca.solve([scores, None], h, "dual", given={1: dual_q})


def test_ca_rev80_exact_refuses_a_forward_mode_tangent_in_any_temperature_sequence():
    """check_temperatures accepts any Sequence of M numbers or 0-d tensors, but solve's tangent
    check looks inside list and tuple only: a collections.UserList holding a tangent passes,
    exact solves, and torch's generic jvp error follows (the check should read the validated
    temps instead)."""
    import collections

    import torch.autograd.forward_ad as fwad
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    with fwad.dual_level():
        tau = fwad.make_dual(torch.tensor(0.7, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        with pytest.raises(NotImplementedError, match="forward-mode"):
            ca.solve(scores, h, "exact", temperature=collections.UserList([tau, 1.0]))


def test_ca_rev80_solves_pre_check_does_not_validate_dual_init_again(monkeypatch):
    """b376849 runs record.check_options before any work; for 'dual' that is
    check_dual_options(options, h, None, None), which validates init in full (isfinite: one
    host synchronisation per tensor on CUDA; the midpoint pass), on top of the two checks
    made before (solve_dual_method's, with the batch and device, and solve_dual's): ~100 µs
    more per call on CPU with two small init tensors, on every forward of a
    ConsistentAttention(method='dual', init=...), which checked the options at construction."""
    from convex_attention import dual as dual_module
    calls = []
    original = dual_module._check_init

    def counting(*args, **kwargs):
        calls.extend([1] if kwargs.get("values", True) else [])  # the passes over the values (the cost)
        return original(*args, **kwargs)

    monkeypatch.setattr(dual_module, "_check_init", counting)
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    ca.solve(scores, h, "dual", init=[torch.zeros(2, 2, dtype=torch.float64)])
    assert len(calls) <= 1, len(calls)  # 2 before b376849 (one more than needed: solve_dual's, now form only)


def test_rev88_consistency_loss_refuses_a_detach_target_that_is_not_a_bool():
    """check_finite must be True or False (None or 0 "would have skipped the checks unasked",
    docs/design.md §4); detach_target is read as `if detach_target`, so detach_target="False"
    (a config string) detaches b_e: the coarse scores get no gradient (None) where False gives
    them one (|grad| 0.77 on this instance).  Refuse it, as check_finite is refused."""
    torch.manual_seed(0)
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.randn((2,) + s, dtype=torch.float64, requires_grad=True) for s in h.shapes]
    duals = [torch.randn(1, 2, 2, dtype=torch.float64)]
    with pytest.raises((TypeError, ValueError), match="detach_target"):
        ca.consistency_loss(scores, duals, h, detach_target="False")


# ---- ca_rev115 (strict xfail: review of 0646abe)

def test_ca_rev115_a_numpy_integer_names_a_given_map():
    """Run: ``ca.solve([s0, None], h, "dual", given={np.int64(1): q})`` on a 4×4 → 2×2 hierarchy
    (float64).  Expected: map 1 given, the solution of ``given={1: q}`` (a NumPy integer is a map
    index: ``Graph.from_edges`` takes ``np.int64`` map indices, and the modules' sizes take
    NumPy integers since a review).  Observed: ValueError "given has key np.int64(1): a level
    index in [0, 2) is needed", false for 1 (validation.given_indices tests
    ``isinstance(k, int)``)."""
    torch.manual_seed(0)
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    s0 = torch.randn(2, 4, 4, dtype=torch.float64)
    q = torch.softmax(torch.randn(2, 4, dtype=torch.float64), 1).view(2, 2, 2)
    want = ca.solve([s0, None], h, "dual", given={1: q})
    got = ca.solve([s0, None], h, "dual", given={np.int64(1): q})
    assert got.given == (1,)
    for p, r in zip(got.probs, want.probs):
        torch.testing.assert_close(p, r)


# ---- ca_rev123 (strict xfail: review of b3f1e07)

@pytest.mark.parametrize("what", ["learned_dual", "consistency_loss"])
def test_ca_rev123_forward_mode_passes_a_temperature_that_requires_grad(what):
    """Run: a 4×4 → 2×2 hierarchy, float64 scores, duals N(0, 1), the temperature an
    ``nn.Parameter([0.7, 1.3])`` (a learned temperature, as ``ConsistentAttention`` registers it);
    a ``torch.autograd.forward_ad`` tangent on ``scores[0]``, then ``ca.solve(..., "learned_dual")``
    (its ``probs[0]``) or ``ca.consistency_loss``.  Expected: the tangent is the derivative along it
    (docs/design.md §4: learned_dual and consistency_loss are torch operations that take forward
    mode, and solve's own refusal says "methods 'softmax' and 'learned_dual' take forward mode");
    with the same temperature detached it is (within 1.7e-10 of central differences, tangents up
    to 0.36).  Observed: NotImplementedError "You must implement the jvp function for custom
    autograd.Function to use it with forward mode AD" (``_ops.divide_by_temperature`` routes a
    temperature that requires grad through ``_DivideByTemperature``, which has no ``jvp``); a
    tangent on the Parameter temperature itself fails alike, while ``torch.func.jvp`` passes."""
    import torch.autograd.forward_ad as fwad

    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    duals = [torch.randn(2, 2, 2, generator=g, dtype=torch.float64)]
    v = torch.randn(scores[0].shape, generator=g, dtype=torch.float64)
    tau = torch.nn.Parameter(torch.tensor([0.7, 1.3], dtype=torch.float64))

    def out(s0, t):
        if what == "consistency_loss":
            return ca.consistency_loss([s0, scores[1]], duals, h, t)
        return ca.solve([s0, scores[1]], h, "learned_dual", t, duals=duals).probs[0]

    eps = 1e-6
    with torch.no_grad():
        want = (out(scores[0] + eps * v, tau) - out(scores[0] - eps * v, tau)) / (2 * eps)
    with fwad.dual_level():
        got = fwad.unpack_dual(out(fwad.make_dual(scores[0], v), tau)).tangent
    torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-9)


# ---- ca_rev124 (strict xfail: review of 4e56f86)

def test_ca_rev124_cvxpylayers_dual_objective_second_derivative_is_right_or_refused():
    """Run: random_instance('1d-2lvl', batch=1, seed=0); g = ca.solve(scores, h, 'cvxpylayers',
    backend='diffcp-clarabel').dual_objective; ∂g/∂θ with create_graph=True, then the gradient of its
    entry [0, 0] of map 0 in the scores.  Expected: exact's Hessian row (∂²g/∂θ0[0]∂θ0[1] = -7.907e-5,
    central differences of exact's gradient -7.907e-5; ∂²g/∂θ0[0]∂θ1[0] = 1.317e-3), or a refusal; at
    fee9163 cvxpylayers gave exactly these (its second order is the layer's: design.md, 'cvxpylayers is
    the reference library's layer, as it is'; test_the_guarded_layer_s_second_order_is_the_layers_own).
    Observed: -3.10e-5 for -7.907e-5, and None (no path) for map 1's 1.317e-3, silently:
    Solution._dual_objective detaches the duals for 'cvxpylayers' (envelope theorem, first order only;
    its comment says 'the layer has no second derivatives', which it has)."""
    from convex_attention.cvx import backend_unavailable_reason

    if backend_unavailable_reason("diffcp-clarabel") is not None:
        pytest.skip("diffcp-clarabel cannot run here")
    inst = random_instance("1d-2lvl", batch=1, seed=0)

    def hessian_row(method, **options):
        scores = [s.clone().requires_grad_() for s in inst.scores]
        sol = ca.solve(scores, inst.h, method, temperature=inst.temps, **options)
        first = torch.autograd.grad(sol.dual_objective.sum(), scores, create_graph=True)
        return torch.autograd.grad(first[0][0, 0], scores, allow_unused=True)

    want = hessian_row("exact")
    try:
        got = hessian_row("cvxpylayers", backend="diffcp-clarabel")
    except (RuntimeError, NotImplementedError):  # refused: not silently wrong
        return
    assert all(g is not None for g in got), [g is None for g in got]
    assert max(float((a - b).abs().max()) for a, b in zip(got, want)) < 1e-6


# ---- ca_rev126 (strict xfail: review of eb4ed2c)

@pytest.mark.parametrize("method", ["exact", "softmax"])
def test_ca_rev126_meta_scores_are_refused_by_name_or_solved_for_their_shapes(method):
    """Run: ca.solve(scores, h, method) with scores = torch.empty((2, 4, 4), device="meta") and (2, 2, 2) on a
    4×4 → 2×2 hierarchy, check_finite at its default (True); likewise ConsistentAttention(h, "exact")(scores)
    (a model traced on the meta device for its shapes or deferred initialisation, which the package serves
    elsewhere: graph fingerprints and module states under torch.device("meta"), ca_rev98/ca_rev99).
    Expected: a ValueError/TypeError that names the meta device (as dual's init on meta is refused: "is on
    meta: it holds no values"), or meta probabilities of the right shapes (with check_finite=False they come
    back so).  Observed: NotImplementedError "Cannot copy out of meta tensor; no data!" from torch, raised in
    validation.score_peaks's .tolist()."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.empty((2,) + s, device="meta") for s in h.shapes]
    assert ca.solve(scores, h, method, check_finite=False).probs[0].is_meta  # holds today
    try:
        sol = ca.solve(scores, h, method)
    except (ValueError, TypeError) as exc:
        assert "meta" in str(exc)
        return
    assert [tuple(p.shape) for p in sol.probs] == [(2, 4, 4), (2, 2, 2)]


def test_implied_masks_reach_every_cell_that_no_feasible_point_fills():
    """dual.with_implied_masks on a 3-level chain 8 → 4 → 2: fine cells 0, 1 masked (the block of level-1
    cell 0), so that cell is masked, and with it nothing else (its level-2 block keeps cell 1); level-2 cell 1
    masked, so its level-1 block (cells 2, 3) and their fine cells 4..7 are masked.  Another sample, unmasked,
    is left as it is; the scores' values elsewhere are unchanged."""
    from convex_attention.dual import with_implied_masks

    h = ca.Hierarchy.from_parents([8, 4, 2], [[0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1]])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, n, generator=g, dtype=torch.float64) for n in (8, 4, 2)]
    scores[0][0, :2] = -math.inf
    scores[2][0, 1] = -math.inf
    got = with_implied_masks(scores, h)
    assert [torch.isneginf(s[0]).nonzero().flatten().tolist() for s in got] == [[0, 1, 4, 5, 6, 7], [0, 2, 3], [1]]
    for before, after in zip(scores, got):
        assert torch.equal(after[1], before[1])
        live = ~torch.isneginf(after[0])
        assert torch.equal(after[0][live], before[0][live])


def test_learned_dual_gives_a_cell_over_a_wholly_masked_block_nothing_at_any_finite_duals():
    """check_finite=False, a 4 → 2 chain whose fine block of coarse cell 0 is masked, duals N(0, 1): the coarse
    cell gets probability 0 (it had its softmax share, ca_rev126) and the consistency loss is finite (it was
    +inf); the score gradient is finite, 0 on the masked cells."""
    h = ca.Hierarchy.from_parents([4, 2], [[0, 0, 1, 1]])
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn(2, n, generator=g, dtype=torch.float64) for n in (4, 2)]
    scores[0][0, :2] = -math.inf
    scores = [s.requires_grad_() for s in scores]
    duals = [torch.randn(2, 2, generator=g, dtype=torch.float64)]
    sol = ca.solve(scores, h, "learned_dual", duals=duals, check_finite=False)
    assert float(sol.probs[1][0, 0]) == 0.0 and float(sol.probs[1][1, 0]) > 0
    loss = ca.consistency_loss(scores, duals, h, check_finite=False)
    assert bool(torch.isfinite(loss))
    grads = torch.autograd.grad(loss + sum((p * p).sum() for p in sol.probs), scores)
    assert all(bool(torch.isfinite(x).all()) for x in grads) and float(grads[0][0, :2].abs().max()) == 0.0


# ---- ca_rev128 (strict xfail: review of 5bbdc7a)


def test_ca_rev128_the_learned_dual_hot_path_reads_nothing_back(monkeypatch):
    import traceback

    h = ca.Hierarchy.grid([(16, 16), (8, 8), (4, 4)])
    scores = [torch.randn((2,) + s, requires_grad=True) for s in h.shapes]
    lam = [torch.zeros((1,) + s, requires_grad=True) for s in h.shapes[1:]]

    def step():
        sol = ca.solve(scores, h, "learned_dual", check_finite=False, temperature=[0.5, 1.0, 2.0], duals=lam)
        loss = sum((p * p.detach()).sum() for p in sol.probs)
        (loss + ca.consistency_loss(scores, lam, h, [0.5, 1.0, 2.0], check_finite=False)).backward()

    step()
    calls = _watch_host(monkeypatch)
    original = torch.equal

    def equal(*args, **kwargs):  # a Python bool out of two tensors: the values are read on the host
        if any("convex_attention" in f.filename for f in traceback.extract_stack()[:-1]):
            calls.append("equal")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "equal", equal)
    step()
    assert calls == []


def test_ca_rev128_learned_dual_traces_meta_scores_with_check_finite_off():
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.empty(2, 4, device="meta"), torch.empty(2, 2, device="meta")]
    duals = [torch.empty(2, 2, device="meta")]
    sol = ca.solve(scores, h, "learned_dual", duals=duals, check_finite=False)
    assert sol.probs[0].shape == (2, 4) and sol.probs[0].is_meta
    assert ca.consistency_loss(scores, duals, h, check_finite=False).is_meta


def test_ca_rev128_learned_duals_dual_objective_is_that_of_the_problem_its_maps_solve():
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.tensor([[-math.inf, -math.inf, 0.3, -0.2]], dtype=torch.float64),
              torch.tensor([[0.5, 0.1]], dtype=torch.float64)]
    duals = [torch.zeros(1, 2, dtype=torch.float64)]  # optimal: the coarse cell 0 is dead, cell 1 takes all
    sol = ca.solve(scores, h, "learned_dual", duals=duals, check_finite=False)
    exact = ca.solve(scores, h, "exact", check_finite=False)
    assert float(ca.metrics.max_abs_err(sol.probs, exact.probs).max()) < 1e-12
    assert float(ca.consistency_loss(scores, duals, h, check_finite=False)) < 1e-12
    torch.testing.assert_close(sol.dual_objective, exact.objective, rtol=0, atol=1e-9)


# ---- ca_rev131 (strict xfail: review of a83c028)


@pytest.mark.parametrize("method", ["softmax", "learned_dual", "exact"])
def test_ca_rev131_a_list_of_learned_temperatures_is_read_at_most_twice_per_call(monkeypatch, method):
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)])
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, *shape, generator=generator) for shape in h.shapes]
    duals = [torch.zeros(2, *h.shapes[b]) for _, b in h.edges] if method == "learned_dual" else None
    temps = [torch.tensor(t, requires_grad=True) for t in (0.7, 1.0, 1.3)]
    reads = []
    for name in ("tolist", "__float__", "item", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k: (
            reads.append(_name), _real(self, *a, **k))[1])
    ca.solve(scores, h, method, temps, duals=duals, check_finite=False)
    monkeypatch.undo()
    assert len(reads) <= 2, reads


# ---- ca_rev190 (review of 406d517; its strict xfails pass, one a documented limit)


def test_ca_rev190_a_field_of_a_solve_run_without_grad_is_differentiated_rightly_or_not_at_all():
    """Run: a (4,) -> (2,) hierarchy, float64 scores N(0, 1) batch 2 that require grad, learned duals N(0, 1)
    that require grad; ``sol = ca.solve(...)`` under ``torch.no_grad()`` (an evaluation pass), then
    ``sol.objective`` read with grad on.  Expected: the objective f(p(θ, λ)) either carries no gradient (the
    maps were made without one: refused) or its gradient is that of the same solve run with grad.
    Observed: it requires grad, and its gradient is the partial one with the maps held constant (``p``):
    0.16 off in the scores, and None in the duals (the solve with grad: up to 0.39 there)."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_(),
              torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_()]
    duals = [torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_()]
    with torch.no_grad():
        sol = ca.solve(scores, h, "learned_dual", duals=duals)
    objective = sol.objective
    if not objective.requires_grad:
        return  # refused: a loss built from it raises rather than take a wrong gradient
    got = torch.autograd.grad(objective.sum(), scores + duals, allow_unused=True)
    want = torch.autograd.grad(ca.solve(scores, h, "learned_dual", duals=duals).objective.sum(), scores + duals)
    for a, b in zip(got, want):
        assert a is not None
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("write", [
    pytest.param("data_mul_", marks=pytest.mark.xfail(
        strict=True, reason="ca_rev190, documented limit: a write into the values through .data keeps every version "
                            "counter autograd has (design.md §4); seeing it would take a copy of every input")),
    "data_assign"])
def test_ca_rev190_scores_changed_through_data_make_the_solution_stale(write):
    """Run: a (4,) -> (2,) hierarchy, float64 scores batch 2, ``sol = ca.solve(scores, h, "exact")``, then
    ``scores[0].data.mul_(3)`` (or ``scores[0].data = other``: the ``.data`` writes of EMA / weight-swap code),
    then ``sol.objective``.  Expected (design.md §4): StaleSolution, or the objective of the problem solved.
    Observed: the objective of the changed scores (e.g. 3.87 for 2.02), silently (``.data`` has its own
    version counter, which Solution._stale does not see)."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)]
    want = ca.solve([s.clone() for s in scores], h, "exact").objective
    sol = ca.solve(scores, h, "exact")
    if write == "data_mul_":
        scores[0].data.mul_(3)
    else:
        scores[0].data = 3 * scores[0].detach().clone()
    try:
        got = sol.objective
    except ca.StaleSolution:
        return
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ---- ca_rev192 (review of 43f3e12; its strict xfails now pass)


def test_ca_rev192_an_input_moved_to_shared_memory_does_not_make_the_solution_stale():
    """Run: a (4,) -> (2,) hierarchy, float64 scores batch 2, ``sol = ca.solve(scores, h, "exact")``, then
    ``scores[0].share_memory_()`` (what ``model.share_memory()`` does, and what sending the tensor through a
    torch.multiprocessing queue does to it), then ``sol.objective``.  Expected (design.md §4: StaleSolution only
    when an input was modified): the objective, as at c2c898e; the values and the version are unchanged.
    Observed: StaleSolution, since 43f3e12's Solution._stale compares untyped_storage().data_ptr(), which
    share_memory_ moves (the storage object stays the same one)."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)]
    want = ca.solve([s.clone() for s in scores], h, "exact").objective
    sol = ca.solve(scores, h, "exact")
    version = scores[0]._version
    scores[0].share_memory_()
    assert scores[0]._version == version and scores[0].is_shared()
    torch.testing.assert_close(sol.objective, want, rtol=0, atol=0)


# ---- ca_rev204 (mutation review of 31dcde3)


def test_ca_rev204_objective_of_a_dual_solve_with_a_given_map_is_differentiated_in_the_given_map():
    """Kills solve.Solution._at_optimum without ``and not self.given``: the envelope path (maps detached) then gave
    the objective no gradient in the given map, silently 0, where its derivative is the constraint's multiplier.
    Checked against a central difference along a direction that keeps the given map summing to one."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(4)
    s0 = torch.randn(1, 4, generator=g, dtype=torch.float64)
    q = torch.tensor([[0.3, 0.7]], dtype=torch.float64, requires_grad=True)

    def f(given):
        return ca.solve([s0, None], h, "dual", temperature=[0.7, 1.0], given={1: given}, tol=1e-12).objective

    (grad,) = torch.autograd.grad(f(q).sum(), q)
    d, eps = torch.tensor([[1.0, -1.0]], dtype=torch.float64), 1e-5
    with torch.no_grad():
        fd = (f(q + eps * d) - f(q - eps * d)) / (2 * eps)
    assert abs(float(fd)) > 0.1
    torch.testing.assert_close((grad * d).sum(), fd.sum(), rtol=1e-6, atol=1e-8)


def test_ca_rev204_exact_objective_second_derivative_is_the_jacobian_of_its_maps():
    """Kills solve.Solution._at_optimum without ``not record.second_order`` (the envelope path for ``"exact"``,
    whose backward is second order): value and first derivative stay right, but the zero-valued offset term
    doubles the Hessian (2·∂p/∂θ).  At the optimum ∂f*/∂θ₀ = p₀, so ∂²f*/∂θ₀² is the Jacobian of p₀ in θ₀."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(5)
    s0 = torch.randn(1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s1 = torch.randn(1, 2, generator=g, dtype=torch.float64)
    sol = ca.solve([s0, s1], h, "exact", temperature=[0.5, 1.0])
    (grad,) = torch.autograd.grad(sol.objective.sum(), s0, create_graph=True)
    torch.testing.assert_close(grad, sol.probs[0].detach(), rtol=1e-10, atol=1e-12)
    hess = torch.stack([torch.autograd.grad(grad[0, i], s0, retain_graph=True)[0][0] for i in range(4)])
    jac = torch.stack([torch.autograd.grad(sol.probs[0][0, i], s0, retain_graph=True)[0][0] for i in range(4)])
    assert float(jac.abs().max()) > 0.01
    torch.testing.assert_close(hess, jac, rtol=1e-8, atol=1e-10)


def test_ca_rev204_dual_objective_with_create_graph_is_refused_not_a_silent_first_order_graph():
    """Kills the removal of the zero-valued offset term in solve.Solution._objective: without it a loss on
    ``"dual"``'s objective never reached the method's backward, and ``create_graph=True`` gave a gradient whose
    own derivative silently lacks the maps' second-order term, where the docstring promises it is refused as for
    any loss on the maps."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(6)
    scores = [torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_(),
              torch.randn(2, 2, generator=g, dtype=torch.float64)]
    sol = ca.solve(scores, h, "dual", tol=1e-10)
    with pytest.raises(NotImplementedError, match="second-order differentiation through method 'dual'"):
        torch.autograd.grad(sol.objective.sum(), scores[0], create_graph=True)


def test_ca_rev204_dual_objective_gradient_is_its_maps_exactly_even_at_a_loose_tolerance():
    """Kills ``fixed = list(self.probs)`` (maps not detached) in solve.Solution._objective: the envelope theorem
    (∂f*/∂θ_k = p_k) holds bit for bit only with the maps held fixed; through the implicit backward the gradient
    picks up the stationarity error of a solve stopped at ``tol=1e-3``."""
    h = ca.Graph.axial((3, 3))
    g = torch.Generator().manual_seed(7)
    scores = [(3 * torch.randn(2, *s, generator=g, dtype=torch.float64)).requires_grad_() for s in h.shapes]
    sol = ca.solve(scores, h, "dual", tol=1e-3, gap_tol=1e-3, newton=False, strict=False)
    grads = torch.autograd.grad(sol.objective.sum(), scores)
    for gr, p in zip(grads, sol.probs):
        torch.testing.assert_close(gr, p.detach(), rtol=0, atol=1e-14)


def test_ca_rev204_an_inference_input_changed_by_a_hair_is_still_stale():
    """Kills a tolerance in solve.Solution._stale's comparison of inference inputs with their copies
    (``allclose(rtol=0, atol=0)`` loosened): scores changed by 1e-6 in place under inference mode gave the
    objective of the changed problem.  Refused, or the value of the problem solved, bit for bit."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    with torch.inference_mode():
        scores = [torch.tensor([[0.5, -1.0, 2.0, 0.3]], dtype=torch.float64),
                  torch.tensor([[0.1, -0.4]], dtype=torch.float64)]
        want = ca.solve([s.clone() for s in scores], h, "exact", temperature=[0.5, 1.0]).objective
        sol = ca.solve(scores, h, "exact", temperature=[0.5, 1.0])
        scores[0].add_(1e-6)
        try:
            got = sol.objective
        except ca.StaleSolution:
            return
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_ca_rev204_a_tensor_in_a_lazy_duals_partials_keywords_is_watched():
    """Kills solve._tensors_in reading only a ``functools.partial``'s positional arguments: a registered method
    whose lazy duals read an option tensor by keyword gave, after that tensor changed in place, duals of another
    problem instead of StaleSolution (design.md §4: the lazy fields read inputs that are not copied)."""
    import functools

    from convex_attention.methods import REGISTRY, Method, register_method

    def lazy(*, lam):
        return [lam * 1.0]

    def fn(scores, h, temps, duals, options):
        return [torch.softmax(s, -1) for s in scores], functools.partial(lazy, lam=options["knob"]), {}

    register_method(Method("kw_lazy", fn, "lazy duals by keyword", options=frozenset({"knob"}), structures="graph"))
    try:
        h = ca.Hierarchy.grid([(4,), (2,)])
        knob = torch.zeros(2, 2, dtype=torch.float64)
        sol = ca.solve([torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)], h,
                       "kw_lazy", knob=knob)
        knob.add_(1.0)
        with pytest.raises(ca.StaleSolution, match=r"Solution\.duals"):
            _ = sol.duals
    finally:
        del REGISTRY["kw_lazy"]


def test_ca_rev204_a_given_map_changed_in_place_makes_the_solution_stale():
    """Kills solve.Solution.__init__ not watching ``given``: design.md §4 and Solution's docstring name the given
    maps among the inputs whose in-place change makes a first read of a lazy field raise StaleSolution; unwatched,
    ``q.mul_`` after the solve went unnoticed."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    s0 = torch.randn(1, 4, dtype=torch.float64)
    q = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    sol = ca.solve([s0, None], h, "dual", given={1: q})
    q.mul_(1.0)
    with pytest.raises(ca.StaleSolution, match=r"Solution\.dual_objective|Solution\.duals"):
        _ = sol.dual_objective
    with pytest.raises(ca.StaleSolution, match=r"Solution\.objective"):
        _ = sol.objective


def test_ca_rev204_a_learned_temperature_stepped_in_place_makes_the_solution_stale():
    """Kills solve.Solution.__init__ not watching ``temperature``: after an optimiser step on a learned
    temperature (design.md §4's own example), the first read of the objective described the problem at the new
    temperature (the maps' entropy weighted by the stepped τ) instead of raising StaleSolution.  (``"exact"``'s lazy
    duals hold the temperature too, so the mutant shows on ``"dual"``.)"""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    tau = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
    sol = ca.solve(scores, h, "dual", temperature=tau)
    with torch.no_grad():
        tau.mul_(2.0)
    with pytest.raises(ca.StaleSolution, match=r"Solution\.objective"):
        _ = sol.objective


def test_ca_rev204_a_solution_pickled_with_bare_cached_values_reads_them_back():
    """Kills the removal of solve.Solution.__setstate__'s conversion of a cache of bare values (Solutions pickled
    before the cache recorded each value's grad mode): its objective came back as the first sample's entry only."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    sol = ca.solve([torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)], h, "exact")
    objective = sol.objective
    state = sol.__getstate__()
    state["_cache"] = {k: v[0] for k, v in state["_cache"].items()}  # the older format
    old = ca.Solution.__new__(ca.Solution)
    old.__setstate__(state)
    assert old.objective is objective


def test_ca_rev204_consistency_loss_detach_target_stops_the_gradient_through_the_coarse_map():
    """Kills solve.consistency_loss passing ``detach_target=False`` whatever it is given: on two levels the coarse
    scores enter only b = p₁(λ), so with ``detach_target=True`` their gradient is zero (none), and without it not."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(8)
    scores = [torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_(),
              torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_()]
    duals = [torch.randn(2, 2, generator=g, dtype=torch.float64)]
    (free,) = torch.autograd.grad(ca.consistency_loss(scores, duals, h), scores[1])
    assert float(free.abs().max()) > 1e-3
    (held,) = torch.autograd.grad(ca.consistency_loss(scores, duals, h, detach_target=True), scores[1],
                                  allow_unused=True)
    assert held is None or bool((held == 0).all()), held


# ---- ca_rev221 (hostile review: the layer inside a user's model): what it found undocumented

@pytest.mark.parametrize("method", ["softmax", "exact", "dual", "learned_dual", "cvxpylayers"])
def test_an_empty_batch_is_refused_by_every_method_as_design_md_says(method):
    """design.md §4: B ≥ 1, an empty batch a ValueError for every method (torch.softmax would
    return empty maps); on a chain and on a graph with a map of two coarsenings."""
    chain = ca.Hierarchy.grid([(4, 4), (2, 2)])
    two = ca.Graph.from_edges([4, 2, 2], [(0, 1, torch.tensor([0, 0, 1, 1])), (0, 2, torch.tensor([0, 1, 0, 1]))])
    for h, shapes in ((chain, [(4, 4), (2, 2)]), (two, [(4,), (2,), (2,)])):
        if method == "exact" and h is two:
            continue  # refused for the structure first (a map of two coarsenings)
        scores = [torch.zeros(0, *s) for s in shapes]
        duals = {"duals": [torch.zeros(0, *h.shapes[e[1]]) for e in h.edges]} if method == "learned_dual" else {}
        with pytest.raises(ValueError, match="^scores have batch size 0$"):
            ca.solve(scores, h, method, **duals)


def test_a_wholly_masked_block_leaves_other_samples_losses_finite_except_through_dual_objective():
    """design.md §4: where a block is wholly masked no finite dual exists; a loss that leaves the
    sample out has finite gradients through probs, objective and duals, and NaN ones in that
    sample's scores through dual_objective (torch.logsumexp's own behaviour on a masked row)."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    g = torch.Generator().manual_seed(0)
    base = [torch.randn((2, 4, 4), generator=g, dtype=torch.float64), torch.randn((2, 2, 2), generator=g,
                                                                                  dtype=torch.float64)]
    base[0][1, :2, :2] = -math.inf
    for read in ("probs", "objective", "duals", "dual_objective"):
        scores = [s.clone().requires_grad_() for s in base]
        sol = ca.solve(scores, h, "exact", temperature=[0.7, 1.3], check_finite=False)
        value = getattr(sol, read)
        loss = value[0] if read in ("objective", "dual_objective") else sum((v[0] ** 2).sum() for v in value)
        grads = torch.autograd.grad(loss, scores)
        assert all(bool(torch.isfinite(x[0]).all()) for x in grads), read  # the sample the loss reads
        finite = all(bool(torch.isfinite(x[1]).all()) for x in grads)
        assert finite == (read != "dual_objective"), read
        if read != "dual_objective":
            assert all(bool((x[1] == 0).all()) for x in grads), read


# ---- ca_rev226 (design.md §4 truth audit, part 2): which fields are lazy


def test_ca_rev226_the_duals_a_solver_returns_stay_readable_after_an_input_changes_in_place():
    """design.md §4 (the Solution): ``duals`` is computed when first read, and refused after an in-place change of
    an input, where it is lazy (``exact``, ``learned_dual``); ``dual`` returns its solver's duals with the maps
    (the solution of the problem solved), which stay readable and unchanged after the change, while its
    ``objective`` and ``dual_objective`` (which read the inputs) raise StaleSolution."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn((3,) + s, generator=generator, dtype=torch.float64) for s in h.shapes]
    sol = ca.solve(scores, h, "dual")
    before = [d.clone() for d in sol.duals]
    scores[0].mul_(3)
    for got, want in zip(sol.duals, before):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for field in ("objective", "dual_objective"):
        with pytest.raises(ca.StaleSolution, match=rf"Solution\.{field}"):
            getattr(sol, field)
    other = [torch.randn((3,) + s, generator=generator, dtype=torch.float64) for s in h.shapes]
    lazy = ca.solve(other, h, "exact")
    other[0].mul_(3)
    with pytest.raises(ca.StaleSolution, match=r"Solution\.duals"):
        _ = lazy.duals


# ---- ca_rev225 (design.md §4 truth audit, part 1): an empty given dict is no map for every method

@pytest.mark.parametrize("method", ["cvxpylayers", "learned_dual"])
def test_ca_rev225_an_empty_given_dict_gives_no_map_to_the_other_methods_too(method):
    """design.md §4 `given`: "an empty dict gives no map: every method takes it, as None"; the test
    above covers softmax, exact and dual only."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)]
    duals = [torch.randn(2, dtype=torch.float64)] if method == "learned_dual" else None
    plain = ca.solve(scores, h, method, duals=duals)
    empty = ca.solve(scores, h, method, duals=duals, given={})
    assert empty.given == ()
    assert all(torch.equal(a, b) for a, b in zip(plain.probs, empty.probs)), method


@pytest.mark.parametrize("method", ca.METHODS)
def test_meta_scores_with_the_checks_off_are_traced_or_refused_by_the_methods_record(method):
    """design.md §4: check_finite=False traces shapes through the torch-operation methods (the
    record's shape_tracing); dual and cvxpylayers, which solve on the values, refuse meta scores
    naming those (they had failed with torch's "Tensor.item() cannot be called on meta tensors")."""
    from convex_attention.methods import get_method

    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.zeros(2, 4, 4, device="meta"), torch.zeros(2, 2, 2, device="meta")]
    duals = {"duals": [torch.zeros(2, 2, 2, device="meta")]} if get_method(method).needs_duals else {}
    if get_method(method).shape_tracing:
        sol = ca.solve(scores, h, method, check_finite=False, **duals)
        assert [tuple(p.shape) for p in sol.probs] == [(2, 4, 4), (2, 2, 2)] and sol.probs[0].is_meta
    else:
        with pytest.raises(ValueError, match=rf"^method '{method}' solves numerically on the scores' values, and "
                                             r"meta tensors hold none; trace shapes with method 'softmax' or 'exact' "
                                             r"or 'learned_dual'$"):
            ca.solve(scores, h, method, check_finite=False, **duals)
    assert {m for m in ca.METHODS if get_method(m).shape_tracing} == {"softmax", "exact", "learned_dual"}


def test_the_meta_refusal_with_the_checks_on_names_the_registrys_shape_tracing_methods():
    """validation's message (below the registry, so written out there) and the registry's
    shape_tracing flag are one fact in two places: they must name the same methods."""
    import re

    from convex_attention.methods import get_method

    h = ca.Hierarchy.grid([(4,), (2,)])
    with pytest.raises(ValueError, match="meta device") as err:
        ca.solve([torch.zeros(1, 4, device="meta"), torch.zeros(1, 2, device="meta")], h, "softmax")
    named = re.search(r"torch operations: ([a-z_, ]+)\)", str(err.value)).group(1).split(", ")
    assert set(named) == {m for m in ca.METHODS if get_method(m).shape_tracing}


# ---- ca_rev242 (torch.func on torch 2.7)
@pytest.mark.parametrize("method", ["softmax", "learned_dual", "consistency_loss"])
def test_torch_func_works_with_a_list_of_0d_tensor_temperatures(method):
    """docs/design.md §4 (torch.func): grad and jvp work for softmax, learned_dual and consistency_loss
    at every accepted temperature, a list of 0-d tensors included; on torch 2.7.1 its validation read
    the list with .tolist() of a wrapped tensor and raised "Cannot access data pointer" (passes
    trivially on the torch versions that read such a tensor).  Both must be autograd's."""
    inst = random_graph_instance("axial", batch=2)
    h = inst.h
    g = torch.Generator().manual_seed(4)
    lam = [torch.randn((2,) + h.shapes[b], generator=g, dtype=torch.float64) for _, b in h.edges]
    w = torch.randn(inst.scores[0].shape, generator=g, dtype=torch.float64)
    taus = [torch.tensor(t, dtype=torch.float64) for t in inst.temps]

    def out(x, t0):
        temps = [t0] + taus[1:]
        if method == "consistency_loss":
            return ca.consistency_loss([x] + inst.scores[1:], lam, h, temperature=temps)
        kw = {"duals": lam} if method == "learned_dual" else {}
        return (ca.solve([x] + inst.scores[1:], h, method, temperature=temps, **kw).probs[0] * w).sum()

    x, t0 = inst.scores[0].clone().requires_grad_(), taus[0].clone().requires_grad_()
    want_x, want_t = torch.autograd.grad(out(x, t0), (x, t0))
    torch.testing.assert_close(torch.func.grad(out)(inst.scores[0], taus[0]), want_x, rtol=1e-10, atol=1e-12)
    direction = torch.tensor(0.5, dtype=torch.float64)
    _, tangent = torch.func.jvp(lambda t: out(inst.scores[0], t), (taus[0],), (direction,))
    torch.testing.assert_close(tangent, 0.5 * want_t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["dual", "cvxpylayers"])
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # (the input checks become constants: expected)
@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # (a DeprecationWarning on 2.13, a FutureWarning on 2.15)
def test_jit_trace_of_a_method_that_iterates_on_the_values_is_refused_naming_those_it_records(method):
    """torch.jit.trace of a model solving with 'dual' failed inside torch ("INTERNAL ASSERT FAILED ... aten::full"),
    with 'cvxpylayers' in the trace's own check: both iterate on the values, so a trace would replay one input's
    solve (a review). Refused before any work; a method it records traces, and its trace solves new inputs."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])

    class Model(torch.nn.Module):
        def __init__(self, method):
            super().__init__()
            self.method = method

        def forward(self, fine, coarse):
            return ca.solve([fine, coarse], h, method=self.method, temperature=[1.0, 0.5]).probs[0]

    example = (torch.randn(2, 4, 4), torch.randn(2, 2, 2))
    with pytest.raises(TypeError, match=f"method '{method}' cannot be recorded by torch.jit.trace") as refused:
        torch.jit.trace(Model(method), example)
    assert "with method 'softmax' or 'exact' or 'learned_dual'" in str(refused.value)
    traced = torch.jit.trace(Model("exact"), example, check_trace=False)
    other = (torch.randn(3, 4, 4), 3 * torch.randn(3, 2, 2))
    torch.testing.assert_close(traced(*other), Model("exact")(*other))


# ---- ca_rev287 (mutation testing of solve.py)


def test_ca_rev287_a_data_swap_to_another_offset_of_the_same_storage_makes_the_solution_stale():
    """Kills ``_storage_of`` returning ``(storage, 0)`` (the offset dropped): ``scores[0].data = buf[8:]`` where the
    solve read ``buf[:8]`` keeps the version (``.data`` assignment) and the storage object (the same buffer), so only
    the offset tells; the mutant read the objective of the other half of the buffer silently."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(16, generator=g, dtype=torch.float64)
    coarse = torch.randn(2, 2, generator=g, dtype=torch.float64)
    fine = buf[:8].view(2, 4)
    sol = ca.solve([fine, coarse], h, "exact")
    version = fine._version
    fine.data = buf[8:].view(2, 4)
    assert fine._version == version and fine.untyped_storage()._cdata == buf.untyped_storage()._cdata
    with pytest.raises(ca.StaleSolution):
        _ = sol.objective


def test_ca_rev287_an_inference_input_holding_nan_is_not_stale_when_unchanged():
    """Kills ``equal_nan=False`` in ``Solution._stale``'s comparison of inference inputs with their copies: a batch
    solved under ``torch.inference_mode()`` with ``check_finite=False`` whose sample 1 holds a NaN score (NaN != NaN)
    was always stale, so reading the objective raised StaleSolution though nothing changed; sample 0's objective is
    that of sample 0 solved alone (1.744...), sample 1's NaN."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)]
    want = ca.solve([s[:1] for s in scores], h, "softmax").objective
    scores[0][1, 2] = float("nan")
    with torch.inference_mode():
        frozen = [s.clone() for s in scores]
    got = ca.solve(frozen, h, "softmax", check_finite=False).objective
    torch.testing.assert_close(got[:1], want, rtol=0, atol=0)
    assert math.isnan(float(got[1]))


def test_ca_rev287_the_envelope_objective_of_a_first_order_exact_method_is_finite_with_masked_cells(monkeypatch):
    """Kills ``offset = s - s.detach()`` (the ``torch.where(isfinite)`` dropped) in ``Solution._objective``: no
    built-in method on the envelope path (exact in its record, first-order backward: dual, cvxpylayers) takes a −∞
    score, but a registered one may (design.md: ``register_method``).  Here exact's closed form registered as first
    order, a −∞ cell, ``check_finite=False``: −∞ − (−∞) made the zero-valued offset term NaN and the objective
    [nan, 3.67]; it is exact's [0.942, 3.670], and its gradient is the maps exactly."""
    from convex_attention.methods import REGISTRY, Method, get_method
    monkeypatch.setitem(REGISTRY, "ca_rev287_first_order_exact", Method(
        "ca_rev287_first_order_exact", get_method("exact").function, "exact's closed form, recorded first order",
        exact=True, consistent=True, structures="forest"))
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(2)
    s0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    s0[0, 1] = -math.inf
    scores = [s0.requires_grad_(), torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)]
    want = ca.solve(scores, h, "exact", check_finite=False).objective
    sol = ca.solve(scores, h, "ca_rev287_first_order_exact", check_finite=False)
    torch.testing.assert_close(sol.objective, want, rtol=0, atol=1e-12)
    for grad, p in zip(torch.autograd.grad(sol.objective.sum(), scores), sol.probs):
        torch.testing.assert_close(grad, p.detach(), rtol=0, atol=0)


def test_ca_rev287_dual_objective_gradient_holds_the_duals_fixed_even_at_a_loose_tolerance():
    """Kills ``if True:`` for ``if not self._at_optimum():`` in ``Solution._dual_objective`` (the duals not held
    fixed): at ``tol=1e-3`` the gradient of g(λ) then picks up ∂g/∂λ·∂λ/∂θ through dual's implicit backward, which
    is not 0 off the optimum; held fixed it is ∂g/∂θ at the returned duals, bit for bit."""
    from convex_attention import metrics
    h = ca.Graph.axial((3, 3))
    g = torch.Generator().manual_seed(7)
    scores = [(3 * torch.randn(2, *s, generator=g, dtype=torch.float64)).requires_grad_() for s in h.shapes]
    sol = ca.solve(scores, h, "dual", tol=1e-3, gap_tol=1e-3, newton=False, strict=False)
    grads = torch.autograd.grad(sol.dual_objective.sum(), scores)
    fixed = [d.detach() for d in sol.duals]
    wants = torch.autograd.grad(metrics.dual_objective(scores, fixed, h, sol.temperature, None).sum(), scores)
    for grad, want in zip(grads, wants):
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-14)


def test_ca_rev287_the_forward_mode_refusal_says_carries_for_one_tensor_and_carry_for_several():
    """Kills ``len(tangent) != 1`` in solve's forward-mode refusal: its message read "scores[0] carry" and
    "scores[0] and scores[1] carries"."""
    import torch.autograd.forward_ad as fwad
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(4)
    scores = [torch.randn(2, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)]
    with fwad.dual_level():
        tangents = [fwad.make_dual(s, torch.ones_like(s)) for s in scores]
        with pytest.raises(NotImplementedError, match=r"'exact'\): scores\[0\] carries a forward-mode tangent"):
            ca.solve([tangents[0], scores[1]], h, "exact")
        with pytest.raises(NotImplementedError, match=r"'exact'\): scores\[0\] and scores\[1\] carry a forward-mode"):
            ca.solve(tangents, h, "exact")


def test_ca_rev287_consistency_loss_of_half_precision_scores_is_computed_in_float32():
    """Kills ``consistency_loss_unchecked(list(scores), ...)`` (the scores not cast to the compute dtype): with
    float16 scores at τ = 0.05 the loss was computed partly in half precision, 131.3417 against 131.3319 for the same
    values as float32; cast, it is the float32 loss bit for bit."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    g = torch.Generator().manual_seed(5)
    scores = [(torch.randn(2, 4, generator=g) * 3).half(), (torch.randn(2, 2, generator=g) * 3).half()]
    duals = [torch.randn(2, 2, generator=g) * 2]
    got = ca.consistency_loss(scores, duals, h, temperature=0.05)
    want = ca.consistency_loss([s.float() for s in scores], duals, h, temperature=0.05)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
