"""The ``convex-attention bench`` sweep: structure families, grid sizes, levels, batch sizes,
dimensionality, temperatures, dtypes and devices; every measure of docs/design.md §6 per method
(and per cvxpylayers backend, and per learned-dual kind), committed row by row to
``bench.csv``/``bench.json`` by :class:`~.results.ResultsWriter`.

Every method of the registry that solves a cell's structure is measured on it; a method that
cannot (``exact`` on a graph that is not a forest) gets a ``skipped`` row whose reason is the
registry's refusal.  Accuracy is measured against a float64 reference: the closed form on
forests, the dual solver at tolerance 1e-11 elsewhere (certified by its violation and its
duality gap; a cell whose reference is not certified leaves the accuracy columns empty).

Timed cases (:mod:`.cases`) run forward and backward separately, interleaved with the other
cases of the same cell so that ratios share the machine's noise; one global warm-up runs
before the first cell.  The file format is documented in docs/results_format.md.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .. import cvx, metrics
from ..cvx import BACKENDS, available_backends, backend_unavailable_reason, get_backend
from ..dual import solve_dual
from ..graph import Graph
from ..io.files import REASON_CHARS, error_reason, one_line
from ..io.lock import results_lock
from ..methods import get_method
from ..solve import Solution, solve
from .cases import amortised_case, make_case, shape_str, timed_case
from .config import MIN_FIT_INSTANCES, SweepConfig, check_sweep, environment_device, fit_instances
from .duals import fit_amortiser, fit_shared_duals
from .generators import generate
from .results import (
    COLUMNS,
    CONVERGENCE_COLUMNS,
    DUAL_KINDS,
    KEY_FIELDS,
    TIMED_APART,
    ResultsWriter,
    cvx_samples,
    fast_exact_methods,
    has_backends,
    records_history,
    row_key,
)
from .structures import structure_graph
from .targets import amortised_targets
from .timing import measure_interleaved, peak_memory_mb, time_once

__all__ = ["SweepConfig", "run_sweep", "check_sweep", "COLUMNS", "CONVERGENCE_COLUMNS", "DUAL_KINDS",
           "KEY_FIELDS", "hierarchy_for", "row_key", "cvx_estimate", "SLOPE_RANGE", "MIN_SIZE_SPREAD",
           "resolve_backends", "fit_instances", "MIN_FIT_INSTANCES"]

# The budget's cost model: a log-log fit of the measured cells of one backend is trusted
# only over a spread of sizes (largest / smallest problem) of at least MIN_SIZE_SPREAD, and
# its slope is kept within SLOPE_RANGE (interior-point solvers on this sparse problem scale
# between linearly and quadratically; two nearly equal sizes timed under load gave 12).
MIN_SIZE_SPREAD = 2.0
SLOPE_RANGE = (0.8, 2.5)


def resolve_backends(config: SweepConfig) -> list[str]:
    """The cvxpylayers backends of the sweep: ``config.cvx_backends`` or every installed one."""
    if config.cvx_backends is None:
        return list(available_backends())
    unknown = [b for b in config.cvx_backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown cvxpylayers backend(s) {', '.join(map(repr, unknown))} for --cvx-backends; "
                         f"choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(config.cvx_backends))


def hierarchy_for(cell: dict, factor: int) -> Graph:
    """The structure of a cell: a hierarchy of grids for a chain (as before structures existed),
    else the family's graph (:func:`convex_attention.bench.structures.structure_graph`; its
    regions drawn from the cell's seed)."""
    structure = cell.get("structure") or "chain"
    # a chain's cell has one level per map; another structure's "levels" counts its maps (unused here)
    return structure_graph(structure, cell["size"], cell["dims"], levels=cell["levels"], factor=factor,
                           seed=cell["seed"])


# The reference of the accuracy columns on structures without a closed form: the dual solver in
# float64 at this tolerance (violation and relative duality gap), certified or not used.
REFERENCE_TOL = 1e-11


def reference_solution(scores64, h: Graph, temps):
    """The float64 reference of a cell and whether it is certified: the closed form on forests;
    elsewhere the dual solver to :data:`REFERENCE_TOL` (not certified where it stops short)."""
    if h.is_forest:
        return solve(scores64, h, "exact", temperature=temps), True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reported through `certified`
        sol = solve(scores64, h, "dual", temperature=temps, tol=REFERENCE_TOL, max_iter=5000, strict=False)
    return sol, bool(sol.info["converged"].all())


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _half(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- the cost model

def _measured_points(rows, backend, levels) -> list[tuple[float, float]]:
    """(cells, seconds per sample) of the measured reference rows of ``backend`` (``None``:
    any) with ``levels`` levels (``None``: any)."""
    pts = []
    for r in rows:
        if not (_is_reference(r.get("method")) and r.get("status") == "ok"):
            continue
        if backend is not None and (r.get("backend") or "") != backend:
            continue
        try:
            if levels is not None and int(r["levels"]) != int(levels):
                continue
            n, t = float(r["n_cells"]), float(r["per_sample_ms"]) / 1e3
        except (KeyError, TypeError, ValueError):
            continue
        if n > 0 and t > 0 and math.isfinite(n) and math.isfinite(t):
            pts.append((n, t))
    return pts


def _spread(pts) -> bool:
    return len(pts) >= 2 and max(p[0] for p in pts) / min(p[0] for p in pts) >= MIN_SIZE_SPREAD


def cvx_estimate(rows: list[dict], n_cells: int, batch: int, calls: int, backend: str | None = None,
                 levels: int | None = None) -> tuple[float, str]:
    """Estimated wall time (s) of a cvxpylayers cell, and the basis of the estimate.

    A log-log line through the measured cells of ``backend`` (``None``: any backend) is
    used only when their sizes spread by at least :data:`MIN_SIZE_SPREAD`; the cells with
    the same number of ``levels`` are preferred (a conic solver's iterations grow with the
    depth of the tree, not only with its size), then every level count.  The fitted slope
    is clamped to :data:`SLOPE_RANGE` and the line refitted through the points at that
    slope.  Otherwise the backend's prior cost model
    (:func:`convex_attention.cvx.prior_seconds_per_sample` with ``CVX_PRIORS[backend]``,
    where the core has one).
    """
    same_depth = _measured_points(rows, backend, levels) if levels is not None else []
    pts = same_depth if _spread(same_depth) else _measured_points(rows, backend, None)
    sizes = [p[0] for p in pts]
    if _spread(pts):
        x, y = np.log(sizes), np.log([p[1] for p in pts])
        slope = float(np.polyfit(x, y, 1)[0])
        clamped = min(max(slope, SLOPE_RANGE[0]), SLOPE_RANGE[1])
        intercept = float(np.mean(y - clamped * x))
        per_sample = math.exp(intercept + clamped * math.log(n_cells))
        which = f"{levels}-level " if pts is same_depth else ""
        basis = (f"fit over {len(pts)} measured {which}cells of {min(sizes):.0f}-{max(sizes):.0f} cells, slope "
                 f"{clamped:.2f}" + (f" (fitted {slope:.3g}, clamped to {SLOPE_RANGE[0]:g}-{SLOPE_RANGE[1]:g})"
                                     if clamped != slope else ""))
    else:
        prior = getattr(cvx, "CVX_PRIORS", {}).get(backend, cvx.CVX_PRIOR)
        per_sample = cvx.prior_seconds_per_sample(n_cells, prior)
        basis = ("prior cost model" + (f" (measured sizes {min(sizes):.0f}-{max(sizes):.0f} cells spread less than "
                                       f"{MIN_SIZE_SPREAD:g}x)" if pts else " (no cell measured yet)"))
    return per_sample * batch * calls, basis


def _cvx_estimate_s(rows: list[dict], n_cells: int, batch: int, calls: int, backend: str | None = None) -> float:
    """The estimate of :func:`cvx_estimate` alone, in seconds."""
    return cvx_estimate(rows, n_cells, batch, calls, backend)[0]


def _is_reference(name) -> bool:
    try:
        return has_backends(get_method(name))
    except ValueError:
        return False


# ----------------------------------------------------------------------------- the sweep

def run_sweep(config: SweepConfig, out_dir: str, resume: bool = False, progress: bool = True, log=print,
              wait: bool = False, overwrite: bool = False, offer_resume: bool = True) -> list[dict]:
    """Run the sweep into ``out_dir``; returns every row (finished earlier ones included
    when resuming).

    A folder that holds an earlier bench's rows needs ``resume`` (keep them, measure the
    rest) or ``overwrite`` (discard them, start over); without either it is refused with
    :class:`~.results.FinishedRows` before anything is measured or written (its message
    names ``--resume`` only with ``offer_resume``: False for ``demo``).  Holds the
    folder's lock (:func:`convex_attention.io.lock.results_lock`) throughout: a second run
    into the same folder raises :class:`~.results.ResultsLocked`, or waits with ``wait``.
    A cell that fails (out of memory included) becomes error rows with the reason; the
    sweep goes on.  Computes with ``config.threads`` torch threads (the caller's count is
    restored afterwards).
    """
    check_sweep(config)
    backends = resolve_backends(config) if any(has_backends(get_method(m)) for m in config.methods) else []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # the declared count, recorded with the run (not the machine's default)
    try:
        return _sweep(config, out_dir, resume, progress, log, wait, backends, overwrite, offer_resume)
    finally:
        torch.set_num_threads(previous_threads)


def _sweep(config: SweepConfig, out_dir: str, resume: bool, progress: bool, log, wait: bool,
           backends: list[str], overwrite: bool = False, offer_resume: bool = True) -> list[dict]:
    from tqdm.auto import tqdm

    with results_lock(out_dir, command="bench", wait=wait, log=log):
        writer = ResultsWriter(out_dir, config, environment_device(config.devices), resume, log=log,
                               overwrite=overwrite, offer_resume=offer_resume)
        done = writer.done()
        pending = []
        for index, cell in enumerate(config.cells()):
            wanted = _wanted_rows(config, cell, backends)
            todo = [r for r in wanted if row_key(r) not in done]
            # the amortised dual's time is divided by the fastest exact method's of its cell
            # (amortised_targets): where either side is measured now, both are, so the ratio is of
            # one run (a resume adding learned_dual divided by an earlier run's exact: ca_rev132)
            paired = [r for r in wanted if _timed_against_each_other(r)]
            if any(r in todo for r in paired):
                todo += [r for r in paired if r not in todo]
                if any(get_method(r["method"]).needs_duals for r in todo):  # the folder's own exact rows too,
                    # where this run does not name them (a resume of learned_dual alone: ca_rev133)
                    todo += [r for r in _stored_fast_exact_rows(cell, done) if r not in todo]
            if todo:
                pending.append((index, cell, todo))
        later: list = []  # the rows of the cells --max-cells leaves for a later run
        if config.max_cells is not None and len(pending) > config.max_cells:
            later = [r for _, _, todo in pending[config.max_cells:] for r in todo]
            pending, stopped = pending[:config.max_cells], True
        else:
            stopped = False
        if pending:
            try:
                writer.set_extra(warmup_s=_global_warmup(config, pending))
            except _CELL_FAILURES as err:  # the cells report it: the first one fails the same way
                log(f"the warm-up failed ({error_reason(err)}); each cell reports its own errors")
        bar = tqdm(pending, desc="bench", unit="cell", disable=not progress, dynamic_ncols=True)
        for index, cell, todo in bar:
            bar.set_postfix_str(f"{cell['structure']} {cell['dims']}-D {cell['size']}^{cell['dims']} "
                                f"M={cell['levels']} B={cell['batch']} τ={cell['temperature']:g} {cell['dtype']} "
                                f"{cell['device']}")
            _run_cell(config, cell, index, todo, writer)
        bar.close()
        if stopped:
            log(f"stopped after {config.max_cells} new cell(s) (--max-cells); rerun with --resume to continue")

        writer.set_extra(targets=amortised_targets(writer.rows, later), cvx_backends=backends)
        return writer.rows


def _timed_against_each_other(row: dict) -> bool:
    """Whether ``row`` is of the amortised dual's time ratio: a learned-dual row, or a fast
    exact method's (the ratio's denominator; cvxpylayers is never the fastest)."""
    return get_method(row["method"]).needs_duals or row["method"] in fast_exact_methods()


def _stored_fast_exact_rows(cell: dict, done: set) -> list[dict]:
    """The cell's rows of fast exact methods that the folder holds finished, whatever this run names."""
    rows = [{**cell, "method": name, "backend": "", "dual_kind": ""} for name in fast_exact_methods()]
    return [r for r in rows if row_key(r) in done]


def _wanted_rows(config: SweepConfig, cell: dict, backends: list[str]) -> list[dict]:
    rows = []
    for m in config.methods:
        method = get_method(m)
        kinds = DUAL_KINDS if method.needs_duals else ("",)
        for backend in (backends if has_backends(method) else [""]):
            for kind in kinds:
                rows.append({**cell, "method": m, "backend": backend, "dual_kind": kind})
    return rows


@dataclass
class _Cell:
    """One cell's instance: the structure, the evaluated scores and the float64 reference."""
    index: int
    spec: dict
    h: Graph
    base: dict  # the columns every row of the cell shares
    device: str
    dtype: torch.dtype
    temps: list
    scores64: list  # M float64 CPU tensors (B, *shapes[k]): the evaluated (held-out) instances
    reference64: Solution  # the reference Solution of scores64 (reference_solution)
    certified: bool  # whether the reference is certified (always on forests)
    scores: list  # scores64 in the cell's dtype and device, requiring grad
    weights: list  # the linear loss's weights, like scores


# What a cell may fail with and still be an error row, not a traceback: out of memory (torch's
# RuntimeError, numpy's and Python's MemoryError), a solver's refusal or arithmetic failure.
_CELL_FAILURES = (RuntimeError, ValueError, ArithmeticError, MemoryError)


def _run_cell(config: SweepConfig, cell: dict, index: int, todo: list[dict], writer: ResultsWriter) -> None:
    """Measure the pending rows of one cell: the fast methods timed together, then the
    reference solver per backend under the time budget.  Whatever of it fails becomes
    error rows with the reason (``--resume`` retries them); a method that cannot solve the
    cell's structure is a skipped row whose reason is the registry's refusal."""
    try:
        c = _prepare_cell(config, cell, index)
    except _CELL_FAILURES as err:  # the instance itself could not be made (e.g. allocated)
        for r in todo:
            writer.commit({**_cell_columns(config, cell, index), **r, "status": "error", "reason": error_reason(err)})
        return
    unsolvable = []
    for r in todo:
        try:
            get_method(r["method"]).check_structure(c.h)
        except ValueError as err:  # the registry's refusal is the reason, recorded as information
            writer.commit({**c.base, **r, "status": "skipped", "reason": one_line(str(err), REASON_CHARS)})
            unsolvable.append(r)
    todo = [r for r in todo if r not in unsolvable]
    fast = [r for r in todo if not has_backends(get_method(r["method"]))]
    if fast:
        try:
            _measure_fast(config, c, fast, writer)
        except _CELL_FAILURES as err:  # out of memory, a solver's refusal
            _measure_apart(config, c, fast, writer, err)
    for r in todo:
        if has_backends(get_method(r["method"])):
            try:
                row = _reference_row(config, c, r, writer.rows)
            except _CELL_FAILURES as err:
                row = {**r, "status": "error", "reason": error_reason(err)}
            writer.commit({**c.base, **row})


def _measure_apart(config: SweepConfig, c: _Cell, fast: list[dict], writer: ResultsWriter,
                   group_error: BaseException) -> None:
    """After the interleaved group of a cell failed: each method's pending rows timed on
    their own, so that one method's failure (e.g. the dual's backward) is its error row only,
    not every fast method's; the rows so timed say so.  --resume retries the error rows."""
    done = writer.done()
    pending = [r for r in fast if row_key(r) not in done]
    methods = list(dict.fromkeys(r["method"] for r in pending))
    # a method timed alone says so wherever the cell has another fast method, committed already or
    # not (one pending method after another had committed had carried no note: ca_rev154)
    note = (f"{TIMED_APART} the cell's other methods (their interleaved run failed: {error_reason(group_error)})"
            if len({r["method"] for r in fast}) > 1 else "")
    for m in methods:
        rows = [r for r in pending if r["method"] == m]
        try:
            _measure_fast(config, c, rows, writer, note)
            continue
        except _CELL_FAILURES as err:
            failure = err
        done = writer.done()
        for r in rows:
            if row_key(r) not in done:
                writer.commit({**c.base, **r, "status": "error", "reason": error_reason(failure)})


def _cell_columns(config: SweepConfig, cell: dict, index: int) -> dict:
    """The columns every row of a cell shares (without allocating its instance)."""
    h = hierarchy_for(cell, config.factor)
    return {**cell, "cell": index, "shapes": shape_str(h), "n_cells": sum(h.sizes)}


def _prepare_cell(config: SweepConfig, cell: dict, index: int) -> _Cell:
    h = hierarchy_for(cell, config.factor)
    device, dtype = cell["device"], _dtype(cell["dtype"])
    scores64 = generate(config.generator, h, cell["batch"], seed=config.seed, scale=config.scale,
                        **_generator_kwargs(config))
    temps = [cell["temperature"]] * h.num_maps
    reference64, certified = reference_solution(scores64, h, temps)
    g = torch.Generator().manual_seed(config.seed + 7)
    weights = [torch.randn(s.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in scores64]
    scores = [s.to(device=device, dtype=dtype, copy=True).requires_grad_() for s in scores64]  # never alias scores64
    base = _cell_columns(config, cell, index)
    return _Cell(index, cell, h, base, device, dtype, temps, scores64, reference64, certified, scores, weights)


def _generator_kwargs(config: SweepConfig) -> dict:
    return {"checkpoint": config.checkpoint} if config.generator == "model" else {}


def _training_scores(config: SweepConfig, h: Graph) -> list[torch.Tensor]:
    """Training instances for the learned duals: seed ``seed + 1``, disjoint from the
    evaluated instances (seed ``seed``)."""
    return generate(config.generator, h, fit_instances(config, sum(h.sizes)), seed=config.seed + 1,
                    scale=config.scale, **_generator_kwargs(config))


def _learned_duals(config: SweepConfig, c: _Cell, kinds: set) -> tuple[dict, object]:
    """λ of each learned-dual kind and the amortised network (None unless asked for).

    ``fitted`` (the paper's shared λ) and ``amortised`` are trained on training instances;
    ``fitted`` requires grad in every dtype, as a learned parameter does in training, so the
    timed backward computes its gradient (half-precision cells had left it out: rev189).
    """
    fit_dtype = torch.float32 if _half(c.dtype) else c.dtype
    duals: dict = {}
    amortiser = None
    train = _training_scores(config, c.h) if kinds & {"fitted", "amortised"} else None
    fitted = fit_shared_duals(c.h, train, c.temps, config.fit_steps, fit_dtype, c.device) if train else None
    if fitted is None:
        fitted = [torch.zeros((1,) + c.h.shapes[b]) for _, b in c.h.edges]
    duals["fitted"] = fitted
    duals["zero"] = [torch.zeros_like(d) for d in fitted]
    duals["per_sample"] = c.reference64.duals
    duals = {k: [d.to(device=c.device, dtype=c.dtype) for d in v] for k, v in duals.items()}
    for d in duals["fitted"]:
        d.requires_grad_()
    if "amortised" in kinds:
        amortiser = fit_amortiser(c.h, train, c.temps, config.amortised_steps, fit_dtype, c.device,
                                  seed=config.seed + 2)
    return duals, amortiser


def _measure_fast(config: SweepConfig, c: _Cell, todo: list[dict], writer: ResultsWriter, note: str = "") -> None:
    """Time the fast methods interleaved, then commit each row with its accuracy (``note``
    appended to each row's reason)."""
    kinds = {r["dual_kind"] for r in todo if get_method(r["method"]).needs_duals}
    duals, amortiser = _learned_duals(config, c, kinds) if kinds else ({}, None)
    cases = {}
    for m in dict.fromkeys(r["method"] for r in todo):
        method = get_method(m)
        cases[m] = timed_case(m, c.h, c.scores, c.weights, c.temps, duals.get("fitted") if method.needs_duals
                              else None, _options(config, method))
        if method.needs_duals and amortiser is not None and "amortised" in kinds:
            cases[_amortised_name(m)] = amortised_case(m, c.h, c.scores, c.weights, c.temps, amortiser)
    timings = measure_interleaved(cases, device=c.device, repeats=config.repeats, warmup=config.warmup)
    for r in todo:
        method = get_method(r["method"])
        kind = r["dual_kind"]
        name = _amortised_name(r["method"]) if kind == "amortised" else r["method"]
        row = {**c.base, **r, "status": "ok", "reason": ""}
        if method.needs_duals and kind not in ("fitted", "amortised"):
            row["reason"] = "timed once, in the 'fitted' row"
        else:
            if method.needs_duals:
                row["reason"] = f"trained on {fit_instances(config, c.base['n_cells'])} training instances"
            row.update(_timing_fields(timings[name], c.spec["batch"]),
                       peak_mem_mb=peak_memory_mb(cases[name], c.device))
        sol = _solution(config, c, method, kind, duals, amortiser)
        row.update(_accuracy(sol, c.scores64, c.h, c.temps, c.reference64, c.certified))
        if not c.certified:
            row["reason"] = "; ".join(filter(None, [row["reason"], _UNCERTIFIED]))
        row["reason"] = "; ".join(filter(None, [row["reason"], note]))
        convergence = None
        if "iterations" in sol.info:
            it = sol.info["iterations"].float()
            row.update(iterations_mean=float(it.mean()), iterations_max=int(it.max()))
        if records_history(method.name):
            convergence = _convergence_rows(config, c)
        writer.commit(row, convergence)


def _amortised_name(method: str) -> str:
    return f"{method}:amortised"


def _options(config: SweepConfig, method) -> dict:
    """Solver options of a timed method: the dual solver's tolerance (non-strict: a cell
    that does not converge is reported through its violation, not an exception)."""
    if method.options is not None and "tol" in method.options:
        return {"tol": config.dual_tol, "strict": False, "max_iter": 5000}
    return {}


def _solution(config: SweepConfig, c: _Cell, method, kind: str, duals: dict, amortiser):
    """The solution whose accuracy a row reports (evaluated instances only)."""
    if not method.needs_duals:
        return solve(c.scores, c.h, method.name, temperature=c.temps, **_options(config, method))
    if kind == "amortised":
        with torch.no_grad():
            lam = amortiser([s.detach().to(next(amortiser.parameters()).dtype) for s in c.scores])
        lam = [d.to(c.dtype) for d in lam]
    else:
        lam = duals[kind]
    return solve(c.scores, c.h, method.name, temperature=c.temps, duals=lam)


def _timing_fields(meas, batch: int) -> dict:
    return {"timed_batch": batch, "repeats": len(meas.fwd_ms), **meas.summary(),
            "per_sample_ms": meas.total_median / batch}


_UNCERTIFIED = (f"the float64 reference (dual solver at {REFERENCE_TOL:g}) did not certify this cell: "
                f"max_abs_err, primal_gap and dual_gap left empty")


def _accuracy(sol, scores64, h, temps, reference64, certified: bool = True) -> dict:
    """Violation (always), and the measures against the float64 reference (where it is certified)."""
    probs = [p.detach().to(torch.float64).cpu() for p in sol.probs]
    violation = metrics.violation(probs, h)
    out = {"violation_max": float(violation.max()), "violation_mean": float(violation.mean()),
           "max_abs_err": float("nan"), "primal_gap": float("nan"), "dual_gap": float("nan")}
    if not certified:
        return out
    f_star = reference64.objective
    out["max_abs_err"] = float(metrics.max_abs_err(probs, reference64.probs).max())
    if get_method(sol.method).consistent:  # the primal gap is defined for feasible p
        out["primal_gap"] = float(metrics.primal_gap(f_star, scores64, probs, temps).max())
    if sol.duals is not None:
        duals = [d.detach().to(torch.float64).cpu() for d in sol.duals]
        out["dual_gap"] = float(metrics.dual_gap(f_star, scores64, duals, h, temps).max())
    return out


def _convergence_rows(config: SweepConfig, c: _Cell) -> list[dict]:
    """The dual solver's history on the cell's instances (float64): violation and dual gap
    ``g(λ) − f*`` per sweep (``f*`` from the reference; the gap columns are empty where the
    reference is not certified)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a sample that stops short shows in its history
        res = solve_dual(c.scores64, c.h, c.temps, tol=min(config.dual_tol, 1e-10), max_iter=5000, strict=False,
                         record_history=True)
    hist = res["history"]
    gaps = hist["dual_objective"] - c.reference64.objective
    if not c.certified:
        gaps = torch.full_like(gaps, float("nan"))
    b = c.base
    return [{"cell": b["cell"], "structure": b["structure"], "dims": b["dims"], "size": b["size"],
             "levels": b["levels"], "temperature": b["temperature"], "iteration": i, "violation_mean": float(v.mean()),
             "violation_max": float(v.max()), "dual_gap_mean": float(gp.mean()), "dual_gap_max": float(gp.max())}
            for i, (v, gp) in enumerate(zip(hist["violation"], gaps))]


# ----------------------------------------------------------------------------- the reference solver

def _reference_row(config: SweepConfig, c: _Cell, r: dict, rows: list[dict]) -> dict:
    """One backend's row of the reference solver: skipped (with the reason and the
    estimate), an error (with the solver's message), or measured on ``--cvx-batch``
    samples of the cell (``--diffcp-batch`` for a diffcp backend, which solves sample by
    sample: :func:`~.results.cvx_samples`)."""
    backend = r["backend"]
    batch = min(c.spec["batch"], cvx_samples(backend, config.cvx_batch, config.diffcp_batch))
    calls = 1 + config.cvx_repeats
    n_cells = c.base["n_cells"]
    if backend:
        reason = backend_unavailable_reason(backend)
        if reason:
            return {**r, "status": "skipped", "reason": f"backend {backend} {reason}"}
        devices = get_backend(backend, check_installed=False).devices
    else:
        devices = ("cpu",)
    device = torch.device(c.device).type
    if device not in devices:
        where = "the cpu cells" if "cpu" in devices else "the cuda cells"
        return {**r, "status": "skipped", "reason": f"{backend or r['method']} solves on {'/'.join(devices)}; "
                                                     f"see {where}"}
    if n_cells > config.cvx_max_cells:
        return {**r, "status": "skipped",
                "reason": f"problem size {n_cells} cells > cap --cvx-max-cells {config.cvx_max_cells}"}
    estimate, basis = cvx_estimate(rows, n_cells, batch, calls, backend, levels=c.spec["levels"])
    if estimate > config.budget:
        return {**r, "status": "skipped", "estimate_s": estimate,
                "reason": f"estimated {estimate:.3g} s ({basis}) > budget --budget {config.budget:g} s"}
    sub = [s[:batch] for s in c.scores64]
    last: dict = {}
    options = {"backend": backend} if backend else {}
    run_device = c.device if device != "cpu" else "cpu"
    case = make_case(r["method"], c.h, batch, torch.float64, run_device, temperature=c.temps, scores=sub,
                     options=options, last=last)
    try:
        # the warm-up, timed: the budget is held to what the cell's calls would cost at its pace,
        # not only to the estimate (diffcp-scs estimated at 4.3 s took 225 s on an Intel VM,
        # SCS running to its iteration limit: docs/benchmarks.md)
        first = time_once(case, run_device)
        if first * calls > config.budget:
            return {**r, "status": "skipped", "estimate_s": estimate,
                    "reason": f"its first (untimed) solve took {first:.3g} s: {calls} calls would take about "
                              f"{first * calls:.3g} s > budget --budget {config.budget:g} s (estimated "
                              f"{estimate:.3g} s)"}
        meas = measure_interleaved({"ref": case}, device=run_device, repeats=config.cvx_repeats, warmup=0)["ref"]
    except Exception as err:  # SolverFailure names the backend, the sample and the status
        return {**r, "status": "error", "estimate_s": estimate,
                "reason": error_reason(err)}
    sub_reference, certified = reference_solution(sub, c.h, c.temps)
    reason = f"timed on {batch} of {c.spec['batch']} samples" + ("" if certified else f"; {_UNCERTIFIED}")
    return {**r, "status": "ok", "reason": reason, "estimate_s": estimate,
            **_timing_fields(meas, batch), "peak_mem_mb": float("nan"),
            **_accuracy(last["solution"], sub, c.h, c.temps, sub_reference, certified)}


# ----------------------------------------------------------------------------- the global warm-up

def _global_warmup(config: SweepConfig, pending: list) -> float:
    """One warm-up before the first cell: every fast method runs a few times on the first
    pending cell of each (device, dtype), so that lazy imports, kernel selection and the
    allocator's first growth are not charged to the first cell measured.  Returns its
    wall time in seconds."""
    start = time.perf_counter()
    seen = set()
    for _, cell, todo in pending:
        key = (cell["device"], cell["dtype"])
        fast = [m for m in dict.fromkeys(r["method"] for r in todo) if not has_backends(get_method(m))]
        if key in seen or not fast:
            continue
        seen.add(key)
        h = hierarchy_for(cell, config.factor)
        fast = [m for m in fast if get_method(m).accepts(h)]
        if not fast:
            continue
        dtype = _dtype(cell["dtype"])
        temps = [cell["temperature"]] * h.num_maps
        cases = {m: make_case(m, h, cell["batch"], dtype, cell["device"], temperature=temps, seed=config.seed + 11,
                              options=_options(config, get_method(m))) for m in fast}
        measure_interleaved(cases, device=cell["device"], repeats=0, warmup=max(config.warmup, 2))
    return time.perf_counter() - start
