"""The configuration chain of the paper's experiment: ModelConfig ⊂ TrainConfig ⊂ ExperimentConfig.

One default per field (the command line reads its defaults from the dataclasses), one
``validate()`` per config raising ConfigError (a ValueError) that names the field, plain
round trips through dicts (what checkpoints and config.json hold)."""
import math

import pytest
import torch

from convex_attention.paper.config import FULL, QUICK, ExperimentConfig, check_device
from convex_attention.paper.models import AttentionUNet, ConfigError, ModelConfig
from convex_attention.paper.train import TrainConfig

SMALL = dict(in_channels=4, width=4, image_size=32, embed_channels=8)


def test_the_chain_nests_and_has_one_default_per_field():
    assert TrainConfig().model == ModelConfig()
    assert ExperimentConfig().train.model == ModelConfig()
    # the defaults that had drifted apart (image_size 128 vs 256, width 32 vs 16, lr 1e-3 vs 2e-3)
    assert ModelConfig().image_size == 128 and ModelConfig().width == 32 and TrainConfig().lr == 1e-3
    # the presets are explicit overrides of those defaults, nothing else
    assert FULL.train == TrainConfig.build(width=16, epochs=12, lr=2e-3, data_seed=0)
    assert QUICK.train.model.image_size == 64 and QUICK.train.model.width == 8


def test_command_line_defaults_are_the_dataclass_defaults():
    from convex_attention import cli
    from convex_attention.cli.paper import experiment_config_from_args, train_config_from_args

    parser = cli.build_parser()
    config, state = train_config_from_args(parser.parse_args(["train"]))
    assert config == TrainConfig() and state is None
    assert experiment_config_from_args(parser.parse_args(["experiment"])) == FULL
    assert experiment_config_from_args(parser.parse_args(["experiment", "--quick"])) == QUICK
    quick = experiment_config_from_args(parser.parse_args(["experiment", "--quick", "--epochs", "2"]))
    assert quick == QUICK.override(epochs=2)


def test_build_and_override_route_fields_to_their_level():
    c = TrainConfig.build(method="exact", width=8, channels=3, epochs=2)
    assert c.model.method == "exact" and c.model.width == 8 and c.model.in_channels == 3 and c.epochs == 2
    assert c.method == "exact" and c.channels == 3 and c.image_size == 128
    e = QUICK.override(seeds=(4,), width=4, lr=0.5, n_explain=3)
    assert e.seeds == (4,) and e.train.model.width == 4 and e.train.lr == 0.5 and e.n_explain == 3
    assert QUICK.train.model.width == 8  # presets are never modified
    with pytest.raises(TypeError, match="unknown configuration field"):
        TrainConfig.build(widht=8)


def test_round_trips_through_plain_dicts_including_legacy_flat_files():
    c = TrainConfig.build(method="exact", width=8, attention_blocks=(3, 4, 5), temperature=(1.0, 0.5, 2.0),
                          data_seed=3)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(c.flat()) == c
    assert isinstance(c.to_dict()["model"]["attention_blocks"], list)  # plain containers only
    # config.json as written before the chain existed: flat, with "channels"
    legacy = {"out": "runs/x", "method": "exact", "data": "synthetic", "data_root": None, "image_size": 32,
              "channels": 4, "n_train": 8, "n_val": 4, "difficulty": 0.5, "width": 4, "attention_blocks": [3, 4],
              "temperature": 1.0, "alpha": 10.0, "epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0,
              "augment": True, "seed": 0, "workers": 0, "device": "cpu", "resume": None, "progress": False,
              "solver_options": {}}
    old = TrainConfig.from_dict(legacy)
    assert old.model.width == 4 and old.model.in_channels == 4 and old.model.attention_blocks == (3, 4)
    with pytest.raises(ConfigError, match="unknown training configuration field"):
        TrainConfig.from_dict({**legacy, "colour": 1})
    with pytest.raises(ConfigError, match="unknown model configuration field"):
        ModelConfig.from_dict({"depth": 3})
    assert ExperimentConfig().to_dict()["train"]["model"]["method"] == "learned_dual"


MODEL_BAD = [
    ("image_size", 40, "pooling stack"), ("image_size", 0, "image_size must be an integer from 16"),
    ("image_size", 8, "image_size must be an integer from 16"),
    ("width", 0, "width must be an integer from 1"), ("in_channels", 0, "in_channels"),
    ("num_classes", 1, "num_classes"), ("embed_channels", -1, "embed_channels"),
    ("temperature", 0.0, "temperature"), ("temperature", -1.0, "temperature"), ("temperature", math.inf, "temperature"),
    ("temperature", math.nan, "temperature"), ("temperature", (1.0, 2.0, 3.0), "one per level"),
    ("alpha", -1.0, "alpha"), ("alpha", math.inf, "alpha"), ("alpha", math.nan, "alpha"),
    ("attention_blocks", (2, 4), "consecutive"), ("attention_blocks", (4, 5, 6), "attention_blocks must hold"),
    ("attention_blocks", (3,), "attention_blocks must hold 2 to 3"),
    ("norm", "layer", "norm must be one of batch, group"),
    ("method", "sparsemax", "method must be one of softmax"), ("solver_options", None, "solver_options"),
]


@pytest.mark.parametrize("field,value,message", MODEL_BAD)
def test_model_config_validate_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        ModelConfig(**{field: value}).validate()
    assert err.value.field == field
    with pytest.raises(ValueError, match=message):  # the model refuses it at construction too
        AttentionUNet(**{**SMALL, field: value})


TRAIN_BAD = [
    ("epochs", 0), ("epochs", -3), ("batch_size", 0), ("n_train", 0), ("n_val", 0), ("lr", 0.0), ("lr", math.inf),
    ("lr", math.nan), ("weight_decay", -1.0), ("difficulty", 1.5), ("difficulty", math.nan), ("seed", -1),
    ("workers", -1), ("data", "imagenet"), ("data_seed", -2), ("out", ""), ("augment", "yes"),
]


@pytest.mark.parametrize("field,value", TRAIN_BAD)
def test_train_config_validate_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field) as err:
        TrainConfig(**{field: value}).validate()
    assert err.value.field == field


def test_zero_training_images_is_an_error_not_all_images():
    with pytest.raises(ValueError, match="n_train must be an integer from 1"):
        TrainConfig(n_train=0).validate()


def test_devices_are_checked(monkeypatch):
    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    for bad in ("tpu", "gpu", "", "cuda:x"):
        with pytest.raises(ConfigError, match="device"):
            check_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        check_device("cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        TrainConfig(device="cuda:0").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="does not exist"):
        check_device("cuda:3")


EXPERIMENT_BAD = [
    ("methods", (), "methods"), ("methods", ("softmax", "softmax"), "twice"), ("methods", ("nope",), "'nope' is not"),
    ("seeds", (), "seeds"), ("seeds", (0, 0), "twice"), ("seeds", (-1,), "seeds"), ("n_explain", 0, "n_explain"),
    ("target", "lesion", "target"), ("baseline_model", "plain", "baseline_model"),
]


@pytest.mark.parametrize("field,value,message", EXPERIMENT_BAD)
def test_experiment_config_validate_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        QUICK.override(**{field: value}).validate()
    assert err.value.field == field


def test_experiment_config_checks_its_training_config_too():
    with pytest.raises(ConfigError, match="epochs"):
        QUICK.override(epochs=0).validate()
    with pytest.raises(ConfigError, match="data_seed"):
        QUICK.override(data_seed=None).validate()


def test_the_model_is_built_from_a_model_config():
    cfg = ModelConfig(method="exact", norm="group", **SMALL)
    torch.manual_seed(0)
    a = AttentionUNet(config=cfg)
    torch.manual_seed(0)
    b = AttentionUNet(method="exact", norm="group", **SMALL)
    assert a.config == b.config == cfg
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert AttentionUNet(config=cfg, width=8).config.width == 8  # keywords replace the config's fields
    with pytest.raises(TypeError, match="unknown ModelConfig field"):
        AttentionUNet(tol=1e-6, **SMALL)
    with pytest.raises(TypeError, match="ModelConfig"):
        AttentionUNet(config={"width": 4})


def test_the_help_lists_the_registrys_methods():
    """The experiment's declarations list the method names without importing the core (so
    --help stays light); they are the registry's built-ins."""
    from convex_attention import METHODS
    from convex_attention.paper import config as paper_config

    assert paper_config.METHOD_NAMES == METHODS


@pytest.mark.parametrize("level, field", [("train", "n_train"), ("train", "n_val"), ("experiment", "n_dev"),
                                          ("experiment", "n_test"), ("experiment", "validity_images")])
def test_a_set_too_large_for_its_seed_block_is_refused(level, field):
    """Before: a set of more than 1000003 images was accepted (at 32x32, 1.1M images fit the
    pixel limit), although image i of seed s is keyed s x 1000003 + i: its last images were
    the first images of seed s + 1, another split's (the experiment's splits are neighbouring
    seeds), so training and validation or test images coincided.  A set of exactly 1000003
    ends one key before seed s + 1 and is accepted (a review found it refused)."""
    IMAGES_PER_SEED = 1_000_003  # the generators' key stride (synthetic.py), unchanged
    base = QUICK.override(image_size=16)
    for n in (IMAGES_PER_SEED + 1, IMAGES_PER_SEED + 96_997):
        with pytest.raises(ConfigError, match=rf"{field} {n} images is too many: .*at most 1000003 .*seed s \+ 1") \
                as err:
            base.override(**{field: n}).validate()
        assert err.value.field == field
        from convex_attention.io.settings import check_settings

        with pytest.raises(ConfigError, match="at most 1000003"):  # the setting's own check refuses it too
            check_settings(base.train.override(**{field: n}) if level == "train" else base.override(**{field: n}))
    if level == "train":
        with pytest.raises(ConfigError, match="at most 1000003"):
            TrainConfig.build(image_size=32, **{field: IMAGES_PER_SEED + 1}).validate()
        TrainConfig.build(image_size=32, **{field: IMAGES_PER_SEED}).validate()  # the largest set is fine
    else:
        base.override(**{field: IMAGES_PER_SEED}).validate()
    from convex_attention.paper import config, protocol

    assert config.IMAGES_PER_SEED == protocol._KEY_STRIDE == IMAGES_PER_SEED  # one stride, as the generators use


def test_a_temperature_below_the_models_float32_range_is_a_config_error():
    # 1e-300 is a positive float (and within float64's range) but 1/tau is not finite in float32
    with pytest.raises(ConfigError, match="temperature") as err:
        ModelConfig(temperature=(1e-300,)).validate()
    assert err.value.field == "temperature" and "float32" in str(err.value)
