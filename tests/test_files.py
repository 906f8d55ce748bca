"""convex_attention.io.files: atomic files, strict JSON, CSV fields that read back exactly,
the output folder check."""
import math
import os
import stat

import numpy as np
import pytest
import torch
from helpers import read_text, strict_load, tmp_files

from convex_attention.io import files
from convex_attention.io.tables import read_table


def test_atomic_csv_round_trips_floats_exactly_and_leaves_no_tmp(tmp_path):
    path = str(tmp_path / "t.csv")
    rows = [{"a": 1.9665132189317092e-07, "b": float("nan"), "c": "x,y"}, {"a": 0.1 + 0.2, "b": 3, "c": None}]
    files.atomic_csv(path, ["a", "b", "c"], rows)
    back = read_table(path).rows
    assert float(back[0]["a"]) == 1.9665132189317092e-07 and float(back[1]["a"]) == 0.1 + 0.2
    assert back[0]["b"] == "" and back[0]["c"] == "x,y" and back[1]["c"] == ""
    assert tmp_files(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "t.txt")
    files.atomic_write_text(path, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_text(path, "new")
    monkeypatch.undo()
    assert read_text(path) == "old"
    assert tmp_files(tmp_path) == []


def test_write_json_is_strict_json(tmp_path):
    path = str(tmp_path / "x.json")
    files.write_json(path, {"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "ok": 1.5,
                        "np": np.float32(2.5), "npnan": np.float64("nan"), "t": torch.tensor(3.0),
                        "arr": np.array([1.0, np.nan]), "tuple": (1, 2), "nested": [{"v": float("nan")}]})
    data = strict_load(path)  # no NaN / Infinity tokens
    assert data == {"nan": None, "inf": None, "ninf": None, "ok": 1.5, "np": 2.5, "npnan": None, "t": 3.0,
                    "arr": [1.0, None], "tuple": [1, 2], "nested": [{"v": None}]}


def test_check_out_dir_refuses_files_and_unwritable_paths(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        files.check_out_dir(str(f))
    with pytest.raises(ValueError, match="not a writable folder"):
        files.check_out_dir(str(f / "sub"))
    files.check_out_dir(str(tmp_path / "new" / "dir"))
    assert (tmp_path / "new" / "dir").is_dir() and tmp_files(tmp_path / "new" / "dir") == []


def test_stale_temporaries_are_removed_by_their_exact_name_only(tmp_path):
    """`$` also matched before a final newline and `\\d` any digit: files the user named so
    were removed (found by a hostile review)."""
    ours = "bench.csv.123-4.tmp"
    theirs = ["bench.csv.123-4.tmp\n", "bench.csv.١٢٣-4.tmp", "bench.csv.123-4.tmp.bak", "notes.csv.1-2.tmp"]
    for name in [ours, *theirs]:
        (tmp_path / name).write_text("x")
    assert files.clean_stale_tmp(str(tmp_path), ["bench.csv"]) == [ours]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


def test_check_output_files_refuses_what_is_not_a_regular_file_and_opens_nothing(tmp_path):
    """Found by a hostile review: a folder (or a named pipe) named like an output made the
    commands fail with a traceback at write time, or hang on the pipe."""
    (tmp_path / "regular.csv").write_text("x")
    (tmp_path / "link.csv").symlink_to(tmp_path / "regular.csv")  # a link to a regular file: replaceable
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere")  # a write replaces the link itself
    files.check_output_files(str(tmp_path), ("regular.csv", "link.csv", "dangling.csv", "free.csv"))
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "dirlink.csv").symlink_to(tmp_path / "folder.csv")
    os.mkfifo(tmp_path / "pipe.csv")
    for name, kind in (("folder.csv", "a folder"), ("dirlink.csv", "a folder"), ("pipe.csv", "a named pipe")):
        with pytest.raises(ValueError, match=f"{name} is {kind}, not the file {name} this command writes.*another "
                                             f"--out"):
            files.check_output_files(str(tmp_path), ("regular.csv", name))


def test_a_dangling_link_named_like_an_output_is_an_earlier_output(tmp_path):
    """A link counts, dangling or not: a write would replace it without a word (found by
    mutation testing: `exists` follows the link and misses a dangling one)."""
    (tmp_path / "bench.csv").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="already holds bench.csv from an earlier run.*--overwrite"):
        files.check_no_earlier_outputs(str(tmp_path), ("bench.csv", "bench.json"), overwrite=False)
    assert files.check_no_earlier_outputs(str(tmp_path), ("bench.csv", "bench.json"), overwrite=True) == ["bench.csv"]


def test_an_atomic_write_syncs_its_temporary_to_disk_before_renaming_it(tmp_path, monkeypatch):
    """Without the fsync a crash after the rename can leave the target empty or partial on
    disk (found by mutation testing: removing it failed no test)."""
    path = tmp_path / "t.txt"
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino, os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino, os.path.basename(src)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write_text(str(path), "new")
    monkeypatch.undo()
    assert [e[0] for e in events] == ["fsync", "replace"], events
    (_, synced, held), (_, renamed, tmp) = events
    assert synced == renamed == os.stat(path).st_ino and held == 3  # the temporary, whole, then renamed
    assert tmp.startswith("t.txt.") and tmp.endswith(".tmp") and path.read_text() == "new"


def test_a_users_link_named_like_a_stale_temporary_is_not_removed(tmp_path):
    """Only a regular file of that exact name is a temporary a killed writer left: a link
    (to the user's file, or to nothing), a folder or a named pipe is the user's (found by
    mutation testing: without the isfile and islink guards the links were removed)."""
    (tmp_path / "precious.csv").write_text("the user's data")
    (tmp_path / "bench.csv.123-4.tmp").symlink_to(tmp_path / "precious.csv")
    (tmp_path / "bench.csv.123-5.tmp").symlink_to(tmp_path / "nowhere")
    (tmp_path / "bench.csv.123-6.tmp").mkdir()
    os.mkfifo(tmp_path / "bench.csv.123-7.tmp")
    assert files.clean_stale_tmp(str(tmp_path), ["bench.csv"]) == []
    assert (tmp_path / "bench.csv.123-4.tmp").is_symlink() and (tmp_path / "bench.csv.123-5.tmp").is_symlink()
    assert (tmp_path / "bench.csv.123-6.tmp").is_dir() and (tmp_path / "bench.csv.123-7.tmp").is_fifo()
    assert (tmp_path / "precious.csv").read_text() == "the user's data"


def test_csv_fields_of_numpy_and_torch_scalars_are_their_numbers():
    """numpy 2's repr of a float64 is "np.float64(2.5)": csv_field wrote that into CSV files
    (found while writing the results tests; no committed file held one)."""
    import numpy as np
    import torch

    from convex_attention.io.files import csv_field

    assert [csv_field(v) for v in (np.float64(2.5), np.float32(0.5), torch.tensor(0.25), np.int64(3),
                                   np.float64("nan"), 1e-300, None, True)] == \
        ["2.5", "0.5", "0.25", "3", "", "1e-300", "", "True"]


@pytest.mark.parametrize("text, limit, expected", [
    ("a\n  b\tc", 10, "a b c"),           # every run of whitespace is one space
    ("x" * 10, 10, "x" * 10),             # exactly the limit: kept whole
    ("x" * 11, 10, "x" * 7 + "..."),      # one over: cut, and says so, within the limit
    ("  \n ", 5, ""),
])
def test_one_line_folds_whitespace_and_marks_a_cut(text, limit, expected):
    assert files.one_line(text, limit) == expected


def test_an_error_reason_names_the_type_on_one_line_within_the_limit():
    assert files.error_reason(ValueError("bad\nvalue")) == "ValueError: bad value"
    long = files.error_reason(RuntimeError("y" * 1000))
    assert len(long) == files.REASON_CHARS and long.startswith("RuntimeError: y") and long.endswith("...")


def test_temporary_names_are_unique_within_the_process_and_sit_next_to_the_target(tmp_path, monkeypatch):
    """One temporary per write, in the target's own folder (a rename across file systems is
    not atomic): found by mutation testing (a fixed counter, or a temporary in /tmp, passed)."""
    target = str(tmp_path / "t.txt")
    names = {files.temporary_name(target) for _ in range(3)}
    assert len(names) == 3
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        renamed.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert len(renamed) == 1 and os.path.dirname(renamed[0]) == str(tmp_path)


def test_an_interrupted_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, not an Exception) half-way through a write leaves no
    temporary behind (found by mutation testing: `except Exception` passed)."""
    path = str(tmp_path / "t.txt")
    files.atomic_write_text(path, "old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_text(path, "new")
    monkeypatch.undo()
    assert read_text(path) == "old" and tmp_files(tmp_path) == []


def test_text_is_written_as_utf8(tmp_path):
    path = tmp_path / "t.txt"
    text = "λ = 0.5 · σ² — ✓"
    files.atomic_write_text(str(path), text)
    assert path.read_bytes() == text.encode("utf-8")


def test_atomic_csv_is_atomic_and_writes_one_line_end_per_row(tmp_path, monkeypatch):
    """A failed CSV write keeps the old table; rows end with "\\n" (found by mutation testing:
    a plain open-and-write, or csv's default "\\r\\n", passed)."""
    path = tmp_path / "t.csv"
    files.atomic_csv(str(path), ["a", "b"], [{"a": 1, "b": "x"}, {"a": 2}])
    assert path.read_bytes() == b"a,b\n1,x\n2,\n"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_csv(str(path), ["a", "b"], [{"a": 3, "b": "y"}])
    monkeypatch.undo()
    assert path.read_bytes() == b"a,b\n1,x\n2,\n" and tmp_files(tmp_path) == []


@pytest.mark.parametrize("name", [
    "bench.csv.-.tmp",          # no pid, no counter
    "bench.csv.1-.tmp",         # no counter
    "bench.csvX1-2.tmp",        # the dots are dots
    "bench.csv.1-2Xtmp",
    "benchXcsv.1-2.tmp",        # the target's own dot too
])
def test_a_users_file_almost_named_like_a_temporary_is_not_removed(tmp_path, name):
    """Only exactly `<target>.<pid>-<n>.tmp` (found by mutation testing: `[0-9]*`, unescaped
    dots and an unescaped target name each passed)."""
    (tmp_path / name).write_text("the user's data")
    (tmp_path / "bench.csv.12-3.tmp").write_text("ours")
    assert files.clean_stale_tmp(str(tmp_path), ["bench.csv"]) == ["bench.csv.12-3.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_clean_stale_tmp_of_a_folder_that_is_not_there_or_is_a_file_removes_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    assert files.clean_stale_tmp(str(tmp_path / "absent"), ["bench.csv"]) == []
    assert files.clean_stale_tmp(str(tmp_path / "file"), ["bench.csv"]) == []
    assert (tmp_path / "file").read_text() == "x"


def test_a_row_checksum_is_the_crc32_of_the_fields_joined_by_the_unit_separator_in_8_hex_digits():
    """docs/results_format.md: "the CRC-32 (8 hex digits) of the row's other fields as written,
    joined by the unit separator (\\x1f)" (found by mutation testing: a comma, or no zero padding,
    passed)."""
    import zlib

    rows = [["a", "1", "0.5"], ["a,b", ""]]
    # a row whose CRC has a leading zero digit, so that the padding shows
    rows.append(next([str(i)] for i in range(1000) if zlib.crc32(str(i).encode()) < 0x10000000))
    for values in rows:
        expected = zlib.crc32("\x1f".join(values).encode("utf-8"))
        got = files.row_checksum(values)
        assert len(got) == 8 and int(got, 16) == expected, (values, got)


def test_json_safe_makes_keys_strings_dataclasses_dicts_and_unknowns_their_str(tmp_path):
    """What json_safe documents, written as strict JSON without an error (found by mutation
    testing: keys kept as tuples, dataclasses or unknown objects passed through, passed)."""
    import dataclasses
    import fractions

    @dataclasses.dataclass
    class Point:
        x: float
        y: tuple

    path = str(tmp_path / "x.json")
    obj = {(1, 2): "pair", 3: Point(float("nan"), (1, 2)), "frac": fractions.Fraction(1, 3)}
    files.write_json(path, obj)
    assert strict_load(path) == {"(1, 2)": "pair", "3": {"x": None, "y": [1, 2]}, "frac": "1/3"}
    assert files.as_json(obj) == strict_load(path)


def test_json_safe_writes_a_set_as_a_sorted_list_whatever_the_hash_order():
    names = {f"name{i:02d}" for i in range(20)}  # iteration order of str sets follows the hash seed
    assert files.json_safe(names) == sorted(names)
    assert files.json_safe(frozenset({3, 1, 2})) == [1, 2, 3]
    # members that do not compare are ordered by their JSON text ('"a"' before '1')
    assert files.json_safe({1, "a", (2, 0)}) == ["a", 1, [2, 0]]
    # equal once converted (True == 1) but written differently: their JSON text decides
    assert files.json_safe({("s", True), frozenset({"s", 1})}) == [["s", 1], ["s", True]]


def test_write_json_honours_its_indent(tmp_path):
    path = tmp_path / "x.json"
    obj = {"a": [1, 2], "b": {"c": None}}
    files.write_json(str(path), obj, indent=None)
    assert path.read_text().count("\n") == 1 and strict_load(path) == obj
    files.write_json(str(path), obj, indent=2)
    assert path.read_text().count("\n") > 1 and strict_load(path) == obj


@pytest.mark.parametrize("mode, kind", [
    (stat.S_IFDIR, "a folder"), (stat.S_IFIFO, "a named pipe"), (stat.S_IFSOCK, "a socket"),
    (stat.S_IFCHR, "a device"), (stat.S_IFBLK, "a device"), (stat.S_IFLNK, "not a regular file"),
])
def test_file_kind_names_every_kind_of_file(mode, kind):
    assert files.file_kind(mode | 0o644) == kind


def test_check_output_files_leaves_an_out_that_is_a_file_to_check_out_dir(tmp_path):
    """An --out that is a file is check_out_dir's one-line error, not a stat error here."""
    (tmp_path / "out").write_text("x")
    files.check_output_files(str(tmp_path / "out"), ("bench.csv",))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        files.check_out_dir(str(tmp_path / "out"))


def test_an_output_name_that_cannot_be_examined_is_a_one_line_value_error(tmp_path):
    """A stat that fails for another reason than a free name (here a name too long) is a
    ValueError naming the path and why, not a traceback."""
    name = "x" * 300
    with pytest.raises(ValueError, match=r"cannot be examined \(File name too long\); choose another --out") as info:
        files.check_output_files(str(tmp_path), (name,))
    assert "\n" not in str(info.value)


def test_check_out_dir_refuses_a_folder_it_cannot_write_into(tmp_path, monkeypatch):
    """The probe write is the check (as root, permissions do not refuse it: the refusal is
    simulated; found by mutation testing: skipping the probe passed)."""
    real_open = os.open

    def refuse_probe(path, *args, **kwargs):
        if ".write-probe" in str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_probe)
    with pytest.raises(ValueError, match=r"not a writable folder \(Permission denied\)"):
        files.check_out_dir(str(tmp_path))


def test_clean_stale_tmp_with_no_targets_removes_nothing(tmp_path):
    """No target, so no name is of the form `<target>.<pid>-<n>.tmp`: nothing is touched (found
    by mutation testing: the pattern `(?:)\\.[0-9]+-[0-9]+\\.tmp` removed the user's '.1-2.tmp')."""
    (tmp_path / ".1-2.tmp").write_text("the user's data")
    assert files.clean_stale_tmp(str(tmp_path), []) == []
    assert files.clean_stale_tmp(str(tmp_path), [""]) == []  # an empty name is no target either
    assert (tmp_path / ".1-2.tmp").read_text() == "the user's data"


def test_check_output_files_checks_every_name_after_a_free_one(tmp_path):
    """A free name does not end the check: a folder named like a later output is still refused
    (found by mutation testing: `return` for `continue` passed)."""
    (tmp_path / "bench.json").mkdir()
    with pytest.raises(ValueError, match="bench.json is a folder"):
        files.check_output_files(str(tmp_path), ("bench.csv", "bench.json"))


def test_clean_stale_tmp_skips_a_temporary_it_cannot_remove(tmp_path, monkeypatch):
    """A temporary removed meanwhile (or not removable) is neither an error nor reported as
    removed; the others still are (found by mutation testing: without the suppress, the
    OSError escaped)."""
    for name in ("bench.csv.1-1.tmp", "bench.csv.1-2.tmp"):
        (tmp_path / name).write_text("x")
    real_remove = os.remove

    def gone(path):
        if path.endswith("1-1.tmp"):
            raise FileNotFoundError(2, "No such file or directory")
        real_remove(path)

    monkeypatch.setattr(files.os, "remove", gone)
    assert files.clean_stale_tmp(str(tmp_path), ["bench.csv"]) == ["bench.csv.1-2.tmp"]


def test_write_json_keys_that_strict_json_cannot_spell_become_their_str(tmp_path):
    """A NaN or None key is written as its ``str`` (keys as strings), never an error or a
    non-strict token (found by mutation testing: keys left to json.dumps raised for NaN)."""
    path = str(tmp_path / "x.json")
    files.write_json(path, {float("nan"): 1, None: 2, 1.5: 3})
    assert strict_load(path) == {"nan": 1, "None": 2, "1.5": 3}


def test_a_dataclass_class_is_an_unknown_object_written_as_its_str():
    """A dataclass *instance* becomes a dict; the class itself is no record, but an unknown
    object: its ``str``, not an error (found by mutation testing: asdict of the class raised)."""
    import dataclasses

    @dataclasses.dataclass
    class Point:
        x: float

    assert files.json_safe({"kind": Point, "value": Point(1.0)}) == {"kind": str(Point), "value": {"x": 1.0}}


def test_a_link_or_file_at_the_next_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    """Before: the temporary name is predictable (pid and a counter) and was opened without
    O_EXCL, so a link put there (by a verified solver, say) received the write, and the
    rename then made the target that link (an adversarial review)."""
    import itertools

    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    target = tmp_path / "verify.csv"
    monkeypatch.setattr(files, "_TMP_COUNTER", itertools.count(0))
    planted = [f"{target}.{os.getpid()}-0.tmp", f"{target}.{os.getpid()}-1.tmp"]
    os.symlink(victim, planted[0])
    with open(planted[1], "w") as f:
        f.write("someone else's temporary file")
    files.atomic_write_bytes(str(target), b"the results")
    assert victim.read_text() == "the user's"
    assert not os.path.islink(target) and target.read_bytes() == b"the results"
    assert os.path.islink(planted[0]) and read_text(planted[1]) == "someone else's temporary file"  # left alone
    assert sorted(os.listdir(tmp_path)) == sorted(["victim.txt", "verify.csv", *map(os.path.basename, planted)])



def test_a_temporary_file_is_removed_only_while_it_is_still_the_writes_own(tmp_path):
    """Renamed, its name may be another writer's by now (the same pid in another namespace
    sharing the folder): that file is left alone (a review)."""
    target = tmp_path / "t.txt"
    with files.temporary_file(str(target)) as (tmp, f):
        f.write(b"mine")
        f.flush()
        os.replace(tmp, target)
        with open(tmp, "w") as other:  # another writer takes the free name
            other.write("theirs")
    assert read_text(tmp) == "theirs" and target.read_bytes() == b"mine"


def test_a_failed_removal_never_hides_the_error_of_the_write(tmp_path, monkeypatch):
    """A disk error may leave the folder read-only: the removal's error replaced the write's
    (a review); the write's is the one raised."""
    real_remove = os.remove

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_remove(path, *args, **kwargs)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "remove", read_only)
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        files.atomic_write_bytes(str(tmp_path / "t.bin"), b"x")


def test_ca_rev70_a_lone_carriage_return_in_a_field_reads_back(tmp_path):
    path = str(tmp_path / "t.csv")
    values = ["a\rb", "a\r\nb", "a\nb", "x,y", 'q"q', "é中"]
    files.atomic_csv(path, ["s", "f", "checksum"], [{"s": v, "f": 0.1} for v in values], checksum=True)
    table = read_table(path)
    assert table.problems == []
    assert [r["s"] for r in table.rows] == values


def test_json_safe_refuses_two_keys_that_become_one_rather_than_drop_a_value():
    """{1: a, "1": b} became {"1": b}: a value lost without a word."""
    with pytest.raises(ValueError, match="both '1' in JSON"):
        files.json_safe({1: "a", "1": "b"})
    with pytest.raises(ValueError, match="both 'True' in JSON"):
        files.json_safe({"outer": {True: 1, "True": 2}})
    assert files.json_safe({1: "a", 2: "b"}) == {"1": "a", "2": "b"}


# ---- ca_rev151 (strict xfail: review of 821b769)
def test_ca_rev151_a_cut_reason_never_ends_in_half_an_escape():
    import re

    from convex_attention.io.files import one_line

    for limit in range(10, 20):
        out = one_line("a" * 8 + "\x1b" + "\u202e" + "z" * 20, limit)
        assert len(out) <= limit and out.endswith("..."), out
        assert not re.search(r"\\(x[0-9a-f]?|u[0-9a-f]{0,3})?\.\.\.$", out), (limit, out)


def test_ca_rev151_a_reason_keeps_the_joiners_of_ordinary_text():
    from convex_attention.io.files import error_reason

    name = "گزارش\u200cها.csv"  # Persian 'reports': the ZWNJ is part of the spelling
    # (an OSError's own str() quotes its file name with repr, which escapes the joiner itself: a message is used)
    reason = error_reason(RuntimeError(f"cannot read {name}"))
    assert name in reason, reason  # at 821b769: 'گزارش\\u200cها.csv'
    assert "\\u202e" in error_reason(RuntimeError("a\u202eb"))  # a bidirectional override is still escaped


# ---- ca_rev153 (strict xfail: review of edb29d2)
def test_ca_rev153_one_line_never_returns_more_than_its_limit():
    from convex_attention.io.files import one_line

    for limit in (0, 1, 2):
        out = one_line("abcdef", limit)
        assert len(out) <= limit, (limit, out)  # '...' at each of them today


# ---- ca_rev188 (review of 1ca0b7f; its strict xfails now pass)
def test_ca_rev188_a_numpy_longdouble_is_written_not_recursed_on(tmp_path):
    """A numpy scalar that Python's float cannot hold stays itself through .item() and .tolist(): both writers
    call themselves on it again, until RecursionError (and write nothing)."""
    value = np.longdouble(1.5)
    assert files.csv_field(value) == "1.5"
    files.write_json(str(tmp_path / "x.json"), {"x": value})
    assert strict_load(str(tmp_path / "x.json")) == {"x": 1.5}


# ---- ca_rev205 (mutation review of 5a01ce8)


def test_ca_rev205_a_written_file_has_the_mode_the_umask_gives_a_new_file(tmp_path):
    """Kills the temporary created with mode 0o600 instead of 0o666: every result file became readable by
    its owner alone, whatever the umask (a collaborator could no longer read a shared results folder)."""
    old = os.umask(0o022)
    try:
        files.atomic_write_text(str(tmp_path / "t.txt"), "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "t.txt").st_mode) == 0o644


def test_ca_rev205_an_empty_target_pattern_removes_no_file(tmp_path):
    """Kills ``if p`` dropped from clean_stale_tmp's patterns: an empty pattern let ``.<pid>-<n>.tmp``, any
    file of that bare form, match and be removed (the targets' own empty names are filtered)."""
    (tmp_path / ".1-2.tmp").write_text("the user's")
    assert files.clean_stale_tmp(str(tmp_path), (), ("",)) == []
    assert (tmp_path / ".1-2.tmp").read_text() == "the user's"


class _One:
    """An unknown scalar whose number is 1 (equal to True, not its JSON text) and whose hash sets its place."""

    def __init__(self, h):
        self.h = h

    def __hash__(self):
        return self.h

    def item(self):
        return 1


def test_ca_rev205_a_set_of_members_equal_once_converted_gives_one_order_whatever_the_hash():
    """Kills the JSON text dropped from the set's sort key: members equal once converted (True and 1) kept
    the set's hash order, so one set gave two texts across processes."""
    assert files.json_safe({True, _One(0)}) == files.json_safe({True, _One(2)}) == [1, True]
    assert [type(v) for v in files.json_safe({True, _One(2)})] == [int, bool]


def test_ca_rev205_an_infinite_float_is_written_as_inf_not_as_empty():
    """Kills csv_field writing every non-finite float empty: only NaN (and None) is empty; an infinity
    reads back as itself."""
    assert files.csv_field(float("inf")) == "inf" and files.csv_field(-math.inf) == "-inf"
    assert float(files.csv_field(np.float64("inf"))) == math.inf


@pytest.mark.parametrize("char", ["\U000e0080", "\ue000", "\ud800"], ids=["unassigned", "private", "surrogate"])
def test_ca_rev205_one_line_escapes_unassigned_private_and_surrogate_code_points(char):
    """Kills each of "Cn", "Co" and "Cs" dropped from _shown's categories: such a code point is shown as its
    escape (a lone surrogate cannot even be written as UTF-8)."""
    out = files.one_line(f"a{char}b", 50)
    assert out == "a" + ascii(char)[1:-1] + "b" and out.isascii()


def test_ca_rev205_text_that_is_not_utf8_is_refused_and_the_old_file_kept(tmp_path):
    """Kills atomic_write_text encoding with "surrogatepass": a lone surrogate was written as bytes that are
    not UTF-8, a table the reader then refuses whole; the write must fail and leave the old file."""
    path = tmp_path / "t.csv"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        files.atomic_write_text(str(path), "a\ud800\n")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["t.csv"]


def test_ca_rev205_check_fresh_out_dir_refuses_an_earlier_runs_outputs(tmp_path):
    """Kills check_no_earlier_outputs dropped from check_fresh_out_dir: a script's earlier outputs were then
    replaced without --overwrite."""
    (tmp_path / "a.csv").write_text("mine")
    with pytest.raises(ValueError, match="already holds a.csv"):
        files.check_fresh_out_dir(str(tmp_path), ("a.csv",), overwrite=False)
    files.check_fresh_out_dir(str(tmp_path), ("a.csv",), overwrite=True)
    assert (tmp_path / "a.csv").read_text() == "mine"


def test_check_out_dir_removes_the_folders_it_made_when_the_out_folder_cannot_be_made(tmp_path):
    """ca_rev256: a name too long for the system left the parent folders made on the way; a folder
    that was there before, and one holding a file, stay."""
    from convex_attention.io.files import check_out_dir

    (tmp_path / "mine").mkdir()
    too_long = tmp_path / "mine" / "a" / "b" / ("c" * 5000)
    with pytest.raises(ValueError, match="is not a writable folder"):
        check_out_dir(str(too_long))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and not any((tmp_path / "mine").iterdir())


# ---- ca_rev259 (hostile review of the late diff)

def test_ca_rev259_check_out_dir_removes_the_folders_it_made_through_a_parent_step(tmp_path):
    """--out new/../CCC...: makedirs makes new/ on the way, but missing_folders normalised the '..' away and
    never listed it, so a refused --out left new/ behind (and the CLI's folders_to_make with it)."""
    from convex_attention.io.files import check_out_dir, missing_folders

    out = str(tmp_path / "new" / ".." / ("c" * 5000))
    with pytest.raises(ValueError, match="is not a writable folder"):
        check_out_dir(out)
    assert list(tmp_path.iterdir()) == []
    assert missing_folders(str(tmp_path / "x" / "y") + os.sep) == [str(tmp_path / "x" / "y"), str(tmp_path / "x")]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_read_json_refuses_what_no_writer_of_the_package_writes(tmp_path, token):
    """Every file the package writes is strict JSON; one reader had been written per module (two
    `_strict_constant`s) and four read NaN as a number (bench.json's environment, the figures'
    manifest, bench_core's record, the sweep's progress count)."""
    path = tmp_path / "r.json"
    files.write_json(str(path), {"x": [1.5, None, float("nan")]})
    assert files.read_json(str(path)) == {"x": [1.5, None, None]}
    path.write_text('{"x": [1.5, ' + token + ']}')
    with pytest.raises(ValueError, match=f"{token} is not a number in strict JSON"):
        files.read_json(str(path))


# ---- ca_rev273 (hostile review: children, locks and repeated signals)
def test_ca_rev273_an_interruption_as_the_temporary_file_is_made_leaves_no_temporary(tmp_path, monkeypatch):
    """Ctrl-C raised as os.open returns (Python runs a signal's handler there), before the descriptor was
    kept, left the empty temporary file (a random Ctrl-C to bench left example.npz.<pid>-<n>.tmp); a file
    already of a temporary's name (not this run's) is still left alone."""
    real_open, opened = os.open, []

    def open_then_interrupted(name, flags, mode=0o777, **kwargs):
        fd = real_open(name, flags, mode, **kwargs)
        if str(name).endswith(".tmp"):
            opened.append(fd)
            raise KeyboardInterrupt
        return fd

    target = tmp_path / "out.json"
    taken = files.temporary_name(str(target))  # the next name: someone's file, to be skipped and kept
    prefix, number = taken[:-len(".tmp")].rsplit("-", 1)
    put_there = f"{prefix}-{int(number) + 1}.tmp"
    with open(put_there, "w") as f:
        f.write("")
    monkeypatch.setattr(os, "open", open_then_interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            files.atomic_write_text(str(target), "{}")
    finally:
        monkeypatch.setattr(os, "open", real_open)
        for fd in opened:
            os.close(fd)
    assert len(opened) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.path.basename(put_there)]


# ---- ca_rev275 (hostile review of the session's diff)
@pytest.mark.parametrize("put", ["link", "written"])
def test_ca_rev275_an_interrupted_temporary_is_removed_only_while_it_is_an_empty_plain_file(tmp_path, monkeypatch,
                                                                                          put):
    """The temporary a Ctrl-C interrupted before it was looked at (fstat) is removed only while it is an empty
    plain file: something else at its name by then (a link, a file with content) is not this run's. The guard
    had no test (dropped, the suite stayed green)."""
    real_open, opened = os.open, []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("theirs")

    def open_then_replaced_then_interrupted(name, flags, mode=0o777, **kwargs):
        fd = real_open(name, flags, mode, **kwargs)
        if str(name).endswith(".tmp"):
            opened.append((fd, str(name)))
            os.remove(name)
            if put == "link":
                os.symlink(elsewhere, name)
            else:
                with open(name, "w") as f:
                    f.write("theirs")
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_replaced_then_interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            files.atomic_write_text(str(tmp_path / "out.json"), "{}")
    finally:
        monkeypatch.setattr(os, "open", real_open)
        for fd, _ in opened:
            os.close(fd)
    assert len(opened) == 1 and os.path.lexists(opened[0][1])
    assert elsewhere.read_text() == "theirs"
