"""What every subcommand shares: usage errors and argument types."""
from __future__ import annotations

import argparse
import math

__all__ = ["CommandParser", "UsageError", "finite_float", "positive_float", "positive_int", "add_output_options",
           "info"]


class UsageError(ValueError):
    """Bad arguments found after parsing: reported like argparse's own errors (exit 2)."""


class CommandParser(argparse.ArgumentParser):
    """argparse, failing like a command: one line on stderr (no usage block), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """Any finite number (``inf`` and ``nan`` are refused); ranges are checked by the configs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


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
