"""The graph benchmark's harness (benchmarks/bench_graphs.py): its instances, the unrolled
backward it compares with, the verdicts it prints and the files it writes.  Never a wall time."""
import json
import math

import pytest
import torch

import convex_attention as ca
from convex_attention.bench import graph_targets as gt
from convex_attention.bench.graph_targets import GraphBenchmark, draw_instance, format_graph_targets, unrolled_solve
from convex_attention.io.tables import read_table


def test_sizes_that_the_families_cannot_pool_are_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        GraphBenchmark(size=40)
    assert GraphBenchmark(size=32).threads == 1  # one thread unless asked: comparable timings


@pytest.mark.parametrize("family", gt.NONTREE + ("star",))
def test_instances_have_the_declared_scores_and_temperatures(family):
    g = torch.Generator().manual_seed(0)
    h, scores, temps = draw_instance(family, 16, g, (-2.0, 1.0), batch=3)
    assert [tuple(s.shape) for s in scores] == [(3,) + shape for shape in h.shapes]
    assert len(temps) == h.num_maps and all(0.01 <= t <= 10 for t in temps)
    assert not h.is_forest if family in gt.NONTREE else h.is_forest


def test_unrolled_sweeps_approach_the_certified_solution_and_its_gradient():
    """The unrolled backward is autograd through plain sweeps: with many sweeps it reaches the
    dual solver's solution (tol 1e-13) and its implicit gradient, and few sweeps do not."""
    g = torch.Generator().manual_seed(3)
    h, scores, temps = draw_instance("axial", 16, g, (-0.3, 0.3), batch=2, scale=1.0)
    w = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]

    def grad_of(fn):
        x = [s.clone().requires_grad_() for s in scores]
        probs = fn(x)
        return probs, torch.cat([t.flatten() for t in torch.autograd.grad(
            sum((p * wk).sum() for p, wk in zip(probs, w)), x)])

    ref_probs, ref_grad = grad_of(lambda x: ca.solve(x, h, "dual", temperature=temps, tol=1e-13).probs)
    errors = {}
    for sweeps in (1, 200):
        probs, grad = grad_of(lambda x, n=sweeps: unrolled_solve(x, h, temps, n))
        errors[sweeps] = (max(float((p - r).detach().abs().max()) for p, r in zip(probs, ref_probs)),
                          float((grad - ref_grad).norm() / ref_grad.norm()))
    assert errors[200][0] < 1e-9 and errors[200][1] < 1e-7
    assert errors[1][0] > 1e-4 and errors[1][1] > 1e-4


def test_a_missed_convergence_is_never_met_and_nan_is_a_miss_not_unmeasured():
    summary = {"family": "axial", "set": "hard", "dtype": "float64", "tol": 1e-10, "max_sweeps": 200,
               "instances": 100, "median_sweeps": 7, "worst_sweeps": 200, "misses": 1}
    (target,) = gt._targets({"convergence_summary": [summary]})
    assert target["met"] is False and target["value"] == 200.0
    assert gt._target("x", None, "<=", 1.0)["met"] is None  # no value: not measured
    for value in (math.nan, math.inf, -math.inf):  # measured, and not a number a target can meet
        nan = gt._target("x", value, "<=" if value > 0 else ">=", 1.0)
        assert nan["met"] is False and nan["value"] is None and "not a finite number, a miss" in nan["detail"]
    assert gt._target("x", 2.0, ">=", 1e3)["met"] is False
    assert gt._target("x", 2e3, ">=", 1e3)["met"] is True
    line = format_graph_targets([gt._target("speed", None, ">=", 1e3, "no backend ran"), target])
    assert "not measured" in line and "NOT met" in line and "misses 1" in line
    assert format_graph_targets([gt._target("speed", math.nan, ">=", 1e3)]).rstrip().endswith(
        "NOT met   (measured nan: not a finite number, a miss)")


def test_every_measured_nan_is_a_miss_in_the_graph_targets():
    """The reviewer's case: a NaN gradient error, a NaN backward time and a NaN amortised
    ratio were each reported as not measured (met None); each was measured: NOT met."""
    rows = [{"family": "axial", "setting": "mild", "draw": 0, "solver": "dual", "status": "ok", "reason": "",
             "error_vs_fd": math.nan, "error_vs_dual": 0.0},
            {"family": "axial", "setting": "mild", "draw": 0, "solver": "cvxpylayers[moreau]", "status": "ok",
             "reason": "", "error_vs_fd": 1e-7, "error_vs_dual": math.nan}]
    amortised = [{"split": "held_out", "scale": 1.0, "temperatures": "1 1 1", "sweeps": 6, "ratio": math.nan,
                  "ratio_untrained": 0.5, "amortised_ms": 1.0, "dual_ms": 1.0}]
    speed = [{"family": "axial", "method": "dual", "backend": "", "status": "ok", "fwd_ms": 1.0, "bwd_ms": math.nan,
              "per_sample_ms": 1.0, "batch": 1, "total_ms": 1.0}]
    by = {t["target"]: t for t in gt._targets({"gradients": rows, "amortised": amortised, "speed": speed})}
    for name in ("implicit gradient vs finite differences (mild)", "implicit gradient vs cvxpylayers[moreau] (mild)",
                 "dual backward / forward time (axial)",
                 "amortised / λ=0 held-out violation (axial, σ=1, τ=1 1 1, 6 sweeps)"):
        assert by[name]["met"] is False, name
    assert by["cvxpylayers (fastest) / dual per sample (axial)"]["met"] is None  # no backend ran: not measured


def test_every_convergence_instance_is_a_draw_of_its_own_and_every_family_and_set_a_stream_of_its_own():
    """A review found 100 "instances" to be 2-4 draws of temperatures and regions (a batch
    shared one), the same temperatures in every family, and the hard set reusing the normal
    set's draws (its temperature ratios reached 54 and 90, not 1e3)."""
    config = GraphBenchmark(size=16, instances=6, batch=4, parts=("convergence",))
    rows, summary = gt._convergence(config, ("axial", "grid_regions"), log=lambda m: None)
    for family in ("axial", "grid_regions"):
        for set_name in ("normal", "hard"):
            group = [r for r in rows if r["family"] == family and r["set"] == set_name and r["dtype"] == "float64"]
            assert len(group) == 6 and len({r["temperatures"] for r in group}) == 6
            assert [r["temperatures"] for r in rows if r["family"] == family and r["set"] == set_name
                    and r["dtype"] == "float32"] == [r["temperatures"] for r in group]  # both dtypes: one instance set
    temps = {(r["family"], r["set"]): r["temperatures"] for r in rows if r["draw"] == 0}
    assert len(set(temps.values())) == 4  # no two families or sets share their draws
    s = summary[0]
    assert s["distinct_temperatures"] == 6 and s["largest_temperature_ratio"] > 1


def test_every_fourth_convergence_instance_reaches_the_largest_temperature_ratio_of_its_set():
    """Log-uniform draws alone never reached the hard set's ratio of 1e3 (619-794 in 100 draws):
    draws 0, 4, 8, ... pin two maps to the range's ends; the others are drawn as before."""
    config = GraphBenchmark(size=16, instances=6, parts=("convergence",))
    rows, summary = gt._convergence(config, ("mixed",), log=lambda m: None)
    for set_name, (lo, hi, _) in gt.CONVERGENCE_SETS.items():
        group = [r for r in rows if r["set"] == set_name and r["dtype"] == "float64"]
        assert [r["pinned_ends"] for r in group] == [True, False, False, False, True, False]
        for r in group:
            temps = [float(t) for t in r["temperatures"].split()]
            assert all(10 ** lo <= t <= 10 ** hi for t in temps)
            if r["pinned_ends"]:
                assert min(temps) == 10 ** lo and max(temps) == 10 ** hi
            else:
                assert min(temps) > 10 ** lo and max(temps) < 10 ** hi
        s = next(x for x in summary if x["set"] == set_name and x["dtype"] == "float64")
        assert s["pinned_instances"] == 2
        assert s["largest_temperature_ratio"] == pytest.approx(10 ** (hi - lo))


def test_pinning_the_ends_changes_only_the_two_pinned_temperatures():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    _, scores1, temps1 = draw_instance("mixed", 16, g1, (-2.0, 1.0), 1)
    _, scores2, temps2 = draw_instance("mixed", 16, g2, (-2.0, 1.0), 1, pin_ends=True)
    unpinned = [i for i, t in enumerate(temps2) if t not in (0.01, 10.0)]
    assert len(unpinned) == len(temps1) - 2 and all(temps1[i] == temps2[i] for i in unpinned)


def test_a_convergence_target_on_fewer_instances_than_it_asks_for_gives_no_verdict():
    summary = {"family": "axial", "set": "normal", "dtype": "float32", "tol": 1e-6, "max_sweeps": 50,
               "instances": 8, "median_sweeps": 3, "worst_sweeps": 5, "misses": 0,
               "worst_returned_violation": 9e-7}
    (target,) = gt._targets({"convergence_summary": [summary]})
    assert target["met"] is None and "partial: 8 of the 100 instances" in target["detail"]
    (target,) = gt._targets({"convergence_summary": [{**summary, "instances": 100}]})
    assert target["met"] is True
    # returned maps above tol: a miss (the solver promises they meet it), on any number of instances
    (target,) = gt._targets({"convergence_summary": [{**summary, "worst_returned_violation": 1.05e-6}]})
    assert target["met"] is False
    assert "returned float32 maps' worst violation 1.05e-06 is above tol" in target["detail"]
    (target,) = gt._targets({"convergence_summary": [{**summary, "misses": 1}]})
    assert target["met"] is False  # a miss is a miss on any number of instances


def test_the_gradient_target_against_cvxpylayers_is_judged_by_its_worst_instance_and_its_failures():
    """A review found it judged by the median (one instance off by 0.1 passed) and blind to
    the reference's failed instances."""
    rows = [{"family": "axial", "setting": "mild", "draw": i, "solver": "cvxpylayers[x]", "status": "ok",
             "reason": "", "error_vs_fd": 1e-7, "error_vs_dual": e} for i, e in enumerate((1e-7, 2e-7, 0.1))]
    (target,) = [t for t in gt._targets({"gradients": rows}) if "cvxpylayers[x]" in t["target"]]
    assert target["met"] is False and target["value"] == 0.1 and "worst of 3 instances" in target["detail"]
    rows = rows[:2] + [{**rows[2], "status": "error", "error_vs_dual": math.nan, "error_vs_fd": math.nan}]
    (target,) = [t for t in gt._targets({"gradients": rows}) if "cvxpylayers[x]" in t["target"]]
    assert target["met"] is False and "FAILED on 1 instance" in target["detail"]


def test_the_speed_target_names_no_fastest_backend_when_one_failed():
    """A review found the survivor labelled "(fastest)" and the target met against it."""
    speed = [{"family": "axial", "method": "dual", "backend": "", "status": "ok", "fwd_ms": 1.0, "bwd_ms": 0.2,
              "per_sample_ms": 0.01, "batch": 1, "total_ms": 1.2},
             {"family": "axial", "method": "cvxpylayers", "backend": "diffcp-clarabel", "status": "ok",
              "per_sample_ms": 20.0, "batch": 1},
             {"family": "axial", "method": "cvxpylayers", "backend": "moreau", "status": "error", "batch": 1}]
    (target,) = [t for t in gt._targets({"speed": speed}) if "/ dual per sample" in t["target"]]
    assert target["met"] is None and "moreau failed" in target["detail"] and "(fastest)" in target["target"]
    assert "[diffcp-clarabel]" not in target["target"]
    # the backends that ran bound the ratio from above: below the target the miss is certain
    speed[1]["per_sample_ms"] = 5.0  # 500x
    (target,) = [t for t in gt._targets({"speed": speed}) if "/ dual per sample" in t["target"]]
    assert target["met"] is False and target["value"] == 500.0 and "at most" in target["detail"]


def test_the_gradient_target_against_cvxpylayers_says_what_its_own_error_is():
    rows = [{"family": "axial", "setting": "mild", "draw": 0, "solver": "dual", "status": "ok", "reason": "",
             "error_vs_fd": 1e-9, "error_vs_dual": 0.0},
            {"family": "axial", "setting": "mild", "draw": 0, "solver": "cvxpylayers[moreau]", "status": "ok",
             "reason": "", "error_vs_fd": 4e-4, "error_vs_dual": 5e-4}]
    by = {t["target"]: t for t in gt._targets({"gradients": rows})}
    assert by["implicit gradient vs finite differences (mild)"]["met"] is True
    against = by["implicit gradient vs cvxpylayers[moreau] (mild)"]
    assert against["met"] is False and "own gradient is off finite differences by 4.0e-04" in against["detail"]
    assert against["detail"].startswith("ill-posed: ")


def test_a_reference_gradient_within_the_tolerance_is_judged_and_not_called_ill_posed():
    rows = [{"family": "axial", "setting": "mild", "draw": 0, "solver": "dual", "status": "ok", "reason": "",
             "error_vs_fd": 1e-11, "error_vs_dual": 0.0},
            {"family": "axial", "setting": "mild", "draw": 0, "solver": "cvxpylayers[diffcp-clarabel mode=dense]",
             "status": "ok", "reason": "", "error_vs_fd": 2e-6, "error_vs_dual": 1e-6}]
    by = {t["target"]: t for t in gt._targets({"gradients": rows})}
    against = by["implicit gradient vs cvxpylayers[diffcp-clarabel mode=dense] (mild)"]
    assert against["met"] is True and "ill-posed" not in against["detail"]


@pytest.mark.parametrize("own_errors, ill_posed", [
    ((5e-5, 5e-5, 5e-5), True),  # the reference is further from the finite differences than 1e-5
    ((1e-6, 2e-6, 1e-2), False),  # judged on the median, not on one bad instance
])
def test_ill_posed_is_said_where_the_reference_s_median_error_exceeds_the_tolerance(own_errors, ill_posed):
    rows = [{"family": "axial", "setting": "mild", "draw": i, "solver": "cvxpylayers[x]", "status": "ok",
             "reason": "", "error_vs_fd": e, "error_vs_dual": 1e-6} for i, e in enumerate(own_errors)]
    (target,) = [t for t in gt._targets({"gradients": rows}) if "cvxpylayers[x]" in t["target"]]
    assert target["detail"].startswith("ill-posed: ") is ill_posed


def test_the_gradient_comparison_has_one_row_per_diffcp_mode_and_one_per_other_backend():
    solvers = gt._gradient_solvers(["moreau", "diffcp-clarabel"], ("lsqr", "dense"))
    assert solvers == [("moreau", None), ("diffcp-clarabel", "lsqr"), ("diffcp-clarabel", "dense")]
    # diffcp's default keeps the name rows had before the modes existed
    assert [gt._gradient_solver_name(*s) for s in solvers] == [
        "cvxpylayers[moreau]", "cvxpylayers[diffcp-clarabel]", "cvxpylayers[diffcp-clarabel mode=dense]"]
    with pytest.raises(ValueError, match="diffcp_modes"):
        GraphBenchmark(diffcp_modes=("lpgd",))


@pytest.mark.slow  # cvxpylayers gradients of two axial instances (seconds)
def test_each_gradient_row_is_computed_with_its_own_mode(monkeypatch):
    import diffcp

    modes: list = []
    with_derivative = diffcp.solve_and_derivative_batch

    def spy(*args, **kwargs):
        modes.append(kwargs.get("mode", "lsqr"))
        return with_derivative(*args, **kwargs)

    monkeypatch.setattr(diffcp, "solve_and_derivative_batch", spy)
    config = GraphBenchmark(grad_size=16, grad_draws=1, diffcp_modes=("lsqr", "lsmr"))
    rows = gt._gradients(config, ("axial",), ["diffcp-clarabel"], log=lambda m: None)
    assert modes == ["lsqr", "lsmr"] * 2  # one instance per setting (mild, normal)
    assert [r["solver"] for r in rows if r["setting"] == "mild"] == [
        "dual", "cvxpylayers[diffcp-clarabel]", "cvxpylayers[diffcp-clarabel mode=lsmr]"]


@pytest.mark.slow  # runs every part of the graph benchmark
def test_a_small_run_writes_its_files_in_strict_json_with_the_load_and_threads(tmp_path, odd_threads):
    config = GraphBenchmark(parts=("convergence", "backward"), size=16, instances=2, batch=2, repeats=1,
                            threads=1)
    logged = []
    out = gt.graph_benchmark(config, str(tmp_path), log=logged.append, command="bench_graphs --tiny")
    assert torch.get_num_threads() == odd_threads  # the caller's count, restored
    conv = read_table(str(tmp_path / "convergence_instances.csv")).rows
    assert len(conv) == 3 * 2 * 2 * 2  # families x sets x dtypes x instances
    assert all(r["converged"] in ("True", "False") for r in conv)
    backward = read_table(str(tmp_path / "backward.csv")).rows
    assert {r["kind"] for r in backward} == {"implicit", "unrolled"}
    implicit = [float(r["gradient_error"]) for r in backward if r["kind"] == "implicit" and r["parameter"] == "1e-10"]
    assert max(implicit) < 1e-6  # against the gradient at tol 1e-13
    text = (tmp_path / "graphs.json").read_text()
    record = json.loads(text, parse_constant=lambda token: pytest.fail(f"not strict JSON: {token}"))
    (run,) = record["runs"]
    # the declared count, not the caller's: the run was made with it
    assert run["torch_threads"] == 1 and len(run["load_average_start"]) == 3 and run["cpu_count"] >= 1
    assert record["command"] == "bench_graphs --tiny" and record["targets"] == out["targets"]
    assert any("dual sweeps, mixed hard float64" in m for m in logged)


@pytest.mark.slow  # every part end to end, cvxpylayers and LinSATNet included (a minute)
def test_every_part_at_tiny_sizes_gives_a_verdict_for_every_target(tmp_path):
    from convex_attention.baselines.linsat import linsat_solve
    from convex_attention.cvx import available_backends

    if "moreau" not in available_backends():
        pytest.skip("needs the moreau backend")
    config = GraphBenchmark(size=16, grad_size=16, instances=2, batch=2, grad_draws=1, speed_batch=2, repeats=1,
                            cvx_batch=1, cvx_repeats=1, amortised_steps=2, linsat_iters=(2,), linsat_batch=1,
                            linsat_repeats=1)
    out = gt.graph_benchmark(config, str(tmp_path), baseline=linsat_solve, backends=["moreau"], log=lambda m: None)
    for name in ("convergence_instances.csv", "gradients.csv", "speed.csv", "backward.csv", "amortised.csv",
                 "linsat.csv", "graphs.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    names = [t["target"] for t in out["targets"]]
    for part in ("dual sweeps", "implicit gradient vs finite differences", "implicit gradient vs cvxpylayers[moreau]",
                 "cvxpylayers[moreau] (fastest) / dual", "dual / exact", "exact / softmaxes", "amortised / λ=0",
                 "baseline / dual time"):
        assert any(n.startswith(part) for n in names), part
    assert all(t["met"] in (True, False, None) for t in out["targets"])


def test_the_amortised_part_reports_the_untrained_features_and_the_development_split_gives_no_verdict(tmp_path):
    rows = {}
    for split in ("development", "held_out"):
        config = GraphBenchmark(parts=("amortised",), size=16, amortised_steps=3, amortised_sweeps=(0, 2),
                                amortised_split=split, threads=1, repeats=1)
        out = gt.graph_benchmark(config, str(tmp_path / split), log=lambda m: None)
        rows[split] = read_table(str(tmp_path / split / "amortised.csv")).rows
        verdicts = [t for t in out["targets"] if t["target"].startswith("amortised")]
        if split == "development":
            assert verdicts == []
        else:
            assert len(verdicts) == 2 * len(gt.AMORTISED_SETTINGS)
            assert all("untrained (its" in t["detail"] for t in verdicts)
    for split, table in rows.items():
        assert {r["split"] for r in table} == {split} and {r["sweeps"] for r in table} == {"0", "2"}
        for r in table:
            assert float(r["ratio_untrained"]) == pytest.approx(float(r["violation_untrained"])
                                                                / float(r["violation_zero"]))
            assert 0 < float(r["amortised_ms"]) < math.inf and 0 < float(r["dual_ms"]) < math.inf
    # other instances, the same training: the λ = 0 violations differ between the splits
    assert rows["development"][0]["violation_zero"] != rows["held_out"][0]["violation_zero"]
    # the sweeps help: two sweeps' features beat none on every setting
    for r0, r2 in zip(rows["held_out"][0::2], rows["held_out"][1::2]):
        assert float(r2["violation_untrained"]) < float(r0["violation_untrained"])


def test_the_amortised_split_is_validated():
    with pytest.raises(ValueError, match="amortised_split"):
        GraphBenchmark(amortised_split="test")


def test_the_device_is_checked_when_the_configuration_is_made():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        GraphBenchmark(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            GraphBenchmark(device="cuda")
    with pytest.raises(ValueError, match="moves only the speed part"):
        GraphBenchmark(parts=("convergence",), device="cpu:0")
    with pytest.raises(ValueError, match="--cvx-batch 8 exceeds --speed-batch 4"):
        GraphBenchmark(speed_batch=4, cvx_batch=8)
    GraphBenchmark(parts=("convergence",), speed_batch=4, cvx_batch=8)  # no speed part: nothing to exceed
    with pytest.raises(ValueError, match="unknown device 'tpu' for --cvx-device"):
        GraphBenchmark(cvx_device="tpu")
    with pytest.raises(ValueError, match="--cvx-device cpu:0 moves only the speed part"):
        GraphBenchmark(parts=("convergence",), cvx_device="cpu:0")


def test_a_gpu_asked_of_a_backend_that_would_solve_on_the_cpu_is_refused_before_any_work(tmp_path):
    """Without moreau's CUDA build its layer solves CUDA inputs on the CPU: timed there, the
    row would carry the GPU's name."""
    from convex_attention.cvx import available_backends

    if "moreau" not in available_backends():
        pytest.skip("needs the moreau backend")
    import moreau

    if moreau.device_available("cuda"):
        pytest.skip("moreau's CUDA build is installed here")
    config = GraphBenchmark(parts=("speed",))
    object.__setattr__(config, "cvx_device", "cuda")  # this machine may have no GPU: past check_device
    with pytest.raises(ValueError, match=r"cvxpylayers\[moreau\] would solve on the cpu.*moreau-cuda13"):
        gt.check_cvx_device(config, ["moreau"])
    gt.check_cvx_device(config, ["cuclarabel"])  # CUDA-only: always on the GPU
    with pytest.raises(ValueError, match="would solve on the cpu"):
        gt.graph_benchmark(config, str(tmp_path / "out"), backends=["moreau"], log=lambda m: None)
    assert not (tmp_path / "out").exists()  # refused before the folder was made


def test_speed_rows_name_the_device_each_method_ran_on(monkeypatch):
    """The package's methods run on ``device``; cvxpylayers where its backend solves inputs on
    ``cvx_device`` (its row says so), and the ratio's detail names both devices and batches."""
    from convex_attention.cvx import available_backends

    if "moreau" not in available_backends():
        pytest.skip("needs the moreau backend")
    # "cpu:0" runs here and differs from "cpu": a speed part that ignored a setting would name
    # the wrong device
    config = GraphBenchmark(parts=("speed",), size=16, speed_batch=2, repeats=1, cvx_batch=1, cvx_repeats=1,
                            device="cpu:0")
    rows = gt._speed(config, ("axial",), ["moreau"], log=lambda m: None)
    assert {(r["method"], r["device"]) for r in rows} == {("dual", "cpu:0"), ("cvxpylayers", "cpu"),
                                                         ("exact", "cpu:0"), ("softmax", "cpu:0")}
    (ratio,) = [t for t in gt._targets({"speed": rows}) if t["target"].startswith("cvxpylayers[moreau]")]
    assert "dual on cpu:0 (batch 2), cvxpylayers[moreau] on cpu (batch 1)" in ratio["detail"]
    # cvxpylayers' inputs go to cvx_device: a backend that solves where its inputs are (as
    # moreau's CUDA build does on a GPU) is named with that device
    monkeypatch.setattr(gt, "solve_device", lambda backend, device: device)
    config = GraphBenchmark(parts=("speed",), size=16, speed_batch=2, repeats=1, cvx_batch=1, cvx_repeats=1,
                            cvx_device="cpu:0")
    rows = gt._speed(config, ("axial",), ["moreau"], log=lambda m: None)
    assert [r["device"] for r in rows if r["method"] == "cvxpylayers"] == ["cpu:0"]


@pytest.mark.slow  # the GPU check's graph section, run on the CPU so that the script cannot rot unseen
def test_the_gpu_checks_graph_section_runs_and_passes_on_the_cpu():
    checks = _script("gpu_check").graph_correctness("cpu", size=16, batch=2)
    assert len(checks) >= 19 and all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]


def test_every_setting_is_checked_when_the_configuration_is_made():
    with pytest.raises(ValueError, match="parts"):
        GraphBenchmark(parts=("convergence", "nonsense"))
    with pytest.raises(ValueError, match="amortised_sweeps"):
        GraphBenchmark(amortised_sweeps=(-1,))


def test_a_folder_with_an_earlier_runs_results_is_refused_before_any_work(tmp_path, capsys):
    script = _script("bench_graphs")
    (tmp_path / "amortised.csv").write_text("earlier results\n")
    with pytest.raises(SystemExit) as stop:
        script.main(["--parts", "amortised", "--size", "16", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "already holds amortised.csv" in capsys.readouterr().err
    assert (tmp_path / "amortised.csv").read_text() == "earlier results\n"
    config = GraphBenchmark(parts=("amortised",), size=16, amortised_steps=1, amortised_sweeps=(0,), repeats=1)
    with pytest.raises(ValueError, match="--overwrite"):
        gt.graph_benchmark(config, str(tmp_path), log=lambda m: None)
    gt.graph_benchmark(config, str(tmp_path), log=lambda m: None, overwrite=True)
    assert (tmp_path / "amortised.csv").read_text().startswith("family,")


def _script(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_profile_script_times_each_batch_and_refuses_a_bad_size(capsys):
    script = _script("profile_dual")
    before = torch.get_num_threads()
    try:
        script.main(["--family", "axial", "--size", "16", "--batches", "1", "2", "--profile"])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "axial 16² batch 1:" in out and "axial 16² batch 2:" in out and "Newton steps" in out
    assert "function calls" in out  # the profile of the first batch
    with pytest.raises(SystemExit) as stop:
        script.main(["--size", "20"])
    assert stop.value.code == 2


@pytest.mark.slow  # end-to-end: the script's speed and convergence parts
def test_the_newton_ablation_compares_both_solvers_and_restores_the_shipped_one(capsys, monkeypatch):
    import convex_attention.dual as dual

    script = _script("ablate_newton")
    before = torch.get_num_threads()
    shipped = dual._REGULARISED_NEWTON
    calls = []
    solve_dual = dual.solve_dual

    def recording(*args, **kwargs):
        calls.append(dual._REGULARISED_NEWTON)
        return solve_dual(*args, **kwargs)

    monkeypatch.setattr(dual, "solve_dual", recording)
    try:
        script.main(["--size", "16", "--instances", "2"])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert out.count("identical True") == 3 and "hard   mixed" in out and "misses off 0, on 0" in out
    assert set(calls) == {(), shipped} and calls.count(()) == calls.count(shipped)  # on and off, per instance
    assert dual._REGULARISED_NEWTON == shipped
    with pytest.raises(SystemExit) as stop:
        script.main(["--instances", "0"])
    assert stop.value.code == 2


@pytest.mark.slow  # end-to-end: the fallback's ablation, on the inexact path forced at 16²
def test_the_fallback_ablation_switches_the_dense_fallback_alone_and_restores_it(capsys, monkeypatch):
    import convex_attention.dual as dual
    import convex_attention.hessian as hessian

    script = _script("ablate_newton")
    before = torch.get_num_threads()
    shipped = (dual._REGULARISED_NEWTON, dual.DENSE_LIMIT, hessian.DENSE_FALLBACK_LIMIT)
    calls = []
    solve_dual = dual.solve_dual

    def recording(*args, **kwargs):
        calls.append((dual._REGULARISED_NEWTON, dual.DENSE_LIMIT, hessian.DENSE_FALLBACK_LIMIT))
        return solve_dual(*args, **kwargs)

    monkeypatch.setattr(dual, "solve_dual", recording)
    try:
        script.main(["--ablate", "fallback", "--dense-limit", "0", "--size", "16", "--instances", "2",
                     "--families", "mixed", "--sets", "hard", "--backward", "--no-speed"])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "hard   mixed" in out and "failed backwards off" in out and "normal" not in out and "speed" not in out
    fallback = hessian.DENSE_FALLBACK_LIMIT
    assert set(calls) == {(shipped[0], 0, 0), (shipped[0], 0, fallback)}
    assert (dual._REGULARISED_NEWTON, dual.DENSE_LIMIT, hessian.DENSE_FALLBACK_LIMIT) == shipped
    with pytest.raises(SystemExit) as stop:
        script.main(["--dense-limit", "-1"])
    assert stop.value.code == 2


@pytest.mark.slow  # end-to-end: the pseudo-inverse retry's ablation, backward count only
def test_the_pseudo_inverse_ablation_switches_the_backward_retry_alone_and_restores_it(capsys, monkeypatch):
    import convex_attention.hessian as hessian

    script = _script("ablate_newton")
    before = torch.get_num_threads()
    shipped = (hessian.DENSE_FALLBACK_LIMIT, hessian.RETRY_PRECONDITIONERS)
    calls = []
    implicit_vjp = hessian.implicit_vjp

    def recording(*args, **kwargs):
        calls.append((hessian.DENSE_FALLBACK_LIMIT, hessian.RETRY_PRECONDITIONERS))
        return implicit_vjp(*args, **kwargs)

    monkeypatch.setattr(hessian, "implicit_vjp", recording)
    try:
        script.main(["--ablate", "pseudo_inverse", "--size", "16", "--instances", "2", "--families", "mixed",
                     "--sets", "hard", "--backward", "--no-speed"])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "hard   mixed" in out and "failed backwards off 0, on 0" in out
    assert set(calls) == {shipped, (shipped[0], ("cholesky",))} and len(calls) == 4
    assert (hessian.DENSE_FALLBACK_LIMIT, hessian.RETRY_PRECONDITIONERS) == shipped


def test_a_nan_gradient_error_is_never_met_wherever_it_comes():
    """Python's max and statistics.median drop or misplace a NaN that is not first."""
    def row(solver, error, draw):
        return {"family": "axial", "setting": "mild", "draw": draw, "solver": solver, "status": "ok", "reason": "",
                "error_vs_fd": error, "error_vs_dual": error}

    for errors in ((1e-9, math.nan), (math.nan, 1e-9), (1e-9, math.nan, 1e-9)):
        rows = [row("dual", e, i) for i, e in enumerate(errors)] + [row("cvxpylayers[x]", e, i)
                                                                  for i, e in enumerate(errors)]
        by = {t["target"]: t for t in gt._targets({"gradients": rows})}
        assert by["implicit gradient vs finite differences (mild)"]["met"] is False, errors
        assert by["implicit gradient vs cvxpylayers[x] (mild)"]["met"] is False, errors


def test_a_dual_that_failed_or_lost_is_a_miss_not_unmeasured():
    """A NaN dual violation reaches nothing, and a dual that never reached the baseline's
    violation lost: both were reported "not measured"; a failed dual also dropped its
    backward / forward target silently (a review of the harness)."""
    def linsat(violation):
        return [{"solver": "linsat", "parameter": 10, "violation": 1e-3, "per_sample_ms": 5.0},
                {"solver": "dual", "parameter": 1e-6, "violation": violation, "per_sample_ms": 1.0}]

    for violation in (math.nan, 1e-2):
        (target,) = gt._targets({"linsat": linsat(violation)})
        assert target["met"] is False and "no dual tolerance reached" in target["detail"]
    (target,) = gt._targets({"linsat": linsat(1e-6)})
    assert target["met"] is True
    (target,) = gt._targets({"linsat": linsat(1e-6)[:1]})
    assert target["met"] is None and target["detail"] == "dual did not run"
    failed_baseline = linsat(1e-9)
    failed_baseline[0]["violation"] = math.nan  # the baseline failed, not dual: no verdict
    (target,) = gt._targets({"linsat": failed_baseline})
    assert target["met"] is None and "the baseline failed" in target["detail"]
    speed = [{"family": "axial", "method": "dual", "backend": "", "status": "error", "reason": "x"}]
    by = {t["target"]: t for t in gt._targets({"speed": speed})}
    assert by["dual backward / forward time (axial)"]["met"] is False
    assert by["cvxpylayers (fastest) / dual per sample (axial)"]["met"] is False


def test_bench_graphs_fails_like_a_command(tmp_path, capsys, monkeypatch):
    """One line on stderr for every failure; exit 2 for usage and a folder in use, 1 for a failed
    run, 130 for Ctrl-C; a refused run leaves no folder behind (a review found an 11-line usage
    block, tracebacks for a locked folder and Ctrl-C, and empty folders)."""
    from test_lock import hold_lock

    script = _script("bench_graphs")

    def run(*argv):
        try:
            code = script.main(list(argv))
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        return code, err

    code, err = run("--size", "20", "--out", str(tmp_path / "a"))
    assert code == 2 and "multiples of 16" in err and not (tmp_path / "a").exists()
    code, err = run("--tiny", "--backends", "cuclarabel", "--out", str(tmp_path / "b"))
    assert code == 2 and not (tmp_path / "b").exists()
    held = tmp_path / "held"
    held.mkdir()
    proc = hold_lock(held, 60)
    try:
        code, err = run("--tiny", "--parts", "backward", "--out", str(held))
        assert code == 2 and f"pid {proc.pid}" in err and "--wait" in err
    finally:
        proc.kill()
        proc.wait()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def broken(*args, **kwargs):
        raise RuntimeError("a solver\nfailed")

    for stub, expected, words in ((interrupted, 130, "interrupted"), (broken, 1, "RuntimeError: a solver failed")):
        monkeypatch.setattr(script, "graph_benchmark", stub)
        code, err = run("--tiny", "--parts", "backward", "--out", str(tmp_path / "c"))
        assert code == expected and words in err


def test_gpu_check_refuses_bad_options_and_an_earlier_record_before_any_work(tmp_path, capsys):
    """--repeats 0 failed only after every check had run; gpu_check.json was replaced without
    a word (and written non-atomically, NaN allowed: now write_json)."""
    script = _script("gpu_check")
    (tmp_path / "gpu_check.json").write_text("{}")
    for argv in (["--repeats", "0", "--out", str(tmp_path / "a")], ["--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as stop:
            script.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "gpu_check.json").read_text() == "{}" and not (tmp_path / "a").exists()


def _dual_gradient_row(error, draw, status="ok"):
    return {"family": "axial", "setting": "mild", "draw": draw, "solver": "dual", "status": status, "reason": "",
            "error_vs_fd": error, "error_vs_dual": 0.0}


def test_the_implicit_gradient_against_finite_differences_is_judged_by_its_worst_instance():
    """One instance off by 1e-2 beside two within 1e-5: NOT met, and the value is the worst
    (found by mutation testing: judged by the median, the target was met)."""
    rows = [_dual_gradient_row(e, i) for i, e in enumerate((1e-7, 1e-7, 1e-2))]
    (target,) = gt._targets({"gradients": rows})
    assert target["target"] == "implicit gradient vs finite differences (mild)"
    assert target["met"] is False and target["value"] == 1e-2


def test_a_failed_implicit_backward_makes_the_finite_difference_target_not_met():
    """An instance whose implicit backward failed, beside a good one: NOT met and the detail
    names it (found by mutation testing: the good instance alone met the target)."""
    rows = [_dual_gradient_row(1e-9, 0), _dual_gradient_row(math.nan, 1, status="error")]
    (target,) = gt._targets({"gradients": rows})
    assert target["met"] is False and target["value"] == 1e-9
    assert "the implicit backward FAILED on 1 instance(s) (axial)" in target["detail"]


def test_the_speed_up_over_cvxpylayers_is_against_the_fastest_backend():
    """Backends at 500 and 5000 ms per sample, dual at 1 ms: the ratio is 500, NOT met, and
    the target names the fast backend (found by mutation testing: against the slowest, 5000,
    the target was met)."""
    speed = [{"family": "axial", "method": "dual", "backend": "", "status": "ok", "fwd_ms": 1.0, "bwd_ms": 0.5,
              "per_sample_ms": 1.0, "batch": 1, "total_ms": 1.5},
             {"family": "axial", "method": "cvxpylayers", "backend": "slow", "status": "ok",
              "per_sample_ms": 5000.0, "batch": 1},
             {"family": "axial", "method": "cvxpylayers", "backend": "fast", "status": "ok",
              "per_sample_ms": 500.0, "batch": 1}]
    (target,) = [t for t in gt._targets({"speed": speed}) if "/ dual per sample" in t["target"]]
    assert target["target"] == "cvxpylayers[fast] (fastest) / dual per sample (axial)"
    assert target["value"] == 500.0 and target["met"] is False


def test_the_dual_over_exact_ratio_on_the_forests_is_of_forward_plus_backward():
    """dual / exact divides the total (forward + backward) medians: dual 1 ms forward and
    24 ms in all, exact 2 ms in all: 12, NOT met (found by mutation testing: dual's forward
    time alone gave 0.5, met)."""
    def row(family, method, fwd, total):
        return {"family": family, "method": method, "backend": "", "status": "ok", "fwd_ms": fwd,
                "bwd_ms": total - fwd, "total_ms": total, "per_sample_ms": total, "batch": 1}

    speed = [row(f, m, fwd, total) for f in ("star", "chain")
             for m, fwd, total in (("dual", 1.0, 24.0), ("exact", 1.5, 2.0), ("softmax", 0.5, 1.0))]
    by = {t["target"]: t for t in gt._targets({"speed": speed})}
    for family in ("star", "chain"):
        t = by[f"dual / exact, forward + backward ({family})"]
        assert t["value"] == 12.0 and t["met"] is False, family
    assert by["exact / softmaxes, forward + backward (star)"]["value"] == 2.0


def test_a_value_exactly_on_its_threshold_is_met_and_a_dual_exactly_at_the_baseline_s_violation_reaches_it():
    """A ceiling or a floor may be reached, and a dual tolerance whose violation equals the
    baseline's reaches it (found by mutation testing: `<` for `<=` survived in both)."""
    assert gt._target("x", 1.0, "<=", 1.0)["met"] is True
    assert gt._target("x", 1e3, ">=", 1e3)["met"] is True
    linsat = [{"solver": "linsat", "parameter": 10, "violation": 1e-3, "per_sample_ms": 5.0},
              {"solver": "dual", "parameter": 1e-6, "violation": 1e-3, "per_sample_ms": 1.0}]
    (target,) = gt._targets({"linsat": linsat})
    assert target["met"] is True and target["value"] == 5.0
