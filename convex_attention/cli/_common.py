"""What every subcommand shares: usage errors, the output options and the output folder check.

The argument types (``positive_int`` and the others) are the settings' kinds
(:mod:`convex_attention.io.settings`), so an option and a configuration field of the
same setting accept the same values.
"""
from __future__ import annotations

import argparse

from ..io.files import check_out_dir

__all__ = ["CommandParser", "UsageError", "add_output_options", "show_progress", "info", "check_out"]


class UsageError(ValueError):
    """Bad arguments found after parsing: reported like argparse's own errors (exit 2)."""


class CommandParser(argparse.ArgumentParser):
    """argparse, failing like a command: one line on stderr (no usage block), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--quiet``, the same on every subcommand."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (info lines stay)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars and no info lines; errors still go to stderr")


def show_progress(args) -> bool:
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False))


def info(args, *message) -> None:
    """An info line on stdout, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(*message)


def check_out(path: str) -> None:
    """UsageError unless ``path`` is, or can be made, a writable folder."""
    try:
        check_out_dir(path)
    except ValueError as err:
        raise UsageError(str(err)) from None
