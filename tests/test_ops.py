"""convex_attention._ops: the small tensor operations every solver shares."""
import functools

import pytest
import torch

from convex_attention import _ops


def test_centre_removes_the_per_sample_mean():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    c = _ops.centre(x)
    assert torch.allclose(c.mean((1, 2)), torch.zeros(3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(c - x, (c - x)[:, :1, :1].expand_as(x))  # one constant per sample
    assert _ops.sample_dims(x) == (1, 2)


def test_half_precision_is_computed_in_float32():
    assert _ops.compute_dtype(torch.float16) == torch.float32 == _ops.compute_dtype(torch.bfloat16)
    assert _ops.compute_dtype(torch.float64) == torch.float64
    assert _ops.upcast(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32


def test_level_softmax_matches_torch_and_survives_extreme_temperatures():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    for tau in (1.0, 0.5, 3.0, torch.tensor(0.7, dtype=torch.float64)):
        want = torch.softmax(x.flatten(1) / tau, 1).view_as(x)
        assert torch.allclose(_ops.level_softmax(x, tau), want, atol=1e-14)
    assert torch.allclose(_ops.level_softmax(x, 0.5, log=True).exp(), _ops.level_softmax(x, 0.5), atol=1e-14)
    tiny = _ops.level_softmax(1e4 * x.float(), 1e-30)  # x / tau alone would overflow
    assert bool(torch.isfinite(tiny).all()) and torch.allclose(tiny.flatten(1).sum(1), torch.ones(2))
    half = _ops.level_softmax(x.half(), 1e-3)
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())


def test_level_softmax_shifts_each_sample_so_large_float32_scores_cannot_overflow():
    """Scores within float32's score limit at a temperature below one: x / tau alone would be
    ±inf; the result is finite for every accepted temperature, sample by sample."""
    x = torch.tensor([[1e37, 0.0, -1e37], [0.0, -1.0, -2.0]])
    for tau in (0.01, torch.tensor(0.01)):
        p = _ops.level_softmax(x, tau)
        want = torch.softmax(x.double() / 0.01, 1).float()  # float64 holds x / tau
        assert bool(torch.isfinite(p).all()) and torch.allclose(p, want)


def test_the_temperature_gradient_is_that_of_x_over_tau():
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ops.divide_by_temperature, (x, tau))
    assert torch.autograd.gradgradcheck(_ops.divide_by_temperature, (x, tau))  # second order works
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    for value in (1.0, 3.0, 0.4):  # at tau = 1 too, where no division is needed for a float
        t = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: _ops.level_softmax(x, t), (t,))
        assert torch.autograd.gradcheck(lambda t: _ops.level_softmax(x, t, log=True), (t,))


def test_the_temperature_gradient_stays_finite_at_tiny_temperatures():
    """At tau = 1e-36 in float32 x / tau² overflows and x / tau is -inf in one cell; the gradient
    must not become 0 · inf = NaN (a cell's share is 0 where the incoming gradient is 0)."""
    x = torch.tensor([[0.0, -1e4, 1.0]])
    for cell in (0, 2):
        tau = torch.tensor(1e-36, requires_grad=True)
        (g,) = torch.autograd.grad(_ops.level_softmax(x, tau)[0, cell], tau)
        assert bool(torch.isfinite(g)) and g.dtype == torch.float32


@pytest.mark.parametrize("on", ["x", "tau", "both"])
def test_divide_by_temperature_forward_mode_is_the_derivative(on):
    """_DivideByTemperature's jvp (a learned temperature's forward mode raised NotImplementedError: ca_rev123):
    the tangent of x / τ along (dx, dτ) is central differences' to 1e-8, through learned_dual's softmax too."""
    import torch.autograd.forward_ad as fwad

    from convex_attention._ops import divide_by_temperature, level_softmax

    g = torch.Generator().manual_seed(0)
    x, dx = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    dtau = torch.tensor(0.3 if on != "x" else 0.0, dtype=torch.float64)
    dx = dx if on != "tau" else torch.zeros_like(dx)
    for fn in (divide_by_temperature, level_softmax):
        eps = 1e-6
        with torch.no_grad():
            want = (fn(x + eps * dx, tau + eps * dtau) - fn(x - eps * dx, tau - eps * dtau)) / (2 * eps)
        with fwad.dual_level():
            got = fwad.unpack_dual(fn(fwad.make_dual(x, dx), fwad.make_dual(tau, dtau))).tangent
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


# ---- ca_rev124 (strict xfail: review of 4e56f86)

def test_ca_rev124_divide_by_temperature_output_is_freed_by_reference_counting():
    """Run: with the cyclic collector off, 20 calls y = divide_by_temperature(x, τ) (x (8, 16) float32,
    τ an nn.Parameter, 0.7), each followed by y.sum().backward() and ``del y``; a weakref to each y.
    Expected (as at fee9163, and for every torch op): every y freed when its last reference goes (0 of
    20 alive).  Observed: 20 of 20 alive until gc runs: setup_context stores ``ctx.forward_values =
    (output, tau)``, a cycle output -> grad_fn (ctx) -> output that reference counting cannot free (1000
    level_softmax calls on a (64, 1024) float32 x without backward grew resident memory by 121 MB,
    6 MB at fee9163; on CUDA such maps stay allocated until a collection)."""
    import gc
    import weakref

    tau = torch.nn.Parameter(torch.tensor(0.7))
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    refs = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(20):
            y = _ops.divide_by_temperature(x, tau)
            y.sum().backward()
            refs.append(weakref.ref(y))
            del y
        alive = sum(r() is not None for r in refs)
    finally:
        if enabled:
            gc.enable()
        gc.collect()
    assert alive == 0, f"{alive} of {len(refs)} outputs alive"


@pytest.mark.parametrize("dtype,value", [(torch.float32, 1e-20), (torch.float64, 1e-160)])
def test_ca_rev124_forward_mode_temperature_tangent_stays_finite_at_small_temperatures(dtype, value):
    """Run: x = [[0, 1, -2, 0.5]], τ an nn.Parameter at 1e-20 (float32) / 1e-160 (float64), both within
    validation.temperature_range; level_softmax(x, τ) under torch.autograd.forward_ad with the tangent
    dτ = 1 on τ.  Expected: the derivative, finite, as reverse mode gives it (torch.autograd.grad of each
    cell in τ: 0; _DivideByTemperature's docstring: 'whose τ-derivative never forms x / τ²', the
    0·inf = NaN it avoids).  Observed: tangent [nan, nan, nan, nan]; the same through
    ca.solve(..., 'learned_dual') with a Parameter temperature ([1e-20, 1]).  The new jvp forms
    out·(dτ/τ) = x·dτ/τ², which overflows, and softmax's tangent multiplies it by the 0 probabilities.
    (With dτ = τ the tangent is finite: 0.)"""
    import torch.autograd.forward_ad as fwad

    x = torch.tensor([[0.0, 1.0, -2.0, 0.5]], dtype=dtype)
    tau = torch.nn.Parameter(torch.tensor(value, dtype=dtype))
    reverse = torch.stack([torch.autograd.grad(_ops.level_softmax(x, tau)[0, i], tau)[0] for i in range(4)])
    assert bool(torch.isfinite(reverse).all())
    with fwad.dual_level():
        out = _ops.level_softmax(x, fwad.make_dual(tau, torch.tensor(1.0, dtype=dtype)))
        tangent = fwad.unpack_dual(out).tangent
    assert bool(torch.isfinite(tangent).all()), tangent
    torch.testing.assert_close(tangent.reshape(-1), reverse)


def test_temperature_floats_reads_a_list_of_temperature_tensors_at_once(monkeypatch):
    """Three 0-d temperature tensors (a learned one per map) are read in one tolist (one host synchronisation on
    CUDA), not one float() each (ca_rev128 counted 3 per call of amortised duals on a graph); mixed floats and
    tensors keep their order."""
    reads = []
    for name in ("tolist", "__float__", "item"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k: (
            reads.append(_name), _real(self, *a, **k))[1])
    temps = [torch.tensor(0.5), 2.0, torch.tensor(1.5, requires_grad=True)]
    assert _ops.temperature_floats(temps) == [0.5, 2.0, 1.5]
    assert reads == ["tolist"]


# ---- ca_rev211 (mutation review of ef12afd, baselines, examples, generators, structures, ops):
#      tests that kill surviving mutants

def test_ca_rev211_less_max_takes_each_sample_s_own_maximum_off_and_passes_gradients_unchanged():
    x = torch.tensor([[1.0, 3.0], [10.0, -2.0]], dtype=torch.float64, requires_grad=True)
    out = _ops.less_max(x)
    assert out.tolist() == [[-2.0, 0.0], [0.0, -12.0]]
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.tolist() == [[1.0, 1.0], [1.0, 1.0]]  # the maximum is detached: a constant per sample


def test_ca_rev211_level_softmax_below_temperature_1_cannot_overflow_float32():
    x = torch.tensor([[3e38, 2.9e38, 0.0]], dtype=torch.float32)
    p = _ops.level_softmax(x, 0.75)
    assert torch.isfinite(p).all() and float(p[0, 0]) == 1.0


def test_ca_rev211_gradient_tolerances_and_the_second_order_floor_are_the_documented_values():
    assert _ops.gradient_rtol(torch.float64) == 1e-6 and _ops.gradient_rtol(torch.float32) == 1e-3
    assert _ops.gradient_rtol(torch.float16) == 1e-3  # float32's for any other dtype
    assert _ops.second_order_temperature_floor(torch.float32) == pytest.approx(5.4e-20, rel=1e-2)
    assert _ops.second_order_temperature_floor(torch.float64) == pytest.approx(7.5e-155, rel=1e-2)


def test_ca_rev211_overflowed_refuses_a_gradient_with_any_non_finite_entry():
    assert _ops.overflowed("who", 1e-30, torch.float32, torch.tensor([1.0, 2.0])) is None
    why = _ops.overflowed("who", 1e-30, torch.float32, torch.tensor([1.0, float("inf")]))
    assert why is not None and why.startswith("who: a second derivative overflowed") and "float64" in why


def test_ca_rev211_guard_below_floor_guards_when_the_coldest_temperature_is_below_the_floor():
    x = torch.ones(2, requires_grad=True)
    (kept,) = _ops.guard_below_floor([x], [1.0, 0.5], torch.float32, "who")
    assert kept is x
    (guarded,) = _ops.guard_below_floor([x], [1.0, 1e-30], torch.float32, "who")
    assert guarded is not x and type(guarded.grad_fn).__name__ == "FirstOrderOnlyBackward"


def test_ca_rev211_named_rows_are_the_callers_names():
    assert _ops.named([0, 2]) == [0, 2]
    assert _ops.named([0, 2], torch.tensor([5, 6, 7])) == [5, 7]


def test_ca_rev211_an_int64_temperature_beside_a_float16_one_is_read_exactly():
    values = _ops.tensor_values_read_at_once([torch.tensor(2049), torch.tensor(0.5, dtype=torch.float16), 3.0])
    assert values == [2049.0, 0.5, 3.0]


def test_ca_rev211_meta_temperatures_stand_in_as_ones():
    assert _ops.temperature_floats(torch.empty(3, device="meta")) == [1.0, 1.0, 1.0]


def test_a_second_derivative_that_overflows_along_another_path_is_refused_not_returned_as_inf():
    """FirstOrderOnly judges a later derivative that reaches its input by a path it did not
    guard (ca_rev211's open mutant O16: without it the second derivative below came back inf).
    d²/dx² of c·x² is 2c, which float32 cannot hold for c = 3e38, while the first derivative
    2c·x (6e28 at x = 1e-10) is finite."""
    x = torch.tensor([1e-10], dtype=torch.float32, requires_grad=True)
    refusal = functools.partial(_ops.overflowed, "who", 1e-30, torch.float32)
    y = _ops.FirstOrderOnly.apply(x, refusal)
    first, = torch.autograd.grad(((3e38 * y) * y).sum(), x, create_graph=True)
    torch.testing.assert_close(first.detach(), torch.tensor([6e28]))
    with pytest.raises(FloatingPointError, match="who: a second derivative overflowed"):
        torch.autograd.grad(first.sum(), x)


# ---- ca_rev237 (the torch floor): values read from a tensor torch.func wraps
def test_host_list_reads_the_values_of_a_tensor_torch_func_wraps_and_of_any_other():
    """validation reads scores' peaks and temperatures with host_list: on torch 2.3 to 2.7.1 (measured)
    ``.tolist()`` of a tensor wrapped by torch.func.grad raised "Cannot access data pointer"."""
    from convex_attention._ops import host_list

    seen = []

    def loss(x):
        assert torch._C._functorch.is_functorch_wrapped_tensor(x)  # the branch under test
        seen.append((host_list(x), host_list(x[0])))
        return (x * x).sum()

    torch.func.grad(loss)(torch.tensor([1.5, -2.0], dtype=torch.float64))
    assert seen == [([1.5, -2.0], 1.5)]
    assert host_list(torch.tensor([[1.0, 2.0]])) == [[1.0, 2.0]] and host_list(torch.tensor(3.0)) == 3.0


# ---- ca_rev242 (torch.func on torch 2.7)
def test_tensor_values_read_at_once_reads_0d_tensors_under_a_torch_func_transform():
    """Under torch.func.grad on torch 2.7.1 (measured) every tensor an operation makes is wrapped,
    so the one stacked read of a list of 0-d temperatures raised "Cannot access data pointer"
    (validation reads such a list with it: solve, consistency_loss and the layers crashed under
    grad, jacrev, jvp and vjp).  Passes trivially from the torch versions that read it."""
    seen = []

    def loss(x):
        seen.append(_ops.tensor_values_read_at_once([x[0], 2.5, torch.tensor(0.25, dtype=torch.float64)]))
        return (x * x).sum()

    torch.func.grad(loss)(torch.tensor([1.5, -2.0], dtype=torch.float64))
    assert seen == [[1.5, 2.5, 0.25]]


# ---- ca_rev280 (mutation testing of given_maps.py and _ops.py)

def test_ca_rev280_log_softmax_forward_mode_keeps_an_underflowed_cell_s_tangent():
    """Kills level_softmax's underflowed-cell detach applied to log=True as well (it is for probabilities only): the
    log-probability of a cell whose probability underflows (x = (0, −1000), τ = 1) has the finite τ-derivative
    1000/τ², as reverse mode gives it; detached, forward mode returned 0."""
    import torch.autograd.forward_ad as fwad

    x = torch.tensor([[0.0, -1000.0]], dtype=torch.float64)
    tau = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    reverse = torch.stack([torch.autograd.grad(_ops.level_softmax(x, tau, log=True)[0, i], tau)[0] for i in range(2)])
    with fwad.dual_level():
        out = _ops.level_softmax(x, fwad.make_dual(tau, torch.tensor(1.0, dtype=torch.float64)), log=True)
        tangent = fwad.unpack_dual(out).tangent.reshape(-1)
    torch.testing.assert_close(reverse, torch.tensor([0.0, 1000.0], dtype=torch.float64))
    torch.testing.assert_close(tangent, reverse)


def test_ca_rev280_tensors_read_at_once_are_read_in_their_promoted_dtype():
    """Kills tensor_values_read_at_once reading the stack in the first tensor's dtype or in float32: a float16 0.5
    beside a float64 0.1 reads 0.1 exactly (float16 read 0.0999755859375, float32 0.10000000149)."""
    values = _ops.tensor_values_read_at_once([torch.tensor(0.5, dtype=torch.float16),
                                              torch.tensor(0.1, dtype=torch.float64)])
    assert values == [0.5, 0.1]


def test_ca_rev280_temperature_floats_reads_a_temperature_tensor_s_values():
    """Kills temperature_floats taking every (M,) temperature tensor for a meta one (ones stand in)."""
    assert _ops.temperature_floats(torch.tensor([0.5, 2.0], dtype=torch.float64)) == [0.5, 2.0]


def test_ca_rev280_numbers_beside_mixed_tensors_are_left_as_given():
    """Kills tensor_values_read_at_once converting the numbers too where the tensors are read one by one (integer
    and floating tensors: its docstring leaves the numbers as given, for checks of their own)."""
    values = _ops.tensor_values_read_at_once([torch.tensor(3), torch.tensor(0.5), 2])
    assert values == [3.0, 0.5, 2] and type(values[2]) is int


def test_ca_rev280_a_temperature_at_the_second_order_floor_is_not_guarded():
    """Kills guard_below_floor's ``coldest < floor`` → ``<=``: the floor is the smallest temperature at which a
    second derivative cannot overflow, so at it the tensors come back as they were."""
    x = torch.ones(2, requires_grad=True)
    floor = _ops.second_order_temperature_floor(torch.float32)
    (kept,) = _ops.guard_below_floor([x], [1.0, floor], torch.float32, "who")
    assert kept is x


def test_ca_rev280_first_order_only_passes_a_first_derivative_unjudged():
    """Kills FirstOrderOnly judging every first derivative (``ctx.built_second_order`` dropped): without a graph
    built for a second order, the first derivative passes as it is, inf included (d(y²)/dy at y = 2e38 in float32)."""
    x = torch.tensor([2e38], dtype=torch.float32, requires_grad=True)
    refusal = functools.partial(_ops.overflowed, "who", 1e-30, torch.float32)
    y = _ops.FirstOrderOnly.apply(x, refusal)
    (grad,) = torch.autograd.grad((y * y).sum(), x)
    assert grad.tolist() == [float("inf")]


def test_ca_rev280_second_order_guard_refuses_a_non_finite_tangent_in_forward_mode():
    """Kills SecondOrderGuard's jvp passing a non-finite tangent on (its docstring: forward mode refuses the same
    way), under torch.func.jvp; a finite tangent passes unchanged."""
    refusal = functools.partial(_ops.overflowed, "who", 1e-30, torch.float32)

    def guarded(x):
        return _ops.SecondOrderGuard.apply(x, refusal)

    x = torch.tensor([1.0])
    assert torch.func.jvp(guarded, (x,), (torch.tensor([2.0]),))[1].tolist() == [2.0]
    with pytest.raises(FloatingPointError, match="who: a second derivative overflowed"):
        torch.func.jvp(guarded, (x,), (torch.tensor([float("inf")]),))


def test_ca_rev280_log_at_least_one_floors_at_one_with_log_s_gradient_at_one():
    """Kills log_at_least_one's floor dropped (a wholly masked block's 0 gave −inf) and ``sums < 1`` → ``<=`` (a
    block summing to exactly 1 passed no gradient: ca_rev240): log(max(s, 1)) at (0, 0.5, 1, 4), gradient
    (0, 0, 1, 0.25)."""
    sums = torch.tensor([0.0, 0.5, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    out = _ops.log_at_least_one(sums)
    torch.testing.assert_close(out.detach(), torch.tensor([0.0, 0.0, 0.0, 4.0], dtype=torch.float64).clamp_min(1).log())
    (grad,) = torch.autograd.grad(out.sum(), sums)
    assert grad.tolist() == [0.0, 0.0, 1.0, 0.25]
