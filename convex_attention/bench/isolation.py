"""A user's dual solver run where its mistakes cannot hang or fool the verifier: in a process of its own.

``convex-attention verify --dual-solver SPEC`` checks code it did not write.  That code may
raise anything (``KeyboardInterrupt`` and ``GeneratorExit`` included), call ``sys.exit``
or ``os._exit``, crash the interpreter, hang, stop reading or write half a message, or
return something that is not duals.  None of it may hang the verifier or make it report
a check it did not run or that failed as passed, so :class:`IsolatedSolver` imports and
calls the solver in a child process (a fresh interpreter on the verifier's import path,
which inherits no state of the verifier, in a session and process group of its own):

* the child imports ``SPEC`` and reports the function's name, or why the import failed
  (a usage error of the command: no check has run yet);
* per instance the verifier sends the scores, the structure and the temperatures, and waits
  at most ``timeout`` seconds, for the child to take the instance and for the whole answer
  (a child that stops reading, or sends part of a message and stalls, is late like one
  that never answers); the child calls the solver, checks what it returned
  (:func:`returned_duals`: a list of one real floating tensor per edge, shaped like its
  coarse map) and sends the duals back, tagged with the instance's number;
* a solver that raises, exits, crashes, hangs or is killed, or returns anything else, makes
  :class:`SolverFailed` with the reason in one line; a child that exited, crashed or hung is
  stopped where it misbehaved (with its process group) and a fresh one serves the next
  instance, while one whose solver raised or returned something else serves it itself, as
  after an answer (the solver's module state carries over, as in any loop that calls it).
  A message the child sends unasked (before it is given an instance, or tagged with another
  one) is never taken as an answer: the instance fails and the child is stopped.

What the child sends is plain bytes: a JSON header and, for duals, a stored ``.npz`` archive of
float64 arrays read with ``allow_pickle=False``.  Nothing the child sends is unpickled, so
it cannot run code in the verifier, and the verifier computes every check itself from the
duals: the child never reports a check's outcome.  The child ignores Ctrl-C (the verifier
stops it): a ``KeyboardInterrupt`` inside the child is the solver's own.  A thread of the
child looks twice a second whether the verifier's process is still there, and ends the
child when it is not (its own session gets no hang-up from the verifier's terminal).

What isolation cannot do: the child runs as the same user as the verifier, so code written
to fool it has that user's rights.  It can signal the verifier's process (a kill ends it
without a result, never with a pass; ``SIGSTOP`` freezes it), write to its output through
``/proc``, change its memory (``/proc/<pid>/mem``), rewrite files it has not imported yet
(``verify`` imports every module it runs before the child starts, running the verification
once on a small instance so that what imports itself on first use is imported too, which
closed the routes two reviews used: rewriting ``convex_attention.io.lock``, then
cvxpylayers' diffcp interface, to pass every check), or leave a
process of another session running that rewrites ``verify.csv`` after the run.  It guards
against a solver's mistakes; code one does not trust is verified under another user or in
a container (docs/user_guide.md §2).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

import numpy as np
import torch

from ..graph import Graph
from ..io.files import REASON_CHARS, one_line

__all__ = ["IsolatedSolver", "SolverFailed", "load_solver", "returned_duals", "describe", "STARTUP_S"]

#: Seconds a fresh child may take to start Python and import torch and the toolkit, before
#: it imports the solver (the solver's own import then has the per-instance timeout).
STARTUP_S = 300.0
_HEADER = struct.Struct("!I")  # the length of a message's JSON header
# The framing of multiprocessing.connection.Connection (the child sends with it): a signed
# length, or -1 and then an unsigned 64-bit length for a message of 2 GiB or more.
_LENGTH, _LONG_LENGTH = struct.Struct("!i"), struct.Struct("!Q")
_CHUNK = 1 << 20  # bytes read or written at a time
_PARENT_POLL_S = 0.5  # how often the child looks whether the verifier's process is still there
_SMALL_MESSAGE = 1 << 20  # bytes a message without duals may take; a child that sends more is stopped
_LONGEST_WAIT_S = 3600.0  # the longest single wait handed to select() (an infinite deadline overflowed it)


class SolverFailed(Exception):
    """The solver did not return valid duals for one instance; ``str()`` says why, in one line."""


def describe(exc: BaseException) -> str:
    """An exception in one line, no traceback (``sys.exit`` says so)."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = one_line(str(exc), REASON_CHARS)
    return one_line(f"raised {type(exc).__name__}" + (f": {text}" if text else ""), 400)


def parse_solver_spec(spec: str) -> tuple[str, str]:
    """``module:function`` or ``path/to/file.py:function`` -> ``(module or file, function)``.

    Imports and runs nothing, so a command checks it before any work: ValueError (a usage
    error) for a malformed spec or a ``.py`` file that does not exist.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"--dual-solver must look like module:function or file.py:function, got {spec!r}")
    target, name = spec.rsplit(":", 1)
    if not target or not name:
        raise ValueError(f"--dual-solver must look like module:function or file.py:function, got {spec!r}")
    if target.endswith(".py") and not os.path.isfile(target):
        raise ValueError(f"--dual-solver file {target!r} does not exist")
    return target, name


def load_solver(spec: str) -> Callable:
    """``module:function`` or ``path/to/file.py:function`` -> the callable.

    Raises ValueError (a usage error) for a malformed spec, a missing file or function,
    something not callable, or a module that fails to import (whatever it raises,
    ``sys.exit`` included).  This runs the module's code in the calling process:
    :class:`IsolatedSolver` calls it in its child.
    """
    target, name = parse_solver_spec(spec)
    module_spec = None
    if target.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location("user_dual_solver", target)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--dual-solver file {target!r} cannot be imported as a Python module")
    try:
        if module_spec is not None and module_spec.loader is not None:  # refused above when None: for mypy
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    # the module's own ValueError is wrapped too: only this function's errors are bare
    except BaseException as exc:  # noqa: BLE001 - the user's code: anything may come out of it
        raise ValueError(f"--dual-solver: importing {target!r} failed: {describe(exc)}") from None
    if not hasattr(module, name):
        raise ValueError(f"{target} has no function {name!r}")
    fn = getattr(module, name)
    if not callable(fn):
        raise ValueError(f"--dual-solver {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def returned_duals(raw, h: Graph, batch: int) -> list[np.ndarray]:
    """What a dual solver returned, checked: a list (or tuple) of ``h.num_edges`` real
    floating torch tensors, ``duals[e]`` shaped ``(batch, *h.shapes[b])`` for edge
    ``e = (a → b)`` (on a hierarchy ``L-1`` tensors ``(B, *h.shapes[k+1])``); returned as
    float64 numpy arrays.  ValueError naming the first thing that is wrong."""
    expected = [(batch,) + tuple(h.shapes[b]) for _, b in h.edges]
    if isinstance(raw, torch.Tensor) or not isinstance(raw, (list, tuple)):
        raise ValueError(f"returned a {type(raw).__name__}, not a list of {len(expected)} dual tensors "
                         f"(shapes {expected})")
    if len(raw) != len(expected):
        raise ValueError(f"returned {len(raw)} dual tensors, expected {len(expected)} (shapes {expected})")
    out = []
    for e, (d, shape) in enumerate(zip(raw, expected)):
        if not isinstance(d, torch.Tensor):
            raise ValueError(f"duals[{e}] is a {type(d).__module__}.{type(d).__qualname__}, not a torch.Tensor; "
                             f"duals must be real floating tensors")
        if d.is_complex() or not d.dtype.is_floating_point:
            raise ValueError(f"duals[{e}] has dtype {d.dtype}; duals must be real floating tensors")
        if tuple(d.shape) != shape:
            raise ValueError(f"duals[{e}] has shape {tuple(d.shape)}, expected {shape}")
        # resolve_neg: a real tensor may carry torch's lazy negation (z.conj().imag), which numpy() refuses (ca_rev217)
        out.append(d.detach().to(device="cpu", dtype=torch.float64).resolve_neg().numpy().copy())
    return out


# ----------------------------------------------------------------------------- the wire format

def _pack(header: dict, arrays: Sequence[np.ndarray] = ()) -> bytes:
    head = json.dumps(header).encode("utf-8")
    body = b""
    if arrays:
        buf = io.BytesIO()
        np.savez(buf, **{f"d{i}": a for i, a in enumerate(arrays)})  # type: ignore[arg-type]
        body = buf.getvalue()
    return _HEADER.pack(len(head)) + head + body


def _unpack(data: bytes) -> tuple[dict, bytes]:
    """The JSON header (a dict) and the body; ValueError for anything else."""
    if len(data) < _HEADER.size:
        raise ValueError("a message shorter than its header")
    (size,) = _HEADER.unpack_from(data)
    if size > len(data) - _HEADER.size:
        raise ValueError("a message whose header runs past its end")
    header = json.loads(data[_HEADER.size:_HEADER.size + size].decode("utf-8"))
    if not isinstance(header, dict) or not isinstance(header.get("status"), str):
        raise ValueError("a message without a status")
    return header, data[_HEADER.size + size:]


def import_the_reader() -> None:
    """Read one answer as the verifier reads a child's: numpy's archive reader imports parts
    of itself and a codec on first use, which must not happen after a solver's code has run
    (it could have rewritten them)."""
    _, body = _unpack(_pack({"status": "ok"}, [np.zeros(1)]))
    _read_duals(body, [(1,)])


def _read_duals(body: bytes, shapes: Sequence[tuple]) -> list[np.ndarray]:
    """The duals of a message body: exactly ``len(shapes)`` float64 arrays of those shapes
    (checked again here: the child's own check runs in the child's process).  Only stored
    (uncompressed) members are read: what is read is then at most ``body`` itself, where a
    compressed member of 1.4 kB declaring 1.6 GB was inflated after the deadline (ca_rev248)."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
            raise ValueError("the child sent a compressed archive; duals are sent stored, not compressed")
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        names = sorted(archive.files)
        if names != sorted(f"d{i}" for i in range(len(shapes))):
            raise ValueError(f"the child sent arrays {names}, not {len(shapes)} duals")
        out = [archive[f"d{i}"] for i in range(len(shapes))]
    for i, (a, shape) in enumerate(zip(out, shapes)):
        if a.dtype != np.float64 or a.shape != tuple(shape):
            raise ValueError(f"the child sent duals[{i}] of dtype {a.dtype} and shape {a.shape}, not float64 "
                             f"{tuple(shape)}")
    return out


# ----------------------------------------------------------------------------- the child

# The child's program: the verifier's import path, then this module's _child.  A plain
# subprocess, not multiprocessing: spawn would import the verifier's main script again in
# the child, which a script without ``if __name__ == "__main__"`` cannot survive.
_CHILD_CODE = ("import json, os, sys; sys.path[:] = json.loads(os.environ['CONVEX_ATTENTION_VERIFY_PATH']); "
               "from convex_attention.bench.isolation import _child; _child(*map(int, sys.argv[1:4]), sys.argv[4])")


def _watch_parent(parent: int) -> None:
    """End this process (the child) once the verifier's process ``parent`` is gone: a child
    of its own session gets no signal when the verifier's terminal closes."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    with contextlib.suppress(OSError):
        os.killpg(os.getpid(), signal.SIGKILL)  # this process leads its group: what it started ends with it
    os._exit(1)


def _child(read_fd: int, write_fd: int, parent: int, spec: str) -> None:
    """The child's whole life: import the solver, then solve instances until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the verifier, which stops this process
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-verifier", daemon=True).start()
    with contextlib.suppress(OSError):
        os.dup2(2, 1)  # the solver's prints go to stderr: the verifier's table stays on stdout
    sys.stdout = sys.stderr
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    outbox.send_bytes(_pack({"status": "started"}))
    target = spec.rsplit(":", 1)[0]
    if target.endswith(".py"):  # its own folder first, as `python file.py` has it: its sibling modules import
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    try:
        fn = load_solver(spec)
    except ValueError as err:
        outbox.send_bytes(_pack({"status": "load_error", "reason": str(err)}))
        return
    outbox.send_bytes(_pack({"status": "ready", "name": str(getattr(fn, "__name__", "") or type(fn).__name__)}))
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())  # from the verifier, which this process trusts
        except EOFError:
            return
        if message[0] != "solve":
            return
        _, number, scores, h, temps = message
        try:
            raw = fn([torch.from_numpy(s) for s in scores], h, list(temps))
        except BaseException as exc:  # noqa: BLE001 - the solver's: every kind of exception is a failure
            outbox.send_bytes(_pack({"status": "error", "instance": number, "reason": describe(exc)}))
            continue
        try:
            duals = returned_duals(raw, h, scores[0].shape[0])
        except ValueError as err:
            outbox.send_bytes(_pack({"status": "error", "instance": number, "reason": str(err)}))
            continue
        except BaseException as exc:  # noqa: BLE001 - what it returned misbehaved when read
            outbox.send_bytes(_pack({"status": "error", "instance": number,
                                     "reason": f"returned a value that {describe(exc)} when read"}))
            continue
        outbox.send_bytes(_pack({"status": "duals", "instance": number}, duals))


# ----------------------------------------------------------------------------- the verifier's side

class _Late(Exception):
    """The deadline passed before a read or a write was done."""


def _wait_for(fd: int, event: int, deadline: float) -> None:
    """Until ``fd`` is ready for ``event`` (a ``selectors`` event); _Late at ``deadline``."""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, event)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Late
            if selector.select(min(remaining, _LONGEST_WAIT_S)):
                return


def _read(fd: int, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes from the non-blocking ``fd`` by ``deadline`` (``time.monotonic``):
    _Late when they have not all come by then, EOFError when the writer closed first."""
    data = bytearray()
    while len(data) < size:
        _wait_for(fd, selectors.EVENT_READ, deadline)
        try:
            chunk = os.read(fd, min(size - len(data), _CHUNK))
        except (BlockingIOError, InterruptedError):
            continue
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _write(fd: int, data: bytes, deadline: float) -> None:
    """All of ``data`` into the non-blocking ``fd`` by ``deadline``: _Late when the reader
    has not taken it by then; OSError (a broken pipe) when the reader is gone."""
    view = memoryview(data)
    while view:
        _wait_for(fd, selectors.EVENT_WRITE, deadline)
        try:
            view = view[os.write(fd, view[:_CHUNK]):]
        except (BlockingIOError, InterruptedError):
            continue


def _frame(payload: bytes) -> bytes:
    """``payload`` framed as ``Connection.recv_bytes`` (the child's) reads it."""
    if len(payload) > 0x7FFFFFFF:
        return _LENGTH.pack(-1) + _LONG_LENGTH.pack(len(payload)) + payload
    return _LENGTH.pack(len(payload)) + payload


def _ended(process: subprocess.Popen) -> str:
    """How a child that stopped answering ended, in words.  Once it has ended, what it
    started in its process group is killed before it is reaped (its unreaped zombie keeps
    the group's id from being reused); one still running is left to :meth:`IsolatedSolver.close`."""
    if process.returncode is None and not hasattr(os, "waitid"):  # macOS before Python 3.13: reap, then tell
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if process.returncode is None:
            return "stopped answering"
    if process.returncode is None:
        deadline = time.monotonic() + 5
        while True:
            ended = _ended_unreaped(process)
            if ended or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not ended:
            return "stopped answering"
        _kill_group(process)
    code = process.wait()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"ended its process with exit status {code}"


def _ended_unreaped(process: subprocess.Popen) -> bool:
    """Whether the child has ended, looked at without reaping it (``waitid`` with ``WNOWAIT``:
    its zombie keeps its process group's id its own until :func:`_kill_group` has run)."""
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped elsewhere
        return True


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the child's process group (the child leads it: start_new_session), while
    the child is not reaped, so that the id is still its own."""
    if process.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)


class IsolatedSolver:
    """The dual solver ``spec`` (``module:function`` or ``file.py:function``), run in a
    child process (see the module docstring).

    ``start()`` imports it in a child (ValueError, a usage error, when that fails); each
    ``solve(scores, h, temps)`` returns the duals as float64 arrays or raises
    :class:`SolverFailed`; ``close()`` stops the child.  Use it as a context manager.

    Args:
        spec: the solver.
        timeout: seconds one instance may take, from handing it over to the end of the
            answer (and the solver's module to import), before the child is stopped and the
            instance fails.
    """

    def __init__(self, spec: str, timeout: float):
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        parse_solver_spec(spec)  # a malformed spec is refused here, before a child is started
        self.spec, self.timeout = spec, float(timeout)
        self.name = ""
        self._process: subprocess.Popen | None = None
        self._inbox: int | None = None  # the pipe the child writes to (non-blocking)
        self._outbox: int | None = None  # the pipe the child reads from (non-blocking)
        self._number = 0  # the number of the last instance handed over

    def __enter__(self) -> IsolatedSolver:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Start a child and import the solver there; ValueError saying why it failed."""
        try:
            self._spawn()
        except SolverFailed as err:
            raise ValueError(f"--dual-solver {self.spec}: {err}") from None

    def _spawn(self) -> None:
        self.close()
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        env = {**os.environ, "CONVEX_ATTENTION_VERIFY_PATH": json.dumps(sys.path)}
        try:
            # a session of its own: signals for the verifier's process group (a terminal's
            # Ctrl-C or hang-up) do not reach it, and close() stops its whole group
            process = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, str(to_child_read), str(from_child_write),
                                        str(os.getpid()), self.spec], pass_fds=(to_child_read, from_child_write),
                                       env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            for fd in (to_child_write, from_child_read):
                os.close(fd)
            raise
        finally:
            os.close(to_child_read)
            os.close(from_child_write)
        os.set_blocking(from_child_read, False)
        os.set_blocking(to_child_write, False)
        self._process, self._inbox, self._outbox = process, from_child_read, to_child_write
        header, _ = self._receive(time.monotonic() + STARTUP_S, "did not start")
        if header["status"] != "started":
            raise SolverFailed(self._stop("sent an unexpected message while starting"))
        header, _ = self._receive(time.monotonic() + self.timeout,
                                  f"did not finish importing within {self.timeout:g} s (--timeout)")
        if header["status"] == "load_error":
            reason = one_line(header.get("reason", "the import failed"), 400)
            self.close()
            raise ValueError(reason)
        if header["status"] != "ready":
            raise SolverFailed(self._stop("sent an unexpected message while importing"))
        self.name = str(header.get("name", ""))[:100]

    def _stop(self, why: str) -> str:
        self.close()
        return why

    def _receive(self, deadline: float, late: str, limit: int = _SMALL_MESSAGE) -> tuple[dict, bytes]:
        """The child's next message (at most ``limit`` bytes), whole by ``deadline``
        (``time.monotonic``); SolverFailed (the child stopped) when it is late, ends, or
        sends something that is not a message."""
        inbox, process = self._inbox, self._process
        assert inbox is not None and process is not None
        try:
            (size,) = _LENGTH.unpack(_read(inbox, _LENGTH.size, deadline))
            if size == -1:
                (size,) = _LONG_LENGTH.unpack(_read(inbox, _LONG_LENGTH.size, deadline))
            if size > limit:
                raise SolverFailed(self._stop(f"its process sent more than {limit} bytes; it was stopped"))
            if size < 0:
                raise ValueError("a negative length")
            data = _read(inbox, size, deadline)
            return _unpack(data)
        except _Late:
            self.close()
            raise SolverFailed(f"{late}; its process was stopped") from None
        except (EOFError, OSError):
            why = _ended(process)
            self.close()
            raise SolverFailed(f"{why} without returning") from None
        except (ValueError, UnicodeDecodeError, RecursionError):  # (a header nested too deep: ca_rev130)
            raise SolverFailed(self._stop("its process sent something that is not a message; it was stopped")) \
                from None

    def _sent_unasked(self) -> bool:
        """Whether the child has sent something since its last answer (nothing was asked)."""
        assert self._inbox is not None
        try:  # the pipe is non-blocking: nothing there is BlockingIOError
            return bool(os.read(self._inbox, 1))  # b"": the child closed the pipe, which the answer will tell
        except OSError:
            return False

    def _has_ended(self) -> bool:
        """Whether the child has ended since its last answer.  What it started in its process
        group is killed before it is reaped (as :func:`_ended` does: ``poll`` alone reaped it, and
        then :func:`_kill_group` could no longer reach its group)."""
        process = self._process
        assert process is not None
        if process.returncode is None and hasattr(os, "waitid"):
            if not _ended_unreaped(process):
                return False
            _kill_group(process)
        return process.poll() is not None

    def solve(self, scores: Sequence[torch.Tensor], h: Graph, temps: Sequence[float]) -> list[np.ndarray]:
        """The solver's duals of one instance (``scores``: ``M`` tensors ``(B, *h.shapes[k])``),
        as float64 arrays ``(B, *h.shapes[b])`` per edge; SolverFailed with the reason."""
        if self._process is None or self._has_ended():
            try:
                self._spawn()
            except ValueError as err:  # imported before, fails now
                raise SolverFailed(f"could not be imported again: {err}") from None
        assert self._outbox is not None and self._process is not None
        if self._sent_unasked():
            raise SolverFailed(self._stop("its process sent a message before it was given this instance (unasked); "
                                          "it was stopped"))
        self._number += 1
        number = self._number
        shapes = [(scores[0].shape[0],) + tuple(h.shapes[b]) for _, b in h.edges]
        late = f"did not return within {self.timeout:g} s (--timeout)"
        deadline = time.monotonic() + self.timeout
        # plain pickle (Connection.send's would share tensors through a server thread)
        message = _frame(pickle.dumps(("solve", number, [s.detach().cpu().numpy() for s in scores], h,
                                       [float(t) for t in temps])))
        try:
            _write(self._outbox, message, deadline)
        except _Late:
            raise SolverFailed(self._stop(f"{late}; its process was stopped")) from None
        except (OSError, ValueError):
            why = _ended(self._process)
            self.close()
            raise SolverFailed(f"{why} before it was given the instance") from None
        values = sum(math.prod(shape) for shape in shapes)
        header, body = self._receive(deadline, late, _SMALL_MESSAGE + 8 * values + 4096 * len(shapes))
        tag = header.get("instance")
        if type(tag) is not int or tag != number:  # true and 1.0 equal 1: a tag is the int sent, nothing like it
            raise SolverFailed(self._stop("its process sent a message that is not its answer to this instance "
                                          "(unasked); it was stopped"))
        if header["status"] == "error":
            raise SolverFailed(one_line(header.get("reason", "failed"), 400))  # its process wrote it
        if header["status"] != "duals":
            raise SolverFailed(self._stop("its process sent an unexpected message; it was stopped"))
        try:
            return _read_duals(body, shapes)
        except Exception as err:  # noqa: BLE001 - the child's bytes: a damaged archive fails in zipfile, zlib, numpy
            raise SolverFailed(self._stop(f"its process sent unreadable duals ({describe(err)}); it was "
                                          f"stopped")) from None

    def close(self) -> None:
        """Stop the child (if any) and its process group; safe to call twice."""
        inbox, outbox, process = self._inbox, self._outbox, self._process
        self._inbox = self._outbox = self._process = None
        for fd in (inbox, outbox):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if process is not None:
            _kill_group(process)  # what it started in its group, too
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
