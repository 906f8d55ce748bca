"""One writer per results folder.

:func:`results_lock` holds ``OUT/results.lock``: an OS file lock (``flock``, Linux and
macOS), which the system releases when its process dies, plus a record of the owner (pid,
host, start, command) that names it to anyone refused.  A lock left by a dead process is
taken over, and the log says whose it was.  A ``results.lock`` that holds anything but such
a record (the user's own file of that name) is never truncated, taken over nor removed: the
run is refused, and the file is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time

__all__ = ["results_lock", "ResultsLocked", "LOCK_NAME", "RECORD_FIELDS", "folder_lock", "held_here", "while_unheld"]

LOCK_NAME = "results.lock"
#: The fields of the owner record the lock writes: a file that lacks one is not this tool's.
RECORD_FIELDS = ("pid", "host", "started", "command")
_MAX_RECORD = 64 * 1024  # the record is a line of JSON: a larger file is not one
# realpath -> (fd, the holding thread): held by this process; re-entry from the holding thread (demo,
# nested) takes it again freely, another thread of the process is another writer (ca_rev155)
_HELD: dict = {}


class ResultsLocked(RuntimeError):
    """Another live process writes into this results folder."""


def _describe(owner: dict) -> str:
    started = owner.get("started")
    try:  # a record someone wrote by hand (NaN, 1e300) names no time rather than crashing every later run
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) \
            else "?"
    except (ValueError, OverflowError, OSError):
        when = "?"
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {when}"
            f" ({owner.get('command', '?')})")


def _read_owner(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _record_in(fd: int) -> dict | None:
    """The owner record in the open lock file: ``{}`` when the file is empty (just created,
    here or by a run that has not written its record yet), the record when the file holds
    one this tool wrote (JSON with every field of :data:`RECORD_FIELDS`), ``None`` for any
    other content: a file that is not this tool's lock, which must be left untouched."""
    data = os.pread(fd, _MAX_RECORD + 1, 0)
    if not data:
        return {}
    if len(data) > _MAX_RECORD:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not all(field in record for field in RECORD_FIELDS):
        return None
    return record


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists (another user's) or unknown: assume alive
    return True


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _closed(fd: int) -> int:
    """Close ``fd``; -1, for the caller's variable (so that :func:`_let_go` never closes a number
    reused since)."""
    os.close(fd)
    return -1


def _let_go(fd: int, path: str) -> None:
    """Close ``fd`` (the lock file ``path`` opened by a run that stops before it holds it: an error
    or an interruption), removing the file where it is still the one at ``path``, empty (no run has
    written its record into it: this one made it) and not locked by another process: left, it
    kept the folder the run made (ca_rev273).  A record, or a file another run holds, is left."""
    if fd < 0:
        return
    try:
        with contextlib.suppress(OSError):
            if _try_lock(fd) and os.path.samestat(os.fstat(fd), os.lstat(path)) and _record_in(fd) == {}:
                os.remove(path)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _not_a_plain_file(out_dir: str) -> str:
    return (f"results folder {out_dir} holds {LOCK_NAME} that is not a plain file (a link or a folder): it is not "
            f"this tool's lock; remove it, or choose another --out")


def _not_a_record(out_dir: str) -> str:
    return (f"results folder {out_dir} holds a file {LOCK_NAME} that is not this tool's lock record (JSON naming "
            f"{', '.join(RECORD_FIELDS)}): it is left untouched; rename or remove it, or choose another --out")


def foreign_lock(out_dir: str) -> str | None:
    """Why :func:`results_lock` would refuse ``out_dir`` whatever runs (its ``results.lock`` is a
    link, a folder, or a file that is not this tool's record), in its words; None where there is
    no such file or it is a lock record.  Read without taking the lock, so that a command checks
    a folder it writes into only after minutes of work before that work (``demo``'s figure
    folder: ca_rev199)."""
    path = os.path.join(out_dir, LOCK_NAME)
    if not os.path.lexists(path):
        return None
    if os.path.islink(path) or not os.path.isfile(path):
        return _not_a_plain_file(out_dir)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # (what cannot be opened, results_lock names when it is taken)
    try:
        return _not_a_record(out_dir) if _record_in(fd) is None else None
    except OSError:
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def while_unheld(out_dir: str):
    """Whether no live run holds ``out_dir``'s existing ``results.lock`` (yielded), holding its
    ``flock`` meanwhile where it is free.  The file is never made, written, taken over or removed:
    a dead run's record stays for its own command to report (a lock taken to clean a sub-folder
    had removed it unsaid, ca_rev133).  False for a lock of this process, or a file that is not
    a plain one (not this tool's: left alone)."""
    path = os.path.join(out_dir, LOCK_NAME)
    if held_here(out_dir) or os.path.islink(path) or not os.path.isfile(path):
        yield False
        return
    fd = None
    for mode in (os.O_RDWR, os.O_RDONLY):  # (read-write first: NFS's emulated flock needs write access)
        try:
            fd = os.open(path, mode | getattr(os, "O_NOFOLLOW", 0))
            break
        except OSError:
            continue
    if fd is None:
        yield False
        return
    try:
        try:
            free = _try_lock(fd)
        except OSError:  # a file system without locks: nothing can be known of its holder
            free = False
        if free:  # the file locked must still be the one at the path: a run may have replaced it meanwhile
            try:  # (and locked the new one: results_lock checks the same, ca_rev134)
                free = os.path.samestat(os.fstat(fd), os.lstat(path))
            except OSError:
                free = False
        yield free
    finally:
        os.close(fd)  # (closing releases the flock)


def held_here(out_dir: str) -> bool:
    """Whether this process holds ``out_dir``'s :func:`results_lock` now (a run in this process
    writes there: :func:`results_lock` would let another of its callers in)."""
    return os.path.realpath(os.path.join(out_dir, LOCK_NAME)) in _HELD


@contextlib.contextmanager
def results_lock(out_dir: str, command: str = "bench", wait: bool = False, log=None, poll_s: float = 0.5):
    """Hold the lock of a results folder: one writer at a time.

    ``OUT/results.lock`` records the owner (pid, host, start time, command).  Exclusion is
    an OS file lock (``flock``), which the system releases when its process dies, so a
    lock left by a dead process is free: it is taken over, and ``log`` names the dead
    owner.  A lock file whose recorded owner is a dead pid on this host is reported the
    same way.  The lock is re-entrant within the thread that holds it (``demo`` runs
    ``bench`` and ``verify`` into one folder); another thread of the process is another writer,
    refused or waited for (it had been let in beside the holder: ca_rev155).  A ``results.lock``
    that is not such a record (a link, a folder, or a file with other content: the user's) is
    refused and left untouched.

    Raises:
        ResultsLocked: another live process holds the folder and ``wait`` is False, the
            folder's ``results.lock`` is not this tool's lock, or its file system takes no
            file lock (``flock`` fails with ENOLCK or EOPNOTSUPP: never waited on).
    """
    path = os.path.join(out_dir, LOCK_NAME)
    real = os.path.realpath(path)
    if real in _HELD and _HELD[real][1] == threading.get_ident():  # the outer holder releases it
        yield path
        return
    while real in _HELD:  # held by another thread of this process: its flock would let this one in
        if not wait:
            raise ResultsLocked(f"results folder {out_dir} is being written by another thread of this process "
                                f"(pid {os.getpid()}); wait for it (--wait) or choose another --out")
        time.sleep(poll_s)
    waited = False
    owner_pid = os.getpid()  # (before the loop: nothing may run between its break and the hold's try)
    while True:
        try:  # in the loop: a refused run that made the folder may have removed it again while this one waited
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise ResultsLocked(f"results folder {out_dir} cannot be made ({err.strerror or err}); choose another "
                                f"--out") from None
        # never through a link, never anything but a plain file: the lock is written (truncated,
        # then the owner record) and removed, and must not reach a file outside the folder
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
            raise ResultsLocked(_not_a_plain_file(out_dir))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise ResultsLocked(f"results folder {out_dir}: its lock {LOCK_NAME} cannot be opened "
                                f"({err.strerror or err}); choose another --out") from None
        try:  # until the hold's own try below: an interruption here (Ctrl-C, SIGTERM) must not leave the empty
            # lock file this run made (nor, so, the folder it made: ca_rev273)
            try:
                locked = _try_lock(fd)
            except OSError as err:  # not another holder: this file system takes no lock (ENOLCK, EOPNOTSUPP)
                raise ResultsLocked(f"results folder {out_dir}: its lock {LOCK_NAME} cannot be taken on this file "
                                    f"system ({err.strerror or err}); choose an --out on a file system with file "
                                    f"locks (a local disk)") from None
            if locked:
                try:  # the file may have been unlinked by a releasing owner: lock the one at `path`
                    same = os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path))
                except OSError:
                    same = False
                if not same:
                    fd = _closed(fd)
                    continue
                try:
                    previous = _record_in(fd)
                except OSError as err:  # an I/O error reading it: never leave the file locked by this process
                    raise ResultsLocked(f"results folder {out_dir}: its lock {LOCK_NAME} cannot be read "
                                        f"({err.strerror or err}); choose another --out") from None
                if previous is not None:
                    break
                # never truncated, taken over or removed: it is not this tool's record
                raise ResultsLocked(_not_a_record(out_dir))
            owner = _read_owner(path)
            fd = _closed(fd)
        except BaseException:
            _let_go(fd, path)
            raise
        if not wait:
            raise ResultsLocked(f"results folder {out_dir} is in use by {_describe(owner)}; wait for it to "
                                f"finish, pass --wait, or choose another --out")
        if not waited and log:
            log(f"waiting for results folder {out_dir}: in use by {_describe(owner)}")
        waited = True
        time.sleep(poll_s)
    # every record names a dead owner here, this pid included: pids are reused (a container's
    # pid 1, another host), and this process's own re-entry was answered above
    try:
        if previous and log:
            dead = previous.get("host") == socket.gethostname() and not _pid_alive(previous.get("pid"))
            log(f"took over the lock of {out_dir} left by {_describe(previous)}"
                f"{', a process that no longer runs' if dead else ''}")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": command}
        # an error from here on (a full disk, a log that raises) must not leave the folder locked
        # for the rest of the process: the finally below releases it as a normal end does
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode("utf-8"), 0)
        os.fsync(fd)
        _HELD[real] = (fd, threading.get_ident())
        yield path
    finally:
        # a forked child unwinding the parent's hold holds nothing: its copy of the descriptor was closed
        # at the fork, and the lock file is the parent's (ca_rev167)
        if os.getpid() == owner_pid:
            _HELD.pop(real, None)
            with contextlib.suppress(OSError):  # before unlocking: a waiter re-checks that it locked the live file
                if os.path.samestat(os.fstat(fd), os.lstat(path)):  # ours still, not a file put there since
                    os.remove(path)
            os.close(fd)


_FOLDER_GUARDS: dict = {}  # realpath -> threading.RLock: one thread of this process at a time
_FOLDER_DEPTH: dict = {}  # realpath -> how deep its holding thread has entered (the flock is taken once)
_FOLDER_FDS: dict = {}  # realpath -> the descriptor its flock is on
_FOLDER_GUARDS_LOCK = threading.Lock()
_GENERATION = [0]  # bumped in a forked child: holds from before the fork are the parent's


def _forget_folder_locks() -> None:
    """In a forked child: the parent's threads, and so their holds (``folder_lock``'s and
    ``results_lock``'s), are not there.  The
    child's copies of their descriptors are closed (a flock belongs to the open file, which
    the child shares: kept, it held the folder until the child ended, and the child's own
    folder_lock waited on itself); closing a copy leaves the parent's lock as it is."""
    global _FOLDER_GUARDS_LOCK
    for fd in [*_FOLDER_FDS.values(), *(held[0] for held in _HELD.values())]:
        with contextlib.suppress(OSError):
            os.close(fd)
    # results_lock's holds too: the child's thread keeps the forking thread's id, and passed as its
    # holder, a second writer into the folder (a DataLoader worker, multiprocessing's fork: ca_rev167)
    _HELD.clear()
    _FOLDER_FDS.clear()
    _FOLDER_GUARDS.clear()
    _FOLDER_DEPTH.clear()
    _FOLDER_GUARDS_LOCK = threading.Lock()
    _GENERATION[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_folder_locks)


@contextlib.contextmanager
def folder_lock(folder: str):
    """Hold an exclusive lock on the folder ``folder`` itself while the block runs, waiting
    for any other holder: for a short read-modify-write of a file in it that several runs
    share (the data ledger), which would otherwise lose one of two concurrent updates.  Other
    processes are kept out by an OS lock (``flock`` on the folder: no file is created; the
    system releases it when its process dies), other threads of this one by a lock of its
    own.  Re-entry from the holding thread (a nested call) does not wait for itself.  A child
    forked while it is held holds nothing (:func:`_forget_folder_locks`)."""
    real = os.path.realpath(folder)
    with _FOLDER_GUARDS_LOCK:
        guard = _FOLDER_GUARDS.setdefault(real, threading.RLock())
    generation = _GENERATION[0]
    guard.acquire()
    try:
        if _FOLDER_DEPTH.get(real):  # this thread holds it already (only the holder gets past the guard)
            _FOLDER_DEPTH[real] += 1
            try:
                yield real
            finally:
                if _GENERATION[0] == generation:
                    _FOLDER_DEPTH[real] -= 1
            return
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
        _FOLDER_FDS[real] = fd  # before the wait: a child forked while this thread waits closes its copy too
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            _FOLDER_DEPTH[real] = 1
            yield real
        finally:
            if _GENERATION[0] == generation:  # else a forked child: the descriptor is closed already
                # closed before it leaves the table: a child forked between the two finds it closed, never an
                # unrecorded copy that keeps the folder locked
                os.close(fd)
                _FOLDER_FDS.pop(real, None)
                _FOLDER_DEPTH.pop(real, None)
    finally:
        if _GENERATION[0] == generation:  # a forked child's guard is the parent's, left to it
            guard.release()
