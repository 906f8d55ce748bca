"""Subcommands of the benchmark harness: ``bench``, ``verify``, ``plot`` and ``demo``.

Subcommands share one results format (a folder with ``bench.csv``/``bench.json``,
``convergence.csv``, ``verify.csv``, ``example.npz`` and ``figures/``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ._common import UsageError, add_output_options, info, positive_float, positive_int, show_progress

__all__ = ["add_bench_commands", "BENCH_HANDLERS", "EXAMPLES"]

EXAMPLES = """
examples:
  convex-attention demo                             # quick bench + verify + figures into results/
  convex-attention bench --quick --out results      # a small sweep (timed in docs/benchmarks.md)
  convex-attention bench --sizes 32 64 128 --levels 2 3 4 --batch 16 64 --dims 2 3 \\
                         --dtype float32 float64 --out results/big --budget 120
  convex-attention bench --out results/big --resume # continue an interrupted sweep
  convex-attention verify --n 30 --seed 1           # exits 1 if any check fails
  convex-attention verify --dual-solver my_solver.py:solve_duals
  convex-attention plot results                     # figures into results/figures/
"""


def add_bench_commands(sub) -> None:
    from ..bench.sweep import SCALE_MAX
    from ..cvx import BACKENDS
    from ..methods import METHODS

    # ------------------------------------------------------------------ bench
    b = sub.add_parser(
        "bench", help="sweep sizes/levels/batch/dims/temperature/dtype/device and measure every method",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For every cell of the sweep and every method, measure the median forward and backward "
                    "time (after warm-up, methods interleaved), peak memory, violation (max and mean), "
                    "max_abs_err against exact (float64), primal_gap and dual_gap; dual also records its "
                    "iterations; learned_dual is reported for four λ: zero, fitted on training instances "
                    "and evaluated on held-out ones (the paper's setting), amortised (predicted per input by a "
                    "small network trained on training instances, evaluated on held-out ones; its time includes "
                    "the network), and the per-sample optimum; cvxpylayers is reported once per backend. "
                    "Medians come with their quartiles. Rows are committed one by one (atomically) to "
                    "OUT/bench.csv and OUT/bench.json (format: docs/results_format.md); one run writes into a "
                    "folder at a time (OUT/results.lock).")
    b.add_argument("--methods", nargs="+", default=list(METHODS), metavar="M",
                   help=f"methods to run, from: {', '.join(METHODS)}")
    b.add_argument("--sizes", nargs="+", type=positive_int, default=[8, 16, 32, 64, 128, 256], metavar="N",
                   help="finest grid side; level k has side N / factor^k")
    b.add_argument("--levels", nargs="+", type=positive_int, default=[2, 3], metavar="L",
                   help="numbers of levels L (each needs the finest side divisible by factor^(L-1))")
    b.add_argument("--batch", nargs="+", type=positive_int, default=[16], metavar="B",
                   help="batch sizes (samples per solve)")
    b.add_argument("--dims", nargs="+", type=int, default=[2], choices=[1, 2, 3], metavar="D",
                   help="grid dimensionality (1, 2 or 3)")
    b.add_argument("--temperature", nargs="+", type=positive_float, default=[1.0], metavar="T",
                   help="one temperature shared by all levels, per sweep value (positive, finite)")
    b.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64", "float16", "bfloat16"],
                   help="dtypes of the scores (half precision is computed in float32)")
    b.add_argument("--device", nargs="+", default=None, metavar="DEV",
                   help="cpu, cuda (default: cpu, plus cuda when present)")
    b.add_argument("--generator", default="lesion", choices=["gaussian", "lesion", "model"],
                   help="score generator: i.i.d. Gaussian, lesion-like blobs, or a trained model's scores")
    b.add_argument("--scale", type=positive_float, default=1.0,
                   help=f"score scale of the generator, in (0, {SCALE_MAX:g}]")
    b.add_argument("--checkpoint", default=None, help="model checkpoint for --generator model")
    b.add_argument("--factor", type=int, default=2, help="pooling factor per dimension between levels")
    b.add_argument("--repeats", type=positive_int, default=10, help="timed repetitions per method and cell")
    b.add_argument("--warmup", type=positive_int, default=3,
                   help="untimed repetitions per cell (after one global warm-up before the first cell)")
    b.add_argument("--budget", type=positive_float, default=60.0,
                   help="seconds a cvxpylayers cell may take (estimated from the cells measured so far); "
                        "cells over it are recorded as skipped with the estimate")
    b.add_argument("--cvx-max-cells", type=positive_int, default=6000,
                   help="cap on problem size (total cells) for cvxpylayers")
    b.add_argument("--cvx-batch", type=positive_int, default=2, help="samples timed per cvxpylayers cell")
    b.add_argument("--cvx-backends", nargs="+", default=None, metavar="NAME",
                   help=f"cvxpylayers backends, each its own row, from: {', '.join(BACKENDS)} "
                        f"(default: every installed one)")
    b.add_argument("--fit-instances", type=positive_int, default=128,
                   help="training instances for the fitted shared λ of learned_dual")
    b.add_argument("--fit-max-values", type=positive_int, default=None, metavar="N",
                   help="cap on training instances x cells per cell: large cells train the fitted and amortised λ "
                        "on fewer instances (at least 4); default: no cap")
    b.add_argument("--fit-steps", type=positive_int, default=150, help="Adam steps fitting the shared λ")
    b.add_argument("--amortised-steps", type=positive_int, default=300,
                   help="Adam steps training the amortised dual's network")
    b.add_argument("--seed", type=int, default=0, help="seed of the score generator (training instances use seed+1)")
    b.add_argument("--out", default="results", help="results folder")
    b.add_argument("--resume", action="store_true",
                   help="keep OUT's finished rows and measure only the rest (error rows and unreadable rows are "
                        "measured again and replaced)")
    b.add_argument("--wait", action="store_true",
                   help="if another run writes into OUT, wait for it instead of stopping")
    b.add_argument("--max-cells", type=positive_int, default=None,
                   help="stop after this many new cells (resume later with --resume)")
    b.add_argument("--quick", action="store_true",
                   help="a small sweep (sizes 4-32, 2-D and 3-D, 2 and 3 levels; docs/benchmarks.md states its "
                        "measured wall time); overrides the sweep axes and measurement settings")
    add_output_options(b)

    # ------------------------------------------------------------------ verify
    v = sub.add_parser(
        "verify", help="check dual solutions against CVXPY, cvxpylayers and the closed form (exit 1 on failure)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="On random instances (2-D/3-D grids, irregular partitions, 2-3 levels, unequal "
                    "temperatures) compare the dual solver's λ and p(λ) with a plain CVXPY solve (Clarabel, "
                    "tolerance 1e-12) and with the cvxpylayers layer; compare the closed form with both; check "
                    "the duality gap, KKT stationarity and feasibility; check every cvxpylayers backend "
                    "(cvxpylayers[<backend>].* rows) against the CVXPY reference. Prints pass/fail per check "
                    "with the measured error and writes OUT/verify.csv. Exit status: 0 only when every check "
                    "ran and passed; 1 when a check failed or did not run (the solver under test raised or "
                    "called sys.exit: reported as a failed check, verify.csv still written); 2 for usage errors. "
                    "Backends that are not installed are skipped with a line saying so, and are not failures.")
    v.add_argument("--n", type=positive_int, default=24, help="number of random instances")
    v.add_argument("--seed", type=int, default=0, help="seed of the random instances")
    v.add_argument("--quick", action="store_true", help="6 small instances")
    v.add_argument("--dual-solver", default=None, metavar="SPEC",
                   help="verify your own dual solver: module:function or file.py:function, called as "
                        "f(scores, h, temperatures) -> list of L-1 dual tensors (B, *h.shapes[k+1]); its rows "
                        "are named after the function")
    v.add_argument("--backends", nargs="+", default=None, metavar="B",
                   help="cvxpylayers backends to check (default: every installed one); one named here that is "
                        "not installed is a usage error")
    v.add_argument("--out", default="results", help="results folder (verify.csv)")
    add_output_options(v)

    # ------------------------------------------------------------------ plot
    p = sub.add_parser(
        "plot", help="figures (PNG and PDF) from a results folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Reads RESULTS/bench.csv, convergence.csv and example.npz and writes, as PNG and PDF: "
                    "time per sample vs problem size (log-log, 2-D and 3-D apart, forward and backward, "
                    "interquartile bars, fitted slopes in the legend); violation per method and compute dtype "
                    "with each dtype's rounding floor; the speed-up of exact over each cvxpylayers backend; "
                    "the speed-consistency trade-off (time per sample vs held-out violation, Pareto front); "
                    "the dual solver's convergence; and one instance's attention maps under each method "
                    "(one colour scale per level). Rows with unreadable values are skipped and named on "
                    "stderr; a figure without data is not written.")
    p.add_argument("results", help="results folder written by `bench`")
    p.add_argument("--out", default=None, help="figure folder (default: RESULTS/figures)")
    add_output_options(p)

    # ------------------------------------------------------------------ demo
    d = sub.add_parser("demo", help="bench --quick, verify --quick and plot, into one folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="The main job on a fresh machine: a quick benchmark sweep, a quick "
                                   "verification and every figure (docs/benchmarks.md states its measured "
                                   "wall time and machine).")
    d.add_argument("--out", default="results", help="results folder")
    d.add_argument("--wait", action="store_true",
                   help="if another run writes into OUT, wait for it instead of stopping")
    add_output_options(d)


def quick_sweep():
    """The ``--quick`` sweep: small sizes, 2-D and 3-D, 2 and 3 levels (docs/benchmarks.md
    gives its measured wall time)."""
    from ..bench.sweep import SweepConfig

    return SweepConfig(sizes=[4, 8, 16, 32], levels=[2, 3], batches=[8], dims=[2, 3], temperatures=[1.0],
                       dtypes=["float32"], repeats=5, warmup=2, budget=15.0, cvx_max_cells=1500, cvx_batch=1,
                       cvx_repeats=1, fit_instances=64, fit_max_values=2 ** 16, fit_steps=100, amortised_steps=150)


def _sweep_config(args):
    """The sweep the arguments ask for (``--quick`` keeps only the method, backend, device,
    generator and seed choices)."""
    import torch

    from ..bench.sweep import SweepConfig

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if args.quick:
        config = quick_sweep()
        config.methods, config.devices, config.seed = args.methods, devices, args.seed
        config.generator, config.checkpoint, config.cvx_backends = args.generator, args.checkpoint, args.cvx_backends
    else:
        config = SweepConfig(methods=args.methods, sizes=args.sizes, levels=args.levels, batches=args.batch,
                             dims=args.dims, temperatures=args.temperature, dtypes=args.dtype, devices=devices,
                             generator=args.generator, scale=args.scale, factor=args.factor, repeats=args.repeats,
                             warmup=args.warmup, budget=args.budget, cvx_max_cells=args.cvx_max_cells,
                             cvx_batch=args.cvx_batch, cvx_backends=args.cvx_backends,
                             fit_instances=args.fit_instances, fit_max_values=args.fit_max_values,
                             fit_steps=args.fit_steps,
                             amortised_steps=args.amortised_steps, seed=args.seed, checkpoint=args.checkpoint)
    config.max_cells = args.max_cells
    return config


def _check_bench(config, out: str) -> None:
    """Every check that can fail, before anything is measured or written (UsageError)."""
    from ..bench.results import check_out_dir
    from ..bench.sweep import check_sweep

    try:
        if config.generator == "model":
            from ..paper import (
                model_scores,  # the experiment wing supplies this generator
            )

            model_scores.register()
            if config.checkpoint:
                model_scores.check_model_sweep(config.checkpoint, config.sizes, config.levels, config.dims,
                                               config.factor)
        check_sweep(config)
        check_out_dir(out)
    except ValueError as err:
        raise UsageError(str(err)) from err


def cmd_bench(args) -> int:
    from ..bench.examples import save_example
    from ..bench.results import ResultsFormatError, ResultsLocked, results_lock
    from ..bench.sweep import run_sweep
    from ..bench.targets import amortised_targets, format_targets
    from ..methods import get_method

    config = _sweep_config(args)
    _check_bench(config, args.out)
    start = time.perf_counter()

    def log(message):  # events worth seeing even with --quiet: a stale lock, rows left out, waiting
        print(f"bench: {message}", file=sys.stderr)
    try:
        with results_lock(args.out, command="bench", wait=getattr(args, "wait", False), log=log):
            rows = run_sweep(config, args.out, resume=args.resume, progress=show_progress(args), log=log)
            if not args.resume or not os.path.exists(os.path.join(args.out, "example.npz")):
                learned = any(get_method(m).needs_duals for m in config.methods)  # λ only where they are swept
                save_example(args.out, generator="lesion" if config.generator == "model" else config.generator,
                             fit_instances=config.fit_instances, fit_steps=config.fit_steps if learned else 0,
                             amortised_steps=config.amortised_steps if learned else 0)
    except ResultsLocked as err:
        raise UsageError(str(err)) from err
    except ResultsFormatError as err:
        raise UsageError(f"{err}; rerun without --resume (it starts over) or choose another --out") from err
    _print_bench_summary(rows)
    targets = amortised_targets(rows)
    if targets:
        print(format_targets(targets))
    print(f"bench: {len(rows)} rows in {os.path.join(args.out, 'bench.csv')} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def _print_bench_summary(rows) -> None:
    import math
    import statistics

    by = {}
    for r in rows:
        label = (r["method"] + (f"[{r['backend']}]" if r.get("backend") else "")
                 + (f"/{r['dual_kind']}" if r.get("dual_kind") else ""))
        entry = by.setdefault(label, {"ok": 0, "skipped": 0, "error": 0, "viol": []})
        entry[r["status"]] = entry.get(r["status"], 0) + 1
        try:
            value = float(r["violation_mean"])
        except (TypeError, ValueError):
            continue
        if r["status"] == "ok" and math.isfinite(value):
            entry["viol"].append(value)
    print(f"{'method':<34}{'ok':>5}{'skipped':>9}{'error':>7}{'median violation':>20}")
    for label, e in by.items():
        med = statistics.median(e["viol"]) if e["viol"] else math.nan
        print(f"{label:<34}{e['ok']:>5}{e['skipped']:>9}{e['error']:>7}{med:>20.2e}")


def cmd_verify(args) -> int:
    import sys

    from ..bench.results import check_out_dir
    from ..bench.verify import (
        all_passed,
        backend_skips,
        check_backends,
        format_table,
        load_solver,
        random_instances,
        verify_instances,
        write_csv,
    )

    # every usage error before any work
    try:
        solver = load_solver(args.dual_solver) if args.dual_solver else None
        backends = check_backends(args.backends)
        check_out_dir(args.out)
    except (ValueError, ImportError) as err:  # BackendUnavailable is both
        raise UsageError(str(err)) from err
    n = 6 if args.quick else args.n
    results = verify_instances(random_instances(n, args.seed, quick=args.quick), dual_solver=solver,
                               progress=show_progress(args), backends=backends)
    print(format_table(results, backend_skips(args.backends)))
    path = os.path.join(args.out, "verify.csv")
    try:
        write_csv(results, path)
    except OSError as err:
        print(f"verify: cannot write {path}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"verify: {path}")
    return 0 if all_passed(results) else 1


def cmd_plot(args) -> int:
    import sys

    from ..bench.plots import FIGURES, plot_results
    from ..bench.results import check_out_dir

    results = args.results
    if not os.path.exists(results):
        raise UsageError(f"results folder {results!r} does not exist (run `convex-attention bench --out "
                         f"{results}` first)")
    if not os.path.isdir(results):
        raise UsageError(f"results {results!r} is a file; give the folder that `bench --out` wrote")
    inputs = sorted({source for source, _ in FIGURES.values()})
    if not any(os.path.exists(os.path.join(results, name)) for name in inputs):
        raise UsageError(f"{results} holds no {', '.join(inputs)} to plot (run `convex-attention bench --out "
                         f"{results}` first)")
    out = args.out or os.path.join(results, "figures")
    try:
        check_out_dir(out)
    except ValueError as err:
        raise UsageError(str(err)) from err
    notes: list = []
    try:
        written = plot_results(results, out, log=notes.append)
    except OSError as err:
        raise UsageError(f"--out {out}: a figure cannot be written there ({err.strerror or err})") from err
    if not written:
        raise UsageError(f"nothing to plot in {results}: " + "; ".join(notes))
    for note in notes:  # what was skipped and why: on stderr, even with --quiet
        print(f"plot: {note}", file=sys.stderr)
    for path in written:
        info(args, f"plot: {path} (+ .pdf)")
    return 0


def _bench_parser() -> argparse.ArgumentParser:
    """This group's subcommands alone (demo parses its steps' arguments with it)."""
    parser = argparse.ArgumentParser(prog="convex-attention")
    add_bench_commands(parser.add_subparsers(dest="command"))
    return parser


def cmd_demo(args) -> int:
    """bench --quick, verify --quick and plot into one folder, holding its lock throughout."""
    from ..bench.results import ResultsLocked, check_out_dir, results_lock

    parser = _bench_parser()
    output = (["--no-progress"] if args.no_progress else []) + (["--quiet"] if args.quiet else [])
    bench_args = parser.parse_args(["bench", "--quick", "--out", args.out] + output)
    _check_bench(_sweep_config(bench_args), args.out)
    try:
        check_out_dir(args.out)
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        with results_lock(args.out, command="demo", wait=getattr(args, "wait", False),
                          log=lambda m: print(f"demo: {m}", file=sys.stderr)):
            cmd_bench(bench_args)
            status = cmd_verify(parser.parse_args(["verify", "--quick", "--out", args.out] + output))
            cmd_plot(parser.parse_args(["plot", args.out]))
    except ResultsLocked as err:
        raise UsageError(str(err)) from err
    return status


BENCH_HANDLERS = {"bench": cmd_bench, "verify": cmd_verify, "plot": cmd_plot, "demo": cmd_demo}
