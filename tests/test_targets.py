"""convex_attention.bench.targets: the core speed targets and the amortised dual's targets, judged from
measured rows."""
import math

import pytest
from helpers import read_json

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


def _bench_core_script():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_core.py"
    spec = importlib.util.spec_from_file_location("bench_core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_core_refuses_before_any_work_in_one_line(tmp_path, capsys, monkeypatch):
    """A review found: no lock, an earlier run's files replaced without a word, unbounded
    --batch, --tiny ignoring --batch, and tracebacks from --plot-only on a crafted record."""
    from test_lock import hold_lock

    script = _bench_core_script()
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
    for record in ('{"rows": [1, 2], "ratios": {}}', '{"rows": [{"batch": 0}], "ratios": {}}', '[]'):
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / "bench_core.json").write_text(record)
        assert "--plot-only" in refused("--plot-only", "--out", str(tmp_path / "c"))


def test_bench_core_waiting_for_a_run_refuses_the_results_that_run_wrote(tmp_path, capsys, monkeypatch):
    """With --wait, the earlier-outputs check ran before the wait only: the run waited for
    wrote its files, and this one replaced them without --overwrite (found by a review)."""
    import contextlib

    script = _bench_core_script()
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
