#!/usr/bin/env python
"""Where the dual solver's time goes on one graph family: per-sample forward + backward time
at several batch sizes, and a cProfile of one call (docs/benchmarks.md, "Speed").

    python benchmarks/profile_dual.py --family mixed --size 64 --batches 8 16 64 --profile

Prints, per batch: the median of 5 timed calls (after 2 untimed) in ms per sample, with the
sweeps and Newton steps per sample; with --profile, the 20 most expensive calls of one
forward + backward at the first batch size.  One torch thread unless --threads.
"""
import argparse
import cProfile
import functools
import pstats
import statistics
import sys
import time

import torch

from convex_attention import solve
from convex_attention.bench.config import STRUCTURES
from convex_attention.bench.graph_targets import draw_instance
from convex_attention.cli import CommandParser
from convex_attention.io.settings import SEED_MAX, check_listed_once, int_in


def _forward_backward(h, leaves, temps, weights, info: dict) -> None:
    """One ``dual`` solve and the backward of a linear loss; its ``info`` into ``info``."""
    sol = solve(leaves, h, "dual", temperature=temps)
    sum((p * w).sum() for p, w in zip(sol.probs, weights)).backward()
    info.update(sol.info)


def build_parser() -> CommandParser:
    """The command line of ``profile_dual.py`` (docs/benchmark_scripts.md is written from it)."""
    parser = CommandParser(prog="profile_dual.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="mixed", choices=STRUCTURES, help="structure family (default: mixed)")
    parser.add_argument("--size", metavar="N", type=int_in(16, 4096, "size"), default=64,
                        help="side of the finest maps, a multiple of 16 from 16 to 4096 (default: 64)")
    parser.add_argument("--batches", metavar="N", type=int_in(1, 1 << 16, "batches"), nargs="+", default=[8],
                        help="batch sizes, from 1 to 65536 (default: 8)")
    parser.add_argument("--threads", metavar="N", type=int_in(1, 1024, "threads"), default=1,
                        help="torch threads, from 1 to 1024 (default: 1)")
    parser.add_argument("--seed", metavar="N", type=int_in(0, SEED_MAX, "seed"), default=3,
                        help=f"seed of the instance, from 0 to {SEED_MAX} (default: 3)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one call")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16 or min(args.batches) < 1 or args.threads < 1:
        parser.error("--size must be a positive multiple of 16; --batches and --threads at least 1")
    try:  # (each would be timed and printed twice: ca_rev141)
        check_listed_once("--batches", args.batches, "batch size")
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    try:  # fails like a command: one line, exit 130 on Ctrl-C, 1 on a failed run (ca_rev194)
        _profile(args)
    except KeyboardInterrupt:
        return parser.run_interrupted("the lines above are the batches it finished; nothing is written")
    except Exception as err:  # noqa: BLE001
        return parser.run_failed(err)
    return 0


def _profile(args) -> None:
    """The timings (and profile) of :func:`main`'s checked options ``args``, printed."""
    for batch in args.batches:
        h, scores, temps = draw_instance(args.family, args.size, torch.Generator().manual_seed(args.seed),
                                         (-1.0, 1.0), batch)
        leaves = [s.float().requires_grad_() for s in scores]
        weights = [torch.randn_like(s) for s in leaves]
        info: dict = {}
        call = functools.partial(_forward_backward, h, leaves, temps, weights, info)
        for _ in range(2):
            call()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(f"{args.family} {args.size}² batch {batch}: {1e3 * statistics.median(times) / batch:.3g} ms per "
              f"sample (min {1e3 * min(times) / batch:.3g}, max {1e3 * max(times) / batch:.3g}); sweeps "
              f"{info['iterations'].float().mean():.3g}, Newton steps {info['newton_steps'].float().mean():.3g} "
              f"per sample", flush=True)
        if args.profile and batch == args.batches[0]:
            profile = cProfile.Profile()
            profile.runcall(call)
            pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    sys.exit(main())
