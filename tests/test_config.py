"""The configuration chain of the paper's experiment: ModelConfig ⊂ TrainConfig ⊂ ExperimentConfig.

One default per field (the command line reads its defaults from the dataclasses), one
``validate()`` per config raising ConfigError (a ValueError) that names the field, plain
round trips through dicts (what checkpoints and config.json hold)."""
import math

import pytest
import torch

from convex_attention.paper.config import FULL, QUICK, ExperimentConfig, check_device, resolved_device
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
    with pytest.raises(ConfigError, match=r"device 'cuda:3': this machine has 1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        check_device("cuda:3")



def test_a_device_resolves_alike_for_training_the_experiment_and_explain(monkeypatch):
    """One home for what "auto" means (training, the experiment and explain had each their own):
    CUDA where the machine has it, else the CPU; a process of a distributed run takes its own GPU
    for a CUDA device without an index, and an indexed device is kept."""
    from convex_attention.paper import experiment, train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolved_device("auto") == "cuda" and resolved_device("auto", 1) == "cuda:1"
    assert resolved_device("cuda", 2) == "cuda:2" and resolved_device("cuda:0", 2) == "cuda:0"
    assert resolved_device("cpu", 1) == "cpu" and resolved_device("mps") == "mps"
    assert train._device(TrainConfig(device="auto"), 1) == torch.device("cuda:1")
    assert experiment._device(QUICK.override(device="auto")) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved_device("auto") == "cpu" and resolved_device("auto", 1) == "cpu"
    assert train._device(TrainConfig(device="auto"), 1) == torch.device("cpu")

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
        # the sizes' declared range is the seed block (so that --help states it: a review)
        with pytest.raises(ConfigError, match=rf"{field} must be an integer from 1 to 1000003, got {n}") as err:
            base.override(**{field: n}).validate()
        assert err.value.field == field
        from convex_attention.io.settings import check_settings

        with pytest.raises(ConfigError, match="from 1 to 1000003"):  # the setting's own check refuses it too
            check_settings(base.train.override(**{field: n}) if level == "train" else base.override(**{field: n}))
    if level == "train":
        with pytest.raises(ConfigError, match="from 1 to 1000003"):
            TrainConfig.build(image_size=32, **{field: IMAGES_PER_SEED + 1}).validate()
        TrainConfig.build(image_size=32, **{field: IMAGES_PER_SEED}).validate()  # the largest set is fine
    else:
        base.override(**{field: IMAGES_PER_SEED}).validate()
    from convex_attention.paper import config, protocol
    from convex_attention.paper.data import synthetic

    # one stride, which the generators and the protocol's overlap checks import
    assert config.IMAGES_PER_SEED == protocol.IMAGES_PER_SEED == synthetic.IMAGES_PER_SEED == IMAGES_PER_SEED


def test_a_temperature_below_the_models_float32_range_is_a_config_error():
    # 1e-300 is a positive float (and within float64's range) but 1/tau is not finite in float32
    with pytest.raises(ConfigError, match="temperature") as err:
        ModelConfig(temperature=(1e-300,)).validate()
    assert err.value.field == "temperature" and "float32" in str(err.value)
    assert "use a larger temperature" in str(err.value) and "float64" not in str(err.value)  # no float64 model
    with pytest.raises(ConfigError, match="use smaller temperatures") as err:
        ModelConfig(temperature=(1e38,)).validate()
    assert "float64" not in str(err.value)


def test_the_model_defaults_follow_the_paper():
    """The docstring's list: width 32, two attention levels on blocks 3 and 4, tau = 1,
    alpha = 10, BatchNorm, the paper's bounded head."""
    m = ModelConfig()
    assert (m.width, m.attention_blocks, m.temperature, m.alpha, m.norm, m.head) == \
        (32, (3, 4), (1.0,), 10.0, "batch", "bounded")
    t = TrainConfig()
    assert t.min_tumour_area == 1000 and t.recompute_bn is True  # the help: "1000: the paper's"; --no-bn-recompute


def test_a_set_is_refused_beyond_max_set_pixels_and_a_batch_beyond_max_batch_values():
    from convex_attention.paper.config import MAX_BATCH_VALUES, MAX_SET_PIXELS

    side = 64
    most = MAX_SET_PIXELS // side ** 2  # exactly MAX_SET_PIXELS pixels per channel: accepted
    for name in ("n_train", "n_val"):
        TrainConfig.build(image_size=side, **{name: most}).validate()
        with pytest.raises(ConfigError, match=rf"{name} {most + 1} images of {side}x{side}") as err:
            TrainConfig.build(image_size=side, **{name: most + 1}).validate()
        assert err.value.field == name
    for name in ("n_dev", "n_test", "validity_images"):
        with pytest.raises(ConfigError, match="pixels per channel") as err:
            QUICK.override(image_size=side, **{name: most + 1}).validate()
        assert err.value.field == name
    width, side = 64, 256
    batch = MAX_BATCH_VALUES // (width * side ** 2)  # exactly MAX_BATCH_VALUES values: accepted
    TrainConfig.build(image_size=side, width=width, batch_size=batch).validate()
    with pytest.raises(ConfigError, match="first activation") as err:
        TrainConfig.build(image_size=side, width=width, batch_size=batch + 1).validate()
    assert err.value.field == "batch_size"


def test_check_set_size_names_the_flag_and_spares_other_data_the_seed_block():
    from convex_attention.paper.config import IMAGES_PER_SEED, check_set_size

    with pytest.raises(ConfigError, match=r"^--n-dev \d+ images is too many") as err:
        check_set_size("n_dev", IMAGES_PER_SEED + 1, 16, flag="--n-dev")
    assert err.value.field == "n_dev"
    check_set_size("n_dev", IMAGES_PER_SEED + 1, 16, synthetic=False)  # no seed blocks outside synthetic data


def test_more_devices_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match="unsupported device 'meta'"):
        check_device("meta")  # a device torch knows, but not one a run may use
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="this machine has 1 CUDA device"):
        check_device("cuda:1")  # the one device is cuda:0
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS is not available"):
        check_device("mps")


def test_the_model_checks_that_need_the_core():
    from convex_attention import REGISTRY
    from convex_attention.cvx import prior_seconds_per_sample
    from convex_attention.paper.config import CVX_REFUSE_S_PER_1000

    with pytest.raises(ConfigError, match="consecutive") as err:
        ModelConfig(attention_blocks=(4, 3)).validate()
    assert err.value.field == "attention_blocks"
    with pytest.raises(ConfigError, match="one per level") as err:
        ModelConfig(attention_blocks=(3, 4, 5), temperature=(1.0, 2.0)).validate()
    assert err.value.field == "temperature"
    ModelConfig(attention_blocks=(3, 4, 5), temperature=(1.0, 2.0, 0.5)).validate()
    for name, record in REGISTRY.items():
        if record.tensor_temperature:
            ModelConfig(method=name, learn_temperature=True).validate()
        else:
            with pytest.raises(ConfigError, match="cannot learn") as err:
                ModelConfig(method=name, learn_temperature=True).validate()
            assert err.value.field == "learn_temperature"
        if record.needs_duals:
            ModelConfig(method=name, duals="amortised").validate()
        else:
            with pytest.raises(ConfigError, match="leave it 'shared'") as err:
                ModelConfig(method=name, duals="amortised").validate()
            assert err.value.field == "duals"
    # a per-sample CPU solver is refused where 1000 images would take longer than the limit
    for side in (320, 384):
        cells = sum((side // 2 ** (k - 1)) ** 2 for k in (3, 4))  # block k's side: the image halved k - 1 times
        config = ModelConfig(method="cvxpylayers", image_size=side)
        if prior_seconds_per_sample(cells) * 1000 > CVX_REFUSE_S_PER_1000:
            with pytest.raises(ConfigError, match="Use method 'exact'") as err:
                config.validate()
            assert err.value.field == "method"
        else:
            config.validate()


def test_a_variant_checks_its_values():
    from convex_attention.paper.config import Variant

    with pytest.raises(ConfigError, match="temperature") as err:
        Variant(temperature=(0.0,))
    assert err.value.field == "temperature"


def test_the_architecture_holds_what_decides_the_parameters():
    base = ModelConfig().architecture()
    for changes in (dict(width=16), dict(duals="amortised"), dict(head="learned"), dict(norm="group")):
        assert ModelConfig(**changes).architecture() != base, changes


def test_from_dict_refuses_what_is_not_a_dict():
    with pytest.raises(ConfigError, match="must be a dict") as err:
        ModelConfig.from_dict([("width", 4)])
    assert err.value.field == "model"
    with pytest.raises(ConfigError, match="must be a dict") as err:
        TrainConfig.from_dict("runs/x")
    assert err.value.field == "train_config"
    with pytest.raises(ConfigError, match="must be a dict") as err:
        TrainConfig.from_dict({"model": [4]})
    assert err.value.field == "model"


def test_train_validate_checks_its_model_too():
    with pytest.raises(ConfigError, match="model must be a ModelConfig") as err:
        TrainConfig(model={"width": 4}).validate()
    assert err.value.field == "model"
    with pytest.raises(ConfigError, match="width") as err:
        TrainConfig.build(width=0).validate()
    assert err.value.field == "width"


def test_brats_settings_apply_to_brats_only():
    for name, value in (("normalisation", "dataset"), ("min_tumour_area", 10), ("val_fraction", 0.5),
                        ("cache_dir", "cache")):
        TrainConfig(data="brats", **{name: value}).validate()
        with pytest.raises(ConfigError, match="applies to data 'brats' only") as err:
            TrainConfig(**{name: value}).validate()
        assert err.value.field == name
    with pytest.raises(ConfigError, match="val_fraction"):  # a share of the patients: above 0
        TrainConfig(data="brats", val_fraction=0.0).validate()


def test_data_config_holds_what_decides_the_validation_images():
    assert TrainConfig(seed=5).data_seed_used == 5 and TrainConfig(seed=5, data_seed=2).data_seed_used == 2
    synthetic = TrainConfig(seed=5, n_val=40, difficulty=0.3).data_config()
    assert synthetic["n_val"] == 40 and synthetic["difficulty"] == 0.3 and synthetic["data_seed"] == 5
    assert "n_train" not in synthetic
    assert TrainConfig(seed=5, n_train=9).data_config() == TrainConfig(seed=5).data_config()
    assert "data_seed" not in TrainConfig(data="folder", data_root="x").data_config()  # root/val, whatever the seed
    brats = TrainConfig(data="brats", data_root="x", cache_dir="c", normalisation="dataset").data_config()
    assert brats["normalisation"] == "dataset" and "cache_dir" not in brats and "n_val" not in brats
    assert TrainConfig(data="brats", cache_dir="c").brats_options()["cache_dir"] == "c"
    assert "cache_dir" not in TrainConfig(data="brats").brats_options()  # the loader's default
    assert TrainConfig.data_differences(synthetic, brats) == \
        [k for k in {**synthetic, **brats} if synthetic.get(k) != brats.get(k)]
    assert "normalisation" in TrainConfig.data_differences(synthetic, brats)  # a key only the second holds


def test_the_experiment_checks_its_protocol():
    from convex_attention.paper.config import DATA_SEED_MAX

    QUICK.override(data_seed=DATA_SEED_MAX).validate()
    with pytest.raises(ConfigError, match=f"from 0 to {DATA_SEED_MAX}") as err:
        QUICK.override(data_seed=DATA_SEED_MAX + 1).validate()
    assert err.value.field == "data_seed"
    with pytest.raises(ConfigError, match="synthetic data") as err:
        QUICK.override(data="folder", data_root="x").validate()
    assert err.value.field == "data"
    QUICK.override(data="synthetic-blobs", held_out_mimic=None).validate()
    with pytest.raises(ConfigError, match="mimic types") as err:
        QUICK.override(data="synthetic-blobs", held_out_mimic="split").validate()
    assert err.value.field == "held_out_mimic"
    QUICK.override(baseline_model=None).validate()
    QUICK.override(baseline_model="plain_cnn").validate()
    with pytest.raises(ConfigError, match="baseline_model") as err:
        QUICK.override(baseline_model="plain_cnn", plain_cnn=False).validate()
    assert err.value.field == "baseline_model"
    with pytest.raises(ConfigError, match="train must be a TrainConfig") as err:
        ExperimentConfig(train=ModelConfig()).validate()
    assert err.value.field == "train"
    assert ExperimentConfig().n_sanity >= 32  # its help: the protocol asks for at least 32


def test_the_experiment_checks_its_grid():
    with pytest.raises(ConfigError, match=r"unknown variant setting\(s\) \['width'\]") as err:
        QUICK.override(grid={"width": (8, 16)}).validate()
    assert err.value.field == "grid"
    with pytest.raises(ConfigError, match="twice") as err:
        QUICK.override(grid={"alpha": (1.0, 1.0)}).validate()
    assert err.value.field == "grid_alpha"
    with pytest.raises(ConfigError, match="twice") as err:
        QUICK.override(difficulties=(0.3, 0.3)).validate()
    assert err.value.field == "difficulties"
    checked = QUICK.override(grid={"alpha": [0, 1]}).validate()
    assert checked.grid["alpha"] == (0.0, 1.0) and all(type(a) is float for a in checked.grid["alpha"])
    # a candidate no method's model can take names the grid's option, the variant and the method
    with pytest.raises(ConfigError, match=r"grid_temperature \(variant .*, method softmax\).*one per level") as err:
        QUICK.override(grid={"temperature": ((1.0, 2.0, 3.0),)}).validate()
    assert err.value.field == "grid_temperature"


def test_a_variant_is_immutable_compared_by_its_values_and_labelled():
    from convex_attention import REGISTRY
    from convex_attention.paper.config import Variant

    with pytest.raises(TypeError, match="unknown variant setting"):
        Variant(width=8)
    v = Variant(temperature=(1.0, 0.5), learn_temperature=True)
    with pytest.raises(AttributeError, match="immutable"):
        v.alpha = 1.0
    assert v == Variant(**v.values()) and hash(v) == hash(Variant(**v.values())) and v != v.values()
    assert v.row()["temperature"] == "1.0/0.5"
    assert "tau=1.0/0.5 (learned)" in v.label() and "learn_temperature" not in v.label()
    amortised = Variant(duals="amortised", alpha=1.0)
    for name, record in REGISTRY.items():
        fields_ = amortised.model_fields(name)
        assert fields_["duals"] == ("amortised" if record.needs_duals else "shared")
        # alpha weighs the consistency loss of the methods with duals only: elsewhere it trains the same model
        assert (amortised.effective(name) == amortised.replace(alpha=10.0).effective(name)) != record.needs_duals


def test_the_dev_stage_trains_every_combination_of_the_model_settings_only():
    cfg = QUICK.override(grid={"alpha": (10.0, 1.0), "upsampling": ("nearest", "bilinear")})
    variants = cfg.variants()
    assert sorted(v.alpha for v in variants) == [1.0, 10.0]
    assert {v.upsampling for v in variants} == {cfg.upsampling}  # compared on each trained model, not trained
    assert cfg.candidates()["head"] == (cfg.train.model.head,)  # not in the grid: the base value


def test_the_test_stage_runs_the_variants_files_one_variant():
    from convex_attention.paper.config import Variant
    from convex_attention.paper.protocol import Variants

    fixed = Variants(Variant(alpha=1.0, upsampling="bilinear"), (0.6,), None)
    cfg = QUICK.override(grid={"alpha": (10.0, 3.0), "upsampling": ("nearest", "bilinear")}).with_variants(fixed)
    assert cfg.variants() == [fixed.variant] and cfg.candidates()["alpha"] == (1.0,)
    assert cfg.difficulties == (0.6,) and cfg.held_out_mimic is None and cfg.upsampling == "bilinear"


def test_the_grid_is_normalised_when_made_and_stored_as_plain_lists():
    single = ExperimentConfig(grid={"temperature": [0.3, 1.0]})  # one number: a temperature shared by the levels
    assert single == ExperimentConfig(grid={"temperature": ((0.3,), (1.0,))})
    grid = QUICK.override(grid={"temperature": ((1.0,), (0.3, 0.5))}).to_dict()["grid"]
    assert grid == {"temperature": [[1.0], [0.3, 0.5]]} and all(type(t) is list for t in grid["temperature"])


def test_solver_options_every_compared_method_does_not_take_are_refused_before_the_experiment():
    # each compared method is built with the options: one that does not take them is refused
    # now, not when its turn comes; the plain CNN ignores them and train.model.method is a
    # placeholder, so neither is checked (hostile review: refusing them broke valid configs)
    config = QUICK.override(methods=("dual", "exact"), solver_options={"tol": 1e-7})
    with pytest.raises(ConfigError, match=r"solver_options \(method exact\): method 'exact' takes no option") as err:
        config.validate()
    assert err.value.field == "solver_options"
    dual_only = QUICK.override(methods=("dual",), solver_options={"tol": 1e-7})
    assert dual_only.plain_cnn and dual_only.train.model.method != "dual"
    dual_only.validate()
    ModelConfig(method="exact", solver_options={"tol": 1e-7}).validate()  # checked when the model is built
    with pytest.raises(ConfigError, match=r"takes no option\(s\) \['a', 'b'\]"):  # every key named
        QUICK.override(methods=("exact",), solver_options={"b": 3, "a": 2}).validate()
    with pytest.raises(ConfigError, match=r"must have str keys .JSON's., got 1"):  # before any method reads it
        QUICK.override(methods=("exact",), solver_options={"a": 3, 1: 2}).validate()


def test_a_cpu_index_other_than_0_is_a_config_error():
    with pytest.raises(ConfigError, match="the CPU is one device") as err:
        check_device("cpu:1")
    assert err.value.field == "device"
    assert check_device("cpu:0") == "cpu:0" and check_device("cpu") == "cpu"


def test_a_data_root_is_for_data_read_from_files_and_a_synthetic_source_ignores_one_recorded():
    from convex_attention.paper.config import SYNTHETIC_SOURCES

    for data in SYNTHETIC_SOURCES:
        with pytest.raises(ConfigError, match="data_root applies to data read from files"):
            TrainConfig.build(data=data, data_root="r").validate()
        # an older run's record, read back as records are
        recorded = TrainConfig.from_dict({**TrainConfig.build(data=data).to_dict(), "data_root": "r"})
        assert recorded.data_config() == TrainConfig.build(data=data).data_config()
        assert recorded.data_root is None
    assert TrainConfig.build(data="folder", data_root="r").data_config()["data_root"] == "r"


def test_the_randomisation_check_takes_no_more_images_than_are_explained():
    """Its images are the first explained ones: n_sanity above n_explain was accepted, the check
    used n_explain images, and the report said n_sanity (ca_rev144's note)."""
    QUICK.override(n_sanity=8, n_explain=8).validate()
    with pytest.raises(ConfigError, match="n_sanity .10. must be at most n_explain .8."):
        QUICK.override(n_sanity=10, n_explain=8).validate()


# ---- ca_rev214 (mutation review of 92b6949, settings and configurations): tests that kill surviving mutants;
#      its strict xfail now passes

def test_ca_rev214_training_defaults_are_the_ones_the_docs_state():
    """docs/user_guide.md § 4: "the default 10 epochs of 2000 + 500 images"; docs/experiment.md's test
    stage (no --batch-size given): "8 epochs of Adam (lr 2e-3, batch 32)"."""
    config = TrainConfig()
    assert (config.epochs, config.n_train, config.n_val, config.batch_size) == (10, 2000, 500, 32)


def test_ca_rev214_cvxpylayers_is_refused_from_368_pixels_as_the_user_guide_says():
    """docs/user_guide.md § 4: refused where solves take more than an hour per 1000 images: with the default
    attention blocks above 352, the first size refused being 368."""
    from convex_attention.paper.config import CVX_REFUSE_S_PER_1000

    assert CVX_REFUSE_S_PER_1000 == 3600.0
    ModelConfig(method="cvxpylayers", image_size=352).validate()
    with pytest.raises(ConfigError, match="Use method 'exact'") as err:
        ModelConfig(method="cvxpylayers", image_size=368).validate()
    assert err.value.field == "method"


def test_ca_rev214_brats_val_fraction_is_at_most_0_9():
    TrainConfig(data="brats", val_fraction=0.9).validate()
    for value in (0.95, 1.0):
        with pytest.raises(ConfigError, match="val_fraction") as err:
            TrainConfig(data="brats", val_fraction=value).validate()
        assert err.value.field == "val_fraction"


def test_ca_rev214_the_data_seed_is_the_brats_split_so_brats_takes_one():
    """The data seed is also the BraTS split (GENERATOR_SETTINGS): refused for folder data, taken for brats."""
    assert TrainConfig(data="brats", data_root="x", data_seed=3).validate().data_seed == 3
    with pytest.raises(ConfigError, match="data_seed applies to the synthetic data and 'brats' only") as err:
        TrainConfig(data="folder", data_root="x", data_seed=3).validate()
    assert err.value.field == "data_seed"


def test_ca_rev214_n_dev_and_validity_images_of_exactly_4_are_accepted():
    """docs/experiment.md: "`--n-dev` and `--validity-images` are at least 4": 4 itself is taken, 3 refused."""
    QUICK.override(n_dev=4, validity_images=4).validate()
    for name in ("n_dev", "validity_images"):
        with pytest.raises(ConfigError, match=f"{name} must be at least 4") as err:
            QUICK.override(**{name: 3}).validate()
        assert err.value.field == name


def test_ca_rev214_experiment_defaults_are_the_ones_the_docs_state():
    """docs/experiment.md: the brightest test run, given no --seeds/--n-test/--n-sanity, ran "5 seeds, 500 test
    images per test set, 32 images per seed in the randomisation check: the full preset's values"; the committed
    variants: "difficulties 0.3 and 0.6", held-out type `heldout_mottled`; docs/user_guide.md: `experiment
    --quick` is the dev stage on one seed (check (c') needs 5 development seeds), `--stage test --quick` on two."""
    config = ExperimentConfig()
    assert (config.seeds, config.n_test, config.n_sanity) == ((0, 1, 2, 3, 4), 500, 32)
    assert FULL.seeds == config.seeds and FULL.n_test == 500 and FULL.n_sanity == 32
    assert config.dev_seeds == (0, 1, 2, 3, 4) and FULL.dev_seeds == config.dev_seeds
    assert config.difficulties == (0.3, 0.6) and config.held_out_mimic == "mottled"
    assert QUICK.dev_seeds == (0,) and QUICK.seeds == (0, 1)


def test_ca_rev214_at_most_four_difficulties():
    QUICK.override(difficulties=(0.1, 0.2, 0.3, 0.4)).validate()
    with pytest.raises(ConfigError, match="difficulties must hold 1 to 4") as err:
        QUICK.override(difficulties=(0.1, 0.2, 0.3, 0.4, 0.5)).validate()
    assert err.value.field == "difficulties"


def test_ca_rev214_a_data_seed_beyond_numpys_32_bits_is_refused_for_training():
    TrainConfig(data_seed=2 ** 32 - 1).validate()
    with pytest.raises(ConfigError, match="data_seed must be an integer from 0 to 4294967295") as err:
        TrainConfig(data_seed=2 ** 32).validate()
    assert err.value.field == "data_seed"


@pytest.mark.parametrize("model", [[], "", 0, False, None])
def test_ca_rev214_a_stored_model_that_is_not_a_dict_is_refused_even_when_empty(model):
    """TrainConfig.from_dict refuses `"model": [1]` ("must be a dict") but reads `"model": []` (or "", 0, false)
    as the default model: a damaged checkpoint or config.json silently becomes a default ModelConfig."""
    with pytest.raises(ConfigError, match="the model configuration must be a dict") as err:
        TrainConfig.from_dict({"model": model})
    assert err.value.field == "model"


def test_a_model_field_given_twice_with_two_values_is_refused_and_alike_is_read():
    """A stored training configuration may name a model field flat (older files) or under
    "model"; where both name it with two values the flat one had silently won (ca_rev217)."""
    with pytest.raises(ConfigError, match=r"width is given twice, as 16 and as model.width = 8") as err:
        TrainConfig.from_dict({"model": {"width": 8}, "width": 16})
    assert err.value.field == "width"
    assert TrainConfig.from_dict({"model": {"width": 8}, "width": 8}).model.width == 8
    assert TrainConfig.from_dict({"width": 16}).model.width == 16  # a flat file, as before


# ---- ca_rev266 (hostile review of settings and config)

def test_ca_rev266_difficulties_in_one_thousandth_are_refused_before_any_work():
    """The dev stage accepted difficulties the variants file it proposes refuses (Variants.validate: each
    condition's images are keyed by the difficulty's thousandths): it trained, then wrote a file no test stage reads."""
    from convex_attention.paper.protocol import Variants, VariantsError

    for ds in ((0.3, 0.3004), (0.0, 0.0004), (0.6, 0.3, 0.5996)):
        config = QUICK.override(difficulties=ds)
        with pytest.raises(VariantsError, match="thousandths"):
            Variants(config.base_variant(), ds, config.held_out_mimic).validate(config.methods)
        with pytest.raises(ConfigError, match="thousandths") as err:
            config.validate()
        assert err.value.field == "difficulties"
    assert QUICK.override(difficulties=(0.3, 0.301)).validate().difficulties == (0.3, 0.301)


# ---- one wording of the batch-of-one refusal, its block read from the model

def test_both_batch_of_one_refusals_name_the_block_that_ends_the_encoder(monkeypatch):
    """The configuration's refusal (``batch_size`` 1) and ``check_no_batch_of_one`` (``n_train`` ≤ world) say which
    block's BatchNorm sees the 1x1 map, read from ``deepest_block`` (both said "block 5", true of every model they fire
    on today, 16x16 images with the bottleneck, but written out twice): with the rule made to answer 4, both say 4."""
    import convex_attention.paper.config as config_module
    import convex_attention.paper.train as train_module

    small = dict(data="synthetic-blobs", image_size=16, width=4, embed_channels=8, attention_blocks=(4, 5))
    for block in (5, 4):
        if block == 4:
            monkeypatch.setattr(config_module, "deepest_block", lambda model: 4)
            for module in (config_module, train_module):  # (train's own name for it)
                monkeypatch.setattr(module, "batchnorm_of_one_value", lambda model: True)
        with pytest.raises(config_module.ConfigError, match=f"BatchNorm after block {block} sees a 1x1 map"):
            config_module.TrainConfig.build(**small, batch_size=1).validate()
        with pytest.raises(config_module.ConfigError, match=f"BatchNorm after block {block} sees a 1x1 map"):
            train_module.check_no_batch_of_one(config_module.TrainConfig.build(**small, batch_size=4), ([0, 1], None),
                                               2)
