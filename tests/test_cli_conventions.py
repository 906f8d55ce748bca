"""Command-line conventions of every subcommand: each option teaches (a help text), shows its
default, and `--quiet` / `--version` exist."""
from __future__ import annotations

import argparse
import configparser
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from helpers import benchmark_script

from convex_attention import __version__, cli
from convex_attention.cli._common import COMMAND_EXTRAS, EXTRA_MODULES

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    assert err[0].endswith("(see convex-attention bench --help)")  # no usage block: where to read it instead


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if any("--out" in a.option_strings
                                                                  for a in COMMANDS[n]._actions)))
def test_a_value_of_two_dashes_is_one_line_not_a_traceback(name, capsys, tmp_path, monkeypatch):
    """argparse stores ``--out=--`` as an empty list: demo, bench, verify and data check joined it
    as a path and raised TypeError (a review)."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(name.split() + ["--out=--"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # (a command with another required argument may name that one first: one line either way)
    assert len(err) == 1 and ("argument --out: expected a value, got '--'" in err[0]
                              or "the following arguments are required" in err[0]), err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [["verify", "--backends=--", "--out", "o"], ["explain", "--checkpoints=--"],
                                  ["bench", "--sizes=--"]])
def test_a_list_option_given_two_dashes_is_one_line(argv, capsys, tmp_path, monkeypatch):
    """``verify --backends=--`` ran with no backend checked, ``explain --checkpoints=--`` ended in
    a traceback (a review)."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # (Python 3.13 keeps the "--": a list of integers then refuses it as no integer, in one line too)
    assert len(err) == 1 and f"argument {argv[1].split('=')[0]}: " in err[0] and "got '--'" in err[0], err
    assert os.listdir(tmp_path) == []


def _exit_code(argv):
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code


# ---------------------------------------------------------------------------- --help is light

HEAVY = ("torch", "cvxpy", "cvxpylayers", "matplotlib", "sklearn", "captum", "scipy", "nibabel", "PIL")


def test_building_the_parser_and_every_help_import_nothing_heavy():
    """`convex-attention --help` and `convex-attention <cmd> --help` read only light
    declarations: none of the heavy libraries is imported (checked in a fresh process, where
    nothing was imported before; the time is measured in the report, never asserted)."""
    argvs = [[]] + [name.split() for name in sorted(COMMANDS)]
    code = ("import contextlib, io, sys\n"
            "from convex_attention import cli\n"
            "cli.build_parser()\n"
            f"for argv in {argvs!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try:\n"
            "            cli.main(argv + ['--help'])\n"
            "        except SystemExit as stop:\n"
            "            assert stop.code == 0, (argv, stop.code)\n"
            "    assert 'usage: convex-attention' in out.getvalue(), argv\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"--help imported {done.stdout.strip()}"


@pytest.mark.slow  # a Python process of its own (1.5 s)
def test_the_package_loads_its_api_on_first_use():
    """`import convex_attention` is light (the command imports it); `ca.solve` and every
    public name still work, and `dir`/`__all__` list them."""
    code = ("import sys\n"
            "import convex_attention as ca\n"
            "light = 'torch' not in sys.modules\n"
            "assert set(ca.__all__) <= set(dir(ca))\n"
            "import convex_attention.nn  # imports the submodule solve.py: ca.solve stays the function\n"
            "assert callable(ca.solve) and ca.solve.__name__ == 'solve', ca.solve\n"
            "names = [getattr(ca, n) for n in ca.__all__]\n"
            "from convex_attention import solve, Hierarchy\n"
            "assert solve is ca.solve and callable(ca.solve) and ca.Hierarchy is Hierarchy\n"
            "try:\n"
            "    ca.no_such_name\n"
            "except AttributeError as err:\n"
            "    assert 'no_such_name' in str(err)\n"
            "else:\n"
            "    raise AssertionError('no AttributeError')\n"
            "print(light, len(names))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(len(set(__import__("convex_attention").__all__)))]


# ---------------------------------------------------------------------------- extras at the door

# pip name (setup.cfg) -> the module it installs
_MODULE_OF = {"captum": "captum", "scikit-learn": "sklearn", "nibabel": "nibabel", "pillow": "PIL", "moreau": "moreau"}


def _setup_cfg_extras() -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    return {name: {re.split(r"[<>=!~ \[]", line.strip())[0] for line in extras[name].splitlines() if line.strip()}
            for name in extras}


def test_every_subcommand_declares_the_extras_it_needs():
    assert set(COMMAND_EXTRAS) == set(COMMANDS)
    assert {e for extras in COMMAND_EXTRAS.values() for e in extras} <= set(EXTRA_MODULES)


def test_the_extras_and_their_modules_are_setup_cfgs():
    declared = _setup_cfg_extras()
    for extra, modules in EXTRA_MODULES.items():
        assert extra in declared, extra
        assert set(modules) == {_MODULE_OF[p] for p in declared[extra]}, extra
        assert declared[extra] <= declared["all"]


# the least each subcommand needs to get past argparse (its handler is replaced: no work runs)
_ARGV = {"plot": ["plot", "results"], "explain": ["explain", "--checkpoints", "a=a.pt"]}
_BLOCKER = """
import sys
BLOCKED = set(sys.argv[1].split(','))

class Blocker:  # a module of a missing extra: importing it (or asking find_spec) fails as if not installed
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None

sys.meta_path.insert(0, Blocker())
from convex_attention import cli
for table in (cli.BENCH_HANDLERS, cli.EXPERIMENT_HANDLERS, cli.DATA_HANDLERS):
    for key in table:
        table[key] = lambda args: print('HANDLER RAN') or 0
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_missing_extra_is_one_line_naming_it_before_any_work(name):
    blocked = sorted({m for modules in EXTRA_MODULES.values() for m in modules})
    argv = _ARGV.get(name, name.split())
    done = subprocess.run([sys.executable, "-c", _BLOCKER, ",".join(blocked), *argv], capture_output=True,
                          text=True, cwd=ROOT)
    assert "Traceback" not in done.stderr, done.stderr
    needs = COMMAND_EXTRAS[name]
    if not needs:  # runs on the base install: the door lets it through
        assert done.returncode == 0 and "HANDLER RAN" in done.stdout, done.stderr
        return
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "HANDLER RAN" not in done.stdout
    assert len(lines) == 1, lines
    extra = needs[0]
    assert lines[0].startswith(f"convex-attention {name}: error: needs the [{extra}] extra")
    assert f"pip install 'convex-attention[{extra}]'" in lines[0]
    assert all(m in lines[0] for m in EXTRA_MODULES[extra])  # what is missing, by name


def test_one_missing_module_is_named_alone():
    done = subprocess.run([sys.executable, "-c", _BLOCKER, "sklearn", "train"], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 2 and "(missing: sklearn)" in done.stderr and "HANDLER RAN" not in done.stdout


def test_every_help_prints_on_an_ascii_only_stdout():
    """Found by a hostile review: `PYTHONIOENCODING=ascii convex-attention bench --help` (and
    verify's) crashed with UnicodeEncodeError on the λ of the help."""
    argvs = [[]] + [name.split() for name in sorted(COMMANDS)]
    code = ("import sys\n"
            "from convex_attention import cli\n"
            f"for argv in {argvs!r}:\n"
            "    try:\n"
            "        cli.main(argv + ['--help'])\n"
            "    except SystemExit as stop:\n"
            "        assert stop.code == 0, (argv, stop.code)\n")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, env=env)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode("ascii", "replace")
    assert done.stdout.isascii() and b"\\u03bb" in done.stdout  # the lambda, escaped
    assert done.stdout.count(b"usage: convex-attention") == len(argvs)


def _example_argv(line: str) -> list[str]:
    """The arguments of an example command line (after ``convex-attention`` or ``-m
    convex_attention.cli``), its ``# comment`` left out."""
    import shlex

    words = shlex.split(line, comments=True)
    start = next(i for i, w in enumerate(words) if w in ("convex-attention", "convex_attention.cli"))
    return words[start + 1:]


def _top_level_examples() -> list[str]:
    from convex_attention.cli.bench import EXAMPLES

    return [line.strip() for line in "\n".join(EXAMPLES).replace("\\\n", " ").splitlines()
            if "convex-attention" in line]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_ends_with_examples_that_parse(command, capsys):
    """Before: only the top-level --help had examples (and one of them, `--structure star ...
    --levels 2`, is now refused: --levels shapes the chain only)."""
    parser = COMMANDS[command]
    assert parser.examples, f"{command} --help shows no example"
    assert parser.format_help().rstrip().endswith(parser.examples[-1])
    for line in parser.examples:
        argv = _example_argv(line)
        assert " ".join(argv[:len(command.split())]) == command, line
        cli.build_parser().parse_args(argv)  # SystemExit(2) on an unknown option or a bad value


@pytest.mark.parametrize("line", [*COMMANDS["bench"].examples, *COMMANDS["verify"].examples,
                                  *_top_level_examples()])
def test_bench_and_verify_examples_pass_the_commands_own_checks(line):
    """The checks before any work (values, options no row reads, backends that run here),
    for every bench and verify example, the top-level ones included."""
    from convex_attention.cli import bench as cli_bench

    args = cli.build_parser().parse_args(_example_argv(line))
    if args.command == "bench":
        cli_bench._check_sweep(cli_bench._sweep_config(args), args)
    elif args.command == "verify":
        cli_bench._check_verify(args)


# ---------------------------------------------------------------------------- shared conventions, in process

def _readme_extras() -> dict[str, tuple[str, ...]]:
    """README's table "Which subcommand needs which extra": subcommand -> the extras it names."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("Which subcommand needs which extra"):].split("\n\n")[1]
    needs = {}
    for row in table.splitlines()[2:]:
        first, _, last = [cell.strip() for cell in row.strip("|").split("|")]
        if "cvxpylayers" in first:  # the library's backend, not a subcommand
            continue
        extras = tuple(re.findall(r"`\[(\w+)\]`", last))
        needs.update({name: extras for name in re.findall(r"`([a-z ]+)`", first)})
    return needs


def test_the_subcommands_need_the_extras_the_readme_names():
    """The door test above reads COMMAND_EXTRAS itself: this one holds it to the README's table."""
    assert _readme_extras() == dict(COMMAND_EXTRAS)


def _main_with_handler(monkeypatch, command, handler):
    """``cli.main([command])`` with ``command``'s handler replaced by ``handler`` (no work runs)."""
    table = cli.BENCH_HANDLERS if command in cli.BENCH_HANDLERS else cli.EXPERIMENT_HANDLERS
    monkeypatch.setitem(table, command, handler)
    return _exit_code([command] + _ARGV.get(command, [command])[1:])


def test_a_usage_error_found_by_a_command_is_one_line_exit_2(monkeypatch, capsys):
    def refusing(args):
        raise cli.UsageError("--out x is a file:\n  choose a folder")

    assert _main_with_handler(monkeypatch, "verify", refusing) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["convex-attention verify: error: --out x is a file: choose a folder"]


@pytest.mark.parametrize("status", [0, 1])
def test_a_commands_exit_status_is_its_handlers(status, monkeypatch, capsys):
    """Exit 1 for a failed check, 0 otherwise: main passes it on."""
    assert _main_with_handler(monkeypatch, "verify", lambda args: status) == status
    assert capsys.readouterr().err == ""


def test_ctrl_c_is_one_line_saying_what_was_kept_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    assert _main_with_handler(monkeypatch, "verify", interrupted) == 130
    assert capsys.readouterr().err.splitlines() == [f"convex-attention verify: {cli.INTERRUPTED['verify']}"]


def test_an_error_after_a_swallowed_sigterm_is_the_termination(monkeypatch, capsys):
    """An error raised after SIGTERM arrived, outside its context chain (the Terminated was
    swallowed, then children dying of the same signal made the command fail): exit 143."""
    import signal
    import time

    from convex_attention.cli import _signals

    monkeypatch.setattr(_signals, "REDELIVERY_S", 60.0)

    def failing_after_sigterm(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except _signals.Terminated:
            pass
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    assert _main_with_handler(monkeypatch, "verify", failing_after_sigterm) == 143
    kept = cli.INTERRUPTED["verify"].removeprefix("interrupted")
    assert capsys.readouterr().err.splitlines() == [f"convex-attention verify: terminated (SIGTERM){kept}"]


@pytest.mark.parametrize("options", [[], ["--no-progress"], ["--quiet"], ["--no-progress", "--quiet"]])
def test_the_output_options(options, capsys):
    """--no-progress: no progress bars, info lines stay; --quiet: neither."""
    from convex_attention.cli import _common

    args = cli.build_parser().parse_args(["verify", *options])
    assert _common.show_progress(args) == (options == [])
    _common.info(args, "an", "info line")
    captured = capsys.readouterr()
    assert captured.out == ("" if "--quiet" in options else "an info line\n") and captured.err == ""


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if any("--wait" in a.option_strings
                                                                   for a in COMMANDS[n]._actions)))
def test_wait_is_off_unless_given(name):
    argv = _ARGV.get(name, name.split())
    assert cli.build_parser().parse_args(argv).wait is False
    assert cli.build_parser().parse_args([*argv, "--wait"]).wait is True


def test_an_output_folder_or_file_that_cannot_be_written_is_a_usage_error(tmp_path):
    from convex_attention.cli import _common

    (tmp_path / "a file").write_text("the user's\n")
    with pytest.raises(_common.UsageError):
        _common.check_out(str(tmp_path / "a file"))
    (tmp_path / "verify.csv").mkdir()
    with pytest.raises(_common.UsageError, match="verify.csv"):
        _common.check_files(str(tmp_path), ["verify.csv"])
    (tmp_path / "bench.csv").write_text("an earlier result\n")
    _common.check_files(str(tmp_path), ["bench.csv", "free.csv"])  # a regular file, or a free name: passes
    assert (tmp_path / "a file").read_text() == "the user's\n"


def test_earlier_results_are_replaced_only_with_overwrite(tmp_path):
    from convex_attention.cli import _common

    (tmp_path / "bench.csv").write_text("an earlier result\n")
    names = ["bench.csv", "verify.csv"]
    with pytest.raises(_common.UsageError, match="^argument --out .*bench.csv.*--overwrite"):
        _common.check_no_earlier(str(tmp_path), names, overwrite=False)
    assert _common.check_no_earlier(str(tmp_path), names, overwrite=True) == ["bench.csv"]
    assert _common.check_no_earlier(str(tmp_path / "new"), names, overwrite=False) == []
    assert (tmp_path / "bench.csv").read_text() == "an earlier result\n"


def test_checking_out_leaves_no_folder_it_made_and_keeps_the_users(tmp_path):
    from convex_attention.cli import _common

    (tmp_path / "kept").mkdir()
    _common.check_out_leaving_nothing(str(tmp_path / "kept" / "a" / "b" / "out"))
    assert sorted(os.listdir(tmp_path)) == ["kept"] and os.listdir(tmp_path / "kept") == []
    _common.check_out_leaving_nothing(str(tmp_path / "kept"))  # an existing (empty) folder stays
    assert os.listdir(tmp_path) == ["kept"]


def test_holding_out_locks_for_the_command_and_a_failed_body_leaves_no_empty_folder(tmp_path):
    import json

    from convex_attention.cli import _common

    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError, match="the body failed"):
        with _common.holding_out(str(out), "explain", argparse.Namespace(wait=False)):
            assert json.loads((out / "results.lock").read_text())["command"] == "explain"
            raise RuntimeError("the body failed")
    assert os.listdir(tmp_path) == []  # the folders it made, removed again
    with pytest.raises(KeyboardInterrupt):
        with _common.holding_out(str(out), "explain", argparse.Namespace(wait=False)):
            (out / "written.csv").write_text("a result\n")
            raise KeyboardInterrupt
    assert os.listdir(out) == ["written.csv"]  # only an empty folder is removed: the file stays
    with _common.holding_out(str(tmp_path / "rank 1"), "train", argparse.Namespace(wait=False), main=False):
        assert not (tmp_path / "rank 1").exists()  # rank 0 holds the lock
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_a_hold_interrupted_before_anything_was_written_leaves_no_empty_folder(tmp_path):
    """Ctrl-C is a failed body too: the folders the lock made are removed again."""
    from convex_attention.cli import _common

    with pytest.raises(KeyboardInterrupt):
        with _common.holding_out(str(tmp_path / "a" / "out"), "explain", argparse.Namespace(wait=False)):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_a_lock_that_cannot_be_taken_is_a_usage_error_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    """A refused run leaves no empty --out, whichever check refuses it: here the lock file,
    which cannot be opened once the folder was made (too many open files)."""
    import errno

    from convex_attention.cli import _common

    real_open = os.open

    def no_lock_file(path, *args, **kwargs):
        if os.path.basename(path) == "results.lock":
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_lock_file)
    with pytest.raises(_common.UsageError, match="results.lock cannot be opened"):
        with _common.holding_out(str(tmp_path / "a" / "out"), "explain", argparse.Namespace(wait=False)):
            raise AssertionError("ran without the lock")
    assert os.listdir(tmp_path) == []


def _held_by_another_run(out: pathlib.Path):
    """``out``'s lock held as another live run holds it (its record, an flock on another open file)."""
    import fcntl
    import json
    import socket
    import time

    out.mkdir()
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": "train"}
    (out / "results.lock").write_text(json.dumps(record))
    fd = os.open(out / "results.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_folder_another_run_holds_is_a_usage_error_naming_it(tmp_path):
    from convex_attention.cli import _common

    fd = _held_by_another_run(tmp_path / "out")
    try:
        with pytest.raises(_common.UsageError, match=f"in use by pid {os.getpid()} .*train.*--wait"):
            with _common.holding_out(str(tmp_path / "out"), "explain", argparse.Namespace(wait=False)):
                raise AssertionError("ran in a folder another run holds")
    finally:
        os.close(fd)


@pytest.mark.slow  # waits for a held lock (~0.5 s)
def test_with_wait_a_held_folder_is_waited_for_said_on_stderr(tmp_path, capsys):
    import threading

    from convex_attention.cli import _common

    fd = _held_by_another_run(tmp_path / "out")
    release = threading.Timer(0.1, os.close, args=(fd,))
    release.start()
    try:
        with _common.holding_out(str(tmp_path / "out"), "explain", argparse.Namespace(wait=True)):
            ran = True
    finally:
        release.join()
    assert ran
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("explain: waiting for results folder")


def test_a_missing_extra_is_a_line_even_from_a_broken_install(monkeypatch):
    """An installed extra gives None; a module whose import machinery refuses it
    (``__spec__`` None: find_spec raises ValueError) is reported missing, not a traceback."""
    import types

    from convex_attention.cli._common import missing_extra

    assert missing_extra("bench") is None
    broken = types.ModuleType("captum")
    broken.__spec__ = None
    monkeypatch.setitem(sys.modules, "captum", broken)
    line = missing_extra("explain")
    assert line is not None and "captum" in line and "\n" not in line


def test_printable_streams_leaves_a_stream_it_cannot_reconfigure(monkeypatch):
    """A closed or unusual stream is left as it is (no error before the command's arguments
    are even parsed)."""
    from convex_attention.cli import _common

    class Unusual:
        errors = "strict"

        def __init__(self, error):
            self.error = error

        def reconfigure(self, **kwargs):
            raise self.error

    for error in (ValueError("closed"), OSError("unusual"), TypeError("unusual")):
        monkeypatch.setattr(sys, "stdout", Unusual(error))
        monkeypatch.setattr(sys, "stderr", Unusual(error))
        _common.printable_streams()


def test_printable_streams_makes_stderr_print_any_text_too(monkeypatch):
    """A usage error may echo the user's value (a λ): stderr, like stdout, writes what its
    encoding lacks as a backslash escape, also when stdout is a stream it leaves as it is."""
    import io

    from convex_attention.cli import _common

    raw = io.BytesIO()
    ascii_only = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no reconfigure: left as it is
    monkeypatch.setattr(sys, "stderr", ascii_only)
    _common.printable_streams()
    print("λ", file=sys.stderr)
    ascii_only.flush()
    assert raw.getvalue() == b"\\u03bb\n"


def test_without_the_output_options_everything_is_shown(capsys):
    """Neither --no-progress nor --quiet given (a namespace that lacks them): progress bars
    and info lines both show."""
    from convex_attention.cli import _common

    args = argparse.Namespace()
    assert _common.show_progress(args)
    _common.info(args, "an info line")
    assert capsys.readouterr().out == "an info line\n"


# ------------------------------------------------- review: --help and usage errors against the docs


def _help_of(command: str, option: str) -> str:
    parser = COMMANDS[command]
    return next(a.help for a in parser._actions if option in a.option_strings)


def test_data_check_help_states_the_range_of_every_number():
    for option in ("--n", "--seed", "--attention-bacc", "--uniform-bacc"):
        text = _help_of("data check", option)
        assert re.search(r"from \d|in [\[(]", text), f"data check {option}: {text!r}"


def test_data_check_n_usage_error_names_the_enforced_minimum(capsys):
    assert _exit_code(["data", "check", "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert "20" in err, err


def test_train_n_train_help_states_the_accepted_maximum():
    text = _help_of("train", "--n-train")
    top = int(re.search(r"from \d+ to (\d+)", text).group(1))
    assert top <= 1_000_003, text


@pytest.mark.parametrize("option", ["--no-augment", "--no-bn-recompute"])
def test_a_no_flag_help_says_what_it_turns_off(option):
    text = _help_of("train", option).lower()
    assert re.search(r"\boff\b|\bwithout\b|\bno\b|\bdisable|\bskip", text), text


def test_experiment_help_does_not_describe_options_it_lacks():
    assert "resumed" not in _help_of("experiment", "--epochs")
    assert "BraTS" not in _help_of("experiment", "--data-seed")


def test_an_interrupted_verify_leaves_no_empty_out(tmp_path, monkeypatch, capsys):
    from convex_attention.bench import verify

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "verify_instances", interrupted)
    assert _exit_code(["verify", "--quick", "--backends", "diffcp-clarabel", "--out",
                       str(tmp_path / "a" / "out")]) == 130
    assert os.listdir(tmp_path) == []


# ------------------------------------------------- review ca_rev75: the benchmarks' scripts


_HUGE_SEED = "99999999999999999999999"


@pytest.mark.parametrize("name,argv", [
    ("profile_dual", ["--size", "16", "--batches", "1", "--family", "axial"]),
    ("ablate_newton", ["--size", "16", "--instances", "1", "--families", "axial"]),
])
def test_ca_rev75_benchmark_scripts_refuse_a_seed_torch_cannot_take(name, argv, capsys):
    import torch

    script = benchmark_script(name)
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            script.main([*argv, "--seed", _HUGE_SEED])
    finally:
        torch.set_num_threads(before)
    assert stop.value.code == 2 and "--seed" in capsys.readouterr().err


def test_ca_rev75_study_certificate_refuses_a_huge_seed_before_making_out(tmp_path, capsys):
    import torch

    script = benchmark_script("study_certificate")
    before = torch.get_num_threads()
    out = tmp_path / "o"
    try:
        with pytest.raises(SystemExit) as stop:
            script.main(["--out", str(out), "--draws", "1", "--backends", "diffcp-clarabel", "--seed", _HUGE_SEED])
    finally:
        torch.set_num_threads(before)
    assert stop.value.code == 2 and not out.exists()


def test_ca_rev75_study_certificate_refuses_a_nan_regularization(tmp_path, capsys, monkeypatch):
    import torch

    script = benchmark_script("study_certificate")

    def drawn(*args, **kwargs):
        raise AssertionError("the study started with --static-regularization nan")

    monkeypatch.setattr(script, "instance", drawn)
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            script.main(["--out", str(tmp_path / "o"), "--draws", "1", "--backends", "diffcp-clarabel",
                         "--static-regularization", "nan"])
    finally:
        torch.set_num_threads(before)
    assert stop.value.code == 2 and "--static-regularization" in capsys.readouterr().err


def test_ca_rev75_study_certificate_seed_has_help(capsys):
    script = benchmark_script("study_certificate")
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    said = text.split("options:", 1)[1].split("--seed N", 1)[1].split("--overwrite", 1)[0]
    assert said.strip() and "7" in said, f"--seed's help: {said!r}"


# ----------------------------------------------------------------------------- review ca_rev76

def test_ca_rev76_study_certificate_refuses_a_huge_size_before_making_out(tmp_path):
    """The seed got a range; --size (positive_int, no upper bound) did not: a multiple of 8
    every family accepts, 2**40, passes the checks, --out is made, and the first draw is a
    ValueError traceback (above hierarchy.MAX_CELLS)."""
    import torch

    script = benchmark_script("study_certificate")
    before = torch.get_num_threads()
    out = tmp_path / "o"
    try:
        with pytest.raises(SystemExit) as stop:
            script.main(["--out", str(out), "--draws", "1", "--backends", "diffcp-clarabel", "--size", str(2 ** 40)])
    finally:
        torch.set_num_threads(before)
    assert stop.value.code == 2 and not out.exists()


@pytest.mark.parametrize("script, argv", [("gpu_check.py", ["--repeats", "1000000000"]),
                                          ("ablate_newton.py", ["--dense-limit", "-1"])])
def test_the_benchmark_scripts_bound_every_numeric_option(script, argv, capsys):
    """ca_rev76's near-miss: gpu_check --repeats and ablate_newton --dense-limit had no range
    ("every numeric option has a range").  Run in this process (a subprocess spent 1.2 s importing torch)."""
    import torch

    module = benchmark_script(script.removesuffix(".py"))
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            module.main(argv)
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "must be an integer from" in err and "Traceback" not in err


# --------------------------------------------------------- benchmarks/study_temperature_gradients.py


@pytest.mark.parametrize("argv, named", [(["--size", "12"], "--size"), (["--scale", "1e300"], "--scale"),
                                         (["--tol", "2"], "--tol"), (["--draws", "0"], "--draws"),
                                         (["--seed", _HUGE_SEED], "--seed"), (["--sets", "warm"], "--sets")])
def test_study_temperature_gradients_refuses_a_bad_option_before_making_out(tmp_path, capsys, argv, named):
    import torch

    script = benchmark_script("study_temperature_gradients")
    before = torch.get_num_threads()
    out = tmp_path / "o"
    try:
        with pytest.raises(SystemExit) as stop:
            script.main(["--out", str(out), *argv])
    finally:
        torch.set_num_threads(before)
    assert stop.value.code == 2 and named in capsys.readouterr().err and not out.exists()


@pytest.mark.slow  # end to end or a boundary of a path lighter tests take (fast suite < 1 min)
def test_study_temperature_gradients_writes_a_row_per_map_and_refuses_to_replace_them(tmp_path, capsys):
    """One draw per family and set at 16², one sample: a CSV that pandas reads, one row per map with the four
    gradients and their errors (finite where the row is ok), the JSON with its command, and a second run into the
    same folder refused (exit 2) with the files untouched."""
    import pandas as pd
    import torch

    script = benchmark_script("study_temperature_gradients")
    before = torch.get_num_threads()
    out = tmp_path / "o"
    try:
        assert script.main(["--out", str(out), "--draws", "1", "--batch", "1"]) == 0
        rows = pd.read_csv(out / "temperature_gradients.csv")
        written = (out / "temperature_gradients.csv").read_bytes()
        with pytest.raises(SystemExit) as stop:
            script.main(["--out", str(out), "--draws", "1", "--batch", "1"])
    finally:
        torch.set_num_threads(before)
    assert stop.value.code == 2 and (out / "temperature_gradients.csv").read_bytes() == written
    assert set(rows["set"]) == set(script.DEFAULT_SETS) and set(rows["family"]) == set(script.STRUCTURES)
    assert (rows["given_map"] == -1).all()
    ok = rows[rows["status"] == "ok"]
    assert len(ok) >= len(rows) - 8 and len(ok) > 0
    assert ok[["reference", "float64_at_tol", "float32_unchecked", "held", "float32_error"]].notna().all().all()
    assert (ok["refused"] == ok["float32"].isna()).all()
    said = json.loads((out / "temperature_gradients.json").read_text())
    assert said["command"].startswith("python benchmarks/study_temperature_gradients.py") and said["rtol"] == 1e-3
    assert "unwarned" in capsys.readouterr().out


@pytest.mark.slow  # end to end or a boundary of a path a lighter test takes (fast suite < 1 min)
def test_study_temperature_gradients_gives_each_map_in_turn(tmp_path):
    """--given, one draw, one set (the hotter one), one sample: each draw's maps given in turn, a row per scored map
    (none for the given one), the held size floored at rtol times the all-scored gradient's largest component."""
    import pandas as pd
    import torch

    script = benchmark_script("study_temperature_gradients")
    before = torch.get_num_threads()
    out = tmp_path / "o"
    try:
        assert script.main(["--out", str(out), "--draws", "1", "--batch", "1", "--sets", "hotter", "--given"]) == 0
    finally:
        torch.set_num_threads(before)
    rows = pd.read_csv(out / "temperature_gradients.csv")
    assert set(rows["set"]) == {"hotter"} and set(rows["family"]) == set(script.STRUCTURES)
    assert (rows["given_map"] >= 0).all() and (rows["given_map"] != rows["map"]).all()
    for (family, given), part in rows.groupby(["family", "given_map"]):
        assert sorted(part["map"]) == [m for m in range(len(part) + 1) if m != given], (family, given)
    ok = rows[rows["status"] == "ok"]
    assert len(ok) > 0 and (ok["scored_size"] > 0).all()
    assert (ok["held"] >= ok["scored_size"] * script.RTOL * (1 - 1e-12)).all()
    assert json.loads((out / "temperature_gradients.json").read_text())["given"] is True


# ---- ca_rev121 (strict xfail: review of 96d96df)

def test_ca_rev121_the_moreau_extra_asks_for_a_moreau_that_cvxpylayers_can_use():
    """Run: a fresh venv with `pip install '/tmp/ca_rev121[all]'`, then `pip install moreau==0.1.0.2`
    (setup.cfg's [moreau] is moreau>=0.1; PyPI holds 0.1.0.1, 0.1.0.2, 0.3.1 ... 0.4.1), then
    ca.solve(theta, h, 'cvxpylayers', backend='moreau'). Expected: the extra's bound excludes releases
    that cannot run the backend (cvxpylayers 1.2, the floor of install_requires, asks moreau>=0.3.0 for
    its own moreau extra). Observed: 0.1.0.2 installs; `import moreau` raises "The 'moreau' package
    cannot be installed directly from PyPI ..." from solve (a traceback, past the door, since find_spec
    finds it), and verify --quick --backends moreau reports 10 ERROR, 40 not run."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    ours = next(Requirement(line) for line in _setup_cfg_lines("moreau") if line.startswith("moreau"))
    theirs = [Requirement(r) for r in metadata.requires("cvxpylayers") or []]
    wanted = [r for r in theirs if r.name == "moreau" and r.marker and r.marker.evaluate({"extra": "moreau"})]
    if not wanted:
        pytest.skip("this cvxpylayers names no moreau for its moreau extra")
    floor = min(Version(s.version) for s in wanted[0].specifier if s.operator == ">=")
    admitted = [v for v in ("0.1.0.2", "0.2", str(floor)) if ours.specifier.contains(v)]
    assert admitted == [str(floor)], f"setup.cfg's {ours} admits {admitted}; cvxpylayers asks {wanted[0]}"


def _setup_cfg_lines(extra: str) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [line.strip() for line in cfg["options.extras_require"][extra].splitlines() if line.strip()]


def test_ca_rev121_verify_backends_help_lists_the_values_it_accepts():
    """Run: convex-attention verify --help. Expected (README: every --help states 'the values each option
    accepts (choices, ...)'; bench --cvx-backends lists 'one of diffcp-clarabel, diffcp-scs, moreau,
    cuclarabel, mpax'): verify --backends names them. Observed: '--backends B [B ...]  cvxpylayers backends
    to check (default: every installed one); one named here that is not installed is a usage error': no
    name; a wrong one is learnt from the refusal ('option backend must be one of ...')."""
    from convex_attention.cvx import BACKENDS

    action = next(a for a in COMMANDS["verify"]._actions if "--backends" in a.option_strings)
    shown = " ".join((action.help or "").split()) + " " + " ".join(action.choices or ())
    assert all(name in shown for name in BACKENDS), shown


# ---- ca_rev141 (strict xfail: review of c2cb010)

@pytest.mark.parametrize("column, label", [("float64_error", "float64 at tol worst"),
                                           ("float32_error", "worst returned")])
def test_ca_rev141_study_temperature_gradients_summary_keeps_a_nan_worst(column, label):
    """summary() of two maps of one set, the second's error NaN (a NaN float64 gradient at tol, or a NaN
    float32 one returned unchecked).  Observed: 'float64 at tol worst 1e-07' and 'worst returned 1e-06': Python's
    max keeps a NaN only where it comes first (study_certificate and gpu_check use nan_max since rev65; this
    script does not); the float64 NaN is counted nowhere else in the line.  Expected: the worst is NaN."""
    script = benchmark_script("study_temperature_gradients")
    base = {"set": "normal", "family": "chain", "draw": 0, "given_map": -1, "status": "ok", "tau": 1.0,
            "refused": False, "float32_error": 1e-6, "float64_error": 1e-7}
    rows = [{**base, "map": 0}, {**base, "map": 1, column: float("nan")}]
    text = script.summary(rows, "normal")
    worst = text.split(label)[1].split()[0]
    assert worst.lower() == "nan", text


def _ca_rev141_boom(*args, **kwargs):
    raise RuntimeError("CUDA error: out of memory (forced)")


@pytest.mark.parametrize("name, stub, argv", [
    ("gpu_check", "correctness", []),
    ("study_certificate", "instance", ["--draws", "1", "--backends", "diffcp-clarabel"]),
    ("study_temperature_gradients", "instance_rows", ["--draws", "1"]),
])
def test_ca_rev141_a_benchmark_script_that_fails_mid_run_says_so_in_one_line(name, stub, argv, tmp_path, capsys,
                                                                             monkeypatch):
    """Forced: the run's first piece of work raises RuntimeError (an out-of-memory, a full disk at the write).
    Observed: the RuntimeError propagates out of main(), a traceback from the script, and the study scripts leave
    the empty --out they made.  Expected, as bench_core.py and bench_graphs.py do (a review): one line on stderr,
    exit 1."""
    import torch

    from convex_attention.cvx import available_backends

    if name == "study_certificate" and "diffcp-clarabel" not in available_backends():
        pytest.skip("diffcp-clarabel not installed")
    script = benchmark_script(name)
    monkeypatch.setattr(script, stub, _ca_rev141_boom)
    if name == "gpu_check":  # its own refusal (no CUDA device) comes first
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    before = torch.get_num_threads()
    try:
        code = script.main([*argv, "--out", str(tmp_path / "out")])
    except SystemExit as stop:
        code = stop.code
    except RuntimeError as err:
        pytest.fail(f"main raised {err!r}")
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "out of memory" in err, (code, err)


# ---- ca_rev144 (strict xfail: review of ea9699c)

@pytest.mark.parametrize("command, option", [("train", "--learn-temperature"),
                                             ("experiment", "--grid-learn-temperature")])
def test_ca_rev144_learn_temperature_help_names_every_method_that_learns_one(command, option):
    """Run: convex-attention train --help.  Observed: '--learn-temperature  learn one log-temperature shared by
    the levels (softmax, exact, learned_dual)', while `train --learn-temperature --method dual` trains (ModelConfig
    accepts it; its refusal of cvxpylayers names 'softmax, exact, dual, learned_dual'; README: temperatures may be
    learned with softmax, exact, dual, learned_dual).  Expected: the help names every method that takes one."""
    from convex_attention import REGISTRY
    from convex_attention.paper.config import ModelConfig

    learners = [name for name, record in REGISTRY.items() if record.tensor_temperature]
    for name in learners:
        ModelConfig(method=name, learn_temperature=True).validate()  # the code accepts each one
    named = set(re.findall(r"\b(softmax|exact|cvxpylayers|dual|learned_dual)\b", _help_of(command, option)))
    assert named == set(learners), (named, learners)


@pytest.mark.parametrize("option", ["--n-images", "--batch-size"])
def test_ca_rev144_explain_help_states_the_whole_range_of_its_numbers(option, capsys):
    """Run: convex-attention explain --help; then explain --checkpoints a=x.pt --n-images 0.  Observed: the help
    reads 'the first N validation images with a lesion are explained, at most 100000' ('images per batch, at
    most 100000'), and 0 is refused: 'must be an integer from 1 to 100000, got 0'.  Expected (README: every
    --help states the values each option accepts, a number's range): the help says 'from 1 to 100000', as every
    other command's numbers do."""
    assert _exit_code(["explain", "--checkpoints", "a=x.pt", option, "0"]) == 2
    assert "from 1 to 100000" in capsys.readouterr().err
    assert re.search(r"from 1 to 100000|in \[1, 100000\]", " ".join(_help_of("explain", option).split()))


# ---- ca_rev171 (review of 230b1fc; its strict xfails now pass)

def _ca_rev171_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("name, stub, argv", [
    ("study_certificate", "instance", ["--draws", "1", "--out", "OUT"]),
    ("study_temperature_gradients", "instance_rows", ["--draws", "1", "--out", "OUT"]),
    ("ablate_newton", "_speed", ["--size", "16", "--instances", "1"]),
])
def test_ca_rev171_ctrl_c_in_a_benchmark_script_is_one_line_exit_130(name, stub, argv, tmp_path, capsys,
                                                                     monkeypatch):
    """Run: timeout -s INT 1.5 python benchmarks/study_certificate.py --draws 1 --out OUT (and
    study_temperature_gradients.py --draws 1 --out OUT, ablate_newton.py --size 16 --instances 2). Expected, as
    bench_core.py, bench_graphs.py and every convex-attention command do: one line on stderr saying it was
    interrupted, exit 130. Observed: KeyboardInterrupt propagates out of main(): a 35- to 58-line traceback
    (exit 130 only from the interpreter), and the study scripts leave the empty --out they made."""
    import torch

    script = benchmark_script(name)
    monkeypatch.setattr(script, stub, _ca_rev171_interrupt)
    before = torch.get_num_threads()
    try:
        code = script.main([str(tmp_path / "out") if a == "OUT" else a for a in argv])
    except SystemExit as stop:
        code = stop.code
    except KeyboardInterrupt:
        code = "uncaught KeyboardInterrupt"
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1 and "interrupted" in err, (code, err)


def _run_stopped_before_writing(name: str, stub: str, stop, tmp_path, monkeypatch, capsys) -> tuple:
    """``benchmarks/NAME.py --tiny --out NEW/sub`` whose work (``stub``) is ``stop``: (exit code, stderr,
    the paths left under NEW)."""
    script = benchmark_script(name)
    monkeypatch.setattr(script, stub, stop)
    new = tmp_path / "new"
    try:
        code = script.main(["--tiny", "--out", str(new / "sub")])
    except SystemExit as ended:
        code = ended.code
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) if new.exists() else []
    return code, capsys.readouterr().err.strip(), [str(new)] + left if new.exists() else []


@pytest.mark.parametrize("name, stub", [("bench_core", "core_benchmark"), ("bench_graphs", "graph_benchmark")])
def test_ca_rev171_an_interrupted_script_that_wrote_nothing_leaves_no_empty_out(name, stub, tmp_path, capsys,
                                                                                monkeypatch):
    """Run: timeout -s INT 2 python benchmarks/bench_core.py --tiny --out NEW/sub (and bench_graphs.py --tiny
    --out NEW/sub). Expected: exit 130, one line, and no folder left, as verify and bench remove the --out they
    made when a run stops before writing (cli._common.making_out), and as a refused run leaves none. Observed:
    exit 130, 'bench_core.py: interrupted; nothing was written', and the empty NEW/ and NEW/sub/ stay."""
    code, err, left = _run_stopped_before_writing(name, stub, _ca_rev171_interrupt, tmp_path, monkeypatch, capsys)
    assert code == 130 and len(err.splitlines()) == 1, (code, err)
    assert not left, left


@pytest.mark.parametrize("name, default", [("bench_core", "results/bench_core"), ("bench_graphs", "results/graphs")])
def test_ca_rev171_benchmark_scripts_help_gives_the_default_out(name, default, capsys):
    """Run: python benchmarks/bench_core.py --help (and bench_graphs.py --help). Expected: '--out' says where
    the files go when it is left out (README: every --help gives every default; gpu_check.py's says 'default
    results/gpu'). Observed: '--out OUT  folder for CSV, JSON and figures' / 'folder for the CSV and JSON
    files': a run without --out writes into results/bench_core (results/graphs), which the help never names."""
    script = benchmark_script(name)
    with pytest.raises(SystemExit):
        script.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    option = re.search(r"--out OUT (folder.*?) --[a-z]", text).group(1)  # the option's own help
    assert default in option, option


@pytest.mark.parametrize("command", ["train", "experiment"])
def test_ca_rev171_image_size_help_gives_the_range_the_default_data_accepts(command, tmp_path, capsys,
                                                                            monkeypatch):
    """Run: convex-attention train --image-size 16 --out OUT (the default --data synthetic). Expected: the
    help's range is the one accepted, or names the data's floor as data check's help does ('at least 32 for
    synthetic and synthetic-brightest, 16 for synthetic-blobs'). Observed: the help reads 'a multiple of 16
    ...; an integer from 16 to 8192', and the run is refused: 'the data: image_size must be an integer >= 32'."""
    import convex_attention.paper.train as train

    monkeypatch.setattr(train, "train", _ca_rev171_interrupt)
    if command == "train":
        assert _exit_code(["train", "--image-size", "16", "--out", str(tmp_path / "o"), "--quiet"]) == 2
        assert ">= 32" in capsys.readouterr().err
    text = " ".join(_help_of(command, "--image-size").split())
    assert "32" in text, text


# ---- ca_rev172 (review of d03eab2^..HEAD; its strict xfails now pass)

@pytest.mark.parametrize("name, stub", [("study_certificate", "instance"),
                                        ("study_temperature_gradients", "instance_rows")])
def test_ca_rev172_an_interrupted_study_leaves_no_empty_out(name, stub, tmp_path, capsys, monkeypatch):
    """Run: timeout -s INT 1.5 python benchmarks/study_certificate.py --draws 1 --out NEW/sub (NEW absent; and
    study_temperature_gradients.py). Expected: exit 130, one line, and no folder left, as run_study's docstring
    says ('an out this run made is removed again if empty', d17439c's run_interrupted) and as bench_core.py and
    bench_graphs.py now do. Observed: exit 130, one line, and the empty NEW/ and NEW/sub/ both stay:
    check_study_arguments (check_fresh_out_dir -> check_out_dir) makes --out before run_study looks, so run_study's
    `made` is always None and nothing is removed (a failed study, run_failed, leaves it the same way)."""
    import torch

    script = benchmark_script(name)
    monkeypatch.setattr(script, stub, _ca_rev171_interrupt)
    new = tmp_path / "new"
    before = torch.get_num_threads()
    try:
        code = script.main(["--draws", "1", "--out", str(new / "sub")])
    except SystemExit as stop:
        code = stop.code
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1, (code, err)
    assert not new.exists(), sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def _ca_rev172_fail(*args, **kwargs):
    raise RuntimeError("the run failed before it wrote anything")


@pytest.mark.parametrize("name, stub", [("bench_core", "core_benchmark"), ("bench_graphs", "graph_benchmark")])
def test_ca_rev172_a_failed_script_that_wrote_nothing_leaves_no_empty_out(name, stub, tmp_path, capsys, monkeypatch):
    """Run: python benchmarks/bench_core.py --tiny --out NEW/sub where the run raises before writing (a solver
    error, a full disk; and bench_graphs.py). Expected: exit 1, one line, and no folder left: as the same run
    stopped by Ctrl-C leaves none since d17439c (the folders of parser.folders_to_make), and as run_failed and
    the study scripts (run_study: 'an out this run made is removed again if empty') promise. Observed: exit 1,
    one line, and the empty NEW/ and NEW/sub/ stay: both scripts call parser.run_failed(err) without `made`."""
    code, err, left = _run_stopped_before_writing(name, stub, _ca_rev172_fail, tmp_path, monkeypatch, capsys)
    assert code == 1 and len(err.splitlines()) == 1, (code, err)
    assert not left, left


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_a_scripts_example_commands_keep_their_line_continuations(script):
    """A script's docstring is its --help; an example command broken over lines with a trailing
    backslash in a plain docstring lost it (a backslash-newline joins the lines), and the help
    showed one line with a run of spaces mid-command (study_certificate, study_temperature_gradients)."""
    import ast

    source = (ROOT / "benchmarks" / script).read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source), clean=False) or ""
    joined = [line for line in doc.splitlines() if re.search(r"\S {3,}--", line)]
    assert not joined, joined


# ---- ca_rev194 (review of 69a8df0; its strict xfails now pass)

def _ca_rev194_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _ca_rev194_fail(*args, **kwargs):
    raise RuntimeError("the run failed before it wrote anything")


def _ca_rev194_gpu_check(stop, tmp_path, monkeypatch) -> tuple:
    """``benchmarks/gpu_check.py --out NEW/sub`` on a machine taken to have CUDA, whose work (``_check``)
    is ``stop``: (exit code or what escaped main, the paths left under tmp_path)."""
    import torch

    script = benchmark_script("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(script, "_check", stop)
    try:
        code = script.main(["--out", str(tmp_path / "new" / "sub")])
    except SystemExit as ended:
        code = ended.code
    except KeyboardInterrupt:
        code = "uncaught KeyboardInterrupt"
    return code, sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def test_ca_rev194_gpu_check_ctrl_c_is_one_line_exit_130(tmp_path, capsys, monkeypatch):
    """Run: timeout -s INT 5 python benchmarks/gpu_check.py --out OUT (on a CUDA machine). Expected, as
    bench_core.py, bench_graphs.py, ablate_newton.py and the study scripts do since ca_rev171: one line on
    stderr saying it was interrupted, exit 130. Observed: main() catches Exception only, so KeyboardInterrupt
    propagates out of it: the interpreter's traceback."""
    code, _ = _ca_rev194_gpu_check(_ca_rev194_interrupt, tmp_path, monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1 and "interrupted" in err, (code, err)


def test_ca_rev194_a_failed_gpu_check_leaves_no_empty_out(tmp_path, capsys, monkeypatch):
    """Run: python benchmarks/gpu_check.py --out NEW/sub (NEW absent) where the run raises before writing
    gpu_check.json. Expected: exit 1, one line, and no folder left, as bench_core.py and bench_graphs.py do
    since ca_rev172 (parser.folders_to_make passed to run_failed). Observed: exit 1, one line, and the empty
    NEW/ and NEW/sub/ stay: check_out_dir makes them and main calls parser.run_failed(err) without `made`."""
    code, left = _ca_rev194_gpu_check(_ca_rev194_fail, tmp_path, monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, (code, err)
    assert not left, left


@pytest.mark.parametrize("stop, expected", [(_ca_rev194_interrupt, 130), (_ca_rev194_fail, 1)])
def test_ca_rev194_profile_dual_fails_like_a_command(stop, expected, capsys, monkeypatch):
    """Run: timeout -s INT 2 python benchmarks/profile_dual.py --size 64 --batches 64 (or a run whose solve
    raises). Expected, as every other script that uses CommandParser: one line on stderr, exit 130
    (parser.run_interrupted) or 1 (parser.run_failed). Observed: main() has no handler at all, so the
    KeyboardInterrupt or the error propagates out of it as a traceback (and `main()` is not passed to
    sys.exit, so its status is not the script's either)."""
    import torch

    script = benchmark_script("profile_dual")
    monkeypatch.setattr(script, "_forward_backward", stop)
    before = torch.get_num_threads()
    try:
        code = script.main(["--size", "16", "--batches", "1", "--family", "axial"])
    except SystemExit as ended:
        code = ended.code
    except (KeyboardInterrupt, RuntimeError) as err:
        code = f"uncaught {type(err).__name__}"
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.strip()
    assert code == expected and len(err.splitlines()) == 1, (code, err)


# ---- a refusal under the folder's lock leaves no folder the run made (rev194's near-miss)

def _locked(*args, **kwargs):
    from convex_attention.io.lock import ResultsLocked

    raise ResultsLocked("results folder OUT is in use by pid 1; wait for it to finish, pass --wait")


@pytest.mark.parametrize("name, patched, argv", [
    ("bench_core", "results_lock", ["--tiny"]),
    ("bench_graphs", "graph_benchmark", ["--tiny", "--parts", "convergence"]),
])
def test_a_benchmark_refused_under_the_lock_removes_the_folder_it_made(name, patched, argv, tmp_path, capsys,
                                                                      monkeypatch):
    """Run: benchmarks/<name>.py --out NEW/sub where another run takes the folder between the checks
    and the lock. Expected: exit 2, one line, and no NEW left (it had been: the refusal came after
    check_out_dir made it, and only a failed or interrupted run removed it)."""
    import torch

    script = benchmark_script(name)
    monkeypatch.setattr(script, patched, _locked)
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            script.main([*argv, "--out", str(tmp_path / "new" / "sub")])
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "in use by pid 1" in err, err
    assert os.listdir(tmp_path) == []


def test_a_refusal_after_the_run_made_its_folder_never_removes_a_folder_holding_a_file(tmp_path, capsys):
    from convex_attention.cli._common import CommandParser

    parser = CommandParser(prog="script")
    made = parser.folders_to_make(str(tmp_path / "a" / "b"))
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "kept.txt").write_text("the user's\n")
    with pytest.raises(SystemExit):
        parser.refuse("refused", made)
    assert sorted(os.listdir(tmp_path / "a")) == ["kept.txt"]
    assert "script: error: refused" in capsys.readouterr().err


# ---- ca_rev212 (mutation review of 3edf1f9, cli): tests that kill surviving mutants

def test_ca_rev212_a_recursive_clean_follows_no_link_to_another_folder(tmp_path, capsys):
    """holding_out(recursive=True) cleans --out's sub-folders, never a folder a link in it points to
    (another folder's temporaries, and no lock taken there)."""
    from convex_attention.cli import _common

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "runs.csv.123-1.tmp").write_text("another folder's temporary\n")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "runs.csv.123-1.tmp").write_text("left by a killed run\n")
    (out / "linked").symlink_to(outside, target_is_directory=True)
    with _common.holding_out(str(out), "experiment", argparse.Namespace(wait=False), outputs=("runs.csv",),
                             recursive=True):
        pass
    assert not (out / "sub" / "runs.csv.123-1.tmp").exists()  # a real sub-folder is cleaned
    assert sorted(os.listdir(outside)) == ["runs.csv.123-1.tmp"]
    assert "outside" not in capsys.readouterr().err


# ---- ca_rev236 (new-user walkthrough)


@pytest.mark.parametrize("argv, command", [(["bench", "--quikc"], "bench"), (["verify", "--n", "3", "extra"], "verify"),
                                           (["data", "check", "--bogus", "x"], "data check")])
def test_ca_rev236_an_unknown_argument_is_told_by_the_subcommand_with_its_help(argv, command, capsys):
    """argparse told a misspelt option of a subcommand as the top command's ("convex-attention: error:
    unrecognized arguments: --quikc (see convex-attention --help)"), whose --help lists no option of bench."""
    from convex_attention import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    rest = " ".join(a for a in argv if a not in command.split() and a not in ("--n", "3"))
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"convex-attention {command}: error: unrecognized arguments: {rest} "
                                       f"(see convex-attention {command} --help)\n")


# ---- ca_rev238 (hostile review of the 43rd session's changes)


@pytest.mark.parametrize("argv, command, rest", [(["--quick", "bench"], "", "--quick"),
                                                 (["--bogus", "bench", "--quikc"], "", "--bogus"),
                                                 (["data", "--bogus", "check"], " data", "--bogus"),
                                                 (["bench", "--quikc"], " bench", "--quikc")])
def test_ca_rev238_an_unknown_argument_is_told_by_the_command_it_was_given_to(argv, command, rest, capsys):
    """An option before the subcommand was told as the subcommand's: `convex-attention --quick bench` said
    "convex-attention bench: error: unrecognized arguments: --quick", an option bench --help lists."""
    from convex_attention import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"convex-attention{command}: error: unrecognized arguments: {rest} "
                                       f"(see convex-attention{command} --help)\n")


# ---- ca_rev241 (Python 3.13: argparse keeps a value of "--")
@pytest.mark.parametrize("kept", ["--", ["--"]])
def test_ca_rev241_a_value_of_two_dashes_kept_as_python_3_13_keeps_it_is_refused(kept, capsys, monkeypatch):
    """Python 3.13's argparse stores `--out=--` as "--" (and a list option's as ["--"]), where 3.11 and 3.12.1
    store []: the refusal looked for [] only, and on 3.13 `bench --out=--` ran the whole benchmark into a
    folder named "--".  Run here on the suite's Python by giving the parse 3.13's result."""
    import argparse

    from convex_attention.cli import CommandParser

    parser = CommandParser(prog="x")
    parser.add_argument("--out", nargs=None if kept == "--" else "+")
    real = argparse.ArgumentParser.parse_known_args

    def as_python_3_13(self, args=None, namespace=None):
        parsed, rest = real(self, ["--out", "x"], namespace)
        parsed.out = kept
        return parsed, rest

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", as_python_3_13)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--out=--"])
    assert stop.value.code == 2
    assert "argument --out: expected a value, got '--'" in capsys.readouterr().err


# ---- ca_rev253 (crash and resume probe)

def test_ca_rev253_ctrl_c_while_the_options_are_checked_is_one_line_exit_130(tmp_path, monkeypatch,
                                                                            capsys):
    """Run: timeout -s INT 1 convex-attention bench --methods exact --out F (checking --methods imports torch, about
    1.3 s). Expected: one line on stderr, exit 130, as once the command runs. Observed: parse_args ran outside
    main's handling: an 80- to 120-line traceback ending in KeyboardInterrupt, killed by SIGINT (exit -2)."""
    import convex_attention.cli as cli
    from convex_attention.cli._common import CommandParser

    def interrupted(self, args=None, namespace=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(CommandParser, "parse_args", interrupted)
    try:
        code = cli.main(["bench", "--methods", "exact", "--out", str(tmp_path / "new")])
    except KeyboardInterrupt:
        code = "uncaught KeyboardInterrupt"
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1 and "interrupted" in err, (code, err)
    assert not (tmp_path / "new").exists()


# ---- ca_rev256 (options validation probe)

def test_ca_rev256_check_out_dir_refuses_a_control_character_before_making_anything(tmp_path):
    """check_out_dir is every command's --out check: a line break or an escape sequence is refused by name, and
    no folder is made (it had made and written 'a\\nb')."""
    from convex_attention.io.files import check_out_dir

    for name in ("a\nb", "\x1b[31mred", "tab\there"):
        with pytest.raises(ValueError, match="control character"):
            check_out_dir(str(tmp_path / "new" / name))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", [["experiment", "--quick"], ["bench", "--quick"], ["verify", "--quick"]])
def test_ca_rev256_out_with_a_line_break_is_a_usage_error_before_any_work(command, tmp_path, capsys):
    """Run: convex-attention experiment --quick --out $'x/a\\nb'. Expected: one line on stderr, exit 2, nothing
    made. Observed: experiment made x/a\\nb/dev, then ended in a ConfigError traceback (exit 1); bench, verify and
    demo made the folder and wrote their results into it."""
    out = tmp_path / "new" / "a\nb"
    try:
        code = cli.main([*command, "--out", str(out)])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "control character" in err, (code, err)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------- no abbreviations

SCRIPTS_WITH_PARSERS = ("bench_core", "bench_graphs", "ablate_newton", "profile_dual", "study_certificate",
                        "study_temperature_gradients", "gpu_check")


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]


def _parsers():
    yield "convex-attention", cli.build_parser()
    yield from COMMANDS.items()
    for name in SCRIPTS_WITH_PARSERS:
        yield f"{name}.py", benchmark_script(name).build_parser()


@pytest.mark.parametrize("name, parser", list(_parsers()), ids=lambda v: v if isinstance(v, str) else "")
def test_an_abbreviated_option_is_refused_not_read_as_the_option(name, parser, capsys):
    """argparse's default read ``bench --over`` as ``--overwrite`` (replacing results) and
    ``experiment --seed 3`` as ``--seeds 3``; every parser refuses an option it does not have."""
    options = _long_options(parser)
    required = [a for a in parser._actions if a.required]
    assert options and parser.allow_abbrev is False
    if required:  # argparse names a missing required argument before an unknown option
        return
    for option in options:
        prefix = option[:-1]
        if prefix in options or len(prefix) < 3:
            continue
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([prefix])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and len(err.splitlines()) == 1, (prefix, err)
        assert f"unrecognized arguments: {prefix}" in err, (prefix, err)
