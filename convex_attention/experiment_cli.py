"""Subcommands of the paper's experiment (train, explain, experiment)."""
from __future__ import annotations

EXPERIMENT_HANDLERS: dict = {}


def add_experiment_commands(sub) -> None:
    return None
