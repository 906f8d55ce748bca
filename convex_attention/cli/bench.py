"""Subcommands of the benchmark harness: ``bench``, ``verify``, ``plot`` and ``demo``.

Subcommands share one results format (a folder with ``bench.csv``/``bench.json``,
``convergence.csv``, ``verify.csv``, ``example.npz`` and ``figures/``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time

from ..bench.config import BACKEND_NAMES, SweepConfig, VerifyConfig, quick_sweep
from ..io.settings import add_options, given_settings
from ._common import (
    CommandParser,
    UsageError,
    add_output_options,
    add_wait_option,
    check_files,
    check_no_earlier,
    check_out_leaving_nothing,
    holding_out,
    info,
    making_out,
    show_progress,
)

__all__ = ["add_bench_commands", "BENCH_HANDLERS", "EXAMPLES"]

#: The top command's examples, at the end of its --help (CommandParser's examples).
EXAMPLES = (
    "convex-attention demo                             # quick bench + verify + figures into results/",
    "convex-attention bench --quick --out results      # a small sweep (timed in docs/benchmarks.md)",
    "convex-attention bench --sizes 32 64 128 --levels 2 3 4 --batch 16 64 --dims 2 3 \\",
    "                       --dtype float32 float64 --out results/big --budget 120",
    "convex-attention bench --sizes 32 64 128 --levels 2 3 4 --batch 16 64 --dims 2 3 \\",
    "                       --dtype float32 float64 --out results/big --budget 120 --resume",
    "                                                  # continue it: the same options, plus --resume",
    "convex-attention bench --quick --out results --overwrite  # discard the rows of an earlier run, start over",
    "convex-attention bench --structure star axial grid_regions mixed --sizes 16 32 64 --out results/graphs",
    "convex-attention verify --n 30 --seed 1           # exits 1 if any check fails",
    "convex-attention verify --dual-solver path/to/solver.py:solve_duals --timeout 30  # yours: user guide §2",
    "convex-attention plot results                     # figures into results/figures/",
)


#: Each subcommand's examples, at the end of its --help (tests/test_cli_conventions.py parses them,
#: and checks bench's and verify's options as the commands do).
SUBCOMMAND_EXAMPLES = {
    "bench": (
        "convex-attention bench --quick --out results                # a small sweep of every method (minutes)",
        "convex-attention bench --quick --out results --resume       # continue it after an interruption",
        "convex-attention bench --structure star axial grid_regions mixed --sizes 16 32 64 --out results/graphs",
        "convex-attention bench --methods exact cvxpylayers --cvx-backends moreau --sizes 16 32 --levels 2 "
        "--out results/cvx",
        "convex-attention bench --sizes 64 128 --dtype float32 float64 --threads 2 --out results/big --budget 120",
    ),
    "verify": (
        "convex-attention verify --quick                              # a few instances, into results/",
        "convex-attention verify --n 30 --seed 1 --out results/v      # exit 1 if any check fails",
        "convex-attention verify --backends moreau diffcp-clarabel    # only these cvxpylayers backends",
        "convex-attention verify --dual-solver path/to/solver.py:solve_duals --timeout 30  "
        "# yours: docs/user_guide.md §2",
    ),
    "plot": (
        "convex-attention plot results                                # figures into results/figures/",
        "convex-attention plot results --overwrite                    # replace the figures of an earlier plot",
    ),
    "demo": (
        "convex-attention demo                                  # bench --quick, verify --quick, plot -> results/",
        "convex-attention demo --out results/demo --overwrite         # replace an earlier demo's files",
    ),
}


def add_bench_commands(sub) -> None:
    _add_bench(sub)
    _add_verify(sub)
    _add_plot(sub)
    _add_demo(sub)


def _add_bench(sub) -> None:
    b = sub.add_parser(
        "bench", examples=SUBCOMMAND_EXAMPLES["bench"],
        help="sweep structures/sizes/levels/batch/dims/temperature/dtype/device and measure every method",
        description="For every cell of the sweep (a structure family at a size: chain, star, axial, "
                    "grid_regions, mixed) and every method that solves it (the others get a skipped row saying "
                    "why), measure the median forward and backward "
                    "time (after warm-up, methods interleaved), peak memory, violation (max and mean), "
                    "max_abs_err, primal_gap and dual_gap against the float64 reference (the closed form on "
                    "forests, the dual solver at tol 1e-11 elsewhere); dual also records its "
                    "iterations; learned_dual is reported for four λ: zero, fitted on training instances "
                    "and evaluated on held-out ones (the paper's setting), amortised (predicted per input by a "
                    "small network trained on training instances, evaluated on held-out ones; its time includes "
                    "the network), and the per-sample optimum; cvxpylayers is reported once per backend. "
                    "Medians come with their quartiles. Rows are committed one by one (atomically) to "
                    "OUT/bench.csv and OUT/bench.json (format: docs/results_format.md); one run writes into a "
                    "folder at a time (OUT/results.lock). A folder that already holds rows needs --resume (keep "
                    "them) or --overwrite (start over); --resume may widen the sweep's grid (methods, structures, "
                    "sizes, levels, batch, dims, temperatures, dtypes, devices, backends) but refuses other "
                    "measurement settings than the stored run's. A cell that fails, out of memory included, is "
                    "recorded as error rows with the reason, and the sweep goes on.")
    add_options(b, SweepConfig)
    b.add_argument("--out", default="results", help="results folder (default: results)")
    b.add_argument("--resume", action="store_true",
                   help="keep OUT's finished rows and measure only the rest (error rows, unreadable rows and "
                        "duplicated rows are measured again and replaced, and so are rows skipped because their "
                        "backend could not run, once it can); the settings that change how a row is measured "
                        "(factor, repeats, warmup, threads, budget, the learned duals' training, seed, generator, "
                        "...) must be the stored run's (else exit 2; so is a folder whose bench.json records no "
                        "readable configuration for the rows of its bench.csv), the grid may grow")
    b.add_argument("--overwrite", action="store_true",
                   help="discard the rows an earlier bench left in OUT and start over; without --resume or "
                        "--overwrite a folder that holds rows is refused (exit 2), so finished rows are never "
                        "discarded without a word")
    add_wait_option(b)
    b.add_argument("--quick", action="store_true",
                   help="a small sweep (sizes 4-32, 2-D and 3-D, 2 and 3 levels, fewer repetitions; "
                        "docs/benchmarks.md states its measured wall time); options given with it replace its "
                        "settings")
    add_output_options(b)


def _add_verify(sub) -> None:
    v = sub.add_parser(
        "verify", examples=SUBCOMMAND_EXAMPLES["verify"],
        help="check dual solutions against CVXPY, cvxpylayers and the closed form (exit 1 on failure)",
        description="On random instances (chains: 2-D/3-D grids, irregular partitions, 2-3 levels; random "
                    "graphs of every structure family: star, axial, grid_regions, mixed; unequal temperatures) "
                    "compare the dual solver's λ and p(λ) with a plain CVXPY solve (Clarabel, tolerance 1e-12) and "
                    "with the cvxpylayers layer; compare the closed form with both where it applies (forests); "
                    "check the duality gap, KKT stationarity and feasibility; check the built-in dual's implicit "
                    "gradients (scores and temperatures) against finite differences, with cvxpylayers' own "
                    "gradient error reported beside them (not a check); check every cvxpylayers backend "
                    "(cvxpylayers[<backend>].* rows) against the CVXPY reference. Prints pass/fail per check "
                    "with the measured error (info lines: --quiet leaves them out) and writes OUT/verify.csv. Exit "
                    "status: 0 only when every check "
                    "ran and passed; 1 when a check failed or did not run (the solver under test raised, exited, "
                    "crashed, ran past --timeout or returned something that is not duals: reported as failed "
                    "checks with the reason, verify.csv still written; one line on stderr says how many, even "
                    "with --quiet); 2 for usage errors. Ctrl-C stops the run "
                    "and writes nothing. "
                    "Backends that are not installed are skipped with a line saying so, and are not failures.")
    add_options(v, VerifyConfig)
    v.add_argument("--quick", action="store_true",
                   help="small instances, one of every kind (10); --n given with it sets their number")
    v.add_argument("--dual-solver", default=None, metavar="SPEC",
                   help="verify your own dual solver: module:function or file.py:function, called as "
                        "f(scores, h, temperatures) -> list of real floating dual tensors, one per edge e = (a, b) "
                        "of h, (B, *h.shapes[b]) (on a chain L-1 tensors (B, *h.shapes[k+1])), in a process of its "
                        "own (a solver that raises, exits, crashes, hangs past --timeout or returns anything else "
                        "fails its checks, with the reason); its rows are named after the function (default: none, "
                        "the package's own dual solver; an empty value is a usage error)")
    v.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help=f"cvxpylayers backends to check, from {', '.join(BACKEND_NAMES)} (default: every installed "
                        f"one), each named once; one named here that cannot run here is a usage error (not "
                        f"installed; cuclarabel without a GPU; mpax always: it solves no exponential cones)")
    v.add_argument("--out", default="results", help="results folder, for verify.csv (default: results)")
    v.add_argument("--overwrite", action="store_true",
                   help="replace the verify.csv an earlier run left in OUT; without it such a folder is refused "
                        "(exit 2)")
    add_wait_option(v)
    add_output_options(v)


def _add_plot(sub) -> None:
    p = sub.add_parser(
        "plot", examples=SUBCOMMAND_EXAMPLES["plot"],
        help="figures (PNG and PDF) from a results folder",
        description="Reads RESULTS/bench.csv, convergence.csv and example.npz and writes, as PNG and PDF: "
                    "time per sample vs problem size (log-log, a panel per dimensionality and number of levels, "
                    "forward and backward on one scale, interquartile bars, a slope only where the times follow a "
                    "power law); violation per method, one panel per compute dtype with its rounding level (what an "
                    "exactly consistent answer reads once stored in the dtype); "
                    "the speed-up of exact over each cvxpylayers backend; the speed-consistency trade-off "
                    "(time per sample vs held-out violation, Pareto front at the cells' dtype resolution); the dual "
                    "solver's convergence; and one instance's attention maps under each method (one colour scale "
                    "per level). Times whose interquartile range exceeds half the median, or that rest on fewer "
                    "than 3 repetitions, are marked low-confidence. Every footer names the machine, the torch "
                    "threads, the load average at the start and end of the run (or that it was not recorded) and "
                    "the dtype; rows the sweep skipped or timed elsewhere are counted there. Rows with unreadable "
                    "or impossible values (a time outside 1e-12 to 1e12 ms) are skipped and named on stderr; a "
                    "figure without data, or whose log axis would overflow, is not written. One run writes a "
                    "figure folder at a time (FOLDER/results.lock).")
    p.add_argument("results", help="results folder written by `bench`")
    p.add_argument("--out", default=None, help="figure folder (default: RESULTS/figures)")
    p.add_argument("--overwrite", action="store_true",
                   help="let the figures drawn replace files of their names that plot cannot prove it wrote "
                        "(its record, FOLDER/.convex-attention-figures.json, lists what it wrote); without it such "
                        "a run writes nothing and exits 2. Figures plot recorded there are replaced, and removed "
                        "where these results no longer support them, without it")
    add_wait_option(p)
    add_output_options(p)


# The demo's wall time as measured (docs/benchmarks.md gives the command, machine, load and spread).
DEMO_EXPECTED = ("about 1.5 min, as measured on a 2-core AMD EPYC machine shared with other jobs (load average 5), "
                 "1 torch thread; 2.5 to 3 min on a 2-core Intel Xeon, where one SCS solve runs to its iteration "
                 "limit, and nearly 4 min at the lowest priority (docs/benchmarks.md)")


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", examples=SUBCOMMAND_EXAMPLES["demo"],
                       help="bench --quick, verify --quick and plot, into one folder",
                       description="The main job on a fresh machine, in three steps that it names as it goes: a "
                                   f"quick benchmark sweep (1 torch thread), a quick verification and every figure; "
                                   f"{DEMO_EXPECTED}.")
    d.add_argument("--out", default="results", help="results folder (default: results)")
    add_wait_option(d)
    d.add_argument("--overwrite", action="store_true",
                   help="discard the bench rows, verify.csv and figures an earlier run left in OUT and start over "
                        "(without it such a folder is refused, exit 2)")
    add_output_options(d)


def _sweep_config(args) -> SweepConfig:
    """The sweep the arguments ask for: the given settings over the defaults, or over the
    ``--quick`` sweep's; devices not given: the CPU, plus CUDA when present."""
    import torch

    given = given_settings(args, SweepConfig)
    given.setdefault("devices", ("cpu",) + (("cuda",) if torch.cuda.is_available() else ()))
    return quick_sweep(**given) if args.quick else SweepConfig(**given)


def _check_read(config: SweepConfig, given: dict) -> None:
    """UsageError, before any work, for an option given to a sweep none of whose rows reads
    it (``--fit-steps`` without learned_dual, ``--levels`` without the chain), as
    ``--checkpoint`` without ``--generator model`` is refused: its value would be recorded
    for rows it never touched.  Which rows read which setting is the resume rule's
    (:func:`convex_attention.bench.results.run_reads_setting`)."""
    from ..bench.results import BATCH_SETTINGS, CVX_SETTINGS, FIT_SETTINGS, cvx_batch_setting, run_reads_setting
    from ..cvx import BACKENDS, available_backends
    from ..io.settings import declared

    options = declared(SweepConfig)
    unread = [(name, "methods", "cvxpylayers" if name in CVX_SETTINGS else "learned_dual")
              for name in CVX_SETTINGS + FIT_SETTINGS if name in given and not run_reads_setting(name, config.methods)]
    if "cvx_backends" in given and "cvxpylayers" not in config.methods:  # a grid setting: its rows' backends
        unread.append(("cvx_backends", "methods", "cvxpylayers"))
    if "levels" in given and "chain" not in config.structures:  # the chain's alone
        unread.append(("levels", "structures", "chain"))
    if "factor" in given and not run_reads_setting("factor", config.methods, config.structures):
        unread.append(("factor", "structures", "chain"))
    swept = list(config.cvx_backends) if config.cvx_backends is not None else available_backends()
    for name in BATCH_SETTINGS:  # each read by its kind of backend alone (diffcp's, or the batched ones)
        if name in given and "cvxpylayers" in config.methods and not run_reads_setting(name, config.methods,
                                                                                        backends=swept):
            kind = [b for b in BACKENDS if cvx_batch_setting(b) == name]
            unread.append((name, "cvx_backends", f"{' or '.join(kind)}"))
    if unread:
        name, axis, reader = unread[0]
        option, axis_option = options[name].option(name), options[axis].option(axis)
        values = swept if axis == "cvx_backends" else getattr(config, axis)
        raise UsageError(f"{option} applies to {reader} only, and {axis_option} {' '.join(values)} "
                         f"leaves it out: add {reader} to {axis_option}, or leave {option} out")


def _check_sweep(config: SweepConfig, args) -> None:
    """Every check of the sweep that can fail, before anything is measured (UsageError):
    each value, then the options ``args`` gave that no row reads, then the rest."""
    from ..bench.config import check_sweep, check_values

    try:
        if config.generator == "model":
            # the experiment wing supplies this generator; the command layer, which sees
            # both wings, hands it to the harness
            from ..bench.generators import register_generator
            from ..paper import model_scores

            register_generator("model", model_scores.model_scores)
            if config.checkpoint:
                model_scores.check_model_sweep(config.checkpoint, config.sizes, config.levels, config.dims,
                                               config.factor, seed=config.seed,
                                               images=max(*config.batches, config.fit_instances))
        check_values(config)
    except ValueError as err:
        raise UsageError(str(err)) from err
    _check_read(config, given_settings(args, SweepConfig))
    try:
        check_sweep(config)
        _check_cvx_backends(config)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _check_cvx_backends(config: SweepConfig) -> None:
    """ValueError naming the first backend of ``--cvx-backends`` that cannot run here (as
    ``verify --backends`` refuses it): a row of it could only be skipped."""
    from ..cvx import backend_unavailable_reason

    for name in dict.fromkeys(config.cvx_backends or ()):
        reason = backend_unavailable_reason(name)
        if reason is not None:
            raise ValueError(f"--cvx-backends {name}: cvxpylayers backend {name!r} cannot run here: {reason} (leave "
                             f"--cvx-backends out to time every installed backend)")


def _check_start_over(args, out: str, config: SweepConfig | None = None, offer_resume: bool = True) -> None:
    """UsageError, before any work, when ``out`` holds an earlier bench's rows and neither
    ``--resume`` nor ``--overwrite`` was given, or ``--resume`` continues rows measured under
    other settings than ``config``'s (run_sweep checks again under the lock); the message
    names ``--resume`` only with ``offer_resume`` (demo has no --resume)."""
    from ..bench.results import check_start_over

    try:
        check_start_over(out, getattr(args, "resume", False), getattr(args, "overwrite", False), config,
                         offer_resume=offer_resume)
    except ValueError as err:
        raise UsageError(str(err)) from err


def cmd_bench(args) -> int:
    config = _sweep_config(args)
    _check_sweep(config, args)
    _check_start_over(args, args.out, config)  # before check_out, which makes the folder
    with making_out(args.out):
        return _run_bench(config, args, args.out)


def _run_bench(config: SweepConfig, args, out: str, offer_resume: bool = True) -> int:
    """The checked sweep into ``out`` (under its lock), the example instance, the summary
    (``offer_resume``: whether a refusal may name --resume; demo has none)."""
    from ..bench.examples import save_example, sweep_example_settings, why_write_again
    from ..bench.results import FinishedRows, stored_targets
    from ..bench.sweep import run_sweep
    from ..bench.targets import format_targets
    from ..io.lock import ResultsLocked, results_lock
    from ..io.tables import ResultsFormatError
    from ..methods import get_method

    start = time.perf_counter()

    def log(message):  # events worth seeing even with --quiet: a stale lock, rows left out, waiting
        print(f"bench: {message}", file=sys.stderr)
    try:
        with results_lock(out, command="bench", wait=getattr(args, "wait", False), log=log):
            rows = run_sweep(config, out, resume=args.resume, progress=show_progress(args), log=log,
                             overwrite=getattr(args, "overwrite", False), offer_resume=offer_resume)
            learned = any(get_method(m).needs_duals for m in config.methods)  # λ only where they are swept
            example = os.path.join(out, "example.npz")
            # (anything but a file of that name was refused before any work, as for every output)
            settings = sweep_example_settings(dataclasses.asdict(config))
            why = why_write_again(example, learned, settings) \
                if args.resume and os.path.exists(example) else None
            if why:  # this run's instance again (with its λ where the sweep learns them)
                log(f"example.npz written again: {why}")
            if not args.resume or not os.path.exists(example) or why:
                save_example(out, **settings)
            targets = stored_targets(out)  # as the sweep judged them (it knew the cells --max-cells left)
    except (ResultsLocked, FinishedRows) as err:
        raise UsageError(str(err)) from err
    except ResultsFormatError as err:
        raise UsageError(f"{err}; rerun with --overwrite instead of --resume (it starts over) or choose another "
                         f"--out") from err
    except OSError as err:  # a full disk, a folder removed under the run: one line, as verify's
        where = f" ({err.filename})" if err.filename else ""
        then = f"; --resume continues from the rows {out} holds once it can be written" if offer_resume else ""
        print(f"bench: stopped, a results file could not be written or read{where}: {err.strerror or err}{then}",
              file=sys.stderr)
        return 1
    info(args, _bench_summary(rows))
    if targets:
        info(args, format_targets(targets))
    info(args, f"bench: {len(rows)} rows in {os.path.join(out, 'bench.csv')} ({time.perf_counter() - start:.0f} s)")
    return 0


def _bench_summary(rows) -> str:
    """The summary table of a sweep's rows: per method, its rows by status and the median
    violation of its ok rows."""
    by: dict = {}
    several = len({r.get("structure") or "chain" for r in rows}) > 1
    for r in rows:
        label = ((f"{r.get('structure') or 'chain'}: " if several else "") + r["method"]
                 + (f"[{r['backend']}]" if r.get("backend") else "")
                 + (f"/{r['dual_kind']}" if r.get("dual_kind") else ""))
        entry = by.setdefault(label, {"ok": 0, "skipped": 0, "error": 0, "viol": []})
        entry[r["status"]] = entry.get(r["status"], 0) + 1
        try:
            value = float(r["violation_mean"])
        except (TypeError, ValueError):
            continue
        if r["status"] == "ok" and math.isfinite(value):
            entry["viol"].append(value)
    width = max([34] + [len(label) + 2 for label in by])
    lines = [f"{'method':<{width}}{'ok':>5}{'skipped':>9}{'error':>7}{'median violation':>20}"]
    for label, e in by.items():
        med = statistics.median(e["viol"]) if e["viol"] else math.nan
        lines.append(f"{label:<{width}}{e['ok']:>5}{e['skipped']:>9}{e['error']:>7}{med:>20.2e}")
    return "\n".join(lines)


def _verify_config(args) -> VerifyConfig:
    """The settings ``verify`` was given, over the defaults; UsageError naming the option."""
    from ..io.settings import ConfigError, check_settings

    config = VerifyConfig(**given_settings(args, VerifyConfig))
    try:
        check_settings(config)
    except ConfigError as err:
        raise UsageError(f"argument --{err.field}: {err}") from None
    return config


def _check_verify(args):
    """Every usage error of ``verify`` but the solver's (:func:`_start_solver` checks its form,
    then imports it in a process of its own): ``(config, backends)``."""
    from ..bench.verify import check_backends

    config = _verify_config(args)
    if args.dual_solver is None and "timeout" in given_settings(args, VerifyConfig):
        raise UsageError("argument --timeout: it bounds the time of a --dual-solver's instance, and no "
                         "--dual-solver was given (the package's own solver runs in this process)")
    if args.dual_solver is not None and not args.dual_solver.strip():
        raise UsageError("argument --dual-solver: an empty value; give module:function or file.py:function, or "
                         "leave the option out to verify the package's own dual solver")
    try:
        backends = check_backends(args.backends)
    except (ValueError, ImportError) as err:  # BackendUnavailable is both
        raise UsageError(f"argument --backends: {err}") from err
    return config, backends


def _start_solver(args, config: VerifyConfig, backends) -> tuple:
    """The user's dual solver, imported in a process of its own (``None``: the built-in
    one), and the checks its warm-up failed; UsageError when its spec is malformed (no
    process is started, nothing else has run) or it cannot be imported.  Everything the
    verification runs is imported between the two (:func:`_import_the_verifier`): a module
    imported later could be one the solver's code had rewritten (two reviews made verify
    pass with zero duals so); this narrows what the solver's process can reach, it does not
    sandbox it (docs/user_guide.md §2).  So a module that cannot be imported is refused after
    that silent run of about a second, never before: its import is its code running."""
    from ..bench.isolation import IsolatedSolver

    if args.dual_solver is None:  # an empty value is refused by _check_verify
        return None, []
    try:
        solver = IsolatedSolver(args.dual_solver, config.timeout)  # the spec's form: before any work
    except ValueError as err:
        raise UsageError(str(err)) from err
    warm_up_failures = _import_the_verifier(backends)
    try:
        solver.start()
    except ValueError as err:
        raise UsageError(str(err)) from err
    return solver, warm_up_failures


def _check_verify_out(args) -> None:
    """UsageError, before any work, when OUT holds a verify.csv and ``--overwrite`` was not
    given, or something other than a regular file of that name, whatever the options
    (checked again under the folder's lock)."""
    check_files(args.out, ("verify.csv",))
    check_no_earlier(args.out, ("verify.csv",), getattr(args, "overwrite", False))


def cmd_verify(args) -> int:
    config, backends = _check_verify(args)
    _check_verify_out(args)
    # --out's lock is taken before the user's solver is imported (in its own process), so a
    # folder another run holds is refused before that code runs (ca_rev138), or --wait waits
    # first; a solver that cannot be imported is a usage error, and the folders the lock made
    # are removed again (holding_out). _run_verify's own lock is this one (re-entrant).
    with holding_out(args.out, "verify", args, outputs=("verify.csv",)):
        solver, warm_up_failures = _start_solver(args, config, backends)
        try:
            return _run_verify(args, config, solver, backends, warm_up_failures)
        finally:
            if solver is not None:
                solver.close()


def _import_the_verifier(backends) -> list:
    """Import the modules a verification runs: the checks, the results' lock and files, the
    progress bar, CVXPY, cvxpylayers and each backend's solver package, and then run the
    verification once, without a solver, on one small instance and read one answer as a
    child's is read: CVXPY, cvxpylayers' interfaces, the solvers and numpy's archive reader
    import more of themselves on first use (a review found seven such modules imported after
    the solver's code had run).  Returns the checks that failed in that run
    (:func:`~convex_attention.bench.verify.import_what_a_run_imports`): the run reports them."""
    import importlib

    import cvxpy  # noqa: F401
    import cvxpylayers.torch  # noqa: F401
    import tqdm.auto  # noqa: F401

    from ..bench import verify
    from ..bench.isolation import import_the_reader
    from ..cvx import get_backend
    from ..io import files, lock  # noqa: F401

    for name in backends:
        for module in get_backend(name).modules:
            importlib.import_module(module)
    failures = verify.import_what_a_run_imports(backends)
    import_the_reader()
    return failures


def _run_verify(args, config: VerifyConfig, solver, backends, warm_up_failures=()) -> int:
    """The verification into ``args.out``, holding the folder's lock (re-entrant: ``demo``
    already holds it).  ``warm_up_failures``: the checks the warm-up before the solver
    started failed (:func:`_import_the_verifier`), reported first, as failures of the run."""
    from ..bench.verify import (
        KINDS,
        QUICK_INSTANCES,
        all_passed,
        backend_skips,
        format_table,
        random_instances,
        verify_instances,
        write_csv,
    )
    from ..io.files import clean_stale_tmp
    from ..io.lock import ResultsLocked, results_lock

    # --quick's count unless --n is given with it (as bench --quick takes the options given with it)
    n = QUICK_INSTANCES if args.quick and "n" not in given_settings(args, VerifyConfig, ["n"]) else config.n
    try:
        with results_lock(args.out, command="verify", wait=getattr(args, "wait", False),
                          log=lambda m: print(f"verify: {m}", file=sys.stderr)):
            _check_verify_out(args)  # again, under the lock: another run may have written it meanwhile
            stale = clean_stale_tmp(args.out, ("verify.csv",))  # what a killed verify left (under the lock)
            if stale:
                print(f"verify: removed the temporary file(s) an interrupted run left: {', '.join(stale)}",
                      file=sys.stderr)
            results = list(warm_up_failures) + verify_instances(
                random_instances(n, config.seed, quick=args.quick), dual_solver=solver,
                progress=show_progress(args), backends=backends)
            if solver is not None:  # stopped before the table and verify.csv are written, not after (ca_rev149)
                solver.close()
            info(args, format_table(results, backend_skips(args.backends)))
            path = os.path.join(args.out, "verify.csv")
            try:
                write_csv(results, path)
            except OSError as err:
                print(f"verify: cannot write {path}: {err.strerror or err}", file=sys.stderr)
                return 1
    except ResultsLocked as err:
        raise UsageError(str(err)) from err
    info(args, f"verify: {path}")
    left_out = KINDS[n:]
    if left_out:  # the instances cycle through the kinds: a small --n checks the first few only (ca_rev178)
        info(args, f"verify: --n {n} drew {n} of the {len(KINDS)} kinds of instance; not checked: "
                   f"{', '.join(left_out)} (--n {len(KINDS)} or more draws each)")
    if all_passed(results):
        return 0
    # the failed check's one line on stderr, even with --quiet (the table above, and verify.csv, name each check)
    print(f"verify: {_failure_line(results)}; every check and its error: {path}", file=sys.stderr)
    return 1


def _failure_line(results) -> str:
    """Why a verification did not pass, in a few words: how many checks failed or did not run."""
    checks = [r for r in results if r.status != "info"]
    if not checks:
        return "no check ran"
    passed = sum(r.status == "pass" for r in checks)
    failed = sum(r.status == "fail" for r in checks)
    not_run = len(checks) - passed - failed  # error, skipped: the check did not run
    parts = ([f"{failed} failed"] if failed else []) + ([f"{not_run} did not run"] if not_run else [])
    return f"{passed}/{len(checks)} checks passed, " + ", ".join(parts)


def cmd_plot(args) -> int:
    from ..bench.plots import FIGURES

    results = args.results
    if not os.path.exists(results):
        raise UsageError(f"results folder {results!r} does not exist (run `convex-attention bench --out "
                         f"{results}` first)")
    if not os.path.isdir(results):
        raise UsageError(f"results {results!r} is a file; give the folder that `bench --out` wrote")
    inputs = list(dict.fromkeys(source for source, _ in FIGURES.values()))  # bench's files first
    if not any(os.path.exists(os.path.join(results, name)) for name in inputs):
        raise UsageError(f"{results} holds no {', '.join(inputs)} to plot (run `convex-attention bench --out "
                         f"{results}` or benchmarks/bench_graphs.py --out {results} first)")
    out = args.out if args.out is not None else os.path.join(results, "figures")  # '' is refused, not the default
    check_out_leaving_nothing(out)
    check_files(out, _figure_folder_files())  # before the folder is made
    # one writer per figure folder, as demo's plot step holds it: the figures and their record
    # (a folder it made is removed again, if empty, when the run fails: holding_out)
    with holding_out(out, "plot", args, outputs=_figure_folder_files()):  # (its record's temporary too: ca_rev131)
        return _run_plot(args, results, out)


def _figure_folder_files() -> tuple:
    """Every file plot may write into its figure folder: each figure's PNG and PDF, and its
    record of them."""
    from ..bench.plots import FIGURES, MANIFEST

    return tuple(name + ext for name in FIGURES for ext in (".png", ".pdf")) + (MANIFEST,)


def _check_figure_folder(out: str, overwrite: bool) -> None:
    """UsageError, before any work, when ``out`` holds files named like figures that plot did
    not write (the user's, or changed since) and ``overwrite`` is not given: ``demo``'s check
    before its minutes of work (any figure name, since which ones its results will draw is
    not known yet; ``plot`` itself refuses only the figures it draws)."""
    from ..bench.plots import MANIFEST, unrecorded_figures
    from ..io.lock import foreign_lock

    if os.path.lexists(out) and not os.path.isdir(out):  # before demo's minutes of work, not at its plot step
        raise UsageError(f"{out} is a file, not a folder: the figures go there; move it, or choose another --out")
    check_files(out, _figure_folder_files())  # a folder of a figure's name: --overwrite cannot replace it
    broken_lock = foreign_lock(out)  # a lock the plot step could never take, whatever runs (ca_rev199)
    if broken_lock:
        raise UsageError(broken_lock)
    foreign = [] if overwrite else unrecorded_figures(out)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise UsageError(f"{out} holds {shown}, named like plot's figures but not recorded as its output (in "
                         f"{MANIFEST}) or changed since; pass --overwrite to replace them, or choose another --out")


def _run_plot(args, results: str, out: str) -> int:
    """Draw the figures of ``results`` into ``out``, whose lock the caller holds (a folder it
    made for them is removed again, if empty, where nothing is drawn: :func:`holding_out`)."""
    from ..bench.plots import FigureConflict, plot_results, remove_stale_staging

    for left in remove_stale_staging(out):  # the caller holds the lock: no other plot stages there now
        print(f"plot: removed {left} from {out}: the staging folder of a plot that was stopped", file=sys.stderr)
    notes: list = []
    written: list = []
    try:
        written = plot_results(results, out, log=notes.append, overwrite=getattr(args, "overwrite", False))
    except FigureConflict as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(f"--out {out}: a figure cannot be written there ({err.strerror or err})") from err
    if not written:
        raise UsageError(f"nothing to plot in {results}: " + "; ".join(notes))
    for note in notes:  # what was skipped and why: on stderr, even with --quiet
        print(f"plot: {note}", file=sys.stderr)
    for path in written:
        info(args, f"plot: {path} (+ .pdf)")
    return 0


class _StepParser(CommandParser):
    """The parser of demo's steps: a failure is a UsageError (one line naming ``demo``, from
    :func:`convex_attention.cli.main`), never a usage block of the step's command.  Its
    subcommands' parsers are of this class too (argparse makes them of the parent's)."""

    def error(self, message: str):
        raise UsageError(f"{self.prog.replace('convex-attention ', '', 1)} step: {message}")


def _bench_parser() -> argparse.ArgumentParser:
    """This group's subcommands alone (demo parses its steps' arguments with it)."""
    parser = _StepParser(prog="convex-attention")
    add_bench_commands(parser.add_subparsers(dest="command"))
    return parser


def _demo_steps(args) -> tuple:
    """The arguments of demo's three steps (bench, verify, plot), parsed from demo's own:
    every value is passed so that it cannot be read as an option (``--out=VALUE``, ``--``
    before the positional), so an OUT such as ``-x`` or ``--help`` is a folder's name."""
    parser = _bench_parser()
    shared = (["--no-progress"] if args.no_progress else []) + (["--quiet"] if args.quiet else []) + (
        ["--overwrite"] if args.overwrite else [])
    bench_args = parser.parse_args(["bench", "--quick", f"--out={args.out}", *shared])
    verify_args = parser.parse_args(["verify", "--quick", f"--out={args.out}", *shared])
    plot_args = parser.parse_args(["plot", *shared, "--", args.out])
    return bench_args, verify_args, plot_args


def cmd_demo(args) -> int:
    """bench --quick, verify --quick and plot into one folder: every check first (the folder
    once), then the three steps' work, holding the folder's lock throughout."""
    from ..io.lock import ResultsLocked, results_lock

    bench_args, verify_args, plot_args = _demo_steps(args)
    config = _sweep_config(bench_args)
    _check_sweep(config, bench_args)
    verify_config, backends = _check_verify(verify_args)
    _check_start_over(bench_args, args.out, config, offer_resume=False)  # before check_out, which makes the folder
    _check_verify_out(verify_args)
    _check_figure_folder(os.path.join(args.out, "figures"), args.overwrite)
    start = time.perf_counter()

    def step(number: int, what: str) -> None:
        info(args, f"demo: step {number}/3, {what} ({time.perf_counter() - start:.0f} s so far)")
    try:
        # the folders it makes removed again, if empty, when it stops before writing (Ctrl-C, a
        # refusal under the lock), as bench's and verify's are (ca_rev194)
        with making_out(args.out), results_lock(args.out, command="demo", wait=getattr(args, "wait", False),
                                                log=lambda m: print(f"demo: {m}", file=sys.stderr)):
            info(args, f"demo: 3 steps into {args.out}/ (bench --quick, verify --quick, plot); expected: "
                       f"{DEMO_EXPECTED}")
            threads = f"{config.threads} torch thread" + ("s" if config.threads != 1 else "")
            step(1, f"bench --quick: {len(list(config.cells()))} sweep cells, {threads}")
            if _run_bench(config, bench_args, args.out, offer_resume=False):
                return 1  # (its line said why; verify and the figures would run on nothing: ca_rev116)
            step(2, "verify --quick: the dual solutions against CVXPY and the closed form")
            status = _run_verify(verify_args, verify_config, None, backends)
            step(3, "plot: every figure")
            figures = os.path.join(args.out, "figures")
            try:  # as plot holds it: the figure folder's lock, the folder removed again if left empty
                with holding_out(figures, "demo", args, outputs=_figure_folder_files()):
                    _run_plot(plot_args, args.out, figures)
            except UsageError as err:
                # after the two steps' work a refusal is a failed step, not a usage error (exit 1),
                # and the line says what was kept and how to draw the figures
                message = " ".join(str(err).split())
                print(f"convex-attention demo: the figures were not drawn ({message}); the bench and verify "
                      f"results in {args.out} are kept: convex-attention plot {args.out} draws them once the cause "
                      f"is dealt with", file=sys.stderr)
                return 1
    except ResultsLocked as err:
        raise UsageError(str(err)) from err
    info(args, f"demo: done in {time.perf_counter() - start:.0f} s; figures in {os.path.join(args.out, 'figures')}/")
    return status


BENCH_HANDLERS = {"bench": cmd_bench, "verify": cmd_verify, "plot": cmd_plot, "demo": cmd_demo}
