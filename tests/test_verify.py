import contextlib
import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import slow_beyond

import convex_attention as ca
from convex_attention import cli, cvx
from convex_attention.bench import verify as verify_mod
from convex_attention.bench.verify import (
    COLUMNS,
    KINDS,
    QUICK_INSTANCES,
    CheckResult,
    all_passed,
    backend_skips,
    format_table,
    kkt_residual,
    load_solver,
    random_instances,
    solver_label,
    verify_instances,
    write_csv,
)


def test_random_instances_cover_the_kinds():
    names = [name for name, *_ in random_instances(6, seed=0, quick=True)]
    assert {n.split()[0] for n in names} == {"2d-2lvl", "3d-2lvl", "irregular-3lvl", "2d-3lvl", "3d-3lvl",
                                             "irregular-2lvl"}
    temps = [t for *_, t in random_instances(6, seed=0, quick=True)]
    assert all(0.3 <= x <= 3.0 for ts in temps for x in ts) and any(len(set(ts)) > 1 for ts in temps)


def test_every_check_passes_for_the_builtin_dual_solver():
    results = verify_instances(random_instances(3, seed=2, quick=True), progress=False)
    assert results and all(r.passed for r in results if r.status != "info") and all_passed(results)


def test_zero_duals_fail_stationarity_and_the_gap():
    bad = lambda scores, h, temps: [torch.zeros((scores[0].shape[0],) + s, dtype=torch.float64)  # noqa: E731
                                    for s in h.shapes[1:]]
    results = verify_instances(random_instances(2, seed=0, quick=True), dual_solver=bad, progress=False,
                               solver_name="dual", backends=["diffcp-clarabel"])
    failed = {r.check for r in results if not r.passed}
    assert {"dual.kkt_stationarity", "dual.duality_gap", "dual.feasibility", "dual.primal_vs_cvxpy"} <= failed


def test_kkt_residual_is_zero_at_the_exact_pair_only():
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 2, dtype=torch.float64)]
    sol = ca.solve(scores, h, "exact", temperature=[0.5, 2.0])
    assert kkt_residual(sol.probs, sol.duals, scores, h, [0.5, 2.0]) < 1e-12
    assert kkt_residual(sol.probs, [d + torch.randn_like(d) for d in sol.duals], scores, h, [0.5, 2.0]) > 1e-3


def test_a_nan_in_any_map_fails_the_single_checks():
    """A NaN in a later map's dual or probabilities passed kkt_stationarity and the
    comparisons with CVXPY (Python's max dropped it); found by a hostile review."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2), (1, 1)])
    scores = [torch.randn((2,) + s, dtype=torch.float64) for s in h.shapes]
    sol = ca.solve(scores, h, "exact", temperature=[0.5, 2.0, 1.0])
    duals = [d.clone() for d in sol.duals]
    duals[-1].view(-1)[0] = math.nan
    assert math.isnan(kkt_residual(sol.probs, duals, scores, h, [0.5, 2.0, 1.0]))
    probs = [p.clone() for p in sol.probs]
    probs[-1].view(-1)[0] = math.nan
    assert math.isnan(verify_mod._max_abs(probs, sol.probs))


def test_load_solver_by_module_name():  # the same function in the solver's own process
    fn = load_solver("convex_attention.bench.verify:kkt_residual")
    assert fn is kkt_residual


# ------------------------------------------------------------- trust: exit codes, names, backends
ONE = ["diffcp-clarabel"]  # one backend where backends are not the point: keeps the tests fast


def _instances(n=1):
    return random_instances(n, seed=0, quick=True)


def _run(argv):
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse and UsageError exit 2 this way
        return exc.code


def _builtin_duals(scores, h, temps):
    return ca.solve(scores, h, "dual", temperature=temps, tol=1e-11).duals


def test_custom_solver_rows_carry_its_name():
    def my_duals(scores, h, temps):
        return _builtin_duals(scores, h, temps)

    results = verify_instances(_instances(), dual_solver=my_duals, progress=False, backends=ONE)
    checks = {r.check for r in results}
    assert "my_duals.duals_vs_cvxpy" in checks and not any(c.startswith("dual.") for c in checks)
    assert all_passed(results)


def test_solver_labels_never_clash_with_builtin_parts():
    def exact(*args):
        pass

    def cvxpylayers_mine(*args):
        pass

    assert solver_label(None) == "dual"
    assert solver_label(exact) == "user:exact" and solver_label(cvxpylayers_mine) == "user:cvxpylayers_mine"
    assert solver_label(lambda *a: None) == "lambda"


@pytest.mark.parametrize("body, message", [
    ("raise ZeroDivisionError('boom')", "raised ZeroDivisionError: boom"),
    ("sys.exit(0)", "called sys.exit(0)"),
    ("raise GeneratorExit", "raised GeneratorExit"),
    ("return None", "returned a NoneType, not a list of 1 dual tensors"),
    ("return [torch.zeros(3)] * 5", "returned 5 dual tensors, expected 1"),
    ("return [torch.zeros((2, 2, 2), dtype=torch.complex128)]", "duals[0] has dtype torch.complex128; duals must be "
                                                                "real floating tensors"),
    ("return [torch.zeros((2, 2, 2), dtype=torch.int64)]", "duals[0] has dtype torch.int64"),
    ("return [[0.0] * 4]", "duals[0] is a builtins.list, not a torch.Tensor"),
    ("return [torch.zeros(8, dtype=torch.float64)]", "duals[0] has shape (8,), expected (2, 2, 2)"),
])
def test_a_crashing_solver_is_a_failed_check_and_its_checks_did_not_run(body, message):
    namespace = {"sys": sys, "torch": torch}
    exec(f"def broken(scores, h, temps):\n    {body}\n", namespace)
    results = verify_instances(_instances(), dual_solver=namespace["broken"], progress=False, backends=ONE)
    run = [r for r in results if r.check == "broken.run"]
    assert len(run) == 1 and run[0].status == "error" and message in run[0].message
    assert "\n" not in run[0].message and "Traceback" not in run[0].message
    skipped = [r for r in results if r.check.startswith("broken.") and r.check != "broken.run"]
    assert len(skipped) == 7 and all(r.status == "skipped" and not r.passed for r in skipped)
    assert all(r.passed for r in results if r.check.startswith(("exact.", "reference.", "cvxpylayers")))
    assert not all_passed(results)


def test_ctrl_c_in_this_process_stops_the_run_even_inside_a_solver_called_here():
    """In the caller's own process a KeyboardInterrupt cannot be told from Ctrl-C: it stops
    the run (the command runs the solver in a process of its own, where it is a failed row)."""
    def interrupted(scores, h, temps):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        verify_instances(_instances(), dual_solver=interrupted, progress=False, backends=ONE)


def test_a_check_that_did_not_run_never_passes():
    assert CheckResult(0, "c", "x.y", math.nan, 1e-6, True, "skipped").passed is False
    assert CheckResult(0, "c", "x.y", math.nan, 1e-6, False).status == "fail"
    assert CheckResult(0, "c", "x.y", 1e-9, 1e-6, True).status == "pass"
    assert not all_passed([]) and not all_passed([CheckResult(0, "c", "x.y", math.nan, math.nan, False, "skipped")])


def test_every_installed_backend_is_checked_against_the_reference():
    results = verify_instances(_instances(), progress=False)
    for backend in cvx.available_backends():
        rows = {r.check: r for r in results if r.check.startswith(f"cvxpylayers[{backend}].")}
        assert set(rows) == {f"cvxpylayers[{backend}].{c}" for c in ("certificate", "stationarity", "primal_vs_cvxpy",
                                                                      "dual_gap_vs_cvxpy")}
        assert all(r.passed for r in rows.values()), rows
    assert not any("[mpax]" in r.check for r in results)
    assert all_passed(results)


def test_backends_that_cannot_run_are_reported_as_skipped_lines_not_rows(monkeypatch):
    monkeypatch.setattr(cvx, "_installed", lambda module: module != "moreau")
    lines = backend_skips(None)
    assert any(line.startswith("skipped cvxpylayers[moreau]: not installed") and "pip install" in line
               for line in lines)
    assert any("cvxpylayers[mpax]" in line for line in lines)
    assert backend_skips(["diffcp-clarabel"]) == []  # asked for by name: nothing skipped silently
    assert "skipped cvxpylayers[moreau]" in format_table([], lines)


def test_a_backend_that_fails_is_a_failed_check_and_the_rest_goes_on(monkeypatch):
    real_solve = verify_mod.solve

    def failing(scores, h, method, **kwargs):
        if method == "cvxpylayers":
            raise cvx.SolverFailure("cvxpylayers[diffcp-clarabel] solve failed for sample 0: status 'x'")
        return real_solve(scores, h, method, **kwargs)

    monkeypatch.setattr(verify_mod, "solve", failing)
    results = verify_instances(_instances(), progress=False, backends=ONE)
    by = {r.check: r for r in results}
    assert by["cvxpylayers[diffcp-clarabel].run"].status == "error"
    assert "SolverFailure" in by["cvxpylayers[diffcp-clarabel].run"].message
    assert by["cvxpylayers[diffcp-clarabel].certificate"].status == "skipped"
    # the comparisons with the layer could not run: listed, not passed
    assert by["exact.primal_vs_layer"].status == "skipped" and by["dual.duals_vs_layer"].status == "skipped"
    # a check that did not run has neither an error nor a tolerance (docs/results_format.md)
    assert all(math.isnan(r.error) and math.isnan(r.tol) for r in results if r.status == "skipped")
    assert by["exact.primal_vs_cvxpy"].passed and by["dual.kkt_stationarity"].passed
    assert not all_passed(results)


def test_write_csv_is_atomic_and_has_the_status_columns(tmp_path, monkeypatch):
    from convex_attention.bench import verify as verify_module

    calls = []
    real = verify_module.atomic_csv
    monkeypatch.setattr(verify_module, "atomic_csv", lambda *a, **k: (calls.append(a[0]), real(*a, **k)))
    rows = [CheckResult(0, "c", "x.run", math.nan, math.nan, False, "error", "raised ValueError: bad, \"quoted\""),
            CheckResult(0, "c", "x.y", 1e-9, 1e-6, True)]
    path = str(tmp_path / "verify.csv")
    write_csv(rows, path)
    assert calls == [path] and os.listdir(tmp_path) == ["verify.csv"]
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert tuple(back[0]) == COLUMNS
    assert back[0]["status"] == "error" and back[0]["passed"] == "False" and back[0]["error"] == ""
    assert back[0]["message"] == "raised ValueError: bad, \"quoted\"" and back[1]["passed"] == "True"


# ---- the command: exit 0 only when every check ran and passed; 1 failed or not run; 2 usage


@pytest.mark.parametrize("body, message", slow_beyond(keep=0, cases=[
    ("sys.exit(0)", "called sys.exit(0)"),
    ("raise RuntimeError('solver exploded')", "raised RuntimeError: solver exploded"),
    ("raise KeyboardInterrupt", "raised KeyboardInterrupt"),
    ("os._exit(0)", "ended its process with exit status 0 without returning"),
    ("ctypes.string_at(0)", "was killed by SIGSEGV without returning"),
    ("time.sleep(600)", "did not return within 2 s (--timeout); its process was stopped"),
    ("return [torch.zeros((2, 2, 2), dtype=torch.complex64)]", "duals[0] has dtype torch.complex64; duals must be "
                                                               "real floating tensors"),
]))
def test_cli_solver_that_exits_crashes_hangs_or_lies_exits_1_with_one_line_and_writes_the_csv(tmp_path, capfd, body,
                                                                                                message, monkeypatch):
    """Before: a solver that called os._exit(0) ended verify itself with exit status 0, no
    table and no verify.csv.  The solver now runs in a process of its own."""
    monkeypatch.setattr(verify_mod, "random_instances", lambda n, seed, quick: _instances(1))
    solver = tmp_path / "bad_solver.py"
    solver.write_text(f"import ctypes, os, sys, time\nimport torch\ndef bad(scores, h, temps):\n    {body}\n")
    out = str(tmp_path / "v")
    code = _run(["verify", "--quick", "--no-progress", "--out", out, "--dual-solver", f"{solver}:bad",
                 "--backends", "diffcp-clarabel", "--timeout", "2" if "sleep" in body else "60"])
    captured = capfd.readouterr()
    assert code == 1
    assert "Traceback" not in captured.out + captured.err
    assert [line for line in captured.out.splitlines() if "bad.run" in line][0].endswith(message)
    rows = read_rows(os.path.join(out, "verify.csv"))
    status = {r["check"]: r["status"] for r in rows}
    assert status["bad.run"] == "error" and status["bad.duality_gap"] == "skipped"
    assert status["exact.duality_gap"] == "pass"  # the verifier itself went on


@pytest.mark.slow  # the whole command, its solver in a process of its own (1 s)
def test_cli_verifies_a_correct_solver_file_in_its_own_process(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(verify_mod, "random_instances", lambda n, seed, quick: _instances(1))
    solver = tmp_path / "good.py"
    solver.write_text("import convex_attention as ca\ndef mine(scores, h, temps):\n    print('hello from the solver')\n"
                      "    return ca.solve(scores, h, 'dual', temperature=temps, tol=1e-11).duals\n")
    code = _run(["verify", "--quick", "--no-progress", "--out", str(tmp_path / "v"), "--dual-solver",
                 f"{solver}:mine", "--backends", "diffcp-clarabel"])
    captured = capfd.readouterr()
    assert code == 0, captured.out
    assert "mine.duality_gap" in captured.out and "hello from the solver" not in captured.out
    assert "hello from the solver" in captured.err


@pytest.mark.slow  # a Python process of its own
def test_ctrl_c_stops_verify_with_a_message_that_fits_it_and_stops_the_solvers_process(tmp_path, capsys, monkeypatch):
    from convex_attention.bench import isolation

    closed = []
    real_close = isolation.IsolatedSolver.close
    monkeypatch.setattr(isolation.IsolatedSolver, "close",
                        lambda self: (closed.append(self._process), real_close(self)))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_mod, "verify_instances", interrupted)
    solver = tmp_path / "s.py"
    solver.write_text("def f(scores, h, temps):\n    return []\n")
    code = _run(["verify", "--quick", "--no-progress", "--out", str(tmp_path / "v"), "--dual-solver", f"{solver}:f"])
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip() == ("convex-attention verify: interrupted; no check result was written (verify.csv is written "
                           "when every instance is done)")
    assert "--resume" not in err and not os.path.exists(tmp_path / "v" / "verify.csv")
    assert any(p is not None for p in closed)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("make_argv, message", slow_beyond([
    (lambda d: ["--out", str(d / "afile")], "is a file"),
    (lambda d: ["--out", str(d / "afile" / "sub")], "not a writable folder"),
    (lambda d: ["--dual-solver", str(d / "missing.py") + ":f"], "does not exist"),
    (lambda d: ["--dual-solver", str(d / "s.py") + ":nothere"], "has no function 'nothere'"),
    (lambda d: ["--dual-solver", str(d / "s.py") + ":VALUE"], "is a int, not a function"),
    (lambda d: ["--dual-solver", str(d / "raises.py") + ":f"], "importing"),
    (lambda d: ["--dual-solver", str(d / "exits.py") + ":f"], "called sys.exit(3)"),
    (lambda d: ["--dual-solver", str(d / "ends.py") + ":f"], "ended its process with exit status 0"),
    (lambda d: ["--timeout", "0"], "argument --timeout: must be a finite number in (0, 86400], got 0.0"),
    (lambda d: ["--timeout", "inf"], "argument --timeout"),
    (lambda d: ["--n", "0"], "argument --n: must be an integer from 1 to 100000"),
    (lambda d: ["--n", str(10 ** 12)], "argument --n"),
    (lambda d: ["--seed", str(2 ** 64)], "argument --seed: must be an integer from 0 to 4294967295"),
    (lambda d: ["--dual-solver", "no_such_module_xyz:f"], "No module named"),
    (lambda d: ["--dual-solver", ":f"], "module:function"),
    (lambda d: ["--backends", "gurobi"], "argument --backends: option backend must be one of"),
    (lambda d: ["--backends", "mpax"], "argument --backends: cvxpylayers backend 'mpax' cannot run"),
], keep=0, fast=(8, 9, 10, 11, 12, 15, 16)))
def test_cli_usage_errors_exit_2_before_any_work(tmp_path, capsys, make_argv, message, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(verify_mod, "verify_instances", no_work)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "s.py").write_text("VALUE = 3\ndef f(*a):\n    pass\n")
    (tmp_path / "raises.py").write_text("1 / 0\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "ends.py").write_text("import os\nos._exit(0)\n")
    argv = ["verify", "--quick", "--no-progress", "--out", str(tmp_path / "ok")] + make_argv(tmp_path)
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ok").exists()  # nothing left behind


def test_cli_refuses_a_malformed_solver_spec_without_starting_its_process(tmp_path, capsys, monkeypatch):
    """... nor the silent run that imports what the verification runs (it ran first for a
    while: a malformed spec waited a second or two for its refusal)."""
    from convex_attention.bench import isolation
    from convex_attention.cli import bench as bench_cli

    def no_process(*args, **kwargs):
        raise AssertionError("a process was started for a spec that could be refused without one")

    def no_warm_up(*args, **kwargs):
        raise AssertionError("the verification was run for a spec that could be refused without it")

    monkeypatch.setattr(isolation.subprocess, "Popen", no_process)
    monkeypatch.setattr(bench_cli, "_import_the_verifier", no_warm_up)
    for spec, message in (("no_colon", "must look like module:function"), ("mod:", "must look like"),
                          (f"{tmp_path / 'missing.py'}:f", "does not exist")):
        assert _run(["verify", "--quick", "--no-progress", "--out", str(tmp_path / "v"), "--dual-solver", spec]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "v").exists()


def test_cli_named_backend_that_is_not_installed_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cvx, "_installed", lambda module: module != "moreau")
    assert _run(["verify", "--quick", "--no-progress", "--out", str(tmp_path), "--backends", "moreau"]) == 2
    assert "pip install" in capsys.readouterr().err


def _pick(seed, index):
    return list(random_instances(index + 1, seed=seed))[index]


@pytest.mark.slow  # a verify run on the hard instances (~0.5 s)
def test_hard_instances_of_the_random_set_pass():
    """Instances of verify's own set that used to fail it on a correct solver:
    seed 3 #14 (CVXPY's value is -inf: a probability a hair below 0, so f* was NaN),
    seed 2 #12 and seed 1 #3 (Clarabel stops "optimal_inaccurate" at a certificate ~4e-10:
    the reference now retries with a smaller regularisation, its certificate is relative
    like every other, and the layer is held to what its own certificate promises)."""
    instances = [_pick(3, 14), _pick(2, 12), _pick(1, 3)]
    results = verify_instances(instances, progress=False, backends=ONE)
    assert all_passed(results), [(r.case, r.check, r.error, r.tol) for r in results if not r.passed]


def test_reference_retries_an_inaccurate_clarabel_solve():
    name, h, scores, temps = _pick(2, 12)
    layer = cvx.get_layer(h, temps)
    probs, duals, _, status = layer.reference_solve([s[1].reshape(-1).numpy() for s in scores])
    exact = ca.solve([s[1:2] for s in scores], h, "exact", temperature=temps)
    assert status == "optimal"  # the first attempt ends optimal_inaccurate with errors ~3e-6
    assert max(float(abs(p - e.reshape(-1).numpy()).max()) for p, e in zip(probs, exact.probs)) < 1e-8


def test_scs_default_tolerance_does_not_blow_up_on_the_random_set():
    if "diffcp-scs" not in cvx.available_backends():
        pytest.skip("diffcp-scs cannot run here")
    results = verify_instances([_pick(1, 2)], progress=False, backends=["diffcp-scs"])  # eps=1e-10: cert 0.85
    assert all_passed(results), [(r.check, r.error, r.tol, r.message) for r in results if not r.passed]


# ----------------------------------------------------------------------------- graphs of maps

def test_quick_instances_cover_chains_and_every_structure_family():
    instances = list(random_instances(QUICK_INSTANCES, seed=0, quick=True))
    assert [name.split()[0] for name, *_ in instances] == list(KINDS)
    kinds = {name.split()[0]: h.kind for name, h, *_ in instances}
    assert kinds["star"] == "forest" and {kinds[k] for k in ("axial", "grid_regions", "mixed")} == {"graph"}
    assert all(len(set(t)) > 1 for *_, t in instances if len(t) > 2), "unequal temperatures per map"


@pytest.mark.slow  # a whole verify run with its gradient checks (~0.6 s)
def test_exact_is_checked_where_it_applies_and_gradients_of_the_builtin_dual_on_every_instance():
    instances = [i for i in random_instances(QUICK_INSTANCES, seed=1, quick=True)
                 if i[0].split()[0] in ("star", "axial", "mixed")]
    results = verify_instances(instances, progress=False, backends=["diffcp-clarabel"])
    assert all_passed(results)
    by_case = {}
    for r in results:
        by_case.setdefault(r.case.split()[0], set()).add(r.check)
    assert any(c.startswith("exact.") for c in by_case["star"])
    assert not any(c.startswith("exact.") for c in by_case["axial"] | by_case["mixed"]), "no closed form there"
    for checks in by_case.values():
        assert {"dual.gradient_vs_fd", "dual.temperature_gradient_vs_fd", "dual.primal_vs_cvxpy",
                "info.cvxpylayers[diffcp-clarabel].gradient_vs_fd"} <= checks
    info = [r for r in results if r.status == "info"]
    assert info and all(r.check.endswith("gradient_vs_fd") and math.isnan(r.tol) and not r.passed for r in info)


@pytest.mark.parametrize("case, backward", [("axial", "implicit_vjp"), ("star", "tree_backward")])
def test_a_wrong_implicit_gradient_fails_its_check(case, backward, monkeypatch):
    import convex_attention.dual as dual_module

    real = getattr(dual_module, backward)
    monkeypatch.setattr(dual_module, backward, lambda *a, **k: [1.01 * g for g in real(*a, **k)])
    (inst,) = [i for i in random_instances(QUICK_INSTANCES, seed=0, quick=True) if i[0].startswith(case)]
    results = verify_instances([inst], progress=False, backends=[])
    failed = {r.check for r in results if r.status == "fail"}
    assert failed == {"dual.gradient_vs_fd", "dual.temperature_gradient_vs_fd"}


def test_a_users_dual_solver_on_graphs_returns_one_dual_per_edge():
    def per_edge(scores, h, temps):
        return ca.solve(scores, h, "dual", temperature=temps, tol=1e-12).duals

    instances = [i for i in random_instances(QUICK_INSTANCES, seed=0, quick=True) if i[0].split()[0] in KINDS[6:]]
    results = verify_instances(instances, dual_solver=per_edge, progress=False, backends=[])
    assert all_passed(results) and any(r.check == "per_edge.duality_gap" for r in results)
    assert not any(r.check.endswith("gradient_vs_fd") for r in results), "gradients are the built-in dual's"


def test_reported_measurements_are_not_checks():
    info = CheckResult(0, "x", "info.cvxpylayers[diffcp-clarabel].gradient_vs_fd", 0.3, math.nan, False, "info")
    ok = CheckResult(0, "x", "dual.gradient_vs_fd", 1e-9, 1e-6, True)
    assert not all_passed([info]), "nothing checked never passes"
    assert all_passed([ok, info])
    text = format_table([ok, info])
    assert "reported" in text and "1/1 checks passed (1 measurements reported beside them)" in text


def test_a_solver_called_here_finds_no_reference_of_its_instance_in_the_verifier():
    """A solver called in this process looks through its callers' frames for the verifier's
    CVXPY reference to return as its own: the solver runs before the reference exists, so
    there is none to copy (and its guess, zeros, fails).  Only isolation keeps deliberate
    tampering out (the module docstring); this keeps out a reference lying in reach."""
    found = []

    def copier(scores, h, temps):
        frame = sys._getframe(1)
        while frame is not None:
            for value in list(frame.f_locals.values()):
                if isinstance(value, verify_mod._Reference):
                    found.append(value)
                    return [d.clone().reshape((d.shape[0],) + tuple(h.shapes[b]))
                            for d, (_, b) in zip(value.duals, h.edges)]
            frame = frame.f_back
        return [torch.zeros((scores[0].shape[0],) + tuple(h.shapes[b]), dtype=torch.float64) for _, b in h.edges]

    results = verify_instances(_instances(), dual_solver=copier, progress=False, backends=[])
    assert found == []
    assert not all_passed(results)


def test_a_solver_called_here_that_changes_its_inputs_does_not_change_the_problem_checked():
    """It is called with copies: zeroing the scores in place (after which λ = 0 would be
    optimal) and returning zeros does not make the verifier check the zeroed problem."""
    def zeroing(scores, h, temps):
        for s in scores:
            s.zero_()
        return [torch.zeros((scores[0].shape[0],) + tuple(h.shapes[b]), dtype=torch.float64) for _, b in h.edges]

    instances = list(_instances())
    before = [s.clone() for s in instances[0][2]]
    results = verify_instances(instances, dual_solver=zeroing, progress=False, backends=[])
    assert all(torch.equal(a, b) for a, b in zip(before, instances[0][2]))
    by = {r.check: r for r in results}
    assert by["zeroing.duality_gap"].status == "fail" and not all_passed(results)


def test_a_backends_certificate_is_held_to_its_options_threshold_not_to_what_its_solution_says(monkeypatch):
    """``accept_tol`` comes from the backend's default options, never from the solution's info."""
    real_solve = verify_mod.solve

    def lenient(scores, h, method, **kwargs):
        sol = real_solve(scores, h, method, **kwargs)
        if method == "cvxpylayers":
            sol.info["accept_tol"] = 1e9  # a solution that lowers its own bar
        return sol

    monkeypatch.setattr(verify_mod, "solve", lenient)
    results = verify_instances(_instances(), progress=False, backends=ONE)
    by = {r.check: r for r in results}
    expected = cvx.check_options({"backend": ONE[0]})["accept_tol"]
    assert by[f"cvxpylayers[{ONE[0]}].certificate"].tol == expected < 1
    assert by[f"cvxpylayers[{ONE[0]}].dual_gap_vs_cvxpy"].tol < 1


def test_comparing_nothing_is_not_a_pass():
    """No tensors (or lists of unequal length) to compare: NaN, a failed check, never an error."""
    assert math.isnan(verify_mod._max_abs([], []))
    assert math.isnan(verify_mod._max_abs([torch.zeros(2, 3)], []))
    assert verify_mod._max_abs([torch.ones(2, 3)], [torch.zeros(2, 3)]) == 1.0


def test_the_gradient_checks_reference_is_accurate_enough_for_their_tolerance():
    """The default run (24 instances, seed 0) failed instance 9's temperature-gradient check,
    1.74e-6 against 1e-6, although the implicit gradient was right to 3e-11: the reference, a
    central difference at step 1e-5 of solutions at tolerance 1e-12, carried the solver's error
    over the step.  A five-point difference at step 1e-3 is the reference now."""
    import itertools

    from convex_attention.bench.verify import TOLERANCES, _check_gradients, _Rows, random_instances

    name, h, scores, temps = next(itertools.islice(random_instances(24, 0), 9, None))
    assert name == "mixed 4x8+2x4+2x2+3"
    results: list = []
    _check_gradients(_Rows(results, 9, name), h, scores, temps, TOLERANCES, False, seed=9)
    errors = {r.check: r.error for r in results}
    assert set(errors) == {"dual.gradient_vs_fd", "dual.temperature_gradient_vs_fd"}
    # 1.7e-6 before: the reference's error, not the gradient's.  Since the solver's stops moved
    # (2026-12-05: confirmed at recomputed logits) the temperature difference is off by 2.8e-8
    # (1.2e-9 before) while the implicit gradient is bitwise the same: the five-point
    # difference's own spread there is 2.9e-8, still 35x below the check's tolerance of 1e-6
    assert max(errors.values()) < 1e-7, errors


# ------------------------------------------------------------- a review's attacks (2026-12-04)
@pytest.mark.slow  # a Python process of its own, which imports CVXPY and runs a quick verification
def test_no_module_is_imported_by_the_verifier_after_the_solvers_code_has_run(tmp_path):
    """The guarantee of docs/user_guide.md §2 ("the verifier imports every module it runs
    before your solver's code runs"), measured over a whole run rather than for a list of
    names (an earlier review had rewritten convex_attention/io/lock.py, imported late, to
    pass every check; the list of names checked then missed what imports itself on first
    use): every module with a file on disk that the verifier's process imports after the
    solver's process has started is one the solver could have rewritten first.  Reproduced:
    a solver that appended a patch of ``CheckResult.__post_init__`` to (a copy, first on
    PYTHONPATH, of) ``cvxpylayers/interfaces/diffcp_if.py`` and returned zero duals got
    exit 0 and 219/219 rows ``pass`` from ``verify --quick`` (an adversarial review: seven
    modules of CVXPY, cvxpylayers, SCS, multiprocessing and a codec were imported late)."""
    solver = tmp_path / "s.py"
    solver.write_text("import convex_attention as ca\ndef f(scores, h, temps):\n"
                      "    return ca.solve(scores, h, 'dual', temperature=temps, tol=1e-11).duals\n")
    program = (
        "import json, sys\n"
        "from convex_attention.cli import bench\n"
        "real = bench._start_solver\n"
        "seen = {}\n"
        "def start(*arguments):\n"
        "    solver = real(*arguments)\n"
        "    seen['before'] = set(sys.modules)\n"
        "    return solver\n"
        "bench._start_solver = start\n"
        "from convex_attention.cli import main\n"
        f"code = main(['verify', '--quick', '--no-progress', '--quiet', '--dual-solver', "
        f"{str(solver) + ':f'!r}, '--out', {str(tmp_path / 'v')!r}])\n"
        "late = sorted(m for m in set(sys.modules) - seen['before'] if getattr(sys.modules[m], '__file__', None))\n"
        "print('LATE ' + json.dumps(late))\n"
        "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    late = [line for line in done.stdout.splitlines() if line.startswith("LATE ")]
    assert late == ["LATE []"], late


def test_the_warm_up_returns_the_checks_it_failed_for_the_run_to_report(monkeypatch):
    """A backend that fails only on its first call in a process failed in the warm-up, whose
    rows were dropped, and passed in the run (the last note's open point)."""
    rows = [CheckResult(0, "chain", f"c.{status}", 1.0, 1.0, status == "pass", status)
            for status in ("pass", "fail", "error", "skipped", "info")]
    cleared = []
    monkeypatch.setattr(verify_mod, "_run_checks", lambda *args: rows)
    monkeypatch.setattr(verify_mod, "clear_cache", lambda: cleared.append(True))
    failed = verify_mod.import_what_a_run_imports([])
    assert [(r.instance, r.case, r.check, r.status) for r in failed] == [
        (verify_mod.WARM_UP_INSTANCE, "warm-up: chain", "c.fail", "fail"),
        (verify_mod.WARM_UP_INSTANCE, "warm-up: chain", "c.error", "error"),
        (verify_mod.WARM_UP_INSTANCE, "warm-up: chain", "c.skipped", "skipped")]  # a check that did not run
    assert cleared and not all_passed(failed + rows[:1])


@pytest.mark.slow  # a verification with a solver of its own process (seconds)
def test_a_backend_failing_only_on_its_first_call_fails_the_verification(tmp_path, capsys, monkeypatch):
    real = verify_mod.solve
    calls = []

    def first_call_fails(scores, h, method, **options):
        if method == "cvxpylayers":
            calls.append(method)
            if len(calls) == 1:
                raise RuntimeError("a first call's failure")
        return real(scores, h, method, **options)

    monkeypatch.setattr(verify_mod, "solve", first_call_fails)
    solver = tmp_path / "s.py"
    solver.write_text("import convex_attention as ca\ndef f(scores, h, temps):\n"
                      "    return ca.solve(scores, h, 'dual', temperature=temps, tol=1e-11).duals\n")
    code = _run(["verify", "--quick", "--no-progress", "--quiet", "--dual-solver", f"{solver}:f",
                 "--backends", "diffcp-clarabel", "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert code == 1 and "5 did not run" in err and len(calls) > 1  # the backend's error row, its 4 checks skipped
    with open(tmp_path / "v" / "verify.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    warm = [r for r in rows if r["instance"] == str(verify_mod.WARM_UP_INSTANCE)]
    assert warm and all(r["case"].startswith("warm-up: ") and r["status"] in ("error", "skipped") for r in warm)
    assert any("a first call's failure" in r["message"] for r in warm)
    assert all(r["status"] in ("pass", "info") for r in rows if r not in warm)  # the run itself passed


@pytest.mark.slow  # one verification instance (about 2 s)
def test_a_layer_failing_only_on_its_first_call_is_reported_by_the_warm_up(monkeypatch):
    """user_guide.md §2: a check that fails or raises in the warm-up is reported as the run's
    own.  With --backends naming only other backends, the layer (diffcp-clarabel) is solved
    beside the checks; where its first call raises, the only rows are the dual's and the
    closed form's ``*_vs_layer`` checks, 'skipped' (not run): a run fails them, the warm-up
    dropped them, and the run (second call, which succeeds) passed."""
    real = verify_mod.solve
    calls = []

    def layer_fails_first(scores, h, method, **options):
        if method == "cvxpylayers" and "backend" not in options:  # the layer, not a checked backend
            calls.append(method)
            if len(calls) == 1:
                raise RuntimeError("a first call's failure")
        return real(scores, h, method, **options)

    monkeypatch.setattr(verify_mod, "solve", layer_fails_first)
    monkeypatch.setattr(verify_mod, "_check_gradients", lambda *args, **kwargs: None)  # not what is tested (time)
    failed = verify_mod.import_what_a_run_imports([])  # --backends naming none of the default backend
    assert calls  # the layer was solved (and failed) in the warm-up
    assert failed and any("a first call's failure" in r.message for r in failed)


def test_an_out_that_cannot_be_made_is_refused_before_the_solvers_code_runs(tmp_path, capsys):
    """Before: `--out` a file (or under one) was refused only after the solver's module had
    been imported, and its import-time code had run."""
    marker = tmp_path / "imported"
    solver = tmp_path / "side.py"
    solver.write_text(f"open({str(marker)!r}, 'w').close()\ndef f(scores, h, temps):\n    return []\n")
    a_file = tmp_path / "afile"
    a_file.write_text("")
    for out in (a_file, a_file / "sub"):
        code = _run(["verify", "--dual-solver", f"{solver}:f", "--backends", "diffcp-clarabel", "--out", str(out)])
        assert code == 2 and not marker.exists()
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_reason_is_one_line_whatever_the_solver_put_in_it():
    """A solver's type named "X\\nverify: 48/48 checks passed" put that line into the table."""
    row = CheckResult(0, "c", "mine.run", math.nan, math.nan, False, "error",
                      "not a torch.Tensor but X\nverify: 48/48 checks passed\r\n" + "y" * 1000)
    assert "\n" not in row.message and "\r" not in row.message and len(row.message) <= 400
    assert not [line for line in format_table([row]).splitlines() if line.lstrip().startswith("verify:")]


@pytest.mark.parametrize("tolerances, message", [
    ({"primall": 1e-6}, "unknown name.*'primall'"),
    ({"primal": math.inf}, "primal must be a positive finite number"),
    ({"duals": -1.0}, "duals must be a positive finite number"),
    ({"feasibility": 0}, "feasibility must be a positive finite number"),
    ({"gap": math.nan}, "gap must be a positive finite number"),
    ({"kkt": True}, "kkt must be a positive finite number"),
    ({"kkt": "1e-6"}, "kkt must be a positive finite number"),
])
def test_tolerances_are_checked_before_any_work(tolerances, message):
    """Before: an unknown name was ignored, and infinite tolerances passed every check of zero duals."""
    called = []

    def solver(scores, h, temps):
        called.append(1)
        return []

    with pytest.raises(ValueError, match=message):
        verify_instances(_instances(), dual_solver=solver, tolerances=tolerances, progress=False, backends=ONE)
    assert called == []


def test_a_solver_returning_nan_duals_fails_every_one_of_its_checks():
    """A NaN error is a failed check, through verify_instances itself (the helpers returning
    NaN were tested, the rows were not: `not err > tol` let every NaN row pass, found by
    mutation testing)."""
    def nan_duals(scores, h, temps):
        return [torch.full((scores[0].shape[0],) + h.shapes[b], float("nan"), dtype=torch.float64)
                for _, b in h.edges]

    results = verify_instances(_instances(), dual_solver=nan_duals, progress=False, backends=[])
    mine = [r for r in results if r.check.startswith("nan_duals.") and r.status != "info"]
    assert mine and all(r.status == "fail" and not r.passed for r in mine), [(r.check, r.status) for r in mine]
    assert not all_passed(results)


def test_the_feasibility_check_holds_the_worst_sample_not_the_mean():
    """One sample infeasible, one exact: the row's error is the worst sample's violation (a
    mean passed a solver infeasible on one sample of two at half its violation; found by
    mutation testing)."""
    name, h, scores, temps = next(iter(random_instances(1, seed=0, quick=True)))
    assert scores[0].shape[0] >= 2

    def half_right(s, graph, t):
        duals = [d.clone() for d in _builtin_duals(s, graph, t)]
        for d in duals:
            d[1:] = 0.0  # every sample but the first: λ = 0, inconsistent maps
        return duals

    from convex_attention import metrics

    p = ca.solve(scores, h, "learned_dual", temperature=temps, duals=half_right(scores, h, temps)).probs
    worst = float(metrics.violation(p, h).max())
    assert worst > 1e-3
    results = verify_instances([(name, h, scores, temps)], dual_solver=half_right, progress=False, backends=[])
    row = next(r for r in results if r.check == "half_right.feasibility")
    assert row.status == "fail" and row.error == pytest.approx(worst, rel=1e-9)


def test_an_inaccurate_reference_fails_its_own_certificate(monkeypatch):
    """The reference's certificate row is held to its tolerance (an infinite one passed every
    test; found by mutation testing): a reference moved off its optimum fails it."""
    real = cvx.CvxpyAttentionLayer.reference_solve

    def perturbed(self, scores):
        probs, duals, value, status = real(self, scores)  # moved off the optimum (not by a constant: the gauge)
        return probs, [d + 1e-3 * np.linspace(-1.0, 1.0, d.size).reshape(d.shape) for d in duals], value, status

    monkeypatch.setattr(cvx.CvxpyAttentionLayer, "reference_solve", perturbed)
    results = verify_instances(_instances(), progress=False, backends=[])
    row = next(r for r in results if r.check == "reference.certificate")
    assert row.status == "fail" and row.error > row.tol
    assert not all_passed(results)


# ------------------------------------------------------------- mutation testing (2026-12-05)
def test_solver_labels_rename_every_reserved_prefix_and_use_the_given_name():
    """Rows of a solver named like a built-in part ("dual", "reference") would be taken for
    that part's; a name given as a string, or an isolated solver's, is the label."""
    def dual(*args):
        pass

    def reference(*args):
        pass

    assert solver_label(dual) == "user:dual" and solver_label(reference) == "user:reference"
    assert solver_label("mine") == "mine" and solver_label("a b\nc") == "a_b_c"
    assert solver_label("<>") and not solver_label("<>").startswith(".")  # never an empty prefix
    isolated = verify_mod.IsolatedSolver("convex_attention.bench.verify:kkt_residual", timeout=5)
    isolated.name = "solve_duals"
    assert solver_label(isolated) == "solve_duals"


def test_backends_are_checked_before_any_work_and_each_is_named_once():
    called = []

    def solver(scores, h, temps):
        called.append(1)
        return []

    with pytest.raises(ValueError, match="gurobi"):
        verify_instances(_instances(), dual_solver=solver, progress=False, backends=["gurobi"])
    assert called == []
    assert verify_mod.check_backends(ONE) == ONE
    with pytest.raises(ValueError, match="listed twice"):  # as bench's grid options refuse a repeated value
        verify_mod.check_backends(ONE * 2)


@pytest.mark.parametrize("primal, factor", [(1e-15, 1.0), (0.25, 0.01)])  # 0.01: |f̄*| < 1
def test_each_row_is_held_to_its_documented_tolerance(primal, factor):
    """Every tolerance reaches the rows it names (a user's value over the default), and the
    distance bounds are those the module docstring states: a backend's probabilities within
    sqrt(2·accept_tol·max(1, |f̄*|) / min τ) + accept_tol, the layer's within the larger of the
    primal tolerance and the same distance for its own certificate."""
    tolerances = {"primal": primal, "duals": 2e-4, "gap": 3e-8, "kkt": 4e-6, "feasibility": 5e-6,
                  "exact_kkt": 6e-9, "exact_feasibility": 7e-9, "reference": 8e-9}
    name, h, scores, temps = next(iter(_instances()))
    scores, temps = [factor * s for s in scores], [factor * t for t in temps]
    results = verify_instances([(name, h, scores, temps)], dual_solver=_builtin_duals, tolerances=tolerances,
                               progress=False, backends=ONE)
    tol = {r.check: r.tol for r in results}
    for part in ("_builtin_duals", "exact"):
        assert tol[f"{part}.primal_vs_cvxpy"] == primal
        assert tol[f"{part}.duals_vs_cvxpy"] == tol[f"{part}.duals_vs_layer"] == 2e-4
        assert tol[f"{part}.duality_gap"] == 3e-8
    assert tol["_builtin_duals.kkt_stationarity"] == 4e-6 and tol["_builtin_duals.feasibility"] == 5e-6
    assert tol["exact.kkt_stationarity"] == 6e-9 and tol["exact.feasibility"] == 7e-9
    assert tol["reference.certificate"] == 8e-9
    # f̄*: f* of the scores centred per map (here from the closed form), its largest max(1, |f̄*|) over the batch
    centred = [s - s.flatten(1).mean(1).view((-1,) + (1,) * (s.dim() - 1)) for s in scores]
    scale = float(ca.solve(centred, h, "exact", temperature=temps).objective.abs().clamp(min=1).max())
    accept = cvx.check_options({"backend": ONE[0]})["accept_tol"]
    part = f"cvxpylayers[{ONE[0]}]"
    assert tol[f"{part}.certificate"] == accept and tol[f"{part}.dual_gap_vs_cvxpy"] == pytest.approx(accept + 8e-9)
    assert tol[f"{part}.primal_vs_cvxpy"] == pytest.approx(math.sqrt(2 * accept * scale / min(temps)) + accept,
                                                           rel=1e-6)
    cert = next(r.error for r in results if r.check == f"{part}.certificate")  # the layer is this backend
    layer = max(primal, math.sqrt(2 * cert * scale / min(temps)) + cert)
    assert tol["_builtin_duals.primal_vs_layer"] == tol["exact.primal_vs_layer"] == pytest.approx(layer, rel=1e-6)


def test_the_duality_gap_is_relative_to_the_centred_objective():
    """``(g(λ) − f*) / max(1, |f̄*|)``: unchanged by a constant added to a map's scores (f̄* is
    of the centred scores) and by scaling the scores and the temperatures together."""
    name, h, scores, temps = next(iter(_instances()))

    def zeros(s, graph, t):
        return [torch.zeros((s[0].shape[0],) + tuple(graph.shapes[b]), dtype=torch.float64) for _, b in graph.edges]

    def gap(scores, temps):
        results = verify_instances([(name, h, scores, temps)], dual_solver=zeros, progress=False, backends=[])
        return next(r.error for r in results if r.check == "zeros.duality_gap")

    base = gap(scores, temps)
    assert base > 1e-4
    assert gap([s + 7.0 * (k + 1) for k, s in enumerate(scores)], temps) == pytest.approx(base, rel=1e-6)
    assert gap([3 * s for s in scores], [3 * t for t in temps]) == pytest.approx(base, rel=1e-6)


def test_duals_off_by_a_constant_per_edge_pass():
    """Adding a constant to λ_e changes neither g nor p(λ) (the gauge, docs/design.md): a correct
    solver that does not centre its duals passes every check."""
    def shifted(scores, h, temps):
        return [d + 5.0 * (e + 1) for e, d in enumerate(_builtin_duals(scores, h, temps))]

    results = verify_instances(_instances(), dual_solver=shifted, progress=False, backends=ONE)
    assert all_passed(results), [(r.check, r.error) for r in results if not r.passed]


def test_a_solver_that_changes_the_structure_or_temperatures_in_place_does_not_change_the_problem_checked():
    """It gets copies of the structure and the temperatures too (module docstring): right
    duals, then the temperatures and the structure changed in place, still pass, and the
    instance is as drawn."""
    def vandal(scores, h, temps):
        duals = _builtin_duals(scores, h, temps)
        temps[:] = [1.0] * len(temps)
        for change in (h.shapes.reverse, h.edges.clear):  # a graph's lists refuse (FrozenList)
            with contextlib.suppress(TypeError):
                change()
        h.num_edges = 0  # ... its attributes do not
        return duals

    name, h, scores, temps = next(iter(_instances()))
    shapes, edges, drawn = list(h.shapes), list(h.edges), list(temps)
    results = verify_instances([(name, h, scores, temps)], dual_solver=vandal, progress=False, backends=ONE)
    assert temps == drawn and h.shapes == shapes and h.edges == edges
    assert all_passed(results), [(r.check, r.message) for r in results if not r.passed]


@pytest.mark.parametrize("how", ["raise RuntimeError('no solver')", "sys.exit(3)"])
def test_a_reference_that_fails_is_an_error_row_and_every_comparison_is_listed_as_not_run(how, monkeypatch):
    namespace = {"sys": sys}
    exec(f"def broken(self, scores):\n    {how}\n", namespace)
    monkeypatch.setattr(cvx.CvxpyAttentionLayer, "reference_solve", namespace["broken"])
    results = verify_instances(_instances(), dual_solver=_builtin_duals, progress=False, backends=ONE)
    by = {r.check: r for r in results}
    assert by["reference.run"].status == "error"
    assert ("no solver" if "raise" in how else "called sys.exit(3)") in by["reference.run"].message
    expected = {"reference.certificate", "reference.stationarity"} | \
        {f"_builtin_duals.{c}" for c in verify_mod._SOLVER_CHECKS} | \
        {f"exact.{c}" for c in verify_mod._EXACT_CHECKS} | \
        {f"cvxpylayers[{ONE[0]}].{c}" for c in verify_mod._BACKEND_CHECKS}
    assert {c for c, r in by.items() if r.status == "skipped"} == expected
    assert not all_passed(results)


@pytest.mark.parametrize("method", ["cvxpylayers", "exact", "gradient"])
def test_a_part_that_calls_sys_exit_is_an_error_row_and_the_rest_goes_on(method, monkeypatch):
    real_solve = verify_mod.solve

    def exiting(scores, h, name, **kwargs):
        if name == method or (method == "gradient" and name == "dual" and scores[0].requires_grad):
            sys.exit(3)
        return real_solve(scores, h, name, **kwargs)

    monkeypatch.setattr(verify_mod, "solve", exiting)
    results = verify_instances(_instances(), progress=False, backends=ONE)
    part = {"cvxpylayers": f"cvxpylayers[{ONE[0]}]", "exact": "exact", "gradient": "dual"}[method]
    by = {r.check: r for r in results}
    assert by[f"{part}.run"].status == "error" and "called sys.exit(3)" in by[f"{part}.run"].message
    assert by["dual.duality_gap"].passed and by["reference.certificate"].passed
    assert not all_passed(results)


def test_the_gradient_error_is_relative_to_the_larger_of_the_two():
    """``|analytic − fd| / max(|analytic|, |fd|, 1e-8)``: a zero implicit gradient is off by
    exactly 1, whatever the size of the true one."""
    import convex_attention.dual as dual_module

    (inst,) = [i for i in random_instances(QUICK_INSTANCES, seed=0, quick=True) if i[0].startswith("star")]
    with pytest.MonkeyPatch.context() as patch:
        real = dual_module.tree_backward
        patch.setattr(dual_module, "tree_backward", lambda *a, **k: [0 * g for g in real(*a, **k)])
        results = verify_instances([inst], progress=False, backends=[])
    rows = [r for r in results if r.check in ("dual.gradient_vs_fd", "dual.temperature_gradient_vs_fd")]
    assert len(rows) == 2 and all(r.status == "fail" and r.error == pytest.approx(1.0, abs=1e-12) for r in rows)


def test_the_table_gives_each_rows_reason_and_counts_what_did_not_run():
    rows = [CheckResult(0, "c", "x.ok", 1e-9, 1e-6, True), CheckResult(0, "c", "x.bad", 1.0, 1e-6, False),
            CheckResult(0, "c", "x.run", math.nan, math.nan, False, "error", "raised ValueError: bad"),
            CheckResult(0, "c", "x.y", math.nan, 1e-6, False, "skipped", "not run: x raised ValueError: bad")]
    lines = format_table(rows).splitlines()
    assert lines[3].endswith("raised ValueError: bad") and lines[4].endswith("not run: x raised ValueError: bad")
    assert lines[-1].startswith("1/4 checks passed") and "1 not run" in lines[-1] and "1 ERROR" in lines[-1]


def test_the_default_solver_is_the_builtin_dual_at_the_documented_tolerance(monkeypatch):
    """verify_instances' docstring: default, the built-in "dual" method at tol=1e-11."""
    real_solve, seen = verify_mod.solve, []

    def recording(scores, h, method, **kwargs):
        if method == "dual" and not scores[0].requires_grad:
            seen.append(kwargs.get("tol"))
        return real_solve(scores, h, method, **kwargs)

    monkeypatch.setattr(verify_mod, "solve", recording)
    verify_instances(_instances(), progress=False, backends=[])
    assert seen and seen[0] == 1e-11


def test_kkt_residual_is_weighted_by_the_probabilities():
    """``max_k max_i p_k(i) |r_k(i) − Σ_j p_k(j) r_k(j)|``: a vanishing probability, whose
    logarithm is far off, neither dominates the residual nor moves the mean of the others."""
    h = ca.Hierarchy.grid([(4, 4), (2, 2)])
    scores = [torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 2, dtype=torch.float64)]
    sol = ca.solve(scores, h, "exact", temperature=[0.5, 2.0])
    probs = [p.clone() for p in sol.probs]
    probs[0][0, 0, 0] = 1e-30
    probs[0][0] /= probs[0][0].sum()  # still a distribution: log p moves by a constant elsewhere
    assert kkt_residual(probs, sol.duals, scores, h, [0.5, 2.0]) < 1e-12


def test_the_reference_certificate_holds_the_worst_sample(monkeypatch):
    """Two identical samples: the reference moved off its optimum on one of them fails its
    certificate as much as when moved on both (not by half, as a mean would)."""
    name, h, scores, temps = next(iter(_instances()))
    twice = [torch.cat([s[:1], s[:1]]) for s in scores]
    real = cvx.CvxpyAttentionLayer.reference_solve
    calls, every = [], [2]  # every second solve (sample 1), then every one

    def perturbed(self, sample):
        probs, duals, value, status = real(self, sample)
        calls.append(1)
        if len(calls) % every[0] == 0:
            duals = [d + 1e-2 * np.linspace(-1.0, 1.0, d.size).reshape(d.shape) for d in duals]
        return probs, duals, value, status

    monkeypatch.setattr(cvx.CvxpyAttentionLayer, "reference_solve", perturbed)
    errors = []
    for every[0] in (2, 1):
        results = verify_instances([(name, h, twice, temps)], progress=False, backends=[])
        errors.append(next(r.error for r in results if r.check == "reference.certificate"))
    assert errors[0] > 1e-8 and errors[0] == pytest.approx(errors[1], rel=1e-6)  # unmoved: ~1e-13


def test_a_layer_whose_gradient_cannot_be_taken_is_reported_not_failed(monkeypatch):
    """cvxpylayers' gradient is reported beside the checks, never a check: its backward
    failing is an ``info`` row with the reason, and the run still passes."""
    real_solve = verify_mod.solve

    def no_backward(scores, h, method, **kwargs):
        if method == "cvxpylayers" and scores[0].requires_grad:
            raise RuntimeError("no backward here")
        return real_solve(scores, h, method, **kwargs)

    monkeypatch.setattr(verify_mod, "solve", no_backward)
    results = verify_instances(_instances(), progress=False, backends=ONE)
    (info,) = [r for r in results if r.check.startswith("info.")]
    assert info.status == "info" and "no backward here" in info.message
    assert all_passed(results)


def test_a_failed_reference_still_runs_the_gradient_checks(monkeypatch):
    """Found by mutation testing: with the CVXPY reference failing, the gradient checks
    (finite differences, no reference needed) had no row at all; every requested check
    gets one.  Checks that did not run carry no tolerance (docs/results_format.md)."""
    def broken(self, scores):
        raise RuntimeError("no solver")

    monkeypatch.setattr(cvx.CvxpyAttentionLayer, "reference_solve", broken)
    results = verify_instances(_instances(), progress=False, backends=ONE)
    by_check = {r.check: r for r in results if r.instance == 0}
    for check in ("dual.gradient_vs_fd", "dual.temperature_gradient_vs_fd"):
        assert by_check[check].status == "pass" and by_check[check].error <= by_check[check].tol
    skipped = [r for r in results if r.status == "skipped"]
    assert skipped and all(math.isnan(r.tol) and math.isnan(r.error) for r in skipped)
    assert not all_passed(results)


def test_a_dual_solver_that_cannot_be_called_is_refused_before_any_work(monkeypatch):
    """Found by mutation testing: the command line's 'module:function' string passed as is
    ran every instance and failed each with "'str' object is not callable"."""
    def no_work(*args, **kwargs):
        raise AssertionError("work started before dual_solver was checked")

    monkeypatch.setattr(verify_mod, "_run_dual_solver", no_work)
    with pytest.raises(TypeError, match="dual_solver must be a function .* or an IsolatedSolver, got str"):
        verify_instances(_instances(), dual_solver="convex_attention.bench.verify:kkt_residual", progress=False,
                         backends=[])


def test_the_closed_forms_duality_gap_is_relative_to_the_centred_objective_too(monkeypatch):
    """The closed form's duality gap row, like the solver's (and ``cvx.certificate``), must not
    shrink when a constant is added to each map's scores (docs/design.md §2: a constant per map
    moves no solution, so it must not shrink the measure either).  Duals off by a few 1e-2
    give a relative gap of 2.9e-4 (failed); the same duals with 1e6 added to every score
    gave 5.3e-10 and passed its 1e-8."""
    real = verify_mod.solve

    def wrong_duals(scores, h, method="exact", **kwargs):
        sol = real(scores, h, method, **kwargs)
        if method != "exact":
            return sol
        bumped = [d + 0.05 * torch.arange(d[0].numel(), dtype=d.dtype).reshape(d.shape[1:]).sin() for d in sol.duals]
        return ca.Solution(sol.probs, list(scores), h, sol.temperature, "exact", bumped)

    monkeypatch.setattr(verify_mod, "solve", wrong_duals)
    name, h, scores, temps = next(iter(_instances()))
    for offset in (0.0, 1e6):
        shifted = [s + offset for s in scores]
        results = verify_instances([(name, h, shifted, temps)], progress=False, backends=[])
        gap = next(r for r in results if r.check == "exact.duality_gap")
        assert gap.status == "fail" and gap.error > 1e-5, (offset, gap.error)


def test_rev45_a_dual_solvers_duality_gap_row_does_not_fail_right_duals_when_a_constant_is_added():
    """docs/design.md §2: a constant per map moves no solution, so it must not move the relative
    gap either (44a3f28 made the exact row so, "as every other gap")."""
    name, h, scores, temps = next(iter(_instances()))
    shifted = [s + 1e6 for s in scores]
    results = verify_instances([(name, h, shifted, temps)], dual_solver=_builtin_duals, progress=False, backends=[])
    label = solver_label(_builtin_duals)
    gap = next(r for r in results if r.check == f"{label}.duality_gap")
    assert gap.status == "pass", gap.error


def test_kkt_stationarity_rows_do_not_fail_right_solutions_when_a_constant_is_added():
    """A constant per map moves no solution, so it must not fail stationarity: the residual was
    taken on the raw scores, where a constant of 1e8 left its rounding (1e8·eps ≈ 1.5e-8) in
    r − <p, r>, and exact's and the built-in solver's kkt rows failed right solutions (review 45)."""
    name, h, scores, temps = next(iter(_instances()))
    shifted = [s + 1e8 for s in scores]
    results = verify_instances([(name, h, shifted, temps)], dual_solver=_builtin_duals, progress=False, backends=[])
    rows = [r for r in results if r.check.endswith("kkt_stationarity")]
    assert len(rows) == 2 and all(r.status == "pass" for r in rows), [(r.check, r.value, r.error) for r in rows]


# ------------------------------------------------------------- ca_rev55 (hostile review of verify)
def _rev55_instance():
    """The 3-D chain of the quick set (seed 0, instance 1): flat maps, τ ≈ (2.79, 2.04)."""
    (inst,) = list(random_instances(2, seed=0, quick=True))[1:]
    assert inst[0].startswith("3d-2lvl")
    return inst


def _rev55_shift_within_a_block(h, flat_p0, delta):
    """``flat_p0`` (n0,) with ``delta`` moved between the two likeliest fine cells of one coarse
    cell: every map still consistent and summing to one, no longer optimal."""
    parent = h.flat().aggregate(torch.eye(flat_p0.shape[-1], dtype=torch.float64), 0)  # (n0, n1) one-hot
    best = None
    for j in range(parent.shape[1]):
        kids = torch.nonzero(parent[:, j]).flatten()
        if len(kids) < 2:
            continue
        two = kids[torch.argsort(-torch.as_tensor(flat_p0)[kids])][:2]
        if best is None or flat_p0[two[1]] > best[0]:
            best = (flat_p0[two[1]], two)
    out = flat_p0.copy() if isinstance(flat_p0, np.ndarray) else flat_p0.clone()
    out[int(best[1][0])] += delta
    out[int(best[1][1])] -= delta
    return out


def test_ca_rev55_a_reference_off_the_optimum_by_ten_times_the_primal_tolerance_fails_its_certificate(monkeypatch):
    """The candidates' probabilities are held to 1e-6 against the reference, but the reference is
    certified only by its primal residual and relative duality gap (1e-9), which is quadratic in
    the maps' error: docs/design.md says this gap alone passed diffcp-clarabel's maps 2.6e-5 off
    (Clarabel's reduced-accuracy exit, which the reference solve retries and may keep).  A
    reference with consistent maps 1e-5 off the optimum (exact duals) passed its certificate at
    2.6e-10, and the built-in solver and the closed form, both right to 1e-10, FAILED
    primal_vs_cvxpy (1.0e-5) and the solver its kkt_stationarity (2.8e-5)."""
    from helpers import reference_solve

    name, h, scores, temps = _rev55_instance()
    true_p, _, _ = reference_solve(h, scores, temps)  # tests' own CVXPY + Newton-polished reference
    real = cvx.CvxpyAttentionLayer.reference_solve
    moved = []

    def off_the_optimum(self, sample, *args, **kwargs):
        probs, duals, value, status = real(self, sample, *args, **kwargs)
        probs = [_rev55_shift_within_a_block(h, probs[0], 1e-5)] + list(probs[1:])
        moved.append(probs)
        return probs, duals, value, status

    monkeypatch.setattr(cvx.CvxpyAttentionLayer, "reference_solve", off_the_optimum)
    results = verify_instances([(name, h, scores, temps)], dual_solver=_builtin_duals, progress=False, backends=[])
    # independently: the reference handed to the checks is 1e-5 from the optimum
    distance = max(np.abs(p[k] - true_p[k][b]).max() for b, p in enumerate(moved) for k in range(len(p)))
    assert distance == pytest.approx(1e-5, rel=1e-3)
    blamed = [(r.check, r.error) for r in results if r.status == "fail"]  # the right solver and exact are blamed
    # while every row of the reference passes (certificate 2.6e-10 <= 1e-9): one of them must not
    assert any(r.status != "pass" for r in results if r.check.startswith("reference.")), blamed


def test_ca_rev55_a_backend_solution_off_the_optimum_fails_one_of_its_rows(monkeypatch):
    """docs/design.md: a backend's solution is certified by its certificate AND its stationarity,
    because the gap alone is quadratic in the maps' error (it passed diffcp-clarabel's maps 2.6e-5
    off); a certified diffcp-clarabel solve is accurate to about 1e-6.  verify's rows for a backend
    hold it only to the certificate and to the distance the certificate allows,
    sqrt(2·accept_tol·max(1,|f̄*|)/min τ) + accept_tol = 1.15e-4 here: a diffcp-clarabel solution
    with consistent maps 1.5e-5 off the optimum (exact duals; certificate 5.9e-10 <= 1e-9,
    stationarity 1.5e-5 > 10³·accept_tol = 1e-6) passes all three cvxpylayers rows."""
    from helpers import reference_solve

    from convex_attention import metrics

    name, h, scores, temps = _rev55_instance()
    real = verify_mod.solve
    handed = []

    def off_the_optimum(s, graph, method, **kwargs):
        sol = real(s, graph, method, **kwargs)
        if method != "cvxpylayers" or s[0].requires_grad:  # the gradient's info row: untouched
            return sol
        p0 = sol.probs[0].detach().reshape(s[0].shape[0], -1)
        p0 = torch.stack([_rev55_shift_within_a_block(graph, p0[b], 1.5e-5) for b in range(p0.shape[0])])
        probs = [p0.reshape(sol.probs[0].shape)] + [p.detach() for p in sol.probs[1:]]
        handed.append((probs, [d.detach() for d in sol.duals]))
        return ca.Solution(probs, list(s), graph, sol.temperature, method, handed[-1][1])

    monkeypatch.setattr(verify_mod, "solve", off_the_optimum)
    results = verify_instances([(name, h, scores, temps)], dual_solver=_builtin_duals, progress=False, backends=ONE)
    # independently: the backend's maps are 1.5e-5 from the tests' own reference, 15x from its duals' maps
    true_p, _, _ = reference_solve(h, scores, temps)
    probs, duals = handed[0]
    distance = max(float(np.abs(p.reshape(p.shape[0], -1).numpy() - q).max()) for p, q in zip(probs, true_p))
    assert distance == pytest.approx(1.5e-5, rel=1e-3)
    assert float(metrics.stationarity(scores, probs, duals, h, temps).max()) > 10 * 1e3 * cvx.check_options(
        {"backend": ONE[0]})["accept_tol"]
    rows = [r for r in results if r.check.startswith(f"cvxpylayers[{ONE[0]}].")]
    assert rows and any(r.status != "pass" for r in rows), [(r.check, r.error, r.tol) for r in rows]


def test_ca_rev55_the_table_prints_the_tolerance_each_row_was_held_to():
    """The tolerances verify derives are not round numbers (the layer's 1.48e-6 and the backend's
    1.15e-4 on instance 1 of the quick set); printed with ``.0e`` a passing row reads as an error
    above its tolerance and a failing one as an error below it."""
    rows = [CheckResult(0, "c", "x.primal_vs_layer", 1.2e-6, 1.4832490621002797e-06, True),
            CheckResult(0, "c", "x.primal_vs_cvxpy", 1.6e-6, 1.5e-6, False),
            CheckResult(0, "c", "cvxpylayers[b].primal_vs_cvxpy", 1.2e-4, 1.1501561027461525e-4, False)]
    for row, line in zip(rows, format_table(rows).splitlines()[1:]):
        words = line.split()
        error, tol = float(words[3]), float(words[4])
        assert (error <= tol) == (row.status == "pass"), line
        assert tol == pytest.approx(row.tol, rel=0.01), line


def test_ca_rev55_a_solver_named_info_gets_no_info_rows():
    """docs/results_format.md: the part ``info`` is a measurement reported beside the checks, not
    a check; ``solver_label`` renames dual/exact/reference/cvxpylayers but not ``info``: the
    checks of ``--dual-solver solver.py:info`` (failed ones here) are written as ``info.*`` rows."""
    def info(scores, h, temps):  # wrong duals: its checks fail
        return [torch.zeros((scores[0].shape[0],) + tuple(h.shapes[b]), dtype=torch.float64) for _, b in h.edges]

    results = verify_instances(_instances(), dual_solver=info, progress=False, backends=[])
    named_info = [(r.check, r.status) for r in results if r.check.startswith("info.")]
    assert all(status == "info" for _, status in named_info), named_info
    assert solver_label("info") != "info"


def test_ca_rev55_a_tolerance_too_large_for_a_float_is_a_value_error():
    """check_tolerances' docstring: ValueError, before any work, for a value that is not a positive
    finite number; 10**400 passed its ``0 < value < inf`` test and then overflowed in ``float``."""
    try:
        verify_mod.check_tolerances({"primal": 10 ** 400})
        raised = None
    except Exception as exc:  # noqa: BLE001 - which exception is the point
        raised = exc
    assert isinstance(raised, ValueError), repr(raised)


def test_a_numpy_float_tolerance_is_taken_as_its_value():
    """cvx takes numpy's floats; check_tolerances did not ("must be a positive finite number")."""
    out = verify_mod.check_tolerances({"primal": np.float32(1e-6), "duals": np.float64(2e-4)})
    assert out["primal"] == pytest.approx(1e-6) and out["duals"] == 2e-4 and type(out["primal"]) is float
    with pytest.raises(ValueError, match="positive finite"):
        verify_mod.check_tolerances({"primal": np.float64("nan")})


# ---- ca_rev149 (strict xfail: review of 5a70ee6)
def test_ca_rev149_a_reason_carries_no_control_character_into_the_table_or_the_csv(tmp_path):
    """A solver's exception message is text the solver chose, and one_line folds whitespace
    only: ``ESC[2K ESC[G`` (erase the line, back to its start) and ``ESC[8m`` (conceal what
    follows) went raw into stdout's table and verify.csv, so on a terminal the row's ERROR, the
    rows after it and the summary could be erased or hidden and a forged ``pass`` row shown
    instead.  Measured: ``verify --dual-solver`` of a solver raising such a message exits 1 and
    its stdout and verify.csv hold the bytes ESC [ 8 m, backspaces and a NUL."""
    forged = "\x1b[2K\x1b[G  0  c  mine.primal_vs_cvxpy  1.00e-09  1.00e-06  pass\x1b[8m\x08\x00\x9b\u202e"
    row = CheckResult(0, "c", "mine.run", math.nan, math.nan, False, "error", f"raised RuntimeError: {forged}")
    path = tmp_path / "verify.csv"
    write_csv([row], str(path))
    with open(path, newline="", encoding="utf-8") as f:
        written = f.read()
    assert all(c.isprintable() for c in row.message), repr(row.message)
    assert all(c.isprintable() for line in format_table([row]).splitlines() for c in line)
    assert all(c.isprintable() for line in written.splitlines() for c in line), repr(written)


# ---- ca_rev165 (review of 783c3ef; its strict xfails now pass)
def _ca_rev165_redundant_instance():
    """``verify --quick --seed 10``'s instance 9: a ``mixed`` graph whose constraints are redundant
    (its duals have a null direction beyond the per-edge constants), and that direction."""
    from convex_attention.dual import reparameterized_logits

    inst = list(random_instances(10, seed=10, quick=True))[9]
    _, h, _, _ = inst
    shapes = [tuple(h.shapes[b]) for _, b in h.edges]
    sizes = [math.prod(s) for s in shapes]

    def split(v):
        return [part.reshape(s) for part, s in zip(torch.split(v, sizes), shapes)]

    zero = [torch.zeros((1,) + tuple(s), dtype=torch.float64) for s in h.shapes]
    columns = []
    for j in range(sum(sizes)):  # the logits, centred per map, of each unit dual: a linear map
        v = torch.zeros(sum(sizes), dtype=torch.float64)
        v[j] = 1
        etas = reparameterized_logits(zero, [d[None] for d in split(v)], h)
        columns.append(torch.cat([(e - e.mean()).flatten() for e in etas]))
    _, s, vh = torch.linalg.svd(torch.stack(columns, 1))
    null = vh[int((s > 1e-9).sum()):]
    gauge = torch.block_diag(*[torch.ones(n, 1, dtype=torch.float64) / math.sqrt(n) for n in sizes])
    null = null - (null @ gauge) @ gauge.T  # less the per-edge constants
    direction = torch.linalg.svd(null)[2][0]
    return inst, split(direction)


def test_ca_rev165_the_builtin_solver_fails_its_own_quick_verify_on_a_redundant_graph():
    """Run: ``verify_instances`` with the built-in solver on ``random_instances(10, seed=10, quick=True)[9]``
    (``mixed 4x4+2x2+2x2+3``, the instance ``convex-attention verify --quick --seed 10`` draws ninth; that
    command exits 1, 277/279).  Expected: every check passes: the solver's maps equal the reference's
    (primal_vs_cvxpy ~1e-9), duality gap ~1e-13, KKT stationarity ~1e-9; on this graph the constraints
    are redundant (docs/math.md: λ* is not unique beyond the per-edge constants), so the duals the solver
    and CVXPY pick may differ by a null direction and still both be optimal.  Observed:
    ``dual.duals_vs_cvxpy`` and ``dual.duals_vs_layer`` fail at 9.6e-2 against 1e-4."""
    inst, _ = _ca_rev165_redundant_instance()
    rows = verify_instances([inst], progress=False, backends=[])
    bad = [(r.check, r.status, r.error) for r in rows if r.status not in ("pass", "info")]
    assert not bad, bad


def test_ca_rev165_optimal_duals_off_the_references_null_direction_fail():
    """Run: a solver returning the built-in solver's duals plus 0.5 × a null direction of this redundant
    graph's constraints (beyond the per-edge constants: every map's logits move by a constant only, so
    ``p(λ)`` and ``g(λ)`` are unchanged), verified on ``random_instances(10, seed=10, quick=True)[9]``.
    Expected: it passes: the duals are optimal (the gap, the KKT residual against the reference primal and
    the maps' distance to the reference all pass, as the verifier's own rows show).  Observed:
    ``solver.duals_vs_cvxpy`` and ``solver.duals_vs_layer`` fail at 2.8e-1 against 1e-4, so a correct
    solver on a structure family verify draws is reported as failing."""
    inst, direction = _ca_rev165_redundant_instance()

    def solver(scores, h, temps):
        duals = ca.solve(scores, h, "dual", temperature=temps, tol=1e-11, max_iter=20000).duals
        return [d + 0.5 * u for d, u in zip(duals, direction)]

    rows = verify_instances([inst], dual_solver=solver, progress=False, backends=[])
    by_check = {r.check: r for r in rows}
    for check in ("primal_vs_cvxpy", "duality_gap", "kkt_stationarity", "feasibility"):  # optimal: these pass
        assert by_check[f"solver.{check}"].status == "pass", by_check[f"solver.{check}"]
    bad = [(r.check, r.status, r.error) for r in rows if r.status not in ("pass", "info")]
    assert not bad, bad


# ---- ca_rev203 (mutation review of fd14d0e)
def test_ca_rev203_the_reference_stationarity_gradient_and_backend_stationarity_rows_hold_their_tolerances():
    """Mutants killed: the reference.stationarity row read ``tol["primal"]`` (10x looser than documented),
    dual.gradient_vs_fd read ``tol["primal"]`` (the same default: a user's gradient tolerance ignored), and a
    backend's stationarity row at ``10 * STATIONARITY_FACTOR * accept_tol``; none of the three reached a test
    (test_each_row_is_held_to_its_documented_tolerance names neither tolerance nor that row)."""
    assert verify_mod.TOLERANCES["reference_stationarity"] == pytest.approx(verify_mod.TOLERANCES["primal"] / 10)
    results = verify_instances(_instances(), tolerances={"reference_stationarity": 2e-8, "gradient": 3e-6},
                               progress=False, backends=ONE)
    tol = {r.check: r.tol for r in results}
    assert tol["reference.stationarity"] == 2e-8
    assert tol["dual.gradient_vs_fd"] == tol["dual.temperature_gradient_vs_fd"] == 3e-6
    accept = cvx.check_options({"backend": ONE[0]})["accept_tol"]
    assert tol[f"cvxpylayers[{ONE[0]}].stationarity"] == pytest.approx(cvx.STATIONARITY_FACTOR * accept)


def test_ca_rev203_the_stationarity_measure_keeps_a_nan_of_any_sample():
    """Mutant killed: ``max(...)`` for ``nan_max(...)`` in verify._stationarity: Python's max drops a NaN
    that follows a finite value, so NaN duals on the second sample of a backend or of the reference gave
    the first sample's distance and the stationarity row passed."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    scores = [torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    sol = ca.solve(scores, h, "exact")
    duals = [d.reshape(2, -1).clone() for d in sol.duals]
    assert verify_mod._stationarity(h, [1.0, 1.0], scores, sol.probs, duals) < 1e-12
    duals[0][1] = math.nan
    assert math.isnan(verify_mod._stationarity(h, [1.0, 1.0], scores, sol.probs, duals))


def _backend_duals_moved(monkeypatch, move) -> list:
    """verify's cvxpylayers backend rows are given the duals ``move(duals)`` (detached) with the backend's own
    maps, and its gradient checks are skipped (not what is tested; time): the list of ``(maps, moved duals)``
    handed, one entry per backend solve."""
    real = verify_mod.solve
    handed = []

    def moved(s, graph, method, **kwargs):
        sol = real(s, graph, method, **kwargs)
        if method != "cvxpylayers" or "backend" not in kwargs:
            return sol
        duals = move([d.detach() for d in sol.duals])
        handed.append((sol.probs, duals))
        return ca.Solution([p.detach() for p in sol.probs], list(s), graph, sol.temperature, method, duals)

    monkeypatch.setattr(verify_mod, "solve", moved)
    monkeypatch.setattr(verify_mod, "_check_gradients", lambda *args, **kwargs: None)
    return handed


def test_ca_rev203_a_backends_certificate_row_holds_its_worst_sample(monkeypatch):
    """Mutant killed: ``certificate(...)[0]`` for ``.max()`` in verify._backend_certificate (the first sample
    only).  The backend's duals moved off the optimum on sample 1 alone: its certificate row fails, with the
    error of that sample."""
    def second_sample_off(duals):
        duals = [d.clone() for d in duals]
        for d in duals:
            d[1] += 1e-2 * torch.linspace(-1.0, 1.0, d[1].numel(), dtype=d.dtype).reshape(d[1].shape)
        return duals

    moved = _backend_duals_moved(monkeypatch, second_sample_off)
    name, h, scores, temps = next(iter(_instances()))
    results = verify_instances([(name, h, scores, temps)], dual_solver=_builtin_duals, progress=False, backends=ONE)
    row = next(r for r in results if r.check == f"cvxpylayers[{ONE[0]}].certificate")
    B = scores[0].shape[0]
    probs, duals = moved[0]
    flat = lambda xs: [x.detach().reshape(B, -1).double() for x in xs]  # noqa: E731
    cert = cvx.certificate(h, temps, flat(scores), flat(probs), flat(duals))
    assert float(cert[0]) <= row.tol < float(cert[1])
    assert row.status == "fail" and row.error == pytest.approx(float(cert[1]), rel=1e-9)


def test_ca_rev203_a_row_just_above_its_tolerance_fails_and_one_at_it_passes():
    """Mutant killed: ``bool(err <= 10 * t)`` in _Rows.add (every check 10x looser than the tolerance its row
    prints): no test had an error between the tolerance and ten times it."""
    results = []
    rows = verify_mod._Rows(results, 0, "c")
    rows.add("x.at", 1e-6, 1e-6)
    rows.add("x.above", 1.5e-6, 1e-6)
    assert [r.status for r in results] == ["pass", "fail"] and not all_passed(results)


@pytest.mark.parametrize("status", ["skipped", "error"])
def test_ca_rev203_a_row_that_did_not_run_fails_the_verification_beside_rows_that_passed(status):
    """Mutant killed: ``all_passed`` counting only rows not 'info' and not 'skipped': a skipped row beside
    passed ones let the run pass (the existing test had a skipped row alone, which fails as 'no checks')."""
    passed = CheckResult(0, "c", "x.ok", 1e-9, 1e-6, True)
    assert all_passed([passed])
    assert not all_passed([passed, CheckResult(0, "c", "x.y", math.nan, math.nan, False, status)])


def test_ca_rev203_a_solver_that_fails_where_the_reference_fails_keeps_its_error_row(monkeypatch):
    """Mutant killed: _run_checks dropping ``rows.broke(label, (), found)`` where the reference failed: the
    solver's own error ('raised RuntimeError: ...') vanished and its checks read 'the CVXPY reference
    failed' only."""
    def broken(self, scores):
        raise RuntimeError("no reference")

    def crashing(scores, h, temps):
        raise RuntimeError("the solver's own bug")

    monkeypatch.setattr(cvx.CvxpyAttentionLayer, "reference_solve", broken)
    monkeypatch.setattr(verify_mod, "_check_gradients", lambda *args, **kwargs: None)
    results = verify_instances(_instances(), dual_solver=crashing, progress=False, backends=[])
    by = {r.check: r for r in results}
    assert by["crashing.run"].status == "error" and "the solver's own bug" in by["crashing.run"].message
    assert not all_passed(results)


def test_ca_rev203_a_backends_dual_gap_row_is_relative_to_the_centred_optimum(monkeypatch):
    """Mutant killed: dual_gap_vs_cvxpy not divided by max(1, |f̄*|) (the module docstring's measure): on
    scores 5x an instance's, |f̄*| > 1, a backend's duals moved off the optimum give the row
    (g(λ) − f*) / max(1, |f̄*|), computed here from the closed form."""
    handed = _backend_duals_moved(monkeypatch, lambda duals: [
        d + torch.linspace(-1.0, 1.0, d[0].numel(), dtype=d.dtype).reshape(d[0].shape) for d in duals])
    name, h, scores, temps = next(iter(_instances()))
    scores = [5 * s for s in scores]
    results = verify_instances([(name, h, scores, temps)], dual_solver=_builtin_duals, progress=False, backends=ONE)
    row = next(r for r in results if r.check == f"cvxpylayers[{ONE[0]}].dual_gap_vs_cvxpy")
    centred = [s - s.flatten(1).mean(1).view((-1,) + (1,) * (s.dim() - 1)) for s in scores]
    f_star = ca.solve(centred, h, "exact", temperature=temps).objective
    assert float(f_star.abs().min()) > 2
    from convex_attention import metrics

    gap = (metrics.dual_objective(centred, handed[0][1], h, temps) - f_star) / f_star.abs().clamp(min=1)
    assert row.error == pytest.approx(float(gap.abs().max()), rel=1e-6) and row.status == "fail"


def test_ca_rev203_comparing_duals_of_unequal_count_is_nan_not_an_error():
    """Mutant killed: _dual_distance without its ``len(a) != len(b)`` test (zip truncated, then the null
    space's shape raised RuntimeError): nothing to compare is NaN, a failed check (its docstring)."""
    h = ca.Hierarchy.grid([(4,), (2,)])
    d = torch.zeros(2, 2, dtype=torch.float64)
    assert math.isnan(verify_mod._dual_distance([], [], h)) and math.isnan(verify_mod._dual_distance([d], [], h))
    assert verify_mod._dual_distance([d + 1.0], [d], h) == pytest.approx(0.0, abs=1e-12)  # a constant per edge


# ---- ca_rev258 (hostile review of the instance generators)

def test_ca_rev258_instances_beyond_the_thousandth_do_not_reuse_the_next_seeds_scores(monkeypatch):
    """Observed: scores drawn with seed * 1000 + i, so instance 1000 + j of --seed s had the scores of instance j
    of --seed s + 1 (536 of 1000 instances of --seed 0 --n 2000 against --seed 1 --n 1000 identical).  Expected:
    the first 1000 instances of a seed unchanged, none beyond them keyed like another seed's (torch keeps 32 bits
    of a seed, so keys are compared modulo 2**32)."""
    seeds: list = []

    def recorded(name, h, batch, seed=0, scale=1.0):
        seeds.append(seed % 2 ** 32)
        return [torch.zeros((batch,) + s, dtype=torch.float64) for s in h.shapes]

    monkeypatch.setattr(verify_mod, "generate", recorded)
    list(random_instances(1020, seed=0, quick=True))
    zero = list(seeds)
    seeds.clear()
    list(random_instances(20, seed=1, quick=True))
    assert zero[:1000] == list(range(1000)) and seeds == list(range(1000, 1020))
    assert not set(zero) & set(seeds) and len(set(zero)) == len(zero)
