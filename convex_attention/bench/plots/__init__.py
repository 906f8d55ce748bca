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
:mod:`._common`.  :func:`plot_results` keeps a record of the figures it wrote in the figure
folder (:data:`MANIFEST`), so that it can tell its own earlier output from the user's files:
it removes a figure these results no longer support only when the record proves it drew
that very file from these same results, and only once the new figures are written.
Reports of what was left out go to the ``log`` callable of :func:`plot_results` (default: a
:class:`PlotWarning`); the ``plot`` command prints them on stderr.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import tempfile

from ...io.figures import FigureLayoutError, layout_guard
from ...io.files import read_json, write_json
from ..examples import not_the_sweeps_example
from ..results import committed_histories, row_key, unique_rows, whole_histories
from ._common import (
    DTYPE_COLORS,
    DTYPE_EPS,
    METHOD_COLORS,
    Log,
    PlotWarning,
    env_of,
    graph_parts,
    listing,
    load_record,
    not_drawn_notes,
    read_results,
    warn,
)
from .consistency import plot_convergence, plot_tradeoff, plot_violation, with_bench_settings
from .graphs import is_chain, plot_backward, plot_convergence_per_structure, plot_pareto_per_structure
from .maps import plot_attention_maps
from .speed import core_ratios, plot_core_benchmark, plot_speedup, plot_time_vs_size

__all__ = ["PlotWarning", "read_results", "plot_core_benchmark", "core_ratios", "plot_time_vs_size",
           "plot_violation", "plot_convergence", "plot_speedup", "plot_tradeoff", "plot_attention_maps",
           "plot_results", "FIGURES", "DTYPE_EPS", "DTYPE_COLORS", "METHOD_COLORS", "plot_pareto_per_structure",
           "plot_convergence_per_structure", "plot_backward", "STRUCTURE_FIGURES", "MANIFEST",
           "unrecorded_figures", "FigureConflict", "remove_empty_folder"]

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
#: The record, in the figure folder, of the figures :func:`plot_results` wrote there: per file
#: name its size, SHA-256 and the results folder it was drawn from.  Only a file it lists,
#: unchanged since, is ever removed.
MANIFEST = ".convex-attention-figures.json"
_MANIFEST_TAG = "convex-attention plot"
_FIGURE_FILES = tuple(name + ext for name in FIGURES for ext in (".png", ".pdf"))
_BENCH_FIGURES = {"time_vs_size": plot_time_vs_size, "violation": plot_violation,
                  "speedup_exact_vs_cvxpylayers": plot_speedup, "tradeoff": plot_tradeoff}


class FigureConflict(ValueError):
    """``out`` holds files that the figures drawn would replace and that :func:`plot_results`
    cannot prove it wrote (``names``): nothing was written there."""

    def __init__(self, out: str, names: list[str]):
        self.out, self.names = out, names
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        super().__init__(f"{out} holds {shown}, which these figures would replace, named like plot's figures but not "
                         f"recorded as its output (in {MANIFEST}) or changed since; pass --overwrite to replace them, "
                         f"or choose another --out")


def plot_results(folder: str, out: str | None = None, log: Log | None = None, overwrite: bool = False) -> list[str]:
    """Every figure the results folder has data for, into ``out`` (default:
    ``folder/figures``); returns the PNG paths written.

    The figures are drawn into a staging folder inside ``out`` first; a figure that would
    replace a file of ``out`` that this function cannot prove it wrote (the user's, or one
    changed since) raises :class:`FigureConflict` before anything is written there, unless
    ``overwrite``.

    Problems (an unusable file, skipped rows, a figure without data) go to ``log``, one
    message each (default: a :class:`PlotWarning`).  A figure without data is not written;
    when no figure is, a figure folder this call made is removed again (it is empty).
    A copy of it in ``out`` is removed only when it is provably this function's own earlier
    output from these same results (listed in ``out``'s :data:`MANIFEST` and unchanged
    since), and only after the new figures and the record were written; any other file of
    a figure's name is left as it is, and said.  When nothing is written, nothing is
    removed.  The backward figure is drawn only where ``graphs.json`` (when there is one)
    says its run made the backward part: an earlier run's ``backward.csv`` is not drawn
    under a later run's environment."""
    log = log or warn
    out = out or os.path.join(folder, "figures")
    made = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out)  # this run's own: removed at the end
    drawn: list = []
    try:
        drawn = _draw(folder, staging, log)
        names = [name for name in _figure_files(drawn) if os.path.exists(os.path.join(staging, name))]
        conflicts = unrecorded_figures(out, names)
        if conflicts and not overwrite:
            raise FigureConflict(out, conflicts)
        _say_replaced_from_other_results(out, folder, names, log)
        _record_pending(out, folder, staging, names)
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(out, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if made and not drawn:
            remove_empty_folder(out)  # nothing drawn: no empty figure folder left behind
    paths = [os.path.join(out, os.path.basename(p)) for p in drawn]
    _tidy(out, folder, paths, log)
    return paths


def _say_replaced_from_other_results(out: str, folder: str, names, log: Log) -> None:
    """Says which of the figure files ``names`` about to be written into ``out`` replace this
    tool's figures of another results folder (its record says whose): replaced without a
    word, ``out`` mixed two results' figures, and only the ones kept were named (ca_rev118)."""
    record = _read_manifest(out) or {}
    results = os.path.realpath(folder)
    others: dict = {}
    for name in names:
        entry = record.get(name)
        # the part of the record the file there is (its pending figure, where a plot of other results
        # stopped after renaming it in: the old entry named these results, ca_rev131)
        matched = _matching_entry(os.path.join(out, name), entry) if isinstance(entry, dict) else None
        source = _recorded_results(out, matched if matched is not None else entry)
        if name.endswith(".png") and source not in (None, results) and os.path.exists(os.path.join(out, name)):
            others.setdefault(source, []).append(name)
    for source, figures_of in sorted(others.items()):
        log(f"{out}: replaced {', '.join(figures_of)} (and their PDFs), drawn before from {source} (other "
            f"results)")


def _recorded_results(out: str, entry) -> str | None:
    """The results folder a record entry of figure folder ``out`` names, resolved: recorded
    relative to ``out`` (a committed figure folder's record names no machine's path), or
    absolute as earlier versions wrote it; None where the entry names none."""
    if not isinstance(entry, dict) or not isinstance(entry.get("results"), str):
        return None
    where = entry["results"]
    return where if os.path.isabs(where) else os.path.realpath(os.path.join(out, where))


def _results_entry(out: str, results: str) -> str:
    """``results`` (a real path) as the record of figure folder ``out`` keeps it: relative to
    ``out`` (absolute where no relative path exists: another drive)."""
    try:
        return os.path.relpath(results, os.path.realpath(out))
    except ValueError:
        return results


def remove_empty_folder(path: str) -> None:
    """Remove ``path`` if it is an empty folder (a figure folder made for figures that were
    not drawn); anything else is left as it is."""
    with contextlib.suppress(OSError):
        os.rmdir(path)  # refuses a folder that holds anything


def _draw(folder: str, out: str, log: Log) -> list[str]:
    """Draw every figure the results have data for into ``out``; the PNG paths written."""
    record = load_record(folder, log, "bench.json")
    env = env_of(record, "bench.json", log)
    written = []

    def figure_path(name):
        return os.path.join(out, f"{name}.png")

    def draw(name, fn, data, figure_env):
        """``fn``'s figure of ``data``, or None where matplotlib cannot lay it out (said)."""
        try:
            with layout_guard():
                return fn(data, figure_path(name), figure_env, log)
        except FigureLayoutError as err:
            log(f"{name}: {err}; not written")
            return None

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
    # the rows bench --resume would keep: a key held twice, and histories of rows never committed, are
    # not drawn (two copies were drawn at a median neither held; orphans as histories: ca_rev118)
    if rows:
        rows = _keyed_rows(rows, log)
        rows, copied = unique_rows(rows)
        for problem in copied:
            log(f"{problem} from the figures")
    if conv_rows and rows is not None and "row_id" in conv_rows[0]:
        conv_rows, orphaned = committed_histories(conv_rows, rows)
        conv_rows, broken = whole_histories(conv_rows, rows)
        for problem in orphaned + broken:
            log(f"{problem} from the figures")
        conv_rows = conv_rows or None
    # the chain figures' panels are keyed by dimensionality and levels: they draw the chains
    # only, and the structure figures every structure side by side
    chain_rows = [r for r in rows or [] if is_chain(r)]
    # each history with its bench row's settings (batch, dtype, device, ...), which convergence.csv does
    # not record: two cells differing in one had been drawn alike (ca_rev186)
    chain_conv = with_bench_settings([r for r in conv_rows or [] if is_chain(r)], rows or [])
    if rows and not chain_rows:
        log("bench.csv holds no chain: the chain figures (time_vs_size, violation, speedup_exact_vs_cvxpylayers, "
            "tradeoff) are not drawn; pareto_per_structure draws its structures")
    if chain_rows:
        for name, fn in _BENCH_FIGURES.items():
            written.append(draw(name, fn, chain_rows, env))
    # the dual rows with no history to draw (skipped, or failed): the convergence figures name them
    dual_rows = [r for r in rows or [] if r.get("method") == "dual"]
    if chain_conv:
        written.append(draw("dual_convergence", functools.partial(
            plot_convergence, notes=not_drawn_notes([r for r in dual_rows if is_chain(r)])), chain_conv, env))
    if rows and len(chain_rows) < len(rows):
        written.append(draw("pareto_per_structure", plot_pareto_per_structure, rows, env))
    if conv_rows and len(chain_conv) < len(conv_rows):
        written.append(draw("dual_convergence_per_structure", functools.partial(
            plot_convergence_per_structure, notes=not_drawn_notes(dual_rows)), conv_rows, env))
    draw_backward, backward_env = _backward_source(folder, log)
    backward_rows = rows_of("backward.csv", ("kind",)) if draw_backward else None
    if backward_rows:
        written.append(draw("backward_implicit_vs_unrolled", plot_backward, backward_rows, backward_env))
    example = os.path.join(folder, "example.npz")
    other = _example_of_another_run(example, record) if os.path.exists(example) else None
    if other:
        log(f"example.npz: {other}; attention_maps not drawn under this run's footer (bench --resume writes it "
            f"again)")
    elif os.path.exists(example):
        try:  # draw() says a layout failure (a FigureLayoutError, itself a ValueError) first
            written.append(draw("attention_maps", plot_attention_maps, example, env))
        except ValueError as err:
            log(f"example.npz: {err}; attention_maps not written")
            written.append(None)
    return [p for p in written if p]


def _example_of_another_run(example: str, record: dict | None) -> str | None:
    """Why ``example.npz`` is not the instance of the sweep ``bench.json`` (``record``)
    records, or None: it records other settings than that sweep's (an interrupted ``bench
    --overwrite`` leaves the earlier run's example beside the new rows; drawn, its footer
    called another run's λ this sweep's: ca_rev118).  An example that records no settings (an
    earlier version wrote it), or a folder without the sweep's configuration, cannot be
    checked, and is drawn as before."""
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict):
        return None
    try:
        return not_the_sweeps_example(example, config)
    except (KeyError, TypeError, ValueError) as err:  # (a config naming no method this version knows)
        return f"its sweep's settings cannot be read from bench.json ({err})"


def _backward_source(folder: str, log: Log) -> tuple[bool, dict | None]:
    """Whether to draw ``backward.csv``, and the environment to draw it under (``None``: no
    environment line).  Not drawn when ``graphs.json`` records a run that did not make the
    backward part (``config.parts``): the file is then an earlier run's, and that record's
    environment, threads and load are not its."""
    if not os.path.exists(os.path.join(folder, "backward.csv")):
        return False, None
    record = load_record(folder, log, "graphs.json")
    if record is None:  # no graphs.json (or not readable, said): drawn without an environment line
        return True, None
    parts = graph_parts(record)
    if parts is None:
        log("graphs.json: no config.parts, so which run wrote backward.csv is not known; "
            "backward_implicit_vs_unrolled carries no environment line")
        return True, None
    if "backward" not in parts:
        log(f"backward.csv: an earlier run's (graphs.json records a run of {', '.join(parts) or 'no part'}, "
            f"without backward): not drawn under that run's environment; left as it is")
        return False, None
    return True, env_of(record, "graphs.json", log)


def _keyed_rows(rows: list[dict], log) -> list[dict]:
    """The bench.csv rows whose key (:func:`~..results.row_key`) can be read; the others (a
    key column edited to text a number column cannot hold: a traceback out of ``unique_rows``,
    ca_rev250) left out and named."""
    kept, bad = [], []
    for r in rows:
        try:
            row_key(r)
        except ValueError as err:
            bad.append(f"line {r.get('_line', '?')} ({str(err).removeprefix('bench row: ')})")
            continue
        kept.append(r)
    if bad:
        log(f"bench.csv: left out {len(bad)} row(s) whose key cannot be read: {listing(bad)}")
    return kept


def _digest(path: str) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def _read_manifest(out: str) -> dict | None:
    """The entries of ``out``'s :data:`MANIFEST` ({file name: entry}); ``{}`` when there is
    none; ``None`` when a file of that name is there that this function did not write (it is
    then neither trusted nor replaced)."""
    path = os.path.join(out, MANIFEST)
    if not os.path.lexists(path):
        return {}
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != _MANIFEST_TAG or not isinstance(
            data.get("figures"), dict):
        return None
    return {name: entry for name, entry in data["figures"].items()
            if name in _FIGURE_FILES and isinstance(entry, dict)}


#: The prefix of the staging folder a plot draws into inside its figure folder.
STAGING_PREFIX = ".plot-staging-"


def remove_stale_staging(out: str) -> list[str]:
    """Remove the staging folders (:data:`STAGING_PREFIX` and ``tempfile``'s eight characters)
    that stopped plots left in figure folder ``out``; returns their names.  Only while holding
    ``out``'s lock (a running plot's own would go too): a killed plot's stayed for good, with
    its half-drawn figures (ca_rev130).  A link or a file of that name is left alone."""
    pattern = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}")
    removed: list[str] = []
    if not os.path.isdir(out):
        return removed
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if pattern.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                removed.append(name)
    return removed


def _matching_entry(path: str, entry: dict) -> dict | None:
    """The part of record ``entry`` that ``path`` is the very file of (a plain file, same size and
    hash): the entry itself, or its ``pending`` figure (recorded before a plot renames its new
    figures into place, so that one stopped among the renames still knows each file as its own:
    renamed first and recorded after, they were the user's to the next plot, ca_rev130); None."""
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        found = _digest(path)
    except OSError:
        return None
    pending = entry.get("pending")
    for candidate in (entry, pending if isinstance(pending, dict) else {}):
        if found == {"bytes": candidate.get("bytes"), "sha256": candidate.get("sha256")}:
            return candidate
    return None


def _is_recorded(path: str, entry: dict) -> bool:
    """Whether ``path`` is a file ``entry`` records (:func:`_matching_entry`)."""
    return _matching_entry(path, entry) is not None


def _record_pending(out: str, folder: str, staging: str, names) -> None:
    """Add to ``out``'s record, before the figures ``names`` drawn in ``staging`` are renamed into
    place, each one's digest as its entry's ``pending`` figure (a record this tool did not write is
    left alone: its figures need ``overwrite`` anyway)."""
    record = _read_manifest(out) if names else None  # (nothing to rename: no record is written)
    if record is None:
        return
    where = _results_entry(out, os.path.realpath(folder))
    for name in names:
        record[name] = {**record.get(name, {}), "pending": {**_digest(os.path.join(staging, name)), "results": where}}
    write_json(os.path.join(out, MANIFEST), {"written_by": _MANIFEST_TAG, "figures": record})


def _figure_files(pngs) -> list[str]:
    """The file names of the figures ``pngs`` (PNG paths): each PNG's and its PDF's."""
    return [os.path.basename(p) for png in pngs for p in (png, os.path.splitext(png)[0] + ".pdf")]


def unrecorded_figures(out: str, names=_FIGURE_FILES) -> list[str]:
    """The files of ``names`` (default: every figure's) in ``out`` that :func:`plot_results`
    cannot prove it wrote (not in ``out``'s :data:`MANIFEST`, changed since, or a record it
    did not write): it refuses to replace them without ``overwrite``."""
    if not os.path.isdir(out):
        return []
    present = [name for name in names if os.path.lexists(os.path.join(out, name))]
    record = _read_manifest(out)
    if record is None:
        return present
    return [name for name in present if name not in record or not _is_recorded(os.path.join(out, name), record[name])]


def _tidy(out: str, folder: str, written: list[str], log: Log) -> None:
    """After the figures are written: record them in ``out``'s :data:`MANIFEST`, then remove
    the figures of an earlier run from these same results that this run did not draw, where
    the record proves they are that run's output; every other file of a figure's name is
    left, and said in one line.  Nothing is removed when nothing was written (the command
    fails)."""
    results = os.path.realpath(folder)
    drawn = set(_figure_files(written))
    others = [name for name in _FIGURE_FILES if name not in drawn and os.path.lexists(os.path.join(out, name))]
    if not written:
        if others:
            log(f"{out} still holds {', '.join(others)} from an earlier run, which these results do not "
                f"support; left untouched")
        return
    earlier = _read_manifest(out)
    if earlier is None:
        log(f"{os.path.join(out, MANIFEST)} is not a record this tool wrote: left as it is, so the figures "
            f"written are not recorded" + (f" and {', '.join(others)} (which these results do not support) "
                                           f"left untouched" if others else ""))
        return
    matched = {name: _matching_entry(os.path.join(out, name), entry) for name, entry in earlier.items()
               if name in others}
    ours = {name: entry for name, entry in matched.items() if entry is not None}
    remove = [name for name in others if name in ours and _recorded_results(out, ours[name]) == results]
    kept = [name for name in others if name in ours and name not in remove]
    foreign = [name for name in others if name not in ours]
    record = dict(ours)  # the entries of files still to remove go when a later run finds them gone
    for name in sorted(drawn):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            record[name] = {**_digest(path), "results": _results_entry(out, results)}
    write_json(os.path.join(out, MANIFEST), {"written_by": _MANIFEST_TAG, "figures": record})
    for name in remove:
        stale = os.path.join(out, name)
        try:
            os.remove(stale)
        except OSError as err:
            log(f"could not remove {stale} ({err.strerror or err}): an earlier run's figure these results do not "
                f"support; left")
            continue
        log(f"removed {stale}: an earlier run's figure (recorded in {MANIFEST}) that these results do not support")
    if kept:
        sources = sorted({str(_recorded_results(out, ours[name])) for name in kept})
        log(f"kept {', '.join(kept)} in {out}: drawn by an earlier plot from other results "
            f"({', '.join(sources)}), not from these")
    if foreign:
        log(f"left {', '.join(foreign)} in {out} untouched: named like figures these results do not support, "
            f"but not an earlier plot's output (not recorded in {MANIFEST}, or changed since); not these "
            f"results' figures")
