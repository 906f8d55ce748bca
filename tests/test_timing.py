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
