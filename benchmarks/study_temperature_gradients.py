#!/usr/bin/env python
r"""How well method dual's float32 temperature gradients, and the check that returns NaN for
those the float32 solution does not determine, track the float64 optimum's
(docs/design.md §4, "temperature gradients").

    python benchmarks/study_temperature_gradients.py --out docs/results/temperature-gradient-study
    python benchmarks/study_temperature_gradients.py --draws 1 --out /tmp/taugrad    # about 10 s
    python benchmarks/study_temperature_gradients.py --given --sets normal hot hotter --draws 5 \
        --batch 8 --scale 3 --tol 1e-5 --out /tmp/taugrad-given                       # given maps

For each family of the graph benchmark, each temperature set (``--sets``: log10 τ uniform in
[-1, 1], "normal", in [-1, 5], "hot": maps from nearly one-hot to nearly uniform, and in
[2, 8], "hotter") and each draw,
``--batch`` samples of N(0, ``--scale``²) scores (rounded to float32 first, so that both works
solve one problem) are solved with a (M,) temperature tensor that requires grad, and the
gradient of a random linear loss in it is taken four ways: the reference (``exact`` on forests,
``dual`` in float64 at tol 1e-12 elsewhere), ``dual`` in float64 at ``--tol``, ``dual`` in
float32 at ``--tol`` as a user gets it (NaN with a TemperatureGradientWarning where the check
refuses), and the same float32 gradient with the check switched off.  Each map's error is
taken relative to the size the check holds it to, ``max(|g_k|, max_j |g_j| · sqrt(rtol))``
(``rtol`` = ``GRADIENT_RTOL[float32]``, 1e-3).  Writes ``temperature_gradients.csv`` (one row
per map) and ``.json`` into ``--out`` and prints, per set: the maps, the refusals (and how many
of them were more than rtol off), and the maps returned more than rtol off, unwarned.

With ``--given`` each map of each draw is given in turn (its probabilities: the float64 optimum
with every map scored, rounded to float32 and renormalised, which both works are given, as the
scores are rounded) and the others scored; the loss is on the scored maps, whose rows are
written (``given_map`` names the given one; -1 without ``--given``), the reference is ``dual``
in float64 at tol 1e-12 (``exact`` takes no given maps), and a map's held size has a floor of
rtol times the largest reference component with every map scored and the loss on every map
(``scored_size``, one per draw): maps that are poolings of the given one are fixed by it, their gradient is
0 and a float64 solve returns rounding, which held to itself measures noise.
"""
import argparse
import json
import math
import os
import sys
import time
import warnings
from unittest import mock

import torch

import convex_attention as ca
from convex_attention import dual
from convex_attention.bench.config import STRUCTURES, add_study_arguments, check_study_arguments, run_study
from convex_attention.bench.graph_targets import draw_instance
from convex_attention.bench.timing import nan_max
from convex_attention.cli import CommandParser
from convex_attention.hessian import GRADIENT_RTOL
from convex_attention.io.environment import environment, load_average
from convex_attention.io.files import atomic_csv, write_json
from convex_attention.io.settings import check_listed_once, int_in, positive_float

SETS = {"normal": (-1.0, 1.0), "hot": (-1.0, 5.0), "hotter": (2.0, 8.0)}
DEFAULT_SETS = ("normal", "hot")
OUTPUTS = ("temperature_gradients.csv", "temperature_gradients.json")
RTOL = GRADIENT_RTOL[torch.float32]
COLUMNS = ("set", "family", "draw", "given_map", "map", "status", "tau", "reference", "float64_at_tol", "float32",
           "float32_unchecked", "scored_size", "held", "float32_error", "float64_error", "refused")


def temperature_gradient(h, scores, weights, temps, method, given_map: int = -1, given=None,
                         **options) -> torch.Tensor:
    """``∂L/∂τ`` ``(M,)`` of ``L = Σ_k <p_k, w_k>`` over the scored maps (float64); map
    ``given_map`` (if not -1) given as ``given``, its scores unused."""
    tau = torch.tensor(temps, dtype=torch.float64, requires_grad=True)
    if given_map >= 0:
        scores = [None if k == given_map else s for k, s in enumerate(scores)]
        options["given"] = {given_map: given}
    sol = ca.solve(scores, h, method, temperature=tau, **options)
    loss = sum((p.double() * w).sum() for k, (p, w) in enumerate(zip(sol.probs, weights)) if k != given_map)
    return torch.autograd.grad(loss, tau)[0].detach()


def rounded_given(q: torch.Tensor) -> torch.Tensor:
    """Probabilities rounded to float32 and renormalised in float64: what both works are given."""
    q = q.float().double()
    return q / q.sum(dim=tuple(range(1, q.dim())), keepdim=True)


def reference_gradient(h, scores, weights, temps, given_map: int = -1, given=None) -> torch.Tensor:
    """The reference ``∂L/∂τ``: ``exact`` on a forest without given maps, else ``dual`` in
    float64 at tol 1e-12."""
    if h.is_forest and given is None:
        return temperature_gradient(h, scores, weights, temps, "exact")
    return temperature_gradient(h, scores, weights, temps, "dual", given_map, given, tol=1e-12, max_iter=20000)


def study(h, scores, weights, temps, tol: float, given_map: int = -1, given=None) -> dict:
    """The four gradients of one instance (see the module docstring), each ``(M,)``; map
    ``given_map`` (if not -1) given as ``given``."""
    ref = reference_gradient(h, scores, weights, temps, given_map, given)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ca.TemperatureGradientWarning)  # a refusal is the row's NaN
        f32 = temperature_gradient(h, scores, weights, temps, "dual", given_map, given, tol=tol, dtype=torch.float32)
        # the same backward with the check switched off: what a refused map would have been given
        with mock.patch.object(dual, "_undetermined_temperatures", lambda *args, **kwargs: []):
            unchecked = temperature_gradient(h, scores, weights, temps, "dual", given_map, given, tol=tol,
                                             dtype=torch.float32)
    f64 = temperature_gradient(h, scores, weights, temps, "dual", given_map, given, tol=tol)
    return {"reference": ref, "float64_at_tol": f64, "float32": f32, "float32_unchecked": unchecked}


def rows_of(base: dict, temps, got: dict, scored_size: float = 0.0) -> list[dict]:
    """One row per scored map; held sizes ``max(|g_k|, max_j |g_j|·√rtol, rtol·scored_size)``."""
    ref = got["reference"]
    held = torch.maximum(ref.abs(), ref.abs().max() * math.sqrt(RTOL)).clamp(min=RTOL * scored_size)
    rows = []
    for k, tau in enumerate(temps):
        if k == base["given_map"]:
            continue
        row = {**base, "map": k, "status": "ok", "tau": tau, "scored_size": scored_size, "held": float(held[k]),
               **{name: float(value[k]) for name, value in got.items()}}
        row["float32_error"] = abs(row["float32_unchecked"] - row["reference"]) / row["held"]
        row["float64_error"] = abs(row["float64_at_tol"] - row["reference"]) / row["held"]
        row["refused"] = math.isnan(row["float32"])
        rows.append(row)
    return rows


def instance_rows(base: dict, h, scores, weights, temps, tol: float, given: bool) -> list[dict]:
    """The rows of one draw: its maps with every map scored, or (``given``) each map given in turn."""
    if not given:
        return rows_of({**base, "given_map": -1}, temps, study(h, scores, weights, temps, tol))
    scored_size = float(reference_gradient(h, scores, weights, temps).abs().max())
    optimum = ca.solve(scores, h, "dual", temperature=temps, tol=1e-12, max_iter=20000).probs  # (every map scored)
    rows: list[dict] = []
    for k in range(h.num_maps):
        there = {**base, "given_map": k}
        try:
            rows += rows_of(there, temps, study(h, scores, weights, temps, tol, k, rounded_given(optimum[k])),
                            scored_size)
        except (ca.ConvergenceError, ca.ImplicitSolveError, ValueError) as err:  # (a given map with an empty cell)
            rows += failed_rows(there, temps, err)
    return rows


def failed_rows(base: dict, temps, err: Exception) -> list[dict]:
    """A refused solve: a row per (scored) map with its error."""
    return [{**base, "map": k, "tau": t, "status": f"error: {type(err).__name__}: {err}"[:200]}
            for k, t in enumerate(temps) if k != base["given_map"]]


def summary(rows: list[dict], set_name: str) -> str:
    ok = [r for r in rows if r["set"] == set_name and r["status"] == "ok"]
    refused = [r for r in ok if r["refused"]]
    silent = [r for r in ok if not r["refused"] and not r["float32_error"] <= RTOL]
    failed = {(r["family"], r["draw"]) for r in rows if r["set"] == set_name and r["status"] != "ok"}
    # nan_max: Python's max keeps a NaN only where it comes first (a NaN error had read 1e-07: ca_rev141)
    worst = nan_max([r["float32_error"] for r in ok if not r["refused"]] or [math.nan])
    worst64 = nan_max([r["float64_error"] for r in ok] or [math.nan])
    wrongly_kept = sum(r["float32_error"] > RTOL for r in refused)
    return (f"{set_name:7} maps {len(ok):4}  refused {len(refused):3} ({wrongly_kept} of them more than {RTOL:g} "
            f"off)  returned more than {RTOL:g} off, unwarned: {len(silent):3}  worst returned {worst:.3g}  float64 "
            f"at tol worst {worst64:.3g}  instances that raised: {len(failed)}"
            + "".join(f"\n    unwarned: {r['family']} draw {r['draw']} map {r['map']} τ {r['tau']:.3g}"
                      + (f" (map {r['given_map']} given)" if r["given_map"] >= 0 else "")
                      + f": {r['float32_error']:.3g}" for r in silent))


def build_parser() -> CommandParser:
    """The command line of ``study_temperature_gradients.py`` (docs/benchmark_scripts.md is written from it)."""
    p = CommandParser(prog="study_temperature_gradients.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, OUTPUTS, draws=12)
    p.add_argument("--batch", metavar="N", type=int_in(1, 4096, "batch"), default=16,
                   help="samples per draw, from 1 to 4096 (default 16)")
    p.add_argument("--scale", metavar="X", type=positive_float, default=1.0,
                   help="the scores' standard deviation, in (0, 100] (default 1)")
    p.add_argument("--tol", metavar="X", type=positive_float, default=1e-6,
                   help="method dual's tol in float32 and in the float64 solve beside it, in (0, 0.1] (default 1e-6)")
    p.add_argument("--sets", nargs="+", choices=tuple(SETS), default=list(DEFAULT_SETS),
                   help="temperature sets, log10 τ uniform in: " + ", ".join(f"{k} {list(v)}" for k, v in SETS.items())
                        + f" (default {' '.join(DEFAULT_SETS)})")
    p.add_argument("--given", action="store_true",
                   help="give each map in turn (the float64 optimum's, rounded to float32) and score the others")
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if not a.scale <= 100:
        p.error(f"--scale must be a number in (0, 100]; got {a.scale}")
    if not a.tol <= 0.1:
        p.error(f"--tol must be a number in (0, 0.1]; got {a.tol}")
    try:
        check_listed_once("--sets", a.sets, "set")  # (as every list option of the benchmarks: ca_rev141)
    except ValueError as err:
        p.error(str(err))
    made = check_study_arguments(p, a, OUTPUTS)
    torch.set_num_threads(1)
    return run_study(p, a.out, lambda: _study(a, argv), made)


def _study(a, argv) -> int:
    """The study of :func:`main`'s checked options ``a``, into ``a.out``."""
    start, load_start = time.time(), load_average()
    rows: list[dict] = []
    sets = list(a.sets)
    for set_name in sets:
        for family in STRUCTURES:
            g = torch.Generator().manual_seed(a.seed)
            for draw in range(a.draws):
                h, scores, temps = draw_instance(family, a.size, g, SETS[set_name], a.batch, scale=a.scale)
                scores = [s.float().double() for s in scores]
                weights = [torch.randn(s.shape, generator=g, dtype=torch.float64) for s in scores]
                base = {"set": set_name, "family": family, "draw": draw}
                try:
                    rows += instance_rows(base, h, scores, weights, temps, a.tol, a.given)
                except (ca.ConvergenceError, ca.ImplicitSolveError) as err:  # a refused solve is a row per map
                    rows += failed_rows({**base, "given_map": -1}, temps, err)
            print(f"{set_name} {family}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    atomic_csv(os.path.join(a.out, OUTPUTS[0]), COLUMNS, rows)
    command = ["python", "benchmarks/study_temperature_gradients.py", *(sys.argv[1:] if argv is None else argv)]
    write_json(os.path.join(a.out, OUTPUTS[1]),
               {"command": " ".join(command), "environment": environment(),
                "load_average_start": load_start, "load_average_end": load_average(),
                "wall_s": time.time() - start, "rtol": RTOL, "sets": {k: SETS[k] for k in sets}, "given": a.given})
    for set_name in sets:
        print(summary(rows, set_name))
    print(json.dumps({"rows": len(rows), "errors": sum(r["status"] != "ok" for r in rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
