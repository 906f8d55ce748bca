"""The experiment's settings, each declared once (:func:`convex_attention.io.settings.setting`).

The configurations nest: :class:`ModelConfig` (the attention CNN) ⊂ :class:`TrainConfig`
(a training run) ⊂ :class:`ExperimentConfig` (the protocol's runs).  Every setting is one
field with its type, range, default, help and choices; from it come

* the command-line options of ``train`` and ``experiment`` (:mod:`convex_attention.cli.paper`);
* the checks of :meth:`ModelConfig.validate` and the others (a :class:`ConfigError` names
  the setting, and the command line names its option);
* the stored configuration of every checkpoint and ``config.json`` (:meth:`TrainConfig.to_dict`,
  :meth:`TrainConfig.from_dict`, which reads older files too);
* the model variant (the settings declared ``variant=True``): the experiment's dev-stage
  grid (``--grid-<name>``, :attr:`ExperimentConfig.grid`), the :class:`Variant` the
  variants file fixes, and its labels.

So adding a setting is one declaration (and its test).  The temperature has one type: a
tuple of floats, one shared by every level ``(τ,)`` or one per level.

This module is light (no torch): building the command line's parser, and ``--help``,
reads it.  The checks that need the core (the temperatures' range, a method's facts and
cost) import it when they run (:func:`_check_with_the_core`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..io.settings import (
    SEED,
    Choice,
    ConfigError,
    Flag,
    Int,
    Many,
    Mapping,
    Real,
    Text,
    check_settings,
    declared,
    from_plain,
    normalise_settings,
    setting,
    to_plain,
    variant_settings,
)

__all__ = ["ModelConfig", "TrainConfig", "ExperimentConfig", "Variant", "ConfigError", "QUICK", "FULL", "NORMS",
           "HEADS", "DUAL_SOURCES", "DATA_SOURCES", "DATA_SOURCE_HELP", "SYNTHETIC_GENERATORS", "SYNTHETIC_SOURCES",
           "MIMIC_SOURCES", "MIMIC_TYPES", "NORMALISATIONS", "BRATS_SETTINGS", "THRESHOLDS", "UPSAMPLINGS", "STAGES",
           "DATA_SEED_MAX", "PLAIN_CNN", "DEFAULT_VARIANTS_PATH", "METHOD_NAMES", "variant_names", "check_device",
           "CVX_REFUSE_S_PER_1000", "MAX_SET_PIXELS", "MAX_BATCH_VALUES", "IMAGES_PER_SEED", "check_set_size",
           "check_seed_block", "resolved_device"]

# ----------------------------------------------------------------------------- the choices

NORMS = ("batch", "group")
HEADS = ("bounded", "learned")  # ScoreHead(scale=...): the paper's head, or one with a learnable gain
DUAL_SOURCES = ("shared", "amortised")  # ConsistentAttention(duals=...), for methods that need duals
#: The sources ``build_datasets`` knows (``--data``), each with what its help says.
DATA_SOURCE_HELP = {
    "synthetic": "rim lesions among mimics (offline, the default)",
    "synthetic-blobs": "the previous generator",
    "synthetic-brightest": "one lesion per image, label 1 when it is the brightest structure",
    "brats": "BraTS 2018 (--data-root)",
    "folder": "your images (--data-root)",
}
DATA_SOURCES = tuple(DATA_SOURCE_HELP)
#: The synthetic sources and their generators (:data:`convex_attention.paper.data.synthetic.GENERATORS`).
SYNTHETIC_GENERATORS = {"synthetic": "rim", "synthetic-blobs": "blobs", "synthetic-brightest": "brightest"}
SYNTHETIC_SOURCES = tuple(SYNTHETIC_GENERATORS)
#: BraTS intensity normalisations (:class:`convex_attention.paper.data.brats.BraTSSlices`):
#: per patient volume, or the authors' dataset-wide per-modality scheme.
NORMALISATIONS = ("volume", "dataset")
#: The settings of :class:`TrainConfig` that only the BraTS loader reads (``train`` and
#: ``data check`` offer them from the same declarations).
BRATS_SETTINGS = ("cache_dir", "normalisation", "min_tumour_area", "val_fraction")
#: The settings of :class:`TrainConfig` that only the synthetic generators read, each with the
#: other data that reads it too (the data seed is also the BraTS split): refused for other data
#: (:func:`_generated_only`), and read as their defaults from older runs that recorded them
#: (:meth:`TrainConfig.from_dict`).
GENERATOR_SETTINGS = {"n_train": None, "n_val": None, "difficulty": None, "data_seed": "brats"}
#: The validity checks' pass thresholds (:mod:`convex_attention.paper.validity`): (a), (b)
#: and (d) at most; (c′) and the reported (c) at least.
THRESHOLDS = {"location_free": 0.60, "pixel_map": 0.30, "maps_drive_ranking": 0.05, "uniform_attention": 0.10,
              "brain_mask": 0.60}
#: The synthetic sources whose structures have mimic types (a mimic type can be held out).
MIMIC_SOURCES = ("synthetic", "synthetic-brightest")
MIMIC_TYPES = ("inverted", "split", "mottled")
#: How the pixel protocol brings a coarse map to the image (:mod:`.explain_metrics`).
UPSAMPLINGS = ("nearest", "bilinear")
# Explanations by default: the first 64 lesion images, in batches of 16 (the experiment's
# n_explain, the explain command's --n-images and --batch-size, explain_models' defaults)
EXPLAINED_IMAGES = 64
EXPLAIN_BATCH_SIZE = 16
# Images per set the benchmark's validity checks get by default (the experiment's
# validity_images, `data check --n`)
VALIDITY_IMAGES = 400
STAGES = ("dev", "test")
#: The experiment's data seeds: each owns one block of generator seeds (:func:`.protocol.split_seed`).
DATA_SEED_MAX = 999
#: The committed variants file the test stage reads (in the repository's configs/ folder).
DEFAULT_VARIANTS_PATH = str(Path(__file__).resolve().parents[2] / "configs" / "experiment_variants.json")
PLAIN_CNN = "plain_cnn"
# A per-sample CPU solver is refused when one pass over 1000 images would exceed this (seconds).
CVX_REFUSE_S_PER_1000 = 3600.0

#: The built-in methods by name, for the help only: the registry (:data:`convex_attention.REGISTRY`)
#: imports torch, and building the parser (``--help``) must not.  The checks ask the
#: registry itself (:func:`_registry`); tests/test_config.py keeps this list equal to it.
METHOD_NAMES = ("softmax", "exact", "cvxpylayers", "dual", "learned_dual")


def _registry() -> dict:
    from ..methods import REGISTRY  # the core's registry, which brings torch: loaded when a value is checked

    return REGISTRY


def _method(name: str):
    """The registry's record of ``name`` (:func:`convex_attention.get_method`: its error names the choices)."""
    from ..methods import get_method  # the core, loaded when a method's facts are asked for

    return get_method(name)


_METHODS = Choice(lambda: tuple(_registry()), listed=METHOD_NAMES)
#: Pixels per channel of one image set (images x side²): beyond it no set's tensor could be
#: allocated on the machines this runs on (``train``, ``experiment`` and ``data check`` refuse it).
MAX_SET_PIXELS = 2 ** 31
#: Values of one batch's first activation (batch x width x side²), the size every encoder
#: block's tensors scale with: beyond it a training step could never be allocated.
MAX_BATCH_VALUES = 2 ** 31


#: The synthetic generators key image ``i`` of the set of seed ``s`` as ``s * IMAGES_PER_SEED + i``
#: (:mod:`convex_attention.paper.data.synthetic`): a set of more images than this would reach
#: into the images of seed ``s + 1``, which may be another split's (this many exactly end one
#: key before it).
IMAGES_PER_SEED = 1_000_003

# synthetic images per set: at least one, and at most one seed's block (the help states the
# range the check enforces; it said 10 000 000: a review)
_COUNT = Int(low=1, high=IMAGES_PER_SEED)


def check_seed_block(field: str, n, flag: str | None = None) -> None:
    """ConfigError (naming ``field``) when a set of ``n`` synthetic images would reach into the
    next seed's images (``n > IMAGES_PER_SEED``), which another split may use."""
    if isinstance(n, int) and n > IMAGES_PER_SEED:
        raise ConfigError(field, f"{flag or field} {n} images is too many: a set holds at most {IMAGES_PER_SEED} "
                                 f"images, because the synthetic generators key image i of seed s as "
                                 f"s x {IMAGES_PER_SEED} + i, so a larger set would repeat the first images of "
                                 f"seed s + 1, which another split (validation, development or test) may use")


def check_set_size(field: str, n: int, image_size: int, flag: str | None = None,
                   synthetic: bool = True) -> None:
    """ConfigError (naming ``field``) when a set of ``n`` synthetic images could share images
    with another split (:func:`check_seed_block`; not for other data: ``synthetic=False``),
    or when ``n`` images of ``image_size`` x ``image_size`` are more pixels per channel than
    :data:`MAX_SET_PIXELS`."""
    if synthetic:
        check_seed_block(field, n, flag)
    pixels = n * image_size ** 2
    if pixels > MAX_SET_PIXELS:
        raise ConfigError(field, f"{flag or field} {n} images of {image_size}x{image_size} are {pixels:.3g} pixels per "
                                 f"channel and set, above the {MAX_SET_PIXELS:.3g} a set may hold (its tensor could "
                                 f"never be allocated); use fewer images or a smaller image size")


def deepest_block(model: ModelConfig) -> int:
    """The deepest encoder block the model uses (its attention blocks, and the bottleneck, 5, where the
    classifier reads it): the encoder (models.unet.build_encoder) ends there."""
    return max(list(model.attention_blocks) + ([5] if model.bottleneck_in_classifier else []))


def batchnorm_of_one_value(model: ModelConfig) -> bool:
    """Whether the model's encoder ends in a BatchNorm over a 1×1 map (16×16 images with the
    bottleneck, block 5, in use): in train mode it fails on a batch of one image ("expected
    more than 1 value per channel"), so training and the BatchNorm recompute must never pass it one."""
    return model.norm == "batch" and model.image_size // 2 ** (deepest_block(model) - 1) == 1


def batchnorm_of_one_reason(model: ModelConfig) -> str:
    """Why a batch of one image cannot train the model (:func:`batchnorm_of_one_value`), for the
    messages that refuse it (one wording, its block read from the model)."""
    return (f"the model's BatchNorm after block {deepest_block(model)} sees a 1x1 map there: one value per channel, "
            f"which BatchNorm cannot normalise")


def _check_train_sizes(cfg) -> None:
    """The training and validation sets, and one batch's activations, fit in memory; a batch
    of one image never meets a BatchNorm over a 1×1 map (ca_rev264)."""
    side = cfg.model.image_size
    single = "batch_size" if cfg.batch_size == 1 else "n_train" if cfg.n_train == 1 and \
        cfg.data in SYNTHETIC_SOURCES else None
    if single is not None and batchnorm_of_one_value(cfg.model):
        raise ConfigError(single, f"{single} 1 trains on batches of one image, and "
                                  f"{batchnorm_of_one_reason(cfg.model)}; use a larger {single}, norm group, or a "
                                  f"larger image size")
    for name in ("n_train", "n_val"):
        check_set_size(name, getattr(cfg, name), side)
    values = cfg.batch_size * cfg.model.width * side ** 2
    if values > MAX_BATCH_VALUES:
        raise ConfigError("batch_size", f"batch_size {cfg.batch_size} x width {cfg.model.width} x {side}x{side} "
                                        f"images are {values:.3g} values in the first activation alone, above the "
                                        f"{MAX_BATCH_VALUES:.3g} a training step may hold (it could never be "
                                        f"allocated); use a smaller batch size, width or image size")


def check_device(name) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, available on this machine; ConfigError otherwise."""
    import torch  # a device is checked when a run is configured, never for --help

    from ..io.environment import device_unavailable

    accepted = "auto, cpu, cuda, cuda:N or mps"
    if not isinstance(name, str) or not name:
        raise ConfigError("device", f"device must be one of {accepted}, got {name!r}")
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError("device", f"unknown device {name!r}; use {accepted}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError("device", f"unsupported device {name!r}; use {accepted}")
    reason = device_unavailable(dev)
    if reason is not None:
        raise ConfigError("device", f"device {name!r}: {reason}; use cpu or auto")
    return name


def resolved_device(name: str, local_rank: int | None = None) -> str:
    """The device a run given ``name`` (checked by :func:`check_device`) computes on: ``auto``
    is CUDA where this machine has it, else the CPU; in a process of a distributed run
    (``local_rank``) a CUDA device without an index is that process's own GPU, ``cuda:local_rank``."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if local_rank is not None and name == "cuda":
        return f"cuda:{local_rank}"
    return name


# ----------------------------------------------------------------------------- the model

def _check_image_size(cfg: ModelConfig) -> None:
    if cfg.image_size % 16:
        raise ConfigError("image_size", f"image size {cfg.image_size!r} is not divisible through the pooling stack: "
                                        f"the encoder halves it four times, so it must be a positive multiple of 16 "
                                        f"(e.g. 128 or 256)")


#: The most attention levels a model has (its attention_blocks); runs.csv and the reports
#: have a column per level up to it.
MAX_ATTENTION_LEVELS = 3


def _check_blocks(cfg: ModelConfig) -> None:
    blocks = list(cfg.attention_blocks)
    if blocks != list(range(blocks[0], blocks[0] + len(blocks))):
        raise ConfigError("attention_blocks", f"attention_blocks must be 2 or 3 consecutive blocks among 1..5 "
                                              f"(5 = bottleneck), got {cfg.attention_blocks!r}")


def _check_with_the_core(cfg: ModelConfig) -> None:
    """The checks that need the core: the temperatures' range (the one check of
    :func:`convex_attention.validation.check_temperatures`), the method's facts and the
    cost of a per-sample CPU solver."""
    import torch

    from ..cvx import prior_seconds_per_sample
    from ..validation import check_temperatures

    method = _method(cfg.method)
    levels = len(cfg.attention_blocks)
    if len(cfg.temperature) not in (1, levels):
        raise ConfigError("temperature", f"temperature must hold one value for every level or one per level "
                                         f"({levels}), got {list(cfg.temperature)}")
    try:
        # the range of the model's compute dtype: its weights and scores are float32 (half
        # precision is computed in float32), so 1e-300 passes float64's range but not the model's
        check_temperatures(list(cfg.temperature_per_level()), levels, dtype=torch.float32)
    except (TypeError, ValueError) as err:
        # the core's remedy "or float64 scores" is no choice here: the model computes in float32
        raise ConfigError("temperature", str(err).replace(" or float64 scores", "")) from None
    if cfg.learn_temperature and not method.tensor_temperature:
        learnable = ", ".join(n for n, r in _registry().items() if r.tensor_temperature)
        raise ConfigError("learn_temperature", f"method {cfg.method!r} cannot differentiate through the "
                                               f"temperature, so it cannot learn one; use a fixed temperature, or "
                                               f"one of the methods {learnable}")
    if cfg.duals != "shared" and not method.needs_duals:
        raise ConfigError("duals", f"duals={cfg.duals!r} is the dual source of methods that need duals "
                                   f"(learned_dual), not of {cfg.method!r}; leave it 'shared'")
    if method.cpu_only:
        # a per-sample CPU solver: its cost grows steeply with the number of cells
        cells = sum((cfg.image_size // 2 ** (k - 1)) ** 2 for k in cfg.attention_blocks)
        per_image = prior_seconds_per_sample(cells)
        if per_image * 1000 > CVX_REFUSE_S_PER_1000:
            raise ConfigError(
                "method",
                f"method {cfg.method!r} refused for {cfg.image_size}x{cfg.image_size} images: the attention "
                f"problem has {cells} cells, estimated {per_image:.1f} s per image forward+backward on a CPU, "
                f"about {per_image * 1000 / 3600:.1f} h per 1000 images. Use method 'exact' (the same solution "
                f"in closed form) or smaller images.")


@dataclass
class ModelConfig:
    """The attention CNN's settings: what :class:`~convex_attention.paper.models.AttentionUNet`
    is built from.

    Defaults follow the paper where it states them (width 32, two attention levels on
    blocks 3 and 4, τ = 1, α = 10, BatchNorm); ``image_size`` 128 is the synthetic
    data's size (the paper resizes BraTS slices to 256: pass 256 there).
    """

    in_channels: int = setting(4, Int(low=1, high=1024), "input channels (modalities)", flag="--channels")
    num_classes: int = setting(2, Int(low=2, high=100_000), "classes of the classifier", flag="")
    width: int = setting(32, Int(low=1, high=1024), "channels of the first block (32 in the paper)")
    image_size: int = setting(128, Int(low=16, high=8192),
                              "image side in pixels, a multiple of 16 (the paper: 256 for BraTS); the data sets "
                              "their own floor: at least 32 for synthetic and synthetic-brightest",
                              cross=_check_image_size)
    attention_blocks: tuple = setting((3, 4), Many(Int(low=1, high=5), at_least=2,
                                                                 at_most=MAX_ATTENTION_LEVELS),
                                      "2 or 3 consecutive blocks (1-4, 5 = bottleneck)", cross=_check_blocks)
    method: str = setting("learned_dual", _METHODS, "how the attention levels are made consistent (the method "
                                                    "registry)", cross=_check_with_the_core)
    temperature: tuple = setting((1.0,), Many(Real(low=0.0, low_open=True), scalar=True),
                                 "attention temperature tau > 0: one for every level, or one per level", variant=True)
    alpha: float = setting(10.0, Real(low=0.0, high=1e6), "weight of the consistency loss (learned_dual), >= 0",
                           variant=True)
    embed_channels: int = setting(64, Int(low=1, high=4096), "channels of the score heads' embedding", flag="")
    bottleneck_in_classifier: bool = setting(False, Flag(), "add the bottleneck's global average to the "
                                                            "classifier's input", flag="")
    norm: str = setting("batch", Choice(NORMS), "BatchNorm (the paper) or GroupNorm (no batch statistics)")
    solver_options: dict = setting({}, Mapping(), "options of the method's solver", flag="")
    head: str = setting("bounded", Choice(HEADS), "score head: the paper's bounded head, or one with a learnable "
                                                  "gain that can sharpen maps", variant=True)
    learn_temperature: bool = setting(False, Flag(), "learn one log-temperature shared by the levels (softmax, "
                                                     "exact, dual, learned_dual)", variant=True)
    duals: str = setting("shared", Choice(DUAL_SOURCES), "dual source of learned_dual: the paper's shared learned "
                                                         "duals, or amortised per sample", variant=True)

    # the fields that decide the parameter shapes and the computation (what a checkpoint must match)
    ARCHITECTURE = ("in_channels", "num_classes", "width", "image_size", "attention_blocks", "method",
                    "embed_channels", "bottleneck_in_classifier", "norm", "head", "learn_temperature", "duals")

    def __post_init__(self):
        normalise_settings(self)

    def validate(self) -> ModelConfig:
        """Check every setting; ConfigError (a ValueError) naming it and the accepted values."""
        check_settings(self)
        return self

    def temperature_per_level(self) -> tuple:
        """One temperature per attention level (a shared one repeated)."""
        t = tuple(self.temperature)
        return t * len(self.attention_blocks) if len(t) == 1 else t

    def architecture(self) -> dict:
        """The fields that decide the parameter shapes and the computation (what a checkpoint must match)."""
        return {k: getattr(self, k) for k in self.ARCHITECTURE}

    def to_dict(self) -> dict:
        """Plain containers only (what a checkpoint and ``config.json`` hold)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`; ConfigError for a field this version does not know.
        Fields missing from ``data`` (older checkpoints) take their defaults, and a value in
        an older form (a temperature stored as one number) is read as today's."""
        if not isinstance(data, dict):
            raise ConfigError("model", f"a model configuration must be a dict, got {type(data).__name__}")
        return cls(**from_plain(cls, data, "model configuration"))


# ----------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    """Everything a training run needs; ``model`` is the network's :class:`ModelConfig`.

    Data: ``data`` (a source of :func:`convex_attention.paper.data.build_datasets`),
    ``data_root``, ``n_train``/``n_val`` (synthetic images), ``difficulty``,
    ``data_seed`` (the data's seed; ``None``: ``seed``).  The images' size and channels
    are the model's (``model.image_size``, ``model.in_channels``).

    ``TrainConfig.build(method="exact", width=16, epochs=3)`` takes the settings of both
    levels by name (``channels`` is ``in_channels``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    out: str = setting("runs/model", Text(what="a folder name"), "output folder")
    data: str = setting("synthetic", Choice(DATA_SOURCES), "; ".join(f"{k}: {v}" for k, v in DATA_SOURCE_HELP.items()))
    data_root: str | None = setting(None, Text(optional=True, what="a folder name"),
                                    "the data folder (brats, folder)", cross=lambda c: _files_only(c))
    normalisation: str = setting("volume", Choice(NORMALISATIONS),
                                 "brats: per-modality z-score per patient (volume) or over the training patients "
                                 "(dataset, the authors' scheme)", cross=lambda c: _brats_only(c, "normalisation"))
    cache_dir: str | None = setting(None, Text(optional=True, what="a folder name"),
                                    "brats: where preprocessed slices are cached",
                                    shown="DATA_ROOT/.convex_attention_cache",
                                    cross=lambda c: _brats_only(c, "cache_dir"))
    min_tumour_area: int = setting(1000, Int(low=1, high=8192 * 8192),
                                   "brats: slices with at most this many tumour pixels are dropped (1000: the "
                                   "paper's)", cross=lambda c: _brats_only(c, "min_tumour_area"))
    val_fraction: float = setting(0.2, Real(low=0.0, high=0.9, low_open=True),
                                  "brats: share of the patients held out for validation (the split is by patient)",
                                  cross=lambda c: _brats_only(c, "val_fraction"))
    n_train: int = setting(2000, _COUNT, "synthetic training images",
                           cross=lambda c: _generated_only(c, "n_train"))
    n_val: int = setting(500, _COUNT, "synthetic validation images",
                         cross=lambda c: _generated_only(c, "n_val"))
    difficulty: float = setting(0.5, Real(low=0.0, high=1.0), "synthetic difficulty in [0, 1]",
                                cross=lambda c: _generated_only(c, "difficulty"))
    data_seed: int | None = setting(None, Int(low=0, high=SEED.high, optional=True),
                                    "seed of the synthetic images / the BraTS split", shown="the --seed",
                                    cross=lambda c: _generated_only(c, "data_seed"))
    epochs: int = setting(10, Int(low=1, high=100_000),
                          "epochs in all (a resumed run counts the epochs already done)")
    batch_size: int = setting(32, Int(low=1, high=100_000), "images per step")
    lr: float = setting(1e-3, Real(low=0.0, high=100.0, low_open=True), "Adam learning rate")
    weight_decay: float = setting(0.0, Real(low=0.0, high=100.0), "Adam weight decay, >= 0")
    augment: bool = setting(True, Flag(), "flips and small affine augmentation")
    recompute_bn: bool = setting(True, Flag(), "recompute the BatchNorm statistics after each epoch (instead of "
                                               "keeping the running averages)", flag="--no-bn-recompute")
    seed: int = setting(0, SEED, "seed of the initialisation, batches, augmentation")
    workers: int = setting(0, Int(low=0, high=256), "data loader workers")
    device: str = setting("auto", Text(what="auto, cpu, cuda, cuda:N or mps"), "auto, cpu, cuda, cuda:N or mps",
                          cross=lambda c: check_device(c.device))
    resume: str | None = setting(None, Text(optional=True, what="a checkpoint path"), "checkpoint to continue "
                                                                                      "from", flag="")
    progress: bool = setting(True, Flag(), "progress bars", flag="")

    def __post_init__(self):
        normalise_settings(self)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, **fields_) -> TrainConfig:
        """A config from the fields of ``TrainConfig`` and ``ModelConfig`` by name."""
        return cls().override(**fields_)

    def override(self, **fields_) -> TrainConfig:
        """A copy with fields replaced; model fields (and ``channels``) go into ``model``."""
        fields_ = {_ALIASES.get(k, k): v for k, v in fields_.items()}
        mine = {f.name for f in fields(self)}
        model = {k: v for k, v in fields_.items() if k in declared(ModelConfig)}
        unknown = sorted(set(fields_) - mine - set(model))
        if unknown:
            raise TypeError(f"unknown configuration field(s) {unknown}")
        rest = {k: v for k, v in fields_.items() if k not in model}
        base = rest.pop("model", self.model)
        return replace(self, model=replace(base, **model) if model else base, **rest)

    # ------------------------------------------------------------------ views
    @property
    def method(self) -> str:
        return self.model.method

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def channels(self) -> int:
        return self.model.in_channels

    @property
    def data_seed_used(self) -> int:
        """The data's seed: ``data_seed``, or ``seed`` when it is not given."""
        return self.seed if self.data_seed is None else self.data_seed

    def data_config(self) -> dict:
        """What decides the validation images (what ``explain`` compares between checkpoints):
        the settings the source reads.  ``n_train`` is not part of it: every training set of
        one source and seed is disjoint from its validation images."""
        common = {"data": self.data, "data_root": self.data_root, "image_size": self.model.image_size,
                  "channels": self.model.in_channels}
        if self.data == "folder":  # root/val is the validation set, whatever the seed
            return common
        seed = {"data_seed": self.data_seed_used}
        if self.data == "brats":  # the patients' split and the preprocessing; n_val and difficulty are synthetic's
            return {**common, **seed, **{k: v for k, v in self.brats_options().items() if k != "cache_dir"}}
        return {**common, "n_val": self.n_val, "difficulty": self.difficulty, **seed}

    @staticmethod
    def data_differences(first: dict, second: dict) -> list[str]:
        """The keys on which two :meth:`data_config` records differ (the keys differ between
        sources: a BraTS run records its loader's settings)."""
        return [k for k in dict.fromkeys([*first, *second]) if first.get(k) != second.get(k)]

    def brats_options(self) -> dict:
        """The keyword arguments of :class:`~convex_attention.paper.data.brats.BraTSSlices` the
        settings give (the cache folder: the loader's default unless given)."""
        out: dict = {"val_fraction": self.val_fraction, "normalisation": self.normalisation,
                     "min_tumour_area": self.min_tumour_area}
        if self.cache_dir is not None:
            out["cache_dir"] = self.cache_dir
        return out

    def to_dict(self) -> dict:
        """Plain containers, the model's settings nested under ``model`` (what checkpoints store)."""
        return {"model": self.model.to_dict(), **to_plain(self)}

    def flat(self) -> dict:
        """One key per setting of either level (what ``config.json`` holds: one key per option)."""
        out = self.to_dict()
        return {**out.pop("model"), **out}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict` and :meth:`flat` (and of older flat ``config.json`` files,
        with ``channels``, and of older runs that recorded a data root beside a synthetic source,
        read without it, or the generators' settings beside data read from files, read as their
        defaults); ConfigError for an unknown field."""
        if not isinstance(data, dict):
            raise ConfigError("train_config", f"a training configuration must be a dict, got {type(data).__name__}")
        data = dict(data)
        # a flat file has no "model"; a stored one that is not a dict (null, [], 0) is refused, never read as
        # the default model (ca_rev214, ca_rev217)
        model = data.pop("model") if "model" in data else {}
        if not isinstance(model, dict):
            raise ConfigError("model", f"the model configuration must be a dict, got {type(model).__name__}")
        data = {_ALIASES.get(k, k): v for k, v in data.items()}
        flat = {k: data.pop(k) for k in list(data) if k in declared(ModelConfig)}
        for k in sorted(set(flat) & set(model)):
            if flat[k] != model[k]:  # (the flat value had silently won: ca_rev217)
                raise ConfigError(k, f"{k} is given twice, as {flat[k]!r} and as model.{k} = {model[k]!r}")
        model = {**model, **flat}
        config = cls(model=ModelConfig.from_dict(model), **from_plain(cls, data, "training configuration"))
        if config.data in SYNTHETIC_SOURCES and config.data_root is not None:
            # an older run could record a data root its synthetic source ignored (refused now):
            # read as today's, so that nothing that reads a stored run takes it for files
            config = replace(config, data_root=None)
        if config.data not in SYNTHETIC_SOURCES:
            # likewise the generators' settings an older run recorded for data read from files
            # (refused now, _generated_only): read as the defaults they never departed from in effect
            config = replace(config, **{name: _default_of(name) for name, also in GENERATOR_SETTINGS.items()
                                        if config.data != also})
        return config

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Check every setting of both levels (ConfigError, a ValueError, naming the setting
        and the accepted values).  The device must exist on this machine."""
        if not isinstance(self.model, ModelConfig):
            raise ConfigError("model", f"model must be a ModelConfig, got {type(self.model).__name__}")
        self.model.validate()
        check_settings(self)
        _check_train_sizes(self)
        return self


_ALIASES = {"channels": "in_channels"}  # the data's word for the model's input channels


def _files_only(config: TrainConfig) -> None:
    """ConfigError when a data root is given for a synthetic source (it generates its images
    and would ignore the folder; a run recording it would read as trained on files)."""
    if config.data_root is not None and config.data in SYNTHETIC_SOURCES:
        files = ", ".join(s for s in DATA_SOURCES if s not in SYNTHETIC_SOURCES)
        raise ConfigError("data_root", f"data_root applies to data read from files ({files}) only; the data "
                                       f"{config.data!r} is generated")


def _default_of(name: str):
    """The declared default of the :class:`TrainConfig` setting ``name``."""
    return next(f.default for f in fields(TrainConfig) if f.name == name)


def _generated_only(config: TrainConfig, name: str) -> None:
    """ConfigError when a setting of the synthetic generators (:data:`GENERATOR_SETTINGS`, with
    the other data that reads it) is set away from its default for data read from files,
    which would ignore it: a run recording it read as made with it (a review found `train
    --data folder --difficulty 0.9` accepted and recorded)."""
    also = GENERATOR_SETTINGS[name]
    if config.data not in SYNTHETIC_SOURCES and config.data != also and getattr(config, name) != _default_of(name):
        applies = "the synthetic data" + (f" and {also!r}" if also else "")
        raise ConfigError(name, f"{name} applies to {applies} only (the data is {config.data!r}, read from files)")


def _brats_only(config: TrainConfig, name: str) -> None:
    """ConfigError when a BraTS setting is set away from its default for other data (it would
    be ignored)."""
    if config.data != "brats" and getattr(config, name) != _default_of(name):
        raise ConfigError(name, f"{name} applies to data 'brats' only (the data is {config.data!r})")


# ----------------------------------------------------------------------------- the variant

def variant_names() -> dict[str, str]:
    """``{name: level}`` of the variant's settings, in declaration order: ``"model"`` for
    the settings of :class:`ModelConfig`, ``"experiment"`` for :class:`ExperimentConfig`'s."""
    return {**{n: "model" for n in variant_settings(ModelConfig)},
            **{n: "experiment" for n in variant_settings(ExperimentConfig)}}


class Variant:
    """One model variant, the same for every method: a value for every setting declared
    ``variant=True`` (:func:`variant_names`: the model's temperature, alpha, head, learned
    temperature and dual source, and the pixel protocol's upsampling).  Settings not
    given take their declared defaults.  ``v.temperature`` reads a value; a variant is
    hashable and compares by its values."""

    __slots__ = ("_values",)

    def __init__(self, **values):
        names = variant_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TypeError(f"unknown variant setting(s) {unknown}; known: {list(names)}")
        settings = {**variant_settings(ModelConfig), **variant_settings(ExperimentConfig)}
        defaults = {**{n: getattr(ModelConfig(), n) for n in variant_settings(ModelConfig)},
                    **{n: getattr(ExperimentConfig(), n) for n in variant_settings(ExperimentConfig)}}
        out = {}
        for name in names:
            value = values.get(name, defaults[name])
            try:
                out[name] = settings[name].kind.check(value)
            except ValueError as err:
                raise ConfigError(name, f"{name} {err}") from None
        object.__setattr__(self, "_values", out)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("a Variant is immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, Variant) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        return "Variant(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def values(self) -> dict:
        return dict(self._values)

    def replace(self, **changes) -> Variant:
        """A copy with some settings changed."""
        return Variant(**{**self._values, **changes})

    def row(self) -> dict:
        """The settings as table cells (a temperature tuple as ``1.0`` or ``1.0/0.5``)."""
        return {n: "/".join(map(str, v)) if isinstance(v, tuple) else v for n, v in self._values.items()}

    def model_fields(self, method: str) -> dict:
        """The ModelConfig settings this variant sets for ``method`` (``duals`` only for the
        methods that need duals)."""
        out = {n: v for n, v in self._values.items() if variant_names()[n] == "model"}
        if not _method(method).needs_duals:
            out["duals"] = "shared"
        return out

    def check(self, method: str) -> None:
        """ConfigError unless a model of ``method`` can take this variant (the model's
        settings checked as :meth:`ModelConfig.validate` does)."""
        ModelConfig(method=method, **self.model_fields(method)).validate()

    def effective(self, method: str) -> tuple:
        """What decides ``method``'s model under this variant (variants that differ only in
        settings the method ignores train the same model)."""
        fields_ = self.model_fields(method)
        if not _method(method).needs_duals:
            fields_.pop("alpha")
        return (method, *sorted(fields_.items()))

    def label(self) -> str:
        parts = []
        for name, value in self._values.items():
            if name == "learn_temperature":
                continue
            shown = "/".join(map(str, value)) if name == "temperature" else \
                (f"{value:g}" if isinstance(value, float) else value)
            key = "tau" if name == "temperature" else name
            parts.append(f"{key}={shown}" + (" (learned)" if name == "temperature" and self.learn_temperature
                                             else ""))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """Plain JSON containers (the temperature as a list)."""
        settings = {**variant_settings(ModelConfig), **variant_settings(ExperimentConfig)}
        return {n: settings[n].kind.plain(v) for n, v in self._values.items()}

    @classmethod
    def from_dict(cls, data: dict) -> Variant:
        """Inverse of :meth:`to_dict` (older files, with the temperature as a number, read too)."""
        return cls(**data)


# ----------------------------------------------------------------------------- the experiment

def _default_train() -> TrainConfig:
    return TrainConfig(data_seed=0)


#: The fewest development images the model-free reference map is chosen on (two halves of two).
MODEL_FREE_MIN_IMAGES = 4


def difficulty_key(difficulty) -> int:
    """A difficulty in thousandths: each condition's images are keyed by it (the split seeds), so
    two difficulties in one thousandth draw the same images, and the dev stage, the variants file
    and the seeds all refuse or key them by this one rule."""
    return round(float(difficulty) * 1000)


def _check_experiment(cfg: ExperimentConfig) -> None:
    for name in ("n_dev", "n_test", "validity_images"):
        check_set_size(name, getattr(cfg, name), cfg.train.model.image_size)
    for name in ("n_dev", "validity_images"):  # the test stage chooses it on min(n_dev, validity_images) images
        if getattr(cfg, name) < MODEL_FREE_MIN_IMAGES:  # (it had raised after the test split was spent: ca_rev166)
            raise ConfigError(name, f"{name} must be at least {MODEL_FREE_MIN_IMAGES}: the model-free reference map "
                                    f"is chosen on that many development images, got {getattr(cfg, name)}")
    # each difficulty's images are keyed by its thousandths (protocol.split_seed), and the variants file the dev
    # stage proposes refuses two in one thousandth (Variants.validate): (0.3, 0.3004) had been accepted, trained on,
    # and proposed in a file the test stage refuses (ca_rev266)
    thousandths = [difficulty_key(d) for d in cfg.difficulties]
    twice = [d for i, d in enumerate(cfg.difficulties) if thousandths[i] in thousandths[:i]]
    if twice:
        raise ConfigError("difficulties", f"difficulties must be distinct in their thousandths (each condition's "
                                          f"images are keyed by them), got {list(cfg.difficulties)} ({twice[0]!r} "
                                          f"shares its thousandth with an earlier one)")
    if cfg.n_sanity > cfg.n_explain:  # the check takes the first explained images (ca_rev144)
        raise ConfigError("n_sanity", f"n_sanity ({cfg.n_sanity}) must be at most n_explain ({cfg.n_explain}): the "
                                      f"randomisation check takes the first of the explained images")
    if cfg.train.data_seed is None:
        raise ConfigError("data_seed", "the experiment's runs share one dataset: set train.data_seed")
    if cfg.train.data_seed > DATA_SEED_MAX:
        raise ConfigError("data_seed", f"the experiment's data seed must be from 0 to {DATA_SEED_MAX} (each owns "
                                       f"one block of generator seeds), got {cfg.train.data_seed}")
    if cfg.held_out_mimic is not None and cfg.train.data not in MIMIC_SOURCES:
        raise ConfigError("held_out_mimic", f"held_out_mimic needs data with mimic types "
                                            f"({', '.join(MIMIC_SOURCES)}), not {cfg.train.data!r}; set it to none")
    names = tuple(cfg.methods) + ((PLAIN_CNN,) if cfg.plain_cnn else ())
    if cfg.baseline_model not in (None, "all") and cfg.baseline_model not in names:
        raise ConfigError("baseline_model", f"baseline_model must be 'all', None or one of the models {names}, "
                                            f"got {cfg.baseline_model!r}")
    settings = {**variant_settings(ModelConfig), **variant_settings(ExperimentConfig)}
    unknown = sorted(set(cfg.grid) - set(settings))
    if unknown:
        raise ConfigError("grid", f"grid: unknown variant setting(s) {unknown}; known: {list(settings)}")
    for name, values in cfg.grid.items():
        try:
            checked = Many(settings[name].kind, distinct=True).check(values)
        except ValueError as err:
            raise ConfigError(f"grid_{name}", f"grid_{name} {err}") from None
        cfg.grid[name] = checked
    for variant in cfg.variants():
        for method in cfg.methods:
            try:
                replace(cfg.train.model, method=method, **variant.model_fields(method)).validate()
            except ConfigError as err:
                name = f"grid_{err.field}" if err.field in settings else err.field
                raise ConfigError(name, f"{name} (variant {variant.label()}, method {method}): {err}") from None
    # every compared method is built with the solver options (the plain CNN ignores them, and
    # train.model.method is a placeholder here): refused now, not when that method's turn comes
    for method in cfg.methods:
        try:
            _method(method).check_option_names(cfg.train.model.solver_options)
        except TypeError as err:
            raise ConfigError("solver_options", f"solver_options (method {method}): {err}") from None


@dataclass
class ExperimentConfig:
    """Methods x seeds under the protocol of :mod:`convex_attention.paper.experiment`.

    ``train``: the :class:`TrainConfig` every run starts from; ``grid``: the dev stage's
    candidate values of the variant's settings (``{name: candidates}``; a setting not in
    it keeps its base value, the model's or ``upsampling``).  The test stage takes the
    difficulties, the held-out mimic type and the variant from the variants file.
    """

    methods: tuple = setting(("softmax", "learned_dual", "exact"), Many(_METHODS, distinct=True),
                             "attention methods (every one gets the same variant)")
    seeds: tuple = setting((0, 1, 2, 3, 4), Many(SEED, distinct=True), "training seeds (test stage)")
    train: TrainConfig = field(default_factory=_default_train)
    n_explain: int = setting(EXPLAINED_IMAGES, Int(low=1, high=100_000),
                             "the first N lesion images of the test (dev) split are explained")
    target: str = setting("true", Choice(("true", "predicted")), "the class the post-hoc methods explain "
                          "(each image's own label, or the prediction)", flag="")
    baseline_model: str | None = setting("all", Text(optional=True), "the models the post-hoc methods explain "
                                                                     "('all', one model, or None)", flag="")
    plain_cnn: bool = setting(True, Flag(), "train the plain CNN too", flag="")
    n_dev: int = setting(500, _COUNT, "development images")
    n_test: int = setting(500, _COUNT, "test images per test set")
    n_sanity: int = setting(32, Int(low=1, high=100_000),
                            "images per seed of the model-randomisation check (the first of the explained ones, "
                            "so at most n_explain; the protocol asks for at least 32)")
    validity_images: int = setting(VALIDITY_IMAGES, _COUNT, "images per set given to the benchmark's validity checks")
    dev_seeds: tuple = setting((0, 1, 2, 3, 4), Many(SEED, distinct=True),
                               "training seeds of the dev stage (check (c') needs at least 5)")
    difficulties: tuple = setting((0.3, 0.6), Many(Real(low=0.0, high=1.0), at_most=4, distinct=True),
                                  "dev stage: the difficulties, distinct in their thousandths (the first is the "
                                  "development one; the test stage reads them from the variants file)")
    held_out_mimic: str | None = setting("mottled", Choice(MIMIC_TYPES, optional=True),
                                         "dev stage: the mimic type kept out of training and development (the test "
                                         "stage reads it from the variants file)")
    upsampling: str = setting("nearest", Choice(UPSAMPLINGS), "how the pixel protocol brings coarse maps to the "
                                                             "image", variant=True, flag="")
    grid: dict = field(default_factory=lambda: {"upsampling": UPSAMPLINGS})

    def __post_init__(self):
        normalise_settings(self)
        settings = {**variant_settings(ModelConfig), **variant_settings(ExperimentConfig)}
        self.grid = {n: tuple(settings[n].kind.normalise(v) if n in settings and isinstance(settings[n].kind, Many)
                              else v for v in values) for n, values in dict(self.grid).items()}

    def override(self, **fields_) -> ExperimentConfig:
        """A copy with fields replaced; fields of ``TrainConfig``/``ModelConfig`` go into ``train``."""
        mine = {f.name for f in fields(self)}
        own = {k: v for k, v in fields_.items() if k in mine}
        rest = {k: v for k, v in fields_.items() if k not in mine}
        out = replace(self, **own)
        return replace(out, train=out.train.override(**rest)) if rest else out

    def base_variant(self) -> Variant:
        """The variant of the base configuration (the model's settings and ``upsampling``)."""
        values = {n: getattr(self.train.model if level == "model" else self, n)
                  for n, level in variant_names().items()}
        return Variant(**values)

    def candidates(self) -> dict:
        """``{name: candidates}`` of every variant setting: the grid's, else the base value."""
        base = self.base_variant().values()
        return {n: tuple(self.grid.get(n, (base[n],))) for n in variant_names()}

    def variants(self) -> list[Variant]:
        """The dev stage's candidates: every combination of the grid's values of the settings
        that decide a model (the upsampling is compared on each trained model, at its base
        value here)."""
        cands = self.candidates()
        trained = [n for n, level in variant_names().items() if level == "model"]
        base = self.base_variant().values()
        combos = itertools.product(*(cands[n] for n in trained))
        return [Variant(**{**base, **dict(zip(trained, combo))}) for combo in combos]

    def with_variants(self, variants) -> ExperimentConfig:
        """The configuration the test stage runs: the variants file's difficulties, held-out
        mimic type, and its one variant as the only candidate."""
        v = variants.variant
        model = replace(self.train.model, **{n: x for n, x in v.values().items() if variant_names()[n] == "model"})
        rest = {n: x for n, x in v.values().items() if variant_names()[n] == "experiment"}
        return replace(self, train=replace(self.train, model=model), difficulties=tuple(variants.difficulties),
                       held_out_mimic=variants.held_out_mimic, grid={}, **rest)

    def validate(self) -> ExperimentConfig:
        """Check every setting of the chain (ConfigError naming the setting)."""
        if not isinstance(self.train, TrainConfig):
            raise ConfigError("train", f"train must be a TrainConfig, got {type(self.train).__name__}")
        # the data source first: for data read from files the training settings' own refusals
        # (a synthetic set size, say) would hide that the experiment takes none
        if self.train.data not in SYNTHETIC_SOURCES:
            raise ConfigError("data", f"the experiment's protocol builds five disjoint splits of the synthetic data "
                                      f"({', '.join(SYNTHETIC_SOURCES)}), not {self.train.data!r}; train and explain "
                                      f"other data with the train and explain commands")
        self.train.validate()
        check_settings(self)
        _check_experiment(self)
        return self

    def to_dict(self) -> dict:
        settings = {**variant_settings(ModelConfig), **variant_settings(ExperimentConfig)}
        return {**to_plain(self), "train": self.train.to_dict(),
                "grid": {n: [settings[n].kind.plain(v) for v in vs] for n, vs in self.grid.items()}}


QUICK = ExperimentConfig(seeds=(0, 1), train=TrainConfig.build(image_size=64, width=8, n_train=512, n_val=128,
                                                               difficulty=0.3, epochs=4, lr=3e-3, data_seed=0),
                         n_explain=8, n_dev=96, n_test=96, n_sanity=4, validity_images=96, dev_seeds=(0,), grid={})
FULL = ExperimentConfig(train=TrainConfig.build(width=16, epochs=12, lr=2e-3, data_seed=0),
                        grid={"temperature": ((1.0,), (0.3,)), "alpha": (10.0, 1.0), "head": ("bounded", "learned"),
                              "upsampling": UPSAMPLINGS})
