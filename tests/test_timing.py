import math
import time

import numpy as np
import pytest
import torch

from convex_attention.bench import timing
from convex_attention.bench.timing import measure_interleaved, peak_memory_mb, time_once


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
    # interleaved: the order rotates, both run in every repetition (after the warm-up's light, heavy first:
    # the step from the warm-up counts, ca_rev189)
    assert calls[2:6] == ["light", "heavy", "heavy", "light"]
    assert res["heavy"].total_median > 0


def test_time_once_times_one_forward_and_its_backward_in_seconds():
    x = torch.randn(8, 8, requires_grad=True)
    seen = []

    def slow():
        seen.append(1)
        time.sleep(0.05)
        return x.sum()

    assert 0.05 <= time_once(slow) < 5.0 and seen == [1] and x.grad is not None


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


class _FakeClock:
    """A clock that moves only when a case says so, logging every read next to the case's
    own events and every device synchronisation."""

    def __init__(self):
        self.now = 0.0
        self.log = []

    def perf_counter(self):
        self.log.append("clock")
        return self.now

    def sync(self, device):
        self.log.append(("sync", str(device)))

    def spend(self, seconds, event):
        self.log.append(event)
        self.now += seconds


class _FakeLoss:
    def __init__(self, clock, name, seconds):
        self.clock, self.name, self.seconds = clock, name, seconds

    def backward(self):
        self.clock.spend(self.seconds, f"bwd {self.name}")


def _fake_timing(monkeypatch):
    import types

    from convex_attention.bench import timing

    clock = _FakeClock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(timing, "synchronize", clock.sync)
    return timing, clock


def _case(clock, name, fwd_s, bwd_s):
    def forward():
        clock.spend(fwd_s, f"fwd {name}")
        return _FakeLoss(clock, name, bwd_s)
    return forward


def test_each_pass_is_timed_between_synchronisations_in_milliseconds(monkeypatch):
    """A forward of 2 ms and a backward of 5 ms (fake clock): the device is synchronised before
    each clock read, so the forward's queued work is not billed to the backward, and the
    backward's time starts where the forward's ends."""
    timing, clock = _fake_timing(monkeypatch)
    res = measure_interleaved({"a": _case(clock, "a", 0.002, 0.005)}, device="cuda:1", repeats=3, warmup=0)
    assert res["a"].fwd_ms == pytest.approx([2.0] * 3) and res["a"].bwd_ms == pytest.approx([5.0] * 3)
    sync = ("sync", "cuda:1")
    one_repetition = [sync, "clock", "fwd a", sync, "clock", "bwd a", sync, "clock"]
    assert clock.log[-24:] == one_repetition * 3
    assert set(clock.log[:-24]) <= {"clock"}  # before: at most the budget's start reads


def test_forward_only_measurements_run_and_store_no_backward(monkeypatch):
    timing, clock = _fake_timing(monkeypatch)

    def forward():
        clock.spend(0.003, "fwd")
        return object()  # no backward to call

    m = measure_interleaved({"a": forward}, repeats=4, warmup=1, backward=False)["a"]
    assert m.fwd_ms == pytest.approx([3.0] * 4) and m.bwd_ms == []
    assert "bwd" not in " ".join(e for e in clock.log if isinstance(e, str))
    s = m.summary()
    assert s["total_ms"] == pytest.approx(3.0) and m.total_ms == m.fwd_ms  # forward only
    assert all(math.isnan(s[k]) for k in ("bwd_ms", "bwd_ms_q1", "bwd_ms_q3")) and math.isnan(m.bwd_median)


def test_warm_up_repetitions_are_run_but_neither_timed_nor_counted(monkeypatch):
    """Each case runs ``warmup`` times first, untimed, then ``repeats`` timed times, in a
    rotating order; the stored times are those of the timed calls alone."""
    timing, clock = _fake_timing(monkeypatch)
    calls = []

    def case(name):
        def forward():
            calls.append(name)
            clock.spend(0.1 if len(calls) <= 4 else 0.001 * len(calls), f"fwd {name}")  # warm-up: slow
            return _FakeLoss(clock, name, 0.0)
        return forward

    res = measure_interleaved({"a": case("a"), "b": case("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 2 + ["b", "a", "a", "b", "b", "a"]  # (after the warm-up's b: b first, ca_rev189)
    assert res["a"].fwd_ms == pytest.approx([6.0, 7.0, 10.0]) and res["b"].fwd_ms == pytest.approx([5.0, 8.0, 9.0])
    assert len(res["a"].bwd_ms) == len(res["b"].bwd_ms) == 3


def test_every_case_takes_every_place_equally_often(monkeypatch):
    """Three cases over six repetitions: each case is first, middle and last twice, and every
    repetition runs every case once."""
    timing, clock = _fake_timing(monkeypatch)
    names = ["a", "b", "c"]
    measure_interleaved({n: _case(clock, n, 0.001, 0.001) for n in names}, repeats=6, warmup=0)
    order = [e.split()[1] for e in clock.log if isinstance(e, str) and e.startswith("fwd")]
    assert all(sorted(order[3 * r:3 * r + 3]) == names for r in range(6))
    assert all(sorted(order[i::3]) == sorted(names * 2) for i in range(3))


@pytest.mark.parametrize("n", range(3, 11))
@pytest.mark.parametrize("repeats", [10, 30, 50])
def test_no_case_follows_the_same_case_in_most_of_its_repetitions(n, repeats):
    """The planned orders (steps between repetitions counted): at every prefix of the
    repetitions no ordered pair occurs in more than half of them, rounded up, and every case
    runs once per repetition (reviews 46 and 49)."""
    from convex_attention.bench.timing import _schedule

    orders = _schedule(n, repeats)
    assert all(sorted(o) == list(range(n)) for o in orders)
    seq = [x for o in orders for x in o]
    for r in range(1, repeats + 1):
        counts: dict = {}
        for a, b in zip(seq[:r * n], seq[1:r * n]):
            counts[(a, b)] = counts.get((a, b), 0) + 1
        assert max(counts.values()) <= -(-r // 2), (r, max(counts.values()))


@pytest.mark.parametrize("warmup", [0, 4])
@pytest.mark.parametrize("budget_s, expected", [(None, 10), (0.0, 3), (0.5, 3), (4.0, 5), (4.5, 5), (100.0, 10)])
def test_the_budget_stops_adding_repetitions_but_keeps_at_least_three(monkeypatch, budget_s, expected, warmup):
    """Each repetition takes 1 s (fake clock): repetitions are added until more than
    ``budget_s`` has been spent on timed ones (the warm-up does not count), never fewer
    than 3, never more than ``repeats``."""
    timing, clock = _fake_timing(monkeypatch)
    res = measure_interleaved({"a": _case(clock, "a", 0.5, 0.5)}, repeats=10, warmup=warmup, budget_s=budget_s)
    assert len(res["a"].fwd_ms) == len(res["a"].bwd_ms) == expected


def test_synchronize_waits_for_a_cuda_device_only(monkeypatch):
    from convex_attention.bench import timing

    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(str(device)))
    timing.synchronize("cpu")
    timing.synchronize(torch.device("cpu"))
    timing.synchronize("meta")
    assert seen == []
    timing.synchronize("cuda:1")
    timing.synchronize(torch.device("cuda", 0))
    assert seen == ["cuda:1", "cuda:0"]


def test_median_of_the_sums_and_quartiles_against_numpy():
    """``total_ms`` pairs each repetition's forward with its own backward: the median of the
    sums, not the sum of the medians (docs/results_format.md); quartiles are numpy's default
    (linear, i.e. inclusive) percentiles; an even count averages the middle two."""
    import numpy as np

    from convex_attention.bench.timing import Measurement, quartiles

    fwd, bwd = [1.0, 10.0, 2.0, 20.0, 3.0], [10.0, 1.0, 20.0, 2.0, 30.0]
    m = Measurement(fwd_ms=list(fwd), bwd_ms=list(bwd))
    sums = [f + b for f, b in zip(fwd, bwd)]
    assert m.total_ms == sums and m.total_median == 22.0 != m.fwd_median + m.bwd_median
    s = m.summary()
    for name, samples in (("fwd_ms", fwd), ("bwd_ms", bwd), ("total_ms", sums)):
        q1, med, q3 = np.percentile(samples, [25, 50, 75])
        assert (s[f"{name}_q1"], s[name], s[f"{name}_q3"]) == pytest.approx((q1, med, q3), abs=1e-12)
    for samples in ([1.0, 2.0, 3.0, 10.0, 100.0], [4.0, 1.0, 3.0, 2.0], [5.0, 7.0], [3.0, 1.0, 2.0, 9.0, 4.0, 8.0]):
        assert quartiles(samples) == pytest.approx(tuple(np.percentile(samples, [25, 50, 75])), abs=1e-12)
    even = Measurement(fwd_ms=[4.0, 1.0, 3.0, 2.0])
    assert even.fwd_median == even.total_median == even.summary()["fwd_ms"] == 2.5
    assert even.total_ms == even.fwd_ms and math.isnan(even.bwd_median)


def test_nan_median_is_nan_wherever_the_nan_sorts_and_averages_an_even_count():
    from convex_attention.bench.timing import nan_max, nan_median

    for values in ([math.nan, 1.0, 2.0], [2.0, 1.0, math.nan], [math.nan, math.nan, 1.0]):
        assert math.isnan(nan_median(values)) and math.isnan(nan_max(values))
    assert nan_median([4.0, 1.0, 3.0, 2.0]) == 2.5 and nan_median(iter([1, 2])) == 1.5
    assert nan_max([1, 2]) == 2.0 and isinstance(nan_max([1, 2]), float)


def test_peak_memory_is_the_peak_of_live_allocations_in_mebibytes():
    """1 MiB allocated, freed, allocated again: the peak is 1 MiB, not the 2 MiB ever allocated."""
    def forward():
        a = torch.empty(2**18)  # float32: exactly 1 MiB
        del a
        b = torch.empty(2**18)
        return b.sum()

    assert 1.0 <= peak_memory_mb(forward, backward=False) < 1.01


def test_peak_memory_includes_the_backward_when_asked():
    x = torch.randn(2**18, requires_grad=True)  # x.grad: 1 MiB, allocated by the backward
    assert peak_memory_mb(lambda: x.sum(), backward=False) < 0.01
    assert x.grad is None
    assert 1.0 <= peak_memory_mb(lambda: x.sum()) < 1.01
    assert x.grad is not None


def test_peak_memory_silences_file_descriptor_2_only_while_profiling(capfd):
    import os

    def forward():
        os.write(2, b"inside the profiler\n")
        return torch.ones(2).sum()

    peak_memory_mb(forward, backward=False)
    os.write(2, b"after the profiler\n")
    err = capfd.readouterr().err
    assert "inside the profiler" not in err and "after the profiler" in err


def test_cpu_peak_memory_sums_the_profilers_memory_events_in_time_order(monkeypatch):
    """CPU (profiler faked): the running sum of allocations minus frees of CPU memory events,
    taken in the order they happened whatever order the profiler lists them in."""
    import contextlib
    import types

    mib = 2**20

    def event(start, nbytes, name="[memory]", device=torch.autograd.DeviceType.CPU):
        return types.SimpleNamespace(start_ns=lambda: start, nbytes=lambda: nbytes, name=lambda: name,
                                     device_type=lambda: device)

    events = [event(3, mib), event(1, mib), event(2, -mib),  # in time order: +1, -1, +1 MiB
              event(0, 5 * mib, name="aten::empty"), event(4, 7 * mib, device=torch.autograd.DeviceType.CUDA)]
    prof = types.SimpleNamespace(profiler=types.SimpleNamespace(
        kineto_results=types.SimpleNamespace(events=lambda: list(events))))
    monkeypatch.setattr(torch.profiler, "profile", lambda **kwargs: contextlib.nullcontext(prof))
    assert peak_memory_mb(lambda: torch.zeros(()), backward=False) == 1.0


@pytest.mark.parametrize("backward", [True, False])
def test_cuda_peak_memory_is_measured_above_the_starting_level(monkeypatch, backward):
    """CUDA (faked): synchronise, reset the peak, read the starting level, run, synchronise,
    read the peak; the result is the peak above the starting level, in MiB."""
    log = []
    allocated = {"now": 3 * 2**20, "peak": 7 * 2**20}  # a previous call's peak must not count
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))

    def reset(device=None):
        log.append("reset")
        allocated["peak"] = allocated["now"]

    def run(event, grow):
        log.append(event)
        allocated["now"] += grow
        allocated["peak"] = max(allocated["peak"], allocated["now"])

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: log.append("base") or allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: log.append("max") or allocated["peak"])

    class Loss:
        def backward(self):
            run("bwd", 2 * 2**20)

    def forward():
        run("fwd", 2**20)
        return Loss()

    peak = peak_memory_mb(forward, device="cuda:0", backward=backward)
    assert peak == (3.0 if backward else 1.0)
    assert log == ["sync", "reset", "base", "fwd"] + ["bwd"] * backward + ["sync", "max"]


def test_rev46_a_cost_one_case_leaves_to_the_next_does_not_become_that_cases_median(monkeypatch):
    """Three cases of 1 ms each; ``b`` costs 1 ms more whenever it runs right after ``a`` (what a
    case that evicts the caches or lowers the clock leaves to the next one).  Interleaving is
    there so that such effects are shared, not billed to one case: over 6 repetitions, ``b``
    must not follow ``a`` in most of them, so its median stays 1 ms.  The rotation kept the
    cyclic order a -> b -> c and measured b at 2 ms (the penalty in 4 of 6 repetitions)."""
    timing, clock = _fake_timing(monkeypatch)
    last = []

    def case(name):
        def forward():
            penalty = 0.001 if name == "b" and last and last[-1] == "a" else 0.0
            last.append(name)
            clock.spend(0.001 + penalty, f"fwd {name}")
            return _FakeLoss(clock, name, 0.0)
        return forward

    res = measure_interleaved({n: case(n) for n in "abc"}, repeats=6, warmup=1)
    timed = last[3:]  # after the warm-up
    after_a = sum(1 for prev, cur in zip(last[2:], timed) if cur == "b" and prev == "a")
    assert after_a <= 3, timed  # at most half of b's 6 repetitions
    assert res["b"].fwd_median == pytest.approx(1.0)
    assert all(len(m.fwd_ms) == 6 for m in res.values())


@pytest.mark.parametrize("n, repeats", [(4, 10), (3, 50)])
def test_a_cost_one_case_leaves_to_the_next_is_not_its_median_at_any_number_of_repetitions(monkeypatch, n,
                                                                                          repeats):
    """As review 46's test, at repetition counts the harness uses: SweepConfig's default --repeats
    10 (four fast cases, e.g. --methods softmax exact learned_dual: learned_dual fitted and
    amortised), and core_benchmark's repeats=50 with its three cases (softmax, exact, learned_dual).
    The case after the worst-placed pair pays 1 ms more right after its predecessor."""
    timing, clock = _fake_timing(monkeypatch)
    names = "abcd"[:n]
    # the pair the rotation places worst: the last case after the one before it
    before, victim = names[-2], names[-1]
    last: list = []
    res = measure_interleaved(_ca_rev189_cases(clock, names, before, victim, last), repeats=repeats, warmup=0)
    assert all(len(m.fwd_ms) == repeats for m in res.values())  # measured equally often
    after = sum(1 for prev, cur in zip(last, last[1:]) if cur == victim and prev == before)
    assert after <= repeats // 2, f"{victim} follows {before} in {after} of its {repeats} repetitions"
    assert res[victim].fwd_median < 2.0


# ----------------------------------------------------------------------------- the fastest series

def test_the_fastest_series_is_the_quickest_measured_time_and_says_whether_one_failed():
    """One rule for every verdict and figure that names a fastest series (the core targets,
    the graph targets, the speed figure): a zero, negative, NaN, infinite or missing time is a
    failed measurement, never the fastest, and makes the answer incomplete, as a series that
    raised does."""
    assert timing.fastest({"a": 2.0, "b": 1.0}) == ("b", 1.0, True)
    for bad in (0.0, -1.0, math.nan, math.inf, None, ""):
        quickest = timing.fastest({"a": 2.0, "b": bad})
        assert quickest == ("a", 2.0, False), bad
    assert timing.fastest({"a": 2.0}, ["c"]) == ("a", 2.0, False)
    none = timing.fastest({"a": math.nan})
    assert none.name is None and math.isnan(none.time) and not none.complete


def test_a_ratio_of_times_is_nan_where_either_time_failed():
    """Before: the core targets divided by a zero time (ZeroDivisionError after every row was
    measured) and took a backend with a zero time as the fastest."""
    assert timing.time_ratio(3.0, 2.0) == 1.5
    for a, b in ((0.0, 1.0), (1.0, 0.0), (math.nan, 1.0), (1.0, None)):
        assert math.isnan(timing.time_ratio(a, b)), (a, b)


def test_ca_rev71_a_bool_is_no_measured_time():
    """'anything that is no number is a failed measurement' (is_measured_time): float(True) is
    1.0, so a flag in a time field is the fastest series at 1 ms."""
    assert not timing.is_measured_time(True)
    assert timing.fastest({"a": True, "b": 2.0}).name == "b"


# ---- ca_rev189 (review of 1ca0b7f; its strict xfails now pass)

def _ca_rev189_cases(clock, names, before, victim, log):
    """Cases of 1 ms each (fake clock); ``victim`` costs 1 ms more whenever it runs right after
    ``before`` (what a case that evicts the caches or lowers the clock leaves to the next one).
    Every call, warm-up included, is appended to ``log``."""
    def case(name):
        def forward():
            penalty = 0.001 if name == victim and log and log[-1] == before else 0.0
            log.append(name)
            clock.spend(0.001 + penalty, f"fwd {name}")
            return _FakeLoss(clock, name, 0.0)
        return forward
    return {n: case(n) for n in names}


def test_ca_rev189_the_step_from_the_warm_up_into_the_first_repetition_is_counted(monkeypatch):
    """Two cases, 10 repetitions after a warm-up (the graph benchmark's amortised part times
    'amortised' and 'dual' so, at its default --repeats 10; a sweep cell of two fast methods at
    the sweep's default 10).  The warm-up runs the cases in their given order, so the first
    timed repetition starts right after the last case; counting that step, ``a`` must not
    follow ``b`` in more than half of its repetitions (docs/results_format.md, timing rules)."""
    timing, clock = _fake_timing(monkeypatch)
    log: list = []
    res = measure_interleaved(_ca_rev189_cases(clock, "ab", "b", "a", log), repeats=10, warmup=1)
    after = sum(1 for i in range(2, len(log)) if log[i] == "a" and log[i - 1] == "b")  # the timed runs of a
    assert after <= 5, f"a follows b in {after} of its 10 timed repetitions ({log})"
    assert res["a"].fwd_median < 2.0


def test_ca_rev189_no_case_follows_the_same_case_in_most_of_an_odd_number_of_repetitions(monkeypatch):
    """Three cases at 5 repetitions (bench_core --tiny: softmax, exact, learned_dual; a sweep or
    graph-benchmark forest with three methods at --repeats 5, the --quick sweep's count), no
    warm-up, so that only the planned orders count: whichever case leaves a cost to whichever
    other, the one after it must not pay it in most (3 or more) of its 5 repetitions."""
    import itertools

    for before, victim in itertools.permutations("abc", 2):
        timing, clock = _fake_timing(monkeypatch)
        log: list = []
        res = measure_interleaved(_ca_rev189_cases(clock, "abc", before, victim, log), repeats=5, warmup=0)
        after = sum(1 for prev, cur in zip(log, log[1:]) if cur == victim and prev == before)
        assert after <= 2, f"{victim} follows {before} in {after} of its 5 repetitions ({log})"
        assert res[victim].fwd_median == pytest.approx(1.0)


@pytest.mark.parametrize("n", [3, 4, 5, 7])
@pytest.mark.parametrize("repeats", [5, 6, 9, 10, 30])
@pytest.mark.parametrize("warmed", [False, True])
def test_no_ordered_pair_takes_half_of_the_repetitions_where_a_plan_allows_it(n, repeats, warmed):
    """At three cases or more the plan keeps every ordered pair (a case after itself included,
    and the step from the warm-up's last case counted) below half of the repetitions, so that
    no case's median pays what another leaves behind (ca_rev189: a greedy plan had let a pair
    take 3 of 5)."""
    from convex_attention.bench.timing import _schedule

    orders = _schedule(n, repeats, n - 1 if warmed else None)
    assert len(orders) == repeats and all(sorted(o) == list(range(n)) for o in orders)
    seq = ([n - 1] if warmed else []) + [x for o in orders for x in o]
    counts: dict = {}
    for a, b in zip(seq, seq[1:]):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    assert max(counts.values()) <= (repeats - 1) // 2, max(counts.items(), key=lambda kv: kv[1])


def test_a_schedule_of_thousands_of_repetitions_is_planned_and_keeps_the_bound():
    """The plan's search keeps a stack of its own: recursion, a level per repetition, had raised
    RecursionError past about 990 repetitions (--repeats takes up to 100000)."""
    from convex_attention.bench.timing import _schedule

    orders = _schedule(3, 2000, 2)
    seq = [2] + [x for o in orders for x in o]
    counts: dict = {}
    for a, b in zip(seq, seq[1:]):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    assert len(orders) == 2000 and max(counts.values()) <= 999


# ---- ca_rev201 (mutation review of e81e843)

def test_ca_rev201_time_once_counts_the_backward_only_when_it_runs(monkeypatch):
    """Kills `(b if backward else 0.0)` -> `0.0` in time_once: the sweep's budget check (sweep.py)
    priced a warm-up by its forward alone (the existing test sleeps in the forward only)."""
    timing, clock = _fake_timing(monkeypatch)
    assert timing.time_once(_case(clock, "a", 0.002, 0.005)) == pytest.approx(0.007)
    assert timing.time_once(_case(clock, "b", 0.002, 0.005), backward=False) == pytest.approx(0.002)
    assert not any(isinstance(e, str) and e == "bwd b" for e in clock.log)


@pytest.mark.parametrize("repeats", [5, 7, 9])
@pytest.mark.parametrize("after", [0, 1, 2])
def test_ca_rev201_every_prefix_keeps_the_bound_with_the_step_from_the_warm_up(repeats, after):
    """Kills `<= -(-(len(out) + 1) // 2)` -> `<= repeats` in _schedule's apply: at three cases after a
    warm-up (repeats 5, 7, 9) a pair then took 2 of the first 3 steps' repetitions (a budget that stops
    there leaves it most of the median); the prefix test above runs without a warm-up only."""
    orders = timing._schedule(3, repeats, after)
    seq = [after] + [x for o in orders for x in o]
    for r in range(1, repeats + 1):
        counts: dict = {}
        for a, b in zip(seq[:3 * r + 1], seq[1:3 * r + 1]):
            counts[(a, b)] = counts.get((a, b), 0) + 1
        assert max(counts.values()) <= -(-r // 2), (r, counts)


# ---- ca_rev229 (benchmarks.md audit, part 1): the quartiles of two timings

def test_ca_rev229_the_quartiles_of_two_timings_span_half_their_range():
    """bench.csv stores q1/q3 beside each median; cvxpylayers rows rest on 2 timed calls, whose
    inclusive quartiles sit a quarter of the way in from each: the stored IQR is half the gap
    between the two calls (docs/benchmarks.md's moreau-batch spread had read it as the gap)."""
    assert timing.quartiles([]) == pytest.approx((math.nan,) * 3, nan_ok=True)
    assert timing.quartiles([3.0]) == (3.0, 3.0, 3.0)
    q1, med, q3 = timing.quartiles([10.0, 14.0])
    assert (q1, med, q3) == pytest.approx((11.0, 12.0, 13.0))
    assert q3 - q1 == pytest.approx((14.0 - 10.0) / 2)
    assert timing.quartiles([4.0, 1.0, 3.0, 2.0]) == pytest.approx((1.75, 2.5, 3.25))


def test_ca_rev229_the_moreau_batch_runs_two_calls_differ_by_twice_their_stored_iqr():
    """The committed moreau-batch sweeps (docs/results/bench-cpu-2d-moreau-batches/batch{2,4,8,16}):
    moreau's rows have 2 timed calls each, so the calls' gap over the median is twice the stored
    IQR share: at most 17 % (IQR 8.2 %) below 64², and 34 % (IQR 17 %) at 64²."""
    import csv
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "docs" / "results" / "bench-cpu-2d-moreau-batches"
    gap = {False: 0.0, True: 0.0}
    for b in (2, 4, 8, 16):
        with open(root / f"batch{b}" / "bench.csv", newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if r["method"] != "cvxpylayers":
                    continue
                assert float(r["repeats"]) == 2 and int(float(r["timed_batch"])) == min(b, 16)
                med, q1, q3 = (float(r[k]) for k in ("total_ms", "total_ms_q1", "total_ms_q3"))
                a, c = med - (q3 - q1), med + (q3 - q1)  # the two calls, from q1 = a + (c - a) / 4
                assert timing.quartiles([a, c]) == pytest.approx((q1, med, q3), rel=1e-9)
                big = r["shapes"].startswith("64x64")
                gap[big] = max(gap[big], (c - a) / med)
    assert 0.16 < gap[False] < 0.17 and 0.33 < gap[True] < 0.34


# ---- ca_rev247 (hostile review of bench.timing)

def test_ca_rev247_an_integer_too_large_for_a_float_is_no_measured_time():
    """JSON reads a time of 401 digits as an int, and float() of it raises OverflowError:
    is_measured_time raised it, so `bench_core.py --plot-only` on such a record ended in a
    traceback instead of naming the row as failed; fastest and time_ratio raised it too."""
    huge = 10**400
    assert not timing.is_measured_time(huge) and not timing.is_measured_time(-huge)
    assert timing.fastest({"a": huge, "b": 2.0}) == ("b", 2.0, False)
    assert math.isnan(timing.time_ratio(huge, 1.0)) and math.isnan(timing.time_ratio(1.0, huge))
    assert timing.is_measured_time(10**300) and timing.time_ratio(10**300, 10**299) == pytest.approx(10.0)


def test_ca_rev247_a_series_that_failed_is_never_the_fastest_even_with_a_time():
    """fastest's rule: a series in ``failed`` failed, whatever ``times`` holds for it; it had
    been named the fastest when it also had the smallest time.  ``failed`` may be an iterator."""
    assert timing.fastest({"a": 1.0, "b": 2.0}, ["a"]) == ("b", 2.0, False)
    none = timing.fastest({"a": 1.0}, iter(["a"]))
    assert none.name is None and math.isnan(none.time) and not none.complete
    assert timing.fastest({"a": 1.0, "b": 2.0}, iter([])) == ("a", 1.0, True)
    assert timing.fastest({"b": 1.0, "a": 1.0}).name == "b"  # a tie: the first given, deterministically


def test_ca_rev247_ratios_of_times_with_negative_infinite_or_textual_times():
    for a, b in ((-1.0, 1.0), (1.0, -2.0), (math.inf, 1.0), (1.0, math.inf), (-math.inf, 1.0), (True, 1.0),
                 ("", 1.0), ("x", 1.0), (1.0, "nan")):
        assert math.isnan(timing.time_ratio(a, b)), (a, b)
    assert timing.time_ratio("3", 2) == 1.5 and timing.time_ratio(1e-300, 1e-300) == 1.0


def test_ca_rev247_each_timed_call_is_stored_in_order_and_paired_with_its_own_backward(monkeypatch):
    """Fake clock: every call of every case spends a forward and a backward time of its own
    (warm-up calls 1 s each, which must appear nowhere).  Each case's fwd_ms and bwd_ms are its
    timed calls' own times in call order, the total of a repetition is its forward plus its own
    backward, and the medians and quartiles are numpy's of those lists; the calls follow
    _schedule's plan after the warm-up's last case."""
    import numpy as np

    timing, clock = _fake_timing(monkeypatch)
    names, warmup, repeats = ["a", "b", "c", "d"], 2, 7
    calls: list = []
    spent: dict = {n: [] for n in names}

    def case(name, index):
        def forward():
            calls.append(name)
            k = len(calls)
            warm = k <= warmup * len(names)
            fwd, bwd = (1.0, 1.0) if warm else (0.001 * (k % 5 + 1 + index), 0.001 * (7 * k % 11 + 1))
            if not warm:
                spent[name].append((1e3 * fwd, 1e3 * bwd))
            clock.spend(fwd, f"fwd {name}")
            return _FakeLoss(clock, name, bwd)
        return forward

    res = measure_interleaved({n: case(n, i) for i, n in enumerate(names)}, repeats=repeats, warmup=warmup)
    plan = timing._schedule(len(names), repeats, len(names) - 1)
    assert calls[warmup * len(names):] == [names[i] for order in plan for i in order]
    for n in names:
        m, fwd, bwd = res[n], [f for f, _ in spent[n]], [b for _, b in spent[n]]
        assert m.fwd_ms == pytest.approx(fwd, abs=1e-9) and m.bwd_ms == pytest.approx(bwd, abs=1e-9)
        assert m.total_ms == pytest.approx([f + b for f, b in spent[n]], abs=1e-9)
        assert max(m.total_ms) < 1000.0  # no warm-up second in any timing
        s = m.summary()
        for key, samples in (("fwd_ms", fwd), ("bwd_ms", bwd), ("total_ms", m.total_ms)):
            expected = np.percentile(samples, [25, 50, 75])
            assert (s[f"{key}_q1"], s[key], s[f"{key}_q3"]) == pytest.approx(tuple(expected), abs=1e-9), (n, key)
        assert m.total_median == pytest.approx(float(np.median([f + b for f, b in spent[n]])), abs=1e-9)


def test_ca_rev247_every_plan_runs_each_case_once_per_repetition_within_its_pair_bounds():
    """Brute force over 3 to 8 cases, 1 to 16 repetitions, with and without the warm-up's step:
    every repetition runs each case once; at every prefix of k repetitions no ordered pair (a case
    after itself included, steps between repetitions counted) occurs more than ceil(k / 2) times;
    from 5 repetitions on, in fewer than half of them (docs/results_format.md, timing rules)."""
    for n in range(3, 9):
        for repeats in range(1, 17):
            for after in (None, n - 1):
                orders = timing._schedule(n, repeats, after)
                assert len(orders) == repeats and all(sorted(o) == list(range(n)) for o in orders)
                counts: dict = {}
                previous = [] if after is None else [after]
                for k, order in enumerate(orders, 1):
                    chain = previous + list(order)
                    for pair in zip(chain, chain[1:]):
                        counts[pair] = counts.get(pair, 0) + 1
                    previous = [order[-1]]
                    assert max(counts.values()) <= -(-k // 2), (n, repeats, after, k)
                if repeats >= 5:
                    assert 2 * max(counts.values()) < repeats, (n, repeats, after, counts)


def test_a_numpy_bool_is_no_measured_time_and_no_cases_is_refused_before_any_work():
    """ca_rev247's risks: ``np.True_`` read as a 1 ms time; an empty case dict divided by zero in the planner."""
    assert not timing.is_measured_time(np.True_) and not timing.is_measured_time(np.bool_(False))
    assert timing.is_measured_time(np.float32(1.5)) and timing.is_measured_time(np.int64(2))
    with pytest.raises(ValueError, match="no cases"):
        timing.measure_interleaved({}, repeats=3, warmup=1)
