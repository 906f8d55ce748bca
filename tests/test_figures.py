"""convex_attention.io.figures: the figure style, the environment line and save (PNG and PDF)."""
import os
import warnings

import matplotlib.pyplot as plt
import pytest

from convex_attention.io import figures


def test_env_line():
    env_line = figures.env_line
    assert "torch 2.13.0" in env_line({"torch": "2.13.0", "processor": "AMD", "torch_threads": 2})
    assert env_line(None) == ""
    assert "$" not in env_line({"torch": "$x$", "processor": "a"}).replace(r"\$", "")  # no mathtext from a file


def test_the_footer_says_the_load_threads_and_notes_and_what_was_not_recorded():
    env = {"torch": "2.13.0", "processor": "AMD", "torch_threads": 1}
    line = figures.env_line(env, ["computed in float32"])
    assert "1 torch thread " in line and "1 threads" not in line
    assert "load average not recorded" in line  # an older record: said, never invented
    assert line.splitlines()[-1] == "computed in float32"
    runs = [{"load_average_start": [2.45, 2.0, 1.0], "load_average_end": [1.2, 1.0, 1.0], "torch_threads": 1,
             "cpu_count": 2}]
    assert "load average (1 min) 2.45 at start, 1.20 at end, 2 CPUs" in figures.env_line({**env, "runs": runs})
    two = figures.env_line({**env, "runs": runs * 2})
    assert "start → end of each of 2 runs: 2.45 → 1.20, 2.45 → 1.20" in two
    assert "torch threads not recorded" in figures.env_line({"torch": "2.13.0"})
    assert figures.env_line(None, ["float64"]) == "environment not recorded\nfloat64"
    long = figures.env_line(env, ["x" * 60] * 6)
    assert all(len(t) <= figures.FOOTER_CHARS for t in long.splitlines())  # never wider than the figure


def test_sci_and_plain_are_safe_to_draw():
    assert figures.sci(3.2e-4) == r"3.2\times10^{-4}" and figures.sci(9.99e-5) == r"1.0\times10^{-4}"
    assert figures.sci(0) == "0" and figures.sci(12.5) == "12.5" and figures.sci(-3.2e-4) == r"-3.2\times10^{-4}"
    assert figures.plain("x" * 10, 10) == "x" * 10  # a text of exactly the limit is kept whole
    assert figures.plain("a$b$" + "x" * 100, 10) == "a\\$b\\$xxxxx…" and "\n" not in figures.plain("a\nb")


@pytest.mark.slow  # renders a figure at 300 dpi and as PDF (~0.4 s)
def test_save_writes_png_and_pdf_with_the_footer_below_everything(tmp_path):

    env = {"torch": "2.13.0", "processor": "cpu", "torch_threads": 1}
    with plt.rc_context(figures.STYLE):  # as every figure of both wings is drawn and saved
        fig, ax = plt.subplots(figsize=(figures.HALF_WIDTH, 2))
        ax.plot([1, 2], [3, 4])
        ax.set_title("λ = 0")
        path = figures.save(fig, str(tmp_path / "f.png"), env)
    assert os.path.getsize(path) > 1000 and os.path.getsize(tmp_path / "f.pdf") > 1000
    # the PDF embeds its fonts as TrueType, not Type 3 bitmaps (which many venues refuse)
    assert b"/Subtype /Type3" not in (tmp_path / "f.pdf").read_bytes()
    (footer,) = [t for t in fig.texts if t.get_text() == figures.env_line(env)]
    assert footer.get_position()[1] < 0  # below the axes and their labels
    assert footer.get_window_extent().y1 < ax.get_tightbbox().y0  # it covers none of them


def test_the_footer_wraps_every_caveat_and_never_cuts_one():
    """A review found the environment line cut at 200 characters: the load of a resumed folder's
    later runs (its caveats) fell off the figure."""
    runs = [{"load_average_start": [1.0 + i, 1.0, 1.0], "load_average_end": [1.5 + i, 1.0, 1.0], "torch_threads": 1,
             "cpu_count": 2} for i in range(6)]
    env = {"torch": "2.13.0", "processor": "Intel(R) Xeon(R) Platinum 8480+ processor " * 2, "torch_threads": 1,
           "gpu": "NVIDIA H200 (139 GiB)", "runs": runs}
    notes = [f"note {i}: " + "caveat " * 40 + f"end of note {i}" for i in range(3)]
    line = figures.env_line(env, notes)
    flat = line.replace("\n", " ")
    assert "6.00 → 6.50, 2 CPUs" in flat and "NVIDIA H200" in flat  # the last run's load, and what followed
    assert all(f"end of note {i}" in flat for i in range(3))
    assert all(len(t) <= figures.FOOTER_CHARS for t in line.splitlines())
    many = figures.env_line({**env, "runs": runs * 3})  # more runs than a line can list: their range
    assert "over 18 runs: at start 1.00–6.00, at end 1.50–6.50, 2 CPUs" in many.replace("\n", " ")


def _log_axis_over(values):
    fig, ax = plt.subplots(layout="constrained")
    ax.plot([0, 1], values)
    ax.set_yscale("log")
    return fig


def test_a_figure_drawn_over_an_absurd_log_axis_is_refused_and_only_its_own_figures_closed():
    mine = plt.figure()  # the user's own figure, open before: left open
    before = plt.get_fignums()
    try:
        with pytest.raises(figures.FigureLayoutError, match="could not lay it out"), warnings.catch_warnings():
            warnings.simplefilter("error")  # matplotlib's own warnings do not leak past the guard
            with figures.layout_guard():
                _log_axis_over([1e-300, 1e300])  # its autoscale overflows: the axis shows 1 to 10, not the data
        assert plt.get_fignums() == before and mine.number in before
    finally:
        plt.close(mine)


def test_save_writes_nothing_of_a_figure_whose_layout_fails(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # built outside any guard: save's own guard is under test
        fig = _log_axis_over([1e-3, 1e3])
        fig.axes[0].set_ylim(1e-300, 1e300)  # its tick labels overflow when laid out
    with pytest.raises(figures.FigureLayoutError):
        figures.save(fig, str(tmp_path / "absurd.png"), notes=["float64"])
    assert os.listdir(tmp_path) == [] and not plt.fignum_exists(fig.number)


@pytest.mark.slow  # renders a figure at 300 dpi and as PDF (~0.7 s)
def test_the_guard_passes_other_warnings_on_and_lets_a_drawable_figure_be_saved(tmp_path):
    with pytest.warns(UserWarning, match="unrelated"), figures.layout_guard():
        warnings.warn("unrelated", UserWarning, stacklevel=1)
        path = figures.save(_log_axis_over([1e-3, 1e3]), str(tmp_path / "fine.png"))
    assert os.path.exists(path) and os.path.exists(tmp_path / "fine.pdf")


@pytest.mark.slow  # renders a crowded figure at 300 dpi and as PDF (~1 s)
def test_a_crowded_figure_is_written_with_matplotlibs_warning_not_refused(tmp_path):
    """A layout matplotlib gives up on (panels too narrow for their labels) is not an axis
    over hundreds of decades: the figure is written, and matplotlib's warning reaches the caller."""
    fig, axes = plt.subplots(1, 8, figsize=(3, 2), layout="constrained")
    for ax in axes:
        ax.set_ylabel("a long label " * 3)
        ax.plot([1, 2], [1, 2])
    with pytest.warns(UserWarning, match="collapsed"), figures.layout_guard():
        figures.save(fig, str(tmp_path / "crowded.png"), notes=["float64"])
    assert sorted(os.listdir(tmp_path)) == ["crowded.pdf", "crowded.png"]


def test_the_guard_leaves_other_warnings_to_the_callers_filters_and_closes_its_figures_on_any_error():
    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caller's own filter: an error where it is raised
        with pytest.raises(UserWarning, match="boom"), figures.layout_guard():
            plt.figure()
            warnings.warn("boom", UserWarning, stacklevel=1)
            pytest.fail("the warning did not stop the body")
    assert plt.get_fignums() == before
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="quiet")  # and silenced where the caller silences it
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("ignore")
            warnings.filterwarnings("always", message="loud")
            with figures.layout_guard():
                warnings.warn("quiet", UserWarning, stacklevel=1)
                warnings.warn("loud", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["loud"]


def _tiny_figure():
    fig, ax = plt.subplots(figsize=(1, 0.6))
    ax.plot([1, 2], [3, 4])
    return fig


def test_save_writes_a_300_dpi_png_no_wider_than_a_paper_into_a_new_folder_and_closes_the_figure(tmp_path):
    from PIL import Image

    env = {"torch": "2.13.0", "processor": "Intel(R) Xeon(R) Platinum 8480+ processor", "torch_threads": 1}
    notes = ["computed in float32 " * 30]  # a footer of several full lines: as wide as a footer gets
    fig = _tiny_figure()
    path = figures.save(fig, str(tmp_path / "new" / "f.png"), env, notes)
    assert sorted(os.listdir(tmp_path / "new")) == ["f.pdf", "f.png"] and not plt.fignum_exists(fig.number)
    assert (tmp_path / "new" / "f.pdf").read_bytes().startswith(b"%PDF")
    with Image.open(path) as png:
        assert [round(d) for d in png.info["dpi"]] == [300, 300]
        assert png.size[0] / 300 <= figures.FULL_WIDTH  # the footer never widens a figure past a paper's width


def test_a_figure_whose_pdf_fails_replaces_neither_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    for name in ("f.png", "f.pdf"):
        (tmp_path / name).write_bytes(b"the earlier figure")
    fig = _tiny_figure()
    real = fig.savefig

    def full_disk(name, **kwargs):
        if kwargs.get("format") == "pdf":
            raise OSError("No space left on device")
        return real(name, **kwargs)

    monkeypatch.setattr(fig, "savefig", full_disk)
    with pytest.raises(OSError, match="No space"):
        figures.save(fig, str(tmp_path / "f.png"), notes=["float64"])
    # both written or neither: never a new PNG beside the PDF of another figure
    assert sorted(os.listdir(tmp_path)) == ["f.pdf", "f.png"] and not plt.fignum_exists(fig.number)
    assert all((tmp_path / name).read_bytes() == b"the earlier figure" for name in ("f.png", "f.pdf"))


def test_a_link_at_the_figures_name_is_replaced_and_its_target_never_written(tmp_path):
    (tmp_path / "mine.png").write_bytes(b"the user's own file")
    os.symlink(tmp_path / "mine.png", tmp_path / "f.png")
    figures.save(_tiny_figure(), str(tmp_path / "f.png"))
    assert (tmp_path / "mine.png").read_bytes() == b"the user's own file"
    assert not os.path.islink(tmp_path / "f.png") and (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_the_guard_refuses_an_overflowing_tick_formatter_and_passes_the_callers_other_runtime_warnings_on():
    before = plt.get_fignums()
    with pytest.raises(figures.FigureLayoutError, match="could not lay it out"), figures.layout_guard():
        plt.figure()
        raise OverflowError("int too large to convert to float")  # what a tick formatter raises
    assert plt.get_fignums() == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caller's own filter: not an axis over hundreds of decades
        with pytest.raises(RuntimeWarning, match="divide by zero"), figures.layout_guard():
            warnings.warn("divide by zero encountered in log", RuntimeWarning, stacklevel=1)


def test_exactly_listed_runs_are_listed_one_by_one_and_one_more_gives_the_range():
    def runs(n):
        return [{"load_average_start": [float(i), 1.0, 1.0], "load_average_end": [i + 0.5, 1.0, 1.0]} for i in range(n)]

    listed = figures.env_line({"torch": "2", "runs": runs(figures.LISTED_RUNS)}).replace("\n", " ")
    assert f"start → end of each of {figures.LISTED_RUNS} runs" in listed
    assert all(f"{i:.2f} → {i + 0.5:.2f}" in listed for i in range(figures.LISTED_RUNS))
    more = figures.env_line({"torch": "2", "runs": runs(figures.LISTED_RUNS + 1)}).replace("\n", " ")
    assert f"over {figures.LISTED_RUNS + 1} runs: at start 0.00–{figures.LISTED_RUNS:.2f}," in more


def test_a_partial_or_damaged_run_record_is_said_to_be_so_never_invented_and_bounded():
    env = {"torch": "2.13.0", "torch_threads": 4}
    assert "load average not recorded" in figures.env_line({**env, "runs": []})
    runs = [{"torch_threads": 1, "load_average_start": ["high"], "load_average_end": []},
            "not a run", {"torch_threads": 1, "cpu_count": "9" * 50, "load_average_start": [0.5]}]
    line = figures.env_line({**env, "runs": runs}).replace("\n", " ")
    # the runs' own threads (one each, said in the singular), their unreadable loads as "?", and
    # the first CPU count recorded, bounded as every value read from a file
    assert "· 1 torch thread ·" in line and "of 2 runs: ? → ?, 0.50 → ?" in line
    assert "9" * 12 not in line and "CPUs" in line
    many = [{"load_average_end": [float(i)]} for i in range(figures.LISTED_RUNS)] + [{}]
    line = figures.env_line({**env, "runs": many}).replace("\n", " ")
    assert (f"at start not recorded, at end 0.00–{figures.LISTED_RUNS - 1:.2f} (1 not recorded)" in line)


def test_a_run_record_with_no_readable_run_says_the_load_was_not_recorded():
    """Found by mutation testing: runs that are all damaged gave 'start → end of each of 0 runs:'."""
    line = figures.env_line({"torch": "2.13.0", "runs": ["junk"]})
    assert "load average not recorded" in line and "0 runs" not in line


def test_every_value_read_from_a_file_is_bounded_and_a_null_one_left_out():
    line = figures.env_line({"torch": "9" * 500, "processor": None, "gpu": None, "torch_threads": 1})
    assert line.startswith("torch 999") and len(line) < 200 and "None" not in line


def test_an_environment_that_is_no_object_is_not_recorded_and_empty_notes_add_nothing():
    assert figures.env_line(["not", "an", "object"], ["", "float64"]) == "environment not recorded\nfloat64"


def test_sci_never_gives_pythons_e_notation():
    """Found by mutation testing: 999.5 <= |x| < 10000 gave Python's '1.23e+03' in mathtext labels."""
    for x in (1234.5, -2500.0, 999.7, 5000.0):
        assert "e+" not in figures.sci(x), x
    assert figures.sci(1234.5) == r"1.2\times10^{3}" and figures.sci(-2500.0) == r"-2.5\times10^{3}"
    assert figures.sci(999.7) == r"1.0\times10^{3}" and figures.sci(123.4) == "123"  # plain where Python is


# ----------------------------------------------------------------------------- review 42

def test_rev42_save_syncs_each_file_to_disk_before_renaming_it_over_the_target(tmp_path, monkeypatch):
    synced: list = []
    renamed: list = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real_fsync(fd)

    def replace(src, dst):
        renamed.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    figures.save(_tiny_figure(), str(tmp_path / "f.png"))
    assert [os.path.basename(dst) for _, dst in renamed] == ["f.png", "f.pdf"]
    assert sorted(os.path.basename(s) for s in synced) == sorted(os.path.basename(src) for src, _ in renamed), \
        "each temporary file is synced before it is renamed over its target"


# ---- ca_rev118 (strict xfail: review of c09fa87)


def test_ca_rev118_a_run_record_of_the_wrong_type_is_no_traceback():
    """Ran env_line on an environment whose runs[0].torch_threads is [1] (bench.json edited
    by hand; `convex-attention plot` on such a folder ends in the same traceback, exit 1).
    Expected: a footer (the threads said as not readable, or the value shown).  Observed:
    TypeError: unhashable type: 'list' from the set of the runs' threads."""
    runs = [{"torch_threads": [1], "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [1.0, 1.0, 1.0]}]
    line = figures.env_line({"torch": "2.13.0", "processor": "cpu", "torch_threads": 1, "runs": runs})
    assert "torch 2.13.0" in line


# ---- ca_rev243 (review of the upsampled copy, cpu_capability, the ceiling)

def test_the_footer_names_the_cpu_kernels_a_cpu_run_was_timed_on():
    """One processor name ("AMD EPYC") covers CPUs with and without AVX-512: the committed
    bench_core figures timed on AVX512 and on AVX2 kernels had read the same.  A GPU run's footer
    names its GPU instead, and an older file, which records no kernels, names none."""
    env = {"torch": "2.13.0", "processor": "AMD EPYC", "torch_threads": 1, "cpu_capability": "AVX2"}
    assert "AMD EPYC · AVX2 kernels · 1 torch thread" in figures.env_line(env)
    assert "kernels" not in figures.env_line({**env, "gpu": "NVIDIA H100"})
    assert "kernels" not in figures.env_line({k: v for k, v in env.items() if k != "cpu_capability"})
    assert "$" not in figures.env_line({**env, "cpu_capability": "$x$"}).replace(r"\$", "")


# ---- ca_rev250 (hand-edited files probe)


@pytest.mark.parametrize("load", [10 ** 400, float("inf"), float("nan"), -3, True, "2.5", [1.0]])
def test_ca_rev250_footer_draws_no_impossible_load_average(load):
    """A load average bench.json cannot hold (1 and 400 zeros: OverflowError, reported as an axis
    overflow of every figure; inf, -3, true drawn as 'inf', '-3.00', '1.00') reads '?'."""
    env = {"torch": "2", "processor": "AMD", "runs": [{"load_average_start": [load], "load_average_end": [0.5]}]}
    assert "load average (1 min) ? at start, 0.50 at end" in figures.env_line(env)


@pytest.mark.parametrize("count", [True, 0, -2, 1.5, 10 ** 400])
def test_ca_rev250_footer_names_no_impossible_cpu_or_thread_count(count):
    env = {"torch": "2", "torch_threads": count, "runs": [{"cpu_count": count, "load_average_start": [1.0]}]}
    line = figures.env_line(env)
    assert "CPUs" not in line and "? torch threads" in line
    assert "2 CPUs" in figures.env_line({"torch": "2", "runs": [{"cpu_count": 2}]})


# ---- ca_rev274 (hostile review of the figures)

def test_ca_rev274_runs_of_several_thread_counts_read_as_counts_not_a_fraction():
    """Two runs into one folder, with 1 and with 2 torch threads: the footer read '1/2 torch threads' (half a
    thread); 10 sorted before 2 as text."""
    runs = [{"torch_threads": t, "load_average_start": [1.0], "load_average_end": [1.0]} for t in (10, 2, 1)]
    line = figures.env_line({"torch": "2.13.0", "processor": "AMD", "torch_threads": 2, "runs": runs})
    assert "1 or 2 or 10 torch threads (the runs differ)" in line and "/" not in line
    one = figures.env_line({"torch": "2.13.0", "processor": "AMD", "runs": runs[2:]})
    assert "· 1 torch thread ·" in one and "differ" not in one
