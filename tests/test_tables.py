"""convex_attention.io.tables: the one reader of results tables."""
import math

import pytest
from helpers import read_text

from convex_attention.io.files import atomic_csv
from convex_attention.io.tables import ResultsFormatError, RowProblem, Schema, read_rows, read_table

SCHEMA = Schema("toy", ("name", "n", "x", "checksum"), ints=frozenset({"n"}), floats=frozenset({"x"}))


def write_toy(path, rows):
    atomic_csv(path, SCHEMA.columns, rows, checksum=True)


def test_read_rows_types_values_and_checks_the_checksum(tmp_path):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 1.9665132189317092e-07}, {"name": "b", "n": 2, "x": float("nan")}])
    rows, problems = read_rows(path, SCHEMA)
    assert problems == []
    assert rows[0]["n"] == 1 and rows[0]["x"] == 1.9665132189317092e-07 and math.isnan(rows[1]["x"])


@pytest.mark.parametrize("damage, reason, line", [
    (lambda t: t.replace("1.9665132189317092e-07", "1.9665132"), "checksum mismatch", 2),  # a value cut off
    (lambda t: t.rsplit(",", 2)[0] + "\n", "(2 fields, the header has 4)", 3),  # the last line cut short
    (lambda t: t.replace(",2,", ",two,"), "checksum mismatch", 3),  # edited
    (lambda t: t + "c,3,1.0,deadbeef,extra\n", "(5 fields, the header has 4)", 4),
    (lambda t: t.rstrip("\n"), "(no line end: cut off)", 3),
    (lambda t: t.replace(",2,", ',"2,'), "a quoted value not closed", 3),
])
def test_read_rows_reports_and_leaves_out_damaged_rows(tmp_path, damage, reason, line):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 1.9665132189317092e-07}, {"name": "b", "n": 2, "x": 0.5}])
    text = read_text(path)
    with open(path, "w") as f:
        f.write(damage(text))
    rows, problems = read_rows(path, SCHEMA)
    assert len(problems) == 1 and reason in problems[0], problems
    # a damaged row's problem says so, with its line (what bench's resume counts as a row)
    assert isinstance(problems[0], RowProblem) and problems[0].line == line
    assert problems[0].startswith(f"toy.csv line {line} (")
    import copy
    import pickle

    for again in (copy.deepcopy(problems[0]), pickle.loads(pickle.dumps(problems[0]))):
        assert again == problems[0] and isinstance(again, RowProblem) and again.line == line
    assert all(r["x"] in (1.9665132189317092e-07, 0.5) for r in rows)  # never a misread value


def test_number_garbage_is_caught_even_with_a_matching_checksum(tmp_path):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": "two", "x": 1.0}])
    rows, problems = read_rows(path, SCHEMA)
    assert rows == [] and "not a number" in problems[0]
    assert isinstance(problems[0], RowProblem) and problems[0].line == 2


def test_read_rows_refuses_a_foreign_header(tmp_path):
    path = str(tmp_path / "toy.csv")
    atomic_csv(path, ["name", "n"], [{"name": "a", "n": 1}])
    with pytest.raises(ResultsFormatError, match="columns"):
        read_rows(path, SCHEMA)


@pytest.mark.parametrize("content, message", [
    (b"\xef\xbb\xbfname,n,x,checksum\n", "byte-order mark"),
    (b"\xff\xfen\x00a\x00", "UTF-16"),
    (b"name,n\x00,x,checksum\n", "NUL bytes (the first at offset 6)"),
    (b"name,n,x,checksum\nb\xe9,1,2,00000000\n", "not UTF-8 text (invalid byte 0xe9 at offset 19)"),
])
def test_an_undecodable_or_binary_file_is_one_error_naming_the_file_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "toy.csv"
    path.write_bytes(content)
    for read in (lambda: read_table(str(path)), lambda: read_rows(str(path), SCHEMA)):
        with pytest.raises(ResultsFormatError) as info:
            read()
        text = str(info.value)
        assert message in text and str(path) in text and "\n" not in text


@pytest.mark.parametrize("header, message", [
    (("name", "n", "checksum"), "missing x"),
    (("name", "n", "x", "y", "checksum"), "unexpected 'y'"),
    (("n", "name", "x", "checksum"), "another order (column 1 is 'n', expected 'name')"),
])
def test_a_foreign_header_is_refused_saying_what_differs(tmp_path, header, message):
    path = str(tmp_path / "toy.csv")
    atomic_csv(path, header, [])
    with pytest.raises(ResultsFormatError, match="toy table") as info:
        read_rows(path, SCHEMA)
    assert message in str(info.value)


def test_read_table_keeps_line_numbers_and_refuses_a_missing_required_column(tmp_path):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}, {"name": "b", "n": 2, "x": 0.25}])
    table = read_table(path, required=("name", "x"))
    assert [r["_line"] for r in table.rows] == [2, 3] and table.problems == []
    assert table.rows[1]["x"] == "0.25"  # strings: each reader validates what it uses
    with pytest.raises(ResultsFormatError, match="missing column"):
        read_table(path, required=("status",))
    empty = tmp_path / "empty.csv"
    empty.write_text("  \n")
    assert read_table(str(empty)).problems == ["the file is empty"]


def test_a_folder_a_named_pipe_or_a_dangling_link_of_the_tables_name_is_a_format_error_and_is_not_opened(tmp_path):
    """Found by a hostile review: a folder named bench.csv raised IsADirectoryError (a
    traceback in the commands), and a named pipe blocked the read forever."""
    import os

    (tmp_path / "bench.csv").mkdir()
    os.mkfifo(tmp_path / "pipe.csv")
    os.symlink(tmp_path / "gone.csv", tmp_path / "dangling.csv")
    for name, what in (("bench.csv", "is a folder"), ("pipe.csv", "is a named pipe"),
                       ("dangling.csv", "is a link to nothing"), ("absent.csv", "does not exist")):
        path = str(tmp_path / name)
        with pytest.raises(ResultsFormatError, match=f"{name}: {what}"):
            read_table(path)
        if name in ("bench.csv", "pipe.csv"):  # read_rows reads a path that leads to no file as no rows
            with pytest.raises(ResultsFormatError, match=f"{name}: {what}"):
                read_rows(path, SCHEMA)


def test_a_file_that_cannot_be_opened_is_a_format_error(tmp_path, monkeypatch):
    import builtins

    write_toy(str(tmp_path / "t.csv"), [{"name": "a", "n": 1, "x": 0.5}])

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(builtins, "open", refused)
    with pytest.raises(ResultsFormatError, match=r"t\.csv: cannot be read \(Permission denied\)"):
        read_table(str(tmp_path / "t.csv"))


def test_a_value_outside_its_choices_is_left_out_and_named_even_with_a_matching_checksum(tmp_path):
    """A status no run writes ("passed!") is not read as a row (found by mutation testing:
    with the choices check disabled it was kept)."""
    schema = Schema("toy", ("name", "status", "checksum"), ints=frozenset(), floats=frozenset(),
                    choices=(("status", ("passed", "failed")),))
    path = str(tmp_path / "toy.csv")
    atomic_csv(path, schema.columns, [{"name": "a", "status": "passed"}, {"name": "b", "status": "passed!"}],
               checksum=True)
    rows, problems = read_rows(path, schema)
    assert [(r["name"], r["status"]) for r in rows] == [("a", "passed")]
    assert problems == ["toy.csv line 3 (column status holds 'passed!', not one of passed, failed)"]


@pytest.mark.parametrize("value", ["1.5", "2.0", "1e3"])
def test_a_fraction_in_an_integer_column_is_refused_not_truncated(tmp_path, value):
    """An integer column holds integers: "1.5" was read as 1 (found by mutation testing:
    `int(float(v))` passed every test)."""
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": value, "x": 1.0}, {"name": "b", "n": 2, "x": 0.5}])
    rows, problems = read_rows(path, SCHEMA)
    assert [r["name"] for r in rows] == ["b"]
    assert problems == [f"toy.csv line 2 (column n holds {value!r}, not a number)"]


@pytest.mark.parametrize("content, message", [
    (b"\xfe\xffn\x00a\x00", "UTF-16"),  # big-endian byte-order mark
    (b"\x00name,n,x,checksum\n", "NUL bytes (the first at offset 0)"),
])
def test_a_big_endian_utf16_file_or_a_nul_at_the_start_is_refused(tmp_path, content, message):
    """Found by mutation testing: only the little-endian mark, and NUL bytes after the first,
    were tested."""
    path = tmp_path / "toy.csv"
    path.write_bytes(content)
    with pytest.raises(ResultsFormatError) as info:
        read_table(str(path))
    assert message in str(info.value) and str(path) in str(info.value)


def test_a_header_missing_many_columns_lists_five_and_counts_the_rest(tmp_path):
    schema = Schema("wide", tuple(f"c{i}" for i in range(8)) + ("checksum",), ints=frozenset(),
                    floats=frozenset())
    path = str(tmp_path / "wide.csv")
    atomic_csv(path, ["checksum"], [])
    with pytest.raises(ResultsFormatError, match="missing c0; c1; c2; c3; c4; and 3 more") as info:
        read_rows(path, schema)
    assert "\n" not in str(info.value)


def test_blank_lines_and_carriage_return_line_ends_are_not_damage(tmp_path):
    """A blank line carries nothing, and "\\r" ends a line as "\\n" does: no row is left out
    (found by mutation testing: counting blank lines as short rows, or only "\\n" as a line
    end, passed)."""
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}, {"name": "b", "n": 2, "x": 0.25}])
    text = read_text(path)
    lines = text.splitlines()
    for damaged in ("\n".join([lines[0], lines[1], "", lines[2]]) + "\n\n", "\r".join(lines) + "\r"):
        with open(path, "w", newline="") as f:
            f.write(damaged)
        rows, problems = read_rows(path, SCHEMA)
        assert problems == [] and [r["name"] for r in rows] == ["a", "b"], (damaged, problems)


def test_a_last_row_cut_off_before_its_line_end_is_left_out(tmp_path):
    """Its values may be whole, but a write cut off there may have cut a value too: it is left
    out, not only named (found by mutation testing: keeping it passed)."""
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}, {"name": "b", "n": 2, "x": 0.25}])
    text = read_text(path)
    with open(path, "w") as f:
        f.write(text.rstrip("\n"))
    rows, problems = read_rows(path, SCHEMA)
    assert [r["name"] for r in rows] == ["a"] and problems == ["toy.csv line 3 (no line end: cut off)"]
    table = read_table(path)
    assert [r["name"] for r in table.rows] == ["a"] and table.problems == ["line 3 (no line end: cut off)"]


def test_read_table_checks_the_checksum_where_the_header_has_one_unless_told_not_to(tmp_path):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}, {"name": "b", "n": 2, "x": 0.25}])
    text = read_text(path)
    with open(path, "w") as f:
        f.write(text.replace(",0.25,", ",0.2,"))
    for checksum in (None, True):
        table = read_table(path, checksum=checksum)
        assert [r["name"] for r in table.rows] == ["a"]
        assert table.problems == ["line 3 (checksum mismatch: a value was cut off or edited)"]
    table = read_table(path, checksum=False)
    assert [r["x"] for r in table.rows] == ["0.5", "0.2"] and table.problems == []


def test_an_empty_integer_field_reads_as_none_not_zero(tmp_path):
    """Integer columns are nullable (docs/results_format.md): an empty field is no value, not 0
    (found by mutation testing: reading it as 0 passed)."""
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": None, "x": 0.5}, {"name": "b", "n": 0, "x": 0.25}])
    rows, problems = read_rows(path, SCHEMA)
    assert problems == [] and [r["n"] for r in rows] == [None, 0]


def test_read_rows_of_a_dangling_link_is_no_rows_and_of_an_empty_file_says_so(tmp_path):
    """A path that leads to no file gives no rows; an empty file gives no rows and the problem
    that read_table names (found by mutation testing: both were untested)."""
    import os

    os.symlink(tmp_path / "gone.csv", tmp_path / "dangling.csv")
    assert read_rows(str(tmp_path / "dangling.csv"), SCHEMA) == ([], [])
    (tmp_path / "toy.csv").write_text("\n")
    rows, problems = read_rows(str(tmp_path / "toy.csv"), SCHEMA)
    assert (rows, problems) == ([], ["toy.csv: the file is empty"])
    assert not isinstance(problems[0], RowProblem)  # the file's problem, not a row's


def test_a_field_too_large_for_the_csv_reader_is_one_format_error(tmp_path):
    """csv.Error (here a field over csv's field size limit) is a ResultsFormatError naming the
    file, not a traceback."""
    import csv

    path = tmp_path / "toy.csv"
    path.write_text("name,n,x,checksum\n" + "a" * (csv.field_size_limit() + 1) + ",1,0.5,00000000\n")
    with pytest.raises(ResultsFormatError, match="not a readable CSV file") as info:
        read_table(str(path))
    assert str(path) in str(info.value)


def test_a_header_only_table_without_a_line_end_is_a_table_of_no_rows(tmp_path):
    """The header is not a row: a table with no rows whose header has no line end has nothing
    cut off (found by mutation testing: the "no line end" check on a table with no rows was
    untested)."""
    path = tmp_path / "toy.csv"
    path.write_text(",".join(SCHEMA.columns))
    table = read_table(str(path))
    assert table.header == SCHEMA.columns and table.rows == [] and table.problems == []
    assert read_rows(str(path), SCHEMA) == ([], [])


def test_line_numbers_count_the_lines_of_a_value_that_holds_a_line_end(tmp_path):
    """A row's line number is the file's line, so a row after a value holding a line end is
    named by the line an editor shows (found by mutation testing: numbering records, not
    lines, passed)."""
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a\nb", "n": 1, "x": 0.5}, {"name": "c", "n": 2, "x": 0.25}])
    lines = read_text(path).splitlines()
    c_line = next(i for i, line in enumerate(lines, 1) if line.startswith("c,"))
    a_line = next(i for i, line in enumerate(lines, 1) if line.startswith('"a'))
    table = read_table(path)
    assert table.problems == [] and [r["name"] for r in table.rows] == ["a\nb", "c"]
    assert [r["_line"] for r in table.rows] == [a_line, c_line]  # the line each row starts on


def test_a_damaged_row_holding_a_line_end_is_named_by_the_line_it_starts_on(tmp_path):
    """Where an editor shows the row: its first line, not the last line of its value."""
    path = tmp_path / "toy.csv"
    write_toy(str(path), [{"name": "c", "n": 2, "x": 0.25}])
    head, row = read_text(str(path)).splitlines()[:2]
    path.write_text(f'{head}\n{row}\n"a\nb\nc",1\n')
    assert read_table(str(path)).problems == [f"line 3 (2 fields, the header has {len(head.split(','))})"]


def test_a_header_missing_exactly_five_columns_lists_all_five(tmp_path):
    """Five columns are listed whole, with no "and 0 more" (found by mutation testing: only
    more than five was tested)."""
    schema = Schema("wide", tuple(f"c{i}" for i in range(5)) + ("checksum",), ints=frozenset(),
                    floats=frozenset())
    path = str(tmp_path / "wide.csv")
    atomic_csv(path, ["checksum"], [])
    with pytest.raises(ResultsFormatError) as info:
        read_rows(path, schema)
    assert "missing c0; c1; c2; c3; c4" in str(info.value) and "more" not in str(info.value)


def test_a_link_to_a_table_is_read_as_the_table(tmp_path):
    """read_table follows a symbolic link to a regular file (found by mutation testing:
    refusing every link passed)."""
    import os

    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}])
    os.symlink(path, tmp_path / "link.csv")
    assert read_rows(str(tmp_path / "link.csv"), SCHEMA) == read_rows(path, SCHEMA)
    assert [r["name"] for r in read_rows(path, SCHEMA)[0]] == ["a"]


def test_every_missing_required_column_is_named(tmp_path):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}])
    with pytest.raises(ResultsFormatError, match="missing column\\(s\\) status, seed"):
        read_table(path, required=("name", "status", "seed"))


@pytest.mark.parametrize("header, message", [
    (("name", "n", "y", "checksum"), "missing x; unexpected 'y'"),  # both named
    (("name", "n", "checksum", "x"), "another order (column 3 is 'checksum', expected 'x')"),  # the first that differs
])
def test_a_header_other_than_the_schemas_says_how_it_differs(tmp_path, header, message):
    path = str(tmp_path / "toy.csv")
    atomic_csv(path, header, [])
    with pytest.raises(ResultsFormatError) as info:
        read_rows(path, SCHEMA)
    assert message in str(info.value)


def test_a_short_row_in_the_middle_leaves_out_that_row_only(tmp_path):
    """The rows after a damaged one are read (found by mutation testing: stopping at the first
    damaged row passed)."""
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": n, "n": i, "x": 0.5} for i, n in enumerate("abc")])
    lines = read_text(path).splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    rows, problems = read_rows(path, SCHEMA)
    assert [r["name"] for r in rows] == ["a", "c"]
    assert problems == ["toy.csv line 3 (3 fields, the header has 4)"]


def test_a_path_that_is_no_file_is_named_in_full(tmp_path):
    (tmp_path / "bench.csv").mkdir()
    with pytest.raises(ResultsFormatError) as info:
        read_table(str(tmp_path / "bench.csv"))
    assert str(info.value).startswith(f"{tmp_path / 'bench.csv'}: is a folder")


@pytest.mark.parametrize("header", ["a,b,checksum,b", "a,b,checksum,checksum"])
def test_ca_rev70_a_header_with_a_repeated_column_is_a_format_error(tmp_path, header):
    path = tmp_path / "t.csv"
    path.write_text(header + "\n")
    schema = Schema("t", ("a", "b", "checksum"), frozenset(), frozenset())
    with pytest.raises(ResultsFormatError, match="t.csv"):
        read_rows(str(path), schema)


def test_ca_rev71_read_table_refuses_a_header_with_a_repeated_column(tmp_path):
    """98c12c8 made a repeated column a format error in read_rows only; read_table, which every
    figure reads bench.csv with (plots._common), zips the header into a dict: the first
    fwd_ms is lost and the second drawn, with no problem reported."""
    path = tmp_path / "bench.csv"
    path.write_text("status,fwd_ms,fwd_ms\nok,1.0,99.0\n")
    try:
        table = read_table(str(path), ("status", "fwd_ms"))
    except ResultsFormatError:
        return
    assert table.problems, table.rows


# ---- ca_rev155 (review of c71ac64)

def test_a_row_with_malformed_quoting_is_named_and_the_rows_around_it_read(tmp_path):
    """Only the malformed record is left out (csv's strict mode would refuse the whole file); a quoted
    value over two lines is still one row, numbered by the line it starts on; a malformed header refuses."""
    path = tmp_path / "table.csv"
    path.write_text('a,b\n1,"x\ny"\n3,"4"x\n5,6\n')
    table = read_table(str(path))
    assert [(r["a"], r["b"], r["_line"]) for r in table.rows] == [("1", "x\ny", 2), ("5", "6", 5)]
    assert table.problems == ["line 4 (a quoted value not closed, or text after its closing quote: cut off or edited)"]
    path.write_text('a,"b"c\n1,2\n')
    with pytest.raises(ResultsFormatError, match="header's quoting is malformed"):
        read_table(str(path))


@pytest.mark.parametrize("content", ['a,b\n1,2\n3,"cut\n', 'a,b\n1,2\n3,"4"x\n'])
def test_ca_rev155_a_row_whose_quoting_is_not_closed_is_not_read_as_whole(tmp_path, content):
    """Without a checksum column, a quote left open at the end of the file (the write cut off after a line
    end inside a value) or text after a closing quote is read as a complete row, with no problem named."""
    path = tmp_path / "table.csv"
    path.write_text(content)
    try:
        table = read_table(str(path))
    except ResultsFormatError:
        return
    assert [r["a"] for r in table.rows] == ["1"] and table.problems, (table.rows, table.problems)


# ---- ca_rev205 (mutation review of 5a01ce8)


def test_ca_rev205_header_names_are_read_without_the_spaces_around_them(tmp_path):
    """Kills the strip of the header's names dropped: ``name, n`` had a column `` n``, and a required
    column was said to be missing."""
    path = tmp_path / "t.csv"
    path.write_text("name , n\na,1\n")
    assert read_table(str(path), required=("name", "n")).header == ("name", "n")


def test_ca_rev205_a_file_lacking_one_of_two_added_columns_lacks_added_columns(tmp_path):
    """Kills ``any`` turned into ``all`` and the header's strip dropped in lacks_added_columns: a header that
    lacks one added column of two is an older file, and one that holds them (spaced) is not."""
    from convex_attention.io.tables import lacks_added_columns

    schema = Schema("toy", ("name", "a", "b"), ints=frozenset(), floats=frozenset(), checksum=False,
                    added=("a", "b"))
    path = tmp_path / "t.csv"
    path.write_text("name,a\nx,1\n")
    assert lacks_added_columns(str(path), schema)
    path.write_text("name, a, b\nx,1,2\n")
    assert not lacks_added_columns(str(path), schema)


# ---- ca_rev269 (hostile review of io/tables.py and io/environment.py)


def test_ca_rev269_blank_lines_before_the_header_carry_nothing(tmp_path):
    """A blank first line (an editor's, a concatenation's) had been taken for the header: every row, the
    header's line included, was reported damaged and --resume measured them all again.  pandas reads such a
    file whole; so does the reader now, with the same line numbers."""
    from convex_attention.io.tables import lacks_added_columns

    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}, {"name": "b", "n": 2, "x": 1.5}])
    text = read_text(path)
    with open(path, "w", newline="") as f:
        f.write("\n\r\n" + text)
    rows, problems = read_rows(path, SCHEMA)
    assert problems == [] and [(r["name"], r["n"], r["x"]) for r in rows] == [("a", 1, 0.5), ("b", 2, 1.5)]
    assert [r["_line"] for r in read_table(path).rows] == [4, 5]
    older = Schema("toy", SCHEMA.columns, ints=SCHEMA.ints, floats=SCHEMA.floats, added=("x",))
    assert not lacks_added_columns(path, older)
    with open(path, "w", newline="") as f:  # the header's quoting still checked where it now starts
        f.write('\n"name,n\n')
    with pytest.raises(ResultsFormatError, match="header's quoting is malformed"):
        read_table(path)


@pytest.mark.parametrize("column, value", [("n", "1_000"), ("x", "1_0.5"), ("n", "\u0665"), ("x", "\u0661.5")])
def test_ca_rev269_a_number_no_writer_writes_and_pandas_refuses_is_left_out(tmp_path, column, value):
    """int() and float() read digit separators and other scripts' digits; pandas, with the tables' dtypes,
    refuses the whole file.  A row edited so (its checksum signed again) is left out and named."""
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 0.5}, {"name": "b", "n": 2, "x": 1.5, column: value}])
    rows, problems = read_rows(path, SCHEMA)
    assert [r["name"] for r in rows] == ["a"]
    assert len(problems) == 1 and f"column {column} holds {value!r}, not a number" in problems[0], problems
