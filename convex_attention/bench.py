"""Benchmarks of the solvers.

* :func:`core_benchmark`: the speed targets of the core issue (``benchmarks/bench_core.py``).
* :func:`run_sweep`: the ``convex-attention bench`` harness, a sweep over grid sizes,
  levels, batch sizes, dimensionality, temperatures, dtypes and devices that measures
  every DESIGN.md §6 figure per method and writes ``bench.csv``/``bench.json`` row by row.

Every case times ``ca.solve`` (the public entry point, validation included) followed by
a linear loss ``Σ_k <p_k, w_k>``, forward and backward separately, interleaved with the
other cases of the same cell so that ratios share the machine's noise.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import metrics
from .generators import generate
from .hierarchy import Hierarchy
from .nn import LearnedDuals
from .solve import consistency_loss, solve
from .timing import measure_interleaved, peak_memory_mb

__all__ = ["make_case", "core_benchmark", "environment", "SweepConfig", "run_sweep", "check_sweep",
           "fit_shared_duals", "save_example"]


def environment(device="cpu") -> dict:
    """Versions, CPU, threads and device: stored with every result file."""
    import numpy

    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        import cvxpy
        import cvxpylayers
        import diffcp

        env.update(cvxpy=cvxpy.__version__, cvxpylayers=cvxpylayers.__version__, diffcp=diffcp.__version__)
    except ImportError:  # pragma: no cover
        pass
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_case(method: str, h: Hierarchy, batch: int, dtype=torch.float32, device="cpu", temperature=1.0,
              seed: int = 0, scores: Sequence[torch.Tensor] | None = None, options: dict | None = None,
              last: dict | None = None):
    """A forward closure for :func:`measure_interleaved` on seeded random scores.

    ``learned_dual`` adds the paper's ``consistency_loss`` (as its training does); its
    duals are learnable parameters shared over the batch.
    """
    g = torch.Generator().manual_seed(seed)
    if scores is None:
        scores = [torch.randn((batch,) + s, generator=g) for s in h.shapes]
    scores = [s.to(device=device, dtype=dtype).detach().requires_grad_() for s in scores]
    weights = [torch.randn(s.shape, generator=g).to(device=device, dtype=dtype) for s in scores]
    duals = None
    if method == "learned_dual":
        duals = [(0.1 * torch.randn((1,) + s, generator=g)).to(device=device, dtype=dtype).requires_grad_()
                 for s in h.shapes[1:]]
    return _timed_case(method, h, scores, weights, temperature, duals, options or {}, last)


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
        rows.append({"method": m if m != "learned_dual" else "learned_dual+loss", "shapes": _shape_str(h),
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
        rows.append({"method": name, "shapes": _shape_str(hc), "batch": b, "dtype": str(dt).replace("torch.", ""),
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


def _shape_str(h: Hierarchy) -> str:
    return "+".join("x".join(map(str, s)) for s in h.shapes)


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


# ====================================================================== the sweep harness

DUAL_KINDS = ("zero", "fitted", "per_sample")
KEY_FIELDS = ("method", "dual_kind", "generator", "scale", "dims", "size", "levels", "batch", "temperature",
              "dtype", "device", "seed")
COLUMNS = ("cell", "status", "reason") + KEY_FIELDS + (
    "shapes", "n_cells", "timed_batch", "repeats", "fwd_ms", "bwd_ms", "total_ms", "per_sample_ms", "peak_mem_mb",
    "violation_max", "violation_mean", "max_abs_err", "primal_gap", "dual_gap", "iterations_mean",
    "iterations_max")
CONVERGENCE_COLUMNS = ("cell", "dims", "size", "levels", "temperature", "iteration", "violation_mean",
                       "violation_max", "dual_gap_mean", "dual_gap_max")
# Prior for the cvxpylayers time per sample (forward + backward, Clarabel via diffcp on
# this 2-core machine): ~0.25 s at 1280 cells, growing like n^1.3.  Replaced by a fit to
# the cells measured in the same results folder as soon as there are two of them.
CVX_PRIOR = (1280, 0.25, 1.3)


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
    from .solve import METHODS

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
    if config.generator == "model":
        if not config.checkpoint:
            raise ValueError("--generator model needs --checkpoint (a model trained by `convex-attention train`)")
        from .models.scores import checkpoint_shapes

        shapes = checkpoint_shapes(config.checkpoint)
        wanted = {"sizes": [shapes[0][0]], "levels": [len(shapes)], "dims": [2], "factor": 2}
        if (config.sizes, config.levels, config.dims, config.factor) != tuple(wanted.values()):
            raise ValueError(f"the checkpoint's attention levels are {shapes}: run the model generator with "
                             f"--sizes {shapes[0][0]} --levels {len(shapes)} --dims 2 --factor 2")


def hierarchy_for(cell: dict, factor: int) -> Hierarchy:
    return Hierarchy.grid([(cell["size"] // factor ** k,) * cell["dims"] for k in range(cell["levels"])])


def row_key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in KEY_FIELDS)


class ResultsWriter:
    """``bench.csv`` + ``bench.json`` in a folder, rewritten atomically after every row,
    so an interrupted run keeps every finished row."""

    def __init__(self, out_dir: str, config: SweepConfig, device_env: str, resume: bool):
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.csv_path = os.path.join(out_dir, "bench.csv")
        self.json_path = os.path.join(out_dir, "bench.json")
        self.conv_path = os.path.join(out_dir, "convergence.csv")
        self.rows: list[dict] = []
        self.convergence: list[dict] = []
        if resume:
            self.rows = _read_csv(self.csv_path)
            self.convergence = _read_csv(self.conv_path)
        self.env = environment(device_env)
        self.config = asdict(config)

    def done(self) -> set:
        return {row_key(r) for r in self.rows if r.get("status") in ("ok", "skipped")}

    def add(self, row: dict) -> None:
        self.rows.append({c: row.get(c, "") for c in COLUMNS})
        self._flush()

    def add_convergence(self, rows: list[dict]) -> None:
        self.convergence.extend(rows)
        _atomic_csv(self.conv_path, CONVERGENCE_COLUMNS, self.convergence)

    def _flush(self) -> None:
        _atomic_csv(self.csv_path, COLUMNS, self.rows)
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"environment": self.env, "config": self.config, "columns": list(COLUMNS),
                       "rows": self.rows}, f, indent=1, default=_json_default)
        os.replace(tmp, self.json_path)


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def _atomic_csv(path: str, columns, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: _fmt(r.get(c, "")) for c in columns})
    os.replace(tmp, path)


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def fit_shared_duals(h: Hierarchy, train_scores, temps, steps: int, dtype=torch.float32, device="cpu",
                     lr: float = 0.05) -> list[torch.Tensor]:
    """The paper's setting: one λ for all inputs, fitted by Adam on the consistency loss
    of training instances drawn from the same score distribution."""
    duals = LearnedDuals(h).to(device=device, dtype=dtype)
    train = [s.to(device=device, dtype=dtype) for s in train_scores]
    opt = torch.optim.Adam(duals.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = consistency_loss(train, duals(), h, temps, check_finite=False)
        loss.backward()
        opt.step()
    return [d.detach() for d in duals()]


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
        n0, t0, expo = CVX_PRIOR
        per_sample = t0 * (n_cells / n0) ** expo
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


def _timed_case(method, h, scores, weights, temps, duals, options, last: dict | None = None):
    """The forward closure of one timed method; ``last["solution"]`` keeps the latest
    Solution when ``last`` is given (so a slow solver is not run again for its accuracy)."""
    def forward():
        sol = solve(scores, h, method, temperature=temps, duals=duals, **options)
        if last is not None:
            last["solution"] = sol
        loss = sum((p * w).sum() for p, w in zip(sol.probs, weights))
        if method == "learned_dual":
            loss = loss + consistency_loss(scores, duals, h, temps)
        return loss

    return forward


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
    base = {**cell, "cell": index, "shapes": _shape_str(h), "n_cells": n_cells}
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
    cases = {m: _timed_case(m, h, scores, weights, temps, duals_by_kind.get("fitted") if m == "learned_dual"
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
    from .dual import solve_dual

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


def save_example(out_dir: str, generator: str = "lesion", size: int = 32, levels: int = 2, scale: float = 1.0,
                 seed: int = 0, fit_instances: int = 128, fit_steps: int = 150) -> str:
    """One 2-D instance (scores and the fitted shared λ) for the attention-map figure."""
    h = Hierarchy.grid([(size // 2 ** k,) * 2 for k in range(levels)])
    temps = [1.0] * levels
    scores = generate(generator, h, 1, seed=seed + 100, scale=scale)
    train = generate(generator, h, fit_instances, seed=seed + 1, scale=scale)
    fitted = fit_shared_duals(h, train, temps, fit_steps, torch.float64)
    path = os.path.join(out_dir, "example.npz")
    arrays = {f"scores{k}": s[0].numpy() for k, s in enumerate(scores)}
    arrays.update({f"fitted_dual{k}": d[0].numpy() for k, d in enumerate(fitted)})
    np.savez(path, levels=levels, temperature=np.array(temps), **arrays)
    return path
