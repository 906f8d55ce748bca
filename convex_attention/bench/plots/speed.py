"""Figures of speed: the core benchmark's bars, time per sample against problem size, and the
speed-up of exact over cvxpylayers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ...io import figures
from ...io.figures import FULL_WIDTH, HALF_WIDTH, STYLE, plain
from ._common import (
    METHOD_COLORS,
    SIZE_COLUMNS,
    Log,
    Series,
    cell_key,
    compute_dtype_of,
    dims_title,
    missing_columns,
    ok_points,
    quiet_minor_ticks,
    spread_columns,
    styles_for,
    text_of,
    warn,
)


@dataclass
class _Bar:
    label: str
    method: str
    backend: str
    total: float        # µs per sample: the drawn height
    fwd: float          # µs per sample: the darker lower part
    lo: float | None    # interquartile range of the total, where the row records it
    hi: float | None


def _core_bars(rows) -> tuple[dict, str]:
    """shapes -> bars (one per method and backend), and the statistic the heights are."""
    out: dict = {}
    has_total = all(is_finite_value(r.get("total_ms")) for r in rows)
    for r in rows:
        batch = float(r["batch"])
        total = float(r["total_ms"]) if has_total else float(r["fwd_ms"]) + float(r["bwd_ms"])
        q1, q3 = r.get("total_ms_q1"), r.get("total_ms_q3")
        spread = has_total and is_finite_value(q1) and is_finite_value(q3)
        backend = str(r.get("backend") or "")
        out.setdefault(str(r["shapes"]), []).append(_Bar(
            r["method"] + (f"\n({backend})" if backend else ""), r["method"], backend, 1e3 * total / batch,
            1e3 * float(r["fwd_ms"]) / batch, 1e3 * float(q1) / batch if spread else None,
            1e3 * float(q3) / batch if spread else None))
    stat = ("median of forward + backward per repetition" if has_total
            else "median forward + median backward")
    return out, stat


def is_finite_value(v) -> bool:
    try:
        return v is not None and v != "" and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def core_ratios(rows, names) -> dict:
    """The ratios ``names`` (``"A/B"``, or ``"A/B per sample"``) computed from the bars
    :func:`plot_core_benchmark` draws: median time per sample of method A over method B in
    the panel (problem shapes) where both appear.  Where a method has several bars (one
    per cvxpylayers backend) its fastest bar counts.  Names whose methods share no panel
    are left out.  Returns ``{name: (ratio, note)}``, the note naming the fastest backend."""
    panels, _ = _core_bars(rows)
    out = {}
    for name in names:
        pair = name.replace(" per sample", "").split("/")
        if len(pair) != 2:
            continue
        for bars in panels.values():
            a = [b for b in bars if b.method == pair[0]]
            c = [b for b in bars if b.method == pair[1]]
            if a and c:
                fa, fc = min(a, key=lambda b: b.total), min(c, key=lambda b: b.total)
                note = ", ".join(f"fastest: {f.backend or f.method}" for f, group in ((fa, a), (fc, c))
                                 if len(group) > 1)
                out[name] = (fa.total / fc.total, note)
                break
    return out


def plot_core_benchmark(rows, ratios, path: str, env: dict | None = None) -> str:
    """Bars of each method's median time per sample (one bar per cvxpylayers backend), one
    panel per problem size, and the ratios ``ratios`` names computed from those same bars
    (:func:`core_ratios`).

    ``rows``: dicts with method, (backend,) shapes, batch, dtype, fwd_ms, bwd_ms and,
    optionally, total_ms (the median of the per-repetition forward + backward time) with
    total_ms_q1/q3.  A bar's height is total_ms (fwd_ms + bwd_ms where any row lacks
    total_ms), its darker lower part fwd_ms, its error bar the interquartile range.  The
    values of ``ratios`` are not drawn: the figure recomputes them from its bars, so the
    printed ratio and the bars are one statistic.
    """
    panels, stat = _core_bars(rows)
    shown = core_ratios(rows, list(ratios))
    with plt.rc_context(STYLE):
        widths = [max(len(bars), 2) for bars in panels.values()]
        fig, axes = plt.subplots(1, len(panels), figsize=(FULL_WIDTH if len(panels) > 1 else HALF_WIDTH + 1, 3.0),
                                 squeeze=False, layout="constrained", gridspec_kw={"width_ratios": widths})
        for ax, (shapes, bars) in zip(axes[0], panels.items()):
            x = np.arange(len(bars))
            colors = [METHOD_COLORS.get(b.method, "#333333") for b in bars]
            ax.bar(x, [b.total for b in bars], color=colors, alpha=0.45, width=0.6)
            ax.bar(x, [b.fwd for b in bars], color=colors, width=0.6)
            for i, b in enumerate(bars):
                if b.lo is not None and b.lo <= b.total <= b.hi:
                    ax.errorbar([i], [b.total], yerr=[[b.total - b.lo], [b.hi - b.total]], color="#222222",
                                lw=0.8, capsize=2)
            ax.set_xticks(x, ["\n".join(plain(t) for t in b.label.split("\n")) for b in bars], fontsize=6.5)
            totals = [b.total for b in bars]
            if max(totals) > 30 * min(totals):
                ax.set_yscale("log")
            sel = [r for r in rows if str(r["shapes"]) == shapes]
            batches = "/".join(dict.fromkeys(str(r["batch"]) for r in sel))
            dtypes = "/".join(dict.fromkeys(str(r["dtype"]) for r in sel))
            methods = {b.method for b in bars}
            lines = [f"{plain(shapes)}, B = {plain(batches)}, {plain(dtypes)}"]
            for name, (value, note) in shown.items():
                if set(name.replace(" per sample", "").split("/")) <= methods:
                    lines.append(f"{plain(name)} = {value:.3g}" + (f" ({plain(note)})" if note else ""))
            ax.set_title("\n".join(lines))
        axes[0, 0].set_ylabel(f"time per sample (µs)\n{stat}")
        axes[0, 0].legend(handles=[Patch(color="#555555", label="forward (median)"),
                                   Patch(color="#555555", alpha=0.45, label="backward (rest of the bar)")],
                          frameon=False, loc="upper left", fontsize=6.5)
        fig.suptitle("Forward + backward time per sample (bars: interquartile range); ratios computed from "
                     "these bars")
        return figures.save(fig, path, env)


def plot_time_vs_size(rows, path, env=None, log: Log | None = None) -> str | None:
    """Median time per sample against problem size, log-log: one row of panels per grid
    dimensionality (and device), forward and backward side by side, one line per method
    (learned-dual kind, cvxpylayers backend) and number of levels, error bars from the
    interquartile range where the rows record it, and the fitted log-log slope in the
    legend.  Rows without a time (timed in another row) are not drawn.  Returns None (and
    writes nothing) without data."""
    log = log or warn
    need = ("status", "method", "dims", "levels", "n_cells", "timed_batch", "fwd_ms", "bwd_ms")
    if missing_columns(rows, need):
        log(f"time_vs_size: bench.csv lacks column(s) {', '.join(missing_columns(rows, need))}; not drawn")
        return None
    numbers = {**SIZE_COLUMNS, "timed_batch": {"positive": True, "integer": True},
               "fwd_ms": {"empty_ok": True, "positive": True}, "bwd_ms": {"empty_ok": True, "positive": True},
               **spread_columns("fwd_ms"), **spread_columns("bwd_ms")}
    points = [p for p in ok_points(rows, "time_vs_size", numbers, log) if p.v["fwd_ms"] is not None]
    if not points:
        log("time_vs_size: no timed row; not written")
        return None
    devices = sorted({text_of(p.row, "device") for p in points})
    dtypes = sorted({compute_dtype_of(p) for p in points})
    panels = sorted({(int(p.v["dims"]), text_of(p.row, "device")) for p in points})
    styles = styles_for({p.series for p in points})
    level_styles = ["-", "--", ":", "-."]
    level_counts = sorted({int(p.v["levels"]) for p in points})

    def line_key(p):
        return p.series, int(p.v["levels"]), compute_dtype_of(p)

    keys = sorted({line_key(p) for p in points}, key=lambda k: (k[0].order(), k[1], k[2]))

    mixed = len({text_of(p.row, "dtype") for p in points}) > 1  # a sweep over dtypes

    def fill(key):  # dtypes after the first: hollow markers (colour is the series, line style the levels)
        return styles[key[0]][0] if not mixed or key[2] == dtypes[0] else "none"

    def dtype_note(key):
        return f", {key[2]}" if mixed or key[2] != text_of(points[0].row, "dtype") else ""

    slopes: dict = {}  # line key -> panel -> [forward slope, backward slope]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(panels), 2, figsize=(FULL_WIDTH, 2.2 * len(panels) + 1.6), squeeze=False,
                                 sharey="row", layout="constrained")
        for panel, row_axes in zip(panels, axes):
            sel = [p for p in points if (int(p.v["dims"]), text_of(p.row, "device")) == panel]
            for key in keys:
                series, levels, _ = key
                color, marker = styles[series]
                ls = level_styles[level_counts.index(levels) % len(level_styles)]
                for j, (ax, col) in enumerate(zip(row_axes, ("fwd_ms", "bwd_ms"))):
                    by_n: dict = {}
                    for p in sel:
                        if line_key(p) == key and p.v[col] is not None:
                            by_n.setdefault(int(p.v["n_cells"]), []).append(p)
                    if not by_n:
                        continue
                    ns = sorted(by_n)
                    x = np.array(ns, dtype=float)
                    # other sweep axes at one size (batch, temperature, ...) pooled by the median
                    y = np.array([np.median([p.v[col] / p.v["timed_batch"] for p in by_n[n]]) for n in ns])
                    lo = np.array([min((p.v.get(col + "_q1") or p.v[col]) / p.v["timed_batch"] for p in by_n[n])
                                   for n in ns])
                    hi = np.array([max((p.v.get(col + "_q3") or p.v[col]) / p.v["timed_batch"] for p in by_n[n])
                                   for n in ns])
                    yerr = np.array([np.maximum(y - lo, 0), np.maximum(hi - y, 0)])
                    ax.errorbar(x, y, yerr=yerr if yerr.any() else None, color=color, marker=marker, ls=ls,
                                ms=3, lw=1.0, capsize=1.5, elinewidth=0.7, mfc=fill(key))
                    if len(x) >= 2:
                        slopes.setdefault(key, {}).setdefault(panel, [None, None])[j] = float(
                            np.polyfit(np.log(x), np.log(y), 1)[0])
            where = dims_title(panel[0]) + (f", {plain(panel[1])}" if len(devices) > 1 else "")
            for ax, name in zip(row_axes, ("forward", "backward")):
                ax.set_xscale("log")
                ax.set_yscale("log")
                quiet_minor_ticks(ax)
                ax.set_title(f"{where}: {name} pass")
                ax.set_xlabel(r"problem size $n$ (cells, all levels)")
                ax.grid(True, which="major", alpha=0.25)
            row_axes[0].set_ylabel("median time per sample (ms)")

        def slope_text(key):
            parts = []
            for panel in panels:
                fb = slopes.get(key, {}).get(panel)
                if fb:
                    pair = " / ".join(f"$n^{{{s:.2f}}}$" if s is not None else "–" for s in fb)
                    parts.append(f"{panel[0]}-D" + (f" {plain(panel[1])}" if len(devices) > 1 else "") + f" {pair}")
            return ", ".join(parts) if parts else "one size: no slope"

        handles = [Line2D([], [], color=styles[k[0]][0], marker=styles[k[0]][1], ms=3, lw=1.0, mfc=fill(k),
                          ls=level_styles[level_counts.index(k[1]) % len(level_styles)],
                          label=f"{k[0].label}, {k[1]} levels{dtype_note(k)}"
                          + f": {slope_text(k)}") for k in keys]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6,
                   title=r"fitted log-log slope $s$ of time $\propto n^{s}$ (forward / backward)",
                   title_fontsize=6.5)
        fig.suptitle("Time per sample vs problem size (log-log; bars: interquartile range where recorded)")
        return figures.save(fig, path, env)


# The speed-up figure compares these two methods by name: it is the figure's subject.
SPEEDUP_BASE, SPEEDUP_OVER = "exact", "cvxpylayers"


def plot_speedup(rows, path, env=None, log: Log | None = None) -> str | None:
    """Per-sample speed-up of exact over cvxpylayers against problem size, one line per
    cvxpylayers backend (and line style per number of levels), one panel per grid
    dimensionality; both methods from the same sweep cell.  Returns None (and writes
    nothing) when no cell has both measured."""
    log = log or warn
    need = ("status", "method", "dims", "levels", "n_cells", "per_sample_ms")
    if missing_columns(rows, need):
        log(f"speedup_exact_vs_cvxpylayers: bench.csv lacks column(s) "
            f"{', '.join(missing_columns(rows, need))}; not drawn")
        return None
    numbers = {**SIZE_COLUMNS, "per_sample_ms": {"empty_ok": True, "positive": True}}
    points = [p for p in ok_points(rows, "speedup_exact_vs_cvxpylayers", numbers, log)
              if p.v["per_sample_ms"] is not None and p.series.method in (SPEEDUP_BASE, SPEEDUP_OVER)]
    base = {}
    for p in points:
        if p.series.method == SPEEDUP_BASE:
            base.setdefault(cell_key(p.row), []).append(p.v["per_sample_ms"])
    lines: dict = {}
    for p in points:
        if p.series.method == SPEEDUP_OVER and cell_key(p.row) in base:
            lines.setdefault((int(p.v["dims"]), p.series, int(p.v["levels"]), text_of(p.row, "dtype")), []).append(
                (int(p.v["n_cells"]), p.v["per_sample_ms"] / float(np.median(base[cell_key(p.row)]))))
    if not lines:
        log("speedup_exact_vs_cvxpylayers: no sweep cell with both exact and cvxpylayers measured; not written")
        return None
    dims_all = sorted({k[0] for k in lines})
    styles = styles_for({k[1] for k in lines})
    level_counts = sorted({k[2] for k in lines})
    level_styles = ["-", "--", ":", "-."]
    dtypes = sorted({k[3] for k in lines})  # exact's dtype: the cell's (cvxpylayers always float64)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(dims_all), figsize=(min(FULL_WIDTH, 3.0 * len(dims_all) + 1.6), 2.6),
                                 squeeze=False, sharey=True, layout="constrained")
        for ax, dims in zip(axes[0], dims_all):
            for (d, series, levels, dtype), pts in sorted(lines.items(),
                                                          key=lambda kv: (kv[0][1].order(), kv[0][2], kv[0][3])):
                if d != dims:
                    continue
                by_n: dict = {}
                for n, s in pts:
                    by_n.setdefault(n, []).append(s)
                x = sorted(by_n)
                color, marker = styles[series]
                ax.loglog(x, [np.median(by_n[n]) for n in x], color=color, marker=marker, ms=4, lw=1.0,
                          ls=level_styles[level_counts.index(levels) % len(level_styles)],
                          mfc=color if dtype == dtypes[0] else "none")
            ax.axhline(1e4, color="#999999", ls="--", lw=0.8)
            quiet_minor_ticks(ax)
            ax.set_title(dims_title(dims))
            ax.set_xlabel(r"problem size $n$ (cells, all levels)")
            ax.grid(True, which="major", alpha=0.25)
        axes[0, 0].set_ylabel("speed-up per sample (×)\ncvxpylayers time / exact time")
        handles = [Line2D([], [], color=styles[s][0], marker=styles[s][1], ms=4, lw=1.0, label=s.label)
                   for s in sorted(styles, key=Series.order)]
        handles += [Line2D([], [], color="#444444", lw=1.0, ls=level_styles[i % len(level_styles)],
                           label=f"{L} levels") for i, L in enumerate(level_counts)]
        if len(dtypes) > 1:
            handles += [Line2D([], [], color="#444444", marker="o", ls="none", ms=4,
                               mfc="#444444" if d == dtypes[0] else "none", label=f"exact in {d}") for d in dtypes]
        handles.append(Line2D([], [], color="#999999", ls="--", lw=0.8, label=r"target $10^4\times$"))
        axes[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.suptitle("Speed-up of exact over cvxpylayers (forward + backward, per sample, same sweep cell)")
        return figures.save(fig, path, env)
