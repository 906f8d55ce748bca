"""Figures: what they draw is what was measured (docs/design.md §6), and `plot` never
tracebacks on damaged results."""
import csv
import hashlib
import json
import os
import re
import struct
import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import read_csv_rows
from matplotlib.backends.backend_agg import FigureCanvasAgg

from convex_attention import cli
from convex_attention.bench import plots
from convex_attention.bench.plots import (
    DTYPE_EPS,
    consistency,
    core_ratios,
    plot_core_benchmark,
    plot_results,
    read_results,
    speed,
)
from convex_attention.bench.plots import _common as plot_common
from convex_attention.bench.results import COLUMNS
from convex_attention.io import figures
from convex_attention.io.files import atomic_csv

ENV = {"torch": "2.13.0", "processor": "cpu", "torch_threads": 2}
# the columns of bench.csv before backends, spreads and checksums (older results folders)
OLD_COLUMNS = ("cell", "status", "reason", "method", "dual_kind", "generator", "scale", "dims", "size", "levels",
               "batch", "temperature", "dtype", "device", "seed", "shapes", "n_cells", "timed_batch", "repeats",
               "fwd_ms", "bwd_ms", "total_ms", "per_sample_ms", "peak_mem_mb", "violation_max", "violation_mean",
               "max_abs_err", "primal_gap", "dual_gap", "iterations_mean", "iterations_max")
# per-sample time = COST[series] · n^SLOPE[series] (ms), so fitted slopes are known
COST = {"softmax": 1e-4, "exact": 2e-4, "dual": 1e-3, "learned_dual": 3e-4, "diffcp-clarabel": 0.2, "moreau": 0.02}
SLOPE = {"softmax": 1.0, "exact": 1.0, "dual": 1.2, "learned_dual": 1.0, "diffcp-clarabel": 1.5, "moreau": 1.3}
VIOL = {"softmax": 0.3, "exact": 3e-8, "dual": 2e-8, "zero": 0.3, "fitted": 0.28, "amortised": 1e-3,
        "per_sample": 1e-7, "diffcp-clarabel": 1e-13, "moreau": 1e-11}


def bench_row(method, *, kind="", backend="", dims=2, size=8, levels=2, dtype="float32", batch=4, cell=0,
              violation=None, timed=True):
    n = sum((size // 2 ** k) ** dims for k in range(levels))
    key = backend or method
    tb = 2 if backend else batch
    row = {"cell": cell, "status": "ok", "reason": "", "method": method, "backend": backend, "dual_kind": kind,
           "generator": "lesion", "scale": 1.0, "dims": dims, "size": size, "levels": levels, "batch": batch,
           "temperature": 1.0, "dtype": dtype, "device": "cpu", "seed": 0,
           "shapes": "+".join("x".join([str(size // 2 ** k)] * dims) for k in range(levels)), "n_cells": n,
           "timed_batch": tb, "repeats": 5,
           "violation_mean": VIOL[kind or key] if violation is None else violation}
    row["violation_max"] = row["violation_mean"]
    if timed:
        per_sample = COST[key] * n ** SLOPE[key] * (1.5 if kind == "amortised" else 1.0)
        total = per_sample * tb
        for col, share in (("fwd_ms", 0.4), ("bwd_ms", 0.6), ("total_ms", 1.0)):
            row[col], row[col + "_q1"], row[col + "_q3"] = share * total, 0.9 * share * total, 1.2 * share * total
        row["per_sample_ms"] = per_sample
    else:
        row["reason"] = "timed once, in the 'fitted' row"
    return row


def cell_rows(dims=2, size=8, levels=2, dtype="float32", cell=0, backends=("diffcp-clarabel", "moreau")):
    kw = {"dims": dims, "size": size, "levels": levels, "dtype": dtype, "cell": cell}
    rows = [bench_row(m, **kw) for m in ("softmax", "exact", "dual")]
    rows += [bench_row("learned_dual", kind=k, timed=k in ("fitted", "amortised"), **kw)
             for k in ("zero", "fitted", "amortised", "per_sample")]
    rows += [bench_row("cvxpylayers", backend=b, **kw) for b in backends]
    return rows


def sweep_rows():
    rows, cell = [], 0
    for dims in (2, 3):
        for size in (4, 8, 16):
            rows += cell_rows(dims=dims, size=size, cell=cell)
            cell += 1
    return rows


def write_bench(folder, rows, columns=COLUMNS):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "bench.csv")
    if "checksum" in columns:
        atomic_csv(path, columns, rows, checksum=True)
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return path


def write_example(folder, size=8):
    rng = np.random.default_rng(0)
    arrays = {"scores0": rng.normal(size=(size, size)), "scores1": rng.normal(size=(size // 2, size // 2)),
              "fitted_dual0": 0.1 * rng.normal(size=(size // 2, size // 2)),
              "amortised_dual0": 0.1 * rng.normal(size=(size // 2, size // 2))}
    np.savez(os.path.join(folder, "example.npz"), levels=np.array(2), temperature=np.array([1.0, 1.0]), **arrays)


def write_convergence(folder):
    rows = [{"cell": c, "dims": 2, "size": 8, "levels": 2, "temperature": 1.0, "iteration": i,
             "violation_mean": 10.0 ** -i, "violation_max": 10.0 ** -i, "dual_gap_mean": 10.0 ** (-2 * i),
             "dual_gap_max": 10.0 ** (-2 * i)} for c in (0, 1) for i in range(5)]
    with open(os.path.join(folder, "convergence.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def figs(monkeypatch):
    """Every figure a plot function finishes, by file name; rendering (slow) is replaced by
    placeholder files, so what is written and removed can still be checked."""
    seen = {}

    def spy(fig, path, env=None, notes=()):
        name = os.path.splitext(os.path.basename(path))[0]
        seen[name], seen[name + ":footer"] = fig, figures.env_line(env, notes)
        plt.close(fig)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            for ext in (".png", ".pdf"):
                with open(os.path.splitext(path)[0] + ext, "wb") as f:
                    f.write(b"placeholder")
        return path

    monkeypatch.setattr(figures, "save", spy)
    return seen


def run(argv):
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse errors (UsageError goes through parser.error)
        return exc.code


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def all_texts(fig):
    out = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return "\n".join(out)


# ---------------------------------------------------------------------------- basics

@pytest.mark.slow  # draws every core figure (~0.5 s)
def test_core_benchmark_figure(tmp_path):
    rows = [{"method": m, "shapes": "8x8+4x4", "batch": 4, "dtype": "float32", "fwd_ms": 1.0 + i, "bwd_ms": 0.5}
            for i, m in enumerate(["softmax", "exact", "learned_dual+loss"])]
    path = plot_core_benchmark(rows, {"exact/softmax": 2.0}, str(tmp_path / "core.png"),
                               {"torch": "2.13.0", "processor": "cpu", "torch_threads": 2})
    assert os.path.getsize(path) > 1000 and os.path.getsize(str(tmp_path / "core.pdf")) > 1000


@pytest.mark.slow  # renders six figures at 300 dpi and as PDF
def test_every_figure_renders_as_png_and_pdf_for_a_paper_with_the_environment_footer_below_it(tmp_path,
                                                                                             monkeypatch):
    folder = str(tmp_path / "r")
    write_bench(folder, sweep_rows())
    write_convergence(folder)
    write_example(folder)
    with open(os.path.join(folder, "bench.json"), "w") as f:
        f.write('{"environment": {"torch": "2.13.0", "processor": "cpu", "torch_threads": 2}}')
    real, rendered = figures.save, {}

    def keep(fig, path, env=None, notes=()):
        rendered[os.path.splitext(os.path.basename(path))[0]] = (fig, figures.env_line(env, notes))
        return real(fig, path, env, notes)

    monkeypatch.setattr(figures, "save", keep)
    notes = []
    written = plot_results(folder, log=notes.append)
    assert notes == []
    assert {os.path.splitext(os.path.basename(p))[0] for p in written} == \
        set(plots.FIGURES) - set(plots.STRUCTURE_FIGURES)  # a folder of chains has no structure figure
    for name, (fig, line) in rendered.items():
        png = os.path.join(folder, "figures", name + ".png")
        assert os.path.getsize(png) > 1000 and os.path.getsize(png[:-4] + ".pdf") > 1000
        width, _ = png_size(png)
        assert width <= 7.6 * 300, (name, width / 300)  # at most a two-column width at 300 dpi
        renderer = FigureCanvasAgg(fig).get_renderer()  # a closed figure has lost its canvas
        assert line.startswith(figures.env_line(ENV)) and "load average not recorded" in line
        footer = [t for t in fig.texts if t.get_text() == line]
        assert len(footer) == 1, name
        top = footer[0].get_window_extent(renderer).y1
        drawn = [ax.get_tightbbox(renderer).y0 for ax in fig.axes if ax.get_visible()] + \
                [leg.get_window_extent(renderer).y0 for leg in fig.legends]
        assert top < min(drawn), name  # the footer covers nothing


# ---------------------------------------------------------------------------- figures that tell the truth

def test_core_benchmark_ratio_is_computed_from_the_bars_it_draws(figs):
    rows = [
        core_row("softmax", 1.5, fwd_ms=1.0, bwd_ms=1.0),
        core_row("exact", 3.0, fwd_ms=1.0, bwd_ms=1.0),
        core_row("exact", 0.2, shapes="4x4+2x2", fwd_ms=0.1, bwd_ms=0.1),
        core_row("cvxpylayers", 100.0, shapes="4x4+2x2", backend="slow", batch=2, dtype="float64"),
        core_row("cvxpylayers", 10.0, shapes="4x4+2x2", backend="fast", batch=2, dtype="float64"),
    ]
    # the caller's numbers disagree with the bars: the figure prints the bars' ratio
    plot_core_benchmark(rows, {"exact/softmax": 99.0, "cvxpylayers/exact per sample": 99.0}, "core.png")
    fig = figs["core"]
    heights = [[p.get_height() for p in ax.patches] for ax in fig.axes[:2]]
    assert heights[0][:2] == pytest.approx([1e3 * 1.5 / 4, 1e3 * 3.0 / 4])  # the totals, per sample (µs)
    ratio = heights[0][1] / heights[0][0]
    text = all_texts(fig)
    assert f"exact/softmax = {ratio:.3g}" in text and "99" not in text
    cvx = (1e3 * 10.0 / 2) / (1e3 * 0.2 / 4)  # the fastest backend's bar over exact's, per sample
    assert f"cvxpylayers/exact per sample = {cvx:.3g} (fastest: fast)" in text
    assert core_ratios(rows, ["exact/softmax"])["exact/softmax"][0] == pytest.approx(2.0)


def test_core_benchmark_title_names_each_backend_s_own_batch_one_line_each(figs):
    """moreau is timed on 16 samples and diffcp on 2: the panel's title said 'cvxpylayers:
    B = 2, float64; cvxpylayers: B = 16, float64' on one line, naming no backend, and ran into
    the other panel's axis label."""
    rows = [
        core_row("exact", 0.2, shapes="4x4+2x2", fwd_ms=0.1, bwd_ms=0.1),
        core_row("cvxpylayers", 100.0, shapes="4x4+2x2", backend="slow", batch=2, dtype="float64"),
        core_row("cvxpylayers", 10.0, shapes="4x4+2x2", backend="fast", batch=16, dtype="float64"),
    ]
    plot_core_benchmark(rows, {}, "core.png")
    (title,) = [ax.get_title() for ax in figs["core"].axes if ax.get_title()]
    assert title.split("\n")[:4] == ["4x4+2x2, per sample", "exact: B = 4, float32", "slow: B = 2, float64",
                                      "fast: B = 16, float64"]


def test_attention_maps_share_one_colour_scale_per_level_and_state_n_max_p(tmp_path, figs):
    write_example(str(tmp_path))
    plots.plot_attention_maps(str(tmp_path / "example.npz"), "maps.png", log=pytest.fail)
    fig = figs["maps"]
    grid = [ax for ax in fig.axes if ax.images]
    rows = [grid[i:i + 3] for i in range(0, len(grid), 3)]  # 2 levels + 1 residual per method
    names = [r[0].get_ylabel().replace("\n", " ") for r in rows]
    assert names == ["softmax", "learned_dual (fitted λ)", "learned_dual (amortised λ)", "dual", "exact"]
    for col in range(3):
        clims = {r[col].images[0].get_clim() for r in rows}
        assert len(clims) == 1  # one colour scale across methods
    for col in range(2):
        vmax = rows[0][col].images[0].get_clim()[1]
        assert vmax == pytest.approx(max(float(r[col].images[0].get_array().max()) for r in rows))
        assert rows[0][col].images[0].get_clim()[0] == 0.0
        for r in rows:
            p = np.asarray(r[col].images[0].get_array())
            assert f"= {p.size * p.max():.3g}$" in r[col].get_xlabel()  # N·max p, below the panel
    for r in rows:  # residual annotation off the data: below the axes, nothing written inside
        assert len(r[2].texts) == 0 and r"\|\cdot\|_1" in r[2].get_xlabel()


def test_violation_keeps_each_compute_dtype_in_its_own_panel_with_its_rounding_level(figs):
    rows = cell_rows(dtype="float32", cell=0) + cell_rows(dtype="float64", cell=1)
    for r in rows:
        if r["method"] == "exact" and r["dtype"] == "float64":
            r["violation_mean"] = 0.0  # exact in float64 can be exactly consistent
    notes = []
    plots.plot_violation(rows, "v.png", log=notes.append)
    fig = figs["v"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["computed in float32", "computed in float64"]
    # cvxpylayers solves in float64 whatever the cell's dtype: its boxes sit in the float64 panel only
    ticks = [[t.get_text() for t in ax.get_xticklabels()] for ax in axes]
    assert len(ticks[0]) == 7 and not any("cvxpylayers" in t for t in ticks[0])
    assert len(ticks[1]) == 9 and sum("cvxpylayers" in t for t in ticks[1]) == 2
    assert "learned_dual\nλ = 0" in ticks[0]  # two short lines: no labels running into each other
    for ax, dtype in zip(axes, ("float32", "float64")):
        # the dashed line is the dtype's rounding level at the panel's cell, not its machine ε (which sits
        # above what it would bound: a consistent float32 answer reads about ε/4)
        level = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"]
        assert level == [pytest.approx(consistency.rounding_level([(8, 8), (4, 4)], dtype))]
        assert DTYPE_EPS[dtype] / 20 < level[0] < DTYPE_EPS[dtype] / 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("rounding level" in t and "not a bound" in t for t in labels)
    assert any("exactly 0" in t for t in labels)
    assert "cvxpylayers: solves in float64" in figs["v:footer"] and "rounding level:" in figs["v:footer"]
    assert notes == []


@pytest.mark.parametrize("shapes", [[(8, 8), (4, 4)], [(16, 16), (8, 8), (4, 4)], [(4, 4, 4), (2, 2, 2)],
                                    [(12,), (4,)]])
def test_the_rounding_level_is_what_rounding_alone_leaves_of_a_consistent_answer(shapes):
    """An exactly consistent answer, rounded: about a quarter of ε (each entry's relative error is
    at most ε/2, so the L1 residual is at most ε per constraint, and typically a fraction of it),
    never 0 (formed above float64's precision), and a finer dtype leaves less."""
    for dtype in ("float64", "float32", "bfloat16"):
        level = consistency.rounding_level(shapes, dtype)
        assert DTYPE_EPS[dtype] / 20 < level < DTYPE_EPS[dtype], (dtype, level)
    assert consistency.rounding_level(shapes, "float32", seed=1) != consistency.rounding_level(shapes, "float32")


def test_time_vs_size_panels_per_dimension_and_level_on_one_y_scale_with_spread_and_fitted_slopes(figs):
    rows = sweep_rows()
    plots.plot_time_vs_size(rows, "t.png", log=pytest.fail)
    fig = figs["t"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["2-D grids, 2 levels: forward pass", "2-D grids, 2 levels: backward pass",
                      "3-D grids, 2 levels: forward pass", "3-D grids, 2 levels: backward pass"]
    shared = fig.axes[0].get_shared_y_axes()
    assert all(shared.joined(fig.axes[0], ax) for ax in fig.axes)  # forward and backward on one scale
    n2 = {r["n_cells"] for r in rows if r["dims"] == 2}
    n3 = {r["n_cells"] for r in rows if r["dims"] == 3}
    for ax, sizes in zip(fig.axes, (n2, n2, n3, n3)):
        for line in ax.lines:
            if line.get_marker() not in ("None", None, "") and len(line.get_xdata()) > 1:
                assert set(line.get_xdata()) <= sizes  # never a line across 2-D and 3-D
    exact_fwd = [c for c in fig.axes[0].containers if c.lines[0].get_color() == plots.METHOD_COLORS["exact"]]
    seg = exact_fwd[0].lines[2][0].get_segments()[0]  # the first size's error bar: q1..q3 per sample
    r0 = next(r for r in rows if r["method"] == "exact" and r["dims"] == 2 and r["size"] == 4)
    assert sorted(y for _, y in seg) == pytest.approx([r0["fwd_ms_q1"] / 4, r0["fwd_ms_q3"] / 4])
    # every series here is an exact power law over 3 sizes spanning 16x: its slope is drawn, on the panel
    slopes = sorted(t.get_text() for t in fig.axes[0].texts)
    assert "$n^{1.00}$" in slopes and "$n^{1.50}$" in slopes and "$n^{1.30}$" in slopes
    legend = "\n".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "cvxpylayers (diffcp-clarabel) [float64]" in legend and "exact\n" in legend + "\n"
    assert len(fig.legends[0].get_texts()) <= 12  # one entry per series and per mark, not per line
    footer = figs["t:footer"].replace("\n", " ")
    assert "20 row(s) carry no time of their own" not in footer
    assert "row(s) carry no time of their own" in footer  # λ = 0 and per-sample: said, not alarmed
    assert "computed in float32 (cvxpylayers: float64" in footer


def test_slopes_only_over_three_sizes_spanning_a_decade_where_the_times_follow_a_power_law():
    fit = plot_common.fit_power_law([10, 100, 1000], [1.0, 10.0, 100.0])
    assert fit.slope == pytest.approx(1.0) and (fit.n_lo, fit.n_hi, fit.sizes) == (10, 1000, 3)
    assert plot_common.fit_power_law([10, 1000], [1.0, 100.0]) is None  # two sizes: no slope
    assert plot_common.fit_power_law([100, 200, 400], [1.0, 2.0, 4.0]) is None  # spans 4x only
    noisy = plot_common.fit_power_law([10, 100, 1000], [1.0, 0.3, 2.0])  # not a power law: no slope at all
    assert noisy is None
    # a fixed overhead bends the small sizes: the slope is fitted over the sizes that follow a power law
    ns = [10, 100, 1000, 10_000, 100_000, 1_000_000]
    bent = plot_common.fit_power_law(ns, [5.0 + 1e-3 * n for n in ns])
    assert bent is not None and bent.n_lo >= 10_000 and bent.n_hi == 1_000_000 and bent.slope > 0.9
    assert plot_common.fit_power_law(ns[:5], [5.0 + 1e-3 * n for n in ns[:5]]) is None  # still bending: none


def test_a_wide_or_thin_timing_is_marked_low_confidence(figs):
    rows = sweep_rows()
    wide = next(r for r in rows if r["method"] == "exact" and r["dims"] == 2 and r["size"] == 8)
    wide["fwd_ms_q1"], wide["fwd_ms_q3"] = 0.2 * wide["fwd_ms"], 1.5 * wide["fwd_ms"]  # IQR 130 % of the median
    plots.plot_time_vs_size(rows, "t.png", log=pytest.fail)

    def marked(ax):
        return [tuple(o) for c in ax.collections if c.get_paths() and c.get_linestyle()[0][1] is not None
                for o in c.get_offsets()]

    assert marked(figs["t"].axes[0]) == [(wide["n_cells"], pytest.approx(wide["fwd_ms"] / 4))]
    assert marked(figs["t"].axes[1]) == []  # its backward time is as tight as the rest
    assert plot_common.low_confidence({"total_ms": 1.0, "total_ms_q1": 0.9, "total_ms_q3": 1.1, "repeats": 2},
                                      "total_ms")  # two repetitions: quartiles mean nothing
    assert not plot_common.low_confidence({"total_ms": 1.0, "total_ms_q1": 0.9, "total_ms_q3": 1.1, "repeats": 5},
                                          "total_ms")


def test_speedup_one_line_per_backend_per_panel_skipped_cells_marked_and_the_batches_stated(figs):
    rows = sweep_rows()
    skipped = bench_row("cvxpylayers", backend="moreau", size=32, cell=99)
    skipped.update(status="skipped", reason="problem size 1344 cells > cap --cvx-max-cells 1000")
    notes = []
    assert plots.plot_speedup(rows + [skipped], "s.png", log=notes.append) == "s.png"
    fig = figs["s"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "cvxpylayers (diffcp-clarabel)" in labels and "cvxpylayers (moreau)" in labels
    assert any(t.startswith("hollow ") and t.endswith("not measured, over --cvx-max-cells") for t in labels)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["2-D grids, 2 levels", "3-D grids, 2 levels"]
    ax = fig.axes[0]
    drawn = [line for line in ax.lines if len(line.get_xdata()) > 1 and line.get_marker() not in ("None", "")]
    assert len(drawn) == 2 and len({line.get_color() for line in drawn}) == 2  # one per backend, told apart
    assert len({line.get_linestyle() for line in drawn}) == 1  # the target line alone is dotted
    gone = [line for line in ax.lines if line.get_mfc() == "none" and list(line.get_xdata()) == [skipped["n_cells"]]]
    assert len(gone) == 1
    footer = figs["s:footer"].replace("\n", " ")
    assert "exact timed on B = 4 samples" in footer and "cvxpylayers on 2 of them" in footer
    assert "1 row(s) over --cvx-max-cells" in footer
    no_cvx = [r for r in sweep_rows() if r["method"] != "cvxpylayers"]
    assert plots.plot_speedup(no_cvx, "s2.png", log=notes.append) is None and "s2" not in figs
    assert "no sweep cell with both exact and cvxpylayers" in notes[-1]


TIME_COLUMNS = ("fwd_ms", "fwd_ms_q1", "fwd_ms_q3", "bwd_ms", "bwd_ms_q1", "bwd_ms_q3", "total_ms", "total_ms_q1",
                "total_ms_q3", "per_sample_ms")


def scaled(row, factor, **changes):
    """``row`` with every time multiplied by ``factor`` and ``changes`` applied: another cell."""
    out = {**row, **changes}
    for col in TIME_COLUMNS:
        if isinstance(row.get(col), float):
            out[col] = row[col] * factor
    return out


def marked_lines(ax):
    """The data lines of an axes (markers, more than one point): [(xs, ys, line)]."""
    return [(list(line.get_xdata()), list(line.get_ydata()), line) for line in ax.lines
            if line.get_marker() not in ("None", None, "") and len(line.get_xdata()) > 1]


def test_speedup_never_joins_cells_of_another_dtype_batch_or_device_into_one_line(figs):
    """A review found vertical zig-zags: cells of two batches (or dtypes, or devices) at one size
    were one line.  Each (backend, setting) is its own line, told apart by its style, and each
    device its own panel."""
    base = [r for r in sweep_rows() if r["dims"] == 2]
    rows = list(base)
    rows += [scaled(r, 0.5 if r["method"] == "exact" else 1.0, batch=8, cell=r["cell"] + 100) for r in base]
    rows += [scaled(r, 2.0, dtype="float64", cell=r["cell"] + 200) for r in base]
    rows += [scaled(r, 0.1 if r["method"] != "cvxpylayers" else 1.0, device="cuda", cell=r["cell"] + 300)
             for r in base if r["backend"] != "diffcp-clarabel"]
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    fig = figs["s"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["2-D grids, 2 levels, cpu", "2-D grids, 2 levels, cuda"]
    cpu = marked_lines(axes[0])
    assert len(cpu) == 2 * 3  # two backends in three settings: B = 4 and 8 in float32, B = 4 in float64
    for xs, _, _ in cpu + marked_lines(axes[1]):
        assert len(set(xs)) == len(xs) == 3  # one point per size: never two cells stacked on one line
    assert len({(line.get_color(), str(line.get_linestyle())) for *_, line in cpu}) == 6
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"line style: float32 cells, B = 4", "line style: float32 cells, B = 8",
            "line style: float64 cells, B = 4"} <= set(labels)
    assert "never pooled" in figs["s:footer"].replace("\n", " ")
    # each line is its own cells' ratio: the B = 8 cells' exact is twice as fast, so their speed-up doubles
    by_style = {(line.get_color(), line.get_linestyle()): ys for _, ys, line in cpu}
    for color in {c for c, _ in by_style}:
        assert by_style[(color, "--")] == pytest.approx([2 * y for y in by_style[(color, "-")]])


@pytest.mark.slow  # draws the speed figures (~0.5 s)
def test_time_vs_size_keeps_batches_and_temperatures_apart_and_each_bar_is_one_cells_quartiles(figs):
    """A review found the time figure pooling batch sizes (and temperatures) into one median, a value
    no cell measured, and labelling the min-max of their quartiles an interquartile range."""
    base = [r for r in sweep_rows() if r["dims"] == 2]
    rows = list(base) + [scaled(r, 3.0, batch=16, cell=r["cell"] + 100) for r in base]
    rows += [scaled(r, 5.0, temperature=0.5, cell=r["cell"] + 200) for r in base]
    plots.plot_time_vs_size(rows, "t.png", log=pytest.fail)
    fig = figs["t"]
    ax = fig.axes[0]  # forward pass
    exact = [c for c in ax.containers if c.lines[0].get_color() == plots.METHOD_COLORS["exact"]]
    assert len(exact) == 3  # one curve per setting
    for c in exact:
        xs = list(c.lines[0].get_xdata())
        assert len(set(xs)) == len(xs) == 3
    measured = {}  # per setting: the per-sample forward medians and quartiles of its own cells
    for r in rows:
        if r["method"] == "exact":
            tb = r["timed_batch"]
            measured.setdefault((r["batch"], r["temperature"]), []).append(
                (r["n_cells"], r["fwd_ms"] / tb, r["fwd_ms_q1"] / tb, r["fwd_ms_q3"] / tb))
    drawn = []
    for c in exact:
        ys = list(c.lines[0].get_ydata())
        bars = [sorted(y for _, y in seg) for seg in c.lines[2][0].get_segments()]
        drawn.append([v for point in sorted(zip(c.lines[0].get_xdata(), ys, [b[0] for b in bars],
                                                [b[1] for b in bars])) for v in point])
    expected = [[v for point in sorted(e) for v in point] for e in measured.values()]
    for curve in drawn:  # every point a measured median, every bar that cell's own quartiles
        assert any(curve == pytest.approx(e) for e in expected), curve
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"line style: B = 4, temperature 1.0", "line style: B = 16, temperature 1.0",
            "line style: B = 4, temperature 0.5"} <= set(labels)
    assert "its bar that cell's interquartile range" in figs["t:footer"].replace("\n", " ")


def error_row(row, reason="MemoryError: out of memory"):
    out = {k: v for k, v in row.items() if k not in TIME_COLUMNS and not k.startswith("violation")}
    return {**out, "status": "error", "reason": reason}


def test_failed_rows_are_named_in_every_footer_and_marked_where_skipped_cells_are(tmp_path, figs):
    """A review found rows with status error left out of every figure without a word."""
    rows = sweep_rows()
    for i, r in enumerate(rows):
        if r["dims"] == 2 and r["size"] == 16 and (r["method"] == "exact" or r["backend"] == "moreau"):
            rows[i] = error_row(r)
    write_bench(str(tmp_path), rows)
    plot_results(str(tmp_path), log=pytest.fail)
    for name in ("time_vs_size", "violation", "speedup_exact_vs_cvxpylayers", "tradeoff"):
        footer = figs[name + ":footer"].replace("\n", " ")
        assert "FAILED, not drawn: 2 row(s) (status error): exact: MemoryError: out of memory; " \
               "cvxpylayers (moreau): MemoryError: out of memory" in footer, name
    labels = [t.get_text() for t in figs["speedup_exact_vs_cvxpylayers"].legends[0].get_texts()]
    assert any(t.endswith("not measured, failed (MemoryError)") for t in labels)
    failed_n = next(r["n_cells"] for r in rows if r["status"] == "error")
    ax = figs["speedup_exact_vs_cvxpylayers"].axes[0]
    assert [list(line.get_xdata()) for line in ax.lines if line.get_mfc() == "none"] == [[failed_n]]


def test_speedup_names_why_each_cell_was_not_measured_on_its_own_device(figs):
    """A review found every skipped cvxpylayers row labelled "over --budget or --cvx-max-cells", whatever
    the sweep's reason, and skipped cells of one device marked on another's panel."""
    base = [r for r in sweep_rows() if r["dims"] == 2]
    rows = list(base)
    for r in base:  # cuda cells: moreau (a CUDA build) solves there, diffcp-clarabel does not
        if r["backend"] == "diffcp-clarabel":
            rows.append({**error_row(r), "status": "skipped", "device": "cuda", "cell": r["cell"] + 100,
                         "reason": "diffcp-clarabel solves on cpu; see the cpu cells"})
        else:
            rows.append(scaled(r, 0.1, device="cuda", cell=r["cell"] + 100))
    gone = next(i for i, r in enumerate(rows) if r["backend"] == "moreau" and r["device"] == "cpu")
    rows[gone] = {**error_row(rows[gone]), "status": "skipped", "reason": "backend moreau is not installed"}
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    fig = figs["s"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    reasons = [t.split("not measured, ")[1] for t in labels if "not measured, " in t]
    assert reasons == ["backend not installed", "on a device its backend does not solve on"]  # a shape each
    assert not any("budget" in t for t in labels)
    cpu, cuda = [ax for ax in fig.axes if ax.get_visible()]
    assert cpu.get_title().endswith("cpu") and cuda.get_title().endswith("cuda")

    def hollow(ax):
        return {(line.get_color(), tuple(line.get_xdata())) for line in ax.lines if line.get_mfc() == "none"}

    styles = plot_common.styles_for({plot_common.Series("cvxpylayers", "", b) for b in ("diffcp-clarabel", "moreau")})
    moreau, clarabel = (styles[plot_common.Series("cvxpylayers", "", b)][0] for b in ("moreau", "diffcp-clarabel"))
    assert hollow(cpu) == {(moreau, (rows[gone]["n_cells"],))}  # the cpu cell, on the cpu panel only
    assert hollow(cuda) == {(clarabel, tuple(sorted({r["n_cells"] for r in base})))}
    shapes = [{line.get_marker() for line in ax.lines if line.get_mfc() == "none"} for ax in (cpu, cuda)]
    assert len(shapes[0]) == len(shapes[1]) == 1 and shapes[0] != shapes[1]  # a shape per reason
    footer = figs["s:footer"].replace("\n", " ")
    assert "1 row(s) backend not installed" in footer and "3 row(s) on a device its backend does not solve on" in footer


def test_core_benchmark_titles_each_panel_with_its_own_ratio(figs):
    """A review found the first panel's exact/softmax printed in every panel's title."""
    def row(method, total, shapes):
        return {"method": method, "backend": "", "shapes": shapes, "batch": 4, "dtype": "float32",
                "fwd_ms": total / 2, "bwd_ms": total / 2, "total_ms": total}

    rows = [row("softmax", 1.0, "8x8+4x4"), row("exact", 2.0, "8x8+4x4"),
            row("softmax", 1.0, "16x16+8x8"), row("exact", 5.0, "16x16+8x8")]
    plot_core_benchmark(rows, {"exact/softmax": 2.0}, "core.png")
    titles = [ax.get_title() for ax in figs["core"].axes]
    assert "exact/softmax = 2" in titles[0] and "exact/softmax = 5" in titles[1]
    assert "exact/softmax = 2" not in titles[1]
    assert core_ratios(rows, ["exact/softmax"])["exact/softmax"][0] == pytest.approx(2.0)  # the first panel's


def test_tradeoff_places_every_series_marks_the_pareto_front_and_the_zero_floor(figs):
    rows = cell_rows(size=16, dtype="float64")
    next(r for r in rows if r["method"] == "exact")["violation_mean"] = 0.0
    notes = []
    plots.plot_tradeoff(rows, "to.png", log=notes.append)
    fig = figs["to"]
    ax = fig.axes[0]
    pts = {}
    for c in ax.containers:
        line = c.lines[0]
        pts[(line.get_color(), line.get_marker())] = (line.get_xdata()[0], line.get_ydata()[0],
                                                      line.get_markerfacecolor())
    assert len(pts) == 9  # softmax, 4 learned-dual kinds, dual, exact, 2 backends
    styles = plot_common.styles_for({plot_common.Series(r["method"], r["dual_kind"], r["backend"]) for r in rows})
    fitted = pts[styles[plot_common.Series("learned_dual", "fitted")]]
    for kind in ("zero", "per_sample"):  # no time of their own: the fitted row's, drawn hollow
        x, _, face = pts[styles[plot_common.Series("learned_dual", kind)]]
        assert x == fitted[0] and face == "none"
    floor = min(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":")
    assert pts[styles[plot_common.Series("exact")]][1] == floor < 1e-13  # 0 drawn at the floor
    labels = "\n".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "exactly 0" in labels and "Pareto front" in labels and "fitted-λ row" in labels
    # the front: softmax (fastest), exact (violation 0, next fastest); nothing else is both faster and better
    front = ax.collections[-1].get_offsets()
    assert [tuple(p) for p in front] == [(pts[styles[plot_common.Series("softmax")]][0], 0.3),
                                          (pts[styles[plot_common.Series("exact")]][0], floor)]
    assert notes == []


def test_tradeoff_gives_float64_solvers_no_credit_below_the_cells_dtype_epsilon(figs):
    # exact 3e-8, cvxpylayers 1e-13 and 1e-11: all below ε(float32); two panels (2 and 3 levels)
    rows = cell_rows(size=16, dtype="float32") + cell_rows(size=16, levels=3, dtype="float32", cell=1)
    plots.plot_tradeoff(rows, "to.png", log=pytest.fail)
    fig = figs["to"]
    ax = fig.axes[0]
    styles = plot_common.styles_for({plot_common.Series(r["method"], r["dual_kind"], r["backend"]) for r in rows})
    where = {}
    for c in ax.containers:
        line = c.lines[0]
        where[(line.get_color(), line.get_marker())] = (line.get_xdata()[0], line.get_ydata()[0])
    front = {tuple(p) for p in ax.collections[-1].get_offsets()}
    exact = where[styles[plot_common.Series("exact")]]
    assert exact in front  # faster than every float64 solver, and as consistent as float32 can say
    for backend in ("diffcp-clarabel", "moreau"):
        assert where[styles[plot_common.Series("cvxpylayers", "", backend)]] not in front
    band = [p for p in ax.patches]  # the band below ε(float32)
    assert len(band) == 1 and band[0].get_y() + band[0].get_height() == pytest.approx(DTYPE_EPS["float32"])
    labels = "\n".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "no credit" in labels
    shared = ax.get_shared_x_axes()
    assert all(shared.joined(ax, other) for other in fig.axes if other.get_visible())


def test_tradeoff_draws_each_times_spread_and_a_borrowed_time_keeps_its_confidence(figs):
    """The error bars span the fitted row's total-time IQR per sample; λ = 0 and per-sample λ,
    drawn at the fitted row's time, carry its low confidence too (their own rows have no time)."""
    rows = cell_rows(size=16, dtype="float64")
    fitted_row = next(r for r in rows if r["dual_kind"] == "fitted")
    fitted_row["repeats"] = plot_common.MIN_CONFIDENT_REPEATS - 1  # too few repeats: low confidence
    for r in rows:
        if r["dual_kind"] in ("zero", "per_sample"):
            r["timed_batch"] = None  # nothing timed in these rows: the spread is the fitted row's
    plots.plot_tradeoff(rows, "to.png", log=pytest.fail)
    ax = figs["to"].axes[0]
    styles = plot_common.styles_for({plot_common.Series(r["method"], r["dual_kind"], r["backend"]) for r in rows})
    by_style = {(c.lines[0].get_color(), c.lines[0].get_marker()): c for c in ax.containers}
    for series, source in ((plot_common.Series("softmax"), rows[0]),
                           (plot_common.Series("learned_dual", "zero"), fitted_row)):
        bar = by_style[styles[series]]
        assert bar.has_xerr
        (segment,) = bar.lines[2][0].get_segments()
        assert segment[:, 0] == pytest.approx([source["total_ms_q1"] / source["timed_batch"],
                                               source["total_ms_q3"] / source["timed_batch"]])
    # mark_low_confidence's squares (the front's circles are larger)
    marks = [col for col in ax.collections if hasattr(col, "get_sizes") and list(col.get_sizes()) == [85]]
    (squares,) = marks
    borrowed = {styles[plot_common.Series("learned_dual", k)] for k in ("zero", "fitted", "per_sample")}
    where = {(by_style[s].lines[0].get_xdata()[0], by_style[s].lines[0].get_ydata()[0]) for s in borrowed}
    assert {tuple(p) for p in squares.get_offsets()} == where


def test_tradeoff_front_steps_at_epsilon_and_the_legend_says_only_what_is_drawn(figs):
    rows = cell_rows(size=16)  # float32 cells: exact's 3e-8 lies below ε
    untimed = bench_row("dual", size=16, timed=False, cell=1)  # no time, and no fitted row to share one
    plots.plot_tradeoff(rows + [untimed], "to.png", log=pytest.fail)
    fig, ax = figs["to"], figs["to"].axes[0]
    front = ax.collections[-1].get_offsets()
    (step,) = [line for line in ax.lines if line.get_drawstyle() == "steps-post"]
    # the front's line never dips below ε: what lies below is consistent to rounding, not ranked
    assert list(step.get_ydata()) == pytest.approx([max(y, DTYPE_EPS["float32"]) for _, y in front])
    assert min(y for _, y in front) < DTYPE_EPS["float32"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    tagged = {label for label in labels if label.endswith("[float64]")}
    assert tagged and all(label.startswith("cvxpylayers") for label in tagged)
    assert any("per-sample λ excludes finding λ" in label for label in labels)
    # in the wording every figure's untimed rows take (_common.untimed_listing), naming the series
    footer = " ".join(figs["to:footer"].split())
    assert "1 ok row(s) hold no time per sample (nor a fitted row's to borrow)" in footer
    assert "not drawn there: dual" in footer, footer
    plots.plot_tradeoff([r for r in rows if r["dual_kind"] != "per_sample"], "to.png", log=pytest.fail)
    labels = [t.get_text() for t in figs["to"].legends[0].get_texts()]
    (hollow,) = [label for label in labels if "fitted-λ row" in label]
    assert "per-sample" not in hollow and "hold no time per sample" not in figs["to:footer"]


def test_tradeoff_keeps_each_device_in_its_own_panel_and_names_it(figs):
    """A review found the panels keyed without the device: one device's cells were silently left out."""
    rows = cell_rows(size=16) + [scaled(r, 0.1, device="cuda", cell=1) for r in cell_rows(size=16)
                                 if r["method"] != "cvxpylayers"]
    plots.plot_tradeoff(rows, "to.png", log=pytest.fail)
    titles = [ax.get_title() for ax in figs["to"].axes if ax.get_visible()]
    assert len(titles) == 2 and titles[0].endswith(", cpu") and titles[1].endswith(", cuda")


def test_the_tradeoff_footer_names_cvxpylayers_only_where_it_is_drawn(figs):
    rows = [r for r in cell_rows(size=16) if r["method"] != "cvxpylayers"]
    plots.plot_tradeoff(rows, "to.png", log=pytest.fail)
    assert "cvxpylayers" not in figs["to:footer"]
    plots.plot_tradeoff(cell_rows(size=16), "to.png", log=pytest.fail)
    assert "cvxpylayers timed on fewer samples than the batch" in figs["to:footer"].replace("\n", " ")


def test_every_footer_carries_the_load_threads_and_dtype(tmp_path, figs):
    folder = str(tmp_path / "r")
    write_bench(folder, sweep_rows())
    run = {"load_average_start": [2.4, 2.0, 1.5], "load_average_end": [1.2, 1.1, 1.0], "torch_threads": 1,
           "cpu_count": 2}
    with open(os.path.join(folder, "bench.json"), "w") as f:
        json.dump({"environment": {"torch": "2.13.0", "processor": "cpu", "torch_threads": 4}, "runs": [run]}, f)
    plot_results(folder, log=pytest.fail)
    for name in ("time_vs_size", "violation", "speedup_exact_vs_cvxpylayers", "tradeoff"):
        footer = figs[name + ":footer"]
        assert "load average (1 min) 2.40 at start, 1.20 at end, 2 CPUs" in footer, name
        assert "1 torch thread " in footer, name  # the run's own record, singular
        assert "float32" in footer, name


# ---------------------------------------------------------------------------- damaged results


def plot_cli(folder, capsys, *extra):
    code = run(["plot", str(folder), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"   \n\n", "empty file"),
    (",".join(COLUMNS).encode() + b"\n", "a header and no rows"),
    (b"a,b,c\n1,2,3\n", "missing column(s) status, method"),
    (b"\x00\x01\x02garbage\xff\xfe", "NUL bytes"),
    (b"status,method\n\xe9,exact\n", "not UTF-8 text"),
    (b"\xef\xbb\xbfstatus,method\nok,exact\n", "byte-order mark"),
    (b"status,method\x00\nok,exact\n", "NUL"),
    (b"lorem ipsum dolor\nsit amet\n", "missing column"),
])
def test_plot_refuses_an_unusable_bench_csv_with_one_line_and_writes_nothing(tmp_path, capsys, content, message, figs):
    (tmp_path / "bench.csv").write_bytes(content)
    code, err = plot_cli(tmp_path, capsys)
    assert code == 2
    error = [line for line in err.splitlines() if "error:" in line]
    assert len(error) == 1 and message in error[0] and "nothing to plot" in error[0]
    assert not os.path.exists(tmp_path / "figures")  # no empty figure folder left behind


@pytest.mark.slow  # draws every figure of a results folder (~0.7 s)
def test_a_row_cut_off_mid_write_is_named_and_never_plotted(tmp_path, capsys, figs):
    rows = sweep_rows()
    path = write_bench(str(tmp_path), rows)
    with open(path) as f:
        text = f.read().rstrip("\n")
    last = text.rsplit("\n", 1)[1]
    value = repr(float(rows[-1]["violation_mean"]))
    assert value in last
    # the last row is cut inside a number: what remains parses, but must not be believed
    cut = text[:text.rindex(value) + 4]
    with open(path, "w") as f:
        f.write(cut)
    kept = read_results(path, log=lambda m: None)
    assert len(kept) == len(rows) - 1
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0
    n = len(rows) + 1  # the cut row's line number
    assert f"line {n} (no line end: cut off)" in err


@pytest.mark.slow  # draws every figure (~0.8 s); the checksum itself has fast tests in test_tables
def test_a_value_cut_short_inside_the_file_fails_its_checksum_and_is_named(tmp_path, capsys, figs):
    rows = sweep_rows()
    rows[3]["violation_mean"] = 1.9665132189317092e-07
    path = write_bench(str(tmp_path), rows)
    with open(path) as f:
        text = f.read().replace("1.9665132189317092e-07", "1.9665132", 1)
    with open(path, "w") as f:
        f.write(text)
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0
    assert "line 5 (checksum mismatch" in err


def test_rows_with_unusable_numbers_are_skipped_and_named_the_rest_is_plotted(tmp_path, capsys, figs):
    rows = sweep_rows()
    bad = {2: ("fwd_ms", "abc"), 5: ("violation_mean", "nan"), 8: ("n_cells", "inf"), 11: ("per_sample_ms", "-1"),
           14: ("method", "sinkhorn"), 17: ("status", "okay"), 20: ("fwd_ms_q1", "99999")}
    for i, (col, value) in bad.items():
        rows[i][col] = value
    write_bench(str(tmp_path), rows, columns=[c for c in COLUMNS if c != "checksum"])
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0
    for i, (col, _) in bad.items():
        assert f"line {i + 2} (" in err, (col, err)
    assert "fwd_ms='abc' is not a number" in err and "violation_mean='nan' is not finite" in err
    assert "method='sinkhorn' is not a known method" in err and "outside its quartiles" in err
    assert set(figs) >= {"time_vs_size", "violation", "tradeoff", "speedup_exact_vs_cvxpylayers"}


@pytest.mark.slow  # draws the speed figures per case (~0.5 s)
@pytest.mark.parametrize("value", [1e300, 1e-300])
def test_a_time_no_clock_can_measure_is_skipped_and_named(tmp_path, capsys, figs, value):
    rows = sweep_rows()
    for col in ("fwd_ms", "bwd_ms", "total_ms", "per_sample_ms"):  # quartiles kept: only the bound can refuse
        rows[2][col] = value
    write_bench(str(tmp_path), rows)
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0
    assert f"line 4 (dual): fwd_ms={value:g} is not a measurable time" in err
    assert f"per_sample_ms={value:g} is not a measurable time" in err


@pytest.mark.slow  # end to end or a boundary of a path lighter tests take (fast suite < 1 min)
def test_a_figure_matplotlib_cannot_lay_out_is_named_not_written_and_its_warnings_do_not_leak(tmp_path, capsys,
                                                                                               figs):
    rows = sweep_rows()
    for r in rows[:4]:
        r["violation_mean"] = r["violation_max"] = 1e300  # 300 decades above the others: a log axis overflows
    write_bench(str(tmp_path), rows)
    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, err = plot_cli(tmp_path, capsys)
    assert code == 0
    assert "violation: matplotlib could not lay it out" in err and "not written" in err
    written = os.listdir(tmp_path / "figures")
    assert "violation.png" not in written and "time_vs_size.png" in written
    assert plt.get_fignums() == before  # the refused figure is closed


@pytest.mark.slow  # draws every figure of a folder (~0.8 s)
def test_nan_tokens_in_bench_json_are_read_as_null_with_a_warning(tmp_path, capsys, figs):
    write_bench(str(tmp_path), cell_rows())  # one cell: the JSON is what is read here
    (tmp_path / "bench.json").write_text('{"environment": {"torch": "2", "gpu": NaN}, "rows": [{"x": Infinity}]}')
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0 and "bench.json: not strict JSON (2 NaN/Infinity token(s)" in err
    (tmp_path / "bench.json").write_text("{not json")
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0 and "bench.json: not readable JSON" in err


_UNUSABLE_EXAMPLES = [
    (lambda p: p.write_bytes(b""), "not a readable .npz"),
    (lambda p: p.write_bytes(b"PK\x03\x04 garbage"), "not a readable .npz"),
    (lambda p: np.savez(str(p), levels=np.array(2), temperature=np.array([1.0, np.nan]),
                        scores0=np.zeros((4, 4)), scores1=np.zeros((2, 2))), "'temperature'"),
    (lambda p: np.savez(str(p), levels=np.array(2), temperature=np.array([1.0, 1.0]),
                        scores0=np.zeros((4, 4)), scores1=np.full((2, 2), np.inf)), "NaN or Inf"),
    (lambda p: np.savez(str(p), levels=np.array(2), temperature=np.array([1.0, 1.0]),
                        scores0=np.zeros((4, 4)), scores1=np.zeros((3, 3))), "do not nest"),
    (lambda p: np.savez(str(p), levels=np.array(2), temperature=np.array([1.0, 1.0]),
                        scores0=np.zeros((4, 4)), scores1=np.zeros((2, 2)), fitted_dual0=np.zeros((3, 3))),
     "'fitted_dual0'"),
    (lambda p: os.mkfifo(str(p)), "not a regular file"),  # a named pipe used to block the read forever
    (lambda p: os.mkdir(str(p)), "not a regular file"),
]


@pytest.mark.parametrize("make, message", _UNUSABLE_EXAMPLES)
def test_an_unusable_example_is_refused_by_name_and_no_map_is_drawn(tmp_path, make, message, figs):
    make(tmp_path / "example.npz")
    with pytest.raises(ValueError, match=re.escape(message)):
        plots.plot_attention_maps(str(tmp_path / "example.npz"), str(tmp_path / "maps.png"), log=pytest.fail)
    assert not os.path.exists(tmp_path / "maps.png")


# through the command: one case refused on reading (the pipe that used to block it), one after
# (grids that do not nest); every refusal is the same ValueError to `plot`
@pytest.mark.slow  # draws the attention-map figure per case (~0.8 s)
@pytest.mark.parametrize("make, message", [_UNUSABLE_EXAMPLES[i] for i in (4, 6)])
def test_an_unusable_example_is_reported_and_no_map_is_drawn(tmp_path, capsys, make, message, figs):
    make(tmp_path / "example.npz")
    write_bench(str(tmp_path), sweep_rows())
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0 and message in err and "attention_maps not written" in err
    assert not os.path.exists(tmp_path / "figures" / "attention_maps.png")


def test_a_pickled_example_runs_no_code(tmp_path, capsys, figs):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.savez(str(tmp_path / "example.npz"), levels=np.array(2), temperature=np.array([1.0, 1.0]),
             scores0=np.array([Evil()], dtype=object), scores1=np.zeros((2, 2)))
    code, err = plot_cli(tmp_path, capsys)
    assert code == 2 and "example.npz" in err and not marker.exists()


def test_convergence_rows_with_unusable_values_are_named(tmp_path, capsys, figs):
    write_convergence(str(tmp_path))
    path = tmp_path / "convergence.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[2]["levels"] = "two"  # line 4
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0 and "dual_convergence: skipped 1 row(s) of convergence.csv" in err and "line 4" in err


@pytest.mark.slow  # draws every figure of a results folder (~0.6 s)
def test_no_figure_is_written_without_data_and_a_stale_one_is_removed(tmp_path, capsys, figs):
    rows = sweep_rows()
    write_bench(str(tmp_path), rows)
    assert plot_cli(tmp_path, capsys)[0] == 0
    assert os.path.exists(tmp_path / "figures" / "speedup_exact_vs_cvxpylayers.png")
    for r in rows:
        if r["method"] == "cvxpylayers":
            r["status"], r["reason"] = "skipped", "over budget"
    write_bench(str(tmp_path), rows)
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0 and "speedup_exact_vs_cvxpylayers: no sweep cell" in err and "removed" in err
    assert not os.path.exists(tmp_path / "figures" / "speedup_exact_vs_cvxpylayers.png")
    assert not os.path.exists(tmp_path / "figures" / "speedup_exact_vs_cvxpylayers.pdf")
    for r in rows:
        r["status"] = "skipped"
    write_bench(str(tmp_path), rows)
    before = {name: (tmp_path / "figures" / name).read_bytes() for name in os.listdir(tmp_path / "figures")}
    code, err = plot_cli(tmp_path, capsys)
    assert code == 2 and "nothing to plot" in err
    # a command that fails removes nothing: the earlier figures stay, and the one line says so
    assert {name: (tmp_path / "figures" / name).read_bytes() for name in os.listdir(tmp_path / "figures")} == before
    assert "tradeoff.png" in before and "left untouched" in err and len(err.strip().splitlines()) == 1


def test_a_plot_that_draws_nothing_leaves_no_figure_folder_it_made(tmp_path, capsys, figs):
    write_bench(str(tmp_path), [{**r, "status": "skipped", "reason": "over budget"} for r in sweep_rows()])
    assert plot_results(str(tmp_path), log=lambda m: None) == []
    assert not os.path.exists(tmp_path / "figures")
    code, err = plot_cli(tmp_path, capsys, "--out", str(tmp_path / "new" / "figs"))
    assert code == 2 and "nothing to plot" in err and not os.path.exists(tmp_path / "new" / "figs")
    (tmp_path / "mine").mkdir()  # a folder that was there is the user's: left, even empty
    assert plot_cli(tmp_path, capsys, "--out", str(tmp_path / "mine"))[0] == 2 and (tmp_path / "mine").is_dir()


@pytest.mark.slow  # draws every figure of a results folder (~0.7 s): CI runs it
def test_an_older_results_file_without_backends_spreads_or_checksums_still_plots(tmp_path, figs):
    rows = [r for r in sweep_rows() if r["backend"] in ("", "diffcp-clarabel")]
    write_bench(str(tmp_path), rows, columns=OLD_COLUMNS)
    with open(os.path.join(str(tmp_path), "bench.json"), "w") as f:
        f.write('{"environment": {"torch": "2.13.0", "processor": "cpu", "torch_threads": 1}}')  # no "runs"
    notes = []
    written = plot_results(str(tmp_path), log=notes.append)
    assert len(written) == 4 and notes == []
    labels = [t.get_text() for t in figs["speedup_exact_vs_cvxpylayers"].legends[0].get_texts()]
    assert "cvxpylayers" in labels  # no backend column: the method's own name
    assert "load average not recorded" in figs["time_vs_size:footer"]  # an older file: said, never invented
    assert not any(c.has_yerr for ax in figs["time_vs_size"].axes for c in ax.containers)  # no spread recorded


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x"), "is a file"),
])
def test_plot_usage_errors_for_the_results_argument(tmp_path, capsys, setup, message, figs):
    target = tmp_path / "res"
    setup(target)
    code, err = plot_cli(target, capsys)
    assert code == 2 and message in err


def test_plot_refuses_an_out_that_is_a_file(tmp_path, capsys, figs):
    write_bench(str(tmp_path), sweep_rows())
    (tmp_path / "out").write_text("x")
    code, err = plot_cli(tmp_path, capsys, "--out", str(tmp_path / "out"))
    assert code == 2 and "is a file" in err


def test_a_flat_curve_gets_no_slope_even_where_it_follows_a_power_law():
    assert plot_common.fit_power_law([100, 1000, 10_000], [1.0, 0.95, 0.9]) is None  # n^-0.02: overhead-bound
    assert plot_common.fit_power_law([100, 1000, 10_000], [1.0, 1.3, 1.6]) is None  # rises 1.6x: no power law read
    assert plot_common.fit_power_law([100, 1000, 10_000], [1.0, 1.6, 2.6]).slope == pytest.approx(0.21, abs=0.01)


# ---------------------------------------------------------------------------- structures (issue 18)

RUN = {"load_average_start": [3.1, 2.0, 1.5], "load_average_end": [2.2, 1.1, 1.0], "torch_threads": 1, "cpu_count": 2}


def structure_rows():
    """A chain sweep plus two cells of each of two structures, where exact is skipped (its
    registry refusal) and every other method ran."""
    rows = sweep_rows()
    cell = len({r["cell"] for r in rows})
    for structure, shapes in (("axial", "16x16+16x1+1x16"), ("grid_regions", "16x16+2x2+4")):
        for size in (8, 16):
            for r in cell_rows(size=size, levels=3, cell=cell):
                r = {**r, "structure": structure, "shapes": shapes if size == 16 else shapes.replace("16", "8")}
                if r["method"] == "exact":
                    r.update(status="skipped", reason="method 'exact' solves forests only; use method 'dual'",
                             violation_mean="", violation_max="", per_sample_ms="")
                rows.append(r)
            cell += 1
    return rows


def write_structure_convergence(folder):
    rows = [{"cell": c, "structure": s, "dims": 2, "size": 8, "levels": 3, "temperature": 1.0, "iteration": i,
             "violation_mean": 10.0 ** -i, "violation_max": 10.0 ** -i, "dual_gap_mean": 10.0 ** (-2 * i),
             "dual_gap_max": 10.0 ** (-2 * i)} for c, s in ((0, "chain"), (1, "axial"), (2, "mixed"))
            for i in range(6)]
    atomic_csv(os.path.join(folder, "convergence.csv"), list(rows[0]), rows)


def write_backward(folder):
    rows = [{"family": f, "kind": "implicit", "parameter": tol, "batch": 4, "fwd_per_sample_ms": 2.0,
             "bwd_per_sample_ms": 0.5, "gradient_error": tol * 10} for f in ("axial", "mixed")
            for tol in (1e-4, 1e-8)]
    rows += [{"family": f, "kind": "unrolled", "parameter": n, "batch": 4, "fwd_per_sample_ms": 0.3 * n,
              "bwd_per_sample_ms": 0.4 * n, "gradient_error": 0.5 / n} for f in ("axial", "mixed") for n in (1, 8)]
    atomic_csv(os.path.join(folder, "backward.csv"), list(rows[0]), rows)
    write_graphs_json(folder, GRAPH_PARTS)


GRAPH_PARTS = ["convergence", "gradients", "speed", "backward", "amortised", "linsat"]


def write_graphs_json(folder, parts, threads=1):
    """graphs.json of a graph-benchmark run that made ``parts`` (None: no config.parts)."""
    record = {"environment": {"torch": "2.13.0", "processor": "cpu", "torch_threads": threads}, "runs": [RUN]}
    if parts is not None:
        record["config"] = {"parts": parts, "threads": threads}
    with open(os.path.join(folder, "graphs.json"), "w") as f:
        json.dump(record, f)


@pytest.mark.slow  # draws every figure of a results folder (~1 s)
def test_structures_get_their_own_figures_and_the_chain_figures_draw_chains_only(tmp_path, figs):
    folder = str(tmp_path / "r")
    rows = structure_rows()
    capped = next(r for r in rows if r.get("structure") == "axial" and r["size"] == 16 and r["backend"] == "moreau")
    capped.update(status="skipped", reason="above the size cap (--cvx-max-cells)", violation_mean="",
                  violation_max="", per_sample_ms="")
    write_bench(folder, rows)
    write_structure_convergence(folder)
    with open(os.path.join(folder, "bench.json"), "w") as f:
        json.dump({"environment": {"torch": "2.13.0", "processor": "cpu", "torch_threads": 4}, "runs": [RUN]}, f)
    written = plot_results(folder, log=pytest.fail)
    names = {os.path.splitext(os.path.basename(p))[0] for p in written}
    assert {"pareto_per_structure", "dual_convergence_per_structure", "tradeoff"} <= names
    pareto = figs["pareto_per_structure"]
    titles = [ax.get_title() for ax in pareto.axes if ax.get_visible()]
    assert [t.split("\n")[0] for t in titles] == ["chain", "axial (rows + columns)", "grid + regions"]
    assert "16x16+16x1+1x16" in titles[1], "each structure at its largest cell"
    assert titles[1].endswith("(exact: solves forests only)") and "forests" not in titles[0], "exact solves chains"
    # the rings are the points no other point beats in both time (x) and violation (y), violations compared
    # only above the cells' dtype ε (as the tradeoff figure draws them): brute force
    eps = DTYPE_EPS["float32"]
    for ax in (a for a in pareto.axes if a.get_visible()):
        points = {(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers}
        rings = {tuple(p) for p in ax.collections[-1].get_offsets().tolist()}
        front = {p for p in points
                 if not any(q[0] <= p[0] and max(q[1], eps) <= max(p[1], eps) and q != p for q in points)}
        assert rings == front and len(front) >= 2, (ax.get_title(), rings, front)
    # per-sample λ* has no time of its own that includes finding λ*: never on the front
    labels = {t.get_text() for t in pareto.legends[0].get_texts()}
    assert "learned_dual (per-sample λ*)" not in labels and "learned_dual (λ = 0)" in labels
    # the chain figures' panels are keyed by levels: a structure's cell (3 maps) must not stand in for a 3-level chain
    chains = {(r["dims"], r["levels"]) for r in rows if r.get("structure", "chain") == "chain"}
    assert {t.split(":")[0] for t in (ax.get_title() for ax in figs["tradeoff"].axes) if t} == \
        {f"{d}-D, {levels} levels" for d, levels in chains}
    assert {t.split(":")[0] for t in (ax.get_title() for ax in figs["time_vs_size"].axes) if t} == \
        {f"{d}-D grids, {levels} levels" for d, levels in chains}
    assert not any(r["shapes"] in all_texts(figs["tradeoff"]) for r in rows if r.get("structure", "chain") != "chain")
    conv_rows = read_csv_rows(os.path.join(folder, "convergence.csv"))
    chain_cells = {r["cell"] for r in conv_rows if r["structure"] == "chain"}
    assert len(figs["dual_convergence"].axes[0].get_lines()) == len(chain_cells), "one line per chain cell"
    conv = figs["dual_convergence_per_structure"]
    assert [ax.get_title() for ax in conv.axes[:3]] == ["chain", "axial (rows + columns)", "mixed (two resolutions)"]
    assert "1 row(s) over --cvx-max-cells (at the cells drawn)" in " ".join(figs["pareto_per_structure:footer"].split())
    for name in ("pareto_per_structure", "dual_convergence_per_structure"):
        footer = figs[name + ":footer"]
        assert "load average (1 min) 3.10 at start, 2.20 at end, 2 CPUs" in footer, name
        assert "1 torch thread " in footer and "float" in footer, name


def panel_points(ax):
    """The (time, violation) points of a time–violation panel, one per drawn series."""
    return [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers]


def test_pareto_per_structure_draws_one_sweep_cell_per_panel_levels_and_seed_included(figs):
    """A review found the panel's cell filter without levels and seed: chains of two depths (and two
    seeds) were mixed in one panel."""
    rows = [{**r, "structure": "chain"} for r in cell_rows(size=16, levels=2, cell=0)]
    rows += [{**r, "structure": "chain"} for r in cell_rows(size=16, levels=3, cell=1)]
    rows += [{**scaled(r, 0.5), "structure": "chain", "seed": 1, "cell": 2} for r in cell_rows(size=16, levels=3)]
    rows += [{**r, "structure": "axial", "shapes": "16x16+16x1+1x16", "cell": 3} for r in cell_rows(size=16)]
    plots.plot_pareto_per_structure(rows, "p.png", log=pytest.fail)
    chain = figs["p"].axes[0]
    assert chain.get_title().startswith("chain\n16x16+8x8+4x4")
    drawn = panel_points(chain)
    assert len(drawn) == 8  # one point per series (softmax, 3 learned-dual kinds, dual, exact, 2 backends)
    times = {r["per_sample_ms"] for r in rows if r["cell"] == 1 and r.get("per_sample_ms")}  # the cell drawn
    assert all(any(x == pytest.approx(t) for t in times) for x, _ in drawn), "no time of another cell, nor a median"


def test_pareto_per_structure_ranks_violations_above_the_dtype_epsilon_with_spread_and_confidence(figs):
    """A review found float64 solvers on the per-structure front for violations below the cells'
    dtype ε, against the tradeoff figure's rule, and no spread or low-confidence marks."""
    rows = [{**r, "structure": "chain"} for r in cell_rows(size=16, levels=3)]
    rows += [{**r, "structure": "axial", "shapes": "16x16+16x1+1x16", "cell": 1} for r in cell_rows(size=16)]
    for r in rows:
        if r["method"] == "cvxpylayers":
            r["repeats"] = 2  # two repetitions: low confidence
    plots.plot_pareto_per_structure(rows, "p.png", log=pytest.fail)
    fig = figs["p"]
    styles = plot_common.styles_for({plot_common.Series(r["method"], r["dual_kind"], r["backend"]) for r in rows})
    for ax in (a for a in fig.axes if a.get_visible()):
        where = {(c.lines[0].get_color(), c.lines[0].get_marker()): (c.lines[0].get_xdata()[0],
                                                                     c.lines[0].get_ydata()[0]) for c in ax.containers}
        rings = {tuple(p) for p in ax.collections[-1].get_offsets().tolist()}
        for backend in ("diffcp-clarabel", "moreau"):  # 1e-13 and 1e-11: below ε(float32), and slower
            assert where[styles[plot_common.Series("cvxpylayers", "", backend)]] not in rings, ax.get_title()
        assert where[styles[plot_common.Series("exact")]] in rings  # faster, and as consistent as float32 says
        assert all(c.has_xerr for c in ax.containers)  # the interquartile range of every time
        marked = {tuple(o) for c in ax.collections if c.get_linestyle()[0][1] is not None for o in c.get_offsets()}
        assert marked == {where[styles[plot_common.Series("cvxpylayers", "", b)]]
                          for b in ("diffcp-clarabel", "moreau")}
    assert [p for p in fig.axes[0].patches] and fig.axes[0].patches[0].get_y() + fig.axes[0].patches[0].get_height() \
        == pytest.approx(DTYPE_EPS["float32"])  # the band below ε
    labels = "\n".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "no credit" in labels and "low confidence" in labels
    # it draws no per-sample λ*, so its legend does not speak of one (a review found it did)
    assert "per-sample" not in labels


def test_every_setting_has_its_own_line_style_and_a_shared_one_is_named():
    """A review found two of six settings drawn alike ("--" and a short dash) and the
    seventh reusing the first's style without a word."""
    settings = [("float32", str(b), "1.0", "lesion", "1.0", "0") for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    styles = plot_common.setting_styles(settings)
    first = [styles[s][0] for s in settings[:len(plot_common.SETTING_LINESTYLES)]]
    assert len({str(ls) for ls in first}) == len(first)  # every pattern its own
    assert styles[settings[8]][0] == styles[settings[0]][0]
    assert styles[settings[8]][1] == "9 B = 256 (style of 1)" and styles[settings[0]][1] == "1 B = 1"
    assert plot_common.setting_styles(settings[:3])[settings[2]][1] == "B = 4"  # numbered only when styles repeat


def test_every_figure_names_a_setting_in_one_set_of_words():
    """The speed figures' line styles and the convergence figure's markers name a setting
    alike (they had two word tables: "τ = 0.5" in one, "temperature 0.5" in the other); a
    field only the convergence figure reads (the device) is named there, and a missing value
    reads "?"."""
    fields = (*plot_common.SETTING_FIELDS, "device")
    settings = [("float32", "4", "0.5", "lesion", "1.0", "0", "cpu"), ("float64", "4", "2.0", "lesion", "1.0", "0", ""),
                ("float64", "4", "2.0", "lesion", "1.0", "0", "cuda")]
    labels = plot_common.setting_labels(settings, fields)
    assert labels[settings[0]] == "float32 cells, temperature 0.5, cpu"
    assert labels[settings[1]] == "float64 cells, temperature 2.0, ?"
    styles = plot_common.setting_styles([s[:-1] for s in settings])
    assert styles[settings[0][:-1]][1] == "float32 cells, temperature 0.5"
    assert plot_common.setting_labels(settings[1:2], fields) == {settings[1]: ""}  # one setting: nothing to tell apart

def test_convergence_per_structure_labels_each_line_with_its_levels(figs):
    """A review found two lines labelled "side 16" (a 2- and a 3-level chain)."""
    rows = [{"cell": c, "structure": s, "dims": 2, "size": 16, "levels": levels, "temperature": 1.0, "iteration": i,
             "violation_mean": 10.0 ** -i, "violation_max": 10.0 ** -i, "dual_gap_mean": 10.0 ** (-2 * i),
             "dual_gap_max": 10.0 ** (-2 * i)}
            for c, s, levels in ((0, "chain", 2), (1, "chain", 3), (2, "axial", 3)) for i in range(4)]
    plots.plot_convergence_per_structure(rows, "c.png", log=pytest.fail)
    labels = [t.get_text() for t in column_legend(figs["c"], 0).get_texts()]
    assert labels == ["side 16, 2 levels", "side 16, 3 levels"]
    # another structure's "levels" column counts its maps (a star of 4 maps onto one has 5)
    rows += [{**r, "cell": 3, "size": 32} for r in rows if r["structure"] == "axial"]
    plots.plot_convergence_per_structure(rows, "d.png", log=pytest.fail)
    assert [t.get_text() for t in column_legend(figs["d"], 1).get_texts()] == ["side 16, 3 maps", "side 32, 3 maps"]


def column_legend(fig, column):
    """The legend of a convergence-per-structure column: under its bottom panel."""
    top_row = [ax for ax in fig.axes if ax.get_title()]
    return fig.axes[len(top_row) + column].get_legend()


def test_convergence_per_structure_legends_sit_below_the_panels_clear_of_every_line(figs):
    """In the 64² sweep's figure the legends of grid + regions and mixed sat inside their panels,
    over the side-16 line near 1e-12."""
    rows = [{"cell": c, "structure": s, "dims": 2, "size": size, "levels": 3, "temperature": 1.0, "iteration": i,
             "violation_mean": 1.0, "violation_max": 10.0 ** -(i * k), "dual_gap_mean": 1.0,
             "dual_gap_max": 10.0 ** (-2 * i)}
            for c, (s, size, k) in enumerate((("axial", 16, 1), ("axial", 32, 2), ("mixed", 16, 3), ("mixed", 32, 4)))
            for i in range(5)]
    plots.plot_convergence_per_structure(rows, "c.png", log=pytest.fail)
    fig = figs["c"]
    canvas = FigureCanvasAgg(fig)  # the spy closed the figure: give it a canvas that can lay it out
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
        assert box.y1 < min(ax.get_window_extent(renderer).y0 for ax in fig.axes), "below every panel"
    assert legends == [column_legend(fig, j) for j in range(2)], "each under its own column"

def test_the_backward_figure_compares_implicit_and_unrolled_per_structure_with_its_runs_load(tmp_path, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    written = plot_results(folder, log=pytest.fail)
    assert [os.path.basename(p) for p in written] == ["backward_implicit_vs_unrolled.png"]
    fig = figs["backward_implicit_vs_unrolled"]
    assert [ax.get_title() for ax in fig.axes] == ["axial (rows + columns)", "mixed (two resolutions)"]
    ax = fig.axes[0]
    lines = {tuple(line.get_xdata()): tuple(line.get_ydata()) for line in ax.get_lines()}
    assert lines[(0.5, 0.5)] == pytest.approx((1e-7, 1e-3))   # implicit: tolerance 1e-8, 1e-4 (ascending)
    assert lines[(0.4, 3.2)] == pytest.approx((0.5, 0.0625))  # unrolled: 1 and 8 sweeps
    footer = figs["backward_implicit_vs_unrolled:footer"]
    assert "load average (1 min) 3.10 at start, 2.20 at end" in footer and "float64" in footer


def test_backward_rows_of_an_unknown_kind_are_named_and_skipped(tmp_path, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    rows = read_results(os.path.join(folder, "backward.csv"))
    rows[0]["kind"] = "guessed"
    notes = []
    plots.plot_backward(rows, str(tmp_path / "b.png"), None, notes.append)
    assert len(notes) == 1 and "guessed" in notes[0]


def _backward_with_a_failed_family(folder):
    """backward.csv as the graph benchmark writes it: status and reason columns, and an error row
    for grid_regions, whose implicit backward failed (no points)."""
    write_backward(folder)
    rows = [{"status": "ok", "reason": "", **r} for r in read_csv_rows(os.path.join(folder, "backward.csv"))]
    rows.append({**{k: "" for k in rows[0]}, "family": "grid_regions", "status": "error", "batch": "4",
                 "reason": "ImplicitSolveError: the implicit backward failed"})
    atomic_csv(os.path.join(folder, "backward.csv"), list(rows[0]), rows)


def test_a_family_whose_implicit_backward_failed_has_a_panel_that_says_so(tmp_path, figs):
    """The graph benchmark writes an error row for such a family: never a bad row, and never left
    out silently (a review: the family vanished without a record)."""
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    _backward_with_a_failed_family(folder)
    written = plot_results(folder, log=pytest.fail)  # the error row is no skipped row
    assert [os.path.basename(p) for p in written] == ["backward_implicit_vs_unrolled.png"]
    fig = figs["backward_implicit_vs_unrolled"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["axial (rows + columns)", "grid + regions\nFAILED: implicit backward", "mixed (two resolutions)"]
    assert fig.axes[1].get_lines() == [] and "ImplicitSolveError" in fig.axes[1].texts[0].get_text()
    assert "FAILED, not drawn: the implicit backward on grid_regions (ImplicitSolveError)" in " ".join(
        figs["backward_implicit_vs_unrolled:footer"].split())
    rows = read_results(os.path.join(folder, "backward.csv"))
    notes = []
    assert plots.plot_backward([r for r in rows if r["family"] == "grid_regions"], str(tmp_path / "b.png"), None,
                               notes.append) is None
    assert notes == ["backward_implicit_vs_unrolled: no usable rows (the implicit backward FAILED on grid_regions "
                     "(ImplicitSolveError)); not written"]


@pytest.mark.slow  # renders one figure at 300 dpi and as PDF
def test_a_failed_familys_empty_panel_renders(tmp_path):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    _backward_with_a_failed_family(folder)
    (png,) = plot_results(folder, log=pytest.fail)
    assert os.path.getsize(png) > 1000 and os.path.getsize(png[:-4] + ".pdf") > 1000


@pytest.mark.slow  # renders three figures at 300 dpi and as PDF
def test_the_structure_figures_render_as_png_and_pdf_within_a_paper_width(tmp_path):
    folder = str(tmp_path / "r")
    write_bench(folder, structure_rows())
    write_structure_convergence(folder)
    write_backward(folder)
    written = plot_results(folder, log=pytest.fail)
    for name in plots.STRUCTURE_FIGURES:
        png = os.path.join(folder, "figures", name + ".png")
        assert png in written and os.path.getsize(png[:-4] + ".pdf") > 1000
        assert png_size(png)[0] <= 7.6 * 300, name


def test_slope_labels_that_end_at_the_same_time_are_moved_apart_until_they_do_not_overlap():
    fig, ax = plt.subplots(figsize=(3.5, 2.3))
    try:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(50, 3e4)
        ax.set_ylim(1e-2, 1e4)  # 6 decades, as a panel of the time figure
        fits = [(plot_common.PowerLaw(slope=s, coef=1000.0 / 5000 ** s, n_lo=300, n_hi=5000, sizes=3), "C0")
                for s in (1.05, 1.23, 1.35)]  # three bands ending at 1000 ms
        speed._label_slopes(ax, fits)
        renderer = FigureCanvasAgg(fig).get_renderer()
        boxes = sorted((t.get_window_extent(renderer) for t in ax.texts), key=lambda b: b.y0)
        assert len(boxes) == 3
        assert all(low.y1 <= high.y0 + 0.5 for low, high in zip(boxes, boxes[1:]))  # stacked, not overlapping
    finally:
        plt.close(fig)


def test_core_benchmark_marks_a_wide_interquartile_range_and_states_the_widest(figs):
    def row(method, total, q1, q3, backend="", shapes="8x8+4x4", batch=4):
        return {"method": method, "backend": backend, "shapes": shapes, "batch": batch, "dtype": "float32",
                "fwd_ms": total / 2, "bwd_ms": total / 2, "total_ms": total, "total_ms_q1": q1, "total_ms_q3": q3}

    rows = [row("softmax", 1.0, 0.9, 1.1), row("exact", 2.0, 1.0, 3.0),  # exact: IQR 100 % of its median
            row("exact", 0.2, 0.19, 0.21, shapes="4x4+2x2"),
            row("cvxpylayers", 100.0, 99.0, 101.0, backend="moreau", shapes="4x4+2x2", batch=2)]
    plot_core_benchmark(rows, {"exact/softmax": 2.0}, "core.png")
    fig = figs["core"]
    marked = [tuple(o) for ax in fig.axes for c in ax.collections
              if isinstance(c, matplotlib.collections.PathCollection) for o in c.get_offsets()]
    assert marked == [(1.0, pytest.approx(1e3 * 2.0 / 4))]  # exact's bar in the first panel, nothing else
    assert "widest interquartile range: 100% of its median" in figs["core:footer"]
    assert any("low confidence" in t.get_text() for t in fig.legends[0].get_texts())


@pytest.mark.parametrize("plot, figure, source", [
    (plots.consistency.plot_violation, "violation", "bench.csv"),
    (plots.consistency.plot_convergence, "dual_convergence", "convergence.csv"),
    (plots.consistency.plot_tradeoff, "tradeoff", "bench.csv"),
    (plots.speed.plot_time_vs_size, "time_vs_size", "bench.csv"),
    (plots.speed.plot_speedup, "speedup_exact_vs_cvxpylayers", "bench.csv"),
    (plots.graphs.plot_pareto_per_structure, "pareto_per_structure", "bench.csv"),
    (plots.graphs.plot_convergence_per_structure, "dual_convergence_per_structure", "convergence.csv"),
    (plots.graphs.plot_backward, "backward_implicit_vs_unrolled", "backward.csv"),
])
def test_rows_that_lack_a_needed_column_are_named_and_nothing_is_drawn(tmp_path, plot, figure, source):
    logged = []
    path = tmp_path / "figure.png"
    assert plot([{"unrelated": "1"}], str(path), log=logged.append) is None
    assert len(logged) == 1 and logged[0].startswith(f"{figure}: {source} lacks column(s) ")
    assert logged[0].endswith("; not drawn") and not path.exists()


def test_floor_below_is_one_decade_under_the_smallest_positive_value():
    assert plot_common.floor_below([3e-7, 0.5, 0.0, -1.0], default=1e-16) == pytest.approx(1e-8)
    assert plot_common.floor_below([1e-7], default=1e-16) == pytest.approx(1e-8)  # a power of ten: still one below
    assert plot_common.floor_below([0.0, -2.0], default=1e-16) == 1e-16
    assert plot_common.floor_below([], default=1e-18) == 1e-18


def test_pareto_front_keeps_what_no_other_point_beats_in_both():
    pts = [(2.0, 1e-3), (1.0, 1e-2), (3.0, 1e-9), (4.0, 1e-3), (1.0, 1e-2), (5.0, 1e-12)]
    # (4, 1e-3) is beaten by (2, 1e-3); the repeated (1, 1e-2) is ringed once
    assert plot_common.pareto_front(pts) == [(1.0, 1e-2), (2.0, 1e-3), (3.0, 1e-9), (5.0, 1e-12)]
    # below the resolution two results are equally consistent: the slower is no longer on the front
    assert plot_common.pareto_front(pts, resolution=1e-8) == [(1.0, 1e-2), (2.0, 1e-3), (3.0, 1e-9)]
    assert plot_common.pareto_front([]) == []


def test_load_env_reads_bench_or_graphs_json_and_says_what_it_cannot_use(tmp_path):
    logged = []
    assert plot_common.load_env(str(tmp_path), logged.append) is None and logged == []  # no file: nothing to say
    (tmp_path / "bench.json").write_text(json.dumps({"rows": []}))
    assert plot_common.load_env(str(tmp_path), logged.append) is None
    assert logged == ["bench.json: no 'environment' object; its figures carry no environment line"]
    (tmp_path / "graphs.json").write_text('{"environment": {"torch": "2.13.0", "x": NaN}, "runs": [{"rows": 1}]}')
    logged.clear()
    env = plot_common.load_env(str(tmp_path), logged.append, "graphs.json")
    assert env == {"torch": "2.13.0", "x": None, "runs": [{"rows": 1}]}
    assert logged == ["graphs.json: not strict JSON (1 NaN/Infinity token(s), read as null)"]
    (tmp_path / "graphs.json").write_text("{")
    logged.clear()
    assert plot_common.load_env(str(tmp_path), logged.append, "graphs.json") is None
    assert len(logged) == 1 and logged[0].startswith("graphs.json: not readable JSON")



# ---------------------------------------------------------------------------- the figure folder is the user's


def chain_free_results(folder):
    """A results folder with structures only: none of the chain figures (tradeoff, ...) is drawn."""
    write_bench(folder, [r for r in structure_rows() if r.get("structure")])


def test_plot_never_removes_a_file_it_did_not_write(tmp_path, capsys, figs):
    results, out = str(tmp_path / "r"), tmp_path / "mythesis"
    chain_free_results(results)
    out.mkdir()
    mine = {"tradeoff.png": b"mine", "violation.pdf": b"my violation figure", "notes.txt": b"notes"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    code, err = plot_cli(results, capsys, "--out", str(out))  # figures it does not draw: no refusal needed
    assert code == 0 and (out / "pareto_per_structure.png").exists()
    assert {name: (out / name).read_bytes() for name in mine} == mine, "the user's files are never removed"
    assert "removed" not in err
    (left,) = [line for line in err.splitlines() if "tradeoff.png" in line]  # one line names what was left
    assert "violation.pdf" in left and "left" in left and "not an earlier plot's output" in left
    # a command that fails (nothing to plot) removes nothing either
    write_bench(results, [{**r, "status": "skipped"} for r in structure_rows() if r.get("structure")])
    code, err = plot_cli(results, capsys, "--out", str(out))
    assert code == 2 and "nothing to plot" in err
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert (out / "pareto_per_structure.png").exists(), "nor an earlier figure of its own, when it fails"


@pytest.mark.slow  # draws every figure three times (~1 s); the record it relies on has fast tests
# (test_only_an_intact_record_of_plots_own_proves_a_figure_unchanged and those after it)
def test_an_earlier_figure_is_removed_only_if_this_tool_wrote_it_from_these_results_unchanged(tmp_path, capsys,
                                                                                              figs):
    results, other, out = str(tmp_path / "r"), str(tmp_path / "other"), tmp_path / "figs"
    write_bench(results, sweep_rows())
    os.makedirs(other)
    write_backward(other)
    assert plot_cli(other, capsys, "--out", str(out))[0] == 0  # a figure gathered from other results
    assert plot_cli(results, capsys, "--out", str(out))[0] == 0
    assert (out / "speedup_exact_vs_cvxpylayers.png").exists() and (out / "tradeoff.pdf").exists()
    (out / "tradeoff.pdf").write_bytes(b"edited by hand")  # the user's copy now: not provably the tool's
    rows = sweep_rows()
    for r in rows:
        if r["method"] == "cvxpylayers":
            r["status"], r["reason"] = "skipped", "over budget"
    for r in rows:  # no chain: tradeoff is not drawn either
        r["structure"] = "axial"
    write_bench(results, rows)
    code, err = plot_cli(results, capsys, "--out", str(out))  # tradeoff is not drawn: the edited copy is only left
    assert code == 0
    # the tool's own unchanged figures from these results go (so none sits beside results it does not show)
    for name in ("speedup_exact_vs_cvxpylayers", "time_vs_size", "violation"):
        assert not (out / f"{name}.png").exists() and not (out / f"{name}.pdf").exists(), name
    assert "removed" in err
    assert not (out / "tradeoff.png").exists() and (out / "tradeoff.pdf").read_bytes() == b"edited by hand"
    assert any("tradeoff.pdf" in line and "changed since" in line for line in err.splitlines())
    # the figure drawn from the other results stays, and is said to come from there
    assert (out / "backward_implicit_vs_unrolled.png").exists()
    (kept,) = [line for line in err.splitlines() if "backward_implicit_vs_unrolled.png" in line]
    assert "kept" in kept and os.path.realpath(other) in kept
    record = json.loads((out / plots.MANIFEST).read_text())
    assert "backward_implicit_vs_unrolled.png" in record["figures"] and "tradeoff.pdf" not in record["figures"]


@pytest.mark.slow  # draws every figure of a results folder (~0.7 s): CI runs it
def test_a_manifest_it_did_not_write_is_neither_trusted_nor_replaced(tmp_path, capsys, figs):
    results, out = str(tmp_path / "r"), tmp_path / "figs"
    chain_free_results(results)
    out.mkdir()
    (out / "tradeoff.png").write_bytes(b"mine")
    forged = json.dumps({"figures": {"tradeoff.png": {"bytes": 4, "sha256": "0" * 64}}})
    (out / plots.MANIFEST).write_text(forged)
    code, err = plot_cli(results, capsys, "--out", str(out))
    assert code == 0 and (out / "tradeoff.png").read_bytes() == b"mine"
    assert (out / plots.MANIFEST).read_text() == forged and "not a record this tool wrote" in err


@pytest.mark.slow  # draws every figure of a results folder (~0.7 s): CI runs it
def test_plot_refuses_to_replace_a_figure_named_file_it_did_not_write(tmp_path, capsys, figs):
    """A file of a figure's name that this run would draw over (the user's own, or one changed
    since plot wrote it) is replaced only with --overwrite; plot's own recorded figures are
    redrawn without it."""
    results, out = str(tmp_path / "r"), tmp_path / "figs"
    write_bench(results, sweep_rows())
    out.mkdir()
    (out / "time_vs_size.png").write_bytes(b"mine")
    code, err = plot_cli(results, capsys, "--out", str(out))
    assert code == 2 and "time_vs_size.png" in err and (out / "time_vs_size.png").read_bytes() == b"mine"
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert sorted(os.listdir(out)) == ["time_vs_size.png"], "nothing written before the refusal, no staging left"
    assert plot_cli(results, capsys, "--out", str(out), "--overwrite")[0] == 0
    assert (out / "time_vs_size.png").read_bytes() != b"mine"
    assert plot_cli(results, capsys, "--out", str(out))[0] == 0  # its own record: redrawn without a word


@pytest.mark.slow  # draws every figure of a results folder (~0.7 s): CI runs it
def test_a_figure_that_cannot_be_written_removes_nothing(tmp_path, capsys, figs, monkeypatch):
    results = str(tmp_path / "r")
    write_bench(results, sweep_rows())
    write_example(results)
    assert plot_cli(results, capsys)[0] == 0
    write_bench(results, [{**r, "structure": "axial"} for r in sweep_rows()])  # the chain figures are stale now
    save = figures.save

    def full(fig, path, env=None, notes=()):
        if "attention_maps" in path:
            raise OSError(28, "No space left on device")
        return save(fig, path, env, notes)

    monkeypatch.setattr(figures, "save", full)
    before = plt.get_fignums()
    code, err = plot_cli(results, capsys)
    assert code == 2 and "No space left on device" in err
    assert (tmp_path / "r" / "figures" / "tradeoff.png").exists()
    assert plt.get_fignums() == before  # the figure that could not be written is not left open


def test_the_backward_figure_draws_only_a_backward_csv_that_graphs_json_says_its_run_made(tmp_path, capsys, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)  # a full run ...
    write_graphs_json(folder, ["amortised"], threads=7)  # ... then an amortised-only run with --overwrite
    code, err = plot_cli(folder, capsys)
    assert code == 2 and "backward_implicit_vs_unrolled" not in figs
    assert "backward.csv: an earlier run's" in err and "amortised" in err
    # with the stale folder's chain results beside it, the rest is drawn and the one line says why backward is not
    write_bench(folder, sweep_rows())
    notes = []
    written = plot_results(folder, log=notes.append)
    assert written and all("backward" not in os.path.basename(p) for p in written)
    assert [n for n in notes if "backward.csv" in n] == [
        "backward.csv: an earlier run's (graphs.json records a run of amortised, without backward): not drawn "
        "under that run's environment; left as it is"]


def test_a_graphs_json_without_its_parts_gives_the_backward_figure_no_environment(tmp_path, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    write_graphs_json(folder, None)
    notes = []
    assert len(plot_results(folder, log=notes.append)) == 1
    assert len(notes) == 1 and "no config.parts" in notes[0]
    assert "load average" not in figs["backward_implicit_vs_unrolled:footer"]
    assert figs["backward_implicit_vs_unrolled:footer"].startswith("environment not recorded")


def test_plot_results_returns_the_figures_it_wrote_into_the_results_figures_folder_and_records_them(tmp_path, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    written = plot_results(folder, log=pytest.fail)  # default out: folder/figures
    out = os.path.join(folder, "figures")
    assert written == [os.path.join(out, "backward_implicit_vs_unrolled.png")]
    assert all(os.path.isfile(p) and os.path.isfile(p[:-4] + ".pdf") for p in written)
    record = json.loads((tmp_path / "g" / "figures" / plots.MANIFEST).read_text())
    assert sorted(record["figures"]) == ["backward_implicit_vs_unrolled.pdf", "backward_implicit_vs_unrolled.png"]
    # relative to the figure folder: a committed or moved pair of folders keeps its record
    assert {e["results"] for e in record["figures"].values()} == {".."}


def test_an_unusable_input_is_said_once(tmp_path, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    with open(os.path.join(folder, "convergence.csv"), "w") as f:
        f.write("cell,dims\n0,2\n")  # no iteration column: not a convergence.csv
    notes = []
    assert len(plot_results(folder, log=notes.append)) == 1
    assert len(notes) == 1 and "missing column(s) iteration" in notes[0], notes


def test_a_folder_without_chains_names_the_chain_figures_it_does_not_draw_once(tmp_path, figs):
    results = str(tmp_path / "r")
    chain_free_results(results)
    notes = []
    written = plot_results(results, log=notes.append)
    assert [os.path.basename(p) for p in written] == ["pareto_per_structure.png"]
    assert len(notes) == 1 and notes[0].startswith("bench.csv holds no chain"), notes
    assert all(name in notes[0] for name in ("time_vs_size", "violation", "speedup_exact_vs_cvxpylayers", "tradeoff"))


def test_the_convergence_figures_split_chains_from_other_structures(tmp_path, figs):
    folder = str(tmp_path / "c")
    os.makedirs(folder)
    write_convergence(folder)  # chains only: no per-structure figure
    assert [os.path.basename(p) for p in plot_results(folder, log=pytest.fail)] == ["dual_convergence.png"]
    other = str(tmp_path / "s")
    os.makedirs(other)
    write_structure_convergence(other)
    rows = list(csv.DictReader((tmp_path / "s" / "convergence.csv").read_text().splitlines()))
    atomic_csv(os.path.join(other, "convergence.csv"), list(rows[0]), [r for r in rows if r["structure"] != "chain"])
    written = plot_results(other, log=pytest.fail)  # no chain: no chain figure, and nothing said about one
    assert [os.path.basename(p) for p in written] == ["dual_convergence_per_structure.png"]


def test_a_backward_csv_without_a_graphs_json_is_drawn_without_an_environment_line(tmp_path, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    os.remove(os.path.join(folder, "graphs.json"))
    assert [os.path.basename(p) for p in plot_results(folder, log=lambda m: None)] == \
        ["backward_implicit_vs_unrolled.png"]
    assert figs["backward_implicit_vs_unrolled:footer"].startswith("environment not recorded")


def test_a_refusal_names_the_first_four_files_and_counts_the_rest():
    names = ["time_vs_size.png", "time_vs_size.pdf", "violation.png", "violation.pdf", "tradeoff.png"]
    four = str(plots.FigureConflict("figs", names[:4]))
    assert all(n in four for n in names[:4]) and "more" not in four and "--overwrite" in four
    five = plots.FigureConflict("figs", names)
    assert five.names == names and all(n in str(five) for n in names[:4])
    assert "tradeoff.png" not in str(five) and "and 1 more" in str(five)


def test_remove_empty_folder_removes_only_an_empty_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    plots.remove_empty_folder(str(tmp_path / "full"))
    plots.remove_empty_folder(str(tmp_path / "empty"))
    plots.remove_empty_folder(str(tmp_path / "full" / "notes.txt"))
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "empty").exists()


def recorded_figures(tmp_path):
    """A figure folder holding the backward figure that plot_results drew there, and its record."""
    folder, out = str(tmp_path / "g"), tmp_path / "figs"
    os.makedirs(folder)
    write_backward(folder)
    plot_results(folder, str(out), log=pytest.fail)
    return folder, out


def _edit_record(out, edit):
    path = out / plots.MANIFEST
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _link_record(out):
    """The record moved elsewhere, and a symbolic link to it in its place."""
    os.replace(out / plots.MANIFEST, out.parent / "elsewhere.json")
    os.symlink(out.parent / "elsewhere.json", out / plots.MANIFEST)


def _link_figure(out):
    """The PNG moved elsewhere, and a symbolic link to it (the same bytes) in its place."""
    os.replace(out / "backward_implicit_vs_unrolled.png", out.parent / "elsewhere.png")
    os.symlink(out.parent / "elsewhere.png", out / "backward_implicit_vs_unrolled.png")


BACKWARD_FILES = ["backward_implicit_vs_unrolled.png", "backward_implicit_vs_unrolled.pdf"]


def _large_figure(out):
    """The PNG replaced by a file of several MiB that the record lists by its size and SHA-256."""
    data = b"\x89PNG" + bytes(range(256)) * (3 << 12)
    (out / BACKWARD_FILES[0]).write_bytes(data)
    _edit_record(out, lambda r: r["figures"][BACKWARD_FILES[0]].update(bytes=len(data),
                                                                        sha256=hashlib.sha256(data).hexdigest()))


@pytest.mark.parametrize("damage, unproven", [
    (lambda out: None, []),
    (lambda out: _edit_record(out, lambda r: r["figures"]["backward_implicit_vs_unrolled.png"].update(
        bytes=r["figures"]["backward_implicit_vs_unrolled.png"]["bytes"] + 1)), BACKWARD_FILES[:1]),
    (lambda out: _edit_record(out, lambda r: r["figures"]["backward_implicit_vs_unrolled.pdf"].update(
        sha256="0" * 64)), BACKWARD_FILES[1:]),
    (lambda out: _edit_record(out, lambda r: r["figures"].pop("backward_implicit_vs_unrolled.png")),
     BACKWARD_FILES[:1]),
    (lambda out: _edit_record(out, lambda r: r["figures"].update({"backward_implicit_vs_unrolled.png": "ok"})),
     BACKWARD_FILES[:1]),
    (lambda out: _edit_record(out, lambda r: r.pop("written_by")), BACKWARD_FILES),
    (lambda out: _edit_record(out, lambda r: r.update(figures=sorted(r["figures"]))), BACKWARD_FILES),
    (lambda out: (out / plots.MANIFEST).write_text((out / plots.MANIFEST).read_text()[:20]), BACKWARD_FILES),
    (_link_record, BACKWARD_FILES),
    (_link_figure, BACKWARD_FILES[:1]),
    (_large_figure, []),
], ids=["intact", "size", "sha256", "unlisted", "entry-no-object", "not-plots", "figures-no-object", "cut-short",
        "record-a-link", "figure-a-link", "a-large-figure"])
def test_only_an_intact_record_of_plots_own_proves_a_figure_unchanged(tmp_path, figs, damage, unproven):
    """A figure counts as plot's own only where its record (a plain file plot wrote, strict
    JSON) lists that very plain file by size and SHA-256; anything else is the user's."""
    _, out = recorded_figures(tmp_path)
    damage(out)
    assert plots.unrecorded_figures(str(out)) == unproven
    assert plots.unrecorded_figures(str(out), BACKWARD_FILES[1:]) == [n for n in unproven if n.endswith(".pdf")]


def test_a_recorded_figure_that_cannot_be_read_is_not_proven_plots_own(tmp_path, figs, monkeypatch):
    """Unreadable (permissions root cannot take away here: open refused instead), its hash
    proves nothing, so it is the user's: never replaced nor removed without --overwrite."""
    _, out = recorded_figures(tmp_path)

    def refused_for_the_png(path, *args, **kwargs):
        if os.path.basename(str(path)) == BACKWARD_FILES[0]:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(plots, "open", refused_for_the_png, raising=False)
    assert plots.unrecorded_figures(str(out)) == BACKWARD_FILES[:1]


def test_files_of_a_figures_name_that_are_no_plain_file_are_never_taken_for_plots_own(tmp_path, figs):
    out = tmp_path / "figs"
    assert plots.unrecorded_figures(str(out)) == [], "no folder yet: nothing to replace"
    out.mkdir()
    (out / "tradeoff.png").mkdir()
    os.symlink(tmp_path / "nowhere", out / "violation.pdf")  # a link to nothing is still the user's
    assert plots.unrecorded_figures(str(out)) == ["violation.pdf", "tradeoff.png"]
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    notes = []
    assert plot_results(folder, str(out), log=notes.append)  # figures it does not draw: left, and named
    assert (out / "tradeoff.png").is_dir() and os.path.islink(out / "violation.pdf")
    (left,) = notes
    assert "violation.pdf" in left and "tradeoff.png" in left and "untouched" in left


def test_the_record_names_each_figures_size_sha256_and_the_real_results_folder(tmp_path, figs):
    folder, out = recorded_figures(tmp_path)
    record = json.loads((out / plots.MANIFEST).read_text())
    assert sorted(record["figures"]) == sorted(BACKWARD_FILES)
    for name, entry in record["figures"].items():
        data = (out / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "results": os.path.relpath(os.path.realpath(folder), os.path.realpath(out))}
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "results_format.md"), encoding="utf-8") as f:
        assert f"`{plots.MANIFEST}`" in f.read(), "the record's name is the one the docs give"


def test_a_stale_figure_of_these_results_is_removed_however_the_results_folder_is_spelt(tmp_path, figs):
    folder, out = recorded_figures(tmp_path)
    os.symlink(folder, tmp_path / "link")
    os.remove(os.path.join(folder, "backward.csv"))
    write_convergence(folder)
    notes = []
    plot_results(str(tmp_path / "link"), str(out), log=notes.append)
    assert not any((out / name).exists() for name in BACKWARD_FILES), notes
    record = json.loads((out / plots.MANIFEST).read_text())
    assert {plots._recorded_results(str(out), e) for e in record["figures"].values()} == {os.path.realpath(folder)}


def test_a_stale_figure_that_cannot_be_removed_is_said_and_left(tmp_path, figs, monkeypatch):
    folder, out = recorded_figures(tmp_path)
    os.remove(os.path.join(folder, "backward.csv"))
    write_convergence(folder)
    remove = os.remove

    def refuse(path, *args, **kwargs):
        if os.path.basename(path) == BACKWARD_FILES[0]:
            raise PermissionError(13, "Permission denied", path)
        return remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", refuse)
    notes = []
    assert plot_results(folder, str(out), log=notes.append)
    assert (out / BACKWARD_FILES[0]).exists() and not (out / BACKWARD_FILES[1]).exists()
    png, pdf = (str(out / name) for name in BACKWARD_FILES)
    assert [n for n in notes if png in n] == [f"could not remove {png} (Permission denied): an earlier run's figure "
                                             f"these results do not support; left"]
    assert len([n for n in notes if n.startswith(f"removed {pdf}")]) == 1
    monkeypatch.setattr(os, "remove", remove)
    plot_results(folder, str(out), log=notes.append)  # the record still lists it: a later run removes it
    assert not (out / BACKWARD_FILES[0]).exists() and f"removed {png}" in notes[-1]


@pytest.mark.slow  # draws the graph figures (~0.6 s)
@pytest.mark.parametrize("parts", [None, ["convergence"]])
def test_a_graphs_json_without_a_backward_csv_says_nothing_about_one(tmp_path, figs, parts):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_structure_convergence(folder)
    write_graphs_json(folder, parts)
    notes = []
    assert plot_results(folder, log=notes.append)
    assert not any("backward" in n for n in notes), notes


@pytest.mark.parametrize("foreign", [
    lambda path: path.write_text(json.dumps({"figures": {"tradeoff.png": {"bytes": 4, "sha256": "0" * 64}}})),
    lambda path: path.mkdir(),
], ids=["json-of-another-tool", "folder"])
def test_a_record_it_did_not_write_is_left_and_the_figures_it_does_not_draw_are_named(tmp_path, figs, foreign):
    folder, out = str(tmp_path / "g"), tmp_path / "figs"
    os.makedirs(folder)
    write_backward(folder)
    out.mkdir()
    (out / "tradeoff.png").write_bytes(b"mine")
    foreign(out / plots.MANIFEST)
    before = {name: (out / name).read_bytes() if (out / name).is_file() else None for name in os.listdir(out)}
    notes = []
    assert plot_results(folder, str(out), log=notes.append)
    assert {name: (out / name).read_bytes() if (out / name).is_file() else None for name in before} == before
    (note,) = notes
    assert "not a record this tool wrote" in note and "tradeoff.png" in note and "untouched" in note


def test_a_graphs_json_of_a_run_that_made_no_part_does_not_draw_an_earlier_backward_csv(tmp_path, figs):
    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    write_graphs_json(folder, [])
    write_structure_convergence(folder)
    notes = []
    assert plot_results(folder, log=notes.append)
    assert "backward_implicit_vs_unrolled" not in figs
    assert [n for n in notes if "backward.csv" in n] == [
        "backward.csv: an earlier run's (graphs.json records a run of no part, without backward): not drawn "
        "under that run's environment; left as it is"]


# ---------------------------------------------------------------------------- the values a figure reads


def bad_value(row, col, **opts):
    with pytest.raises(plot_common.BadValue) as err:
        plot_common.number(row, col, **opts)
    return str(err.value)


def test_a_number_is_a_finite_float_and_what_is_not_is_named():
    number = plot_common.number
    assert number({"x": " 2.5 "}, "x") == 2.5  # the padding of a hand-edited field is not part of the value
    # not measured (empty, NaN where a row held in memory has an empty field) or an older file's missing column
    for row in ({"x": ""}, {"x": "  "}, {"x": float("nan")}, {}):
        assert number(row, "x", empty_ok=True) is None, row
    assert bad_value({}, "x") == "x is missing"
    assert bad_value({"x": " "}, "x") == "x is empty"
    assert bad_value({"x": float("nan")}, "x") == "x is empty"
    assert bad_value({"x": "inf"}, "x") == "x='inf' is not finite"
    assert bad_value({"x": "-Infinity"}, "x") == "x='-Infinity' is not finite"
    assert bad_value({"x": "0"}, "x", positive=True) == "x='0' is not positive"
    assert number({"x": "0"}, "x", nonneg=True) == 0.0
    assert bad_value({"x": "-1e-300"}, "x", nonneg=True) == "x='-1e-300' is negative"
    assert number({"x": "4.0"}, "x", integer=True) == 4.0
    assert bad_value({"x": "4.5"}, "x", integer=True) == "x='4.5' is not an integer"
    # a value from a file is named briefly, safe to print and draw
    assert len(bad_value({"x": "$" + "y" * 200}, "x")) < 60


def test_a_time_is_measurable_from_one_femtosecond_to_thirty_years_inclusive():
    # docs/results_format.md: a time outside 1e-12 to 1e12 ms leaves the row out
    for value in ("1e-12", "1e12", "0.5"):
        assert plot_common.number({"t": value}, "t", time_ms=True) == float(value)
    for value in ("9.9e-13", "1.01e12"):
        assert "is not a measurable time" in bad_value({"t": value}, "t", time_ms=True)
    assert plot_common.number({"t": "1e300"}, "t") == 1e300  # a value that is no time is not bounded


def test_names_are_read_as_short_plain_tokens_and_a_nan_name_is_no_name():
    assert plot_common.text_of({"m": float("nan")}, "m") == "" and plot_common.text_of({}, "m") == ""
    assert plot_common.token_of({"b": " diffcp-clarabel "}, "b") == "diffcp-clarabel"
    assert plot_common.token_of({"b": "x" * 40}, "b") == "x" * 40  # up to 40 characters
    for text in ("two words", "$\\alpha$", "a/b", "x" * 41):
        with pytest.raises(plot_common.BadValue, match="is not a name"):
            plot_common.token_of({"b": text}, "b")


def test_skipped_rows_are_reported_once_by_line_and_series_the_first_five_named():
    def report(n):
        logged, skips = [], plot_common.Skips("fig", "graphs.csv")
        for line in range(2, 2 + n):
            skips.add({"_line": line, "method": "cvxpylayers", "backend": "moreau", "dual_kind": ""}, "too slow")
        skips.report(logged.append)
        return logged

    assert report(0) == []  # nothing skipped: nothing said
    five, six = report(5), report(6)
    assert len(five) == 1 and five[0].startswith("fig: skipped 5 row(s) of graphs.csv with unusable values: ")
    assert all(f"line {i} (cvxpylayers/moreau): too slow" in five[0] for i in range(2, 7))
    assert "; and " not in five[0]  # all five named
    assert len(six) == 1 and "skipped 6 row(s)" in six[0] and "line 6 (" in six[0] and "line 7" not in six[0]
    assert six[0].endswith("; and 1 more")


def test_ok_points_draw_measured_rows_only_and_name_every_row_they_leave_out():
    numbers = {"total_ms": {"positive": True, "time_ms": True}, **plot_common.spread_columns("total_ms")}
    good = bench_row("exact")
    rows = [{**good, "_line": 2}, {**good, "status": "skipped", "_line": 3}, {**good, "status": "error", "_line": 4},
            {**good, "status": "done", "_line": 5}, {**good, "backend": "two words", "_line": 6}]
    logged = []
    points = plot_common.ok_points(rows, "fig", numbers, logged.append)
    assert [p.row["_line"] for p in points] == [2]  # skipped and failed rows are not data: the notes name them
    assert len(logged) == 1 and "skipped 2 row(s)" in logged[0]
    assert "line 5 (exact): status='done' is not one of ok, skipped, error" in logged[0] and "line 6 (" in logged[0]


@pytest.mark.parametrize("col", ["fwd_ms", "bwd_ms", "total_ms"])
def test_a_median_outside_its_own_quartiles_is_named_and_left_out(col):
    numbers = {c: {"positive": True, "time_ms": True} for c in (col, col + "_q1", col + "_q3")}
    row = {**bench_row("dual"), "_line": 7, col: 2.0, col + "_q1": 2.0, col + "_q3": 2.0}
    logged = []
    assert len(plot_common.ok_points([row], "fig", numbers, logged.append)) == 1 and logged == []  # on the quartiles
    for q1, q3 in ((2.001, 3.0), (1.0, 1.999)):
        logged.clear()
        points = plot_common.ok_points([{**row, col + "_q1": q1, col + "_q3": q3}], "fig", numbers, logged.append)
        assert points == [] and len(logged) == 1
        assert f"line 7 (dual): {col}=2 lies outside its quartiles" in logged[0]


def test_the_legend_names_the_lambda_kind_and_the_backend():
    assert plot_common.Series("learned_dual", "per_sample").label == "learned_dual (per-sample λ*)"
    assert plot_common.Series("cvxpylayers", "", "moreau").label == "cvxpylayers (moreau)"
    assert plot_common.Series("exact").label == "exact"
    series, _ = plot_common.series_of({"method": "exact", "dual_kind": "fitted", "backend": ""})
    assert series == plot_common.Series("exact")  # a method without duals has no λ kind, whatever the row says
    with pytest.raises(plot_common.BadValue, match="backend="):
        plot_common.series_of({"method": "cvxpylayers", "backend": "$x$"})


def test_low_confidence_starts_past_half_the_median_and_below_three_repetitions():
    low = plot_common.low_confidence
    assert not low({"total_ms": 1.0, "total_ms_q1": 0.75, "total_ms_q3": 1.25, "repeats": 3}, "total_ms")
    assert low({"total_ms": 1.0, "total_ms_q1": 0.75, "total_ms_q3": 1.26, "repeats": 3}, "total_ms")
    assert low({"total_ms": 1.0, "total_ms_q1": 0.9, "total_ms_q3": 1.1, "repeats": 2}, "total_ms")


def test_a_slope_is_fitted_over_a_span_of_exactly_a_decade_and_only_within_fifteen_percent_of_the_line():
    fit = plot_common.fit_power_law([10, 50, 100], [1.0, 5.0, 10.0])
    assert fit is not None and fit.slope == pytest.approx(1.0) and fit.sizes == 3  # spans 10x: enough
    # middle point off the line by a factor f in time: the fitted line misses it by f**(2/3), the ends by f**(1/3)
    assert plot_common.fit_power_law([10, 100, 1000], [1.0, 10.0 * 1.2, 100.0]) is not None  # 12.9% off
    assert plot_common.fit_power_law([10, 100, 1000], [1.0, 10.0 * 1.24, 100.0]) is None  # 15.4% off
    # a time of zero has no place on a log-log line: it is left out, and the rest still fit
    fit = plot_common.fit_power_law([10, 100, 1000, 10_000], [1.0, 10.0, 100.0, 0.0])
    assert fit is not None and (fit.n_lo, fit.n_hi, fit.sizes) == (10, 1000, 3)


def test_a_slope_takes_the_longest_run_of_the_largest_sizes_down_to_three():
    ns = [10, 100, 1000, 10_000]
    fit = plot_common.fit_power_law(ns, [50.0, 10.0, 100.0, 1000.0])  # the smallest size is overhead-bound
    assert fit is not None and (fit.n_lo, fit.n_hi, fit.sizes) == (100, 10_000, 3)


def test_the_notes_count_what_the_sweep_skipped_by_why_and_name_what_failed():
    rows = [{"status": "skipped", "reason": "problem size 900 cells > cap --cvx-max-cells 800"},
            {"status": "skipped", "reason": "estimated 30 s (fit) > budget --budget 10 s"},
            {"status": "skipped", "reason": "estimated 31 s (fit) > budget --budget 10 s"},
            {"status": "skipped", "reason": "backend moreau not installed"},
            {"status": "skipped", "reason": "moreau solves on cuda; see the cuda cells"},
            {"status": "skipped", "reason": "exact solves forests only (every map ...)"},
            {"status": "error", "reason": "MemoryError: out of memory", "method": "exact"},
            {"status": "error", "reason": "MemoryError: out of memory", "method": "exact"},
            {"status": "error", "reason": "", "method": "cvxpylayers", "backend": "moreau"},
            {"status": "ok", "reason": ""}]
    assert plot_common.skipped_by_the_sweep(rows) == {
        "over --cvx-max-cells": 1, "over --budget": 2, "backend not installed": 1,
        "on a device its backend does not solve on": 1, plot_common.FORESTS_ONLY: 1}
    assert plot_common.skipped_note(rows).startswith("not measured by the sweep: 1 row(s) over --cvx-max-cells, ")
    assert plot_common.skip_reason(rows[6]) == "failed (MemoryError)" and plot_common.skip_reason(rows[-1]) == ""
    assert plot_common.error_name("Timeout") == "error" and plot_common.error_name("two words: x") == "error"
    failed = plot_common.failed_note(rows)
    assert failed.startswith("FAILED, not drawn: 3 row(s) (status error): ")
    assert "2× exact: MemoryError: out of memory" in failed and "cvxpylayers (moreau): no reason recorded" in failed
    assert plot_common.skipped_note(rows[-1:]) == "" and plot_common.failed_note(rows[-1:]) == ""
    assert plot_common.series_name({"method": ""}) == "row"


def test_the_footer_notes_name_the_compute_dtype_and_the_series_timed_on_fewer_samples():
    numbers = {"timed_batch": {"empty_ok": True, "positive": True, "integer": True}}
    rows = cell_rows(dtype="float32") + cell_rows(dtype="float16", cell=1)
    points = plot_common.ok_points(rows, "fig", numbers, pytest.fail)
    assert plot_common.dtype_note(points) == ("computed in float16/float32 "
                                              "(cvxpylayers: float64, whatever the cell's dtype)")
    assert plot_common.compute_dtype_of(points[0]) == rows[0]["dtype"]
    exact64 = plot_common.ok_points([bench_row("exact", dtype="float64")], "fig", numbers, pytest.fail)
    assert plot_common.dtype_note(exact64) == "computed in float64"
    batch = rows[0]["batch"]
    assert all(r["timed_batch"] == batch for r in rows if r["method"] != "cvxpylayers")  # only cvxpylayers on fewer
    assert plot_common.batch_note(points) == (f"per-sample times of batches of B = {batch}; cvxpylayers timed "
                                              f"on fewer samples than the batch (bench.csv's timed_batch)")
    assert plot_common.batch_note([p for p in points if p.series.method != "cvxpylayers"]) == (
        f"per-sample times of batches of B = {batch}")
    blank = plot_common.ok_points([{**bench_row("exact"), "batch": ""}], "fig", numbers, pytest.fail)
    assert plot_common.batch_note(blank) == ""  # no batch recorded: nothing to say


def test_a_spread_or_size_that_cannot_be_right_leaves_its_row_out():
    numbers = {**plot_common.SIZE_COLUMNS, "total_ms": {"positive": True, "time_ms": True},
               **plot_common.spread_columns("total_ms")}
    logged = []
    rows = [{**bench_row("exact"), "_line": 2, "total_ms_q3": 1e300},
            {**bench_row("exact"), "_line": 3, "n_cells": 80.5},
            {**bench_row("exact"), "_line": 5, "total_ms_q1": 1e-300},
            {**bench_row("exact"), "_line": 4, "total_ms_q1": "", "total_ms_q3": ""}]  # no spread recorded: drawn
    assert [p.row["_line"] for p in plot_common.ok_points(rows, "fig", numbers, logged.append)] == [4]
    assert "line 2 (exact): total_ms_q3=1e+300 is not a measurable time" in logged[0]
    assert "line 3 (exact): n_cells='80.5' is not an integer" in logged[0]
    assert "line 5 (exact): total_ms_q1=1e-300 is not a measurable time" in logged[0]


def test_the_failed_rows_note_names_four_kinds_of_failure_and_counts_the_rest():
    rows = [{"status": "error", "method": "exact", "reason": f"RuntimeError: case {i}"} for i in range(6)]
    note = plot_common.failed_note(rows)
    assert note.startswith("FAILED, not drawn: 6 row(s) (status error): ")
    assert all(f"case {i}" in note for i in range(4)) and "case 4" not in note and note.endswith("; and 2 more")


def test_a_results_file_warns_what_it_leaves_out_as_a_plot_warning(tmp_path):
    (tmp_path / "bench.csv").write_text("")
    with pytest.warns(plot_common.PlotWarning, match="bench.csv: empty file"):
        assert read_results(str(tmp_path / "bench.csv")) is None


def test_a_bench_json_that_is_no_object_gives_no_environment_and_says_so(tmp_path):
    (tmp_path / "bench.json").write_text("[1, 2]")
    logged = []
    assert plot_common.load_env(str(tmp_path), logged.append) is None
    assert logged == ["bench.json: no 'environment' object; its figures carry no environment line"]
    (tmp_path / "bench.json").write_bytes(b'{"environment": "\xe9"}')
    logged.clear()
    assert plot_common.load_env(str(tmp_path), logged.append) is None
    assert len(logged) == 1 and logged[0].startswith("bench.json: not readable JSON")


def test_graph_parts_are_a_list_of_names_or_not_said():
    assert plot_common.graph_parts({"config": {"parts": ["chains", "backward"]}}) == ("chains", "backward")
    for record in (None, [], {}, {"config": []}, {"config": {"parts": "chains"}}, {"config": {"parts": ["a", 1]}}):
        assert plot_common.graph_parts(record) is None, record


def test_each_backend_has_its_own_colour_and_marker():
    """Every backend cvx knows, and as many unknown ones (a results file of another version)
    as there are spare styles."""
    from convex_attention import cvx

    assert set(plot_common.BACKEND_STYLES) == set(cvx.BACKENDS)
    names = [*cvx.BACKENDS] + [f"other-{i}" for i in range(len(plot_common.SPARE_BACKEND_STYLES))]
    series = [plot_common.Series("cvxpylayers", "", b) for b in names]
    styles = plot_common.styles_for(series)
    assert len({styles[s][0] for s in series}) == len({styles[s][1] for s in series}) == len(series)
    methods = {plot_common.Series(m) for m in plot_common.METHOD_MARKERS if m != "cvxpylayers"}
    kinds = {plot_common.Series("learned_dual", k) for k in plot_common.KIND_MARKERS}
    others = plot_common.styles_for(methods | kinds).values()
    assert not {c for c, _ in others} & {styles[s][0] for s in series}  # no method's or kind's colour
    assert not set(speed.NOT_MEASURED_MARKERS) & {styles[s][1] for s in series}  # nor a not-measured shape


def test_a_backends_style_does_not_depend_on_the_other_backends_of_the_figure():
    """Colours had been given in turn to the backends present: moreau's changed with the run."""
    from convex_attention import cvx

    alone = {b: plot_common.styles_for({plot_common.Series("cvxpylayers", "", b)}) for b in cvx.BACKENDS}
    everything = plot_common.styles_for({plot_common.Series("cvxpylayers", "", b) for b in cvx.BACKENDS})
    for b in cvx.BACKENDS:
        series = plot_common.Series("cvxpylayers", "", b)
        assert alone[b][series] == everything[series] == plot_common.BACKEND_STYLES[b], b
    with_core = plot_common.styles_for({plot_common.Series("cvxpylayers", "", "moreau"), plot_common.Series("exact")})
    assert with_core[plot_common.Series("cvxpylayers", "", "moreau")] == plot_common.BACKEND_STYLES["moreau"]
    # an unknown name: a spare style, the same with or without the known backends beside it
    unknown = plot_common.Series("cvxpylayers", "", "other")
    assert plot_common.styles_for({unknown})[unknown] == plot_common.styles_for({unknown} | set(everything))[unknown] \
        == plot_common.SPARE_BACKEND_STYLES[0]


def test_the_rounding_level_of_each_dtype_is_its_machine_epsilon():
    import torch

    for name, eps in DTYPE_EPS.items():
        assert eps == torch.finfo(getattr(torch, name)).eps, name


def test_a_record_that_cannot_be_read_is_said_and_gives_no_environment(tmp_path):
    (tmp_path / "bench.json").mkdir()  # not a file: open() fails
    said = []
    assert plot_common.load_record(str(tmp_path), said.append, "bench.json") is None
    assert len(said) == 1 and said[0].startswith("bench.json: not readable JSON")


# ---------------------------------------------------------------------------- mutation-testing additions


def core_row(method, total, *, shapes="8x8+4x4", backend="", batch=4, **extra):
    return {"method": method, "backend": backend, "shapes": shapes, "batch": batch, "dtype": "float32",
            "fwd_ms": total / 2, "bwd_ms": total / 2, "total_ms": total, **extra}


def test_core_benchmark_sums_the_medians_where_a_row_lacks_its_total_and_names_the_statistic(figs):
    """plot_core_benchmark: the total is total_ms, fwd_ms + bwd_ms where any row lacks total_ms
    (then no row's total quartiles describe what is drawn), and the axis says which."""
    rows = [core_row("softmax", 1.0, total_ms_q1=0.9, total_ms_q3=1.2), core_row("exact", 3.0)]
    rows[0]["fwd_ms"] = 0.8  # fwd + bwd = 1.3, not the recorded median total 1.0
    del rows[1]["total_ms"]
    plot_core_benchmark(rows, {}, "core.png")
    ax = figs["core"].axes[0]
    assert [p.get_height() for p in ax.patches][:2] == \
        pytest.approx([1e3 * (r["fwd_ms"] + r["bwd_ms"]) / r["batch"] for r in rows])
    assert "median forward + median backward" in ax.get_ylabel()
    assert "interquartile ranges not recorded" in figs["core:footer"].replace("\n", " ")
    rows[1]["total_ms"] = 3.0
    plot_core_benchmark(rows, {}, "core2.png")
    ax = figs["core2"].axes[0]
    assert [p.get_height() for p in ax.patches][:2] == \
        pytest.approx([1e3 * r["total_ms"] / r["batch"] for r in rows])
    assert "median of forward + backward per repetition" in ax.get_ylabel()
    assert "interquartile ranges not recorded" not in figs["core2:footer"].replace("\n", " ")


def test_core_benchmark_draws_no_row_that_was_not_measured_and_names_each(figs):
    """Rows whose status is not ok are not drawn: a failed one is named in its shapes' panel (or in
    the footer where no panel draws its shapes), with its reason in the footer; a skipped one is
    counted in the footer."""
    blank = {"fwd_ms": "", "bwd_ms": "", "total_ms": ""}
    rows = [core_row("softmax", 1.0), core_row("exact", 2.0),
            {**core_row("cvxpylayers", 1.0, backend="moreau"), **blank, "status": "error",
             "reason": "MemoryError: out of memory"},
            {**core_row("cvxpylayers", 1.0, backend="diffcp"), **blank, "status": "skipped",
             "reason": "backend diffcp is not installed"},
            {**core_row("cvxpylayers", 1.0, backend="moreau", shapes="64x64+32x32"), **blank, "status": "error",
             "reason": "RuntimeError: diverged"}]
    plot_core_benchmark(rows, {"exact/softmax": 2.0}, "core.png")
    fig = figs["core"]
    assert len(fig.axes) == 1  # one panel: no shapes of its own for rows not measured
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["softmax", "exact"]
    title = ax.get_title()
    assert "FAILED, not drawn: cvxpylayers (moreau)" in title and "diffcp" not in title
    footer = figs["core:footer"].replace("\n", " ")
    assert "not measured by the sweep: 1 row(s) backend not installed" in footer
    assert "FAILED, not drawn: 2 row(s)" in footer and "MemoryError: out of memory" in footer
    assert "RuntimeError: diverged" in footer and "(at 64x64+32x32: no panel)" in footer


def test_core_benchmark_draws_a_backward_time_only_where_the_row_records_one(figs):
    """On a log axis the forward and backward times are drawn apart; a backward time not recorded
    (empty, or NaN) is not drawn, and never as a number."""
    rows = [core_row("exact", 0.2), {**core_row("cvxpylayers", 100.0, backend="moreau", batch=2), "bwd_ms": ""},
            {**core_row("cvxpylayers", 80.0, backend="diffcp", batch=2), "bwd_ms": float("nan")}]
    plot_core_benchmark(rows, {}, "core.png")
    ax = figs["core"].axes[0]
    assert ax.get_yscale() == "log"
    backward = [line for line in ax.lines if line.get_marker() == "<"]
    assert [list(line.get_ydata()) for line in backward] == [[pytest.approx(1e3 * rows[0]["bwd_ms"] / 4)]]
    assert all(np.isfinite(line.get_ydata()).all() for line in ax.lines)
    # each method in its colour, each backend in the one every figure of the sweep gives it
    styles = plot_common.styles_for({plot_common.Series("cvxpylayers", "", b) for b in ("moreau", "diffcp")})
    totals = [matplotlib.colors.to_hex(line.get_color()) for line in ax.lines if line.get_marker() == "o"]
    assert totals == [plots.METHOD_COLORS["exact"]] + \
        [styles[plot_common.Series("cvxpylayers", "", b)][0] for b in ("moreau", "diffcp")]


def test_core_benchmark_draws_bars_below_a_30x_span_and_points_on_a_log_axis_above(figs):
    for span, scale in ((20.0, "linear"), (40.0, "log")):
        plot_core_benchmark([core_row("softmax", 1.0), core_row("exact", span)], {}, "core.png")
        ax = figs["core"].axes[0]
        assert ax.get_yscale() == scale, span
        assert len(ax.patches) == (4 if scale == "linear" else 0), span  # total and forward bars, or points


def test_core_benchmark_draws_an_interquartile_bar_only_around_a_median_inside_it(figs):
    rows = [core_row("softmax", 1.0, total_ms_q1=1.2, total_ms_q3=1.4),  # quartiles that cannot be its own
            core_row("exact", 2.0, total_ms_q1=1.9, total_ms_q3=2.2)]
    plot_core_benchmark(rows, {}, "core.png")
    ax = figs["core"].axes[0]
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(bars) == 1
    assert sorted(y for _, y in bars[0].lines[2][0].get_segments()[0]) == \
        pytest.approx([1e3 * 1.9 / 4, 1e3 * 2.2 / 4])


def test_time_vs_size_draws_a_row_without_a_timed_batch_or_quartiles_as_what_it_records(figs):
    """A row with no timed batch has no time per sample: counted in the notes, not drawn.  A
    time without quartiles gets no bar (never one down to 0), and the footer's widest spread is
    the widest recorded."""
    rows = sweep_rows()
    exact = [r for r in rows if r["method"] == "exact" and r["dims"] == 2]
    exact[0]["timed_batch"] = ""
    exact[1]["fwd_ms_q1"] = exact[1]["fwd_ms_q3"] = ""
    plots.plot_time_vs_size(rows, "t.png", log=pytest.fail)
    ax = figs["t"].axes[0]
    curve = next(c for c in ax.containers if c.lines[0].get_color() == plots.METHOD_COLORS["exact"])
    assert list(curve.lines[0].get_xdata()) == [r["n_cells"] for r in exact[1:]]
    tb = exact[1]["timed_batch"]
    assert sorted(y for _, y in curve.lines[2][0].get_segments()[0]) == pytest.approx([exact[1]["fwd_ms"] / tb] * 2)
    # the learned dual's kinds timed in the fitted row say so; the exact row without a timed batch is named as
    # not measured (it had been counted among them: ca_rev186)
    borrowed = sum(1 for r in rows if r["status"] == "ok" and r.get("fwd_ms") is None)
    footer = " ".join(figs["t:footer"].split())
    assert f"{borrowed} row(s) carry no time of their own" in footer
    assert "1 ok row(s) hold no forward or backward time (an empty field: not measured), not drawn there: exact" \
        in footer
    widest = max((r[c + "_q3"] - r[c + "_q1"]) / r[c] for r in rows if r.get("fwd_ms") is not None
                 and r["timed_batch"] != "" for c in ("fwd_ms", "bwd_ms") if r[c + "_q1"] != "")
    assert f"(widest: {widest:.0%} of its median;" in footer


def test_time_vs_size_draws_each_fitted_slope_as_a_band_over_its_sizes_and_says_where_none_fits(figs):
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    plots.plot_time_vs_size(rows, "t.png", log=pytest.fail)
    sizes = sorted({r["n_cells"] for r in rows})
    for ax in figs["t"].axes:  # forward and backward, each labelled on its own panel
        bands = [line for line in ax.lines if line.get_linewidth() == 5]
        assert len(bands) == len(ax.texts) > 0  # one band per slope label
        for band in bands:  # every series here follows its power law over all three sizes
            assert list(band.get_xdata()) == [sizes[0], sizes[-1]]
    assert "no slope" not in figs["t:footer"]
    two_sizes = [r for r in rows if r["size"] != 16]  # fewer than three sizes: nothing can be fitted
    plots.plot_time_vs_size(two_sizes, "t2.png", log=pytest.fail)
    assert not [line for ax in figs["t2"].axes for line in ax.lines if line.get_linewidth() == 5]
    assert "no slope: the times follow no power law" in figs["t2:footer"].replace("\n", " ")


def dotted_squares(ax):
    """The points an axes marks low-confidence: [(x, y)]."""
    return [tuple(o) for c in ax.collections if c.get_paths() and c.get_linestyle()[0][1] is not None
            for o in c.get_offsets()]


def test_speedup_marks_a_ratio_low_confidence_where_either_time_is(figs):
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    wide = next(r for r in rows if r["method"] == "exact" and r["size"] == 8)
    wide["total_ms_q1"], wide["total_ms_q3"] = 0.2 * wide["total_ms"], 1.5 * wide["total_ms"]
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    fig = figs["s"]
    cvx = [r for r in rows if r["method"] == "cvxpylayers" and r["cell"] == wide["cell"]]
    marks = dotted_squares(fig.axes[0])
    assert [x for x, _ in marks] == [wide["n_cells"]] * len(cvx) == [wide["n_cells"]] * 2
    assert sorted(y for _, y in marks) == pytest.approx(sorted(r["per_sample_ms"] / wide["per_sample_ms"] for r in cvx))
    assert any("low confidence" in t.get_text() for t in fig.legends[0].get_texts())
    plots.plot_speedup(sweep_rows(), "s2.png", log=pytest.fail)  # every time tight: nothing marked
    assert dotted_squares(figs["s2"].axes[0]) == []
    assert not any("low confidence" in t.get_text() for t in figs["s2"].legends[0].get_texts())


def test_speedup_marks_no_unmeasured_cell_of_a_panel_it_does_not_draw_and_counts_it(figs):
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    far = {**error_row(bench_row("cvxpylayers", backend="moreau", dims=3, cell=50)), "status": "skipped",
           "reason": "estimated 900 s > --budget 600 s"}
    plots.plot_speedup(rows + [far], "s.png", log=pytest.fail)
    fig = figs["s"]
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["2-D grids, 2 levels"]
    assert not any("not measured" in t.get_text() for t in fig.legends[0].get_texts())
    assert not [line for ax in fig.axes for line in ax.lines if line.get_mfc() == "none"]
    assert "1 row(s) over --budget" in figs["s:footer"].replace("\n", " ")


def test_speedup_marks_each_backends_unmeasured_cells_on_a_row_of_its_own(figs):
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    for backend in ("diffcp-clarabel", "moreau"):
        rows.append({**error_row(bench_row("cvxpylayers", backend=backend, size=32, cell=9)), "status": "skipped",
                     "reason": "problem size 1344 cells > cap --cvx-max-cells 1000"})
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    hollow = [line for line in figs["s"].axes[0].lines if line.get_mfc() == "none"]
    styles = plot_common.styles_for({plot_common.Series("cvxpylayers", "", b) for b in ("diffcp-clarabel", "moreau")})
    assert sorted(line.get_color() for line in hollow) == sorted(color for color, _ in styles.values())
    assert len({line.get_ydata()[0] for line in hollow}) == 2  # one row per backend, not one on the other


def test_speedup_names_the_device_in_its_titles_where_the_rows_have_several(figs):
    """Cells of another device that draw no line still make the device worth naming."""
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    rows += [scaled(r, 0.1, device="cuda", cell=r["cell"] + 100) if r["method"] != "cvxpylayers" else
             {**error_row(r), "status": "skipped", "device": "cuda", "cell": r["cell"] + 100,
              "reason": f"{r['backend']} solves on cpu; see the cpu cells"} for r in rows]
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    assert [ax.get_title() for ax in figs["s"].axes if ax.get_visible()] == ["2-D grids, 2 levels, cpu"]


def test_violation_skips_and_names_a_row_of_a_dtype_it_has_no_epsilon_for(figs):
    rows = cell_rows()
    odd = next(r for r in rows if r["method"] == "softmax")
    odd["dtype"] = "int8"
    notes = []
    plots.plot_violation(rows, "v.png", log=notes.append)
    assert len(notes) == 1 and "dtype='int8' is not one of" in notes[0]
    axes = [ax for ax in figs["v"].axes if ax.get_visible()]
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["computed in float32", "computed in float64"]
    assert "softmax" not in [t.get_text() for ax in axes for t in ax.get_xticklabels()]


@pytest.mark.parametrize("shapes", ["6x6+4x4", "8x8", "8x8+4x4x4", "8x8+0x0", "chain"])
def test_violation_draws_no_rounding_level_where_no_cell_is_a_grid_whose_sizes_divide(figs, shapes):
    rows = [{**r, "shapes": shapes} for r in cell_rows()]
    plots.plot_violation(rows, "v.png", log=pytest.fail)
    assert not [line for ax in figs["v"].axes for line in ax.lines if line.get_linestyle() == "--"]
    assert "rounding level not drawn: no cell with grid shapes" in figs["v:footer"].replace("\n", " ")


def test_violation_draws_the_median_rounding_level_over_the_band_of_the_panels_cells(figs):
    rows = cell_rows(size=8) + cell_rows(size=16, cell=1) + cell_rows(size=4, dtype="float64", cell=2)
    plots.plot_violation(rows, "v.png", log=pytest.fail)
    ax = figs["v"].axes[0]
    assert ax.get_title().startswith("computed in float32")
    levels = [consistency.rounding_level(g, "float32") for g in ([(8, 8), (4, 4)], [(16, 16), (8, 8)])]
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == \
        [pytest.approx(float(np.median(levels)))]
    band = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(band) == 1
    assert (band[0].get_y(), band[0].get_y() + band[0].get_height()) == \
        pytest.approx((min(levels) / 1.15, max(levels) * 1.15))


def test_a_violation_of_exactly_0_is_drawn_at_a_marked_floor_even_with_nothing_above_0(figs):
    rows = [{**r, "violation_mean": 0.0, "shapes": "chain"} for r in cell_rows()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned of identical y-limits (one value drawn)
        plots.plot_violation(rows, "v.png", log=pytest.fail)
    fig = figs["v"]
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        floors = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":"]
        assert len(floors) == 1 and 0 < floors[0] < min(DTYPE_EPS.values())
        low, high = ax.get_ylim()
        assert low < floors[0] < high
        ys = [y for c in ax.collections for _, y in c.get_offsets()]
        assert ys and all(y == floors[0] for y in ys)
    assert any("exactly 0" in t.get_text() for t in fig.legends[0].get_texts())


def test_convergence_draws_a_value_at_or_below_its_floor_at_the_floor_never_off_the_log_axis(figs):
    rows = [{"cell": 0, "dims": 2, "size": 8, "levels": 2, "iteration": i, "violation_max": v, "dual_gap_max": g}
            for i, (v, g) in enumerate([(1e-3, 1e-4), (1e-9, 1e-12), (0.0, -1e-20)])]
    plots.plot_convergence(rows, "c.png", log=pytest.fail)
    fig = figs["c"]
    drawn = [list(line.get_ydata()) for ax in fig.axes[:2] for line in ax.lines]
    assert len(drawn) == 2
    floor = drawn[0][-1]
    assert 0 < floor < 1e-12 and drawn[1][-1] == floor  # 0 and a rounding-negative gap, at one marked floor
    assert drawn[0][:2] == [1e-3, 1e-9] and drawn[1][:2] == [1e-4, 1e-12]
    assert "drawn at" in fig._suptitle.get_text()


def test_convergence_draws_a_negative_gap_at_its_magnitude_as_the_per_structure_figure_does(figs):
    """A batch's largest gap below 0 beyond rounding (g < f*: a wrong reference or dual) shows
    at its size, never at the floor."""
    rows = [{"cell": 0, "dims": 2, "size": 8, "levels": 2, "iteration": i, "violation_max": v, "dual_gap_max": g}
            for i, (v, g) in enumerate([(1e-3, 1e-4), (1e-9, -1e-3)])]
    plots.plot_convergence(rows, "c.png", log=pytest.fail)
    gap_axis = figs["c"].axes[1]
    assert gap_axis.get_ylabel() == r"dual gap $|\max_{\mathrm{batch}}(g(\lambda) - f^*)|$"
    assert list(gap_axis.lines[0].get_ydata()) == [1e-4, 1e-3]


def test_convergence_colours_each_grid_size_and_skips_a_negative_violation_by_name(figs):
    rows = [{"cell": c, "dims": 2, "size": size, "levels": 2, "iteration": i, "violation_max": 10.0 ** -i,
             "dual_gap_max": 10.0 ** -i} for c, size in enumerate((8, 16)) for i in range(3)]
    rows.append({**rows[-1], "iteration": 3, "violation_max": -1e-3})
    notes = []
    plots.plot_convergence(rows, "c.png", log=notes.append)
    assert len(notes) == 1 and "violation_max" in notes[0]
    lines = figs["c"].axes[0].lines
    assert [len(line.get_xdata()) for line in lines] == [3, 3]  # the negative violation is not drawn
    assert lines[0].get_color() != lines[1].get_color()
    assert [t.get_text() for t in figs["c"].legends[0].get_texts()][:2] == ["$8^2$", "$16^2$"]


# ---------------------------------------------------------------------------- structures and maps: what is checked


def axial_cells():
    """A chain cell and two cells each of axial and grid_regions (3 maps), side 8 and 16."""
    rows = [{**r, "structure": "chain"} for r in cell_rows(size=8)]
    cell = 10
    for structure, shapes in (("axial", "16x16+16x1+1x16"), ("grid_regions", "16x16+2x2+4")):
        for size in (8, 16):
            rows += [{**r, "structure": structure, "shapes": shapes.replace("16", str(size))}
                     for r in cell_rows(size=size, levels=3, cell=cell)]
            cell += 1
    return rows


def test_pareto_per_structure_draws_the_largest_timed_dual_cell_and_names_only_its_failures(figs):
    rows = axial_cells()
    untimed = next(r for r in rows if r.get("structure") == "axial" and r["size"] == 16 and r["method"] == "dual")
    untimed["per_sample_ms"] = ""  # dual not timed at the larger axial cell: the smaller one is drawn
    failed = {}
    for size, backend in ((16, "moreau"), (8, "diffcp-clarabel")):
        r = next(r for r in rows if r.get("structure") == "grid_regions" and r["size"] == size
                 and r["backend"] == backend)
        r.update(status="error", reason=f"RuntimeError: {backend} broke", violation_mean="", per_sample_ms="")
        failed[size] = r
    plots.plot_pareto_per_structure(rows, "p.png", log=pytest.fail)
    titles = {t.split("\n")[0]: t for t in (ax.get_title() for ax in figs["p"].axes if ax.get_visible())}
    assert titles["axial (rows + columns)"].split("\n")[1].startswith("8x8+8x1+1x8")
    grid = titles["grid + regions"]
    assert "16x16+2x2+4" in grid and "FAILED: " + plot_common.series_name(failed[16]) in grid
    assert plot_common.series_name(failed[8]) not in grid, "a failure at a cell not drawn"
    footer = " ".join(figs["p:footer"].split())  # as one line, however the footer wraps
    assert plot_common.failed_note([failed[16]]) + " (at the cells drawn)" in footer
    assert "diffcp-clarabel broke" not in footer
    assert "cvxpylayers timed on fewer samples than the batch" in footer  # timed_batch 2 of 4


def test_pareto_per_structure_draws_violations_of_exactly_0_below_every_value_it_could_have(figs):
    rows = [{**r, "violation_mean": 0.0} if r["status"] == "ok" else r for r in axial_cells()]
    plots.plot_pareto_per_structure(rows, "p.png", log=pytest.fail)
    ys = {y for ax in figs["p"].axes if ax.get_visible() for _, y in panel_points(ax)}
    assert len(ys) == 1 and 0 < ys.pop() < min(DTYPE_EPS.values())


def test_pareto_per_structure_of_chains_only_or_without_n_cells_draws_nothing_and_says_why(tmp_path):
    chains = [{**r, "structure": "chain"} for r in cell_rows()]
    logged = []
    assert plots.plot_pareto_per_structure(chains, str(tmp_path / "p.png"), log=logged.append) is None
    assert len(logged) == 1 and "chains only" in logged[0] and not os.listdir(tmp_path)
    logged.clear()
    rows = [{k: v for k, v in r.items() if k != "n_cells"} for r in axial_cells()]
    assert plots.plot_pareto_per_structure(rows, str(tmp_path / "p.png"), log=logged.append) is None
    assert logged == ["pareto_per_structure: bench.csv lacks column(s) n_cells; not drawn"]
    assert not os.listdir(tmp_path)


def test_pareto_per_structure_skips_and_names_a_row_of_no_cells(tmp_path):
    rows = [{**r, "structure": "axial", "shapes": "8x8+8x1+1x8"} for r in cell_rows(levels=3)]
    next(r for r in rows if r["method"] == "dual")["n_cells"] = 0  # the panel's only dual row
    notes = []
    assert plots.plot_pareto_per_structure(rows, str(tmp_path / "p.png"), log=notes.append) is None
    assert len(notes) == 2 and "skipped 1 row(s)" in notes[0] and "n_cells" in notes[0]
    assert "no structure has a timed dual row; not written" in notes[1] and not os.listdir(tmp_path)


def structure_convergence_rows():
    return [{"cell": c, "structure": "axial", "dims": 2, "size": size, "levels": 3, "temperature": 1.0,
             "iteration": i, "violation_max": 10.0 ** -i, "dual_gap_max": 10.0 ** (-2 * i)}
            for c, size in ((0, 8), (1, 16)) for i in range(4)]


def test_convergence_per_structure_skips_and_names_unusable_rows_and_draws_a_gap_left_empty(figs):
    rows = structure_convergence_rows()
    good = rows[-1]
    rows += [{**good, "iteration": 9, **bad} for bad in ({"levels": 0}, {"cell": -1}, {"size": 0},
                                                         {"iteration": -1}, {"violation_max": -1e-3})]
    rows.append({**good, "iteration": 4, "violation_max": 1e-5, "dual_gap_max": ""})  # no gap recorded: drawn
    notes = []
    plots.plot_convergence_per_structure(rows, "c.png", log=notes.append)
    assert len(notes) == 1 and "skipped 5 row(s) of convergence.csv" in notes[0]
    for col in ("levels", "cell", "size", "iteration", "violation_max"):
        assert col in notes[0], col
    top, bottom = ([line for line in ax.lines if line.get_linestyle() != ":"] for ax in figs["c"].axes[:2])
    assert [list(line.get_xdata()) for line in top] == [[0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert [list(line.get_xdata()) for line in bottom] == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_convergence_per_structure_tells_apart_cells_of_one_size_by_temperature_then_by_cell(figs):
    rows = [{**r, "cell": c, "temperature": t} for c, t in ((0, 1.0), (1, 1.0), (2, 0.5))
            for r in structure_convergence_rows() if r["cell"] == 0]
    rows.reverse()  # in no order: each line is drawn by sweep
    plots.plot_convergence_per_structure(rows, "c.png", log=pytest.fail)
    top = figs["c"].axes[0]
    assert [t.get_text() for t in column_legend(figs["c"], 0).get_texts()] == [
        "side 8, 3 maps, temperature 0.5", "side 8, 3 maps, temperature 1.0, cell 0",
        "side 8, 3 maps, temperature 1.0, cell 1"]
    assert all(list(line.get_xdata()) == [0, 1, 2, 3] for line in top.lines[:3])


def test_convergence_per_structure_of_chains_only_draws_nothing_and_says_why(tmp_path):
    rows = [{**r, "structure": "chain"} for r in structure_convergence_rows()]
    logged = []
    assert plots.plot_convergence_per_structure(rows, str(tmp_path / "c.png"), log=logged.append) is None
    assert len(logged) == 1 and "no convergence rows of a structure other than the chain" in logged[0]
    assert not os.listdir(tmp_path)


def test_convergence_per_structure_draws_a_zero_violation_at_the_dotted_floor_below_every_value(figs):
    rows = structure_convergence_rows()
    rows.append({**rows[-1], "iteration": 4, "violation_max": 0.0, "dual_gap_max": 0.0})
    plots.plot_convergence_per_structure(rows, "c.png", log=pytest.fail)
    top, bottom = figs["c"].axes[0], figs["c"].axes[1]
    (floor,) = {line.get_ydata()[0] for ax in (top, bottom) for line in ax.lines if line.get_linestyle() == ":"}
    assert 0 < floor < min(v for r in rows for v in (r["violation_max"], r["dual_gap_max"]) if v > 0)
    assert top.lines[1].get_ydata()[-1] == floor and bottom.lines[1].get_ydata()[-1] == floor
    assert list(top.lines[1].get_ydata()[:4]) == [10.0 ** -i for i in range(4)]


def test_convergence_per_structure_draws_a_negative_gap_at_its_magnitude_as_its_axis_says(figs):
    """A gap below 0 is drawn as |g - f*| (the axis's label), never hidden at the floor."""
    rows = structure_convergence_rows()
    rows.append({**rows[-1], "iteration": 4, "violation_max": 1e-6, "dual_gap_max": -1e-3})  # g < f*
    plots.plot_convergence_per_structure(rows, "c.png", log=pytest.fail)
    bottom = figs["c"].axes[1]
    assert bottom.get_ylabel() == "dual gap\n" + r"$|\max_{\mathrm{batch}}(g(\lambda) - f^*)|$"
    (floor,) = {line.get_ydata()[0] for line in bottom.lines if line.get_linestyle() == ":"}
    assert floor < 1e-3 and bottom.lines[1].get_ydata()[-1] == 1e-3


def backward_rows():
    rows = [{"family": "axial", "kind": "implicit", "parameter": tol, "fwd_per_sample_ms": 2.0,
             "bwd_per_sample_ms": 0.5 + tol, "gradient_error": tol * 10} for tol in (1e-8, 1e-4)]
    rows += [{"family": "axial", "kind": "unrolled", "parameter": n, "fwd_per_sample_ms": 0.3 * n,
              "bwd_per_sample_ms": 0.4 * n, "gradient_error": 0.5 / n} for n in (1, 8)]
    return rows


def test_backward_skips_and_names_unusable_rows_and_draws_an_exact_gradient_at_a_floor(figs):
    rows = backward_rows()
    rows += [{**rows[0], **bad} for bad in ({"parameter": 0}, {"gradient_error": -1.0},
                                            {"bwd_per_sample_ms": 1e300})]
    rows.append({**rows[3], "parameter": 16, "fwd_per_sample_ms": "", "bwd_per_sample_ms": 6.4,
                 "gradient_error": 0.0})  # exact, no fwd
    notes = []
    plots.plot_backward(rows, "b.png", None, notes.append)
    assert len(notes) == 1 and "skipped 3 row(s) of backward.csv" in notes[0]
    for col in ("parameter", "gradient_error", "bwd_per_sample_ms"):
        assert col in notes[0], col
    ax = figs["b"].axes[0]
    implicit, unrolled, zero_line = ax.get_lines()  # the third: where an error of exactly 0 is drawn (ca_rev77)
    assert list(implicit.get_ydata()) == [1e-7, 1e-3]  # tolerance ascending
    assert list(unrolled.get_xdata()) == [0.4, 3.2, 6.4]
    floor = unrolled.get_ydata()[-1]
    assert 0 < floor < 1e-7 and list(unrolled.get_ydata()[:2]) == [0.5, 0.0625]
    assert list(zero_line.get_ydata()) == [floor, floor]
    assert [t.get_text() for t in ax.texts] == ["1e-08", "1e-04", "1", "8", "16"]  # tolerance, sweeps
    assert "computed in float64" in figs["b:footer"]


def test_backward_without_a_usable_row_draws_nothing_and_says_why(tmp_path):
    logged = []
    rows = [{**r, "gradient_error": "nan"} for r in backward_rows()]
    assert plots.plot_backward(rows, str(tmp_path / "b.png"), None, logged.append) is None
    assert len(logged) == 2 and "skipped 4 row(s)" in logged[0] and "no usable rows; not written" in logged[1]
    assert not os.listdir(tmp_path)


@pytest.mark.slow  # draws the attention-map figure (~0.5 s)
def test_attention_maps_draw_each_residual_on_a_shared_symmetric_scale_and_leave_out_a_failed_method(
        tmp_path, figs, monkeypatch):
    from convex_attention.bench.plots import maps

    write_example(str(tmp_path))
    solve = maps.solve

    def flaky(scores, h, name, **kw):
        if name == "dual":
            raise RuntimeError("did not converge")
        sol = solve(scores, h, name, **kw)
        if name == "exact":
            sol.probs[0][0, 0, 0] = float("nan")
        return sol

    monkeypatch.setattr(maps, "solve", flaky)
    notes = []
    plots.plot_attention_maps(str(tmp_path / "example.npz"), "maps.png", log=notes.append)
    assert len(notes) == 2 and "dual failed on the example (did not converge)" in notes[0]
    assert "exact gave NaN or Inf" in notes[1]
    grid = [ax for ax in figs["maps"].axes if ax.images]
    rows = [grid[i:i + 3] for i in range(0, len(grid), 3)]
    assert [r[0].get_ylabel().split("\n")[0] for r in rows] == ["softmax", "learned_dual", "learned_dual"]
    resid = []
    for p0, p1, r in rows:
        a0, a1 = np.asarray(p0.images[0].get_array()), np.asarray(p1.images[0].get_array())
        want = a0.reshape(4, 2, 4, 2).sum(axis=(1, 3)) - a1  # P_0 p_0 − p_1: sum over each 2x2 block
        got = np.asarray(r.images[0].get_array())
        assert np.allclose(got, want, rtol=0, atol=1e-12)
        assert f"= {figures.sci(float(np.abs(got).sum()))}$" in r.get_xlabel()
        resid.append(got)
    dmax = max(float(np.abs(g).max()) for g in resid)
    assert {r[2].images[0].get_clim() for r in rows} == {(-dmax, dmax)}

    assert "computed in float64" in figs["maps:footer"]

    monkeypatch.setattr(maps, "solve", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("down")))
    with pytest.raises(ValueError, match="no method solved the example"):
        plots.plot_attention_maps(str(tmp_path / "example.npz"), str(tmp_path / "m2.png"), log=lambda m: None)
    assert not os.path.exists(tmp_path / "m2.png")


def test_backward_rows_without_a_family_column_are_named_and_nothing_is_drawn(tmp_path):
    logged = []
    rows = [{k: v for k, v in r.items() if k != "family"} for r in backward_rows()]
    assert plots.plot_backward(rows, str(tmp_path / "b.png"), None, logged.append) is None
    assert logged == ["backward_implicit_vs_unrolled: backward.csv lacks column(s) family; not drawn"]
    assert not os.listdir(tmp_path)


def test_backward_skips_and_names_a_row_without_a_family(figs):
    rows = backward_rows()
    rows.append({**rows[0], "family": ""})
    notes = []
    plots.plot_backward(rows, "b.png", None, notes.append)
    assert [ax.get_title() for ax in figs["b"].axes] == ["axial (rows + columns)"]
    assert len(notes) == 1 and "family" in notes[0]


# ---------------------------------------------------------------------------- review 52: figures for papers


def test_core_benchmark_names_the_device_where_its_bars_ran_on_several(figs):
    """bench_core.py --device cuda times exact on the GPU and cvxpylayers on the CPU (its only
    mode): the panel drew both, with 'cvxpylayers/exact per sample', and the title, the axis and
    the footer named neither device (the footer names the GPU, as if every bar ran there)."""
    rows = [core_row("exact", 0.2, shapes="4x4+2x2", device="cuda"),
            core_row("cvxpylayers", 100.0, shapes="4x4+2x2", backend="moreau", batch=2, dtype="float64",
                     device="cpu")]
    plot_core_benchmark(rows, {"cvxpylayers/exact per sample": 1.0}, "core.png",
                        {**ENV, "gpu": "NVIDIA H100", "device": "cuda"})
    (title,) = [ax.get_title() for ax in figs["core"].axes if ax.get_title()]
    assert "cuda" in title and "cpu" in title


def test_core_benchmark_legend_never_calls_total_minus_forward_the_backward(figs):
    """total_ms is the median of the per-repetition sums, not fwd_ms + bwd_ms: with fwd 1, bwd 1
    and total 3 ms (B = 4) the legend said 'bar: backward (rest of the bar)' over 500 µs of bar
    while the file's backward median is 250 µs per sample (committed bench_core: softmax's rest
    is 0.345 ms against its bwd_ms of 0.321)."""
    rows = [core_row("softmax", 1.5, fwd_ms=1.0, bwd_ms=1.0), core_row("exact", 3.0, fwd_ms=1.0, bwd_ms=1.0)]
    plot_core_benchmark(rows, {}, "core.png")
    fig = figs["core"]
    ax = fig.axes[0]
    totals, forwards = [p.get_height() for p in ax.patches][:2], [p.get_height() for p in ax.patches][2:]
    rests = [t - f for t, f in zip(totals, forwards)]
    assert rests == pytest.approx([125.0, 500.0])  # what the lighter part of each bar shows (µs per sample)
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    says_backward = [t for t in labels if "backward" in t and "rest of the bar" in t]
    # the file's backward is 250 µs per sample for both: the rest of the bar is not it
    assert not says_backward, says_backward


def test_core_benchmark_leaves_out_and_names_an_ok_row_without_a_finite_time(figs):
    """targets.core_benchmark counts a backend 'whose time is no number' as failed, and
    bench_core.json writes that time as null: the figure raised TypeError (float(None)), so the
    run that measured it ended in a traceback after writing its files, and --plot-only refused
    the record."""
    rows = [core_row("exact", 0.2, shapes="4x4+2x2"),
            core_row("cvxpylayers", 100.0, shapes="4x4+2x2", backend="diffcp", batch=2, dtype="float64"),
            {**core_row("cvxpylayers", 1.0, shapes="4x4+2x2", backend="moreau", batch=2, dtype="float64"),
             "status": "ok", "fwd_ms": None, "bwd_ms": None, "total_ms": None, "total_ms_q1": None,
             "total_ms_q3": None}]
    plot_core_benchmark(rows, {}, "core.png")
    ax = figs["core"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["exact", "cvxpylayers\n(diffcp)"]
    assert "moreau" in ax.get_title() + figs["core:footer"]


def test_core_benchmark_gives_no_measured_ratio_where_a_failed_backend_might_have_been_faster(figs):
    """results_format.md: where a backend failed it might have been the fastest, so the ratio to
    the others stands only where it already misses the target; bench_core.json then records
    null (NOT measured).  The panel's title said 'cvxpylayers/exact per sample = 1e+04', a
    number the record does not hold, beside 'FAILED, not drawn: cvxpylayers (moreau)'."""
    rows = [core_row("exact", 0.2, shapes="4x4+2x2"),  # 50 µs per sample
            core_row("cvxpylayers", 1000.0, shapes="4x4+2x2", backend="diffcp", batch=2, dtype="float64"),
            {**core_row("cvxpylayers", 1.0, shapes="4x4+2x2", backend="moreau", batch=2, dtype="float64"),
             "status": "error", "reason": "RuntimeError: diverged", "fwd_ms": None, "bwd_ms": None, "total_ms": None}]
    plot_core_benchmark(rows, {"cvxpylayers/exact per sample": float("nan")}, "core.png")
    (title,) = [ax.get_title() for ax in figs["core"].axes if ax.get_title()]
    assert "FAILED, not drawn: cvxpylayers (moreau)" in title
    assert "cvxpylayers/exact per sample = " not in title, title


def test_pareto_per_structure_names_a_structure_it_cannot_draw(figs):
    """Every dual row of grid_regions failed: its panel vanished, and neither the figure nor
    stderr said so; the footer's failures are those 'at the cells drawn' only."""
    rows = axial_cells()
    for r in rows:
        if r.get("structure") == "grid_regions" and r["method"] == "dual":
            r.update(status="error", reason="RuntimeError: diverged", violation_mean="", per_sample_ms="")
    notes = []
    plots.plot_pareto_per_structure(rows, "p.png", log=notes.append)
    titles = [ax.get_title() for ax in figs["p"].axes if ax.get_visible()]
    assert not any(t.startswith("grid + regions") for t in titles)  # no cell of it can be drawn
    footer = " ".join(figs["p:footer"].split())
    assert "grid_regions" in footer or "grid + regions" in footer, footer
    assert any("grid_regions" in n for n in notes), notes


def test_dual_convergence_names_the_cells_whose_dual_solver_failed(tmp_path, figs):
    """The convergence figure is the dual solver's: a cell where it raised has no history and
    its curve was simply missing, with a footer that names no failure."""
    folder = str(tmp_path / "r")
    rows = sweep_rows()
    for i, r in enumerate(rows):
        if r["method"] == "dual" and r["cell"] == 2:
            rows[i] = error_row(r, "RuntimeError: the dual solver diverged")
    write_bench(folder, rows)
    write_convergence(folder)  # histories of cells 0 and 1
    plot_results(folder, log=lambda m: None)
    footer = " ".join(figs["dual_convergence:footer"].split())
    assert "FAILED" in footer and "the dual solver diverged" in footer, footer


@pytest.mark.slow  # solves the example (~0.5 s)
def test_attention_maps_say_on_the_figure_which_method_was_left_out(tmp_path, figs, monkeypatch):
    from convex_attention.bench.plots import maps

    write_example(str(tmp_path))
    solve = maps.solve

    def flaky(scores, h, name, **kw):
        if name == "dual":
            raise RuntimeError("did not converge")
        return solve(scores, h, name, **kw)

    monkeypatch.setattr(maps, "solve", flaky)
    notes = []
    plots.plot_attention_maps(str(tmp_path / "example.npz"), "maps.png", log=notes.append)
    assert len(notes) == 1  # said on stderr ...
    names = [ax.get_ylabel().split("\n")[0] for ax in figs["maps"].axes if ax.get_ylabel()]
    assert "dual" not in names
    footer = " ".join(figs["maps:footer"].split())
    assert "dual" in footer.replace("learned_dual", "") and "did not converge" in footer, footer  # ... and on it


def test_speedup_footer_names_the_dtype_of_the_exact_times_it_divides_by(figs):
    """cvxpylayers measured in the float64 cell only: every ratio drawn divides by exact's
    float64 time, and the footer said 'exact timed ... in float32/float64'."""
    rows = cell_rows(dtype="float64", cell=0) + \
        [r for r in cell_rows(dtype="float32", cell=1) if r["method"] != "cvxpylayers"]
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    footer = " ".join(figs["s:footer"].split())
    assert "exact timed on B = 4 samples in float64," in footer, footer


def test_backward_labels_each_point_with_the_tolerance_the_file_records(figs):
    rows = backward_rows()
    rows[0]["parameter"] = 2.5e-7  # the implicit row at 1e-8
    plots.plot_backward(rows, "b.png", None, pytest.fail)
    labels = [t.get_text() for t in figs["b"].axes[0].texts]
    assert float(labels[0]) == 2.5e-7 and float(labels[1]) == 1e-4, labels


def test_core_benchmark_names_a_row_with_a_zero_time_as_failed_and_computes_no_ratio_from_it():
    """timing.is_measured_time: a zero time is a failed measurement.  Before, the panel's
    ratio divided by it (ZeroDivisionError while drawing)."""
    from convex_attention.bench.plots.speed import _core_bars, _core_title, _untimed
    rows = [dict(method="exact", backend="", shapes="64", batch=8, fwd_ms=0.0, total_ms=0.0, bwd_ms=0.0,
                 dtype="float32", status="ok"),
            dict(method="softmax", backend="", shapes="64", batch=8, fwd_ms=0.1, total_ms=0.2, bwd_ms=0.1,
                 dtype="float32", status="ok")]
    assert _untimed(rows[0]) and not _untimed(rows[1])
    panels, _ = _core_bars(rows)
    assert [b.method for b in panels["64"]] == ["softmax"]
    assert "exact/softmax" not in _core_title("64", panels["64"], ["exact/softmax"], ["exact (no time)"],
                                              failed_methods={"exact"})


def test_ca_rev71_core_ratios_bound_a_ratio_where_a_series_failed():
    """timing.fastest's rule ("a failed series is never the fastest, and never forgotten"): a
    backend with a zero time is not drawn, and the panel's title gives cvxpylayers/exact as a
    bound (≤); core_ratios, which says it computes "the ratios plot_core_benchmark draws",
    drops the failed backend and returns the ratio to the slow one as exact, "fastest: slow"."""
    rows = [core_row("exact", 0.2, shapes="4x4+2x2"),
            core_row("cvxpylayers", 100.0, shapes="4x4+2x2", backend="slow", batch=2, dtype="float64"),
            core_row("cvxpylayers", 0.0, shapes="4x4+2x2", backend="zero", batch=2, dtype="float64")]
    out = core_ratios(rows, ["cvxpylayers/exact per sample"])
    assert "cvxpylayers/exact per sample" not in out, out


# ---------------------------------------------------------------------------- review ca_rev77

def _ca_rev77_text(figs, name):
    """Every text of figure ``name`` and its footer, on one line, lower case."""
    return " ".join((all_texts(figs[name]) + " " + figs[name + ":footer"]).split()).lower()


def test_ca_rev77_dual_convergence_draws_the_violation_of_a_cell_whose_gap_was_not_certified(figs):
    """sweep._convergence_rows writes the gap columns empty where the reference is not
    certified; the violation history is still measured.  The chain figure skipped every such
    row ("dual_gap_max is empty"), so the cell's violation line was not drawn at all (the
    per-structure figure draws it)."""
    rows = [{"cell": c, "dims": 2, "size": 8, "levels": 2, "temperature": 1.0, "iteration": i,
             "violation_max": 10.0 ** -i, "dual_gap_max": "" if c == 1 else 10.0 ** (-2 * i)}
            for c in (0, 1) for i in range(5)]
    plots.plot_convergence(rows, "c.png", log=lambda message: None)
    assert len(figs["c"].axes[0].lines) == 2  # one violation line per cell


def test_ca_rev77_time_vs_size_says_which_series_were_timed_on_fewer_samples_than_the_batch(figs):
    """Per-sample times of cvxpylayers (timed_batch 2) beside the others' (timed_batch 4):
    tradeoff and pareto_per_structure say so (fewer_timed_note), time_vs_size did not."""
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    assert {r["timed_batch"] for r in rows if r["method"] == "cvxpylayers"} == {2}
    plots.plot_time_vs_size(rows, "t.png", log=pytest.fail)
    assert "timed on fewer samples than the batch" in _ca_rev77_text(figs, "t")


def test_ca_rev77_backward_marks_times_that_rest_on_fewer_than_3_repetitions(figs):
    """design.md §6: a time resting on fewer than 3 repetitions is low-confidence, "the
    figures mark it"; backward.csv records repeats, which the figure never read."""
    rows = [{**r, "repeats": 1} for r in backward_rows()]
    plots.plot_backward(rows, "b.png", None, pytest.fail)
    ax = figs["b"].axes[0]
    assert dotted_squares(ax) or "low confidence" in _ca_rev77_text(figs, "b")


def test_ca_rev77_backward_says_where_it_draws_a_gradient_error_of_exactly_0(figs):
    """The other log-axis figures name the floor a 0 is drawn at ("violation exactly 0, drawn
    at ..."); the backward figure moved the 0 to 1e-17 and said nothing."""
    rows = backward_rows()
    rows.append({**rows[3], "parameter": 16, "bwd_per_sample_ms": 6.4, "gradient_error": 0.0})
    plots.plot_backward(rows, "b.png", None, pytest.fail)
    assert min(figs["b"].axes[0].get_lines()[1].get_ydata()) > 0  # drawn at the floor
    assert "exactly 0" in _ca_rev77_text(figs, "b")


def test_ca_rev77_tradeoff_names_its_statistic_and_its_error_bars(figs):
    """Points at the median time with the interquartile range as x error bars: nothing on
    the figure said median or interquartile (unless a point happened to be low-confidence)."""
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    plots.plot_tradeoff(rows, "tr.png", log=pytest.fail)
    assert any(len(line.get_segments()) for c in figs["tr"].axes[0].containers for line in c.lines[2])
    text = _ca_rev77_text(figs, "tr")
    assert "median" in text and ("interquartile" in text or "iqr" in text)


def test_ca_rev77_speedup_names_the_statistic_its_ratios_are_of(figs):
    rows = [r for r in sweep_rows() if r["dims"] == 2]
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    assert "median" in _ca_rev77_text(figs, "s")


def test_ca_rev77_core_benchmark_sums_no_backward_a_row_does_not_have(figs):
    """_timed accepts a row with a total but no backward and one with a backward but no
    total; together, every bar becomes fwd + bwd and the first row's null backward is summed."""
    rows = [core_row("exact", 1.0, bwd_ms=None), core_row("softmax", 0.5, total_ms=None)]
    plot_core_benchmark(rows, {"exact/softmax": 2.0}, "core.png")
    ax = figs["core"].axes[0]
    heights = [p.get_height() for p in ax.patches] + [float(y) for line in ax.lines for y in line.get_ydata()]
    assert heights and all(np.isfinite(heights)), heights
    assert "nan" not in ax.get_title()


def test_ca_rev77_core_benchmark_of_rows_that_all_failed_says_so_instead_of_crashing(figs):
    rows = [{**core_row("exact", 1.0), "status": "error", "reason": "RuntimeError: out of memory"}]
    out = plot_core_benchmark(rows, {"exact/softmax": 2.0}, "core.png")
    assert out is None or "failed" in _ca_rev77_text(figs, "core")


# ---------------------------------------------------------------------------- review ca_rev78

def test_ca_rev78_dual_convergence_no_gap_note_is_a_whole_sentence(figs):
    rows = [{"cell": c, "dims": 2, "size": 8, "levels": 2, "temperature": 1.0, "iteration": i,
             "violation_max": 10.0 ** -i, "dual_gap_max": "" if c == 1 else 10.0 ** (-2 * i)}
            for c in (0, 1) for i in range(5)]
    plots.plot_convergence(rows, "c.png", log=pytest.fail)
    footer = " ".join(figs["c:footer"].split())
    assert "no dual gap drawn" in footer
    assert "the violation is drawn" in footer, footer


def test_ca_rev78_core_footer_names_the_row_it_leaves_out_for_want_of_a_backward(figs):
    """With the medians summed (a row lacks total_ms), a row without a backward is untimed
    (_failed_series: the title says '(no time)'); the footer's NOT TIMED note calls
    _untimed(r) without the statistic and leaves it out."""
    rows = [core_row("exact", 1.0, bwd_ms=None), core_row("softmax", 0.5, total_ms=None)]
    plot_core_benchmark(rows, {}, "core.png")
    assert "exact (no time)" in " ".join(figs["core"].axes[0].get_title().split())
    footer = " ".join(figs["core:footer"].split())
    assert "NOT TIMED" in footer and "exact" in footer, footer


def test_ca_rev78_core_nothing_measured_of_no_rows_claims_no_failure(figs):
    plot_core_benchmark([], {}, "core.png")
    assert "every row failed" not in _ca_rev77_text(figs, "core")


def test_ca_rev78_core_nothing_measured_gives_each_failure_its_reason(figs):
    """plot_core_benchmark's docstring (and plot_core_record's): the footer gives a failed
    row's reason; the normal figure does (failed_note), the 'nothing measured' one does not."""
    rows = [{**core_row("exact", 1.0), "status": "error", "reason": "RuntimeError: out of memory"}]
    plot_core_benchmark(rows, {}, "core.png")
    assert "out of memory" in _ca_rev77_text(figs, "core")


def test_ca_rev78_core_nothing_measured_tells_untimed_rows_from_failed_ones(figs):
    """The normal figure keeps 'FAILED' (status error) apart from 'NOT TIMED' (an ok row whose
    time is no number); the 'nothing measured' figure says 'every row failed' of ok rows."""
    rows = [core_row("exact", 1.0, fwd_ms=None), core_row("softmax", 0.5, fwd_ms=None)]
    plot_core_benchmark(rows, {}, "core.png")
    text = _ca_rev77_text(figs, "core")
    assert "every row failed" not in text and "not timed" in text, text


def test_ca_rev78_backward_footer_says_so_where_repetitions_are_not_recorded(figs):
    plots.plot_backward(backward_rows(), "b.png", None, pytest.fail)
    footer = " ".join(figs["b:footer"].split())
    assert "median of ?" not in footer, footer


# ---- ca_rev118 (strict xfail: review of c09fa87)


def _ca_rev118_example(folder, settings=None, duals=("fitted", "amortised")):
    """An 8x8+4x4 example.npz with the λ kinds ``duals`` and, where given, a settings record."""
    rng = np.random.default_rng(0)
    arrays = {"scores0": rng.normal(size=(8, 8)), "scores1": rng.normal(size=(4, 4))}
    arrays.update({f"{kind}_dual0": 0.1 * rng.normal(size=(4, 4)) for kind in duals})
    if settings is not None:
        arrays["settings"] = np.array(json.dumps(settings, sort_keys=True))
    np.savez(os.path.join(folder, "example.npz"), levels=np.array(2), temperature=np.array([1.0, 1.0]), **arrays)


_CA_REV118_SETTINGS = {"generator": "lesion", "size": 32, "levels": 2, "scale": 1.0, "seed": 0, "fit_instances": 128,
                       "fit_max_values": None, "fit_steps": 150, "amortised_steps": 300}


def test_ca_rev118_rows_of_one_key_are_not_drawn_as_a_value_nor_left_out_unsaid(tmp_path, figs):
    """Ran plot_tradeoff on one cell's rows plus a second `exact` row of the same key (every
    key field alike: a line pasted from another run's bench.csv; its checksum is valid) whose
    times are 10x.  Expected: the copies are named (bench --resume drops every copy, since
    which one is right is not known), and no point is drawn at a time no row holds.
    Observed: nothing said, and exact is drawn at the median of the two copies (5.5x the
    first row's time), a value neither row measured."""
    rows = cell_rows()
    exact = next(r for r in rows if r["method"] == "exact")
    copy = {**exact, **{c: 10 * exact[c] for c in ("per_sample_ms", "total_ms", "total_ms_q1", "total_ms_q3")}}
    logs: list = []
    # (fixed in the command, which reads bench.csv as bench --resume does: the figure functions draw the rows given)
    write_bench(str(tmp_path), rows + [copy])
    plot_results(str(tmp_path), str(tmp_path / "figs"), log=logs.append)
    xs = [float(line.get_xdata()[0]) for line in figs["tradeoff"].axes[0].get_lines()  # the points, not bars' caps
          if len(line.get_xdata()) == 1 and line.get_color() == plots.METHOD_COLORS["exact"]
          and line.get_marker() not in ("|", "_")]
    recorded = (exact["per_sample_ms"], copy["per_sample_ms"])
    assert all(any(np.isclose(x, r) for r in recorded) for x in xs), (xs, recorded)
    assert logs, "the duplicated row is not named"


@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_ca_rev118_an_example_of_another_run_is_not_drawn_under_this_runs_footer(tmp_path, figs):
    """Ran plot_results on a folder whose bench.json config is lesion, seed 0 and whose
    example.npz records (its `settings`) gaussian, seed 7: what an interrupted `bench
    --overwrite` leaves (the example is written after the sweep; results_format.md says so,
    and bench --resume writes such an example again).  Expected: attention_maps not drawn
    from it, or drawn with a line (stderr or footer) saying the example is another run's.
    Observed: drawn silently, under this run's environment, its footer calling the λ 'the
    sweep's fitted shared λ'."""
    folder = str(tmp_path / "r")
    write_bench(folder, sweep_rows())
    config = {k: v for k, v in _CA_REV118_SETTINGS.items() if k not in ("size", "levels")}
    with open(os.path.join(folder, "bench.json"), "w") as f:
        json.dump({"environment": ENV, "config": config}, f)
    _ca_rev118_example(folder, {**_CA_REV118_SETTINGS, "generator": "gaussian", "seed": 7})
    logs: list = []
    written = plot_results(folder, str(tmp_path / "figs"), log=logs.append)
    drawn = any(p.endswith("attention_maps.png") for p in written)
    assert not drawn or any("example.npz" in m for m in logs) or "another run" in figs["attention_maps:footer"]


def test_ca_rev118_the_maps_footer_names_only_the_lambdas_the_example_holds(tmp_path, figs):
    """Ran plot_attention_maps on an example.npz without any *_dual array (what bench writes
    for a sweep without learned_dual: fit_steps and amortised_steps 0).  Expected: the
    footer does not claim fitted or amortised λ.  Observed: it says 'λ: the sweep's fitted
    shared λ and the amortised network's prediction for this instance', and no learned_dual
    row is drawn."""
    _ca_rev118_example(str(tmp_path), duals=())
    plots.plot_attention_maps(str(tmp_path / "example.npz"), "maps.png", log=pytest.fail)
    footer = " ".join(figs["maps:footer"].split())
    assert "fitted shared λ" not in footer and "amortised network's prediction" not in footer, footer


def test_ca_rev118_enormous_shapes_in_a_row_fail_like_a_command(tmp_path, capsys, figs):
    """Ran `convex-attention plot` on a folder whose bench.csv (checksums recomputed: a row
    edited by hand) holds one row with shapes '100000000x100000000+50000000x50000000'.
    Expected: the row (or its rounding level) left out and named on stderr, the figures
    written, exit 0 (or one line and exit 2).  Observed: numpy's ArrayMemoryError from
    consistency.rounding_level ('Unable to allocate ... PiB'), a traceback."""
    rows = cell_rows()
    rows[1]["shapes"] = "100000000x100000000+50000000x50000000"
    write_bench(str(tmp_path), rows)
    code, err = plot_cli(tmp_path, capsys)
    assert code in (0, 2)


def test_ca_rev118_a_deeply_nested_bench_json_is_said_not_a_traceback(tmp_path, figs):
    """Ran plot_results on a folder whose bench.json is valid JSON nested 100000 deep
    ('[[[...]]]': a hostile or corrupted file).  Expected: said through log ('not readable
    JSON'), the figures drawn without an environment line.  Observed: RecursionError from
    json.load in _common.load_record (it catches ValueError, not RecursionError)."""
    folder = str(tmp_path)
    write_bench(folder, cell_rows())
    (tmp_path / "bench.json").write_text("[" * 100000 + "]" * 100000)
    logs: list = []
    written = plot_results(folder, str(tmp_path / "figs"), log=logs.append)
    assert written and any("bench.json" in m for m in logs)


@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_ca_rev118_figures_of_other_results_are_not_replaced_unsaid(tmp_path, figs):
    """Ran plot_results(A, OUT), then plot_results(B, OUT) for another results folder B into
    the same figure folder.  Expected: B's time_vs_size (and the other chain figures) replace
    A's only with a word (or need --overwrite): the record proves they were drawn from A, and
    plot removes a figure only where it was drawn from the same results, keeping (and
    naming) A's other figures.  Observed: A's time_vs_size, violation, speed-up and tradeoff
    are replaced silently; the only line says A's dual_convergence and attention_maps were
    'kept', so OUT mixes the two results with no line saying which figures are whose."""
    a, b, out = str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "figs")
    write_bench(a, sweep_rows())
    write_convergence(a)
    write_bench(b, sweep_rows())
    plot_results(a, out, log=pytest.fail)
    logs: list = []
    try:
        plot_results(b, out, log=logs.append)
    except plots.FigureConflict:
        return  # refused: nothing replaced
    assert any("time_vs_size.png" in m for m in logs), logs


def test_ca_rev118_convergence_of_a_row_never_committed_is_not_drawn_unsaid(tmp_path, figs):
    """Ran plot_results on a folder whose convergence.csv holds the histories of the two dual
    rows of bench.csv and one more (row_id ffffffffffff, cell 9) that no bench.csv row has:
    a run stopped between the renames of convergence.csv and bench.csv
    (results_format.md: such rows 'are dropped on --resume').  Expected: that history not
    drawn, or named.  Observed: three lines drawn, nothing said."""
    folder = str(tmp_path)
    rows = cell_rows(cell=0) + cell_rows(size=16, cell=1)
    for r in rows:
        r["row_id"] = f"{r['cell']:012x}" if r["method"] == "dual" else ""
    write_bench(folder, rows)
    conv = [{"row_id": rid, "cell": cell, "structure": "chain", "dims": 2, "size": size, "levels": 2,
             "temperature": 1.0, "iteration": i, "violation_mean": 10.0 ** -i, "violation_max": 10.0 ** -i,
             "dual_gap_mean": 10.0 ** -i, "dual_gap_max": 10.0 ** -i}
            for rid, cell, size in ((f"{0:012x}", 0, 8), (f"{1:012x}", 1, 16), ("ffffffffffff", 9, 32))
            for i in range(4)]
    atomic_csv(os.path.join(folder, "convergence.csv"), tuple(conv[0]) + ("checksum",), conv, checksum=True)
    logs: list = []
    plot_results(folder, str(tmp_path / "figs"), log=logs.append)
    lines = figs["dual_convergence"].axes[0].get_lines()
    assert len(lines) == 2 or any("convergence.csv" in m for m in logs), (len(lines), logs)


def test_ca_rev118_tradeoff_says_the_temperature_of_the_cell_it_draws(figs):
    """Ran plot_tradeoff on a sweep of two cells alike but for the temperature (1.0 and 0.1,
    the second's violations 100x).  Expected: the panel (or footer) names the temperature of
    the cell drawn, as time_vs_size keeps temperatures apart.  Observed: title
    '2-D, 2 levels: 8x8+4x4, B=4, float32 cell', no temperature anywhere, the other cell
    dropped without a word."""
    rows = cell_rows(cell=0)
    hot = [dict(r, temperature=0.1, cell=1, violation_mean=100 * r["violation_mean"]) for r in cell_rows(cell=1)]
    consistency.plot_tradeoff(rows + hot, "t.png", None, pytest.fail)
    text = " ".join(ax.get_title() for ax in figs["t"].axes) + figs["t:footer"]
    assert "temperature" in text or "τ" in text, text


def test_ca_rev118_a_skipped_row_with_an_unusable_size_loses_no_figure(tmp_path, figs):
    """Ran plot_results on one measured cell plus a skipped cvxpylayers row (over the cap)
    whose n_cells is 'inf' (checksum recomputed).  Expected: that row named and left out,
    the speed-up figure written (rows with unusable values are skipped and named).
    Observed: OverflowError in speed._not_measured (int(float('inf'))), caught by
    layout_guard: the figure is not written and stderr blames an axis spanning more decades
    than floating point can draw."""
    rows = cell_rows()
    skipped = bench_row("cvxpylayers", backend="moreau", size=64, cell=1, timed=False)
    skipped.update(status="skipped", reason="over the cap (--cvx-max-cells)", n_cells="inf")
    write_bench(str(tmp_path), rows + [skipped])
    logs: list = []
    written = plot_results(str(tmp_path), str(tmp_path / "figs"), log=logs.append)
    assert any(p.endswith("speedup_exact_vs_cvxpylayers.png") for p in written), logs


# ---- ca_rev120 (strict xfail: review of f56c36b)


@pytest.mark.slow  # end-to-end: two sweeps, then plot (CI; the fast suite stays under a minute)
def test_ca_rev120_a_resumed_sweeps_own_example_is_drawn(tmp_path, figs, capsys):
    """Ran (in-process) `bench --methods exact learned_dual --fit-instances 4 --fit-steps 2
    --amortised-steps 2` (sizes 8, levels 2, batch 2, float64, cpu, 1 repeat) into R, then
    `bench --methods exact softmax --resume` into R (the fit options left out: bench refuses them
    without learned_dual), then plot_results(R).  The resume writes example.npz again ('written
    again: it is the instance of other settings'), so R's example is the latest run's.
    Expected: attention_maps drawn, no line calling the example another run's.  Observed:
    'example.npz: it is the instance of other settings (amortised_steps 0, not 2, fit_instances
    128, not 4, fit_steps 0, not 2); attention_maps not drawn under this run's footer (bench
    --resume writes it again)': plots._example_of_another_run compares the example with
    bench.json's grown config (methods of every run, the stored fit settings), the writer
    (cli/bench._run_bench) with the resumed run's own; the advised resume writes the same again."""
    folder = str(tmp_path / "r")
    common = ["--sizes", "8", "--levels", "2", "--batch", "2", "--repeats", "1", "--warmup", "1", "--threads", "1",
              "--dtype", "float64", "--device", "cpu", "--no-progress", "--quiet", "--out", folder]
    assert run(["bench", "--methods", "exact", "learned_dual", "--fit-instances", "4", "--fit-steps", "2",
                "--amortised-steps", "2", *common]) == 0
    assert run(["bench", "--methods", "exact", "softmax", "--resume", *common]) == 0
    capsys.readouterr()
    logs: list = []
    written = plot_results(folder, str(tmp_path / "figs"), log=logs.append)
    assert not [m for m in logs if "example.npz" in m], logs
    assert any(p.endswith("attention_maps.png") for p in written), written


def test_a_record_of_figures_moved_with_their_results_still_proves_them_and_an_absolute_one_is_read(tmp_path, figs):
    """The record names the results folder relative to the figure folder: a results folder moved (or committed and
    cloned elsewhere) with its figures is still the same results (a redraw names no 'other results'), and a record
    of an earlier version, holding the absolute path, is read as it was."""
    import shutil

    folder = str(tmp_path / "g")
    os.makedirs(folder)
    write_backward(folder)
    plot_results(folder, log=pytest.fail)
    moved = shutil.move(folder, str(tmp_path / "moved"))
    notes: list = []
    plot_results(moved, log=notes.append)
    assert not any("other results" in n for n in notes), notes
    path = os.path.join(moved, "figures", plots.MANIFEST)
    with open(path) as f:
        record = json.load(f)
    for entry in record["figures"].values():
        entry["results"] = os.path.realpath(moved)  # as an earlier version wrote it
    with open(path, "w") as f:
        json.dump(record, f)
    notes.clear()
    plot_results(moved, log=notes.append)
    assert not any("other results" in n for n in notes), notes


def _numbered_drawings():
    """A stand-in for figures.save whose every drawing's files differ (as real redraws do)."""
    import itertools

    drawings = itertools.count()

    def save(fig, path, env=None, notes=()):
        plt.close(fig)
        number = next(drawings)
        for ext in (".png", ".pdf"):
            with open(os.path.splitext(path)[0] + ext, "wb") as f:
                f.write(b"drawing %d" % number)
        return path

    return save


# ---- ca_rev130 (strict xfail: review of 9ef579d)


def test_ca_rev130_the_staging_folder_of_a_killed_plot_is_removed_by_the_next_plot(tmp_path, capsys, figs):
    """SIGKILL of `plot R` 3.5 s in left R/figures/.plot-staging-50bjuupn/ with time_vs_size,
    violation and tradeoff (.png/.pdf) and dual_convergence.png.5741-8.tmp (1.2 MB); the next
    `plot R` (exit 0, 'took over the lock') left it there.  Expected (docs/results_format.md: 'A
    temporary left by a killed run is removed when the next run starts in that folder'): the
    next plot removes it."""
    write_bench(str(tmp_path), sweep_rows())
    left = tmp_path / "figures" / ".plot-staging-k1ll3d00"
    left.mkdir(parents=True)
    (left / "time_vs_size.png").write_bytes(b"half a figure")
    (left / "tradeoff.png.4242-3.tmp").write_bytes(b"half")
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0, err
    assert not [n for n in os.listdir(tmp_path / "figures") if n.startswith(".plot-staging-")]


@pytest.mark.slow  # three whole plots (1-1.5 s): the fast suite stays under the minute
def test_ca_rev130_a_plot_stopped_before_its_record_is_written_is_redrawn_without_overwrite(tmp_path, monkeypatch):
    """plot_results into R/figures (recorded), then again with the record's write failing
    (OSError ENOSPC: a full disk; a SIGKILL after the renames does the same), then again.
    Expected (docs/results_format.md: 'Its own recorded figures are redrawn without it'): the
    third plot redraws the figures the second one wrote.  Observed: FigureConflict ('holds
    time_vs_size.png, ... named like plot's figures but not recorded as its output ... pass
    --overwrite'): on the CLI, exit 2 until the user passes --overwrite over plot's own output."""
    import errno

    save = _numbered_drawings()

    def disk_full(path, obj, indent=1):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(figures, "save", save)
    write_bench(str(tmp_path), sweep_rows())
    assert plot_results(str(tmp_path), log=lambda m: None)
    with monkeypatch.context() as patch:
        patch.setattr(plots, "write_json", disk_full)
        with pytest.raises(OSError):
            plot_results(str(tmp_path), log=lambda m: None)
    assert plot_results(str(tmp_path), log=lambda m: None)
    with monkeypatch.context() as patch:  # stopped after the renames, before the final record (a SIGKILL there)
        patch.setattr(plots, "_tidy", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            plot_results(str(tmp_path), log=lambda m: None)
    assert plot_results(str(tmp_path), log=lambda m: None)


# ---- ca_rev131 (strict xfail: review of a83c028)


def test_ca_rev131_the_next_plot_removes_the_record_temporary_a_killed_plot_left(tmp_path, capsys, figs):
    """plot writes its record (plots.MANIFEST) through write_json's NAME.<pid>-<n>.tmp, twice per
    run now (_record_pending, then _tidy).  Expected (docs/results_format.md: 'A temporary left by
    a killed run is removed (and named on stderr) when the next run of a command that writes that
    file starts in that folder'): the next plot removes it, as bench, train and the others do."""
    write_bench(str(tmp_path), sweep_rows())
    left = tmp_path / "figures" / (plots.MANIFEST + ".4242-3.tmp")
    left.parent.mkdir(parents=True)
    left.write_text('{"written_by": ')
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0, err
    assert not left.exists()


@pytest.mark.slow  # three whole plots (1-1.5 s): the fast suite stays under the minute
def test_ca_rev131_figures_renamed_in_by_a_stopped_plot_of_other_results_are_not_replaced_unsaid(tmp_path,
                                                                                                  monkeypatch):
    """plot_results(A, OUT); plot_results(B, OUT) stopped after the renames, before its final
    record (a SIGKILL there): OUT holds B's figures, the record their digests as B's 'pending'
    beside A's entries.  Then plot_results(A, OUT).  Expected (ca_rev118, results_format.md:
    figures of other results are 'kept, and said'; the pending record 'knows every figure there'):
    replacing B's figures is said, naming B.  Observed: no line; OUT's record still says A."""
    save = _numbered_drawings()

    monkeypatch.setattr(figures, "save", save)
    a, b, out = str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "figs")
    write_bench(a, sweep_rows())
    write_bench(b, sweep_rows())
    plot_results(a, out, log=lambda m: None)
    with monkeypatch.context() as patch:  # stopped after the renames, before the final record
        patch.setattr(plots, "_tidy", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            plot_results(b, out, log=lambda m: None)
    logs: list = []
    plot_results(a, out, log=logs.append)
    assert any("time_vs_size.png" in m and os.path.realpath(b) in m for m in logs), logs


def test_speedup_rings_a_ratio_of_two_runs_times_and_counts_them_in_the_footer(figs):
    """The speed-up divides cvxpylayers' time by exact's in one cell; a resume can measure one
    of them again: that ratio divides two runs' times, and said nothing."""
    rows = [r for r in cell_rows() if r["method"] in ("exact", "cvxpylayers")]
    for r in rows:
        r["run"] = 2 if r["method"] == "exact" else 1
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    ringed = [line for line in figs["s"].axes[0].lines if line.get_marker() == "o" and line.get_markersize() == 11]
    assert sum(len(line.get_xdata()) for line in ringed) == 2
    assert "2 ratio(s), ringed, divide times measured by two runs" in " ".join(figs["s:footer"].split())
    for r in rows:
        r["run"] = 1
    plots.plot_speedup(rows, "s2.png", log=pytest.fail)
    assert not [line for line in figs["s2"].axes[0].lines if line.get_marker() == "o" and line.get_markersize() == 11]
    assert "two runs" not in figs["s2:footer"]


def test_a_structures_panel_title_counts_a_run_of_one_map_shape():
    """A star's shapes (four 64x64 maps onto 16x16) had run into the next panel's title."""
    from convex_attention.bench.plots.graphs import _runs_counted

    assert _runs_counted("64x64+64x64+64x64+64x64+16x16") == "4×64x64+16x16"
    assert _runs_counted("16x16+16x1+1x16") == "16x16+16x1+1x16"
    assert _runs_counted("8x8+4x4+8x8") == "8x8+4x4+8x8"  # only consecutive maps of one shape


# ---- ca_rev162 (strict xfail: review of 72bd71c)


def test_ca_rev162_chain_convergence_tells_cells_of_another_temperature_apart(figs):
    """Run: plot_convergence on two cells' histories alike in dims, size and levels, at
    temperatures 0.5 and 2.0 (a sweep over --temperatures), one converging 10x per sweep, the
    other 100x.
    Expected: the two lines are told apart (style or legend) and the figure names the
    temperature of each, as dual_convergence_per_structure does where its cells differ in it.
    Observed: both lines have one colour and one dash, the legend reads only '8^2' and '2
    levels', and no text of the figure or footer names a temperature: two different
    convergence rates are shown as one unnamed setting."""
    rows = [{"cell": c, "dims": 2, "size": 8, "levels": 2, "temperature": t, "iteration": i,
             "violation_mean": 10.0 ** -(i * k), "violation_max": 10.0 ** -(i * k), "dual_gap_mean": 1e-3,
             "dual_gap_max": 1e-3} for c, t, k in ((0, 0.5, 1), (1, 2.0, 2)) for i in range(4)]
    plots.plot_convergence([{k: str(v) for k, v in r.items()} for r in rows], "c.png", log=pytest.fail)
    fig = figs["c"]
    a, b = fig.axes[0].lines[:2]
    assert list(b.get_ydata()) == [1.0, 1e-2, 1e-4, 1e-6]  # the two cells' own values are drawn
    told_apart = (a.get_color(), a.get_linestyle(), a.get_marker()) != (b.get_color(), b.get_linestyle(),
                                                                         b.get_marker())
    text = all_texts(fig) + figs["c:footer"]
    assert told_apart and "0.5" in text and "2.0" in text


def test_ca_rev162_pareto_per_structure_names_the_device_and_batch_of_each_panel(figs):
    """Run: plot_pareto_per_structure on structure_rows() where the axial cells were measured on
    the CPU and again on cuda (50x faster), batch 4.
    Expected: each panel at one sweep cell says which device (in a sweep over several, as the
    chain's trade-off figure does) and which batch its per-sample times are of (the trade-off
    figure's titles give B=...).
    Observed: the axial panel draws the CPU cell (the first of equal size) and no title, legend
    or footer line says 'cpu', 'cuda' or the batch: a reader cannot tell which device's times
    are drawn, and the cuda cell is left out unsaid."""
    rows = structure_rows()
    times = ("per_sample_ms", "total_ms", "total_ms_q1", "total_ms_q3", "fwd_ms", "fwd_ms_q1", "fwd_ms_q3",
             "bwd_ms", "bwd_ms_q1", "bwd_ms_q3")
    rows += [{**r, "device": "cuda", "cell": r["cell"] + 100,
              **{c: r[c] / 50 for c in times if isinstance(r.get(c), float)}}
             for r in rows if r.get("structure") == "axial"]
    plots.plot_pareto_per_structure(rows, "p.png", log=lambda m: None)
    axial = next(ax for ax in figs["p"].axes if ax.get_title().startswith("axial"))
    text = axial.get_title() + "\n" + figs["p:footer"]
    assert re.search(r"\bcpu\b", text) and re.search(r"B ?= ?4\b", text), text


def test_ca_rev162_time_vs_size_states_the_batch_its_per_sample_times_were_timed_on(figs):
    """Run: plot_time_vs_size on sweep_rows() (every cell at batch 4; cvxpylayers timed on 2).
    Expected: per-sample times depend on the batch (their per-call overhead is shared by it),
    so the figure states it, as the speed-up figure ('exact timed on B = 4 samples') and the
    trade-off figure ('B=4') do, and as this figure does once the sweep has two batches.
    Observed: with one batch no title, legend or footer names it: the footer says only that
    cvxpylayers was timed on fewer samples than the batch, never what the batch is."""
    plots.plot_time_vs_size(sweep_rows(), "t.png", log=pytest.fail)
    text = all_texts(figs["t"]) + "\n" + figs["t:footer"]
    assert re.search(r"B ?= ?4\b|batch(?: of)? 4\b", text), text


def test_ca_rev162_a_bench_csv_of_damaged_rows_only_is_not_said_to_hold_no_rows(tmp_path, figs):
    """Run: plot_results on a folder whose bench.csv holds two rows, both failing their
    checksum (a value edited by hand).
    Expected: the log names the two damaged rows and, if it adds why nothing is drawn, says
    every row was damaged.
    Observed: after 'left out 2 damaged row(s)' it says 'bench.csv: a header and no rows;
    nothing to plot from it': the file has two rows, and the reason given for the figures
    not drawn is false."""
    folder = str(tmp_path / "r")
    path = write_bench(folder, cell_rows()[:2])
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(",softmax,", ",softmaz,").replace(",exact,", ",exakt,"))
    logs: list = []
    assert plots.plot_results(folder, str(tmp_path / "f"), log=logs.append) == []
    assert any("2 damaged row(s)" in m for m in logs), logs
    assert not any("a header and no rows" in m for m in logs), logs


# ---- ca_rev186 (review of f803aae; its strict xfails now pass)


def _rev186_chain_folder(folder, rows, histories):
    """bench.csv of ``rows`` (chains, each with its row_id) and convergence.csv holding, per
    dual row in order, the violations of ``histories`` (one list per dual row)."""
    from convex_attention.bench.results import row_id

    rows = [{**r, "structure": "chain", "run": 1} for r in rows]
    for r in rows:
        r["row_id"] = row_id(r)
    write_bench(folder, rows)
    duals = [r for r in rows if r["method"] == "dual"]
    conv = [{"row_id": d["row_id"], "cell": d["cell"], "structure": "chain", "dims": 2, "size": 8, "levels": 2,
             "temperature": 1.0, "iteration": i, "violation_mean": v, "violation_max": v, "dual_gap_mean": 1e-3,
             "dual_gap_max": 1e-3} for d, history in zip(duals, histories) for i, v in history]
    atomic_csv(os.path.join(folder, "convergence.csv"), list(conv[0]), conv)


def test_ca_rev186_violation_names_the_devices_of_the_cells_it_draws(figs):
    """Run: plot_violation on one cell measured on the CPU and one on cuda, alike otherwise, every
    cuda violation 100x the CPU's.
    Expected: cells of two devices are not one box unsaid: the figure (titles, legend or footer)
    names the device of what it draws, as time_vs_size, speedup and tradeoff do in a sweep over
    devices.
    Observed: each series' box pools the cpu and the cuda value (its median is neither's), and no
    text of the figure or its footer says 'cpu' or 'cuda'."""
    rows = cell_rows(cell=0) + [{**r, "device": "cuda", "cell": 1, "violation_mean": 100 * r["violation_mean"]}
                                for r in cell_rows(cell=1)]
    plots.plot_violation(rows, "v.png", log=pytest.fail)
    text = all_texts(figs["v"]) + "\n" + figs["v:footer"]
    assert re.search(r"\bcuda\b", text) and re.search(r"\bcpu\b", text), text


def test_ca_rev186_chain_convergence_tells_cells_of_another_batch_apart(tmp_path, figs):
    """Run: plot_results on a sweep over --batches 4 16 (one cell each, alike otherwise), the dual
    solver's history converging 10x per sweep at B = 4 and 100x at B = 16 (its violation_max is a
    max over the batch).
    Expected: as for cells of two temperatures (ca_rev162), the two histories are told apart
    (colour, dash or marker) and the figure names each one's batch.
    Observed: both lines have one colour, one dash and one marker, the legend reads '8^2' and
    '2 levels', and no text of the figure or footer names a batch: two settings drawn as one."""
    folder = str(tmp_path / "r")
    rows = cell_rows(cell=0) + [{**r, "batch": 16, "cell": 1} for r in cell_rows(cell=1)]
    _rev186_chain_folder(folder, rows, [[(i, 10.0 ** -i) for i in range(4)], [(i, 10.0 ** (-2 * i)) for i in range(4)]])
    plots.plot_results(folder, log=pytest.fail)
    fig = figs["dual_convergence"]
    a, b = fig.axes[0].lines[:2]
    assert list(b.get_ydata()) == [1.0, 1e-2, 1e-4, 1e-6]  # each cell's own history is drawn
    told_apart = (a.get_color(), a.get_linestyle(), a.get_marker()) != (b.get_color(), b.get_linestyle(),
                                                                         b.get_marker())
    text = all_texts(fig) + "\n" + figs["dual_convergence:footer"]
    assert told_apart and re.search(r"B ?= ?16\b|batch(?: of)? 16\b", text), text


def test_ca_rev186_a_convergence_history_with_a_sweep_twice_is_not_drawn_unsaid(tmp_path, figs):
    """Run: plot_results on a folder whose dual row's history in convergence.csv holds iterations
    0-3 twice, with other values (two copies of one history: 'iterations other than 0 to n',
    which --resume drops as incomplete and measures again).
    Expected: as for a bench.csv key held twice (ca_rev118), the copies are not drawn as one
    history, and the log says why.
    Observed: one line through both copies, two values at every sweep (1e-1 then 1e-3 at sweep
    1, ...), and nothing on stderr or the figure says so."""
    folder = str(tmp_path / "r")
    twice = [(i, 10.0 ** (-i * k)) for k in (1, 3) for i in range(4)]
    _rev186_chain_folder(folder, cell_rows(cell=0), [twice])
    logs: list = []
    plots.plot_results(folder, log=logs.append)
    fig = figs.get("dual_convergence")
    zigzag = fig is not None and any(len(set(line.get_xdata())) < len(line.get_xdata()) for line in fig.axes[0].lines)
    assert not zigzag and any("convergence.csv" in m for m in logs), logs


def test_ca_rev186_time_vs_size_says_where_an_ok_row_has_no_backward_time(figs):
    """Run: plot_time_vs_size on sweep_rows() where the softmax row of cell 1 (2-D, side 8) has an
    empty bwd_ms (results_format.md: an empty field is NaN, not measured).
    Expected: the point not drawn is said (stderr or footer), as a row with bwd_ms=nan is
    ('skipped 1 row(s) ... not finite').
    Observed: the softmax backward curve simply has 2 points instead of 3; the log is empty and
    no footer note names softmax or a missing backward."""
    rows = sweep_rows()
    for r in rows:
        if r["method"] == "softmax" and r["cell"] == 1:
            r.update(bwd_ms="", bwd_ms_q1="", bwd_ms_q3="")
    logs: list = []
    plots.plot_time_vs_size(rows, "t.png", log=logs.append)
    backward = figs["t"].axes[1]
    softmax = [line.get_xdata().tolist() for line in backward.lines if line.get_color() == "#7f7f7f"
               and line.get_marker() == "s"]
    assert softmax == [[20, 320]]  # the backward at n = 80 is left out ...
    assert any("softmax" in m for m in logs) or "softmax" in figs["t:footer"], (logs, figs["t:footer"])  # ... said?


def test_ca_rev186_time_vs_size_does_not_call_an_untimed_exact_row_a_learned_dual_one(figs):
    """Run: plot_time_vs_size on sweep_rows() without learned_dual, the exact row of cell 1 with an
    empty fwd_ms (an ok row whose time is NaN).
    Expected: the footer names the row it does not draw for what it is (exact, no time).
    Observed: '1 row(s) carry no time of their own (learned_dual λ = 0 and per-sample λ*: the
    fitted row's computation, timed there) and are not drawn': the sweep has no learned_dual row,
    and exact's missing point is explained as another method's."""
    rows = [r for r in sweep_rows() if r["method"] != "learned_dual"]
    for r in rows:
        if r["method"] == "exact" and r["cell"] == 1:
            r.update(fwd_ms="", fwd_ms_q1="", fwd_ms_q3="")
    plots.plot_time_vs_size(rows, "t.png", log=lambda m: None)
    footer = " ".join(figs["t:footer"].split())
    assert "learned_dual" not in footer, footer


def test_ca_rev186_speedup_says_where_an_ok_exact_row_has_no_time(figs):
    """Run: plot_speedup on sweep_rows() where cell 1's exact row is ok with an empty
    per_sample_ms (NaN: not measured); both cvxpylayers backends were measured there.
    Expected: the ratio not drawn is said (stderr or footer), as a per_sample_ms of 'nan' is
    ('skipped 1 row(s) ... not finite') and as tradeoff says ('ok row(s) carry no time').
    Observed: both backends' lines skip n = 80 (2 points each in the 2-D panel); the log is empty
    and the footer names no untimed row."""
    rows = sweep_rows()
    for r in rows:
        if r["method"] == "exact" and r["cell"] == 1:
            r["per_sample_ms"] = ""
    logs: list = []
    plots.plot_speedup(rows, "s.png", log=logs.append)
    drawn = [line.get_xdata().tolist() for line in figs["s"].axes[0].lines if len(line.get_xdata()) > 1
             and line.get_linestyle() == "-"]
    assert drawn and all(80 not in xs for xs in drawn)  # no ratio at n = 80 ...
    footer = " ".join(figs["s:footer"].split())
    assert logs or re.search(r"no time|not timed|untimed|without a time|per_sample_ms", footer), footer  # ... said?


def test_ca_rev186_pareto_per_structure_says_where_a_series_of_its_cell_has_no_time(figs):
    """Run: plot_pareto_per_structure on axial_cells() where softmax in axial's largest cell (side
    16, the cell drawn) is ok with an empty per_sample_ms.
    Expected: the axial panel or the footer (or stderr) says softmax is not drawn there, as it
    says of series that failed or that cannot solve the structure.
    Observed: the axial panel holds no softmax point; its title, the footer and the log say
    nothing (timed_entries counts the untimed row, and plot_pareto_per_structure discards it)."""
    rows = axial_cells()
    for r in rows:
        if r.get("structure") == "axial" and r["size"] == 16 and r["method"] == "softmax":
            r["per_sample_ms"] = ""
    logs: list = []
    plots.plot_pareto_per_structure(rows, "p.png", log=logs.append)
    axial = next(ax for ax in figs["p"].axes if ax.get_title().startswith("axial"))
    assert not [line for line in axial.lines if line.get_color() == "#7f7f7f"]  # no softmax point ...
    assert logs or "softmax" in axial.get_title() + figs["p:footer"], (logs, figs["p:footer"])  # ... said?


def test_ca_rev186_core_benchmark_states_no_negative_interquartile_range(figs):
    """Run: plot_core_benchmark on softmax (total 1.0 ms, total_ms_q1 1.2, total_ms_q3 0.9:
    quartiles reversed, the median outside them) and exact (no quartiles).
    Expected: a median outside its quartiles is no measurement to read a spread from: the row is
    left out or its spread unused, and said (the sweep's figures skip such a row:
    ok_points, 'lies outside its quartiles'); the footer states no negative range.
    Observed: softmax's bar is drawn without error bar or mark, and the footer reads 'widest
    interquartile range: -30% of its median'."""
    rows = [core_row("softmax", 1.0, total_ms_q1=1.2, total_ms_q3=0.9, repeats=5), core_row("exact", 1.5, repeats=5)]
    plot_core_benchmark(rows, {"exact/softmax": 1.0}, "core.png")
    footer = " ".join(figs["core:footer"].split())
    assert not re.search(r"-\d+% of its median", footer), footer
    assert "softmax: the median lies outside the quartiles the row records" in footer, footer


# ---- ca_rev213 (mutation review of 6b21c6f, comparison figures): tests that kill surviving mutants;
#      its strict xfail now passes

def _ca_rev213_core_rows(*, exact_failed=False, cvx_failed=True):
    """exact and two cvxpylayers backends at one shapes; the fast backend's row (and a second
    exact row) failed where asked."""
    rows = [core_row("exact", 0.2, shapes="4x4+2x2"),
            core_row("cvxpylayers", 100.0, shapes="4x4+2x2", backend="slow", batch=2, dtype="float64")]
    if cvx_failed:
        rows.append({**core_row("cvxpylayers", 1.0, shapes="4x4+2x2", backend="fast", batch=2, dtype="float64"),
                     "status": "error", "reason": "MemoryError: out of memory"})
    if exact_failed:
        rows.append({**core_row("exact", 0.1, shapes="4x4+2x2", dtype="float64"), "status": "error",
                     "reason": "MemoryError: out of memory"})
    return rows


def test_ca_rev213_a_ratio_whose_numerator_lost_a_series_is_an_upper_bound_its_inverse_a_lower_one():
    """A failed cvxpylayers backend might have been the fastest: cvxpylayers/exact can only be
    smaller than the one drawn (≤), exact/cvxpylayers only larger (≥); never the other way round."""
    rows = _ca_rev213_core_rows()
    out = core_ratios(rows, ["cvxpylayers/exact", "exact/cvxpylayers"])
    assert set(out) == {"cvxpylayers/exact ≤", "exact/cvxpylayers ≥"}, out
    assert out["cvxpylayers/exact ≤"][0] == pytest.approx((100.0 / 2) / (0.2 / 4))


def test_ca_rev213_no_ratio_not_even_a_bound_where_a_series_of_each_side_failed():
    rows = _ca_rev213_core_rows(exact_failed=True)
    assert core_ratios(rows, ["cvxpylayers/exact", "exact/cvxpylayers"]) == {}
    assert core_ratios(_ca_rev213_core_rows(cvx_failed=False), ["cvxpylayers/exact"]) == \
        {"cvxpylayers/exact": (pytest.approx(1000.0), "")}


def test_ca_rev213_a_panel_title_calls_a_ratio_a_bound_only_where_a_series_failed_there():
    for failed in (True, False):
        rows = _ca_rev213_core_rows(cvx_failed=failed)
        panels, _ = speed._core_bars(rows)
        names, methods = speed._failed_series(rows)
        title = speed._core_title("4x4+2x2", panels["4x4+2x2"], ["cvxpylayers/exact"], names.get("4x4+2x2", ()),
                                  failed_methods=methods.get("4x4+2x2", ()))
        assert ("cvxpylayers/exact ≤ 1e+03" in title) is failed, title
        assert ("cvxpylayers/exact = 1e+03" in title) is not failed, title
        assert ("(a bound: a series that failed might have been faster)" in title) is failed, title


def test_ca_rev213_core_marks_a_bar_of_fewer_than_three_repetitions_and_not_one_of_exactly_three(figs):
    rows = [core_row("softmax", 1.0, total_ms_q1=0.95, total_ms_q3=1.05, repeats=3),
            core_row("exact", 1.5, total_ms_q1=1.45, total_ms_q3=1.55, repeats=2)]
    plot_core_benchmark(rows, {}, "core.png")
    ax = figs["core"].axes[0]
    marks = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    assert [list(o) for c in marks for o in c.get_offsets()] == [pytest.approx([1.0, 1e3 * 1.5 / 4])]


def test_ca_rev213_speedup_divides_by_the_median_of_a_cells_exact_times_where_a_resume_measured_it_twice(figs):
    rows = [r for r in cell_rows(backends=("moreau",)) if r["method"] in ("exact", "cvxpylayers")]
    exact = next(r for r in rows if r["method"] == "exact")
    rows.append({**exact, "per_sample_ms": 3 * exact["per_sample_ms"]})  # the same cell, timed again
    cvx = next(r for r in rows if r["method"] == "cvxpylayers")
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    drawn = [y for line in figs["s"].axes[0].lines if line.get_marker() == plot_common.BACKEND_STYLES["moreau"][1]
             for y in line.get_ydata()]
    assert drawn == [pytest.approx(cvx["per_sample_ms"] / (2 * exact["per_sample_ms"]))]


def test_ca_rev213_the_untimed_note_counts_rows_not_series():
    row = {"method": "exact", "_line": 2}
    series = plot_common.Series("exact")
    untimed = [plot_common.Point(row, series, None, {}), plot_common.Point(row, series, None, {}),
               plot_common.Point(row, plot_common.Series("softmax"), None, {})]
    note = plot_common.untimed_listing(untimed, "time per sample")
    assert note.startswith("3 ok row(s) hold no time per sample"), note
    assert note.endswith("exact (2), softmax"), note


def test_ca_rev213_tradeoff_draws_a_series_measured_thrice_in_its_cell_at_the_medians_with_the_widest_range(figs):
    """A resume can measure a cell's series again: its point is the median time and the median
    violation of the rows (not their mean, not the best), its bar from the lowest q1 to the highest q3."""
    rows = [r for r in cell_rows(backends=()) if r["method"] in ("softmax", "exact")]
    exact = next(r for r in rows if r["method"] == "exact")
    t0, tb = exact["per_sample_ms"], exact["timed_batch"]
    for factor, viol in ((2.0, 1e-7), (10.0, 1e-9)):
        rows.append({**exact, "per_sample_ms": factor * t0, "total_ms": factor * exact["total_ms"],
                     "total_ms_q1": factor * exact["total_ms_q1"], "total_ms_q3": factor * exact["total_ms_q3"],
                     "violation_mean": viol})
    plots.plot_tradeoff(rows, "t.png", log=pytest.fail)
    ax = figs["t"].axes[0]
    exact_bar = next(c for c in ax.containers if c.lines[0].get_color() == plot_common.METHOD_COLORS["exact"])
    assert (exact_bar.lines[0].get_xdata()[0], exact_bar.lines[0].get_ydata()[0]) == \
        (pytest.approx(2 * t0), pytest.approx(exact["violation_mean"]))
    (lo, _), (hi, _) = exact_bar.lines[2][0].get_segments()[0]
    assert (lo, hi) == (pytest.approx(exact["total_ms_q1"] / tb), pytest.approx(10 * exact["total_ms_q3"] / tb))


def test_ca_rev213_tradeoff_draws_the_cell_with_the_most_series_and_counts_the_other_cells(figs):
    rows = cell_rows(size=8, cell=0) + [r for r in cell_rows(size=16, cell=1) if r["method"] in ("softmax", "exact")]
    rows += [r for r in cell_rows(size=4, cell=2) if r["method"] == "exact"]
    plots.plot_tradeoff(rows, "t.png", log=pytest.fail)
    assert figs["t"].axes[0].get_title().startswith("2-D, 2 levels: 8x8+4x4\n")
    assert "2 other cell(s) (other sizes" in " ".join(figs["t:footer"].split())


def test_ca_rev213_violation_draws_a_zero_below_the_cells_dtype_epsilon_even_with_no_rounding_level(figs):
    """With no grid shapes (no rounding level) and every other violation far above ε, a violation
    of exactly 0 is still drawn a decade below the dtype's ε, never among the measured values."""
    rows = [bench_row(m) for m in ("softmax", "exact")]
    for r, v in zip(rows, (1e-2, 0.0)):
        r.update(shapes="", violation_mean=v)
    plots.plot_violation(rows, "v.png", log=pytest.fail)
    eps = DTYPE_EPS["float32"]
    floor = [line.get_ydata()[0] for line in figs["v"].axes[0].lines if line.get_linestyle() == ":"]
    assert floor == [pytest.approx(10.0 ** (np.floor(np.log10(eps)) - 1))]


def test_ca_rev213_pareto_per_structure_counts_the_cells_it_does_not_draw_and_names_a_refusal(figs):
    rows = [r for r in structure_rows() if r.get("structure")]  # two cells of each of two structures
    plots.plot_pareto_per_structure(rows, "p.png", log=pytest.fail)
    assert "2 other cell(s) of these structures not drawn" in " ".join(figs["p:footer"].split())
    for ax in figs["p"].axes[:2]:  # exact's refusal named under each panel
        assert ax.get_title().endswith("\n(exact: solves forests only)"), ax.get_title()


def test_ca_rev213_backward_marks_only_the_point_of_fewer_than_three_repetitions_and_states_their_range(figs):
    rows = [{**r, "repeats": 3} for r in backward_rows()]
    rows[0]["repeats"], rows[-1]["repeats"] = 2, ""
    plots.plot_backward(rows, "b.png", None, pytest.fail)
    assert dotted_squares(figs["b"].axes[0]) == [(pytest.approx(rows[0]["bwd_per_sample_ms"]),
                                                  pytest.approx(rows[0]["gradient_error"]))]
    footer = " ".join(figs["b:footer"].split())
    assert "median of 2–3 interleaved repetitions (1 point(s) without a recorded number)" in footer, footer


def test_ca_rev213_attention_maps_state_each_residuals_l1_norm_on_one_scale_spanning_the_largest(tmp_path, figs):
    from convex_attention.io.figures import sci

    write_example(str(tmp_path))
    plots.plot_attention_maps(str(tmp_path / "example.npz"), "maps.png", log=pytest.fail)
    grid = [ax for ax in figs["maps"].axes if ax.images]
    residuals = grid[2::3]  # 2 levels + 1 residual per method
    assert residuals and all(ax.get_xlabel() == rf"$\|\cdot\|_1 = {sci(float(np.abs(ax.images[0].get_array()).sum()))}$"
                             for ax in residuals)
    assert np.abs(residuals[0].images[0].get_array()).max() < np.abs(residuals[0].images[0].get_array()).sum()
    peak = max(float(np.abs(ax.images[0].get_array()).max()) for ax in residuals)  # one symmetric scale for all
    assert {ax.images[0].get_clim() for ax in residuals} == {(-peak, peak)}


def test_ca_rev213_backward_draws_an_exact_gradient_at_most_at_1e_17_however_large_the_other_errors(figs):
    rows = backward_rows()
    rows.append({**rows[3], "parameter": 16, "bwd_per_sample_ms": 6.4, "gradient_error": 0.0})
    plots.plot_backward(rows, "b.png", None, pytest.fail)
    assert min(figs["b"].axes[0].get_lines()[1].get_ydata()) == pytest.approx(1e-17)


def test_ca_rev213_core_footer_states_the_repetition_criterion_whenever_a_bar_records_its_repetitions(figs):
    rows = [core_row("softmax", 1.0, total_ms_q1=0.95, total_ms_q3=1.05, repeats=2),
            core_row("exact", 1.5, total_ms_q1=1.45, total_ms_q3=1.55)]  # an older row: repeats not recorded
    plot_core_benchmark(rows, {}, "core.png")
    assert dotted_squares(figs["core"].axes[0])  # softmax marked: it rests on 2 repetitions
    footer = " ".join(figs["core:footer"].split())
    assert "repetitions are not recorded" not in footer and "or < 3 repetitions" in footer, footer
    assert "(repetitions not recorded for exact)" in footer, footer  # the bar the criterion could not judge


# ---- ca_rev217 (hostile review of 1ff9b14; its strict xfails now pass)


def test_ca_rev217_core_footer_says_repetitions_are_not_recorded_when_no_bar_of_two_panels_records_them(figs):
    """Run: plot_core_benchmark with softmax and exact at two problem sizes (two panels), no row
    recording ``repeats``.
    Expected: the footer says "(repetitions are not recorded)" and states no "< 3 repetitions"
    criterion (no bar could be judged by it), as with the same rows in one panel.
    Observed: "low confidence: IQR > 50% of the median or < 3 repetitions (repetitions not recorded
    for exact, softmax)": ``counted`` compares the number of distinct labels (2) with the number
    of bars (4)."""
    rows = [core_row(m, t, shapes=s, total_ms_q1=0.95 * t, total_ms_q3=1.05 * t)
            for s in ("8x8+4x4", "16x16+8x8") for m, t in (("softmax", 1.0), ("exact", 1.5))]
    plot_core_benchmark(rows, {}, "core.png")
    footer = " ".join(figs["core:footer"].split())
    assert "(repetitions are not recorded)" in footer and "< 3 repetitions" not in footer, footer


def test_ca_rev217_convergence_says_which_settings_share_a_marker_past_eight(figs):
    """Run: plot_convergence with nine cells, each at its own temperature (nine settings).
    Expected: a setting drawn with an earlier one's marker says so in its legend entry, as the
    line styles of setting_styles do ("(style of 1)").
    Observed: temperatures 0.1 and 0.9 are both drawn with the "." marker, the legend lists
    "temperature 0.1" and "temperature 0.9" beside the same symbol: the reader cannot tell which
    line is which."""
    rows = [{"cell": c, "dims": 2, "size": 8, "levels": 2, "temperature": round(0.1 * (c + 1), 1), "iteration": i,
             "violation_max": 10.0 ** -i, "dual_gap_max": 10.0 ** -i} for c in range(9) for i in range(3)]
    plots.plot_convergence(rows, "c.png", log=pytest.fail)
    legend = figs["c"].legends[0]
    entries = [(h.get_marker(), t.get_text()) for h, t in zip(legend.legend_handles, legend.get_texts())
               if t.get_text().startswith("temperature")]
    assert len(entries) == 9, entries
    reused = [label for j, (m, label) in enumerate(entries) if m in [n for n, _ in entries[:j]]]
    assert reused and all("marker of" in label for label in reused), entries  # 9 settings, 8 markers


# ---- ratios in titles (the committed bench_core figure of a run that measured exact/softmax 3.004)

def test_a_ratio_near_its_target_is_drawn_with_the_digits_that_decide_it():
    """bench_core's panel drew exact/softmax 3.004 as "= 3" while the run's verdict on ≤ 3 was NOT met."""
    assert speed.ratio_text(3.004) == "3.004" and speed.ratio_text(0.4531) == "0.4531"
    assert speed.ratio_text(2.0) == "2" and speed.ratio_text(2260.38) == "2.26e+03"


# ---- ca_rev250 (hand-edited files probe)


def test_ca_rev250_a_row_whose_key_is_no_number_is_left_out_not_a_traceback():
    """bench.csv with its checksum recomputed after temperature was edited to 'abc': plot raised
    ValueError out of unique_rows (a traceback, exit 1); the row is left out and named."""
    good = {"method": "exact", "backend": "", "dual_kind": "", "structure": "chain", "generator": "lesion",
            "scale": "1.0", "dims": "2", "size": "8", "levels": "2", "batch": "2", "temperature": "1.0",
            "dtype": "float32", "device": "cpu", "seed": "0", "_line": 2}
    said = []
    kept = plots._keyed_rows([good, {**good, "method": "dual", "temperature": "abc", "_line": 3},
                              {**good, "method": "softmax", "size": "1.5", "_line": 4}], said.append)
    assert kept == [good]
    assert len(said) == 1 and "left out 2 row(s)" in said[0] and "line 3 (column temperature holds 'abc'" in said[0]


def test_ca_rev250_a_record_linked_to_a_device_is_not_read(tmp_path):
    """bench.json/graphs.json a link to /dev/zero: json.load read it without end (MemoryError)."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    (tmp_path / "bench.json").symlink_to("/dev/zero")
    said = []
    assert plot_common.load_record(str(tmp_path), said.append, "bench.json") is None
    assert said == ["bench.json: not readable JSON (not a regular file); its figures carry no environment line"]


@pytest.mark.parametrize("batch", [True, float("inf"), -4, 0, 4.5, 10 ** 400, [4], "x"])
def test_ca_rev250_core_ratio_refuses_a_batch_that_is_no_positive_integer(batch):
    """bench_core.json's batch edited: true, 1e999, -4 and 4.5 gave exact/softmax 8, 0, -2 and 1.8
    (the figure's title against a target of <= 3), 1 and 400 zeros an OverflowError."""
    rows = [core_row("softmax", 1.0), core_row("exact", 2.0, batch=batch)]
    with pytest.raises(ValueError, match="batch .* is not a positive integer"):
        core_ratios(rows, ["exact/softmax"])
    assert core_ratios([core_row("softmax", 1.0), core_row("exact", 2.0, batch="4")],
                       ["exact/softmax"])["exact/softmax"][0] == pytest.approx(2.0)


def test_ca_rev250_core_quartiles_beyond_float_are_no_spread():
    rows = [core_row("softmax", 1.0), core_row("exact", 2.0, total_ms_q1=10 ** 400, total_ms_q3=3.0,
                                               repeats=10 ** 400)]
    assert core_ratios(rows, ["exact/softmax"])["exact/softmax"][0] == pytest.approx(2.0)


# ---- ca_rev254 (hostile review of the session's diff)

@pytest.mark.parametrize("batch", [4.0, np.float64(4.0), np.int64(4), " 4 "])
def test_ca_rev254_core_ratio_reads_a_whole_batch_however_stored(batch):
    """A batch of 4.0 (a whole number another writer stored as a float, as pandas does beside a NaN) refused the
    whole record; ca_rev250 meant to refuse true, -4 and 4.5."""
    rows = [core_row("softmax", 1.0), core_row("exact", 2.0, batch=batch)]
    assert core_ratios(rows, ["exact/softmax"])["exact/softmax"][0] == pytest.approx(2.0)


@pytest.mark.parametrize("batch", ["²", "４.0", "4.5", float("nan")])
def test_ca_rev254_core_ratio_names_a_batch_of_other_digits_as_no_positive_integer(batch):
    """'²' passed str.isdigit() and int() raised its own message ('invalid literal for int()')."""
    rows = [core_row("softmax", 1.0), core_row("exact", 2.0, batch=batch)]
    with pytest.raises(ValueError, match="batch .* is not a positive integer"):
        core_ratios(rows, ["exact/softmax"])


@pytest.mark.slow  # draws every figure of a results folder (~0.7 s)
def test_ca_rev254_plot_itself_leaves_out_a_row_whose_key_is_no_number(tmp_path, capsys, figs):
    """ca_rev250's test called _keyed_rows alone: with plot's call to it removed, the suite still passed while
    plot raised a traceback out of unique_rows.  Through the command: the row is named, the rest drawn."""
    rows = sweep_rows()
    rows[3] = {**rows[3], "temperature": "abc"}  # (the checksum written over the edited row: it holds)
    write_bench(str(tmp_path), rows)
    code, err = plot_cli(tmp_path, capsys)
    assert code == 0, err
    assert "bench.csv: left out 1 row(s) whose key cannot be read: line 5 (column temperature holds 'abc'" in err
    assert os.path.exists(tmp_path / "figures" / "time_vs_size.png")


# ---- ca_rev274 (hostile review of the figures)

def _tick_texts(fig):
    """The texts of the labelled y ticks (major and minor) inside the view of ``fig``'s axes, once drawn."""
    FigureCanvasAgg(fig).draw()  # the spy closed the figure: a canvas of its own
    texts = []
    for ax in fig.axes:
        lo, hi = sorted(ax.get_ylim())
        texts += [t.label1.get_text() for t in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
                  if lo <= t.get_loc() <= hi and t.label1.get_text()]
    return texts


def test_ca_rev274_a_log_axis_within_a_decade_still_carries_numbers(figs):
    """One row (or times within a decade): the log axis spans no power of ten, and its 2 and 5 ticks were
    unlabelled: the figure showed a point and no value to read it by."""
    row = bench_row("exact", violation=3.2e-8)  # (its cell's float32 rounding level: about 2.3e-8)
    for col, ms in (("fwd_ms", 0.12), ("bwd_ms", 0.16), ("total_ms", 0.28)):  # batch 4: 0.03-0.07 ms a sample
        row[col], row[col + "_q1"], row[col + "_q3"] = ms, 0.95 * ms, 1.05 * ms
    row["per_sample_ms"] = 0.07
    plots.plot_time_vs_size([row], "t.png", log=pytest.fail)
    plots.plot_violation([row], "v.png", log=pytest.fail)
    plots.plot_tradeoff([row], "o.png", log=pytest.fail)
    for name in ("t", "v", "o"):
        assert _tick_texts(figs[name]), name


def test_ca_rev274_speedup_footer_names_each_backends_batch_and_no_fraction(figs):
    """cvxpylayers timed on 1 sample (diffcp) and on 8 (moreau), as bench --quick does: the footer read
    'cvxpylayers on 1/8 of them', an eighth of the batch, and named no backend with either."""
    rows = []
    for row in cell_rows(backends=("diffcp-clarabel", "moreau")):
        if row["backend"] == "moreau":
            row = {**row, "timed_batch": 4}
        elif row["backend"]:
            row = {**row, "timed_batch": 1}
        rows.append(row)
    plots.plot_speedup(rows, "s.png", log=pytest.fail)
    footer = figs["s:footer"].replace("\n", " ")
    assert "exact timed on B = 4 samples" in footer
    assert "cvxpylayers on 1 (diffcp-clarabel) or 4 (moreau) of them" in footer
    assert "1/4" not in footer
