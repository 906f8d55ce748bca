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
