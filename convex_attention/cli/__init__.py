"""The ``convex-attention`` command: one module per subcommand group.

* :mod:`.bench`: ``bench``, ``verify``, ``plot``, ``demo`` (the benchmark harness);
* :mod:`.paper`: ``train``, ``explain``, ``experiment`` (the paper's experiment);
* :mod:`._common`: usage errors, output options and the extras each subcommand needs (checked
  in :func:`main` before any work).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from .. import __version__
from ._common import CommandParser, UsageError, missing_extra
from .bench import BENCH_HANDLERS, EXAMPLES, add_bench_commands
from .data import DATA_HANDLERS, add_data_commands
from .paper import EXPERIMENT_HANDLERS, add_experiment_commands

__all__ = ["main", "build_parser", "UsageError", "CommandParser", "Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is: it then ends as Ctrl-C does (its locks released,
    its temporaries removed, one line on stderr), with exit status 143 (128 + SIGTERM).
    Before, SIGTERM killed the process on the spot, silent, its folder's lock left behind."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interruption():
    """SIGTERM raises :class:`Terminated` while a command runs, where the handler is
    Python's default and this is the main thread (a program that set its own is left
    alone); the handler before is restored afterwards."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="convex-attention",
        description="Consistent multi-level attention: benchmark the exact closed form, the cvxpylayers "
                    "reference and the dual decomposition; verify dual solutions; plot comparisons; "
                    "train and explain the paper's attention CNN.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_bench_commands(sub)
    add_experiment_commands(sub)
    add_data_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {**BENCH_HANDLERS, **EXPERIMENT_HANDLERS, **DATA_HANDLERS}
    command = args.command + (f" {args.data_command}" if args.command == "data" else "")
    missing = missing_extra(command)  # at the door: before any option is checked or any work starts
    if missing:
        print(f"convex-attention {command}: error: {missing}", file=sys.stderr)
        return 2
    try:
        with _sigterm_as_interruption():
            return handlers[args.command](args)
    except UsageError as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"convex-attention {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        message = INTERRUPTED.get(command, "interrupted")
        if isinstance(err, Terminated):
            message = "terminated (SIGTERM)" + message.removeprefix("interrupted")
        print(f"convex-attention {command}: {message}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130


# What Ctrl-C (or SIGTERM) leaves behind, per command: resuming is advised only where there is a --resume.
INTERRUPTED = {
    "bench": "interrupted; the rows finished so far are kept (rerun with --resume to measure the rest)",
    "demo": "interrupted; the bench rows finished so far are kept (convex-attention bench --quick --out OUT "
            "--resume measures the rest); the other steps start over",
    "verify": "interrupted; no check result was written (verify.csv is written when every instance is done)",
    "train": "interrupted; OUT/last.pt holds the last finished epoch, if one finished (train --resume "
             "OUT/last.pt continues from it)",
    "experiment": "interrupted; the stage did not finish and its results are incomplete (rerun the stage; a test "
                  "stage that started needs --force)",
}


if __name__ == "__main__":
    sys.exit(main())
