#!/usr/bin/env python
r"""How well the cvxpylayers layer's acceptance tests track the true error of its maps
(docs/design.md §4, "certified by its primal residual and its duality gap ... and by its
stationarity").

    python benchmarks/study_certificate.py --out docs/results/certificate-study
    python benchmarks/study_certificate.py --static-regularization 1e-10 \
        --out docs/results/certificate-study-clarabel-reg
    python benchmarks/study_certificate.py --draws 1 --out /tmp/cert    # about 15 s

For each family of the graph benchmark (and a two-level chain), each temperature set
(log10 τ uniform in [-1, 1], [-2, 1] and [-4, 4]; scores N(0, 3²)) and each backend, one
sample per draw is solved by the layer at the backend's defaults (or diffcp-clarabel at
``--static-regularization``) *without* its acceptance test, in one attempt (the layer's
retries are not made), and three numbers are recorded beside the true error of its maps
against an independent reference (``exact`` on forests, ``dual`` at tol 1e-12 elsewhere): the
certificate (primal residual and relative duality gap, :func:`convex_attention.cvx.certificate`),
the stationarity distance (:func:`convex_attention.metrics.stationarity`) and whether the
layer, with its acceptance test (:func:`convex_attention.cvx.acceptance`), would accept the
solve.  Writes ``certificate.csv`` into ``--out`` and prints, per backend and set, the worst
error, the distance's ratio to the error, and what the acceptance test refuses.
"""
import argparse
import json
import math
import os
import sys
import time
import warnings

import torch

import convex_attention as ca
from convex_attention import cvx
from convex_attention.bench.config import add_study_arguments, check_study_arguments, run_study
from convex_attention.bench.graph_targets import draw_instance
from convex_attention.bench.timing import nan_max
from convex_attention.cli import CommandParser
from convex_attention.cvx import BACKENDS, STATIONARITY_FACTOR, available_backends, centred_scores
from convex_attention.hierarchy import Hierarchy
from convex_attention.io.environment import environment, load_average
from convex_attention.io.files import atomic_csv, write_json
from convex_attention.io.settings import check_listed_once, positive_float

SETS = {"normal": (-1.0, 1.0), "hard": (-2.0, 1.0), "extreme": (-4.0, 4.0)}
OUTPUTS = ("certificate.csv", "certificate.json")
SCALE = 3.0
FAMILIES = ("chain", "star", "axial", "grid_regions", "mixed")
COLUMNS = ("set", "family", "draw", "backend", "status", "tau_min", "tau_max", "certificate", "accept_tol",
           "stationarity", "error", "accepted")


def instance(family: str, size: int, g: torch.Generator, log_tau):
    """One sample of ``family`` at side ``size`` (the chain: size² onto (size/2)², its two
    temperatures drawn as an axial instance's first two)."""
    h, scores, temps = draw_instance("axial" if family == "chain" else family, size, g, log_tau, 1, scale=SCALE)
    if family == "chain":
        h = Hierarchy.grid([(size, size), (size // 2, size // 2)])
        scores = [SCALE * torch.randn((1,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
        temps = temps[:2]
    return h, scores, [float(t) for t in temps]


def reference(h, scores, temps):
    if h.is_forest:
        return ca.solve(scores, h, "exact", temperature=temps).probs
    return ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, max_iter=20000).probs


def study(backend: str, h, scores, temps, ref, regularization: float | None = None) -> dict:
    extra = {} if regularization is None or backend != "diffcp-clarabel" else \
        {"static_regularization_constant": regularization}
    opts = cvx.check_options({"backend": backend, **extra})
    flat = centred_scores([s.reshape(1, -1) for s in scores])
    layer = cvx.get_layer(h, temps, backend)
    args = cvx._solver_args(opts["backend"], opts["eps"], opts["max_iters"], opts["extra"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs, duals = layer(flat, args, derivative_mode=None)
    probs, duals = [p.detach().cpu() for p in probs], [d.detach().cpu() for d in duals]
    cert, distance, accepted = cvx.acceptance(h, temps, flat, probs, duals, opts["accept_tol"])
    # nan_max: Python's max dropped a NaN map that did not come first (error 0.0: a review)
    error = nan_max(float((p.reshape(-1) - r.reshape(-1)).abs().max()) for p, r in zip(probs, ref))
    return {"certificate": float(cert[0]), "accept_tol": opts["accept_tol"], "stationarity": float(distance[0]),
            "error": error, "accepted": bool(accepted[0])}


def _ratio_range(ratios) -> str:
    """The range of the finite ratios, and how many are NaN (Python's min and max keep a NaN
    only where it comes first: a NaN stationarity had read '1-1', ca_rev141)."""
    finite = [x for x in ratios if not math.isnan(x)]
    text = f"{min(finite):.2g}-{max(finite):.2g}" if finite else "none finite"
    return text + (f" ({len(ratios) - len(finite)} NaN)" if len(finite) < len(ratios) else "")


def build_parser() -> CommandParser:
    """The command line of ``study_certificate.py`` (docs/benchmark_scripts.md is written from it)."""
    p = CommandParser(prog="study_certificate.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, OUTPUTS, draws=4)
    p.add_argument("--backends", nargs="+", default=["diffcp-clarabel", "moreau"], choices=BACKENDS, metavar="NAME",
                   help=f"from {', '.join(BACKENDS)} (default diffcp-clarabel moreau)")
    p.add_argument("--static-regularization", metavar="X", type=positive_float, default=None,
                   help="Clarabel's static_regularization_constant for diffcp-clarabel (default: Clarabel's own, "
                        "1e-8; the layer retries a refused batch with cvx.CLARABEL_RETRIES, which one attempt "
                        "here does not)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    # before any work (a review: --draws 0 wrote empty files and exited 0, and an earlier study
    # was replaced silently)
    missing = [b for b in a.backends if b not in available_backends()]
    if missing:
        p.error(f"backend(s) {', '.join(missing)} not installed here; installed: {', '.join(available_backends())}")
    try:
        check_listed_once("--backends", a.backends, "backend")  # (each studied twice, its rows twice: ca_rev141)
    except ValueError as err:
        p.error(str(err))
    made = check_study_arguments(p, a, OUTPUTS)
    torch.set_num_threads(1)
    return run_study(p, a.out, lambda: _study(a, argv), made)


def _study(a, argv) -> int:
    """The study of :func:`main`'s checked options ``a``, into ``a.out``."""
    start, load_start = time.time(), load_average()
    rows = []
    for set_name, log_tau in SETS.items():
        for family in FAMILIES:
            g = torch.Generator().manual_seed(a.seed)
            for draw in range(a.draws):
                h, scores, temps = instance(family, a.size, g, log_tau)
                try:
                    ref, failed = reference(h, scores, temps), None
                except Exception as err:  # the reference's failure is a row too (it had lost the study: ca_rev129)
                    ref, failed = None, f"error: reference: {type(err).__name__}: {err}"[:200]
                for backend in a.backends:
                    base = {"set": set_name, "family": family, "draw": draw, "backend": backend,
                            "tau_min": min(temps), "tau_max": max(temps)}
                    if failed is not None:
                        rows.append({**base, "status": failed})
                        continue
                    try:
                        rows.append({**base, "status": "ok",
                                     **study(backend, h, scores, temps, ref, a.static_regularization)})
                    except Exception as err:  # a failed solve is a row
                        rows.append({**base, "status": f"error: {type(err).__name__}: {err}"[:200]})
    atomic_csv(os.path.join(a.out, "certificate.csv"), COLUMNS, rows)
    command = ["python", "benchmarks/study_certificate.py", *(sys.argv[1:] if argv is None else argv)]
    write_json(os.path.join(a.out, "certificate.json"),
               {"command": " ".join(command),
                "environment": environment(),
                "load_average_start": load_start, "load_average_end": load_average(),
                "wall_s": time.time() - start, "stationarity_factor": STATIONARITY_FACTOR,
                "clarabel_static_regularization": a.static_regularization})
    for backend in a.backends:
        for set_name in SETS:
            ok = [r for r in rows if r["backend"] == backend and r["set"] == set_name and r["status"] == "ok"]
            if not ok:
                continue
            ratios = [r["stationarity"] / r["error"] for r in ok if r["error"] > 0]
            refused = [r for r in ok if not r["accepted"]]
            print(f"{backend:16} {set_name:8} n={len(ok):3}  worst error {nan_max(r['error'] for r in ok):.2g}  "
                  f"certificate <= {nan_max(r['certificate'] for r in ok):.2g}  stationarity/error "
                  + (_ratio_range(ratios) if ratios else "n/a (no error above 0)")
                  + f"  refused {len(refused)}"
                  + "".join(f"  [{r['family']} draw {r['draw']}: error {r['error']:.2g}]" for r in refused))
    print(json.dumps({"rows": len(rows), "errors": sum(r["status"] != "ok" for r in rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
