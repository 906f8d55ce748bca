"""convex_attention.bench.results: the sweep's tables and their one writer (idempotent
commits, resume, strict JSON; docs/results_format.md)."""
import contextlib
import json
import math
import os
import re
from pathlib import Path

import pytest
from helpers import strict_load, tmp_files

from convex_attention.bench import results as R
from convex_attention.bench.config import SweepConfig
from convex_attention.bench.results import COLUMNS, CONVERGENCE_COLUMNS
from convex_attention.bench.verify import COLUMNS as VERIFY_COLUMNS
from convex_attention.io.tables import read_table


def bench_row(method="exact", status="ok", size=4, value=0.5, **extra):
    return {"cell": 0, "status": status, "reason": "", "method": method, "backend": "", "dual_kind": "",
            "structure": "chain", "generator": "lesion", "scale": 1.0, "dims": 2, "size": size, "levels": 2, "batch": 2,
            "temperature": 1.0, "dtype": "float32", "device": "cpu", "seed": 0, "shapes": "4x4+2x2", "n_cells": 20,
            "violation_mean": value, **extra}


def conv_rows(n, cell=0):
    return [{"cell": cell, "structure": "chain", "dims": 2, "size": 4, "levels": 2, "temperature": 1.0, "iteration": i,
             "violation_mean": 0.1 / (i + 1), "violation_max": 0.2, "dual_gap_mean": 0.0, "dual_gap_max": 0.0}
            for i in range(n)]


def writer(folder, resume=False, log=None, overwrite=False):
    return R.ResultsWriter(str(folder), {"sizes": [4]}, "cpu", resume, log=log or (lambda m: None),
                           overwrite=overwrite)


def test_a_retried_row_replaces_the_old_one_and_resume_keeps_one_copy(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(status="error", value=float("nan")))
    assert len(read_table(str(tmp_path / "bench.csv")).rows) == 1
    w2 = writer(tmp_path, resume=True)
    assert R.row_key(bench_row()) not in w2.done(), "an error row is retried"
    w2.commit(bench_row(value=0.25))
    rows = read_table(str(tmp_path / "bench.csv")).rows
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
    conv = read_table(str(tmp_path / "convergence.csv")).rows
    assert len(conv) == 4 and {r["row_id"] for r in conv} == {R.row_id(bench_row(method="dual"))}


def _killed_when_writing(monkeypatch, name: str) -> None:
    """The writer's process killed (KeyboardInterrupt) as it writes the file ``name``."""
    real = R.atomic_write_text

    def killed(path, text):
        if path.endswith(name):
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(R, "atomic_write_text", killed)


def test_a_kill_between_the_two_renames_leaves_no_orphan_convergence_rows(tmp_path, monkeypatch):
    w = writer(tmp_path)
    w.commit(bench_row(method="exact"))
    _killed_when_writing(monkeypatch, "bench.csv")
    with pytest.raises(KeyboardInterrupt):
        w.commit(bench_row(method="dual"), convergence=conv_rows(3))
    monkeypatch.undo()
    assert len(read_table(str(tmp_path / "convergence.csv")).rows) == 3  # written first ...
    assert len(read_table(str(tmp_path / "bench.csv")).rows) == 1  # ... its row never committed
    logged = []
    w2 = writer(tmp_path, resume=True, log=logged.append)
    assert w2.convergence == [] and any("never committed" in m for m in logged)
    w2.commit(bench_row(method="dual"), convergence=conv_rows(3))
    assert len(read_table(str(tmp_path / "convergence.csv")).rows) == 3
    assert len(read_table(str(tmp_path / "bench.csv")).rows) == 2
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


def test_resume_drops_every_copy_of_a_duplicated_row_and_both_files_agree_at_once(tmp_path):
    """Before: the later copy was kept while the log said 'that row is recomputed', and
    bench.json kept both until the next commit.  Which copy is right is not known: every
    copy is dropped, the row is measured again, and bench.csv and bench.json agree."""
    w = writer(tmp_path)
    w.commit(bench_row(value=0.5))
    w.commit(bench_row(method="softmax", value=0.3))
    text = (tmp_path / "bench.csv").read_text()
    header, exact_line, softmax_line = text.splitlines()
    (tmp_path / "bench.csv").write_text("\n".join([header, exact_line, softmax_line, exact_line]) + "\n")
    logged = []
    w2 = writer(tmp_path, resume=True, log=logged.append)
    assert [r["method"] for r in w2.rows] == ["softmax"]
    assert R.row_key(bench_row()) not in w2.done(), "the duplicated row is measured again"
    assert any("2 rows of exact cell 0" in m and "every copy is dropped" in m and "recomputed" in m for m in logged)
    csv_rows = read_table(str(tmp_path / "bench.csv")).rows
    json_rows = strict_load(str(tmp_path / "bench.json"))["rows"]
    assert [r["method"] for r in csv_rows] == [r["method"] for r in json_rows] == ["softmax"]
    w2.commit(bench_row(value=0.75))  # measured again: one copy
    assert sorted(r["method"] for r in read_table(str(tmp_path / "bench.csv")).rows) == ["exact", "softmax"]
    assert len(strict_load(str(tmp_path / "bench.json"))["rows"]) == 2


def test_stale_temporaries_are_removed_at_start_and_nothing_else(tmp_path):
    for name in ("bench.csv.77-0.tmp", "bench.json.123-4.tmp", "convergence.csv.5-12.tmp", "example.npz.8-1.tmp"):
        (tmp_path / name).write_text("half")
    # the user's files, whatever they are called, are never touched
    users = ("notes.txt", "notes.tmp", "bench.csv.tmp", "mine.1-2.tmp", "bench.csv.x-1.tmp", "bench.csv.1-2.tmp.bak")
    for name in users:
        (tmp_path / name).write_text("kept")
    logged = []
    writer(tmp_path, log=logged.append)
    assert sorted(os.listdir(tmp_path)) == sorted(set(users) | set(R.OUTPUTS))
    assert any("temporary" in m for m in logged)


def test_overwrite_starts_empty_files(tmp_path):
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(2))
    writer(tmp_path, overwrite=True)  # explicit consent to start over
    assert read_table(str(tmp_path / "bench.csv")).rows == []
    assert read_table(str(tmp_path / "convergence.csv")).rows == []


def test_a_folder_with_finished_rows_is_refused_without_resume_or_overwrite_and_left_as_it_was(tmp_path):
    """Before: a run without --resume silently started empty files over an earlier run's rows."""
    w = writer(tmp_path)
    w.commit(bench_row(method="exact"))
    w.commit(bench_row(method="softmax", status="error"))
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(R.FinishedRows, match=r"holds 2 row\(s\) of an earlier bench \(1 finished\).*--resume to keep "
                                             r"them.*--overwrite to discard them"):
        writer(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    with pytest.raises(ValueError, match="--resume and --overwrite contradict each other"):
        writer(tmp_path, resume=True, overwrite=True)
    assert len(writer(tmp_path, resume=True).rows) == 2


def test_an_unreadable_or_json_only_earlier_bench_is_refused_too(tmp_path):
    (tmp_path / "bench.csv").write_bytes(b"\xef\xbb\xbf" + b"cell,status\n")
    with pytest.raises(R.FinishedRows, match="cannot be read .*byte-order mark.*--overwrite"):
        writer(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "bench.json").write_text(json.dumps({"rows": [bench_row()]}))
    with pytest.raises(R.FinishedRows, match=r"holds 1 row\(s\)"):
        writer(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bench.csv").write_text(",".join(R.COLUMNS) + "\n")  # a header only: nothing to lose
    writer(empty)
    assert R.existing_rows(str(empty)) == (0, 0, None)


def test_resume_with_bench_json_alone_says_its_rows_are_dropped(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [bench_row(), bench_row(method="softmax")]}))
    logged = []
    w = writer(tmp_path, resume=True, log=logged.append)
    assert w.rows == [] and any("bench.csv is missing and bench.json holds 2 row(s): its rows are dropped" in m
                                for m in logged)
    assert strict_load(str(tmp_path / "bench.json"))["rows"] == []  # both files agree from the start
def test_bench_json_records_each_runs_load_and_threads_and_resume_keeps_the_earlier_ones(tmp_path, odd_threads):
    w = writer(tmp_path)
    w.commit(bench_row())
    first = strict_load(tmp_path / "bench.json")["runs"]
    assert len(first) == 1 and first[0]["rows"] == 1 and first[0]["torch_threads"] == odd_threads
    assert "load_average_start" in first[0] and "load_average_end" in first[0]
    w2 = writer(tmp_path, resume=True)
    w2.commit(bench_row(method="softmax"))
    runs = strict_load(tmp_path / "bench.json")["runs"]
    assert len(runs) == 2 and runs[0] == first[0] and runs[1]["rows"] == 1  # the earlier run's record kept
    (tmp_path / "bench.json").write_text("not json")
    with pytest.raises(R.ResumeMismatch, match="records no readable configuration"):  # its rows: settings unknown
        writer(tmp_path, resume=True)
    (tmp_path / "bench.csv").write_text(",".join(COLUMNS) + "\n")  # no row left to mix with
    writer(tmp_path, resume=True).commit(bench_row(method="dual"))
    assert len(strict_load(tmp_path / "bench.json")["runs"]) == 1  # unreadable: only this run is known


def _documented_columns(heading: str) -> list[str]:
    """The column names in the first cell of each row of the table under ``heading`` in
    docs/results_format.md (a row may name several, e.g. `fwd_ms`, `fwd_ms_q1`)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "results_format.md").read_text(encoding="utf-8")
    assert heading in text, f"docs/results_format.md has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [name for line in section.splitlines() if line.startswith("| `")
            for name in re.findall(r"`([^`]+)`", line.split("|")[1])]


@pytest.mark.parametrize("heading, columns", [
    ("## `bench.csv`", COLUMNS),
    ("## `convergence.csv`", CONVERGENCE_COLUMNS),
    ("## `verify.csv`", VERIFY_COLUMNS),
])
def test_the_documented_columns_are_the_written_ones(heading, columns):
    """docs/results_format.md describes every column each table has, and no other (they drifted
    apart once: `structure` was written before the tables listed it)."""
    documented = _documented_columns(heading)
    assert [c for c in columns if c not in documented] == [], "written but not documented"
    assert [c for c in documented if c not in columns] == [], "documented but not written"


# ----------------------------------------------------------------------------- resume: the grid and the measurement

def sweep_writer(folder, resume=False, log=None, **settings):
    return R.ResultsWriter(str(folder), SweepConfig(**{"sizes": (4,), "levels": (2,), **settings}), "cpu", resume,
                           log=log or (lambda m: None))


def test_every_sweep_setting_is_either_grid_run_or_measurement_and_the_docs_name_them():
    """Which settings --resume may change is decided per setting, and documented."""
    from dataclasses import fields

    names = [f.name for f in fields(SweepConfig)]
    groups = (R.GRID_SETTINGS, R.RUN_SETTINGS, R.MEASUREMENT_SETTINGS)
    assert sorted(n for g in groups for n in g) == sorted(names)
    assert {"factor", "repeats", "warmup", "threads", "budget", "cvx_batch", "fit_instances", "fit_max_values",
            "fit_steps", "amortised_steps", "dual_tol", "checkpoint", "seed"} <= set(R.MEASUREMENT_SETTINGS)
    assert {"methods", "sizes", "structures", "levels", "cvx_backends"} <= set(R.GRID_SETTINGS)
    text = (Path(__file__).resolve().parents[1] / "docs" / "results_format.md").read_text(encoding="utf-8")
    section = text.split("### What `--resume` may change", 1)[1].split("\n## ", 1)[0]
    missing = [n for n in R.MEASUREMENT_SETTINGS + R.GRID_SETTINGS if f"`{R._option(n)}`" not in section]
    assert missing == []


def test_resume_refuses_rows_measured_under_other_settings_and_accepts_a_wider_grid(tmp_path):
    """Before: --resume with --factor 4 kept the factor-2 rows beside the new ones, and
    bench.json said factor 4 for all."""
    w = sweep_writer(tmp_path)
    w.commit(bench_row(method="dual"))  # reads the dual solver's tolerance
    w.commit(bench_row(method="learned_dual", dual_kind="fitted"))  # and the training settings
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(R.FinishedRows, match=r"measured with --factor 2, this run asks for --factor 4.*--overwrite"):
        sweep_writer(tmp_path, resume=True, sizes=(4, 8), factor=4)
    with pytest.raises(R.ResumeMismatch, match=r"--fit-max-values none, this run asks for --fit-max-values 1000"):
        sweep_writer(tmp_path, resume=True, fit_max_values=1000)
    with pytest.raises(R.ResumeMismatch, match=r"dual_tol 1e-06, a fixed setting that is 1e-08 in this version"):
        sweep_writer(tmp_path, resume=True, dual_tol=1e-8)
    with pytest.raises(ValueError, match="--repeats 10, this run asks for --repeats 3"):
        R.check_start_over(str(tmp_path), True, False, SweepConfig(repeats=3))
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before, "nothing was touched"
    # the grid may grow or shrink, and bench.json's config then covers every row of the folder
    w2 = sweep_writer(tmp_path, resume=True, sizes=(8,), methods=("softmax",), max_cells=3)
    w2.commit(bench_row(method="softmax", size=8))
    config = strict_load(str(tmp_path / "bench.json"))["config"]
    assert config["sizes"] == [4, 8] and config["factor"] == 2 and config["max_cells"] == 3
    assert config["methods"] == list(SweepConfig().methods)


def test_resume_compares_the_batch_setting_of_each_row_s_backend(tmp_path):
    """A batched backend's rows (moreau) were timed on --cvx-batch samples, a diffcp
    backend's on --diffcp-batch: each is compared where such a row is kept, and only there.
    A bench.json written before --diffcp-batch existed timed diffcp on --cvx-batch: its
    diffcp rows are held to that value."""
    def config(**given):
        return SweepConfig(sizes=(4,), levels=(2,), **given)

    moreau_row = bench_row(method="cvxpylayers", backend="moreau", status="skipped")
    sweep_writer(tmp_path / "m", cvx_batch=4).commit(moreau_row)
    R.check_resume_config(str(tmp_path / "m"), config(cvx_batch=4, diffcp_batch=7))  # no diffcp row read it
    with pytest.raises(R.ResumeMismatch, match=r"--cvx-batch 4, this run asks for --cvx-batch 16"):
        R.check_resume_config(str(tmp_path / "m"), config())
    folder = tmp_path / "d"
    sweep_writer(folder, cvx_batch=4).commit(
        bench_row(method="cvxpylayers", backend="diffcp-clarabel", status="skipped"))
    R.check_resume_config(str(folder), config(diffcp_batch=2))  # the default; --cvx-batch unread
    with pytest.raises(R.ResumeMismatch, match=r"--diffcp-batch 2, this run asks for --diffcp-batch 5"):
        R.check_resume_config(str(folder), config(diffcp_batch=5))
    record = json.loads((folder / "bench.json").read_text())
    del record["config"]["diffcp_batch"]  # as an older version wrote it
    (folder / "bench.json").write_text(json.dumps(record))
    R.check_resume_config(str(folder), config(diffcp_batch=4))
    with pytest.raises(R.ResumeMismatch, match=r"--diffcp-batch 4, this run asks for --diffcp-batch 2"):
        R.check_resume_config(str(folder), config())
    assert R.cvx_batch_setting("moreau") == "cvx_batch" and R.cvx_batch_setting("diffcp-scs") == "diffcp_batch"
    assert R.cvx_batch_setting("a-backend-of-another-version") is None
    assert R.reads_setting("cvx_batch", {"method": "cvxpylayers", "backend": "retired"})
    assert R.reads_setting("diffcp_batch", {"method": "cvxpylayers", "backend": "retired"})


def test_resume_compares_a_setting_only_where_a_kept_row_read_it(tmp_path):
    """Before: rows of exact alone, measured beside --fit-steps 5 (which no row read), made
    a resume that adds learned_dual refuse 'rows ... were measured with --fit-steps 5'."""
    sweep_writer(tmp_path, fit_steps=5, cvx_batch=3, dual_tol=1e-8).commit(bench_row(method="exact"))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,)))  # no row read any of the three
    sweep_writer(tmp_path, resume=True, fit_steps=5, cvx_batch=3, dual_tol=1e-8).commit(
        bench_row(method="cvxpylayers", backend="moreau", status="skipped"))  # a skipped row read the caps
    with pytest.raises(R.ResumeMismatch, match=r"--cvx-batch 3, this run asks for --cvx-batch 16"):
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), fit_steps=5, dual_tol=1e-8))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), cvx_batch=3))
    assert [n for n in R.MEASUREMENT_SETTINGS if not R.reads_setting(n, {"method": "exact", "dual_kind": ""})] == \
        sorted(R.CVX_SETTINGS + R.FIT_SETTINGS + ("dual_tol",), key=R.MEASUREMENT_SETTINGS.index)
    assert all(R.reads_setting(n, {"method": "no-longer-registered", "dual_kind": ""}) for n in R.MEASUREMENT_SETTINGS)


def test_a_resume_whose_methods_read_a_setting_no_longer_compares_it_and_keeps_the_stored_value(tmp_path):
    """Before: rows of learned_dual at --fit-steps 3, resumed with exact alone, were refused
    without --fit-steps 3 (the stored value) and with it (no row of exact reads it): a
    folder could not be widened for the other methods (found by a review)."""
    w = sweep_writer(tmp_path, methods=("exact", "learned_dual"), fit_steps=3)
    w.commit(bench_row(method="exact"))
    w.commit(bench_row(method="learned_dual", dual_kind="fitted"))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4, 8), levels=(2,), methods=("exact",)))
    w2 = sweep_writer(tmp_path, resume=True, sizes=(4, 8), methods=("exact",))
    w2.commit(bench_row(method="exact", size=8))
    config = strict_load(str(tmp_path / "bench.json"))["config"]
    assert config["fit_steps"] == 3 and config["methods"] == ["exact", "learned_dual"]  # the rows' own value
    with pytest.raises(R.ResumeMismatch, match=r"--fit-steps 3, this run asks for --fit-steps 150"):
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), methods=("learned_dual",)))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), methods=("learned_dual",),
                                                     fit_steps=3))
    assert R.run_reads_setting("fit_steps", ("learned_dual",)) and not R.run_reads_setting("fit_steps", ("exact",))
    assert R.run_reads_setting("budget", ("cvxpylayers",)) and R.run_reads_setting("dual_tol", ("dual",))


def test_cell_numbers_never_collide_across_resumed_runs(tmp_path):
    """Before: `--sizes 8` then `--sizes 4 8 --resume` numbered both cells 0, in bench.csv and
    in convergence.csv (whose lines the figures group by cell)."""
    w = writer(tmp_path)
    w.commit(bench_row(method="dual", size=8), convergence=conv_rows(2, cell=0))
    w2 = writer(tmp_path, resume=True)
    # the resumed sweep's index of the new cell is 0, as the earlier cell's
    w2.commit(bench_row(method="dual", size=4), convergence=conv_rows(3, cell=0))
    w2.commit(bench_row(method="exact", size=4))
    w2.commit(bench_row(method="exact", size=8, cell=1))  # a cell of the folder keeps its number
    rows = read_table(str(tmp_path / "bench.csv")).rows
    cells = {(r["method"], r["size"]): r["cell"] for r in rows}
    assert cells == {("dual", "8"): "0", ("dual", "4"): "1", ("exact", "4"): "1", ("exact", "8"): "0"}
    conv = read_table(str(tmp_path / "convergence.csv")).rows
    assert sorted(r["cell"] for r in conv) == ["0", "0", "1", "1", "1"]
    assert {r["cell"] for r in conv if r["row_id"] == R.row_id(bench_row(method="dual", size=4))} == {"1"}
    assert R.read_rows(str(tmp_path / "convergence.csv"), R.CONVERGENCE_SCHEMA)[1] == []


def test_resume_renumbers_cells_that_an_earlier_resume_numbered_alike(tmp_path):
    """A folder written before cells were numbered per folder: two cells numbered 0."""
    rows = [{**bench_row(method="dual", size=8), "backend": "", "dual_kind": ""},
            {**bench_row(method="dual", size=4), "backend": "", "dual_kind": ""}]
    for r in rows:
        r["row_id"] = R.row_id(r)
    R.atomic_csv(str(tmp_path / "bench.csv"), R.COLUMNS, rows, checksum=True)
    conv = [{**c, "row_id": r["row_id"]} for r in rows for c in conv_rows(2, cell=0)]
    R.atomic_csv(str(tmp_path / "convergence.csv"), R.CONVERGENCE_COLUMNS, conv, checksum=True)
    (tmp_path / "bench.json").write_text(json.dumps({"config": {"sizes": [4]}, "rows": rows}))  # the rows' settings
    logged = []
    writer(tmp_path, resume=True, log=logged.append)
    assert any("renumbered" in m for m in logged)
    read, problems = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)
    assert problems == [] and {(r["size"], r["cell"]) for r in read} == {(8, 0), (4, 1)}
    conv_read, problems = R.read_rows(str(tmp_path / "convergence.csv"), R.CONVERGENCE_SCHEMA)
    assert problems == [] and {(r["row_id"], r["cell"]) for r in conv_read} == {(rows[0]["row_id"], 0),
                                                                                 (rows[1]["row_id"], 1)}
    assert [r["cell"] for r in strict_load(str(tmp_path / "bench.json"))["rows"]] == [0, 1]


def test_a_row_skipped_for_a_backend_that_could_not_run_is_retried_once_it_can(tmp_path, monkeypatch):
    """Before: every skipped row counted as finished, so --resume never measured a backend
    installed after the first run."""
    w = writer(tmp_path)
    w.commit(bench_row(method="cvxpylayers", backend="moreau", status="skipped",
                       reason="backend moreau not installed (missing moreau): pip install moreau"))
    w.commit(bench_row(method="cvxpylayers", backend="diffcp-scs", status="skipped",
                       reason="problem size 20 cells > cap --cvx-max-cells 10"))
    w.commit(bench_row(method="exact", status="skipped", reason="exact solves forests only"))
    skipped_moreau = R.row_key(bench_row(method="cvxpylayers", backend="moreau"))
    monkeypatch.setattr(R, "backend_unavailable_reason", lambda name: "not installed", raising=False)
    assert len(writer(tmp_path, resume=True).done()) == 3, "still cannot run: still finished"
    monkeypatch.setattr(R, "backend_unavailable_reason", lambda name: None, raising=False)
    done = writer(tmp_path, resume=True).done()
    assert skipped_moreau not in done and len(done) == 2, "the other skips stand"


def test_a_fresh_bench_refuses_convergence_rows_or_an_example_it_would_replace(tmp_path):
    """Before: without bench.csv/bench.json the folder counted as empty, and bench replaced
    the user's convergence.csv (and later example.npz) without a word."""
    conv_only = tmp_path / "conv"
    conv_only.mkdir()
    R.atomic_csv(str(conv_only / "convergence.csv"), R.CONVERGENCE_COLUMNS, conv_rows(2), checksum=True)
    before = (conv_only / "convergence.csv").read_bytes()
    with pytest.raises(R.FinishedRows, match="holds convergence.csv of an earlier bench.*--overwrite"):
        writer(conv_only)
    assert (conv_only / "convergence.csv").read_bytes() == before and sorted(os.listdir(conv_only)) == [
        "convergence.csv"]
    example = tmp_path / "example"
    example.mkdir()
    (example / "example.npz").write_bytes(b"mine")
    with pytest.raises(R.FinishedRows, match="holds example.npz"):
        writer(example)
    assert sorted(os.listdir(example)) == ["example.npz"]
    writer(example, overwrite=True)  # consent
    empty_conv = tmp_path / "header"
    empty_conv.mkdir()
    R.atomic_csv(str(empty_conv / "convergence.csv"), R.CONVERGENCE_COLUMNS, [], checksum=True)
    writer(empty_conv)  # a header alone: nothing to lose


# ----------------------------------------------------------------------------- resume: incomplete histories

def _damage(path: Path, line: int, how: str) -> None:
    """Line ``line`` (1-based, the header is line 1) of a table: a value cut off, or removed."""
    lines = path.read_text().splitlines(keepends=True)
    if how == "cut":
        fields = lines[line - 1].split(",")
        fields[8] = fields[8][:-1]  # violation_mean, cut off
        lines[line - 1] = ",".join(fields)
    else:
        del lines[line - 1]
    path.write_text("".join(lines))


@pytest.mark.parametrize("how, line", [("cut", 4), ("cut", 2), ("delete", 3), ("missing", None)])
def test_resume_measures_again_a_row_whose_convergence_history_is_incomplete(tmp_path, how, line):
    """Before: a damaged convergence.csv row was dropped ("it is recomputed where this sweep
    includes its cell") but the cell's dual row stayed finished, so it was never measured
    again and its history stayed truncated for good.  Now the row is measured again, and its
    whole history is written once (no duplicates); a complete history is left alone."""
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(3))  # lines 2-4 of convergence.csv
    w.commit(bench_row(method="dual", size=8), convergence=conv_rows(2, cell=1))
    w.commit(bench_row(method="exact"))
    conv = tmp_path / "convergence.csv"
    if how == "missing":
        conv.unlink()
    else:
        _damage(conv, line, how)
    logged = []
    w2 = writer(tmp_path, resume=True, log=logged.append)
    damaged, intact = R.row_key(bench_row(method="dual")), R.row_key(bench_row(method="dual", size=8))
    done = w2.done()
    assert damaged not in done and R.row_key(bench_row(method="exact")) in done
    assert (intact in done) == (how != "missing"), "a history that is there in full is kept"
    assert any("dual row of cell 0 has an incomplete history" in m and "recomputed" in m for m in logged), logged
    # what is left of the history is dropped from the files at once; the row itself stays
    ids = [r["row_id"] for r in read_table(str(conv)).rows]
    assert R.row_id(bench_row(method="dual")) not in ids
    assert len(read_table(str(tmp_path / "bench.csv")).rows) == 3
    w2.commit(bench_row(method="dual"), convergence=conv_rows(3))  # measured again
    rows = [r for r in read_table(str(conv)).rows if r["row_id"] == R.row_id(bench_row(method="dual"))]
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]
    assert R.row_key(bench_row(method="dual")) in writer(tmp_path, resume=True).done()


def test_a_history_whose_last_line_is_cut_inside_its_row_id_is_measured_again(tmp_path):
    """A cut inside the row_id left a fragment (e.g. '9616b9') that named no row, so the
    history, one line short, looked complete (found by a review)."""
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(3))
    w.commit(bench_row(method="dual", size=8), convergence=conv_rows(2, cell=1))  # the file's last two lines
    conv = tmp_path / "convergence.csv"
    lines = conv.read_text().splitlines()
    conv.write_text("\n".join(lines[:-1] + [lines[-1][:6]]))  # no line end: the run was killed there
    done = writer(tmp_path, resume=True).done()
    assert R.row_key(bench_row(method="dual", size=8)) not in done
    assert R.row_key(bench_row(method="dual")) in done


def _bench_json_one_row_behind(tmp_path, monkeypatch) -> None:
    """A run killed between the renames of its second commit: bench.csv holds two rows (exact,
    softmax), bench.json one."""
    w = writer(tmp_path)
    w.commit(bench_row(method="exact"))
    _killed_when_writing(monkeypatch, "bench.json")
    with pytest.raises(KeyboardInterrupt):
        w.commit(bench_row(method="softmax"))
    monkeypatch.undo()


def test_a_kill_between_bench_csv_and_bench_json_still_counts_every_row_in_the_runs(tmp_path, monkeypatch):
    """Before: the commit counter went up, bench.csv was renamed, then bench.json: a kill in
    between left bench.json's runs one row short of the folder's rows for good."""
    _bench_json_one_row_behind(tmp_path, monkeypatch)
    assert len(read_table(str(tmp_path / "bench.csv")).rows) == 2
    assert strict_load(str(tmp_path / "bench.json"))["runs"][0]["rows"] == 1  # the row bench.json never saw
    logged = []
    w2 = writer(tmp_path, resume=True, log=logged.append)
    assert any("1 row(s) of bench.csv were committed after bench.json" in m for m in logged)
    w2.commit(bench_row(method="dual"))
    data = strict_load(str(tmp_path / "bench.json"))
    assert [r["rows"] for r in data["runs"]] == [2, 1] and len(data["rows"]) == 3
    writer(tmp_path, resume=True).set_extra(note=1)  # a resume that commits nothing counts nothing again
    assert [r["rows"] for r in strict_load(str(tmp_path / "bench.json"))["runs"]] == [2, 1, 0]


def test_a_resume_after_bench_quick_suggests_quick(tmp_path):
    """Before: a plain --resume after `bench --quick` was refused one setting at a time
    (--repeats, then --warmup, ...), and on the fixed cvx_repeats as if the rows were another
    version's, never naming --quick."""
    from convex_attention.bench.config import quick_sweep

    w = R.ResultsWriter(str(tmp_path), quick_sweep(sizes=(4,), levels=(2,)), "cpu", False, log=lambda m: None)
    w.commit(bench_row())
    w.commit(bench_row(method="cvxpylayers", backend="diffcp-scs"))  # reads cvx_repeats
    with pytest.raises(R.ResumeMismatch, match=r"measured by a --quick sweep \(--repeats 5\).*--quick --resume"):
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,)))
    with pytest.raises(R.ResumeMismatch, match=r"measured by a --quick sweep \(cvx_repeats 1\).*--quick --resume"):
        R.check_resume_config(str(tmp_path), SweepConfig(**{k: getattr(quick_sweep(), k) for k in (
            "repeats", "warmup", "budget", "cvx_max_cells", "diffcp_batch", "fit_instances", "fit_max_values",
            "fit_steps", "amortised_steps")}))
    R.check_resume_config(str(tmp_path), quick_sweep(sizes=(8,)))  # --quick --resume: accepted
    with pytest.raises(R.ResumeMismatch, match=r"--scale 1.0, this run asks for --scale 2.0") as err:
        R.check_resume_config(str(tmp_path), quick_sweep(scale=2.0))  # not one of --quick's settings
    assert "--quick" not in str(err.value)


def test_a_run_that_shares_one_value_with_quick_is_not_called_a_quick_one(tmp_path):
    """--repeats 5 alone (--quick's value) made the refusal advise --quick --resume, which
    that folder then refused on --budget and cvx_repeats (found by a review)."""
    R.ResultsWriter(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), repeats=5), "cpu", False,
                    log=lambda m: None).commit(bench_row())
    with pytest.raises(R.ResumeMismatch, match=r"--repeats 5, this run asks for --repeats") as err:
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,)))
    assert "--quick" not in str(err.value)


def test_a_checkpoint_recorded_without_the_model_generator_does_not_block_resume(tmp_path):
    """An earlier version accepted --checkpoint without --generator model (now exit 2) and
    recorded it; the checkpoint is read by the model generator alone, so --resume compares it
    only there."""
    sweep_writer(tmp_path, checkpoint="/no/such/file.pt").commit(bench_row())
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,)))
    with pytest.raises(R.ResumeMismatch, match="--generator"):
        R.check_resume_config(str(tmp_path), SweepConfig(generator="model", checkpoint="/m.pt"))


def _digits_only_checksum_row() -> dict:
    """A row without backend, λ kind or reason whose checksum has decimal digits only."""
    for i in range(10_000):
        row = {**bench_row(value=0.5 + i), "backend": "", "dual_kind": "", "reason": "", "run": 1}  # a fresh run's
        row["row_id"] = R.row_id(row)
        if R.row_checksum([R.csv_field(row.get(c)) for c in COLUMNS if c != "checksum"]).isdigit():
            return row
    raise AssertionError("no checksum of digits only")


def test_pandas_reads_the_tables_with_their_types_given_the_documented_dtypes(tmp_path):
    """Before: in a sweep without cvxpylayers or learned_dual, pandas read backend, dual_kind
    and reason as float64 (every field empty) and a checksum of digits only as int64; the
    documented `dtype=` reads every text column as strings."""
    pd = pytest.importorskip("pandas")
    w = writer(tmp_path)
    stored = w.commit(_digits_only_checksum_row(), convergence=conv_rows(2))
    assert stored["checksum"].isdigit()
    plain = pd.read_csv(tmp_path / "bench.csv")
    assert plain["backend"].dtype == "float64" and plain["checksum"].dtype == "int64"  # without dtype=
    frame = pd.read_csv(tmp_path / "bench.csv", dtype=R.PANDAS_DTYPES["bench.csv"])
    for c in ("backend", "dual_kind", "reason", "checksum", "row_id", "method", "shapes"):
        assert pd.api.types.is_string_dtype(frame[c].dtype), c
    assert frame["checksum"][0] == stored["checksum"] and pd.isna(frame["backend"][0])
    assert frame["size"].dtype == "Int64" and frame["iterations_max"].isna().all()
    assert frame["violation_mean"].dtype == "float64" and frame["fwd_ms"].isna().all()
    conv = pd.read_csv(tmp_path / "convergence.csv", dtype=R.PANDAS_DTYPES["convergence.csv"])
    assert pd.api.types.is_string_dtype(conv["checksum"].dtype) and conv["iteration"].tolist() == [0, 1]
    # the docs give the call, and list the text columns of each table as the package does
    text = (Path(__file__).resolve().parents[1] / "docs" / "results_format.md").read_text(encoding="utf-8")
    assert 'pd.read_csv("bench.csv", dtype=PANDAS_DTYPES["bench.csv"])' in text
    for name in ("bench.csv", "convergence.csv"):
        listed = re.search(rf"text columns of `{re.escape(name)}`: ([^.]*)\.", " ".join(text.split()))
        assert listed, name
        strings = [c for c, t in R.PANDAS_DTYPES[name].items() if t == "string"]
        assert re.findall(r"`([^`]+)`", listed.group(1)) == strings


@pytest.mark.parametrize("name", ["bench.csv", "bench.json", "convergence.csv", "example.npz"])
def test_an_output_name_that_is_a_folder_or_a_pipe_is_refused_whatever_the_options(tmp_path, name):
    """Found by a hostile review: a folder named convergence.csv gave an IsADirectoryError
    traceback from the start-over check; with --overwrite, the sweep ran and failed writing
    (example.npz: after the whole sweep)."""
    for make, kind in ((os.mkdir, "a folder"), (os.mkfifo, "a named pipe")):
        out = tmp_path / kind.split()[-1]
        out.mkdir(exist_ok=True)
        make(out / name)
        for resume, overwrite in ((False, False), (True, False), (False, True)):
            with pytest.raises(R.FinishedRows, match=f"{name} is {kind}, not the file {name} this command writes"):
                R.check_start_over(str(out), resume, overwrite, SweepConfig())
            with pytest.raises(R.FinishedRows, match=f"{name} is {kind}"):
                writer(out, resume=resume, overwrite=overwrite)
        assert os.listdir(out) == [name]


@pytest.mark.parametrize("name", ["bench.csv", "bench.json", "convergence.csv", "example.npz"])
def test_a_users_dangling_link_named_like_an_output_needs_overwrite(tmp_path, name):
    """Found by a review: bench replaced a symbolic link to a missing file, named like one of its
    outputs, without --overwrite (verify already refused it)."""
    (tmp_path / name).symlink_to(tmp_path / "missing")
    for resume in (False, True):
        with pytest.raises(R.FinishedRows, match=f"{name} as a symbolic link to a missing file"):
            R.check_start_over(str(tmp_path), resume, False, SweepConfig())
    R.check_start_over(str(tmp_path), False, True, SweepConfig())  # --overwrite replaces it
    assert os.path.islink(tmp_path / name)


def test_resume_refuses_rows_whose_bench_json_records_no_readable_configuration(tmp_path):
    """Found by a hostile review: with bench.json damaged, --resume only warned, measured the
    new rows under other settings beside the old ones, and recorded the new settings for all."""
    for content in ("[1,2", json.dumps({"rows": []}), json.dumps({"config": [4], "rows": []}), None):
        # damaged, no config, a config that is no object, missing
        folder = tmp_path / f"f{len(os.listdir(tmp_path))}"
        w = sweep_writer(folder)
        w.commit(bench_row(method="exact"))
        if content is None:
            (folder / "bench.json").unlink()
        else:
            (folder / "bench.json").write_text(content)
        before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
        with pytest.raises(R.ResumeMismatch, match=r"bench\.json records no readable configuration.*bench\.csv.*"
                                                   r"--overwrite"):
            R.check_start_over(str(folder), True, False, SweepConfig(warmup=7))
        with pytest.raises(R.ResumeMismatch, match="records no readable configuration"):
            sweep_writer(folder, resume=True)
        assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before, "nothing was touched"
        R.ResultsWriter(str(folder), SweepConfig(sizes=(4,), levels=(2,)), "cpu", False, log=lambda m: None,
                        overwrite=True)  # starting over is the way on


def test_a_row_committed_with_an_integer_in_a_float_column_survives_two_resumes(tmp_path):
    """Before: its checksum was taken over "2", a resume wrote it back as "2.0" with that
    checksum, and the next resume dropped it as damaged (found by a mutation review)."""
    import numpy as np

    writer(tmp_path).commit(bench_row(scale=2, temperature=1, violation_mean=np.float64(0.25), size=4.0))
    for size in (8, 16):
        logged = []
        w = writer(tmp_path, resume=True, log=logged.append)
        assert "exact" in [r["method"] for r in w.rows] and not any("checksum" in m for m in logged), logged
        w.commit(bench_row(method="softmax", size=size))
    rows, problems = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)
    assert not problems and [(r["method"], r["scale"], r["size"], r["violation_mean"]) for r in rows][0] == \
        ("exact", 2.0, 4, 0.25)


def test_row_keys_of_typed_and_read_back_rows_agree(tmp_path):
    """A row committed with integer-valued floats (scale=2) and the same row read back
    ("2.0") are one row: a resume that commits it again replaces it (a key without the float
    normalisation kept both; found by mutation testing)."""
    writer(tmp_path).commit(bench_row(scale=2, temperature=1))
    w = writer(tmp_path, resume=True)
    w.commit(bench_row(scale=2.0, temperature=1.0, value=0.7))
    rows, _ = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)
    assert len(rows) == 1 and rows[0]["violation_mean"] == 0.7
    assert R.row_key(bench_row(scale=2)) == R.row_key(bench_row(scale="2.0"))


def test_a_folder_whose_rows_are_all_damaged_still_holds_rows(tmp_path):
    """Every row of bench.csv damaged (a checksum that does not match): the folder is not
    empty, and a fresh start without --overwrite is refused (counting only the readable
    rows let it replace the file; found by mutation testing)."""
    writer(tmp_path).commit(bench_row())
    path = tmp_path / "bench.csv"
    header, line = path.read_text().splitlines()
    path.write_text(header + "\n" + line.replace("exact", "exakt", 1) + "\n")
    assert R.existing_rows(str(tmp_path))[:2] == (1, 0)
    with pytest.raises(R.FinishedRows, match="1 row"):
        R.check_start_over(str(tmp_path), False, False, SweepConfig(sizes=(4,), levels=(2,)))


def test_a_row_committed_again_as_an_error_drops_its_convergence_history(tmp_path):
    """An ok row with its history, committed again with another status: the history goes
    with it (no orphan convergence rows; a mutant keeping them survived; found by mutation
    testing)."""
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(3))
    assert len(w.convergence) == 3
    w.commit(bench_row(method="dual", status="error"))
    assert w.convergence == []
    rows, _ = R.read_rows(str(tmp_path / "convergence.csv"), R.CONVERGENCE_SCHEMA)
    assert rows == []


def test_numpy_torch_and_text_numbers_are_committed_as_the_reader_reads_them_and_the_rest_refused(tmp_path):
    """numpy and torch scalars and numeric text in numeric columns were written as given, so
    a resume rewrote "2" as "2.0" and the next dropped the row; a bool, a fraction or inf in
    an integer column was written unreadable (found by a review)."""
    import numpy as np
    import torch

    writer(tmp_path).commit(bench_row(scale=np.int64(2), temperature="1", peak_mem_mb=torch.tensor(3),
                                      repeats=np.float32(3.0)))
    for size in (8, 16):
        logged = []
        w = writer(tmp_path, resume=True, log=logged.append)
        assert not any("checksum" in m for m in logged), logged
        w.commit(bench_row(method="softmax", size=size))
    row = next(r for r in R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0] if r["method"] == "exact")
    assert (row["scale"], row["temperature"], row["peak_mem_mb"], row["repeats"]) == (2.0, 1.0, 3.0, 3)
    w = writer(tmp_path, resume=True)
    for column, value in (("iterations_max", True), ("n_cells", 2.5), ("iterations_max", float("inf")),
                          ("scale", 2 ** 1100), ("scale", "two"), ("scale", False), ("iterations_max", np.bool_(True)),
                          ("n_cells", torch.tensor(False))):
        with pytest.raises(ValueError, match=f"column {column} holds"):
            w.commit(bench_row(method="dual", **{column: value}))


# ----------------------------------------------------------------------------- found by mutation testing (2)

def test_the_amortised_rows_read_the_training_settings_too(tmp_path):
    """Both trained λ kinds (`fitted` and `amortised`) are measured with the training
    settings: a resume of amortised rows alone compares them (docs/results_format.md)."""
    sweep_writer(tmp_path, amortised_steps=7).commit(bench_row(method="learned_dual", dual_kind="amortised"))
    option = R._option("amortised_steps")
    with pytest.raises(R.ResumeMismatch, match=f"{option} 7, this run asks for {option} "):
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,)))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), amortised_steps=7))


def test_a_setting_only_error_rows_read_does_not_bind_the_resume(tmp_path):
    """Error rows are measured again: only the kept (finished) rows' settings are compared."""
    w = sweep_writer(tmp_path, fit_steps=3)
    w.commit(bench_row(method="exact"))
    w.commit(bench_row(method="learned_dual", dual_kind="fitted", status="error"))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,)))  # another --fit-steps


def test_a_setting_the_stored_config_does_not_record_is_not_compared(tmp_path):
    """An older bench.json without a setting: that setting is not compared, the others are."""
    sweep_writer(tmp_path, factor=4).commit(bench_row())
    data = strict_load(str(tmp_path / "bench.json"))
    del data["config"]["factor"]
    (tmp_path / "bench.json").write_text(json.dumps(data))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,)))
    with pytest.raises(R.ResumeMismatch, match="--repeats 10, this run asks for --repeats 3"):
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), repeats=3))


def test_a_resume_into_a_folder_without_rows_or_config_records_this_runs_config(tmp_path):
    """Nothing stored to widen: bench.json records the resuming run's configuration."""
    (tmp_path / "bench.csv").write_text(",".join(COLUMNS) + "\n")
    w = sweep_writer(tmp_path, resume=True, factor=3)
    w.commit(bench_row())
    config = strict_load(str(tmp_path / "bench.json"))["config"]
    assert config["factor"] == 3 and config["sizes"] == [4]


def test_row_ids_of_keys_whose_values_run_together_alike_differ(tmp_path):
    """dims 2 and size 14, dims 21 and size 4: two rows, two ids, each with its own history."""
    a, b = bench_row(method="dual", dims=2, size=14), bench_row(method="dual", dims=21, size=4)
    assert "".join(R.row_key(a)) == "".join(R.row_key(b)) and R.row_key(a) != R.row_key(b)
    assert R.row_id(a) != R.row_id(b)
    w = writer(tmp_path)
    w.commit(a, convergence=conv_rows(2))
    w.commit(b, convergence=conv_rows(3, cell=1))
    conv = read_table(str(tmp_path / "convergence.csv")).rows
    assert sorted(sum(r["row_id"] == R.row_id(x) for r in conv) for x in (a, b)) == [2, 3]


def test_row_keys_of_text_rows_with_an_empty_field_agree_with_the_typed_rows(tmp_path):
    """A row read as text (an empty field is "") and the same row typed (None) share a key."""
    writer(tmp_path).commit(bench_row(seed=None))
    text = read_table(str(tmp_path / "bench.csv")).rows[0]
    typed = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0][0]
    assert text["seed"] == "" and typed["seed"] is None
    assert R.row_key(text) == R.row_key(typed) == R.row_key(bench_row(seed=None))
    assert R.row_id(text) == text["row_id"]


def test_a_bench_json_alone_without_a_list_of_rows_is_refused(tmp_path):
    """An earlier bench's bench.json (no bench.csv) whose rows cannot be read: refused, not replaced."""
    (tmp_path / "bench.json").write_text(json.dumps({"rows": 3}))
    assert R.existing_rows(str(tmp_path))[2] is not None
    with pytest.raises(R.FinishedRows, match="no list of rows.*--overwrite"):
        writer(tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text()) == {"rows": 3}


def test_a_fresh_bench_refuses_a_damaged_or_unreadable_convergence_csv(tmp_path):
    """A convergence.csv whose rows are all damaged, or that cannot be read at all, is still an
    earlier bench's file: a fresh start without --overwrite would replace it."""
    damaged, unreadable = tmp_path / "damaged", tmp_path / "unreadable"
    damaged.mkdir()
    unreadable.mkdir()
    R.atomic_csv(str(damaged / "convergence.csv"), R.CONVERGENCE_COLUMNS, conv_rows(1), checksum=True)
    path = damaged / "convergence.csv"
    path.write_text(path.read_text().replace("0.1", "0.2", 1))  # its checksum no longer matches
    assert R.read_rows(str(path), R.CONVERGENCE_SCHEMA)[1] != []
    (unreadable / "convergence.csv").write_bytes(b"\xef\xbb\xbf" + ",".join(R.CONVERGENCE_COLUMNS).encode() + b"\n")
    for folder in (damaged, unreadable):
        before = (folder / "convergence.csv").read_bytes()
        with pytest.raises(R.FinishedRows, match="holds convergence.csv of an earlier bench.*--overwrite"):
            writer(folder)
        assert (folder / "convergence.csv").read_bytes() == before


def test_a_link_to_an_existing_file_is_read_through_not_refused_as_dangling(tmp_path):
    """Only a link to a missing file is refused as a link; a live link's rows are counted."""
    elsewhere = tmp_path / "elsewhere"
    writer(elsewhere).commit(bench_row())
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.csv").symlink_to(elsewhere / "bench.csv")
    with pytest.raises(R.FinishedRows, match=r"holds 1 row\(s\) of an earlier bench") as err:
        R.check_start_over(str(out), False, False, SweepConfig())
    assert "symbolic link" not in str(err.value)


def test_a_refusal_names_resume_only_where_the_command_offers_it(tmp_path):
    """demo has no --resume: its refusals never name it, whether the rows can be read or not."""
    readable, unreadable = tmp_path / "readable", tmp_path / "unreadable"
    writer(readable).commit(bench_row())
    unreadable.mkdir()
    (unreadable / "bench.csv").write_bytes(b"\xef\xbb\xbf" + b"cell,status\n")
    for folder in (readable, unreadable):
        with pytest.raises(R.FinishedRows, match="--resume"):
            R.check_start_over(str(folder), False, False)
        with pytest.raises(R.FinishedRows, match="--overwrite") as err:
            R.check_start_over(str(folder), False, False, offer_resume=False)
        assert "--resume" not in str(err.value)


def test_a_row_skipped_for_a_backend_this_version_does_not_know_stays_finished(tmp_path):
    """A backend that this version does not know can never run here: its skipped row is not retried."""
    w = writer(tmp_path)
    w.commit(bench_row(method="cvxpylayers", backend="no-such-backend", status="skipped",
                       reason="backend no-such-backend not installed"))
    assert R.row_key(bench_row(method="cvxpylayers", backend="no-such-backend")) in writer(tmp_path,
                                                                                            resume=True).done()


def test_resume_with_an_unreadable_bench_json_alone_says_so_and_rewrites_it_at_once(tmp_path):
    """No bench.csv, a bench.json that cannot be read: the log says its rows are dropped, and
    both files agree from the start."""
    (tmp_path / "bench.json").write_text("not json")
    logged = []
    writer(tmp_path, resume=True, log=logged.append)
    assert any("bench.csv is missing and bench.json cannot be read" in m for m in logged), logged
    assert strict_load(str(tmp_path / "bench.json"))["rows"] == []


def test_a_skipped_row_of_a_method_that_records_a_history_needs_none(tmp_path):
    """Only ok rows come with a convergence history: a skipped dual row stays finished."""
    writer(tmp_path).commit(bench_row(method="dual", status="skipped", reason="too large"))
    logged = []
    w = writer(tmp_path, resume=True, log=logged.append)
    assert R.row_key(bench_row(method="dual")) in w.done() and not any("history" in m for m in logged), logged


def test_a_row_without_a_sweep_index_gets_the_next_free_cell_number(tmp_path):
    """No (or a negative) index: the cell takes the next free number, never a negative one."""
    w = writer(tmp_path)
    cells = [w.commit(bench_row(size=size, cell=given))["cell"] for size, given in ((4, None), (8, -1), (16, 5))]
    assert cells == [0, 1, 5]
    assert [r["cell"] for r in R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0]] == cells


def test_a_new_cell_whose_index_is_taken_never_takes_another_cells_number(tmp_path):
    """Cells numbered 1 and 2 (none 0): a third cell whose index is taken gets a number no cell has."""
    w = writer(tmp_path)
    cells = [w.commit(bench_row(size=size, cell=given))["cell"] for size, given in ((4, 1), (8, 2), (16, 1))]
    assert cells[:2] == [1, 2] and len(set(cells)) == 3 and cells[2] > 2


def test_set_extra_rewrites_bench_json_at_once(tmp_path):
    """Entries stored with set_extra (targets, warm-up) are in bench.json as soon as it returns."""
    w = writer(tmp_path)
    w.commit(bench_row())
    w.set_extra(targets=[{"met": None}], warmup_s=1.5)
    data = strict_load(str(tmp_path / "bench.json"))
    assert data["targets"] == [{"met": None}] and data["warmup_s"] == 1.5 and len(data["rows"]) == 1


def test_a_runs_record_that_is_not_a_list_of_objects_keeps_only_the_readable_runs(tmp_path):
    """bench.json is strict JSON of objects: an earlier run record that is no object is left out
    on resume, and a ``runs`` that is no list counts as no earlier run."""
    writer(tmp_path).commit(bench_row())
    data = strict_load(str(tmp_path / "bench.json"))
    first = data["runs"][0]
    for damaged, kept in (([7, "x", first], [first]), (3, []), ({"rows": 1}, [])):
        (tmp_path / "bench.json").write_text(json.dumps({**data, "runs": damaged}))
        runs = writer(tmp_path, resume=True).run_records()
        assert runs[:-1] == kept and runs[-1]["rows"] == 0


def test_a_bench_csv_that_cannot_be_opened_on_resume_is_a_one_line_format_error(tmp_path, monkeypatch):
    """An OSError reading bench.csv (permissions, a disk error) is refused in one line, naming the file."""
    writer(tmp_path).commit(bench_row())

    def denied(path, schema):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(R, "read_rows", denied)
    with pytest.raises(R.ResultsFormatError, match=r"bench\.csv: cannot be read \(Permission denied\)") as err:
        writer(tmp_path, resume=True)
    assert "\n" not in str(err.value)


def test_a_numeric_text_in_an_integer_column_is_committed_exactly_however_many_digits(tmp_path):
    """Numeric text is committed as its number: an integer beyond float64's precision exactly."""
    big = 2 ** 63 + 1
    stored = writer(tmp_path).commit(bench_row(n_cells=str(big)))
    assert stored["n_cells"] == big
    assert R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0][0]["n_cells"] == big


def test_a_last_run_record_without_a_row_count_survives_a_resume(tmp_path, monkeypatch):
    """A row bench.json missed (a kill between the renames) while its last run record holds no
    count: the resume goes on and leaves that record as it was."""
    _bench_json_one_row_behind(tmp_path, monkeypatch)
    data = strict_load(str(tmp_path / "bench.json"))
    data["runs"][0]["rows"] = None
    (tmp_path / "bench.json").write_text(json.dumps(data))
    w2 = writer(tmp_path, resume=True)
    assert len(w2.rows) == 2 and [r["rows"] for r in w2.run_records()] == [None, 0]


def test_bench_json_holds_empty_text_columns_as_bench_csv_reads_them_back(tmp_path):
    """A row committed without backend, λ kind or reason: bench.json's row holds them as the
    typed reader reads bench.csv's ("", not null), so both files give the same row."""
    row = {k: v for k, v in bench_row().items() if k not in ("backend", "dual_kind", "reason")}
    writer(tmp_path).commit(row)
    typed = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0][0]
    stored = strict_load(str(tmp_path / "bench.json"))["rows"][0]
    assert [stored[c] for c in ("backend", "dual_kind", "reason")] == [typed[c] for c in (
        "backend", "dual_kind", "reason")] == ["", "", ""]


def test_bench_json_holds_every_empty_text_column_as_bench_csv_reads_it_back(tmp_path):
    """docs/results_format.md: bench.json's rows are the rows of bench.csv, typed.  Found by
    mutation testing: a text column committed as None (other than backend, dual_kind and
    reason) was null in bench.json, and "" once a resume rewrote the row."""
    writer(tmp_path).commit({k: v for k, v in bench_row().items() if k != "shapes"})
    typed = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0][0]
    stored = strict_load(str(tmp_path / "bench.json"))["rows"][0]
    assert stored["shapes"] == typed["shapes"]


def test_a_checkpoint_is_compared_where_this_run_uses_the_model_generator(tmp_path):
    """--checkpoint is compared where either run uses --generator model: here the resuming
    one (the stored config, an older one, does not record the generator)."""
    sweep_writer(tmp_path, checkpoint="/a.pt").commit(bench_row())
    data = strict_load(str(tmp_path / "bench.json"))
    del data["config"]["generator"]
    (tmp_path / "bench.json").write_text(json.dumps(data))
    option = R._option("checkpoint")
    with pytest.raises(R.ResumeMismatch, match=f"{option} \"/a.pt\", this run asks for {option} \"/b.pt\""):
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), generator="model",
                                                         checkpoint="/b.pt"))


def test_resume_refuses_a_folder_whose_rows_are_all_damaged_and_whose_config_is_unreadable(tmp_path):
    """Damaged rows are rows (the folder is not empty): without a readable config in bench.json
    their settings cannot be checked, and the resume is refused as for readable rows."""
    sweep_writer(tmp_path).commit(bench_row())
    path = tmp_path / "bench.csv"
    header, line = path.read_text().splitlines()
    path.write_text(header + "\n" + line.replace("exact", "exakt", 1) + "\n")
    (tmp_path / "bench.json").write_text("[1,2")
    with pytest.raises(R.ResumeMismatch, match="records no readable configuration"):
        R.check_start_over(str(tmp_path), True, False, SweepConfig(sizes=(4,), levels=(2,)))


def test_a_blank_line_before_a_cut_history_does_not_hide_the_cut(tmp_path):
    """The lines of each history are counted over the whole file, past a blank line."""
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(3))
    w.commit(bench_row(method="dual", size=8), convergence=conv_rows(2, cell=1))  # the file's last two lines
    conv = tmp_path / "convergence.csv"
    lines = conv.read_text().splitlines()
    conv.write_text("\n".join(lines[:-2] + ["", lines[-2], lines[-1][:6]]))
    done = writer(tmp_path, resume=True).done()
    assert R.row_key(bench_row(method="dual", size=8)) not in done
    assert R.row_key(bench_row(method="dual")) in done


def test_a_legacy_folder_keeps_its_diffcp_rows_batch_through_a_resume_that_does_not_read_it(tmp_path):
    """Before (a review): the legacy rule held only in the resume check, so a resume that
    reads no cvxpylayers setting recorded this run's --diffcp-batch default for a legacy
    folder's diffcp rows (timed on its --cvx-batch), and a later resume then accepted
    another --diffcp-batch for them."""
    folder = tmp_path / "legacy"
    sweep_writer(folder, cvx_batch=4).commit(
        bench_row(method="cvxpylayers", backend="diffcp-clarabel", status="skipped"))
    record = json.loads((folder / "bench.json").read_text())
    del record["config"]["diffcp_batch"]  # written before --diffcp-batch: diffcp timed on --cvx-batch 4
    (folder / "bench.json").write_text(json.dumps(record))
    with pytest.raises(R.ResumeMismatch, match=r"--diffcp-batch 4"):
        R.check_resume_config(str(folder), SweepConfig(sizes=(4,), levels=(2,)))  # the legacy rule holds
    # a resume of exact alone (reads no cvxpylayers setting): accepted, and keeps the rows' value
    R.check_resume_config(str(folder), SweepConfig(sizes=(4,), levels=(2,), methods=("exact",)))
    sweep_writer(folder, resume=True, methods=("exact",)).commit(bench_row(method="exact", size=8))
    assert json.loads((folder / "bench.json").read_text())["config"]["diffcp_batch"] == 4
    with pytest.raises(R.ResumeMismatch, match=r"--diffcp-batch 4"):
        R.check_resume_config(str(folder), SweepConfig(sizes=(4,), levels=(2,)))  # diffcp rows were timed on 4


# ----------------------------------------------------------------------------- review 34

def test_rev34_resume_refuses_a_checkpoint_file_that_changed_since_its_rows_were_measured(tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"the model the stored rows were measured with")
    out = tmp_path / "r"
    sweep_writer(out, generator="model", checkpoint=str(checkpoint)).commit(bench_row(generator="model"))
    R.check_resume_config(str(out), SweepConfig(sizes=(4,), levels=(2,), generator="model",
                                                checkpoint=str(checkpoint)))  # unchanged: resumed
    checkpoint.write_bytes(b"another model, trained into the same file since")
    with pytest.raises(R.ResumeMismatch, match=r"as it was then \(SHA-256 [0-9a-f]{12}…\); the file has changed"):
        R.check_resume_config(str(out), SweepConfig(sizes=(4,), levels=(2,), generator="model",
                                                    checkpoint=str(checkpoint)))


def test_rev34_a_resume_keeps_the_environment_the_earlier_rows_were_measured_in(tmp_path):
    sweep_writer(tmp_path).commit(bench_row())
    data = strict_load(str(tmp_path / "bench.json"))
    data["environment"] = {**data["environment"], "processor": "The Earlier CPU 9000", "torch": "0.0.1"}
    (tmp_path / "bench.json").write_text(json.dumps(data))
    with pytest.raises(R.ResumeMismatch, match="measured with processor \"The Earlier CPU 9000\", this machine has"):
        sweep_writer(tmp_path, resume=True)
    assert "The Earlier CPU 9000" in (tmp_path / "bench.json").read_text()  # refused before anything is written


def test_a_resume_keeps_the_cpu_kernels_the_earlier_rows_were_timed_with(tmp_path):
    """One processor name covers CPUs with and without AVX-512, and ATEN_CPU_CAPABILITY picks other
    kernels on one CPU: a folder timed on AVX512 kernels is not resumed on DEFAULT ones; a file written
    before the key was recorded is resumed as before."""
    import torch

    sweep_writer(tmp_path).commit(bench_row())
    data = strict_load(str(tmp_path / "bench.json"))
    assert data["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    older = {k: v for k, v in data["environment"].items() if k != "cpu_capability"}
    (tmp_path / "bench.json").write_text(json.dumps({**data, "environment": older}))
    resumed = sweep_writer(tmp_path, resume=True)
    # the kept rows' kernels are unknown: the folder's environment, which speaks for them, names none (ca_rev243)
    assert "cpu_capability" not in resumed.env
    resumed.commit(bench_row(size=8))
    assert "cpu_capability" not in strict_load(str(tmp_path / "bench.json"))["environment"]
    sweep_writer(tmp_path, resume=True).commit(bench_row(size=16))  # still none, whatever is added
    data = strict_load(str(tmp_path / "bench.json"))
    assert "cpu_capability" not in data["environment"]
    data["environment"] = {**data["environment"], "cpu_capability": "NO_SUCH_KERNELS"}
    (tmp_path / "bench.json").write_text(json.dumps(data))
    with pytest.raises(R.ResumeMismatch, match='measured with cpu_capability "NO_SUCH_KERNELS", this machine has'):
        sweep_writer(tmp_path, resume=True)


# ----------------------------------------------------------------------------- review 42

def test_rev42_a_resume_that_lists_another_device_first_still_compares_the_gpu_of_the_kept_rows(tmp_path,
                                                                                                  monkeypatch):
    import torch

    gpu = {"name": "GPU A"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu["name"])
    stored = SweepConfig(sizes=(4,), levels=(2,), devices=("cuda",))
    R.ResultsWriter(str(tmp_path), stored, "cuda", False, log=lambda m: None).commit(bench_row(device="cuda"))
    assert strict_load(str(tmp_path / "bench.json"))["environment"]["gpu"] == "GPU A"
    gpu["name"] = "GPU B"  # the same folder, resumed on a machine with another GPU
    with pytest.raises(R.ResumeMismatch, match='gpu "GPU A", this machine has "GPU B"'):
        R.check_resume_config(str(tmp_path), stored)  # --device cuda: refused
    with pytest.raises(R.ResumeMismatch, match='gpu "GPU A", this machine has "GPU B"'):
        # --device cpu cuda (the grid grew): the kept cuda rows and the new ones would be two GPUs' timings
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), devices=("cpu", "cuda")))


def test_a_run_over_the_cpu_and_a_gpu_records_the_gpu_and_a_resume_on_another_gpu_is_refused(tmp_path, monkeypatch):
    """bench.json records the environment of the run's GPU where it lists one after the CPU
    (``--device cpu cuda``): it recorded the CPU's, so the figures named no GPU and a resume on
    another GPU passed, mixing two GPUs' timings in one folder (review 42's remainder)."""
    import torch

    from convex_attention.bench.config import environment_device

    assert environment_device(("cpu", "cuda")) == environment_device(("cuda", "cpu")) == "cuda"
    assert environment_device(("cpu",)) == "cpu"
    gpu = {"name": "GPU A"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu["name"])
    config = SweepConfig(sizes=(4,), levels=(2,), devices=("cpu", "cuda"))
    R.ResultsWriter(str(tmp_path), config, environment_device(config.devices), False,
                    log=lambda m: None).commit(bench_row(device="cuda"))
    assert strict_load(str(tmp_path / "bench.json"))["environment"]["gpu"] == "GPU A"
    gpu["name"] = "GPU B"
    with pytest.raises(R.ResumeMismatch, match='gpu "GPU A", this machine has "GPU B"'):
        R.check_resume_config(str(tmp_path), config)


# ----------------------------------------------------------------------------- review ca_rev73

def test_rev73_bench_csv_and_bench_json_hold_the_same_value_for_an_infinite_float(tmp_path):
    """bench.csv and bench.json hold the same rows: a value bench.json cannot hold (±inf, written
    as null there) must not be a number in bench.csv (or must be refused, as in an integer column)."""
    w = writer(tmp_path)
    try:
        w.commit(bench_row(violation_max=float("inf"), total_ms=float("-inf")))
    except ValueError:
        return  # refused before anything is written: both files agree
    (csv_row,), problems = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)
    json_row = strict_load(str(tmp_path / "bench.json"))["rows"][0]
    assert not problems
    for column in ("violation_max", "total_ms"):
        csv_value, json_value = csv_row[column], json_row[column]
        same = csv_value != csv_value if json_value is None else csv_value == json_value  # NaN is null
        assert same, f"{column}: bench.csv holds {csv_value!r}, bench.json {json_value!r}"


def test_a_float_beyond_float64_written_as_text_is_refused_not_stored_as_nan():
    """ca_rev74's near-miss: since ±inf is stored as NaN, the text "1e400" became NaN silently;
    _as_column_type's docstring promises a ValueError for a float beyond float64."""
    from convex_attention.bench.results import _as_column_type

    with pytest.raises(ValueError, match="total_ms"):
        _as_column_type("total_ms", "1e400")
    assert math.isnan(_as_column_type("total_ms", "inf")) and math.isnan(_as_column_type("total_ms", math.inf))


def test_factor_is_read_by_the_chain_rows_alone(tmp_path):
    """--factor shapes the chain's grids alone (structures.structure_graph): rows of a star measured with
    --factor 3 (as a sweep took before it refused the option without the chain, ca_rev114) resume at the
    default factor, and so does a resume over star alone; a chain row holds the folder to its factor."""
    w = sweep_writer(tmp_path, structures=("star",), factor=3)
    w.commit(bench_row(method="exact", structure="star"))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), structures=("star",)))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), structures=("star", "chain")))
    w2 = sweep_writer(tmp_path, resume=True, structures=("chain",), factor=3)
    w2.commit(bench_row(method="exact", structure="chain"))
    with pytest.raises(R.ResumeMismatch, match=r"--factor 3, this run asks for --factor 2"):
        R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), structures=("chain",)))
    R.check_resume_config(str(tmp_path), SweepConfig(sizes=(4,), levels=(2,), structures=("star",)))
    assert not R.run_reads_setting("factor", ("exact",), ("star", "axial"))
    assert R.run_reads_setting("factor", ("exact",), ("star", "chain")) and R.run_reads_setting("factor", ("exact",))
    assert R.reads_setting("factor", {"method": "exact"}) and not R.reads_setting("factor", {"method": "exact",
                                                                                          "structure": "star"})


# ---- ca_rev130 (strict xfail: review of 9ef579d)


def test_ca_rev130_a_resume_rewrites_the_rows_it_keeps_so_that_they_still_pass_their_checksum(tmp_path):
    """bench.csv whose rows hold a float in a shorter form than repr's with a checksum over that
    text (scale '2', as the version before _as_column_type wrote a row committed with scale=2; a
    'nan' or '1.50' does the same): read_rows accepts every row, a resume keeps them (done()),
    commits one new row, and writes the kept rows back as csv_field of the typed value ('2.0')
    beside the checksum read (over '2').  Expected: the file the writer leaves reads back whole.
    Observed: 'bench.csv line 2 (checksum mismatch: a value was cut off or edited)' and line 3:
    the next --resume drops the two finished rows and measures them again."""
    w = writer(tmp_path)
    w.commit(bench_row(method="softmax"))
    w.commit(bench_row(method="exact"))
    path = str(tmp_path / "bench.csv")
    rows, _ = R.read_rows(path, R.BENCH_SCHEMA)
    R.atomic_csv(path, R.COLUMNS, [{**r, "scale": "2"} for r in rows], checksum=True)
    assert R.read_rows(path, R.BENCH_SCHEMA)[1] == []  # every row passes its checksum
    resumed = writer(tmp_path, resume=True)
    assert len(resumed.done()) == 2
    resumed.commit(bench_row(method="softmax", size=8, scale=2.0))
    rows, problems = R.read_rows(path, R.BENCH_SCHEMA)
    assert problems == [] and len(rows) == 3


# ---- ca_rev131 (strict xfail: review of a83c028)


def _as_an_earlier_version_wrote(folder, csv_text: dict, json_value: dict) -> dict:
    """bench.csv's rows rewritten with the fields ``csv_text`` (text as an earlier version wrote it) and signed over
    them, bench.json's rows with ``json_value`` and those checksums; returns bench.json's record."""
    path = str(folder / "bench.csv")
    rows, _ = R.read_rows(path, R.BENCH_SCHEMA)
    R.atomic_csv(path, R.COLUMNS, [{**r, **csv_text} for r in rows], checksum=True)
    signed = {r["row_id"]: r["checksum"] for r in R.read_rows(path, R.BENCH_SCHEMA)[0]}
    record = json.loads((folder / "bench.json").read_text())
    record["rows"] = [{**r, **json_value, "checksum": signed[r["row_id"]]} for r in record["rows"]]
    (folder / "bench.json").write_text(json.dumps(record))
    return record


@contextlib.contextmanager
def _stopped_before_bench_json(monkeypatch):
    """Writes of bench.json raise KeyboardInterrupt (a SIGKILL after bench.csv's rename) while inside."""
    real = R.atomic_write_text

    def stopped(target, text):
        if target.endswith("bench.json"):
            raise KeyboardInterrupt
        return real(target, text)

    monkeypatch.setattr(R, "atomic_write_text", stopped)
    try:
        yield
    finally:
        monkeypatch.setattr(R, "atomic_write_text", real)


def test_ca_rev131_rows_re_signed_by_a_stopped_resume_are_not_counted_as_new_rows(tmp_path, monkeypatch):
    """A folder an earlier version wrote (scale as '2' in bench.csv, 2 in bench.json, each row's
    checksum over '2' in both): 2 rows, its run record rows=2.  A resume keeps both (signed again
    over '2.0'), commits one row, and is stopped after bench.csv's rename, before bench.json's
    (a SIGKILL there).  Expected (docs/results_format.md: bench.json's runs count the folder's
    rows; _earlier_runs adds the rows committed after bench.json): the next resume adds 1 row.
    Observed: every re-signed row's (row_id, checksum) is missing from bench.json, so it logs '3
    row(s) of bench.csv were committed after bench.json was last written' and records 5 rows."""
    w = writer(tmp_path)
    w.commit(bench_row(method="softmax"))
    w.commit(bench_row(method="exact"))
    _as_an_earlier_version_wrote(tmp_path, csv_text={"scale": "2"}, json_value={"scale": 2})
    resumed = writer(tmp_path, resume=True)
    with _stopped_before_bench_json(monkeypatch), pytest.raises(KeyboardInterrupt):
        resumed.commit(bench_row(method="softmax", size=8, scale=2.0))
    again = writer(tmp_path, resume=True)
    assert len(again.rows) == 3
    # the stopped run's row is its own (its run column says so; ca_rev139), in the record it wrote when it
    # started: it rewrote both files at once, its rows signed again (ca_rev167), as a renumbering resume does
    assert [(r.get("run"), r.get("rows"), r.get("recovered", False)) for r in again.runs] == [(1, 2, False),
                                                                                                (2, 1, False)]


# ---- ca_rev133 (strict xfail: review of f492f23)


def test_ca_rev133_rows_renumbered_by_a_stopped_resume_are_not_counted_as_new_rows(tmp_path, monkeypatch):
    """A folder an earlier resume wrote before cells were numbered per folder: two cells (size 4 and 8) both
    numbered 0 in bench.csv and bench.json, its run record rows=2.  A resume renumbers the size-8 row
    (_number_loaded_cells, re-signed) and rewrites the files at once; it is stopped after bench.csv's rename,
    before bench.json's.  Expected (docs/results_format.md: the runs count the folder's rows; _earlier_runs adds
    only rows committed after bench.json): the next resume keeps the count at 2.  Observed: 3 (the row's
    re-signed values differ from bench.json's in the cell column, and count as a new row)."""
    w = writer(tmp_path)
    w.commit(bench_row(method="exact"))
    w.commit(bench_row(method="exact", size=8))
    path = str(tmp_path / "bench.csv")
    record = _as_an_earlier_version_wrote(tmp_path, csv_text={"cell": 0}, json_value={"cell": 0})
    assert [r.get("rows") for r in record["runs"]] == [2]
    with _stopped_before_bench_json(monkeypatch), pytest.raises(KeyboardInterrupt):
        writer(tmp_path, resume=True)  # renumbered, and the files rewritten at once
    assert sorted(r["cell"] for r in R.read_rows(path, R.BENCH_SCHEMA)[0]) == [0, 1]
    again = writer(tmp_path, resume=True)
    assert len(again.rows) == 2
    assert [r.get("rows") for r in again.runs] == [2]


def test_each_row_records_the_run_that_measured_it_and_a_resume_keeps_the_numbers_of_the_rows_it_keeps(tmp_path):
    """Rows had recorded no run, so a ratio of two rows could divide the times of two runs
    unseen; each row now records its run, the number of its entry in bench.json's runs."""
    writer(tmp_path).commit(bench_row("exact"))
    second = writer(tmp_path, resume=True)
    second.commit(bench_row("dual"))
    rows = {r["method"]: r for r in R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0]}
    assert (rows["exact"]["run"], rows["dual"]["run"]) == (1, 2)
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert [r["run"] for r in stored["runs"]] == [1, 2]
    assert {r["method"]: r["run"] for r in stored["rows"]} == {"exact": 1, "dual": 2}
    # bench.json's runs lost (an older file, a hand edit): the next run's number is still past every kept row's
    (tmp_path / "bench.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "runs"}))
    third = writer(tmp_path, resume=True)
    assert third.runs == [] and third.run == 3


def test_a_bench_csv_written_before_rows_recorded_their_run_is_read_and_resumed(tmp_path):
    """A folder written before the run column existed is read (its rows' run empty); a resume
    rewrites it with the column, and its own rows get a number no earlier row has."""
    writer(tmp_path).commit(bench_row("exact"))
    older = [c for c in COLUMNS if c != "run"]
    table = read_table(str(tmp_path / "bench.csv"))
    lines = [",".join(older)]
    for raw in table.rows:
        fields = [raw[c] for c in older[:-1]]
        lines.append(",".join([*fields, R.row_checksum(fields)]))
    (tmp_path / "bench.csv").write_text("\n".join(lines) + "\n")
    rows, problems = R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)
    assert problems == [] and [r["run"] for r in rows] == [None]
    again = writer(tmp_path, resume=True)
    assert [r["run"] for r in again.rows] == [None] and again.run == 2  # bench.json records one run before
    again.commit(bench_row("dual"))
    assert read_table(str(tmp_path / "bench.csv")).header == COLUMNS
    rows = {r["method"]: r["run"] for r in R.read_rows(str(tmp_path / "bench.csv"), R.BENCH_SCHEMA)[0]}
    assert rows == {"exact": None, "dual": 2}


# ---- ca_rev139 (strict xfail: review of 3de4598)

def test_ca_rev139_every_rows_run_has_its_entry_in_runs_after_a_run_killed_on_its_first_commit(tmp_path):
    """Run 1 commits a row; run 2 (a resume) commits one and is killed between the renames of bench.csv and
    bench.json (bench.json as before: runs [1]).  Resume 3 then commits one.  Expected: bench.json's runs hold
    an entry for every row's run (docs/results_format.md: a row's run is 'the run of its entry in bench.json's
    runs'), run 2's row counted to run 2.  Observed: runs [(1, rows 2), (3, rows 1)]: the row recording run 2
    has no entry, and _earlier_runs adds it to run 1's rows."""
    writer(tmp_path).commit(bench_row("exact"))
    before = (tmp_path / "bench.json").read_text()
    writer(tmp_path, resume=True).commit(bench_row("softmax"))
    (tmp_path / "bench.json").write_text(before)  # killed between bench.csv's rename and bench.json's
    writer(tmp_path, resume=True).commit(bench_row("dual"))
    stored = json.loads((tmp_path / "bench.json").read_text())
    runs = {r.get("run"): r.get("rows") for r in stored["runs"]}
    assert {r["run"] for r in stored["rows"]} <= set(runs), (runs, [r["run"] for r in stored["rows"]])
    assert runs[1] == 1


def test_ca_rev139_a_resume_of_an_older_folder_that_commits_nothing_leaves_the_two_files_agreeing(tmp_path):
    """A folder written before rows recorded their run (bench.csv and bench.json without `run`), resumed by
    `bench --resume` with its options (nothing left to measure: the sweep only calls set_extra(targets=...)).
    Expected: bench.json's `columns` are bench.csv's and each row's checksum in bench.json is the one in
    bench.csv ('rows: the rows of bench.csv as objects').  Observed (the CLI, FAST options): bench.json lists
    `run` and holds re-signed checksums ('7c52016e' for bench.csv's '8380e9eb'); bench.csv keeps the old header."""
    writer(tmp_path).commit(bench_row("exact"))
    older = [c for c in COLUMNS if c != "run"]
    raw = read_table(str(tmp_path / "bench.csv")).rows[0]
    fields = [raw[c] for c in older[:-1]]
    (tmp_path / "bench.csv").write_text(",".join(older) + "\n" + ",".join([*fields, R.row_checksum(fields)]) + "\n")
    stored = json.loads((tmp_path / "bench.json").read_text())
    stored["columns"] = older
    stored["rows"] = [{**{k: v for k, v in r.items() if k != "run"}, "checksum": R.row_checksum(fields)}
                      for r in stored["rows"]]
    stored["runs"] = [{k: v for k, v in r.items() if k != "run"} for r in stored["runs"]]
    (tmp_path / "bench.json").write_text(json.dumps(stored))
    writer(tmp_path, resume=True).set_extra(targets=[])  # a resume with nothing left to measure
    table = read_table(str(tmp_path / "bench.csv"))
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert tuple(stored["columns"]) == tuple(table.header)
    assert [r["checksum"] for r in stored["rows"]] == [r["checksum"] for r in table.rows]


# ---- ca_rev167 (review of d03eab2; its strict xfails now pass)

def test_ca_rev167_a_bench_json_row_whose_row_id_is_not_text_does_not_crash_a_resume(tmp_path):
    """Run: a folder with one committed row; bench.json edited by hand so that the row's row_id is
    ["<its id>"] (a list); then a resume (ResultsWriter(resume=True), as `bench --resume` makes it).
    Expected: bench.json is read as a record (docs/results_format.md: what cannot be read is reported, the
    command fails in one line); a row it holds that cannot be matched is not held.  Observed: TypeError
    "unhashable type: 'list'" from Counter(_signed_again(r) ...) in _earlier_runs: `bench --resume` into
    that folder ends in a traceback (exit 1)."""
    writer(tmp_path).commit(bench_row("exact"))
    stored = json.loads((tmp_path / "bench.json").read_text())
    stored["rows"][0]["row_id"] = [stored["rows"][0]["row_id"]]
    (tmp_path / "bench.json").write_text(json.dumps(stored))
    resumed = writer(tmp_path, resume=True)
    assert [r["method"] for r in resumed.rows] == ["exact"]


def test_ca_rev167_a_checkpoint_digest_that_is_not_text_is_refused_in_words(tmp_path):
    """Run: a folder of rows measured with --generator model --checkpoint FILE; bench.json's
    inputs.checkpoint_sha256 edited by hand to a number; check_resume_config with the same settings (what
    `bench --resume` runs before any work).  Expected: ResumeMismatch (a ValueError the command prints as one
    line, exit 2): the recorded digest is not the file's.  Observed: TypeError "'int' object is not
    subscriptable" from inputs['checkpoint_sha256'][:12] in the message: a traceback."""
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    config = {"generator": "model", "checkpoint": str(checkpoint), "sizes": [4]}
    R.ResultsWriter(str(tmp_path), config, "cpu", False, log=lambda m: None).commit(bench_row(generator="model"))
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert isinstance(stored["inputs"]["checkpoint_sha256"], str)
    stored["inputs"]["checkpoint_sha256"] = 12345
    (tmp_path / "bench.json").write_text(json.dumps(stored))
    with pytest.raises(R.ResumeMismatch):
        R.check_resume_config(str(tmp_path), config)


def test_ca_rev167_a_resume_that_commits_nothing_keeps_bench_json_checksums_those_of_bench_csv(tmp_path):
    """Run: a folder an earlier version wrote (scale as '2' in bench.csv, each row signed over that text, as in
    ca_rev130), resumed by `bench --resume` with nothing left to measure (the sweep calls only set_extra).
    Expected: bench.json's rows are 'the rows of bench.csv as objects' (docs/results_format.md), their checksums
    bench.csv's, as ca_rev139 made them for a bench.csv without the run column.  Observed: _load re-signs the
    kept rows over '2.0' but rewrites bench.csv only for dropped, renumbered or run-less rows; set_extra writes
    bench.json with the new checksums beside bench.csv's old ones (e.g. '1abd62e8' for '4b3e0d41')."""
    w = writer(tmp_path)
    w.commit(bench_row(method="softmax"))
    w.commit(bench_row(method="exact"))
    _as_an_earlier_version_wrote(tmp_path, csv_text={"scale": "2"}, json_value={"scale": 2})
    writer(tmp_path, resume=True).set_extra(targets=[])
    table = read_table(str(tmp_path / "bench.csv"))
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert [r["checksum"] for r in stored["rows"]] == [r["checksum"] for r in table.rows]


def test_ca_rev167_an_empty_bench_csv_is_not_said_to_hold_a_row(tmp_path):
    """Run: a folder whose bench.csv is an empty file (0 bytes), `bench` into it without --resume or
    --overwrite (check_start_over).  Expected: whatever the decision, the message does not invent rows: the file
    holds none.  Observed: existing_rows counts read_rows' problem 'bench.csv: the file is empty' as a row, and
    the refusal says '... holds 1 row(s) of an earlier bench (0 finished) in bench.csv'."""
    (tmp_path / "bench.csv").write_bytes(b"")
    assert R.existing_rows(str(tmp_path))[0] == 0


# ---- ca_rev192 (review of 43f3e12; its strict xfails now pass)


def test_ca_rev192_resume_names_a_broken_history_once_and_by_its_own_reason(tmp_path):
    """Run: a dual row committed with a 3-row history, line 3 of convergence.csv (iteration 1) deleted, then
    ``ResultsWriter(resume=True)``.  Expected (as at c2c898e): one line saying the dual row of cell 0 has an
    incomplete history '(2 rows whose iterations are not 0 to 1)'.  Observed: committed_histories (1ca0b7f) now
    drops that history itself and says so, and _drop_incomplete_histories then finds no rows left and adds
    '... has an incomplete history (no rows)': two lines for one history, the second's reason false."""
    w = writer(tmp_path)
    w.commit(bench_row(method="dual"), convergence=conv_rows(3))
    _damage(tmp_path / "convergence.csv", 3, "delete")
    logged: list = []
    writer(tmp_path, resume=True, log=logged.append)
    about = [m for m in logged if "cell 0" in m]
    assert len(about) == 1 and "not 0 to 1" in about[0] and "no rows" not in about[0], logged


# ---- ca_rev201 (mutation review of e81e843)

def test_ca_rev201_a_timed_apart_note_appended_after_another_reason_is_still_read():
    """Kills `TIMED_APART in reason` -> `reason.startswith(TIMED_APART)` in timed_apart: the sweep appends
    the note after a row's own reason (the amortised dual's 'trained on ...'), and that row's cost must
    still count as measured apart (targets.amortised_targets forms no ratio from it)."""
    from convex_attention.bench.targets import amortised_targets

    reason = (f"trained on 8 training instances; {R.TIMED_APART} the cell's other methods (their interleaved run "
              f"failed: RuntimeError: boom)")
    assert R.timed_apart({"reason": reason}) and not R.timed_apart({"reason": "trained on 8 training instances"})
    common = {"method": "learned_dual", "backend": "", "status": "ok", "generator": "lesion", "scale": 1.0, "dims": 2,
              "size": 8, "levels": 2, "batch": 8, "temperature": 1.0, "dtype": "float32", "device": "cpu", "seed": 0,
              "run": 1, "per_sample_ms": 1.0}
    rows = [{**common, "dual_kind": "zero", "violation_mean": 0.1},
            {**common, "dual_kind": "amortised", "violation_mean": 0.0001, "reason": reason},
            {**common, "method": "exact", "dual_kind": "", "violation_mean": 0.0, "per_sample_ms": 0.5}]
    assert math.isnan(amortised_targets(rows)[0]["time_vs_exact"])


def test_ca_rev201_a_run_recorded_as_a_bool_is_no_run():
    """Kills dropping `not isinstance(run, bool)` in run_of: `true` in bench.json would be run 1
    (True == 1), and an amortised cost would divide times of rows that name no run alike."""
    assert R.run_of({"run": True}) is None and R.run_of({"run": False}) is None
    assert R.run_of({"run": 1}) == 1 and R.run_of({"run": "1"}) is None and R.run_of({}) is None


# ---- ca_rev205 (mutation review of 5a01ce8)


def test_ca_rev205_a_row_measured_again_after_an_incomplete_history_is_done_at_once(tmp_path):
    """Kills ``self._redo.discard`` dropped from commit: the row committed again stayed outside done(), so a
    later retry in the same run measured and timed it a second time."""
    writer(tmp_path).commit(bench_row(method="dual"), convergence=conv_rows(3))
    (tmp_path / "convergence.csv").write_text(",".join(CONVERGENCE_COLUMNS) + "\n")
    again = writer(tmp_path, resume=True)
    key = R.row_key(bench_row(method="dual"))
    assert key not in again.done()
    again.commit(bench_row(method="dual"), convergence=conv_rows(3))
    assert key in again.done()


def test_ca_rev205_a_run_numbers_itself_past_every_run_an_older_bench_json_records(tmp_path):
    """Kills ``len(self.runs)`` dropped from the run's number: runs recorded without their number (an older
    bench.json) and rows without a run gave the next run number 1, that of a recorded run."""
    writer(tmp_path).commit(bench_row("exact"))
    data = json.loads((tmp_path / "bench.json").read_text())
    data["runs"] = [{k: v for k, v in r.items() if k != "run"} for r in data["runs"] * 2]
    data["rows"] = [{k: v for k, v in r.items() if k != "run"} for r in data["rows"]]
    (tmp_path / "bench.json").write_text(json.dumps(data))
    older = [c for c in COLUMNS if c != "run"]
    raw = read_table(str(tmp_path / "bench.csv")).rows[0]
    fields = [raw[c] for c in older[:-1]]
    (tmp_path / "bench.csv").write_text(",".join(older) + "\n" + ",".join([*fields, R.row_checksum(fields)]) + "\n")
    assert writer(tmp_path, resume=True).run == 3


# ---- ca_rev227 (results_format.md audit): column order, the JSON rows' dtypes, the committed JSON files


@pytest.mark.parametrize("heading, columns", [
    ("## `bench.csv`", COLUMNS),
    ("## `convergence.csv`", CONVERGENCE_COLUMNS),
    ("## `verify.csv`", VERIFY_COLUMNS),
])
def test_ca_rev227_the_documented_columns_are_in_the_written_order(heading, columns):
    """The tables of docs/results_format.md list the columns in the order the header has them (the test above
    compares them as sets: a swapped pair went unnoticed)."""
    assert list(dict.fromkeys(_documented_columns(heading))) == list(columns)


def test_ca_rev227_bench_json_rows_take_the_csv_dtypes(tmp_path):
    """results_format.md gives pandas' reading of bench.json's rows; a numeric column that is null in every row
    (estimate_s in a sweep without cvxpylayers) comes back as object there.  PANDAS_DTYPES types those rows as
    it types bench.csv: every numeric column numeric."""
    pd = pytest.importorskip("pandas")
    w = writer(tmp_path)
    w.commit(bench_row(value=float("nan")))
    w.commit(bench_row(method="softmax", value=0.3))
    frame = pd.DataFrame(pd.read_json(str(tmp_path / "bench.json"), typ="series")["rows"])
    assert list(frame.columns) == list(COLUMNS)
    typed = frame.astype(R.PANDAS_DTYPES["bench.csv"])
    numeric = [c for c, t in R.PANDAS_DTYPES["bench.csv"].items() if t != "string"]
    assert [c for c in numeric if not pd.api.types.is_numeric_dtype(typed[c].dtype)] == []
    assert typed["estimate_s"].isna().all() and typed["size"].dtype == "Int64"


def test_ca_rev227_every_committed_json_file_is_strict_json():
    """results_format.md, *Strict JSON*: NaN and ±Inf are written as null, so json.loads with a parse_constant
    that refuses them reads every JSON file, the committed ones under docs/results/ included (and each line of a
    .jsonl)."""
    root = Path(__file__).resolve().parents[1] / "docs" / "results"

    def refuse(name):
        raise ValueError(f"non-strict constant {name}")

    paths = sorted(p for p in root.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
    assert paths, "no committed JSON file found"
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for chunk in (text.splitlines() if path.suffix == ".jsonl" else [text]):
            if chunk.strip():
                json.loads(chunk, parse_constant=refuse)


# ---- ca_rev250 (hand-edited files probe)


def test_ca_rev250_bench_json_linked_to_a_device_is_not_read(tmp_path):
    """bench.json a link to /dev/zero: stored_config/stored_targets read it without end."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    (tmp_path / "bench.json").symlink_to("/dev/zero")
    assert R.stored_config(str(tmp_path)) is None and R.stored_targets(str(tmp_path)) == []


# ---- ca_rev253 (crash and resume probe)

def test_ca_rev253_a_resume_with_nothing_to_measure_keeps_warmup_s(tmp_path):
    """Run: bench --out F (finishes), then the same bench --resume --out F (nothing left: no warm-up runs).
    Expected: bench.json keeps the warm-up time it recorded. Observed: warmup_s vanished from bench.json
    (the resume's writer started with no extras and rewrote the file)."""
    w = sweep_writer(tmp_path)
    w.commit(bench_row())
    w.set_extra(warmup_s=0.25)
    w2 = sweep_writer(tmp_path, resume=True)
    w2.set_extra(targets=[], cvx_backends=[])  # what the sweep's end writes
    assert strict_load(str(tmp_path / "bench.json")).get("warmup_s") == 0.25


def test_ca_rev253_a_resume_refuses_a_read_only_result_file(tmp_path):
    """Run: chmod a-w F/bench.csv; bench ... --resume --out F (the grid grown). Expected: refused (exit 2) naming
    the file, as a dangling link is. Observed: the first commit renamed a writable (0644) bench.csv over it."""
    w = sweep_writer(tmp_path)
    w.commit(bench_row())
    csv_path = tmp_path / "bench.csv"
    before = csv_path.read_bytes()
    csv_path.chmod(0o444)
    try:
        with pytest.raises(R.FinishedRows, match="bench.csv read-only"):
            R.check_start_over(str(tmp_path), True, False)
        R.check_start_over(str(tmp_path), False, True)  # --overwrite is the consent to replace it
        assert csv_path.read_bytes() == before and not csv_path.stat().st_mode & 0o222
    finally:
        csv_path.chmod(0o644)
