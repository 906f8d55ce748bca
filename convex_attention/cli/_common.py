"""What every subcommand shares: usage errors, the output options, the output folder check,
its lock (``--wait``, :func:`holding_out`), and the optional dependencies each subcommand
needs (checked at the door, before any work).

The argument types (``positive_int`` and the others) are the settings' kinds
(:mod:`convex_attention.io.settings`), so an option and a configuration field of the
same setting accept the same values.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys

from ..io.files import (
    check_no_earlier_outputs,
    check_out_dir,
    check_output_files,
    clean_stale_tmp,
    missing_folders,
    remove_empty_folders,
)

__all__ = ["CommandParser", "UsageError", "add_output_options", "show_progress", "info", "check_out",
           "check_files", "printable_streams", "check_out_leaving_nothing", "add_wait_option", "holding_out",
           "COMMAND_EXTRAS", "EXTRA_MODULES", "missing_extra"]

#: The modules each extra of setup.cfg ([options.extras_require]) brings, as they are imported.
EXTRA_MODULES = {"paper": ("captum", "sklearn", "nibabel", "PIL"), "moreau": ("moreau",)}
#: The extras each subcommand needs, checked before any work (``missing_extra``); a
#: subcommand runs on the base install when its tuple is empty.  cvxpylayers backends are
#: not here: one that is not installed is a skipped row (bench) or a skipped check (verify).
COMMAND_EXTRAS = {
    "bench": (), "verify": (), "plot": (), "demo": (),
    "train": ("paper",),  # metrics (scikit-learn); BraTS (nibabel) and image folders (pillow) as data
    "explain": ("paper",),  # the post-hoc attributions (captum) and the metrics
    "experiment": ("paper",),  # all of the above, and the validity checks (scikit-learn)
    "data check": ("paper",),  # the validity checks (scikit-learn), BraTS (nibabel)
}


class UsageError(ValueError):
    """Bad arguments found after parsing: reported like argparse's own errors (exit 2)."""


_REPLACING = ("backslashreplace", "replace", "namereplace", "xmlcharrefreplace")


def printable_streams() -> None:
    """Let stdout and stderr print any text: a character their encoding lacks (the help's
    λ on an ASCII-only terminal, ``PYTHONIOENCODING=ascii``) is written as a backslash
    escape instead of raising UnicodeEncodeError.  Called once per command, before its
    arguments are parsed (:meth:`CommandParser.parse_known_args`), so that it covers
    ``--help``, usage errors and every line a command prints."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None or getattr(stream, "errors", None) in _REPLACING:
            continue  # not a text stream of io's, or one that already replaces what it cannot encode
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError, TypeError):  # a closed or unusual stream: left as it is
            continue


class CommandParser(argparse.ArgumentParser):
    """argparse, failing like a command: one line on stderr (no usage block), exit 2; its
    output (``--help`` included) prints on any stdout (:func:`printable_streams`).
    ``examples``: command lines (a ``# comment`` after each), shown as they are at the end
    of ``--help`` (the description is wrapped; they are not). Options are never abbreviated:
    argparse would read ``--over`` as ``--overwrite`` and ``experiment --seed 3`` as ``--seeds 3``, and
    an option added later would change what an abbreviation in a user's script means."""

    def __init__(self, *args, examples=(), **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.examples = tuple(examples)

    def run_failed(self, err: BaseException, made: list | tuple = ()) -> int:
        """A run that failed after its checks: one line on stderr naming the error, exit status 1
        (benchmark scripts had ended in a traceback: ca_rev141); ``made``, the folders the run
        made (deepest first: :meth:`folders_to_make`), are removed again where empty (never a
        file in them)."""
        message = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"{self.prog}: error: the run failed: {message}", file=sys.stderr)
        remove_empty_folders(list(made))
        return 1

    def run_interrupted(self, what: str, made: tuple | list = ()) -> int:
        """A run stopped by Ctrl-C: one line on stderr, ``interrupted; <what>``, exit status 130
        (three benchmark scripts had ended in a traceback: ca_rev171); ``made``, the folders the
        run made (deepest first), are removed again where empty (never a file in them)."""
        print(f"{self.prog}: interrupted; {what}", file=sys.stderr)
        remove_empty_folders(list(made))
        return 130

    def refuse(self, message: str, made: list | tuple = ()):
        """A refusal that comes after the run made its folders (under the folder's lock: another
        run holds it, or left results there while this one waited): ``made`` are removed again
        where empty, then the usage error, exit 2, as :meth:`error` (a refused run had left the
        empty folder it made)."""
        remove_empty_folders(list(made))
        self.error(message)

    @staticmethod
    def folders_to_make(out: str) -> list[str]:
        """The folders of ``out`` (itself and its parents) that do not exist yet, for
        :meth:`run_interrupted` and :meth:`run_failed` to remove again if the run leaves them empty."""
        return missing_folders(out)

    def format_help(self) -> str:
        text = super().format_help()
        if self.examples:
            text += "\nexamples:\n" + "".join(f"  {line}\n" for line in self.examples)
        return text

    def parse_known_args(self, args=None, namespace=None):
        printable_streams()  # the command's entry: before --help or an error can print
        parsed, rest = super().parse_known_args(args, namespace)
        self._left = list(rest)  # this parser's unknown arguments, then its subcommand's (parse_args tells them)
        for action in self._actions:
            # argparse before 3.13 drops a value of "--" (``--out=--``) and stores an empty list for
            # an option that takes one value or more; 3.13 keeps it ("--" or ["--"]): refuse it here,
            # before a command joins it as a path or takes "no backends" for the user's choice
            # (``verify --backends=--``)
            if (action.nargs in (None, "+") and action.option_strings
                    and getattr(parsed, action.dest, None) in ([], "--", ["--"])):
                self.error(f"argument {'/'.join(action.option_strings)}: expected a value, got '--' (argparse "
                           f"reads it as the end of the options); give another value")
        return parsed, rest

    def parse_args(self, args=None, namespace=None):
        parsed, rest = self.parse_known_args(args, namespace)
        if rest:  # told by the command that took them, with its --help (argparse's own names the top command)
            parser = self
            while True:
                sub = parser._chosen(parsed)
                below = sub._left if isinstance(sub, CommandParser) else []
                own = parser._left[:len(parser._left) - len(below)]
                if own or not isinstance(sub, CommandParser):  # (before a subcommand: `--quick bench`, ca_rev238)
                    parser.error(f"unrecognized arguments: {' '.join(own)}")
                parser = sub
        return parsed

    def _chosen(self, parsed: argparse.Namespace):
        """The parser of the subcommand ``parsed`` names (``data``'s for ``data check``), or None."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(parsed, action.dest, None)
                return None if name is None else action.choices.get(name)
        return None

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--quiet``, the same on every subcommand."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (info lines stay)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars and no info lines (summaries and tables included); errors, and a "
                             "failed check's one line, still go to stderr")


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


def check_files(out: str, names) -> None:
    """UsageError, before any work, when one of the files ``names`` a command writes into
    ``out`` exists there as something other than a regular file (a folder, a named pipe):
    :func:`convex_attention.io.files.check_output_files`."""
    try:
        check_output_files(out, names)
    except ValueError as err:
        raise UsageError(str(err)) from None


def check_no_earlier(out: str, names, overwrite: bool) -> list[str]:
    """The files ``names`` an earlier run left in ``out`` (those that are there); UsageError,
    before any work, when there are some and ``overwrite`` was not given: an earlier result
    is never replaced without a word (:func:`convex_attention.io.files.check_no_earlier_outputs`).
    A name that exists as something other than a regular file (a folder, a named pipe) is a
    UsageError whatever ``overwrite`` says (:func:`check_files`): it could not be replaced."""
    check_files(out, names)
    try:
        return check_no_earlier_outputs(out, names, overwrite)
    except ValueError as err:
        raise UsageError(f"argument {err}") from None


@contextlib.contextmanager
def making_out(out: str):
    """``check_out(out)`` for the body, with the folders it made removed again, if empty, when
    the body fails: a run stopped before it wrote anything (Ctrl-C) leaves no empty ``--out``
    (verify's did: a review)."""
    made = missing_folders(out)
    try:
        check_out(out)
        yield
    except BaseException:
        remove_empty_folders(made)
        raise


def check_out_leaving_nothing(out: str) -> None:
    """``check_out`` (UsageError unless ``--out`` is, or can be made, a writable folder), with
    the folders it made removed again: a run that a later check refuses leaves no empty
    ``--out`` behind; ``check_out`` makes the folder once every check has passed."""
    made = missing_folders(out)
    check_out(out)
    remove_empty_folders(made)


def add_wait_option(parser: argparse.ArgumentParser) -> None:
    """``--wait``: wait for the run that holds ``--out``'s lock instead of stopping."""
    parser.add_argument("--wait", action="store_true",
                        help="if another run writes into --out (OUT/results.lock), wait for it instead of stopping "
                             "(exit 2)")


@contextlib.contextmanager
def holding_out(out: str, command: str, args, main: bool = True, outputs=(), patterns=(), recursive: bool = False):
    """``--out``'s lock (:func:`convex_attention.io.lock.results_lock`, one writer per
    folder, as ``bench`` holds it) while the body runs: a folder another live run holds is a
    UsageError naming that run (unless ``--wait``), and so is a ``results.lock`` that is not
    the tool's.  The folders the lock had to make are removed again, if empty, when the body
    fails (a refused run leaves no empty ``--out``).  ``main=False`` (a torchrun rank other
    than 0): no lock, rank 0 holds it for the run.  Under the lock, the temporaries a killed
    run left of the files named ``outputs`` (or matching the regular expressions ``patterns``:
    files named per condition) are removed and named, in ``out`` and with ``recursive`` in its
    sub-folders too, but for a sub-folder that holds a ``results.lock`` of its own, which is
    cleaned only while no live run holds it, its lock file left as it is (a live run there keeps
    its files: ca_rev131; a dead one's record stays: ca_rev133)
    (:func:`~convex_attention.io.files.clean_stale_tmp`; only bench and verify did: ca_rev130)."""
    from ..io.lock import ResultsLocked, results_lock

    if not main:
        yield
        return

    def say(message: str) -> None:
        print(f"{command}: {message}", file=sys.stderr)

    with making_out(out):  # a writable folder (made, if need be; removed again if empty when this fails)
        try:
            with results_lock(out, command=command, wait=getattr(args, "wait", False), log=say):
                _clean_left_temporaries(out, outputs, patterns, recursive, say)
                yield
        except ResultsLocked as err:
            raise UsageError(str(err)) from None


def _clean_left_temporaries(folder: str, outputs, patterns, recursive: bool, say) -> None:
    """:func:`holding_out`'s cleaning of ``folder`` (whose lock the caller holds, or which holds none),
    then, with ``recursive``, of each sub-folder (links not followed), under that one's lock: probed
    where it has a ``results.lock`` (a sub-folder a live run holds is left as it is), taken (and
    its file removed again) where it has none, so that no run starts there while it is cleaned."""
    from ..io.lock import LOCK_NAME, ResultsLocked, results_lock, while_unheld

    stale = clean_stale_tmp(folder, outputs, patterns)
    if stale:
        say(f"removed {', '.join(stale)} from {folder}: temporaries a killed run left")
    if not recursive:
        return
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if os.path.islink(sub) or not os.path.isdir(sub):
            continue
        if os.path.lexists(os.path.join(sub, LOCK_NAME)):
            with while_unheld(sub) as free:  # (its lock file is left as it is, a dead run's record too)
                if free:
                    _clean_left_temporaries(sub, outputs, patterns, recursive, say)
                else:
                    say(f"left {sub} as it is: another run holds it (or its {LOCK_NAME} is not this tool's)")
            continue
        try:  # held while cleaned, so that a run starting there meanwhile waits (its lock file goes again after)
            with results_lock(sub, command="cleaning", wait=False, log=lambda message: None):
                _clean_left_temporaries(sub, outputs, patterns, recursive, say)
        except ResultsLocked:  # a run took it since, or its folder takes no lock: its files are its own
            say(f"left {sub} as it is: another run holds it (or it takes no lock)")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported here, asked without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a finder that refuses the module
        return False


def missing_extra(command: str) -> str | None:
    """What ``command`` (e.g. ``"train"``, ``"data check"``) lacks, as one line naming the
    extra and its install command; ``None`` when everything it needs is installed."""
    for extra in COMMAND_EXTRAS.get(command, ()):
        missing = [m for m in EXTRA_MODULES[extra] if not _installed(m)]
        if missing:
            return (f"needs the [{extra}] extra, which is not installed (missing: {', '.join(missing)}); install "
                    f"it with: pip install 'convex-attention[{extra}]' (in a checkout: pip install -e '.[{extra}]')")
    return None
