"""SIGTERM ends a command as Ctrl-C does (convex_attention.cli._signals)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from convex_attention import cli
from convex_attention.cli import _signals
from convex_attention.cli._signals import Terminated, terminated

FAST = ["--methods", "exact", "softmax", "--sizes", "4", "--levels", "2", "--batch", "2", "--repeats", "2",
        "--warmup", "1", "--no-progress", "--device", "cpu"]
MESSAGE = ("convex-attention bench: terminated (SIGTERM); the rows finished so far are kept (rerun with --resume to "
           "measure the rest)")


def _bench_with(monkeypatch, tmp_path, capsys, sweep_instead) -> tuple[int, str]:
    """``bench`` whose sweep is ``sweep_instead``: its exit status and stderr."""
    from convex_attention.bench import sweep

    monkeypatch.setattr(sweep, "run_sweep", sweep_instead)
    status = cli.main(["bench", *FAST, "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r" / "results.lock").exists()  # released
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command
    return status, capsys.readouterr().err.strip()


def _swallow_a_sigterm() -> None:
    """SIGTERM, its Terminated swallowed, as Python does where it cannot raise (an at-fork
    callback, a ``__del__``)."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    except Terminated:
        pass


def test_sigterm_ends_a_command_as_ctrl_c_does_with_status_143(tmp_path, capsys, monkeypatch):
    """Before: SIGTERM killed bench on the spot, nothing on stderr, its results.lock left."""
    def terminated_sweep(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at once, in this (the main) thread
        raise AssertionError("SIGTERM did not interrupt the command")

    assert _bench_with(monkeypatch, tmp_path, capsys, terminated_sweep) == (143, MESSAGE)


def test_a_swallowed_sigterm_is_delivered_again(tmp_path, capsys, monkeypatch):
    """Python swallows an exception raised in an at-fork callback or a __del__ (a review saw
    SIGTERM lost there, and train ran on to its end): SIGTERM is delivered again."""
    monkeypatch.setattr(_signals, "REDELIVERY_S", 0.05)

    def swallowing_sweep(*args, **kwargs):
        _swallow_a_sigterm()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # Python code running on: the second delivery interrupts it
            pass
        raise AssertionError("SIGTERM was not delivered again")

    start = time.monotonic()
    assert _bench_with(monkeypatch, tmp_path, capsys, swallowing_sweep) == (143, MESSAGE)
    assert time.monotonic() - start < 5


def test_a_command_that_ran_on_after_a_swallowed_sigterm_still_reports_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_signals, "REDELIVERY_S", 60.0)

    def swallowing_sweep(*args, **kwargs):
        _swallow_a_sigterm()
        return []

    assert _bench_with(monkeypatch, tmp_path, capsys, swallowing_sweep) == (143, MESSAGE)


def test_an_error_raised_while_terminated_unwinds_is_the_termination(tmp_path, capsys, monkeypatch):
    """Children dying of the same SIGTERM make torch's DataLoader raise RuntimeError from
    SIGCHLD while Terminated unwinds (a review: exit 1 and a traceback)."""
    def dying_children_sweep(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        finally:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    assert _bench_with(monkeypatch, tmp_path, capsys, dying_children_sweep) == (143, MESSAGE)


def test_any_other_error_is_not_taken_for_an_interruption(tmp_path, capsys, monkeypatch):
    def failing_sweep(*args, **kwargs):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _bench_with(monkeypatch, tmp_path, capsys, failing_sweep)


def test_terminated_reads_the_context_chain():
    def chained():
        try:
            raise Terminated
        except Terminated:
            try:
                raise OSError("second")
            except OSError as err:
                raise ValueError("third") from err

    with pytest.raises(ValueError) as info:
        chained()
    assert terminated(info.value) and terminated(Terminated()) and not terminated(ValueError("x"))
    assert not terminated(None)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_keep_the_handler():
    """A DataLoader worker forked while the command runs: SIGTERM ends it as it would have
    (a review saw workers raise Terminated in their loop, and tracebacks)."""
    with _signals.sigterm_as_interruption():
        assert signal.getsignal(signal.SIGTERM) is _signals._raise_terminated
        pid = os.fork()
        if pid == 0:  # the child
            os._exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.slow
def test_sigterm_to_a_running_bench_process_releases_its_lock(tmp_path):
    """A real process: SIGTERM in the middle of a sweep gives one line, exit 143, no lock."""
    out = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "convex_attention.cli", "bench", "--methods", "softmax",
                                "exact", "dual", "--sizes", "8", "16", "32", "64", "--levels", "2", "--dims", "2",
                                "--batch", "2", "--repeats", "50", "--no-progress", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (out / "results.lock").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert len(err.strip().splitlines()) == 1 and "terminated (SIGTERM)" in err
    assert not (out / "results.lock").exists()
