"""The one results writer: atomic files, strict JSON, checked reading, the folder lock and
idempotent commits (docs/results_format.md)."""
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from convex_attention.bench import results as R


def strict_load(path):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def tmp_files(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_atomic_csv_round_trips_floats_exactly_and_leaves_no_tmp(tmp_path):
    path = str(tmp_path / "t.csv")
    rows = [{"a": 1.9665132189317092e-07, "b": float("nan"), "c": "x,y"}, {"a": 0.1 + 0.2, "b": 3, "c": None}]
    R.atomic_csv(path, ["a", "b", "c"], rows)
    back = R.read_csv(path)
    assert float(back[0]["a"]) == 1.9665132189317092e-07 and float(back[1]["a"]) == 0.1 + 0.2
    assert back[0]["b"] == "" and back[0]["c"] == "x,y" and back[1]["c"] == ""
    assert tmp_files(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "t.txt")
    R.atomic_write_text(path, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        R.atomic_write_text(path, "new")
    monkeypatch.undo()
    assert open(path).read() == "old"
    assert tmp_files(tmp_path) == []


def test_write_json_is_strict_json(tmp_path):
    path = str(tmp_path / "x.json")
    R.write_json(path, {"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "ok": 1.5,
                        "np": np.float32(2.5), "npnan": np.float64("nan"), "t": torch.tensor(3.0),
                        "arr": np.array([1.0, np.nan]), "tuple": (1, 2), "nested": [{"v": float("nan")}]})
    data = strict_load(path)  # no NaN / Infinity tokens
    assert data == {"nan": None, "inf": None, "ninf": None, "ok": 1.5, "np": 2.5, "npnan": None, "t": 3.0,
                    "arr": [1.0, None], "tuple": [1, 2], "nested": [{"v": None}]}


SCHEMA = R.Schema("toy", ("name", "n", "x", "checksum"), ints=frozenset({"n"}), floats=frozenset({"x"}))


def write_toy(path, rows):
    R.atomic_csv(path, SCHEMA.columns, rows, checksum=True)


def test_read_rows_types_values_and_checks_the_checksum(tmp_path):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 1.9665132189317092e-07}, {"name": "b", "n": 2, "x": float("nan")}])
    rows, problems = R.read_rows(path, SCHEMA)
    assert problems == []
    assert rows[0]["n"] == 1 and rows[0]["x"] == 1.9665132189317092e-07 and math.isnan(rows[1]["x"])


@pytest.mark.parametrize("damage, reason", [
    (lambda t: t.replace("1.9665132189317092e-07", "1.9665132"), "checksum mismatch"),  # a value cut off
    (lambda t: t.rsplit(",", 2)[0] + "\n", "missing field"),  # the last line cut short
    (lambda t: t.replace(",2,", ",two,"), "checksum mismatch"),  # edited
    (lambda t: t + "c,3,1.0,deadbeef,extra\n", "more fields"),
])
def test_read_rows_reports_and_leaves_out_damaged_rows(tmp_path, damage, reason):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": 1, "x": 1.9665132189317092e-07}, {"name": "b", "n": 2, "x": 0.5}])
    text = open(path).read()
    with open(path, "w") as f:
        f.write(damage(text))
    rows, problems = R.read_rows(path, SCHEMA)
    assert len(problems) == 1 and reason in problems[0], problems
    assert all(r["x"] in (1.9665132189317092e-07, 0.5) for r in rows)  # never a misread value


def test_number_garbage_is_caught_even_with_a_matching_checksum(tmp_path):
    path = str(tmp_path / "toy.csv")
    write_toy(path, [{"name": "a", "n": "two", "x": 1.0}])
    rows, problems = R.read_rows(path, SCHEMA)
    assert rows == [] and "not a number" in problems[0]


def test_read_rows_refuses_a_foreign_header(tmp_path):
    path = str(tmp_path / "toy.csv")
    R.atomic_csv(path, ["name", "n"], [{"name": "a", "n": 1}])
    with pytest.raises(R.ResultsFormatError, match="columns"):
        R.read_rows(path, SCHEMA)


# ----------------------------------------------------------------------------- ResultsWriter

def bench_row(method="exact", status="ok", size=4, value=0.5, **extra):
    return {"cell": 0, "status": status, "reason": "", "method": method, "backend": "", "dual_kind": "",
            "generator": "lesion", "scale": 1.0, "dims": 2, "size": size, "levels": 2, "batch": 2,
            "temperature": 1.0, "dtype": "float32", "device": "cpu", "seed": 0, "shapes": "4x4+2x2", "n_cells": 20,
            "violation_mean": value, **extra}


def conv_rows(n, cell=0):
    return [{"cell": cell, "dims": 2, "size": 4, "levels": 2, "temperature": 1.0, "iteration": i,
             "violation_mean": 0.1 / (i + 1), "violation_max": 0.2, "dual_gap_mean": 0.0, "dual_gap_max": 0.0}
            for i in range(n)]


def writer(folder, resume=False, log=None):
    return R.ResultsWriter(str(folder), {"sizes": [4]}, "cpu", resume, log=log or (lambda m: None))


def test_a_retried_row_replaces_the_old_one_and_resume_keeps_one_copy(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(status="error", value=float("nan")))
    assert len(R.read_csv(str(tmp_path / "bench.csv"))) == 1
    w2 = writer(tmp_path, resume=True)
    assert R.row_key(bench_row()) not in w2.done(), "an error row is retried"
    w2.commit(bench_row(value=0.25))
    rows = R.read_csv(str(tmp_path / "bench.csv"))
    assert len(rows) == 1 and rows[0]["status"] == "ok" and float(rows[0]["violation_mean"]) == 0.25
    data = strict_load(str(tmp_path / "bench.json"))
    assert len(data["rows"]) == 1 and data["rows"][0]["violation_mean"] == 0.25


def test_bench_json_is_strict_and_typed(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(value=float("nan")))
    data = strict_load(str(tmp_path / "bench.json"))
    row = data["rows"][0]
    assert row["violation_mean"] is None and row["size"] == 4 and row["temperature"] == 1.0
    assert data["columns"] == list(R.COLUMNS)


def test_bench_json_reads_with_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    w = writer(tmp_path)
    w.commit(bench_row(value=float("nan")))
    w.commit(bench_row(method="softmax", value=0.3))
    meta = pd.read_json(str(tmp_path / "bench.json"), typ="series")
    frame = pd.DataFrame(meta["rows"])
    assert len(frame) == 2 and frame["violation_mean"].isna().sum() == 1


def test_convergence_rows_replay_without_duplicates(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(3))
    w.commit(bench_row(method="dual"), convergence=conv_rows(4))  # the same cell replayed
    conv = R.read_csv(str(tmp_path / "convergence.csv"))
    assert len(conv) == 4 and {r["row_id"] for r in conv} == {R.row_id(bench_row(method="dual"))}


def test_a_kill_between_the_two_renames_leaves_no_orphan_convergence_rows(tmp_path, monkeypatch):
    w = writer(tmp_path)
    w.commit(bench_row(method="exact"))
    real = R.atomic_write_text

    def killed_at_bench_csv(path, text):
        if path.endswith("bench.csv"):
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(R, "atomic_write_text", killed_at_bench_csv)
    with pytest.raises(KeyboardInterrupt):
        w.commit(bench_row(method="dual"), convergence=conv_rows(3))
    monkeypatch.undo()
    assert len(R.read_csv(str(tmp_path / "convergence.csv"))) == 3  # written first ...
    assert len(R.read_csv(str(tmp_path / "bench.csv"))) == 1  # ... its row never committed
    logged = []
    w2 = writer(tmp_path, resume=True, log=logged.append)
    assert w2.convergence == [] and any("never committed" in m for m in logged)
    w2.commit(bench_row(method="dual"), convergence=conv_rows(3))
    assert len(R.read_csv(str(tmp_path / "convergence.csv"))) == 3
    assert len(R.read_csv(str(tmp_path / "bench.csv"))) == 2
    assert tmp_files(tmp_path) == []


def test_resume_reports_and_drops_a_truncated_row(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(method="exact", value=1.9665132189317092e-07))
    w.commit(bench_row(method="softmax", value=0.3))
    path = tmp_path / "bench.csv"
    path.write_text(path.read_text().replace("1.9665132189317092e-07", "1.9665132"))
    logged = []
    w2 = writer(tmp_path, resume=True, log=logged.append)
    assert [r["method"] for r in w2.rows] == ["softmax"]
    assert any("checksum mismatch" in m and "recomputed" in m for m in logged)


def test_resume_drops_duplicate_rows_of_an_older_run(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(value=0.5))
    text = (tmp_path / "bench.csv").read_text()
    header, line = text.splitlines()[:2]
    (tmp_path / "bench.csv").write_text("\n".join([header, line, line]) + "\n")
    logged = []
    w2 = writer(tmp_path, resume=True, log=logged.append)
    assert len(w2.rows) == 1 and any("duplicate" in m for m in logged)


def test_stale_temporaries_are_removed_at_start(tmp_path):
    for name in ("bench.csv.tmp", "bench.json.123-4.tmp", "convergence.csv.tmp"):
        (tmp_path / name).write_text("half")
    (tmp_path / "notes.txt").write_text("kept")
    logged = []
    writer(tmp_path, log=logged.append)
    assert tmp_files(tmp_path) == [] and (tmp_path / "notes.txt").exists()
    assert any("temporary" in m for m in logged)


def test_a_fresh_run_starts_empty_files(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(2))
    writer(tmp_path)  # a new run without resume
    assert R.read_csv(str(tmp_path / "bench.csv")) == [] and R.read_csv(str(tmp_path / "convergence.csv")) == []


# ----------------------------------------------------------------------------- the lock

# Another writer, as the lock protocol sees it: flock on OUT/results.lock, owner recorded in
# the file (plain Python, so that the test does not pay for a second torch import).
HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    fd = os.open(os.path.join(sys.argv[1], "results.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": "holder"}).encode())
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    os.remove(os.path.join(sys.argv[1], "results.lock"))
""")


def hold_lock(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_owner_named(tmp_path):
    proc = hold_lock(tmp_path, 60)
    try:
        with pytest.raises(R.ResultsLocked, match=rf"pid {proc.pid} on host {socket.gethostname()}.*--wait"):
            with R.results_lock(str(tmp_path)):
                pass
    finally:
        proc.kill()
        proc.wait()
    with R.results_lock(str(tmp_path)):  # the dead holder's lock is free
        pass
    assert not (tmp_path / R.LOCK_NAME).exists()


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_wait_blocks_until_the_owner_finishes(tmp_path):
    proc = hold_lock(tmp_path, 1.5)
    start = time.monotonic()
    logged = []
    with R.results_lock(str(tmp_path), wait=True, log=logged.append, poll_s=0.1):
        assert time.monotonic() - start > 1.0, "entered while the owner held the lock"
    proc.wait()
    assert any("waiting" in m and str(proc.pid) in m for m in logged)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / R.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                    "started": 0, "command": "bench"}))
    logged = []
    with R.results_lock(str(tmp_path), log=logged.append):
        owner = json.loads((tmp_path / R.LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
    assert any("took over" in m and str(dead.pid) in m and "no longer runs" in m for m in logged)


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with R.results_lock(str(tmp_path)):
        with R.results_lock(str(tmp_path)):
            pass
        assert (tmp_path / R.LOCK_NAME).exists()
    assert not (tmp_path / R.LOCK_NAME).exists()


def test_check_out_dir_refuses_files_and_unwritable_paths(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        R.check_out_dir(str(f))
    with pytest.raises(ValueError, match="not a writable folder"):
        R.check_out_dir(str(f / "sub"))
    R.check_out_dir(str(tmp_path / "new" / "dir"))
    assert (tmp_path / "new" / "dir").is_dir() and tmp_files(tmp_path / "new" / "dir") == []
