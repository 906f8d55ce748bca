import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from helpers import read_bytes, read_json, read_text
from test_lock import hold_lock

from convex_attention import cli
from convex_attention.bench.results import COLUMNS, CONVERGENCE_COLUMNS, DUAL_KINDS
from convex_attention.cvx import available_backends

TINY = ["--sizes", "4", "8", "--levels", "2", "--batch", "2", "--dims", "2", "--repeats", "2", "--warmup", "1",
        "--fit-instances", "8", "--fit-steps", "5", "--amortised-steps", "5", "--no-progress", "--device", "cpu"]
# softmax, exact, dual, learned_dual per kind (zero, fitted, amortised, per_sample), cvxpylayers per backend
ROWS_PER_CELL = 3 + len(DUAL_KINDS) + len(available_backends())
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


@pytest.mark.slow
def test_bench_tiny_sweep_columns_and_rows(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run(["bench", *TINY, "--out", out]) == 0
    rows = read(os.path.join(out, "bench.csv"))
    assert tuple(rows[0].keys()) == COLUMNS
    assert len(rows) == 2 * ROWS_PER_CELL
    assert {r["status"] for r in rows} == {"ok"}
    kinds = sorted(r["dual_kind"] for r in rows if r["method"] == "learned_dual")
    assert kinds == sorted(2 * DUAL_KINDS)
    assert sorted(r["backend"] for r in rows if r["method"] == "cvxpylayers") == sorted(2 * available_backends())
    assert {r["backend"] for r in rows if r["method"] != "cvxpylayers"} == {""}
    for r in rows:  # every timed row carries its spread
        if r["fwd_ms"]:
            for name in ("fwd_ms", "bwd_ms", "total_ms"):
                assert float(r[f"{name}_q1"]) <= float(r[name]) <= float(r[f"{name}_q3"]), name
    for r in rows:
        if r["method"] in ("exact", "cvxpylayers", "dual"):
            assert float(r["violation_max"]) < 1e-6
        if r["method"] == "dual":
            assert int(r["iterations_max"]) >= 1
        if r["method"] != "learned_dual" or r["dual_kind"] == "fitted":
            assert float(r["fwd_ms"]) > 0 and float(r["bwd_ms"]) > 0
    data = read_json(os.path.join(out, "bench.json"))
    assert len(data["rows"]) == len(rows) and data["columns"] == list(COLUMNS)
    for key in ("torch", "python", "processor", "torch_threads", "device", "cvxpy"):
        assert key in data["environment"]
    run_record = data["runs"][-1]  # the sweep's declared thread count and the load at its start and end
    assert run_record["torch_threads"] == 1 and data["environment"]["torch_threads"] == 1
    assert {"load_average_start", "load_average_end", "started", "finished"} <= set(run_record)
    conv = read(os.path.join(out, "convergence.csv"))
    assert tuple(conv[0].keys()) == CONVERGENCE_COLUMNS and len(conv) >= 2
    assert os.path.exists(os.path.join(out, "example.npz"))
    # strict JSON, the amortised dual's targets stored and printed, one global warm-up
    read_json(os.path.join(out, "bench.json"), parse_constant=lambda token: pytest.fail(token))
    assert [(t["generator"], t["levels"]) for t in data["targets"]] == [("lesion", 2)]
    assert data["warmup_s"] > 0
    assert "amortised dual, lesion, 2 levels" in capsys.readouterr().out
    assert [n for n in os.listdir(out) if n.endswith((".tmp", ".lock"))] == []


@pytest.mark.slow
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


@pytest.mark.slow
def test_cvxpylayers_cells_over_budget_or_cap_are_recorded_as_skipped(tmp_path, monkeypatch):
    from convex_attention.bench import sweep

    # the estimate's rule alone: at --budget 0.01 s the 4² cell's own first solve (the layer's
    # build included) would overrun it too (that rule: tests/test_sweep.py)
    monkeypatch.setattr(sweep, "time_once", lambda case, device="cpu", backward=True: 0.0)
    out = str(tmp_path / "r")
    args = ["bench", "--methods", "exact", "cvxpylayers", "--sizes", "4", "8", "16", "--levels", "2", "--batch", "2",
            "--repeats", "1", "--warmup", "1", "--no-progress", "--device", "cpu", "--out", out,
            "--cvx-max-cells", "100", "--budget", "0.01", "--cvx-backends", "diffcp-clarabel"]
    assert run(args) == 0
    rows = [r for r in read(os.path.join(out, "bench.csv")) if r["method"] == "cvxpylayers"]
    assert len(rows) == 3, "no cvxpylayers cell is left out silently"
    by_size = {r["size"]: r for r in rows}
    assert by_size["16"]["status"] == "skipped" and "cap" in by_size["16"]["reason"]
    assert by_size["8"]["status"] == "skipped" and "budget" in by_size["8"]["reason"]
    assert by_size["4"]["status"] == "ok"
    # a skipped cell records its estimate and what it is based on
    assert float(by_size["8"]["estimate_s"]) > 0.01 and "prior cost model" in by_size["8"]["reason"]
    assert {r["backend"] for r in rows} == {"diffcp-clarabel"}


@pytest.mark.slow  # end to end: the whole quick verification (test_verify runs the command with a solver file)
def test_verify_passes_and_writes_csv(tmp_path):
    out = str(tmp_path / "v")
    assert run(["verify", "--quick", "--no-progress", "--out", out]) == 0
    rows = read(os.path.join(out, "verify.csv"))
    assert {"instance", "case", "check", "error", "tol", "passed"} <= set(rows[0])
    assert all(r["passed"] == "True" for r in rows if r["status"] != "info")
    info = [r for r in rows if r["status"] == "info"]  # measurements beside the checks: never passed
    assert info and all(r["passed"] == "False" and r["check"].startswith("info.") for r in info)
    checks = {r["check"] for r in rows}
    assert {"dual.primal_vs_cvxpy", "dual.duals_vs_layer", "dual.duality_gap", "dual.kkt_stationarity",
            "dual.feasibility", "exact.primal_vs_layer", "reference.certificate"} <= checks


@pytest.mark.slow  # a Python process of its own
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
    # a custom solver's rows carry its name (they used to be labelled dual.*)
    assert "FAIL" in text and "perturbed.duals_vs_cvxpy" in text and "dual.duals_vs_cvxpy" not in text
    rows = read(os.path.join(out, "verify.csv"))
    assert any(r["passed"] == "False" for r in rows)
    assert all(r["passed"] == "True" for r in rows if r["check"].startswith("exact."))


@pytest.mark.slow
def test_plot_writes_every_figure(tmp_path):
    out = str(tmp_path / "r")
    assert run(["bench", *TINY, "--out", out]) == 0
    assert run(["plot", out]) == 0
    for name in ("time_vs_size", "violation", "dual_convergence", "speedup_exact_vs_cvxpylayers", "attention_maps"):
        for ext in ("png", "pdf"):
            path = os.path.join(out, "figures", f"{name}.{ext}")
            assert os.path.getsize(path) > 1000, path


@pytest.mark.parametrize("argv, message", [
    (["bench", "--methods", "exact", "sinkhorn"], "argument --methods: must be one of softmax"),
    (["bench", "--sizes", "12", "--levels", "4"], "does not divide"),
    (["bench", "--sizes", "8", "--dims", "4"], "argument --dims: must be an integer from 1 to 3"),
    (["bench", "--temperature", "-1"], "argument --temperature: must be a finite number > 0"),
    (["bench", "--seed", str(2 ** 64)], "argument --seed: must be an integer from 0 to 4294967295"),
    (["bench", "--batch", "1000000000"], "argument --batch: must be an integer from 1 to"),
    (["plot", "/nonexistent/results"], "does not exist"),
    (["verify", "--dual-solver", "no_colon"], "module:function"),
    (["bench", "--generator", "model"], "needs --checkpoint"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    # ca_rev236: in an empty folder, as `make test` after `make demo` is not: the demo's results/verify.csv
    # refused verify's default --out before its --dual-solver was read
    monkeypatch.chdir(tmp_path)
    assert run(argv) == 2
    assert message in capsys.readouterr().err


def test_plot_of_an_empty_folder_exits_2(tmp_path, capsys):
    assert run(["plot", str(tmp_path)]) == 2
    assert "holds no bench.csv" in capsys.readouterr().err


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_console_script_help_teaches():
    exe = shutil.which("convex-attention")
    cmd = [exe] if exe else [sys.executable, "-m", "convex_attention.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    for word in ("bench", "verify", "plot", "demo", "examples:"):
        assert word in out
    out = subprocess.run(cmd + ["bench", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--resume" in out and "--budget" in out and "held-out" in out


@pytest.mark.slow
def test_bench_with_scores_from_a_trained_model(tmp_path):
    from convex_attention.paper.models import AttentionUNet, save_checkpoint

    ckpt = save_checkpoint(str(tmp_path / "m" / "best.pt"),
                           AttentionUNet(method="exact", width=4, image_size=32, embed_channels=8))
    out = str(tmp_path / "r")
    assert run(["bench", "--generator", "model", "--checkpoint", ckpt, "--sizes", "8", "--levels", "2", "--batch", "2",
                "--methods", "exact", "softmax", "--repeats", "1", "--warmup", "1", "--no-progress", "--device", "cpu",
                "--out", out]) == 0
    rows = read(os.path.join(out, "bench.csv"))
    assert {r["generator"] for r in rows} == {"model"} and len(rows) == 2
    assert run(["bench", "--generator", "model", "--checkpoint", ckpt, "--sizes", "16", "--out", out]) == 2



def test_bench_refuses_a_model_sweep_it_could_not_run_honestly(tmp_path, capsys):
    """Before work, exit 2, one line: a seed whose images are the checkpoint's own training
    images (before: scored without a word), and a model of 16x16 folder images that the
    synthetic generator cannot feed (before: accepted, and every row an error)."""
    from convex_attention.paper.config import TrainConfig
    from convex_attention.paper.models import AttentionUNet, save_checkpoint

    def checkpoint(name, **fields):
        cfg = TrainConfig.build(**{**dict(width=4, image_size=32, embed_channels=8, method="softmax"), **fields})
        return save_checkpoint(str(tmp_path / name / "best.pt"), AttentionUNet(config=cfg.model),
                               extra={"train_config": cfg.to_dict()})

    own = checkpoint("own", data_seed=20_001)
    folder16 = checkpoint("folder16", data="folder", data_root=str(tmp_path), image_size=16, attention_blocks=(2, 3))
    for argv, words in ((["--checkpoint", own, "--sizes", "8", "--seed", "1"], "own training images"),
                        (["--checkpoint", own, "--sizes", "8", "--seed", "0"], "seed 0, seed 1 for its training"),
                        (["--checkpoint", folder16, "--sizes", "8"], "32x32 images or more")):
        out = tmp_path / "out"
        assert run(["bench", "--generator", "model", "--levels", "2", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not out.exists()

# ----------------------------------------------------------------------------- bench: usage errors, results folder

FAST = ["--methods", "exact", "softmax", "--sizes", "4", "--levels", "2", "--batch", "2", "--repeats", "2",
        "--warmup", "1", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("argv, message", [
    (["--scale", "inf"], "finite"),
    (["--scale", "1e300"], "argument --scale: must be a finite number in (0, 1000]"),
    (["--scale", "0"], "argument --scale: must be a finite number in (0, 1000]"),
    (["--temperature", "inf"], "finite"),
    (["--temperature", "nan"], "argument --temperature: must be a finite number > 0"),
    (["--temperature", "1e-39"], "below the smallest accepted"),
    (["--warmup", "0"], "argument --warmup: must be an integer from 1"),
    (["--warmup", "-2"], "argument --warmup: must be an integer from 1"),
    (["--batch", "0"], "argument --batch: must be an integer from 1"),
    (["--repeats", "-1"], "argument --repeats: must be an integer from 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--cvx-backends", "gurobi"], "argument --cvx-backends: must be one of diffcp-clarabel"),
    # a named backend that cannot run here, as verify --backends refuses it (before: rc 0, skipped rows only)
    (["--methods", "cvxpylayers", "--cvx-backends", "diffcp-scs", "mpax", "--sizes", "4", "--levels", "2", "--batch",
      "1"], "--cvx-backends mpax: cvxpylayers backend 'mpax' cannot run here"),
    # a contradiction found before the folder is made (before: exit 2, and an empty folder left behind)
    (["--sizes", "16", "--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    # a grid value listed twice (before: its cells measured twice, and bench.json's run counted both); FAST
    # first, so that the code before the fix measured a small sweep (the value given last replaces FAST's)
    ([*FAST, "--sizes", "8", "8"], "--sizes: sizes must hold distinct values, got [8, 8] (8 is listed twice)"),
    ([*FAST, "--levels", "2", "3", "2"], "--levels: levels must hold distinct values"),
    ([*FAST, "--batch", "2", "2"], "--batch: batches must hold distinct values"),
    ([*FAST, "--dims", "2", "2"], "--dims: dims must hold distinct values"),
    ([*FAST, "--temperature", "1", "1.0"], "--temperature: temperatures must hold distinct values, got [1.0, 1.0]"),
    ([*FAST, "--dtype", "float32", "float32"], "--dtype: dtypes must hold distinct values"),
    ([*FAST, "--device", "cpu", "cpu"], "--device: devices must hold distinct values, got ['cpu', 'cpu']"),
    ([*FAST, "--cvx-backends", "diffcp-clarabel", "diffcp-clarabel"],
     "--cvx-backends: cvx_backends must hold distinct"),
    # a checkpoint no generator but the model's reads (before: accepted, even a missing file, and recorded, so
    # that a later --resume without it was refused)
    ([*FAST, "--checkpoint", "no/such/model.pt"], "--checkpoint needs --generator model"),
    ([*FAST, "--generator", "gaussian", "--checkpoint", "no/such/model.pt"], "--generator gaussian does not read it"),
    # options no row of the sweep reads (before: accepted and recorded, so that a --resume adding the method that
    # reads them was refused for rows that never did)
    ([*FAST, "--methods", "exact", "--fit-steps", "5"],
     "--fit-steps applies to learned_dual only, and --methods exact leaves it out"),
    ([*FAST, "--methods", "exact", "dual", "--amortised-steps", "7"], "--amortised-steps applies to learned_dual"),
    ([*FAST, "--methods", "exact", "--fit-max-values", "9"], "--fit-max-values applies to learned_dual"),
    ([*FAST, "--methods", "exact", "--fit-instances", "9"], "--fit-instances applies to learned_dual"),
    ([*FAST, "--methods", "exact", "--cvx-backends", "diffcp-clarabel"], "--cvx-backends applies to cvxpylayers"),
    ([*FAST, "--methods", "exact", "--cvx-batch", "3"], "--cvx-batch applies to cvxpylayers"),
    ([*FAST, "--methods", "exact", "--diffcp-batch", "3"], "--diffcp-batch applies to cvxpylayers"),
    ([*FAST, "--methods", "exact", "--cvx-max-cells", "5"], "--cvx-max-cells applies to cvxpylayers"),
    ([*FAST, "--methods", "exact", "--budget", "3"], "--budget applies to cvxpylayers"),
    ([*FAST, "--structure", "star", "--levels", "3"], "--levels applies to chain only, and --structure star leaves"),
    ([*FAST, "--device", "cpu", "cpu:0"], "--device cpu cpu:0: the same device, listed twice"),
])
def test_bench_usage_errors_exit_2_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "r"
    assert run(["bench", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists(), "nothing is written before the checks"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_on_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert run(["bench", "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bench_out_that_is_a_file_or_unwritable_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert run(["bench", *FAST, "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert run(["bench", *FAST, "--out", str(f / "sub")]) == 2
    assert "not a writable folder" in capsys.readouterr().err


def _refused_in_a_busy_folder(argv: list, out, written: str, capsys) -> None:
    """``argv`` (given ``--out out``) exits 2 naming the owner of out's lock, held by another
    writer as the lock protocol sees it (an OS lock on results.lock, its owner recorded
    there), and writes no ``written``."""
    out.mkdir()
    holder = hold_lock(out, 60)
    try:
        assert run([*argv, "--out", str(out)]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"in use by pid {holder.pid}" in err and "--wait" in err and "Traceback" not in err
    assert not (out / written).exists()


def test_a_second_bench_into_a_busy_folder_exits_2_naming_the_owner(tmp_path, capsys):
    _refused_in_a_busy_folder(["bench", *FAST], tmp_path / "r", "bench.csv", capsys)


@pytest.mark.slow
def test_resume_recomputes_truncated_and_error_rows_without_duplicates(tmp_path, capsys):
    from convex_attention.bench import results as R

    out = str(tmp_path / "r")
    assert run(["bench", *FAST, "--out", out]) == 0
    path = os.path.join(out, "bench.csv")
    rows, problems = R.read_rows(path, R.BENCH_SCHEMA)
    assert problems == [] and len(rows) == 2
    exact_err = next(r for r in rows if r["method"] == "exact")["max_abs_err"]
    # 1. a value cut off (as a killed non-atomic writer or a bad copy leaves it)
    text = read_text(path)
    cut = repr(exact_err)
    assert cut in text
    with open(path, "w") as f:
        f.write(text.replace(cut, cut[:6]))
    (tmp_path / "r" / "bench.csv.4242-0.tmp").write_text("half a file")  # and a stale temporary of ours
    assert run(["bench", *FAST, "--out", out, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "recomputed" in err
    rows, problems = R.read_rows(path, R.BENCH_SCHEMA)
    assert problems == [] and len(rows) == 2
    assert next(r for r in rows if r["method"] == "exact")["max_abs_err"] == exact_err
    assert [n for n in os.listdir(out) if n.endswith(".tmp")] == []
    # 2. an error row is retried and replaced
    rows = [{**r, "status": "error", "reason": "SolverFailure: test"} if r["method"] == "softmax" else r
            for r in rows]
    R.atomic_csv(path, R.COLUMNS, rows, checksum=True)
    assert run(["bench", *FAST, "--out", out, "--resume"]) == 0
    rows, _ = R.read_rows(path, R.BENCH_SCHEMA)
    assert sorted((r["method"], r["status"]) for r in rows) == [("exact", "ok"), ("softmax", "ok")]


def _earlier_bench(folder):
    """A folder with an earlier bench's rows (one finished, one error row)."""
    from convex_attention.bench import results as R

    w = R.ResultsWriter(str(folder), {}, "cpu", resume=False, log=lambda m: None)
    base = {"cell": 0, "reason": "", "backend": "", "dual_kind": "", "structure": "chain", "generator": "lesion",
            "scale": 1.0, "dims": 2, "size": 4, "levels": 2, "batch": 2, "temperature": 1.0, "dtype": "float32",
            "device": "cpu", "seed": 0}
    w.commit({**base, "method": "exact", "status": "ok"})
    w.commit({**base, "method": "softmax", "status": "error", "reason": "RuntimeError: test"})
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_bench_into_a_folder_with_finished_rows_needs_resume_or_overwrite(tmp_path, capsys):
    """Before: bench without --resume silently replaced an earlier run's finished rows."""
    out = tmp_path / "r"
    before = _earlier_bench(out)
    assert run(["bench", *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "holds 2 row(s) of an earlier bench (1 finished)" in err and "--resume" in err and "--overwrite" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before, "nothing was touched"
    assert run(["bench", *FAST, "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "contradict each other" in capsys.readouterr().err
    assert run(["demo", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_demo_refusing_a_folder_with_rows_names_only_its_own_options(tmp_path, capsys, monkeypatch):
    """Found by a review: demo's refusal said 'pass --resume to keep them', but demo has no
    --resume (it exits 2, unrecognized arguments); bench's message is unchanged."""
    from convex_attention.cli import bench as cli_bench

    out = tmp_path / "r"
    _earlier_bench(out)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "bench.csv").write_bytes(b"\xef\xbb\xbf" + b"cell,status\n")
    for folder, words in ((out, "holds 2 row(s) of an earlier bench"), (unreadable, "cannot be read")):
        assert run(["demo", "--out", str(folder), "--no-progress"]) == 2
        line = _one_line(capsys, "convex-attention demo: error:", words, "pass --overwrite", "another --out")
        assert "--resume" not in line
    assert run(["bench", *FAST, "--out", str(out)]) == 2
    _one_line(capsys, "convex-attention bench: error:", "pass --resume to keep them and measure only the rest, or "
                      "--overwrite to discard them and start over (or choose another --out)")
    # the check under the folder's lock (rows written between demo's check and its lock) too
    monkeypatch.setattr(cli_bench, "_check_start_over", lambda *args, **kwargs: None)
    assert run(["demo", "--out", str(out), "--no-progress"]) == 2
    line = _one_line(capsys, "convex-attention demo: error:", "holds 2 row(s)", "pass --overwrite", "another --out")
    assert "--resume" not in line


def test_bench_overwrite_starts_over(tmp_path):
    out = tmp_path / "r"
    _earlier_bench(out)
    assert run(["bench", *FAST, "--methods", "softmax", "--out", str(out), "--overwrite"]) == 0
    rows = read(os.path.join(out, "bench.csv"))
    assert [(r["method"], r["status"]) for r in rows] == [("softmax", "ok")]
    assert len(read_json(out / "bench.json")["rows"]) == 1


def test_ctrl_c_on_bench_keeps_the_rows_and_names_resume(tmp_path, capsys, monkeypatch):
    from convex_attention.bench import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    assert run(["bench", *FAST, "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("convex-attention bench: interrupted; the rows finished so far are kept (rerun with --resume to "
                   "measure the rest)")


@pytest.mark.slow
def test_a_resume_that_adds_learned_dual_rewrites_the_example_with_its_duals(tmp_path, capsys):
    """Before: example.npz was written by the first run only, so a folder widened by --resume
    to learned_dual drew its attention maps without the learned λ, silently."""
    import numpy as np

    out = tmp_path / "r"
    assert run(["bench", *FAST, "--out", str(out)]) == 0
    with np.load(out / "example.npz", allow_pickle=False) as data:
        scores, keys = data["scores0"].copy(), set(data.files)
    assert "fitted_dual0" not in keys
    assert run(["bench", *FAST, "--methods", "exact", "softmax", "learned_dual", "--fit-steps", "3",
                "--amortised-steps", "3", "--fit-instances", "4", "--out", str(out), "--resume"]) == 0
    assert "example.npz written again: the resumed sweep adds learned_dual" in capsys.readouterr().err
    with np.load(out / "example.npz", allow_pickle=False) as data:
        assert {"fitted_dual0", "amortised_dual0"} <= set(data.files)
        np.testing.assert_array_equal(data["scores0"], scores)  # the same instance


@pytest.mark.slow
def test_a_resume_writes_a_damaged_example_again(tmp_path, capsys):
    """Before: a resume without learned_dual kept a damaged example.npz (plot then refused
    it), and one with learned_dual ended in a traceback on some damage (a review)."""
    import numpy as np

    out = tmp_path / "r"
    assert run(["bench", *FAST, "--out", str(out)]) == 0
    whole = read_bytes(out / "example.npz")
    with np.load(out / "example.npz", allow_pickle=False) as data:
        scores = data["scores0"].copy()
    (out / "example.npz").write_bytes(whole[:len(whole) // 2])
    capsys.readouterr()
    assert run(["bench", *FAST, "--out", str(out), "--resume"]) == 0
    assert "example.npz written again: it cannot be read as an example" in capsys.readouterr().err
    with np.load(out / "example.npz", allow_pickle=False) as data:  # the same instance, written whole
        np.testing.assert_array_equal(data["scores0"], scores)


@pytest.mark.slow
def test_bench_cvx_backends_option_picks_the_rows(tmp_path):
    out = str(tmp_path / "r")
    assert run(["bench", "--methods", "exact", "cvxpylayers", "--cvx-backends", "diffcp-scs", "--sizes", "4",
                "--levels", "2", "--batch", "2", "--repeats", "1", "--warmup", "1", "--no-progress", "--device",
                "cpu", "--out", out]) == 0
    rows = read(os.path.join(out, "bench.csv"))
    assert sorted((r["method"], r["backend"], r["status"]) for r in rows) == [
        ("cvxpylayers", "diffcp-scs", "ok"), ("exact", "", "ok")]


def test_demo_holds_the_folder_lock_for_its_three_steps(tmp_path, monkeypatch):
    from convex_attention.cli import bench as cli_bench

    out = tmp_path / "r"
    owners = []

    def step(name, status=0):
        def fn(*args, **kwargs):
            owners.append((name, json.loads((out / "results.lock").read_text())["command"]))
            return status
        return fn

    monkeypatch.setattr(cli_bench, "_run_bench", step("bench"))
    monkeypatch.setattr(cli_bench, "_run_verify", step("verify", 1))
    monkeypatch.setattr(cli_bench, "_run_plot", step("plot"))
    assert run(["demo", "--out", str(out), "--no-progress"]) == 1  # verify's status
    assert owners == [("bench", "demo"), ("verify", "demo"), ("plot", "demo")]
    assert not (out / "results.lock").exists()


def test_demo_into_a_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert run(["demo", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_quick_honours_the_options_given_with_it(tmp_path, monkeypatch, capsys):
    """`bench --quick --sizes 8` sweeps size 8 with the quick sweep's other settings; a size the
    quick sweep's 3 levels cannot divide is a usage error, never silently replaced."""
    from convex_attention.bench.config import quick_sweep
    from convex_attention.cli import bench as bench_cli

    seen = []
    monkeypatch.setattr(bench_cli, "_run_bench", lambda config, args, out: seen.append(config) or 0)
    assert run(["bench", "--quick", "--sizes", "8", "--out", str(tmp_path / "r")]) == 0
    assert seen[0].sizes == (8,) and seen[0].repeats == quick_sweep().repeats
    assert seen[0].levels == quick_sweep().levels and seen[0].threads == 1
    assert run(["bench", "--quick", "--sizes", "8", "--threads", "2", "--out", str(tmp_path / "r")]) == 0
    assert seen[1].threads == 2
    assert run(["bench", "--quick", "--sizes", "6", "--out", str(tmp_path / "r")]) == 2
    assert "size 6 does not divide" in capsys.readouterr().err and len(seen) == 2


def test_the_help_describes_resume_overwrite_and_the_verify_timeout():
    """Issue 16's 'done when': the CLI help describes --overwrite/--resume and verify --timeout."""
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    def help_of(command, option):
        return " ".join(next(a.help for a in sub[command]._actions if option in a.option_strings).split())

    assert "keep OUT's finished rows" in help_of("bench", "--resume")
    overwrite = help_of("bench", "--overwrite")
    assert "start over" in overwrite and "without --resume or --overwrite" in overwrite and "refused (exit 2)" in \
        overwrite
    timeout = help_of("verify", "--timeout")
    assert "(default: 60" in timeout
    train = help_of("train", "--overwrite")
    assert "earlier run's files" in train and "--resume OUT/last.pt" in train and "refused (exit 2)" in train


@pytest.mark.slow  # end-to-end: bench runs (CI; the fast suite stays under a minute)
def test_bench_resume_refuses_other_measurement_settings_and_numbers_new_cells_apart(tmp_path, capsys):
    """Before: `--sizes 8` then `--sizes 4 8 --factor 4 --resume` exited 0 with factor-2 and
    factor-4 rows side by side; and without --factor both cells were numbered 0."""
    out = tmp_path / "r"
    base = ["--methods", "exact", "softmax", "dual", "--levels", "2", "--batch", "2", "--repeats", "1", "--warmup",
            "1", "--no-progress", "--device", "cpu"]
    assert run(["bench", *base, "--sizes", "8", "--out", str(out)]) == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()
    assert run(["bench", *base, "--sizes", "4", "8", "--factor", "4", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--factor 2, this run asks for --factor 4" in err and "--overwrite" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before, "nothing was touched"
    assert run(["bench", *base, "--sizes", "4", "8", "--out", str(out), "--resume"]) == 0
    rows = read(out / "bench.csv")
    assert {(r["size"], r["cell"]) for r in rows} == {("8", "0"), ("4", "1")}
    conv = read(out / "convergence.csv")
    assert {(r["size"], r["cell"]) for r in conv} == {("8", "0"), ("4", "1")}
    assert read_json(out / "bench.json")["config"]["sizes"] == [8, 4]


@pytest.mark.slow  # end-to-end: bench runs (CI; the fast suite stays under a minute)
def test_bench_resume_measures_again_a_dual_row_whose_history_was_damaged(tmp_path, capsys):
    """Before: a value cut off in convergence.csv dropped that history row on --resume (stderr
    said it is recomputed), but the dual row stayed finished: the history stayed one row
    short for good.  Now the cell's dual row is measured again and its whole history written
    once."""
    out = tmp_path / "r"
    argv = ["bench", "--methods", "softmax", "dual", "--sizes", "8", "--levels", "2", "--batch", "2", "--repeats",
            "2", "--warmup", "1", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert run(argv) == 0
    before = read(out / "convergence.csv")
    lines = (out / "convergence.csv").read_text().splitlines(keepends=True)
    fields = lines[2].split(",")
    fields[8] = fields[8][:6]  # violation_mean of the second history row, cut off
    lines[2] = ",".join(fields)
    (out / "convergence.csv").write_text("".join(lines))
    capsys.readouterr()
    assert run([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "dual row of cell 0 has an incomplete history" in err, err
    after = read(out / "convergence.csv")
    assert [r["iteration"] for r in after] == [r["iteration"] for r in before]  # whole, once
    rows = read(out / "bench.csv")
    assert sorted(r["method"] for r in rows) == ["dual", "softmax"]
    assert {r["row_id"] for r in after} == {r["row_id"] for r in rows if r["method"] == "dual"}
    runs = read_json(out / "bench.json")["runs"]
    assert [r["rows"] for r in runs] == [2, 1], "the second run measured the dual row alone"


@pytest.mark.slow  # end-to-end: bench runs (CI; the fast suite stays under a minute)
def test_bench_example_is_an_instance_of_the_sweeps_seed_and_scale(tmp_path, monkeypatch):
    """Before: save_example was given neither the seed nor the scale (nor the training cap):
    example.npz was seed 0 at scale 1 whatever --seed and --scale said."""
    import numpy as np

    from convex_attention.bench import examples, sweep
    from convex_attention.bench.generators import generate
    from convex_attention.hierarchy import Hierarchy

    out = tmp_path / "r"
    assert run(["bench", *FAST, "--seed", "7", "--scale", "2.5", "--out", str(out)]) == 0
    h = Hierarchy.grid([(32, 32), (16, 16)])
    with np.load(out / "example.npz", allow_pickle=False) as z:
        assert np.array_equal(z["scores0"], generate("lesion", h, 1, seed=107, scale=2.5)[0][0].numpy())
    # the learned duals' settings, capped as the sweep's (--quick: --fit-max-values 65536)
    seen = []
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: [])
    monkeypatch.setattr(examples, "save_example", lambda out, **kw: seen.append(kw))
    assert run(["bench", "--quick", "--methods", "learned_dual", "--seed", "4", "--scale", "3", "--no-progress",
                "--out", str(tmp_path / "q")]) == 0
    assert seen == [{"generator": "lesion", "scale": 3.0, "seed": 4, "fit_instances": 64, "fit_max_values": 2 ** 16,
                     "fit_steps": 100, "amortised_steps": 150}]


@pytest.mark.slow  # end-to-end: bench runs (CI; the fast suite stays under a minute)
def test_bench_refuses_to_replace_an_earlier_benchs_example_or_convergence_rows(tmp_path, capsys):
    """Before: with no bench.csv/bench.json in the folder, bench replaced both without a word."""
    for name in ("example.npz", "convergence.csv"):
        out = tmp_path / name.split(".")[0]
        out.mkdir()
        if name == "example.npz":
            (out / name).write_bytes(b"the user's")
        else:
            from convex_attention.bench import results as R

            R.atomic_csv(str(out / name), R.CONVERGENCE_COLUMNS, [{"row_id": "x", "cell": 0, "iteration": 0}],
                         checksum=True)
        before = (out / name).read_bytes()
        assert run(["bench", *FAST, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"holds {name}" in err and "--overwrite" in err
        assert os.listdir(out) == [name] and (out / name).read_bytes() == before
        assert run(["demo", "--out", str(out), "--no-progress"]) == 2
        assert f"holds {name}" in capsys.readouterr().err and os.listdir(out) == [name]


def test_verify_refuses_to_replace_verify_csv_without_overwrite(tmp_path, capsys):
    """Before: verify replaced an existing verify.csv without a word."""
    out = tmp_path / "v"
    out.mkdir()
    (out / "verify.csv").write_text("the user's\n")
    assert run(["verify", "--quick", "--n", "1", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "already holds verify.csv from an earlier run" in err
    assert "--overwrite" in err and (out / "verify.csv").read_text() == "the user's\n"
    assert sorted(os.listdir(out)) == ["verify.csv"]
    assert run(["demo", "--out", str(out), "--no-progress"]) == 2
    assert "verify.csv" in capsys.readouterr().err and sorted(os.listdir(out)) == ["verify.csv"]


@pytest.mark.slow  # two whole verifications (~1 s); --n's reading is checked fast with the other options
def test_verify_quick_honours_n(tmp_path, capsys):
    """Before: `verify --quick --n 1` ran 10 instances, ignoring --n (bench --quick takes the
    options given with it)."""
    out = tmp_path / "v"
    assert run(["verify", "--quick", "--n", "1", "--no-progress", "--out", str(out)]) == 0
    assert {r["instance"] for r in read(out / "verify.csv")} == {"0"}
    assert not (out / "results.lock").exists()
    (out / "verify.csv").write_text("the user's\n")
    assert run(["verify", "--quick", "--n", "2", "--no-progress", "--out", str(out), "--overwrite"]) == 0
    assert {r["instance"] for r in read(out / "verify.csv")} == {"0", "1"}


def test_verify_into_a_busy_folder_exits_2_naming_the_owner(tmp_path, capsys):
    """Before: verify took no lock, and wrote verify.csv into a folder another run was writing."""
    _refused_in_a_busy_folder(["verify", "--quick", "--n", "1", "--no-progress"], tmp_path / "r", "verify.csv",
                              capsys)


def test_a_bench_csv_that_cannot_be_read_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "bench.csv").mkdir()  # a folder of that name: the file cannot be read
    for extra in ([], ["--resume"]):
        assert run(["bench", *FAST, "--out", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert "cannot be read" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # starts verify and bench in processes of their own (~1.4 s)
def test_the_temporaries_an_interrupted_verify_or_bench_left_are_removed(tmp_path, capsys):
    """Those of verify.csv and example.npz were never removed (found by a hostile review)."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "verify.csv.999-1.tmp").write_text("half")
    assert run(["verify", "--quick", "--n", "1", "--no-progress", "--out", str(out)]) in (0, 1)
    assert not (out / "verify.csv.999-1.tmp").exists() and "verify.csv.999-1.tmp" in capsys.readouterr().err
    bench_out = tmp_path / "b"
    bench_out.mkdir()
    (bench_out / "example.npz.999-2.tmp").write_text("half")
    assert run(["bench", *FAST, "--out", str(bench_out)]) == 0
    assert not (bench_out / "example.npz.999-2.tmp").exists()


def _one_line(capsys, *words) -> str:
    """The one stderr line of a failed command, holding every one of ``words``."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _stub_demo_steps(monkeypatch, seen: list) -> None:
    from convex_attention.cli import bench as cli_bench

    monkeypatch.setattr(cli_bench, "_run_bench",
                        lambda config, args, out, **kwargs: seen.append(("bench", args.out, out)) or 0)
    monkeypatch.setattr(cli_bench, "_run_verify", lambda args, *rest: seen.append(("verify", args.out)) or 0)
    monkeypatch.setattr(cli_bench, "_run_plot", lambda args, results, out, *rest: seen.append(
        ("plot", args.results, results)) or 0)


@pytest.mark.parametrize("out", ["-x", "--help", "--quick"])
def test_demo_takes_an_out_that_looks_like_an_option_as_a_folder_name(tmp_path, monkeypatch, capsys, out):
    """Found by a hostile review: `demo --out=-x` re-parsed ["--out", "-x"] for its steps and
    printed bench's 17-line usage block (exit 2)."""
    monkeypatch.chdir(tmp_path)
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    assert run(["demo", f"--out={out}", "--quiet"]) == 0, capsys.readouterr().err
    assert seen == [("bench", out, out), ("verify", out), ("plot", out, out)]
    assert capsys.readouterr() == ("", "")  # --quiet: no info line


def test_a_demo_step_that_cannot_be_parsed_is_one_line_naming_demo(tmp_path, monkeypatch, capsys):
    """Any failure to parse a step's arguments is demo's one usage line, never a usage block
    of the step's command."""
    from convex_attention.cli import bench as cli_bench

    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    add_verify = cli_bench._add_verify

    def verify_needing_more(sub):  # a verify step with an option demo does not give
        add_verify(sub)
        sub.choices["verify"].add_argument("--needed", required=True, help="x")

    monkeypatch.setattr(cli_bench, "_add_verify", verify_needing_more)
    assert run(["demo", "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys, "convex-attention demo: error:", "--needed")
    assert "usage:" not in line and seen == [] and not (tmp_path / "r").exists()


def test_an_output_name_that_is_a_folder_or_a_pipe_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Found by a hostile review: a folder named convergence.csv gave a traceback; with
    --overwrite, bench (and verify) ran the whole work and then failed writing."""
    for name in ("bench.csv", "bench.json", "convergence.csv", "example.npz"):
        out = tmp_path / name.replace(".", "_")
        (out / name).mkdir(parents=True)
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert run(["bench", *FAST, "--out", str(out), *extra]) == 2, (name, extra)
            _one_line(capsys, f"{name} is a folder, not the file {name}")
        assert os.listdir(out) == [name]
        assert run(["demo", "--out", str(out), "--no-progress"]) == 2
        _one_line(capsys, "convex-attention demo: error:", f"{name} is a folder")
    vout = tmp_path / "v"
    (vout / "verify.csv").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        assert run(["verify", "--quick", "--n", "1", "--no-progress", "--out", str(vout), *extra]) == 2
        _one_line(capsys, "verify.csv is a folder, not the file verify.csv")
    assert os.listdir(vout) == ["verify.csv"]
    # plot, and demo's check of its figure folder, with --overwrite (before: drawn, then failed writing, or
    # not checked at all)
    results = tmp_path / "res"
    assert run(["bench", *FAST, "--out", str(results)]) == 0
    (results / "figures" / "violation.png").mkdir(parents=True)
    capsys.readouterr()
    assert run(["plot", str(results), "--overwrite", "--quiet"]) == 2
    _one_line(capsys, "convex-attention plot: error:", "violation.png is a folder")
    assert os.listdir(results / "figures") == ["violation.png"]
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    assert run(["demo", "--out", str(results), "--overwrite", "--quiet"]) == 2
    _one_line(capsys, "convex-attention demo: error:", "violation.png is a folder")
    assert seen == []
    # a named pipe is not opened: the checks do not block on it
    pipes = tmp_path / "pipes"
    pipes.mkdir()
    for name in ("bench.json", "verify.csv"):
        os.mkfifo(pipes / name)
        command = ["verify", "--quick", "--n", "1"] if name == "verify.csv" else ["bench", *FAST, "--resume"]
        assert run([*command, "--no-progress", "--out", str(pipes)]) == 2
        _one_line(capsys, f"{name} is a named pipe")
        os.remove(pipes / name)


def test_bench_resume_refuses_rows_whose_bench_json_cannot_be_read(tmp_path, capsys):
    """Found by a hostile review: with bench.json damaged, --resume only warned, measured under
    other settings beside the old rows, and recorded the new settings for all of them."""
    out = tmp_path / "r"
    assert run(["bench", *FAST, "--out", str(out)]) == 0
    (out / "bench.json").write_text("[1,2")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()
    assert run(["bench", *FAST, "--sizes", "4", "8", "--warmup", "7", "--out", str(out), "--resume"]) == 2
    _one_line(capsys, "bench.json records no readable configuration", "--overwrite")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_verify_refuses_an_empty_dual_solver(tmp_path, capsys):
    """Found by a hostile review: `--dual-solver ''` was silently the built-in solver."""
    out = tmp_path / "v"
    assert run(["verify", "--quick", "--n", "1", "--no-progress", "--dual-solver", "", "--out", str(out)]) == 2
    _one_line(capsys, "argument --dual-solver: an empty value")
    assert not out.exists()


@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_quiet_silences_the_info_lines_of_bench_and_verify_but_not_a_failed_check(tmp_path, monkeypatch, capsys):
    """Found by a hostile review: `bench --quiet` printed its summary table and closing line,
    `verify --quiet` its table and `verify: PATH`, though --quiet means no info lines."""
    from convex_attention.bench import verify as V

    assert run(["bench", *FAST, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out == ""
    assert run(["verify", "--quick", "--n", "1", "--quiet", "--out", str(tmp_path / "v")]) == 0
    assert capsys.readouterr() == ("", "")
    failing = [V.CheckResult(0, "toy", "dual.feasibility", 1.0, 1e-6, False),
               V.CheckResult(0, "toy", "dual.duality_gap", 0.0, 1e-6, True)]
    monkeypatch.setattr(V, "verify_instances", lambda *args, **kwargs: failing)
    assert run(["verify", "--quick", "--n", "1", "--quiet", "--out", str(tmp_path / "w")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines() == [
        f"verify: 1/2 checks passed, 1 failed; every check and its error: {tmp_path / 'w' / 'verify.csv'}"]
    assert run(["verify", "--quick", "--n", "1", "--no-progress", "--out", str(tmp_path / "w"), "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and len(captured.err.strip().splitlines()) == 1  # the table without --quiet


# ----------------------------------------------------------------------------- found by mutation testing


def test_bench_devices_default_to_the_cpu_plus_cuda_when_present(monkeypatch):
    """--device's default (its help): the CPU, plus CUDA when present; a --device given is
    the sweep's alone, with or without --quick."""
    import torch

    from convex_attention.cli import bench as cli_bench

    parser = cli.build_parser()
    for present in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda present=present: present)
        for quick in ([], ["--quick"]):
            assert cli_bench._sweep_config(parser.parse_args(["bench", *quick])).devices == (
                ("cpu", "cuda") if present else ("cpu",))
            assert cli_bench._sweep_config(parser.parse_args(["bench", *quick, "--device", "cpu"])).devices == (
                "cpu",)


def _stub_sweep_and_example(monkeypatch) -> list:
    """No measurement; ``save_example`` records its settings and writes an example.npz that
    holds λ where it was asked to fit them.  Returns the recorded settings."""
    import numpy as np

    from convex_attention.bench import examples, sweep

    written: list = []

    def save(out, **kwargs):
        written.append(kwargs)
        duals = {"fitted_dual0": np.zeros((2, 2))} if kwargs["fit_steps"] else {}
        settings = np.array(json.dumps(examples._full_settings(kwargs)))  # as the real one records them
        np.savez(os.path.join(out, "example.npz"), levels=np.array(2), temperature=np.ones(2),
                 scores0=np.zeros((4, 4)), scores1=np.zeros((2, 2)), settings=settings, **duals)

    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: [])
    monkeypatch.setattr(examples, "save_example", save)
    return written


def test_bench_resume_keeps_the_example_unless_a_learned_dual_sweep_needs_its_duals(tmp_path, monkeypatch, capsys):
    """docs/results_format.md, example.npz: --resume keeps an existing example.npz, except
    where it cannot be read as one, or the resumed sweep adds learned_dual and the file holds
    no λ (written again, said on stderr); a folder without one gets one; λ are fitted only
    for a sweep of learned_dual."""
    written = _stub_sweep_and_example(monkeypatch)
    out = tmp_path / "r"
    argv = ["bench", *FAST, "--out", str(out)]
    assert run(argv) == 0 and len(written) == 1
    assert written[0]["fit_steps"] == 0 and written[0]["amortised_steps"] == 0  # no learned_dual swept
    assert run([*argv, "--resume"]) == 0 and len(written) == 1  # kept
    assert "example.npz" not in capsys.readouterr().err
    learned = [*argv, "--methods", "exact", "learned_dual", "--resume"]
    assert run(learned) == 0 and len(written) == 2 and written[1]["fit_steps"] > 0
    assert "example.npz written again: the resumed sweep adds learned_dual" in capsys.readouterr().err
    assert run(learned) == 0 and len(written) == 2  # it holds the λ now: kept
    (out / "example.npz").unlink()
    assert run([*argv, "--resume"]) == 0 and len(written) == 3  # a resumed folder without one gets one
    (out / "example.npz").write_bytes(b"PK damaged")
    assert run([*argv, "--resume"]) == 0 and len(written) == 4  # damaged: written again, whatever the methods
    assert "example.npz written again: it cannot be read as an example" in capsys.readouterr().err


def test_bench_example_of_a_model_sweep_is_a_lesion_instance(tmp_path, monkeypatch):
    """docs/results_format.md, example.npz: the lesion generator where the sweep's is model."""
    from convex_attention.paper import model_scores

    written = _stub_sweep_and_example(monkeypatch)
    monkeypatch.setattr(model_scores, "check_model_sweep", lambda *args, **kwargs: None)
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not read: the checks that read it are stubbed")
    assert run(["bench", *FAST, "--generator", "model", "--checkpoint", str(checkpoint), "--out",
                str(tmp_path / "r")]) == 0
    assert [w["generator"] for w in written] == ["lesion"]


def test_bench_resume_refuses_other_settings_before_taking_the_folder(tmp_path, capsys):
    """A --resume under other measurement settings is a usage error before any work: named
    as such even while another run holds the folder (not 'in use', which --wait would wait
    out only to be refused)."""
    from convex_attention.bench import results as R
    from convex_attention.bench.config import SweepConfig

    out = tmp_path / "r"
    writer = R.ResultsWriter(str(out), SweepConfig(factor=2), "cpu", resume=False, log=lambda m: None)
    writer.commit({"cell": 0, "reason": "", "backend": "", "dual_kind": "", "structure": "chain",
                   "generator": "lesion", "scale": 1.0, "dims": 2, "size": 4, "levels": 2, "batch": 2,
                   "temperature": 1.0, "dtype": "float32", "device": "cpu", "seed": 0, "method": "exact",
                   "status": "ok"})
    holder = hold_lock(out, 60)
    try:
        assert run(["bench", *FAST, "--factor", "4", "--resume", "--out", str(out)]) == 2
    finally:
        holder.kill()
        holder.wait()
    line = _one_line(capsys, "--factor 2, this run asks for --factor 4")
    assert "in use" not in line


def _stub_checks(monkeypatch, statuses=("pass",)) -> list:
    """No instance is drawn nor checked: ``random_instances`` records how it was called and
    ``verify_instances`` records its options and returns a result of each of ``statuses``.
    Returns the calls of both."""
    from convex_attention.bench import verify as V

    calls: list = []

    def instances(n, seed=0, quick=False):
        calls.append((n, seed, quick))
        return []

    results = [V.CheckResult(i, "toy", f"dual.check{i}", 0.0, 1e-6, status == "pass", status=status)
               for i, status in enumerate(statuses)]
    monkeypatch.setattr(V, "random_instances", instances)
    monkeypatch.setattr(V, "verify_instances", lambda instances, **kwargs: calls.append(kwargs) or results)
    return calls


def test_verify_draws_the_instances_of_its_seed_and_number(tmp_path, monkeypatch):
    """--seed (its help: the seed of the random instances) and --n pick the instances, with
    --quick or without; --quick alone draws its own number of them."""
    from convex_attention.bench import verify as V
    from convex_attention.bench.config import VerifyConfig

    calls = _stub_checks(monkeypatch)
    for i, argv in enumerate((["--seed", "5", "--n", "3"], ["--quick", "--seed", "5", "--n", "3"], ["--quick"], [])):
        assert run(["verify", *argv, "--quiet", "--out", str(tmp_path / str(i))]) == 0
    drawn = [call for call in calls if isinstance(call, tuple)]
    assert drawn == [(3, 5, False), (3, 5, True), (V.QUICK_INSTANCES, VerifyConfig().seed, True),
                     (VerifyConfig().n, VerifyConfig().seed, False)]


def test_verify_that_cannot_write_its_csv_exits_1_saying_so(tmp_path, monkeypatch, capsys):
    """Every check passed, but verify.csv could not be written: not a success (exit 1), one
    line on stderr naming the file, even with --quiet."""
    from convex_attention.bench import verify as V

    _stub_checks(monkeypatch)

    def unwritable(results, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(V, "write_csv", unwritable)
    out = tmp_path / "v"
    assert run(["verify", "--quick", "--quiet", "--out", str(out)]) == 1
    _one_line(capsys, f"cannot write {out / 'verify.csv'}", "Permission denied")


@pytest.mark.parametrize("statuses, counts", [
    (("pass", "info", "fail", "error", "skipped"), "1/4 checks passed, 1 failed, 2 did not run"),
    (("info", "pass", "info", "error"), "1/2 checks passed, 1 did not run"),
    (("fail", "info", "fail", "pass"), "1/3 checks passed, 2 failed"),
    (("info",), "no check ran"),
])
def test_verify_failure_line_counts_the_checks_not_the_measurements(tmp_path, monkeypatch, capsys, statuses,
                                                                     counts):
    """docs/user_guide.md §2: exit 1 when a check fails or does not run, and one line on stderr
    says how many (info rows are measurements reported beside the checks, not checks)."""
    _stub_checks(monkeypatch, statuses)
    out = tmp_path / "v"
    assert run(["verify", "--quick", "--quiet", "--out", str(out)]) == 1
    assert capsys.readouterr() == ("", f"verify: {counts}; every check and its error: {out / 'verify.csv'}\n")


@pytest.mark.parametrize("name", ["violation.pdf", ".convex-attention-figures.json"])
def test_demo_refuses_a_folder_named_like_a_file_plot_writes(tmp_path, monkeypatch, capsys, name):
    """Any file plot may write into the figure folder (a figure's PNG or PDF, its record of
    them) that is a folder there is refused before any work, --overwrite or not."""
    from convex_attention.bench.plots import MANIFEST

    assert name in (MANIFEST, "violation.pdf")
    out = tmp_path / "r"
    (out / "figures" / name).mkdir(parents=True)
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    assert run(["demo", "--out", str(out), "--overwrite", "--quiet"]) == 2
    _one_line(capsys, "convex-attention demo: error:", f"{name} is a folder")
    assert seen == [] and os.listdir(out / "figures") == [name]


def test_demo_replaces_the_users_figures_only_with_overwrite(tmp_path, monkeypatch, capsys):
    """demo --overwrite's help: without it a folder holding files of a figure's name that plot
    did not write is refused (exit 2) before any work; with it the steps run."""
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "violation.png").write_bytes(b"the user's")
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    assert run(["demo", "--out", str(out), "--quiet"]) == 2
    _one_line(capsys, "convex-attention demo: error:", "violation.png", "--overwrite")
    assert seen == [] and (out / "figures" / "violation.png").read_bytes() == b"the user's"
    assert run(["demo", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert [step for step, *_ in seen] == ["bench", "verify", "plot"]


@pytest.mark.parametrize("options", [[], ["--quiet"], ["--no-progress", "--overwrite"]])
def test_demo_steps_are_quick_and_take_its_output_options(tmp_path, monkeypatch, capsys, options):
    """demo is bench --quick (1 torch thread), verify --quick and plot (its help), each given
    demo's --quiet, --no-progress and --overwrite."""
    from convex_attention.bench.config import quick_sweep
    from convex_attention.cli import bench as cli_bench

    steps: dict = {}
    monkeypatch.setattr(cli_bench, "_run_bench", lambda config, args, out, **kw: steps.update(bench=(config, args)))
    monkeypatch.setattr(cli_bench, "_run_verify", lambda args, *rest: steps.update(verify=args) or 0)
    monkeypatch.setattr(cli_bench, "_run_plot", lambda args, *rest: steps.update(plot=args) or 0)
    assert run(["demo", "--out", str(tmp_path / "r"), *options]) == 0
    (config, bench_args), verify_args, plot_args = steps["bench"], steps["verify"], steps["plot"]
    assert bench_args.quick and verify_args.quick
    assert (config.sizes, config.levels, config.repeats) == (quick_sweep().sizes, quick_sweep().levels,
                                                              quick_sweep().repeats)
    for args in (bench_args, verify_args, plot_args):
        assert (args.quiet, args.no_progress, args.overwrite) == tuple(
            option in options for option in ("--quiet", "--no-progress", "--overwrite"))
    assert config.threads == 1 and ("sweep cells, 1 torch thread (" in capsys.readouterr().out) != (
        "--quiet" in options)


def test_out_defaults_to_results_as_the_help_says():
    """bench, verify and demo: --out's help says (default: results)."""
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("bench", "verify", "demo"):
        out = next(a for a in sub[command]._actions if "--out" in a.option_strings)
        assert "(default: results)" in out.help and parser.parse_args([command]).out == "results", command


def test_the_help_gives_the_exit_status_of_a_refused_folder_and_of_verify():
    """A refused folder is a usage error (exit 2), and verify exits 0 only when every check ran
    and passed: the help says so."""
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    def help_of(command, option):
        return " ".join(next(a.help for a in sub[command]._actions if option in a.option_strings).split())

    assert "refused (exit 2)" in help_of("verify", "--overwrite")
    assert "else exit 2" in help_of("bench", "--resume")
    assert "refused, exit 2" in help_of("demo", "--overwrite")
    assert "0 only when every check ran and passed; 1 when a check failed or did not run" in " ".join(
        sub["verify"].description.split())


def test_bench_resume_of_rows_it_cannot_read_names_overwrite(tmp_path, monkeypatch, capsys):
    """Rows whose format cannot be read (found under the lock) cannot be resumed: exit 2, one
    line saying to rerun with --overwrite instead of --resume."""
    from convex_attention.bench import sweep
    from convex_attention.io.tables import ResultsFormatError

    def unreadable(*args, **kwargs):
        raise ResultsFormatError("bench.csv: a column of another format")

    monkeypatch.setattr(sweep, "run_sweep", unreadable)
    assert run(["bench", *FAST, "--out", str(tmp_path / "r"), "--resume"]) == 2
    _one_line(capsys, "a column of another format", "rerun with --overwrite instead of --resume")


def test_bench_summary_gives_each_methods_rows_by_status_and_the_median_violation_of_its_ok_rows(
        tmp_path, monkeypatch, capsys):
    """bench's closing table: a line per method (per backend for cvxpylayers), its rows by
    status and the median violation of its ok rows (a NaN, or an error row's, is no
    measurement); the structure is named only where the sweep holds several."""
    from convex_attention.bench import sweep

    _stub_sweep_and_example(monkeypatch)

    def row(method, status, violation, backend="", structure="chain"):
        return {"method": method, "status": status, "violation_mean": violation, "backend": backend,
                "dual_kind": "", "structure": structure}

    rows = [row("exact", "ok", "1e-3"), row("exact", "ok", "8e-3"), row("exact", "ok", "3e-3"),
            row("exact", "ok", "nan"), row("exact", "error", "1.0"), row("exact", "skipped", ""),
            row("cvxpylayers", "ok", "2e-6", "moreau"), row("cvxpylayers", "ok", "4e-6", "diffcp-scs")]
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: rows)
    assert run(["bench", *FAST, "--out", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert table == {"exact": ["4", "1", "1", "3.00e-03"], "cvxpylayers[moreau]": ["1", "0", "0", "2.00e-06"],
                     "cvxpylayers[diffcp-scs]": ["1", "0", "0", "4.00e-06"]}, lines
    rows.append(row("exact", "ok", "5e-3", structure="star"))
    assert run(["bench", *FAST, "--out", str(tmp_path / "b")]) == 0
    labels = [line.rsplit(maxsplit=4)[0] for line in capsys.readouterr().out.splitlines()[1:4]]
    assert labels == ["chain: exact", "chain: cvxpylayers[moreau]", "chain: cvxpylayers[diffcp-scs]"]


@pytest.mark.slow  # end to end or a boundary of a path lighter tests take (fast suite < 1 min)
def test_verify_starts_the_users_solver_after_importing_what_it_runs_and_stops_it(tmp_path, monkeypatch):
    """docs/user_guide.md §2: everything the verification runs (each backend's packages
    included) is imported before the solver's code runs; the solver is given --timeout, the
    checks the solver and --backends, and its process is stopped after the run."""
    import importlib

    from convex_attention.bench import isolation
    from convex_attention.cvx import get_backend

    backend = available_backends()[0]
    imported: list = []
    events: list = []
    import_module = importlib.import_module
    # the stand-in takes import_module's whole signature: a module first imported during this test (pydantic, under
    # moreau) keeps it as its own import_module, and calls it with package=, after the test
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *args, **kwargs: imported.append(name) or import_module(name, *args, **kwargs))

    class Solver:
        def __init__(self, spec, timeout):
            events.append(("made", spec, timeout))

        def start(self):
            events.append(("started", set(get_backend(backend).modules) <= set(imported)))

        def close(self):
            events.append(("stopped",))

    monkeypatch.setattr(isolation, "IsolatedSolver", Solver)
    calls = _stub_checks(monkeypatch)
    assert run(["verify", "--quick", "--quiet", "--dual-solver", "mine.py:solve", "--timeout", "7", "--backends",
                backend, "--out", str(tmp_path / "v")]) == 0
    # stopped once the checks are done, before the table and verify.csv (ca_rev149), and again (a no-op) at the end
    assert events[:3] == [("made", "mine.py:solve", 7.0), ("started", True), ("stopped",)]
    assert set(events[3:]) <= {("stopped",)}
    checked = calls[-1]
    assert isinstance(checked["dual_solver"], Solver) and checked["backends"] == [backend]


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "argument --n: "),
    (["--timeout", "0"], "argument --timeout: "),
    (["--dual-solver", " \t"], "argument --dual-solver: an empty value"),
])
def test_verify_usage_errors_name_the_option_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "v"
    assert run(["verify", "--quick", "--no-progress", *argv, "--out", str(out)]) == 2
    _one_line(capsys, "convex-attention verify: error: " + message)
    assert not out.exists()


def test_plot_of_a_file_is_a_usage_error_naming_it(tmp_path, capsys):
    results = tmp_path / "bench.csv"
    results.write_text("cell,status\n")
    assert run(["plot", str(results)]) == 2
    _one_line(capsys, f"results {str(results)!r} is a file; give the folder")


def _stub_plot_results(monkeypatch, written, notes=(), error=None) -> list:
    """plot draws nothing itself: ``plot_results`` logs ``notes``, then raises ``error`` or
    returns the PNGs of ``written``.  Returns the ``overwrite`` of each call."""
    from convex_attention.bench import plots

    calls: list = []

    def plot_results(results, out, log, overwrite):
        calls.append(overwrite)
        for note in notes:
            log(note)
        if error is not None:
            raise error
        return [os.path.join(out, name + ".png") for name in written]

    monkeypatch.setattr(plots, "plot_results", plot_results)
    return calls


def test_plot_passes_overwrite_and_names_what_it_skipped_on_stderr_even_with_quiet(tmp_path, monkeypatch, capsys):
    """plot's help: --overwrite lets the figures replace files plot did not write (never
    without it); what was skipped goes to stderr, even with --quiet (the figures written are
    info lines)."""
    (tmp_path / "bench.csv").write_text("not read: plot_results is stubbed\n")
    calls = _stub_plot_results(monkeypatch, ["violation"], notes=["speed-up: no cvxpylayers rows"])
    assert run(["plot", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "plot: speed-up: no cvxpylayers rows\n")
    assert run(["plot", str(tmp_path), "--overwrite"]) == 0
    assert capsys.readouterr().out == f"plot: {tmp_path / 'figures' / 'violation.png'} (+ .pdf)\n"
    assert calls == [False, True]


def test_a_plot_that_writes_no_figure_exits_2_and_removes_the_folder_it_made(tmp_path, monkeypatch, capsys):
    """Nothing drawn, or a figure that cannot be written: one line, exit 2, and the figure
    folder the command made is removed (one that was there is kept)."""
    results = tmp_path / "r"
    results.mkdir()
    (results / "bench.csv").write_text("not read: plot_results is stubbed\n")
    _stub_plot_results(monkeypatch, [], notes=["no ok rows"])
    assert run(["plot", str(results)]) == 2
    _one_line(capsys, f"convex-attention plot: error: nothing to plot in {results}: no ok rows")
    assert os.listdir(results) == ["bench.csv"]
    _stub_plot_results(monkeypatch, [], error=PermissionError(13, "Permission denied"))
    for out, kept in ((tmp_path / "made", False), (tmp_path / "there", True)):
        if kept:
            out.mkdir()
        assert run(["plot", str(results), "--out", str(out)]) == 2
        _one_line(capsys, f"--out {out}: a figure cannot be written there (Permission denied)")
        assert out.exists() == kept


@pytest.mark.slow  # a process of its own holds the folder's lock
def test_a_demo_into_a_busy_folder_exits_2_naming_the_owner(tmp_path, monkeypatch, capsys):
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    _refused_in_a_busy_folder(["demo", "--no-progress"], tmp_path / "r", "bench.csv", capsys)
    assert seen == []


def test_the_commands_that_write_a_results_folder_can_wait_for_its_lock():
    """bench, verify and demo take --wait (a folder in use is refused without it)."""
    parser = cli.build_parser()
    for command in ("bench", "verify", "demo"):
        assert parser.parse_args([command, "--wait"]).wait is True, command


def test_verify_checks_its_folder_again_under_the_lock(tmp_path, monkeypatch, capsys):
    """A verify.csv written by another run between verify's first check and its taking the
    folder's lock is refused as well (exit 2), never replaced."""
    from convex_attention.cli import _common

    _stub_checks(monkeypatch)
    out = tmp_path / "v"
    check_out = _common.check_out

    def meanwhile(folder):
        check_out(folder)
        (out / "verify.csv").write_text("another run's\n")

    monkeypatch.setattr(_common, "check_out", meanwhile)  # verify makes its folder through _common.making_out
    assert run(["verify", "--quick", "--quiet", "--out", str(out)]) == 2
    _one_line(capsys, "already holds verify.csv from an earlier run", "--overwrite")
    assert (out / "verify.csv").read_text() == "another run's\n"


# ----------------------------------------------------------------------------- review 34

def test_rev34_an_interrupted_overwrite_leaves_no_earlier_example_for_resume_to_keep(tmp_path, monkeypatch):
    import numpy as np

    from convex_attention.bench import sweep
    from convex_attention.bench.generators import generate
    from convex_attention.hierarchy import Hierarchy

    out = str(tmp_path / "r")
    assert run(["bench", *FAST, "--out", out]) == 0  # seed 0: its example is drawn at seed 100
    real = sweep.run_sweep

    def interrupted(*args, **kwargs):  # Ctrl-C once the rows are committed, before the example is written
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    assert run(["bench", *FAST, "--seed", "1", "--out", out, "--overwrite"]) == 130
    monkeypatch.setattr(sweep, "run_sweep", real)
    assert run(["bench", *FAST, "--seed", "1", "--out", out, "--resume"]) == 0
    h = Hierarchy.grid([(32, 32), (16, 16)])
    with np.load(os.path.join(out, "example.npz"), allow_pickle=False) as z:
        assert np.array_equal(z["scores0"], generate("lesion", h, 1, seed=101, scale=1.0)[0][0].numpy()), \
            "example.npz is still the --seed 0 run's instance"


# ----------------------------------------------------------------------------- review 42

def test_rev42_plot_into_a_figure_folder_another_run_holds_exits_2_naming_the_owner(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    (results / "figures").mkdir(parents=True)
    (results / "bench.csv").write_text("not read: plot_results is stubbed\n")
    calls = _stub_plot_results(monkeypatch, ["violation"])
    holder = hold_lock(results / "figures", 60)  # another plot drawing into the same folder
    try:
        assert run(["plot", str(results), "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"in use by pid {holder.pid}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert calls == [], "plot drew while another run held the folder"


# ----------------------------------------------------------------------------- review ca_rev75

def test_ca_rev75_plot_refuses_an_empty_out(tmp_path, capsys, monkeypatch):
    from convex_attention.bench import plots

    def drawn(*args, **kwargs):
        raise AssertionError("plot drew figures for --out ''")

    monkeypatch.setattr(plots, "plot_results", drawn)
    (tmp_path / "bench.csv").write_text("not read: plot_results is stubbed\n")
    assert run(["plot", str(tmp_path), "--out", "", "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "figures").exists()


def test_ca_rev75_demo_refuses_a_figures_file_before_the_bench_step(tmp_path, capsys, monkeypatch):
    from convex_attention.cli import bench as bench_cli

    def measured(*args, **kwargs):
        raise AssertionError("demo's bench step started")

    monkeypatch.setattr(bench_cli, "_run_bench", measured)
    (tmp_path / "figures").write_text("mine")
    assert run(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    assert (tmp_path / "figures").read_text() == "mine" and "figures" in capsys.readouterr().err


def test_ca_rev75_verify_refuses_timeout_without_a_dual_solver(tmp_path, capsys, monkeypatch):
    from convex_attention.bench import verify

    def checked(*args, **kwargs):
        raise AssertionError("verify ran with an option it never reads")

    monkeypatch.setattr(verify, "verify_instances", checked)
    monkeypatch.setattr(verify, "random_instances", lambda *a, **k: [])
    out = tmp_path / "v"
    assert run(["verify", "--quick", "--timeout", "5", "--out", str(out), "--quiet"]) == 2
    assert "--timeout" in capsys.readouterr().err and not out.exists()


# ---- ca_rev114 (strict xfail: review of 0646abe)

def _ca_rev114_stub_bench(monkeypatch) -> list:
    """bench measures nothing: ``_run_bench`` records that the checks let the run start."""
    from convex_attention.cli import bench as bench_cli

    started: list = []
    monkeypatch.setattr(bench_cli, "_run_bench", lambda *args, **kwargs: started.append(args) or 0)
    return started


def test_ca_rev114_factor_without_the_chain_is_refused(tmp_path, capsys, monkeypatch):
    """Run: bench --methods exact --structure star --sizes 4 --batch 2 --factor 3 (and the same with
    --structure axial --methods softmax --sizes 8 --factor 4). Expected: exit 2 before any work, as
    --levels is refused without the chain (--factor shapes the chain alone: structures.structure_graph
    passes it to the chain's grids only). Observed: exit 0, 1 row in bench.csv, bench.json's config
    records factor 3 for rows that never read it, and a later --resume at the default --factor 2 on the
    same star rows is refused as 'measured with --factor 3'."""
    started = _ca_rev114_stub_bench(monkeypatch)
    out = tmp_path / "r"
    argv = ["bench", "--methods", "exact", "--structure", "star", "--sizes", "4", "--batch", "2", "--repeats", "2",
            "--warmup", "1", "--no-progress", "--device", "cpu", "--factor", "3", "--out", str(out)]
    assert run(argv) == 2, "--factor 3 was accepted for a star-only sweep"
    assert "--factor" in capsys.readouterr().err and started == [] and not out.exists()


@pytest.mark.skipif(not {"moreau", "diffcp-clarabel"} <= set(available_backends()),
                    reason="needs moreau and diffcp-clarabel")
def test_ca_rev114_a_batch_setting_of_a_backend_not_swept_is_refused(tmp_path, capsys, monkeypatch):
    """Run: bench --methods exact cvxpylayers --cvx-backends moreau --diffcp-batch 1 (sizes 4, batch 2),
    and --cvx-backends diffcp-clarabel --cvx-batch 1. Expected: exit 2 before any work, as --cvx-batch
    is refused without cvxpylayers (_check_read): no row reads the option. Observed: exit 0 both times;
    the moreau row was timed on 2 samples (--cvx-batch's 16, capped by the batch), the diffcp-clarabel
    row on 2 (--diffcp-batch's default), and bench.json records diffcp_batch 1 / cvx_batch 1 as given."""
    started = _ca_rev114_stub_bench(monkeypatch)
    common = ["bench", "--methods", "exact", "cvxpylayers", "--sizes", "4", "--levels", "2", "--batch", "2",
              "--repeats", "2", "--warmup", "1", "--no-progress", "--device", "cpu"]
    codes = {option: run([*common, "--cvx-backends", backend, option, "1", "--out", str(tmp_path / backend)])
             for backend, option in (("moreau", "--diffcp-batch"), ("diffcp-clarabel", "--cvx-batch"))}
    capsys.readouterr()
    assert codes == {"--diffcp-batch": 2, "--cvx-batch": 2}, codes
    assert started == []


def test_ca_rev114_a_bench_that_cannot_write_its_rows_fails_in_one_line(tmp_path, capsys, monkeypatch):
    """Run: bench into a folder that stops taking writes once the run has started (the disk fills up;
    reproduced without a stub by `rm -rf OUT` 2 s into a 3 s sweep). Expected: one line on stderr naming
    the file and the reason, exit 1, as verify does ('verify: cannot write ...', exit 1). Observed: the
    OSError (ENOSPC here; FileNotFoundError for the removed folder) escapes cli.main: a 30-line
    traceback, exit 1 from the interpreter."""
    import errno

    from convex_attention.bench import results

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "atomic_csv", full)
    try:
        code = run(["bench", *FAST, "--out", str(tmp_path / "r")])
    except OSError as err:
        code = f"uncaught {err!r}"
    err = capsys.readouterr().err
    assert code == 1, code
    assert "No space left on device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---- ca_rev116 (strict xfail: review of 8e6f256)

@pytest.mark.slow  # end-to-end: bench runs (CI; the fast suite stays under a minute)
@pytest.mark.skipif(not {"moreau", "diffcp-clarabel"} <= set(available_backends()),
                    reason="needs moreau and diffcp-clarabel")
def test_ca_rev116_a_resume_with_other_backends_is_not_refused_both_ways(tmp_path, capsys, monkeypatch):
    """Run: bench --methods cvxpylayers --cvx-backends diffcp-clarabel --diffcp-batch 1 (sizes 4, levels 2,
    batch 2) into OUT (1 row), then bench ... --cvx-backends moreau --resume, then the same with
    --diffcp-batch 1 as the first refusal advises. Expected: one of the two resumes starts (a moreau row
    does not read --diffcp-batch: the resume rule should skip it, as it skips --factor for a run without
    the chain, and bench.json keep the stored 1). Observed: both exit 2: the first '--resume: the rows in
    OUT were measured with --diffcp-batch 1, this run asks for --diffcp-batch 2 ... rerun with
    --diffcp-batch 1' (results.run_reads_setting ignores the run's backends), the second '--diffcp-batch
    applies to diffcp-clarabel or diffcp-scs only, and --cvx-backends moreau leaves it out' (_check_read);
    at 1b99f61 the second started."""
    out = str(tmp_path / "r")
    common = ["bench", "--methods", "cvxpylayers", "--sizes", "4", "--levels", "2", "--batch", "2", "--repeats", "2",
              "--warmup", "1", "--no-progress", "--quiet", "--device", "cpu", "--budget", "30", "--out", out]
    assert run([*common, "--cvx-backends", "diffcp-clarabel", "--diffcp-batch", "1"]) == 0
    started = _ca_rev114_stub_bench(monkeypatch)
    codes = [run([*common, "--cvx-backends", "moreau", "--resume"]),
             run([*common, "--cvx-backends", "moreau", "--diffcp-batch", "1", "--resume"])]
    capsys.readouterr()
    assert 0 in codes and len(started) == 1, codes


def test_ca_rev116_demo_stops_when_its_bench_step_cannot_write(tmp_path, capsys, monkeypatch):
    """Run: demo --out OUT with the sweep raising OSError(ENOSPC, 'No space left on device', OUT/bench.csv)
    (bench.sweep.run_sweep stubbed; verify and plot stubbed to record that they ran). Expected: demo
    stops at its first step, exit 1, one line (as bench itself now does; at 1b99f61 the OSError escaped
    demo, exit 1). Observed: _run_bench prints 'bench: stopped, ... --resume continues from the rows OUT
    holds' (demo has no --resume) and returns 1, which cmd_demo drops: steps 2 and 3 run, 'demo: done',
    exit 0."""
    import errno

    from convex_attention.bench import sweep
    from convex_attention.cli import bench as cli_bench

    out = tmp_path / "r"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "bench.csv"))

    ran: list = []
    monkeypatch.setattr(sweep, "run_sweep", full)
    monkeypatch.setattr(cli_bench, "_run_verify", lambda *args, **kwargs: ran.append("verify") or 0)
    monkeypatch.setattr(cli_bench, "_run_plot", lambda *args, **kwargs: ran.append("plot") or 0)
    code = run(["demo", "--out", str(out), "--no-progress", "--quiet"])
    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert (code, ran) == (1, []), (code, ran)


# ---- ca_rev121 (strict xfail: review of 96d96df)

def test_ca_rev121_the_top_level_resume_example_continues_the_sweep_above_it(tmp_path, capsys, monkeypatch):
    """Run: `convex-attention --help` shows 'bench --sizes 32 64 128 ... --out results/big --budget 120' and,
    next, 'bench --out results/big --resume # continue an interrupted sweep'. Ran in a fresh venv: bench
    --methods exact cvxpylayers --cvx-backends diffcp-clarabel --sizes 4 --levels 2 --batch 2 --budget 120
    --out big, then bench --out big --resume. Expected: the second continues the sweep (as the example
    says). Observed: exit 2, '--resume: the rows in big were measured with --budget 120.0, this run asks for
    --budget 60.0 ...' (and the default grid, not the interrupted one, is what it would measure): the
    example lacks the first run's options (cli/bench.py EXAMPLES; README's own line says '--quick again')."""
    from convex_attention.cli import bench as cli_bench
    from convex_attention.cli.bench import EXAMPLES

    lines = [line.split("#")[0].split() for line in "\n".join(EXAMPLES).replace("\\\n", " ").splitlines()]
    first = next(words for words in lines if "--budget" in words and "results/big" in words)
    resume = next(words for words in lines if "--resume" in words and "results/big" in words)
    out = str(tmp_path / "big")
    budget = first[first.index("--budget") + 1]
    assert run(["bench", "--methods", "cvxpylayers", "--cvx-backends", "diffcp-clarabel", "--sizes", "4",
                "--levels", "2", "--batch", "2", "--budget", budget, "--out", out, "--quiet"]) == 0
    started: list = []
    monkeypatch.setattr(cli_bench, "_run_bench", lambda *args, **kwargs: started.append(args) or 0)
    argv = [out if word == "results/big" else word for word in resume[1:]]
    code = run([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert (code, len(started)) == (0, 1), (code, err)


# ---- ca_rev127 (strict xfail: review of eb4ed2c)

def test_ca_rev127_a_resume_without_learned_dual_keeps_the_examples_duals(tmp_path, monkeypatch, capsys):
    """docs/results_format.md, example.npz: --resume keeps an existing example.npz except where it cannot
    be read, where the resumed sweep has learned_dual and the file holds no λ, or where it is another
    run's instance; "What --resume may change": a folder with learned_dual rows may be widened with
    --methods exact alone, and bench.json keeps the training settings those rows were measured with.
    Observed (real runs: bench --methods ... learned_dual --fit-steps 5 ..., then bench --methods softmax
    --sizes 16 --resume): 'bench: example.npz written again: it is the instance of other settings
    (amortised_steps 5, not 0, fit_instances 4, not 128, fit_steps 5, not 0)'; the λ are gone, and plot's
    attention-map footer says 'the example holds no λ (its sweep had no learned_dual)' of a folder whose
    learned_dual rows are still there."""
    written = _stub_sweep_and_example(monkeypatch)
    out = tmp_path / "r"
    first = ["bench", *FAST, "--methods", "exact", "learned_dual", "--fit-steps", "3", "--out", str(out)]
    assert run(first) == 0 and len(written) == 1 and written[0]["fit_steps"] == 3
    assert run(["bench", *FAST, "--sizes", "8", "--out", str(out), "--resume"]) == 0  # the grid grows
    err = capsys.readouterr().err
    assert len(written) == 1, err  # the example (and its fitted λ) kept


# ---- ca_rev138 (strict xfail: review of 8f7bdd7)

def test_ca_rev138_verify_into_a_held_folder_is_refused_before_the_solvers_code_runs(tmp_path, capsys, monkeypatch):
    """Run: verify --quick --n 1 --backends moreau --dual-solver solver.py:solve_duals --out OUT while another
    run holds OUT/results.lock (solver.py writes a marker file when imported). Expected: exit 2 naming the
    holder before any work, as bench, plot and data check refuse a held folder (and as an --out that is a
    file is refused 'before your module's code runs', docs/user_guide.md §2). Observed: exit 2 only after
    5 s: the warm-up verification ran and the solver's module was imported in its process (the marker
    exists); cmd_verify takes the lock in _run_verify, after _start_solver."""
    from convex_attention.bench.isolation import IsolatedSolver
    from convex_attention.cli import bench as cli_bench

    ran: list = []
    monkeypatch.setattr(cli_bench, "_import_the_verifier", lambda backends: ran.append("warm-up") or [])
    monkeypatch.setattr(IsolatedSolver, "start", lambda self: ran.append("solver imported"))
    solver = tmp_path / "solver.py"
    solver.write_text("def solve_duals(scores, h, temps):\n    return []\n")
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out, 60)
    try:
        code = run(["verify", "--quick", "--n", "1", "--no-progress", "--dual-solver", f"{solver}:solve_duals",
                    "--out", str(out)])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2 and f"pid {holder.pid}" in err, (code, err)
    assert ran == [], ran


# ---- ca_rev171 (review of 230b1fc; its strict xfails now pass)

class _ClosedStdout:
    """stdout whose reader is gone (`convex-attention ... | head -0`): every write is a broken pipe."""

    encoding = "utf-8"

    def write(self, text):
        import errno

        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        pass

    def isatty(self):
        return False


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_ca_rev171_a_closed_stdout_is_no_traceback_and_keeps_the_results(command, tmp_path, capsys, monkeypatch):
    """Run: convex-attention verify --quick --n 1 --no-progress --out OUT | head -0 (stdout closed; and the
    same with bench --quick --sizes 4 --levels 2 --methods softmax). Expected: no traceback (at most one line on
    stderr), and the results the run measured are written: OUT/verify.csv, OUT/bench.csv. Observed: the first
    info line (verify's table, bench's summary) raises BrokenPipeError out of cli.main: a 17-line traceback,
    exit 1; verify writes its table before verify.csv, so the finished checks are lost (no OUT at all)."""
    from convex_attention.bench import verify as V

    passing = [V.CheckResult(0, "toy", "dual.feasibility", 0.0, 1e-6, True)]
    monkeypatch.setattr(V, "verify_instances", lambda *args, **kwargs: passing)
    out = tmp_path / "r"
    argv = (["verify", "--quick", "--n", "1", "--no-progress"] if command == "verify" else ["bench", *FAST])
    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    try:
        code = run([*argv, "--out", str(out)])
    except BrokenPipeError as err:
        code = f"uncaught {err!r}"
    err = capsys.readouterr().err
    assert isinstance(code, int) and "Traceback" not in err and len(err.strip().splitlines()) <= 1, (code, err)
    assert (out / ("verify.csv" if command == "verify" else "bench.csv")).is_file()


# ---- ca_rev172 (review of d03eab2^..HEAD; its strict xfails now pass)

def test_ca_rev172_a_command_with_no_stdout_runs_and_keeps_its_results(tmp_path, capsys, monkeypatch):
    """Run: convex-attention verify --quick --n 1 --no-progress --out OUT >&- (fd 1 closed at start: Python sets
    sys.stdout to None; cron, daemons, `nohup ... >&-`). Expected: as before d17439c, the output is dropped (print
    to a None stdout does nothing) and OUT/verify.csv is written, exit 0. Observed: cli.main wraps the None in
    _DroppedOnceClosed, whose write calls None.write: AttributeError ('NoneType' object has no attribute 'write')
    out of cli.main, a traceback, exit 1, and no OUT at all (the same in a real subprocess with >&-)."""
    from convex_attention.bench import verify as V

    passing = [V.CheckResult(0, "toy", "dual.feasibility", 0.0, 1e-6, True)]
    monkeypatch.setattr(V, "verify_instances", lambda *args, **kwargs: passing)
    out = tmp_path / "r"
    monkeypatch.setattr(sys, "stdout", None)
    try:
        code = run(["verify", "--quick", "--n", "1", "--no-progress", "--out", str(out)])
    except AttributeError as err:
        code = f"uncaught {err!r}"
    assert code == 0 and (out / "verify.csv").is_file(), code


def test_verify_says_which_kinds_a_small_n_leaves_unchecked(tmp_path, monkeypatch, capsys):
    """The instances cycle through the kinds: --n 6 draws the six chains and none of the graph
    families, and exited 0 without a word while the help said "random graphs of every structure
    family" (ca_rev178).  The run says which kinds it did not check; --n's help says how many
    draws each."""
    from convex_attention.bench import verify as V
    from convex_attention.bench.config import VerifyConfig, declared

    _stub_checks(monkeypatch)
    assert run(["verify", "--n", "6", "--out", str(tmp_path / "six")]) == 0
    said = capsys.readouterr().out
    assert "not checked: star, axial, grid_regions, mixed" in said and f"--n {len(V.KINDS)} or more" in said
    assert run(["verify", "--n", str(len(V.KINDS)), "--out", str(tmp_path / "all")]) == 0
    assert "not checked" not in capsys.readouterr().out
    assert len(V.KINDS) == 10 and "ten kinds" in declared(VerifyConfig)["n"].help


# ---- ca_rev194 (review of 69a8df0; its strict xfails now pass)

def _ca_rev194_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ca_rev194_an_interrupted_demo_that_wrote_nothing_leaves_no_empty_out(tmp_path, capsys, monkeypatch):
    """Run: timeout -s INT 2 convex-attention demo --out NEW/sub (NEW absent), stopped in its first bench cell.
    Expected: exit 130, one line, and no folder left, as bench and verify remove the --out they made when a
    run stops before writing (cli._common.making_out: 'a run stopped before it wrote anything (Ctrl-C) leaves
    no empty --out (verify's did: a review)'). Observed: exit 130, one line, and the empty NEW/ and NEW/sub/
    stay: cmd_demo makes the folder with check_out(args.out), not making_out, and nothing removes it."""
    from convex_attention.cli import bench as B

    monkeypatch.setattr(B, "_run_bench", _ca_rev194_interrupt)
    new = tmp_path / "new"
    code = run(["demo", "--quiet", "--out", str(new / "sub")])
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1, (code, err)
    assert not new.exists(), sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


# ---- demo's plot step after the work (rev194's near-miss)

def test_a_demo_whose_plot_step_is_refused_after_the_work_fails_with_exit_1_keeping_the_results(
        tmp_path, monkeypatch, capsys):
    """A refusal at the plot step comes after bench's and verify's minutes of work: a failed step
    (exit 1, one line saying what was kept and how to draw the figures), not a usage error
    (exit 2, as if nothing had run)."""
    code, err, out, seen = _demo_with_a_refused_plot_step(tmp_path, monkeypatch, capsys)
    assert code == 1, (code, err)
    assert len(err.splitlines()) == 1 and "every row failed" in err and f"convex-attention plot {out}" in err, err
    assert [s[0] for s in seen] == ["bench", "verify"]


def _demo_with_a_refused_plot_step(tmp_path, monkeypatch, capsys) -> tuple:
    """demo --out tmp_path/r, its bench and verify steps stubbed, its plot step refused ('nothing to plot'):
    (exit code, stderr, OUT, the steps that ran)."""
    from convex_attention.cli import _common
    from convex_attention.cli import bench as cli_bench

    seen: list = []
    _stub_demo_steps(monkeypatch, seen)

    def refused(*args, **kwargs):
        raise _common.UsageError("nothing to plot in OUT: every row failed")
    monkeypatch.setattr(cli_bench, "_run_plot", refused)
    out = tmp_path / "r"
    code = run(["demo", "--out", str(out), "--quiet"])
    return code, capsys.readouterr().err.strip(), out, seen


def test_a_demo_whose_figure_folder_is_busy_after_the_work_fails_with_exit_1_naming_the_owner(
        tmp_path, monkeypatch, capsys):
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    holder = hold_lock(out / "figures", 60)
    try:
        code = run(["demo", "--out", str(out), "--quiet"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, (code, err)
    assert f"in use by pid {holder.pid}" in err and "the bench and verify results" in err, err
    assert [s[0] for s in seen] == ["bench", "verify"]


# ---- ca_rev199 (review of fabf323; its strict xfails now pass)

def test_ca_rev199_a_demo_whose_plot_step_is_refused_leaves_no_empty_figure_folder(tmp_path, monkeypatch, capsys):
    """Run: demo --out OUT where the plot step finds nothing to plot (exit 1 since 257985a). Expected:
    no empty OUT/figures, as `plot OUT` leaves none (holding_out); the figure folder's lock made it."""
    code, err, out, _ = _demo_with_a_refused_plot_step(tmp_path, monkeypatch, capsys)
    assert code == 1, (code, err)
    assert not (out / "figures").exists(), sorted(p.name for p in (out / "figures").iterdir())


def test_ca_rev199_a_demo_refuses_a_figure_folder_lock_that_is_not_a_lock_before_any_work(tmp_path, monkeypatch,
                                                                                           capsys):
    """Run: demo --out OUT with OUT/figures/results.lock a folder (not the tool's lock: results_lock refuses it
    whatever runs). Expected: exit 2 before the bench step, as _check_figure_folder refuses a figure name that is
    a folder. Got: bench and verify run, then exit 1 saying `convex-attention plot OUT` draws the figures, which
    refuses the same lock."""
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    out = tmp_path / "r"
    (out / "figures" / "results.lock").mkdir(parents=True)
    code = run(["demo", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert (code, seen) == (2, []), (code, seen, err)


# ---- ca_rev212 (mutation review of 3edf1f9, cli): tests that kill surviving mutants

def test_ca_rev212_demo_counts_the_users_figures_beyond_the_four_it_names(tmp_path, monkeypatch, capsys):
    """A figure folder holding more than four of the user's figure-named files: demo's refusal names
    four and says how many more (before: only that the line names them)."""
    from convex_attention.bench.plots import FIGURES

    figures = tmp_path / "r" / "figures"
    figures.mkdir(parents=True)
    names = [name + ext for name in FIGURES for ext in (".png", ".pdf")][:6]
    for name in names:
        (figures / name).write_bytes(b"the user's")
    seen: list = []
    _stub_demo_steps(monkeypatch, seen)
    assert run(["demo", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    _one_line(capsys, "convex-attention demo: error:", " and 2 more, named like plot's figures", "--overwrite")
    assert seen == [] and sorted(os.listdir(figures)) == sorted(names)


# ---- ca_rev234 (help-text truth audit): --repeats and --warmup do not reach the cvxpylayers rows


@pytest.mark.slow  # a sweep, if of one cell (about 2 s, the first cvxpylayers solve)
def test_ca_rev234_cvxpylayers_rows_are_timed_cvx_repeats_times_whatever_repeats_says(tmp_path, capsys):
    """`bench --repeats` says "timed repetitions per method and cell"; a cvxpylayers row is timed
    SweepConfig.cvx_repeats times (2; --quick: 1), after one untimed solve, and records that."""
    from convex_attention.bench.config import SweepConfig

    out = str(tmp_path / "r")
    assert run(["bench", "--methods", "cvxpylayers", "--cvx-backends", "diffcp-clarabel", "--sizes", "4",
                "--levels", "2", "--batch", "1", "--dims", "2", "--repeats", "7", "--warmup", "1", "--device", "cpu",
                "--quiet", "--out", out]) == 0
    rows = {r["method"]: r for r in read(os.path.join(out, "bench.csv"))}
    assert rows["cvxpylayers"]["status"] == "ok", rows["cvxpylayers"]["reason"]
    assert rows["cvxpylayers"]["repeats"] == str(SweepConfig().cvx_repeats) == "2"


def test_ca_rev234_verify_refuses_mpax_even_where_it_is_installed(monkeypatch, capsys):
    """`verify --backends` lists mpax among its choices and names "not installed" as the refusal;
    mpax is refused on every machine (no exponential cones), installed or not."""
    from convex_attention import cvx

    monkeypatch.setattr(cvx, "_installed", lambda module: True)
    assert cvx.backend_unavailable_reason("mpax") is not None
    assert run(["verify", "--backends", "mpax", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "LPs and QPs only" in err and "not installed" not in err, err
