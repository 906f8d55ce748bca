"""Command-line conventions of every subcommand: each option teaches (a help text), shows its
default, and `--quiet` / `--version` exist."""
from __future__ import annotations

import argparse

import pytest

from convex_attention import __version__, cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaf_commands():
    out = {}
    for name, sub in _subparsers(cli.build_parser()).items():
        nested = _subparsers(sub)
        out.update({f"{name} {n}": p for n, p in nested.items()} if nested else {name: sub})
    return out


COMMANDS = _leaf_commands()


def test_every_subcommand_is_found():
    assert {"bench", "verify", "plot", "demo", "train", "explain", "experiment"} <= set(COMMANDS)
    assert any(name.startswith("data") for name in COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default_once(name):
    """An option that takes a value says its default, once (argparse's formatter that
    appends "(default: ...)" would print it a second time, or print None)."""
    parser = COMMANDS[name]
    assert not issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or not action.option_strings:
            continue
        option = action.option_strings[0]
        assert action.help and action.help.strip(), f"{name} {option} has no help text"
        shown = action.help.count("(default:")
        if action.nargs == 0:  # a switch: its help says what it does
            assert shown <= 1, f"{name} {option} shows its default {shown} times"
        elif action.required:
            assert shown == 0, f"{name} {option} is required and shows a default"
        else:
            assert shown == 1, f"{name} {option} shows its default {shown} times"
    assert "(default: None)" not in parser.format_help()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_takes_quiet(name):
    options = {s for a in COMMANDS[name]._actions for s in a.option_strings}
    assert "--quiet" in options, f"{name} has no --quiet"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_a_usage_error_is_one_line_on_stderr_with_exit_2(capsys):
    assert _exit_code(["bench", "--scale", "inf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale" in err[0] and "Traceback" not in err[0]


def _exit_code(argv):
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code
