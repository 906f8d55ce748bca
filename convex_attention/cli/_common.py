"""What every subcommand shares: usage errors and argument types."""
from __future__ import annotations

import argparse

__all__ = ["UsageError", "positive_float", "positive_int"]


class UsageError(ValueError):
    """Bad arguments found after parsing: reported like argparse's own errors (exit 2)."""


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value
