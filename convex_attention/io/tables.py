"""The one reader of results tables: CSV files that this toolkit wrote.

:func:`read_table` reads a table as it is on disk: its header and its rows as strings,
each with its line number (the line it starts on); blank lines, before the header too,
carry nothing.  A file that cannot be a table (not UTF-8 text, a byte-order mark, NUL
bytes, not CSV, a required column missing, a folder or named pipe of its name, a file that
cannot be read) raises :class:`ResultsFormatError`
naming the file and what is wrong; a row that is damaged (a field count other than the
header's, the last line without its line end, a quoted value left open or followed by text,
a checksum that does not match) is left out and named in ``problems``.
:func:`read_rows` reads a table of a known :class:`Schema`: the header must be the
schema's (the error says which columns differ; a file written before the schema's
``added`` columns existed is read with them empty) and every value is typed (a row with an
unparsable number or a value outside its choices is left out and named).  Every figure
and every ``--resume`` reads through these two functions.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass

from .files import file_kind, row_checksum

__all__ = ["Table", "Schema", "RowProblem", "ResultsFormatError", "read_table", "read_rows", "lacks_added_columns"]


class ResultsFormatError(ValueError):
    """A results file cannot be read as a table (the message names the file and why)."""


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
    # columns added after files were written: a file whose header is the schema's without
    # them (in order) is read, its rows holding those columns empty
    added: tuple = ()


class RowProblem(str):
    """Why one row of a table was left out, as text (``"line N (why)"``, or with
    :func:`read_rows` ``"NAME line N (why)"``), with the row's first line number as ``line``:
    what tells a damaged row from a problem of the file as a whole ("the file is empty")."""

    line: int
    _why: str
    _table: str

    def __new__(cls, line: int, why: str, table: str = "") -> RowProblem:
        self = super().__new__(cls, f"{table + ' ' if table else ''}line {line} ({why})")
        self.line, self._why, self._table = line, why, table
        return self

    def __getnewargs__(self) -> tuple:  # (copied and pickled as itself: str's would pass the text alone)
        return self.line, self._why, self._table

    def named(self, table: str) -> RowProblem:
        """The same problem, its text naming the table it is in."""
        return RowProblem(self.line, self._why, table)


@dataclass(frozen=True)
class Table:
    """A table as read: ``header``, ``rows`` (dicts of strings, each with its line number
    under ``"_line"``: the line it starts on, where a quoted value spans several) and
    ``problems`` (a :class:`RowProblem` per damaged row left out; a problem of the file as
    a whole is plain text)."""

    header: tuple
    rows: list
    problems: list


def _listing(items, limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _decode(path: str, raw: bytes) -> str:
    name = os.path.basename(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ResultsFormatError(f"{path}: starts with a UTF-8 byte-order mark (an editor or spreadsheet saved it); "
                                 f"this toolkit writes plain UTF-8: restore the file it wrote, or rerun")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ResultsFormatError(f"{path}: is UTF-16 text (it starts with a byte-order mark), not the UTF-8 CSV "
                                 f"this toolkit writes")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ResultsFormatError(f"{path}: holds NUL bytes (the first at offset {nul}): a binary file, not the CSV "
                                 f"table {name} should be")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ResultsFormatError(f"{path}: is not UTF-8 text (invalid byte 0x{raw[err.start]:02x} at offset "
                                 f"{err.start}): not the CSV table {name} should be") from None


def read_table(path: str, required=(), checksum: bool | None = None) -> Table:
    """The header and rows of the CSV table at ``path`` (see the module docstring).

    ``required``: columns the header must hold.  ``checksum``: check the ``checksum``
    column of every row (``None``: where the header has one).  An empty file gives an
    empty table with one problem saying so.

    Raises:
        ResultsFormatError: not a table (the message names the file and why), a path that
            is not a regular file (a folder, a named pipe: it is not opened, so a pipe does
            not block the read), or a file that cannot be read.
    """
    if not os.path.isfile(path):  # follows a symlink: a link to a regular file is read
        try:
            what = f"is {file_kind(os.stat(path).st_mode)}"
        except OSError:
            what = "does not exist" if not os.path.lexists(path) else "is a link to nothing"
        raise ResultsFormatError(f"{path}: {what}, not the CSV table {os.path.basename(path)} should be")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ResultsFormatError(f"{path}: cannot be read ({err.strerror or err})") from None
    text = _decode(path, raw)
    name = os.path.basename(path)
    if not text.strip():
        return Table((), [], ["the file is empty"])
    try:
        records, malformed = _csv_records(text)
    except csv.Error as err:
        raise ResultsFormatError(f"{path}: not a readable CSV file ({err})") from None
    # blank lines before the header carry nothing, as between rows (and as pandas reads them): the first
    # blank record had been taken for the header, and every row, the header's line included, was reported
    # damaged, which --resume dropped and measured again (ca_rev269)
    first = next((i for i, (_, fields) in enumerate(records) if fields), len(records))
    records = records[first:]
    if malformed and (not records or malformed[0] < records[0][0]):
        raise ResultsFormatError(f"{path}: not a readable CSV file (the header's quoting is malformed)")
    header = tuple(h.strip() for h in records[0][1])
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:  # a row would keep only the last of its values (dict(zip(...)) below)
        raise ResultsFormatError(f"{path}: column(s) {', '.join(map(repr, repeated))} repeated in the header (not a "
                                 f"{name} this toolkit wrote?)")
    missing = [c for c in required if c not in header]
    if missing:
        raise ResultsFormatError(f"{path}: missing column(s) {', '.join(missing)} (not a {name} this toolkit "
                                 f"wrote?)")
    body = [(n, f) for n, f in records[1:] if f]  # blank lines carry nothing
    problems: list[str] = [RowProblem(n, "a quoted value not closed, or text after its closing quote: cut off or "
                                        "edited") for n in malformed]
    if body and not text.endswith(("\n", "\r")):
        # every complete row ends with a line end; a last row without one was cut off mid-write
        problems.append(RowProblem(body[-1][0], "no line end: cut off"))
        body = body[:-1]
    check = header.index("checksum") if "checksum" in header and checksum is not False else None
    rows = []
    for line, fields in body:
        if len(fields) != len(header):
            problems.append(RowProblem(line, f"{len(fields)} fields, the header has {len(header)}"))
            continue
        if check is not None and row_checksum([f for i, f in enumerate(fields) if i != check]) != fields[check]:
            problems.append(RowProblem(line, "checksum mismatch: a value was cut off or edited"))
            continue
        row: dict = dict(zip(header, fields))
        row["_line"] = line
        rows.append(row)
    return Table(header, rows, problems)


def _csv_records(text: str) -> tuple[list, list]:
    """``(records, malformed)``: the records of ``text`` as ``(line, fields)``, a record numbered
    by the line it starts on (a quoted value may span several), and the lines of the records
    whose quoting is malformed, which are left out.  csv's default reader takes a quote left
    open at the end of the file (a write cut off after a line end inside a value) or text after
    a closing quote as a value: without a checksum column such a row was read as whole
    (ca_rev155).  Its strict mode refuses the whole file instead, so a file it refuses is read
    again record by record, each record's own lines checked strictly."""
    def numbered(strict: bool) -> list:
        reader = csv.reader(io.StringIO(text, newline=""), strict=strict)
        out, ended = [], 0
        for fields in reader:
            out.append((ended, reader.line_num, fields))
            ended = reader.line_num
        return out

    try:
        return [(start + 1, fields) for start, _, fields in numbered(strict=True)], []
    except csv.Error:
        pass
    lines = io.StringIO(text, newline="").readlines()  # split as the reader counts lines
    records, malformed = [], []
    for start, end, fields in numbered(strict=False):
        try:
            whole = list(csv.reader(lines[start:end], strict=True)) == [fields]
        except csv.Error:
            whole = False
        if whole:
            records.append((start + 1, fields))
        else:
            malformed.append(start + 1)
    return records, malformed


def _header_difference(expected: tuple, got: tuple) -> str:
    """What differs between two headers, in words."""
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing {_listing(missing)}")
    if extra:
        parts.append(f"unexpected {_listing([repr(c) for c in extra])}")
    repeated = sorted({c for c in got if got.count(c) > 1})
    if repeated:
        parts.append(f"repeated {_listing([repr(c) for c in repeated])}")
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
        parts.append(f"the same columns in another order (column {first + 1} is {got[first]!r}, expected "
                     f"{expected[first]!r})")
    return "; ".join(parts)


def _typed(schema: Schema, raw: dict) -> tuple[dict | None, str | None]:
    row: dict = {}
    for c in schema.columns:
        v = raw[c]
        try:
            if (c in schema.ints or c in schema.floats) and (not v.isascii() or "_" in v):
                # Python's int and float read "1_000" and other scripts' digits; no writer writes them, and
                # pandas refuses them, the whole file with its dtypes (ca_rev269)
                raise ValueError(v)
            if c in schema.ints:
                row[c] = None if v == "" else int(v)
            elif c in schema.floats:
                row[c] = math.nan if v == "" else float(v)
            else:
                row[c] = v
        except ValueError:
            return None, f"column {c} holds {v!r}, not a number"
    for c, allowed in schema.choices:
        if row[c] not in allowed:
            return None, f"column {c} holds {row[c]!r}, not one of {', '.join(allowed)}"
    return row, None


def read_rows(path: str, schema: Schema) -> tuple[list[dict], list[str]]:
    """The rows of a results table of ``schema``, typed and checked.

    Returns ``(rows, problems)``: ``rows`` are the rows that parse (ints, floats with NaN
    for empty fields, strings); ``problems`` names every row left out and why (a damaged
    row, an unparsable number, a value outside its choices).  A missing file gives
    ``([], [])``.

    Raises:
        ResultsFormatError: not a table, or its header is not the schema's (another
            table, or a file written by another version); the message says what differs.
            So is a path that exists but is not a regular file, or cannot be read
            (:func:`read_table`).
    """
    if not os.path.exists(path):
        return [], []
    table = read_table(path, checksum=schema.checksum)
    if not table.header:
        return [], [f"{os.path.basename(path)}: {p}" for p in table.problems]
    older = tuple(c for c in schema.columns if c not in schema.added)
    if table.header == older and schema.added:  # written before the added columns existed
        table = Table(schema.columns, [{**r, **dict.fromkeys(schema.added, "")} for r in table.rows], table.problems)
    if table.header != schema.columns:
        raise ResultsFormatError(f"{path} does not have the columns of a {schema.name} table written by this "
                                 f"version: {_header_difference(schema.columns, table.header)}")
    name = os.path.basename(path)
    rows: list[dict] = []
    problems = [p.named(name) if isinstance(p, RowProblem) else f"{name} {p}" for p in table.problems]
    for raw in table.rows:
        row, problem = _typed(schema, raw)
        if row is None:
            problems.append(RowProblem(raw["_line"], problem or "", table=name))
        else:
            rows.append(row)
    return rows, problems


def lacks_added_columns(path: str, schema: Schema) -> bool:
    """Whether the table at ``path``, which :func:`read_rows` read, was written before
    ``schema``'s ``added`` columns existed (its header lacks one): a writer that keeps its
    rows rewrites it with them at once, so that no file it writes beside it (bench.json's
    columns and checksums) speaks of columns the table does not have."""
    if not schema.added or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8", newline="") as f:
            # the first line that is not blank, as read_table takes it (ca_rev269)
            header = next(csv.reader([next((line for line in f if line.strip("\r\n")), "")]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return any(c not in (h.strip() for h in header) for c in schema.added)
