"""Figures of consistency: the violation per method and dtype, the dual solver's convergence,
and the speed-consistency trade-off.
"""
from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ...hierarchy import Hierarchy
from ...io import figures
from ...io.figures import FULL_WIDTH, STYLE, plain, sci
from ...methods import get_method
from ...metrics import violation
from ._common import (
    DTYPE_COLORS,
    DTYPE_EPS,
    DUAL_KIND_LABEL,
    SETTING_FIELDS,
    SIZE_COLUMNS,
    TIMED_KIND,
    VIOLATION_TEX,
    BadValue,
    Log,
    Series,
    Skips,
    batch_note,
    cell_key,
    compute_dtype_of,
    dtype_note,
    floor_below,
    lacks_columns,
    low_confidence,
    low_confidence_handle,
    mark_low_confidence,
    not_drawn_notes,
    number,
    ok_points,
    pareto_front,
    quiet_minor_ticks,
    setting_labels,
    setting_of,
    spread_columns,
    styles_for,
    text_of,
    untimed_listing,
    warn,
)


def _violation_points(rows, log: Log) -> list[tuple]:
    """``(series, compute dtype, violation, cpu_only, shapes, device)`` of every ok row with a violation."""
    points, skips = [], Skips("violation")
    for p in ok_points(rows, "violation", {"violation_mean": {"nonneg": True}}, log):
        dtype = text_of(p.row, "dtype")
        if dtype not in DTYPE_EPS:
            skips.add(p.row, f"dtype={plain(dtype, 20)!r} is not one of {', '.join(DTYPE_EPS)}")
            continue
        points.append((p.series, compute_dtype_of(p), p.v["violation_mean"], p.record.cpu_only,
                       text_of(p.row, "shapes"), text_of(p.row, "device")))
    skips.report(log)
    return points


def _grid_shapes(text: str) -> list[tuple[int, ...]] | None:
    """A row's ``shapes`` (``"64x64+32x32"``, finest first) as grid shapes; None if it is
    not a grid of at least two levels whose sizes divide."""
    try:
        shapes = [tuple(int(n) for n in level.split("x")) for level in text.split("+")]
    except ValueError:
        return None
    if len(shapes) < 2 or any(len(s) != len(shapes[0]) or min(s) < 1 for s in shapes):
        return None
    if any(f % c for fine, coarse in zip(shapes, shapes[1:]) for f, c in zip(fine, coarse)):
        return None
    return shapes


def rounding_level(shapes, dtype: str, batch: int = 8, seed: int = 0) -> float:
    """The violation :func:`convex_attention.metrics.violation` reads (batch mean) for an
    *exactly consistent* answer stored in ``dtype``: random maps (a softmax of N(0, 2²)
    scores over the finest grid) and their block sums, formed in numpy's extended
    precision, rounded to ``dtype`` and measured as the sweep measures a method's output.
    What rounding alone leaves: a reference level for the dtype, not a bound (a method
    whose coarse map is the sum of its fine map can read lower)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 2.0, (batch, math.prod(shapes[0]))).astype(np.longdouble)
    p = np.exp(scores - scores.max(1, keepdims=True))
    levels = [(p / p.sum(1, keepdims=True)).reshape(batch, *shapes[0])]
    for fine, coarse in zip(shapes, shapes[1:]):
        blocks = [batch] + [n for c, f in zip(coarse, fine) for n in (c, f // c)]
        levels.append(levels[-1].reshape(blocks).sum(axis=tuple(range(2, len(blocks), 2))))
    probs = [torch.from_numpy(level.astype(np.float64)).to(getattr(torch, dtype)) for level in levels]
    return float(violation(probs, Hierarchy.grid([tuple(s) for s in shapes])).mean())


#: The largest finest grid whose rounding level is drawn, in cells; up to it the level is
#: formed on fewer samples where the grid is large (at most ROUNDING_LEVEL_VALUES values per
#: map in extended precision, about 64 MiB).  A row claiming more (a hand-edited shapes of
#: 1e16 cells had numpy allocate 568 PiB: ca_rev118) is said and gets no level.
ROUNDING_LEVEL_MAX_CELLS = 2 ** 23
ROUNDING_LEVEL_VALUES = 2 ** 22


def _rounding_levels(points, dtype: str, log: Log) -> list[float]:
    """:func:`rounding_level` at every grid cell of ``dtype``'s panel (within
    :data:`ROUNDING_LEVEL_MAX_CELLS`; a larger one is said to ``log``)."""
    cells = {s for _, d, _, _, s, _ in points if d == dtype}
    grids = [g for g in (_grid_shapes(c) for c in sorted(cells)) if g is not None]
    levels = []
    for g in grids:
        n = math.prod(g[0])
        if n > ROUNDING_LEVEL_MAX_CELLS:
            shapes = "+".join("x".join(map(str, s)) for s in g)
            log(f"violation: no {dtype} rounding level for the cell of shapes {shapes} ({n:.3g} finest cells, "
                f"more than {ROUNDING_LEVEL_MAX_CELLS:,})")
            continue
        levels.append(rounding_level(g, dtype, batch=max(1, min(8, ROUNDING_LEVEL_VALUES // n))))
    return levels


def _tick_label(s: Series) -> str:
    """Two short lines: the method, then its kind or backend."""
    if s.kind:
        return f"{s.method}\n{DUAL_KIND_LABEL.get(s.kind, s.kind)}"
    return f"{s.method}\n{s.backend}" if s.backend else s.method


def plot_violation(rows, path, env=None, log: Log | None = None) -> str | None:
    """Consistency violation per method, learned-dual kind and cvxpylayers backend: one
    panel per compute dtype (comparisons stay within a dtype: a method computed in float64
    is not more consistent for it), one box (and one point per sweep cell) per series, and
    each dtype's rounding level (:func:`rounding_level` at the panel's cells: the
    violation an exactly consistent answer stored in that dtype reads), drawn as a band
    over the cells' range.  A method that solves in float64 whatever the input (the
    registry's ``cpu_only``) is counted as float64.  A violation of exactly 0 is drawn at a
    marked floor.  The footer counts the rows the sweep skipped or that failed.  Returns
    None without data."""
    log = log or warn
    need = ("status", "method", "dtype", "violation_mean")
    if lacks_columns(rows, need, "violation", "bench.csv", log):
        return None
    points = _violation_points(rows, log)
    if not points:
        log("violation: no ok row with a violation; not written")
        return None
    dtypes = sorted({d for _, d, *_ in points}, key=lambda d: -DTYPE_EPS[d])
    # a box per series and device where the rows hold several devices (one box had pooled a cpu and
    # a cuda cell, its median neither's, and the figure named no device: ca_rev186)
    devices = sorted({dev for *_, dev in points})
    several = len(devices) > 1

    def box(s: Series, dev: str) -> tuple:
        return s, dev if several else ""

    by_dtype = {d: sorted({box(s, dev) for s, d2, *_, dev in points if d2 == d}, key=lambda k: (k[0].order(), k[1]))
                for d in dtypes}
    levels = {d: [v for v in _rounding_levels(points, d, log) if v > 0] for d in dtypes}
    positive = [v for _, _, v, *_ in points if v > 0] + [v for vs in levels.values() for v in vs]
    floor = floor_below(positive + [min(DTYPE_EPS[d] for d in dtypes)], default=math.nan)  # never empty
    rng = np.random.default_rng(0)
    any_zero = False
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(dtypes), figsize=(FULL_WIDTH, 3.1), sharey=True, squeeze=False,
                                 layout="constrained",
                                 gridspec_kw={"width_ratios": [max(len(by_dtype[d]), 2) for d in dtypes]})
        for ax, d in zip(axes[0], dtypes):
            color = DTYPE_COLORS[d]
            for i, k in enumerate(by_dtype[d]):
                values = [v for s2, d2, v, _, _, dev in points if box(s2, dev) == k and d2 == d]
                shown = [max(v, floor) for v in values]
                any_zero |= any(v == 0 for v in values)
                ax.boxplot([shown], positions=[i], widths=0.55, showfliers=False, medianprops={"color": color},
                           boxprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color})
                ax.scatter(i + rng.uniform(-0.12, 0.12, len(shown)), shown, s=7, alpha=0.7, color=color, zorder=3,
                           linewidths=0)
            if levels[d]:
                low, high = min(levels[d]), max(levels[d])
                ax.axhspan(low / 1.15, high * 1.15, color=color, alpha=0.18, lw=0, zorder=0)
                ax.axhline(float(np.median(levels[d])), color=color, ls="--", lw=0.8)
                ax.text(0.01, high * 1.15, f" {d} rounding level ${sci(low)}$" +
                        ("" if sci(low) == sci(high) else f"–${sci(high)}$"),
                        transform=ax.get_yaxis_transform(), ha="left", va="bottom", fontsize=6, color=color)
            if any_zero:
                ax.axhline(floor, color="#999999", ls=":", lw=0.8)
            ax.set_xticks(range(len(by_dtype[d])), [_tick_label(s) + (f"\n{plain(dev, 12)}" if dev else "")
                                                     for s, dev in by_dtype[d]], fontsize=5.6)
            ax.set_xlim(-0.6, len(by_dtype[d]) - 0.4)
            ax.set_title(f"computed in {d} (ε = ${sci(DTYPE_EPS[d])}$)")
            ax.grid(True, axis="y", which="major", alpha=0.25)
        drawn = [max(v, floor) for _, _, v, *_ in points] + [v for vs in levels.values() for v in vs]
        if max(drawn) <= min(drawn) * 1.001:  # one value (every point at the floor): give the axis a decade each way
            axes[0, 0].set_ylim(min(drawn) / 10, max(drawn) * 10)
        axes[0, 0].set_yscale("log")
        quiet_minor_ticks(axes[0, 0])
        axes[0, 0].set_ylabel("violation (batch mean)\n" + VIOLATION_TEX)
        handles = []
        if any(levels.values()):
            handles.append(Line2D([], [], color="#555555", ls="--", lw=0.8,
                                  label="rounding level (band: its range over the panel's cells): what an exactly "
                                        "consistent answer reads\nonce stored in the panel's dtype; a reference "
                                        "for rounding, not a bound"))
        if any_zero:
            handles.append(Line2D([], [], color="#999999", ls=":", lw=0.8,
                                  label=rf"violation exactly 0, drawn at ${sci(floor)}$"))
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncol=1, frameon=False, fontsize=6.5)
        fig.suptitle("Consistency violation on held-out instances (one point per sweep cell), by compute dtype: "
                     "compare within a panel")
        cpu_only = sorted({s.method for s, _, _, c, *_ in points if c})
        notes = [f"{', '.join(cpu_only)}: solves in float64 whatever the cell's dtype" if cpu_only else "",
                 f"device(s): {'/'.join(plain(dev, 12) for dev in devices)}"
                 + (" (a box per series and device)" if several else ""),
                 "cell dtype(s): " + "/".join(sorted({text_of(r, 'dtype') for r in rows if text_of(r, 'dtype')})),
                 "rounding level: random consistent maps (softmax of N(0, 4) scores and their block sums, extended "
                 "precision) rounded to the dtype and measured like the methods' outputs"
                 if any(levels.values()) else "rounding level not drawn: no cell with grid shapes",
                 *not_drawn_notes(rows)]
        return figures.save(fig, path, env, notes=notes)


def _float_or_inf(text: str) -> float:
    """A temperature's text as a number to sort by (inf for one that is not)."""
    try:
        return float(text)
    except ValueError:
        return math.inf


def _convergence_points(conv_rows, log: Log) -> list[tuple]:
    """``(cell, dims, size, levels, iteration, violation_max, dual_gap_max, setting)`` of every
    usable row; ``setting``: its values of :data:`._common.SETTING_FIELDS` and its device, as
    text ("" where the row has none: convergence.csv records the temperature, and
    :func:`with_bench_settings` adds the others from the history's bench row)."""
    skips, pts = Skips("dual_convergence", "convergence.csv"), []
    for r in conv_rows:
        try:
            dims = number(r, "dims", empty_ok=True, positive=True, integer=True)
            size = number(r, "size", empty_ok=True, positive=True, integer=True)
            pts.append((int(number(r, "cell", nonneg=True, integer=True)), int(dims or 0), int(size or 0),
                        int(number(r, "levels", positive=True, integer=True)),
                        int(number(r, "iteration", nonneg=True, integer=True)),
                        # an empty gap: the reference was not certified (sweep._convergence_rows); the
                        # violation was measured all the same, and is drawn
                        number(r, "violation_max", nonneg=True), number(r, "dual_gap_max", empty_ok=True),
                        (*setting_of(r), text_of(r, "device"))))
        except BadValue as err:
            skips.add(r, str(err))
    skips.report(log)
    return pts


#: The bench row's settings a convergence history is drawn by (convergence.csv records the temperature).
_HISTORY_SETTINGS = ("dtype", "batch", "generator", "scale", "seed", "device")


def with_bench_settings(conv_rows, bench_rows) -> list[dict]:
    """``conv_rows`` with the settings of each history's bench row (by ``row_id``), which
    convergence.csv does not record, so that a figure tells cells of two batches (dtypes,
    devices, ...) apart (ca_rev186); rows whose bench row is not found are left as they are."""
    by_id = {r.get("row_id"): r for r in bench_rows if r.get("row_id")}
    out = []
    for c in conv_rows:
        bench = by_id.get(c.get("row_id"))
        out.append(c if bench is None else {**c, **{k: bench.get(k, "") for k in _HISTORY_SETTINGS}})
    return out


def plot_convergence(conv_rows, path, env=None, log: Log | None = None, notes=()) -> str | None:
    """The per-sample dual solver (computed in float64): violation and dual gap against
    sweep, one line per cell, coloured by grid size (a sequential scale: small to large),
    dashed by number of levels and, where the cells differ in a setting (temperature, batch,
    dtype, device, generator, scale or seed: :func:`with_bench_settings` reads them from each
    history's bench row), marked by it and named in the legend (two temperatures had been one
    unnamed setting, ca_rev162, and two batches, ca_rev186).  The gap is the batch's largest
    signed gap (``convergence.csv``'s ``dual_gap_max``), drawn as its magnitude
    ``|max (g(λ) − f*)|``, as the axis says and as the per-structure figure draws it: a batch
    whose every gap is below 0 (weak duality allows it only by the reference's rounding) shows
    instead of hiding at the floor; a negative gap beside larger ones is not seen in a maximum.
    Values at or below the floor are drawn there.  Rows with unusable values are skipped and
    named.  ``notes``: the dual rows of ``bench.csv`` that have no history to draw (skipped, or
    failed: :func:`._common.not_drawn_notes`), for the footer.  Returns None without data."""
    log = log or warn
    need = ("cell", "levels", "iteration", "violation_max", "dual_gap_max")
    if lacks_columns(conv_rows, need, "dual_convergence", "convergence.csv", log):
        return None
    pts = _convergence_points(conv_rows, log)
    if not pts:
        log("dual_convergence: no usable row; not written")
        return None
    floor = 1e-17
    sizes = sorted({(p[1], p[2]) for p in pts})
    level_counts = sorted({p[3] for p in pts})
    cmap = plt.get_cmap("viridis")
    colors = {sz: cmap(0.85 * i / max(len(sizes) - 1, 1)) for i, sz in enumerate(sizes)}
    dashes = {L: ("-", "--", ":", "-.")[i % 4] for i, L in enumerate(level_counts)}
    settings = sorted({p[7] for p in pts}, key=lambda t: tuple((_float_or_inf(v), v) for v in t))
    symbols = (".", "o", "s", "^", "D", "v", "P", "X")
    markers = {t: symbols[i % len(symbols)] if len(settings) > 1 else "." for i, t in enumerate(settings)}
    labels = setting_labels(settings, (*SETTING_FIELDS, "device"))
    # past the symbols a marker repeats: the legend says whose it shares (ca_rev217), as setting_styles does
    labels = {t: labels[t] + (f" (marker of {labels[settings[i % len(symbols)]]})" if i >= len(symbols) else "")
              for i, t in enumerate(settings)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(FULL_WIDTH, 2.8), layout="constrained")
        for cell in sorted({p[0] for p in pts}):
            rs = sorted((p for p in pts if p[0] == cell), key=lambda p: p[4])
            style = {"color": colors[(rs[0][1], rs[0][2])], "ls": dashes[rs[0][3]], "lw": 1.0,
                     "marker": markers[rs[0][7]], "ms": 3, "mfc": "none" if markers[rs[0][7]] != "." else None}
            it = [p[4] for p in rs]
            axes[0].semilogy(it, [max(p[5], floor) for p in rs], **style)
            gapped = [p for p in rs if p[6] is not None]
            if gapped:
                axes[1].semilogy([p[4] for p in gapped], [max(abs(p[6]), floor) for p in gapped], **style)
        axes[0].set_ylabel("violation " + VIOLATION_TEX + "\n(max over batch)")
        axes[1].set_ylabel(r"dual gap $|\max_{\mathrm{batch}}(g(\lambda) - f^*)|$")
        for ax in axes:
            quiet_minor_ticks(ax)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("sweep (one exact block step per constraint)")
            ax.grid(True, which="major", alpha=0.25)
        handles = [Line2D([], [], color=colors[sz], lw=1.5, label=(f"${sz[1]}^{sz[0]}$" if sz[0] else
                                                                   f"size {sz[1]}")) for sz in sizes]
        handles += [Line2D([], [], color="#444444", ls=dashes[L], lw=1.0, label=f"{L} levels") for L in level_counts]
        if len(settings) > 1:
            handles += [Line2D([], [], color="#444444", ls="none", marker=markers[t], ms=4,
                               mfc="none" if markers[t] != "." else None, label=labels[t])
                        for t in settings]
        fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=6.5,
                   title="finest grid (colour)\nlevels (line)" + ("\nsetting (marker)" if len(settings) > 1
                                                                 else ""), title_fontsize=6.5)
        fig.suptitle(rf"Per-sample dual solver, float64: convergence (values $\leq {sci(floor)}$ drawn at "
                     rf"${sci(floor)}$)")
        no_gap = sorted({p[0] for p in pts if p[6] is None})
        gap_note = ([f"cell(s) {', '.join(map(str, no_gap))}: no dual gap drawn (its reference was not certified: "
                     f"convergence.csv leaves the gap empty); the violation is drawn"] if no_gap else [])
        return figures.save(fig, path, env, notes=["computed in float64 (the solver's working dtype), on each "
                                                   "cell's held-out instances", *gap_note, *notes])


# ====================================================================== speed against consistency


def timed_entries(points) -> tuple[dict, list]:
    """``{cell key: {series: [entry]}}`` of the points with a time (entry: time per sample,
    violation, time borrowed, IQR of the time per sample, low confidence, point), and the
    points with no time at all (nor a fitted row's to borrow).  A learned-dual kind without a
    time of its own borrows the fitted row's of its cell (the same computation, timed once there)."""
    timed = {(cell_key(p.row), p.series.method): p for p in points
             if p.series.kind == TIMED_KIND and p.v["per_sample_ms"] is not None}
    cells: dict = {}
    untimed: list = []
    for p in points:
        t, spread, source = p.v["per_sample_ms"], (None, None), p
        if t is None and p.record.needs_duals and (cell_key(p.row), p.series.method) in timed:
            source = timed[(cell_key(p.row), p.series.method)]
            t = source.v["per_sample_ms"]
        if t is None:
            untimed.append(p)
            continue
        tb = source.v.get("timed_batch")
        if tb and source.v.get("total_ms_q1") is not None and source.v.get("total_ms_q3") is not None:
            spread = (source.v["total_ms_q1"] / tb, source.v["total_ms_q3"] / tb)
        cells.setdefault(cell_key(p.row), {}).setdefault(p.series, []).append(
            (t, p.v["violation_mean"], source is not p, spread, low_confidence(source.v, "total_ms"), p))
    return cells, untimed


#: The columns a time–violation figure reads (:func:`timed_entries`): the time per sample, the
#: violation, and the spread and repetitions of the total time.
TRADEOFF_NUMBERS = {"per_sample_ms": {"empty_ok": True, "time_ms": True}, "violation_mean": {"nonneg": True},
                    "timed_batch": {"empty_ok": True, "positive": True},
                    "repeats": {"empty_ok": True, "positive": True, "integer": True},
                    "total_ms": {"empty_ok": True, "time_ms": True}, **spread_columns("total_ms")}


def _tradeoff_cells(points) -> tuple[dict, list]:
    """``{panel: {cell: {series: [entry]}}}`` (panel: dims, levels, cell dtype, device; entry:
    :func:`timed_entries`), and the ok rows with no time at all."""
    by_cell, untimed = timed_entries(points)
    cells: dict = {}
    for key, by_series in by_cell.items():
        row = next(iter(by_series.values()))[0][5]
        # cell dtypes apart (a float64 cell is not a float32 cell with a better solver), devices apart
        panel = (int(row.v["dims"]), int(row.v["levels"]), text_of(row.row, "dtype"), text_of(row.row, "device"))
        cells.setdefault(panel, {})[key] = by_series
    return cells, untimed


def draw_tradeoff_panel(ax, by_series: dict, styles: dict, dtype: str, floor: float) -> dict:
    """One panel of a time–violation figure (this module's trade-off, and the per-structure
    Pareto figure of :mod:`.graphs`): every series of ``by_series`` (:func:`timed_entries`)
    at (median time, median violation) with the interquartile range of its time, the
    low-confidence marks, the band below the cell dtype's ε and the Pareto front at that
    resolution (:func:`._common.pareto_front`).  Returns what it drew that the legend
    (:func:`tradeoff_legend`) must explain."""
    drawn = {"zero": False, "borrowed": False, "per_sample_borrowed": False, "low": False}
    pts, low = [], []
    eps = DTYPE_EPS.get(dtype, 0.0)
    for series, entries in sorted(by_series.items(), key=lambda kv: kv[0].order()):
        t = float(np.median([e[0] for e in entries]))
        v = float(np.median([e[1] for e in entries]))
        borrowed = entries[0][2]
        lo = [e[3][0] for e in entries if e[3][0] is not None]
        hi = [e[3][1] for e in entries if e[3][1] is not None]
        shown = max(v, floor)
        drawn["zero"] |= v == 0
        drawn["borrowed"] |= borrowed
        drawn["per_sample_borrowed"] |= borrowed and series.kind == "per_sample"
        color, marker = styles[series]
        xerr = [[max(t - min(lo), 0)], [max(max(hi) - t, 0)]] if lo and hi else None
        # a borrowed-time point is hollow and larger, on top: it often shares its place with the fitted row
        ax.errorbar([t], [shown], xerr=xerr, color=color, marker=marker, ms=9 if borrowed else 5.5, ls="none",
                    capsize=2, elinewidth=0.7, mfc="none" if borrowed else color, mew=1.1, zorder=4 if borrowed else 3)
        pts.append((t, shown))
        if any(e[4] for e in entries):
            low.append((t, shown))
    mark_low_confidence(ax, [p[0] for p in low], [p[1] for p in low])
    drawn["low"] = bool(low)
    if eps:
        ax.axhspan(floor / 10, eps, color="#cccccc", alpha=0.35, lw=0, zorder=0)
    front = pareto_front(pts, eps)
    if len(front) > 1:
        ax.step([f[0] for f in front], [max(f[1], eps) for f in front], where="post", color="#555555", lw=0.8,
                alpha=0.7, zorder=2)
    ax.scatter([f[0] for f in front], [f[1] for f in front], s=130, facecolors="none", edgecolors="#555555",
               lw=0.7, zorder=2)
    if drawn["zero"]:
        ax.axhline(floor, color="#999999", ls=":", lw=0.8)
    return drawn


def tradeoff_legend(styles: dict, drawn: dict, floor: float) -> list:
    handles: list[Line2D | Patch] = [
        Line2D([], [], color=styles[s][0], marker=styles[s][1], ms=5, ls="none",
               label=s.label + (" [float64]" if get_method(s.method).cpu_only else ""))
        for s in sorted(styles, key=Series.order)]
    handles.append(Line2D([], [], color="#555555", lw=0.8, marker="o", mfc="none", ms=9,
                          label="Pareto front: nothing both faster and more consistent, violations compared only "
                                "above the cells' dtype ε"))
    handles.append(Patch(color="#cccccc", alpha=0.6, label="below the cells' dtype ε: consistent to rounding "
                                                           "(float64 solvers earn no credit there)"))
    if drawn["borrowed"]:
        # the per-sample clause only where a per-sample point is drawn (per_structure draws none)
        handles.append(Line2D([], [], color="#444444", marker="o", mfc="none", ls="none", ms=8,
                              label="large hollow: time of the fitted-λ row (same computation"
                                    + ("; per-sample λ excludes finding λ)" if drawn["per_sample_borrowed"] else ")")))
    if drawn["low"]:
        handles.append(low_confidence_handle())
    if drawn["zero"]:
        handles.append(Line2D([], [], color="#999999", ls=":", lw=0.8,
                              label=rf"violation exactly 0 (e.g. exact in float64), drawn at ${sci(floor)}$"))
    return handles


def plot_tradeoff(rows, path, env=None, log: Log | None = None) -> str | None:
    """The speed-consistency trade-off in one picture, log-log: every method, learned-dual
    kind and cvxpylayers backend at (median time per sample, held-out violation), with the
    Pareto front (no other point is both faster and more consistent).

    One panel per (grid dimensionality, number of levels, cell dtype, device; the device
    named in the title where there are several), each at one sweep cell (the one where the
    most series were measured, then the largest), every panel on the same axes.
    Violations below the cell dtype's ε are consistent to rounding: the front does not rank
    them (cvxpylayers, which computes in float64, gets no credit for its dtype), and the
    band shows where that is.  Learned-dual kinds without a time of
    their own (λ = 0, per-sample λ: the fitted row's computation, timed once there) are
    placed at the fitted row's time and drawn hollow and larger; the per-sample λ's time
    excludes finding λ.  A violation of exactly 0 is drawn at a marked floor.  Error bars:
    the interquartile range of the total time where recorded; low-confidence times are
    marked.  The footer counts the rows the sweep skipped or that failed.  Returns None
    without data."""
    log = log or warn
    need = ("status", "method", "dims", "levels", "n_cells", "per_sample_ms", "violation_mean")
    if lacks_columns(rows, need, "tradeoff", "bench.csv", log):
        return None
    points = ok_points(rows, "tradeoff", {**SIZE_COLUMNS, **TRADEOFF_NUMBERS}, log)
    cells, untimed = _tradeoff_cells(points)
    if not cells:
        log("tradeoff: no ok row with both a time and a violation; not written")
        return None
    chosen = {}
    for panel, by_cell in cells.items():
        key = max(by_cell, key=lambda c: (len(by_cell[c]), max(e[5].v["n_cells"] for es in by_cell[c].values()
                                                                 for e in es), c))
        chosen[panel] = by_cell[key]
    positive = [e[1] for by_series in chosen.values() for es in by_series.values() for e in es if e[1] > 0]
    floor = floor_below(positive, default=1e-18)
    styles = styles_for({s for by_series in chosen.values() for s in by_series})
    panels = sorted(chosen)
    devices = {panel[3] for panel in panels}
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    drawn = {"zero": False, "borrowed": False, "per_sample_borrowed": False, "low": False}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(FULL_WIDTH if ncols == 2 else 4.6, 2.7 * nrows + 1.4),
                                 squeeze=False, sharex=True, sharey=True, layout="constrained")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, panel in zip(axes.flat, panels):
            for k, v in draw_tradeoff_panel(ax, chosen[panel], styles, panel[2], floor).items():
                drawn[k] |= v
            meta = next(iter(chosen[panel].values()))[0][5]
            ax.set_xscale("log")
            ax.set_yscale("log")
            quiet_minor_ticks(ax)
            # (the temperature too: two cells apart only in it were drawn one, unsaid, ca_rev118)
            ax.set_title(f"{panel[0]}-D, {panel[1]} levels: {plain(text_of(meta.row, 'shapes'), 40)}\n"
                         f"B={plain(text_of(meta.row, 'batch'), 8)}, τ={plain(text_of(meta.row, 'temperature'), 12)}, "
                         f"{plain(panel[2], 10)} cell" + (f", {plain(panel[3], 10)}" if len(devices) > 1 else ""))
            ax.grid(True, which="major", alpha=0.25)
            ax.margins(x=0.15, y=0.15)
        for ax in axes[-1]:
            ax.set_xlabel("time per sample (ms, forward + backward)")
        for ax in axes[:, 0]:
            ax.set_ylabel("held-out violation (batch mean)")
        fig.legend(handles=tradeoff_legend(styles, drawn, floor), loc="outside lower center", ncol=2, frameon=False,
                   fontsize=6.2)
        fig.suptitle("Speed vs consistency: time per sample and held-out violation (log-log)")
        drawn_points = [e[5] for by_series in chosen.values() for es in by_series.values() for e in es]
        notes = [dtype_note(points), "times per sample: each point its cell's median of forward + backward per "
                 "repetition, its error bar the interquartile range", batch_note(drawn_points)]
        notes.append(untimed_listing(untimed, "time per sample (nor a fitted row's to borrow)") or "")
        others = sum(len(by_cell) - 1 for by_cell in cells.values())
        if others:
            notes.append(f"each panel draws one sweep cell (the most series measured, then the largest): {others} "
                         f"other cell(s) (other sizes, batches, temperatures or instances) not drawn here; the "
                         f"violation figure has every cell")
        notes += not_drawn_notes(rows)
        return figures.save(fig, path, env, notes=notes)
