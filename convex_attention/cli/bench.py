"""Subcommands of the benchmark harness: ``bench``, ``verify``, ``plot`` and ``demo``.

Subcommands share one results format (a folder with ``bench.csv``/``bench.json``,
``convergence.csv``, ``verify.csv``, ``example.npz`` and ``figures/``).
"""
from __future__ import annotations

import argparse
import os
import time

from ._common import UsageError, add_output_options, info, positive_float, positive_int, show_progress

__all__ = ["add_bench_commands", "BENCH_HANDLERS", "EXAMPLES"]

EXAMPLES = """
examples:
  convex-attention demo                             # quick bench + verify + figures into results/
  convex-attention bench --quick --out results      # < 2 minutes on a 2-core CPU
  convex-attention bench --sizes 32 64 128 --levels 2 3 4 --batch 16 64 --dims 2 3 \\
                         --dtype float32 float64 --out results/big --budget 120
  convex-attention bench --out results/big --resume # continue an interrupted sweep
  convex-attention verify --n 30 --seed 1           # exits 1 if any check fails
  convex-attention verify --dual-solver my_solver.py:solve_duals
  convex-attention plot results                     # figures into results/figures/
"""


def add_bench_commands(sub) -> None:
    from ..methods import METHODS


    # ------------------------------------------------------------------ bench
    b = sub.add_parser(
        "bench", help="sweep sizes/levels/batch/dims/temperature/dtype/device and measure every method",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For every cell of the sweep and every method, measure the median forward and backward "
                    "time (after warm-up, methods interleaved), peak memory, violation (max and mean), "
                    "max_abs_err against exact (float64), primal_gap and dual_gap; dual also records its "
                    "iterations; learned_dual is reported for three λ: zero, fitted on training instances "
                    "and evaluated on held-out ones (the paper's setting), and the per-sample optimum. "
                    "Rows are written one by one (atomically) to OUT/bench.csv and OUT/bench.json.")
    b.add_argument("--methods", nargs="+", default=list(METHODS), metavar="M",
                   help=f"methods to run, from: {', '.join(METHODS)}")
    b.add_argument("--sizes", nargs="+", type=positive_int, default=[8, 16, 32, 64, 128, 256], metavar="N",
                   help="finest grid side; level k has side N / factor^k")
    b.add_argument("--levels", nargs="+", type=positive_int, default=[2, 3], metavar="L")
    b.add_argument("--batch", nargs="+", type=positive_int, default=[16], metavar="B")
    b.add_argument("--dims", nargs="+", type=int, default=[2], choices=[1, 2, 3], metavar="D",
                   help="grid dimensionality (1, 2 or 3)")
    b.add_argument("--temperature", nargs="+", type=positive_float, default=[1.0], metavar="T",
                   help="one temperature shared by all levels, per sweep value")
    b.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64", "float16", "bfloat16"])
    b.add_argument("--device", nargs="+", default=None, metavar="DEV",
                   help="cpu, cuda (default: cpu, plus cuda when present)")
    b.add_argument("--generator", default="lesion", choices=["gaussian", "lesion", "model"],
                   help="score generator: i.i.d. Gaussian, lesion-like blobs, or a trained model's scores")
    b.add_argument("--scale", type=positive_float, default=1.0, help="score scale of the generator")
    b.add_argument("--checkpoint", default=None, help="model checkpoint for --generator model")
    b.add_argument("--factor", type=int, default=2, help="pooling factor per dimension between levels")
    b.add_argument("--repeats", type=positive_int, default=10, help="timed repetitions per method and cell")
    b.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    b.add_argument("--budget", type=positive_float, default=60.0,
                   help="seconds a cvxpylayers cell may take (estimated from the cells measured so far); "
                        "cells over it are recorded as skipped with the estimate")
    b.add_argument("--cvx-max-cells", type=positive_int, default=6000,
                   help="cap on problem size (total cells) for cvxpylayers")
    b.add_argument("--cvx-batch", type=positive_int, default=2, help="samples timed per cvxpylayers cell")
    b.add_argument("--fit-instances", type=positive_int, default=128,
                   help="training instances for the fitted shared λ of learned_dual")
    b.add_argument("--fit-steps", type=positive_int, default=150, help="Adam steps fitting the shared λ")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default="results", help="results folder")
    b.add_argument("--resume", action="store_true", help="keep OUT's finished rows and skip their cells")
    b.add_argument("--max-cells", type=positive_int, default=None,
                   help="stop after this many new cells (resume later with --resume)")
    b.add_argument("--quick", action="store_true",
                   help="a small sweep that finishes in under 2 minutes on a 2-core CPU "
                        "(overrides the sweep axes)")
    add_output_options(b)

    # ------------------------------------------------------------------ verify
    v = sub.add_parser(
        "verify", help="check dual solutions against CVXPY, cvxpylayers and the closed form (exit 1 on failure)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="On random instances (2-D/3-D grids, irregular partitions, 2-3 levels, unequal "
                    "temperatures) compare the dual solver's λ and p(λ) with a plain CVXPY solve (Clarabel, "
                    "tolerance 1e-12) and with the cvxpylayers layer; compare the closed form with both; check "
                    "the duality gap, KKT stationarity and feasibility. Prints pass/fail per check with the "
                    "measured error and writes OUT/verify.csv. Exit status 1 if any check fails.")
    v.add_argument("--n", type=positive_int, default=24, help="number of random instances")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--quick", action="store_true", help="6 small instances")
    v.add_argument("--dual-solver", default=None, metavar="SPEC",
                   help="verify your own dual solver: module:function or file.py:function, called as "
                        "f(scores, h, temperatures) -> list of L-1 dual tensors (B, *h.shapes[k+1])")
    v.add_argument("--out", default="results", help="results folder (verify.csv)")
    add_output_options(v)

    # ------------------------------------------------------------------ plot
    p = sub.add_parser(
        "plot", help="figures (PNG and PDF) from a results folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Reads RESULTS/bench.csv, convergence.csv and example.npz and writes: time vs problem size "
                    "(log-log, forward and backward, slopes annotated), violation per method, dual "
                    "convergence, speed-up of exact over cvxpylayers, and the attention maps of one "
                    "instance under each method with each level's pooled-vs-coarse difference.")
    p.add_argument("results", help="results folder written by `bench`")
    p.add_argument("--out", default=None, help="figure folder (default: RESULTS/figures)")

    # ------------------------------------------------------------------ demo
    d = sub.add_parser("demo", help="bench --quick, verify --quick and plot, into one folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="The main job on a fresh machine: a quick benchmark sweep, a quick "
                                   "verification and every figure, in a few minutes on a 2-core CPU.")
    d.add_argument("--out", default="results")
    add_output_options(d)


def quick_sweep():
    from ..bench.sweep import SweepConfig

    return SweepConfig(sizes=[4, 8, 16, 32], levels=[2, 3], batches=[8], dims=[2, 3], temperatures=[1.0],
                       dtypes=["float32"], repeats=5, warmup=2, budget=15.0, cvx_max_cells=1500, cvx_batch=2,
                       cvx_repeats=1, fit_instances=64, fit_steps=100)


def cmd_bench(args) -> int:
    import torch

    from ..bench.examples import save_example
    from ..bench.sweep import SweepConfig, check_sweep, run_sweep

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if args.quick:
        config = quick_sweep()
        config.methods, config.devices, config.seed = args.methods, devices, args.seed
    else:
        config = SweepConfig(methods=args.methods, sizes=args.sizes, levels=args.levels, batches=args.batch,
                             dims=args.dims, temperatures=args.temperature, dtypes=args.dtype, devices=devices,
                             generator=args.generator, scale=args.scale, factor=args.factor, repeats=args.repeats,
                             warmup=args.warmup, budget=args.budget, cvx_max_cells=args.cvx_max_cells,
                             cvx_batch=args.cvx_batch, fit_instances=args.fit_instances, fit_steps=args.fit_steps,
                             seed=args.seed, checkpoint=args.checkpoint)
    config.max_cells = args.max_cells
    try:
        if config.generator == "model":
            from ..paper import (
                model_scores,  # the experiment wing supplies this generator
            )

            model_scores.register()
            if config.checkpoint:
                model_scores.check_model_sweep(config.checkpoint, config.sizes, config.levels, config.dims,
                                               config.factor)
        check_sweep(config)  # before anything is measured or written
    except ValueError as err:
        raise UsageError(str(err)) from err
    start = time.perf_counter()
    rows = run_sweep(config, args.out, resume=args.resume, progress=show_progress(args))
    if not os.path.exists(os.path.join(args.out, "example.npz")):
        save_example(args.out, generator="lesion" if config.generator == "model" else config.generator,
                     fit_instances=config.fit_instances, fit_steps=config.fit_steps)
    _print_bench_summary(rows)
    print(f"bench: {len(rows)} rows in {os.path.join(args.out, 'bench.csv')} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def _print_bench_summary(rows) -> None:
    import math

    by = {}
    for r in rows:
        label = r["method"] + (f"/{r['dual_kind']}" if r.get("dual_kind") else "")
        entry = by.setdefault(label, {"ok": 0, "skipped": 0, "error": 0, "viol": []})
        entry[r["status"]] = entry.get(r["status"], 0) + 1
        try:
            if r["status"] == "ok" and r["violation_mean"] not in ("", None):
                by[label]["viol"].append(float(r["violation_mean"]))
        except ValueError:
            pass
    print(f"{'method':<26}{'ok':>5}{'skipped':>9}{'error':>7}{'median violation':>20}")
    for label, e in by.items():
        med = sorted(e["viol"])[len(e["viol"]) // 2] if e["viol"] else math.nan
        print(f"{label:<26}{e['ok']:>5}{e['skipped']:>9}{e['error']:>7}{med:>20.2e}")


def cmd_verify(args) -> int:
    from ..bench.verify import (
        format_table,
        load_solver,
        random_instances,
        verify_instances,
        write_csv,
    )

    try:
        solver = load_solver(args.dual_solver) if args.dual_solver else None
    except (ValueError, ImportError) as err:
        raise UsageError(str(err)) from err
    n = 6 if args.quick else args.n
    results = verify_instances(random_instances(n, args.seed, quick=args.quick), dual_solver=solver,
                               progress=show_progress(args))
    print(format_table(results))
    path = os.path.join(args.out, "verify.csv")
    write_csv(results, path)
    print(f"verify: {path}")
    return 0 if all(r.passed for r in results) else 1


def cmd_plot(args) -> int:
    from ..bench.plots import plot_results

    if not os.path.isdir(args.results):
        raise UsageError(f"results folder {args.results!r} does not exist (run `convex-attention bench --out "
                         f"{args.results}` first)")
    written = plot_results(args.results, args.out)
    if not written:
        raise UsageError(f"{args.results} holds no bench.csv, convergence.csv or example.npz to plot")
    for path in written:
        print(f"plot: {path} (+ .pdf)")
    return 0


def cmd_demo(args) -> int:
    from . import build_parser

    ns = build_parser().parse_args(["bench", "--quick", "--out", args.out] +
                                   (["--no-progress"] if args.no_progress else []) + (["--quiet"] if args.quiet else []))
    ns.resume = False
    cmd_bench(ns)
    status = cmd_verify(build_parser().parse_args(["verify", "--quick", "--out", args.out] +
                                                  (["--no-progress"] if args.no_progress else []) + (["--quiet"] if args.quiet else [])))
    cmd_plot(build_parser().parse_args(["plot", args.out]))
    return status


BENCH_HANDLERS = {"bench": cmd_bench, "verify": cmd_verify, "plot": cmd_plot, "demo": cmd_demo}
