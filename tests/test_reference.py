"""docs/commands.md is the command's parser written out: every option, with the default its
setting declares (convex_attention/cli/reference.py)."""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import pytest
from helpers import benchmark_script

from convex_attention.cli import build_parser
from convex_attention.cli._common import CommandParser
from convex_attention.cli.reference import command_reference
from convex_attention.paper.config import FULL, QUICK

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _reference() -> str:
    """The command's reference, built once for the file (each build builds the whole parser)."""
    return command_reference()


def test_the_committed_reference_is_the_parsers():
    """A changed default, option or help text leaves docs/commands.md stale until it is written
    again; the docs then say one thing and the command does another."""
    committed = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    assert committed == _reference(), (
        "docs/commands.md is stale: write it again with "
        "`python -m convex_attention.cli.reference > docs/commands.md`")


def _rows(text: str, command: str) -> dict[str, str]:
    """{invocation: meaning} of one command's table in the reference."""
    section = text.split(f"## `{command}`\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            invocation, meaning = line[3:].split("` | ", 1)
            rows[invocation.replace("\\|", "|")] = meaning.removesuffix(" |")  # as typed: on|off
    return rows


def test_every_subcommand_and_every_option_has_its_row():
    text = _reference()
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        assert f"## `convex-attention {name}`\n" in text
        options = {o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")}
        listed = " ".join(_rows(text, f"convex-attention {name}"))
        missing = [o for o in options if f"{o} " not in f"{listed} " and f"{o}," not in listed]
        assert not missing, (name, missing)
    assert "## `convex-attention data check`\n" in text


def test_the_experiments_defaults_and_its_quick_preset_are_stated():
    """The defaults an earlier review found in no document (ca_rev214): n_explain, n_dev,
    validity_images, the --quick n_sanity, the full alpha grid; read from the configurations."""
    rows = _rows(_reference(), "convex-attention experiment")
    for option, name in (("--n-explain N", "n_explain"), ("--n-dev N", "n_dev"), ("--n-sanity N", "n_sanity"),
                         ("--validity-images N", "validity_images")):
        assert rows[option].endswith(f"(default: {getattr(FULL, name)} / --quick: {getattr(QUICK, name)})")
    alphas = " ".join(str(a) for a in FULL.candidates()["alpha"])
    assert f"(default: {alphas} / --quick:" in rows["--grid-alpha X [X ...]"]


def test_the_benchs_defaults_are_stated():
    from convex_attention.bench.config import SweepConfig

    rows = _rows(_reference(), "convex-attention bench")
    config = SweepConfig()
    for option, name in (("--repeats N", "repeats"), ("--warmup N", "warmup"), ("--budget X", "budget"),
                         ("--fit-instances N", "fit_instances"), ("--fit-steps N", "fit_steps"),
                         ("--amortised-steps N", "amortised_steps")):
        assert rows[option].endswith(f"(default: {getattr(config, name)})"), option


def test_one_number_is_the_default_of_the_explain_command_and_of_the_experiments_explanations():
    """explain --n-images and the experiment's n_explain, data check --n and validity_images:
    the same setting in two commands, declared once (paper.config)."""
    from convex_attention.paper import config
    from convex_attention.paper.explain import explain_models

    text = _reference()
    assert _rows(text, "convex-attention explain")["--n-images N"].endswith(f"(default: {FULL.n_explain})")
    assert _rows(text, "convex-attention data check")["--n N"].endswith(f"(default: {FULL.validity_images})")
    assert FULL.n_explain == config.EXPLAINED_IMAGES == explain_models.__defaults__[0]
    assert FULL.validity_images == config.VALIDITY_IMAGES


def _toy_parser() -> CommandParser:
    parser = CommandParser(prog="tool", description="First  line\nwrapped.\n\nSecond paragraph.")
    parser.add_argument("--pick", choices=["a", "b"], default="a", help="one of them (default: %(default)s)")
    parser.add_argument("--many", nargs="+", type=int, metavar="N", help="numbers; 95 %% of them | pipes")
    parser.add_argument("--maybe", nargs="?", help="optional value")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    parser.add_argument("folder", help="where")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("go", help="runs", description="Goes.", examples=("tool go  # it goes",))
    sub.add_parser("unlisted")
    return parser


def test_a_row_is_the_invocation_and_the_expanded_help():
    text = command_reference(_toy_parser())
    assert "## `tool`\n\nFirst line wrapped.\n\nSecond paragraph.\n" in text
    rows = _rows(text, "tool")
    assert rows == {"--pick {a,b}": "one of them (default: a)", "--many N [N ...]": "numbers; 95 % of them \\| pipes",
                    "--maybe [MAYBE]": "optional value", "--flag": "a switch", "folder": "where", "go": "runs"}
    assert "--hidden" not in text and "show this help message" not in text
    assert "## `tool go`\n\nGoes.\n" in text and "```\ntool go  # it goes\n```" in text
    assert "## `tool unlisted`" in text and "| `unlisted` |" not in text


VALUE_WORDS = {"N", "X", "TEXT", "NAME", "OUT", "FILE", "HEX", "SPEC", "NAME=PATH", "on|off"}


@pytest.mark.parametrize("reference", ["commands.md", "benchmark_scripts.md"])
def test_metavars_name_the_kind_of_value_not_the_option(reference):
    """Hand-written options had argparse's default metavars (`--n-images N_IMAGES`, `--seed SEED`,
    `--resume RESUME`) where the declared ones say N, X, TEXT or NAME; the benchmark scripts' too."""
    text = _reference() if reference == "commands.md" else _scripts_reference()
    for command in text.split("\n## `")[1:]:
        name = command.split("`", 1)[0]
        for invocation in _rows(text, name):
            value = invocation.partition(" ")[2].split(" [")[0]
            words_ok = not value or value in VALUE_WORDS or (value.startswith("{") and value.endswith("}"))
            assert words_ok, (name, invocation)


# ---- ca_rev233 (hostile review of the 42nd session's changes): the reference as Markdown renders it;
#      its strict xfails now pass

def _gfm_cells(row: str) -> int:
    """Cells of a Markdown table row as GitHub splits it: at every pipe not escaped by a backslash,
    inside a code span too (GFM spec, tables: a pipe in a cell's code span must be escaped)."""
    import re

    return len(re.split(r"(?<!\\)\|", row.strip().removeprefix("|").removesuffix("|")))


def test_every_table_row_renders_as_two_cells():
    text = _reference()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    broken = [row for row in rows if _gfm_cells(row) != 2]
    assert not broken, broken


def test_no_help_text_reads_as_a_raw_html_tag():
    import re

    text = re.sub(r"```.*?```", "", _reference(), flags=re.S)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans
    assert not re.findall(r"<[A-Za-z][A-Za-z0-9_-]*>", text)


# ---- ca_rev235 (mutation review of the 42nd session's code): a tuple metavar is typed as separate words


def test_ca_rev235_a_tuple_metavar_is_shown_as_the_words_typed():
    import argparse

    from convex_attention.cli.reference import _invocation

    parser = argparse.ArgumentParser()
    action = parser.add_argument("--pair", nargs=2, metavar=("LOW", "HIGH"))
    assert _invocation(action) == "--pair LOW HIGH"


# ---- the benchmark scripts' reference (docs/benchmark_scripts.md, benchmarks/reference.py)


@functools.cache
def _scripts_writer():
    """benchmarks/reference.py as a module, loaded once for the file."""
    return benchmark_script("reference")


@functools.cache
def _scripts_reference() -> str:
    return _scripts_writer().benchmark_scripts_reference()


def test_the_committed_benchmark_scripts_reference_is_the_scripts_parsers():
    committed = (ROOT / "docs" / "benchmark_scripts.md").read_text(encoding="utf-8")
    assert committed == _scripts_reference(), (
        "docs/benchmark_scripts.md is stale: write it again with "
        "`python benchmarks/reference.py > docs/benchmark_scripts.md`")


def test_every_benchmark_script_is_listed_or_said_to_have_no_parser_of_its_own():
    writer = _scripts_writer()
    present = {path.stem for path in (ROOT / "benchmarks").glob("*.py")}
    assert present == set(writer.SCRIPTS) | set(writer.NOT_LISTED)
    assert not set(writer.SCRIPTS) & set(writer.NOT_LISTED)


def test_every_option_of_every_benchmark_script_has_its_row():
    text, writer = _scripts_reference(), _scripts_writer()
    for name in writer.SCRIPTS:
        command = f"python benchmarks/{name}.py"
        parser = writer.load_script(name).build_parser()
        options = {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}
        listed = " ".join(_rows(text, command))
        assert options and [o for o in options if f"{o} " not in f"{listed} " and f"{o}," not in listed] == []


def test_a_scripts_usage_lines_are_code_its_numbered_list_one_item_a_line_and_a_required_option_says_so():
    """A script's description (RawDescriptionHelpFormatter) keeps its indented usage lines as they are and
    its numbered list as a list; ``--help`` shows a required option as such only in its usage line."""
    from convex_attention.cli.reference import scripts_reference

    description = ("What it does.\n\n    python benchmarks/x.py --out A   # a comment\n"
                   "    python benchmarks/x.py \\\n        --tiny\n\n"
                   "1. First: see :func:`convex_attention.solve`\n   and more.\n2. Second.\n\nLast words.\n")
    parser = CommandParser(prog="x.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a folder")
    parser.add_argument("--n", type=int, default=3, help="how many (default 3)")
    text = scripts_reference("# Scripts\n", [("python benchmarks/x.py", parser)])
    assert ("```\npython benchmarks/x.py --out A   # a comment\npython benchmarks/x.py \\\n    --tiny\n```"
            in text)
    assert "\n1. First: see `convex_attention.solve` and more.\n2. Second.\n\nLast words.\n" in text
    assert "| `--out OUT` | a folder (required) |" in text and "| `--n N` | how many (default 3) |" in text
