import torch

from convex_attention.bench.timing import measure_interleaved, peak_memory_mb


def test_measure_interleaved_times_forward_and_backward_separately():
    x = torch.randn(64, 256, requires_grad=True)
    calls = []

    def heavy():
        calls.append("heavy")
        return torch.softmax(x @ x.T, 1).sum()

    def light():
        calls.append("light")
        return x.sum()

    res = measure_interleaved({"heavy": heavy, "light": light}, repeats=6, warmup=1)
    assert len(res["heavy"].fwd_ms) == 6 and len(res["light"].bwd_ms) == 6
    assert all(t > 0 for t in res["heavy"].fwd_ms + res["heavy"].bwd_ms)
    # interleaved: the order rotates, both run in every repetition
    assert calls[2:6] == ["heavy", "light", "light", "heavy"]
    assert res["heavy"].total_median > 0


def test_peak_memory_counts_allocations_during_the_call():
    x = torch.randn(256, 1024, requires_grad=True)  # 1 MiB

    def forward():
        y = x * 2  # 1 MiB
        z = y.exp()  # 1 MiB more alive at once
        return z.sum()

    peak = peak_memory_mb(forward)
    assert 1.9 < peak < 8


def test_measurement_summary_gives_each_median_with_its_quartiles():
    from convex_attention.bench.timing import Measurement, quartiles

    m = Measurement(fwd_ms=[1.0, 2.0, 3.0, 4.0, 100.0], bwd_ms=[10.0, 10.0, 10.0, 10.0, 10.0])
    s = m.summary()
    assert s["fwd_ms"] == 3.0 and s["fwd_ms_q1"] == 2.0 and s["fwd_ms_q3"] == 4.0
    assert s["bwd_ms"] == s["bwd_ms_q1"] == s["bwd_ms_q3"] == 10.0
    assert s["total_ms"] == m.total_median == 13.0 and s["total_ms_q1"] == 12.0 and s["total_ms_q3"] == 14.0
    forward_only = Measurement(fwd_ms=[2.0]).summary()
    assert forward_only["fwd_ms_q1"] == forward_only["fwd_ms_q3"] == 2.0
    assert all(v != v for k, v in forward_only.items() if k.startswith("bwd"))  # NaN: nothing went backward
    assert all(v != v for v in quartiles([]))


def test_nan_max_and_nan_median_keep_a_nan_wherever_it_is():
    import math

    from convex_attention.bench.timing import nan_max, nan_median

    assert max([0.0, math.nan]) == 0.0  # why they exist
    for values in ([0.0, math.nan], [math.nan, 0.0], [1.0, math.nan, 2.0]):
        assert math.isnan(nan_max(values)) and math.isnan(nan_median(values))
    assert nan_max(iter([1.0, 3.0, 2.0])) == 3.0 and nan_median([1.0, 3.0, 2.0]) == 2.0
