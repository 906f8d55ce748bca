"""convex_attention.io.settings: settings declared once, everything else derived.

The last tests show what "one declaration" buys: every option of ``train``,
``experiment`` and ``bench``, every stored field and every variant field is the
derivation of a declaration, and one more declared field (``dropout`` below) reaches the
command line, the checks, the stored configuration, the grid, the variant and the
variants file with nothing else written."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import pytest

from convex_attention.io import settings as S
from convex_attention.io.settings import (
    Choice,
    ConfigError,
    Flag,
    Int,
    Many,
    Real,
    Text,
    add_grid_options,
    add_options,
    check_settings,
    declared,
    from_plain,
    given_grid,
    given_settings,
    setting,
    to_plain,
    variant_settings,
)

# ----------------------------------------------------------------------------- kinds

@pytest.mark.parametrize("kind, good, bad", [
    (Int(low=1, high=5), [1, 5], [0, 6, 2.0, True, "3", None]),
    (Real(low=0.0, low_open=True), [1e-300, 3, 2.5], [0.0, -1.0, math.inf, math.nan, True, "1"]),
    (Real(low=0.0, high=1.0), [0, 1.0, 0.5], [-1e-9, 1.5]),
    (Choice(("a", "b")), ["a", "b"], ["c", None, 1]),
    (Flag(), [True, False], [1, "yes", None]),
    (Text(), ["x"], ["", None, 3]),
    (Many(Int(low=0), at_most=2, distinct=True), [(1,), [0, 3]], [(), (1, 1), (1, 2, 3), (-1,), "12", 3]),
])
def test_kinds_check_values_from_code_and_files(kind, good, bad):
    for value in good:
        kind.check(value)
    for value in bad:
        with pytest.raises(ValueError, match="must"):
            kind.check(value)


def test_kinds_parse_command_line_words_and_say_what_they_accept():
    assert Int(low=0).parse("7") == 7 and Real().parse("1e-3") == 1e-3 and Flag().parse("on") is True
    for kind, word in ((Int(low=0), "x"), (Int(low=0), "-1"), (Real(), "inf"), (Real(), "nan"),
                       (Choice(("a",)), "b"), (S.SEED, str(2 ** 32))):
        with pytest.raises(ValueError) as err:
            kind.parse(word)
        assert kind.describe() in str(err.value)
    with pytest.raises(ValueError, match="on or off"):
        Flag().parse("yes")
    assert Choice(("a",), optional=True).parse("none") is None
    assert Many(Real()).candidate("0.5") == (0.5,) and Flag().candidate("off") is False


def test_a_choice_may_follow_a_registry_that_grows():
    names = ["a"]
    kind = Choice(lambda: names)
    with pytest.raises(ValueError):
        kind.check("b")
    names.append("b")
    assert kind.check("b") == "b"


def test_a_scalar_stands_for_a_tuple_of_one_where_declared():
    kind = Many(Real(low=0.0, low_open=True), scalar=True)
    assert kind.check(0.3) == (0.3,) and kind.check([1.0, 2.0]) == (1.0, 2.0)
    with pytest.raises(ValueError):
        Many(Real()).check(0.3)


# ----------------------------------------------------------------------------- declarations

@dataclass
class Toy:
    size: int = setting(8, Int(low=1, high=64), "a size")
    rate: float = setting(0.5, Real(low=0.0, high=1.0), "a rate", variant=True)
    mode: str = setting("a", Choice(("a", "b")), "a mode", variant=True)
    on: bool = setting(False, Flag(), "a switch")
    keep: bool = setting(True, Flag(), "a switch on by default")
    sizes: tuple = setting((1, 2), Many(Int(low=1)), "sizes")
    hidden: int = setting(3, Int(low=0), "not on the command line", flag="")

    def __post_init__(self):
        S.normalise_settings(self)


def test_check_settings_names_the_setting_and_normalises():
    toy = Toy(sizes=[3, 4])
    assert toy.sizes == (3, 4)  # lists become tuples when the configuration is made
    check_settings(toy)
    with pytest.raises(ConfigError, match="size must be an integer from 1 to 64") as err:
        check_settings(Toy(size=0))
    assert err.value.field == "size"


def test_plain_round_trip_and_unknown_fields():
    toy = Toy(size=9, sizes=(5,))
    plain = to_plain(toy)
    assert plain["sizes"] == [5] and json.loads(json.dumps(plain)) == plain
    assert Toy(**from_plain(Toy, plain)) == toy
    with pytest.raises(ConfigError, match="unknown toy field"):
        from_plain(Toy, {"colour": 1}, "toy")
    with pytest.raises(ConfigError, match="rate"):
        from_plain(Toy, {"rate": 2.0}, "toy")


def test_options_are_derived_with_their_defaults_once_and_given_ones_are_told_apart():
    parser = argparse.ArgumentParser()
    add_options(parser, Toy)
    options = {a.dest: a for a in parser._actions if a.option_strings}
    assert "hidden" not in options
    assert options["keep"].option_strings == ["--no-keep"] and options["on"].option_strings == ["--on"]
    assert all(a.help.count("(default:") == 1 for d, a in options.items() if d != "help")
    args = parser.parse_args(["--size", "4", "--no-keep", "--sizes", "1", "7"])
    assert given_settings(args, Toy) == {"size": 4, "keep": False, "sizes": (1, 7)}
    assert given_settings(parser.parse_args([]), Toy) == {}  # defaults are not "given"
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "65"])


def test_a_command_may_narrow_the_help_and_the_listed_choices_of_a_setting():
    parser = argparse.ArgumentParser()
    add_options(parser, Toy, names=["mode", "on"], helps={"mode": "only a here", "on": "switch it"},
                listed={"mode": ("a",)})
    options = {a.dest: a for a in parser._actions if a.option_strings}
    assert options["mode"].help == "only a here; one of a (default: a)"
    assert options["on"].help == "switch it (default: off)"
    assert parser.parse_args(["--mode", "b"]).mode == "b"  # the declaration still decides what parses


def test_grid_options_for_the_variant_settings():
    parser = argparse.ArgumentParser()
    settings = variant_settings(Toy)
    assert list(settings) == ["rate", "mode"]
    add_grid_options(parser, settings, {"rate": (0.5,), "mode": ("a",)}, "dev stage")
    args = parser.parse_args(["--grid-rate", "0.1", "0.2"])
    assert given_grid(args, settings) == {"rate": (0.1, 0.2)}


# ----------------------------------------------------------------------------- one declaration, everywhere

def _options(parser: argparse.ArgumentParser) -> set:
    return {a.dest for a in parser._actions if a.option_strings}


def _subparser(name: str) -> argparse.ArgumentParser:
    from convex_attention import cli

    (action,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices[name]


def test_every_command_option_and_stored_field_is_a_derived_declaration():
    from convex_attention.bench.config import SweepConfig
    from convex_attention.paper.config import ExperimentConfig, ModelConfig, TrainConfig, Variant, variant_names
    from convex_attention.paper.protocol import Variants

    def on_command_line(cls):
        return {n for n, s in declared(cls).items() if s.flag != ""}

    assert on_command_line(ModelConfig) | on_command_line(TrainConfig) <= _options(_subparser("train"))
    assert on_command_line(SweepConfig) <= _options(_subparser("bench"))
    experiment = _options(_subparser("experiment"))
    assert on_command_line(ExperimentConfig) <= experiment
    assert {f"grid_{n}" for n in variant_names()} <= experiment
    # the stored configuration is the declarations
    stored = TrainConfig().to_dict()
    assert set(stored["model"]) == set(declared(ModelConfig)) and set(stored) - {"model"} == set(declared(TrainConfig))
    # the variant and its file are the declarations marked variant=True
    assert set(variant_names()) == set(variant_settings(ModelConfig)) | set(variant_settings(ExperimentConfig))
    file = Variants().to_dict()
    assert set(file["model"]) == set(variant_settings(ModelConfig))
    assert set(variant_settings(ExperimentConfig)) <= set(file) and set(Variant().values()) == set(variant_names())


def test_a_new_setting_is_one_declaration(monkeypatch):
    """One more field declared on the model (here in a subclass standing in for an edit of
    ModelConfig) reaches every place a setting goes, with nothing else written."""
    from convex_attention.paper import config as paper_config
    from convex_attention.paper.config import ExperimentConfig, ModelConfig, TrainConfig, Variant, variant_names
    from convex_attention.paper.protocol import Variants

    @dataclass
    class WithDropout(ModelConfig):
        dropout: float = setting(0.0, Real(low=0.0, high=0.9), "dropout before the classifier", variant=True)

    monkeypatch.setattr(paper_config, "ModelConfig", WithDropout)
    # the command line: an option with its range, default and help, and a grid option
    parser = argparse.ArgumentParser()
    add_options(parser, WithDropout)
    assert given_settings(parser.parse_args(["--dropout", "0.25"]), WithDropout) == {"dropout": 0.25}
    with pytest.raises(SystemExit):
        parser.parse_args(["--dropout", "2"])
    grid = argparse.ArgumentParser()
    add_grid_options(grid, variant_settings(WithDropout), {n: (0.0,) for n in variant_settings(WithDropout)}, "dev")
    assert given_grid(grid.parse_args(["--grid-dropout", "0.1", "0.3"]), variant_settings(WithDropout)) == {
        "dropout": (0.1, 0.3)}
    # the checks and the stored configuration (what checkpoints and config.json hold)
    with pytest.raises(ConfigError, match="dropout"):
        WithDropout(dropout=1.0).validate()
    config = TrainConfig(model=WithDropout(dropout=0.25))
    assert config.to_dict()["model"]["dropout"] == 0.25
    assert WithDropout.from_dict(config.to_dict()["model"]) == config.model
    # the variant, the dev stage's grid and the variants file
    assert "dropout" in variant_names() and Variant().dropout == 0.0
    experiment = ExperimentConfig(train=TrainConfig(model=WithDropout(), data_seed=0), grid={"dropout": (0.0, 0.5)})
    assert sorted(v.dropout for v in experiment.validate().variants()) == [0.0, 0.5]
    chosen = Variants(Variant(dropout=0.5))
    assert chosen.to_dict()["model"]["dropout"] == 0.5
    assert Variants.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen
    assert experiment.with_variants(chosen).train.model.dropout == 0.5
    # a variants file written before the setting existed is refused with how to convert it
    old = chosen.to_dict()
    del old["model"]["dropout"]
    from convex_attention.paper.protocol import VariantsError

    with pytest.raises(VariantsError, match="missing: \\['dropout'\\].*add the setting"):
        Variants.from_dict(old)


def test_int_in_is_an_argparse_type_with_a_range():
    parse = S.int_in(1, 100, "n")
    assert parse("7") == 7
    for bad in ("0", "101", str(2 ** 64), "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be an integer from 1 to 100"):
            parse(bad)
    assert parse.__name__ == "n"


# ----------------------------------------------------------------------------- what each kind says and refuses

@pytest.mark.parametrize("kind, words", [
    (Int(), "an integer"),
    (Int(low=1), "an integer >= 1"),
    (Int(high=5), "an integer <= 5"),
    (Int(low=0, high=5), "an integer from 0 to 5"),
    (Real(), "a finite number"),
    (Real(low=0.0), "a finite number >= 0"),
    (Real(low=0.0, low_open=True), "a finite number > 0"),
    (Real(high=1.0), "a finite number <= 1"),
    (Real(low=0.0, high=1.0, low_open=True), "a finite number in (0, 1]"),
    (Choice(("a", "b")), "one of a, b"),
    (Choice(("a", "b"), optional=True), "one of a, b or none"),
    (Many(Real()), "at least 1 values, each a finite number"),
    (Many(Int(low=0), at_most=2, distinct=True), "1 to 2 distinct values, each an integer >= 0"),
])
def test_each_kind_says_exactly_what_it_accepts(kind, words):
    assert kind.describe() == words


def test_the_message_of_an_open_ended_range_names_its_bound():
    with pytest.raises(ValueError, match=r"^must be an integer <= 5, got 6$"):
        Int(high=5).check(6)
    assert Int(high=5).check(5) == 5
    with pytest.raises(ValueError, match=r"^must be a finite number <= 1, got 1.5$"):
        Real(high=1.0).check(1.5)
    assert Real(high=1.0).check(1.0) == 1.0


def test_a_real_is_normalised_to_a_float():
    value = Real(low=0.0).check(3)
    assert value == 3.0 and type(value) is float


def test_none_is_a_word_only_for_an_optional_choice_and_choices_are_case_sensitive():
    with pytest.raises(ValueError, match="must be one of a, b, got 'none'"):
        Choice(("a", "b")).parse("none")
    optional = Choice(("a", "b"), optional=True)
    assert optional.parse("none") is None and optional.parse("a") == "a"
    for word in ("None", "NONE", "A"):
        with pytest.raises(ValueError, match="must be one of a, b or none"):
            optional.parse(word)


def test_a_flag_word_is_on_or_off_in_lower_case():
    assert Flag().parse("on") is True and Flag().parse("off") is False
    for word in ("ON", "Off", "true", ""):
        with pytest.raises(ValueError, match="must be on or off"):
            Flag().parse(word)


def test_many_refuses_a_string_or_a_dict_even_where_each_character_would_do():
    with pytest.raises(ValueError, match="must be a list of"):
        Many(Text()).check("ab")
    with pytest.raises(ValueError, match="must be a list of"):
        Many(Choice(("a",))).check({"a": 1})
    with pytest.raises(ValueError, match="must be a list of"):
        Many(Text()).check(b"ab")
    assert Many(Text()).check(["ab"]) == ("ab",)


def test_an_unset_optional_scalar_list_stays_none():
    kind = Many(Real(), scalar=True, optional=True)
    assert kind.normalise(None) is None and kind.normalise(0.5) == (0.5,)

    @dataclass
    class Optional:
        scale: tuple | None = setting(None, kind, "optional scales")

        def __post_init__(self):
            S.normalise_settings(self)

    config = Optional()
    assert config.scale is None
    check_settings(config)
    assert config.scale is None


def test_a_repeated_value_is_named_in_the_message():
    kind = Many(Int(), distinct=True)
    with pytest.raises(ValueError, match=r"\(2 is listed twice\)"):
        kind.check((1, 2, 3, 2))
    with pytest.raises(ValueError, match=r"\('b' is listed twice\)"):
        Many(Choice(("a", "b")), distinct=True).check(["a", "b", "b"])
    assert kind.check((1, 2, 3)) == (1, 2, 3)


def test_a_cross_check_failure_is_a_config_error_naming_its_setting():
    def low_below_high(config):
        if config.low >= config.high:
            raise ValueError(f"low must be below high, got {config.low} >= {config.high}")

    @dataclass
    class Span:
        low: int = setting(0, Int(), "lower end", cross=low_below_high)
        high: int = setting(1, Int(), "upper end")

    check_settings(Span(0, 1))
    with pytest.raises(ConfigError, match="^low must be below high, got 1 >= 1$") as err:
        check_settings(Span(1, 1))
    assert err.value.field == "low"


def test_from_plain_refuses_an_unknown_field_as_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown toy field\(s\) \['colour'\]") as err:
        from_plain(Toy, {"size": 4, "colour": 1}, "toy")
    assert err.value.field == "colour"


# ----------------------------------------------------------------------------- argument types, both sides of each bound

def test_positive_int_refuses_zero_and_accepts_one():
    assert S.positive_int("1") == 1
    for bad in ("0", "-1", "x", "1.0"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 1"):
            S.positive_int(bad)


def test_positive_float_refuses_zero_and_accepts_the_smallest_positive():
    assert S.positive_float("1e-300") == 1e-300 and S.positive_float("2") == 2.0
    for bad in ("0", "-0", "-1e-300", "inf", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number > 0"):
            S.positive_float(bad)


def test_finite_float_refuses_infinities_and_nan():
    assert S.finite_float("-1.5") == -1.5 and S.finite_float("1e308") == 1e308
    for bad in ("inf", "-inf", "nan", "1e309", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number"):
            S.finite_float(bad)


def test_show_value_writes_values_as_the_command_line_does():
    assert S.show_value(None) == "none" and S.show_value((1, True, None)) == "1 on none"
    assert S.show_value(False) == "off" and str(S.Unset(None)) == "none" and str(S.Unset(3, "three")) == "three"


def test_the_help_lists_the_choices_of_an_optional_choice_and_of_a_list_of_choices():
    @dataclass
    class Picks:
        pick: str | None = setting(None, Choice(("a", "b"), optional=True), "a pick")
        picks: tuple = setting(("a",), Many(Choice(("a", "b"))), "picks")

    parser = argparse.ArgumentParser()
    add_options(parser, Picks)
    options = {a.dest: a for a in parser._actions if a.option_strings}
    assert options["pick"].help == "a pick; one of a, b or none (default: none)"
    assert options["picks"].help == "picks; one of a, b (default: a)"
    assert parser.parse_args(["--pick", "none"]).pick is None
    assert given_settings(parser.parse_args(["--picks", "b", "a"]), Picks) == {"picks": ("b", "a")}
    with pytest.raises(SystemExit):
        parser.parse_args(["--picks", "c"])


def test_the_help_states_the_range_a_number_is_refused_outside_of():
    """Before: `bench --warmup 0` was refused by a range its --help never showed (a review)."""
    @dataclass
    class Numbers:
        warmup: int = setting(3, Int(low=1, high=10), "untimed repetitions")
        scale: float = setting(1.0, Real(low=0.0, high=5.0, low_open=True), "a scale")
        sizes: tuple = setting((8,), Many(Int(low=1)), "sides")
        anything: float = setting(0.5, Real(), "unbounded")

    parser = argparse.ArgumentParser()
    add_options(parser, Numbers)
    options = {a.dest: a for a in parser._actions if a.option_strings}
    assert options["warmup"].help == "untimed repetitions; an integer from 1 to 10 (default: 3)"
    assert options["scale"].help == "a scale; a finite number in (0, 5] (default: 1.0)"
    assert options["sizes"].help == "sides; each an integer >= 1 (default: 8)"
    assert options["anything"].help == "unbounded (default: 0.5)"  # no range to state


def test_an_integer_beyond_floats_range_is_refused_naming_the_setting_not_an_overflow():
    from convex_attention.io.settings import ConfigError, Real
    from convex_attention.paper.config import TrainConfig

    with pytest.raises(ValueError, match=r"must be a finite number, got an integer of about 401 digits$"):
        Real().check(10 ** 400)  # a 400-digit literal in a JSON file: its size, not its digits
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        TrainConfig(lr=10 ** 400).validate()


def test_minus_zero_is_zero_so_it_is_listed_twice_beside_zero():
    from convex_attention.io.settings import Many, Real

    assert math.copysign(1.0, Real().check(-0.0)) == 1.0
    with pytest.raises(ValueError, match="listed twice"):
        Many(Real(), distinct=True).check((0.0, -0.0))


# ---- ca_rev155 (strict xfail: review of c71ac64)

def test_ca_rev155_a_mapping_holding_nan_is_refused_when_checked():
    """solver_options={"tol": nan} passes check_settings; writing the configuration (strict JSON) fails later."""
    with pytest.raises(ValueError):
        S.Mapping().check({"tol": math.nan})


@dataclass
class _Options:
    options: dict = setting({}, S.Mapping(), "solver options", flag="")


@pytest.mark.parametrize("options", [{"sizes": (1, 2)}, {1: 2}])
def test_ca_rev155_a_checked_mapping_reads_back_as_it_was_written(options):
    """to_plain keeps a tuple or an int key; through JSON they read back as a list and a string key."""
    config = _Options(options=options)
    try:
        check_settings(config)
    except ConfigError:
        return  # refused when checked: also a fix
    back = _Options(**from_plain(_Options, json.loads(json.dumps(to_plain(config)))))
    assert back == config, (back, config)


def test_ca_rev155_one_choice_in_two_spellings_is_listed_twice():
    """A name from a numpy array and the same name as a str are one method, measured twice."""
    np = pytest.importorskip("numpy")
    with pytest.raises(ValueError, match="listed twice"):
        Many(Choice(("a", "b")), distinct=True).check((np.str_("a"), "a"))


def test_ca_rev155_a_folder_name_holding_nul_is_refused_when_checked():
    """out='runs\\x00x' from a config file passes the check; os.makedirs then raises a bare ValueError."""
    with pytest.raises(ValueError):
        Text(what="a folder name").check("runs\x00x")


# ---- ca_rev188 (review of 1ca0b7f; its strict xfails now pass)

@pytest.mark.parametrize("kind, words", [(Int(low=1, high=10), "must be an integer from 1 to 10"),
                                         (Real(high=1.0), "must be a finite number <= 1")])
def test_ca_rev188_a_huge_integer_is_refused_by_the_kinds_own_bounded_message(kind, words):
    """TrainConfig(epochs=10**5000).validate() reads "epochs Exceeds the limit (4300 digits) for integer string
    conversion; use sys.set_int_max_str_digits()": the messages format the value whole ({value}, repr(value))."""
    with pytest.raises(ValueError) as err:
        kind.check(10 ** 5000)
    assert str(err.value).startswith(words), str(err.value)[:120]
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("kind, value, expected", [(S.SEED, "int64", 3), (Int(low=1), "int32", 3),
                                                   (Real(low=0.0, low_open=True), "float32", 0.5),
                                                   (Real(), "int64", 3.0)])
def test_ca_rev188_a_numpy_number_in_range_is_taken_as_its_python_number(kind, value, expected):
    """TrainConfig(seed=np.int64(3)).validate(): "seed must be an integer from 0 to 4294967295, got np.int64(3)";
    Real takes np.float64 (a float subclass) but not np.float32(0.5); Mapping, ca.AmortisedDuals and the
    temperatures take NumPy numbers (tests/test_nn.py, tests/test_validation.py)."""
    np = pytest.importorskip("numpy")
    got = kind.check(getattr(np, value)(3 if "int" in value else 0.5))
    assert got == expected and type(got) is type(expected)
    assert Many(S.SEED, distinct=True).check(np.arange(2)) == (0, 1)


def test_ca_rev188_a_mapping_word_is_refused_as_a_value_error():
    """Mapping's `def parse` sits after the `raise` that ends _plain_json (indented into it): Mapping().parse and
    .candidate fall to Kind.parse's NotImplementedError, which _argument_type does not turn into a usage error."""
    for call in (S.Mapping().parse, S.Mapping().candidate):
        with pytest.raises(ValueError, match="not set on the command line"):
            call("{}")


@pytest.mark.parametrize("kind, word", [(Int(low=0), "٣"), (Int(low=0), "3_000"), (Int(low=0), " 3"),
                                        (Real(), "٣.5"), (Real(), "1_0.5"), (Real(), "0x10")])
def test_a_number_word_is_plain_ascii_digits(kind, word):
    """rev188's near-miss: int() and float() read Arabic-Indic digits, underscores and blanks,
    so "٣" had been the integer 3."""
    with pytest.raises(ValueError, match="must be"):
        kind.parse(word)


@pytest.mark.parametrize("word, value", [("+3", 3), ("-0", 0), ("007", 7)])
def test_an_integer_word_may_carry_a_sign_and_leading_zeros(word, value):
    assert Int().parse(word) == value


@pytest.mark.parametrize("word, value", [("1e-300", 1e-300), (".5", 0.5), ("5.", 5.0), ("-2E+3", -2000.0),
                                         ("0e-400", 0.0), ("0.000", 0.0), ("4.9e-324", 5e-324)])
def test_a_real_word_reads_as_its_float(word, value):
    assert Real().parse(word) == value


@pytest.mark.parametrize("word", ["1e-400", "0.0001e-330", "-3e-999"])
def test_a_real_word_too_small_for_a_float_is_refused_not_read_as_zero(word):
    """rev188's near-miss: "1e-400" had read as 0.0, a tolerance set to something, silently none."""
    with pytest.raises(ValueError, match="too small for a float"):
        Real(low=0.0).parse(word)


@pytest.mark.parametrize("word", ["nan", "inf", "-Infinity"])
def test_a_real_word_that_is_not_finite_is_refused_as_such(word):
    with pytest.raises(ValueError, match="must be a finite number, got"):
        Real().parse(word)


@pytest.mark.parametrize("text", ["cuda\x1b[8m", "a\tb", "run\x7f", "x\u2028y", "a\x85b"])
def test_a_text_with_a_control_character_is_refused(text):
    """rev188's near-miss: an escape sequence in a device name or path had been taken, and acts
    on the terminal every message that names it is printed to."""
    with pytest.raises(ValueError, match="without control characters"):
        Text().check(text)


def test_a_text_may_hold_any_printable_character():
    assert Text().check("résumé/ünïcode ✓ run-1") == "résumé/ünïcode ✓ run-1"


# ---- ca_rev199 (review of fabf323; its strict xfails now pass)

def test_ca_rev199_an_integer_word_beyond_pythons_digit_limit_is_refused_as_the_kind_says():
    """Run: --seed 999…9 (5000 digits). Expected: "must be an integer >= 1, got '999…'", as before 8139cbc
    (int() raised inside its try). Got: "Exceeds the limit (4300 digits) for integer string conversion: …
    use sys.set_int_max_str_digits()": the word passes _INT_WORD and int() now raises outside any try."""
    with pytest.raises(ValueError, match=r"^must be an integer >= 1, got '9"):
        Int(low=1).parse("9" * 5000)


# ---- ca_rev214 (mutation review of 92b6949, settings and configurations): tests that kill surviving mutants

def test_ca_rev214_a_dict_default_is_a_fresh_copy_in_every_configuration():
    """setting({}, ...) copies the dict per instance: one configuration's solver options never leak into another's."""
    first, second = _Options(), _Options()
    assert first.options == {} and first.options is not second.options
    first.options["tol"] = 1e-3
    assert _Options().options == {} and second.options == {}


@dataclass
class _Maybe:
    mimic: str | None = setting("a", Choice(("a", "b"), optional=True), "an optional choice")


def test_ca_rev214_an_optional_choice_given_as_none_on_the_command_line_is_given():
    """`--mimic none` sets the setting to None: given, not taken for "left at its default"."""
    parser = argparse.ArgumentParser()
    add_options(parser, _Maybe)
    assert given_settings(parser.parse_args(["--mimic", "none"]), _Maybe) == {"mimic": None}
    assert given_settings(parser.parse_args([]), _Maybe) == {}


def test_ca_rev214_check_listed_once_refuses_a_single_value_listed_twice():
    S.check_listed_once("--sets", ["a", "b"], "set")
    S.check_listed_once("--sets", None, "set")
    with pytest.raises(ValueError, match=r"^--sets lists a more than once; name each set once$"):
        S.check_listed_once("--sets", ["a", "b", "a"], "set")
    with pytest.raises(ValueError, match=r"^--sets lists a, b more than once"):
        S.check_listed_once("--sets", ["a", "b", "a", "b", "a"], "set")


@dataclass
class _Seeded:
    seed: int = setting(0, Int(low=0, high=2 ** 32 - 1), "a seed")


def test_a_commands_narrower_number_range_is_the_one_its_help_shows_and_the_declaration_still_parses():
    """add_options(listed={name: Int(...)}): a command that takes fewer numbers than the setting
    (experiment --data-seed, 0 to 999; ca_rev234) shows its own range; the declared one parses."""
    parser = argparse.ArgumentParser()
    add_options(parser, _Seeded, listed={"seed": Int(low=0, high=999)})
    (action,) = [a for a in parser._actions if a.dest == "seed"]
    assert "an integer from 0 to 999 (default: 0)" in action.help and "4294967295" not in action.help
    assert parser.parse_args(["--seed", "5000"]).seed == 5000  # the command's own check refuses it, with its reason


# ---- ca_rev266 (hostile review of settings and config)

@pytest.mark.parametrize("kind, value", [
    (S.Choice(("a", "b")), 10 ** 5000), (S.Flag(), 10 ** 5000), (S.Text(), 10 ** 5000), (S.Mapping(), 10 ** 5000),
    (S.Many(S.Int(low=1, high=5)), [10 ** 5000]), (S.Many(S.Int(), at_most=2), [1, 2, 10 ** 5000]),
    (S.Many(S.Real()), 10 ** 5000), (S.Mapping(), {10 ** 5000: 1})], ids=lambda x: type(x).__name__)
def test_ca_rev266_every_kind_refuses_a_huge_integer_in_a_short_line(kind, value):
    """Int and Real showed such a value bounded (ca_rev188); the other kinds' refusals held its repr, which raised
    Python's own conversion-limit error (advising sys.set_int_max_str_digits) instead of naming the setting."""
    with pytest.raises(ValueError) as err:
        kind.check(value)
    message = str(err.value)
    assert "set_int_max_str_digits" not in message and "\n" not in message and len(message) < 300
    assert message.startswith("must")


def test_a_distinct_list_of_huge_integers_and_a_long_text_are_refused_in_a_short_line():
    """The distinct check of Many compared its values' reprs, and its refusal printed them: two equal integers of
    5000 digits raised Python's digit-limit error instead of naming the setting; a Text with a control character
    printed itself whole (a review of the session's diff, after ca_rev266)."""
    huge = 10 ** 5000
    with pytest.raises(ValueError, match="must hold distinct values") as err:
        Many(Int(), distinct=True).check([huge, huge])
    assert "set_int_max_str_digits" not in str(err.value) and len(str(err.value)) < 400
    assert Many(Int(), distinct=True).check([huge, huge + 1]) == (huge, huge + 1)
    with pytest.raises(ValueError, match="without control characters") as err:
        Text().check("x" * 10_000 + "\n")
    assert len(str(err.value)) < 400
