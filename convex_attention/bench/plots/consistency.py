"""Figures of consistency: the violation per method and dtype, the dual solver's convergence,
and the speed-consistency trade-off.
"""
from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ...io import figures
from ...io.figures import FULL_WIDTH, STYLE, plain, sci
from ...methods import get_method
from ._common import (
    DTYPE_COLORS,
    DTYPE_EPS,
    SIZE_COLUMNS,
    TIMED_KIND,
    VIOLATION_TEX,
    BadValue,
    Log,
    Series,
    Skips,
    cell_key,
    compute_dtype_of,
    missing_columns,
    number,
    ok_points,
    quiet_minor_ticks,
    spread_columns,
    styles_for,
    text_of,
    warn,
)


def plot_violation(rows, path, env=None, log: Log | None = None) -> str | None:
    """Consistency violation per method, learned-dual kind and cvxpylayers backend, one box
    (and one point per sweep cell) per compute dtype, with each dtype's rounding floor
    (machine ε) marked.  A method that solves in float64 whatever the input (the
    registry's ``cpu_only``) is counted as float64.  A violation of exactly 0 is drawn at a
    marked floor.  Returns None without data."""
    log = log or warn
    need = ("status", "method", "dtype", "violation_mean")
    if missing_columns(rows, need):
        log(f"violation: bench.csv lacks column(s) {', '.join(missing_columns(rows, need))}; not drawn")
        return None
    points, skips = [], Skips("violation")
    for p in ok_points(rows, "violation", {"violation_mean": {"nonneg": True}}, log):
        dtype = text_of(p.row, "dtype")
        if dtype not in DTYPE_EPS:
            skips.add(p.row, f"dtype={plain(dtype, 20)!r} is not one of {', '.join(DTYPE_EPS)}")
            continue
        points.append((p.series, compute_dtype_of(p), p.v["violation_mean"], p.record.cpu_only))
    skips.report(log)
    if not points:
        log("violation: no ok row with a violation; not written")
        return None
    series = sorted({s for s, *_ in points}, key=Series.order)
    dtypes = sorted({d for _, d, _, _ in points}, key=lambda d: -DTYPE_EPS[d])
    positive = [v for *_, v, _ in points if v > 0]
    floor = 10.0 ** (math.floor(math.log10(min(positive + [min(DTYPE_EPS[d] for d in dtypes)]))) - 1)
    width = 0.8 / len(dtypes)
    rng = np.random.default_rng(0)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(FULL_WIDTH, 3.0), layout="constrained")
        any_zero = False
        for i, s in enumerate(series):
            for j, d in enumerate(dtypes):
                values = [v for s2, d2, v, _ in points if s2 == s and d2 == d]
                if not values:
                    continue
                x = i + (j - (len(dtypes) - 1) / 2) * width
                shown = [max(v, floor) for v in values]
                any_zero |= any(v == 0 for v in values)
                ax.boxplot([shown], positions=[x], widths=width * 0.8, showfliers=False,
                           medianprops={"color": DTYPE_COLORS[d]}, boxprops={"color": DTYPE_COLORS[d]},
                           whiskerprops={"color": DTYPE_COLORS[d]}, capprops={"color": DTYPE_COLORS[d]})
                ax.scatter(x + rng.uniform(-width / 4, width / 4, len(shown)), shown, s=7, alpha=0.7,
                           color=DTYPE_COLORS[d], marker="o", zorder=3, linewidths=0)
        handles = [Patch(color=DTYPE_COLORS[d], label=f"computed in {d}") for d in dtypes]
        for d in dtypes:
            ax.axhline(DTYPE_EPS[d], color=DTYPE_COLORS[d], ls="--", lw=0.8)
            handles.append(Line2D([], [], color=DTYPE_COLORS[d], ls="--", lw=0.8,
                                  label=rf"{d} rounding floor $\varepsilon = {sci(DTYPE_EPS[d])}$"))
        if any_zero:
            ax.axhline(floor, color="#999999", ls=":", lw=0.8)
            handles.append(Line2D([], [], color="#999999", ls=":", lw=0.8,
                                  label=rf"violation exactly 0, drawn at ${sci(floor)}$"))
        cpu_only = sorted({s.method for s, _, _, c in points if c})
        if cpu_only:
            handles.append(Patch(color="none", label=f"{', '.join(cpu_only)}: solves in float64 whatever "
                                                     f"the cell's dtype"))
        ax.set_xticks(range(len(series)), [s.label.replace(" (", "\n(") for s in series], fontsize=6)
        ax.set_xlim(-0.6, len(series) - 0.4)
        ax.set_yscale("log")
        quiet_minor_ticks(ax)
        ax.set_ylabel("violation (batch mean)\n" + VIOLATION_TEX)
        ax.set_title("Consistency violation on held-out instances (one point per sweep cell), by compute dtype")
        ax.grid(True, axis="y", which="major", alpha=0.25)
        fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=6.5)
        return figures.save(fig, path, env)


def plot_convergence(conv_rows, path, env=None, log: Log | None = None) -> str | None:
    """The per-sample dual solver: violation and dual gap against sweep, one line per
    cell, coloured by number of levels.  Rows with unusable values are skipped and named.
    Returns None without data."""
    log = log or warn
    need = ("cell", "levels", "iteration", "violation_max", "dual_gap_max")
    if missing_columns(conv_rows, need):
        log(f"dual_convergence: convergence.csv lacks column(s) "
            f"{', '.join(missing_columns(conv_rows, need))}; not drawn")
        return None
    skips, pts = Skips("dual_convergence", "convergence.csv"), []
    for r in conv_rows:
        try:
            pts.append((int(number(r, "cell", nonneg=True, integer=True)),
                        int(number(r, "levels", positive=True, integer=True)),
                        int(number(r, "iteration", nonneg=True, integer=True)),
                        number(r, "violation_max", nonneg=True), number(r, "dual_gap_max")))
        except BadValue as err:
            skips.add(r, str(err))
    skips.report(log)
    if not pts:
        log("dual_convergence: no usable row; not written")
        return None
    floor = 1e-17
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(FULL_WIDTH, 2.6), layout="constrained")
        level_counts = sorted({p[1] for p in pts})
        colors = {L: plt.get_cmap("tab10")(i) for i, L in enumerate(level_counts)}
        labelled = set()
        for cell in sorted({p[0] for p in pts}):
            rs = sorted((p for p in pts if p[0] == cell), key=lambda p: p[2])
            L = rs[0][1]
            label = f"{L} levels" if L not in labelled else None
            labelled.add(L)
            it = [p[2] for p in rs]
            axes[0].semilogy(it, [max(p[3], floor) for p in rs], color=colors[L], label=label, lw=0.9, alpha=0.8)
            axes[1].semilogy(it, [max(p[4], floor) for p in rs], color=colors[L], lw=0.9, alpha=0.8)
        axes[0].legend(frameon=False)
        axes[0].set_ylabel("violation " + VIOLATION_TEX + "\n(max over batch)")
        axes[1].set_ylabel(r"dual gap $g(\lambda) - f^*$" + "\n(max over batch)")
        for ax in axes:
            quiet_minor_ticks(ax)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("sweep (one exact block step per constraint)")
            ax.grid(True, which="major", alpha=0.25)
        fig.suptitle(rf"Per-sample dual solver: convergence (values $\leq {sci(floor)}$ drawn at ${sci(floor)}$)")
        return figures.save(fig, path, env)


def plot_tradeoff(rows, path, env=None, log: Log | None = None) -> str | None:
    """The speed-consistency trade-off in one picture, log-log: every method, learned-dual
    kind and cvxpylayers backend at (median time per sample, held-out violation), with the
    Pareto front (no other point is both faster and more consistent).

    One panel per (grid dimensionality, number of levels, dtype), each at one sweep cell:
    the one where the most series were measured (then the largest).  Learned-dual kinds without a
    time of their own (λ = 0, per-sample λ: the same computation as the fitted row, timed
    once there) are placed at the fitted row's time and drawn hollow; the per-sample λ's
    time excludes finding λ.  A violation of exactly 0 is drawn at a marked floor.
    Error bars: the interquartile range of the total time where recorded.  Returns None
    without data."""
    log = log or warn
    need = ("status", "method", "dims", "levels", "n_cells", "per_sample_ms", "violation_mean")
    if missing_columns(rows, need):
        log(f"tradeoff: bench.csv lacks column(s) {', '.join(missing_columns(rows, need))}; not drawn")
        return None
    numbers = {**SIZE_COLUMNS, "per_sample_ms": {"empty_ok": True, "positive": True},
               "violation_mean": {"nonneg": True}, "timed_batch": {"empty_ok": True, "positive": True},
               "total_ms": {"empty_ok": True, "positive": True}, **spread_columns("total_ms")}
    points = ok_points(rows, "tradeoff", numbers, log)
    timed = {(cell_key(p.row), p.series.method): p for p in points
             if p.series.kind == TIMED_KIND and p.v["per_sample_ms"] is not None}
    cells: dict = {}
    untimed = 0
    for p in points:
        t, spread, borrowed = p.v["per_sample_ms"], (None, None), False
        source = p
        if t is None and p.record.needs_duals and (cell_key(p.row), p.series.method) in timed:
            source = timed[(cell_key(p.row), p.series.method)]
            t, borrowed = source.v["per_sample_ms"], True
        if t is None:
            untimed += 1
            continue
        tb = source.v.get("timed_batch")
        if tb and source.v.get("total_ms_q1") is not None and source.v.get("total_ms_q3") is not None:
            spread = (source.v["total_ms_q1"] / tb, source.v["total_ms_q3"] / tb)
        # compute dtypes apart: a float64 cell is not a float32 cell with a better solver
        panel = (int(p.v["dims"]), int(p.v["levels"]), text_of(p.row, "dtype"))
        cells.setdefault(panel, {}).setdefault(cell_key(p.row), {}).setdefault(p.series, []).append(
            (t, p.v["violation_mean"], borrowed, spread, p))
    if untimed:
        log(f"tradeoff: {untimed} ok row(s) carry no time (and no fitted row to share one); not drawn")
    if not cells:
        log("tradeoff: no ok row with both a time and a violation; not written")
        return None
    chosen = {}
    for panel, by_cell in cells.items():
        key = max(by_cell, key=lambda c: (len(by_cell[c]), max(e[4].v["n_cells"] for es in by_cell[c].values()
                                                                 for e in es), c))
        chosen[panel] = by_cell[key]
    all_viol = [e[1] for by_series in chosen.values() for es in by_series.values() for e in es]
    positive = [v for v in all_viol if v > 0]
    floor = 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else 1e-18
    styles = styles_for({s for by_series in chosen.values() for s in by_series})
    panels = sorted(chosen)
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    any_zero = any_borrowed = False
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(FULL_WIDTH if ncols == 2 else 4.2, 2.7 * nrows + 0.9),
                                 squeeze=False, layout="constrained")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, panel in zip(axes.flat, panels):
            pts = []
            for series, entries in sorted(chosen[panel].items(), key=lambda kv: kv[0].order()):
                t = float(np.median([e[0] for e in entries]))
                v = float(np.median([e[1] for e in entries]))
                borrowed = entries[0][2]
                lo = [e[3][0] for e in entries if e[3][0] is not None]
                hi = [e[3][1] for e in entries if e[3][1] is not None]
                shown = max(v, floor)
                any_zero |= v == 0
                any_borrowed |= borrowed
                color, marker = styles[series]
                xerr = [[max(t - min(lo), 0)], [max(max(hi) - t, 0)]] if lo and hi else None
                # hollow (borrowed-time) markers on top: they often share a point with the fitted row
                ax.errorbar([t], [shown], xerr=xerr, color=color, marker=marker, ms=6, ls="none", capsize=2,
                            elinewidth=0.7, mfc="none" if borrowed else color, mew=1.2, zorder=4 if borrowed else 3)
                pts.append((t, shown))
            front, best = [], math.inf
            for t, v in sorted(pts):
                if v < best:
                    front.append((t, v))
                    best = v
            if len(front) > 1:
                ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="#555555", lw=0.8,
                        ls="-", alpha=0.7, zorder=2)
            ax.scatter([f[0] for f in front], [f[1] for f in front], s=110, facecolors="none", edgecolors="#555555",
                       lw=0.6, zorder=2)
            if any(v == 0 for es in chosen[panel].values() for e in es for v in [e[1]]):
                ax.axhline(floor, color="#999999", ls=":", lw=0.8)
            meta = next(iter(chosen[panel].values()))[0][4]
            ax.set_xscale("log")
            ax.set_yscale("log")
            quiet_minor_ticks(ax)
            ax.set_title(f"{panel[0]}-D, {panel[1]} levels: {plain(text_of(meta.row, 'shapes'), 40)}, "
                         f"B={plain(text_of(meta.row, 'batch'), 8)}, {plain(panel[2], 10)}")
            ax.set_xlabel("time per sample (ms, forward + backward)")
            ax.set_ylabel("held-out violation (batch mean)")
            ax.grid(True, which="major", alpha=0.25)
            ax.margins(x=0.15, y=0.15)
        handles = [Line2D([], [], color=styles[s][0], marker=styles[s][1], ms=5, ls="none",
                          label=s.label + (" [float64]" if get_method(s.method).cpu_only else ""))
                   for s in sorted(styles, key=Series.order)]
        handles.append(Line2D([], [], color="#555555", lw=0.8, marker="o", mfc="none", ms=8,
                              label="Pareto front (nothing both faster and more consistent)"))
        if any_borrowed:
            handles.append(Line2D([], [], color="#444444", marker="o", mfc="none", ls="none", ms=5,
                                  label="hollow: time of the fitted-λ row (same computation; "
                                        "per-sample λ excludes finding λ)"))
        if any_zero:
            handles.append(Line2D([], [], color="#999999", ls=":", lw=0.8,
                                  label=rf"violation exactly 0 (e.g. exact in float64), drawn at ${sci(floor)}$"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6.5)
        fig.suptitle("Speed vs consistency: time per sample and held-out violation (log-log)")
        return figures.save(fig, path, env)
