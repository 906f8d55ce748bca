"""Figures for papers, from a results folder (``plot_results``) or from measured rows.

Every figure is written as a PNG (300 dpi) and a PDF side by side, sized for a paper
(at most a two-column width of about 7 in), in fonts that stay readable at that size,
with a footer naming the environment the numbers were measured in (:func:`env_line`).

Nothing is drawn that was not measured, and nothing is drawn from a value that was not
read correctly:

* a results file that cannot be used (empty, not text, not CSV, columns missing) is
  reported and left out;
* a row that is cut off (fewer or more fields than the header, or the file's last line
  without its line end: an interrupted write) is reported and left out;
* every number a figure uses is validated: a row whose value does not parse as a
  finite float where one is needed is skipped, and the rows skipped are named;
* a figure with no data is not written (and a stale copy of it is removed), and the
  caller is told why.

Reports go to the ``log`` callable of :func:`plot_results` (default: a
:class:`PlotWarning`); the ``plot`` command prints them on stderr.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..methods import get_method
from .results import KEY_FIELDS, row_checksum

__all__ = ["PlotWarning", "env_line", "save", "read_results", "plot_core_benchmark", "core_ratios",
           "plot_time_vs_size", "plot_violation", "plot_convergence", "plot_speedup", "plot_tradeoff",
           "plot_attention_maps", "plot_results", "FIGURES"]

METHOD_COLORS = {"softmax": "#7f7f7f", "exact": "#1f77b4", "dual": "#2ca02c", "learned_dual": "#d62728",
                 "learned_dual+loss": "#d62728", "cvxpylayers": "#9467bd"}
METHOD_MARKERS = {"softmax": "s", "exact": "o", "dual": "D", "learned_dual": "v", "cvxpylayers": "P"}
# display order of the series (a choice of layout, not a fact about the methods)
METHOD_ORDER = ("softmax", "learned_dual", "dual", "exact", "cvxpylayers")
DUAL_KIND_LABEL = {"zero": "λ = 0", "fitted": "fitted λ", "amortised": "amortised λ",
                   "per_sample": "per-sample λ*"}
DUAL_KIND_ORDER = ("zero", "fitted", "amortised", "per_sample")
KIND_COLORS = {"zero": "#f4a582", "fitted": "#d62728", "amortised": "#e377c2", "per_sample": "#8c564b"}
KIND_MARKERS = {"zero": "v", "fitted": "^", "amortised": "<", "per_sample": ">"}
BACKEND_COLORS = ("#9467bd", "#54278f", "#bcbddc", "#dd3497", "#3f007d")
BACKEND_MARKERS = ("P", "X", "*", "h", "p")
# The dual kind whose row carries the timing that the other kinds share (they evaluate the
# same computation at other λ; the sweep times it once).
TIMED_KIND = "fitted"
# Machine epsilon of each dtype: the rounding floor of a violation computed in it.
DTYPE_EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps),
             "float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0 ** -7}
DTYPE_COLORS = {"float64": "#3182bd", "float32": "#e6550d", "float16": "#31a354", "bfloat16": "#756bb1"}
STATUSES = ("ok", "skipped", "error")
VIOLATION_TEX = r"$\mathrm{max}_k\,\|P_k p_k - p_{k+1}\|_1$"
# the sweep cell a row belongs to: its key without the method's own fields
CELL_FIELDS = tuple(k for k in KEY_FIELDS if k not in ("method", "dual_kind", "backend"))

FULL_WIDTH = 7.0   # inches: a two-column figure
HALF_WIDTH = 3.4   # inches: a one-column figure
STYLE = {"font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9, "figure.dpi": 100,
         "savefig.bbox": "tight", "pdf.fonttype": 42, "axes.spines.top": False, "axes.spines.right": False}
_TOKEN = re.compile(r"^[A-Za-z0-9_.+:\-]{1,40}$")

Log = Callable[[str], None]


class PlotWarning(UserWarning):
    """A results file, row or value that a figure could not use (and left out)."""


def _warn(message: str) -> None:
    warnings.warn(message, PlotWarning, stacklevel=3)


def _plain(text, limit: int = 80) -> str:
    """A string from a file, safe to draw: no mathtext, bounded length."""
    text = str(text).replace("\n", " ")
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("$", r"\$")


def _sci(x: float, digits: int = 2) -> str:
    """``x`` as mathtext in scientific notation, e.g. ``3.2\\times10^{-4}``."""
    if x == 0:
        return "0"
    exp = math.floor(math.log10(abs(x)))
    mant = x / 10 ** exp
    if abs(round(mant, digits - 1)) >= 10:  # 9.99e-5 reads 1.0e-4, not 10.0e-5
        mant, exp = mant / 10, exp + 1
    if -2 <= exp <= 3:
        return f"{x:.{digits + 1}g}"
    return rf"{mant:.{digits - 1}f}\times10^{{{exp}}}"


def env_line(env: dict | None) -> str:
    """One line naming where the numbers were measured (torch, processor, threads, GPU)."""
    if not env or not isinstance(env, dict):
        return ""
    parts = [f"torch {env.get('torch', '?')}", env.get("processor", ""),
             f"{env.get('torch_threads', '?')} threads", env.get("gpu", "") or ""]
    return _plain(" · ".join(str(p) for p in parts if p), 160)


def save(fig, path: str, env: dict | None = None) -> str:
    """Write ``fig`` as PNG (300 dpi) and PDF with the environment footer; returns the PNG path."""
    line = env_line(env)
    if line:
        # below everything drawn (legends outside the axes included), so it never covers data
        fig.set_dpi(300)  # measure at the resolution it is saved at: text extents depend on it
        fig.draw_without_rendering()  # the layout, without rasterising
        fig.set_layout_engine("none")  # freeze the layout just computed: the footer is placed against it
        renderer = fig.canvas.get_renderer()
        for legend in fig.legends:
            # a figure legend hangs from the figure's edge, which the tight crop moves: pin it in place
            where = legend.get_window_extent(renderer).transformed(fig.transFigure.inverted())
            legend.set_bbox_to_anchor(where, transform=fig.transFigure)
            legend.set_loc("center")
        box = fig.get_tightbbox(renderer)
        fig.text(box.x0 / fig.get_figwidth(), (box.y0 - 0.05) / fig.get_figheight(), line, fontsize=6,
                 color="#555555", ha="left", va="top")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=300, bbox_inches="tight")
    fig.savefig(os.path.splitext(path)[0] + ".pdf", bbox_inches="tight")
    plt.close(fig)
    return path


# ====================================================================== reading results files


class _BadValue(ValueError):
    """A value a figure needs that does not parse as what it must be."""


def read_results(path: str, required=(), log: Log | None = None) -> list[dict] | None:
    """The rows of a results CSV, each a dict with its line number under ``"_line"``.

    Returns None (and logs why) when the file cannot be used at all: unreadable, not
    UTF-8 text, empty, not CSV, or missing a ``required`` column.  Rows cut off (a field
    count other than the header's, or a last line without its line end) are logged by
    line and left out.  Values stay strings: each figure validates the ones it uses.
    """
    log = log or _warn
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        log(f"{name}: cannot be read ({err.strerror or err}); left out")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        log(f"{name}: not a text file (not UTF-8); left out")
        return None
    if not text.strip():
        log(f"{name}: empty file; nothing to plot from it")
        return None
    if "\x00" in text:
        log(f"{name}: holds NUL bytes (not a CSV file); left out")
        return None
    records = []
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        for fields in reader:
            records.append((reader.line_num, fields))
    except csv.Error as err:
        log(f"{name}: not a readable CSV file ({err}); left out")
        return None
    header = [h.strip() for h in records[0][1]]
    missing = [c for c in required if c not in header]
    if missing:
        log(f"{name}: missing column(s) {', '.join(missing)} (not a results file of this toolkit?); left out")
        return None
    body = [(n, f) for n, f in records[1:] if f]  # blank lines carry nothing
    cut = []
    if body and not text.endswith(("\n", "\r")):
        # every complete row ends with a line end; a last row without one was cut off mid-write
        cut.append(f"line {body[-1][0]} (no line end: cut off)")
        body = body[:-1]
    # files of this version end each row with a CRC of its other fields: a value cut off shows
    check = header.index("checksum") if "checksum" in header else None
    rows = []
    for line, fields in body:
        if len(fields) != len(header):
            cut.append(f"line {line} ({len(fields)} fields, the header has {len(header)})")
            continue
        if check is not None and row_checksum([f for i, f in enumerate(fields) if i != check]) != fields[check]:
            cut.append(f"line {line} (checksum mismatch: a value was cut off or edited)")
            continue
        row = dict(zip(header, fields))
        row["_line"] = line
        rows.append(row)
    if cut:
        log(f"{name}: left out {len(cut)} damaged row(s): {_listing(cut)}")
    return rows


def _listing(items, limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _number(row: dict, col: str, *, empty_ok: bool = False, positive: bool = False, nonneg: bool = False,
            integer: bool = False) -> float | None:
    """The finite float in ``row[col]``; where ``empty_ok``, None for an empty value (not
    measured) or a column the file does not have (an older file); _BadValue otherwise."""
    text = row.get(col)
    if text is None:
        if empty_ok:
            return None
        raise _BadValue(f"{col} is missing")
    if isinstance(text, float) and math.isnan(text):
        text = ""  # rows held in memory carry NaN where the CSV has an empty field
    text = str(text).strip()
    if text == "":
        if empty_ok:
            return None
        raise _BadValue(f"{col} is empty")
    try:
        value = float(text)
    except ValueError:
        raise _BadValue(f"{col}={_plain(text, 30)!r} is not a number") from None
    if not math.isfinite(value):
        raise _BadValue(f"{col}={_plain(text, 30)!r} is not finite")
    if positive and value <= 0:
        raise _BadValue(f"{col}={text!r} is not positive")
    if nonneg and value < 0:
        raise _BadValue(f"{col}={text!r} is negative")
    if integer and value != int(value):
        raise _BadValue(f"{col}={text!r} is not an integer")
    return value


def _text(row: dict, col: str) -> str:
    """A string field of a row read from CSV or held in memory ("" when absent)."""
    v = row.get(col)
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()


def _token(row: dict, col: str) -> str:
    text = _text(row, col)
    if text and not _TOKEN.match(text):
        raise _BadValue(f"{col}={_plain(text, 30)!r} is not a name")
    return text


class _Skips:
    """The rows one figure left out, reported once, by line."""

    def __init__(self, figure: str, source: str = "bench.csv"):
        self.figure, self.source, self.items = figure, source, []

    def add(self, row: dict, why: str) -> None:
        what = "/".join(_plain(row.get(k, ""), 20) for k in ("method", "dual_kind", "backend") if row.get(k))
        self.items.append(f"line {row.get('_line', '?')} ({what or 'row'}): {why}")

    def report(self, log: Log) -> None:
        if self.items:
            log(f"{self.figure}: skipped {len(self.items)} row(s) of {self.source} with unusable values: "
                f"{_listing(self.items)}")


@dataclass(frozen=True)
class Series:
    """What one line or point stands for: a method, its learned-dual kind, its backend."""

    method: str
    kind: str = ""
    backend: str = ""

    @property
    def label(self) -> str:
        if self.kind:
            return f"{self.method} ({DUAL_KIND_LABEL.get(self.kind, self.kind)})"
        if self.backend:
            return f"{self.method} ({self.backend})"
        return self.method

    def order(self) -> tuple:
        m = METHOD_ORDER.index(self.method) if self.method in METHOD_ORDER else len(METHOD_ORDER)
        k = DUAL_KIND_ORDER.index(self.kind) if self.kind in DUAL_KIND_ORDER else len(DUAL_KIND_ORDER)
        return (m, self.method, k, self.kind, self.backend)


def _series(row: dict) -> tuple[Series, object]:
    """The row's series and method record; _BadValue for an unknown method or odd names."""
    name = _text(row, "method")
    try:
        record = get_method(name)
    except ValueError:
        raise _BadValue(f"method={_plain(name, 30)!r} is not a known method") from None
    kind = _token(row, "dual_kind") if record.needs_duals else ""
    return Series(name, kind, _token(row, "backend")), record


def _styles(series) -> dict:
    """colour and marker per series; backends take the shades of their method in turn."""
    out, backends = {}, sorted({s.backend for s in series if s.backend})
    for s in series:
        if s.kind:
            out[s] = (KIND_COLORS.get(s.kind, METHOD_COLORS.get(s.method, "#333333")),
                      KIND_MARKERS.get(s.kind, "v"))
        elif s.backend:
            i = backends.index(s.backend)
            out[s] = (BACKEND_COLORS[i % len(BACKEND_COLORS)], BACKEND_MARKERS[i % len(BACKEND_MARKERS)])
        else:
            out[s] = (METHOD_COLORS.get(s.method, "#333333"), METHOD_MARKERS.get(s.method, "o"))
    return out


@dataclass
class _Point:
    row: dict
    series: Series
    record: object
    v: dict


def _ok_points(rows, figure: str, numbers: dict, log: Log, source: str = "bench.csv") -> list[_Point]:
    """The rows with status ``ok`` whose values in ``numbers`` (column -> _number options)
    all parse; the others are reported by line.  Rows skipped or failed by the sweep are
    no data and are left out without a word; an unknown status is a bad row."""
    skips, points = _Skips(figure, source), []
    for row in rows:
        status = _text(row, "status")
        if status not in STATUSES:
            skips.add(row, f"status={_plain(status, 20)!r} is not one of {', '.join(STATUSES)}")
            continue
        if status != "ok":
            continue
        try:
            series, record = _series(row)
            values = {col: _number(row, col, **opts) for col, opts in numbers.items()}
            for col in ("fwd_ms", "bwd_ms", "total_ms"):  # a median inside its own quartiles
                q1, q3, med = values.get(col + "_q1"), values.get(col + "_q3"), values.get(col)
                if med is not None and q1 is not None and q3 is not None and not (
                        q1 <= med * (1 + 1e-9) and med <= q3 * (1 + 1e-9)):
                    raise _BadValue(f"{col}={med:g} lies outside its quartiles [{q1:g}, {q3:g}]")
        except _BadValue as err:
            skips.add(row, str(err))
            continue
        points.append(_Point(row, series, record, values))
    skips.report(log)
    return points


def _compute_dtype(p: _Point) -> str:
    """The dtype a row was computed in: the cell's, or float64 for a method that solves in
    float64 whatever its input (the registry's ``cpu_only``)."""
    return "float64" if p.record.cpu_only else _text(p.row, "dtype")


def _missing_columns(rows, columns) -> list[str]:
    return [c for c in columns if rows and c not in rows[0]]


def _cell_key(row: dict) -> tuple:
    return tuple(_text(row, k) for k in CELL_FIELDS)


def _quiet_minor_ticks(ax) -> None:
    """Minor log ticks at 2 and 5 only, unlabelled: labels collide on short ranges, and
    every tick costs drawing time."""
    from matplotlib.ticker import LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
            axis.set_minor_formatter(NullFormatter())


def _dims_title(dims: int) -> str:
    return f"{dims}-D grids"


_SIZE = {"dims": {"positive": True, "integer": True}, "levels": {"positive": True, "integer": True},
         "n_cells": {"positive": True, "integer": True}}


def _spread_cols(col: str) -> dict:
    return {col + "_q1": {"empty_ok": True, "positive": True}, col + "_q3": {"empty_ok": True, "positive": True}}


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


def _core_bars(rows) -> tuple[dict, str]:
    """shapes -> bars (one per method and backend), and the statistic the heights are."""
    out: dict = {}
    has_total = all(_finite(r.get("total_ms")) for r in rows)
    for r in rows:
        batch = float(r["batch"])
        total = float(r["total_ms"]) if has_total else float(r["fwd_ms"]) + float(r["bwd_ms"])
        q1, q3 = r.get("total_ms_q1"), r.get("total_ms_q3")
        spread = has_total and _finite(q1) and _finite(q3)
        backend = str(r.get("backend") or "")
        out.setdefault(str(r["shapes"]), []).append(_Bar(
            r["method"] + (f"\n({backend})" if backend else ""), r["method"], backend, 1e3 * total / batch,
            1e3 * float(r["fwd_ms"]) / batch, 1e3 * float(q1) / batch if spread else None,
            1e3 * float(q3) / batch if spread else None))
    stat = ("median of forward + backward per repetition" if has_total
            else "median forward + median backward")
    return out, stat


def _finite(v) -> bool:
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
            ax.set_xticks(x, ["\n".join(_plain(t) for t in b.label.split("\n")) for b in bars], fontsize=6.5)
            totals = [b.total for b in bars]
            if max(totals) > 30 * min(totals):
                ax.set_yscale("log")
            sel = [r for r in rows if str(r["shapes"]) == shapes]
            batches = "/".join(dict.fromkeys(str(r["batch"]) for r in sel))
            dtypes = "/".join(dict.fromkeys(str(r["dtype"]) for r in sel))
            methods = {b.method for b in bars}
            lines = [f"{_plain(shapes)}, B = {_plain(batches)}, {_plain(dtypes)}"]
            for name, (value, note) in shown.items():
                if set(name.replace(" per sample", "").split("/")) <= methods:
                    lines.append(f"{_plain(name)} = {value:.3g}" + (f" ({_plain(note)})" if note else ""))
            ax.set_title("\n".join(lines))
        axes[0, 0].set_ylabel(f"time per sample (µs)\n{stat}")
        axes[0, 0].legend(handles=[Patch(color="#555555", label="forward (median)"),
                                   Patch(color="#555555", alpha=0.45, label="backward (rest of the bar)")],
                          frameon=False, loc="upper left", fontsize=6.5)
        fig.suptitle("Forward + backward time per sample (bars: interquartile range); ratios computed from "
                     "these bars")
        return save(fig, path, env)


# ====================================================================== results-folder figures


def _load_env(folder: str, log: Log) -> dict | None:
    """The environment record of ``bench.json``; NaN/Infinity tokens (older files) read as null."""
    path = os.path.join(folder, "bench.json")
    if not os.path.exists(path):
        return None
    bad_tokens = []

    def constant(token):  # NaN, Infinity, -Infinity
        bad_tokens.append(token)

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_constant=constant)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        log(f"bench.json: not readable JSON ({_plain(err, 80)}); figures carry no environment line")
        return None
    if bad_tokens:
        log(f"bench.json: not strict JSON ({len(bad_tokens)} NaN/Infinity token(s), read as null)")
    env = data.get("environment") if isinstance(data, dict) else None
    if env is not None and not isinstance(env, dict):
        log("bench.json: 'environment' is not an object; figures carry no environment line")
        return None
    return env


def plot_time_vs_size(rows, path, env=None, log: Log | None = None) -> str | None:
    """Median time per sample against problem size, log-log: one row of panels per grid
    dimensionality (and device), forward and backward side by side, one line per method
    (learned-dual kind, cvxpylayers backend) and number of levels, error bars from the
    interquartile range where the rows record it, and the fitted log-log slope in the
    legend.  Rows without a time (timed in another row) are not drawn.  Returns None (and
    writes nothing) without data."""
    log = log or _warn
    need = ("status", "method", "dims", "levels", "n_cells", "timed_batch", "fwd_ms", "bwd_ms")
    if _missing_columns(rows, need):
        log(f"time_vs_size: bench.csv lacks column(s) {', '.join(_missing_columns(rows, need))}; not drawn")
        return None
    numbers = {**_SIZE, "timed_batch": {"positive": True, "integer": True},
               "fwd_ms": {"empty_ok": True, "positive": True}, "bwd_ms": {"empty_ok": True, "positive": True},
               **_spread_cols("fwd_ms"), **_spread_cols("bwd_ms")}
    points = [p for p in _ok_points(rows, "time_vs_size", numbers, log) if p.v["fwd_ms"] is not None]
    if not points:
        log("time_vs_size: no timed row; not written")
        return None
    devices = sorted({_text(p.row, "device") for p in points})
    dtypes = sorted({_compute_dtype(p) for p in points})
    panels = sorted({(int(p.v["dims"]), _text(p.row, "device")) for p in points})
    styles = _styles({p.series for p in points})
    level_styles = ["-", "--", ":", "-."]
    level_counts = sorted({int(p.v["levels"]) for p in points})

    def line_key(p):
        return p.series, int(p.v["levels"]), _compute_dtype(p)

    keys = sorted({line_key(p) for p in points}, key=lambda k: (k[0].order(), k[1], k[2]))

    mixed = len({_text(p.row, "dtype") for p in points}) > 1  # a sweep over dtypes

    def fill(key):  # dtypes after the first: hollow markers (colour is the series, line style the levels)
        return styles[key[0]][0] if not mixed or key[2] == dtypes[0] else "none"

    def dtype_note(key):
        return f", {key[2]}" if mixed or key[2] != _text(points[0].row, "dtype") else ""

    slopes: dict = {}  # line key -> panel -> [forward slope, backward slope]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(panels), 2, figsize=(FULL_WIDTH, 2.2 * len(panels) + 1.6), squeeze=False,
                                 sharey="row", layout="constrained")
        for panel, row_axes in zip(panels, axes):
            sel = [p for p in points if (int(p.v["dims"]), _text(p.row, "device")) == panel]
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
            where = _dims_title(panel[0]) + (f", {_plain(panel[1])}" if len(devices) > 1 else "")
            for ax, name in zip(row_axes, ("forward", "backward")):
                ax.set_xscale("log")
                ax.set_yscale("log")
                _quiet_minor_ticks(ax)
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
                    parts.append(f"{panel[0]}-D" + (f" {_plain(panel[1])}" if len(devices) > 1 else "") + f" {pair}")
            return ", ".join(parts) if parts else "one size: no slope"

        handles = [Line2D([], [], color=styles[k[0]][0], marker=styles[k[0]][1], ms=3, lw=1.0, mfc=fill(k),
                          ls=level_styles[level_counts.index(k[1]) % len(level_styles)],
                          label=f"{k[0].label}, {k[1]} levels{dtype_note(k)}"
                          + f": {slope_text(k)}") for k in keys]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6,
                   title=r"fitted log-log slope $s$ of time $\propto n^{s}$ (forward / backward)",
                   title_fontsize=6.5)
        fig.suptitle("Time per sample vs problem size (log-log; bars: interquartile range where recorded)")
        return save(fig, path, env)


def plot_violation(rows, path, env=None, log: Log | None = None) -> str | None:
    """Consistency violation per method, learned-dual kind and cvxpylayers backend, one box
    (and one point per sweep cell) per compute dtype, with each dtype's rounding floor
    (machine ε) marked.  A method that solves in float64 whatever the input (the
    registry's ``cpu_only``) is counted as float64.  A violation of exactly 0 is drawn at a
    marked floor.  Returns None without data."""
    log = log or _warn
    need = ("status", "method", "dtype", "violation_mean")
    if _missing_columns(rows, need):
        log(f"violation: bench.csv lacks column(s) {', '.join(_missing_columns(rows, need))}; not drawn")
        return None
    points, skips = [], _Skips("violation")
    for p in _ok_points(rows, "violation", {"violation_mean": {"nonneg": True}}, log):
        dtype = _text(p.row, "dtype")
        if dtype not in DTYPE_EPS:
            skips.add(p.row, f"dtype={_plain(dtype, 20)!r} is not one of {', '.join(DTYPE_EPS)}")
            continue
        points.append((p.series, _compute_dtype(p), p.v["violation_mean"], p.record.cpu_only))
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
                                  label=rf"{d} rounding floor $\varepsilon = {_sci(DTYPE_EPS[d])}$"))
        if any_zero:
            ax.axhline(floor, color="#999999", ls=":", lw=0.8)
            handles.append(Line2D([], [], color="#999999", ls=":", lw=0.8,
                                  label=rf"violation exactly 0, drawn at ${_sci(floor)}$"))
        cpu_only = sorted({s.method for s, _, _, c in points if c})
        if cpu_only:
            handles.append(Patch(color="none", label=f"{', '.join(cpu_only)}: solves in float64 whatever "
                                                     f"the cell's dtype"))
        ax.set_xticks(range(len(series)), [s.label.replace(" (", "\n(") for s in series], fontsize=6)
        ax.set_xlim(-0.6, len(series) - 0.4)
        ax.set_yscale("log")
        _quiet_minor_ticks(ax)
        ax.set_ylabel("violation (batch mean)\n" + VIOLATION_TEX)
        ax.set_title("Consistency violation on held-out instances (one point per sweep cell), by compute dtype")
        ax.grid(True, axis="y", which="major", alpha=0.25)
        fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False, fontsize=6.5)
        return save(fig, path, env)


def plot_convergence(conv_rows, path, env=None, log: Log | None = None) -> str | None:
    """The per-sample dual solver: violation and dual gap against sweep, one line per
    cell, coloured by number of levels.  Rows with unusable values are skipped and named.
    Returns None without data."""
    log = log or _warn
    need = ("cell", "levels", "iteration", "violation_max", "dual_gap_max")
    if _missing_columns(conv_rows, need):
        log(f"dual_convergence: convergence.csv lacks column(s) "
            f"{', '.join(_missing_columns(conv_rows, need))}; not drawn")
        return None
    skips, pts = _Skips("dual_convergence", "convergence.csv"), []
    for r in conv_rows:
        try:
            pts.append((int(_number(r, "cell", nonneg=True, integer=True)),
                        int(_number(r, "levels", positive=True, integer=True)),
                        int(_number(r, "iteration", nonneg=True, integer=True)),
                        _number(r, "violation_max", nonneg=True), _number(r, "dual_gap_max")))
        except _BadValue as err:
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
            _quiet_minor_ticks(ax)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("sweep (one exact block step per constraint)")
            ax.grid(True, which="major", alpha=0.25)
        fig.suptitle(rf"Per-sample dual solver: convergence (values $\leq {_sci(floor)}$ drawn at ${_sci(floor)}$)")
        return save(fig, path, env)


# The speed-up figure compares these two methods by name: it is the figure's subject.
SPEEDUP_BASE, SPEEDUP_OVER = "exact", "cvxpylayers"


def plot_speedup(rows, path, env=None, log: Log | None = None) -> str | None:
    """Per-sample speed-up of exact over cvxpylayers against problem size, one line per
    cvxpylayers backend (and line style per number of levels), one panel per grid
    dimensionality; both methods from the same sweep cell.  Returns None (and writes
    nothing) when no cell has both measured."""
    log = log or _warn
    need = ("status", "method", "dims", "levels", "n_cells", "per_sample_ms")
    if _missing_columns(rows, need):
        log(f"speedup_exact_vs_cvxpylayers: bench.csv lacks column(s) "
            f"{', '.join(_missing_columns(rows, need))}; not drawn")
        return None
    numbers = {**_SIZE, "per_sample_ms": {"empty_ok": True, "positive": True}}
    points = [p for p in _ok_points(rows, "speedup_exact_vs_cvxpylayers", numbers, log)
              if p.v["per_sample_ms"] is not None and p.series.method in (SPEEDUP_BASE, SPEEDUP_OVER)]
    base = {}
    for p in points:
        if p.series.method == SPEEDUP_BASE:
            base.setdefault(_cell_key(p.row), []).append(p.v["per_sample_ms"])
    lines: dict = {}
    for p in points:
        if p.series.method == SPEEDUP_OVER and _cell_key(p.row) in base:
            lines.setdefault((int(p.v["dims"]), p.series, int(p.v["levels"]), _text(p.row, "dtype")), []).append(
                (int(p.v["n_cells"]), p.v["per_sample_ms"] / float(np.median(base[_cell_key(p.row)]))))
    if not lines:
        log("speedup_exact_vs_cvxpylayers: no sweep cell with both exact and cvxpylayers measured; not written")
        return None
    dims_all = sorted({k[0] for k in lines})
    styles = _styles({k[1] for k in lines})
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
            _quiet_minor_ticks(ax)
            ax.set_title(_dims_title(dims))
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
        return save(fig, path, env)


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
    log = log or _warn
    need = ("status", "method", "dims", "levels", "n_cells", "per_sample_ms", "violation_mean")
    if _missing_columns(rows, need):
        log(f"tradeoff: bench.csv lacks column(s) {', '.join(_missing_columns(rows, need))}; not drawn")
        return None
    numbers = {**_SIZE, "per_sample_ms": {"empty_ok": True, "positive": True},
               "violation_mean": {"nonneg": True}, "timed_batch": {"empty_ok": True, "positive": True},
               "total_ms": {"empty_ok": True, "positive": True}, **_spread_cols("total_ms")}
    points = _ok_points(rows, "tradeoff", numbers, log)
    timed = {(_cell_key(p.row), p.series.method): p for p in points
             if p.series.kind == TIMED_KIND and p.v["per_sample_ms"] is not None}
    cells: dict = {}
    untimed = 0
    for p in points:
        t, spread, borrowed = p.v["per_sample_ms"], (None, None), False
        source = p
        if t is None and p.record.needs_duals and (_cell_key(p.row), p.series.method) in timed:
            source = timed[(_cell_key(p.row), p.series.method)]
            t, borrowed = source.v["per_sample_ms"], True
        if t is None:
            untimed += 1
            continue
        tb = source.v.get("timed_batch")
        if tb and source.v.get("total_ms_q1") is not None and source.v.get("total_ms_q3") is not None:
            spread = (source.v["total_ms_q1"] / tb, source.v["total_ms_q3"] / tb)
        # compute dtypes apart: a float64 cell is not a float32 cell with a better solver
        panel = (int(p.v["dims"]), int(p.v["levels"]), _text(p.row, "dtype"))
        cells.setdefault(panel, {}).setdefault(_cell_key(p.row), {}).setdefault(p.series, []).append(
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
    styles = _styles({s for by_series in chosen.values() for s in by_series})
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
            _quiet_minor_ticks(ax)
            ax.set_title(f"{panel[0]}-D, {panel[1]} levels: {_plain(_text(meta.row, 'shapes'), 40)}, "
                         f"B={_plain(_text(meta.row, 'batch'), 8)}, {_plain(panel[2], 10)}")
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
                                  label=rf"violation exactly 0 (e.g. exact in float64), drawn at ${_sci(floor)}$"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6.5)
        fig.suptitle("Speed vs consistency: time per sample and held-out violation (log-log)")
        return save(fig, path, env)


# ====================================================================== attention maps

# what the attention-map figure shows, in this order (a choice of content)
ATTENTION_MAP_METHODS = ("softmax", "learned_dual", "dual", "exact")
_DUAL_KEY = re.compile(r"^([a-z_]+)_dual(\d+)$")
_MAX_EXAMPLE_CELLS = 1 << 20


def _load_example(example_path: str):
    """Scores, temperatures and λ per dual kind of ``example.npz``, validated; ValueError
    naming the problem otherwise.  Nothing in the file can run code (no pickles)."""
    try:
        data = np.load(example_path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"not a readable .npz file ({_plain(err, 80)})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive")
    try:
        with data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"an array cannot be read ({_plain(err, 80)})") from None
    if "levels" not in arrays or "temperature" not in arrays:
        raise ValueError("lacks 'levels' or 'temperature'")
    lv = arrays["levels"]
    if lv.shape != () or lv.dtype.kind not in "iu" or not 2 <= int(lv) <= 8:
        raise ValueError("'levels' must be an integer from 2 to 8")
    L = int(lv)
    temps = arrays["temperature"]
    if temps.dtype.kind != "f" or temps.shape != (L,) or not np.all(np.isfinite(temps)) or not np.all(temps > 0):
        raise ValueError(f"'temperature' must hold {L} positive finite numbers")
    scores = []
    for k in range(L):
        s = arrays.get(f"scores{k}")
        if s is None or s.dtype.kind != "f" or s.ndim != 2 or s.size == 0:
            raise ValueError(f"'scores{k}' must be a 2-D float array (the figure shows 2-D grids)")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"'scores{k}' holds NaN or Inf")
        scores.append(s.astype(np.float64))
    if sum(s.size for s in scores) > _MAX_EXAMPLE_CELLS:
        raise ValueError(f"more than {_MAX_EXAMPLE_CELLS} cells: too large for a figure")
    duals: dict = {}
    for key, arr in arrays.items():
        m = _DUAL_KEY.match(key)
        if m:
            duals.setdefault(m.group(1), {})[int(m.group(2))] = arr
    kinds = {}
    for kind, parts in sorted(duals.items(), key=lambda kv: DUAL_KIND_ORDER.index(kv[0])
                              if kv[0] in DUAL_KIND_ORDER else 99):
        if sorted(parts) != list(range(L - 1)):
            raise ValueError(f"'{kind}_dual*' must hold one array per constraint (0 … {L - 2})")
        for k, arr in parts.items():
            if arr.dtype.kind != "f" or arr.shape != scores[k + 1].shape or not np.all(np.isfinite(arr)):
                raise ValueError(f"'{kind}_dual{k}' must be finite floats shaped like 'scores{k + 1}'")
        kinds[kind] = [parts[k].astype(np.float64) for k in range(L - 1)]
    return scores, [float(t) for t in temps], kinds


def plot_attention_maps(example_path: str, path: str, env=None, log: Log | None = None) -> str:
    """The levels of one instance under softmax, learned_dual (each λ the file holds),
    dual and exact, with each constraint's residual P_k p_k − p_{k+1}.

    Every panel of one level shares one colour scale (0 to the largest probability of
    that level under any method), so a near-uniform map looks near-uniform; each panel
    states N·max p (N: the level's cells; 1 for a uniform map).  The residual panels share
    one symmetric scale per constraint and state ‖·‖₁ below the panel, off the data.
    ValueError (naming the problem) for an unusable file."""
    import torch

    from ..hierarchy import Hierarchy
    from ..solve import solve

    log = log or _warn
    scores_np, temps, kinds = _load_example(example_path)
    L = len(scores_np)
    scores = [torch.from_numpy(s).unsqueeze(0) for s in scores_np]
    try:
        h = Hierarchy.grid([tuple(s.shape) for s in scores_np])
    except ValueError as err:
        raise ValueError(f"the score grids do not nest ({_plain(err, 80)})") from None
    sols = {}
    for name in ATTENTION_MAP_METHODS:
        try:
            if get_method(name).needs_duals:
                for kind, lam in kinds.items():
                    duals = [torch.from_numpy(d).unsqueeze(0) for d in lam]
                    sols[Series(name, kind).label] = solve(scores, h, name, temperature=temps, duals=duals)
            else:
                sols[name] = solve(scores, h, name, temperature=temps)
        except (ValueError, RuntimeError) as err:
            log(f"attention_maps: {name} failed on the example ({_plain(err, 80)}); its row is left out")
    for name in [n for n, sol in sols.items() if not all(bool(torch.isfinite(p).all()) for p in sol.probs)]:
        log(f"attention_maps: {name} gave NaN or Inf on the example; its row is left out")
        del sols[name]
    if not sols:
        raise ValueError("no method solved the example")
    probs = {name: [p[0].detach().numpy() for p in sol.probs] for name, sol in sols.items()}
    resid = {name: [(h.aggregate(sol.probs[k], k) - sol.probs[k + 1])[0].detach().numpy() for k in range(L - 1)]
             for name, sol in sols.items()}
    vmax = [max(float(p[k].max()) for p in probs.values()) for k in range(L)]
    dmax = [max(float(np.abs(r[k]).max()) for r in resid.values()) or 1e-300 for k in range(L - 1)]
    ncols = 2 * L - 1
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(sols), ncols, figsize=(min(FULL_WIDTH, 1.45 * ncols + 0.9),
                                                            1.45 * len(sols) + 1.2),
                                 squeeze=False, layout="constrained")
        for i, name in enumerate(sols):
            for k in range(L):
                ax = axes[i, k]
                im = ax.imshow(probs[name][k], cmap="magma", vmin=0.0, vmax=vmax[k])
                n = probs[name][k].size
                ax.set_xlabel(rf"$N\,\max\,p = {n * float(probs[name][k].max()):.3g}$", fontsize=6.5, labelpad=1)
                if i == 0:
                    ax.set_title(f"level {k} ({'×'.join(map(str, h.shapes[k]))})\n$p_{k}$", fontsize=7)
                if i == len(sols) - 1:
                    fig.colorbar(im, ax=axes[:, k], location="bottom", fraction=0.04, pad=0.01,
                                 shrink=0.9).ax.tick_params(labelsize=5.5, rotation=30)
            for k in range(L - 1):
                ax = axes[i, L + k]
                r = resid[name][k]
                im = ax.imshow(r, cmap="RdBu_r", vmin=-dmax[k], vmax=dmax[k])
                ax.set_xlabel(rf"$\|\cdot\|_1 = {_sci(float(np.abs(r).sum()))}$", fontsize=6.5, labelpad=1)
                if i == 0:
                    ax.set_title(f"residual of constraint {k}\n$P_{k}\\,p_{k} - p_{{{k + 1}}}$", fontsize=7)
                if i == len(sols) - 1:
                    fig.colorbar(im, ax=axes[:, L + k], location="bottom", fraction=0.04, pad=0.01,
                                 shrink=0.9, format="%.0e").ax.tick_params(labelsize=5.5, rotation=30)
            axes[i, 0].set_ylabel(name.replace(" (", "\n("), fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(True)  # an image is framed on all four sides
        fig.suptitle("Attention maps of one instance: one colour scale per level (and per residual), "
                     "shared by all methods", fontsize=8)
        return save(fig, path, env)


# ====================================================================== a whole results folder

# name -> (input file, what it shows); plot_results writes them in this order
FIGURES = {
    "time_vs_size": ("bench.csv", "time per sample vs problem size"),
    "violation": ("bench.csv", "violation per method and dtype"),
    "speedup_exact_vs_cvxpylayers": ("bench.csv", "speed-up of exact over each cvxpylayers backend"),
    "tradeoff": ("bench.csv", "time per sample vs held-out violation, with the Pareto front"),
    "dual_convergence": ("convergence.csv", "the dual solver's convergence"),
    "attention_maps": ("example.npz", "one instance's maps under each method"),
}
_BENCH_FIGURES = {"time_vs_size": plot_time_vs_size, "violation": plot_violation,
                  "speedup_exact_vs_cvxpylayers": plot_speedup, "tradeoff": plot_tradeoff}


def plot_results(folder: str, out: str | None = None, log: Log | None = None) -> list[str]:
    """Every figure the results folder has data for, into ``out`` (default:
    ``folder/figures``); returns the PNG paths written.

    Problems (an unusable file, skipped rows, a figure without data) go to ``log``, one
    message each (default: a :class:`PlotWarning`).  A figure without data is not written,
    and a copy left in ``out`` by an earlier run is removed, so the folder never shows a
    figure the results do not support."""
    log = log or _warn
    out = out or os.path.join(folder, "figures")
    env = _load_env(folder, log)
    written, attempted = [], set()

    def figure_path(name):
        attempted.add(name)
        return os.path.join(out, f"{name}.png")

    def rows_of(name, required):
        """The usable rows of ``folder/name``, or None (missing, unreadable or empty: said)."""
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            return None
        rows = read_results(path, required, log)
        if rows == []:
            log(f"{name}: a header and no rows; nothing to plot from it")
        return rows or None

    rows = rows_of("bench.csv", ("status", "method"))
    if rows:
        for name, fn in _BENCH_FIGURES.items():
            written.append(fn(rows, figure_path(name), env, log))
    conv_rows = rows_of("convergence.csv", ("cell", "iteration"))
    if conv_rows:
        written.append(plot_convergence(conv_rows, figure_path("dual_convergence"), env, log))
    example = os.path.join(folder, "example.npz")
    if os.path.exists(example):
        try:
            written.append(plot_attention_maps(example, figure_path("attention_maps"), env, log))
        except ValueError as err:
            log(f"example.npz: {err}; attention_maps not written")
            written.append(None)
    written = [p for p in written if p]
    done = {os.path.splitext(os.path.basename(p))[0] for p in written}
    for name in FIGURES:
        if name in done:
            continue
        for ext in (".png", ".pdf"):
            stale = os.path.join(out, name + ext)
            if os.path.exists(stale):
                os.remove(stale)
                log(f"removed {stale}: an earlier run's figure these results do not support")
    return written


