"""convex_attention.bench.targets: the core speed targets and the amortised dual's targets, judged from
measured rows."""
import json

import pytest

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

    data = json.load(open(tmp_path / "bench_core.json"), parse_constant=refuse)  # strict JSON
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
