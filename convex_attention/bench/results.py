"""The benchmark's tables and their writer: ``bench.csv``, ``bench.json`` and ``convergence.csv``.

* :data:`COLUMNS`, :data:`BENCH_SCHEMA`, :data:`CONVERGENCE_SCHEMA`: the tables' columns
  and types (read with :func:`convex_attention.io.tables.read_rows`);
* :func:`row_key` / :func:`row_id`: a row's identity (its sweep cell and series);
* :class:`ResultsWriter`: the sweep's one writer, committing row by row atomically; a row
  replaces an earlier row with the same key, so ``--resume`` is idempotent.  It never
  discards finished rows without a word: a folder that holds rows is refused
  (:class:`FinishedRows`) unless the run resumes them or was told to start over, and a
  resume whose measurement settings differ from the stored run's is refused
  (:class:`ResumeMismatch`; :data:`GRID_SETTINGS` may differ, :data:`MEASUREMENT_SETTINGS`
  must match).

The columns, units and meaning of every file are documented in docs/results_format.md.
Hold :func:`convex_attention.io.lock.results_lock` while a writer is alive.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import asdict, fields, is_dataclass

from ..cvx import BACKENDS, backend_unavailable_reason, get_backend
from ..io.environment import SOLVER_PACKAGES, environment, load_average, now_utc, run_record
from ..io.files import (
    as_json,
    atomic_csv,
    atomic_write_text,
    check_output_files,
    clean_stale_tmp,
    csv_field,
    json_safe,
    one_line,
    read_json,
    row_checksum,
    write_csv_row,
)
from ..io.settings import declared
from ..io.tables import ResultsFormatError, RowProblem, Schema, lacks_added_columns, read_rows
from ..methods import REGISTRY
from .config import STRUCTURES, SweepConfig, device_identity, quick_sweep

__all__ = ["BENCH_SCHEMA", "CONVERGENCE_SCHEMA", "ResultsWriter", "FinishedRows", "ResumeMismatch", "existing_rows",
           "check_start_over", "check_resume_config", "stored_config", "COLUMNS", "CONVERGENCE_COLUMNS", "KEY_FIELDS",
           "CELL_KEY_FIELDS", "DUAL_KINDS", "STATUSES", "row_key", "row_id", "cell_key", "OUTPUTS", "GRID_SETTINGS",
           "RUN_SETTINGS", "MEASUREMENT_SETTINGS", "CVX_SETTINGS", "FIT_SETTINGS", "reads_setting", "run_reads_setting",
           "has_backends", "fast_exact_methods", "whole_histories", "records_history", "cvx_batch_setting",
           "cvx_samples", "run_of",
           "PANDAS_DTYPES"]

DUAL_KINDS = ("zero", "fitted", "amortised", "per_sample")
KEY_FIELDS = ("method", "backend", "dual_kind", "structure", "generator", "scale", "dims", "size", "levels", "batch",
              "temperature", "dtype", "device", "seed")
_TIMES = ("fwd_ms", "fwd_ms_q1", "fwd_ms_q3", "bwd_ms", "bwd_ms_q1", "bwd_ms_q3", "total_ms", "total_ms_q1",
          "total_ms_q3")
COLUMNS = ("cell", "status", "reason") + KEY_FIELDS + (
    "shapes", "n_cells", "timed_batch", "repeats") + _TIMES + (
    "per_sample_ms", "peak_mem_mb", "estimate_s", "violation_max", "violation_mean", "max_abs_err", "primal_gap",
    "dual_gap", "iterations_mean", "iterations_max", "run", "row_id", "checksum")
CONVERGENCE_COLUMNS = ("row_id", "cell", "structure", "dims", "size", "levels", "temperature", "iteration",
                       "violation_mean", "violation_max", "dual_gap_mean", "dual_gap_max", "checksum")
# the key fields that name a cell of the sweep (the key without the series: method, backend, λ kind)
CELL_KEY_FIELDS = tuple(k for k in KEY_FIELDS if k not in ("method", "backend", "dual_kind"))
STATUSES = ("ok", "skipped", "error")
# the statuses of finished rows, which a resume keeps (an error row is measured again)
FINISHED = ("ok", "skipped")
# the files a sweep writes into its folder
OUTPUTS = ("bench.csv", "bench.json", "convergence.csv")
# what else ``bench`` writes there (once the sweep is done), and would replace on a fresh start
EXAMPLE = "example.npz"

#: The sweep's grid: the settings that only say *which* rows a folder holds (each row records
#: its own method, backend, structure, size, levels, batch, dims, temperature, dtype and
#: device).  ``--resume`` may change them: more values add rows, fewer leave rows untouched.
GRID_SETTINGS = ("methods", "structures", "sizes", "levels", "batches", "dims", "temperatures", "dtypes", "devices",
                 "cvx_backends")
#: How far one run goes; the latest run's value is recorded.
RUN_SETTINGS = ("max_cells",)
#: Every other setting of :class:`~.config.SweepConfig` says *how* each row is measured (its
#: instances: generator, scale, checkpoint, seed, factor; its timing: repeats, warm-up,
#: threads; the cvxpylayers budget and caps; the learned duals' training; the dual solver's
#: tolerance): a resumed folder's rows must all share them, so ``--resume`` refuses a
#: different value (:func:`check_resume_config`).  A setting added later is one of these
#: unless it is listed above.
MEASUREMENT_SETTINGS = tuple(f.name for f in fields(SweepConfig) if f.name not in GRID_SETTINGS + RUN_SETTINGS)
#: The measurement settings only cvxpylayers rows read, and those only the trained λ kinds
#: (``fitted``, ``amortised``) read: rows of other methods were not measured with them.
CVX_SETTINGS = ("budget", "cvx_max_cells", "cvx_batch", "diffcp_batch", "cvx_repeats")
FIT_SETTINGS = ("fit_instances", "fit_max_values", "fit_steps", "amortised_steps")
#: The settings that say how many samples a cvxpylayers row is timed on, one per kind of
#: backend (:func:`cvx_batch_setting`).
BATCH_SETTINGS = ("cvx_batch", "diffcp_batch")
#: The measurement settings only the chain's rows read (the other structures have sizes of their own).
CHAIN_SETTINGS = ("factor",)


def cvx_batch_setting(backend: str | None) -> str | None:
    """The setting that gives the samples per timed call of the cvxpylayers ``backend``:
    ``diffcp_batch`` for a backend that solves sample by sample (diffcp's), ``cvx_batch``
    for one that solves the batch at once (:attr:`convex_attention.cvx.Backend.batched`);
    ``None`` for a name this version's backend table does not hold (an older or newer
    row), which may have read either."""
    if backend not in BACKENDS:
        return None
    return "cvx_batch" if get_backend(backend, check_installed=False).batched else "diffcp_batch"


def cvx_samples(backend: str | None, cvx_batch: int, diffcp_batch: int) -> int:
    """Samples per timed call of the cvxpylayers ``backend`` by :func:`cvx_batch_setting`'s
    rule, one home for the sweep, the graph benchmark and the core benchmark: ``diffcp_batch``
    for a diffcp backend, ``cvx_batch`` for any other (a name the table does not hold too)."""
    return diffcp_batch if cvx_batch_setting(backend) == "diffcp_batch" else cvx_batch


def has_backends(method) -> bool:
    """Methods whose solves go through a choice of backend (the cvxpylayers reference)."""
    return bool(getattr(method, "backends", False)) or method.cpu_only


def fast_exact_methods() -> list[str]:
    """The exact methods the amortised dual's time is divided by (``time_vs_exact``;
    cvxpylayers is never the fastest): a run of a method that needs duals measures the
    folder's finished rows of these again, in each cell it measures, named or not, so that
    the ratio is of one run (the sweep; ca_rev133)."""
    return [name for name, method in REGISTRY.items() if method.exact and not has_backends(method)]


def run_reads_setting(name: str, methods, structures=None, backends=None) -> bool:
    """Whether a run of ``methods`` (over ``structures`` and cvxpylayers ``backends``, where
    given) measures a row that reads the setting ``name`` (:func:`reads_setting` over the rows
    each method gives: every λ kind of a method that needs duals, and the rows of
    :func:`fast_exact_methods` such a run measures beside them; a chain setting by a run with
    the chain; a batch setting by a run with a backend of its kind)."""
    if name in CHAIN_SETTINGS and structures is not None and "chain" not in structures:
        return False
    if name in BATCH_SETTINGS and backends is not None:
        return "cvxpylayers" in methods and any(cvx_batch_setting(b) in (None, name) for b in backends)
    if any(REGISTRY[m].needs_duals for m in methods if m in REGISTRY):
        # the fast exact rows are measured again beside the learned dual's (a resume of
        # learned_dual alone measured the folder's dual rows at its own dual_tol: ca_rev175)
        methods = [*methods, *fast_exact_methods()]
    for m in methods:
        method = REGISTRY.get(m)
        kinds = DUAL_KINDS if method is not None and method.needs_duals else ("",)
        if any(reads_setting(name, {"method": m, "dual_kind": kind}) for kind in kinds):
            return True
    return False


def reads_setting(name: str, row: dict) -> bool:
    """Whether a bench row (its ``method``, ``backend`` and ``dual_kind``) was measured with
    the :data:`MEASUREMENT_SETTINGS` setting ``name``: the cvxpylayers settings by
    cvxpylayers rows (of the two batch settings, the one of the row's backend,
    :func:`cvx_batch_setting`; a row without a known backend reads both), the training
    settings by the trained λ kinds, the dual solver's tolerance by the methods that take a
    ``tol`` (or record the solver's history); every other setting by every row.  A method
    this version does not register reads them all."""
    method = REGISTRY.get(row.get("method", ""))
    if method is None:
        return True
    if name in CVX_SETTINGS:
        if row.get("method") != "cvxpylayers":
            return False
        batch_setting = cvx_batch_setting(row.get("backend"))
        return name not in BATCH_SETTINGS or batch_setting in (None, name)
    if name in FIT_SETTINGS:
        return row.get("dual_kind") in ("fitted", "amortised")
    if name == "dual_tol":
        return method.options is not None and bool({"tol", "record_history"} & method.options)
    if name in CHAIN_SETTINGS:  # (a row from before the structure axis is the chain's)
        return row.get("structure") in (None, "", "chain")
    return True

BENCH_SCHEMA = Schema(
    "bench", COLUMNS,
    ints=frozenset({"cell", "dims", "size", "levels", "batch", "seed", "n_cells", "timed_batch", "repeats",
                    "iterations_max", "run"}),
    floats=frozenset({"scale", "temperature", *_TIMES, "per_sample_ms", "peak_mem_mb", "estimate_s",
                      "violation_max", "violation_mean", "max_abs_err", "primal_gap", "dual_gap",
                      "iterations_mean"}),
    choices=(("status", STATUSES), ("structure", STRUCTURES)),
    added=("run",))  # rows written before it record no run: read with it empty
CONVERGENCE_SCHEMA = Schema(
    "convergence", CONVERGENCE_COLUMNS,
    ints=frozenset({"cell", "dims", "size", "levels", "iteration"}),
    floats=frozenset({"temperature", "violation_mean", "violation_max", "dual_gap_mean", "dual_gap_max"}),
    choices=(("structure", STRUCTURES),))


def _pandas_dtypes(schema: Schema) -> dict:
    """The ``dtype=`` of ``pandas.read_csv`` that reads ``schema``'s table with its types:
    text columns as strings (an all-empty column, or a checksum of digits only, would
    otherwise be read as numbers), integer columns as nullable integers (``Int64``: an
    empty field is ``<NA>``), the rest as float64 (an empty field is NaN)."""
    return {c: "Int64" if c in schema.ints else "float64" if c in schema.floats else "string"
            for c in schema.columns}


#: ``pd.read_csv(path, dtype=PANDAS_DTYPES[name])`` reads ``bench.csv`` and
#: ``convergence.csv`` with the types docs/results_format.md gives.
PANDAS_DTYPES = {"bench.csv": _pandas_dtypes(BENCH_SCHEMA), "convergence.csv": _pandas_dtypes(CONVERGENCE_SCHEMA)}


def records_history(method: str) -> bool:
    """Whether the ``ok`` rows of ``method`` come with the dual solver's convergence
    history in ``convergence.csv`` (the methods whose options take ``record_history``)."""
    m = REGISTRY.get(method)
    return m is not None and m.options is not None and "record_history" in m.options


# the start of the note a row timed on its own carries in ``reason`` (after its methods' interleaved
# run failed): its time was not measured side by side with the others', so no ratio is formed from it
TIMED_APART = "timed apart from"


def timed_apart(row: dict) -> bool:
    """True for a row whose time was measured on its own (its ``reason`` notes :data:`TIMED_APART`)."""
    return TIMED_APART in str(row.get("reason") or "")


def run_of(record: dict) -> int | None:
    """The run a bench row (its ``run`` column) or a ``runs`` entry records; None where it
    records none (written before runs were numbered)."""
    run = record.get("run")
    return run if isinstance(run, int) and not isinstance(run, bool) else None


def _signature(row: dict, leave_out=("checksum",)) -> str:
    """The checksum of a typed row: over the text this writer gives each column's value, but
    ``leave_out``'s (the one home of the row's signing: a commit, a renumbering, a resume)."""
    return row_checksum([csv_field(row[c]) for c in COLUMNS if c not in leave_out])


def _signed_again(row: dict) -> tuple:
    """``(row_id, checksum)`` of ``row`` with the checksum over the text this writer gives its
    values but its cell number: a row of bench.csv and its copy in bench.json compare equal
    whatever text an earlier version wrote (a resume signs the rows it keeps again, and rows it re-signed and committed
    before a stop were counted as new: ca_rev131); a row whose values cannot be typed keeps its
    own checksum."""
    # as text: a bench.json edited by hand may hold a list there, unhashable in the counts (ca_rev167)
    row_id = _key_value(row.get("row_id"))
    try:  # (not the cell number either: a resume that renumbers cells rewrites it, ca_rev133)
        typed = {c: _as_column_type(c, row.get(c)) for c in COLUMNS if c not in ("checksum", "cell")}
    except ValueError:
        return row_id, _key_value(row.get("checksum"))
    return row_id, _signature(typed, leave_out=("checksum", "cell"))


def _key_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(float(v))
    return str(v)


def _as_column_type(column: str, value):
    """``value`` as the CSV reader will read it back (a row committed with ``scale=2`` had its
    checksum taken over "2", was written back as "2.0" on a resume, and the next resume
    dropped it as damaged): a number of a float column as a Python float, of an integer
    column as a Python int (numpy and torch scalars included; a numeric string as its
    number; ±inf in a float column as NaN, which both files write empty); ValueError naming the
    column for a value the reader would refuse (a bool, a
    fraction or a non-finite number in an integer column, text that is no number, a float
    beyond float64).  Text is left as it is, and ``None`` in a text column is ``""`` (an empty
    text field reads back as "", in bench.json as in bench.csv); ``None`` in a number column
    (an empty field) is left as it is."""
    if column not in BENCH_SCHEMA.floats and column not in BENCH_SCHEMA.ints:
        return "" if value is None else value
    if value is None:
        return value
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / torch scalars
    try:
        if isinstance(value, bool):
            raise ValueError
        if column in BENCH_SCHEMA.floats:
            number = float(value)
            if isinstance(value, str) and math.isinf(number) and "inf" not in value.lower():
                raise ValueError  # text of a float beyond float64 ("1e400"), as the docstring says
            # ±inf as NaN, a failed number alike: bench.json (strict JSON) writes null for both,
            # and bench.csv wrote "inf" beside it, so the two files disagreed on the row
            return number if math.isfinite(number) else math.nan
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value)  # exactly, however many digits
        number = float(value)
        if number.is_integer():
            return int(number)
        raise ValueError
    except (TypeError, ValueError, OverflowError):
        kind = "a float" if column in BENCH_SCHEMA.floats else "an integer"
        raise ValueError(f"bench row: column {column} holds {one_line(repr(value), 60)}, which is not {kind} "
                         f"the CSV could hold and read back") from None


def unique_rows(rows) -> tuple[list[dict], list[str]]:
    """The bench rows whose key (:func:`row_key`) no other row holds, in order, and one problem
    per key held more than once: which copy is right is not known, so every copy is dropped
    (``--resume`` measures it again; a figure leaves it out: drawn, two copies made a median
    neither row held, ca_rev118).  Typed rows or rows of strings."""
    copies = Counter(row_key(r) for r in rows)
    problems, reported = [], set()
    for r in rows:
        key = row_key(r)
        if copies[key] > 1 and key not in reported:
            reported.add(key)
            what = " ".join(str(x) for x in (r.get("method"), r.get("backend") or "", r.get("dual_kind") or "") if x)
            problems.append(f"bench.csv: {copies[key]} rows of {what} cell {r.get('cell')} (the same row more than "
                            f"once): every copy is dropped")
    return [r for r in rows if copies[row_key(r)] == 1], problems


def history_problem(iterations) -> str | None:
    """Why the rows of one history (their ``iterations``) are not a whole history, or None: a
    history holds each sweep once, 0 to n (what ``--resume`` keeps, and a figure draws)."""
    try:  # (typed rows hold ints; a figure's rows, their text)
        its = sorted(i if isinstance(i, int) else int(str(i)) for i in iterations)
    except ValueError:
        return "an iteration that is not a whole number"
    if its != list(range(len(its))):
        return f"{len(its)} rows whose iterations are not 0 to {len(its) - 1}"
    return None


def committed_histories(conv_rows, bench_rows) -> tuple[list[dict], list[str]]:
    """The ``convergence.csv`` rows of a committed ``ok`` bench row (``bench_rows``, their
    ``row_id``), and the problem that names the others: rows of a cell whose bench row was
    never committed (a run killed between the two files' renames), which ``--resume`` drops
    and a figure must not draw (ca_rev118)."""
    ok_ids = {r.get("row_id") for r in bench_rows if r.get("status") == "ok"}
    kept = [r for r in conv_rows if r.get("row_id") in ok_ids]
    orphans = len(conv_rows) - len(kept)
    return kept, ([f"convergence.csv: {orphans} row(s) of a cell whose bench row was never committed are dropped"]
                  if orphans else [])


def whole_histories(conv_rows, bench_rows) -> tuple[list[dict], list[str]]:
    """The ``convergence.csv`` rows whose history is whole (:func:`history_problem`), and the
    problems that name the others, by their bench row (``bench_rows``): what a figure draws (a
    sweep held twice had been drawn as one zigzag line: ca_rev186); ``--resume`` measures such
    a row again, naming it once by its own judgement (:meth:`ResultsWriter._drop_incomplete_histories`)."""
    rows = {r.get("row_id"): r for r in bench_rows}
    by_id: dict = {}
    for r in conv_rows:
        by_id.setdefault(r.get("row_id"), []).append(r)
    broken, problems = set(), []
    for rid, history in by_id.items():
        why = history_problem(r.get("iteration") for r in history)
        if why is not None:
            broken.add(rid)
            row = rows.get(rid, {})
            problems.append(f"convergence.csv: the history of the {row.get('method')} row of cell {row.get('cell')} "
                            f"is not whole ({why}) and is dropped")
    return [r for r in conv_rows if r.get("row_id") not in broken], problems


def row_key(row: dict) -> tuple:
    """The identity of a bench row: the values of :data:`KEY_FIELDS` as strings (each typed
    as the reader reads it, :func:`_as_column_type`, and written as the CSV writes it, so
    that typed and read-back rows agree)."""
    out = []
    for k in KEY_FIELDS:
        v = row.get(k)
        empty = v is None or (isinstance(v, str) and v == "")
        out.append(_key_value(None if empty else _as_column_type(k, v)))
    return tuple(out)


def cell_key(row: dict) -> tuple:
    """The identity of a row's cell: :func:`row_key` without the series (method, backend,
    λ kind)."""
    return tuple(v for k, v in zip(KEY_FIELDS, row_key(row)) if k in CELL_KEY_FIELDS)


def row_id(row: dict) -> str:
    """A short stable id of a row's key (links ``convergence.csv`` rows to their bench row)."""
    return hashlib.sha1(chr(31).join(row_key(row)).encode("utf-8")).hexdigest()[:12]


class FinishedRows(ValueError):
    """A results folder holds an earlier bench's rows (or files), and the run was told
    neither to resume them nor to start over (the message names both)."""


class ResumeMismatch(FinishedRows):
    """``--resume`` into a folder whose rows were measured under other settings
    (:data:`MEASUREMENT_SETTINGS`): its rows and this run's would not be comparable."""


def stored_config(out_dir: str) -> dict | None:
    """The ``config`` recorded in ``out_dir/bench.json``; ``None`` when there is no such
    file, it cannot be read or it records no configuration."""
    config = _bench_json(out_dir).get("config")
    return config if isinstance(config, dict) else None


def stored_targets(out_dir: str) -> list[dict]:
    """The amortised targets ``out_dir/bench.json`` records (:func:`~.targets.amortised_targets`,
    judged by the sweep that wrote them, which knew the cells it left unmeasured), with the
    ratios strict JSON stored as ``null`` read back as NaN; ``[]`` where there are none."""
    targets = _bench_json(out_dir).get("targets")
    if not isinstance(targets, list):
        return []
    numbers = ("worst_ratio", "median_ratio", "time_vs_exact")
    return [{**t, **{k: float("nan") if t.get(k) is None else t[k] for k in numbers}}
            for t in targets if isinstance(t, dict)]


def _bench_json(out_dir: str) -> dict:
    """``out_dir/bench.json`` as read; ``{}`` where there is none or it cannot be read."""
    path = os.path.join(out_dir, "bench.json")
    if not os.path.isfile(path):  # none, or a link to /dev/zero or a pipe: never read (ca_rev250)
        return {}
    try:
        data = read_json(path)  # (strict: a hand-written NaN is no environment to compare)
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


#: What a resume must find unchanged in bench.json's ``environment`` (where both record it):
#: the machine and the versions the rows were timed with.  Not the threads (a setting, checked
#: as one), the platform string (a kernel update changes it) or the device (a grid column).
RESUME_ENVIRONMENT = ("processor", "cpu_count", "cpu_capability", "gpu", "python", "torch", "numpy", "cuda",
                      *SOLVER_PACKAGES)


def _file_sha256(path: str) -> str | None:
    """The SHA-256 of the file at ``path``; None where it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _settings_dict(config) -> dict:
    """A sweep's settings as a dict: a SweepConfig's fields, or a mapping's (None: none)."""
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config or {})


def run_inputs(config) -> dict:
    """bench.json's ``inputs``: the SHA-256 of the files the rows were measured from (the
    ``--checkpoint`` of ``--generator model``), for a resume to find them unchanged."""
    new = _settings_dict(config)
    if new.get("generator") == "model" and new.get("checkpoint"):
        digest = _file_sha256(new["checkpoint"])
        if digest is not None:
            return {"checkpoint_sha256": digest}
    return {}


def _check_same_environment(out_dir: str, stored, new: dict) -> None:
    """:class:`ResumeMismatch` where this machine or its versions (:data:`RESUME_ENVIRONMENT`)
    are not those bench.json records (``stored``, its ``environment``) the kept rows were
    measured with: resumed, the folder would hold timings of two environments under one (its
    figures' footers name one)."""
    if not isinstance(stored, dict) or not stored:
        return
    devices = list(new.get("devices") or ["cpu"])
    # the environment of the device the record was taken on (its gpu and cuda are that device's),
    # wherever this run lists it: a resume that lists another device first (--device cpu cuda after
    # --device cuda) must still compare the GPU the kept rows were timed on; else the first device's
    device = devices[0]
    recorded_on = stored.get("device")
    if isinstance(recorded_on, str):
        with contextlib.suppress(RuntimeError, TypeError, ValueError):  # a name torch cannot parse
            wanted = device_identity(recorded_on)
            device = next((d for d in devices if device_identity(d) == wanted), device)
    here = environment(device)
    for key in RESUME_ENVIRONMENT:
        if key in stored and key in here and stored[key] != here[key]:
            raise ResumeMismatch(
                f"--resume: the rows in {out_dir} were measured with {key} {_show(stored[key])}, this machine has "
                f"{_show(here[key])}; timings of two environments in one folder would be read as one's: resume "
                f"there, pass --overwrite to start over, or choose another --out")


def _with_legacy_batch(stored: dict | None) -> dict | None:
    """``stored`` (a bench.json's ``config``) with the batch its diffcp rows were timed on made
    explicit: one written before diffcp had a batch of its own timed them on ``--cvx-batch``
    samples.  Applied wherever a stored configuration is compared or carried forward."""
    if stored is not None and "cvx_batch" in stored and "diffcp_batch" not in stored:
        return {**stored, "diffcp_batch": stored["cvx_batch"]}
    return stored


def _option(name: str) -> str:
    """The command-line option of a sweep setting (its field name where it has none)."""
    s = declared(SweepConfig).get(name)
    return (s.option(name) if s is not None else "") or name


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return " ".join(map(_show, value))
    return json.dumps(value) if isinstance(value, str) else str(value)


def check_resume_config(out_dir: str, config) -> None:
    """:class:`ResumeMismatch` when ``out_dir`` holds rows measured under a value of a
    :data:`MEASUREMENT_SETTINGS` setting other than ``config``'s, naming the first such
    setting and both values.  Settings that either side does not record are not compared
    (an older bench.json); a folder without rows passes.  A folder whose bench.csv holds
    rows while bench.json records no readable configuration (damaged, missing, no
    ``config``) is refused too: its rows' settings cannot be checked, and resuming would
    mix rows measured under other settings and record this run's for all of them."""
    new = _settings_dict(config)
    try:
        rows, problems = _bench_rows(out_dir)
    except (ResultsFormatError, OSError):
        return  # ResultsWriter refuses the unreadable file, in one line, when it loads the rows
    if not rows and not problems:
        return  # no rows to keep (those of a bench.json without its bench.csv are dropped, and said)
    kept = [r for r in rows if r["status"] in FINISHED]  # the others are measured again
    recorded = _bench_json(out_dir)  # read once for its config, environment and inputs
    stored = _with_legacy_batch(recorded["config"] if isinstance(recorded.get("config"), dict) else None)
    if stored is None:
        raise ResumeMismatch(
            f"--resume: {os.path.join(out_dir, 'bench.json')} records no readable configuration (it is missing, "
            f"damaged or holds no config), so the settings the rows of {os.path.join(out_dir, 'bench.csv')} were "
            f"measured with cannot be checked against this run's; restore that bench.json, pass --overwrite to "
            f"start over, or choose another --out")
    _check_same_devices(out_dir, stored.get("devices"), new.get("devices"))
    _check_same_environment(out_dir, recorded.get("environment"), new)
    inputs = recorded.get("inputs")
    if not isinstance(inputs, dict):
        inputs = {}
    if "checkpoint_sha256" in inputs and new.get("generator") == "model" and \
            stored.get("checkpoint") == as_json(new.get("checkpoint")):
        now = run_inputs(new).get("checkpoint_sha256")
        if now != inputs["checkpoint_sha256"]:
            raise ResumeMismatch(
                f"--resume: the rows in {out_dir} were measured with --checkpoint {_show(stored['checkpoint'])} as "
                f"it was then (SHA-256 {str(inputs['checkpoint_sha256'])[:12]}…); the file "
                f"{'cannot be read' if now is None else f'has changed since ({now[:12]}…)'}: its instances would "
                f"be another model's; restore it, pass --overwrite to start over, or choose another --out")
    default = asdict(SweepConfig())
    quick = {k: as_json(v) for k, v in asdict(quick_sweep()).items()
             if as_json(v) != as_json(default[k])}  # the settings whose value --quick changes
    for name in MEASUREMENT_SETTINGS:
        if name not in stored or name not in new:
            continue
        if not any(reads_setting(name, r) for r in kept):
            continue  # no kept row was measured with it (e.g. --fit-steps where no row is learned_dual's)
        if "methods" in new and not run_reads_setting(name, new["methods"], new.get("structures"),
                                                      new.get("cvx_backends")):
            continue  # no row of this run reads it: the kept rows keep theirs (bench.json records the stored value)
        was, now = stored[name], as_json(new[name])
        if name == "checkpoint" and "model" not in (stored.get("generator"), new.get("generator")):
            continue  # read by --generator model alone (an older version recorded it for any generator)
        if was != now:
            option = _option(name)
            was_quick = all(stored.get(k, value) == value for k, value in quick.items() if k in MEASUREMENT_SETTINGS)
            if name in quick and was == quick[name] != now and was_quick:
                # the value --quick sets (it is not this setting's default), and so are all the others
                # --quick sets: the stored run was a quick one
                raise ResumeMismatch(
                    f"--resume: the rows in {out_dir} were measured by a --quick sweep ({option} {_show(was)}), "
                    f"this run asks for {option} {_show(now)}; rerun with --quick --resume (with the options given "
                    f"to that run), pass --overwrite to start over, or choose another --out")
            if not option.startswith("--"):  # a fixed setting (no option): the rows are another version's
                raise ResumeMismatch(
                    f"--resume: the rows in {out_dir} were measured with {name} {_show(was)}, a fixed setting that "
                    f"is {_show(now)} in this version of the tool; pass --overwrite to start over, or choose "
                    f"another --out")
            raise ResumeMismatch(
                f"--resume: the rows in {out_dir} were measured with {option} {_show(was)}, this run asks for "
                f"{option} {_show(now)}; settings that change how each row is measured must match the stored run "
                f"(only the sweep's grid may grow: docs/results_format.md); rerun with {option} {_show(was)}, pass "
                f"--overwrite to start over, or choose another --out")


def _check_same_devices(out_dir: str, stored, new) -> None:
    """:class:`ResumeMismatch` where ``new`` names a device of ``stored`` another way (``cpu:0``
    for ``cpu``, ``cuda:0`` for ``cuda``): its rows would be measured again under the new name,
    every cell twice (one run refuses such a pair as the same device listed twice)."""
    if not isinstance(stored, list) or not new:
        return
    known: dict = {}
    for dev in stored:
        with contextlib.suppress(RuntimeError, TypeError):  # a name torch cannot parse names no device of ours
            known.setdefault(device_identity(dev), dev)
    for dev in new:
        was = known.get(device_identity(dev))
        if was is not None and was != dev:
            raise ResumeMismatch(
                f"--resume: the rows in {out_dir} were measured on --device {was}, which this run names {dev}: "
                f"one device, whose every cell would be measured again under the other name; rerun with --device "
                f"{was}, pass --overwrite to start over, or choose another --out")


def _bench_rows(out_dir: str) -> tuple[list[dict], list[str]]:
    """``out_dir/bench.csv``'s typed rows and its damaged ones (:func:`read_rows`); no file
    is no rows.  Raises :class:`ResultsFormatError` or :class:`OSError` where it cannot be read."""
    path = os.path.join(out_dir, "bench.csv")
    return read_rows(path, BENCH_SCHEMA) if os.path.exists(path) else ([], [])


def _grown_config(stored: dict | None, new: dict) -> dict:
    """``new`` with each grid setting widened to every value ``stored`` held too (so that
    bench.json's ``config`` covers every row of a resumed folder), and the stored value of
    each measurement setting that no row of this run reads (the kept rows' value: a resume
    of exact alone does not overwrite the --fit-steps the learned_dual rows were measured
    with)."""
    if not stored:
        return new
    out = dict(new)
    for name in MEASUREMENT_SETTINGS:
        if name in stored and "methods" in new and \
                not run_reads_setting(name, new["methods"], new.get("structures"), new.get("cvx_backends")):
            out[name] = stored[name]
    for name in GRID_SETTINGS:
        if name not in stored or name not in new:
            continue
        was, now = stored[name], as_json(new[name])
        if was is None or now is None:  # every installed backend: not a list to widen
            out[name] = None
        elif isinstance(was, list) and isinstance(now, list):
            out[name] = was + [v for v in now if v not in was]
    return out


def existing_rows(out_dir: str) -> tuple[int, int, str | None]:
    """What an earlier bench left in ``out_dir``: ``(rows, finished rows, problem)`` from
    ``bench.csv`` (or, without it, ``bench.json``); ``problem`` says why the file could
    not be read (its rows then count as unknown, 0)."""
    csv_path, json_path = os.path.join(out_dir, "bench.csv"), os.path.join(out_dir, "bench.json")
    if os.path.exists(csv_path):
        try:
            rows, problems = _bench_rows(out_dir)
        except ResultsFormatError as err:
            return 0, 0, str(err)
        except OSError as err:  # a folder of that name, a file that cannot be read
            return 0, 0, f"{csv_path}: cannot be read ({err.strerror or err})"
        finished = sum(r["status"] in FINISHED for r in rows)
        # (a problem of the file as a whole, "the file is empty", is no row: ca_rev167)
        damaged = [p for p in problems if isinstance(p, RowProblem)]
        return len(rows) + len(damaged), finished, None
    if os.path.exists(json_path):
        try:
            rows = read_json(json_path).get("rows")
        except (OSError, ValueError, RecursionError, AttributeError) as err:
            return 0, 0, f"{json_path}: not readable JSON ({' '.join(str(err).split())[:200]})"
        if not isinstance(rows, list):
            return 0, 0, f"{json_path}: no list of rows"
        return len(rows), sum(isinstance(r, dict) and r.get("status") in FINISHED for r in rows), None
    return 0, 0, None


def _earlier_files(out_dir: str) -> list[str]:
    """The files of an earlier bench that a fresh start would replace although bench.csv
    holds no row: convergence rows and the example instance."""
    found = []
    conv = os.path.join(out_dir, "convergence.csv")
    if os.path.exists(conv):
        try:
            rows, problems = read_rows(conv, CONVERGENCE_SCHEMA)
        except ResultsFormatError:
            rows, problems = [], ["unreadable"]
        if rows or problems:
            found.append("convergence.csv")
    if os.path.exists(os.path.join(out_dir, EXAMPLE)):
        found.append(EXAMPLE)
    return found


def check_start_over(out_dir: str, resume: bool, overwrite: bool, config=None, *, offer_resume: bool = True) -> None:
    """FinishedRows when ``out_dir`` holds an earlier bench's rows (or a results table that
    cannot be read, or its convergence rows or example instance) and the run neither
    resumes nor overwrites them (the message names ``--resume`` only with ``offer_resume``:
    False for a command that has no such option, ``demo``); ResumeMismatch when it resumes
    rows measured under other settings than ``config``'s, or rows whose settings bench.json
    does not record readably (:func:`check_resume_config`; not checked without ``config``);
    FinishedRows, whatever the options, when a file the sweep writes (bench.csv, bench.json,
    convergence.csv, example.npz) exists as something other than a regular file (a folder,
    a named pipe); FinishedRows, without ``overwrite``, when one of them is a symbolic link
    to a missing file, or a file without write permission; ValueError when it is asked to both
    resume and overwrite."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: --resume keeps the finished rows, "
                         "--overwrite discards them; pass one")
    try:  # a folder or a named pipe of an output's name: neither readable nor replaceable (nothing is opened)
        check_output_files(out_dir, (*OUTPUTS, EXAMPLE))
    except ValueError as err:
        raise FinishedRows(str(err)) from None
    if overwrite:
        return
    dangling = [name for name in (*OUTPUTS, EXAMPLE) if os.path.islink(os.path.join(out_dir, name))
                and not os.path.exists(os.path.join(out_dir, name))]
    if dangling:  # the user's link: a write would replace it (a review found it replaced silently)
        raise FinishedRows(f"{out_dir} holds {' and '.join(dangling)} as a symbolic link to a missing file, which "
                           f"this bench would replace; pass --overwrite to replace it, or choose another --out")
    read_only = [name for name in (*OUTPUTS, EXAMPLE) if _read_only(os.path.join(out_dir, name))]
    if read_only:  # made read-only by the user: a commit renamed a writable copy over it (ca_rev253)
        raise FinishedRows(f"{out_dir} holds {' and '.join(read_only)} read-only (no write permission), which this "
                           f"bench would replace; make it writable (chmod u+w), pass --overwrite to replace it, or "
                           f"choose another --out")
    if resume:
        if config is not None:
            check_resume_config(out_dir, config)
        return
    rows, finished, problem = existing_rows(out_dir)
    if problem is not None:
        raise FinishedRows(f"{out_dir} holds the results of an earlier bench that cannot be read ({problem}); "
                           f"pass --overwrite to replace them and start over"
                           f"{' (--resume cannot read them either)' if offer_resume else ''}, or choose another --out")
    if rows:
        advice = ("pass --resume to keep them and measure only the rest, or --overwrite to discard them and start "
                  "over (or choose another --out)" if offer_resume else
                  "pass --overwrite to discard them and start over, or choose another --out")
        raise FinishedRows(f"{out_dir} holds {rows} row(s) of an earlier bench ({finished} finished) in bench.csv; "
                           f"{advice}")
    earlier = _earlier_files(out_dir)
    if earlier:
        raise FinishedRows(f"{out_dir} holds {' and '.join(earlier)} of an earlier bench (and no row in bench.csv), "
                           f"which a new bench would replace; pass --overwrite to replace them and start over, or "
                           f"choose another --out")


def _read_only(path: str) -> bool:
    """Whether ``path`` is a file nobody may write (no write bit in its mode: root's writes
    are allowed, so its mode is read rather than :func:`os.access`)."""
    try:
        return os.path.isfile(path) and not os.stat(path).st_mode & 0o222
    except OSError:
        return False


def _runs_now(row: dict) -> bool:
    """Whether ``row`` was skipped because its cvxpylayers backend could not run here (its
    reason, as the sweep writes it: ``backend <name> <why>``) and that backend can run now."""
    backend = row.get("backend") or ""
    if not backend or not str(row.get("reason") or "").startswith(f"backend {backend} "):
        return False
    try:
        return backend_unavailable_reason(backend) is None
    except ValueError:  # a backend this version does not know
        return False


def _row_ids_on_lines(path: str, known: set) -> Counter:
    """How many lines of the table at ``path`` belong to each ``row_id`` of ``known``,
    damaged lines included (empty for a file that cannot be read).  A line's ``row_id`` is
    its first column; a line whose first column is no known ``row_id`` (cut inside it) is
    counted for the ``row_id`` of the line before it, since a row's lines are written
    together (a history cut to ``9616b9`` on its last line is still short)."""
    counts: Counter = Counter()
    previous = None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader, None)  # the header
            for fields in reader:
                if not fields:
                    continue
                row_id = fields[0] if fields[0] in known else previous
                if row_id is not None:
                    counts[row_id] += 1
                previous = row_id
    except (OSError, ValueError, csv.Error):
        return Counter()
    return counts


class ResultsWriter:
    """``bench.csv``, ``bench.json`` and ``convergence.csv`` of one results folder.

    Every :meth:`commit` rewrites the files atomically, in a fixed order (convergence,
    then bench.csv, then bench.json), so an interrupted run keeps every committed row.  A
    committed row replaces any earlier row with the same key (:func:`row_key`), and its
    convergence rows replace those of the same ``row_id``: replaying a cell never
    duplicates rows.  The writer numbers the cells (the ``cell`` column, in bench.csv and
    convergence.csv): a cell keeps the number it has in the folder, and a cell new to the
    folder keeps the sweep's index unless another cell has it, else gets the next free
    number, so that one number never names two cells across resumed runs.  Hold
    :func:`results_lock` while a writer is alive.

    Args:
        out_dir: the results folder.
        config: the sweep configuration (a dataclass; stored in bench.json).
        device_env: the device whose environment bench.json records.
        resume: keep the folder's readable rows; rows that cannot be read, error rows and
            duplicated rows (every copy) are measured again, and the files are rewritten at
            once without the dropped rows, so bench.csv and bench.json agree; so are ``ok``
            rows whose convergence history is incomplete (what is left of it is dropped).  Refused
            (:class:`ResumeMismatch`) when the stored run's measurement settings differ from
            ``config``'s.
        log: where reports of left-out rows and stale files go.
        overwrite: without ``resume``, discard an earlier bench's rows and start empty
            files; without either, a folder that holds rows is refused
            (:class:`FinishedRows`, before anything is written).
        offer_resume: whether that refusal names ``--resume`` (:func:`check_start_over`).
    """

    def __init__(self, out_dir: str, config, device_env: str, resume: bool, log=print, overwrite: bool = False,
                 offer_resume: bool = True):
        check_start_over(out_dir, resume, overwrite, config, offer_resume=offer_resume)
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.csv_path = os.path.join(out_dir, "bench.csv")
        self.json_path = os.path.join(out_dir, "bench.json")
        self.conv_path = os.path.join(out_dir, "convergence.csv")
        self.log = log
        self._rows: dict[tuple, dict] = {}
        self._lines: dict[tuple, str] = {}  # the CSV line of each row
        self._row_json: dict[tuple, str] = {}  # the JSON text of each row
        self._conv: dict[str, list[dict]] = {}
        self._cells: dict[tuple, int] = {}  # cell_key -> the cell's number in this folder
        self._renumbered = False  # loaded rows whose cell numbers collided were renumbered
        self._resigned = False  # loaded rows signed again over this writer's text of their values
        self._redo: set = set()  # keys of loaded ok rows measured again (their convergence history is incomplete)
        # ((row_id, checksum), run) of the rows of bench.csv as read (resume)
        self._read_rows: list[tuple[tuple, int | None]] = []
        self.problems: list[str] = []
        self.extra: dict = {}
        stale = clean_stale_tmp(out_dir, (*OUTPUTS, EXAMPLE))  # every file bench writes there
        if stale:
            log(f"removed {len(stale)} temporary file(s) an interrupted run left in {out_dir}: {', '.join(stale)}")
        self.runs: list[dict] = []  # the earlier runs into this folder (resume): their load and threads
        self.config = _settings_dict(config)
        recorded: dict = {}  # bench.json being resumed, read once: its runs and its environment
        if resume:
            self._load()
            recorded = _bench_json(out_dir)
            self.runs = self._earlier_runs(recorded)
            # check_start_over refused rows without a readable configuration
            self.config = _grown_config(_with_legacy_batch(stored_config(out_dir)), self.config)
            warmup = recorded.get("warmup_s")  # the earlier run's, until this run warms up (a resume that
            # measured nothing dropped it from bench.json: ca_rev253)
            if isinstance(warmup, (int, float)) and not isinstance(warmup, bool) and math.isfinite(warmup):
                self.extra["warmup_s"] = warmup
        self.env = environment(device_env)
        if resume and self._rows:
            earlier = recorded.get("environment")
            if not (isinstance(earlier, dict) and "cpu_capability" in earlier):
                # kept rows measured before result files recorded torch's CPU kernels: theirs are unknown, and
                # the folder's environment, which speaks for every row, must not name this run's (ca_rev243)
                del self.env["cpu_capability"]
        self.inputs = run_inputs(config)
        self._started, self._load_start, self._committed = now_utc(), load_average(), 0
        # this run's number, which its rows record: past every earlier run's (a bench.json lost
        # with its runs record must not give this run the number of one whose rows are kept)
        self.run = 1 + max([len(self.runs), *(n for r in [*self.runs, *self._rows.values()]
                                              if (n := run_of(r)) is not None)])
        # rewritten at once where bench.csv was written before its run column: bench.json, which a
        # resume rewrites whatever it commits, would list a column and checksums bench.csv lacks (ca_rev139)
        older = resume and lacks_added_columns(self.csv_path, BENCH_SCHEMA)
        if not resume or self.problems or self._renumbered or self._resigned or older:
            # a fresh start, or rows were dropped or signed again (bench.json, rewritten by any commit, would
            # hold other checksums than bench.csv: ca_rev167): the files hold exactly the kept rows from now on
            self._flush(convergence=True)

    def _load(self) -> None:
        try:
            rows, problems = read_rows(self.csv_path, BENCH_SCHEMA)
        except OSError as err:  # a folder of that name, a file that cannot be read: a format error, one line
            raise ResultsFormatError(f"{self.csv_path}: cannot be read ({err.strerror or err})") from None
        if not os.path.exists(self.csv_path):  # the rows are read from bench.csv: say what bench.json held
            held, _, unreadable = existing_rows(self.out_dir)
            if held or unreadable:
                problems.append(f"bench.csv is missing and bench.json {'cannot be read' if unreadable else ''}"
                                f"{f'holds {held} row(s)' if held else ''}: its rows are dropped")
        unique, copied = unique_rows(rows)
        for r in unique:
            # signed again over the text this writer gives its values ("2" as "2.0", "nan" as ""):
            # kept under the checksum of their text as read, the rows a resume wrote back failed it
            # at the next read, and were measured again (ca_rev130); the read verified that one
            signed = _signature(r)
            self._resigned |= signed != r["checksum"]
            self._store({**r, "checksum": signed})
        problems += copied
        self._read_rows = [(_signed_again(r), r.get("run")) for r in rows]  # bench.csv as read (as bench.json is)
        conv, conv_problems = read_rows(self.conv_path, CONVERGENCE_SCHEMA)
        damaged = bool(conv_problems)
        ok_ids = {r["row_id"] for r in self._rows.values() if r["status"] == "ok"}
        kept, orphaned = committed_histories(conv, self._rows.values())
        for r in kept:
            self._conv.setdefault(r["row_id"], []).append(r)
        conv_problems += orphaned
        conv_problems += self._drop_incomplete_histories(_row_ids_on_lines(self.conv_path, ok_ids) if damaged
                                                         else Counter())
        self.problems = problems + conv_problems
        for p in self.problems:
            self.log(f"resume: {p}; it is recomputed where this sweep includes its cell")
        self._number_loaded_cells()

    def _drop_incomplete_histories(self, lines: Counter) -> list[str]:
        """Mark for measuring again every ``ok`` row of a method that records a history
        (:func:`records_history`) whose history in ``convergence.csv`` is incomplete: no rows,
        iterations other than 0 to n, or fewer readable rows than ``lines`` (the rows of each
        ``row_id`` on the file's lines, damaged ones included) counts.  Its remaining history
        is dropped, so the files never hold a part of one, and measuring the row again writes
        the whole history.  Returns the problems, one per row."""
        problems = []
        for key, row in self._rows.items():
            if row["status"] != "ok" or not records_history(row["method"]):
                continue
            history = self._conv.get(row["row_id"], [])
            if not history:
                why = "no rows"
            elif (broken := history_problem(r["iteration"] for r in history)) is not None:
                why = broken
            elif lines[row["row_id"]] > len(history):
                why = f"{lines[row['row_id']] - len(history)} of its rows cannot be read"
            else:
                continue
            self._conv.pop(row["row_id"], None)
            self._redo.add(key)
            problems.append(f"convergence.csv: the {row['method']} row of cell {row['cell']} has an incomplete "
                            f"history ({why}): what is left of it is dropped, and the row is kept until measured "
                            f"again")
        return problems

    def _number_loaded_cells(self) -> None:
        """Number the loaded rows' cells; rows whose number names another cell too (written by
        an earlier resume before cells were numbered per folder), or whose cell has another
        number elsewhere, are renumbered with their convergence rows, and the log says so."""
        moved = 0
        for row in list(self._rows.values()):
            number = self._cell_number(row)
            if number != row["cell"]:
                moved += 1
                fixed = {**row, "cell": number}
                fixed["checksum"] = _signature(fixed)
                self._store(fixed)
                for r in self._conv.get(fixed["row_id"], []):
                    r["cell"] = number
        if moved:
            self._renumbered = True
            self.log(f"resume: {moved} row(s) of bench.csv had a cell number that another cell has too: they are "
                     f"renumbered (with their convergence rows)")

    def _cell_number(self, row: dict) -> int:
        """The number of ``row``'s cell in this folder: the one it already has; else the
        row's own ``cell`` (the sweep's index) when no other cell has it; else the next
        free number."""
        key = cell_key(row)
        if key in self._cells:
            return self._cells[key]
        taken = set(self._cells.values())
        given = row.get("cell")
        try:
            number = int(given) if given is not None else -1  # (no cell number: a new one, as for text)
        except (TypeError, ValueError):
            number = -1
        if number < 0 or number in taken:
            number = max(taken, default=-1) + 1
        self._cells[key] = number
        return number

    def _earlier_runs(self, recorded: dict) -> list[dict]:
        """The ``runs`` record of the bench.json being resumed (``recorded``, as
        :func:`_bench_json` reads it: empty for an older or unreadable file, and the figures
        then say the load of those rows was not recorded).

        A run killed between the renames of bench.csv and bench.json committed rows that
        bench.json's record does not count (it holds the rows of the commit before): they
        are added to the ``rows`` of the run their ``run`` column names, so that the runs'
        counts cover the folder's rows; a run killed on its first commit has no record, and
        gets one (``recovered``: its rows counted, its times and load not recorded: ca_rev139).
        Rows that record no run (written before the column) are added to the last run."""
        runs, stored_rows = recorded.get("runs", []), recorded.get("rows")
        runs = [dict(r) for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
        if not isinstance(stored_rows, list):
            return runs
        known = Counter(_signed_again(r) for r in stored_rows if isinstance(r, dict))
        missed: Counter = Counter()  # run -> rows of bench.csv that bench.json does not hold
        for signed, run in self._read_rows:
            if known[signed]:
                known[signed] -= 1
            else:
                missed[run] += 1
        for run, count in sorted(missed.items(), key=lambda item: (item[0] is None, item[0] or 0)):
            # a run's record: the one naming it, else (older records name none) the one in its place
            entry = next((r for i, r in enumerate(runs) if r.get("run", i + 1) == run), None) if run is not None \
                else (runs[-1] if runs else None)
            if entry is None and run is not None:  # killed on its first commit: bench.json never recorded it
                entry = {"run": run, "recovered": True, "started": None, "finished": None,
                         "load_average_start": None, "load_average_end": None, "torch_threads": None,
                         "cpu_count": None, "rows": 0}
                runs = sorted([*runs, entry], key=lambda r: run_of(r) or 0)
            if entry is None or not isinstance(entry.get("rows"), int):
                continue
            entry["rows"] += count
            self.log(f"resume: {count} row(s) of bench.csv were committed after bench.json was last written (a run "
                     f"stopped between the two): they are counted in the rows of "
                     + (f"run {run}" + (", which bench.json had not recorded" if entry.get("recovered") else "")
                        if run is not None else "the last run it records"))
        return runs

    def run_records(self) -> list[dict]:
        """Every run into this folder, this one last: its start, its latest commit (its end,
        once it is done), the load average at both, its torch threads and the rows it
        committed, and its number (``run``, which its rows record)."""
        return self.runs + [run_record(self._started, self._load_start, rows=self._committed, run=self.run)]

    @property
    def rows(self) -> list[dict]:
        return list(self._rows.values())

    @property
    def convergence(self) -> list[dict]:
        return [r for rows in self._conv.values() for r in rows]

    def done(self) -> set:
        """Keys of finished rows (ok or skipped); error rows are retried, and so are rows
        skipped because their cvxpylayers backend could not run here once it can, and ``ok``
        rows whose convergence history was found incomplete on resume."""
        return {k for k, r in self._rows.items() if k not in self._redo and (
            r.get("status") == "ok" or (r.get("status") == "skipped" and not _runs_now(r)))}

    def commit(self, row: dict, convergence: list[dict] | None = None) -> dict:
        """Commit one row (and the dual solver's convergence history of its cell).

        Returns the row as stored (every column, with its ``row_id``).
        """
        stored = {c: _as_column_type(c, row.get(c)) for c in COLUMNS}
        stored["cell"] = self._cell_number(stored)
        stored["run"] = self.run
        stored["row_id"] = row_id(stored)
        stored["checksum"] = _signature(stored)
        self._store(stored)
        self._redo.discard(row_key(stored))  # measured again: done, or a later group retry timed it twice
        self._committed += 1
        changed = False
        if convergence is not None:
            self._conv[stored["row_id"]] = [{**{c: r.get(c) for c in CONVERGENCE_COLUMNS if c != "checksum"},
                                             "row_id": stored["row_id"], "cell": stored["cell"]}
                                            for r in convergence]
            changed = True
        elif stored["status"] != "ok" and stored["row_id"] in self._conv:
            del self._conv[stored["row_id"]]
            changed = True
        self._flush(convergence=changed)
        return stored

    def add(self, row: dict) -> None:
        """Commit one row without convergence history (kept for callers of the old API)."""
        self.commit(row)

    def set_extra(self, **items) -> None:
        """Store more top-level entries in bench.json (targets, warm-up) and rewrite it."""
        self.extra.update(items)
        atomic_write_text(self.json_path, self._json_text())

    def _store(self, row: dict) -> None:
        """Keep a row and its CSV line and JSON text (a committed row never changes, so a
        rewrite of the files formats only the new row)."""
        key = row_key(row)
        self._rows[key] = row
        buf = io.StringIO()
        write_csv_row(buf, [csv_field(row[c]) for c in COLUMNS])
        self._lines[key] = buf.getvalue()
        self._row_json[key] = json.dumps(json_safe(row), allow_nan=False)

    def _json(self) -> dict:
        return {"environment": self.env, "runs": self.run_records(), "config": self.config,
                **({"inputs": self.inputs} if self.inputs else {}), "columns": list(COLUMNS), "rows": self.rows,
                **self.extra}

    def _json_text(self) -> str:
        """Strict JSON of :meth:`_json`, one row per line."""
        meta = {"environment": self.env, "runs": self.run_records(), "config": self.config,
                **({"inputs": self.inputs} if self.inputs else {}), "columns": list(COLUMNS)}
        parts = [f" {json.dumps(k)}: {json.dumps(json_safe(v), allow_nan=False)}" for k, v in meta.items()]
        parts.append(' "rows": [' + ",".join("\n  " + self._row_json[k] for k in self._rows) + "\n ]")
        parts += [f" {json.dumps(str(k))}: {json.dumps(json_safe(v), allow_nan=False)}" for k, v in self.extra.items()]
        return "{\n" + ",\n".join(parts) + "\n}\n"

    def _flush(self, convergence: bool) -> None:
        if convergence:
            atomic_csv(self.conv_path, CONVERGENCE_COLUMNS, self.convergence, checksum=True)
        atomic_write_text(self.csv_path, ",".join(COLUMNS) + "\n" + "".join(self._lines[k] for k in self._rows))
        atomic_write_text(self.json_path, self._json_text())
