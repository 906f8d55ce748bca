"""convex_attention.validation: the checks every entry point shares, and the ranges they enforce
(the ranges themselves are exercised through solve in tests/test_solve.py)."""
import math

import numpy as np
import pytest
import torch

import convex_attention as ca
from convex_attention import validation as V

H = ca.Hierarchy.grid([(4,), (2,)])
GOOD = [torch.zeros(3, 4), torch.zeros(3, 2)]


@pytest.mark.parametrize("scores, error, words", [
    (torch.zeros(3, 4), TypeError, "list of 2 tensors"),
    ([torch.zeros(3, 4)], ValueError, "one tensor per level"),
    ([torch.zeros(3, 4), "x"], TypeError, r"scores\[1\] must be a torch.Tensor"),
    ([torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 2)], TypeError, "floating"),
    ([torch.zeros(3, 5), torch.zeros(3, 2)], ValueError, r"shape \(B, 4\)"),
    ([torch.zeros(3, 4), torch.zeros(2, 2)], ValueError, "batch size 2"),
    ([torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.float64)], TypeError, "one dtype"),
    ([torch.zeros(0, 4), torch.zeros(0, 2)], ValueError, "batch size 0"),
    ([torch.full((3, 4), math.inf), torch.zeros(3, 2)], ValueError, "Inf"),
    ([torch.full((3, 4), 1e38), torch.full((3, 2), 1e38)], ValueError, "too large"),
])
def test_check_scores_names_what_is_wrong(scores, error, words):
    with pytest.raises(error, match=words):
        V.check_scores(scores, H)


def test_check_scores_and_peaks_reads_the_peaks_once():
    scores, peak = V.check_scores_and_peaks([torch.tensor([[1.0, -5.0, 0.0, 2.0]]), torch.tensor([[3.0, 0.0]])], H)
    assert peak == 8.0 and len(scores) == 2
    assert V.check_scores_and_peaks(GOOD, H, check_finite=False)[1] is None


def test_temperatures_per_level_never_per_sample():
    assert V.check_temperatures(2.0, 2) == [2.0, 2.0]
    assert V.check_temperatures([1.0, 3.0], 2) == [1.0, 3.0]
    assert V.check_temperatures(torch.tensor([1.0, 3.0]), 2) == [1.0, 3.0]
    with pytest.raises(ValueError, match="per level, never per sample"):
        V.check_temperatures(torch.ones(3), 2)
    with pytest.raises(ValueError, match="one per level"):
        V.check_temperatures([1.0, 2.0, 3.0], 2)
    with pytest.raises(ValueError, match="positive"):
        V.check_temperatures(0.0, 2)
    with pytest.raises(TypeError, match="numbers"):
        V.check_temperatures(["1", 2.0], 2)
    tau = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="cannot differentiate through the temperature"):
        V.check_temperatures(tau, 2, method="dual")
    views = V.check_temperatures(tau, 2, allow_grad=True)
    assert all(v.requires_grad for v in views)


@pytest.mark.parametrize("value", [np.float64(0.7), np.float32(0.7), np.float16(0.7), np.int64(2), np.int32(3),
                                   np.array(0.7, dtype=np.float32), np.array(2)])
def test_every_real_scalar_type_is_a_temperature_with_its_float_value(value):
    """Before: numpy's float32 and float16 (not subclasses of float) were refused."""
    assert V.check_temperatures(value, 3) == [float(value)] * 3


def test_numpy_arrays_give_one_temperature_per_level():
    assert V.check_temperatures(np.array([0.5, 2.0], dtype=np.float32), 2) == [0.5, 2.0]
    assert V.check_temperatures([np.float16(0.5), np.float32(2.0)], 2) == [0.5, 2.0]
    with pytest.raises(ValueError, match=r"shape \(\) .* or \(2,\).*never per sample"):
        V.check_temperatures(np.ones(3), 2)
    with pytest.raises(ValueError, match="never per sample"):
        V.check_temperatures(np.ones((2, 1)), 2)
    with pytest.raises(TypeError, match="real numbers, got a numpy array of dtype complex128"):
        V.check_temperatures(np.ones(2, dtype=complex), 2)
    with pytest.raises(TypeError, match="bool"):
        V.check_temperatures(np.array([True, False]), 2)
    for not_a_number in (np.bool_(True), True, [np.bool_(True), 1.0], [1j, 1.0]):
        with pytest.raises(TypeError):
            V.check_temperatures(not_a_number, 2)
    with pytest.raises(ValueError, match="positive"):
        V.check_temperatures(np.float32(-1.0), 2)


def test_active_transforms_reads_the_torch_func_stack():
    assert V.active_transforms() == set()
    seen = []

    def record(x):
        seen.append(V.active_transforms())
        return x.sum()

    torch.func.grad(record)(torch.ones(2))
    torch.func.vmap(record)(torch.ones(2, 2))
    assert seen == [{"grad"}, {"vmap"}]
    with pytest.raises(NotImplementedError, match="does not support torch.func.vmap"):
        torch.func.vmap(lambda x: (V.check_transforms("f", True), x)[1])(torch.ones(2, 2))
    with pytest.raises(NotImplementedError, match="does not support torch.func transforms"):
        torch.func.grad(lambda x: (V.check_transforms("f", False), x.sum())[1])(torch.ones(2))
    torch.func.grad(lambda x: (V.check_transforms("f", True), x.sum())[1])(torch.ones(2))  # allowed


@pytest.mark.parametrize("temperature", [[1e308, 1e308], 1e308, 10 ** 400, [10 ** 400, 1.0], np.array([1e308, 1e308])])
def test_temperatures_whose_sum_leaves_the_float_range_are_a_value_error(temperature):
    """Before: two finite temperatures of 1e308 (``train --temperature 1e308``) ended in
    OverflowError from math.fsum, and an integer beyond the float range in OverflowError
    from float(): a traceback instead of the range check's message."""
    with pytest.raises(ValueError, match="(above the largest accepted|must be positive and finite)"):
        V.check_temperatures(temperature, 2)
    h = ca.Hierarchy.grid([(4,), (2,)])
    with pytest.raises(ValueError, match="(above the largest accepted|must be positive and finite)"):
        ca.solve([torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)], h, "exact",
                 temperature=temperature)


def test_an_integer_temperature_beyond_float64_is_named_as_such_not_as_inf():
    """``temperature=10**400`` was refused as "got inf", a value the user never gave (a review)."""
    for temperature, index in ((10 ** 400, 0), ([1.0, 10 ** 400], 1), (-(10 ** 5000), 0)):
        with pytest.raises(ValueError, match=rf"temperature of level {index} must be positive and finite, got an "
                                             r"integer of about -?10\^(400|5000), beyond float64's range"):
            V.check_temperatures(temperature, 2)
    with pytest.raises(ValueError, match="must be positive and finite, got inf$"):
        V.check_temperatures(math.inf, 2)


def test_the_accepted_ranges_follow_the_compute_dtype():
    lo32, hi32 = V.temperature_range(torch.float32)
    assert V.temperature_range(torch.bfloat16) == (lo32, hi32)
    assert lo32 == float(np.finfo(np.float32).tiny) and hi32 == math.sqrt(float(np.finfo(np.float32).max))
    assert V.score_limit(torch.float64) == float(np.finfo(np.float64).max) / 4


def test_check_duals_shapes_device_and_reach():
    out = V.check_duals([torch.zeros(2)], H, 3, torch.float64, torch.device("cpu"))
    assert out[0].shape == (1, 2) and out[0].dtype == torch.float64
    for duals, words in ((None, "needs duals"), (torch.zeros(2), "list of 1"), ([torch.zeros(3)], "must have shape"),
                         ([torch.zeros(2, 2)], "must have shape"), ([torch.zeros(2, dtype=torch.long)], "floating"),
                         ([torch.full((2,), math.nan)], "NaN")):
        with pytest.raises((TypeError, ValueError), match=words):
            V.check_duals(duals, H, 3, torch.float64, torch.device("cpu"))
    with pytest.raises(ValueError, match="too large"):
        V.check_duals([torch.full((2,), 1e38)], H, 3, torch.float32, torch.device("cpu"), score_peak_sum=1e38)


def test_check_hierarchy():
    with pytest.raises(TypeError, match="Hierarchy"):
        V.check_hierarchy([(4,), (2,)])


def test_per_sample_tensors_take_one_shape_rule_and_name_what_they_belong_to():
    from convex_attention.validation import per_sample

    assert per_sample(torch.zeros(2, 3), (2, 3), 4, "x", "map 0").shape == (1, 2, 3)
    assert per_sample(torch.zeros(4, 2, 3), (2, 3), 4, "x", "map 0").shape == (4, 2, 3)
    assert per_sample(torch.zeros(7, 2, 3), (2, 3), None, "x", "map 0").shape == (7, 2, 3)
    with pytest.raises(ValueError, match=r"given\[1\] must have shape \(2, 3\), \(1, \*\(2, 3\)\) or \(4, \*\(2, 3\)\) "
                                         r"for map 1, got \(5, 2, 3\)"):
        per_sample(torch.zeros(5, 2, 3), (2, 3), 4, "given[1]", "map 1")
    h = ca.Graph.axial((4, 3))
    scores = [torch.randn(2, *s) for s in h.shapes]
    with pytest.raises(ValueError, match=r"given\[1\] must have shape \(4, 1\).*for map 1, got \(3, 4, 1\)"):
        ca.solve([scores[0], None, scores[2]], h, "dual", given={1: torch.full((3, 4, 1), 0.25)})


def test_float8_scores_are_refused_naming_the_dtypes():
    """float8 is floating too, and crashed deep in a kernel ("aminmax_cpu" not implemented)."""
    h = ca.Hierarchy.grid([4, 2])
    with pytest.raises(TypeError, match="float16, bfloat16, float32, float64, got dtype torch.float8_e4m3fn"):
        ca.solve([torch.zeros(1, 4).to(torch.float8_e4m3fn), torch.zeros(1, 2).to(torch.float8_e4m3fn)], h, "exact")
