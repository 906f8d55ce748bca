"""SIGTERM ends a command as Ctrl-C does.

While a command runs (:func:`sigterm_as_interruption`), SIGTERM raises :class:`Terminated`
(a ``KeyboardInterrupt``) where the command is, so that its locks are released, its
temporaries removed and one line says what it kept; :func:`convex_attention.cli.main`
then exits with status 143 (128 + SIGTERM).  Before, SIGTERM killed the process on the spot,
silent, its folder's lock left behind.

Three cases need more than a handler that raises:

* a forked child (a DataLoader worker) inherits the handler: it is reset there at the fork,
  and a child that still runs it dies of SIGTERM as it would without it;
* children that die of the same signal (a process group's) make torch's DataLoader raise
  from SIGCHLD while Terminated unwinds: SIGCHLD is handled by a no-op once SIGTERM
  arrived, and :func:`terminated` finds Terminated in an error's context chain;
* Python swallows an exception raised in an at-fork callback or a ``__del__`` (it prints
  "Exception ignored"), and the command would run on: SIGTERM is delivered again every
  :data:`REDELIVERY_S` seconds until the command has ended, and a command that ended on
  its own after SIGTERM is reported as terminated too (:attr:`Command.sigterm_arrived`).  Python
  still prints the swallowed one ("Exception ignored in ..."): measured with a process-group
  SIGTERM to ``train --workers 2``, 1 run in 6 had those lines above the command's own.
"""
from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading

__all__ = ["Terminated", "Command", "sigterm_as_interruption", "terminated", "REDELIVERY_S", "sigint_deferred"]

#: Seconds between deliveries of a SIGTERM the command did not act on (one raised where
#: Python swallows exceptions); an unwinding command finishes its clean-up well within it.
REDELIVERY_S = 5.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is (see the module docstring)."""


class Command:
    """One command's state: ``sigterm_arrived`` (read by ``main`` after the command) and
    ``ending``, set first thing when it ends (a plain store, which no handler can interrupt:
    from then on the handler does nothing, and no redelivery starts)."""

    def __init__(self) -> None:
        self.sigterm_arrived = False
        self.ending = False
        self.ended = threading.Event()  # wakes the redelivery thread, to stop


_command_pid: int | None = None  # the process whose command raises Terminated on SIGTERM
_current: Command | None = None  # the command that runs now in that process
_delivering = threading.Lock()  # held by a redelivery, and once by the command's end (a barrier)


def _raise_terminated(signum, frame):
    if os.getpid() != _command_pid:  # a forked child that kept the handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # it ends as SIGTERM ends it without the handler
        return
    command = _current
    if command is None:
        return
    if command.ending:  # the command is over: nothing to interrupt, but main() reports it
        command.sigterm_arrived = True
        return
    if not command.sigterm_arrived:
        command.sigterm_arrived = True
        if hasattr(signal, "SIGCHLD"):  # children dying of the same signal: no second error over this one
            with contextlib.suppress(Exception):  # the handler replaced may run (and raise) as it is replaced
                signal.signal(signal.SIGCHLD, _ignore_child)
        threading.Thread(target=_deliver_again, args=(command,), name="sigterm-redelivery", daemon=True).start()
    raise Terminated


def _ignore_child(signum, frame) -> None:
    """SIGCHLD once SIGTERM arrived: nothing (a Python handler, not SIG_DFL: a SIGCHLD already
    pending under the DataLoader's handler would raise "Signal 17 ignored due to race
    condition" where the command unwinds)."""


def _deliver_again(command: Command) -> None:
    """SIGTERM's handler again, in the main thread, every :data:`REDELIVERY_S` seconds until
    the command ends.  ``interrupt_main`` runs the handler at the main thread's next Python
    instruction, as a signal's is run (it does not wake a blocking call, which a signal
    would), and does nothing once the handler is the default, whereas a real signal
    arriving just after the command restored the default would kill the process."""
    while not command.ended.wait(REDELIVERY_S):
        with _delivering:
            if command.ending:
                return
            _thread.interrupt_main(signal.SIGTERM)


def _reset_in_child() -> None:
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        with contextlib.suppress(ValueError):  # a fork from another thread: the pid check applies instead
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


@contextlib.contextmanager
def sigterm_as_interruption():
    """SIGTERM raises :class:`Terminated` inside the ``with`` block, which receives the
    command's :class:`Command`, where the handler is Python's default and this is the main
    thread (a program that set its own is left alone: its command's ``sigterm_arrived``
    stays False); the handlers before are restored afterwards."""
    global _command_pid, _current
    command = Command()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield command
        return
    sigchld = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
    _command_pid, _current = os.getpid(), command
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield command
    finally:
        command.ending = True  # first: a handler run from here on returns at once
        try:
            with _delivering:  # a redelivery under way finishes; none starts after this
                command.ended.set()
        finally:
            _current = None
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # runs a pending handler first: it returns
            if sigchld is not None and command.sigterm_arrived:
                signal.signal(signal.SIGCHLD, sigchld)


@contextlib.contextmanager
def sigint_deferred():
    """Ctrl-C (SIGINT) inside the ``with`` block is held until the block ends, then raised there
    as ``KeyboardInterrupt``: for the option checks, which import torch.  Raised inside that import
    (its C++ initialisation, a ``dataclass``'s ``exec``), it had ended the process as SIGINT kills
    it (status -2) or in "terminate called ... what(): KeyboardInterrupt" (abort) after the line
    saying nothing was written, 1 run in about 30 with Ctrl-C at a random moment of the import
    (ca_rev271).  A block that ends in another exception (a usage error, ``--help``) ends as it
    does; the handler before is restored.  A second Ctrl-C before the block ends is raised at once:
    a block that never ends (an import hung on a network file system) had held every Ctrl-C for
    good (ca_rev275).  Left alone where SIGINT's handler is not Python's default, or off the main thread."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    arrived: list[int] = []

    def held(signum, frame) -> None:
        if arrived:  # the user presses again: the block has not ended, and is interrupted where it is
            raise KeyboardInterrupt
        arrived.append(signum)

    previous = signal.signal(signal.SIGINT, held)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if arrived:
        raise KeyboardInterrupt


def terminated(err: BaseException | None) -> bool:
    """Whether ``err`` is :class:`Terminated` or was raised while one unwound (its context
    chain)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Terminated):
            return True
        seen.add(id(err))
        err = err.__context__ or err.__cause__
    return False
