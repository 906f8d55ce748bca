"""convex_attention.bench.targets: the core speed targets and the amortised dual's targets, judged from
measured rows."""
import math
import sys

import pytest
from helpers import benchmark_script, read_json

from convex_attention.bench.targets import core_benchmark


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_core_benchmark_tiny_prints_the_three_ratios(tmp_path):

    from convex_attention.cvx import available_backends

    lines = []
    out = core_benchmark(batch=2, shapes=((8, 8), (4, 4)), cvx_shapes=((4, 4), (2, 2)), cvx_batch=1, repeats=3,
                         cvx_repeats=1, out_dir=str(tmp_path), log=lines.append)
    assert set(out["ratios"]) == {"exact/softmax", "exact/learned_dual+loss", "cvxpylayers/exact per sample"}
    assert all(v > 0 for v in out["ratios"].values())
    assert "target" in lines[0]
    for name in ("bench_core.csv", "bench_core.json", "bench_core.png", "bench_core.pdf"):
        assert (tmp_path / name).stat().st_size > 0
    # every installed backend is timed and reported; the headline speed-up is the fastest's
    assert set(out["backend_ratios"]) == set(available_backends())
    assert out["ratios"]["cvxpylayers/exact per sample"] == min(out["backend_ratios"].values())
    assert out["backend_ratios"][out["fastest_backend"]] == min(out["backend_ratios"].values())
    for backend in available_backends():
        assert f"cvxpylayers[{backend}]/exact per sample" in lines[0]
    # the ratios are ratios of the rows' medians of forward+backward (one statistic), with spread
    by = {(r["method"], r["shapes"]): r for r in out["rows"]}
    exact, softmax = by[("exact", "8x8+4x4")], by[("softmax", "8x8+4x4")]
    assert out["ratios"]["exact/softmax"] == exact["total_ms"] / softmax["total_ms"]
    for r in out["rows"]:
        assert r["total_ms_q1"] <= r["total_ms"] <= r["total_ms_q3"]

    def refuse(token):
        raise ValueError(token)

    data = read_json(tmp_path / "bench_core.json", parse_constant=refuse)  # strict JSON
    assert data["fastest_backend"] == out["fastest_backend"] and "median" in data["statistic"]


def learned_row(kind, violation, levels=2, size=8, generator="lesion", status="ok", per_sample_ms=1.0):
    return {"method": "learned_dual", "dual_kind": kind, "backend": "", "status": status, "generator": generator,
            "scale": 1.0, "dims": 2, "size": size, "levels": levels, "batch": 8, "temperature": 1.0,
            "dtype": "float32", "device": "cpu", "seed": 0, "violation_mean": violation,
            "per_sample_ms": per_sample_ms}


def test_amortised_targets_judge_the_worst_cell_per_generator_and_level():
    from convex_attention.bench.targets import amortised_targets, format_targets

    rows = [learned_row("zero", 0.3, size=8), learned_row("amortised", 0.0015, size=8),
            learned_row("zero", 0.3, size=16), learned_row("amortised", 0.006, size=16),  # 2 %: a miss
            learned_row("zero", 0.3, levels=3, size=8), learned_row("amortised", 0.006, levels=3, size=8),
            learned_row("zero", 0.3, generator="gaussian"),
            learned_row("amortised", float("nan"), generator="gaussian"),
            {**learned_row("exact", 0.0, size=8), "method": "exact", "dual_kind": "", "per_sample_ms": 0.5}]
    by = {(t["generator"], t["levels"]): t for t in amortised_targets(rows)}
    assert by[("lesion", 2)]["worst_ratio"] == pytest.approx(0.02) and by[("lesion", 2)]["met"] is False
    assert by[("lesion", 2)]["cells"] == 2 and by[("lesion", 2)]["time_vs_exact"] == pytest.approx(2.0)
    assert by[("lesion", 3)]["met"] is True and by[("lesion", 3)]["threshold"] == 0.10
    assert by[("gaussian", 2)]["met"] is False, "NaN never meets a target"
    text = format_targets(list(by.values()))
    assert "NOT met" in text and " met" in text


def test_amortised_targets_not_measured_never_pass():
    from convex_attention.bench.targets import amortised_targets, format_targets

    rows = [learned_row("zero", 0.3), learned_row("amortised", 0.0, status="skipped")]
    (t,) = amortised_targets(rows)
    assert t["met"] is None and "not measured" in format_targets([t]) and "NOT met" in format_targets([t])


def test_amortised_targets_hold_the_axial_family_to_one_percent_and_chains_as_before():
    from convex_attention.bench.targets import amortised_targets, format_targets

    axial = [{**learned_row("zero", 0.4, levels=3), "structure": "axial"},
             {**learned_row("amortised", 0.002, levels=3), "structure": "axial"}]  # 0.5 %
    mixed = [{**learned_row("zero", 0.4, levels=4), "structure": "mixed"},
             {**learned_row("amortised", 0.2, levels=4), "structure": "mixed"}]  # no target
    chain = [learned_row("zero", 0.3, levels=3), learned_row("amortised", 0.006, levels=3)]  # 2 % <= 10 %
    by = {(t["structure"], t["levels"]): t for t in amortised_targets(axial + mixed + chain)}
    assert set(by) == {("axial", 3), ("chain", 3)}
    assert by[("axial", 3)]["threshold"] == 0.01 and by[("axial", 3)]["met"] is True
    assert by[("chain", 3)]["threshold"] == 0.10 and by[("chain", 3)]["met"] is True
    assert "structure axial (3 maps)" in format_targets(list(by.values()))


def test_bench_core_refuses_before_any_work_in_one_line(tmp_path, capsys, monkeypatch):
    """A review found: no lock, an earlier run's files replaced without a word, unbounded
    --batch, --tiny ignoring --batch, and tracebacks from --plot-only on a crafted record."""
    from test_lock import hold_lock

    script = benchmark_script("bench_core")
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: pytest.fail("work started"))

    def refused(*argv):
        with pytest.raises(SystemExit) as stop:
            script.main(list(argv))
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "at most" in refused("--batch", str(1 << 30), "--out", str(tmp_path / "a"))
    assert "--tiny sets its own sizes" in refused("--tiny", "--batch", "8", "--out", str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bench_core.csv").write_text("mine\n")
    assert "--overwrite" in refused("--tiny", "--out", str(tmp_path / "b"))
    assert (tmp_path / "b" / "bench_core.csv").read_text() == "mine\n"
    held = tmp_path / "held"
    held.mkdir()
    proc = hold_lock(held, 60)
    try:
        assert f"pid {proc.pid}" in refused("--tiny", "--out", str(held))
    finally:
        proc.kill()
        proc.wait()
    # (a record whose rows all lack a time draws a figure that says nothing was measured: ca_rev77)
    zero_batch = '{"rows": [{"batch": 0, "method": "exact", "shapes": "4", "fwd_ms": 1, "total_ms": 2}], "ratios": {}}'
    for record in ('{"rows": [1, 2], "ratios": {}}', zero_batch, '[]'):
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / "bench_core.json").write_text(record)
        assert "--plot-only" in refused("--plot-only", "--out", str(tmp_path / "c"))
    # a record that is no regular file is named so (it had said "no such file" of a link to /dev/zero: ca_rev250)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bench_core.json").symlink_to("/dev/zero")
    assert "(not a regular file)" in refused("--plot-only", "--out", str(tmp_path / "d"))
    assert "(no such file)" in refused("--plot-only", "--out", str(tmp_path / "e"))
    # NaN is no strict JSON, which the script writes: a record holding it was edited by hand, and had been drawn
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "bench_core.json").write_text(zero_batch.replace('"total_ms": 2', '"total_ms": NaN'))
    assert "NaN is not a number in strict JSON" in refused("--plot-only", "--out", str(tmp_path / "f"))


def test_bench_core_waiting_for_a_run_refuses_the_results_that_run_wrote(tmp_path, capsys, monkeypatch):
    """With --wait, the earlier-outputs check ran before the wait only: the run waited for
    wrote its files, and this one replaced them without --overwrite (found by a review)."""
    import contextlib

    script = benchmark_script("bench_core")
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: pytest.fail("work started"))
    out = tmp_path / "core"

    @contextlib.contextmanager
    def lock_after_the_other_run(folder, **kwargs):
        (out / "bench_core.csv").write_text("the other run's\n")  # what it wrote while this one waited
        yield

    monkeypatch.setattr(script, "results_lock", lock_after_the_other_run)
    with pytest.raises(SystemExit) as stop:
        script.main(["--tiny", "--wait", "--out", str(out)])
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "bench_core.csv").read_text() == "the other run's\n"


def test_the_core_figure_names_a_backend_that_failed(tmp_path, monkeypatch):
    """A review found a failed backend filtered out before the core figure was drawn: the figure
    showed the others as if it had never been timed."""
    from convex_attention.bench.targets import plot_core_record
    from convex_attention.io import figures

    seen = {}

    def keep(fig, path, env=None, notes=()):
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        seen["footer"] = figures.env_line(env, notes).replace("\n", " ")
        return path

    monkeypatch.setattr(figures, "save", keep)

    def row(method, total, shapes, backend="", batch=4):
        return {"method": method, "backend": backend, "status": "ok", "reason": "", "shapes": shapes, "batch": batch,
                "dtype": "float32", "device": "cpu", "fwd_ms": total / 2, "bwd_ms": total / 2, "total_ms": total}

    rows = [row("softmax", 1.0, "8x8+4x4"), row("exact", 2.0, "8x8+4x4"), row("exact", 0.5, "4x4+2x2"),
            row("cvxpylayers", 50.0, "4x4+2x2", "moreau", 2),
            {"method": "cvxpylayers", "backend": "diffcp-scs", "status": "error", "reason": "SolverError: SCS failed",
             "shapes": "4x4+2x2", "batch": 2, "dtype": "float64", "device": "cpu"}]
    plot_core_record({"rows": rows, "ratios": {"exact/softmax": 2.0}}, str(tmp_path / "core.png"))
    assert "FAILED, not drawn: cvxpylayers (diffcp-scs)" in seen["titles"][1]
    assert "FAILED" not in seen["titles"][0]
    assert "FAILED, not drawn: 1 row(s) (status error): cvxpylayers (diffcp-scs): SolverError: SCS failed" \
        in seen["footer"]


@pytest.mark.parametrize("broken, why", [
    ([learned_row("zero", 0.3, size=16), learned_row("amortised", 0.0, size=16, status="error")], "amortised errored"),
    ([learned_row("zero", 0.3, size=16, status="error"), learned_row("amortised", 0.001, size=16)], "λ=0 errored"),
    ([learned_row("amortised", 0.001, size=16)], "λ=0 row missing"),
    ([learned_row("zero", 0.3, size=16)], "amortised row missing"),
    ([learned_row("zero", float("nan"), size=16), learned_row("amortised", 0.001, size=16)], "λ=0 NaN"),
    ([learned_row("zero", 0.0, size=16), learned_row("amortised", 0.001, size=16)], "λ=0 zero"),
    ([learned_row("zero", float("inf"), size=16), learned_row("amortised", 0.001, size=16)], "λ=0 infinite"),
    ([learned_row("zero", -0.3, size=16), learned_row("amortised", 0.001, size=16)], "λ=0 negative"),
])
def test_a_cell_that_failed_makes_its_amortised_target_not_met(broken, why):
    """The reviewer's case: one cell met, another whose rows failed or cannot give a ratio;
    the failed cell used to be dropped and the target reported met over the other."""
    from convex_attention.bench.targets import amortised_targets, format_targets

    good = [learned_row("zero", 0.3, size=8), learned_row("amortised", 0.0015, size=8)]  # 0.5 %: met alone
    (alone,) = amortised_targets(good)
    assert alone["met"] is True
    (t,) = amortised_targets(good + broken)
    assert t["met"] is False, why  # the old code: True, over the good cell alone
    assert t["failed_cells"] == 1 and t["cells"] == 1 and alone["failed_cells"] == 0
    text = format_targets([t])
    assert "1 cell(s) FAILED" in text and text.endswith("NOT met"), text
    (only,) = amortised_targets(broken)  # no cell measured, one failed: NOT met, not "not measured"
    assert only["met"] is False and only["cells"] == 0 and "no cell measured" in format_targets([only])


def test_skipped_cells_are_counted_and_not_measured():
    from convex_attention.bench.targets import amortised_targets, format_targets

    good = [learned_row("zero", 0.3, size=8), learned_row("amortised", 0.0015, size=8)]
    skipped = [learned_row("zero", 0.3, size=16, status="skipped"),
               learned_row("amortised", 0.0, size=16, status="skipped")]
    (t,) = amortised_targets(good + skipped)
    assert t["met"] is True and t["skipped_cells"] == 1 and t["failed_cells"] == 0 and t["cells"] == 1
    assert "1 cell(s) skipped" in format_targets([t])


def _verdicts(text):
    """The verdict printed after each ratio of :func:`_format`'s text, by the ratio's name."""
    out = {}
    for line in text.splitlines():
        if "   target " in line:
            name = line.split("  ")[0].strip()
            out[name] = line.rsplit("   ", 1)[1]
    return out


def test_the_core_ratios_are_met_below_and_on_a_ceiling_and_above_and_on_a_floor():
    """Each ratio's verdict against its kind of target, the value below, exactly on and above it,
    and a NaN ratio not measured (found by mutation testing: met and NOT met inverted, and a
    value exactly on a ceiling judged NOT met, both survived)."""
    from convex_attention.bench.targets import CVX_RATIO, _format

    ratios = {"le-below": 2.0, "le-on": 3.0, "le-above": 4.0, "ge-below": 9e3, "ge-on": 1e4, "ge-above": 2e4,
              CVX_RATIO: float("nan")}
    targets = {"le-below": ("<=", 3.0), "le-on": ("<=", 3.0), "le-above": ("<=", 3.0), "ge-below": (">=", 1e4),
               "ge-on": (">=", 1e4), "ge-above": (">=", 1e4), CVX_RATIO: (">=", 1e4)}
    verdicts = _verdicts(_format([], ratios, targets, {}, None))
    assert verdicts == {"le-below": "met", "le-on": "met", "le-above": "NOT met", "ge-below": "NOT met",
                        "ge-on": "met", "ge-above": "met", CVX_RATIO: "NOT measured"}, verdicts


@pytest.mark.parametrize("nan_size, good_size", [(8, 16), (16, 8)])  # cells are taken in either order
def test_a_nan_amortised_violation_beside_a_good_cell_is_an_infinite_miss(nan_size, good_size):
    """A NaN amortised violation counts as an infinite ratio, whichever cell comes first:
    Python's max drops a NaN that is not first, and the good cell alone met the target
    (found by mutation testing)."""
    from convex_attention.bench.targets import amortised_targets

    rows = [learned_row("zero", 0.3, size=good_size), learned_row("amortised", 0.0015, size=good_size),
            learned_row("zero", 0.3, size=nan_size), learned_row("amortised", float("nan"), size=nan_size)]
    (t,) = amortised_targets(rows)
    assert t["met"] is False and t["worst_ratio"] == math.inf and t["cells"] == 2 and t["failed_cells"] == 0


@pytest.mark.parametrize("statuses", [("error", "skipped"), ("skipped", "error")])
def test_a_cell_with_an_errored_row_beside_a_skipped_one_failed(statuses):
    """One row errored and the other was skipped: the cell failed (not skipped) and the
    target is NOT met (found by mutation testing: counted as skipped, the target met over
    the good cell)."""
    from convex_attention.bench.targets import amortised_targets, format_targets

    good = [learned_row("zero", 0.3, size=8), learned_row("amortised", 0.0015, size=8)]
    mixed = [learned_row("zero", 0.3, size=16, status=statuses[0]),
             learned_row("amortised", 0.001, size=16, status=statuses[1])]
    (t,) = amortised_targets(good + mixed)
    assert t["met"] is False and t["failed_cells"] == 1 and t["skipped_cells"] == 0 and t["cells"] == 1
    assert "1 cell(s) FAILED" in format_targets([t])


@pytest.mark.parametrize("levels, structure, amortised", [(2, None, 0.01), (3, None, 0.1), (3, "axial", 0.01)])
def test_a_worst_amortised_ratio_exactly_on_its_threshold_is_met(levels, structure, amortised):
    """The threshold is a ceiling the ratio may reach: λ = 0's violation 1, the amortised one
    exactly the threshold (found by mutation testing: `<` for `<=` survived)."""
    from convex_attention.bench.targets import amortised_targets

    extra = {"structure": structure} if structure else {}
    rows = [{**learned_row("zero", 1.0, levels=levels), **extra},
            {**learned_row("amortised", amortised, levels=levels), **extra}]
    (t,) = amortised_targets(rows)
    assert t["worst_ratio"] == t["threshold"] == amortised and t["met"] is True


# ----------------------------------------------------------------------------- core_benchmark, timed by a stand-in

# per-repetition forward and backward ms of each case, by method, backend and finest shape; the median
# of forward + backward (the ratios' statistic) differs from the forward median and the sum of the medians
CORE_TIMES = {("softmax", "", 8): ([1.0, 2.0, 8.0], [9.0, 2.0, 2.0]),  # totals 10, 4, 10
              ("exact", "", 8): ([30.0, 4.0, 20.0], [10.0, 36.0, 2.0]),  # 40, 40, 22
              ("learned_dual", "", 8): ([5.0, 20.0, 1.0], [20.0, 5.0, 1.0]),  # 25, 25, 2
              ("exact", "", 4): ([1.0, 0.5, 3.0], [1.0, 2.5, 3.0]),  # 2, 3, 6
              ("cvxpylayers", "fast", 4): ([3000.0, 1000.0, 1.0], [1000.0, 3000.0, 1.0]),  # 4000, 4000, 2
              ("cvxpylayers", "slow", 4): ([30000.0, 1.0, 1.0], [10000.0, 1.0, 40000.0])}  # 40000, 2, 40001


def _stand_in_timing(monkeypatch, installed=("slow", "broken", "fast"), judged=True):
    """core_benchmark with cases that record what they are and timings from CORE_TIMES (the
    `broken` backend raises); returns the list of (case, repeats) measured.  ``judged``: the
    targets are taken as set at CORE_KW's sides, so that its ratios get verdicts."""
    from convex_attention.bench import targets
    from convex_attention.bench.timing import Measurement

    if judged:
        monkeypatch.setattr(targets, "CORE_TARGET_SIDES", {
            "batch": CORE_KW["batch"], "shapes": CORE_KW["shapes"], "cvx_shapes": CORE_KW["cvx_shapes"],
            "dtype": "float32"})

    measured = []

    def make_case(method, h, batch, dtype=None, device="cpu", options=None, **kwargs):
        return {"method": method, "backend": (options or {}).get("backend", ""), "finest": h.shapes[0][0],
                "batch": batch, "dtype": dtype, "device": str(device)}

    def measure_interleaved(cases, device="cpu", repeats=30, warmup=5, **kwargs):
        out = {}
        for name, case in cases.items():
            measured.append((case, repeats))
            if case["backend"] == "broken":
                raise RuntimeError("the solver failed")
            fwd, bwd = CORE_TIMES[(case["method"], case["backend"], case["finest"])]
            out[name] = Measurement(list(fwd), list(bwd))
        return out

    monkeypatch.setattr(targets, "make_case", make_case)
    monkeypatch.setattr(targets, "measure_interleaved", measure_interleaved)
    monkeypatch.setattr(targets, "peak_memory_mb", lambda case, device="cpu", **kw: 0.0)
    monkeypatch.setattr(targets, "available_backends", lambda: list(installed))
    return measured


def _total_median(method, backend, finest):
    import statistics

    fwd, bwd = CORE_TIMES[(method, backend, finest)]
    return statistics.median(f + b for f, b in zip(fwd, bwd))


CORE_KW = dict(batch=4, shapes=((8, 8), (4, 4)), cvx_shapes=((4, 4), (2, 2)), cvx_batch=2, repeats=3, cvx_repeats=2)
CORE_THRESHOLDS = {"exact/softmax": ("<=", 3.0), "exact/learned_dual+loss": ("<=", 1.0),
                   "cvxpylayers/exact per sample": (">=", 1e4)}  # docs/benchmarks.md, bench_core.py


def test_core_benchmark_ratios_are_of_total_ms_medians_against_every_backend_and_the_fastest(monkeypatch):
    """The ratios are ratios of the medians of forward+backward (total_ms); the per-sample
    speed-up is per backend, a backend that raises is an error row and the others still
    count, the headline is the fastest backend's, and each verdict is printed against its
    target (found by mutation testing: only a slow end-to-end run checked any of it)."""
    import torch

    from convex_attention.bench.targets import CVX_RATIO, core_benchmark

    measured = _stand_in_timing(monkeypatch)
    lines = []
    out = core_benchmark(log=lines.append, **CORE_KW)
    by = {(r["method"], r["backend"], r["shapes"]): r for r in out["rows"]}
    assert set(by) == {("softmax", "", "8x8+4x4"), ("exact", "", "8x8+4x4"), ("learned_dual+loss", "", "8x8+4x4"),
                       ("exact", "", "4x4+2x2"), ("cvxpylayers", "slow", "4x4+2x2"),
                       ("cvxpylayers", "broken", "4x4+2x2"), ("cvxpylayers", "fast", "4x4+2x2")}
    broken = by[("cvxpylayers", "broken", "4x4+2x2")]
    assert broken["status"] == "error" and "the solver failed" in broken["reason"]
    for (method, backend, shapes), r in by.items():
        if r["status"] != "ok":
            continue
        finest = int(shapes.split("x")[0])
        total = _total_median(method.replace("+loss", ""), backend, finest)
        assert r["total_ms"] == pytest.approx(total)
        assert r["per_sample_us"] == pytest.approx(1e3 * total / r["batch"])  # µs, total_ms / batch
        assert r["batch"] == (CORE_KW["cvx_batch"] if method == "cvxpylayers" else CORE_KW["batch"])
    # cvxpylayers on cvx_batch samples, float64 on the CPU, each backend by name, cvx_repeats times
    cvx = [(case, repeats) for case, repeats in measured if case["method"] == "cvxpylayers"]
    assert sorted(case["backend"] for case, _ in cvx) == ["broken", "fast", "slow"]
    assert all(case["batch"] == 2 and case["dtype"] == torch.float64 and case["device"] == "cpu" and repeats == 2
               for case, repeats in cvx)
    assert all(repeats == 3 for case, repeats in measured if case["method"] != "cvxpylayers")

    small_us = 1e3 * _total_median("exact", "", 4) / CORE_KW["batch"]
    expected_backends = {b: 1e3 * _total_median("cvxpylayers", b, 4) / CORE_KW["cvx_batch"] / small_us
                         for b in ("slow", "fast")}
    assert out["backend_ratios"] == pytest.approx(expected_backends)
    assert out["fastest_backend"] == "fast" == min(expected_backends, key=expected_backends.get)
    expected = {"exact/softmax": _total_median("exact", "", 8) / _total_median("softmax", "", 8),
                "exact/learned_dual+loss": _total_median("exact", "", 8) / _total_median("learned_dual", "", 8),
                CVX_RATIO: expected_backends["fast"]}
    assert out["ratios"] == pytest.approx(expected)
    assert out["targets"] == CORE_THRESHOLDS
    # the printout: each ratio's verdict against its target, each backend's speed-up, the failure
    (text,) = lines
    verdicts = _verdicts(text)
    want = {}
    for name, value in expected.items():
        op, target = CORE_THRESHOLDS[name]
        label = name + (" (fastest backend: fast)" if name == CVX_RATIO else "")
        want[label] = "met" if (value <= target if op == "<=" else value >= target) else "NOT met"
    assert verdicts == want, text
    assert "cvxpylayers[slow]/exact per sample" in text and "cvxpylayers[fast]/exact per sample" in text
    assert "the solver failed" in text


@pytest.mark.parametrize("backends", [[], ["broken"], ["slow"]])
def test_core_benchmark_times_the_backends_it_is_given_and_without_one_the_headline_is_not_measured(
        monkeypatch, backends):
    """``backends``: the cvxpylayers backends to time, not every installed one; with none
    that ran, the headline speed-up is NaN, no fastest backend, and the printout says NOT
    measured (found by mutation testing)."""
    from convex_attention.bench.targets import CVX_RATIO, core_benchmark

    measured = _stand_in_timing(monkeypatch, installed=("fast",))
    lines = []
    out = core_benchmark(log=lines.append, backends=backends, **CORE_KW)
    assert sorted(c["backend"] for c, _ in measured if c["method"] == "cvxpylayers") == sorted(backends)
    ran = [b for b in backends if b != "broken"]
    assert sorted(out["backend_ratios"]) == ran
    if ran:
        assert out["fastest_backend"] == ran[0] and out["ratios"][CVX_RATIO] == out["backend_ratios"][ran[0]]
        return
    assert out["fastest_backend"] is None and math.isnan(out["ratios"][CVX_RATIO])
    assert _verdicts(lines[0])[CVX_RATIO] == "NOT measured"


def test_core_benchmark_writes_its_record_as_documented(monkeypatch, tmp_path):
    """bench_core.json (strict JSON): rows, ratios, targets as [op, value], backend_ratios,
    fastest_backend, statistic, environment and runs; bench_core.csv with CORE_COLUMNS; the
    figure drawn from that record (docs/results_format.md; found by mutation testing)."""
    from convex_attention.bench import targets
    from convex_attention.io.tables import read_table

    _stand_in_timing(monkeypatch)
    drawn = []
    monkeypatch.setattr(targets, "plot_core_record", lambda record, path: drawn.append((record, path)) or path)
    out = targets.core_benchmark(log=lambda text: None, out_dir=str(tmp_path), **CORE_KW)

    def refuse(token):
        raise ValueError(token)

    data = read_json(tmp_path / "bench_core.json", parse_constant=refuse)
    assert set(data) == {"rows", "ratios", "targets", "backend_ratios", "fastest_backend", "statistic",
                         "off_target_sides", "environment", "runs"}
    assert data["off_target_sides"] is None  # at the targets' sides (CORE_KW's, as _stand_in_timing sets them)
    assert data["targets"] == {k: list(v) for k, v in CORE_THRESHOLDS.items()}
    assert data["ratios"] == pytest.approx(out["ratios"]) and data["fastest_backend"] == "fast"
    assert data["backend_ratios"] == pytest.approx(out["backend_ratios"])
    assert isinstance(data["environment"], dict) and len(data["runs"]) == 1
    ((record, path),) = drawn
    assert path == str(tmp_path / "bench_core.png") and record["ratios"] == out["ratios"]
    table = read_table(str(tmp_path / "bench_core.csv"))
    assert len(table.rows) == len(out["rows"])


# ----------------------------------------------------------------------------- amortised targets: cells

@pytest.mark.parametrize("field, other", [("scale", 2.0), ("dims", 3), ("batch", 16), ("temperature", 0.5),
                                          ("dtype", "float64"), ("device", "cuda:0"), ("seed", 1),
                                          ("structure", "axial")])
@pytest.mark.parametrize("miss_first", [False, True])
def test_cells_that_differ_in_any_key_column_are_judged_apart(field, other, miss_first):
    """A cell is the row key without method and kind: two cells that differ only in one of
    its columns are two cells, each judged (found by mutation testing: a column dropped from
    the key merged them and judged only the last)."""
    from convex_attention.bench.targets import amortised_targets

    levels = 3  # chains of 3 levels (<= 10 %) and axial (<= 1 %) both have a target
    hit = [learned_row("zero", 1.0, levels=levels), learned_row("amortised", 0.001, levels=levels)]  # 0.1 %
    miss = [{**r, field: other} for r in (learned_row("zero", 1.0, levels=levels),
                                          learned_row("amortised", 0.5, levels=levels))]  # 50 %
    rows = miss + hit if miss_first else hit + miss
    judged = amortised_targets(rows)
    assert sum(t["cells"] for t in judged) == 2 and all(t["failed_cells"] == 0 for t in judged)
    assert [t["met"] for t in judged].count(False) == 1, judged
    assert max(t["worst_ratio"] for t in judged) == pytest.approx(0.5)


def test_median_ratio_and_time_are_medians_over_cells_against_the_fastest_measured_exact_method():
    """median_ratio and time_vs_exact are medians over the cells (not means); the time is over
    the fastest exact method in the same cell, and a cell without one, without a time, or
    where an exact method failed (it might have been the fastest: timing.fastest; before, the
    failed row was ignored) adds none (found by mutation testing)."""
    import statistics

    from convex_attention.bench.targets import amortised_targets

    def exact_row(method, ms, size, status="ok"):
        return {**learned_row("", 0.0, size=size, status=status), "method": method, "per_sample_ms": ms}

    violations = {8: 0.0001, 16: 0.0002, 24: 0.0009, 32: 0.0003, 64: 0.0004}  # λ = 0's is 0.1
    amortised_ms = {8: 1.0, 16: 3.0, 24: 8.0, 32: 1.0, 64: None}  # 64: no time recorded
    rows = []
    for size, v in violations.items():
        rows += [learned_row("zero", 0.1, size=size), learned_row("amortised", v, size=size,
                                                                   per_sample_ms=amortised_ms[size])]
    exact_ms = {8: 0.5, 16: 1.0, 24: 0.5, 64: 1.0}  # size 32: no exact row that ran
    for size, ms in exact_ms.items():  # the fastest exact method is dual, listed first; softmax is not exact
        rows += [exact_row("dual", ms, size), exact_row("exact", 2 * ms, size), exact_row("softmax", ms / 10, size)]
    rows.append(exact_row("exact", 0.05, 24, status="error"))  # 24: an exact method failed, no cost
    rows.append(exact_row("exact", 0.001, 32, status="error"))
    (t,) = amortised_targets(rows)
    ratios = [v / 0.1 for v in violations.values()]
    assert t["median_ratio"] == pytest.approx(statistics.median(ratios)) and t["cells"] == len(violations)
    assert t["worst_ratio"] == pytest.approx(max(ratios)) and t["met"] is True
    costs = [amortised_ms[s] / exact_ms[s] for s in (8, 16)]  # 2, 3; 64's amortised row has no time
    assert t["time_vs_exact"] == pytest.approx(statistics.median(costs))


# ----------------------------------------------------------------------------- amortised targets: the printout

def test_format_targets_prints_each_targets_own_numbers_and_verdict():
    """One line per target, in the order given: its worst and median ratio, its threshold and
    its own verdict; the time against exact only when it was measured (found by mutation
    testing: the verdicts inverted, or worst and median swapped, still printed both words)."""
    from convex_attention.bench.targets import amortised_targets, format_targets

    rows = [learned_row("zero", 1.0, size=8), learned_row("amortised", 0.004, size=8),  # 0.4 %
            learned_row("zero", 1.0, size=16), learned_row("amortised", 0.006, size=16),  # 0.6 %
            {**learned_row("", 0.0, size=8), "method": "exact", "per_sample_ms": 0.5},
            learned_row("zero", 1.0, levels=3, generator="gaussian"),
            learned_row("amortised", 0.5, levels=3, generator="gaussian")]  # 50 %, no exact row
    judged = amortised_targets(rows)
    lines = format_targets(judged).splitlines()
    assert len(lines) == len(judged) == 2
    for t, line in zip(judged, lines):
        assert line.endswith("   met" if t["met"] else "NOT met"), line
        assert f"worst {t['worst_ratio']:.2%}, median {t['median_ratio']:.2%}" in line, line
        assert f"target <= {t['threshold']:.0%}" in line, line
        assert ("time" in line) == math.isfinite(t["time_vs_exact"]), line
    assert [t["met"] for t in judged] == [False, True]  # gaussian, 3 levels: 50 % > 10 %; lesion, 2: 0.6 % <= 1 %


def test_format_targets_reads_a_target_of_an_older_file():
    """A target stored before structures, failed and skipped cells: a chain, judged as stored."""
    from convex_attention.bench.targets import format_targets

    old = {"generator": "lesion", "levels": 2, "threshold": 0.01, "cells": 1, "worst_ratio": 0.005,
           "median_ratio": 0.005, "time_vs_exact": float("nan"), "met": True}
    line = format_targets([old])
    assert "lesion, 2 levels" in line and "FAILED" not in line and line.endswith("   met"), line


RUN = {"load_average_start": [1.25, 1.0, 1.0], "load_average_end": [3.5, 2.0, 1.0]}


@pytest.mark.parametrize("runs, load", [([RUN], "load average (1 min) 1.25 at start, 3.50 at end"),
                                        (None, "load average not recorded")])
def test_the_core_figure_footer_carries_the_records_runs(tmp_path, monkeypatch, runs, load):
    """plot_core_record: the footer gives the load at the start and end of the record's runs,
    and says an older record without them did not record it (found by mutation testing)."""
    from convex_attention.bench.targets import plot_core_record
    from convex_attention.io import figures

    seen = {}

    def keep(fig, path, env=None, notes=()):
        seen["footer"] = figures.env_line(env, notes).replace("\n", " ")
        return path

    monkeypatch.setattr(figures, "save", keep)
    rows = [{"method": m, "backend": "", "status": "ok", "reason": "", "shapes": "8x8+4x4", "batch": 4,
             "dtype": "float32", "device": "cpu", "fwd_ms": t / 2, "bwd_ms": t / 2, "total_ms": t}
            for m, t in (("softmax", 1.0), ("exact", 2.0))]
    record = {"rows": rows, "ratios": {"exact/softmax": 2.0}, "environment": {"torch": "2.0"}}
    if runs is not None:
        record["runs"] = runs
    plot_core_record(record, str(tmp_path / "core.png"))
    assert load in seen["footer"], seen["footer"]


@pytest.mark.parametrize("violation", [None, "", "n/a"])
def test_an_amortised_violation_that_is_not_a_number_is_a_miss(violation):
    """An amortised violation that was not recorded (blank in a file) is a miss, like a NaN;
    λ = 0's then fails its cell (found by mutation testing: read as 0, the miss met)."""
    from convex_attention.bench.targets import amortised_targets

    rows = [learned_row("zero", 0.3), learned_row("amortised", violation)]
    (t,) = amortised_targets(rows)
    assert t["met"] is False and t["worst_ratio"] == math.inf
    (t,) = amortised_targets([learned_row("zero", violation), learned_row("amortised", 0.001)])
    assert t["met"] is False and t["failed_cells"] == 1 and t["cells"] == 0


def test_one_bad_cell_of_three_makes_the_target_not_met_though_the_median_is_within():
    """The worst cell is judged, not the median (found by mutation testing)."""
    from convex_attention.bench.targets import amortised_targets

    rows = []
    for size, violation in ((8, 0.001), (16, 0.002), (32, 0.5)):  # λ = 0's is 1: 0.1 %, 0.2 %, 50 %
        rows += [learned_row("zero", 1.0, size=size), learned_row("amortised", violation, size=size)]
    (t,) = amortised_targets(rows)
    assert t["median_ratio"] <= t["threshold"] < t["worst_ratio"] and t["met"] is False


@pytest.mark.parametrize("status", ["", None, "running"])
def test_a_row_whose_status_is_neither_ok_nor_skipped_is_not_measured(status):
    """Only cells whose two rows are ok are measured; a row with any other status (a file's
    blank) fails its cell (found by mutation testing: only `error` failed it, and the cell was
    judged as measured)."""
    from convex_attention.bench.targets import amortised_targets

    good = [learned_row("zero", 0.3, size=8), learned_row("amortised", 0.0015, size=8)]
    odd = [learned_row("zero", 0.3, size=16), learned_row("amortised", 0.0015, size=16, status=status)]
    (t,) = amortised_targets(good + odd)
    assert t["cells"] == 1 and t["failed_cells"] == 1 and t["met"] is False


def test_a_target_whose_learned_rows_lack_zero_and_amortised_is_reported_not_measured():
    """Learned-dual rows of the other kinds only: the target is still reported, not measured
    (met None, printed NOT met), never left out (found by mutation testing)."""
    from convex_attention.bench.targets import amortised_targets, format_targets

    (t,) = amortised_targets([learned_row("fitted", 0.01), learned_row("per_sample", 0.0)])
    assert t["met"] is None and t["cells"] == t["failed_cells"] == t["skipped_cells"] == 0
    assert format_targets([t]).endswith("NOT met")


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_core_ratio_that_is_not_a_finite_number_is_not_measured(value):
    """A ratio that is not a finite number is never judged met (found by mutation testing:
    an infinite speed-up was judged against its floor and met)."""
    from convex_attention.bench.targets import CVX_RATIO, _format

    verdicts = _verdicts(_format([], {CVX_RATIO: value, "exact/softmax": value},
                                 {CVX_RATIO: (">=", 1e4), "exact/softmax": ("<=", 3.0)}, {}, None))
    assert verdicts == {CVX_RATIO: "NOT measured", "exact/softmax": "NOT measured"}, verdicts


def test_core_benchmark_times_each_cvxpylayers_backend_on_its_own_batch(monkeypatch):
    """The sweep's rule: moreau (batched) on cvx_batch samples, 16 by default; a diffcp
    backend (sample by sample) on diffcp_batch, 2 by default.  The core benchmark timed
    every backend on 2, where moreau is about 2x cheaper per sample in calls of 16
    (docs/benchmarks.md)."""
    from convex_attention.bench import targets
    from convex_attention.bench.config import CVX_BATCH, DIFFCP_BATCH

    times = {**CORE_TIMES, ("cvxpylayers", "moreau", 4): CORE_TIMES[("cvxpylayers", "fast", 4)],
             ("cvxpylayers", "diffcp-clarabel", 4): CORE_TIMES[("cvxpylayers", "slow", 4)]}
    monkeypatch.setattr(sys.modules[__name__], "CORE_TIMES", times)
    measured = _stand_in_timing(monkeypatch, installed=("moreau", "diffcp-clarabel"))
    kw = {k: v for k, v in CORE_KW.items() if k != "cvx_batch"}
    for given, want in (({}, {"moreau": CVX_BATCH, "diffcp-clarabel": DIFFCP_BATCH}),
                        ({"cvx_batch": 5, "diffcp_batch": 3}, {"moreau": 5, "diffcp-clarabel": 3})):
        measured.clear()
        out = targets.core_benchmark(log=lambda m: None, **kw, **given)
        assert {c["backend"]: c["batch"] for c, _ in measured if c["method"] == "cvxpylayers"} == want
        assert {r["backend"]: r["batch"] for r in out["rows"] if r["method"] == "cvxpylayers"} == want


# ----------------------------------------------------------------------------- review 36

_REV36_WHY_FASTEST = ("core_benchmark drops a backend that raised (or whose time is NaN) and judges the "
                      "headline speed-up 'met' against the slower backends that ran: results_format.md promises "
                      "the ratio against the fastest *installed* backend, and graph_targets' own rule makes such a "
                      "target a certain miss or not measured, never met")


@pytest.mark.parametrize("failing", ["broken", "nan"])
def test_rev36_a_failed_backend_never_lets_the_headline_speed_up_be_met(monkeypatch, failing):
    """`slow` alone meets 1e4 (20 000 ms per sample against exact's 0.75 ms: 2.7e4x); the
    other backend produced no time, and might have been the fastest (moreau against diffcp:
    docs/performance.md, 'The 10⁴ target holds only against diffcp')."""
    from convex_attention.bench.targets import CVX_RATIO, core_benchmark

    nan = float("nan")
    times = {**CORE_TIMES, ("cvxpylayers", "nan", 4): ([nan, nan, nan], [nan, nan, nan])}
    monkeypatch.setattr(sys.modules[__name__], "CORE_TIMES", times)
    _stand_in_timing(monkeypatch, installed=("slow", failing))
    lines = []
    core_benchmark(log=lines.append, **CORE_KW)  # `slow` first: min() keeps it over a later NaN
    verdict = {k.split(" (")[0]: v for k, v in _verdicts(lines[0]).items()}[CVX_RATIO]
    assert verdict != "met", lines[0]


def test_rev36_the_core_targets_give_no_verdict_at_smoke_sizes(monkeypatch):
    from convex_attention.bench.targets import core_benchmark

    # exact 2x the softmax, 0.5x the learned dual: both "met" as printed, on 8x8+4x4 at batch 4
    times = {**CORE_TIMES, ("softmax", "", 8): ([10.0] * 3, [10.0] * 3), ("exact", "", 8): ([20.0] * 3, [20.0] * 3),
             ("learned_dual", "", 8): ([40.0] * 3, [40.0] * 3)}
    monkeypatch.setattr(sys.modules[__name__], "CORE_TIMES", times)
    _stand_in_timing(monkeypatch, installed=("fast",), judged=False)
    lines = []
    out = core_benchmark(log=lines.append, **CORE_KW)  # the sizes bench_core.py --tiny passes
    verdicts = _verdicts(lines[0])
    assert verdicts["exact/softmax"] == verdicts["exact/learned_dual+loss"] == "no verdict", lines[0]
    assert "no verdict: measured at 8x8+4x4, batch 4, float32 (cvxpylayers against exact at 4x4+2x2); the " \
           "targets are set at 64x64+32x32, batch 64, float32 (cvxpylayers against exact at 32x32+16x16)" in lines[0]
    assert out["off_target_sides"].startswith("measured at 8x8+4x4")


def test_rev36_a_sweep_stopped_by_max_cells_does_not_record_its_amortised_target_met(tmp_path):
    from convex_attention.bench.config import SweepConfig
    from convex_attention.bench.sweep import run_sweep

    config = SweepConfig(methods=["learned_dual"], sizes=[4, 8], levels=[2], batches=[2], repeats=1, warmup=1,
                         fit_instances=4, fit_steps=1, amortised_steps=1, generator="gaussian", max_cells=1)
    rows = run_sweep(config, str(tmp_path), progress=False, log=lambda m: None)
    assert {r["size"] for r in rows} == {4}  # the 8x8+4x4 cell never ran
    (target,) = read_json(tmp_path / "bench.json")["targets"]
    assert target["met"] is not True, target


def test_a_cell_with_one_row_measured_and_the_other_waiting_is_not_measured_yet_not_failed():
    """A cell cut by ``--max-cells`` (or an interrupted run) after λ = 0's row: the amortised
    row the sweep still wants makes the cell not measured yet, and the target not judged; it
    had counted as FAILED, a miss no measurement showed (review 38)."""
    from convex_attention.bench.targets import amortised_targets, format_targets

    good = [learned_row("zero", 0.3, size=8), learned_row("amortised", 0.0015, size=8)]
    half = [learned_row("zero", 0.3, size=16)]
    (t,) = amortised_targets(good + half, unmeasured=[learned_row("amortised", math.nan, size=16)])
    assert t["met"] is None and t["failed_cells"] == 0 and t["unmeasured_cells"] == 1 and t["cells"] == 1, t
    assert "1 cell(s) not measured yet" in format_targets([t]) and "FAILED" not in format_targets([t])
    (missing,) = amortised_targets(good + half)  # nothing waits for it: the row is missing, a failed cell
    assert missing["met"] is False and missing["failed_cells"] == 1


def test_rev46_core_rows_record_how_many_repetitions_their_times_rest_on(monkeypatch):
    """``bench_core.py --repeats 1`` at the target sides: every time is one repetition, its
    quartiles equal to its median.  The rows must say so (``repeats``, a column of
    ``bench_core.csv``), as ``bench.csv`` does, or the spread of one timing reads as 0 %."""
    from convex_attention.bench import targets
    from convex_attention.bench.targets import CORE_COLUMNS
    from convex_attention.bench.timing import Measurement

    _stand_in_timing(monkeypatch)
    stand_in = targets.measure_interleaved

    def one_repetition(cases, device="cpu", repeats=30, warmup=5, **kwargs):
        return {k: Measurement(m.fwd_ms[:1], m.bwd_ms[:1])
                for k, m in stand_in(cases, device, repeats, warmup, **kwargs).items()}

    monkeypatch.setattr(targets, "measure_interleaved", one_repetition)
    out = core_benchmark(log=lambda m: None, **{**CORE_KW, "repeats": 1, "cvx_repeats": 1})
    ok = [r for r in out["rows"] if r["status"] == "ok"]
    assert ok and all(r["total_ms_q1"] == r["total_ms"] == r["total_ms_q3"] for r in ok)  # no spread measured
    assert "repeats" in CORE_COLUMNS
    assert all(r.get("repeats") == 1 for r in ok), [(r["method"], r.get("repeats")) for r in ok]


def test_rev46_a_core_run_on_a_gpu_gives_its_cross_device_speed_up_no_verdict(monkeypatch):
    """At the target sides but ``device="cuda:0"``: exact runs on the GPU, cvxpylayers on the
    CPU (its rows say ``cpu``).  The per-sample speed-up then divides times of two machines'
    processors, against no GPU build of the solver a user of that GPU could pick; the
    targets (docs/performance.md, "CPU: the targets of the core issue") are CPU ones, so
    the run is measured and given no verdict, as a run at other sides is."""
    from convex_attention.bench.targets import CVX_RATIO

    _stand_in_timing(monkeypatch)
    lines = []
    out = core_benchmark(log=lines.append, device="cuda:0", **CORE_KW)
    devices = {(r["method"], r["device"]) for r in out["rows"] if r["status"] == "ok"}
    assert ("exact", "cuda:0") in devices and ("cvxpylayers", "cpu") in devices
    assert math.isfinite(out["ratios"][CVX_RATIO])  # measured
    assert out["off_target_sides"] is not None
    verdicts = _verdicts(lines[0])
    assert all(v == "no verdict" for v in verdicts.values()), verdicts


def test_rev65_bench_core_tiny_refuses_a_batch_given_at_its_default_value(tmp_path, capsys, monkeypatch):
    script = benchmark_script("bench_core")
    ran = {}
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: ran.update(kw) or {})
    for argv in (["--tiny", "--batch", "64"], ["--tiny", "--repeats", "100"]):
        ran.clear()
        try:
            script.main([*argv, "--out", str(tmp_path / "a")])
        except SystemExit as stop:
            assert stop.code == 2
            continue
        pytest.fail(f"{argv} ran with batch {ran.get('batch')} and repeats {ran.get('repeats')}")


def test_rev65_bench_core_a_failed_run_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    script = benchmark_script("bench_core")

    def fails(**kw):
        raise RuntimeError("the softmax case failed\nsecond line")

    monkeypatch.setattr(script, "core_benchmark", fails)
    try:
        code = script.main(["--tiny", "--out", str(tmp_path / "a")])
    except SystemExit as stop:
        code = stop.code
    except RuntimeError as err:
        pytest.fail(f"the failure escaped main as {type(err).__name__} (a traceback)")
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, (code, err)


def test_rev66_bench_core_interrupt_does_not_claim_nothing_was_written(tmp_path, capsys, monkeypatch):
    """3f9e9f8: a KeyboardInterrupt anywhere in core_benchmark prints 'interrupted; nothing was
    written', but core_benchmark writes bench_core.csv, then .json, then the figure: interrupted
    after the CSV, the folder holds it (and the next run is refused without --overwrite)."""
    script = benchmark_script("bench_core")
    out = tmp_path / "a"

    def interrupted_after_the_csv(**kw):
        (out / "bench_core.csv").write_text("rows\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "core_benchmark", interrupted_after_the_csv)
    code = script.main(["--tiny", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and (out / "bench_core.csv").exists()
    assert "nothing was written" not in err, err


@pytest.mark.parametrize("zero", ["backend", "exact", "softmax"])
def test_a_zero_time_in_the_core_benchmark_is_a_failed_measurement_not_a_crash_or_the_fastest(monkeypatch, zero):
    """timing.fastest and timing.time_ratio: a zero time is a failed measurement.  Before, a
    zero time of the small exact (or of the softmax) raised ZeroDivisionError after every row
    was measured, and a backend with a zero time was named the fastest (a ratio of 0, a miss
    although the backend that was measured reached the target)."""
    from convex_attention.bench.targets import CVX_RATIO, core_benchmark

    times = {**CORE_TIMES, ("cvxpylayers", "zero", 4): ([0.0] * 3, [0.0] * 3)}
    if zero == "exact":
        times[("exact", "", 4)] = ([0.0] * 3, [0.0] * 3)
    if zero == "softmax":
        times[("softmax", "", 8)] = ([0.0] * 3, [0.0] * 3)
    monkeypatch.setattr(sys.modules[__name__], "CORE_TIMES", times)
    _stand_in_timing(monkeypatch, installed=("slow", "zero" if zero == "backend" else "fast"))
    lines = []
    out = core_benchmark(log=lines.append, **CORE_KW)
    if zero == "backend":  # slow alone reaches 1e4; zero might have been faster: not measured
        assert out["fastest_backend"] == "slow" and math.isnan(out["ratios"][CVX_RATIO])
        assert math.isnan(out["backend_ratios"]["zero"])
    elif zero == "exact":
        assert math.isnan(out["ratios"][CVX_RATIO])
        assert all(math.isnan(v) for v in out["backend_ratios"].values())
    else:
        assert math.isnan(out["ratios"]["exact/softmax"])
        assert _verdicts(lines[0])["exact/softmax"] == "NOT measured"


def test_ca_rev71_the_amortised_cost_of_a_zero_time_is_no_number():
    """The fourth 'fastest' site (amortised_targets' time over the fastest exact method) does not
    follow timing.fastest / time_ratio: an amortised row with a zero time gives a cost of 0
    ("time 0x the fastest exact method's"), a silent wrong number."""
    from convex_attention.bench.targets import amortised_targets

    rows = [learned_row("zero", 0.1), learned_row("amortised", 0.0001, per_sample_ms=0.0),
            {**learned_row("", 0.0), "method": "exact", "per_sample_ms": 0.5}]
    (t,) = amortised_targets(rows)
    assert math.isnan(t["time_vs_exact"]), t


# ---- ca_rev124 (strict xfail: review of 4e56f86)

def test_ca_rev124_bench_core_says_why_of_every_backend_it_refuses(tmp_path, capsys):
    """Run: python benchmarks/bench_core.py --backends mpax --tiny --out b.  Expected (as bench_graphs.py
    since a05f957, ca_rev122): mpax's own reason, cvx.backend_unavailable_reason('mpax') ('MPAX solves
    LPs and QPs only, and this problem's entropy needs exponential cones; ...'), which holds whether or
    not mpax is installed.  Observed: exit 2, 'backend(s) mpax not installed here; installed:
    diffcp-clarabel, diffcp-scs, moreau' (main tests available_backends() and names no reason)."""
    from convex_attention import cvx

    reason = cvx.backend_unavailable_reason("mpax")
    if reason is None:
        pytest.skip("mpax can run here")
    script = benchmark_script("bench_core")
    script.core_benchmark = lambda **kwargs: None
    try:
        code = script.main(["--backends", "mpax", "--tiny", "--out", str(tmp_path / "b")])
    except SystemExit as stop:
        code = stop.code
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert " ".join(reason.split()) in err and "mpax not installed" not in err, err


def test_the_amortised_cost_divides_times_of_one_run_only():
    """A resume naming the exact methods alone measures a cell's exact rows again, not its
    learned_dual rows: their ratio divided times of two runs (under two loads), unseen."""
    from convex_attention.bench.targets import amortised_targets

    def rows(exact_run):
        return [{**learned_row("zero", 0.1), "run": 1}, {**learned_row("amortised", 0.0001), "run": 1},
                {**learned_row("", 0.0), "method": "exact", "per_sample_ms": 0.5, "run": exact_run}]

    assert amortised_targets(rows(1))[0]["time_vs_exact"] == pytest.approx(2.0)
    assert math.isnan(amortised_targets(rows(2))[0]["time_vs_exact"])
    older = [{k: v for k, v in r.items() if k != "run"} for r in rows(1)]  # written before rows recorded a run
    assert amortised_targets(older)[0]["time_vs_exact"] == pytest.approx(2.0)


@pytest.mark.parametrize("apart", ["amortised", "exact"])
def test_the_amortised_cost_divides_no_time_measured_apart(apart):
    """A row timed on its own (its methods' interleaved run failed; results.TIMED_APART in its reason) was
    not measured beside the other: no cost is formed from it, in a file with runs or without."""
    from convex_attention.bench.results import TIMED_APART
    from convex_attention.bench.targets import amortised_targets

    note = f"{TIMED_APART} the cell's other methods (their interleaved run failed: RuntimeError: boom)"
    rows = [{**learned_row("zero", 0.1), "run": 1}, {**learned_row("amortised", 0.0001), "run": 1},
            {**learned_row("", 0.0), "method": "exact", "per_sample_ms": 0.5, "run": 1}]
    rows[1 if apart == "amortised" else 2]["reason"] = note
    assert math.isnan(amortised_targets(rows)[0]["time_vs_exact"])
    older = [{k: v for k, v in r.items() if k != "run"} for r in rows]
    assert math.isnan(amortised_targets(older)[0]["time_vs_exact"])
    rows[1 if apart == "amortised" else 2]["reason"] = ""
    assert amortised_targets(rows)[0]["time_vs_exact"] == pytest.approx(2.0)


def test_a_negative_amortised_violation_fails_its_cell():
    """A violation is a largest absolute difference: a negative one is no measurement (λ = 0's
    already failed the cell; the amortised one had given a ratio of -5, judged met)."""
    from convex_attention.bench.targets import amortised_targets

    (t,) = amortised_targets([learned_row("zero", 0.1), learned_row("amortised", -0.5)])
    assert t["met"] is False and t["failed_cells"] == 1 and t["cells"] == 0


# ---- ca_rev139 (strict xfail: review of 3de4598)

def test_ca_rev139_a_cvxpylayers_row_of_an_earlier_run_does_not_drop_the_amortised_cost():
    """Run: `bench --methods exact cvxpylayers --cvx-backends moreau --sizes 4 --levels 2 --out B`, then
    `bench --methods exact cvxpylayers learned_dual --fit-steps 5 ... --out B --resume`.  The resume measures
    the cell's exact row again with its learned_dual rows (ca_rev132: run 2), not its cvxpylayers row (run 1,
    never the fastest and never measured again, for its cost).  Expected: time_vs_exact, as a fresh run into
    another folder gives (3.2x there).  Observed: null in bench.json: amortised_targets puts the cvxpylayers
    row's run into the cell's exact runs, so {1, 2} != {2} and every such cell is left out."""
    from convex_attention.bench.targets import amortised_targets

    rows = [{**learned_row("zero", 0.1), "run": 2}, {**learned_row("amortised", 0.0001), "run": 2},
            {**learned_row("", 0.0), "method": "exact", "per_sample_ms": 0.5, "run": 2},
            {**learned_row("", 0.0), "method": "cvxpylayers", "backend": "moreau", "per_sample_ms": 40.0, "run": 1}]
    assert amortised_targets(rows)[0]["time_vs_exact"] == pytest.approx(2.0)


# ---- ca_rev141 (strict xfail: review of c2cb010)

def _ca_rev141_exit(script, argv) -> int:
    try:
        return script.main(argv)
    except SystemExit as stop:
        return stop.code


def _exit_while_another_run_holds(folder, script, argv) -> tuple[int, int]:
    """``(exit status, holder's pid)`` of the script run on ``argv`` while another process holds ``folder``'s lock."""
    from test_lock import hold_lock

    proc = hold_lock(folder, 60)
    try:
        return _ca_rev141_exit(script, argv), proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_ca_rev141_bench_core_refuses_a_backend_listed_twice(tmp_path, monkeypatch):
    """Run: bench_core.py --tiny --backends moreau moreau --out b.  Observed: exit 0, core_benchmark given
    ['moreau', 'moreau']: the backend timed twice, two rows in bench_core.csv and the figure, one entry in
    backend_ratios.  Expected: refused (exit 2) as bench_graphs.py refuses it (ca_rev114), or timed once."""
    from convex_attention.cvx import available_backends

    installed = available_backends()
    if not installed:
        pytest.skip("no cvxpylayers backend installed")
    script = benchmark_script("bench_core")
    given = []
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: given.append(list(kw["backends"])))
    code = _ca_rev141_exit(script, ["--tiny", "--backends", installed[0], installed[0], "--out", str(tmp_path / "b")])
    assert code == 2 or (given and len(given[0]) == len(set(given[0]))), (code, given)


def test_ca_rev141_bench_core_plot_only_refuses_the_options_it_does_not_read(tmp_path, capsys, monkeypatch):
    """Run: bench_core.py --plot-only --batch 8 --out c (a folder with a bench_core.json); also --tiny, --device
    cuda (on a machine without CUDA).  Observed: exit 0 each time, the figure redrawn, the option unread and
    unchecked.  Expected: refused in one line, exit 2, before drawing (as bench_graphs refuses a setting no part
    reads, ca_rev114)."""
    script = benchmark_script("bench_core")
    drawn = []
    monkeypatch.setattr(script, "plot_core_record", lambda record, path: drawn.append(path) or path)
    (tmp_path / "bench_core.json").write_text('{"rows": [], "ratios": {}}')
    codes = {}
    for extra in (["--batch", "8"], ["--tiny"], ["--device", "cuda"]):
        codes[" ".join(extra)] = _ca_rev141_exit(script, ["--plot-only", *extra, "--out", str(tmp_path)])
    capsys.readouterr()
    assert all(code == 2 for code in codes.values()) and not drawn, (codes, len(drawn))


def test_ca_rev141_bench_core_plot_only_does_not_write_into_a_folder_another_run_holds(tmp_path, capsys,
                                                                                      monkeypatch):
    """Run: a bench_core.py run writing into OUT (its results.lock held), then bench_core.py --plot-only --out OUT.
    Observed: exit 0, bench_core.png and .pdf written beside the live run's files (_replot takes no lock).
    Expected: refused in one line, exit 2, naming the holder (or waited for with --wait): one writer per folder."""

    script = benchmark_script("bench_core")
    drawn = []
    monkeypatch.setattr(script, "plot_core_record", lambda record, path: drawn.append(path) or path)
    (tmp_path / "bench_core.json").write_text('{"rows": [], "ratios": {}}')
    code, pid = _exit_while_another_run_holds(tmp_path, script, ["--plot-only", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and not drawn and f"pid {pid}" in err, (code, drawn, err)


# ---- ca_rev201 (mutation review of e81e843)

def test_ca_rev201_a_headline_exactly_on_its_floor_against_backends_that_ran_is_not_measured(monkeypatch):
    """Kills `headline >= target` -> `headline > target`: `slow` gives exactly 1e4 (7.5e6 us per
    sample over exact's 750) and `broken` failed, so 1e4 is only an upper bound; it must not print met."""
    from convex_attention.bench.targets import CVX_RATIO

    times = {**CORE_TIMES, ("cvxpylayers", "slow", 4): ([15000.0] * 3, [0.0] * 3)}
    monkeypatch.setattr(sys.modules[__name__], "CORE_TIMES", times)
    _stand_in_timing(monkeypatch, installed=("slow", "broken"))
    lines = []
    out = core_benchmark(log=lines.append, **CORE_KW)
    assert out["backend_ratios"]["slow"] == 1e4 and math.isnan(out["ratios"][CVX_RATIO])
    verdict = {k.split(" (")[0]: v for k, v in _verdicts(lines[0]).items()}[CVX_RATIO]
    assert verdict == "NOT measured", lines[0]


def test_ca_rev201_an_amortised_violation_of_zero_is_a_met_cell():
    """Kills `a < 0` -> `a <= 0`: a perfect amortised dual (violation 0.0) gives ratio 0, met, not a
    failed cell."""
    from convex_attention.bench.targets import amortised_targets

    (t,) = amortised_targets([learned_row("zero", 0.1), learned_row("amortised", 0.0)])
    assert t["met"] is True and t["cells"] == 1 and t["failed_cells"] == 0 and t["worst_ratio"] == 0.0


def test_ca_rev201_no_cost_where_both_rows_were_timed_apart():
    """Kills `== beside and not beside[1]` -> `== beside`: with the amortised row and the exact
    row both timed apart (one run), their (run, apart) pairs agree; still no side-by-side cost."""
    from convex_attention.bench.results import TIMED_APART
    from convex_attention.bench.targets import amortised_targets

    note = f"{TIMED_APART} the cell's other methods (their interleaved run failed: RuntimeError: boom)"
    rows = [{**learned_row("zero", 0.1), "run": 1}, {**learned_row("amortised", 0.0001), "run": 1, "reason": note},
            {**learned_row("", 0.0), "method": "exact", "per_sample_ms": 0.5, "run": 1, "reason": note}]
    assert math.isnan(amortised_targets(rows)[0]["time_vs_exact"])


def test_ca_rev201_the_cost_is_the_median_over_three_cells_not_the_mean():
    """Kills `statistics.median(finite_costs)` -> `statistics.mean(...)`: costs 1, 2 and 6 give 2
    (the mean 3); the existing test's two cells cannot tell them apart."""
    from convex_attention.bench.targets import amortised_targets

    rows = []
    for size, ms in ((8, 1.0), (16, 2.0), (32, 6.0)):
        rows += [learned_row("zero", 0.1, size=size), learned_row("amortised", 0.0001, size=size, per_sample_ms=ms),
                 {**learned_row("", 0.0, size=size), "method": "exact", "dual_kind": "", "per_sample_ms": 1.0}]
    (t,) = amortised_targets(rows)
    assert t["cells"] == 3 and t["time_vs_exact"] == pytest.approx(2.0)


# ---- ca_rev216 (mutation review of 7358deb, benchmark scripts): tests that kill surviving mutants

def test_ca_rev216_bench_core_plot_only_refuses_overwrite_it_does_not_read(tmp_path, capsys, monkeypatch):
    """--plot-only --overwrite: --overwrite is read only by a measurement; refused, exit 2, nothing drawn."""
    script = benchmark_script("bench_core")
    drawn = []
    monkeypatch.setattr(script, "plot_core_record", lambda record, path: drawn.append(path) or path)
    (tmp_path / "bench_core.json").write_text('{"rows": [], "ratios": {}}')
    code = _ca_rev141_exit(script, ["--plot-only", "--overwrite", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and not drawn and "--overwrite" in err, (code, drawn, err)


def test_ca_rev216_bench_core_plot_only_without_a_record_makes_no_folder(tmp_path, capsys):
    """--plot-only on a folder that does not exist: refused, exit 2, before the lock that would make it."""
    script = benchmark_script("bench_core")
    out = tmp_path / "none"
    code = _ca_rev141_exit(script, ["--plot-only", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "no such file" in err and not out.exists(), (code, err, out.exists())


def test_ca_rev216_bench_core_refuses_repeats_above_its_limit_before_any_work(tmp_path, capsys, monkeypatch):
    """--repeats one above MAX_REPEATS (and --batch one above MAX_BATCH): exit 2, nothing measured, no folder."""
    script = benchmark_script("bench_core")
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: pytest.fail("work started"))
    for argv in (["--repeats", str(script.MAX_REPEATS + 1)], ["--batch", str(script.MAX_BATCH + 1)]):
        code = _ca_rev141_exit(script, [*argv, "--out", str(tmp_path / "r")])
        assert code == 2 and not (tmp_path / "r").exists(), (argv, code)
    capsys.readouterr()


def test_ca_rev216_bench_core_refuses_an_earlier_runs_files_before_the_lock(tmp_path, capsys, monkeypatch):
    """A folder with an earlier bench_core.csv whose lock another run holds: refused for the earlier files
    (exit 2, naming them), before the lock is asked for: no wait and no word of the holder."""

    script = benchmark_script("bench_core")
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: pytest.fail("work started"))
    (tmp_path / "bench_core.csv").write_text("earlier\n")
    code, pid = _exit_while_another_run_holds(tmp_path, script, ["--tiny", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "already holds bench_core.csv" in err and f"pid {pid}" not in err, (code, err)
    assert (tmp_path / "bench_core.csv").read_text() == "earlier\n"


def test_ca_rev216_bench_core_removes_a_killed_writers_temporary_files_under_the_lock(tmp_path, monkeypatch):
    """A bench_core.csv.<pid>-<n>.tmp left by a killed run is removed before the measurement; the user's
    notes.txt is kept."""
    script = benchmark_script("bench_core")
    seen = []
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: seen.append(sorted(p.name for p in tmp_path.iterdir())))
    (tmp_path / "bench_core.csv.123-4.tmp").write_text("half")
    (tmp_path / "notes.txt").write_text("mine")
    assert _ca_rev141_exit(script, ["--tiny", "--out", str(tmp_path)]) == 0
    assert seen and "bench_core.csv.123-4.tmp" not in seen[0] and "notes.txt" in seen[0], seen


def test_ca_rev216_bench_core_tiny_runs_the_sizes_its_refusal_names(tmp_path, capsys, monkeypatch):
    """--tiny's refusal of --batch says "batch 4, 5 repeats": the tiny run is given exactly those, in one run."""
    script = benchmark_script("bench_core")
    given = []
    monkeypatch.setattr(script, "core_benchmark", lambda **kw: given.append(kw))
    assert _ca_rev141_exit(script, ["--tiny", "--batch", "4", "--out", str(tmp_path / "x")]) == 2
    assert "batch 4, 5 repeats" in capsys.readouterr().err
    assert _ca_rev141_exit(script, ["--tiny", "--out", str(tmp_path / "t")]) == 0
    assert len(given) == 1 and given[0]["batch"] == 4 and given[0]["repeats"] == 5, given


def test_ca_rev216_bench_core_plot_only_names_a_record_whose_rows_are_not_rows(tmp_path, capsys, monkeypatch):
    """A bench_core.json whose rows are numbers: refused as holding no rows (exit 2), never handed to the figure."""
    script = benchmark_script("bench_core")
    drawn = []
    monkeypatch.setattr(script, "plot_core_record", lambda record, path: drawn.append(path) or path)
    (tmp_path / "bench_core.json").write_text('{"rows": [1, 2], "ratios": {}}')
    code = _ca_rev141_exit(script, ["--plot-only", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and not drawn and "holds no rows and ratios" in err, (code, drawn, err)


# ---- ca_rev227 (results_format.md audit): bench_core.csv's columns as documented, in order


def test_ca_rev227_bench_core_csv_columns_are_the_documented_ones_in_order():
    """docs/results_format.md lists bench_core.csv's columns: method, backend, status, reason, shapes, batch,
    dtype, device, repeats, the timing columns of bench.csv (ms), per_sample_us and peak_mem_mb."""
    import re
    from pathlib import Path

    from convex_attention.bench.results import COLUMNS as BENCH_COLUMNS
    from convex_attention.bench.targets import CORE_COLUMNS

    text = (Path(__file__).resolve().parents[1] / "docs" / "results_format.md").read_text(encoding="utf-8")
    para = " ".join(text.split("`bench_core.csv` has one row per measured case.", 1)[1].split("\n\n", 1)[0].split())
    assert "the timing columns of `bench.csv` (ms)" in para
    named = [t for t in re.findall(r"`([^`]+)`", para) if t in CORE_COLUMNS]
    timing = [c for c in BENCH_COLUMNS if c.startswith(("fwd_ms", "bwd_ms", "total_ms"))]
    k = named.index("repeats") + 1
    assert named[:k] + timing + named[k:] == list(CORE_COLUMNS)


# ---- ca_rev251 (hostile review of the target verdicts)

def test_ca_rev251_a_headline_below_its_target_with_a_failed_backend_says_it_is_a_bound(monkeypatch):
    """`broken` failed; `fast` is the fastest that ran, and the ratio to it (2.67e3, below 1e4) is an
    upper bound on the ratio to the fastest backend: a certain miss, but the printout read as the
    measured ratio to the fastest ("fastest backend: fast") without a word (the graph targets say
    "at most the ratio to the backends that ran")."""
    from convex_attention.bench.targets import CVX_RATIO, core_benchmark

    _stand_in_timing(monkeypatch, installed=("slow", "broken", "fast"))
    lines = []
    out = core_benchmark(log=lines.append, **CORE_KW)
    assert out["ratios"][CVX_RATIO] < 1e4
    text = lines[0].splitlines()
    (i,) = [k for k, line in enumerate(text) if line.startswith(CVX_RATIO)]
    assert text[i].endswith("NOT met")
    assert text[i + 1] == "  at most this ratio: broken failed and might have been the fastest backend; fast is the " \
                          "fastest that ran"
    # every backend ran: no such line
    _stand_in_timing(monkeypatch, installed=("slow", "fast"))
    lines = []
    core_benchmark(log=lines.append, **CORE_KW)
    assert "at most this ratio" not in lines[0]
