#!/usr/bin/env python
"""The dual solver with and without one of its Newton safeguards, side by side in one process
(docs/benchmarks.md, "Convergence of `dual`"; docs/math.md §7.4).

    python benchmarks/ablate_newton.py --size 64 --instances 100
    python benchmarks/ablate_newton.py --ablate fallback --size 160 --instances 40 --families mixed --backward
    python benchmarks/ablate_newton.py --ablate fallback --dense-limit 0 --families mixed --no-speed
    python benchmarks/ablate_newton.py --ablate pseudo_inverse --sets hard --backward --no-speed

``--ablate regularised`` (the default): "off" empties ``convex_attention.dual._REGULARISED_NEWTON``,
the solver as it was before the regularised directions existed.  ``--ablate fallback``: "off"
sets ``DENSE_FALLBACK_LIMIT`` to 0, the solver as it was before a system that conjugate
gradients could not solve (above ``DENSE_LIMIT`` stacked-dual entries) fell back to the dense
Hessian, in the Newton steps and in the implicit backward.  ``--ablate pseudo_inverse``: "off"
leaves out the implicit backward's retry preconditioned by the dense Hessian's pseudo-inverse
(``hessian.RETRY_PRECONDITIONERS``), and with it the stall stop of the Cholesky-preconditioned
solves and their last attempt without it: the backward as it was before the retry, except that
its first solve factorises up to ``DENSE_FALLBACK_LIMIT`` entries (block-Jacobi above
``DENSE_LIMIT`` before); the forwards are the same, so count it with ``--backward``.  "On" is
the solver as shipped.  The two alternate on every instance, one torch thread.  Prints, per
family and convergence set of the graph benchmark (the same instances, the range's ends pinned
every fourth draw; float64, tol 1e-10): the sweeps' median and worst, the misses and the total time of each, and with
``--backward`` how many implicit backwards failed (ImplicitSolveError) at the solutions; and
unless ``--no-speed``, on the speed part's instances (batch 16, float32) forward + backward
time per sample and whether the probabilities and gradients are bit-identical.
"""
import argparse
import statistics
import time
import warnings

import torch

import convex_attention as ca
import convex_attention.dual as dual
import convex_attention.hessian as hessian
from convex_attention.bench import graph_targets as gt
from convex_attention.cli import CommandParser
from convex_attention.io.settings import SEED_MAX, check_listed_once, int_in

LADDER = dual._REGULARISED_NEWTON
FALLBACK = hessian.DENSE_FALLBACK_LIMIT
RETRIES = hessian.RETRY_PRECONDITIONERS
DENSE = dual.DENSE_LIMIT
ABLATIONS = ("regularised", "fallback", "pseudo_inverse")
_ablation = ABLATIONS[0]
_backward_dense_limit: int | None = None  # --dense-limit, if given; else the backward's shipped limit


def _safeguard(on: bool) -> None:
    """The ablated safeguard on (as shipped) or off; the other is left as shipped."""
    if _ablation == "regularised":
        dual._REGULARISED_NEWTON = LADDER if on else ()
    elif _ablation == "fallback":
        hessian.DENSE_FALLBACK_LIMIT = FALLBACK if on else 0  # read there by the solver and the backward
    else:
        hessian.RETRY_PRECONDITIONERS = RETRIES if on else tuple(r for r in RETRIES if r != "pseudo_inverse")


def _restore() -> None:
    global _backward_dense_limit
    dual._REGULARISED_NEWTON, dual.DENSE_LIMIT, hessian.DENSE_FALLBACK_LIMIT = LADDER, DENSE, FALLBACK
    hessian.RETRY_PRECONDITIONERS, _backward_dense_limit = RETRIES, None


LOSSES = ("linear", "nll", "duals")


def _backward_fails(h, temps, probs, duals, loss: str) -> int:
    """1 where the implicit backward at these maps raises ImplicitSolveError, else 0.  The
    loss: ``linear`` (random weights on the maps), ``nll`` (−log of each map's least probable
    cell) or ``duals`` (random weights on the multipliers alone)."""
    g = torch.Generator().manual_seed(7)
    dual_grads = None
    if loss == "linear":
        grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in probs]
    elif loss == "nll":
        least = [p == p.flatten(1).min(1).values.view((-1,) + (1,) * (p.dim() - 1)) for p in probs]
        grads = [-mask.to(p.dtype) / p.clamp_min(1e-300) for p, mask in zip(probs, least)]
    else:
        grads = [torch.zeros_like(p) for p in probs]
        dual_grads = [torch.randn(d.shape, generator=g, dtype=d.dtype) for d in duals]
    try:
        hessian.implicit_vjp(h, probs, temps, grads, dense_limit=_backward_dense_limit, dual_grads=dual_grads)
    except hessian.ImplicitSolveError:
        return 1
    return 0


def _forward_backward(h, scores, temps, weights):
    leaves = [s.clone().requires_grad_() for s in scores]
    sol = ca.solve(leaves, h, "dual", temperature=temps)
    sum((p * w).sum() for p, w in zip(sol.probs, weights)).backward()
    return sol, [x.grad for x in leaves]


def _speed(size: int, seed: int, families) -> None:
    g = torch.Generator().manual_seed(seed + 2)  # the speed part's instances
    for family in families:
        h, scores, temps = gt.draw_instance(family, size, g, (-1.0, 1.0), 16)
        scores = [s.float() for s in scores]
        weights = [torch.randn(s.shape, generator=torch.Generator().manual_seed(5)) for s in scores]
        times: dict = {True: [], False: []}
        last = {}
        for rep in range(8):
            for on in ((False, True) if rep % 2 == 0 else (True, False)):
                _safeguard(on)
                start = time.perf_counter()
                last[on] = _forward_backward(h, scores, temps, weights)
                if rep:  # the first round is untimed
                    times[on].append((time.perf_counter() - start) * 1e3 / 16)
        (sol_on, grad_on), (sol_off, grad_off) = last[True], last[False]
        same = all(torch.equal(a, b) for a, b in zip(sol_on.probs + grad_on, sol_off.probs + grad_off))
        print(f"speed {family:<13} ms per sample, median of 7: off {statistics.median(times[False]):.3g}, on "
              f"{statistics.median(times[True]):.3g}; identical {same}", flush=True)


def _convergence(size: int, instances: int, seed: int, families, sets, backward: bool, loss: str = "linear") -> None:
    for set_name in sets:
        max_sweeps = gt.CONVERGENCE_SETS[set_name][2]
        for family in families:
            total = {True: 0.0, False: 0.0}
            sweeps: dict = {True: [], False: []}
            misses = {True: 0, False: 0}
            failed_backwards = {True: 0, False: 0}
            for draw, _, h, scores, temps in gt.convergence_instances(seed, family, set_name, size, instances):
                for on in ((False, True) if draw % 2 == 0 else (True, False)):
                    _safeguard(on)
                    start = time.perf_counter()
                    out = dual.solve_dual(scores, h, temps, tol=1e-10, max_iter=max_sweeps, strict=False)
                    total[on] += time.perf_counter() - start
                    sweeps[on].append(int(out["iterations"][0]))
                    misses[on] += int(not out["converged"][0])
                    if backward:
                        probs = dual.reparameterized_probs(scores, out["duals"], h, temps)
                        failed_backwards[on] += _backward_fails(h, temps, probs, out["duals"], loss)
            print(f"{set_name:<7}{family:<13} sweeps median/worst off {statistics.median(sweeps[False]):g}/"
                  f"{max(sweeps[False])}, on {statistics.median(sweeps[True]):g}/{max(sweeps[True])}; misses off "
                  f"{misses[False]}, on {misses[True]}; total s off {total[False]:.1f}, on {total[True]:.1f}"
                  + (f"; failed backwards off {failed_backwards[False]}, on {failed_backwards[True]}"
                     if backward else ""), flush=True)


def build_parser() -> CommandParser:
    """The command line of ``ablate_newton.py`` (docs/benchmark_scripts.md is written from it)."""
    parser = CommandParser(prog="ablate_newton.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", metavar="N", type=int_in(16, 4096, "size"), default=64,
                        help="side of the finest maps, a multiple of 16 from 16 to 4096 (default: 64)")
    parser.add_argument("--instances", metavar="N", type=int_in(1, 100_000, "instances"), default=100,
                        help="instances per family and set, from 1 to 100000 (default: 100)")
    parser.add_argument("--seed", metavar="N", type=int_in(0, SEED_MAX, "seed"), default=0,
                        help=f"the graph benchmark's seed, from 0 to {SEED_MAX} (default: 0)")
    parser.add_argument("--ablate", choices=ABLATIONS, default=ABLATIONS[0],
                        help="the safeguard switched off in the 'off' runs (default: %(default)s)")
    parser.add_argument("--families", nargs="+", choices=gt.NONTREE, default=list(gt.NONTREE),
                        help="graph families (default: all)")
    parser.add_argument("--sets", nargs="+", choices=tuple(gt.CONVERGENCE_SETS), default=list(gt.CONVERGENCE_SETS),
                        help="convergence sets (default: all)")
    parser.add_argument("--backward", action="store_true",
                        help="also count failed implicit backwards at each solution")
    parser.add_argument("--loss", choices=LOSSES, default=LOSSES[0],
                        help="the loss whose --backward is counted: random weights on the maps, -log of each map's "
                             "least probable cell, or random weights on the duals alone (default: %(default)s)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed part's instances")
    parser.add_argument("--dense-limit", metavar="N", type=int_in(0, 2 ** 31 - 1, "dense_limit"), default=None,
                        help="stacked-dual entries above which the Newton systems, and those of the --backward "
                             f"count, are solved by conjugate gradients, in both runs (default: the shipped limits, "
                             f"{hessian.DENSE_LIMIT} for the Newton systems and {hessian.DENSE_FALLBACK_LIMIT} for "
                             f"the backward; 0 forces that path on small instances; the speed part's backward keeps "
                             f"the shipped limit)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16 or args.instances < 1 or (args.dense_limit is not None
                                                                   and args.dense_limit < 0):
        parser.error("--size must be a positive multiple of 16, --instances at least 1 and --dense-limit at least 0")
    try:  # (each would be solved and printed twice: ca_rev141)
        check_listed_once("--families", args.families, "family")
        check_listed_once("--sets", args.sets, "set")
    except ValueError as err:
        parser.error(str(err))
    global _ablation, _backward_dense_limit
    _ablation = args.ablate
    if args.dense_limit is not None:
        dual.DENSE_LIMIT = _backward_dense_limit = args.dense_limit
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)  # a miss is counted from info["converged"]
    try:
        if not args.no_speed:
            _speed(args.size, args.seed, args.families)
        _convergence(args.size, args.instances, args.seed, args.families, args.sets, args.backward, args.loss)
    except KeyboardInterrupt:  # (a traceback had ended it: ca_rev171)
        return parser.run_interrupted("what it printed so far is all it measured")
    finally:
        _restore()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
