"""Figures of consistency graphs (issue 18): the time–violation Pareto figure per structure, the
dual solver's convergence per structure, and the backward's cost and accuracy, implicit against
unrolled.

Every figure's footer (:func:`convex_attention.io.figures.save`) names the environment, the
torch threads and the load average (start and end of the run) the numbers were measured under,
and the dtype they were computed in.  A figure without data is not written, and the caller is told
why; rows with unusable values are skipped and named.
"""
from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from ...io import figures
from ...io.figures import FULL_WIDTH, STYLE, plain, sci
from ._common import (
    TIMED_KIND,
    BadValue,
    Log,
    Series,
    Skips,
    dtype_note,
    floor_below,
    lacks_columns,
    number,
    ok_points,
    pareto_front,
    quiet_minor_ticks,
    skipped_note,
    styles_for,
    text_of,
    warn,
)

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

def plot_pareto_per_structure(rows, path, env=None, log: Log | None = None) -> str | None:
    """Time per sample (forward + backward) against held-out violation, one panel per structure,
    at the largest cell of each structure where ``dual`` was measured; every measured series of
    that cell is a point and the Pareto front (no other point both faster and more consistent)
    is ringed.  The learned dual's kinds that share the timed computation take its time.
    Methods that cannot solve the structure are named under the panel.  Drawn when the rows hold
    a structure other than the chain; returns None otherwise."""
    log = log or warn
    need = ("status", "method", "violation_mean", "per_sample_ms", "n_cells")
    if lacks_columns(rows, need, "pareto_per_structure", "bench.csv", log):
        return None
    structures = _ordered({_structure(r) for r in rows})
    if structures == ["chain"] or not structures:
        log("pareto_per_structure: the rows hold chains only (the tradeoff figure draws them); not written")
        return None
    numbers = {"violation_mean": {"nonneg": True}, "per_sample_ms": {"empty_ok": True, "positive": True},
               "n_cells": {"positive": True, "integer": True}}
    points = ok_points(rows, "pareto_per_structure", numbers, log)
    panels, not_measured = [], []
    for structure in structures:
        mine = [p for p in points if _structure(p.row) == structure]
        duals = [p for p in mine if p.series.method == "dual" and p.v["per_sample_ms"] is not None]
        if not duals:
            continue
        largest = max(duals, key=lambda p: p.v["n_cells"])
        cell = {k: text_of(largest.row, k) for k in ("size", "dims", "batch", "temperature", "dtype", "device",
                                                     "generator", "scale")}
        here = [p for p in mine if all(text_of(p.row, k) == v for k, v in cell.items())]
        timed = {(text_of(p.row, "method")): p.v["per_sample_ms"] for p in here
                 if p.series.kind == TIMED_KIND and p.v["per_sample_ms"] is not None}
        shown = []
        for p in here:
            if p.v["per_sample_ms"] is None and p.series.kind == "per_sample":
                continue  # its time would exclude finding λ*, which would put it on the front unfairly
            t = p.v["per_sample_ms"] if p.v["per_sample_ms"] is not None else timed.get(p.series.method)
            if t is not None:
                shown.append((p, t))
        skipped = sorted({(text_of(r, "method"), text_of(r, "reason")) for r in rows
                          if _structure(r) == structure and text_of(r, "status") == "skipped"
                          and all(text_of(r, k) == v for k, v in cell.items())
                          and "forests only" in text_of(r, "reason")})
        not_measured.extend(r for r in rows if _structure(r) == structure and text_of(r, "status") == "skipped"
                            and all(text_of(r, k) == v for k, v in cell.items())
                            and "forests only" not in text_of(r, "reason"))
        panels.append((structure, largest, shown, skipped))
    if not panels:
        log("pareto_per_structure: no structure has a timed dual row; not written")
        return None
    series = sorted({p.series for _, _, shown, _ in panels for p, _ in shown}, key=Series.order)
    style = styles_for(series)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(FULL_WIDTH, 2.4 * nrows + 0.6), layout="constrained",
                                 squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (structure, largest, shown, skipped) in zip(axes.flat, panels):
            positive = [v for v in (p.v["violation_mean"] for p, _ in shown) if v > 0]
            floor = floor_below(positive, default=1e-16)
            coords = [(max(p.v["violation_mean"], floor), t) for p, t in shown]
            for (p, _), (x, y) in zip(shown, coords):
                color, marker = style[p.series]
                ax.scatter([x], [y], color=color, marker=marker, s=22, zorder=3, linewidths=0)
            front = pareto_front([(y, x) for x, y in coords])  # (time, violation)
            ax.scatter([v for _, v in front], [t for t, _ in front], s=80, facecolors="none",
                       edgecolors="#333333", linewidths=0.7, zorder=2)
            ax.set_xscale("log")
            ax.set_yscale("log")
            quiet_minor_ticks(ax)
            refused = ", ".join(sorted({m for m, _ in skipped}))
            ax.set_title(f"{STRUCTURE_TITLE.get(structure, plain(structure, 20))}\n"
                         f"{plain(text_of(largest.row, 'shapes'), 48)}"
                         + (f"\n({refused}: solves forests only)" if skipped else ""), fontsize=7)
            ax.grid(True, which="major", alpha=0.25)
        for ax in axes[-1]:
            ax.set_xlabel("held-out violation (batch mean)")
        for ax in axes[:, 0]:
            ax.set_ylabel("forward + backward\nms per sample")
        handles = [Line2D([], [], color=style[s][0], marker=style[s][1], ls="", label=s.label) for s in series]
        handles.append(Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="#333333",
                              markersize=8, label="Pareto front"))
        fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False, fontsize=6.5)
        fig.suptitle("Time against violation per structure (largest cell of each, every method that solves it)")
        drawn = [p for _, _, shown, _ in panels for p, _ in shown]
        notes = [dtype_note(drawn),
                 "forward + backward per sample, median of interleaved repetitions"
                 + ("; cvxpylayers timed on fewer samples than the batch (bench.csv's timed_batch)"
                    if any(p.series.method == "cvxpylayers" for p in drawn) else "")
                 + "; learned_dual at λ = 0 takes the fitted row's time (the same computation); per-sample λ* is "
                   "not drawn (its time would exclude finding λ*)",
                 skipped_note(not_measured) + (" (at the cells drawn)" if not_measured else "")]
        return figures.save(fig, path, env, notes=notes)


# ----------------------------------------------------------------------------- convergence per structure

def plot_convergence_per_structure(conv_rows, path, env=None, log: Log | None = None) -> str | None:
    """The dual solver's violation (top row) and dual gap ``g(λ) − f*`` (bottom row) per sweep,
    float64, one column per structure and one line per cell (its size).  A gap that is not
    positive (rounding at the optimum) is drawn at a marked floor.  Drawn when the rows hold a
    structure other than the chain; returns None otherwise."""
    log = log or warn
    need = ("cell", "structure", "size", "iteration", "violation_max", "dual_gap_max")
    if lacks_columns(conv_rows, need, "dual_convergence_per_structure", "convergence.csv", log):
        return None
    skips, pts = Skips("dual_convergence_per_structure", "convergence.csv"), []
    for r in conv_rows:
        try:
            pts.append((_structure(r), int(number(r, "cell", integer=True, nonneg=True)),
                        int(number(r, "size", positive=True, integer=True)),
                        int(number(r, "iteration", integer=True, nonneg=True)),
                        number(r, "violation_max", nonneg=True), number(r, "dual_gap_max", empty_ok=True)))
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
            cells = sorted({(p[2], p[1]) for p in mine})
            for i, (size, cell) in enumerate(cells):
                line = sorted((p for p in mine if p[1] == cell), key=lambda p: p[3])
                color = cmap(i / max(1, len(cells) - 1) * 0.85)
                its = [p[3] for p in line]
                axes[0, j].plot(its, [max(p[4], floor) for p in line], color=color, marker=".", ms=3, lw=1,
                                label=f"side {size}")
                gap_pts = [(p[3], max(abs(p[5]), floor)) for p in line if p[5] is not None]
                if gap_pts:
                    axes[1, j].plot(*zip(*gap_pts), color=color, marker=".", ms=3, lw=1)
            axes[0, j].set_title(STRUCTURE_TITLE.get(structure, plain(structure, 20)), fontsize=7)
            if len(cells) > 1:
                axes[0, j].legend(fontsize=5.5, frameon=False)
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
        axes[1, 0].set_ylabel(r"$|g(\lambda) - f^*|$ (batch max)")
        sides = sorted({p[2] for p in pts})
        fig.suptitle(rf"Dual solver per sweep, float64, finest side {', '.join(map(str, sides))} (dotted: values at "
                     rf"or below ${sci(floor)}$, drawn there)")
        return figures.save(fig, path, env, notes=["computed in float64 (the solver's working dtype), on each "
                                                   "cell's held-out instances; gap: g(λ) − f* against the float64 "
                                                   "certified reference; on forests that are not chains (the star) "
                                                   "the solver starts from the closed form (warm_start) and "
                                                   "certifies it at sweep 0"])


# ----------------------------------------------------------------------------- backward

def plot_backward(rows, path, env=None, log: Log | None = None) -> str | None:
    """The backward's cost and accuracy on one figure: the gradient's relative error (against
    the implicit gradient at tolerance 1e-13) against the backward time per sample, one panel
    per structure; the implicit backward after a forward solved to each tolerance, and autograd
    through each number of plain sweeps (the unrolled backward), each point labelled with its
    tolerance or sweeps.  Returns None without data."""
    log = log or warn
    need = ("family", "kind", "parameter", "bwd_per_sample_ms", "gradient_error")
    if lacks_columns(rows, need, "backward_implicit_vs_unrolled", "backward.csv", log):
        return None
    skips, pts = Skips("backward_implicit_vs_unrolled", "backward.csv"), []
    for r in rows:
        kind = text_of(r, "kind")
        try:
            if kind not in KIND_STYLE:
                raise BadValue(f"kind={plain(kind, 20)!r} is not one of {', '.join(KIND_STYLE)}")
            pts.append((text_of(r, "family"), kind, number(r, "parameter", positive=True),
                        number(r, "bwd_per_sample_ms", positive=True), number(r, "gradient_error", nonneg=True),
                        number(r, "fwd_per_sample_ms", empty_ok=True, positive=True)))
        except BadValue as err:
            skips.add(r, str(err))
    skips.report(log)
    if not pts:
        log("backward_implicit_vs_unrolled: no usable rows; not written")
        return None
    families = _ordered({p[0] for p in pts})
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
                for p, x, y in zip(line, xs, ys):
                    label = f"{p[2]:.0e}" if kind == "implicit" else f"{p[2]:g}"
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=5, color=color)
            ax.set_xscale("log")
            ax.set_yscale("log")
            quiet_minor_ticks(ax)
            ax.set_title(STRUCTURE_TITLE.get(family, plain(family, 20)), fontsize=7)
            ax.set_xlabel("backward, ms per sample")
            ax.grid(True, which="major", alpha=0.25)
        axes[0, 0].set_ylabel("gradient relative error\n(vs implicit at tol 1e-13)")
        handles = [Line2D([], [], color=c, marker=m, label=label + (" — labels: tolerance" if k == "implicit"
                                                                    else " — labels: sweeps"))
                   for k, (c, m, label) in KIND_STYLE.items()]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=6.5)
        fig.suptitle("The backward's cost and accuracy: implicit differentiation against unrolled sweeps")
        return figures.save(fig, path, env, notes=[
            "computed in float64; backward time per sample, median of interleaved repetitions (forward excluded); "
            "error: relative 2-norm of the gradient of a random linear loss"])
