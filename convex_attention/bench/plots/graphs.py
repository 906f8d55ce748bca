"""Figures of consistency graphs (issue 18): the time–violation Pareto figure per structure, the
dual solver's convergence per structure, and the backward's cost and accuracy, implicit against
unrolled.

Every figure's footer (:func:`convex_attention.io.figures.save`) names the environment, the
torch threads and the load average (start and end of the run) the numbers were measured under,
and the dtype they were computed in.  A figure without data is not written, and the caller is told
why; rows with unusable values are skipped and named.
"""
from __future__ import annotations

import itertools
import math

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from ...io import figures
from ...io.figures import FULL_WIDTH, STYLE, plain, sci
from ._common import (
    FORESTS_ONLY,
    MIN_CONFIDENT_REPEATS,
    BadValue,
    Log,
    Skips,
    batch_note,
    cell_key,
    dtype_note,
    error_name,
    failed_note,
    floor_below,
    lacks_columns,
    low_confidence_handle,
    mark_low_confidence,
    number,
    ok_points,
    quiet_minor_ticks,
    series_name,
    skip_reason,
    skipped_note,
    styles_for,
    text_of,
    untimed_note,
    warn,
)
from .consistency import TRADEOFF_NUMBERS, draw_tradeoff_panel, timed_entries, tradeoff_legend

__all__ = ["plot_pareto_per_structure", "plot_convergence_per_structure", "plot_backward", "is_chain",
           "STRUCTURE_ORDER"]

STRUCTURE_ORDER = ("chain", "star", "axial", "grid_regions", "mixed")
STRUCTURE_TITLE = {"chain": "chain", "star": "star (4 maps onto one)", "axial": "axial (rows + columns)",
                   "grid_regions": "grid + regions", "mixed": "mixed (two resolutions)"}
KIND_STYLE = {"implicit": ("#2ca02c", "D", "implicit (forward to tol)"),
              "unrolled": ("#ff7f0e", "o", "unrolled plain sweeps (autograd)")}


def is_chain(row: dict) -> bool:
    """Whether a bench.csv or convergence.csv row is of a chain (rows of results older than
    structures are)."""
    return _structure(row) == "chain"


def _structure(row: dict) -> str:
    return text_of(row, "structure") or "chain"  # results older than structures hold chains


def _ordered(structures) -> list[str]:
    return sorted(structures, key=lambda s: (STRUCTURE_ORDER.index(s) if s in STRUCTURE_ORDER else 99, s))


# ----------------------------------------------------------------------------- Pareto per structure

def _runs_counted(shapes: str) -> str:
    """A row's ``shapes`` ("64x64+64x64+64x64+64x64+16x16") with each run of one map shape
    counted ("4×64x64+16x16"): a star's title ran into the next panel's."""
    parts = shapes.split("+")
    out: list[str] = []
    for part, run in itertools.groupby(parts):
        n = len(list(run))
        out.append(f"{n}×{part}" if n > 1 else part)
    return "+".join(out)


def plot_pareto_per_structure(rows, path, env=None, log: Log | None = None) -> str | None:
    """Time per sample (forward + backward) against held-out violation, one panel per structure,
    at the largest cell of each structure where ``dual`` was measured (one sweep cell: every
    key field alike, levels and seed included); every measured series of that cell is a point
    drawn as the trade-off figure draws its points
    (:func:`.consistency.draw_tradeoff_panel`: time on x, violation on y, the interquartile
    range of the time, low-confidence marks), and the Pareto front (no other point both faster
    and more consistent, violations compared only above the cell dtype's ε) is ringed.  The
    learned dual's kinds that share the timed computation take its time; per-sample λ* is
    not drawn (its time would exclude finding λ*).  Methods that cannot solve the structure,
    and series that failed at the cell, are named under the panel.  Drawn when the rows hold a
    structure other than the chain; returns None otherwise."""
    log = log or warn
    need = ("status", "method", "violation_mean", "per_sample_ms", "n_cells")
    if lacks_columns(rows, need, "pareto_per_structure", "bench.csv", log):
        return None
    structures = _ordered({_structure(r) for r in rows})
    if structures == ["chain"] or not structures:
        log("pareto_per_structure: the rows hold chains only (the tradeoff figure draws them); not written")
        return None
    numbers = {**TRADEOFF_NUMBERS, "n_cells": {"positive": True, "integer": True}}
    points = ok_points(rows, "pareto_per_structure", numbers, log)
    not_measured: list[dict] = []  # the drawn cells' rows the sweep skipped
    panels, undrawn, at_cells = [], [], []  # at_cells: the drawn cells' ok points
    for structure in structures:
        mine = [p for p in points if _structure(p.row) == structure]
        duals = [p for p in mine if p.series.method == "dual" and p.v["per_sample_ms"] is not None]
        if not duals:  # no cell to draw: said, never left out silently
            theirs = [r for r in rows if _structure(r) == structure and text_of(r, "method") == "dual"]
            why = sorted({skip_reason(r) for r in theirs if skip_reason(r)})
            undrawn.append(f"{plain(structure, 20)} (no timed dual row"
                           + (f"; dual {', '.join(why)}" if why else "" if theirs else "; none in bench.csv") + ")")
            continue
        largest = max(duals, key=lambda p: p.v["n_cells"])
        cell = cell_key(largest.row)
        at_cells += [p for p in mine if cell_key(p.row) == cell]
        entries, _ = timed_entries([p for p in mine if cell_key(p.row) == cell])
        # per-sample λ* borrowing the fitted row's time would exclude finding λ*: on the front unfairly
        shown = {s: es for s, es in entries.get(cell, {}).items() if not (s.kind == "per_sample" and es[0][2])}
        here = [r for r in rows if _structure(r) == structure and cell_key(r) == cell]
        refused = sorted({text_of(r, "method") for r in here if skip_reason(r) == FORESTS_ONLY})
        failed = sorted({series_name(r) for r in here if text_of(r, "status") == "error"})
        not_measured.extend(r for r in here if text_of(r, "status") == "skipped"
                            and skip_reason(r) != FORESTS_ONLY)
        panels.append((structure, largest, shown, refused, failed))
    if not panels:
        log("pareto_per_structure: no structure has a timed dual row; not written")
        return None
    if undrawn:  # a figure written without them: said here and in its footer
        log(f"pareto_per_structure: no panel for {', '.join(undrawn)}")
    # a sweep over several devices: each panel says whose times it draws (the trade-off figure does);
    # and the structures' other cells, not drawn, are counted in the footer (ca_rev162)
    devices = {text_of(r, "device") for r in rows}
    other_cells = len({(_structure(p.row), cell_key(p.row)) for p in points
                       if _structure(p.row) in {pan[0] for pan in panels}}) - len(panels)
    style = styles_for({s for _, _, shown, _, _ in panels for s in shown})
    positive = [e[1] for _, _, shown, _, _ in panels for es in shown.values() for e in es if e[1] > 0]
    floor = floor_below(positive, default=1e-16)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    drawn = {"zero": False, "borrowed": False, "per_sample_borrowed": False, "low": False}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(FULL_WIDTH, 2.6 * nrows + 1.2), layout="constrained",
                                 squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (structure, largest, shown, refused, failed) in zip(axes.flat, panels):
            for k, v in draw_tradeoff_panel(ax, shown, style, text_of(largest.row, "dtype"), floor).items():
                drawn[k] |= v
            ax.set_xscale("log")
            ax.set_yscale("log")
            quiet_minor_ticks(ax)
            ax.margins(x=0.15, y=0.15)
            ax.set_title(f"{STRUCTURE_TITLE.get(structure, plain(structure, 20))}\n"
                         f"{plain(_runs_counted(text_of(largest.row, 'shapes')), 48)}, "
                         f"τ={plain(text_of(largest.row, 'temperature'), 12)}, "
                         f"{plain(text_of(largest.row, 'dtype'), 10)}"
                         + (f", {plain(text_of(largest.row, 'device'), 12)}" if len(devices) > 1 else "")
                         + (f"\n({', '.join(refused)}: solves forests only)" if refused else "")
                         + (f"\nFAILED: {plain(', '.join(failed), 60)}" if failed else ""), fontsize=7)
            ax.grid(True, which="major", alpha=0.25)
        for ax in axes[-1]:
            ax.set_xlabel("time per sample (ms)\nforward + backward")
        for ax in axes[:, 0]:
            ax.set_ylabel("held-out violation\n(batch mean)")
        fig.legend(handles=tradeoff_legend(style, drawn, floor), loc="outside lower center", ncol=2, frameon=False,
                   fontsize=6.2)
        fig.suptitle("Time against violation per structure (largest cell of each, every method that solves it)")
        drawn_points = [e[5] for _, _, shown, _, _ in panels for es in shown.values() for e in es]
        here_rows = [r for _, largest, _, _, _ in panels for r in rows
                     if _structure(r) == _structure(largest.row) and cell_key(r) == cell_key(largest.row)]
        failed_here = failed_note(here_rows)
        notes = [dtype_note(drawn_points),
                 "forward + backward per sample, median of interleaved repetitions (error bar: the interquartile "
                 "range); learned_dual at λ = 0 takes the "
                 "fitted row's time (the same computation); per-sample λ* is not drawn (its time would exclude "
                 "finding λ*)", batch_note(drawn_points),
                 skipped_note(not_measured) + (" (at the cells drawn)" if not_measured else ""),
                 failed_here + (" (at the cells drawn)" if failed_here else ""),
                 f"NOT DRAWN, no panel: {', '.join(undrawn)}" if undrawn else "",
                 # (an ok series of a drawn cell without a time had vanished from its panel unsaid: ca_rev186)
                 (untimed_note(at_cells, ("per_sample_ms",), "time per sample") or "").replace(
                     ", not drawn there", ", not drawn (at the cells drawn)"),
                 f"one cell per structure, its largest with a timed dual row (the first of equal size): "
                 f"{other_cells} other cell(s) of these structures not drawn" if other_cells > 0 else ""]
        return figures.save(fig, path, env, notes=notes)


# ----------------------------------------------------------------------------- convergence per structure

def plot_convergence_per_structure(conv_rows, path, env=None, log: Log | None = None, notes=()) -> str | None:
    """The dual solver's violation (top row) and dual gap ``g(λ) − f*`` (bottom row) per sweep,
    float64, one column per structure and one line per cell, labelled with its size and
    number of levels (and temperature, where a structure's cells differ in it).  The gap is the
    batch's largest signed gap (``dual_gap_max``), drawn as its magnitude ``|max (g(λ) − f*)|``,
    as the axis says: a batch whose every gap is below 0 (weak duality allows it only within the
    reference's rounding) shows rather than hiding at the floor; values at or below a marked
    floor (a gap of exactly 0 included) are drawn there.  Drawn when the rows hold a
    structure other than the chain; returns None otherwise."""
    log = log or warn
    need = ("cell", "structure", "size", "iteration", "violation_max", "dual_gap_max")
    if lacks_columns(conv_rows, need, "dual_convergence_per_structure", "convergence.csv", log):
        return None
    skips, pts = Skips("dual_convergence_per_structure", "convergence.csv"), []
    for r in conv_rows:
        try:
            levels = number(r, "levels", empty_ok=True, positive=True, integer=True)
            pts.append((_structure(r), int(number(r, "cell", integer=True, nonneg=True)),
                        int(number(r, "size", positive=True, integer=True)),
                        int(number(r, "iteration", integer=True, nonneg=True)),
                        number(r, "violation_max", nonneg=True), number(r, "dual_gap_max", empty_ok=True),
                        int(levels) if levels is not None else None, plain(text_of(r, "temperature"), 12)))
        except BadValue as err:
            skips.add(r, str(err))
    skips.report(log)
    structures = _ordered({p[0] for p in pts})
    if not pts or structures == ["chain"]:
        log("dual_convergence_per_structure: no convergence rows of a structure other than the chain; not written")
        return None
    gaps = [abs(p[5]) for p in pts if p[5] is not None and p[5] != 0]
    viols = [p[4] for p in pts if p[4] > 0]
    floor = floor_below(gaps + viols + [1e-16], default=math.nan)  # never empty: at most 1e-17
    cmap = plt.get_cmap("viridis")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, len(structures), figsize=(FULL_WIDTH, 3.8), layout="constrained", squeeze=False,
                                 sharex="col")
        for j, structure in enumerate(structures):
            mine = [p for p in pts if p[0] == structure]
            cells = sorted({(p[2], p[6] or 0, p[7], p[1]) for p in mine})
            temperatures = {c[2] for c in cells}
            # a chain's maps are its levels; another structure's "levels" column counts its maps
            unit = "levels" if structure == "chain" else "maps"
            labels = [f"side {size}" + (f", {levels} {unit}" if levels else "")
                      + (f", temperature {temperature}" if len(temperatures) > 1 else "")
                      for size, levels, temperature, _ in cells]
            labels = [label + (f", cell {c[3]}" if labels.count(label) > 1 else "")
                      for label, c in zip(labels, cells)]
            for i, ((*_, cell), label) in enumerate(zip(cells, labels)):
                line = sorted((p for p in mine if p[1] == cell), key=lambda p: p[3])
                color = cmap(i / max(1, len(cells) - 1) * 0.85)
                its = [p[3] for p in line]
                axes[0, j].plot(its, [max(p[4], floor) for p in line], color=color, marker=".", ms=3, lw=1,
                                label=label)
                gap_pts = [(p[3], max(abs(p[5]), floor)) for p in line if p[5] is not None]
                if gap_pts:
                    axes[1, j].plot(*zip(*gap_pts), color=color, marker=".", ms=3, lw=1)
            axes[0, j].set_title(STRUCTURE_TITLE.get(structure, plain(structure, 20)), fontsize=7)
            if len(cells) > 1:
                # below the column, under its sweep axis: inside a panel the legend sat over lines
                # (the 64² sweep's side-16 line near 1e-12 ran under it)
                handles, texts = axes[0, j].get_legend_handles_labels()
                axes[1, j].legend(handles, texts, fontsize=5.5, frameon=False, loc="upper center",
                                  bbox_to_anchor=(0.5, -0.32), borderaxespad=0.0)
            last = max(p[3] for p in mine)
            axes[1, j].set_xlim(-0.3, max(last, 1) + 0.3)  # a solve certified at sweep 0 (a warm start) stays visible
            axes[1, j].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            axes[1, j].set_xlabel("sweep")
            for ax in axes[:, j]:
                ax.set_yscale("log")
                ax.axhline(floor, color="#999999", ls=":", lw=0.6)
                quiet_minor_ticks(ax)
                ax.grid(True, which="major", alpha=0.25)
        axes[0, 0].set_ylabel("violation (batch max)")
        axes[1, 0].set_ylabel("dual gap\n" + r"$|\max_{\mathrm{batch}}(g(\lambda) - f^*)|$")
        sides = sorted({p[2] for p in pts})
        fig.suptitle(rf"Dual solver per sweep, float64, finest side {', '.join(map(str, sides))} (dotted: values at "
                     rf"or below ${sci(floor)}$, drawn there)")
        return figures.save(fig, path, env, notes=["computed in float64 (the solver's working dtype), on each "
                                                   "cell's held-out instances; gap: g(λ) − f* against the float64 "
                                                   "certified reference; on forests that are not chains (the star) "
                                                   "the solver starts from the closed form (warm_start) and "
                                                   "certifies it at sweep 0", *notes])


# ----------------------------------------------------------------------------- backward

def plot_backward(rows, path, env=None, log: Log | None = None) -> str | None:
    """The backward's cost and accuracy on one figure: the gradient's relative error (against
    the implicit gradient at tolerance 1e-13) against the backward time per sample, one panel
    per structure; the implicit backward after a forward solved to each tolerance, and autograd
    through each number of plain sweeps (the unrolled backward), each point labelled with its
    tolerance or sweeps.  A family whose implicit backward failed (an ``error`` row) keeps an
    empty panel titled FAILED, and the footer names it.  Returns None without data."""
    log = log or warn
    need = ("family", "kind", "parameter", "bwd_per_sample_ms", "gradient_error")
    if lacks_columns(rows, need, "backward_implicit_vs_unrolled", "backward.csv", log):
        return None
    skips, pts = Skips("backward_implicit_vs_unrolled", "backward.csv"), []
    failed: dict[str, str] = {}  # family -> why its implicit backward failed (an error row: no points)
    for r in rows:
        kind, status = text_of(r, "kind"), text_of(r, "status") or "ok"  # files before the status column: ok
        try:
            if status == "error":
                if not text_of(r, "family"):
                    raise BadValue("family is empty")
                failed[text_of(r, "family")] = error_name(text_of(r, "reason"))
                continue
            if status != "ok":
                raise BadValue(f"status={plain(status, 20)!r} is not one of ok, error")
            if kind not in KIND_STYLE:
                raise BadValue(f"kind={plain(kind, 20)!r} is not one of {', '.join(KIND_STYLE)}")
            if not text_of(r, "family"):  # a panel without a title would show numbers of no structure
                raise BadValue("family is empty")
            pts.append((text_of(r, "family"), kind, number(r, "parameter", positive=True),
                        number(r, "bwd_per_sample_ms", time_ms=True), number(r, "gradient_error", nonneg=True),
                        number(r, "fwd_per_sample_ms", empty_ok=True, time_ms=True),
                        number(r, "repeats", empty_ok=True, positive=True, integer=True)))
        except BadValue as err:
            skips.add(r, str(err))
    skips.report(log)
    failed_text = ", ".join(f"{plain(f, 20)} ({why})" for f, why in failed.items())
    if not pts:
        log("backward_implicit_vs_unrolled: no usable rows" + (f" (the implicit backward FAILED on {failed_text})"
                                                               if failed else "") + "; not written")
        return None
    # a family whose implicit backward failed keeps its panel, which says so: never left out silently
    families = _ordered({p[0] for p in pts} | set(failed))
    positive = [p[4] for p in pts if p[4] > 0]
    floor = floor_below(positive + [1e-16], default=math.nan)  # never empty: at most 1e-17
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(families), figsize=(FULL_WIDTH, 2.7), layout="constrained", squeeze=False)
        for ax, family in zip(axes[0], families):
            for kind, (color, marker, _) in KIND_STYLE.items():
                line = sorted((p for p in pts if p[0] == family and p[1] == kind), key=lambda p: p[2])
                if not line:
                    continue
                xs, ys = [p[3] for p in line], [max(p[4], floor) for p in line]
                ax.plot(xs, ys, color=color, marker=marker, ms=4, lw=1)
                few = [(x, y) for p, x, y in zip(line, xs, ys) if p[6] is not None and p[6] < MIN_CONFIDENT_REPEATS]
                mark_low_confidence(ax, [x for x, _ in few], [y for _, y in few])
                for p, x, y in zip(line, xs, ys):
                    label = f"{p[2]:.0e}" if kind == "implicit" else f"{p[2]:g}"
                    if float(label) != p[2]:  # a tolerance that is no power of ten: the file's, not a rounding
                        label = f"{p[2]:.6g}"
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=5, color=color)
            if family in failed:
                ax.text(0.5, 0.5, f"implicit backward FAILED\n({failed[family]}; backward.csv)", ha="center",
                        va="center", fontsize=6.5, color="#d62728", transform=ax.transAxes)
            ax.set_xscale("log")
            ax.set_yscale("log")
            quiet_minor_ticks(ax)
            ax.set_title(STRUCTURE_TITLE.get(family, plain(family, 20))
                         + ("\nFAILED: implicit backward" if family in failed else ""), fontsize=7)
            if not any(p[0] == family for p in pts):  # no point: axes whose numbers would mean nothing
                ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
                continue
            ax.set_xlabel("backward, ms per sample")
            ax.grid(True, which="major", alpha=0.25)
            if any(p[0] == family and p[4] == 0 for p in pts):
                ax.axhline(floor, color="#999999", ls=":", lw=0.8)
        # on the first panel with points (a failed family's panel, first, has no axis to label)
        labelled = next(ax for ax, family in zip(axes[0], families) if any(p[0] == family for p in pts))
        labelled.set_ylabel("gradient relative error\n(vs implicit at tol 1e-13)")
        handles = [Line2D([], [], color=c, marker=m, label=label + (" — labels: tolerance" if k == "implicit"
                                                                    else " — labels: sweeps"))
                   for k, (c, m, label) in KIND_STYLE.items()]
        if any(p[4] == 0 for p in pts):
            handles.append(Line2D([], [], color="#999999", ls=":", lw=0.8,
                                  label=rf"error exactly 0, drawn at ${sci(floor)}$"))
        if any(p[6] is not None and p[6] < MIN_CONFIDENT_REPEATS for p in pts):
            handles.append(low_confidence_handle())
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6.5)
        fig.suptitle("The backward's cost and accuracy: implicit differentiation against unrolled sweeps")
        counts = sorted({int(p[6]) for p in pts if p[6] is not None})
        unrecorded = sum(p[6] is None for p in pts)
        repeats = ("median of interleaved repetitions (their number not recorded)" if not counts else
                   f"median of {counts[0] if len(counts) == 1 else f'{counts[0]}–{counts[-1]}'} interleaved "
                   f"repetitions" + (f" ({unrecorded} point(s) without a recorded number)" if unrecorded else ""))
        return figures.save(fig, path, env, notes=[
            f"computed in float64; backward time per sample, {repeats} (forward excluded; no spread recorded); "
            f"error: relative 2-norm of the gradient of a random linear loss",
            f"FAILED, not drawn: the implicit backward on {failed_text}" if failed else ""])
