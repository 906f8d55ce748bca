"""Targets the benchmark checks and reports.

* :func:`core_benchmark` (``benchmarks/bench_core.py``): exact against softmax and against
  the paper's learned dual with its loss, and the per-sample speed-up of exact over
  cvxpylayers, measured against every installed backend; the headline speed-up is against
  the *fastest* one (a backend that failed might have been it: the headline is then not
  measured unless it misses anyway).  Every ratio is a ratio of medians of forward+backward
  per repetition (``total_ms``), the statistic the figure draws; verdicts only at the sides
  the targets are set at (:data:`CORE_TARGET_SIDES`).
* :func:`amortised_targets`: after a sweep, the amortised dual's held-out violation against
  λ = 0's, per structure and generator: chains at 2 levels (≤ 1 %) and 3 levels (≤ 10 %), the
  axial family (≤ 1 %, issue 18); other structures have no target and are left out.  A cell
  whose rows errored, are missing or cannot give a ratio makes its target NOT met, and a cell
  a sweep left unmeasured (``--max-cells``) leaves it unjudged.
"""
from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from typing import Any, cast

import torch

from ..cvx import available_backends
from ..hierarchy import Hierarchy
from ..io.environment import environment, load_average, now_utc, run_record
from ..io.files import atomic_csv, error_reason, write_json
from ..methods import get_method
from ..validation import dtype_name
from .cases import make_case, shape_str
from .config import CVX_BATCH, DIFFCP_BATCH
from .results import cvx_samples, run_of, timed_apart
from .timing import fastest, is_measured_time, measure_interleaved, peak_memory_mb, time_ratio

__all__ = ["core_benchmark", "plot_core_record", "amortised_targets", "format_targets", "AMORTISED_TARGETS",
           "CORE_COLUMNS", "CORE_TARGET_SIDES", "RATIO_STATISTIC"]

RATIO_STATISTIC = "median over repetitions of forward+backward time (total_ms)"
CORE_COLUMNS = ("method", "backend", "status", "reason", "shapes", "batch", "dtype", "device", "repeats", "fwd_ms",
                "fwd_ms_q1", "fwd_ms_q3", "bwd_ms", "bwd_ms_q1", "bwd_ms_q3", "total_ms", "total_ms_q1", "total_ms_q3",
                "per_sample_us", "peak_mem_mb")
CVX_RATIO = "cvxpylayers/exact per sample"
#: The sides the core targets are set at (docs/performance.md): a run at others (``bench_core.py
#: --tiny``, another ``--batch``) prints its ratios with no verdict.
CORE_TARGET_SIDES: dict[str, Any] = {"batch": 64, "shapes": ((64, 64), (32, 32)),
                                     "cvx_shapes": ((32, 32), (16, 16)), "dtype": "float32"}
#: The device the core targets are set on (docs/performance.md, "CPU: the targets of the core
#: issue"); cvxpylayers is timed on the CPU wherever exact runs, so a run of exact on another
#: device compares two processors and gets no verdict.
CORE_TARGET_DEVICE = "cpu"


def _off_target_sides(batch: int, shapes, cvx_shapes, dtype, device="cpu") -> str | None:
    """Why ratios measured at these sides are given no verdict (a clause), or None at
    :data:`CORE_TARGET_SIDES` on :data:`CORE_TARGET_DEVICE`."""
    here = {"batch": batch, "shapes": tuple(tuple(s) for s in shapes),
            "cvx_shapes": tuple(tuple(s) for s in cvx_shapes), "dtype": dtype_name(dtype)}
    on = torch.device(device).type
    elsewhere = (f"exact ran on {device}, cvxpylayers on the CPU; the targets are set on the "
                 f"{CORE_TARGET_DEVICE.upper()}" if on != CORE_TARGET_DEVICE else None)
    if here == CORE_TARGET_SIDES:
        return elsewhere

    def sides(d):
        grid = "+".join("x".join(map(str, s)) for s in d["shapes"])
        cvx = "+".join("x".join(map(str, s)) for s in d["cvx_shapes"])
        return f"{grid}, batch {d['batch']}, {d['dtype']} (cvxpylayers against exact at {cvx})"

    return "; ".join(filter(None, [f"measured at {sides(here)}; the targets are set at {sides(CORE_TARGET_SIDES)}",
                                   elsewhere]))


def _label(method: str) -> str:
    return f"{method}+loss" if get_method(method).needs_duals else method


def _row(method, backend, h, batch, dtype, device, meas, peak=float("nan")) -> dict:
    return {"method": method, "backend": backend, "status": "ok", "reason": "", "shapes": shape_str(h),
            "batch": batch, "dtype": dtype_name(dtype), "device": str(device), "repeats": len(meas.fwd_ms),
            **meas.summary(),
            "per_sample_us": 1e3 * meas.total_median / batch, "peak_mem_mb": peak}


def core_benchmark(batch: int = CORE_TARGET_SIDES["batch"], shapes=CORE_TARGET_SIDES["shapes"],
                   cvx_shapes=CORE_TARGET_SIDES["cvx_shapes"], cvx_batch: int = CVX_BATCH, repeats: int = 50,
                   cvx_repeats: int = 3, device="cpu", dtype=torch.float32, out_dir: str | None = None, log=print,
                   backends=None, diffcp_batch: int = DIFFCP_BATCH) -> dict:
    """The speed targets of the core, measured side by side in one run.

    Times ``softmax``, ``exact`` and ``learned_dual`` + its consistency loss on ``batch``
    samples of ``shapes`` (interleaved), then ``exact`` and cvxpylayers, per backend, at
    ``cvx_shapes`` (cvxpylayers float64 on the CPU, a batched backend such as moreau on
    ``cvx_batch`` samples, a diffcp backend, which solves sample by sample, on
    ``diffcp_batch``: the sweep's rule, :func:`~.results.cvx_samples`).

    Args:
        backends: cvxpylayers backends to time (``None``: every installed one).

    Returns:
        ``{"rows", "ratios", "targets", "backend_ratios", "fastest_backend", "statistic",
        "off_target_sides"}``: one row per measured case; ``ratios`` holds exact/softmax,
        exact/learned_dual+loss and cvxpylayers/exact per sample (against the fastest backend
        that ran; NaN when none ran, and where one that failed might have been faster and the
        others reach the target); ``backend_ratios`` the last ratio per backend;
        ``off_target_sides``: why the ratios get no verdict (measured at other sides than
        :data:`CORE_TARGET_SIDES`), or None.
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
        samples = cvx_samples(backend, cvx_batch, diffcp_batch)
        case = make_case("cvxpylayers", hc, samples, torch.float64, "cpu", options={"backend": backend})
        try:
            meas = measure_interleaved({"cvx": case}, device="cpu", repeats=cvx_repeats, warmup=1)["cvx"]
        except Exception as err:  # a failing backend is reported, the others still count
            rows.append({"method": "cvxpylayers", "backend": backend, "status": "error",
                         "reason": error_reason(err), "shapes": shape_str(hc),
                         "batch": samples, "dtype": "float64", "device": "cpu"})
            continue
        row = _row("cvxpylayers", backend, hc, samples, torch.float64, "cpu", meas)
        rows.append(row)
        backend_ratios[backend] = time_ratio(row["per_sample_us"], small["per_sample_us"])
    by = {r["method"]: r for r in rows[:3]}
    # a backend that raised or whose time is no measured time might have been the fastest
    # (timing.fastest, results_format.md): the ratio to the others then bounds the headline from
    # above, so only a miss is certain; at or above the target it is not measured
    quickest = fastest({r["backend"]: r["per_sample_us"] for r in rows if r["method"] == "cvxpylayers"
                        and r["status"] == "ok"},
                       [r["backend"] for r in rows if r["method"] == "cvxpylayers" and r["status"] != "ok"])
    targets = {"exact/softmax": ("<=", 3.0), "exact/learned_dual+loss": ("<=", 1.0), CVX_RATIO: (">=", 1e4)}
    headline = time_ratio(quickest.time, small["per_sample_us"])
    if not quickest.complete and headline >= targets[CVX_RATIO][1]:
        headline = float("nan")
    fastest_backend = quickest.name
    ratios = {
        "exact/softmax": time_ratio(by["exact"]["total_ms"], by["softmax"]["total_ms"]),
        "exact/learned_dual+loss": time_ratio(by["exact"]["total_ms"], by["learned_dual+loss"]["total_ms"]),
        CVX_RATIO: headline,
    }
    off = _off_target_sides(batch, shapes, cvx_shapes, dtype, device)
    log(_format(rows, ratios, targets, backend_ratios, fastest_backend, off))
    out = {"rows": rows, "ratios": ratios, "targets": targets, "backend_ratios": backend_ratios,
           "fastest_backend": fastest_backend, "statistic": RATIO_STATISTIC, "off_target_sides": off,
           "runs": [run_record(started, load_start)]}
    if out_dir:
        _write(out, out_dir, device)
    return out


def _format(rows, ratios, targets, backend_ratios, fastest, off: str | None = None) -> str:
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
    # the backends that raised or gave no measured time (timing.fastest): where one did, the
    # headline is a ratio to the fastest that ran, an upper bound on the ratio to the fastest
    failed = [r["backend"] for r in rows if r["method"] == "cvxpylayers"
              and (r["status"] != "ok" or not is_measured_time(r.get("per_sample_us")))]
    for name, value in ratios.items():
        op, target = targets[name]
        label = name + (f" (fastest backend: {fastest})" if name == CVX_RATIO and fastest else "")
        if not math.isfinite(value):
            lines.append(f"{label:<58}{'—':>12}   target {op} {target:g}   NOT measured")
            continue
        ok = value <= target if op == "<=" else value >= target
        verdict = "no verdict" if off else "met" if ok else "NOT met"
        lines.append(f"{label:<58}{value:>12.3g}   target {op} {target:g}   {verdict}")
        if name == CVX_RATIO and failed:  # a bound, never read as the ratio to the fastest (ca_rev251)
            lines.append(f"  at most this ratio: {', '.join(failed)} failed and might have been the fastest backend; "
                         f"{fastest} is the fastest that ran")
    for backend, value in backend_ratios.items():
        lines.append(f"{f'cvxpylayers[{backend}]/exact per sample':<58}{value:>12.3g}")
    if off:
        lines.append(f"no verdict: {off}")
    return "\n".join(lines)


def _write(out: dict, out_dir: str, device) -> None:
    os.makedirs(out_dir, exist_ok=True)
    env = environment(device)
    atomic_csv(os.path.join(out_dir, "bench_core.csv"), CORE_COLUMNS, out["rows"])
    record = {"rows": out["rows"], "ratios": out["ratios"], "statistic": out["statistic"],
              "targets": {k: list(v) for k, v in out["targets"].items()}, "backend_ratios": out["backend_ratios"],
              "fastest_backend": out["fastest_backend"], "off_target_sides": out["off_target_sides"],
              "environment": env, "runs": out["runs"]}
    write_json(os.path.join(out_dir, "bench_core.json"), record)
    plot_core_record(record, os.path.join(out_dir, "bench_core.png"))


def plot_core_record(record: dict, path: str) -> str:
    """The core benchmark's figure from its record (``bench_core.json``): what :func:`core_benchmark`
    draws after measuring, and ``benchmarks/bench_core.py --plot-only`` redraws.  The footer
    carries the record's environment and runs (the load average at the start and end; an
    older record without them says so).  A row that failed (a backend that raised) is not
    drawn, and the figure says so: its panel names it and the footer gives its reason."""
    from .plots import plot_core_benchmark

    env = record.get("environment")
    if isinstance(env, dict) and isinstance(record.get("runs"), list):
        env = {**env, "runs": record["runs"]}
    return plot_core_benchmark(record["rows"], record["ratios"], path, env)


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


def amortised_targets(rows: list[dict], unmeasured: Sequence[dict] = ()) -> list[dict]:
    """The amortised dual's targets over a sweep's rows, per structure, generator and level count.

    For every cell (the row key without method and kind) holding learned-dual rows of kind
    ``zero`` or ``amortised``, the ratio of their mean held-out violations.  A target is met
    when every one of its cells was measured and the *worst* cell's ratio is within the
    threshold.  A cell fails (and the target is NOT met, ``failed_cells`` says how many)
    when one of its two rows errored or is missing, or λ = 0's violation is not a positive
    finite number; a NaN amortised violation counts as a miss.  A cell whose rows were
    skipped (the method does not apply to its structure) is not measured and counted in
    ``skipped_cells``; ``met`` is ``None`` (not measured) when no cell has both rows and
    none failed.  ``unmeasured``: the rows a sweep wants but has not measured yet (one stopped
    by ``--max-cells``); a target with such cells (``unmeasured_cells``) is not met before
    they are measured: ``met`` is ``False`` where the cells measured already miss, else
    ``None``.  A cell with one row measured and the other waiting is not measured yet, not
    failed.  Each entry also gives its cost: the amortised dual's time per sample over the
    fastest exact method's in the same cell (median over cells; the closed form in practice),
    over the cells where every exact method gave a measured time (timing.fastest: a zero or
    failed time might have been the fastest), where the fastest was timed in the amortised
    row's run (the rows' ``run``; rows that record none, written before it existed, count as
    one run) and neither row was timed apart from the cell's other methods (a time measured
    on its own is no side-by-side ratio: ``bench.results.timed_apart``); NaN where no cell
    qualifies.

    Returns a list of dicts: ``structure``, ``generator``, ``levels``, ``threshold``,
    ``cells`` (measured), ``failed_cells``, ``skipped_cells``, ``unmeasured_cells``,
    ``worst_ratio``, ``median_ratio``, ``time_vs_exact``, ``met``.
    """
    def structure(r):
        return str(r.get("structure") or "chain")  # rows of files older than structures are chains

    def cell_key(r):
        return (structure(r),) + tuple(str(r.get(k)) for k in ("generator", "scale", "dims", "size", "levels",
                                                                "batch", "temperature", "dtype", "device", "seed"))

    def group_of(r) -> tuple:
        return structure(r), str(r.get("generator")), int(cast(Any, r.get("levels")))

    learned: dict = {}  # (cell, kind) -> its rows, of any status
    cell_group: dict = {}  # cell -> (structure, generator, levels)
    exact: dict = {}
    groups = set()
    for r in rows:
        try:
            method = get_method(r.get("method"))
        except ValueError:
            continue
        if method.needs_duals:
            group = group_of(r)
            groups.add(group)
            if r.get("dual_kind") in ("zero", "amortised"):
                cell_group[cell_key(r)] = group
                learned.setdefault((cell_key(r), r.get("dual_kind")), []).append(r)
        elif method.exact:  # its time, or its failure (timing.fastest: a failed one might have been the fastest)
            times, broke, runs = exact.setdefault(cell_key(r), ({}, [], {}))
            if r.get("status") == "ok":
                name = f"{r.get('method')} {r.get('backend', '')} {len(times)}"
                times[name], runs[name] = _float(r.get("per_sample_ms")), (run_of(r), timed_apart(r))
            elif r.get("status") != "skipped":
                broke.append(str(r.get("method")))
    waiting: dict = {}  # group -> the cells of it not measured yet
    waiting_rows: set = set()  # (cell, kind) of each row not measured yet
    for r in unmeasured:
        try:
            if not get_method(r.get("method")).needs_duals or r.get("dual_kind") not in ("zero", "amortised"):
                continue
        except ValueError:
            continue
        group = group_of(r)
        groups.add(group)
        waiting.setdefault(group, set()).add(cell_key(r))
        waiting_rows.add((cell_key(r), r.get("dual_kind")))
    out = []
    for struct, generator, levels in sorted(groups):
        threshold = (AMORTISED_TARGETS.get(levels) if struct == "chain" else STRUCTURE_AMORTISED_TARGETS.get(struct))
        if threshold is None:
            continue
        ratios, costs, failed, skipped, partly = [], [], 0, 0, 0
        for key in sorted(k for k, g in cell_group.items() if g == (struct, generator, levels)):
            zeros, amortised = learned.get((key, "zero"), []), learned.get((key, "amortised"), [])
            statuses = {r.get("status") for r in zeros + amortised}
            if statuses - {"ok", "skipped"}:  # a row errored
                failed += 1
                continue
            if "skipped" in statuses:
                skipped += 1
                continue
            if not zeros or not amortised:  # a row is missing: not measured yet where the sweep wants it
                if (key, "zero" if not zeros else "amortised") in waiting_rows:
                    partly += 1
                else:
                    failed += 1
                continue
            z, a = _float(zeros[-1].get("violation_mean")), _float(amortised[-1].get("violation_mean"))
            if not (z > 0 and math.isfinite(z)) or a < 0:  # λ = 0's cannot scale a ratio; no violation is negative
                failed += 1
                continue
            ratios.append(a / z if math.isfinite(a) else math.inf)
            times, broke, runs = exact.get(key, ({}, [], {}))
            quickest = fastest(times, broke)
            # a cost only against the fastest exact method known to be it, timed in the amortised
            # row's run (rows of one folder can be of several runs: --resume --methods exact; the
            # slower cvxpylayers rows, never measured again for their cost, may keep an earlier
            # run's number: ca_rev139) and beside it (neither row timed apart: results.TIMED_APART)
            beside = (run_of(amortised[-1]), timed_apart(amortised[-1]))
            if quickest.complete and runs.get(quickest.name) == beside and not beside[1]:
                costs.append(time_ratio(amortised[-1].get("per_sample_ms"), quickest.time))
        worst = max(ratios) if ratios else float("nan")
        finite_costs = [c for c in costs if math.isfinite(c)]
        later = len(waiting.get((struct, generator, levels), set()) - set(cell_group)) + partly
        if failed or (ratios and worst > threshold):
            met = False  # a miss whatever the cells not measured yet give
        elif later or not ratios:
            met = None
        else:
            met = True
        out.append({"target": "amortised held-out violation / λ=0 held-out violation", "structure": struct,
                    "generator": generator, "levels": levels, "threshold": threshold, "cells": len(ratios),
                    "failed_cells": failed, "skipped_cells": skipped, "unmeasured_cells": later, "worst_ratio": worst,
                    "median_ratio": statistics.median(ratios) if ratios else float("nan"),
                    "time_vs_exact": statistics.median(finite_costs) if finite_costs else float("nan"),
                    "met": met})
    return out


def format_targets(targets: list[dict]) -> str:
    """One line per target: the worst and median ratio, the threshold, met / NOT met (and
    the cells that failed or were skipped)."""
    lines = []
    for t in targets:
        where = (f"{t['levels']} levels" if t.get("structure", "chain") == "chain"
                 else f"structure {t['structure']} ({t['levels']} maps)")
        head = f"amortised dual, {t['generator']}, {where}: held-out violation vs λ=0"
        failed, skipped = t.get("failed_cells", 0), t.get("skipped_cells", 0)
        later = t.get("unmeasured_cells", 0)
        notes = ((f"; {failed} cell(s) FAILED (a row errored or is missing, or λ=0's violation is not a positive "
                  f"number)" if failed else "") + (f"; {skipped} cell(s) skipped" if skipped else "")
                 + (f"; {later} cell(s) not measured yet (--max-cells: rerun with --resume)" if later else ""))
        if t["met"] is None and t["cells"] and later:
            lines.append(f"{head}: worst {t['worst_ratio']:.2%}, median {t['median_ratio']:.2%} over {t['cells']} "
                         f"cell(s){notes}   target <= {t['threshold']:.0%}   NOT met (not judged before every cell "
                         f"is measured)")
            continue
        if t["met"] is None:
            lines.append(f"{head}: not measured (no cell with both rows){notes}   target <= {t['threshold']:.0%}   "
                         f"NOT met")
            continue
        cost = (f"; time {t['time_vs_exact']:.2g}x the fastest exact method's"
                if math.isfinite(t["time_vs_exact"]) else "")
        measured = (f"worst {t['worst_ratio']:.2%}, median {t['median_ratio']:.2%} over {t['cells']} cell(s)"
                    if t["cells"] else "no cell measured")
        lines.append(f"{head}: {measured}{cost}{notes}   target <= {t['threshold']:.0%}   "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
