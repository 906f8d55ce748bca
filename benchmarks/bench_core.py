#!/usr/bin/env python
"""Core speed targets, measured side by side in one run (DESIGN.md §6 measures).

    python benchmarks/bench_core.py                 # B=64, 64x64+32x32, float32, CPU
    python benchmarks/bench_core.py --tiny          # seconds; what CI runs so it never rots

Prints forward/backward medians, peak memory and three ratios with their targets:
exact/softmax (<= 3), exact/(learned_dual + consistency_loss) (<= 1), and the per-sample
speed-up of exact over cvxpylayers at 32x32+16x16 (>= 1e4).  Writes bench_core.csv,
bench_core.json and bench_core.png/.pdf into --out.
"""
import argparse

import torch

from convex_attention.bench.targets import core_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=100, help="timed repetitions per method (interleaved)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="results/bench_core", help="folder for CSV, JSON and figures")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI smoke run)")
    args = parser.parse_args(argv)
    if args.tiny:
        return core_benchmark(batch=4, shapes=((8, 8), (4, 4)), cvx_shapes=((4, 4), (2, 2)), cvx_batch=2,
                              repeats=5, cvx_repeats=1, device=args.device, out_dir=args.out)
    return core_benchmark(batch=args.batch, repeats=args.repeats, device=args.device, out_dir=args.out,
                          dtype=torch.float32)


if __name__ == "__main__":
    main()
