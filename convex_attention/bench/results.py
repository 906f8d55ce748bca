"""The one results writer every command uses: atomic CSV, JSON and text files, checked
reading, and one writer per results folder.

* :func:`atomic_write_text`, :func:`atomic_csv`, :func:`write_json`: a file is written to a
  temporary file in the same folder, flushed to disk and renamed over the target, so a
  reader (or a run killed half-way) sees the old file or the new one, never a mixture.
  JSON is strict: NaN and ±Inf become ``null`` (``json.dump(..., allow_nan=False)``).
* :func:`read_csv` reads any CSV as strings; :func:`read_rows` reads the benchmark's own
  tables typed and checked: a row with missing fields, an unparsable number or a wrong
  checksum (a value cut off, for example) is reported and left out.
* :func:`results_lock`: one writer per results folder (``OUT/results.lock`` names the
  owner's pid, host and start; a lock whose owner died is recognised and taken over).
* :class:`ResultsWriter`: ``bench.csv``, ``bench.json`` and ``convergence.csv`` of a sweep,
  committed row by row; a row replaces an earlier row with the same key, so ``--resume``
  is idempotent.

The columns, units and meaning of every file are documented in docs/results_format.md.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import itertools
import json
import math
import os
import re
import socket
import time
import zlib
from dataclasses import asdict, dataclass, is_dataclass

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_csv", "write_json", "to_json_text", "json_safe",
           "read_csv", "row_checksum",
           "read_rows", "Schema", "BENCH_SCHEMA", "CONVERGENCE_SCHEMA", "ResultsWriter", "ResultsLocked",
           "ResultsFormatError", "results_lock", "clean_stale_tmp", "check_out_dir", "COLUMNS",
           "CONVERGENCE_COLUMNS", "KEY_FIELDS", "DUAL_KINDS", "row_key", "row_id", "LOCK_NAME"]

# ----------------------------------------------------------------------------- atomic files

_TMP_COUNTER = itertools.count()
# our temporary files: "<name>.<pid>-<n>.tmp"; older versions wrote "<name>.tmp"
_TMP_PATTERN = re.compile(r"^.+?(\.\d+-\d+)?\.tmp$")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The temporary file is removed if anything fails; the target is then unchanged.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{os.path.basename(path)}.{os.getpid()}-{next(_TMP_COUNTER)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def clean_stale_tmp(folder: str) -> list[str]:
    """Remove temporary files a killed writer left in ``folder``; returns their names.

    Call it only while holding the folder's lock (no other writer is alive then).
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _TMP_PATTERN.match(name) and os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(name)
    return removed


def _fmt(v) -> str:
    """One CSV field: floats round-trip exactly (repr), NaN and None are empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _fmt(v.item())
    return str(v)


def row_checksum(values) -> str:
    """CRC-32 (8 hex digits) of a row's other fields as written, joined by the unit separator:
    the ``checksum`` column, which catches a value cut off or edited (docs/results_format.md)."""
    return f"{zlib.crc32(chr(31).join(values).encode('utf-8')):08x}"


def atomic_csv(path: str, columns, rows, checksum: bool = False) -> None:
    """Write ``rows`` (dicts) under the header ``columns``, atomically.

    Missing keys are empty, extra keys ignored; floats are written with ``repr`` (they
    read back bit for bit) and NaN as an empty field.  With ``checksum=True`` the last
    column, ``checksum``, holds the CRC-32 of the row's other fields, so a reader finds
    a value that was cut off (:func:`read_rows`).
    """
    columns = list(columns)
    data_columns = [c for c in columns if c != "checksum"] if checksum else columns
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        values = [_fmt(r.get(c)) for c in data_columns]
        if checksum:
            values.append(row_checksum(values))
        writer.writerow(values)
    atomic_write_text(path, buf.getvalue())


def json_safe(obj):
    """``obj`` with NaN/±Inf floats as ``None``, tuples as lists, dataclasses as dicts,
    numpy and torch scalars as Python numbers (small arrays as lists), anything else
    unknown as its ``str``: what strict JSON can hold."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(asdict(obj))
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, tensors
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    return str(obj)


def to_json_text(obj, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`); never holds NaN or Infinity."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"


def write_json(path: str, obj, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (NaN/Inf as ``null``), atomically."""
    atomic_write_text(path, to_json_text(obj, indent))


def read_csv(path: str) -> list[dict]:
    """Every row of a CSV file as a dict of strings (``[]`` if the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- typed tables

@dataclass(frozen=True)
class Schema:
    """A results table: its columns (the last one ``checksum`` if ``checksum``) and the
    columns read as integers and as floats (the rest are strings)."""

    name: str
    columns: tuple
    ints: frozenset
    floats: frozenset
    checksum: bool = True
    choices: tuple = ()  # (column, allowed values) pairs


class ResultsFormatError(ValueError):
    """A results file cannot be read as the table it should be (wrong header)."""


def _parse(schema: Schema, raw: dict, line: int) -> tuple[dict | None, str | None]:
    if None in raw:
        return None, f"line {line}: more fields than columns"
    if any(raw.get(c) is None for c in schema.columns):
        missing = [c for c in schema.columns if raw.get(c) is None]
        return None, f"line {line}: missing field(s) {', '.join(missing[:3])}{'…' if len(missing) > 3 else ''}"
    if schema.checksum:
        values = [raw[c] for c in schema.columns if c != "checksum"]
        if row_checksum(values) != raw["checksum"]:
            return None, f"line {line}: checksum mismatch (a value was cut off or edited)"
    row: dict = {}
    for c in schema.columns:
        v = raw[c]
        try:
            if c in schema.ints:
                row[c] = None if v == "" else int(v)
            elif c in schema.floats:
                row[c] = math.nan if v == "" else float(v)
            else:
                row[c] = v
        except ValueError:
            return None, f"line {line}: column {c} holds {v!r}, not a number"
    for c, allowed in schema.choices:
        if row[c] not in allowed:
            return None, f"line {line}: column {c} holds {row[c]!r}, not one of {', '.join(allowed)}"
    return row, None


def read_rows(path: str, schema: Schema) -> tuple[list[dict], list[str]]:
    """The rows of a results table, typed and checked.

    Returns ``(rows, problems)``: ``rows`` are the rows that parse (ints, floats with NaN
    for empty fields, strings); ``problems`` names every row left out and why (missing
    fields, an unparsable number, a checksum that does not match).  A missing file gives
    ``([], [])``.

    Raises:
        ResultsFormatError: the header is not the schema's (another table, or a file
            written by another version).
    """
    if not os.path.exists(path):
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return [], [f"{os.path.basename(path)} is empty"]
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    if tuple(header) != schema.columns:
        raise ResultsFormatError(
            f"{path} does not have the columns of a {schema.name} table written by this version "
            f"(expected {len(schema.columns)} columns starting {', '.join(schema.columns[:3])}, got "
            f"{len(header)} starting {', '.join(header[:3])})")
    rows, problems = [], []
    for line, fields in enumerate(reader, start=2):
        if not fields:
            continue
        raw = dict(zip(schema.columns, fields))
        if len(fields) > len(schema.columns):
            raw[None] = fields[len(schema.columns):]
        row, problem = _parse(schema, raw, line)
        if problem:
            problems.append(f"{os.path.basename(path)} {problem}")
        else:
            rows.append(row)
    return rows, problems


# ----------------------------------------------------------------------------- the bench tables

DUAL_KINDS = ("zero", "fitted", "amortised", "per_sample")
KEY_FIELDS = ("method", "backend", "dual_kind", "generator", "scale", "dims", "size", "levels", "batch",
              "temperature", "dtype", "device", "seed")
_TIMES = ("fwd_ms", "fwd_ms_q1", "fwd_ms_q3", "bwd_ms", "bwd_ms_q1", "bwd_ms_q3", "total_ms", "total_ms_q1",
          "total_ms_q3")
COLUMNS = ("cell", "status", "reason") + KEY_FIELDS + (
    "shapes", "n_cells", "timed_batch", "repeats") + _TIMES + (
    "per_sample_ms", "peak_mem_mb", "estimate_s", "violation_max", "violation_mean", "max_abs_err", "primal_gap",
    "dual_gap", "iterations_mean", "iterations_max", "row_id", "checksum")
CONVERGENCE_COLUMNS = ("row_id", "cell", "dims", "size", "levels", "temperature", "iteration", "violation_mean",
                       "violation_max", "dual_gap_mean", "dual_gap_max", "checksum")
STATUSES = ("ok", "skipped", "error")

BENCH_SCHEMA = Schema(
    "bench", COLUMNS,
    ints=frozenset({"cell", "dims", "size", "levels", "batch", "seed", "n_cells", "timed_batch", "repeats",
                    "iterations_max"}),
    floats=frozenset({"scale", "temperature", *_TIMES, "per_sample_ms", "peak_mem_mb", "estimate_s",
                      "violation_max", "violation_mean", "max_abs_err", "primal_gap", "dual_gap",
                      "iterations_mean"}),
    choices=(("status", STATUSES),))
CONVERGENCE_SCHEMA = Schema(
    "convergence", CONVERGENCE_COLUMNS,
    ints=frozenset({"cell", "dims", "size", "levels", "iteration"}),
    floats=frozenset({"temperature", "violation_mean", "violation_max", "dual_gap_mean", "dual_gap_max"}))


def _key_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(float(v))
    return str(v)


def row_key(row: dict) -> tuple:
    """The identity of a bench row: the values of :data:`KEY_FIELDS` as strings
    (numbers as the CSV writes them, so typed and read-back rows agree)."""
    out = []
    for k in KEY_FIELDS:
        v = row.get(k, "")
        if k in BENCH_SCHEMA.floats and isinstance(v, (int, str)) and not isinstance(v, bool) and v != "":
            v = float(v)
        elif k in BENCH_SCHEMA.ints and isinstance(v, str) and v != "":
            v = int(v)
        out.append(_key_value(v))
    return tuple(out)


def row_id(row: dict) -> str:
    """A short stable id of a row's key (links ``convergence.csv`` rows to their bench row)."""
    return hashlib.sha1(chr(31).join(row_key(row)).encode("utf-8")).hexdigest()[:12]


# ----------------------------------------------------------------------------- the folder lock

LOCK_NAME = "results.lock"
_HELD: dict = {}  # realpath -> [fd, depth]: the lock is re-entrant within one process


class ResultsLocked(RuntimeError):
    """Another live process writes into this results folder."""


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {when}"
            f" ({owner.get('command', '?')})")


def _read_owner(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists (another user's) or unknown: assume alive
    return True


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def results_lock(out_dir: str, command: str = "bench", wait: bool = False, log=None, poll_s: float = 0.5):
    """Hold the lock of a results folder: one writer at a time.

    ``OUT/results.lock`` records the owner (pid, host, start time, command).  Exclusion is
    an OS file lock (``flock``), which the system releases when its process dies, so a
    lock left by a dead process is free: it is taken over, and ``log`` names the dead
    owner.  A lock file whose recorded owner is a dead pid on this host is reported the
    same way.  The lock is re-entrant within one process (``demo`` runs ``bench`` and
    ``verify`` into one folder).

    Raises:
        ResultsLocked: another live process holds the folder and ``wait`` is False.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_NAME)
    real = os.path.realpath(path)
    if real in _HELD:
        _HELD[real][1] += 1
        try:
            yield path
        finally:
            _HELD[real][1] -= 1
        return
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if _try_lock(fd):
            try:  # the file may have been unlinked by a releasing owner: lock the one at `path`
                same = os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
            continue
        owner = _read_owner(path)
        os.close(fd)
        if not wait:
            raise ResultsLocked(f"results folder {out_dir} is in use by {_describe(owner)}; wait for it to "
                                f"finish, pass --wait, or choose another --out")
        if not waited and log:
            log(f"waiting for results folder {out_dir}: in use by {_describe(owner)}")
        waited = True
        time.sleep(poll_s)
    previous = _read_owner(path)
    if previous and log and previous.get("pid") != os.getpid():
        dead = previous.get("host") == socket.gethostname() and not _pid_alive(previous.get("pid"))
        log(f"took over the lock of {out_dir} left by {_describe(previous)}"
            f"{', a process that no longer runs' if dead else ''}")
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode("utf-8"), 0)
    os.fsync(fd)
    _HELD[real] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[real]
        with contextlib.suppress(OSError):
            os.remove(path)  # before unlocking: a waiter re-checks that it locked the live file
        os.close(fd)


def check_out_dir(out_dir: str) -> None:
    """Raise ValueError (naming the fix) unless ``out_dir`` is, or can be made, a writable folder."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file, not a folder; choose a folder path")
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-probe.{os.getpid()}-{next(_TMP_COUNTER)}.tmp")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"--out {out_dir} is not a writable folder ({err.strerror or err}); "
                         f"choose a folder you can write to") from err


# ----------------------------------------------------------------------------- the sweep writer

class ResultsWriter:
    """``bench.csv``, ``bench.json`` and ``convergence.csv`` of one results folder.

    Every :meth:`commit` rewrites the files atomically, in a fixed order (convergence,
    then bench.csv, then bench.json), so an interrupted run keeps every committed row.  A
    committed row replaces any earlier row with the same key (:func:`row_key`), and its
    convergence rows replace those of the same ``row_id``: replaying a cell never
    duplicates rows.  Hold :func:`results_lock` while a writer is alive.

    Args:
        out_dir: the results folder.
        config: the sweep configuration (a dataclass; stored in bench.json).
        device_env: the device whose environment bench.json records.
        resume: keep the folder's readable rows; otherwise start empty files.
        log: where reports of left-out rows and stale files go.
    """

    def __init__(self, out_dir: str, config, device_env: str, resume: bool, log=print):
        from .timing import environment

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
        self.problems: list[str] = []
        self.extra: dict = {}
        stale = clean_stale_tmp(out_dir)
        if stale:
            log(f"removed {len(stale)} temporary file(s) an interrupted run left in {out_dir}: {', '.join(stale)}")
        if resume:
            self._load()
        self.env = environment(device_env)
        self.config = asdict(config) if is_dataclass(config) else dict(config or {})
        if not resume:
            self._flush(convergence=True)

    def _load(self) -> None:
        rows, problems = read_rows(self.csv_path, BENCH_SCHEMA)
        for r in rows:
            key = row_key(r)
            if key in self._rows:
                problems.append(f"bench.csv: a duplicate row of {r['method']} {r.get('backend') or ''} "
                                f"{r.get('dual_kind') or ''} cell {r['cell']}: the later one is kept")
                del self._rows[key]  # the later row takes the later place
            self._store(r)
        conv, conv_problems = read_rows(self.conv_path, CONVERGENCE_SCHEMA)
        ok_ids = {r["row_id"] for r in self._rows.values() if r["status"] == "ok"}
        orphans = 0
        for r in conv:
            if r["row_id"] in ok_ids:
                self._conv.setdefault(r["row_id"], []).append(r)
            else:
                orphans += 1
        if orphans:
            conv_problems.append(f"convergence.csv: {orphans} row(s) of a cell whose bench row was never "
                                 f"committed are dropped")
        self.problems = problems + conv_problems
        for p in self.problems:
            self.log(f"resume: {p}; that row is recomputed")

    @property
    def rows(self) -> list[dict]:
        return list(self._rows.values())

    @property
    def convergence(self) -> list[dict]:
        return [r for rows in self._conv.values() for r in rows]

    def done(self) -> set:
        """Keys of finished rows (ok or skipped); error rows are retried."""
        return {k for k, r in self._rows.items() if r.get("status") in ("ok", "skipped")}

    def commit(self, row: dict, convergence: list[dict] | None = None) -> dict:
        """Commit one row (and the dual solver's convergence history of its cell).

        Returns the row as stored (every column, with its ``row_id``).
        """
        stored = {c: row.get(c) for c in COLUMNS}
        for c in ("backend", "dual_kind", "reason"):
            stored[c] = stored[c] or ""
        stored["row_id"] = row_id(stored)
        stored["checksum"] = row_checksum([_fmt(stored[c]) for c in COLUMNS if c != "checksum"])
        self._store(stored)
        changed = False
        if convergence is not None:
            self._conv[stored["row_id"]] = [{**{c: r.get(c) for c in CONVERGENCE_COLUMNS if c != "checksum"},
                                             "row_id": stored["row_id"]} for r in convergence]
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
        csv.writer(buf, lineterminator="\n").writerow([_fmt(row[c]) for c in COLUMNS])
        self._lines[key] = buf.getvalue()
        self._row_json[key] = json.dumps(json_safe(row), allow_nan=False)

    def _json(self) -> dict:
        return {"environment": self.env, "config": self.config, "columns": list(COLUMNS), "rows": self.rows,
                **self.extra}

    def _json_text(self) -> str:
        """Strict JSON of :meth:`_json`, one row per line."""
        meta = {"environment": self.env, "config": self.config, "columns": list(COLUMNS)}
        parts = [f" {json.dumps(k)}: {json.dumps(json_safe(v), allow_nan=False)}" for k, v in meta.items()]
        parts.append(' "rows": [' + ",".join("\n  " + self._row_json[k] for k in self._rows) + "\n ]")
        parts += [f" {json.dumps(str(k))}: {json.dumps(json_safe(v), allow_nan=False)}" for k, v in self.extra.items()]
        return "{\n" + ",\n".join(parts) + "\n}\n"

    def _flush(self, convergence: bool) -> None:
        if convergence:
            atomic_csv(self.conv_path, CONVERGENCE_COLUMNS, self.convergence, checksum=True)
        atomic_write_text(self.csv_path, ",".join(COLUMNS) + "\n" + "".join(self._lines[k] for k in self._rows))
        atomic_write_text(self.json_path, self._json_text())
