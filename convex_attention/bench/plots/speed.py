"""Figures of speed: the core benchmark, time per sample against problem size, and the
speed-up of exact over cvxpylayers.

Every time is a median with its interquartile range; a time whose range is wide, or that
rests on too few repetitions, is marked low-confidence (:func:`._common.low_confidence`).
Slopes are fitted only where the times follow a power law (:func:`._common.fit_power_law`),
and drawn over the sizes they fit.  Each figure's footer says what it was computed in, how
it was timed and what it leaves out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ...io import figures
from ...io.figures import FULL_WIDTH, STYLE, plain
from ..timing import is_measured_time
from ._common import (
    LOW_CONFIDENCE_IQR,
    METHOD_COLORS,
    MIN_CONFIDENT_REPEATS,
    MIN_SLOPE_RISE,
    MIN_SLOPE_SIZES,
    MIN_SLOPE_SPAN,
    SETTING_HANDLE_LENGTH,
    SIZE_COLUMNS,
    SLOPE_TOLERANCE,
    Log,
    Point,
    Series,
    backend_style,
    batch_note,
    borrows_its_time,
    cell_key,
    compute_dtype_of,
    dims_title,
    dtype_note,
    fit_power_law,
    lacks_columns,
    low_confidence,
    low_confidence_handle,
    mark_low_confidence,
    not_drawn_notes,
    ok_points,
    quiet_minor_ticks,
    series_name,
    setting_handles,
    setting_of,
    setting_styles,
    skip_reason,
    spread_columns,
    styles_for,
    text_of,
    untimed_note,
    warn,
)

# ====================================================================== the core benchmark


@dataclass
class _Bar:
    label: str
    method: str
    backend: str
    total: float        # µs per sample: the drawn height
    fwd: float          # µs per sample: the darker lower part
    lo: float | None    # interquartile range of the total, where the row records it
    hi: float | None
    bwd: float | None   # µs per sample, where the row records it
    batch: str
    dtype: str
    repeats: int | None = None  # the timed repetitions, where the row records them
    device: str = ""    # where it ran, where the row records it
    outside: bool = False  # its median lies outside the quartiles it records: no spread is read from them


def _measured(row) -> bool:
    """Whether a core-benchmark row was measured (status ``ok``; rows without a status are)
    and has a time to draw: a finite forward and a finite total (or backward, for the sum)."""
    return str(row.get("status") or "ok") == "ok" and _timed(row)


def _timed(row) -> bool:
    """Whether ``row`` has times to draw: measured times (timing.is_measured_time; a zero
    time is a failed measurement, as the targets count it) for the forward and the total (or
    the backward, for the sum)."""
    return is_measured_time(row.get("fwd_ms")) and (is_measured_time(row.get("total_ms"))
                                                    or is_measured_time(row.get("bwd_ms")))


def _untimed(row, use_total: bool | None = None) -> bool:
    """An ``ok`` row whose time is no number (bench_core.json: null): counted as failed by the
    targets, never drawn, and named.  ``use_total`` (:func:`_uses_total`): the figure's
    statistic; a row that cannot give it (no backward where the figure sums forward and
    backward) is untimed too."""
    if str(row.get("status") or "ok") != "ok":
        return False
    if not _timed(row):
        return True
    return use_total is False and not is_measured_time(row.get("bwd_ms"))


def _core_not_drawn(rows) -> tuple[str, str]:
    """The core figure's footer notes on the rows it does not draw: ``(skipped, failures)``,
    failures naming each failed row with its reason (FAILED) and each ``ok`` row without a
    time it can draw (NOT TIMED: no number, or no backward where the figure sums the two)."""
    use_total = _uses_total(rows)
    skipped, failures = not_drawn_notes([r for r in rows if not _measured(r)])
    untimed = [r for r in rows if _untimed(r, use_total)]
    if untimed:
        failures = "; ".join(filter(None, [failures, f"NOT TIMED, not drawn: {len(untimed)} row(s) without a time "
                                                     f"to draw: {', '.join(series_name(r) for r in untimed)}"]))
    return skipped, failures


def _uses_total(rows) -> bool:
    """Whether the core figure draws ``total_ms`` (every measured row has it) or the sum of
    the forward and backward medians (older records)."""
    return all(is_measured_time(r.get("total_ms")) for r in rows if _measured(r))


def _core_bars(rows) -> tuple[dict, str]:
    """shapes -> bars (one per method and backend) of the measured rows, and the statistic
    the heights are."""
    out: dict = {}
    has_total = _uses_total(rows)
    rows = [r for r in rows if _measured(r) and not _untimed(r, has_total)]
    for r in rows:
        batch = _core_batch(r)
        total = float(r["total_ms"]) if has_total else float(r["fwd_ms"]) + float(r["bwd_ms"])
        q1, q3 = r.get("total_ms_q1"), r.get("total_ms_q3")
        recorded = has_total and is_finite_value(q1) and is_finite_value(q3)
        # a median outside its quartiles (a row edited by hand, another version's) gives no spread:
        # reversed ones had given a bar no error bar and a footer of a -30 % range (ca_rev186)
        spread = recorded and float(q1) <= total * (1 + 1e-9) and total <= float(q3) * (1 + 1e-9)
        backend = str(r.get("backend") or "")
        out.setdefault(str(r["shapes"]), []).append(_Bar(
            r["method"] + (f"\n({backend})" if backend else ""), r["method"], backend, 1e3 * total / batch,
            1e3 * float(r["fwd_ms"]) / batch, 1e3 * float(q1) / batch if spread else None,
            1e3 * float(q3) / batch if spread else None,
            1e3 * float(r["bwd_ms"]) / batch if is_finite_value(r.get("bwd_ms")) else None,
            str(r["batch"]), str(r.get("dtype", "")),
            int(float(r["repeats"])) if is_finite_value(r.get("repeats")) else None, str(r.get("device") or ""),
            recorded and not spread))
    stat = ("median of forward + backward per repetition" if has_total
            else "median forward + median backward")
    return out, stat


def _core_batch(row) -> int:
    """The batch of a measured core-benchmark row: a positive integer, else ValueError (the
    record is not drawn).  Read as a float, a hand-edited ``true``, ``1e999``, ``-4`` or ``4.5``
    divided the times per sample by 1, inf, -4 or 4.5: the ratios of the figure's titles, 4x,
    0, negative (ca_rev250); ``1`` and 400 zeros raised OverflowError."""
    batch = row.get("batch")
    if isinstance(batch, str) and batch.strip().isascii() and batch.strip().isdigit():  # (digits, as a CSV holds)
        batch = int(batch)  # (not "²", which isdigit() takes and int() refuses with its own message: ca_rev254)
    if isinstance(batch, (float, np.floating)) and math.isfinite(batch) and float(batch).is_integer():
        batch = int(batch)  # 64.0: a whole number another writer stored as a float (ca_rev254)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= 2 ** 53:
        raise ValueError(f"the {plain(row.get('method'), 30)} row's batch {plain(repr(batch), 30)} is not a "
                         f"positive integer (at most 2**53)")
    return int(batch)


def is_finite_value(v) -> bool:
    try:
        return v is not None and v != "" and math.isfinite(float(v))
    except (TypeError, ValueError, OverflowError):  # (an int beyond float: 1 and 400 zeros, ca_rev250)
        return False


def _panel_ratios(bars, names, failed_methods=()) -> dict:
    """The ratios ``names`` (``"A/B"``, or ``"A/B per sample"``) of one panel's bars: median
    time per sample of method A over method B, where both are in the panel; a method with
    several bars (one per cvxpylayers backend) counts its fastest.  ``{name: (ratio, note)}``,
    the note naming the fastest backend.  Where a series of A or B failed in the panel
    (``failed_methods``) it might have been the fastest: the ratio is then only a bound, and
    the name says so (``"A/B ≤"`` or ``"A/B ≥"``; both failed: no ratio)."""
    out = {}
    for name in names:
        pair = name.replace(" per sample", "").split("/")
        if len(pair) != 2:
            continue
        a = [b for b in bars if b.method == pair[0]]
        c = [b for b in bars if b.method == pair[1]]
        if a and c:
            # every bar's total is a measured time (_core_bars, timing.is_measured_time): the
            # series that failed are not bars, and failed_methods names their methods
            fa, fc = min(a, key=lambda b: b.total), min(c, key=lambda b: b.total)
            note = ", ".join(("fastest that ran" if f.method in failed_methods else "fastest")
                             + f": {f.backend or f.method}" for f, group in ((fa, a), (fc, c)) if len(group) > 1)
            bound = ("" if pair[0] not in failed_methods and pair[1] not in failed_methods else
                     " ≤" if pair[1] not in failed_methods else " ≥" if pair[0] not in failed_methods else None)
            if bound is None:
                continue  # either side might have been faster: no ratio, not even a bound
            out[name + bound] = (fa.total / fc.total, note)
    return out


def core_ratios(rows, names) -> dict:
    """The ratios ``names`` (``"A/B"``, or ``"A/B per sample"``) computed from the bars
    :func:`plot_core_benchmark` draws (:func:`_panel_ratios`), each from the first panel
    (problem shapes) where both methods appear; every panel's title carries its own.  Names
    whose methods share no panel are left out.  Returns ``{name: (ratio, note)}``, the note
    naming the fastest backend."""
    panels, _ = _core_bars(rows)
    _, failed_methods = _failed_series(rows)
    out: dict = {}
    for shapes, bars in panels.items():
        for name, value in _panel_ratios(bars, names, failed_methods.get(shapes, ())).items():
            out.setdefault(name, value)
    return out


def _failed_series(rows) -> tuple[dict, dict]:
    """``(failed, failed_methods)``: shapes -> the series that failed there (an error, or an
    ``ok`` row whose time is no measured time), named for a title; shapes -> their methods,
    whose ratios are then only bounds (:func:`_panel_ratios`)."""
    failed: dict = {}
    failed_methods: dict = {}
    use_total = _uses_total(rows)
    for r in rows:
        untimed = _untimed(r, use_total)
        if str(r.get("status")) == "error" or untimed:
            failed.setdefault(str(r.get("shapes", "")), []).append(series_name(r) + (" (no time)" if untimed
                                                                                      else ""))
            failed_methods.setdefault(str(r.get("shapes", "")), set()).add(str(r.get("method", "")))
    return failed, failed_methods


def _core_title(shapes: str, bars, names, failed=(), show_device: bool = False, failed_methods=()) -> str:
    """The panel's problem, each method's batch and dtype (and device, where the figure's bars
    ran on several: ``show_device``; per-sample times at different batches are not like for
    like: the title says so), the ratios ``names`` of its own bars (a bound where a series of
    ``failed_methods`` failed here), and the series that failed at its shapes (``failed``: names)."""
    by_setting: dict = {}
    for b in bars:
        # a cvxpylayers bar by its backend (as on the axis): backends can be timed on batches of their own
        by_setting.setdefault((b.batch, b.dtype, b.device if show_device else ""), []).append(b.backend or b.method)

    def where(device):
        return f", {plain(device or 'device not recorded', 20)}" if show_device else ""

    if len(by_setting) == 1:
        (batch, dtype, device), = by_setting
        lines = [f"{plain(shapes)}, B = {plain(batch)}, {plain(dtype)}{where(device)}"]
    else:  # one line per setting: several on one line ran into the next panel
        lines = [f"{plain(shapes)}, per sample"] + [f"{', '.join(dict.fromkeys(ms))}: B = {plain(batch)}, "
                                                   f"{plain(dtype)}{where(device)}"
                                                   for (batch, dtype, device), ms in by_setting.items()]
    for name, (value, note) in _panel_ratios(bars, names, failed_methods).items():
        sign = "" if name.endswith(("≤", "≥")) else " ="
        lines.append(f"{plain(name)}{sign} {ratio_text(value)}" + (f" ({plain(note)})" if note else ""))
        if not sign:  # a series failed here: the ratio is a bound
            lines.append("(a bound: a series that failed might have been faster)")
    if failed:
        lines.append(f"FAILED, not drawn: {', '.join(failed)}")
    return "\n".join(lines)


def _bar_color(b: _Bar, backends: list) -> str:
    """The method's colour; a cvxpylayers backend's own (as in every figure of the sweep)."""
    if b.backend:
        return backend_style(b.backend, backends)[0]
    return METHOD_COLORS.get(b.method, "#333333")


def _core_spread(b: _Bar) -> float | None:
    """The bar's interquartile range relative to its median total (None where not recorded)."""
    if b.lo is None or b.hi is None or not b.total:
        return None
    return (b.hi - b.lo) / b.total


def _mark_wide(ax, bars) -> bool:
    """Dotted squares on the bars whose interquartile range exceeds LOW_CONFIDENCE_IQR of the
    median, or that rest on fewer than MIN_CONFIDENT_REPEATS repetitions (where the row
    records them: records written before review 46 do not)."""
    wide = [i for i, b in enumerate(bars) if (_core_spread(b) or 0.0) > LOW_CONFIDENCE_IQR
            or (b.repeats is not None and b.repeats < MIN_CONFIDENT_REPEATS)]
    mark_low_confidence(ax, wide, [bars[i].total for i in wide])
    return bool(wide)


def _draw_linear_bars(ax, bars, backends: list) -> None:
    """A bar per method on a linear axis: its total, the forward share darker inside it (a
    stack reads true on a linear axis), the interquartile range of the total."""
    x = np.arange(len(bars))
    colors = [_bar_color(b, backends) for b in bars]
    ax.bar(x, [b.total for b in bars], color=colors, alpha=0.45, width=0.6)
    ax.bar(x, [b.fwd for b in bars], color=colors, width=0.6)
    for i, b in enumerate(bars):
        if b.lo is not None and b.hi is not None and b.lo <= b.total <= b.hi:
            ax.errorbar([i], [b.total], yerr=[[b.total - b.lo], [b.hi - b.total]], color="#222222", lw=0.8,
                        capsize=2)
    ax.set_ylim(bottom=0)


def _draw_log_points(ax, bars, backends: list) -> None:
    """Times spanning orders of magnitude: points on a log axis (bars on a log axis have no
    meaningful base): the total with its interquartile range, forward and backward apart."""
    for i, b in enumerate(bars):
        color = _bar_color(b, backends)
        if b.lo is not None and b.hi is not None and b.lo <= b.total <= b.hi:
            ax.errorbar([i], [b.total], yerr=[[b.total - b.lo], [b.hi - b.total]], color=color, marker="o", ms=5,
                        capsize=2, lw=0.8)
        else:
            ax.plot([i], [b.total], color=color, marker="o", ms=5, ls="none")
        ax.plot([i + 0.18], [b.fwd], color=color, marker=">", ms=3.5, ls="none")
        if b.bwd is not None:
            ax.plot([i + 0.18], [b.bwd], color=color, marker="<", ms=3.5, ls="none", mfc="none")
    ax.set_yscale("log")
    quiet_minor_ticks(ax)
    ax.set_xlim(-0.6, len(bars) - 0.4)


def ratio_text(value: float) -> str:
    """A ratio as a title shows it: four significant digits below 10, where the targets are
    (exact/softmax ≤ 3 measured 3.004, which three digits drew as "= 3" beside a verdict of NOT
    met), three above (the 10⁴ speed-ups)."""
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.3g}"


def plot_core_benchmark(rows, ratios, path: str, env: dict | None = None) -> str:
    """Each method's median time per sample (one entry per cvxpylayers backend), one panel
    per problem size, and the ratios ``ratios`` names computed from what is drawn
    (:func:`core_ratios`).

    ``rows``: dicts with method, (backend,) shapes, batch, dtype, fwd_ms, bwd_ms and,
    optionally, total_ms (the median of the per-repetition forward + backward time) with
    total_ms_q1/q3.  The total is total_ms (fwd_ms + bwd_ms where any row lacks total_ms),
    with its interquartile range.  A panel whose times span less than 30× draws bars on a
    linear axis (the forward share darker inside); one spanning more draws points on a log
    axis (total, forward, backward).  Each panel's title gives every method's batch and
    dtype.  The values of ``ratios`` are not drawn: the figure recomputes them, so the
    printed ratio and the drawing are one statistic, each panel's from its own bars.  Rows
    whose ``status`` is not ``ok`` (a backend that failed) are not drawn: the panel of their
    shapes names them, and the footer gives their reason.
    """
    panels, stat = _core_bars(rows)
    failed, failed_methods = _failed_series(rows)
    if not panels:  # nothing to draw: a figure that says why, naming every row, not a crash
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(FULL_WIDTH, 1.6), layout="constrained")
            ax.axis("off")
            names = "; ".join(f"{plain(shapes, 30)}: {', '.join(plain(n, 40) for n in which)}"
                              for shapes, which in failed.items())
            why = (f"no row has a time to draw (failed, or not timed: see below)\n({names})" if rows
                   else "the record holds no rows")
            ax.text(0.5, 0.5, f"nothing measured: {why}", ha="center", va="center", fontsize=7, color="#d62728",
                    transform=ax.transAxes)
            return figures.save(fig, path, env, notes=list(_core_not_drawn(rows)))
    backends = sorted({b.backend for bars in panels.values() for b in bars if b.backend})
    devices = {b.device for bars in panels.values() for b in bars}
    with plt.rc_context(STYLE):
        widths = [max(len(bars), 2) for bars in panels.values()]
        titles = {shapes: _core_title(shapes, bars, list(ratios), [plain(n, 40) for n in failed.get(shapes, [])],
                                      len(devices) > 1, failed_methods.get(shapes, ()))
                  for shapes, bars in panels.items()}
        # taller for a title of more than 3 lines (one line per batch setting): the axes keep their
        # height, and the two-line y label stays clear of the legend below
        extra = 0.15 * max(0, max(t.count("\n") + 1 for t in titles.values()) - 3)
        fig, axes = plt.subplots(1, len(panels), figsize=(FULL_WIDTH, 3.2 + extra), squeeze=False,
                                 layout="constrained", gridspec_kw={"width_ratios": widths})
        on_log: dict = {}  # colours drawn as points on a log axis, and as bars on a linear one
        on_linear: dict = {}
        any_wide = False
        for ax, (shapes, bars) in zip(axes[0], panels.items()):
            totals = [b.total for b in bars]
            if max(totals) > 30 * min(totals):
                _draw_log_points(ax, bars, backends)
                on_log.update(dict.fromkeys(_bar_color(b, backends) for b in bars))
            else:
                _draw_linear_bars(ax, bars, backends)
                on_linear.update(dict.fromkeys(_bar_color(b, backends) for b in bars))
            ax.set_xticks(np.arange(len(bars)), ["\n".join(plain(t) for t in b.label.split("\n")) for b in bars],
                          fontsize=6.5)
            any_wide |= _mark_wide(ax, bars)
            ax.set_title(titles[shapes])
            ax.set_ylabel(f"time per sample (µs)\n{stat}")
        # Any: tuples of artists too (one entry, drawn by HandlerTuple), which matplotlib's stub of
        # Figure.legend (handles: Iterable[Artist]) does not admit
        handles: list[Any] = []
        labels: list[str] = []
        if on_linear:  # the swatches in the methods' own colours
            handles += [tuple(Patch(color=c) for c in on_linear), tuple(Patch(color=c, alpha=0.45) for c in on_linear)]
            # the whole bar is the total: the rest above the forward is the backward median only where
            # the total is the sum of the medians
            labels += ["bar, darker: forward (median)", "whole bar: forward + backward"
                       + (" (median of the sums: the rest is not the backward median)"
                          if stat.startswith("median of") else " (sum of the medians)")]
        if on_log:
            handles += [tuple(Line2D([], [], color=c, marker=m, ls="none", ms=4, mfc=f) for c in on_log)
                        for m, f in (("o", None), (">", None), ("<", "none"))]
            labels += ["point: forward + backward (bar: IQR)", "forward", "backward"]
        if any_wide:
            handles.append(low_confidence_handle())
            labels.append(f"dotted square: low confidence (IQR > {LOW_CONFIDENCE_IQR:.0%} of the median, or < "
                          f"{MIN_CONFIDENT_REPEATS} repetitions)")
        fig.legend(handles, labels, handler_map={tuple: HandlerTuple(ndivide=None, pad=0.2)}, frameon=False,
                   loc="outside lower center", ncol=3, fontsize=6.5)
        fig.suptitle("Time per sample (bars and error bars: interquartile range); ratios computed from what is drawn")
        spreads = [v for bars in panels.values() for v in map(_core_spread, bars) if v is not None]
        # the repetition criterion is stated wherever a bar records its repetitions (it marks those
        # bars); the bars without a count are named (the footer had said "not recorded" for all: ca_rev213)
        every_bar = [b for bars in panels.values() for b in bars]
        uncounted = sorted({b.label.replace(chr(10), " ") for b in every_bar if b.repeats is None})
        counted = any(b.repeats is not None for b in every_bar)  # (bars, not names: a name recurs per panel)
        if not counted:
            criterion = " (repetitions are not recorded)"
        else:
            criterion = f" or < {MIN_CONFIDENT_REPEATS} repetitions" + (
                f" (repetitions not recorded for {', '.join(uncounted)})" if uncounted else "")
        spread_note = (f"widest interquartile range: {max(spreads):.0%} of its median; low confidence: IQR > "
                       f"{LOW_CONFIDENCE_IQR:.0%} of the median{criterion}" if spreads
                       else "interquartile ranges not recorded")
        outside = sorted({b.label.replace(chr(10), " ") for bars in panels.values() for b in bars if b.outside})
        if outside:
            spread_note += (f"; {', '.join(outside)}: the median lies outside the quartiles the row records (edited "
                            f"by hand?), no spread drawn or counted")
        unplaced = sorted(set(failed) - set(panels))  # failed at shapes no panel draws
        skipped, failures = _core_not_drawn(rows)
        return figures.save(fig, path, env, notes=[
            "times per sample; a ratio across batch sizes credits the larger batch with its batching", spread_note,
            skipped, failures + (f" (at {', '.join(plain(s, 30) for s in unplaced)}: no panel)" if unplaced else "")])


# ====================================================================== time against size


def _timed_points(rows, log: Log) -> tuple[list[Point], list[Point]]:
    """The ok rows with a time of their own (forward), and every ok row (the notes count those
    without: the learned dual's λ = 0 and per-sample λ* share the fitted row's computation,
    timed there; any other is a row whose time was not measured)."""
    numbers = {**SIZE_COLUMNS, "timed_batch": {"empty_ok": True, "positive": True, "integer": True},
               "repeats": {"empty_ok": True, "positive": True, "integer": True},
               "fwd_ms": {"empty_ok": True, "time_ms": True}, "bwd_ms": {"empty_ok": True, "time_ms": True},
               **spread_columns("fwd_ms"), **spread_columns("bwd_ms")}
    points = ok_points(rows, "time_vs_size", numbers, log)
    timed = [p for p in points if p.v["fwd_ms"] is not None and p.v["timed_batch"] is not None]
    return timed, points


def _curve(points, col: str):
    """``(n, median time per sample, q1, q3, low-confidence)`` per point, sorted by n: the
    points of one series in one setting (:func:`._common.setting_of`), one cell per size, so
    each value is one cell's median and its bar that cell's interquartile range (nothing is
    pooled across cells)."""
    out = []
    for p in sorted((p for p in points if p.v[col] is not None), key=lambda p: p.v["n_cells"]):
        tb = p.v["timed_batch"]
        q1, q3 = p.v.get(col + "_q1"), p.v.get(col + "_q3")
        out.append((int(p.v["n_cells"]), p.v[col] / tb, (q1 if q1 is not None else p.v[col]) / tb,
                    (q3 if q3 is not None else p.v[col]) / tb, low_confidence(p.v, col)))
    return out


def _draw_time_curve(ax, curve, color, marker, ls="-") -> tuple[float, object]:
    """One series' curve with its interquartile bars, its low-confidence marks and, where the
    times follow a power law, the fitted slope over the sizes it fits.  Returns the widest
    relative IQR drawn and the fit (or None)."""
    x = np.array([c[0] for c in curve], dtype=float)
    y = np.array([c[1] for c in curve])
    yerr = np.array([[max(c[1] - c[2], 0) for c in curve], [max(c[3] - c[1], 0) for c in curve]])
    ax.errorbar(x, y, yerr=yerr if yerr.any() else None, color=color, marker=marker, ms=3.5, lw=1.0, capsize=2,
                elinewidth=0.9, ls=ls)
    low = [c for c in curve if c[4]]
    mark_low_confidence(ax, [c[0] for c in low], [c[1] for c in low])
    fit = fit_power_law(x, y)
    if fit is not None:
        xs = np.array([fit.n_lo, fit.n_hi])
        ax.plot(xs, fit.coef * xs ** fit.slope, color=color, lw=5, alpha=0.18, solid_capstyle="butt", zorder=1)
    widest = max(((c[3] - c[2]) / c[1] for c in curve), default=0.0)
    return widest, fit


def _label_slopes(ax, fits) -> None:
    """``n^s`` right of each fitted band's end, in its series' colour, moved apart
    vertically where two would overlap (``fits``: ``[(PowerLaw, colour)]``)."""
    low, high = (math.log10(v) for v in ax.get_ylim())
    # decades between two labels' centres: a label's height (about 10 points) on this axis
    gap = max((high - low) * 10.0 / max(ax.get_window_extent().height * 72.0 / ax.figure.dpi, 1.0), 0.1)
    placed: list[float] = []
    for fit, color in sorted(fits, key=lambda fc: fc[0].coef * fc[0].n_hi ** fc[0].slope):
        at = math.log10(fit.coef * fit.n_hi ** fit.slope)
        y = at
        while any(abs(p - y) < gap * 0.999 for p in placed):  # above every label it would overlap
            y = max(p for p in placed if abs(p - y) < gap * 0.999) + gap
        placed.append(y)
        ax.annotate(f"$n^{{{fit.slope:.2f}}}$", (fit.n_hi, 10 ** y), xytext=(4, 0), textcoords="offset points",
                    color=color, fontsize=6, va="center", annotation_clip=False)


def _time_legend(points, styles: dict, settings: dict) -> list:
    """One entry per series (marked [float64] where it computes in float64 in another
    dtype's cell), one per setting's line style (``settings``: :func:`._common.setting_styles`;
    none for one setting), then the marks."""
    promoted = {p.series for p in points if compute_dtype_of(p) != text_of(p.row, "dtype")}
    handles = [Line2D([], [], color=styles[s][0], marker=styles[s][1], ms=3.5, lw=1.0,
                      label=s.label + (" [float64]" if s in promoted else ""))
               for s in sorted(styles, key=Series.order)]
    handles += setting_handles(settings)
    handles.append(low_confidence_handle())
    handles.append(Line2D([], [], color="#888888", lw=5, alpha=0.3,
                          label=rf"band, $n^s$: slope fitted where the times follow a power law" "\n"
                                rf"(≥ {MIN_SLOPE_SIZES} sizes over ≥ {MIN_SLOPE_SPAN:g}×, each within "
                                rf"{SLOPE_TOLERANCE:.0%} of the line, rising ≥ {MIN_SLOPE_RISE:g}×)"))
    return handles


def _panel_of(p: Point) -> tuple:
    """The panel a point of a figure against size belongs to: its grid dimensionality, device
    and number of levels (times on two devices, or at other depths, are not one curve)."""
    return int(p.v["dims"]), text_of(p.row, "device"), int(p.v["levels"])


def _size_panel_title(panel: tuple, devices) -> str:
    """``"2-D grids, 2 levels"``, and the device where the figure has more than one."""
    return f"{dims_title(panel[0])}, {panel[2]} levels" + (f", {plain(panel[1])}" if len(devices) > 1 else "")


def plot_time_vs_size(rows, path, env=None, log: Log | None = None) -> str | None:
    """Median time per sample against problem size, log-log: one row of panels per grid
    dimensionality (device) and number of levels, forward and backward side by side on one
    y scale, one line per method (learned-dual kind, cvxpylayers backend) and setting (the
    cells' dtype, batch, temperature, ... where the sweep has several: one line style each,
    :func:`._common.setting_styles`; never a median across them), each point one cell's
    median with that cell's interquartile bar, low-confidence marks, and a slope only where
    the times follow a power law (drawn as a band over the sizes it fits).  Rows without a
    time of their own (timed in another row) are counted in the notes, not drawn; so are the
    rows the sweep skipped or that failed.  Returns None (and writes nothing) without data."""
    log = log or warn
    need = ("status", "method", "dims", "levels", "n_cells", "timed_batch", "fwd_ms", "bwd_ms")
    if lacks_columns(rows, need, "time_vs_size", "bench.csv", log):
        return None
    points, every = _timed_points(rows, log)
    if not points:
        log("time_vs_size: no timed row; not written")
        return None
    panels = sorted({_panel_of(p) for p in points})
    devices = {panel[1] for panel in panels}
    styles = styles_for({p.series for p in points})
    settings = setting_styles(setting_of(p.row) for p in points)
    widest, fitted = 0.0, 0
    to_label: list = []  # (axes, fits): labelled once every panel is drawn (they share one y scale)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(panels), 2, figsize=(FULL_WIDTH, 2.3 * len(panels) + 1.5), squeeze=False,
                                 sharex=True, sharey=True, layout="constrained")
        for panel, row_axes in zip(panels, axes):
            sel = [p for p in points if _panel_of(p) == panel]
            keys = sorted({(p.series, setting_of(p.row)) for p in sel},
                          key=lambda k: (k[0].order(), list(settings).index(k[1])))
            fits: dict = {0: [], 1: []}
            for series, setting in keys:
                color, marker = styles[series]
                mine = [p for p in sel if p.series == series and setting_of(p.row) == setting]
                for j, (ax, col) in enumerate(zip(row_axes, ("fwd_ms", "bwd_ms"))):
                    curve = _curve(mine, col)
                    if curve:
                        spread, fit = _draw_time_curve(ax, curve, color, marker, settings[setting][0])
                        widest = max(widest, spread)
                        if fit is not None:
                            fits[j].append((fit, color))
            for j, ax in enumerate(row_axes):
                to_label.append((ax, fits[j]))
                fitted += len(fits[j])
            for ax, name in zip(row_axes, ("forward", "backward")):
                ax.set_xscale("log")
                ax.set_yscale("log")
                quiet_minor_ticks(ax)
                ax.set_title(f"{_size_panel_title(panel, devices)}: {name} pass")
                ax.grid(True, which="major", alpha=0.25)
            row_axes[0].set_ylabel("median time per sample (ms)")
        for ax, fits_here in to_label:
            _label_slopes(ax, fits_here)
        for ax in axes[-1]:
            ax.set_xlabel(r"problem size $n$ (cells, all levels)")
        handles = _time_legend(points, styles, settings)
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6,
                   handlelength=SETTING_HANDLE_LENGTH)
        fig.suptitle("Time per sample vs problem size (log-log; bars: interquartile range of each cell)")
        notes = [dtype_note(points), batch_note(points),
                 f"each point one cell's median, its bar that cell's interquartile range (widest: {widest:.0%} of its "
                 f"median; bars narrower than a marker are hidden by it); low confidence: IQR > "
                 f"{LOW_CONFIDENCE_IQR:.0%} of the median or < {MIN_CONFIDENT_REPEATS} repetitions",
                 "no slope: the times follow no power law, or barely grow (overhead-bound), at these sizes"
                 if fitted == 0 else ""]
        borrowed = sum(borrows_its_time(p) for p in every if p.v["fwd_ms"] is None or p.v["timed_batch"] is None)
        if borrowed:
            notes.append(f"{borrowed} row(s) carry no time of their own (learned_dual λ = 0 and per-sample λ*: the "
                         f"fitted row's computation, timed there) and are not drawn")
        notes.append(untimed_note(every, ("fwd_ms", "bwd_ms", "timed_batch"), "forward or backward time") or "")
        notes += not_drawn_notes(rows)
        return figures.save(fig, path, env, notes=notes)


# ====================================================================== exact over cvxpylayers

# The speed-up figure compares these two methods by name: it is the figure's subject.
SPEEDUP_BASE, SPEEDUP_OVER = "exact", "cvxpylayers"
SPEEDUP_TARGET = 1e4


def _speedup_lines(points) -> tuple[dict, dict]:
    """``{(panel, series, setting): [(n, speed-up, low confidence, across runs)]}`` from the
    cells where both were measured (panel: :func:`_panel_of`; setting:
    :func:`._common.setting_of`, so cells of another dtype, batch or device are never one
    line; across runs: the two times were measured by different runs into the folder, as
    bench.csv's ``run`` says, a resume having measured one again), and the timed batches
    ``{exact: {batch}, cvxpylayers: {(batch, backend)}}``."""
    base: dict = {}
    for p in points:
        if p.series.method == SPEEDUP_BASE:
            base.setdefault(cell_key(p.row), []).append(p)
    lines: dict = {}
    batches: dict = {SPEEDUP_BASE: set(), SPEEDUP_OVER: set()}
    for p in points:
        if p.series.method != SPEEDUP_OVER or cell_key(p.row) not in base:
            continue
        ref = base[cell_key(p.row)]
        ratio = p.v["per_sample_ms"] / float(np.median([b.v["per_sample_ms"] for b in ref]))
        unsure = low_confidence(p.v, "total_ms") or any(low_confidence(b.v, "total_ms") for b in ref)
        across = {text_of(b.row, "run") for b in ref} != {text_of(p.row, "run")}
        lines.setdefault((_panel_of(p), p.series, setting_of(p.row)), []).append(
            (int(p.v["n_cells"]), ratio, unsure, across))
        batches[SPEEDUP_OVER].add((int(p.v["timed_batch"]), p.series.backend))
        batches[SPEEDUP_BASE].update(int(b.v["timed_batch"]) for b in ref)
    return lines, batches


# a ratio of two runs' times: a black ring around its point, which no backend's marker and no
# other mark is (moreau's is a filled X; low confidence a dotted square); the legend and the
# footer say what it means
_ACROSS_RUNS_MARK: dict[str, Any] = {"marker": "o", "ms": 11, "mfc": "none", "mec": "#111111", "mew": 1.0,
                                     "ls": "none", "zorder": 7}

# how a cell not measured is marked along the bottom edge: a hollow marker in the backend's colour, its
# shape the reason (the legend names each); shapes no backend uses (BACKEND_STYLES, SPARE_BACKEND_STYLES)
NOT_MEASURED_MARKERS = ("v", "o", "s", "D", "^", "<", ">")
SHAPE_NAMES = {"v": "triangle", "o": "circle", "s": "square", "D": "diamond", "^": "triangle up", "<": "triangle left",
               ">": "triangle right"}


def _not_measured(rows, panels, log: Log) -> dict:
    """``{(panel, backend, why): [n]}``: the cvxpylayers cells of a panel drawn (``panels``)
    that the sweep did not measure (skipped, or failed: :func:`._common.skip_reason` says
    why); a row whose size is not a finite count is said to ``log`` and left out (an
    ``n_cells`` of inf had lost the whole figure, blamed on its axes: ca_rev118)."""
    out: dict = {}
    for r in rows:
        why = skip_reason(r)
        if text_of(r, "method") != SPEEDUP_OVER or not why:
            continue
        try:
            panel = (int(float(r["dims"])), text_of(r, "device"), int(float(r["levels"])))
            n = int(float(r["n_cells"]))
        except (KeyError, TypeError, ValueError, OverflowError):
            log(f"speedup_exact_vs_cvxpylayers: a {text_of(r, 'status') or 'not measured'} cvxpylayers row "
                f"(row_id {text_of(r, 'row_id') or '?'}) has no finite size: its marker is left out")
            continue
        if panel in panels:
            out.setdefault((panel, text_of(r, "backend"), why), []).append(n)
    return out


def plot_speedup(rows, path, env=None, log: Log | None = None) -> str | None:
    """Per-sample speed-up of exact over cvxpylayers against problem size, one panel per grid
    dimensionality, device and number of levels, one line per cvxpylayers backend (distinct
    colour and marker) and setting (the cells' dtype, batch, ... where the sweep has
    several: one line style each); both methods from the same sweep cell.  Cells the sweep
    did not measure for a backend (skipped, or failed) are marked along the panel's bottom
    edge, one row per backend: a hollow marker in the backend's colour, its shape the reason
    (the legend names each); low-confidence ratios
    (either time) are marked; the batches each method was timed on are stated.  Returns
    None (and writes nothing) when no cell has both measured."""
    log = log or warn
    need = ("status", "method", "dims", "levels", "n_cells", "per_sample_ms")
    if lacks_columns(rows, need, "speedup_exact_vs_cvxpylayers", "bench.csv", log):
        return None
    numbers = {**SIZE_COLUMNS, "per_sample_ms": {"empty_ok": True, "time_ms": True},
               "timed_batch": {"empty_ok": True, "positive": True, "integer": True},
               "repeats": {"empty_ok": True, "positive": True, "integer": True},
               "total_ms": {"empty_ok": True, "time_ms": True}, **spread_columns("total_ms")}
    compared = [p for p in ok_points(rows, "speedup_exact_vs_cvxpylayers", numbers, log)
                if p.series.method in (SPEEDUP_BASE, SPEEDUP_OVER)]
    points = [p for p in compared if p.v["per_sample_ms"] is not None and p.v["timed_batch"] is not None]
    lines, batches = _speedup_lines(points)
    if not lines:
        log("speedup_exact_vs_cvxpylayers: no sweep cell with both exact and cvxpylayers measured; not written")
        return None
    panels = sorted({k[0] for k in lines})
    # the device named in the titles wherever the rows have several (cells of one may draw no line)
    devices = {text_of(r, "device") for r in rows if text_of(r, "method") in (SPEEDUP_BASE, SPEEDUP_OVER)}
    skipped = _not_measured(rows, set(panels), log)
    series = sorted({k[1] for k in lines} | {Series(SPEEDUP_OVER, "", b) for _, b, _ in skipped}, key=Series.order)
    styles = styles_for(set(series))
    settings = setting_styles(k[2] for k in lines)
    # along the bottom edge: one row per backend with cells not measured, in its colour, shaped by the reason
    gone_rows = [s for s in series if any(b == s.backend for _, b, _ in skipped)]
    shapes = {why: NOT_MEASURED_MARKERS[i % len(NOT_MEASURED_MARKERS)]
              for i, why in enumerate(sorted({why for *_, why in skipped}))}
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(FULL_WIDTH, 2.5 * nrows + 1.2), squeeze=False, sharex=True,
                                 sharey=True, layout="constrained")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        any_low, across_runs = False, 0
        for ax, panel in zip(axes.flat, panels):
            for s in series:
                color, marker = styles[s]
                for setting, (ls, _) in settings.items():
                    pts = sorted(lines.get((panel, s, setting), []))
                    if pts:
                        ax.loglog([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, ms=4.5,
                                  lw=1.1, ls=ls)
                        low = [p for p in pts if p[2]]
                        mark_low_confidence(ax, [p[0] for p in low], [p[1] for p in low])
                        any_low |= bool(low)
                        across = [p for p in pts if p[3]]
                        if across:
                            ax.plot([p[0] for p in across], [p[1] for p in across], **_ACROSS_RUNS_MARK)
                        across_runs += len(across)
            for i, s in enumerate(gone_rows):
                for why, shape in shapes.items():
                    gone = sorted(set(skipped.get((panel, s.backend, why), [])))
                    if gone:
                        ax.plot(gone, [0.05 + 0.07 * i] * len(gone), transform=ax.get_xaxis_transform(),
                                color=styles[s][0], marker=shape, ms=4.5, mfc="none", ls="none", clip_on=False)
            ax.axhline(SPEEDUP_TARGET, color="#444444", ls=":", lw=0.9)
            ax.text(0.01, SPEEDUP_TARGET, r" target $10^4\times$", transform=ax.get_yaxis_transform(), fontsize=6,
                    color="#444444", va="bottom", ha="left")
            quiet_minor_ticks(ax)
            ax.set_title(_size_panel_title(panel, devices))
            ax.grid(True, which="major", alpha=0.25)
        for ax in axes[:, 0]:
            ax.set_ylabel("speed-up per sample (×)\ncvxpylayers time / exact time")
        for ax in axes[-1]:
            ax.set_xlabel(r"problem size $n$ (cells, all levels)")
        handles = [Line2D([], [], color=styles[s][0], marker=styles[s][1], ms=4.5, lw=1.1, label=s.label)
                   for s in series]
        handles += setting_handles(settings)
        handles += [Line2D([], [], color="#444444", marker=shape, ms=4.5, mfc="none", ls="none",
                           label=f"hollow {SHAPE_NAMES.get(shape, shape)}, bottom edge (backend's colour): not "
                                 f"measured, {why}")
                    for why, shape in shapes.items()]
        if any_low:
            handles.append(low_confidence_handle())
        if across_runs:
            handles.append(Line2D([], [], **_ACROSS_RUNS_MARK, label="ringed: times of two runs into the folder "
                                                                      "(a resume measured one again)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6.5,
                   handlelength=SETTING_HANDLE_LENGTH)
        fig.suptitle("Speed-up of exact over cvxpylayers (forward + backward, per sample, same sweep cell)")
        # batches as counts, never 1/8 (read as a fraction), each cvxpylayers one with its backends (ca_rev274)
        exact_b = " or ".join(str(b) for b in sorted(batches[SPEEDUP_BASE]))
        by_batch: dict = {}
        for b, backend in sorted(batches[SPEEDUP_OVER]):
            by_batch.setdefault(b, []).append(plain(backend, 30) or "?")
        cvx_b = " or ".join(f"{b} ({', '.join(names)})" if len(by_batch) > 1 else str(b)
                            for b, names in by_batch.items())
        # the dtypes of the exact times the drawn ratios divide by (cells without cvxpylayers draw none)
        paired = {cell_key(p.row) for p in points if p.series.method == SPEEDUP_OVER}
        base_dtypes = "/".join(sorted({text_of(p.row, "dtype") for p in points
                                       if p.series.method == SPEEDUP_BASE and cell_key(p.row) in paired}))
        notes = ["each ratio: cvxpylayers' per-sample median of forward + backward per repetition over exact's, "
                 "in the same cell; no interval drawn (low confidence marked)",
                 f"per-sample times: exact timed on B = {exact_b} samples in {base_dtypes}, cvxpylayers on "
                 f"{cvx_b} of them in float64 (its only mode)"
                 + ("; one line per backend and setting (line style), never pooled across them"
                    if len(settings) > 1 else ""), *not_drawn_notes(rows)]
        if across_runs:
            notes.append(f"{across_runs} ratio(s), ringed, divide times measured by two runs into the folder "
                         f"(bench.csv's run), under each run's own load")
        notes.append(untimed_note(compared, ("per_sample_ms", "timed_batch"), "time per sample") or "")
        return figures.save(fig, path, env, notes=notes)
