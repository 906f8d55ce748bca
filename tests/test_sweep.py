import json
import math

import pytest
import torch

import convex_attention as ca
from convex_attention.bench.generators import generate
from convex_attention.bench.sweep import SweepConfig, _cvx_estimate_s, check_sweep


def test_cvx_time_estimate_uses_measured_cells():
    rows = [{"method": "cvxpylayers", "status": "ok", "n_cells": n, "per_sample_ms": 1e3 * 0.001 * n}
            for n in (100, 1000)]
    assert abs(_cvx_estimate_s(rows, 10000, batch=2, calls=3) - 0.001 * 10000 * 6) < 1e-6


@pytest.mark.parametrize("kwargs, message", [
    ({"sizes": [12], "levels": [4]}, "does not divide"),
    ({"methods": ["exact", "sparsemax"]}, "--methods: .*'sparsemax' is not"),
    ({"dtypes": ["int8"]}, "--dtype: .*'int8' is not"),
    ({"devices": ["tpu"]}, "unknown device"),
    ({"levels": [1]}, "--levels: .*integer from 2"),
    ({"sizes": [1 << 20], "batches": [64]}, "above the .* any cell may hold"),
    # the learned duals' training set: 2**20 instances of 5120 cells could never be allocated
    ({"sizes": [64], "levels": [2], "batches": [1], "fit_instances": 1 << 20}, "--fit-instances 1048576: .* any cell "
                                                                              "may hold"),
    # a grid value twice: its cells were measured twice (before: accepted)
    ({"sizes": [8, 16, 8]}, r"--sizes: .*8 is listed twice"),
    ({"temperatures": [1, 1.0]}, r"--temperature: .*1.0 is listed twice"),
    ({"devices": ["cpu", "cpu"]}, r"--device: .*'cpu' is listed twice"),
    # a checkpoint that only the model generator reads (before: accepted, and it blocked --resume)
    ({"checkpoint": "missing.pt"}, "--checkpoint needs --generator model"),
])
def test_check_sweep_rejects_bad_sweeps(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sweep(SweepConfig(**kwargs))


# ----------------------------------------------------------------------------- the cvxpylayers budget

def cvx_rows(points, backend=""):
    return [{"method": "cvxpylayers", "backend": backend, "status": "ok", "n_cells": n, "per_sample_ms": ms}
            for n, ms in points]


def test_cvx_budget_ignores_a_fit_over_nearly_equal_sizes():
    from convex_attention.bench.sweep import cvx_estimate
    from convex_attention.cvx import prior_seconds_per_sample

    # two cells of 20 and 21 cells timed under load: a log-log slope of about 12
    rows = cvx_rows([(20, 10.0), (21, 10.0 * (21 / 20) ** 12)])
    seconds, basis = cvx_estimate(rows, 5440, batch=2, calls=2)
    assert seconds == pytest.approx(prior_seconds_per_sample(5440) * 4)
    assert "prior" in basis and "spread" in basis
    assert seconds < 60, "the cell is not skipped on a wild extrapolation"
    # each backend's own prior where the core has one
    from convex_attention.cvx import CVX_PRIORS

    seconds, _ = cvx_estimate(cvx_rows([(20, 10.0)], "moreau"), 5440, batch=2, calls=2, backend="moreau")
    assert seconds == pytest.approx(prior_seconds_per_sample(5440, CVX_PRIORS["moreau"]) * 4)


def test_cvx_budget_clamps_the_slope_to_a_plausible_range():
    from convex_attention.bench.sweep import SLOPE_RANGE, cvx_estimate

    rows = cvx_rows([(100, 1.0), (400, 1.0 * 4 ** 12)])  # spread 4, slope 12
    seconds, basis = cvx_estimate(rows, 1600, batch=1, calls=1)
    lo, hi = SLOPE_RANGE
    # the line through the points' centre at the largest plausible slope
    centre_x = (math.log(100) + math.log(400)) / 2
    centre_y = (math.log(1e-3) + math.log(1e-3 * 4 ** 12)) / 2
    assert seconds == pytest.approx(math.exp(centre_y + hi * (math.log(1600) - centre_x)))
    assert "clamped" in basis
    rows = cvx_rows([(100, 1.0), (400, 1.0 * 4 ** 0.1)])  # slope 0.1, too flat
    seconds, basis = cvx_estimate(rows, 1600, batch=1, calls=1)
    assert seconds > 1e-3 * 4 ** lo and "clamped" in basis


def test_cvx_budget_fits_each_backend_on_its_own_cells():
    from convex_attention.bench.sweep import cvx_estimate

    rows = cvx_rows([(100, 1.0), (1000, 10.0)], "moreau") + cvx_rows([(100, 100.0), (1000, 1000.0)], "diffcp-scs")
    fast, _ = cvx_estimate(rows, 10000, 1, 1, backend="moreau")
    slow, _ = cvx_estimate(rows, 10000, 1, 1, backend="diffcp-scs")
    assert fast == pytest.approx(0.1) and slow == pytest.approx(10.0)


# ----------------------------------------------------------------------------- sweep checks

@pytest.mark.parametrize("kwargs, message", [
    ({"scale": math.inf}, "--scale"),
    ({"scale": 1e300}, "--scale"),
    ({"scale": -1.0}, "--scale"),
    ({"temperatures": [math.inf]}, "--temperature: .*finite number > 0"),
    ({"temperatures": [-1.0]}, "--temperature: .*finite number > 0"),
    ({"temperatures": [1e-39]}, "--temperature 1e-39 with 2 levels in float32"),  # NaN in float32 otherwise
    ({"warmup": 0}, "--warmup"),
    ({"repeats": 0}, "--repeats"),
    ({"batches": [0]}, "--batch"),
    ({"devices": ["cuda:0"] if not torch.cuda.is_available() else ["cuda:99"]}, "--device"),
    ({"devices": ["mps"]}, "unknown device"),
    ({"cvx_backends": ["gurobi"]}, "--cvx-backends: .*'gurobi' is not"),
    ({"seed": 2 ** 64}, "--seed: .*integer from 0 to 4294967295"),
    ({"factor": 1}, "--factor"),
])
def test_check_sweep_names_the_option_and_the_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sweep(SweepConfig(**kwargs))


def test_backends_default_to_every_installed_one():
    from convex_attention.bench.sweep import resolve_backends
    from convex_attention.cvx import available_backends

    assert resolve_backends(SweepConfig()) == available_backends()
    assert resolve_backends(SweepConfig(cvx_backends=["diffcp-scs", "diffcp-scs"])) == ["diffcp-scs"]


# ----------------------------------------------------------------------------- targets


# ----------------------------------------------------------------------------- the amortised dual in the sweep

class OracleAmortiser(torch.nn.Module):
    """A stand-in for nn.AmortisedDuals with a known answer: the per-sample optimal duals
    (scaled by a learnable weight that stays 1), so the harness's plumbing is what is tested."""

    calls = 0

    def __init__(self, h, temperature, **kwargs):
        super().__init__()
        self.h, self.temperature = h, temperature
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, scores):
        OracleAmortiser.calls += 1
        duals = ca.solve([s.detach() for s in scores], self.h, "exact", temperature=self.temperature).duals
        return [self.weight * d for d in duals]


@pytest.mark.slow
def test_sweep_trains_the_amortised_dual_on_training_instances_and_times_the_network(tmp_path, monkeypatch):
    import convex_attention.nn as ca_nn
    from convex_attention.bench.sweep import hierarchy_for, run_sweep
    from convex_attention.io.tables import read_table

    seen = []
    monkeypatch.setattr(ca_nn, "AmortisedDuals", OracleAmortiser, raising=False)
    monkeypatch.setattr(ca_nn, "fit_amortised_duals", lambda module, train, steps, **kw: seen.append(train),
                        raising=False)
    config = SweepConfig(methods=["exact", "learned_dual"], sizes=[8], levels=[2], batches=[4], repeats=3, warmup=1,
                         fit_instances=6, fit_steps=2, amortised_steps=2, generator="gaussian")
    OracleAmortiser.calls = 0
    rows = run_sweep(config, str(tmp_path), progress=False, log=lambda m: None)
    by = {r["dual_kind"]: r for r in rows if r["method"] == "learned_dual"}
    assert set(by) == {"zero", "fitted", "amortised", "per_sample"}
    amortised = by["amortised"]
    assert amortised["status"] == "ok" and amortised["total_ms"] > 0 and amortised["repeats"] == 3
    assert OracleAmortiser.calls >= 3 + 1, "the timed case runs the network"
    # trained on training instances, never on the evaluated (held-out) ones
    (train,) = seen
    evaluated = generate("gaussian", hierarchy_for(next(config.cells()), config.factor), 4, seed=config.seed)
    assert train[0].shape[0] == 6
    assert not any(torch.allclose(t.double(), e, atol=1e-5) for t in train[0] for e in evaluated[0])
    assert amortised["violation_mean"] < 1e-5 < by["zero"]["violation_mean"]
    # its target is judged, stored in bench.json and met by the oracle
    data = json.load(open(tmp_path / "bench.json"))
    (target,) = data["targets"]
    assert target["generator"] == "gaussian" and target["levels"] == 2 and target["met"] is True
    assert len(read_table(str(tmp_path / "bench.csv")).rows) == 5


@pytest.mark.slow
def test_one_global_warmup_runs_before_the_first_cell(tmp_path, monkeypatch):
    from convex_attention.bench import sweep

    calls = []
    real = sweep.measure_interleaved

    def spy(cases, **kwargs):
        calls.append((sorted(cases), kwargs.get("repeats"), kwargs.get("warmup")))
        return real(cases, **kwargs)

    monkeypatch.setattr(sweep, "measure_interleaved", spy)
    config = SweepConfig(methods=["exact", "softmax"], sizes=[4, 8], levels=[2], batches=[2], repeats=2, warmup=1)
    sweep.run_sweep(config, str(tmp_path), progress=False, log=lambda m: None)
    assert calls[0] == (["exact", "softmax"], 0, 2), "an untimed warm-up first"
    assert [c[1] for c in calls[1:]] == [2, 2], "then one timed call per cell, no other warm-up"


@pytest.mark.slow
def test_a_failing_method_becomes_error_rows_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from convex_attention.bench import sweep

    def fail(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(sweep, "_measure_fast", fail)
    config = SweepConfig(methods=["exact", "softmax"], sizes=[4, 8], levels=[2], batches=[2], repeats=1, warmup=1)
    rows = sweep.run_sweep(config, str(tmp_path), progress=False, log=lambda m: None)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"error"}
    assert all("out of memory" in r["reason"] for r in rows)


def test_one_failing_method_does_not_fail_the_cell_s_other_methods(tmp_path, monkeypatch):
    """The fast methods are timed interleaved; when one fails (the dual's implicit backward,
    seen in a review), the others are timed apart and say so, and only it is an error row."""
    from convex_attention.bench import sweep

    real = sweep.timed_case

    def failing_exact(method, *args, **kwargs):
        case = real(method, *args, **kwargs)
        if method != "exact":
            return case

        def broken(*a, **k):
            raise RuntimeError("the backward failed (simulated)")
        return broken

    monkeypatch.setattr(sweep, "timed_case", failing_exact)
    config = SweepConfig(methods=["exact", "softmax"], sizes=[4], levels=[2], batches=[2], repeats=1, warmup=1)
    rows = {r["method"]: r for r in sweep.run_sweep(config, str(tmp_path), progress=False, log=lambda m: None)}
    assert rows["exact"]["status"] == "error" and "backward failed" in rows["exact"]["reason"]
    assert rows["softmax"]["status"] == "ok" and "timed apart" in rows["softmax"]["reason"]
    assert float(rows["softmax"]["total_ms"]) > 0


def test_one_device_under_two_names_is_refused(monkeypatch):
    """`--device cuda cuda:0` names one device twice (each cell measured twice, as two rows)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(ValueError, match="--device cuda cuda:0: the same device, listed twice"):
        check_sweep(SweepConfig(sizes=(4,), levels=(2,), devices=("cuda", "cuda:0")))
    check_sweep(SweepConfig(sizes=(4,), levels=(2,), devices=("cpu", "cuda", "cuda:1")))


@pytest.mark.parametrize("devices", [("cpu", "cpu:0"), ("cpu:0", "cpu")])
def test_the_cpu_under_two_names_is_refused(devices):
    """Before: `--device cpu cpu:0` passed (cpu's index None against 0) and timed every cell
    twice, under two names."""
    with pytest.raises(ValueError, match=f"--device {devices[0]} {devices[1]}: the same device, listed twice"):
        check_sweep(SweepConfig(sizes=(4,), levels=(2,), devices=devices))


def test_the_example_trains_on_the_sweeps_instances_capped_like_the_sweeps(tmp_path, monkeypatch):
    """Before: example.npz ignored --seed, --scale and --fit-max-values (seed 0, scale 1, every
    --fit-instances instance)."""
    import numpy as np

    from convex_attention.bench import examples
    from convex_attention.bench.sweep import fit_instances
    from convex_attention.hierarchy import Hierarchy

    calls = []
    real = examples.generate
    monkeypatch.setattr(examples, "generate", lambda *a, **k: calls.append((a[2], k)) or real(*a, **k))
    config = SweepConfig(seed=3, scale=2.5, fit_instances=64, fit_max_values=2 ** 10)
    path = examples.save_example(str(tmp_path), generator="lesion", size=16, scale=config.scale, seed=config.seed,
                                 fit_instances=config.fit_instances, fit_max_values=config.fit_max_values,
                                 fit_steps=1)
    h = Hierarchy.grid([(16, 16), (8, 8)])
    assert calls == [(1, {"seed": 103, "scale": 2.5}), (fit_instances(config, 320), {"seed": 4, "scale": 2.5})]
    assert fit_instances(config, 320) == 4 < 64
    with np.load(path, allow_pickle=False) as z:
        assert np.array_equal(z["scores0"], generate("lesion", h, 1, seed=103, scale=2.5)[0][0].numpy())


def test_fit_max_values_shrinks_the_training_set_of_large_cells_only():
    from convex_attention.bench.sweep import MIN_FIT_INSTANCES, fit_instances

    config = SweepConfig(fit_instances=64, fit_max_values=2 ** 16)
    assert fit_instances(config, 320) == 64
    assert fit_instances(config, 4608) == 2 ** 16 // 4608
    assert fit_instances(config, 37376) == MIN_FIT_INSTANCES
    assert fit_instances(SweepConfig(fit_instances=64), 10 ** 6) == 64  # no cap by default
    with pytest.raises(ValueError, match="--fit-max-values"):
        check_sweep(SweepConfig(fit_max_values=0))


def test_cvx_budget_prefers_cells_of_the_same_depth():
    from convex_attention.bench.sweep import cvx_estimate

    def rows_at(levels, points):
        return [{**r, "levels": levels} for r in cvx_rows(points, "diffcp-scs")]

    # measured (quick sweep, SCS): 3 levels get much slower with size than 2 levels
    rows = rows_at(2, [(20, 46), (80, 138), (320, 586)]) + rows_at(3, [(21, 63), (84, 170), (336, 3031)])
    deep, basis = cvx_estimate(rows, 1344, batch=2, calls=2, backend="diffcp-scs", levels=3)
    assert deep > 15 and "3-level" in basis, "skipped at --budget 15 (it took 290 s when run)"
    shallow, _ = cvx_estimate(rows, 1280, batch=2, calls=2, backend="diffcp-scs", levels=2)
    assert shallow < 15
    # too little spread at this depth: every depth of the backend
    lone, basis = cvx_estimate(rows_at(2, [(20, 46), (320, 586)]) + rows_at(3, [(21, 63)]), 1344, 2, 2,
                               backend="diffcp-scs", levels=3)
    assert "fit over 3 measured cells" in basis and lone > 0




# ----------------------------------------------------------------------------- the structure axis

def test_a_chain_sweep_keeps_its_cells_and_other_structures_have_one_cell_per_size():
    chain = list(SweepConfig(sizes=[8, 16], levels=[2, 3]).cells())
    assert [(c["structure"], c["size"], c["levels"]) for c in chain] == [
        ("chain", 8, 2), ("chain", 8, 3), ("chain", 16, 2), ("chain", 16, 3)]
    both = list(SweepConfig(structures=["chain", "axial", "star"], sizes=[16, 32], levels=[2, 3]).cells())
    assert [c for c in both if c["structure"] == "chain"] == list(SweepConfig(sizes=[16, 32], levels=[2, 3]).cells())
    others = [(c["structure"], c["size"], c["levels"]) for c in both if c["structure"] != "chain"]
    assert others == [("axial", 16, 3), ("axial", 32, 3), ("star", 16, 5), ("star", 32, 5)], \
        "levels is the number of maps; --levels shapes the chain only"


@pytest.mark.parametrize("kwargs, message", [
    ({"structures": ["axial"], "dims": [1]}, "--structure axial .* needs --dims 2 or 3"),
    ({"structures": ["star"], "sizes": [18], "levels": [2]}, "--structure star .* multiple of 4"),
    ({"structures": ["grid_regions"], "sizes": [8]}, "--structure grid_regions .* at least 16"),
    ({"structures": ["ring"]}, "--structure: .*'ring' is not"),
    ({"structures": ["mixed"], "sizes": [1 << 14], "batches": [64]}, "structure mixed.*above the"),
])
def test_check_sweep_refuses_a_structure_it_cannot_build(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sweep(SweepConfig(**kwargs))


@pytest.mark.slow
def test_every_structure_is_swept_and_a_method_that_cannot_solve_one_is_skipped_with_the_reason(tmp_path):
    from convex_attention.bench.sweep import run_sweep
    from convex_attention.io.tables import read_table

    config = SweepConfig(methods=["softmax", "exact", "dual", "learned_dual"],
                         structures=["chain", "star", "axial", "grid_regions", "mixed"], sizes=[16], levels=[2],
                         batches=[2], repeats=1, warmup=1, fit_instances=4, fit_steps=2, amortised_steps=2)
    rows = run_sweep(config, str(tmp_path), progress=False, log=lambda m: None)
    by = {(r["structure"], r["method"], r["dual_kind"]): r for r in rows}
    assert len(rows) == 5 * 7
    for structure in ("axial", "grid_regions", "mixed"):  # exact solves forests only: information, not an error
        skipped = by[(structure, "exact", "")]
        assert skipped["status"] == "skipped" and "forests only" in skipped["reason"] and "dual" in skipped["reason"]
    assert all(r["status"] == "ok" for r in rows if r["method"] != "exact" or r["structure"] in ("chain", "star"))
    for structure in ("chain", "star", "axial", "grid_regions", "mixed"):
        dual = by[(structure, "dual", "")]
        assert dual["violation_max"] < 1e-6 and dual["max_abs_err"] < 1e-6, "against the float64 reference"
        assert by[(structure, "softmax", "")]["violation_max"] > 1e-3
    conv = read_table(str(tmp_path / "convergence.csv")).rows
    assert {r["structure"] for r in conv} == {"chain", "star", "axial", "grid_regions", "mixed"}
    header = read_table(str(tmp_path / "bench.csv")).header
    assert header[header.index("dual_kind") + 1] == "structure"


def test_a_cell_whose_instance_cannot_be_allocated_is_an_error_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Before: an allocation failure while a cell's scores were made (or in the warm-up)
    ended the command with a traceback and no row."""
    from convex_attention.bench import sweep
    from convex_attention.io.tables import read_table

    real = sweep.generate

    def out_of_memory_at_size_8(name, h, batch, **kwargs):
        if h.shapes[0] == (8, 8):
            raise MemoryError("Unable to allocate 8.00 EiB for an array (simulated)")
        return real(name, h, batch, **kwargs)

    monkeypatch.setattr(sweep, "generate", out_of_memory_at_size_8)
    logged = []
    monkeypatch.setattr(sweep, "_global_warmup", lambda config, pending: (_ for _ in ()).throw(
        RuntimeError("DefaultCPUAllocator: can't allocate memory (simulated)")))
    config = SweepConfig(methods=["exact", "softmax"], sizes=[8, 4], levels=[2], batches=[2], repeats=1, warmup=1,
                         generator="gaussian")
    rows = sweep.run_sweep(config, str(tmp_path), progress=False, log=logged.append)
    by_size = {}
    for r in rows:
        by_size.setdefault(r["size"], set()).add((r["method"], r["status"]))
    assert by_size[8] == {("exact", "error"), ("softmax", "error")}
    assert by_size[4] == {("exact", "ok"), ("softmax", "ok")}
    errors = [r for r in rows if r["status"] == "error"]
    assert all(r["reason"].startswith("MemoryError: Unable to allocate") and r["shapes"] == "8x8+4x4"
               and r["n_cells"] == 80 for r in errors)
    assert any("the warm-up failed (RuntimeError: DefaultCPUAllocator" in m for m in logged)
    assert len(read_table(str(tmp_path / "bench.csv")).rows) == 4


def test_the_help_lists_the_registrys_methods_and_the_backend_tables_names():
    """The sweep's declarations list the method and backend names without importing the core
    (so --help stays light); they are the registry's built-ins and the backend table."""
    from convex_attention import METHODS, cvx
    from convex_attention.bench import config as bench_config

    assert bench_config.METHOD_NAMES == METHODS
    assert bench_config.BACKEND_NAMES == cvx.BACKENDS


def test_the_sweep_runs_with_its_declared_thread_count_and_restores_the_callers(tmp_path, monkeypatch, odd_threads):
    from convex_attention.bench import sweep as sweep_module
    from convex_attention.io.settings import declared

    assert declared(SweepConfig)["threads"].option("threads") == "--threads"
    assert SweepConfig().threads == 1  # one thread by default: comparable timings on a shared machine
    seen = []
    monkeypatch.setattr(sweep_module, "_sweep", lambda *a: seen.append(torch.get_num_threads()) or [])
    for threads in (1, 2):
        sweep_module.run_sweep(SweepConfig(methods=("exact",), sizes=(4,), levels=(2,), threads=threads),
                               str(tmp_path))
        assert torch.get_num_threads() == odd_threads
    assert seen == [1, 2]


def test_a_backend_skipped_because_it_could_not_run_is_measured_on_resume_once_it_can(tmp_path, monkeypatch):
    """Before: a skipped row counted as finished whatever the reason, so a backend installed
    after the first run was never measured by --resume."""
    from convex_attention.bench import sweep
    from convex_attention.bench.sweep import run_sweep

    config = SweepConfig(methods=["cvxpylayers"], cvx_backends=["diffcp-clarabel"], sizes=[4], levels=[2],
                         batches=[1], repeats=1, warmup=1, devices=["cpu"])
    with monkeypatch.context() as m:  # the backend's packages "missing" on the first run
        m.setattr(sweep, "backend_unavailable_reason", lambda name: "not installed (missing diffcp): pip install x")
        rows = run_sweep(config, str(tmp_path), progress=False, log=lambda m: None)
    assert [(r["backend"], r["status"]) for r in rows] == [("diffcp-clarabel", "skipped")]
    assert rows[0]["reason"].startswith("backend diffcp-clarabel not installed")
    rows = run_sweep(config, str(tmp_path), resume=True, progress=False, log=lambda m: None)
    assert [(r["backend"], r["status"]) for r in rows] == [("diffcp-clarabel", "ok")]
    rows = run_sweep(config, str(tmp_path), resume=True, progress=False, log=lambda m: None)
    assert [(r["backend"], r["status"], r["cell"]) for r in rows] == [("diffcp-clarabel", "ok", 0)]
