"""Figures for papers, from a results folder (:func:`plot_results`) or from measured rows.

Every figure is written as a PNG (300 dpi) and a PDF side by side by
:func:`convex_attention.io.figures.save`, sized for a paper, with a footer naming the
environment the numbers were measured in.  The figures:

* :mod:`.speed`: the core benchmark's bars, time per sample against problem size, and the
  speed-up of exact over cvxpylayers;
* :mod:`.consistency`: the violation per method and dtype, the dual solver's convergence,
  and the speed-consistency trade-off;
* :mod:`.maps`: one instance's attention maps under each method;
* :mod:`.graphs`: structures other than chains: the time–violation Pareto figure and the dual
  solver's convergence per structure, and the backward's cost and accuracy (implicit against
  unrolled, from the graph benchmark's ``backward.csv``).

What they share (reading and validating results, series and styles) is in
:mod:`._common`.  Reports of what was left out go to the ``log`` callable of
:func:`plot_results` (default: a :class:`PlotWarning`); the ``plot`` command prints them
on stderr.
"""
from __future__ import annotations

import os

from ._common import DTYPE_COLORS, DTYPE_EPS, METHOD_COLORS, Log, PlotWarning, load_env, read_results, warn
from .consistency import plot_convergence, plot_tradeoff, plot_violation
from .graphs import is_chain, plot_backward, plot_convergence_per_structure, plot_pareto_per_structure
from .maps import plot_attention_maps
from .speed import core_ratios, plot_core_benchmark, plot_speedup, plot_time_vs_size

__all__ = ["PlotWarning", "read_results", "plot_core_benchmark", "core_ratios", "plot_time_vs_size",
           "plot_violation", "plot_convergence", "plot_speedup", "plot_tradeoff", "plot_attention_maps",
           "plot_results", "FIGURES", "DTYPE_EPS", "DTYPE_COLORS", "METHOD_COLORS", "plot_pareto_per_structure",
           "plot_convergence_per_structure", "plot_backward", "STRUCTURE_FIGURES"]

# name -> (input file, what it shows); plot_results writes them in this order
FIGURES = {
    "time_vs_size": ("bench.csv", "time per sample vs problem size"),
    "violation": ("bench.csv", "violation per method and dtype"),
    "speedup_exact_vs_cvxpylayers": ("bench.csv", "speed-up of exact over each cvxpylayers backend"),
    "tradeoff": ("bench.csv", "time per sample vs held-out violation, with the Pareto front"),
    "dual_convergence": ("convergence.csv", "the dual solver's convergence"),
    "attention_maps": ("example.npz", "one instance's maps under each method"),
    "pareto_per_structure": ("bench.csv", "time per sample vs held-out violation per structure, Pareto front"),
    "dual_convergence_per_structure": ("convergence.csv", "the dual solver's violation and gap per sweep, per "
                                                          "structure"),
    "backward_implicit_vs_unrolled": ("backward.csv", "the backward's cost and accuracy, implicit vs unrolled"),
}
#: The figures of structures other than chains (a folder of chains only has none of them).
STRUCTURE_FIGURES = ("pareto_per_structure", "dual_convergence_per_structure", "backward_implicit_vs_unrolled")
_BENCH_FIGURES = {"time_vs_size": plot_time_vs_size, "violation": plot_violation,
                  "speedup_exact_vs_cvxpylayers": plot_speedup, "tradeoff": plot_tradeoff}


def plot_results(folder: str, out: str | None = None, log: Log | None = None) -> list[str]:
    """Every figure the results folder has data for, into ``out`` (default:
    ``folder/figures``); returns the PNG paths written.

    Problems (an unusable file, skipped rows, a figure without data) go to ``log``, one
    message each (default: a :class:`PlotWarning`).  A figure without data is not written,
    and a copy left in ``out`` by an earlier run is removed, so the folder never shows a
    figure the results do not support."""
    log = log or warn
    out = out or os.path.join(folder, "figures")
    env = load_env(folder, log)
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
    conv_rows = rows_of("convergence.csv", ("cell", "iteration"))
    # the chain figures' panels are keyed by dimensionality and levels: they draw the chains
    # only, and the structure figures every structure side by side
    chain_rows = [r for r in rows or [] if is_chain(r)]
    chain_conv = [r for r in conv_rows or [] if is_chain(r)]
    if rows and not chain_rows:
        log("bench.csv holds no chain: the chain figures (time_vs_size, violation, speedup_exact_vs_cvxpylayers, "
            "tradeoff) are not drawn; pareto_per_structure draws its structures")
    if chain_rows:
        for name, fn in _BENCH_FIGURES.items():
            written.append(fn(chain_rows, figure_path(name), env, log))
    if chain_conv:
        written.append(plot_convergence(chain_conv, figure_path("dual_convergence"), env, log))
    if rows and len(chain_rows) < len(rows):
        written.append(plot_pareto_per_structure(rows, figure_path("pareto_per_structure"), env, log))
    if conv_rows and len(chain_conv) < len(conv_rows):
        written.append(plot_convergence_per_structure(conv_rows, figure_path("dual_convergence_per_structure"),
                                                      env, log))
    backward_rows = rows_of("backward.csv", ("kind",))
    if backward_rows:
        written.append(plot_backward(backward_rows, figure_path("backward_implicit_vs_unrolled"),
                                     load_env(folder, log, "graphs.json"), log))
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
