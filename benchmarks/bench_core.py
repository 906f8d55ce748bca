#!/usr/bin/env python
"""Core speed targets, measured side by side in one run (docs/design.md §6 measures).

    python benchmarks/bench_core.py                 # B=64, 64x64+32x32, float32, CPU
    python benchmarks/bench_core.py --tiny          # seconds; what CI runs so it never rots

Prints forward/backward medians with their quartiles, peak memory and three ratios with
their targets: exact/softmax (<= 3), exact/(learned_dual + consistency_loss) (<= 1), and
the per-sample speed-up of exact over cvxpylayers at 32x32+16x16 (>= 1e4), measured
against every installed cvxpylayers backend (one line each) and judged against the
fastest.  Every ratio is a ratio of medians of forward+backward time.  Writes
bench_core.csv, bench_core.json (with the load average at the start and end) and
bench_core.png/.pdf into --out (one run at a time: OUT/results.lock; an earlier run's files are
replaced only with --overwrite); --plot-only redraws the figure from bench_core.json, under the
folder's lock, and refuses the options only a measurement reads. A list option names each
backend once.
"""
import argparse
import os
import sys

import torch

from convex_attention.bench.config import check_device
from convex_attention.bench.targets import core_benchmark, plot_core_record
from convex_attention.cli import CommandParser
from convex_attention.cvx import BACKENDS, available_backends, unavailable_backends_reason
from convex_attention.io.files import check_no_earlier_outputs, check_out_dir, clean_stale_tmp, read_json
from convex_attention.io.lock import ResultsLocked, results_lock
from convex_attention.io.settings import check_listed_once, positive_int

MAX_BATCH, MAX_REPEATS = 1 << 20, 100_000  # as bench's own limits: beyond them a run overflows or never ends
OUTPUTS = ("bench_core.csv", "bench_core.json", "bench_core.png", "bench_core.pdf")


def build_parser() -> CommandParser:
    """The command line of ``bench_core.py`` (docs/benchmark_scripts.md is written from it)."""
    parser = CommandParser(prog="bench_core.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", metavar="N", type=positive_int, default=None,
                        help=f"samples per batch, 1 to {MAX_BATCH} (default 64)")
    parser.add_argument("--repeats", metavar="N", type=positive_int, default=None,
                        help=f"timed repetitions per method (interleaved), 1 to {MAX_REPEATS} (default 100)")
    parser.add_argument("--device", metavar="TEXT", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS, metavar="NAME",
                        help=f"cvxpylayers backends to time, from {', '.join(BACKENDS)} (default: every installed one)")
    parser.add_argument("--out", default="results/bench_core",
                        help="folder for CSV, JSON and figures (default: results/bench_core)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--plot-only", action="store_true",
                        help="measure nothing: redraw OUT/bench_core.png (and .pdf) from OUT/bench_core.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files an earlier run left in --out (without it such a folder is refused, "
                             "exit 2)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for another run writing into --out to finish (without it: exit 2)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot_only:
        # it measures nothing: an option only a measurement reads would be taken and ignored (ca_rev141)
        unread = [flag for flag, given in (("--batch", args.batch is not None), ("--repeats", args.repeats is not None),
                                           ("--device", args.device != "cpu"), ("--backends", args.backends),
                                           ("--tiny", args.tiny), ("--overwrite", args.overwrite)) if given]
        if unread:
            parser.error(f"--plot-only measures nothing: {', '.join(unread)} would be ignored; leave "
                         f"{'it' if len(unread) == 1 else 'them'} out")
        record = os.path.join(args.out, "bench_core.json")
        if not os.path.isfile(record):  # (before the lock, which would make the folder)
            why = "not a regular file" if os.path.exists(record) else "no such file"  # (a link to /dev/zero)
            parser.error(f"--plot-only: {record} is not a bench_core.json ({why})")
        try:  # the figure is written beside the files of the run that may hold the folder: one writer
            with results_lock(args.out, command="bench_core --plot-only", wait=args.wait,
                              log=lambda m: print(f"bench_core.py: {m}", file=sys.stderr)):
                _replot(parser, args.out)
        except ResultsLocked as err:
            parser.error(str(err))
        return 0
    if args.tiny and (args.batch is not None or args.repeats is not None):
        # (given at its default value, --batch 64 was taken for not given: a review)
        parser.error("--tiny sets its own sizes (batch 4, 5 repeats): leave --batch and --repeats out, or drop --tiny")
    args.batch = 64 if args.batch is None else args.batch
    args.repeats = 100 if args.repeats is None else args.repeats
    if args.batch > MAX_BATCH or args.repeats > MAX_REPEATS:
        parser.error(f"--batch must be at most {MAX_BATCH} and --repeats at most {MAX_REPEATS}, got {args.batch} "
                     f"and {args.repeats}")
    try:
        check_listed_once("--backends", args.backends, "backend")  # (each timed twice, its rows twice: ca_rev141)
    except ValueError as err:
        parser.error(str(err))
    why = unavailable_backends_reason(args.backends or [])
    if why:
        parser.error(f"--backends: {why}; these can: {', '.join(available_backends()) or 'none'}")
    made = parser.folders_to_make(args.out)  # before check_out_dir makes them
    try:
        check_device(args.device)
        check_no_earlier_outputs(args.out, OUTPUTS, args.overwrite)
        check_out_dir(args.out)
    except ValueError as err:
        parser.error(str(err))
    sizes = (dict(batch=4, shapes=((8, 8), (4, 4)), cvx_shapes=((4, 4), (2, 2)), cvx_batch=2, repeats=5,
                  cvx_repeats=1) if args.tiny else dict(batch=args.batch, repeats=args.repeats, dtype=torch.float32))
    try:
        with results_lock(args.out, command="bench_core", wait=args.wait,
                          log=lambda m: print(f"bench_core.py: {m}", file=sys.stderr)):
            try:  # again under the lock: with --wait, the run waited for may have written them meanwhile
                check_no_earlier_outputs(args.out, OUTPUTS, args.overwrite)
            except ValueError as err:
                parser.refuse(str(err), made)
            clean_stale_tmp(args.out, OUTPUTS)
            core_benchmark(device=args.device, out_dir=args.out, backends=args.backends, **sizes)
            return 0
    except ResultsLocked as err:
        parser.refuse(str(err), made)
    except KeyboardInterrupt:
        # the CSV may have been written before the JSON and the figure (a review): say which are there
        left = [name for name in OUTPUTS if os.path.exists(os.path.join(args.out, name))]
        # (a folder this run made and left empty is removed again: ca_rev171)
        return parser.run_interrupted(f"{', '.join(left)} left in {args.out} (rerun with --overwrite)" if left
                                      else "nothing was written", made)
    except Exception as err:  # noqa: BLE001  (a failed run is one line, as every command's: a review)
        return parser.run_failed(err, made)


def _replot(parser, out: str):
    path = os.path.join(out, "bench_core.json")
    try:
        record = read_json(path)  # strict: NaN or Infinity in it was edited in by hand
        rows, ratios = record["rows"], record["ratios"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        parser.error(f"--plot-only: {path} is not a bench_core.json ({' '.join(str(err).split())})")
    if not isinstance(rows, list) or not isinstance(ratios, dict) or not all(isinstance(r, dict) for r in rows):
        parser.error(f"--plot-only: {path} holds no rows and ratios")
    try:
        written = plot_core_record(record, os.path.join(out, "bench_core.png"))
    except (ValueError, KeyError, TypeError, ZeroDivisionError, AttributeError) as err:  # a record edited by hand
        parser.error(f"--plot-only: {path} cannot be drawn ({type(err).__name__}: {' '.join(str(err).split())})")
    print(f"bench_core: {written} (+ .pdf)")
    return record


if __name__ == "__main__":
    sys.exit(main())
