"""Wall-clock and memory measurement of forward and backward passes.

Shared machines are noisy, so methods are measured *interleaved*: every repetition runs
each method once, in an order planned so that no case follows the same one in most
repetitions (:func:`_schedule`); the figures are medians with their quartiles (the
spread).  Ratios of two methods measured this way share their noise.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Measurement", "measure_interleaved", "peak_memory_mb", "synchronize", "quartiles", "nan_max",
           "nan_median", "Fastest", "fastest", "is_measured_time",
           "time_ratio"]

# A case returns a fresh closure pair: forward() -> loss tensor; the harness calls
# loss.backward() itself so that the two passes are timed separately.
ForwardFn = Callable[[], torch.Tensor]


@dataclass
class Measurement:
    fwd_ms: list[float] = field(default_factory=list)
    bwd_ms: list[float] = field(default_factory=list)

    @property
    def fwd_median(self) -> float:
        return statistics.median(self.fwd_ms)

    @property
    def bwd_median(self) -> float:
        return statistics.median(self.bwd_ms) if self.bwd_ms else float("nan")

    @property
    def total_median(self) -> float:
        """Median of per-repetition forward+backward times."""
        if not self.bwd_ms:
            return self.fwd_median
        return statistics.median(f + b for f, b in zip(self.fwd_ms, self.bwd_ms))

    @property
    def total_ms(self) -> list[float]:
        """Per-repetition forward+backward times (forward only when nothing went backward)."""
        if not self.bwd_ms:
            return list(self.fwd_ms)
        return [f + b for f, b in zip(self.fwd_ms, self.bwd_ms)]

    def summary(self) -> dict:
        """Median and quartiles of each pass, in ms: ``fwd_ms``, ``fwd_ms_q1``, ``fwd_ms_q3``,
        the same for ``bwd_ms`` and ``total_ms`` (forward+backward per repetition): the
        columns of ``bench.csv``.  Backward entries are NaN when nothing went backward."""
        out = {}
        for name, samples in (("fwd_ms", self.fwd_ms), ("bwd_ms", self.bwd_ms), ("total_ms", self.total_ms)):
            q1, med, q3 = quartiles(samples)
            out.update({name: med, f"{name}_q1": q1, f"{name}_q3": q3})
        return out


def is_measured_time(t) -> bool:
    """Whether ``t`` is a time a measurement gave: a positive finite number.  Zero (the timer
    resolved nothing), a negative time, NaN, ±inf and anything that is no number (``None``,
    ``""``, a bool, bytes) are failed measurements, as is an integer too large for a float
    (``10**400``, which JSON reads as an int: ``float`` raises OverflowError; ca_rev247)."""
    # float(True) is 1.0 (NumPy's bool too), float(b"2") 2.0: no time either
    if isinstance(t, (bool, np.bool_, bytes, bytearray)):
        return False
    try:
        t = float(t)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(t) and t > 0


class Fastest(NamedTuple):
    """The fastest of several series (:func:`fastest`).  ``name``: the fastest series that
    gave a time (``None`` where none did); ``time``: its time (NaN where none did);
    ``complete``: no series failed, so ``name`` is the fastest of all.  Where one failed it
    might have been the fastest: ``name`` is only the fastest that ran, and a ratio taken
    against ``time`` is a bound."""

    name: str | None
    time: float
    complete: bool


def fastest(times: Mapping[str, object], failed: Iterable[str] = ()) -> Fastest:
    """The fastest of ``times`` (series → time).  A series in ``failed`` (it raised) or whose
    time is no measured time (:func:`is_measured_time`) failed.  The one rule every verdict and
    figure that names a fastest series follows (the core targets, the graph targets, the
    speed figure's ratios): a failed series is never the fastest, and never forgotten (one in
    ``failed`` with a time in ``times`` too had been named the fastest: ca_rev247)."""
    failed = set(failed)
    timed = {name: float(t) for name, t in times.items()  # type: ignore[arg-type]
             if is_measured_time(t) and name not in failed}
    complete = len(timed) == len(times) and not failed
    if not timed:
        return Fastest(None, math.nan, complete)
    name = min(timed, key=timed.__getitem__)
    return Fastest(name, timed[name], complete)


def time_ratio(numerator, denominator) -> float:
    """``numerator / denominator`` of two times, NaN unless both are measured times
    (:func:`is_measured_time`): a ratio involving a failed measurement is no measurement."""
    if not (is_measured_time(numerator) and is_measured_time(denominator)):
        return math.nan
    return float(numerator) / float(denominator)


def nan_max(values) -> float:
    """The largest of ``values``, NaN when any is NaN: Python's ``max`` keeps a NaN only when
    it comes first, so a failed measurement could pass a check as the smaller value."""
    values = [float(v) for v in values]
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def nan_median(values) -> float:
    """The median of ``values``, NaN when any is NaN (``statistics.median`` orders NaN
    arbitrarily)."""
    values = [float(v) for v in values]
    return math.nan if any(math.isnan(v) for v in values) else statistics.median(values)


def quartiles(samples) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of ``samples`` (inclusive quartiles; NaN for no samples)."""
    samples = list(samples)
    if not samples:
        return math.nan, math.nan, math.nan
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, statistics.median(samples), q3


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _once(forward: ForwardFn, device, backward: bool) -> tuple[float, float]:
    synchronize(device)
    t0 = time.perf_counter()
    loss = forward()
    synchronize(device)
    t1 = time.perf_counter()
    if not backward:
        return (t1 - t0) * 1e3, float("nan")
    loss.backward()
    synchronize(device)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def time_once(forward: ForwardFn, device="cpu", backward: bool = True) -> float:
    """Wall seconds of one call of ``forward`` (and ``loss.backward()``), the device
    synchronised: what one untimed warm-up costs."""
    f, b = _once(forward, device, backward)
    return (f + (b if backward else 0.0)) / 1e3


#: Up to this many cases every order is a candidate of :func:`_schedule` (5: 120 orders, 0.65 s
#: to plan 1000 repetitions, once per process); above it the rows of a Williams square and the
#: rotations, forwards and backwards (at 5 cases these left one case first in a third of them).
ALL_ORDERS_UP_TO = 5


def _williams_rows(n: int) -> list[list[int]]:
    """The rows of a Williams square of ``n`` cases and their reversals: orders in which each
    case follows every other equally often (the crossover trials' carry-over balance)."""
    base, low, high = [0], 1, n - 1
    while len(base) < n:
        base.append(low)
        low += 1
        if len(base) < n:
            base.append(high)
            high -= 1
    rows = [[(x + r) % n for x in base] for r in range(n)]
    return rows + [row[::-1] for row in rows]


@functools.lru_cache(maxsize=64)
def _schedule(n: int, repeats: int, after: int | None = None) -> tuple[tuple[int, ...], ...]:
    """The order of the ``n`` cases in each of ``repeats`` repetitions, planned so that no case
    follows the same case in most of its repetitions (whatever one case leaves behind, cold
    caches or a lowered clock, is then never most of another's median: a pure rotation kept
    the cyclic order and billed it to the same next case every time, and a rotation reversed
    every other cycle still did at repetition counts that are not a multiple of 2n: reviews
    46 and 49), the step from one repetition to the next counted too, and the step into the
    first from case ``after`` (the warm-up's last, where one ran: ca_rev189).  At three cases
    or more no ordered pair (a case after itself included: its own leftovers favour it)
    occurs in half the repetitions or more where a plan allows it, so that no median pays
    for it, else in more than half (a greedy choice had let one occur in 3 of 5: ca_rev189),
    nor in more than half of any first repetitions, rounded up (a budget may stop the run
    there): a depth-first search over the candidate orders, each repetition trying first the
    order that keeps the most frequent ordered pair least frequent, then the most frequent
    (case, position); where no plan meets either bound (three cases at three repetitions) or
    past a node limit, that greedy choice alone.  Two cases alternate, as they must (one then
    follows the other in one repetition more than half at odd counts), starting with the case
    the warm-up did not end on."""
    names = list(range(n))
    if n <= 2:
        start = 1 if n == 2 and after == 1 else 0  # (after the warm-up's (0, 1) the first is (1, 0))
        return tuple(tuple(names[(r + start) % n:] + names[: (r + start) % n]) for r in range(repeats))
    candidates = ([list(p) for p in itertools.permutations(names)] if n <= ALL_ORDERS_UP_TO else
                  _williams_rows(n) + [o for r in range(n) for o in (names[r:] + names[:r],
                                                                      (names[r:] + names[:r])[::-1])])
    pairs = [[0] * n for _ in range(n)]
    places = [[0] * n for _ in range(n)]
    out: list[tuple[int, ...]] = []
    budget = [0]
    cap = 0

    def ranked(previous: list[int]) -> list[list[int]]:
        most = max(max(row) for row in pairs)
        keyed = []
        for order in candidates:
            seq = previous + order
            keyed.append(((max([most] + [pairs[a][b] + 1 for a, b in zip(seq, seq[1:])]),
                           max(places[x][i] + 1 for i, x in enumerate(order))), order))
        return [order for _, order in sorted(keyed, key=lambda k: k[0])]

    def apply(previous: list[int], order: list[int], sign: int) -> bool:
        """Count (or uncount) ``order``'s pairs and places; whether every pair is within bounds."""
        seq = previous + order
        fits = True
        for a, b in zip(seq, seq[1:]):  # (a case after itself too: its own leftovers favour it)
            pairs[a][b] += sign
            fits = fits and pairs[a][b] <= cap
        for i, x in enumerate(order):
            places[x][i] += sign
        return fits and max(max(row) for row in pairs) <= -(-(len(out) + 1) // 2)

    def search(first: list[int]) -> bool:
        """Depth-first over the repetitions, one level each, on a stack of its own (recursion had
        raised RecursionError past about 990 repetitions)."""
        frames = [(first, iter(ranked(first)))]  # per level: the case before it, its untried orders
        while len(out) < repeats:
            previous, options = frames[-1]
            order = next(options, None)
            if order is None:  # every order of this level tried: take back the choice of the level above
                frames.pop()
                if not frames:
                    return False
                apply(frames[-1][0], list(out.pop()), -1)
                continue
            budget[0] -= 1
            if budget[0] < 0:
                return False
            if apply(previous, order, +1):
                out.append(tuple(order))
                frames.append(([order[-1]], iter(ranked([order[-1]]))))
            else:
                apply(previous, order, -1)
        return True

    def restart() -> None:
        for row in pairs + places:
            row[:] = [0] * n
        out.clear()
        budget[0] = _SCHEDULE_NODES

    first = [] if after is None else [after]
    # (past the node limit in repetitions alone no search can finish: the greedy plan at once)
    for bound in ((repeats - 1) // 2, repeats // 2) if repeats <= _SCHEDULE_NODES else ():
        cap = bound  # in fewer than half (no median touched), else in half (read by apply)
        restart()
        if search(first):
            return tuple(out)
    restart()  # no plan within either bound, or past the node limit: the greedy choice
    previous = first
    for _ in range(repeats):
        order = ranked(previous)[0]
        apply(previous, order, +1)
        out.append(tuple(order))
        previous = [order[-1]]
    return tuple(out)


#: How many candidate orders :func:`_schedule`'s search may try before it takes the greedy plan.
_SCHEDULE_NODES = 20_000


def measure_interleaved(cases: Mapping[str, ForwardFn], device="cpu", repeats: int = 30, warmup: int = 5,
                        backward: bool = True, budget_s: float | None = None) -> dict[str, Measurement]:
    """Time ``forward`` and ``loss.backward()`` of every case, interleaved.

    Args:
        cases: name -> forward closure returning a scalar loss (inputs must require grad
            if ``backward``).
        repeats, warmup: timed and untimed repetitions per case.
        budget_s: stop adding repetitions once this much wall time has been spent on
            timed repetitions (the warm-up does not count; at least 3 are kept).

    Returns:
        name -> :class:`Measurement` with every repetition's milliseconds.
    """
    names = list(cases)
    if not names:  # no order to plan (the planner divided by the count: ca_rev247's risk)
        raise ValueError("measure_interleaved: no cases to time")
    for _ in range(warmup):
        for name in names:
            _once(cases[name], device, backward)
    out = {name: Measurement() for name in names}
    start = time.perf_counter()
    # the step from the warm-up's last case into the first repetition counts too (ca_rev189)
    for r, order in enumerate(_schedule(len(names), repeats, after=len(names) - 1 if warmup else None)):
        for name in (names[i] for i in order):
            f, b = _once(cases[name], device, backward)
            out[name].fwd_ms.append(f)
            if backward:
                out[name].bwd_ms.append(b)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(forward: ForwardFn, device="cpu", backward: bool = True) -> float:
    """Peak memory allocated *during* one forward(+backward), in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` above the starting level.  CPU: the
    largest running sum of allocations minus frees recorded by the PyTorch profiler.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss = forward()
        if backward:
            loss.backward()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = forward()
        if backward:
            loss.backward()
        del loss
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak / 2**20
