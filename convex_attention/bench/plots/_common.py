"""What every figure of the harness shares: reading results, validating values, series and styles.

Nothing is drawn that was not measured, and nothing is drawn from a value that was not
read correctly:

* a results file that cannot be used (empty, not text, not CSV, columns missing) is
  reported and left out (:func:`read_results`, through the one table reader
  :func:`convex_attention.io.tables.read_table`);
* a damaged row (cut off, a checksum that does not match) is reported and left out;
* every number a figure uses is validated (:func:`number`): a row whose value does not
  parse as a finite float where one is needed is skipped, and the rows skipped are named
  (:class:`Skips`);
* a figure with no data is not written, and the caller is told why.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

from ...io.figures import plain
from ...io.tables import ResultsFormatError, read_table
from ...methods import Method, get_method
from ..results import DUAL_KINDS, KEY_FIELDS, STATUSES

METHOD_COLORS = {"softmax": "#7f7f7f", "exact": "#1f77b4", "dual": "#2ca02c", "learned_dual": "#d62728",
                 "learned_dual+loss": "#d62728", "cvxpylayers": "#9467bd"}
METHOD_MARKERS = {"softmax": "s", "exact": "o", "dual": "D", "learned_dual": "v", "cvxpylayers": "P"}
# display order of the series (a choice of layout, not a fact about the methods)
METHOD_ORDER = ("softmax", "learned_dual", "dual", "exact", "cvxpylayers")
DUAL_KIND_LABEL = {"zero": "λ = 0", "fitted": "fitted λ", "amortised": "amortised λ",
                   "per_sample": "per-sample λ*"}
KIND_COLORS = {"zero": "#f4a582", "fitted": "#d62728", "amortised": "#e377c2", "per_sample": "#8c564b"}
KIND_MARKERS = {"zero": "v", "fitted": "^", "amortised": "<", "per_sample": ">"}
# cvxpylayers backends: colours told apart at a glance (not shades of one hue), each with its
# marker, and each backend's its own, so that a backend looks the same in every figure whatever
# else a run measured (they had been given in turn to the backends present: moreau's colour was
# another with diffcp-scs in the run than without it).  A backend this version does not know (a
# results file of another version) takes the spare styles in turn, in name order.
BACKEND_STYLES = {"diffcp-clarabel": ("#9467bd", "P"), "moreau": ("#17becf", "X"), "diffcp-scs": ("#8c6d31", "*"),
                  "cuclarabel": ("#e7298a", "h"), "mpax": ("#3f007d", "p")}
SPARE_BACKEND_STYLES = (("#bcbd22", "8"), ("#ff7f0e", "H"))
# The dual kind whose row carries the timing that the other kinds share (they evaluate the
# same computation at other λ; the sweep times it once).
TIMED_KIND = "fitted"
# Machine epsilon of each dtype: the rounding floor of a violation computed in it.
DTYPE_EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps),
             "float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0 ** -7}
DTYPE_COLORS = {"float64": "#3182bd", "float32": "#e6550d", "float16": "#31a354", "bfloat16": "#756bb1"}
VIOLATION_TEX = r"$\mathrm{max}_k\,\|P_k p_k - p_{k+1}\|_1$"
# the sweep cell a row belongs to: its key without the method's own fields
CELL_FIELDS = tuple(k for k in KEY_FIELDS if k not in ("method", "dual_kind", "backend"))
#: A time is marked low-confidence when its interquartile range is wider than this share of
#: its median, or when it rests on fewer than MIN_CONFIDENT_REPEATS repetitions (the quartiles
#: of one or two timings say nothing about the spread).
LOW_CONFIDENCE_IQR = 0.5
MIN_CONFIDENT_REPEATS = 3
LOW_CONFIDENCE_LABEL = (f"dotted square: low confidence (IQR > {LOW_CONFIDENCE_IQR:.0%} of the median, or "
                        f"< {MIN_CONFIDENT_REPEATS} repetitions)")
#: A log-log slope is fitted over at least MIN_SLOPE_SIZES sizes spanning at least
#: MIN_SLOPE_SPAN (largest / smallest n), the largest sizes first, and kept only where every
#: point lies within SLOPE_TOLERANCE of the fitted line and the fitted time grows at least
#: MIN_SLOPE_RISE-fold over the range: a power law where the times follow one, and no slope
#: where they do not (fixed overheads bend small sizes; a flat curve is overhead-bound, and
#: its slope, even negative, is noise).
MIN_SLOPE_SIZES = 3
MIN_SLOPE_SPAN = 10.0
SLOPE_TOLERANCE = 0.15
MIN_SLOPE_RISE = 2.0

_TOKEN = re.compile(r"^[A-Za-z0-9_.+:\-]{1,40}$")

Log = Callable[[str], None]


class PlotWarning(UserWarning):
    """A results file, row or value that a figure could not use (and left out)."""


def warn(message: str) -> None:
    warnings.warn(message, PlotWarning, stacklevel=3)


# ====================================================================== reading results files


class BadValue(ValueError):
    """A value a figure needs that does not parse as what it must be."""


def read_results(path: str, required=(), log: Log | None = None) -> list[dict] | None:
    """The rows of a results CSV (:func:`convex_attention.io.tables.read_table`), each a dict
    of strings with its line number under ``"_line"``.

    Returns None (and logs why) when the file cannot be used at all: unreadable, not UTF-8
    text (or with a byte-order mark or NUL bytes), empty, not CSV, or missing a
    ``required`` column, or every row of it damaged.  Damaged rows (a field count other than
    the header's, a last line without its line end, a checksum that does not match) are
    logged by line and left out.
    Values stay strings: each figure validates the ones it uses.
    """
    log = log or warn
    name = os.path.basename(path)
    try:
        table = read_table(path, required)
    except OSError as err:
        log(f"{name}: cannot be read ({err.strerror or err}); left out")
        return None
    except ResultsFormatError as err:
        log(f"{err}; left out")
        return None
    if not table.header:
        log(f"{name}: empty file; nothing to plot from it")
        return None
    if table.problems:
        log(f"{name}: left out {len(table.problems)} damaged row(s): {listing(table.problems)}")
        if not table.rows:  # (not "a header and no rows": it had rows, ca_rev162)
            log(f"{name}: every row of it is damaged; nothing to plot from it")
            return None
    return table.rows


def listing(items, limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


#: The times in milliseconds a figure accepts: 1 fs to 30 years.  Anything outside cannot
#: have been measured (a hand-edited or corrupted file), and a log axis spanning it cannot be
#: laid out (matplotlib overflows and collapses the panels).
MEASURABLE_MS = (1e-12, 1e12)


@overload
def number(row: dict, col: str, *, empty_ok: Literal[False] = False, positive: bool = False, nonneg: bool = False,
           integer: bool = False, time_ms: bool = False) -> float: ...
@overload
def number(row: dict, col: str, *, empty_ok: bool, positive: bool = False, nonneg: bool = False,
           integer: bool = False, time_ms: bool = False) -> float | None: ...
def number(row: dict, col: str, *, empty_ok: bool = False, positive: bool = False, nonneg: bool = False,
           integer: bool = False, time_ms: bool = False) -> float | None:
    """The finite float in ``row[col]``; where ``empty_ok``, None for an empty value (not
    measured) or a column the file does not have (an older file); BadValue otherwise.
    ``time_ms``: a time in milliseconds, inside :data:`MEASURABLE_MS`."""
    text = row.get(col)
    if text is None:
        if empty_ok:
            return None
        raise BadValue(f"{col} is missing")
    if isinstance(text, float) and math.isnan(text):
        text = ""  # rows held in memory carry NaN where the CSV has an empty field
    text = str(text).strip()
    if text == "":
        if empty_ok:
            return None
        raise BadValue(f"{col} is empty")
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"{col}={plain(text, 30)!r} is not a number") from None
    if not math.isfinite(value):
        raise BadValue(f"{col}={plain(text, 30)!r} is not finite")
    if positive and value <= 0:
        raise BadValue(f"{col}={text!r} is not positive")
    if nonneg and value < 0:
        raise BadValue(f"{col}={text!r} is negative")
    if integer and value != int(value):
        raise BadValue(f"{col}={text!r} is not an integer")
    if time_ms and not MEASURABLE_MS[0] <= value <= MEASURABLE_MS[1]:
        raise BadValue(f"{col}={value:g} is not a measurable time (outside [{MEASURABLE_MS[0]:g}, "
                       f"{MEASURABLE_MS[1]:g}] ms)")
    return value


def text_of(row: dict, col: str) -> str:
    """A string field of a row read from CSV or held in memory ("" when absent)."""
    v = row.get(col)
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()


def token_of(row: dict, col: str) -> str:
    text = text_of(row, col)
    if text and not _TOKEN.match(text):
        raise BadValue(f"{col}={plain(text, 30)!r} is not a name")
    return text


class Skips:
    """The rows one figure left out, reported once, by line."""

    def __init__(self, figure: str, source: str = "bench.csv"):
        self.figure, self.source = figure, source
        self.items: list[str] = []

    def add(self, row: dict, why: str) -> None:
        what = "/".join(plain(row.get(k, ""), 20) for k in ("method", "dual_kind", "backend") if row.get(k))
        self.items.append(f"line {row.get('_line', '?')} ({what or 'row'}): {why}")

    def report(self, log: Log) -> None:
        if self.items:
            log(f"{self.figure}: skipped {len(self.items)} row(s) of {self.source} with unusable values: "
                f"{listing(self.items)}")


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
        k = DUAL_KINDS.index(self.kind) if self.kind in DUAL_KINDS else len(DUAL_KINDS)
        return (m, self.method, k, self.kind, self.backend)


def series_of(row: dict) -> tuple[Series, Method]:
    """The row's series and method record; BadValue for an unknown method or odd names."""
    name = text_of(row, "method")
    try:
        record = get_method(name)
    except ValueError:
        raise BadValue(f"method={plain(name, 30)!r} is not a known method") from None
    kind = token_of(row, "dual_kind") if record.needs_duals else ""
    return Series(name, kind, token_of(row, "backend")), record


def backend_style(backend: str, present) -> tuple[str, str]:
    """A cvxpylayers backend's colour and marker (:data:`BACKEND_STYLES`); a backend it does
    not name takes a spare style, in turn among the unnamed backends of ``present`` (every
    backend the figure draws)."""
    if backend in BACKEND_STYLES:
        return BACKEND_STYLES[backend]
    unknown = sorted({b for b in present if b not in BACKEND_STYLES} | {backend})
    return SPARE_BACKEND_STYLES[unknown.index(backend) % len(SPARE_BACKEND_STYLES)]


def styles_for(series) -> dict:
    """colour and marker per series: a learned dual's by its kind, a backend's its own
    (:func:`backend_style`), any other method's its own."""
    out, backends = {}, {s.backend for s in series if s.backend}
    for s in series:
        if s.kind:
            out[s] = (KIND_COLORS.get(s.kind, METHOD_COLORS.get(s.method, "#333333")),
                      KIND_MARKERS.get(s.kind, "v"))
        elif s.backend:
            out[s] = backend_style(s.backend, backends)
        else:
            out[s] = (METHOD_COLORS.get(s.method, "#333333"), METHOD_MARKERS.get(s.method, "o"))
    return out


@dataclass
class Point:
    row: dict
    series: Series
    record: Method  # the method's registry record (series_of)
    v: dict


def ok_points(rows, figure: str, numbers: dict, log: Log, source: str = "bench.csv") -> list[Point]:
    """The rows with status ``ok`` whose values in ``numbers`` (column -> number options)
    all parse; the others are reported by line.  Rows skipped or failed by the sweep are
    no data and are left out here (each figure names them in its notes:
    :func:`not_drawn_notes`); an unknown status is a bad row."""
    skips, points = Skips(figure, source), []
    for row in rows:
        status = text_of(row, "status")
        if status not in STATUSES:
            skips.add(row, f"status={plain(status, 20)!r} is not one of {', '.join(STATUSES)}")
            continue
        if status != "ok":
            continue
        try:
            series, record = series_of(row)
            values = {col: number(row, col, **opts) for col, opts in numbers.items()}
            for col in ("fwd_ms", "bwd_ms", "total_ms"):  # a median inside its own quartiles
                q1, q3, med = values.get(col + "_q1"), values.get(col + "_q3"), values.get(col)
                if med is not None and q1 is not None and q3 is not None and not (
                        q1 <= med * (1 + 1e-9) and med <= q3 * (1 + 1e-9)):
                    raise BadValue(f"{col}={med:g} lies outside its quartiles [{q1:g}, {q3:g}]")
        except BadValue as err:
            skips.add(row, str(err))
            continue
        points.append(Point(row, series, record, values))
    skips.report(log)
    return points


def compute_dtype_of(p: Point) -> str:
    """The dtype a row was computed in: the cell's, or float64 for a method that solves in
    float64 whatever its input (the registry's ``cpu_only``)."""
    return "float64" if p.record.cpu_only else text_of(p.row, "dtype")


def lacks_columns(rows, columns, figure: str, source: str, log: Log) -> bool:
    """True (and says so through ``log``: the figure is not drawn) when ``rows`` lack any of
    ``columns`` of the file ``source``."""
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        log(f"{figure}: {source} lacks column(s) {', '.join(missing)}; not drawn")
    return bool(missing)


def cell_key(row: dict) -> tuple:
    return tuple(text_of(row, k) for k in CELL_FIELDS)


def floor_below(values, default: float) -> float:
    """Where a log axis draws exact zeros: the power of ten one decade below the smallest
    positive value of ``values`` (``default`` when none is positive)."""
    positive = [v for v in values if v > 0]
    return 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else default


def pareto_front(pts, resolution: float = 0.0) -> list[tuple]:
    """The points ``(time, violation)`` no other point beats in both (sorted by time; of
    identical points, one), with violations compared only above ``resolution`` (below it
    two results are equally consistent)."""
    front, best = [], math.inf
    for t, v in sorted(pts):
        seen = max(v, resolution)
        if seen < best:
            front.append((t, v))
            best = seen
    return front


def quiet_minor_ticks(ax) -> None:
    """Minor log ticks at 2 and 5 only, unlabelled where the axis spans a decade or more:
    labels collide on short ranges, and every tick costs drawing time.  On an axis spanning
    less (one cell, or values within a decade) they are labelled (2 only above 0.4 of a
    decade), or it would carry no number at all: a figure of one row showed ticks and no
    value (ca_rev274)."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
            axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def low_confidence(v: dict, col: str) -> bool:
    """Whether the time ``v[col]`` (with ``v[col + "_q1"]``, ``v[col + "_q3"]`` and
    ``v["repeats"]`` where recorded) is too noisy to read: see :data:`LOW_CONFIDENCE_IQR`."""
    repeats = v.get("repeats")
    if repeats is not None and repeats < MIN_CONFIDENT_REPEATS:
        return True
    med, q1, q3 = v.get(col), v.get(col + "_q1"), v.get(col + "_q3")
    return bool(med and q1 is not None and q3 is not None and (q3 - q1) / med > LOW_CONFIDENCE_IQR)


def mark_low_confidence(ax, xs, ys) -> None:
    """A dotted square around each low-confidence point (the legend entry is
    :data:`LOW_CONFIDENCE_LABEL`)."""
    if len(xs):
        ax.scatter(xs, ys, s=85, marker="s", facecolors="none", edgecolors="#555555", linewidths=0.8,
                   linestyles=":", zorder=6)


def low_confidence_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="s", ms=8, mfc="none", mec="#555555", ls="none", mew=0.8,
                  label=LOW_CONFIDENCE_LABEL)


@dataclass(frozen=True)
class PowerLaw:
    """time ≈ coef · n^slope, fitted over ``[n_lo, n_hi]`` (``sizes`` points)."""

    slope: float
    coef: float
    n_lo: float
    n_hi: float
    sizes: int


def fit_power_law(ns, ts) -> PowerLaw | None:
    """The log-log line through the largest sizes that follow one (see :data:`MIN_SLOPE_SIZES`):
    the longest run of the largest sizes with at least MIN_SLOPE_SIZES points spanning at
    least MIN_SLOPE_SPAN, every point within SLOPE_TOLERANCE of the line; ``None`` if none,
    or if the line grows less than MIN_SLOPE_RISE-fold over its range."""
    pts = sorted((float(n), float(t)) for n, t in zip(ns, ts) if n > 0 and t > 0)
    for start in range(0, len(pts) - MIN_SLOPE_SIZES + 1):
        sub = pts[start:]
        if sub[-1][0] / sub[0][0] < MIN_SLOPE_SPAN:
            return None  # shorter runs span even less
        x, y = np.log([p[0] for p in sub]), np.log([p[1] for p in sub])
        slope, intercept = np.polyfit(x, y, 1)
        if float(np.max(np.abs(y - (slope * x + intercept)))) <= math.log(1 + SLOPE_TOLERANCE):
            if slope * (x[-1] - x[0]) < math.log(MIN_SLOPE_RISE):
                return None  # follows a power law, but barely grows: overhead-bound, no slope to read
            return PowerLaw(float(slope), float(math.exp(intercept)), sub[0][0], sub[-1][0], len(sub))
    return None


#: :func:`skip_reason` of a method's row on a structure it cannot solve (a graph, for a
#: method of forests): the registry's refusal, which the per-structure figure names per panel.
FORESTS_ONLY = "of a method that solves forests only"


def skip_reason(row: dict) -> str:
    """Why the sweep left a row unmeasured, in a few words: the kind of its ``reason`` for a
    ``skipped`` row (a choice the sweep made, not a fault), ``failed (<error>)`` for an
    ``error`` row; "" for any other status."""
    status, reason = text_of(row, "status"), text_of(row, "reason")
    if status == "error":
        return f"failed ({error_name(reason)})"
    if status != "skipped":
        return ""
    return ("over --cvx-max-cells" if "cap" in reason else "over --budget" if "budget" in reason else
            "backend not installed" if "not installed" in reason else
            FORESTS_ONLY if "forests only" in reason else
            "on a device its backend does not solve on" if "solves on" in reason or "runs on" in reason else
            "skipped (see bench.csv)")


def error_name(reason: str) -> str:
    """The error a failed row's ``reason`` names (``"MemoryError: out of memory"`` ->
    ``"MemoryError"``), or ``"error"`` when it names none."""
    head = reason.split(":", 1)[0].strip()
    return plain(head, 30) if head and _TOKEN.match(head) and ":" in reason else "error"


def skipped_by_the_sweep(rows) -> dict:
    """``{why: count}`` of the rows the sweep recorded as skipped (a reason it chose, not a
    fault; :func:`skip_reason`): over the size cap, over the time budget, a backend not
    installed, a device the backend does not solve on, a method for forests only, other."""
    out: dict = {}
    for row in rows:
        if text_of(row, "status") == "skipped":
            why = skip_reason(row)
            out[why] = out.get(why, 0) + 1
    return out


def skipped_note(rows) -> str:
    """The rows the sweep skipped, for a figure's notes ("" when none)."""
    counts = skipped_by_the_sweep(rows)
    if not counts:
        return ""
    return "not measured by the sweep: " + ", ".join(f"{n} row(s) {why}" for why, n in counts.items())


def series_name(row: dict) -> str:
    """A row's series in words, as a legend names it (method, λ kind or backend), read
    without validation: for naming rows that are not drawn."""
    method, kind, backend = (plain(text_of(row, k), 30) for k in ("method", "dual_kind", "backend"))
    return Series(method, kind, backend).label if method else "row"


def failed_note(rows) -> str:
    """The rows the sweep recorded as failed (status ``error``: measured, and the measurement
    raised), for a figure's notes ("" when none): how many, of which series, and the error,
    briefly.  They are never drawn, and never silently."""
    counts: dict = {}
    for row in rows:
        if text_of(row, "status") == "error":
            what = f"{series_name(row)}: {plain(text_of(row, 'reason'), 60) or 'no reason recorded'}"
            counts[what] = counts.get(what, 0) + 1
    if not counts:
        return ""
    total = sum(counts.values())
    return (f"FAILED, not drawn: {total} row(s) (status error): "
            + listing([f"{n}× {what}" if n > 1 else what for what, n in counts.items()], limit=4))


def borrows_its_time(p: Point) -> bool:
    """A learned-dual kind with no time of its own (λ = 0, per-sample λ*): the fitted row's
    computation, timed there, which a figure may borrow."""
    return bool(getattr(p.record, "needs_duals", False)) and p.series.kind != TIMED_KIND


def untimed_note(points, columns, what: str) -> str | None:
    """The footer note on ``ok`` rows that hold no value (an empty field: not measured) in one of
    ``columns`` and are not drawn, by series (``what``: what they lack, in words), apart from the
    learned-dual kinds that borrow the fitted row's time (:func:`borrows_its_time`); None where
    there are none.  Such a row had vanished from a figure without a word (ca_rev186)."""
    return untimed_listing([p for p in points if not borrows_its_time(p) and any(p.v.get(c) is None for c in columns)],
                           what)


def untimed_listing(untimed, what: str) -> str | None:
    """The footer note naming the ``untimed`` points, ok rows that are not drawn for want of
    ``what`` (in words), by series; None where there are none (one wording for every figure)."""
    missing = Counter(p.series.label for p in untimed)
    if not missing:
        return None
    listed = ", ".join(f"{label} ({n})" if n > 1 else label for label, n in sorted(missing.items()))
    return f"{sum(missing.values())} ok row(s) hold no {what} (an empty field: not measured), not drawn there: {listed}"


def not_drawn_notes(rows) -> list[str]:
    """The notes on rows a figure cannot draw because the sweep did not measure them: those it
    skipped (:func:`skipped_note`) and those that failed (:func:`failed_note`)."""
    return [skipped_note(rows), failed_note(rows)]


#: The sweep axes a curve against problem size keeps apart besides its panel's (dims, device,
#: levels): two cells that differ in any of them were measured under different conditions,
#: and a median across them is a value no cell measured.
SETTING_FIELDS = ("dtype", "batch", "temperature", "generator", "scale", "seed")
# one line style per setting (never dotted: a dotted line marks a reference, such as a target)
# dash patterns told apart at paper size (a review found "--" and (3, 1.5) alike, and a long
# dash that a short legend handle drew solid): solid, dashed, dotted, dash-dot, dash-dot-dot,
# long dash with gaps, dash-dash-dot, sparse dots
SETTING_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1.5, 1, 1.5, 1, 1.5)), (0, (10, 4)), (0, (5, 2, 5, 2, 1, 2)),
                      (0, (1, 4)))
#: how long the legend's line handles are (in font sizes): long enough to show every pattern
SETTING_HANDLE_LENGTH = 4.0
# how a legend names each setting field (device: a field only convergence figures tell apart)
_SETTING_WORDS = {"dtype": "{} cells", "batch": "B = {}", "temperature": "temperature {}", "generator": "{}",
                  "scale": "scale {}", "seed": "seed {}", "device": "{}"}


def setting_labels(settings, fields=SETTING_FIELDS) -> dict:
    """``{setting: label}``: each setting (a tuple of ``fields``' values) named by the fields
    in which ``settings`` differ, in ``fields``' order (``"float32 cells, B = 4"``; "" when
    none differs, "?" for a missing value)."""
    settings = list(settings)
    varying = [i for i in range(len(fields)) if len({s[i] for s in settings}) > 1]
    return {s: ", ".join(_SETTING_WORDS[fields[i]].format(plain(s[i], 20) or "?") for i in varying)
            for s in settings}


def setting_of(row: dict) -> tuple:
    """The row's values of :data:`SETTING_FIELDS`."""
    return tuple(text_of(row, k) for k in SETTING_FIELDS)


def setting_styles(settings) -> dict:
    """``{setting: (line style, label)}``: a line style per setting, and a label naming the
    fields in which the settings differ, in the order of :data:`SETTING_FIELDS`
    (``"float32 cells, B = 4"``; "" when there is one setting).  Past
    ``len(SETTING_LINESTYLES)`` settings the styles repeat, and each label says which earlier
    setting's style it shares (``"(style of 1)"``)."""
    ordered = sorted(set(settings), key=lambda s: tuple((0, float(v)) if _is_number(v) else (1, v) for v in s))
    labels = setting_labels(ordered)
    n = len(SETTING_LINESTYLES)
    out = {}
    for j, s in enumerate(ordered):
        label = labels[s]
        if len(ordered) > n:  # styles repeat: number the settings, and name whose style one shares
            label = f"{j + 1} {label}" + (f" (style of {j % n + 1})" if j >= n else "")
        out[s] = (SETTING_LINESTYLES[j % n], label)
    return out


def setting_handles(styles: dict) -> list:
    """Legend entries for the line styles of :func:`setting_styles` (none for one setting)."""
    from matplotlib.lines import Line2D

    if len(styles) < 2:
        return []
    return [Line2D([], [], color="#444444", ls=ls, lw=1.1, label=f"line style: {label}")
            for ls, label in styles.values()]


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def dtype_note(points) -> str:
    """The dtypes the points were computed in, for a figure's notes: the cells' dtype(s), and
    the methods that compute in another (cvxpylayers: float64 whatever the cell's)."""
    cells = sorted({text_of(p.row, "dtype") for p in points})
    other = sorted({(p.series.method, compute_dtype_of(p)) for p in points
                    if compute_dtype_of(p) != text_of(p.row, "dtype")})
    text = "computed in " + "/".join(cells)
    if other:
        text += " (" + ", ".join(f"{m}: {d}, whatever the cell's dtype" for m, d in dict(other).items()) + ")"
    return text


def batch_note(points) -> str:
    """The batches the points' per-sample times are of (a time per sample depends on it: the
    per-call overhead is shared by the batch; ca_rev162), and the series timed on fewer samples
    than their cell's batch (``timed_batch`` < ``batch``: cvxpylayers on ``--cvx-batch``), for
    a figure's notes ("" when no batch is recorded)."""
    fewer, batches = set(), set()
    for p in points:
        tb, batch = p.v.get("timed_batch"), text_of(p.row, "batch")
        if _is_number(batch):
            batches.add(int(float(batch)))
            if tb is not None and tb < float(batch):
                fewer.add(p.series.method)
    if not batches:
        return ""
    text = f"per-sample times of batches of B = {', '.join(map(str, sorted(batches)))}"
    return text + (f"; {', '.join(sorted(fewer))} timed on fewer samples than the batch (bench.csv's timed_batch)"
                   if fewer else "")


def dims_title(dims: int) -> str:
    return f"{dims}-D grids"


SIZE_COLUMNS = {"dims": {"positive": True, "integer": True}, "levels": {"positive": True, "integer": True},
         "n_cells": {"positive": True, "integer": True}}


def spread_columns(col: str) -> dict:
    return {col + "_q1": {"empty_ok": True, "time_ms": True}, col + "_q3": {"empty_ok": True, "time_ms": True}}


# ====================================================================== results-folder figures


def load_record(folder: str, log: Log, name: str) -> dict | None:
    """The JSON object of ``folder/name`` (``bench.json`` or the graph benchmark's
    ``graphs.json``): NaN/Infinity tokens (older files) read as null, and said; ``None`` when
    the file is missing (nothing said) or is not readable JSON (said to ``log``)."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    if not os.path.isfile(path):  # a folder, or a link to /dev/zero or a pipe: read, it never ends (ca_rev250)
        log(f"{name}: not readable JSON (not a regular file); its figures carry no environment line")
        return None
    bad_tokens = []

    def constant(token):  # NaN, Infinity, -Infinity
        bad_tokens.append(token)

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_constant=constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        log(f"{name}: not readable JSON ({plain(err, 80)}); its figures carry no environment line")
        return None
    if bad_tokens:
        log(f"{name}: not strict JSON ({len(bad_tokens)} NaN/Infinity token(s), read as null)")
    return data if isinstance(data, dict) else {}


def env_of(data: dict | None, name: str, log: Log) -> dict | None:
    """The environment of a record read by :func:`load_record`, with its ``runs`` (the load
    average at the start and end of each run, and its threads) where it has them; ``None``
    for no record, and ``None`` said to ``log`` for one without an environment."""
    if data is None:
        return None
    env = data.get("environment")
    if not isinstance(env, dict):
        log(f"{name}: no 'environment' object; its figures carry no environment line")
        return None
    if isinstance(data.get("runs"), list):
        env = {**env, "runs": data["runs"]}  # the load and threads of each run (older files: not recorded)
    return env


def load_env(folder: str, log: Log, name: str = "bench.json") -> dict | None:
    """The environment record of ``folder/name`` (``bench.json``, or the graph benchmark's
    ``graphs.json``), with its ``runs`` (the load average at the start and end of each run,
    and its threads) where the file has them: the footer of the figures drawn from that
    folder.  NaN/Infinity tokens (older files) read as null; ``None`` when the file is
    missing, and ``None`` said to ``log`` when it is unusable."""
    return env_of(load_record(folder, log, name), name, log)


def graph_parts(data: dict | None) -> tuple[str, ...] | None:
    """The parts the graph benchmark's run made, from its ``graphs.json`` record
    (``config.parts``); ``None`` when the record does not say (no record, or no list of
    names there)."""
    config = data.get("config") if isinstance(data, dict) else None
    parts = config.get("parts") if isinstance(config, dict) else None
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        return None
    return tuple(parts)
