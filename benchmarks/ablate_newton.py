#!/usr/bin/env python
"""The dual solver with and without its regularised Newton directions, side by side in one
process (docs/benchmarks.md, "Convergence of `dual`"; docs/math.md §7.4).

    python benchmarks/ablate_newton.py --size 64 --instances 100

"Off" empties ``convex_attention.dual._REGULARISED_NEWTON``, which is the solver as it was
before the regularised directions existed; "on" is the solver as shipped.  The two alternate
on every instance, one torch thread.  Prints, per family and convergence set of the graph
benchmark (the same instances, the range's ends pinned every fourth draw; float64, tol
1e-10): the sweeps' median and worst, the misses and the total time of each; and on the
speed part's instances (batch 16, float32) forward + backward time per sample and whether
the probabilities and gradients are bit-identical.
"""
import argparse
import statistics
import time
import warnings

import torch

import convex_attention as ca
import convex_attention.dual as dual
from convex_attention.bench import graph_targets as gt
from convex_attention.cli import CommandParser

LADDER = dual._REGULARISED_NEWTON


def _regularised(on: bool) -> None:
    dual._REGULARISED_NEWTON = LADDER if on else ()


def _forward_backward(h, scores, temps, weights):
    leaves = [s.clone().requires_grad_() for s in scores]
    sol = ca.solve(leaves, h, "dual", temperature=temps)
    sum((p * w).sum() for p, w in zip(sol.probs, weights)).backward()
    return sol, [x.grad for x in leaves]


def _speed(size: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 2)  # the speed part's instances
    for family in gt.NONTREE:
        h, scores, temps = gt.draw_instance(family, size, g, (-1.0, 1.0), 16)
        scores = [s.float() for s in scores]
        weights = [torch.randn(s.shape, generator=torch.Generator().manual_seed(5)) for s in scores]
        times: dict = {True: [], False: []}
        last = {}
        for rep in range(8):
            for on in ((False, True) if rep % 2 == 0 else (True, False)):
                _regularised(on)
                start = time.perf_counter()
                last[on] = _forward_backward(h, scores, temps, weights)
                if rep:  # the first round is untimed
                    times[on].append((time.perf_counter() - start) * 1e3 / 16)
        (sol_on, grad_on), (sol_off, grad_off) = last[True], last[False]
        same = all(torch.equal(a, b) for a, b in zip(sol_on.probs + grad_on, sol_off.probs + grad_off))
        print(f"speed {family:<13} ms per sample, median of 7: off {statistics.median(times[False]):.3g}, on "
              f"{statistics.median(times[True]):.3g}; identical {same}", flush=True)


def _convergence(size: int, instances: int, seed: int) -> None:
    for set_name, (lo, hi, max_sweeps) in gt.CONVERGENCE_SETS.items():
        for family in gt.NONTREE:
            g = gt._instance_stream(seed, family, set_name)
            total = {True: 0.0, False: 0.0}
            sweeps: dict = {True: [], False: []}
            misses = {True: 0, False: 0}
            for draw in range(instances):
                h, scores, temps = gt.draw_instance(family, size, g, (lo, hi), 1, pin_ends=draw % gt.PINNED_EVERY == 0)
                for on in ((False, True) if draw % 2 == 0 else (True, False)):
                    _regularised(on)
                    start = time.perf_counter()
                    out = dual.solve_dual(scores, h, temps, tol=1e-10, max_iter=max_sweeps, strict=False)
                    total[on] += time.perf_counter() - start
                    sweeps[on].append(int(out["iterations"][0]))
                    misses[on] += int(not out["converged"][0])
            print(f"{set_name:<7}{family:<13} sweeps median/worst off {statistics.median(sweeps[False]):g}/"
                  f"{max(sweeps[False])}, on {statistics.median(sweeps[True]):g}/{max(sweeps[True])}; misses off "
                  f"{misses[False]}, on {misses[True]}; total s off {total[False]:.1f}, on {total[True]:.1f}",
                  flush=True)


def main(argv=None):
    parser = CommandParser(prog="ablate_newton.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="side of the finest maps, a multiple of 16 (default: 64)")
    parser.add_argument("--instances", type=int, default=100, help="instances per family and set (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="the graph benchmark's seed (default: 0)")
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16 or args.instances < 1:
        parser.error("--size must be a positive multiple of 16 and --instances at least 1")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)  # a miss is counted from info["converged"]
    try:
        _speed(args.size, args.seed)
        _convergence(args.size, args.instances, args.seed)
    finally:
        _regularised(True)


if __name__ == "__main__":
    main()
