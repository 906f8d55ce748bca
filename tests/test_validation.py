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


# ----------------------------------------------------------------------------- mutation-testing additions
CPU = torch.device("cpu")


def test_scores_that_are_not_a_list_are_refused_not_read_in_their_iteration_order():
    """A set of tensors (no order) or a generator is not "a list of M tensors"."""
    for scores in ({GOOD[0], GOOD[1]}, (s for s in GOOD), {0: GOOD[0], 1: GOOD[1]}):
        with pytest.raises(TypeError, match="scores must be a list of 2 tensors"):
            V.check_scores(scores, H)
    assert V.check_scores(tuple(GOOD), H) == GOOD  # a tuple is a sequence


def test_scores_shapes_are_compared_per_dimension_not_by_size():
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    with pytest.raises(ValueError, match=r"scores\[0\] must have shape \(B, 4, 4\) for level 0, got \(1, 2, 8\)"):
        V.check_scores([torch.zeros(1, 2, 8), torch.zeros(1, 2, 2)], h)
    with pytest.raises(ValueError, match=r"scores\[1\] must have shape \(B, 2, 2\) for level 1, got \(1, 1, 4\)"):
        V.check_scores([torch.zeros(1, 4, 4), torch.zeros(1, 1, 4)], h)


def test_scores_on_two_devices_are_refused_even_without_the_finite_check():
    with pytest.raises(ValueError, match=r"scores\[1\] is on meta, scores\[0\] on cpu"):
        V.check_scores([torch.zeros(3, 4), torch.zeros(3, 2, device="meta")], H, check_finite=False)


def test_a_none_entry_for_a_scored_map_names_the_map_and_given():
    with pytest.raises(TypeError, match=r"scores\[1\] is None but level 1 is not given; give its scores, or its "
                                        r"probabilities in given=\{1: ...\}"):
        V.check_scores_and_peaks([None, None], H, given=frozenset({0}))
    out, peak = V.check_scores_and_peaks([None, GOOD[1]], H, given=frozenset({0}))
    assert out[0] is None and out[1] is GOOD[1] and peak == 0.0


def test_scores_exactly_at_the_limit_pass_and_just_above_are_refused():
    """docs/design.md §4: the largest magnitudes must sum to *at most* score_limit."""
    for dtype in (torch.float32, torch.float64):
        limit = V.score_limit(dtype)
        half = limit / 2  # exact: a power-of-two scaling
        at = [torch.tensor([[-half, 0.0, 0.0, 1.0]], dtype=dtype), torch.tensor([[half, 0.0]], dtype=dtype)]
        assert V.check_scores_and_peaks(at, H)[1] == limit
        above = [at[0], torch.tensor([[np.nextafter(half, math.inf, dtype=np.float64 if dtype == torch.float64
                                                    else np.float32), 0.0]], dtype=dtype)]
        with pytest.raises(ValueError, match="too large"):
            V.check_scores(above, H)


def _given_args(dtype=torch.float64):
    return H, 3, dtype, CPU


def test_given_keys_must_be_map_indices():
    q = torch.full((4,), 0.25, dtype=torch.float64)
    for key in (2, -1, True, "0"):
        with pytest.raises(ValueError, match=rf"given has key {key!r}: a level index in \[0, 2\) is needed"):
            V.check_given({key: q}, *_given_args())
    out = V.check_given({0: q}, *_given_args())
    assert out[1] is None and out[0].shape == (1, 4)


def test_check_finite_off_skips_the_checks_of_given_values_but_not_of_its_form():
    """docs/design.md §4: without check_finite nothing reads given's values (no host
    synchronisation); its keys, dtype, shape and device are still checked."""
    unnormalised = torch.tensor([0.5, 1.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="must sum to one"):
        V.check_given({1: unnormalised}, *_given_args())
    assert V.check_given({1: unnormalised}, *_given_args(), check_finite=False)[1] is not None
    with pytest.raises(TypeError, match="has dtype torch.float32"):
        V.check_given({1: unnormalised.float()}, *_given_args(), check_finite=False)
    with pytest.raises(ValueError, match="given"):
        V.check_given({1: torch.full((3,), 1 / 3, dtype=torch.float64)}, *_given_args(), check_finite=False)


def test_given_must_be_floating_finite_and_on_the_scores_device():
    with pytest.raises(TypeError, match=r"given\[0\] must be a floating tensor of probabilities, got torch.int64"):
        V.check_given({0: torch.ones(4, dtype=torch.long)}, *_given_args())
    with pytest.raises(ValueError, match=r"given\[1\] is on meta, the scores on cpu"):
        V.check_given({1: torch.full((2,), 0.5, dtype=torch.float64, device="meta")}, *_given_args(),
                      check_finite=False)
    for bad in (math.nan, math.inf):
        q = torch.tensor([0.5, bad], dtype=torch.float64)
        with pytest.raises(ValueError, match=r"given\[1\] contains NaN or Inf values"):
            V.check_given({1: q}, *_given_args())


def test_given_must_sum_to_one_in_every_sample_to_the_dtypes_tolerance():
    args = _given_args()
    with pytest.raises(ValueError, match=r"given\[1\] must sum to one per sample \(to 1e-06 in float64\), off by 0.2"):
        V.check_given({1: torch.tensor([0.4, 0.4], dtype=torch.float64)}, *args)  # sums below one
    two = torch.tensor([[0.5, 0.5], [0.5, 1.5]], dtype=torch.float64)  # only the second sample is off
    with pytest.raises(ValueError, match=r"given\[1\] must sum to one per sample.*off by 1"):
        V.check_given({1: two}, H, 2, torch.float64, CPU)
    # tolerance per dtype: refused just beyond it, accepted within
    for dtype, tol, off, within in ((torch.float64, "1e-06", 1e-5, 1e-7), (torch.float32, "0.0001", 1e-3, 2e-5),
                                    (torch.float16, "0.01", 0.05, 2e-3), (torch.bfloat16, "0.01", 0.05, 2e-3)):
        bad = torch.tensor([0.5, 0.5 + off], dtype=dtype)
        with pytest.raises(ValueError, match=rf"to {tol} in {V.dtype_name(dtype)}"):
            V.check_given({1: bad}, H, 3, dtype, CPU)
        good = torch.tensor([0.5, 0.5 + within], dtype=dtype)
        assert V.check_given({1: good}, H, 3, dtype, CPU)[1].shape == (1, 2)


def test_integer_tensors_are_real_temperatures():
    assert V.check_temperatures(torch.tensor([1, 3]), 2) == [1.0, 3.0]
    assert V.check_temperatures(torch.tensor(2, dtype=torch.uint8), 2) == [2.0, 2.0]
    for bad in (torch.tensor([True, True]), torch.ones(2, dtype=torch.complex64)):
        with pytest.raises(TypeError, match="temperature must be a real tensor"):
            V.check_temperatures(bad, 2)


def test_a_bool_or_complex_zero_d_tensor_in_a_list_is_not_a_temperature():
    for bad in (torch.tensor(True), torch.tensor(1 + 0j)):
        # the same refusal, and error type, as for a whole tensor of that dtype
        with pytest.raises(TypeError, match=r"temperature\[1\] must be a number or a 0-d real tensor, got dtype "
                                            + str(bad.dtype)):
            V.check_temperatures([1.0, bad], 2)
        with pytest.raises(TypeError, match="real tensor"):
            V.check_temperatures(bad.reshape(1).expand(2), 2)
    with pytest.raises(ValueError, match=r"temperature\[0\] must be a number or a 0-d real tensor \(one temperature "
                                         r"per level\), got a tensor of shape \(1,\)"):
        V.check_temperatures([torch.ones(1), 2.0], 2)
    assert V.check_temperatures([torch.tensor(0.5, dtype=torch.float16), 2.0], 2) == [0.5, 2.0]


def test_integer_temperatures_are_real_in_a_list_as_in_a_tensor():
    assert V.check_temperatures([torch.tensor(1), torch.tensor(3)], 2) == V.check_temperatures(
        torch.tensor([1, 3]), 2) == [1.0, 3.0]


def test_unsigned_numpy_arrays_are_temperatures():
    assert V.check_temperatures(np.array([1, 3], dtype=np.uint8), 2) == [1.0, 3.0]
    assert V.check_temperatures(np.array(2, dtype=np.uint64), 2) == [2.0, 2.0]


def test_temperatures_exactly_at_the_bounds_pass_and_just_beyond_are_refused_naming_the_level():
    """temperature_range: every τ_k *at least* tau_min, Σ τ_k *at most* total_max."""
    for dtype, work in ((torch.float32, "float32"), (torch.bfloat16, "float32"), (torch.float64, "float64"),
                        (None, "float64")):
        low, high = V.temperature_range(dtype)
        assert V.check_temperatures([1.0, low], 2, dtype=dtype) == [1.0, low]
        assert V.check_temperatures([high / 2, high / 2], 2, dtype=dtype) == [high / 2, high / 2]
        assert V.check_temperatures(high, 1, dtype=dtype) == [high]
        fix = "" if work == "float64" else " or float64 scores"
        below = np.nextafter(low, 0.0)
        with pytest.raises(ValueError, match=rf"temperature of level 1 is {below:g}, below the smallest accepted for "
                                             rf"{work} computation .*; use a larger temperature{fix}$"):
            V.check_temperatures([1.0, below], 2, dtype=dtype)
        with pytest.raises(ValueError, match=rf"the temperatures sum to .*, above the largest accepted for {work}"):
            V.check_temperatures(np.nextafter(high, math.inf), 1, dtype=dtype)
        with pytest.raises(ValueError, match=rf"the temperatures sum to .*, above the largest accepted for {work}"):
            V.check_temperatures([0.75 * high, 0.75 * high], 2, dtype=dtype)  # each within, the sum is not


def test_a_nan_temperature_is_refused_naming_the_level():
    for temperature, index in ((math.nan, 0), ([1.0, math.nan], 1), (torch.tensor([1.0, math.nan]), 1),
                               (np.array([math.nan, 1.0]), 0)):
        with pytest.raises(ValueError, match=rf"temperature of level {index} must be positive and finite, got nan"):
            V.check_temperatures(temperature, 2)


def test_check_duals_every_dual_finite_batch_and_device():
    h3 = ca.Hierarchy.grid([(8,), (4,), (2,)])
    with pytest.raises(ValueError, match=r"duals\[1\] contains NaN or Inf values"):
        V.check_duals([torch.zeros(4), torch.tensor([0.0, math.inf])], h3, 3, torch.float64, CPU)
    with pytest.raises(ValueError, match=r"duals must hold one tensor per constraint \(2\), got 3"):
        V.check_duals([torch.zeros(4), torch.zeros(2), torch.zeros(2)], h3, 3, torch.float64, CPU)
    with pytest.raises(ValueError, match=r"duals\[0\] must have shape \(2,\), \(1, \*\(2,\)\) or \(3, \*\(2,\)\) for "
                                         r"constraint 0, got \(5, 2\)"):
        V.check_duals([torch.zeros(5, 2)], H, 3, torch.float64, CPU)
    with pytest.raises(ValueError, match=r"duals\[0\] is on meta, scores on cpu"):
        V.check_duals([torch.zeros(2, device="meta")], H, 3, torch.float64, CPU, check_finite=False)
    out = V.check_duals([torch.full((2,), math.nan)], H, 3, torch.float64, CPU, check_finite=False)
    assert out[0].shape == (1, 2)  # check_finite=False skips the read


def test_check_duals_counts_each_dual_twice_and_accepts_exactly_the_limit():
    """check_duals: score_peak_sum + 2 Σ_e max |λ_e| *at most* score_limit."""
    limit = V.score_limit(torch.float32)
    at = V.check_duals([torch.tensor([-limit / 4, 0.0])], H, 3, torch.float32, CPU, score_peak_sum=limit / 2)
    assert at[0].dtype == torch.float32
    with pytest.raises(ValueError, match="scores and duals are too large for torch.float32"):
        V.check_duals([torch.tensor([limit / 3, 0.0])], H, 3, torch.float32, CPU, score_peak_sum=limit / 2)


def test_scores_for_a_given_map_and_every_map_given_are_refused():
    with pytest.raises(ValueError, match=r"scores\[0\] must be None: level 0 is given \(given=\{0: probabilities\}\)"):
        V.check_scores_and_peaks(GOOD, H, given=frozenset({0}))
    with pytest.raises(ValueError, match="every level is given: there is nothing to solve"):
        V.check_scores_and_peaks([None, None], H, given=frozenset({0, 1}))


def test_nan_scores_are_refused_and_check_finite_off_skips_both_value_checks():
    nan = [torch.zeros(3, 4), torch.tensor([[0.0, math.nan]] * 3)]
    with pytest.raises(ValueError, match=r"scores\[1\] contains NaN values; scores must be finite"):
        V.check_scores(nan, H)
    huge = [torch.full((3, 4), 1e38), torch.full((3, 2), 1e38)]
    for scores in (nan, huge):  # docs/design.md §4: check_finite=False skips both checks
        assert all(a is b for a, b in zip(V.check_scores(scores, H, check_finite=False), scores))


def test_float64_scores_whose_peaks_sum_beyond_the_float_range_are_refused():
    big = [torch.full((1, 4), 1e308, dtype=torch.float64), torch.full((1, 2), -1e308, dtype=torch.float64)]
    with pytest.raises(ValueError, match="scores are too large for torch.float64"):
        V.check_scores(big, H)


def test_half_precision_scores_take_float32_s_limit():
    """score_limit is a property of the compute dtype: half precision is computed in float32."""
    assert V.score_limit(torch.float16) == V.score_limit(torch.bfloat16) == V.score_limit(torch.float32)
    big = [torch.full((1, 4), 6e4, dtype=torch.float16), torch.full((1, 2), -6e4, dtype=torch.float16)]
    assert V.check_scores_and_peaks(big, H)[1] == 2 * float(big[0][0, 0])


def test_a_wrongly_shaped_dual_is_named_with_the_shape_it_has():
    with pytest.raises(ValueError, match=r"duals\[0\] must have shape \(2,\).* got \(3,\)$"):
        V.check_duals([torch.zeros(3)], H, 3, torch.float64, CPU)


def test_given_that_is_not_a_dict_or_holds_a_zero_is_refused():
    q = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for given in ([q], None, (1, q)):
        with pytest.raises(TypeError, match=r"given must be a dict \{level index: probabilities\}"):
            V.check_given(given, *_given_args())
    for bad in ([0.0, 1.0], [-0.5, 1.5]):
        with pytest.raises(ValueError, match=r"given\[1\] has a zero \(or negative\) probability"):
            V.check_given({1: torch.tensor(bad, dtype=torch.float64)}, *_given_args())


def test_given_keeps_one_map_per_sample():
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    assert torch.equal(V.check_given({1: q}, *_given_args())[1], q)


def test_given_sums_are_measured_in_float64_not_in_half_precision():
    """0.5 + 0.25 + 0.25 + 0.0107421875 (all exact in bfloat16) is 1.0107: off by more than
    1e-2, though the sum rounded to bfloat16 (1.0078125) would be within it."""
    q = torch.tensor([0.5, 0.25, 0.25, 0.0107421875], dtype=torch.bfloat16)
    assert q.double().sum().item() - 1 > 1e-2
    with pytest.raises(ValueError, match=r"given\[0\] must sum to one per sample \(to 0.01 in bfloat16\)"):
        V.check_given({0: q}, H, 3, torch.bfloat16, CPU)


def test_without_a_dtype_the_temperature_range_is_float64_s():
    """temperature_range(None): float64, the widest."""
    assert V.temperature_range() == V.temperature_range(torch.float64)
    assert V.check_temperatures([1e-300, 1e100], 2) == [1e-300, 1e100]


def test_a_tensor_temperature_keeps_its_float64_value_as_a_tensor_or_in_a_list():
    """A value is used as float(value): no rounding through float32 on the way."""
    for temperature in (torch.tensor([0.7, 1e-300], dtype=torch.float64),
                        [torch.tensor(0.7, dtype=torch.float64), torch.tensor(1e-300, dtype=torch.float64)],
                        (torch.tensor(0.7, dtype=torch.float64), 1e-300)):  # any sequence, a tuple too
        assert V.check_temperatures(temperature, 2) == [0.7, 1e-300]


def test_a_two_d_temperature_tensor_is_refused_as_per_sample():
    for shape in ((2, 1), (1, 2), (2, 2)):
        with pytest.raises(ValueError, match=rf"got \({shape[0]}, {shape[1]}\); temperatures are per level, never "
                                             r"per sample"):
            V.check_temperatures(torch.ones(shape), 2)


def test_temperatures_that_require_grad_come_back_as_views_gradients_flow_into():
    tau = torch.tensor([1.0, 2.0], requires_grad=True)
    views = V.check_temperatures(tau, 2, allow_grad=True)
    assert [float(v.detach()) for v in views] == [1.0, 2.0]
    (views[0] + 10 * views[1]).backward()
    assert tau.grad.tolist() == [1.0, 10.0]
    shared = torch.tensor(0.5, requires_grad=True)
    sum(V.check_temperatures(shared, 3, allow_grad=True)).backward()
    assert float(shared.grad) == 3.0
    learnable = torch.tensor(0.5, requires_grad=True)
    mixed = V.check_temperatures([2.0, learnable], 2, allow_grad=True)  # one learnable temperature of two
    assert mixed[0] == 2.0 and mixed[1] is learnable
    with pytest.raises(TypeError, match="method 'dual' cannot differentiate through the temperature"):
        V.check_temperatures([2.0, learnable], 2, method="dual")


def test_under_no_grad_a_temperature_that_requires_grad_is_a_plain_value():
    """check_temperatures: a tensor that requires grad *with grad mode on* gives views or a TypeError."""
    tau = torch.tensor([1.0, 2.0], requires_grad=True)
    learnable = torch.tensor(3.0, requires_grad=True)
    with torch.no_grad():
        assert V.check_temperatures(tau, 2, method="dual") == [1.0, 2.0]
        assert V.check_temperatures([learnable, 1.0], 2, method="dual") == [3.0, 1.0]


# ----------------------------------------------------------------------------- ca_rev79 (strict xfail: known defects)

def test_ca_rev79_float8_duals_are_refused_with_a_message_naming_them():
    """check_duals accepts any ``dtype.is_floating_point``, float8 included (the scores'
    check refuses float8: no kernel here takes it); with check_finite its values are then read
    by ``aminmax``, which raises NotImplementedError "aminmax_cpu not implemented for
    'Float8_e4m3fn'" from inside torch instead of a TypeError naming duals[0]."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.zeros(2, 4), torch.zeros(2, 2)]
    with pytest.raises(TypeError, match=r"duals\[0\]"):
        ca.solve(scores, h, "learned_dual", duals=[torch.zeros(2).to(torch.float8_e4m3fn)])


def test_ca_rev79_sparse_scores_are_refused_with_a_message_naming_them():
    """Scores are strided tensors ``(B, *shapes[k])``; a sparse COO tensor of the right shape
    and dtype passes check_scores and fails inside torch: NotImplementedError from
    ``aten::aminmax`` (validation.score_peaks) with check_finite, and from ``_softmax``,
    ``reshape`` (graph.py) or ``amax`` (dual.py) without it."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(2, 4).to_sparse(), torch.randn(2, 2).to_sparse()]
    with pytest.raises((TypeError, ValueError), match=r"scores\[0\]"):
        V.check_scores(scores, h)


@pytest.mark.parametrize("flag", [None, 0, "no", 1.0])
def test_check_finite_must_be_a_bool_where_it_could_silently_skip_the_checks(flag):
    """check_finite=None (or 0) skipped the NaN check, and "no" ran it: neither is what was meant."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.tensor([[float("nan"), 0.0, 0.0, 0.0]]), torch.zeros(1, 2)]
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        ca.solve(scores, h, "exact", check_finite=flag)
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        ca.consistency_loss(scores, [torch.zeros(1, 2)], h, check_finite=flag)


@pytest.mark.parametrize("flag", [None, 0, "no"])
def test_check_given_and_check_duals_take_check_finite_as_a_bool_only(flag):
    """A near-miss of the last reviews: called directly (solve checks the flag once before them),
    they read None or 0 as 'skip the NaN checks' and "no" as 'run them'."""
    h = ca.Graph.from_edges([4, 2], [(0, 1, torch.tensor([0, 0, 1, 1]))])
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        V.check_given({1: torch.tensor([0.5, 0.5])}, h, 1, torch.float64, "cpu", check_finite=flag)
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        V.check_duals([torch.zeros(2)], h, 1, torch.float64, "cpu", check_finite=flag)


# ---- ca_rev133 (strict xfail: review of f492f23)


def test_ca_rev133_a_list_of_learned_temperatures_of_mixed_dtypes_is_read_at_once(monkeypatch):
    """docs/user_guide.md: a tensor temperature is read 'once per call for its range check ... one or two
    synchronisations per call, each reading every map's temperature at once'.  A list mixing a float64 and
    float32 Parameters is a valid temperature (each 0-d and real).  Expected: one read (torch.stack promotes
    float32 to float64 exactly); observed: one __float__ per map."""
    temps = [torch.tensor(t, dtype=d, requires_grad=True)
             for t, d in zip((0.7, 1.0, 1.3), (torch.float32, torch.float64, torch.float32))]
    reads = []
    for name in ("tolist", "__float__", "item", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k: (
            reads.append(_name), _real(self, *a, **k))[1])
    got = V.check_temperatures(temps, 3, dtype=torch.float32, allow_grad=True)
    monkeypatch.undo()
    assert len(reads) <= 1, reads
    assert [float(t.detach()) for t in got] == [float(t.detach()) for t in temps]


# ---- ca_rev159 (strict xfail: review of d1ff286)


def test_ca_rev159_a_list_of_integer_and_half_temperature_tensors_is_read_exactly():
    """check_temperatures: a sequence of 0-d real tensors (integer dtypes are accepted) is 'used as
    float(value)'.  Run: check_temperatures([tensor(2049), tensor(0.5, dtype=float16)], 2) and
    ([tensor(70000), tensor(0.5, dtype=float16)], 2).  Expected: [2049.0, 0.5] and [70000.0, 0.5]
    (float() of each; both within temperature_range).  Observed: [2048.0, 0.5] (a silently other
    temperature) and ValueError 'temperature of level 0 must be positive and finite, got inf':
    tensor_values_read_at_once stacks them in torch.promote_types(int64, float16) = float16, which does not
    hold every integer (int64 + bfloat16 reads 257 as 256; int64 + float32 reads 2**24 + 1 as 2**24)."""
    got = V.check_temperatures([torch.tensor(2049), torch.tensor(0.5, dtype=torch.float16)], 2)
    assert got == [2049.0, 0.5]
    got = V.check_temperatures([torch.tensor(70000), torch.tensor(0.5, dtype=torch.float16)], 2)
    assert got == [70000.0, 0.5]


@pytest.mark.parametrize("check_finite", [True, False])
def test_ca_rev159_sparse_given_map_is_refused_naming_it(check_finite):
    """Scores and duals of a sparse layout are refused by name (check_scores, check_dense_floating:
    ca_rev79).  Run: ca.solve([zeros(1, 4), None], Hierarchy.grid([4, 2]), 'dual', given={1: tensor([0.5,
    0.5]).to_sparse()}, check_finite=...).  Expected: TypeError/ValueError naming given[1] (or the map read
    as dense).  Observed: RuntimeError 'reshape is not implemented for sparse tensors' (check_given's value
    check) and, with check_finite=False, RuntimeError 'expand is unsupported for Sparse tensors' from the
    solver: check_given checks only is_floating_point, not the layout."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    try:
        ca.solve([torch.zeros(1, 4), None], h, "dual", given={1: torch.tensor([0.5, 0.5]).to_sparse()},
                 check_finite=check_finite)
    except (TypeError, ValueError) as err:
        assert "given[1]" in str(err)


# ---- ca_rev168 (review of 560040b..HEAD; its strict xfails now pass)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan")])
def test_ca_rev168_float_temperature_beside_a_meta_one_is_checked(bad):
    """d158115 (validation._meta_temperatures): a meta temperature holds no value to check, so a list holding
    one is returned as given, and its float entries, which do hold values, go unchecked.  Run: meta scores
    (1, 4), (1, 2) on Graph([4, 2], [(0, 1)]), solve(..., 'exact', temperature=[tensor(1., device='meta'),
    bad], check_finite=False), bad = -1.0, 0.0, nan.  Expected: ValueError 'temperature of map 1 must be
    positive and finite', as temperature=-1.0 alone gives ('of map 0 ... got -1.0').  Observed: accepted,
    meta maps of shape (1, 4) returned for all three."""
    g = ca.Graph([4, 2], [(0, 1)])
    scores = [torch.empty(1, 4, device="meta"), torch.empty(1, 2, device="meta")]
    with pytest.raises(ValueError, match="positive"):
        ca.solve(scores, g, "exact", temperature=[torch.tensor(1.0, device="meta"), bad], check_finite=False)


# ---- ca_rev172 (review of d03eab2^..HEAD; its strict xfails now pass)

@pytest.mark.parametrize("bad", [torch.empty(5, device="meta"), torch.empty((), device="meta", dtype=torch.bool),
                                 torch.empty((), device="meta", dtype=torch.complex64)])
def test_ca_rev172_meta_temperature_in_a_list_is_checked_for_shape_and_dtype(bad):
    """4f20be7 (ca_rev168) checks a list holding a meta temperature with a placeholder 1.0 in each meta entry's
    place, so the checks that need no value (shape, dtype) are skipped for the meta entries themselves.  Run:
    meta scores (1, 4), (1, 2) on Graph([4, 2], [(0, 1)]), solve(..., 'exact', temperature=[tensor(1., meta), bad],
    check_finite=False), bad a meta tensor of shape (5,), or 0-d of dtype bool, complex64.  Expected: the error
    the same list on CPU gives, ValueError/TypeError 'temperature[1] must be a number or a 0-d real tensor'.
    Observed: shape (5,): torch's RuntimeError "shape '[]' is invalid for input of size 5" from deep inside (what
    ca_rev164 replaced by a ValueError); bool and complex64: accepted, meta maps returned."""
    g = ca.Graph([4, 2], [(0, 1)])
    scores = [torch.empty(1, 4, device="meta"), torch.empty(1, 2, device="meta")]
    with pytest.raises((ValueError, TypeError), match="0-d real tensor"):
        ca.solve(scores, g, "exact", temperature=[torch.tensor(1.0, device="meta"), bad], check_finite=False)


# ---- ca_rev202 (mutation review of af21a95)
def test_ca_rev202_batch_and_dtype_are_compared_on_every_map_not_only_the_first_two():
    """Kills ``for k, s in scored`` -> ``scored[:2]`` in check_scores_and_peaks: a third map's other batch size or
    dtype was accepted (and failed later, inside a solver)."""
    g = ca.Graph.star([(4,), (4,)], (2,))
    with pytest.raises(ValueError, match=r"scores\[2\] has batch size 2, scores\[0\] has 3"):
        V.check_scores([torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, 2)], g)
    with pytest.raises(TypeError, match=r"scores\[2\] has dtype torch.float64, scores\[0\] has torch.float32"):
        V.check_scores([torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.float64)], g)


def test_ca_rev202_a_batch_mismatch_names_the_first_scored_map_when_map_0_is_given():
    """Kills ``{name}[{first_k}]`` -> ``{name}[0]`` in check_scores_and_peaks: with map 0 given, the message
    compared with scores[0], which is None."""
    g = ca.Graph.star([(4,), (4,)], (2,))
    with pytest.raises(ValueError, match=r"scores\[2\] has batch size 2, scores\[1\] has 3"):
        V.check_scores_and_peaks([None, torch.zeros(3, 4), torch.zeros(2, 2)], g, given=frozenset({0}))


def test_ca_rev202_a_per_sample_tensor_of_another_batch_size_is_refused_even_a_multiple():
    """Kills ``x.shape[0] not in (1, batch)`` -> ``(1, batch, 2 * batch)`` in per_sample: duals and given maps
    with twice the batch were accepted."""
    with pytest.raises(ValueError, match=r"duals\[0\] must have shape \(2,\), \(1, \*\(2,\)\) or \(3, \*\(2,\)\)"):
        V.check_duals([torch.zeros(6, 2)], H, 3, torch.float32, CPU)
    with pytest.raises(ValueError, match=r"given\[1\] must have shape \(2,\).*got \(6, 2\)"):
        V.check_given({1: torch.full((6, 2), 0.5, dtype=torch.float64)}, *_given_args())


def test_ca_rev202_without_positivity_a_negative_given_probability_is_still_refused():
    """Kills dropping the ``positive=False`` branch's refusal in check_given (LinSATNet's given maps): a negative
    probability summing to one with the others was accepted; a zero stays accepted there."""
    q = torch.tensor([1.5, -0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"given\[1\] has a negative probability"):
        V.check_given({1: q}, *_given_args(), positive=False)
    zero = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert V.check_given({1: zero}, *_given_args(), positive=False)[1].shape == (1, 2)


def test_ca_rev202_the_temperature_of_an_unused_map_may_be_below_the_smallest_accepted():
    """Kills dropping ``k not in unused`` from the lower range check of _check_temperature_values: a given map's
    tiny (subnormal) temperature, which no solver reads, was refused as below the smallest accepted."""
    assert V.check_temperatures([1.0, 1e-40], 2, torch.float32, unit="map", unused=frozenset({1})) == [1.0, 1e-40]
    with pytest.raises(ValueError, match=r"temperature of map 1 is 1e-40, below the smallest accepted"):
        V.check_temperatures([1.0, 1e-40], 2, torch.float32, unit="map")


# ---- ca_rev226 (design.md §4 truth audit, part 2): the given maps' agreement bound design.md quotes


def test_ca_rev226_given_maps_are_made_to_agree_within_the_documented_sum_tolerance():
    """design.md §4: given maps apart by no more than a given map's sum may be off are made to agree
    ("``validation.GIVEN_SUM_TOLERANCE``: 1e-6 in float64, 1e-4 in float32")."""
    assert V.GIVEN_SUM_TOLERANCE[torch.float64] == 1e-6
    assert V.GIVEN_SUM_TOLERANCE[torch.float32] == 1e-4
