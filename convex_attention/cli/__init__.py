"""The ``convex-attention`` command: one module per subcommand group.

* :mod:`.bench`: ``bench``, ``verify``, ``plot``, ``demo`` (the benchmark harness);
* :mod:`.paper`: ``train``, ``explain``, ``experiment`` (the paper's experiment);
* :mod:`._common`: usage errors, output options and the extras each subcommand needs (checked
  in :func:`main` before any work).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .. import __version__
from ._common import CommandParser, UsageError, missing_extra
from ._signals import Command, Terminated, sigint_deferred, sigterm_as_interruption, terminated
from .bench import BENCH_HANDLERS, EXAMPLES, add_bench_commands
from .data import DATA_HANDLERS, add_data_commands
from .paper import EXPERIMENT_HANDLERS, add_experiment_commands, train_interrupted

__all__ = ["main", "build_parser", "UsageError", "CommandParser", "Terminated"]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="convex-attention",
        description="Consistent multi-level attention: benchmark the exact closed form, the cvxpylayers "
                    "reference and the dual decomposition; verify dual solutions; plot comparisons; "
                    "train and explain the paper's attention CNN.",
        examples=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_bench_commands(sub)
    add_experiment_commands(sub)
    add_data_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:  # checking an option's value imports torch (a second or more): Ctrl-C there is no traceback (ca_rev253)
        with sigint_deferred():  # ... and is raised after that import, never inside it (ca_rev271)
            args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("convex-attention: interrupted before the command started; nothing was written", file=sys.stderr)
        return 130
    handlers = {**BENCH_HANDLERS, **EXPERIMENT_HANDLERS, **DATA_HANDLERS}
    command = args.command + (f" {args.data_command}" if args.command == "data" else "")
    missing = missing_extra(command)  # at the door: before any option is checked or any work starts
    if missing:
        print(f"convex-attention {command}: error: {missing}", file=sys.stderr)
        return 2
    state = Command()  # replaced by the command's own below
    stdout = sys.stdout
    if stdout is not None:  # (None: started with fd 1 closed, where print writes nothing: ca_rev172)
        sys.stdout = _DroppedOnceClosed(stdout)
    try:
        with sigterm_as_interruption() as state:
            status = handlers[args.command](args)
    except UsageError as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"convex-attention {command}: error: {message}", file=sys.stderr)
        return 2
    except BaseException as err:
        by_sigterm = terminated(err) or state.sigterm_arrived  # an error after SIGTERM: children dying of it
        if not isinstance(err, KeyboardInterrupt) and not by_sigterm:
            raise  # only an interruption ends here
        return _interrupted(command, by_sigterm, args)
    finally:
        sys.stdout = stdout
    if state.sigterm_arrived:  # raised where Python swallowed it (an at-fork callback), and the command ran on
        return _interrupted(command, True, args)
    return status


class _DroppedOnceClosed:
    """The command's stdout, whose output is dropped once its reader has gone (``... | head -0``):
    the command goes on and writes its files (a BrokenPipeError from the first line had ended
    verify in a traceback before it wrote verify.csv: ca_rev171); everything else is the stream's."""

    def __init__(self, stream):
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._close()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._close()

    def _close(self) -> None:
        self._closed = True
        # the stream's own descriptor onto /dev/null: what it still buffers goes there at exit, not into
        # "Exception ignored ... BrokenPipeError" on stderr
        with contextlib.suppress(AttributeError, OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _interrupted(command: str, by_sigterm: bool, args: argparse.Namespace) -> int:
    """One line saying what an interrupted command kept; exit 130 (Ctrl-C) or 143 (SIGTERM)."""
    message = (train_interrupted(args) if command == "train" else None) or INTERRUPTED.get(command, "interrupted")
    if by_sigterm:
        message = "terminated (SIGTERM)" + message.removeprefix("interrupted")
    print(f"convex-attention {command}: {message}", file=sys.stderr)
    return 143 if by_sigterm else 130


# What Ctrl-C (or SIGTERM) leaves behind, per command: resuming is advised only where there is a --resume.
INTERRUPTED = {
    "bench": "interrupted; the rows finished so far are kept (rerun with --resume to measure the rest)",
    "demo": "interrupted; the bench rows finished so far are kept (convex-attention bench --quick --out OUT "
            "--resume measures the rest); the other steps start over",
    "verify": "interrupted; no check result was written (verify.csv is written when every instance is done)",
    # (once training starts, train names its folder and whether an epoch finished: paper.train_interrupted)
    "train": "interrupted before training started; nothing of this run was written",
    "experiment": "interrupted; the stage did not finish and its results are incomplete (rerun the stage; a test "
                  "stage that started needs --force)",
}


if __name__ == "__main__":
    sys.exit(main())
