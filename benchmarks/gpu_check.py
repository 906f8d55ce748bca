#!/usr/bin/env python
"""GPU check of the fast methods (softmax, exact, dual, learned_dual): correctness on the
device, no host synchronisation in the hot path, and speed.

    python benchmarks/gpu_check.py --out results/gpu       # needs a CUDA device

1. Correctness: on random 2-D/3-D/irregular instances with 2-3 levels and unequal
   temperatures, CUDA results equal the CPU float64 closed form; the dual method agrees;
   float64 gradcheck of exact and learned_dual on the device; ±1e4 scores in
   float16/bfloat16 give no NaN.  On consistency graphs (axial, grid_regions, mixed, star;
   :func:`graph_correctness`): ``dual`` on the device equals ``dual`` on the CPU (values and
   implicit gradients, float64 and float32 scores), ``exact`` on the star equals the CPU's,
   a given map is solved alike, and float64 gradcheck of ``dual`` on a non-tree graph.
2. No host synchronisation: forward + backward of solve(..., check_finite=False) for
   softmax, exact and learned_dual (+ consistency_loss) under
   torch.cuda.set_sync_debug_mode("error").
3. Speed: forward and backward medians (methods interleaved, CUDA-synchronised), the
   ratios of the core benchmark, and peak memory, at several sizes.

Writes gpu_check.json.  Exit status 1 if a correctness or synchronisation check fails.
"""
import argparse
import math
import os
import sys
import time
import traceback

import torch

import convex_attention as ca
from convex_attention.bench.cases import make_case
from convex_attention.bench.graph_targets import draw_instance
from convex_attention.bench.timing import measure_interleaved, nan_max, peak_memory_mb, time_ratio
from convex_attention.cli import CommandParser
from convex_attention.io.environment import environment
from convex_attention.io.files import check_no_earlier_outputs, check_out_dir, one_line, write_json
from convex_attention.io.settings import int_in


def correctness(device) -> list[dict]:
    results = []
    g = torch.Generator().manual_seed(0)
    cases = {
        "2d-2lvl": ca.Hierarchy.grid([(16, 16), (8, 8)]),
        "2d-3lvl": ca.Hierarchy.grid([(24, 16), (12, 8), (3, 2)]),
        "3d-3lvl": ca.Hierarchy.grid([(8, 8, 4), (4, 4, 2), (2, 2, 1)]),
        "irregular-3lvl": ca.Hierarchy.from_parents(
            [30, 7, 2], [torch.cat([torch.arange(7), torch.randint(0, 7, (23,), generator=g)]),
                         torch.tensor([0, 1, 0, 1, 0, 1, 1])]),
    }
    for name, h in cases.items():
        temps = (0.3 + 2.7 * torch.rand(h.num_levels, generator=g, dtype=torch.float64)).tolist()
        scores = [3 * torch.randn((4,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
        ref = ca.solve(scores, h, "exact", temperature=temps)
        dev = [s.to(device) for s in scores]
        for method, kw, tol in (("exact", {}, 1e-12), ("dual", {"tol": 1e-11, "max_iter": 20000}, 1e-6)):
            sol = ca.solve(dev, h, method, temperature=temps, **kw)
            err = float(ca.metrics.max_abs_err([p.cpu() for p in sol.probs], ref.probs).max())
            results.append({"check": f"{method} cuda float64 vs cpu exact", "case": name, "error": err, "tol": tol,
                            "passed": err <= tol})
        sol32 = ca.solve([s.float() for s in dev], h, "exact", temperature=temps)
        err = float(ca.metrics.max_abs_err([p.cpu().double() for p in sol32.probs], ref.probs).max())
        results.append({"check": "exact cuda float32 vs cpu float64", "case": name, "error": err, "tol": 1e-5,
                        "passed": err <= 1e-5})
        viol = float(sol32.violation.max())
        results.append({"check": "exact cuda float32 violation", "case": name, "error": viol, "tol": 1e-5,
                        "passed": viol <= 1e-5})
        sc = [s[:2].clone().requires_grad_() for s in dev]
        ok = torch.autograd.gradcheck(
            lambda *x, h=h, temps=temps: tuple(ca.solve(list(x), h, "exact", temperature=temps).probs), sc,
            raise_exception=False)  # a failure is a FAIL row, not an exception that ends the run
        results.append({"check": "exact gradcheck on cuda (float64)", "case": name, "error": 0.0, "tol": 0.0,
                        "passed": bool(ok)})
        lam = [torch.randn((1,) + s, dtype=torch.float64, device=device, requires_grad=True) for s in h.shapes[1:]]
        n = len(sc)
        ok = torch.autograd.gradcheck(
            lambda *x, h=h, temps=temps, n=n: tuple(ca.solve(list(x[:n]), h, "learned_dual", temperature=temps,
                                                          duals=list(x[n:])).probs), (*sc, *lam),
            raise_exception=False)
        results.append({"check": "learned_dual gradcheck on cuda (float64)", "case": name, "error": 0.0,
                        "tol": 0.0, "passed": bool(ok)})
    # a fine block whose every cell is masked (-inf, check_finite=False): its cells and its coarse
    # cell get probability 0 and gradient 0 on the device, as on the CPU (not NaN)
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    scores = [3 * torch.randn((2,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    scores[0][0, :2, :2] = -math.inf
    ref = ca.solve(scores, h, "exact", temperature=[0.5, 2.0], check_finite=False)
    leaves = [s.to(device).requires_grad_() for s in scores]
    sol = ca.solve(leaves, h, "exact", temperature=[0.5, 2.0], check_finite=False)
    sum((p * p).sum() for p in sol.probs).backward()
    err = float(ca.metrics.max_abs_err([p.detach().cpu() for p in sol.probs], ref.probs).max())
    finite = all(torch.isfinite(p).all() for p in sol.probs) and all(torch.isfinite(s.grad).all() for s in leaves)
    results.append({"check": "exact cuda float64 masked block vs cpu (finite, gradient too)", "case": "2d-2lvl",
                    "error": err, "tol": 1e-12, "passed": bool(finite and err <= 1e-12)})
    h = ca.Hierarchy.grid([(32, 32), (16, 16), (8, 8)])
    for dtype in (torch.float16, torch.bfloat16):
        for scale in (1e4, -1e4):
            scores = [(scale * torch.randn((4,) + s, generator=g)).to(device, dtype).requires_grad_()
                      for s in h.shapes]
            sol = ca.solve(scores, h, "exact", temperature=[0.3, 1.0, 3.0])
            sum(p.float().square().sum() for p in sol.probs).backward()
            finite = all(torch.isfinite(p).all() for p in sol.probs) and all(torch.isfinite(s.grad).all()
                                                                             for s in scores)
            results.append({"check": f"exact {str(dtype)[6:]} scores {scale:+g}: no NaN", "case": "2d-3lvl",
                            "error": 0.0, "tol": 0.0, "passed": bool(finite)})
    return results


# the spread allowed between two float64 backward passes of the same solution (gradcheck's
# nondet_tol): CUDA's atomic adds make the backward reproducible to rounding only
NONDET_TOL = 1e-10


def _linear_loss_gradient(scores, h, method, temps, weights, **options):
    """``(probs, ∂<p, w>/∂scores)`` of one solve: detached, on the scores' device."""
    leaves = [s.detach().clone().requires_grad_() for s in scores]
    sol = ca.solve(leaves, h, method, temperature=temps, **options)
    grads = torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), leaves)
    return [p.detach() for p in sol.probs], list(grads), sol


def _max_rel(a, b) -> float:
    """Largest ``|a - b| / (|b|_max + tiny)`` over lists of tensors (``b`` on the CPU)."""
    # nan_max: Python's max kept a NaN only where it came first (a NaN second map read 0.0: a review)
    return nan_max(float((x.cpu().double() - y).abs().max() / (y.abs().max() + 1e-300)) for x, y in zip(a, b))


def graph_correctness(device, size: int = 16, batch: int = 3) -> list[dict]:
    """Consistency graphs on ``device`` against the CPU: ``dual`` values and implicit gradients
    (float64 scores to 1e-9 and 1e-7, float32 scores to 1e-5 against the CPU's float64),
    ``exact`` on the star (1e-12), a given region map (1e-9), and float64 gradcheck of
    ``dual`` on a small axial graph.  Instances: scores N(0, 3²), per-map τ log-uniform in
    [0.1, 10] (the graph benchmark's normal set)."""
    results = []
    gen = torch.Generator().manual_seed(5)

    def record(check, case, error, tol, passed=None):
        results.append({"check": check, "case": case, "error": error, "tol": tol,
                        "passed": bool(error <= tol) if passed is None else bool(passed and error <= tol)})

    for family in ("axial", "grid_regions", "mixed", "star"):
        h, scores, temps = draw_instance(family, size, gen, (-1.0, 1.0), batch)
        weights = [torch.randn(s.shape, generator=gen, dtype=torch.float64) for s in scores]
        opts = {"tol": 1e-12}
        ref_p, ref_g, _ = _linear_loss_gradient(scores, h, "dual", temps, weights, **opts)
        dev_scores, dev_weights = [s.to(device) for s in scores], [w.to(device) for w in weights]
        p, gr, sol = _linear_loss_gradient(dev_scores, h, "dual", temps, dev_weights, **opts)
        converged = bool(sol.info["converged"].all())
        record(f"dual {device} float64 vs cpu: values", family, _max_rel(p, ref_p), 1e-9, converged)
        record(f"dual {device} float64 vs cpu: implicit gradient", family, _max_rel(gr, ref_g), 1e-7, converged)
        p32, g32, sol32 = _linear_loss_gradient([s.float() for s in dev_scores], h, "dual", temps,
                                                [w.float() for w in dev_weights])
        record(f"dual {device} float32 vs cpu float64: values", family, _max_rel(p32, ref_p), 1e-5,
               bool(sol32.info["converged"].all()))
        record(f"dual {device} float32 vs cpu float64: gradient", family, _max_rel(g32, ref_g), 1e-4,
               bool(sol32.info["converged"].all()))
        if h.is_forest:
            ref_e, ref_ge, _ = _linear_loss_gradient(scores, h, "exact", temps, weights)
            pe, ge, _ = _linear_loss_gradient(dev_scores, h, "exact", temps, dev_weights)
            record(f"exact {device} float64 vs cpu", family,
                   nan_max((_max_rel(pe, ref_e), _max_rel(ge, ref_ge))), 1e-12)
    # a given map: grid_regions with its region map given (a prior over regions)
    h, scores, temps = draw_instance("grid_regions", size, gen, (-1.0, 1.0), batch)
    regions = h.num_maps - 1
    prior = torch.softmax(torch.randn((batch,) + h.shapes[regions], generator=gen, dtype=torch.float64).flatten(1),
                          1).view((batch,) + h.shapes[regions])
    scored = [None if k == regions else s for k, s in enumerate(scores)]
    ref = ca.solve(scored, h, "dual", temperature=temps, given={regions: prior}, tol=1e-12)
    sol = ca.solve([None if s is None else s.to(device) for s in scored], h, "dual", temperature=temps,
                   given={regions: prior.to(device)}, tol=1e-12)
    record(f"dual {device} given region map vs cpu", "grid_regions", _max_rel(sol.probs, ref.probs), 1e-9,
           bool(sol.info["converged"].all()))
    # float64 gradcheck of the implicit backward on a small non-tree graph, on the device.  On
    # CUDA the backward is not bit-reproducible (atomic adds in index_add_ and the reductions),
    # so gradcheck is given a nondeterminism tolerance, and the spread of two backward passes
    # is recorded as a check of its own.
    h, scores, temps = draw_instance("axial", 16, gen, (-0.5, 0.5), 1, scale=1.0)
    leaves = [s.to(device).requires_grad_() for s in scores]

    def probs_of(*x):
        return tuple(ca.solve(list(x), h, "dual", temperature=temps, tol=1e-13).probs)

    weights = [torch.randn(s.shape, generator=gen, dtype=torch.float64).to(device) for s in scores]
    twice = [torch.autograd.grad(sum((p * w).sum() for p, w in zip(probs_of(*leaves), weights)), leaves)
             for _ in range(2)]
    spread = nan_max(float((a - b).abs().max()) for a, b in zip(*twice))
    record(f"dual backward run twice on {device}: largest difference", "axial", spread, NONDET_TOL)
    try:
        ok, detail = torch.autograd.gradcheck(probs_of, leaves, eps=1e-6, atol=1e-6, rtol=1e-4,
                                              nondet_tol=NONDET_TOL), ""
    except torch.autograd.gradcheck.GradcheckError as err:
        ok, detail = False, one_line(str(err), 300)
    results.append({"check": f"dual gradcheck on {device} (float64, nondet_tol {NONDET_TOL:g})", "case": "axial",
                    "error": 0.0, "tol": 0.0, "passed": bool(ok), "detail": detail})
    return results


def no_sync(device) -> list[dict]:
    results = []
    h = ca.Hierarchy.grid([(64, 64), (32, 32), (16, 16)])
    scores = [torch.randn((8,) + s, device=device, requires_grad=True) for s in h.shapes]
    weights = [torch.randn_like(s) for s in scores]
    lam = [torch.zeros((1,) + s, device=device, requires_grad=True) for s in h.shapes[1:]]
    for method in ("softmax", "exact", "learned_dual"):
        kw = {"duals": lam} if ca.get_method(method).needs_duals else {}
        for _ in range(2):  # warm-up outside the check (first calls may allocate)
            sol = ca.solve(scores, h, method, check_finite=False, **kw)
            sum((p * w).sum() for p, w in zip(sol.probs, weights)).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            sol = ca.solve(scores, h, method, check_finite=False, **kw)
            loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
            if ca.get_method(method).needs_duals:
                loss = loss + ca.consistency_loss(scores, lam, h, check_finite=False)
            loss.backward()
            passed, error = True, ""
        except RuntimeError as err:  # the innermost frame of the package says which line synchronised
            frames = [f for f in traceback.extract_tb(err.__traceback__) if "convex_attention" in f.filename]
            where = f" at {frames[-1].filename.split('convex_attention')[-1]}:{frames[-1].lineno}" if frames else ""
            passed, error = False, one_line(str(err), 300) + where
        finally:
            torch.cuda.set_sync_debug_mode("default")
        results.append({"check": f"{method}: forward+backward without host synchronisation",
                        "case": "64x64+32x32+16x16",
                        "error": 0.0 if passed else 1.0, "tol": 0.0, "passed": passed, "detail": error})
    return results


def speed(device, repeats: int) -> list[dict]:
    rows = []
    settings = [(64, [(64, 64), (32, 32)]), (64, [(128, 128), (64, 64)]), (64, [(256, 256), (128, 128), (64, 64)]),
                (16, [(64, 64, 64), (32, 32, 32)])]
    for batch, shapes in settings:
        h = ca.Hierarchy.grid(shapes)
        cases = {m: make_case(m, h, batch, torch.float32, device) for m in ("softmax", "exact", "learned_dual")}
        cases["dual"] = make_case("dual", h, batch, torch.float32, device, options={"tol": 1e-6})
        res = measure_interleaved(cases, device=device, repeats=repeats, warmup=5)
        for m, meas in res.items():
            rows.append({"shapes": "+".join("x".join(map(str, s)) for s in shapes), "batch": batch,
                         "method": m + ("+loss" if ca.get_method(m).needs_duals else ""), "fwd_ms": meas.fwd_median,
                         "bwd_ms": meas.bwd_median, "total_ms": meas.total_median,
                         "peak_mem_mb": peak_memory_mb(cases[m], device)})
    return rows


def build_parser() -> CommandParser:
    """The command line of ``gpu_check.py`` (docs/benchmark_scripts.md is written from it)."""
    parser = CommandParser(prog="gpu_check.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/gpu", help="folder for gpu_check.json (default results/gpu)")
    parser.add_argument("--repeats", metavar="N", type=int_in(1, 100_000, "repeats"), default=50,
                        help="timed repetitions, from 1 to 100000 (default 50)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the gpu_check.json an earlier run left in --out (without it: exit 2)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # every check before the minutes of work: the record must be writable at the end
    try:
        check_no_earlier_outputs(args.out, ("gpu_check.json",), args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    made = parser.folders_to_make(args.out)  # before check_out_dir makes them (removed again if left empty)
    try:
        check_out_dir(args.out)
    except ValueError as err:
        parser.error(str(err))
    try:
        return _check(args)
    except KeyboardInterrupt:  # one line, exit 130, as the other scripts (ca_rev194)
        return parser.run_interrupted("nothing written" if not os.path.exists(os.path.join(args.out, "gpu_check.json"))
                                      else f"{args.out}/gpu_check.json is an earlier run's", made)
    except Exception as err:  # noqa: BLE001  (one line, exit 1, as every command: ca_rev141)
        return parser.run_failed(err, made)


def _check(args) -> int:
    """The checks and timings of :func:`main`'s checked options ``args``, into ``args.out``."""
    device = torch.device("cuda")
    start = time.perf_counter()
    checks = correctness(device) + graph_correctness(device) + no_sync(device)
    for c in checks:
        print(f"{'pass' if c['passed'] else 'FAIL'}  {c['check']:<55} {c['case']:<18} {c['error']:.2e}")
    rows = speed(device, args.repeats)
    print(f"\n{'shapes':<26}{'B':>4}  {'method':<20}{'fwd_ms':>9}{'bwd_ms':>9}{'total_ms':>10}{'peak_MiB':>10}")
    for r in rows:
        print(f"{r['shapes']:<26}{r['batch']:>4}  {r['method']:<20}{r['fwd_ms']:>9.3f}{r['bwd_ms']:>9.3f}"
              f"{r['total_ms']:>10.3f}{r['peak_mem_mb']:>10.1f}")
    ratios = {}
    for shapes in dict.fromkeys(r["shapes"] for r in rows):
        by = {r["method"]: r["total_ms"] for r in rows if r["shapes"] == shapes}
        # (time_ratio: NaN, never a ZeroDivisionError or a ratio, where a time is no measured time)
        ratios[shapes] = {"exact/softmax": time_ratio(by["exact"], by["softmax"]),
                          "exact/learned_dual+loss": time_ratio(by["exact"], by["learned_dual+loss"])}
        print(f"{shapes:<26} exact/softmax {ratios[shapes]['exact/softmax']:.2f}   "
              f"exact/(learned_dual+loss) {ratios[shapes]['exact/learned_dual+loss']:.2f}")
    write_json(os.path.join(args.out, "gpu_check.json"),  # atomic, strict JSON (a NaN error is null)
               {"environment": environment(device), "checks": checks, "speed": rows, "ratios": ratios,
                "wall_s": time.perf_counter() - start})
    print(f"gpu_check: {time.perf_counter() - start:.0f} s")
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
