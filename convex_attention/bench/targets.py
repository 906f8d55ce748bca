"""Targets the benchmark checks and reports.

* :func:`core_benchmark` (``benchmarks/bench_core.py``): exact against softmax and against
  the paper's learned dual with its loss, and the per-sample speed-up of exact over
  cvxpylayers, measured against every installed backend; the headline speed-up is against
  the *fastest* one.  Every ratio is a ratio of medians of forward+backward per repetition
  (``total_ms``), the statistic the figure draws.
* :func:`amortised_targets`: after a sweep, the amortised dual's held-out violation against
  λ = 0's, per structure and generator: chains at 2 levels (≤ 1 %) and 3 levels (≤ 10 %), the
  axial family (≤ 1 %, issue 18); other structures are reported without a threshold.
"""
from __future__ import annotations

import math
import os
import statistics

import torch

from ..cvx import available_backends
from ..hierarchy import Hierarchy
from ..io.environment import environment, load_average, now_utc, run_record
from ..io.files import atomic_csv, write_json
from ..methods import get_method
from .cases import make_case, shape_str
from .timing import measure_interleaved, peak_memory_mb

__all__ = ["core_benchmark", "plot_core_record", "amortised_targets", "format_targets", "AMORTISED_TARGETS",
           "CORE_COLUMNS", "RATIO_STATISTIC"]

RATIO_STATISTIC = "median over repetitions of forward+backward time (total_ms)"
CORE_COLUMNS = ("method", "backend", "status", "reason", "shapes", "batch", "dtype", "device", "fwd_ms", "fwd_ms_q1",
                "fwd_ms_q3", "bwd_ms", "bwd_ms_q1", "bwd_ms_q3", "total_ms", "total_ms_q1", "total_ms_q3",
                "per_sample_us", "peak_mem_mb")
CVX_RATIO = "cvxpylayers/exact per sample"


def _label(method: str) -> str:
    return f"{method}+loss" if get_method(method).needs_duals else method


def _row(method, backend, h, batch, dtype, device, meas, peak=float("nan")) -> dict:
    return {"method": method, "backend": backend, "status": "ok", "reason": "", "shapes": shape_str(h),
            "batch": batch, "dtype": str(dtype).replace("torch.", ""), "device": str(device), **meas.summary(),
            "per_sample_us": 1e3 * meas.total_median / batch, "peak_mem_mb": peak}


def core_benchmark(batch: int = 64, shapes=((64, 64), (32, 32)), cvx_shapes=((32, 32), (16, 16)),
                   cvx_batch: int = 2, repeats: int = 50, cvx_repeats: int = 3, device="cpu",
                   dtype=torch.float32, out_dir: str | None = None, log=print, backends=None) -> dict:
    """The speed targets of the core, measured side by side in one run.

    Times ``softmax``, ``exact`` and ``learned_dual`` + its consistency loss on ``batch``
    samples of ``shapes`` (interleaved), then ``exact`` and cvxpylayers, per backend, at
    ``cvx_shapes`` (cvxpylayers on ``cvx_batch`` samples, float64 on the CPU).

    Args:
        backends: cvxpylayers backends to time (``None``: every installed one).

    Returns:
        ``{"rows", "ratios", "targets", "backend_ratios", "fastest_backend", "statistic"}``:
        one row per measured case; ``ratios`` holds exact/softmax, exact/learned_dual+loss
        and cvxpylayers/exact per sample (against the fastest backend; NaN when no backend
        ran); ``backend_ratios`` the last ratio per backend.
    """
    backends = list(available_backends() if backends is None else backends)
    started, load_start = now_utc(), load_average()
    h = Hierarchy.grid([tuple(s) for s in shapes])
    main = ("softmax", "exact", "learned_dual")
    cases = {m: make_case(m, h, batch, dtype, device) for m in main}
    res = measure_interleaved(cases, device=device, repeats=repeats, warmup=10)
    rows = [_row(_label(m), "", h, batch, dtype, device, res[m], peak_memory_mb(cases[m], device)) for m in main]
    # exact vs cvxpylayers at a size the reference solver can take, per sample
    hc = Hierarchy.grid([tuple(s) for s in cvx_shapes])
    exact_small = measure_interleaved({"exact": make_case("exact", hc, batch, dtype, device)}, device=device,
                                      repeats=repeats, warmup=5)["exact"]
    small = _row("exact", "", hc, batch, dtype, device, exact_small)
    rows.append(small)
    backend_ratios = {}
    for backend in backends:
        case = make_case("cvxpylayers", hc, cvx_batch, torch.float64, "cpu", options={"backend": backend})
        try:
            meas = measure_interleaved({"cvx": case}, device="cpu", repeats=cvx_repeats, warmup=1)["cvx"]
        except Exception as err:  # a failing backend is reported, the others still count
            rows.append({"method": "cvxpylayers", "backend": backend, "status": "error",
                         "reason": f"{type(err).__name__}: {err}"[:300], "shapes": shape_str(hc),
                         "batch": cvx_batch, "dtype": "float64", "device": "cpu"})
            continue
        row = _row("cvxpylayers", backend, hc, cvx_batch, torch.float64, "cpu", meas)
        rows.append(row)
        backend_ratios[backend] = row["per_sample_us"] / small["per_sample_us"]
    by = {r["method"]: r for r in rows[:3]}
    fastest = min(backend_ratios, key=backend_ratios.get) if backend_ratios else None
    ratios = {
        "exact/softmax": by["exact"]["total_ms"] / by["softmax"]["total_ms"],
        "exact/learned_dual+loss": by["exact"]["total_ms"] / by["learned_dual+loss"]["total_ms"],
        CVX_RATIO: backend_ratios[fastest] if fastest else float("nan"),
    }
    targets = {"exact/softmax": ("<=", 3.0), "exact/learned_dual+loss": ("<=", 1.0), CVX_RATIO: (">=", 1e4)}
    log(_format(rows, ratios, targets, backend_ratios, fastest))
    out = {"rows": rows, "ratios": ratios, "targets": targets, "backend_ratios": backend_ratios,
           "fastest_backend": fastest, "statistic": RATIO_STATISTIC, "runs": [run_record(started, load_start)]}
    if out_dir:
        _write(out, out_dir, device)
    return out


def _format(rows, ratios, targets, backend_ratios, fastest) -> str:
    lines = [f"{'method':<20}{'backend':<17}{'shapes':<14}{'B':>4}{'fwd_ms':>10}{'bwd_ms':>10}{'total_ms':>10}"
             f"{'IQR total':>20}{'us/sample':>11}{'peak_MiB':>10}"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['method']:<20}{r['backend']:<17}{r['shapes']:<14}{r['batch']:>4}  {r['status']}: "
                         f"{r['reason']}")
            continue
        iqr = f"{r['total_ms_q1']:.3f}-{r['total_ms_q3']:.3f}"
        lines.append(f"{r['method']:<20}{r['backend']:<17}{r['shapes']:<14}{r['batch']:>4}{r['fwd_ms']:>10.3f}"
                     f"{r['bwd_ms']:>10.3f}{r['total_ms']:>10.3f}{iqr:>20}{r['per_sample_us']:>11.1f}"
                     f"{r['peak_mem_mb']:>10.2f}")
    lines.append("")
    lines.append(f"ratios of the {RATIO_STATISTIC}")
    for name, value in ratios.items():
        op, target = targets[name]
        label = name + (f" (fastest backend: {fastest})" if name == CVX_RATIO and fastest else "")
        if not math.isfinite(value):
            lines.append(f"{label:<58}{'—':>12}   target {op} {target:g}   NOT measured")
            continue
        ok = value <= target if op == "<=" else value >= target
        lines.append(f"{label:<58}{value:>12.3g}   target {op} {target:g}   {'met' if ok else 'NOT met'}")
    for backend, value in backend_ratios.items():
        lines.append(f"{f'cvxpylayers[{backend}]/exact per sample':<58}{value:>12.3g}")
    return "\n".join(lines)


def _write(out: dict, out_dir: str, device) -> None:
    os.makedirs(out_dir, exist_ok=True)
    env = environment(device)
    atomic_csv(os.path.join(out_dir, "bench_core.csv"), CORE_COLUMNS, out["rows"])
    record = {"rows": out["rows"], "ratios": out["ratios"], "statistic": out["statistic"],
              "targets": {k: list(v) for k, v in out["targets"].items()}, "backend_ratios": out["backend_ratios"],
              "fastest_backend": out["fastest_backend"], "environment": env, "runs": out["runs"]}
    write_json(os.path.join(out_dir, "bench_core.json"), record)
    plot_core_record(record, os.path.join(out_dir, "bench_core.png"))


def plot_core_record(record: dict, path: str) -> str:
    """The core benchmark's figure from its record (``bench_core.json``): what :func:`core_benchmark`
    draws after measuring, and ``benchmarks/bench_core.py --plot-only`` redraws.  The footer
    carries the record's environment and runs (the load average at the start and end; an
    older record without them says so)."""
    from .plots import plot_core_benchmark

    env = record.get("environment")
    if isinstance(env, dict) and isinstance(record.get("runs"), list):
        env = {**env, "runs": record["runs"]}
    return plot_core_benchmark([r for r in record["rows"] if r.get("status", "ok") == "ok"], record["ratios"], path,
                               env)


# ----------------------------------------------------------------------------- sweep targets

# levels -> the largest accepted ratio of the amortised dual's held-out violation to λ = 0's (chains)
AMORTISED_TARGETS = {2: 0.01, 3: 0.10}
# structure -> the same for the structures other than chains that have a target
STRUCTURE_AMORTISED_TARGETS = {"axial": 0.01}


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def amortised_targets(rows: list[dict]) -> list[dict]:
    """The amortised dual's targets over a sweep's rows, per structure, generator and level count.

    For every cell (the row key without method and kind) holding ok learned-dual rows of
    kind ``zero`` and ``amortised``, the ratio of their mean held-out violations.  A target
    is met when the *worst* cell's ratio is within the threshold; ``met`` is ``None`` (not
    measured) when no cell has both rows.  NaN counts as a miss.  Each entry also gives
    its cost: the amortised dual's time per sample over the fastest exact method's in the
    same cell (median over cells; the closed form in practice).

    Returns a list of dicts: ``generator``, ``levels``, ``threshold``, ``cells``,
    ``worst_ratio``, ``median_ratio``, ``time_vs_exact``, ``met``.
    """
    def structure(r):
        return str(r.get("structure") or "chain")  # rows of files older than structures are chains

    def cell_key(r):
        return (structure(r),) + tuple(str(r.get(k)) for k in ("generator", "scale", "dims", "size", "levels",
                                                                "batch", "temperature", "dtype", "device", "seed"))

    learned, exact = {}, {}
    groups = set()
    for r in rows:
        try:
            method = get_method(r.get("method"))
        except ValueError:
            continue
        if method.needs_duals:
            groups.add((structure(r), str(r.get("generator")), int(r.get("levels"))))
            if r.get("status") == "ok":
                learned[(cell_key(r), r.get("dual_kind"))] = r
        elif method.exact and r.get("status") == "ok":
            t = _float(r.get("per_sample_ms"))
            if math.isfinite(t) and t < exact.get(cell_key(r), math.inf):
                exact[cell_key(r)] = t
    out = []
    for struct, generator, levels in sorted(groups):
        threshold = (AMORTISED_TARGETS.get(levels) if struct == "chain" else STRUCTURE_AMORTISED_TARGETS.get(struct))
        if threshold is None:
            continue
        ratios, costs = [], []
        for (key, kind), r in learned.items():
            if kind != "amortised" or key[:2] != (struct, generator) or int(r["levels"]) != levels:
                continue
            zero = learned.get((key, "zero"))
            if zero is None:
                continue
            z, a = _float(zero["violation_mean"]), _float(r["violation_mean"])
            if not (z > 0 and math.isfinite(z)):
                continue
            ratios.append(a / z if math.isfinite(a) else math.inf)
            if key in exact:
                costs.append(_float(r["per_sample_ms"]) / exact[key])
        worst = max(ratios) if ratios else float("nan")
        finite_costs = [c for c in costs if math.isfinite(c)]
        out.append({"target": "amortised held-out violation / λ=0 held-out violation", "structure": struct,
                    "generator": generator, "levels": levels, "threshold": threshold, "cells": len(ratios),
                    "worst_ratio": worst,
                    "median_ratio": statistics.median(ratios) if ratios else float("nan"),
                    "time_vs_exact": statistics.median(finite_costs) if finite_costs else float("nan"),
                    "met": (worst <= threshold) if ratios else None})
    return out


def format_targets(targets: list[dict]) -> str:
    """One line per target: the worst and median ratio, the threshold, met / NOT met."""
    lines = []
    for t in targets:
        where = (f"{t['levels']} levels" if t.get("structure", "chain") == "chain"
                 else f"structure {t['structure']} ({t['levels']} maps)")
        head = f"amortised dual, {t['generator']}, {where}: held-out violation vs λ=0"
        if t["met"] is None:
            lines.append(f"{head}: not measured (no cell with both rows)   target <= {t['threshold']:.0%}   "
                         f"NOT met")
            continue
        cost = (f"; time {t['time_vs_exact']:.2g}x the fastest exact method's"
                if math.isfinite(t["time_vs_exact"]) else "")
        lines.append(f"{head}: worst {t['worst_ratio']:.2%}, median {t['median_ratio']:.2%} over {t['cells']} "
                     f"cell(s){cost}   target <= {t['threshold']:.0%}   {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
