"""convex_attention.io.lock: one writer per results folder."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from convex_attention.io import lock
from convex_attention.io.lock import LOCK_NAME, ResultsLocked, results_lock

# Another writer, as the lock protocol sees it: flock on OUT/results.lock, owner recorded in
# the file (plain Python, so that the test does not pay for a second torch import).
HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    fd = os.open(os.path.join(sys.argv[1], "results.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": "holder"}).encode())
    print("locked", flush=True)
    if sys.argv[2] == "stdin":  # held until told to let go, then says so before it does
        sys.stdin.readline()
        open(os.path.join(sys.argv[1], "released"), "w").close()
    else:
        time.sleep(float(sys.argv[2]))
    os.remove(os.path.join(sys.argv[1], "results.lock"))
""")


# Another run of this tool in a process of its own: the lock module alone (no torch), from
# this checkout; prints whether it entered the folder or was refused.
RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from convex_attention.io.lock import ResultsLocked, results_lock
    try:
        with results_lock(sys.argv[1], command="second"):
            print("entered", flush=True)
    except ResultsLocked:
        print("refused", flush=True)
""")


def hold_lock(folder, seconds):
    """A holder of ``folder``'s lock for ``seconds``, or until a line on its stdin ("stdin")."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE if seconds == "stdin" else None, text=True)
    said = proc.stdout.readline()
    proc.stdout.close()  # it says nothing more (left open, each caller's test warned of an unclosed file)
    assert said.strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_owner_named(tmp_path):
    proc = hold_lock(tmp_path, 60)
    try:
        with pytest.raises(ResultsLocked, match=rf"pid {proc.pid} on host {socket.gethostname()}.*--wait"):
            with results_lock(str(tmp_path)):
                pass
    finally:
        proc.kill()
        proc.wait()
    with results_lock(str(tmp_path)):  # the dead holder's lock is free
        pass
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_wait_blocks_until_the_owner_finishes(tmp_path):
    # told to let go only once the waiter says it waits, and marking that it did before it
    # does: no clock, so a stalled machine cannot make this pass or fail
    proc = hold_lock(tmp_path, "stdin")
    logged = []

    def log(message):
        logged.append(message)
        if "waiting" in message:
            proc.stdin.write("go\n")
            proc.stdin.flush()

    try:
        with results_lock(str(tmp_path), wait=True, log=log, poll_s=0.05):
            assert (tmp_path / "released").exists(), "entered while the owner held the lock"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
    assert any("waiting" in m and str(proc.pid) in m for m in logged)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                    "started": 0, "command": "bench"}))
    logged = []
    with results_lock(str(tmp_path), log=logged.append):
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid()
    assert any("took over" in m and str(dead.pid) in m and "no longer runs" in m for m in logged)


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with results_lock(str(tmp_path)):
        with results_lock(str(tmp_path)):
            pass
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_that_is_a_link_or_a_folder_is_refused_and_nothing_outside_is_written(tmp_path):
    """A results.lock linked to a file outside the folder: the lock truncated the target,
    wrote its owner record into it and removed only the link (found by a hostile review)."""
    outside = tmp_path / "precious.txt"
    outside.write_text("the user's data")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(outside)
    with pytest.raises(ResultsLocked, match="not a plain file"):
        with results_lock(str(out)):
            pass
    assert outside.read_text() == "the user's data" and (out / LOCK_NAME).is_symlink()
    (out / LOCK_NAME).unlink()
    (out / LOCK_NAME).mkdir()
    with pytest.raises(ResultsLocked, match="not a plain file"):
        with results_lock(str(out)):
            pass


def test_an_owner_record_with_an_impossible_time_does_not_crash_the_next_run(tmp_path):
    for started in ("NaN", "1e300"):
        record = '{"pid": 1, "host": "elsewhere", "started": ' + started + ', "command": "x"}'
        (tmp_path / LOCK_NAME).write_text(record)
        logged = []
        with results_lock(str(tmp_path), log=logged.append):  # the OS lock is free: taken over, and said
            pass
        assert any("since ?" in line for line in logged), logged


@pytest.mark.parametrize("content", ["USER DATA\n", '{"my": "precious"}', '["pid", "host"]', "\xff\xfe not text",
                                     # a record needs every field: one of them is not enough (found by mutation
                                     # testing: a file with only "pid" was taken over and removed)
                                     '{"pid": "my project id", "notes": "precious"}',
                                     '{"pid": 1, "host": "h", "started": 0}'])
def test_a_users_own_file_named_like_the_lock_is_refused_and_left_untouched(tmp_path, content):
    """A plain results.lock of the user's was truncated, overwritten with the owner record
    and removed on release, without a word (found by a hostile review)."""
    (tmp_path / LOCK_NAME).write_text(content, encoding="utf-8")
    with pytest.raises(ResultsLocked, match="not this tool's lock record.*left untouched"):
        with results_lock(str(tmp_path)):
            pass
    assert (tmp_path / LOCK_NAME).read_text(encoding="utf-8") == content
    # an empty one is a lock whose owner had not written its record yet (a racing run, or one
    # killed right after creating it): taken over, as a record of a dead owner is
    (tmp_path / LOCK_NAME).write_text("")
    with results_lock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_release_removes_only_its_own_lock_file(tmp_path):
    """A results.lock put in the lock's place while it was held (not the file locked) is the
    user's: releasing the lock leaves it."""
    with results_lock(str(tmp_path)):
        (tmp_path / LOCK_NAME).unlink()
        (tmp_path / LOCK_NAME).write_text("USER DATA")
    assert (tmp_path / LOCK_NAME).read_text() == "USER DATA"


def test_two_runs_of_this_tool_never_hold_one_folder_together(tmp_path):
    """The lock this tool takes is exclusive: with a shared flock two of its own runs both
    entered the folder, while HOLDER's exclusive lock still refused them (found by mutation
    testing)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(lock.__file__))))
    with results_lock(str(tmp_path), command="first"):
        second = subprocess.run([sys.executable, "-c", RUN, str(tmp_path), root], capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 0 and second.stdout.strip() == "refused", second
        assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "first"


def test_a_lock_file_replaced_between_its_opening_and_its_locking_is_not_the_one_held(tmp_path, monkeypatch):
    """A releasing owner removes the lock file, and another run makes a new one, between this
    run's open and its flock: the lock it got is on a file no longer at the path, so it opens
    the path again and locks the file there.  Without that check it held the removed file
    and wrote its record there, and a third run could lock the one at the path (found by
    mutation testing)."""
    real_try_lock = lock._try_lock
    calls = []

    def replaced_before_the_first_lock(fd):
        calls.append(fd)
        if len(calls) == 1:
            os.remove(tmp_path / LOCK_NAME)
            (tmp_path / LOCK_NAME).write_text("")  # another run's, its record not yet written
        return real_try_lock(fd)

    monkeypatch.setattr(lock, "_try_lock", replaced_before_the_first_lock)
    with results_lock(str(tmp_path)) as path:
        held = lock._HELD[os.path.realpath(path)][0]
        assert len(calls) == 2  # it looped
        assert os.path.samestat(os.fstat(held), os.stat(path))  # the file locked is the one at the path
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
