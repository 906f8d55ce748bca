"""The command reference, docs/commands.md: every subcommand's description, options (each with
its default, as ``--help`` shows it) and examples, rendered from the parser itself, so that
the documentation states each default where the setting declares it and nowhere else.

``python -m convex_attention.cli.reference > docs/commands.md`` writes it again after a setting
or a help text changed; tests/test_reference.py fails while the committed file differs. The
same renderer writes docs/benchmark_scripts.md from the scripts' parsers
(:func:`scripts_reference`, called by benchmarks/reference.py: the package imports no script).

The text comes from the parser's actions (option names, metavars, help), not from argparse's
formatted ``--help``, whose wrapping follows the terminal and whose layout changes between
Python versions.
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap

from . import build_parser

HEADER = """# Command reference

<!-- Written by `python -m convex_attention.cli.reference > docs/commands.md` from the command's
parser; tests/test_reference.py fails while it differs. Edit the help texts in the code. -->

Every option of `convex-attention` and its subcommands, with its default, as `--help` prints
it: this file is written from the parser, whose settings are declared once (`io.settings.setting`,
in `bench.config` and `paper.config`). `experiment` shows its `--quick` preset's value after '/';
`bench --quick` says what it changes. Every command also takes `-h, --help`. What the numbers
mean, and what a sweep or the experiment measured with them: docs/benchmarks.md,
docs/experiment.md and docs/user_guide.md.
"""


def command_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown text of docs/commands.md for ``parser`` (the ``convex-attention`` command's
    by default): one section per subcommand (nested ones, ``data check``, included), in the
    order ``--help`` lists them."""
    parser = parser if parser is not None else build_parser()
    return "\n".join([HEADER, *(_section(name, command) for name, command in _commands(parser, parser.prog))])


def scripts_reference(header: str, scripts: list[tuple[str, argparse.ArgumentParser]]) -> str:
    """The Markdown text of a reference to stand-alone scripts (docs/benchmark_scripts.md):
    ``header``, then one section per ``(how it is run, its parser)``, as :func:`command_reference`
    writes a subcommand's."""
    return "\n".join([header, *(_section(name, parser) for name, parser in scripts)])


def _commands(parser: argparse.ArgumentParser, name: str):
    """(full command name, parser) for ``parser`` and every subcommand below it, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _commands(sub, f"{name} {sub_name}")


def _section(name: str, parser: argparse.ArgumentParser) -> str:
    lines = [f"## `{name}`", ""]
    if parser.description:
        lines += [_paragraph(parser.description), ""]
    rows = [action for action in parser._actions if action.help != argparse.SUPPRESS
            and not isinstance(action, (argparse._SubParsersAction, argparse._HelpAction))]
    if rows:
        lines += ["| argument | meaning |", "|---|---|"]
        lines += [f"| `{_unsplit(_invocation(action))}` | {_cell(_help(parser, action))}{_required(action)} |"
                  for action in rows]
        lines.append("")
    commands = [(sub_name, choice.help) for action in parser._actions
                if isinstance(action, argparse._SubParsersAction) for sub_name, choice in _listed(action)]
    if commands:
        lines += ["| command | what it does |", "|---|---|"]
        lines += [f"| `{sub_name}` | {_cell(text or '')} |" for sub_name, text in commands]
        lines.append("")
    examples = getattr(parser, "examples", ())  # (CommandParser's; a plain parser has none)
    if examples:
        lines += ["Examples:", "", "```", *examples, "```", ""]
    return "\n".join(lines)


def _listed(action: argparse._SubParsersAction):
    """(name, the pseudo-action carrying its help) for each listed subcommand."""
    helps = {choice.dest: choice for choice in action._choices_actions}
    return [(name, helps[name]) for name in action.choices if name in helps]


def _invocation(action: argparse.Action) -> str:
    """How the argument is typed: ``--sizes N [N ...]``, ``--quick``, ``folder``."""
    if not action.option_strings:
        return str(action.metavar or action.dest)
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar if action.metavar is not None else (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper())
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    value = {None: metavar, "?": f"[{metavar}]", "*": f"[{metavar} ...]",
             "+": f"{metavar} [{metavar} ...]"}.get(action.nargs, metavar)  # type: ignore[arg-type]
    return f"{names} {value}"


def _required(action: argparse.Action) -> str:
    """An option that must be given says so (``--help`` shows it only in the usage line)."""
    return " (required)" if action.required and action.option_strings else ""


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text as ``--help`` prints it (its ``%(default)s`` and ``%%`` expanded), by a plain
    formatter: never the parser's own, which may colour it for a terminal (Python 3.14)."""
    return argparse.HelpFormatter(parser.prog)._expand_help(action) if action.help else ""


def _paragraph(text: str) -> str:
    """A description as one paragraph per blank-line-separated block (``--help`` rewraps it),
    except a block whose every line is indented (a script's usage lines, which its
    ``RawDescriptionHelpFormatter`` prints as they are): that one is a code block."""
    return "\n\n".join(_code(block) if _indented(block) else _list_or_prose(block)
                       for block in text.strip("\n").split("\n\n"))


def _list_or_prose(block: str) -> str:
    """A numbered list (``1. ...`` lines, each item's continuation indented) one item per line;
    any other block one line."""
    if not re.match(r"\s*\d+\. ", block):
        return _prose(" ".join(block.split()))
    items = re.split(r"\n(?=\s*\d+\. )", block)
    return "\n".join(_prose(" ".join(item.split())) for item in items)


def _indented(block: str) -> bool:
    lines = [line for line in block.split("\n") if line.strip()]
    return bool(lines) and all(line.startswith("    ") for line in lines)


def _code(block: str) -> str:
    return "\n".join(["```", *textwrap.dedent(block).strip("\n").split("\n"), "```"])


def _cell(text: str) -> str:
    """``text`` on one line, safe inside a Markdown table cell."""
    return _unsplit(_prose(" ".join(text.split())))


def _unsplit(text: str) -> str:
    """A pipe splits a Markdown table row even inside a code span (``on|off``): escaped
    (ca_rev233)."""
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """Help text as Markdown shows it: ``<backend>`` would be read as an HTML tag, and dropped
    (ca_rev233); a ``<`` that opens no tag (``<= 0.60``) is left as it is."""
    text = re.sub(r":(?:func|class|data|mod|meth|attr):`", "`", text)  # a docstring's roles: the name alone
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


if __name__ == "__main__":  # pragma: no cover - the writer of docs/commands.md
    sys.stdout.write(command_reference())
