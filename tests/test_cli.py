import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from convex_attention import cli
from convex_attention.bench.results import COLUMNS, CONVERGENCE_COLUMNS

TINY = ["--sizes", "4", "8", "--levels", "2", "--batch", "2", "--dims", "2", "--repeats", "2", "--warmup", "1",
        "--fit-instances", "8", "--fit-steps", "5", "--no-progress", "--device", "cpu"]
ROWS_PER_CELL = 7  # softmax, exact, dual, learned_dual x3 (zero, fitted, per_sample), cvxpylayers
DETERMINISTIC = ("status", "method", "dual_kind", "generator", "scale", "dims", "size", "levels", "batch",
                 "temperature", "dtype", "device", "seed", "shapes", "n_cells", "timed_batch", "violation_max",
                 "violation_mean", "max_abs_err", "primal_gap", "dual_gap", "iterations_mean", "iterations_max")


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(argv):
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse errors
        return exc.code


def test_bench_tiny_sweep_columns_and_rows(tmp_path):
    out = str(tmp_path / "r")
    assert run(["bench", *TINY, "--out", out]) == 0
    rows = read(os.path.join(out, "bench.csv"))
    assert tuple(rows[0].keys()) == COLUMNS
    assert len(rows) == 2 * ROWS_PER_CELL
    assert {r["status"] for r in rows} == {"ok"}
    kinds = sorted(r["dual_kind"] for r in rows if r["method"] == "learned_dual")
    assert kinds == ["fitted", "fitted", "per_sample", "per_sample", "zero", "zero"]
    for r in rows:
        if r["method"] in ("exact", "cvxpylayers", "dual"):
            assert float(r["violation_max"]) < 1e-6
        if r["method"] == "dual":
            assert int(r["iterations_max"]) >= 1
        if r["method"] != "learned_dual" or r["dual_kind"] == "fitted":
            assert float(r["fwd_ms"]) > 0 and float(r["bwd_ms"]) > 0
    data = json.load(open(os.path.join(out, "bench.json")))
    assert len(data["rows"]) == len(rows) and data["columns"] == list(COLUMNS)
    for key in ("torch", "python", "processor", "torch_threads", "device", "cvxpy"):
        assert key in data["environment"]
    conv = read(os.path.join(out, "convergence.csv"))
    assert tuple(conv[0].keys()) == CONVERGENCE_COLUMNS and len(conv) >= 2
    assert os.path.exists(os.path.join(out, "example.npz"))


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert run(["bench", *TINY, "--out", full]) == 0
    assert run(["bench", *TINY, "--out", part, "--max-cells", "1"]) == 0
    assert len(read(os.path.join(part, "bench.csv"))) == ROWS_PER_CELL
    assert run(["bench", *TINY, "--out", part, "--resume"]) == 0
    a, b = read(os.path.join(full, "bench.csv")), read(os.path.join(part, "bench.csv"))
    assert len(a) == len(b) == 2 * ROWS_PER_CELL
    key = lambda r: (r["size"], r["method"], r["dual_kind"])  # noqa: E731
    for ra, rb in zip(sorted(a, key=key), sorted(b, key=key)):
        for col in DETERMINISTIC:
            va, vb = ra[col], rb[col]
            try:
                fa, fb = float(va), float(vb)
            except ValueError:
                assert va == vb, col
                continue
            assert (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-15), col
    # a resume of a finished folder adds nothing
    assert run(["bench", *TINY, "--out", part, "--resume"]) == 0
    assert len(read(os.path.join(part, "bench.csv"))) == 2 * ROWS_PER_CELL


def test_cvxpylayers_cells_over_budget_or_cap_are_recorded_as_skipped(tmp_path):
    out = str(tmp_path / "r")
    args = ["bench", "--methods", "exact", "cvxpylayers", "--sizes", "4", "8", "16", "--levels", "2", "--batch", "2",
            "--repeats", "1", "--warmup", "0", "--no-progress", "--device", "cpu", "--out", out,
            "--cvx-max-cells", "100", "--budget", "0.01"]
    assert run(args) == 0
    rows = [r for r in read(os.path.join(out, "bench.csv")) if r["method"] == "cvxpylayers"]
    assert len(rows) == 3, "no cvxpylayers cell is left out silently"
    by_size = {r["size"]: r for r in rows}
    assert by_size["16"]["status"] == "skipped" and "cap" in by_size["16"]["reason"]
    assert by_size["8"]["status"] == "skipped" and "budget" in by_size["8"]["reason"]
    assert by_size["4"]["status"] == "ok"


def test_verify_passes_and_writes_csv(tmp_path):
    out = str(tmp_path / "v")
    assert run(["verify", "--quick", "--no-progress", "--out", out]) == 0
    rows = read(os.path.join(out, "verify.csv"))
    assert {"instance", "case", "check", "error", "tol", "passed"} <= set(rows[0])
    assert all(r["passed"] == "True" for r in rows)
    checks = {r["check"] for r in rows}
    assert {"dual.primal_vs_cvxpy", "dual.duals_vs_layer", "dual.duality_gap", "dual.kkt_stationarity",
            "dual.feasibility", "exact.primal_vs_layer", "reference.certificate"} <= checks


def test_verify_fails_with_a_wrong_dual_solver(tmp_path, capsys):
    solver = tmp_path / "wrong_solver.py"
    solver.write_text(
        "import convex_attention as ca\n"
        "def perturbed(scores, h, temps):\n"
        "    duals = ca.solve(scores, h, 'dual', temperature=temps, tol=1e-11).duals\n"
        "    return [d + 1e-3 * (d.abs() + 1) for d in duals]\n")
    out = str(tmp_path / "v")
    assert run(["verify", "--quick", "--no-progress", "--out", out, "--dual-solver", f"{solver}:perturbed"]) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "dual.duals_vs_cvxpy" in text
    rows = read(os.path.join(out, "verify.csv"))
    assert any(r["passed"] == "False" for r in rows)
    assert all(r["passed"] == "True" for r in rows if r["check"].startswith("exact."))


def test_plot_writes_every_figure(tmp_path):
    out = str(tmp_path / "r")
    assert run(["bench", *TINY, "--out", out]) == 0
    assert run(["plot", out]) == 0
    for name in ("time_vs_size", "violation", "dual_convergence", "speedup_exact_vs_cvxpylayers", "attention_maps"):
        for ext in ("png", "pdf"):
            path = os.path.join(out, "figures", f"{name}.{ext}")
            assert os.path.getsize(path) > 1000, path


@pytest.mark.parametrize("argv, message", [
    (["bench", "--methods", "exact", "sinkhorn"], "unknown method"),
    (["bench", "--sizes", "12", "--levels", "4"], "does not divide"),
    (["bench", "--sizes", "8", "--dims", "4"], "invalid choice"),
    (["bench", "--temperature", "-1"], "must be positive"),
    (["plot", "/nonexistent/results"], "does not exist"),
    (["verify", "--dual-solver", "no_colon"], "module:function"),
    (["bench", "--generator", "model"], "needs --checkpoint"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    assert run(argv) == 2
    assert message in capsys.readouterr().err


def test_plot_of_an_empty_folder_exits_2(tmp_path, capsys):
    assert run(["plot", str(tmp_path)]) == 2
    assert "holds no bench.csv" in capsys.readouterr().err


def test_console_script_help_teaches():
    exe = shutil.which("convex-attention")
    cmd = [exe] if exe else [sys.executable, "-m", "convex_attention.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    for word in ("bench", "verify", "plot", "demo", "examples:"):
        assert word in out
    out = subprocess.run(cmd + ["bench", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--resume" in out and "--budget" in out and "held-out" in out


def test_bench_with_scores_from_a_trained_model(tmp_path):
    from convex_attention.paper.models import AttentionUNet, save_checkpoint

    ckpt = save_checkpoint(str(tmp_path / "m" / "best.pt"),
                           AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8))
    out = str(tmp_path / "r")
    assert run(["bench", "--generator", "model", "--checkpoint", ckpt, "--sizes", "8", "--levels", "2", "--batch", "2",
                "--methods", "exact", "softmax", "--repeats", "1", "--warmup", "0", "--no-progress", "--device", "cpu",
                "--out", out]) == 0
    rows = read(os.path.join(out, "bench.csv"))
    assert {r["generator"] for r in rows} == {"model"} and len(rows) == 2
    assert run(["bench", "--generator", "model", "--checkpoint", ckpt, "--sizes", "16", "--out", out]) == 2
