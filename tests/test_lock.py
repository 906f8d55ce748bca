"""convex_attention.io.lock: one writer per results folder."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

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
    # a time too large for the platform (ValueError, OverflowError, OSError), or no number at all
    # (found by mutation testing: "1e17", a string or null were not tried)
    for started in ("NaN", "1e300", "1e17", '"yesterday"', "null"):
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
                                     '{"pid": 1, "host": "h", "started": 0}',
                                     # JSON that names every field but is not an object; JSON nested too deep to
                                     # parse; a file larger than any record (found by mutation testing)
                                     '["pid", "host", "started", "command"]', '"pid host started command"',
                                     pytest.param("[" * 50000, id="deeply-nested"),
                                     pytest.param("USER DATA\n" * 10000, id="larger-than-a-record"),
                                     # a record whose first bytes parse, but in a file larger than any record
                                     pytest.param(json.dumps({"pid": 1, "host": "h", "started": 0, "command": "c"})
                                                  + " " * lock._MAX_RECORD, id="a-record-in-a-larger-file")])
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


def _replaced_before_the_first_lock(tmp_path, monkeypatch) -> list:
    """Another run's lock file (its record not yet written) put in the place of the one this
    run opened, before its first flock; returns the descriptors flock was tried on."""
    real_try_lock, calls = lock._try_lock, []

    def replaced(fd):
        calls.append(fd)
        if len(calls) == 1:
            os.remove(tmp_path / LOCK_NAME)
            (tmp_path / LOCK_NAME).write_text("")
        return real_try_lock(fd)

    monkeypatch.setattr(lock, "_try_lock", replaced)
    return calls


def test_a_lock_file_replaced_between_its_opening_and_its_locking_is_not_the_one_held(tmp_path, monkeypatch):
    """A releasing owner removes the lock file, and another run makes a new one, between this
    run's open and its flock: the lock it got is on a file no longer at the path, so it opens
    the path again and locks the file there.  Without that check it held the removed file
    and wrote its record there, and a third run could lock the one at the path (found by
    mutation testing)."""
    calls = _replaced_before_the_first_lock(tmp_path, monkeypatch)
    with results_lock(str(tmp_path)) as path:
        held, _ = lock._HELD[os.path.realpath(path)]  # (its descriptor, its thread)
        assert len(calls) == 2  # it looped
        assert os.path.samestat(os.fstat(held), os.stat(path))  # the file locked is the one at the path
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_file_that_is_not_utf8_text_is_refused_even_if_it_names_every_field(tmp_path):
    content = b'{"pid": 1, "host": "h\xff", "started": 0, "command": "c"}'
    (tmp_path / LOCK_NAME).write_bytes(content)
    with pytest.raises(ResultsLocked, match="not this tool's lock record"):
        with results_lock(str(tmp_path)):
            pass
    assert (tmp_path / LOCK_NAME).read_bytes() == content


def open_fds():
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts open descriptors through /proc/self/fd (Linux)")
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("content, named", [
    (json.dumps({"pid": 4242, "host": "elsewhere", "started": 1e9, "command": "holder"}), "pid 4242 on host elsewhere"),
    ("", "pid ?"),  # its owner has locked it but not written its record yet
    ("[1, 2]", "pid ?"),
])
def test_a_folder_locked_by_another_writer_is_refused_naming_what_is_known(tmp_path, content, named):
    """The refusal names the owner's pid, host, start and command as far as its record says,
    in one line, and leaves the lock and no descriptor of its own open (found by mutation
    testing: the command and start were not checked, an empty or odd record crashed the run,
    and each refused try left a descriptor open)."""
    import fcntl

    (tmp_path / LOCK_NAME).write_text(content)
    holder = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: another writer, to flock
        before = open_fds()
        with pytest.raises(ResultsLocked) as refused:
            with results_lock(str(tmp_path)):
                pass
        assert open_fds() == before
    finally:
        os.close(holder)
    message = str(refused.value)
    assert named in message and "\n" not in message, message
    if named != "pid ?":  # a record: its command and start are named too
        record = json.loads(content)
        assert f"({record['command']})" in message, message
        assert time.strftime("%Y-%m-%d", time.localtime(record["started"])) in message, message
    assert (tmp_path / LOCK_NAME).read_text() == content


def test_a_waiting_run_says_so_once_and_polls_at_its_interval(tmp_path, monkeypatch):
    import fcntl

    holder = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    slept = []

    def sleep(seconds):  # the owner finishes after the waiter's third poll
        slept.append(seconds)
        if len(slept) == 3:
            os.close(holder)

    monkeypatch.setattr(lock.time, "sleep", sleep)
    logged = []
    with results_lock(str(tmp_path), wait=True, log=logged.append, poll_s=0.25):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert slept == [0.25] * 3
    assert len([m for m in logged if m.startswith("waiting")]) == 1, logged


def test_the_record_names_this_run(tmp_path):
    """docs/results_format.md: the file records the owner as JSON: pid, host, started (Unix
    time, s) and command (found by mutation testing: host and start were never checked)."""
    before = time.time()
    with results_lock(str(tmp_path), command="verify"):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
    after = time.time()
    assert sorted(record) == sorted(lock.RECORD_FIELDS)
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["command"] == "verify" and before <= record["started"] <= after


def test_a_stale_record_longer_than_this_runs_is_replaced_whole(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0,
                                                    "command": "a command line much longer than this run's " * 4}))
    with results_lock(str(tmp_path), command="bench"):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "bench"


def a_live_pid():
    return os.getppid()


@pytest.mark.parametrize("host, pid", [
    ("elsewhere", "dead"),  # a pid dead here says nothing of a process on another host
    ("here", "live"), ("here", "my project"), ("here", None), ("here", 10 ** 30),  # alive, or unknown
])
def test_a_taken_over_lock_says_its_owner_died_only_when_that_is_known(tmp_path, host, pid):
    if pid == "dead":
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        pid = dead.pid
    elif pid == "live":
        pid = a_live_pid()
    host = socket.gethostname() if host == "here" else host
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": 0, "command": "bench"}))
    logged = []
    with results_lock(str(tmp_path), log=logged.append):  # the OS lock is free: taken over, and said
        pass
    assert any("took over" in m and f"pid {pid} on host {host}" in m for m in logged), logged
    assert not any("no longer runs" in m for m in logged), logged


def test_the_lock_is_reentrant_through_a_link_to_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "out")
    with results_lock(str(tmp_path / "out")):
        with results_lock(str(tmp_path / "alias")):
            pass
        assert (tmp_path / "out" / LOCK_NAME).exists()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_folder_that_cannot_be_made_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's notes")
    with pytest.raises(ResultsLocked, match="cannot be made") as refused:
        with results_lock(str(tmp_path / "notes.txt" / "out")):
            pass
    assert "\n" not in str(refused.value)
    assert (tmp_path / "notes.txt").read_text() == "the user's notes"


def test_a_link_put_in_the_locks_place_after_its_check_is_not_followed(tmp_path, monkeypatch):
    """The lock is opened without following a link: one made between the check for a link
    and the opening (here: by the check itself) is refused, and its target is not written
    (found by mutation testing: without O_NOFOLLOW the run took over the empty file outside
    the folder and wrote its record there)."""
    outside = tmp_path / "empty.txt"
    outside.write_text("")
    out = tmp_path / "out"
    out.mkdir()

    real_lexists = os.path.lexists

    def a_link_appears(path):
        if not real_lexists(out / LOCK_NAME):
            (out / LOCK_NAME).symlink_to(outside)
        return False

    monkeypatch.setattr(lock.os.path, "lexists", a_link_appears)
    with pytest.raises(ResultsLocked, match="cannot be opened"):
        with results_lock(str(out)):
            pass
    monkeypatch.undo()
    assert outside.read_text() == "" and (out / LOCK_NAME).is_symlink()


def test_no_descriptor_is_left_open(tmp_path, monkeypatch):
    """Neither a run nor a lock file replaced before it was locked (the run tries again)
    leaves a descriptor open (found by mutation testing)."""
    before = open_fds()
    with results_lock(str(tmp_path)):
        pass
    assert open_fds() == before
    calls = _replaced_before_the_first_lock(tmp_path, monkeypatch)
    with results_lock(str(tmp_path)):
        pass
    assert len(calls) == 2 and open_fds() == before


def test_a_stale_lock_with_this_processs_pid_is_still_said_to_be_taken_over(tmp_path):
    """The module's docstring: a lock left by a dead process is taken over, and the log says
    whose it was.  A record of another host (or of an earlier container whose process had the
    same pid) that happens to name this pid is such a lock (found by mutation testing: the
    take-over went unsaid)."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": "another-host", "started": 0,
                                                    "command": "bench"}))
    logged = []
    with results_lock(str(tmp_path), log=logged.append):
        pass
    assert any("took over" in m and "another-host" in m for m in logged), logged


def test_a_run_into_a_free_folder_says_nothing_of_a_take_over(tmp_path):
    """Only a lock left by another run is said to be taken over (found by mutation testing:
    a fresh lock file, still empty, was reported as taken over from "pid ?")."""
    logged = []
    with results_lock(str(tmp_path / "new"), log=logged.append):
        pass
    with results_lock(str(tmp_path / "new"), log=logged.append):  # its lock file removed on release: free again
        pass
    assert logged == []


def test_an_owner_that_finishes_while_it_is_named_is_refused_in_one_line(tmp_path, monkeypatch):
    """The owner removes its lock file between this run's failed flock and its reading of the
    record: the run is refused naming what is known, not stopped by a FileNotFoundError
    (found by mutation testing)."""
    real_try_lock = lock._try_lock

    def owner_finishes(fd):
        real_try_lock(fd)
        os.remove(tmp_path / LOCK_NAME)
        return False

    monkeypatch.setattr(lock, "_try_lock", owner_finishes)
    with pytest.raises(ResultsLocked, match=r"is in use by pid \? on host \?") as refused:
        with results_lock(str(tmp_path)):
            pass
    assert "\n" not in str(refused.value)


def _no_locks_on_this_file_system(monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)


def test_a_lock_the_file_system_cannot_take_is_an_error_not_a_folder_in_use(tmp_path, monkeypatch):
    """flock failing for another reason than another holder (ENOLCK: no locks on this file
    system) is not taken for a folder in use: a --wait run would wait forever (found by
    mutation testing)."""
    _no_locks_on_this_file_system(monkeypatch)
    monkeypatch.setattr(lock.time, "sleep", lambda seconds: pytest.fail("waited for a lock that cannot be taken"))
    with pytest.raises((OSError, ResultsLocked)) as refused:
        with results_lock(str(tmp_path), wait=True):
            pass
    assert "in use" not in str(refused.value)


def test_a_lock_the_file_system_cannot_take_is_refused_in_one_line(tmp_path, monkeypatch):
    _no_locks_on_this_file_system(monkeypatch)
    before = open_fds()
    with pytest.raises(ResultsLocked) as refused:
        with results_lock(str(tmp_path)):
            pass
    assert open_fds() == before and str(tmp_path) in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("failure", ["pwrite", "log"])
def test_ca_rev70_an_error_while_taking_the_lock_leaves_the_folder_free(tmp_path, monkeypatch, failure):
    import errno

    out = str(tmp_path)
    opened = []
    real_open = os.open

    def tracking_open(*args, **kwargs):
        fd = real_open(*args, **kwargs)
        opened.append((fd, os.fstat(fd)))
        return fd

    monkeypatch.setattr(lock.os, "open", tracking_open)
    log = None
    if failure == "pwrite":
        def no_space(*args):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(lock.os, "pwrite", no_space)
    else:  # a stale record is taken over, and saying so fails (stderr closed: a broken pipe)
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": "elsewhere", "started": 0,
                                                      "command": "bench"}))

        def log(message):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    try:
        with pytest.raises(OSError):
            with results_lock(out, log=log):
                pass
        monkeypatch.undo()
        with results_lock(out):  # the run that failed is over: the folder is free again
            pass
    finally:
        monkeypatch.undo()
        for fd, was in opened:  # what the failed attempt left open (still that file): no other test inherits it
            try:
                if os.path.samestat(os.fstat(fd), was):
                    os.close(fd)
            except OSError:
                pass


@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_a_folder_lock_makes_a_second_process_wait_and_creates_no_file(tmp_path):
    """The data ledger's read-modify-write (protocol.spend) runs under it: two test stages
    started together each read the ledger and wrote it back with their own run alone, so one
    entry was lost (ca_rev70's near-miss)."""
    import subprocess
    import sys
    import time

    from convex_attention.io.lock import folder_lock

    # the child prints when it holds the lock, on the monotonic clock that every process shares:
    # timed from its own start (after the interpreter's start-up and imports), the wait read 0.87 s
    # of the parent's 1 s on a loaded machine, and the test failed though the lock had held
    code = ("import sys, time; from convex_attention.io.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]): print(repr(time.monotonic()))\n")
    with folder_lock(str(tmp_path)):
        with folder_lock(str(tmp_path)):  # re-entry from this process does not wait for itself
            pass
        other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert other.poll() is None  # still waiting
        releasing = time.monotonic()
    out, _ = other.communicate(timeout=60)
    assert float(out) >= releasing and list(tmp_path.iterdir()) == []


def test_an_error_reading_the_lock_record_releases_the_lock(tmp_path, monkeypatch):
    """Found beside ca_rev71: an OSError from reading the owner record (after flock succeeded)
    left the descriptor open, and the folder locked for the rest of the process."""
    from convex_attention.io import lock

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(lock, "_record_in", broken)
    with pytest.raises(lock.ResultsLocked, match="cannot be read"):
        with lock.results_lock(str(tmp_path)):
            pass
    monkeypatch.undo()
    with lock.results_lock(str(tmp_path)):  # free again
        pass


def test_ca_rev74_folder_lock_excludes_another_thread(tmp_path):
    """_FOLDERS_HELD is one set for the whole process: a second thread that takes the lock
    while the first holds it sees the folder as held and runs its read-modify-write at once."""
    import threading

    from convex_attention.io.lock import folder_lock

    entered = threading.Event()

    def other():
        with folder_lock(str(tmp_path)):
            entered.set()

    with folder_lock(str(tmp_path)):
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        inside = entered.wait(0.2)  # (a thread that did not wait enters at once)
    thread.join(5)
    assert not inside  # it waited for the holder


# ----------------------------------------------------------------------------- review ca_rev76

# forking a multi-threaded process is the case tested (Python 3.12+ warns of it)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_ca_rev76_a_forked_child_takes_folder_lock_once_the_parent_released_it(tmp_path):
    """_forget_folder_locks clears the holds in a forked child but leaves open the fd whose
    flock another thread of the parent took: that fd, the child's copy, keeps the lock after
    the parent releases it, so the child's own folder_lock waits for itself forever."""
    import signal
    import threading

    from convex_attention.io.lock import folder_lock

    held, release = threading.Event(), threading.Event()

    def holder():
        with folder_lock(str(tmp_path)):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(5)
    result_r, result_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait until the parent released the lock, then take it (1 s at most)
        try:
            os.read(go_r, 1)
            signal.alarm(1)  # SIGALRM's default action ends the child if it is still waiting
            with folder_lock(str(tmp_path)):
                os.write(result_w, b"1")
        finally:
            os._exit(0)
    os.close(result_w)
    release.set()
    thread.join(5)
    os.write(go_w, b"x")
    os.waitpid(pid, 0)
    taken = os.read(result_r, 1)
    for fd in (result_r, go_r, go_w):
        os.close(fd)
    assert taken == b"1", "the child could not take the lock its parent had released"


# ----------------------------------------------------------------------------- review ca_rev78

# forking a multi-threaded process is the case tested (Python 3.12+ warns of it)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_ca_rev78_a_fork_while_a_thread_waits_for_the_flock_does_not_keep_the_folder_locked(tmp_path):
    """folder_lock records its descriptor in _FOLDER_FDS only after flock returns; a thread
    waiting in flock (another process holds the folder) has it open, unrecorded.  A fork
    then gives the child a copy that _forget_folder_locks does not close: once the thread
    takes the lock and releases it (os.close), the child's copy still holds it."""
    import fcntl
    import signal
    import threading

    from convex_attention.io.lock import folder_lock

    real = os.path.realpath(str(tmp_path))

    def open_on_folder():
        out = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                out += os.readlink(f"/proc/self/fd/{name}") == real
            except OSError:
                pass
        return out

    blocker = os.open(real, os.O_RDONLY | os.O_DIRECTORY)  # "another process": an open file of its own
    fcntl.flock(blocker, fcntl.LOCK_EX)
    done = threading.Event()

    def waiter():
        with folder_lock(real):
            pass
        done.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while open_on_folder() < 2 and time.monotonic() < deadline:  # the thread's descriptor is open: it waits
        time.sleep(0.01)
    time.sleep(0.05)
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: holds nothing of its own; waits for the parent's word (5 s at most)
        try:
            os.close(blocker)  # the test's own: only folder_lock's descriptor is at issue
            signal.alarm(5)
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        os.close(blocker)  # the other holder leaves: the thread takes the lock, and releases it
        assert done.wait(5)
        probe = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        finally:
            os.close(probe)
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
        os.close(go_r)
        os.close(go_w)
    thread.join(5)
    assert free, "the folder stays locked by the forked child's copy of the waiting thread's descriptor"


# ---- ca_rev134 (strict xfail: review of 494a7f0)

def test_ca_rev134_a_probe_whose_lock_file_was_replaced_before_its_flock_sees_the_live_run(tmp_path, monkeypatch):
    """A live run ends (its lock file removed) and a new run makes and locks a new one between while_unheld's
    open and its flock: the probe locks the removed file and says the folder is free, so the experiment's
    cleaning removes the new run's temporaries.  results_lock checks the file it locked is the one at the path
    (test_a_lock_file_replaced_between_its_opening_and_its_locking_is_not_the_one_held); the probe does not."""
    import fcntl

    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0.0, "command": "bench"}))
    real_try_lock, new_holder = lock._try_lock, []

    def replaced(fd):
        if not new_holder:
            os.remove(path)  # the live owner releases
            held = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # and a new run locks a new file there
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            new_holder.append(held)
        return real_try_lock(fd)

    monkeypatch.setattr(lock, "_try_lock", replaced)
    try:
        with lock.while_unheld(str(tmp_path)) as free:
            said = free
    finally:
        for fd in new_holder:
            os.close(fd)
    assert new_holder and said is False, "the file at the path is held by a live run"


# ---- ca_rev155 (strict xfail: review of c71ac64)

def test_ca_rev155_a_second_thread_is_not_let_in_beside_the_holder(tmp_path):
    """Re-entry is keyed by process (_HELD), not by thread: another thread enters at once, and when the first
    leaves it removes the lock file while the second still writes, so another process enters too."""
    import threading

    said = []

    def other():
        try:
            with results_lock(str(tmp_path), command="other"):
                said.append("entered")
        except ResultsLocked:
            said.append("refused")

    with results_lock(str(tmp_path)):
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        thread.join(5)
    assert said == ["refused"], said


# ---- ca_rev167 (review of d03eab2; its strict xfail now passes)

# forking a multi-threaded process is the case tested (Python 3.12+ warns of it)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_ca_rev167_a_forked_child_is_not_let_into_its_parents_results_lock(tmp_path):
    """Run: a process holds results_lock(OUT) and forks (multiprocessing's fork, a DataLoader worker); the child
    asks for results_lock(OUT) itself (wait=False).  Expected: ResultsLocked, as for any other process: one writer
    per folder (folder_lock forgets its holds in a forked child for this reason, _forget_folder_locks).
    Observed: the child enters at once, beside its parent: _HELD, copied by the fork, names the folder with the
    forking thread's ident, which the child's thread still has, so it takes the re-entry path."""
    import signal

    result_r, result_w = os.pipe()
    with results_lock(str(tmp_path), command="parent"):
        pid = os.fork()
        if pid == 0:  # the child: its answer on the pipe, then out (1 s at most)
            try:
                signal.alarm(1)
                try:
                    with results_lock(str(tmp_path), command="child"):
                        os.write(result_w, b"entered")
                except ResultsLocked:
                    os.write(result_w, b"refused")
            finally:
                os._exit(0)
        os.close(result_w)
        os.waitpid(pid, 0)
    said = os.read(result_r, 16)
    os.close(result_r)
    assert said == b"refused", said


def test_foreign_lock_names_what_results_lock_would_refuse_whatever_runs(tmp_path):
    """io.lock.foreign_lock: a check before work of what results_lock refuses at the moment it is
    taken (demo's figure folder, ca_rev199), in results_lock's own words; nothing for a lock record
    or no lock at all."""
    from convex_attention.io.lock import foreign_lock

    cases = {"absent": None, "record": None, "empty": None, "folder": "not a plain file", "link": "not a plain file",
             "other": "not this tool's lock record"}
    for name, expected in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        lock = folder / LOCK_NAME
        if name == "record":
            with results_lock(str(folder)):
                assert foreign_lock(str(folder)) is None  # held by this process: a record, not foreign
            lock.write_text('{"pid": 1, "host": "h", "started": 0, "command": "bench"}')
        elif name == "empty":
            lock.write_text("")
        elif name == "folder":
            lock.mkdir()
        elif name == "link":
            lock.symlink_to(tmp_path / "elsewhere")
        elif name == "other":
            lock.write_text("the user's notes\n")
        got = foreign_lock(str(folder))
        assert (got is None) if expected is None else (expected in got and str(folder) in got), (name, got)
        if expected is not None:
            with pytest.raises(ResultsLocked, match=expected):
                with results_lock(str(folder)):
                    pass


# ---- ca_rev205 (mutation review of 5a01ce8)


def test_ca_rev205_a_stale_record_of_exactly_the_largest_size_is_taken_over(tmp_path):
    """Kills ``len(data) > _MAX_RECORD`` turned into ``>=``: a record of exactly the largest size (a long
    command line) is this tool's, taken over, not refused as the user's file."""
    record = {"pid": 1, "host": "elsewhere", "started": 0.0, "command": ""}
    record["command"] = "x" * (lock._MAX_RECORD - len(json.dumps(record)))
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    assert os.path.getsize(tmp_path / LOCK_NAME) == lock._MAX_RECORD
    logged = []
    with results_lock(str(tmp_path), log=logged.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert any("took over" in m for m in logged), logged


def test_ca_rev205_the_owner_record_is_synced_to_disk_before_the_run_goes_on(tmp_path, monkeypatch):
    """Kills the fsync of the owner record dropped: after a crash the lock could hold an empty or partial
    record, which a later run refuses as a file that is not this tool's lock."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((os.fstat(fd).st_ino, os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(lock.os, "fsync", fsync)
    with results_lock(str(tmp_path)):
        here = os.stat(tmp_path / LOCK_NAME)
        assert (here.st_ino, here.st_size) in synced, synced


def test_ca_rev205_the_lock_file_is_readable_by_those_a_refusal_names_it_to(tmp_path):
    """Kills the lock created with mode 0o600 instead of 0o644: another user's run, refused, could not read
    the owner record and named no owner."""
    old = os.umask(0o022)
    try:
        with results_lock(str(tmp_path)):
            mode = os.stat(tmp_path / LOCK_NAME).st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o644


def test_ca_rev205_foreign_lock_names_a_link_to_a_valid_record(tmp_path):
    """Kills the islink test dropped from foreign_lock: a link to a file holding a lock record passed
    isfile, was not opened (O_NOFOLLOW) and so was named no obstacle, though results_lock refuses it."""
    elsewhere = tmp_path / "record.json"
    elsewhere.write_text(json.dumps({"pid": 1, "host": "h", "started": 0.0, "command": "bench"}))
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(elsewhere)
    assert "not a plain file" in (lock.foreign_lock(str(out)) or "")
    with pytest.raises(ResultsLocked, match="not a plain file"):
        with results_lock(str(out)):
            pass
    assert json.loads(elsewhere.read_text())["pid"] == 1


def test_ca_rev205_a_deeply_nested_file_locked_by_another_is_refused_not_a_crash(tmp_path):
    """Kills RecursionError dropped from _read_owner's errors: a results.lock of deeply nested JSON, locked
    by another holder (a probe), crashed the refused run instead of naming an unknown owner."""
    import fcntl

    (tmp_path / LOCK_NAME).write_text("[" * 100_000)
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ResultsLocked, match=r"in use by pid \? on host \?"):
            with results_lock(str(tmp_path)):
                pass
    finally:
        os.close(fd)
    assert (tmp_path / LOCK_NAME).read_text() == "[" * 100_000


# ---- ca_rev273 (hostile review: children, locks and repeated signals)
@pytest.mark.parametrize("moment", ["_try_lock", "_record_in"])
def test_ca_rev273_an_interruption_while_the_lock_is_taken_leaves_no_empty_lock_file(tmp_path, monkeypatch, moment):
    """Ctrl-C (or SIGTERM) between the creation of results.lock and the hold's try/finally (here raised by
    the first call of the step named, deterministically) left the empty file this run made, and with it the
    folder it made, which holding_out's making_out could then not remove."""
    from convex_attention.cli._common import making_out

    real = getattr(lock, moment)
    calls = []

    def interrupted_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(fd)

    monkeypatch.setattr(lock, moment, interrupted_once)
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt):
        with making_out(str(out)), results_lock(str(out)):
            pass
    assert not (tmp_path / "new").exists()  # neither the lock file nor the folders the run made
    monkeypatch.setattr(lock, moment, real)
    # a dead owner's record is another run's file: an interruption leaves it as it was
    out.mkdir(parents=True)
    record = json.dumps({"pid": 2 ** 22 + 1, "host": socket.gethostname(), "started": 0, "command": "bench"})
    (out / LOCK_NAME).write_text(record)
    calls.clear()
    monkeypatch.setattr(lock, moment, interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with results_lock(str(out)):
            pass
    assert (out / LOCK_NAME).read_text() == record


# ---- ca_rev275 (hostile review of the session's diff)
def test_ca_rev275_let_go_leaves_an_empty_lock_another_holds_or_one_put_there_since(tmp_path):
    """_let_go removes the empty lock file only while no other run holds it (a run between its flock and its
    record) and while it is still the file this run opened (not one made at that name since): either removed,
    two runs would write into one folder. Both guards had no test (each could be dropped with the suite green)."""
    import fcntl

    path = str(tmp_path / LOCK_NAME)
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # another run's open file: its flock excludes ours
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock._let_go(os.open(path, os.O_RDWR), path)
        assert os.path.exists(path) and os.path.samestat(os.stat(path), os.fstat(holder))
    finally:
        os.close(holder)
    mine = os.open(path, os.O_RDWR)
    os.remove(path)
    with open(path, "w"):  # an empty file made at the name since (another run's, about to be locked)
        pass
    made = os.stat(path)
    lock._let_go(mine, path)
    assert os.path.exists(path) and os.path.samestat(os.stat(path), made)
