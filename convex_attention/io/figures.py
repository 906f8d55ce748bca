"""The figure style and :func:`save`: every figure of both wings looks and is written alike.

A figure is written as a PNG (300 dpi) and a PDF side by side, sized for a paper (at most a
two-column width, :data:`FULL_WIDTH`), in fonts that stay readable at that size
(:data:`STYLE`), with a footer naming the environment the numbers were measured in
(:func:`env_line`).  Importing this module selects matplotlib's non-interactive backend.
"""
from __future__ import annotations

import contextlib
import math
import os
import textwrap
import warnings
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from .files import temporary_file  # noqa: E402

__all__ = ["FULL_WIDTH", "HALF_WIDTH", "STYLE", "FigureLayoutError", "layout_guard", "env_line", "save", "plain", "sci"]

FULL_WIDTH = 7.0   # inches: a two-column figure
HALF_WIDTH = 3.4   # inches: a one-column figure
FOOTER_CHARS = 150  # characters per footer line: about 6.3 inches at the footer's 6 pt
NOTE_CHARS = 600  # at most per note of a footer (a bound on text read from files, not a cut of the caveats)
LISTED_RUNS = 8  # runs whose load a footer lists one by one; of more, it gives the range
# the rc parameters every figure is drawn under (plt.rc_context).  Keys typed Any: matplotlib >= 3.11 types
# rc_context's keys as a Literal of the rc names (matplotlib.typing.RcKeyType), earlier releases as str, and
# a dict is invariant in its key, so no one key type passes both (setup.cfg allows matplotlib >= 3.7)
STYLE: dict[Any, Any] = {"font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7,
                          "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9, "figure.dpi": 100,
                          "savefig.bbox": "tight", "pdf.fonttype": 42, "axes.spines.top": False,
                          "axes.spines.right": False}


class FigureLayoutError(ValueError):
    """matplotlib could not lay the figure out (a log axis spanning hundreds of decades, from
    values no measurement gives): the figure is not written; the message says why."""


#: What numpy warns inside matplotlib when an axis spans more than floating point can draw
#: (its log transform overflows): the figure would be written, unreadable (axes collapsed,
#: the data not shown).  Made an error inside :func:`layout_guard`.
_OVERFLOW = "overflow encountered"


@contextlib.contextmanager
def layout_guard():
    """Draw a figure inside this: :class:`FigureLayoutError` where matplotlib's transforms
    overflow (numpy only warns, and an unreadable figure would be written) or its tick
    formatter raises OverflowError.  On that, or any other exception, the figures opened
    inside are closed (the others are left open).  Every other warning is left to the
    caller's filters, as it is raised (a figure merely crowded, whose layout matplotlib
    gives up on with a warning, is still written)."""
    opened_before = set(plt.get_fignums())

    def close_own_figures():
        for number in set(plt.get_fignums()) - opened_before:
            plt.close(number)

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=_OVERFLOW, category=RuntimeWarning)
            yield
    except (FigureLayoutError, OverflowError, RuntimeWarning) as err:
        close_own_figures()
        if isinstance(err, RuntimeWarning) and _OVERFLOW not in str(err):
            raise  # another warning the caller's own filters made an error
        raise FigureLayoutError("matplotlib could not lay it out (an axis spans more decades than floating point "
                                "can draw); check the values the figure reads") from None
    except BaseException:
        close_own_figures()  # a figure that failed otherwise is not left open either
        raise


def plain(text, limit: int = 80) -> str:
    """A string from a file, safe to draw: no mathtext, bounded length."""
    text = str(text).replace("\n", " ")
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("$", r"\$")


def sci(x: float, digits: int = 2) -> str:
    """``x`` as mathtext in scientific notation, e.g. ``3.2\\times10^{-4}``."""
    if x == 0:
        return "0"
    exp = math.floor(math.log10(abs(x)))
    mant = x / 10 ** exp
    if abs(round(mant, digits - 1)) >= 10:  # 9.99e-5 reads 1.0e-4, not 10.0e-5
        mant, exp = mant / 10, exp + 1
    if -2 <= exp <= 3:
        text = f"{x:.{digits + 1}g}"
        if "e" not in text:  # 1234.5 with 3 digits is '1.23e+03' in Python: mathtext below
            return text
    return rf"{mant:.{digits - 1}f}\times10^{{{exp}}}"


def _plural(n, word: str) -> str:
    return f"{n} {word}" if str(n) == "1" else f"{n} {word}s"


def _count(x) -> bool:
    """Whether ``x``, read from a file, is a count of CPUs or threads: an int in [1, 2**31), not a bool."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 < x < 2 ** 31


def _load_text(runs) -> str:
    """The load average (1 min) at the start and end of each recorded run; of more than
    :data:`LISTED_RUNS` runs, the range at the start and at the end (the highest load is
    never dropped)."""
    runs = [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
    if not runs:  # none recorded, or none readable
        return "load average not recorded"

    def value(x):  # a load average: a finite number >= 0 (not a bool, nor an int beyond float: ca_rev250)
        v = x[0] if isinstance(x, list) and x else None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        try:
            v = float(v)
        except OverflowError:  # 10**400 read from JSON: it raised through every figure
            return None
        return v if math.isfinite(v) and v >= 0 else None

    def one(x):
        v = value(x)
        return "?" if v is None else f"{v:.2f}"

    # (text is shown bounded, as before; a number only where it is a count: not true, 0 or -2, ca_rev250)
    cpus = next((c for c in (r.get("cpu_count") for r in runs) if _count(c) or (isinstance(c, str) and c)), None)
    where = f", {plain(cpus, 12)} CPUs" if cpus else ""
    if len(runs) == 1:
        return (f"load average (1 min) {one(runs[0].get('load_average_start'))} at start, "
                f"{one(runs[0].get('load_average_end'))} at end{where}")
    if len(runs) > LISTED_RUNS:
        def span(key):
            vs = [v for v in (value(r.get(key)) for r in runs) if v is not None]
            missing = len(runs) - len(vs)
            text = f"{min(vs):.2f}–{max(vs):.2f}" if vs else "not recorded"
            return text + (f" ({missing} not recorded)" if vs and missing else "")
        return (f"load average (1 min) over {len(runs)} runs: at start {span('load_average_start')}, at end "
                f"{span('load_average_end')}{where}")
    spans = [f"{one(r.get('load_average_start'))} → {one(r.get('load_average_end'))}" for r in runs]
    return f"load average (1 min), start → end of each of {len(runs)} runs: {', '.join(spans)}{where}"


def env_line(env: dict | None, notes=()) -> str:
    """The footer: where the numbers were measured (torch, processor, CPU kernels, threads, GPU), the
    machine's load at the start and end of the run (``env["runs"]``, from
    :func:`convex_attention.io.environment.run_record`; "not recorded" for older files), and
    on a second line the figure's own caveats (``notes``: dtype, repetitions, ...).  Each
    value read from a file is bounded (:func:`plain`); the footer is then wrapped at spaces to
    lines of :data:`FOOTER_CHARS`, never cut: every caveat stays on the figure (a single word
    longer than a line, which no caveat of this package holds, is kept whole on its own line)."""
    first = ""
    if env and isinstance(env, dict):
        threads = env.get("torch_threads")
        runs = env.get("runs")
        recorded = [r.get("torch_threads") for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
        # (a count that is not an integer, e.g. a list in a hand-edited file, shown as '?': ca_rev118)
        per_run = {t if _count(t) else "?" for t in recorded if t is not None}
        if threads is not None and not _count(threads):
            threads = "?"  # (True had read '1 torch thread', 0 or -2 as such: ca_rev250)
        if per_run:  # the runs' own record: the threads they ran with
            # runs of several counts: "1 or 2 ... (the runs differ)", never "1/2" (half a thread: ca_rev274)
            threads = " or ".join(str(t) for t in sorted(per_run, key=lambda t: (t == "?", str(t).zfill(10))))
        several = len(per_run) > 1
        # the CPU kernels torch ran (AVX512, AVX2, ...): one processor name covers CPUs with and without
        # AVX-512 (ca_rev243); a GPU's timings are the GPU's, and files before 2026-12-07 have none
        kernels = env.get("cpu_capability")
        kernels = f"{plain(kernels, 20)} kernels" if kernels and not env.get("gpu") else ""
        parts = [f"torch {plain(env.get('torch', '?'), 40)}", plain(env.get("processor", "") or "", 80), kernels,
                 plain(_plural(threads, "torch thread") + (" (the runs differ)" if several else ""), 80)
                 if threads is not None else "torch threads not recorded",
                 plain(env.get("gpu", "") or "", 80), _load_text(runs)]
        first = " · ".join(str(p) for p in parts if p)
    elif notes:
        first = "environment not recorded"
    second = " · ".join(plain(n, NOTE_CHARS) for n in notes if n)
    # lines of at most FOOTER_CHARS characters: the footer never widens a figure
    lines = [w for text in (first, second) if text
             for w in textwrap.wrap(text, FOOTER_CHARS, break_long_words=False, break_on_hyphens=False)]
    return "\n".join(lines)


def save(fig, path: str, env: dict | None = None, notes=()) -> str:
    """Write ``fig`` as PNG (300 dpi) and PDF with the footer of :func:`env_line` (the
    environment, the load, and the figure's ``notes``); returns the PNG path.
    :class:`FigureLayoutError` (nothing written, the figure closed) where matplotlib cannot
    lay it out or draw it (:func:`layout_guard`)."""
    line = env_line(env, notes)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # each file written under a temporary name, then both renamed over the final ones: never a
    # half figure, or one matplotlib could not draw, under its name, and a link there is
    # replaced, its target never written
    written = []
    try:
        with layout_guard():
            fig.set_dpi(300)  # measure at the resolution it is saved at: text extents depend on it
            fig.draw_without_rendering()  # the layout, without rasterising
            if line:
                _add_footer(fig, line)
            with contextlib.ExitStack() as temporaries:  # each removed on leaving unless renamed
                for target, options in ((path, {"dpi": 300}), (os.path.splitext(path)[0] + ".pdf", {})):
                    temporary, f = temporaries.enter_context(temporary_file(target))
                    with f:  # flushed, synced to disk and closed before the rename (as io.files.atomic_file)
                        fig.savefig(f, bbox_inches="tight", format=os.path.splitext(target)[1][1:], **options)
                        f.flush()
                        os.fsync(f.fileno())
                    written.append((temporary, target))
                for temporary, target in written:
                    os.replace(temporary, target)
    finally:
        plt.close(fig)
    return path


def _add_footer(fig, line: str) -> None:
    """``line`` below everything drawn (legends outside the axes included), so it never
    covers data, against the layout just computed (frozen from here on)."""
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    for legend in fig.legends:
        # a figure legend hangs from the figure's edge, which the tight crop moves: pin it in place
        where = legend.get_window_extent(renderer).transformed(fig.transFigure.inverted())
        legend.set_bbox_to_anchor(where, transform=fig.transFigure)
        legend.set_loc("center")
    box = fig.get_tightbbox(renderer)
    fig.text(box.x0 / fig.get_figwidth(), (box.y0 - 0.05) / fig.get_figheight(), line, fontsize=6,
             color="#555555", ha="left", va="top")
