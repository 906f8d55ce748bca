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
bench_core.png/.pdf into --out; --plot-only redraws the figure from bench_core.json.
"""
import argparse
import json
import os

import torch

from convex_attention.bench.targets import core_benchmark, plot_core_record
from convex_attention.cli import CommandParser
from convex_attention.cvx import BACKENDS, available_backends
from convex_attention.io.files import check_out_dir
from convex_attention.io.settings import positive_int


def main(argv=None):
    parser = CommandParser(prog="bench_core.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=positive_int, default=64, help="samples per batch (default 64)")
    parser.add_argument("--repeats", type=positive_int, default=100,
                        help="timed repetitions per method (interleaved; default 100)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS, metavar="NAME",
                        help=f"cvxpylayers backends to time, from {', '.join(BACKENDS)} (default: every installed one)")
    parser.add_argument("--out", default="results/bench_core", help="folder for CSV, JSON and figures")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--plot-only", action="store_true",
                        help="measure nothing: redraw OUT/bench_core.png (and .pdf) from OUT/bench_core.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        return _replot(parser, args.out)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"unknown device {args.device!r}; use cpu or cuda")
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device {args.device} is not available here; use --device cpu")
    missing = [b for b in args.backends or [] if b not in available_backends()]
    if missing:
        parser.error(f"backend(s) {', '.join(missing)} not installed here; installed: "
                     f"{', '.join(available_backends()) or 'none'}")
    try:
        check_out_dir(args.out)
    except ValueError as err:
        parser.error(str(err))
    if args.tiny:
        return core_benchmark(batch=4, shapes=((8, 8), (4, 4)), cvx_shapes=((4, 4), (2, 2)), cvx_batch=2,
                              repeats=5, cvx_repeats=1, device=args.device, out_dir=args.out, backends=args.backends)
    return core_benchmark(batch=args.batch, repeats=args.repeats, device=args.device, out_dir=args.out,
                          dtype=torch.float32, backends=args.backends)


def _replot(parser, out: str):
    path = os.path.join(out, "bench_core.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        rows, ratios = record["rows"], record["ratios"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.error(f"--plot-only: {path} is not a bench_core.json ({err})")
    if not isinstance(rows, list) or not isinstance(ratios, dict):
        parser.error(f"--plot-only: {path} holds no rows and ratios")
    written = plot_core_record(record, os.path.join(out, "bench_core.png"))
    print(f"bench_core: {written} (+ .pdf)")
    return record


if __name__ == "__main__":
    main()
