"""Settings declared once: name, type, default, help and choices, in one dataclass field.

A configuration (``ModelConfig``, ``TrainConfig``, ``ExperimentConfig``, ``SweepConfig``)
declares each of its settings with :func:`setting`::

    @dataclass
    class ModelConfig:
        width: int = setting(32, Int(low=1), "channels of the first block (32 in the paper)")
        head: str = setting("bounded", Choice(HEADS), "score head", variant=True)

and everything else is derived from that one declaration:

* :func:`check_settings`: the value of every setting is checked against its kind (type,
  range, choices) and normalised (lists become tuples); an invalid one is a
  :class:`ConfigError` naming the setting;
* :func:`to_plain` / :func:`from_plain`: the configuration as plain JSON containers (what
  checkpoints, ``config.json`` and variants files hold), and back (a value in an older
  form, e.g. a temperature stored as a number, is normalised by its kind);
* :func:`add_options` / :func:`given_settings`: the command-line options, one per setting
  (``--width``, type, range, choices, help with the default), and which of them the user
  gave; :func:`add_grid_options`: ``--grid-<name>`` candidates for the settings declared
  ``variant=True`` (the experiment's dev-stage grid and the variants file).

A setting's :class:`Kind` parses one command-line word (:meth:`Kind.parse`), checks a
value from code or a file (:meth:`Kind.check`) and says what it accepts
(:meth:`Kind.describe`).  Every numeric kind has a range, so a value no tensor could
hold is a usage error before any work.  This module imports nothing heavy: building a
command's parser (and ``--help``) stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Iterable
from typing import Any

from .files import breaks_lines, one_line

__all__ = ["ConfigError", "Kind", "Int", "Real", "Choice", "Flag", "Text", "Many", "Mapping", "Setting", "setting",
           "declared", "normalise_settings", "check_settings", "to_plain", "from_plain", "add_options",
           "given_settings", "add_grid_options", "given_grid", "variant_settings", "SEED", "Unset", "show_value",
           "positive_int", "positive_float", "finite_float", "int_in", "check_listed_once"]

# Seeds seed numpy too, whose generator takes 32-bit seeds.
SEED_MAX = 2 ** 32 - 1


class ConfigError(ValueError):
    """An invalid setting; ``field`` names it (the command line maps it to its option)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ----------------------------------------------------------------------------- kinds

class Kind:
    """A setting's type: what one command-line word parses to, and what a value may be."""

    metavar = "X"
    optional = False

    def parse(self, text: str) -> Any:
        """One command-line word as a value; ValueError with the reason otherwise."""
        raise NotImplementedError

    def check(self, value) -> Any:
        """``value`` (from code or a file) normalised; ValueError (the reason) otherwise."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the setting accepts, in words (for messages and help)."""
        raise NotImplementedError

    def plain(self, value) -> Any:
        """``value`` as plain JSON containers."""
        return value

    def candidate(self, text: str) -> Any:
        """One word of a ``--grid-<name>`` option as a candidate value."""
        return self.parse(text)

    def check_or_none(self, value):
        if value is None:
            if self.optional:
                return None
            raise ValueError("it is required")
        return self.check(value)


_INT_WORD = re.compile(r"[+-]?[0-9]+")
_REAL_WORD = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?i:nan|inf|infinity)")
_NONZERO_DIGIT = re.compile(r"[1-9]")


def _is_int(x) -> bool:
    # NumPy's integers too (np.int64(3) had been "not an integer": ca_rev188); never a bool
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _shown(value, limit: int = 40) -> str:
    """``value`` as a refusal shows it: bounded (an integer of 5000 digits had raised Python's
    conversion limit in the message itself: ca_rev188)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)).bit_length() > 128:
        return f"an integer of about {int(abs(int(value)).bit_length() * math.log10(2)) + 1} digits"
    try:
        return one_line(repr(value), limit)
    except ValueError:  # a list holding such an integer: its repr raises Python's conversion limit (ca_rev266)
        return f"a {type(value).__name__} holding an integer too long to show"


def _identity(value):
    """What a distinct list compares: the value's repr (each kind returns its canonical value, so
    that two spellings of one value repr alike: ca_rev155), or an integer's value (an integer of
    5000 digits has no repr within Python's digit limit: a refusal had raised it instead of
    naming the setting, ca_rev275)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return ("integer", int(value))
    return repr(value)


@dataclasses.dataclass(frozen=True)
class Int(Kind):
    """An integer in ``[low, high]`` (either end may be open-ended)."""

    low: int | None = None
    high: int | None = None
    optional: bool = False
    metavar = "N"

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer from {self.low} to {self.high}"
        if self.low is not None:
            return f"an integer >= {self.low}"
        return "an integer" if self.high is None else f"an integer <= {self.high}"

    def check(self, value) -> int:
        if not _is_int(value):
            raise ValueError(f"must be {self.describe()}, got {_shown(value)}")
        value = int(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError(f"must be {self.describe()}, got {_shown(value)}")
        return value

    def parse(self, text: str) -> int:
        # ASCII digits only: int() also reads "٣" and "3_000", words a reader of the command
        # line or of a results file's settings would not take for that number
        refused = ValueError(f"must be {self.describe()}, got {one_line(repr(text), 40)}")
        if not _INT_WORD.fullmatch(text):
            raise refused
        try:
            value = int(text)
        except ValueError:  # beyond Python's digit limit (4300): its message would advise sys.set_int_max_str_digits
            raise refused from None
        return self.check(value)


@dataclasses.dataclass(frozen=True)
class Real(Kind):
    """A finite number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False
    metavar = "X"

    def describe(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"a finite number <= {self.high:g}"
        return f"a finite number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, value) -> float:
        try:
            finite = _is_real(value) and math.isfinite(value)
        except OverflowError:  # an integer beyond float's range (10**400 read from a JSON file)
            finite = False
        if not finite:
            raise ValueError(f"must be {self.describe()}, got {_shown(value)}")
        low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if low_bad or (self.high is not None and value > self.high):
            raise ValueError(f"must be {self.describe()}, got {_shown(value)}")
        return float(value) + 0.0  # -0.0 becomes 0.0: one value, one spelling (Many's distinct compares reprs)

    def parse(self, text: str) -> float:
        if not _REAL_WORD.fullmatch(text):  # ASCII, no "_": as Int.parse; "nan"/"inf" fail below, by name
            raise ValueError(f"must be {self.describe()}, got {one_line(repr(text), 40)}")
        value = float(text)
        if value == 0.0 and _NONZERO_DIGIT.search(text.lower().partition("e")[0]):
            # "1e-400" reads as 0.0: a tolerance the user set to something, silently none
            raise ValueError(f"must be {self.describe()}, got {one_line(repr(text), 40)}, "
                             "which is too small for a float (it would read as 0)")
        return self.check(value)


class Choice(Kind):
    """One of ``values`` (a tuple, or a function giving it when asked: a registry that may
    grow).  ``optional``: ``None`` is accepted too, written ``none`` on the command line.
    ``listed``: the values a command's help lists when ``values`` is a function (the
    function may import a heavy module, and building a parser, or ``--help``, must not);
    the checks always ask the function."""

    metavar = "NAME"

    def __init__(self, values: Iterable[str] | Callable[[], Iterable[str]], optional: bool = False,
                 listed: Iterable[str] | None = None):
        self._values = values
        self.optional = optional
        self._listed = tuple(listed) if listed is not None else None

    @property
    def values(self) -> tuple:
        values = self._values() if callable(self._values) else self._values
        return tuple(values)

    @property
    def listed(self) -> tuple:
        """What the help lists: ``listed`` where given, else :attr:`values`."""
        return self._listed if self._listed is not None else self.values

    def describe(self) -> str:
        return "one of " + ", ".join(self.values) + (" or none" if self.optional else "")

    def check(self, value):
        if value not in self.values:
            raise ValueError(f"must be {self.describe()}, got {_shown(value)}")
        # the allowed value itself, not another spelling of it (np.str_('a') for 'a' had passed a
        # list's distinct check beside 'a': ca_rev155)
        return next(v for v in self.values if v == value)

    def parse(self, text: str):
        if self.optional and text == "none":
            return None
        return self.check(text)


@dataclasses.dataclass(frozen=True)
class Flag(Kind):
    """True or False.  On the command line a flag that is off by default is switched on by
    ``--<name>``; one on by default is switched off by its ``--no-...`` option.  As a grid
    candidate it is written ``on`` or ``off``."""

    metavar = "on|off"

    def describe(self) -> str:
        return "True or False"

    def check(self, value) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be True or False, got {_shown(value)}")
        return value

    def parse(self, text: str) -> bool:
        if text not in ("on", "off"):
            raise ValueError(f"must be on or off, got {text!r}")
        return text == "on"

    def plain(self, value):
        return value


@dataclasses.dataclass(frozen=True)
class Text(Kind):
    """A non-empty string (a path, a device name); ``check`` may refine it."""

    optional: bool = False
    what: str = "a non-empty string"
    metavar = "TEXT"

    def describe(self) -> str:
        return self.what

    def check(self, value) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be {self.describe()}, got {_shown(value)}")
        if breaks_lines(value):  # (makedirs raised on NUL)
            raise ValueError(f"must be {self.describe()} without control characters or line breaks, "
                             f"got {_shown(value, 200)}")
        return str(value)

    def parse(self, text: str) -> str:
        return self.check(text)


@dataclasses.dataclass(frozen=True)
class Many(Kind):
    """A tuple of values of one kind (``nargs="+"`` on the command line), at least
    ``at_least`` and at most ``at_most`` of them, each once if ``distinct``.  As a grid
    candidate, one word is a tuple of one value."""

    item: Kind = dataclasses.field(default_factory=Real)
    at_least: int = 1
    at_most: int | None = None
    distinct: bool = False
    optional: bool = False
    scalar: bool = False  # one value stands for a tuple of one (a temperature shared by every level)

    @property
    def metavar(self):
        return self.item.metavar

    def describe(self) -> str:
        count = (f"{self.at_least} to {self.at_most}" if self.at_most is not None
                 else f"at least {self.at_least}")
        return f"{count}{' distinct' if self.distinct else ''} values, each {self.item.describe()}"

    def normalise(self, value):
        """Lists as tuples, and one value as a tuple of one where ``scalar``."""
        if isinstance(value, list):
            return tuple(value)
        if self.scalar and value is not None and not isinstance(value, (tuple, str, bytes, dict)):
            return (value,)
        return value

    def check(self, value) -> tuple:
        value = self.normalise(value)
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
            raise ValueError(f"must be a list of {self.describe()}, got {_shown(value)}")
        values = tuple(value)
        if len(values) < self.at_least or (self.at_most is not None and len(values) > self.at_most):
            raise ValueError(f"must hold {self.describe()}, got {_shown(list(values), 200)}")
        out = []
        for v in values:
            try:
                out.append(self.item.check(v))
            except ValueError:
                raise ValueError(f"must hold values that are each {self.item.describe()}; {_shown(v)} is not") from None
        if self.distinct and len(set(map(_identity, out))) != len(out):
            twice = [v for i, v in enumerate(out) if _identity(v) in map(_identity, out[:i])]
            raise ValueError(f"must hold distinct values, got {_shown(list(out), 200)} ({_shown(twice[0])} is "
                             f"listed twice)")
        return tuple(out)

    def parse(self, text: str):
        return self.item.parse(text)

    def candidate(self, text: str) -> tuple:
        return (self.item.parse(text),)

    def plain(self, value):
        return [self.item.plain(v) for v in value]


@dataclasses.dataclass(frozen=True)
class Mapping(Kind):
    """A dict of options passed on (not a command-line setting), of plain JSON values: str keys,
    finite numbers, strings, booleans, None, lists (a tuple is kept as a list) and dicts."""

    metavar = "DICT"

    def describe(self) -> str:
        return "a dict"

    def check(self, value) -> dict:
        if not isinstance(value, dict):
            raise ValueError(f"must be a dict, got {_shown(value)}")
        return _plain_json(value, "")

    def parse(self, text: str):  # (it had sat, unreachable, inside _plain_json: ca_rev188)
        raise ValueError("is not set on the command line")


def _plain_json(value, where: str):
    """``value`` as the strict JSON of a configuration file holds it and reads it back: str
    keys, finite numbers, strings, booleans, None, lists (tuples as lists) and dicts of them;
    ValueError naming the entry otherwise (a NaN had passed the check and failed only when the
    configuration was written, and a tuple or an int key read back changed: ca_rev155)."""
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValueError(f"must have str keys (JSON's), got {_shown(bad[0])}{' in ' + where if where else ''}")
        return {k: _plain_json(v, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value)
    raise ValueError(f"must hold plain JSON values (finite numbers, strings, lists, dicts), got {value!r}"
                     f"{' at ' + where if where else ''}")


SEED = Int(low=0, high=SEED_MAX)


# ----------------------------------------------------------------------------- declarations

@dataclasses.dataclass(frozen=True)
class Setting:
    """What a configuration field declares beyond its name and default.

    ``flag``: its command-line option (``None``: ``--<name with dashes>``; ``""``: not on
    the command line).  ``variant``: one of the model variant's settings, which the
    experiment's dev stage compares (``--grid-<name>``) and the variants file fixes.
    ``shown``: the default as help shows it, where the value alone would mislead.
    ``cross``: a check of this setting that needs the others (``fn(config) -> None``,
    raising ValueError), run after every setting's own check.
    """

    kind: Kind
    help: str
    flag: str | None = None
    variant: bool = False
    shown: str | None = None
    cross: Callable | None = None

    def option(self, name: str, default=None) -> str:
        """The command-line option: ``flag``, else ``--<name>`` (a flag on by default:
        ``--no-<name>``, which switches it off)."""
        if self.flag is not None:
            return self.flag
        negated = isinstance(self.kind, Flag) and default is True
        return f"--{'no-' if negated else ''}{name.replace('_', '-')}"


def setting(default, kind: Kind, help: str, **options) -> Any:
    """A dataclass field declaring one setting (see the module docstring); mutable
    defaults (tuples stay tuples, dicts are copied per instance)."""
    meta = {"setting": Setting(kind, help, **options)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls) -> dict[str, Setting]:
    """``{name: Setting}`` of every declared setting of a configuration class or instance."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata}


def variant_settings(*classes) -> dict[str, Setting]:
    """The settings declared ``variant=True`` in ``classes``, in declaration order."""
    out: dict[str, Setting] = {}
    for cls in classes:
        out.update({n: s for n, s in declared(cls).items() if s.variant})
    return out


def normalise_settings(config) -> None:
    """Give every declared setting of ``config`` its one type, in place, without checking it
    (lists become tuples; a temperature given as one number becomes a tuple of one):
    configurations call it when they are made, so equal settings compare equal."""
    for name, s in declared(config).items():
        if isinstance(s.kind, Many):
            setattr(config, name, s.kind.normalise(getattr(config, name)))


def check_settings(config) -> None:
    """Check every declared setting of ``config`` against its kind and normalise it in place
    (then each declared cross-check); :class:`ConfigError` naming the first invalid one."""
    settings = declared(config)
    for name, s in settings.items():
        try:
            setattr(config, name, s.kind.check_or_none(getattr(config, name)))
        except ValueError as err:
            raise ConfigError(name, f"{name} {err}") from None
    for name, s in settings.items():
        if s.cross is not None:
            try:
                s.cross(config)
            except ConfigError:
                raise
            except ValueError as err:
                raise ConfigError(name, str(err)) from None


def to_plain(config) -> dict:
    """Every declared setting of ``config`` as plain JSON containers."""
    return {name: (None if getattr(config, name) is None else s.kind.plain(getattr(config, name)))
            for name, s in declared(config).items()}


def from_plain(cls, data: dict, where: str = "configuration") -> dict:
    """The declared settings of ``cls`` found in ``data``, each normalised by its kind (a
    value stored in an older form is read as today's); ConfigError for a name ``cls`` does
    not declare.  Returns keyword arguments for ``cls`` (settings missing from ``data``
    take their defaults there)."""
    settings = declared(cls)
    unknown = sorted(set(data) - set(settings))
    if unknown:
        raise ConfigError(unknown[0], f"unknown {where} field(s) {unknown}; known: {sorted(settings)}")
    out = {}
    for name, value in data.items():
        try:
            out[name] = settings[name].kind.check_or_none(value)
        except ValueError as err:
            raise ConfigError(name, f"{where}: {name} {err}") from None
    return out


# ----------------------------------------------------------------------------- the command line

class Unset:
    """A default as argparse keeps it when the option is not given: help shows the value,
    and :func:`given_settings` tells "not given" apart from "given the default value"."""

    def __init__(self, value, shown: str | None = None):
        self.value, self.shown = value, shown

    def __str__(self) -> str:
        if self.shown is not None:
            return self.shown
        return show_value(self.value)

    __repr__ = __str__


def show_value(value) -> str:
    """A value as the command line writes it (tuples as words, flags as on/off, None as none)."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(show_value, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _argument_type(kind: Kind, name: str):
    def parse(text: str):
        try:
            return kind.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def add_options(parser: argparse.ArgumentParser, cls, base=None, names=None, shown: dict | None = None,
                helps: dict | None = None, listed: dict | None = None) -> None:
    """One option per declared setting of ``cls`` (or of ``names`` only, in that order),
    with its type, range, choices and help; the default is ``base``'s value (or the
    declaration's), shown in the help once.  ``shown``: ``{name: text}`` replacing a
    default's display.  ``helps`` and ``listed``: ``{name: text}`` and ``{name: values}``
    replacing the declared help and the choices it lists (for a number, ``values`` is a
    narrower :class:`Int` or :class:`Real`, whose range it shows), for a command that accepts
    fewer values than the setting (the values are still checked against the declaration,
    and the command's own check refuses the rest with its reason).  Settings declared
    with ``flag=""`` are left out."""
    settings = declared(cls)
    chosen = list(names) if names is not None else list(settings)
    for name in chosen:
        s = settings[name]
        default = getattr(base, name) if base is not None else _field_default(cls, name)
        option = s.option(name, default)
        if option == "":
            continue
        display = (shown or {}).get(name, s.shown)
        text = (helps or {}).get(name, s.help)
        kind = s.kind
        if isinstance(kind, Flag):
            # an option that is on by default is switched off by its --no-... flag
            store = "store_false" if default else "store_true"
            # the help of a --no-... flag says what it turns off (it read as what it turns on: a review)
            said = f"{'turn off: ' if default else ''}{text} (default: {display or show_value(default)})"
            parser.add_argument(option, dest=name, action=store, default=Unset(default, display), help=said)
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": Unset(default, display),
                                  "type": _argument_type(kind, name), "metavar": kind.metavar}
        if isinstance(kind, Many):
            kwargs["nargs"] = "+"
        choices = _choices_text(kind, (listed or {}).get(name))
        parser.add_argument(option, **kwargs,
                            help=f"{text}{choices} (default: {display or show_value(default)})")


def _choices_text(kind: Kind, listed=None) -> str:
    """What ``--help`` adds to a setting's text: the values it accepts (the choices, or a
    number's range where it has one), so that a refusal never names a rule the help hid."""
    inner = kind.item if isinstance(kind, Many) else kind
    each = "each " if isinstance(kind, Many) else ""
    if isinstance(inner, Choice):
        values = tuple(listed) if listed is not None else inner.listed
        return f"; one of {', '.join(values)}" + (" or none" if inner.optional else "")
    if isinstance(listed, (Int, Real)):  # a command's narrower range (add_options)
        inner = listed
    if isinstance(inner, (Int, Real)) and (inner.low is not None or inner.high is not None):
        return f"; {each}{inner.describe()}"
    return ""


def _field_default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Callable = f.default_factory  # type: ignore[assignment]
    return factory()


def given_settings(args: argparse.Namespace, cls, names=None) -> dict:
    """``{name: value}`` of the declared settings of ``cls`` (or ``names``) that were given
    on the command line (lists as tuples)."""
    chosen = list(names) if names is not None else list(declared(cls))
    out = {}
    for name in chosen:
        value = getattr(args, name, None)
        if value is None and not hasattr(args, name):
            continue
        if isinstance(value, Unset):
            continue
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def add_grid_options(parser: argparse.ArgumentParser, settings: dict[str, Setting], base: dict, what: str,
                     shown: dict | None = None) -> None:
    """``--grid-<name>`` for each setting of ``settings``: the candidate values of the
    dev stage's grid (``base[name]``: the default candidates)."""
    for name, s in settings.items():
        kind = s.kind

        def parse(text, kind=kind, name=name):
            try:
                return kind.candidate(text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        parse.__name__ = name
        display = (shown or {}).get(name) or " ".join(show_value(v) for v in base[name])
        parser.add_argument(f"--grid-{name.replace('_', '-')}", dest=f"grid_{name}", nargs="+", type=parse,
                            default=Unset(base[name], display), metavar=kind.metavar if not isinstance(kind, Flag)
                            else "on|off",
                            help=f"{what}: candidate values of {name} ({s.help}){_choices_text(kind)} "
                                 f"(default: {display})")


def given_grid(args: argparse.Namespace, settings: dict[str, Setting]) -> dict:
    """``{name: candidates}`` of the ``--grid-<name>`` options given on the command line."""
    out = {}
    for name in settings:
        value = getattr(args, f"grid_{name}", None)
        if value is not None and not isinstance(value, Unset):
            out[name] = tuple(value)
    return out


# ----------------------------------------------------------------------------- argument types

def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _argument_type(Int(low=1), "positive_int")(text)


def int_in(low: int, high: int, name: str = "int_in"):
    """An argparse type: an integer from ``low`` to ``high`` (every numeric option has a
    range: a value no tensor could hold is a usage error)."""
    return _argument_type(Int(low=low, high=high), name)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    return _argument_type(Real(low=0.0, low_open=True), "positive_float")(text)


def finite_float(text: str) -> float:
    """An argparse type: any finite number (``inf`` and ``nan`` are refused)."""
    return _argument_type(Real(), "finite_float")(text)


def check_listed_once(flag: str, values, what: str) -> None:
    """ValueError naming ``flag`` and each value of ``values`` (a list option's) listed more than
    once: each would be measured twice, its rows written twice (bench's grid options hold
    distinct values; a script's lists the same: ca_rev114, ca_rev141).  ``what``: one value, in
    words ("backend")."""
    values = list(values or ())
    twice = list(dict.fromkeys(str(v) for i, v in enumerate(values) if v in values[:i]))
    if twice:
        raise ValueError(f"{flag} lists {', '.join(twice)} more than once; name each {what} once")
