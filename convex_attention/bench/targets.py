"""The core speed targets, measured side by side in one run (``benchmarks/bench_core.py``):
exact against softmax and against the paper's learned dual with its loss, and the
per-sample speed-up of exact over cvxpylayers."""
from __future__ import annotations

import csv
import json
import os

import torch

from ..hierarchy import Hierarchy
from .cases import make_case, shape_str
from .timing import environment, measure_interleaved, peak_memory_mb

__all__ = ["core_benchmark"]


def core_benchmark(batch: int = 64, shapes=((64, 64), (32, 32)), cvx_shapes=((32, 32), (16, 16)),
                   cvx_batch: int = 2, repeats: int = 50, cvx_repeats: int = 3, device="cpu",
                   dtype=torch.float32, out_dir: str | None = None, log=print) -> dict:
    """The speed targets of the core issue, measured side by side in one run.

    Returns a dict with one row per measured case and the three ratios.
    """
    h = Hierarchy.grid([tuple(s) for s in shapes])
    cases = {m: make_case(m, h, batch, dtype, device) for m in ("softmax", "exact", "learned_dual")}
    res = measure_interleaved(cases, device=device, repeats=repeats, warmup=10)
    rows = []
    for m, meas in res.items():
        rows.append({"method": m if m != "learned_dual" else "learned_dual+loss", "shapes": shape_str(h),
                     "batch": batch, "dtype": str(dtype).replace("torch.", ""), "device": str(device),
                     "fwd_ms": meas.fwd_median, "bwd_ms": meas.bwd_median, "total_ms": meas.total_median,
                     "per_sample_us": 1e3 * meas.total_median / batch,
                     "peak_mem_mb": peak_memory_mb(cases[m], device)})
    # exact vs cvxpylayers at a size the reference solver can take, per sample
    hc = Hierarchy.grid([tuple(s) for s in cvx_shapes])
    exact_small = measure_interleaved({"exact": make_case("exact", hc, batch, dtype, device)}, device=device,
                                      repeats=repeats, warmup=5)["exact"]
    cvx = measure_interleaved({"cvxpylayers": make_case("cvxpylayers", hc, cvx_batch, torch.float64, "cpu")},
                              device="cpu", repeats=cvx_repeats, warmup=1)["cvxpylayers"]
    for name, meas, b, dt in (("exact", exact_small, batch, dtype), ("cvxpylayers", cvx, cvx_batch, torch.float64)):
        rows.append({"method": name, "shapes": shape_str(hc), "batch": b, "dtype": str(dt).replace("torch.", ""),
                     "device": str(device) if name == "exact" else "cpu", "fwd_ms": meas.fwd_median,
                     "bwd_ms": meas.bwd_median, "total_ms": meas.total_median,
                     "per_sample_us": 1e3 * meas.total_median / b, "peak_mem_mb": float("nan")})
    by = {r["method"]: r for r in rows[:3]}
    ratios = {
        "exact/softmax": by["exact"]["total_ms"] / by["softmax"]["total_ms"],
        "exact/learned_dual+loss": by["exact"]["total_ms"] / by["learned_dual+loss"]["total_ms"],
        "cvxpylayers/exact per sample": rows[4]["per_sample_us"] / rows[3]["per_sample_us"],
    }
    targets = {"exact/softmax": ("<=", 3.0), "exact/learned_dual+loss": ("<=", 1.0),
               "cvxpylayers/exact per sample": (">=", 1e4)}
    log(_format(rows, ratios, targets))
    if out_dir:
        _write(rows, ratios, targets, out_dir, device)
    return {"rows": rows, "ratios": ratios, "targets": targets}


def _format(rows, ratios, targets) -> str:
    lines = [f"{'method':<20}{'shapes':<14}{'B':>4}{'fwd_ms':>10}{'bwd_ms':>10}{'total_ms':>10}"
             f"{'us/sample':>11}{'peak_MiB':>10}"]
    for r in rows:
        lines.append(f"{r['method']:<20}{r['shapes']:<14}{r['batch']:>4}{r['fwd_ms']:>10.3f}{r['bwd_ms']:>10.3f}"
                     f"{r['total_ms']:>10.3f}{r['per_sample_us']:>11.1f}{r['peak_mem_mb']:>10.2f}")
    lines.append("")
    for name, value in ratios.items():
        op, target = targets[name]
        ok = value <= target if op == "<=" else value >= target
        lines.append(f"{name:<32}{value:>12.3g}   target {op} {target:g}   {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def _write(rows, ratios, targets, out_dir, device) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_core.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "bench_core.json"), "w") as f:
        json.dump({"rows": rows, "ratios": ratios, "targets": {k: list(v) for k, v in targets.items()},
                   "environment": environment(device)}, f, indent=2)
    from .plots import plot_core_benchmark

    plot_core_benchmark(rows, ratios, os.path.join(out_dir, "bench_core.png"), environment(device))
