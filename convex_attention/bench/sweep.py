"""The ``convex-attention bench`` sweep: grid sizes, levels, batch sizes, dimensionality,
temperatures, dtypes and devices; every measure of docs/design.md §6 per method, written
row by row to ``bench.csv``/``bench.json`` by :class:`~.results.ResultsWriter`.

Timed cases (:mod:`.cases`) run forward and backward separately, interleaved with the other
cases of the same cell so that ratios share the machine's noise.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import metrics
from ..cvx import prior_seconds_per_sample
from ..hierarchy import Hierarchy
from ..solve import solve
from .cases import make_case, shape_str, timed_case
from .duals import fit_shared_duals
from .generators import generate
from .results import (
    COLUMNS,
    CONVERGENCE_COLUMNS,
    DUAL_KINDS,
    KEY_FIELDS,
    ResultsWriter,
    row_key,
)
from .timing import measure_interleaved, peak_memory_mb

__all__ = ["SweepConfig", "run_sweep", "check_sweep", "COLUMNS", "CONVERGENCE_COLUMNS", "DUAL_KINDS",
           "KEY_FIELDS", "hierarchy_for", "row_key"]


@dataclass
class SweepConfig:
    methods: list = field(default_factory=lambda: ["softmax", "exact", "dual", "learned_dual", "cvxpylayers"])
    sizes: list = field(default_factory=lambda: [8, 16, 32, 64, 128, 256])
    levels: list = field(default_factory=lambda: [2, 3])
    batches: list = field(default_factory=lambda: [16])
    dims: list = field(default_factory=lambda: [2])
    temperatures: list = field(default_factory=lambda: [1.0])
    dtypes: list = field(default_factory=lambda: ["float32"])
    devices: list = field(default_factory=lambda: ["cpu"])
    generator: str = "lesion"
    scale: float = 1.0
    factor: int = 2
    repeats: int = 10
    warmup: int = 3
    budget: float = 60.0
    cvx_max_cells: int = 6000
    cvx_batch: int = 2
    cvx_repeats: int = 2
    fit_instances: int = 128
    fit_steps: int = 150
    dual_tol: float = 1e-6
    seed: int = 0
    checkpoint: str | None = None
    max_cells: int | None = None

    def cells(self):
        for dims, size, levels, batch, temp, dtype, device in itertools.product(
                self.dims, self.sizes, self.levels, self.batches, self.temperatures, self.dtypes, self.devices):
            yield {"generator": self.generator, "scale": float(self.scale), "dims": int(dims), "size": int(size),
                   "levels": int(levels), "batch": int(batch), "temperature": float(temp), "dtype": dtype,
                   "device": device, "seed": int(self.seed)}


def check_sweep(config: SweepConfig) -> None:
    """Reject a sweep that cannot run, before anything is measured (ValueError)."""
    from ..methods import METHODS

    for m in config.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if config.factor < 2:
        raise ValueError(f"--factor must be at least 2, got {config.factor}")
    for size in config.sizes:
        for levels in config.levels:
            if levels < 2:
                raise ValueError(f"a hierarchy needs at least 2 levels, got {levels}")
            if size <= 0 or size % config.factor ** (levels - 1) != 0:
                raise ValueError(f"size {size} does not divide: {levels} levels with factor {config.factor} "
                                 f"need a multiple of {config.factor ** (levels - 1)}")
    for d in config.dims:
        if d not in (1, 2, 3):
            raise ValueError(f"--dims takes 1, 2 or 3, got {d}")
    for dt in config.dtypes:
        if dt not in ("float32", "float64", "float16", "bfloat16"):
            raise ValueError(f"unknown dtype {dt!r}")
    for dev in config.devices:
        if dev not in ("cpu", "cuda") and not dev.startswith("cuda:"):
            raise ValueError(f"unknown device {dev!r}; use cpu or cuda")
    for t in config.temperatures:
        if not t > 0:
            raise ValueError(f"temperatures must be positive, got {t}")
    from .generators import GENERATORS

    if config.generator not in GENERATORS:
        raise ValueError(f"unknown score generator {config.generator!r}; choose one of {', '.join(GENERATORS)}")
    if config.generator == "model" and not config.checkpoint:
        raise ValueError("--generator model needs --checkpoint (a model trained by `convex-attention train`)")


def hierarchy_for(cell: dict, factor: int) -> Hierarchy:
    return Hierarchy.grid([(cell["size"] // factor ** k,) * cell["dims"] for k in range(cell["levels"])])


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _cvx_estimate_s(rows: list[dict], n_cells: int, batch: int, calls: int) -> float:
    """Estimated wall time of a cvxpylayers cell from the measured ones (log-log fit)."""
    pts = [(float(r["n_cells"]), float(r["per_sample_ms"]) / 1e3) for r in rows
           if r.get("method") == "cvxpylayers" and r.get("status") == "ok" and r.get("per_sample_ms") not in ("", None)]
    if len(pts) >= 2 and len({p[0] for p in pts}) >= 2:
        x = np.log([p[0] for p in pts])
        y = np.log([p[1] for p in pts])
        slope, intercept = np.polyfit(x, y, 1)
        per_sample = float(np.exp(intercept + slope * math.log(n_cells)))
    else:
        per_sample = prior_seconds_per_sample(n_cells)
    return per_sample * batch * calls


def _accuracy(sol, scores64, h, temps, exact64) -> dict:
    probs = [p.detach().to(torch.float64).cpu() for p in sol.probs]
    f_star = exact64.objective
    out = {"violation_max": float(metrics.violation(probs, h).max()),
           "violation_mean": float(metrics.violation(probs, h).mean()),
           "max_abs_err": float(metrics.max_abs_err(probs, exact64.probs).max()),
           "primal_gap": float("nan"), "dual_gap": float("nan")}
    if sol.method in ("exact", "dual", "cvxpylayers"):
        out["primal_gap"] = float(metrics.primal_gap(f_star, scores64, probs, temps).max())
    if sol.duals is not None:
        duals = [d.detach().to(torch.float64).cpu() for d in sol.duals]
        out["dual_gap"] = float(metrics.dual_gap(f_star, scores64, duals, h, temps).max())
    return out


def run_sweep(config: SweepConfig, out_dir: str, resume: bool = False, progress: bool = True, log=print) -> list[dict]:
    """Run the sweep; returns every row (finished earlier ones included when resuming)."""
    from tqdm.auto import tqdm

    check_sweep(config)
    writer = ResultsWriter(out_dir, config, config.devices[0], resume)
    done = writer.done()
    cells = list(config.cells())
    new_cells = 0
    bar = tqdm(cells, desc="bench", unit="cell", disable=not progress, dynamic_ncols=True)
    for index, cell in enumerate(bar):
        label = (f"{cell['dims']}-D {cell['size']}^{cell['dims']} L={cell['levels']} B={cell['batch']} "
                 f"τ={cell['temperature']:g} {cell['dtype']} {cell['device']}")
        bar.set_postfix_str(label)
        wanted = _wanted_rows(config, cell)
        if all(row_key(r) in done for r in wanted):
            continue
        if config.max_cells is not None and new_cells >= config.max_cells:
            log(f"stopped after {new_cells} new cell(s) (--max-cells); rerun with --resume to continue")
            break
        _run_cell(config, cell, index, wanted, done, writer)
        new_cells += 1
    bar.close()
    return writer.rows


def _wanted_rows(config: SweepConfig, cell: dict) -> list[dict]:
    rows = []
    for m in config.methods:
        kinds = DUAL_KINDS if m == "learned_dual" else ("",)
        for kind in kinds:
            rows.append({**cell, "method": m, "dual_kind": kind})
    return rows


def _run_cell(config: SweepConfig, cell: dict, index: int, wanted: list[dict], done: set,
              writer: ResultsWriter) -> None:
    h = hierarchy_for(cell, config.factor)
    n_cells = sum(h.sizes)
    base = {**cell, "cell": index, "shapes": shape_str(h), "n_cells": n_cells}
    device, dtype = cell["device"], _dtype(cell["dtype"])
    temps = [cell["temperature"]] * h.num_levels
    todo = [r for r in wanted if row_key(r) not in done]

    def emit(row):
        writer.add({**base, **row})

    if device.startswith("cuda") and not torch.cuda.is_available():
        for r in todo:
            emit({**r, "status": "skipped", "reason": "CUDA not available on this machine"})
        return
    gen_kwargs = {"checkpoint": config.checkpoint} if config.generator == "model" else {}
    scores64 = generate(config.generator, h, cell["batch"], seed=config.seed, scale=config.scale, **gen_kwargs)
    exact64 = solve(scores64, h, "exact", temperature=temps)
    g = torch.Generator().manual_seed(config.seed + 7)
    weights = [torch.randn(s.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in scores64]
    scores = [s.to(device=device, dtype=dtype, copy=True).requires_grad_() for s in scores64]  # never alias scores64

    # λ for the three learned-dual rows; the timed learned_dual case uses the fitted one.
    duals_by_kind = {}
    if "learned_dual" in config.methods:
        train = generate(config.generator, h, config.fit_instances, seed=config.seed + 1, scale=config.scale,
                         **gen_kwargs)
        duals_by_kind["fitted"] = fit_shared_duals(h, train, temps, config.fit_steps, torch.float32 if
                                                   dtype in (torch.float16, torch.bfloat16) else dtype, device)
        duals_by_kind["zero"] = [torch.zeros_like(d) for d in duals_by_kind["fitted"]]
        duals_by_kind["per_sample"] = exact64.duals
        duals_by_kind = {k: [d.to(device=device, dtype=dtype) for d in v] for k, v in duals_by_kind.items()}
        if dtype not in (torch.float16, torch.bfloat16):
            for d in duals_by_kind["fitted"]:
                d.requires_grad_()

    fast = [m for m in ("softmax", "exact", "dual", "learned_dual") if any(r["method"] == m for r in todo)]
    options = {"dual": {"tol": config.dual_tol, "strict": False, "max_iter": 5000}}
    cases = {m: timed_case(m, h, scores, weights, temps, duals_by_kind.get("fitted") if m == "learned_dual"
                            else None, options.get(m, {})) for m in fast}
    timings = measure_interleaved(cases, device=device, repeats=config.repeats, warmup=config.warmup) if cases else {}
    for r in todo:
        m = r["method"]
        if m == "cvxpylayers":
            continue
        meas = timings[m]
        row = {**r, "status": "ok", "reason": "", "timed_batch": cell["batch"], "repeats": len(meas.fwd_ms),
               "fwd_ms": meas.fwd_median, "bwd_ms": meas.bwd_median, "total_ms": meas.total_median,
               "per_sample_ms": meas.total_median / cell["batch"], "peak_mem_mb": peak_memory_mb(cases[m], device)}
        if m == "learned_dual":
            if r["dual_kind"] != "fitted":
                row.update(fwd_ms=float("nan"), bwd_ms=float("nan"), total_ms=float("nan"),
                           per_sample_ms=float("nan"), peak_mem_mb=float("nan"),
                           reason="timed once, in the 'fitted' row")
            sol = solve(scores, h, m, temperature=temps, duals=duals_by_kind[r["dual_kind"]])
        else:
            sol = solve(scores, h, m, temperature=temps, **options.get(m, {}))
        row.update(_accuracy(sol, scores64, h, temps, exact64))
        if m == "dual":
            it = sol.info["iterations"].float()
            row.update(iterations_mean=float(it.mean()), iterations_max=int(it.max()))
            _record_convergence(writer, base, scores64, h, temps, exact64, config)
        emit(row)
    for r in todo:
        if r["method"] == "cvxpylayers":
            emit(_cvx_row(config, cell, r, h, n_cells, scores64, temps, exact64, writer.rows))


def _record_convergence(writer, base, scores64, h, temps, exact64, config) -> None:
    from ..dual import solve_dual

    res = solve_dual(scores64, h, temps, tol=min(config.dual_tol, 1e-10),
                     max_iter=5000, strict=False, record_history=True)
    hist = res["history"]
    gaps = hist["dual_objective"] - exact64.objective
    rows = [{"cell": base["cell"], "dims": base["dims"], "size": base["size"], "levels": base["levels"],
             "temperature": base["temperature"], "iteration": i, "violation_mean": float(v.mean()),
             "violation_max": float(v.max()), "dual_gap_mean": float(gp.mean()), "dual_gap_max": float(gp.max())}
            for i, (v, gp) in enumerate(zip(hist["violation"], gaps))]
    writer.add_convergence(rows)


def _cvx_row(config, cell, r, h, n_cells, scores64, temps, exact64, rows) -> dict:
    batch = min(cell["batch"], config.cvx_batch)
    calls = 1 + config.cvx_repeats
    if cell["device"] != "cpu":
        return {**r, "status": "skipped", "reason": "cvxpylayers solves on the CPU; see the cpu cells"}
    if n_cells > config.cvx_max_cells:
        return {**r, "status": "skipped",
                "reason": f"problem size {n_cells} cells > cap --cvx-max-cells {config.cvx_max_cells}"}
    estimate = _cvx_estimate_s(rows, n_cells, batch, calls)
    if estimate > config.budget:
        return {**r, "status": "skipped",
                "reason": f"estimated {estimate:.0f} s > budget --budget {config.budget:g} s"}
    sub = [s[:batch] for s in scores64]
    last: dict = {}
    case = make_case("cvxpylayers", h, batch, torch.float64, "cpu", temperature=temps, scores=sub, last=last)
    try:
        meas = measure_interleaved({"cvx": case}, repeats=config.cvx_repeats, warmup=1)["cvx"]
    except RuntimeError as err:  # SolverFailure names the sample and status
        return {**r, "status": "error", "reason": str(err)[:300]}
    sub_exact = solve(sub, h, "exact", temperature=temps)
    return {**r, "status": "ok", "reason": f"timed on {batch} of {cell['batch']} samples",
            "timed_batch": batch, "repeats": len(meas.fwd_ms), "fwd_ms": meas.fwd_median,
            "bwd_ms": meas.bwd_median, "total_ms": meas.total_median,
            "per_sample_ms": meas.total_median / batch, "peak_mem_mb": float("nan"),
            **_accuracy(last["solution"], sub, h, temps, sub_exact)}


