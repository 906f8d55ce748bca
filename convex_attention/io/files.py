"""Atomic files, strict JSON, CSV fields that read back bit for bit, and row checksums.

* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_csv`,
  :func:`write_json`: a file is written to a temporary file in the same folder, flushed to
  disk and renamed over the target, so a reader (or a run killed half-way) sees the old
  file or the new one, never a mixture.  The temporary file is named
  ``<target>.<pid>-<n>.tmp`` (:func:`temporary_name`), created exclusively and never through
  a link (:func:`temporary_file`), and :func:`clean_stale_tmp` removes only files of exactly
  that form for the targets it is given: never a file of the user's.
* JSON is strict: NaN and ±Inf become ``null`` (``json.dumps(..., allow_nan=False)``).
* :func:`csv_field` writes floats with ``repr`` (they read back exactly) and NaN/None as an
  empty field; :func:`row_checksum` is the CRC-32 a checked table ends each row with;
  :func:`one_line` and :func:`error_reason` make a row's ``reason`` one line of at most
  :data:`REASON_CHARS` characters (so a table stays one row per line and readable).
* :func:`check_out_dir`: an output folder is, or can be made, a writable folder;
  :func:`check_output_files`: the names of a command's outputs are free or regular files.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import itertools
import json
import math
import numbers
import os
import re
import stat
import unicodedata
import zlib
from dataclasses import asdict, is_dataclass

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_csv", "write_json", "to_json_text", "json_safe",
           "csv_field", "row_checksum", "temporary_name", "temporary_file", "atomic_file", "clean_stale_tmp",
           "check_out_dir", "check_fresh_out_dir", "as_json",
           "check_no_earlier_outputs", "check_output_files", "one_line", "error_reason",
           "REASON_CHARS", "write_csv_row", "breaks_lines",
           "missing_folders", "remove_empty_folders", "strict_constant", "read_json"]

_TMP_COUNTER = itertools.count()


def temporary_name(path: str) -> str:
    """The temporary file :func:`atomic_write_bytes` writes before renaming it to ``path``:
    ``<path>.<pid>-<n>.tmp`` (one per write, unique within the process)."""
    return f"{path}.{os.getpid()}-{next(_TMP_COUNTER)}.tmp"


# names tried before a temporary file is given up: each taken name is a file or link of that
# name already there (a leftover of a process whose pid this one reuses, or one put there)
_TEMPORARY_TRIES = 100


@contextlib.contextmanager
def temporary_file(path: str):
    """A new temporary file beside ``path`` (:func:`temporary_name`), open for binary writing:
    yields ``(name, file)``; renaming it over ``path`` is the caller's.  It is created
    exclusively and never through a link: a file or link already of that name (a leftover, or
    one put there to redirect the write) is left alone and the next name is taken.  Removed
    again on leaving unless it was renamed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    # named before it is made: Ctrl-C (or SIGTERM) raised as os.open returns, before its descriptor is
    # kept, had left the empty file behind (a review's random Ctrl-C to bench left example.npz's: ca_rev273)
    tmp, mine = None, None
    try:
        for _ in range(_TEMPORARY_TRIES):
            name = temporary_name(os.path.abspath(path))
            if os.path.lexists(name):  # a leftover, or one put there: not this run's to remove
                continue
            tmp = name
            try:
                fd = os.open(tmp, flags, 0o666)
                break
            except FileExistsError:
                tmp = None
                continue
        else:
            raise FileExistsError(errno.EEXIST, f"no free temporary name beside it after {_TEMPORARY_TRIES} tries",
                                  path)
        try:
            mine = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "wb") as f:
            yield tmp, f
    finally:
        # removed only while it is still this file (renamed, the name may be another writer's
        # by now), and never in place of the error that brought us here (a disk error may have
        # left the folder read-only); one made but not yet looked at is this run's while it is an
        # empty plain file
        with contextlib.suppress(OSError):
            if tmp is not None:
                found = os.lstat(tmp)
                if os.path.samestat(found, mine) if mine is not None else \
                        stat.S_ISREG(found.st_mode) and found.st_size == 0:
                    os.remove(tmp)


@contextlib.contextmanager
def atomic_file(path: str):
    """``path`` opened for binary writing, atomically: yields a temporary file beside it
    (:func:`temporary_file`), which on leaving without an error is flushed, synced to disk and
    renamed over ``path``; on an error it is removed and ``path`` is unchanged."""
    with temporary_file(path) as (tmp, f):
        yield f
        f.flush()
        os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_write_bytes(path: str, data: bytes | memoryview) -> None:
    """Write ``data`` (bytes, or a buffer of them) to ``path`` atomically (:func:`atomic_file`: temporary
    file in the same folder, fsync, rename); the target is unchanged if anything fails."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def clean_stale_tmp(folder: str, targets, target_patterns=()) -> list[str]:
    """Remove the temporary files a killed writer of ``targets`` (file names in ``folder``, or
    names matching one of the regular expressions ``target_patterns``: files named per run)
    left behind; returns their names.

    Only names of exactly the form ``<target>.<pid>-<n>.tmp`` for one of ``targets`` are
    touched: a file the user put there, whatever its name, is never removed.  Call it only
    while holding the folder's lock (no other writer is alive then).
    """
    alternatives = [re.escape(t) for t in targets if t] + [p for p in target_patterns if p]
    if not alternatives or not os.path.isdir(folder):  # (an empty name would leave `.<pid>-<n>.tmp` to match)
        return []
    # fullmatch and ASCII digits: `$` also matched before a final newline, and \d any digit
    pattern = re.compile("(?:" + "|".join(alternatives) + r")\.[0-9]+-[0-9]+\.tmp")
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if pattern.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(name)
    return removed


def _numpy_float(v) -> bool:
    """A NumPy floating scalar (float16 to longdouble), without importing NumPy."""
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and type(v).__module__ == "numpy"


def csv_field(v) -> str:
    """One CSV field: floats round-trip exactly (``repr``), NaN and None are empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):  # numpy's float64 is one, and its repr is "np.float64(2.5)"
        return "" if math.isnan(v) else repr(float(v))
    if _numpy_float(v):  # (a longdouble's item() is itself: it had recursed forever, ca_rev188)
        return csv_field(float(v))
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return csv_field(v.item())
    return str(v)


REASON_CHARS = 300


# the bidirectional controls, which reorder the text around them on a terminal
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def breaks_lines(text: str) -> bool:
    """Whether ``text`` holds a control character (NUL, an escape sequence's ESC) or a line
    break: no path holds NUL, a message is one line, and an escape sequence in a name or path
    would act on the terminal that prints it back.  The one rule for paths and names given
    (settings.Text, :func:`check_out_dir`)."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def _shown(c: str) -> str:
    """``c`` as a message shows it: a control character (terminal sequences, NUL), a
    surrogate, an unassigned or private code point, or a bidirectional control as its escape
    (``\x1b``); anything else, the joiners of ordinary text included, as it is (ca_rev151)."""
    if c in _BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Cs", "Cn", "Co"):
        return ascii(c)[1:-1]
    return c


def one_line(text: object, limit: int) -> str:
    """``text`` with every run of whitespace (newlines included) one space, every character
    that would act on a terminal instead of printing as its escape (:func:`_shown`: a
    solver's message had erased a table row and hidden the lines after it, ca_rev149), and at
    most ``limit`` characters (``...`` where cut, never inside an escape: ca_rev151)."""
    pieces = [_shown(c) for c in " ".join(str(text).split())]
    if sum(len(p) for p in pieces) <= limit:
        return "".join(pieces)
    if limit < 3:  # no room for the mark of a cut (ca_rev153)
        return "..."[:max(0, limit)]
    out, used = [], 0
    for piece in pieces:
        if used + len(piece) > limit - 3:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + "..."


def error_reason(err: BaseException) -> str:
    """A row's ``reason`` for an exception: ``Type: message`` on one line, at most
    :data:`REASON_CHARS` characters."""
    return one_line(f"{type(err).__name__}: {err}", REASON_CHARS)


def row_checksum(values) -> str:
    """CRC-32 (8 hex digits) of a row's other fields as written, joined by the unit separator:
    the ``checksum`` column, which catches a value cut off or edited (docs/results_format.md)."""
    return f"{zlib.crc32(chr(31).join(values).encode('utf-8')):08x}"


def atomic_csv(path: str, columns, rows, checksum: bool = False) -> None:
    """Write ``rows`` (dicts) under the header ``columns``, atomically.

    Missing keys are empty, extra keys ignored; floats are written with ``repr`` (they
    read back bit for bit) and NaN as an empty field.  With ``checksum=True`` the last
    column, ``checksum``, holds the CRC-32 of the row's other fields, so a reader finds
    a value that was cut off (:func:`convex_attention.io.tables.read_rows`).
    """
    columns = list(columns)
    data_columns = [c for c in columns if c != "checksum"] if checksum else columns
    buf = io.StringIO()
    write_csv_row(buf, columns)
    for r in rows:
        values = [csv_field(r.get(c)) for c in data_columns]
        if checksum:
            values.append(row_checksum(values))
        write_csv_row(buf, values)
    atomic_write_text(path, buf.getvalue())


def write_csv_row(out, values) -> None:
    """Write one CSV row of the strings ``values`` to the text stream ``out``, ended by
    ``\n``: the one writer of every table.  csv's minimal quoting quotes a field holding the
    line terminator but not a lone ``\r``, which every reader (csv's, pandas') takes for the end
    of a line: such a row is written with every field quoted, so it reads back whole."""
    if any("\r" in v for v in values):
        csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(values)
    else:
        csv.writer(out, lineterminator="\n").writerow(values)


def json_safe(obj):
    """``obj`` with NaN/±Inf floats as ``None``, tuples as lists, sets as sorted lists (the
    same set gives the same text in every process, whatever the hash seed), dataclasses as
    dicts, numpy and torch scalars as Python numbers (small arrays as lists), anything else
    unknown as its ``str``: what strict JSON can hold.  Dict keys become their ``str``; two keys
    that would become one (``1`` and ``"1"``) are refused (ValueError), never one value dropped."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {str(k): json_safe(v) for k, v in obj.items()}
        if len(out) < len(obj):  # keys equal as text (1 and "1"): one value would be lost unsaid
            seen: dict = {}
            for k in obj:
                if str(k) in seen:
                    raise ValueError(f"keys {seen[str(k)]!r} and {k!r} are both {str(k)!r} in JSON: one value would be "
                                     f"lost")
                seen[str(k)] = k
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [json_safe(v) for v in obj]
        try:  # ties (members equal once converted, e.g. True and 1) broken by their JSON text
            return sorted(items, key=lambda v: (v, json.dumps(v, sort_keys=True)))
        except TypeError:  # members that do not compare (a number and a string): by their JSON text
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(asdict(obj))
    if _numpy_float(obj):  # (a longdouble's tolist() is itself: it had recursed forever, ca_rev188)
        return json_safe(float(obj))
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, tensors
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    return str(obj)


def to_json_text(obj, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`); never holds NaN or Infinity."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"


def as_json(obj):
    """``obj`` as strict JSON stores it and reads it back (tuples as lists, keys as strings;
    see :func:`json_safe`): what a value compares equal to once recorded."""
    return json.loads(to_json_text(obj, None))


def check_no_earlier_outputs(out_dir: str, names, overwrite: bool) -> list[str]:
    """ValueError, before any work, when ``out_dir`` holds any of the files ``names`` (an
    earlier run's outputs, which this run would replace) and ``overwrite`` is not set:
    results are never replaced without a word.  Returns the names that are there (a link
    counts, dangling or not)."""
    present = [n for n in names if os.path.lexists(os.path.join(out_dir, n))]
    if present and not overwrite:
        raise ValueError(f"--out {out_dir} already holds {', '.join(present)} from an earlier run; choose another "
                         f"folder, or pass --overwrite to replace them")
    return present


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (from its ``st_mode``)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_output_files(out_dir: str, names) -> None:
    """ValueError, before any work, when one of the files ``names`` that a command writes
    into ``out_dir`` exists there and is not a regular file (a folder, a named pipe, a
    device, a symlink to one of them): it could be neither read as an earlier result nor
    replaced.  A regular file, or a symlink to one, passes (whether it may be replaced is
    the caller's other check); so does a name that is free.  Nothing is opened, so a named
    pipe does not block the check."""
    for name in names:
        path = os.path.join(out_dir, name)
        try:
            mode = os.stat(path).st_mode  # follows a symlink: a link to a regular file passes
        except (FileNotFoundError, NotADirectoryError):
            continue  # free, a dangling symlink (a write replaces it), or out_dir is no folder (check_out_dir's)
        except OSError as err:
            raise ValueError(f"{path} cannot be examined ({err.strerror or err}); choose another --out") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is {file_kind(mode)}, not the file {name} this command writes there: it cannot "
                             f"be read or replaced; move it away, or choose another --out")


def strict_constant(token: str):
    """``parse_constant`` of ``json.load``: NaN, Infinity and -Infinity are no strict JSON, which
    every file the package writes is (:func:`to_json_text`); a file holding one was edited by
    hand, and is refused (ValueError) rather than read as numbers no writer records."""
    raise ValueError(f"{token} is not a number in strict JSON")


def read_json(path: str):
    """The strict JSON of the file at ``path`` (:func:`strict_constant`): OSError,
    UnicodeDecodeError, ValueError (not JSON, or NaN/Infinity in it) or RecursionError."""
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=strict_constant)


def write_json(path: str, obj, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (NaN/Inf as ``null``), atomically."""
    atomic_write_text(path, to_json_text(obj, indent))


def check_fresh_out_dir(out_dir: str, names, overwrite: bool) -> None:
    """Both checks of a script's ``--out`` before any work (ValueError naming the fix): no
    earlier run's ``names`` there unless ``overwrite`` (:func:`check_no_earlier_outputs`), and
    a folder that is, or can be made, writable (:func:`check_out_dir`)."""
    check_no_earlier_outputs(out_dir, names, overwrite)
    check_out_dir(out_dir)


def missing_folders(out: str) -> list[str]:
    """The folders of ``out``'s path that do not exist yet, the deepest first (what making
    ``out`` would create).  The path is not normalised: ``new/../x`` makes ``new`` on the way,
    which ``abspath`` dropped from the list (ca_rev259); a ``..`` or ``.`` step is no folder made."""
    made: list[str] = []
    path = os.path.join(os.getcwd(), out)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        if os.path.basename(path) not in ("", os.curdir, os.pardir):
            made.append(path)
        path = os.path.dirname(path)
    return made


def remove_empty_folders(folders: list[str]) -> None:
    """Remove each of ``folders`` that is empty, in order (the deepest first); the others stay."""
    for folder in folders:
        with contextlib.suppress(OSError):  # only an empty folder is removed
            os.rmdir(folder)


def check_out_dir(out_dir: str) -> None:
    """Raise ValueError (naming the fix) unless ``out_dir`` is, or can be made, a writable folder."""
    if breaks_lines(out_dir):
        # before anything is made: a folder named with a line break or an escape sequence had been
        # made and written by bench, verify, demo and the scripts, and experiment refused it with a
        # traceback after its dev folder was made (ca_rev256)
        raise ValueError(f"--out {out_dir!r} holds a line break or another control character; "
                         "choose a folder name without them")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file, not a folder; choose a folder path")
    made = missing_folders(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        with temporary_file(os.path.join(out_dir, ".write-probe")):
            pass  # made and removed again
    except OSError as err:
        # the folders made on the way go again (a name too long for the system had left its parents:
        # ca_rev256)
        remove_empty_folders(made)
        raise ValueError(f"--out {out_dir} is not a writable folder ({err.strerror or err}); "
                         f"choose a folder you can write to") from err
