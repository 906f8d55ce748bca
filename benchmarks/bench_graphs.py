#!/usr/bin/env python
"""The targets of consistency graphs (issue 18), measured side by side in one run.

    python benchmarks/bench_graphs.py --out results/graphs       # every part at the issue's sizes
    python benchmarks/bench_graphs.py --tiny --out /tmp/graphs      # seconds; the smoke run tests use

Convergence of the dual solver on the families without a closed form (>= 100 instances per
family, N(0, 3²) scores, τ in [0.1, 10]; the hard set down to 0.01), its implicit gradients
against finite differences and against every cvxpylayers backend, its speed against the
fastest cvxpylayers backend, dual against exact and exact against the softmaxes on forests,
the implicit backward against unrolled sweeps, the amortised dual on the axial family, and the
problem with given maps against LinSATNet (when installed).  Prints every target with its
value and verdict; writes convergence_instances.csv, gradients.csv, speed.csv, backward.csv,
amortised.csv, linsat.csv and graphs.json (environment, load average at start and end,
targets; the environment, threads and the load average at start and end) into --out
(docs/results_format.md).  `convex-attention plot OUT` draws the backward figure from it.
"""
import argparse
import importlib.util
import sys

from convex_attention.baselines.linsat import LINSAT_INSTALL, linsat_solve
from convex_attention.bench.graph_targets import (
    CVX_PARTS,
    PARTS,
    GraphBenchmark,
    RunRefused,
    check_cvx_device,
    check_no_earlier_results,
    default_backends,
    graph_benchmark,
    reads_setting,
)
from convex_attention.bench.results import BATCH_SETTINGS, cvx_batch_setting, run_reads_setting
from convex_attention.cli import CommandParser
from convex_attention.cvx import BACKENDS, available_backends, unavailable_backends_reason
from convex_attention.io.files import check_out_dir
from convex_attention.io.lock import ResultsLocked
from convex_attention.io.settings import add_options, check_listed_once, given_settings

TINY = dict(size=16, grad_size=16, instances=4, batch=2, grad_draws=1, speed_batch=2, repeats=2, cvx_batch=1,
            diffcp_batch=1, cvx_repeats=1, amortised_steps=2, linsat_iters=(2,), linsat_batch=1, linsat_repeats=1)


def build_parser() -> CommandParser:
    """The command line of ``bench_graphs.py`` (docs/benchmark_scripts.md is written from it)."""
    parser = CommandParser(prog="bench_graphs.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, GraphBenchmark)
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS, metavar="NAME",
                        help=f"cvxpylayers backends, from {', '.join(BACKENDS)} (default: moreau and "
                             f"diffcp-clarabel where installed; diffcp-scs takes minutes per instance here)")
    parser.add_argument("--out", default="results/graphs",
                        help="folder for the CSV and JSON files (default: results/graphs)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes (the smoke run): its targets are given no verdict, and graphs.json's config "
                             "says tiny")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files an earlier run left in --out: graphs.json and the files of the parts "
                             "asked for are removed when the run starts, so a run that fails leaves none of them "
                             "(without it such a folder is refused, exit 2)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for another run writing into --out to finish (without it such a folder is "
                             "refused, exit 2)")
    return parser


def main(argv=None) -> int:
    """Exit 0 when the run finished (a missed target is a result, printed and recorded, not a
    failure), 2 for a usage error or a folder in use, 1 when the run failed, 130 on Ctrl-C;
    every error is one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_settings(args, GraphBenchmark)
    # the tiny settings the parts asked for read (a part's own setting is refused without that part)
    tiny = {k: v for k, v in TINY.items() if reads_setting(k, given.get("parts", PARTS))}
    # every check before the folder is made: a refused run leaves nothing behind
    made = parser.folders_to_make(args.out)  # before check_out_dir makes them
    try:
        config = GraphBenchmark(**({**tiny, **given} if args.tiny else given))
        if args.backends is not None:
            check_listed_once("--backends", args.backends, "backend")  # (each was timed twice: ca_rev114)
            if not set(CVX_PARTS) & set(config.parts):
                raise ValueError(f"--backends is read only by the {' and '.join(CVX_PARTS)} parts; add one to "
                                 f"--parts, or leave --backends out")
        timed = args.backends or default_backends()
        for name in BATCH_SETTINGS:  # read by the speed part's backends of its kind alone (as bench refuses it)
            if name in given and "speed" in config.parts and \
                    not run_reads_setting(name, ("cvxpylayers",), backends=timed):
                flag, kind = "--" + name.replace("_", "-"), [b for b in BACKENDS if cvx_batch_setting(b) == name]
                raise ValueError(f"{flag} applies to {' or '.join(kind)} only, and the backends timed "
                                 f"({' '.join(timed) or 'none'}) leave it out: add one to --backends, or leave "
                                 f"{flag} out")
        why = unavailable_backends_reason(args.backends or [])
        if why:
            raise ValueError(f"--backends: {why}; these can: {', '.join(available_backends()) or 'none'}")
        if "parts" in given and "linsat" in config.parts and importlib.util.find_spec("LinSATNet") is None:
            # asked for by name and not installed: refused, as a backend is (it ran and measured nothing)
            raise ValueError(f"--parts linsat needs the LinSATNet baseline, not installed here: {LINSAT_INSTALL}")
        check_cvx_device(config, args.backends or default_backends())
        check_no_earlier_results(config, args.out, args.overwrite)  # and that its files' names are no folders
        check_out_dir(args.out)
    except ValueError as err:
        parser.error(str(err))
    # the baseline imports LinSATNet when it runs; without the package its part is not measured (said)
    baseline = linsat_solve if importlib.util.find_spec("LinSATNet") is not None else None
    command = " ".join(["benchmarks/bench_graphs.py"] + list(sys.argv[1:] if argv is None else argv))
    try:
        graph_benchmark(config, args.out, baseline=baseline, backends=args.backends, overwrite=args.overwrite,
                        wait=args.wait, command=command, tiny=args.tiny)
    except (ResultsLocked, RunRefused) as err:  # another run holds the folder, or left results there
        parser.refuse(str(err), made)
    except KeyboardInterrupt:
        return parser.run_interrupted(
            "the parts that finished, if any, are in their CSV files; graphs.json (the targets) was not written"
            + (" (--overwrite removed an earlier one when the run started)" if args.overwrite else "")
            + "; rerun (with --overwrite if a part's file was written)", made)
    except Exception as err:  # noqa: BLE001  (a failed run is one line, as every command's)
        return parser.run_failed(err, made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
