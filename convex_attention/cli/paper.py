"""Subcommands of the paper's experiment: ``train``, ``explain`` and ``experiment``.

The options of ``train`` and ``experiment`` are the fields of the configuration chain
(``ModelConfig`` ⊂ ``TrainConfig`` ⊂ ``ExperimentConfig``): their defaults are read from
the dataclasses, their values are checked by the configs' ``validate()`` (an invalid one
is a usage error naming the option), and only the options given on the command line
override a base configuration (the defaults, an experiment preset, or the configuration
stored in the checkpoint that ``train --resume`` continues).  Every check runs before
any work: a bad option, an unusable ``--out``, a missing device, a corrupt, foreign or
mismatched checkpoint, or unreadable data is one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ._common import UsageError, add_output_options, info, positive_int, show_progress

__all__ = ["add_experiment_commands", "EXPERIMENT_HANDLERS"]


class _Default:
    """An option's default as argparse keeps it when the option is not given: it shows the
    value in ``--help`` and tells "not given" apart from "given the default value"."""

    def __init__(self, value, shown: str | None = None):
        self.value, self.shown = value, shown

    def __str__(self) -> str:
        if self.shown is not None:
            return self.shown
        if isinstance(self.value, (list, tuple)):
            return " ".join(map(str, self.value))
        return str(self.value)

    __repr__ = __str__


def _given(args, dests) -> dict:
    """``{dest: value}`` of the options among ``dests`` given on the command line."""
    return {d: getattr(args, d) for d in dests if not isinstance(getattr(args, d, None), _Default)}


# option dest -> configuration field, where the names differ (the value may need a conversion)
_TRAIN_FIELDS = {"channels": "in_channels", "no_augment": "augment", "no_bn_recompute": "recompute_bn"}
_NEGATED = {"no_augment", "no_bn_recompute"}
_TRAIN_DESTS = ("method", "data", "data_root", "image_size", "channels", "n_train", "n_val", "difficulty",
                "data_seed", "width", "attention_blocks", "temperature", "alpha", "norm", "head", "learn_temperature",
                "duals", "epochs", "batch_size", "lr", "weight_decay", "no_augment", "no_bn_recompute", "seed",
                "workers", "device", "out")


def _train_fields(given: dict) -> dict:
    out = {}
    for dest, value in given.items():
        field = _TRAIN_FIELDS.get(dest, dest)
        out[field] = (not value) if dest in _NEGATED else value
    if "attention_blocks" in out:
        out["attention_blocks"] = tuple(out["attention_blocks"])
    return out


def _flag(parser: argparse.ArgumentParser, field: str) -> str | None:
    """The option that sets configuration field ``field`` (``None`` if none does)."""
    inverse = {v: k for k, v in _TRAIN_FIELDS.items()}
    dest = inverse.get(field, field)
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[-1]
    return None


def _config_error(parser, err: ValueError) -> UsageError:
    flag = _flag(parser, getattr(err, "field", "")) if parser is not None else None
    return UsageError(f"argument {flag}: {err}" if flag else str(err))


def add_experiment_commands(sub) -> None:
    from ..methods import REGISTRY
    from ..paper.data import DATA_SOURCES
    from ..paper.data.synthetic import MIMIC_TYPES
    from ..paper.experiment import FULL, QUICK
    from ..paper.explain_metrics import UPSAMPLINGS
    from ..paper.models.unet import DUAL_SOURCES, HEADS, NORMS
    from ..paper.protocol import DEFAULT_VARIANTS_PATH, SYNTHETIC_SOURCES
    from ..paper.train import TrainConfig

    fmt = argparse.ArgumentDefaultsHelpFormatter
    d = TrainConfig()
    m = d.model
    t = sub.add_parser(
        "train", help="train the attention CNN on weakly annotated images (labels only)", formatter_class=fmt,
        description="Adam + cross-entropy (+ alpha * consistency_loss for learned_dual), flips and small affine "
                    "augmentation, BatchNorm statistics recomputed after every epoch. Writes OUT/metrics.csv (loss, "
                    "accuracy, balanced accuracy, ROC AUC, the threshold chosen on validation, attention violation "
                    "on validation), OUT/best.pt (by validation AUC), OUT/last.pt and OUT/config.json. A checkpoint "
                    "stores the whole configuration: '--resume OUT/last.pt' alone continues the run; options given "
                    "with it override the stored ones (the architecture cannot change). Runs unchanged under "
                    "torchrun (DistributedDataParallel; gloo on CPU, nccl on GPU).")
    _D = _Default
    t.add_argument("--method", default=_D(m.method), choices=list(REGISTRY),
                   help="how the attention levels are made consistent (the method registry)")
    t.add_argument("--data", default=_D(d.data), choices=list(DATA_SOURCES),
                   help="synthetic: rim lesions among mimics (offline, the default); synthetic-blobs: the previous "
                        "generator; synthetic-brightest: one lesion per image, label 1 when it is the brightest "
                        "structure; brats: BraTS 2018 (--data-root); folder: your images (--data-root)")
    t.add_argument("--data-root", default=_D(d.data_root), help="the data folder (brats, folder)")
    t.add_argument("--image-size", type=int, default=_D(m.image_size),
                   help="image side in pixels, a multiple of 16 (the paper: 256 for BraTS)")
    t.add_argument("--channels", type=int, default=_D(m.in_channels), help="input channels (modalities)")
    t.add_argument("--n-train", type=int, default=_D(d.n_train), help="synthetic training images")
    t.add_argument("--n-val", type=int, default=_D(d.n_val), help="synthetic validation images")
    t.add_argument("--difficulty", type=float, default=_D(d.difficulty), help="synthetic difficulty in [0, 1]")
    t.add_argument("--data-seed", type=int, default=_D(d.data_seed, "the --seed"),
                   help="seed of the synthetic images / the BraTS split")
    t.add_argument("--width", type=int, default=_D(m.width), help="channels of the first block (32 in the paper)")
    t.add_argument("--attention-blocks", type=int, nargs="+", default=_D(m.attention_blocks),
                   help="2 or 3 consecutive blocks (1-4, 5 = bottleneck)")
    t.add_argument("--temperature", type=float, default=_D(m.temperature),
                   help="attention temperature tau > 0 (every level)")
    t.add_argument("--alpha", type=float, default=_D(m.alpha),
                   help="weight of the consistency loss (learned_dual), >= 0")
    t.add_argument("--norm", default=_D(m.norm), choices=list(NORMS),
                   help="BatchNorm (the paper) or GroupNorm (no batch statistics)")
    t.add_argument("--head", default=_D(m.head), choices=list(HEADS),
                   help="score head: the paper's bounded head, or one with a learnable gain that can sharpen maps")
    t.add_argument("--learn-temperature", action="store_true", default=_D(m.learn_temperature),
                   help="learn one log-temperature shared by the levels (softmax, exact, learned_dual)")
    t.add_argument("--duals", default=_D(m.duals), choices=list(DUAL_SOURCES),
                   help="dual source of learned_dual: the paper's shared learned duals, or amortised per sample")
    t.add_argument("--epochs", type=int, default=_D(d.epochs), help="epochs in all (a resumed run counts the "
                                                                     "epochs already done)")
    t.add_argument("--batch-size", type=int, default=_D(d.batch_size), help="images per step")
    t.add_argument("--lr", type=float, default=_D(d.lr), help="Adam learning rate")
    t.add_argument("--weight-decay", type=float, default=_D(d.weight_decay), help="Adam weight decay, >= 0")
    t.add_argument("--no-augment", action="store_true", default=_D(not d.augment),
                   help="no flips and affine augmentation")
    t.add_argument("--no-bn-recompute", action="store_true", default=_D(not d.recompute_bn),
                   help="keep BatchNorm's running averages instead of recomputing the statistics after each epoch")
    t.add_argument("--seed", type=int, default=_D(d.seed), help="seed of the initialisation, batches, augmentation")
    t.add_argument("--workers", type=int, default=_D(d.workers), help="data loader workers")
    t.add_argument("--device", default=_D(d.device), help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--resume", default=None,
                   help="checkpoint to continue from (e.g. OUT/last.pt); its settings are the defaults")
    t.add_argument("--out", default=_D(d.out, f"{d.out} (with --resume: the checkpoint's folder)"),
                   help="output folder")
    add_output_options(t)

    e = sub.add_parser(
        "explain", help="score attention maps and post-hoc explanations against lesion masks", formatter_class=fmt,
        description="On validation images with a lesion: each model's attention maps at every level, and on the "
                    "models named by --baseline-model (default: every model) GradCAM (at each attention level's "
                    "resolution), DeepLIFT, LRP, Input x Gradient and Integrated Gradients. Plain-CNN checkpoints "
                    "(baselines/plain_cnn.py) are recognised. Maps are scored under the pixel protocol (coarse maps "
                    "upsampled as --upsampling says) and the authors' pooled protocol at every attention grid: ap, "
                    "qiou@0.9/0.95/0.975 (ties included), qiou_strict@... (the authors' strict '>' against "
                    "np.quantile), pointing, pointing_tol (within 15 px at 240x240, scaled), mass; mean with the 95 % "
                    "confidence interval over images. Every checkpoint must have been trained on the same data (the "
                    "data are rebuilt from the configuration the checkpoints store). Writes explain.csv, "
                    "explain_summary.csv, explain.md and explain_examples.png.")
    e.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=PATH",
                   help="models to explain, each under a distinct NAME, e.g. softmax=runs/softmax/best.pt "
                        "exact=runs/exact/best.pt")
    e.add_argument("--baseline-model", nargs="+", default=None, metavar="NAME",
                   help="the NAMEs whose models the post-hoc methods explain, or 'none' (default: every model)")
    e.add_argument("--target", default="true", choices=["true", "predicted"],
                   help="class explained by the post-hoc methods: the true class (1, lesion) or the prediction")
    e.add_argument("--n-images", type=positive_int, default=64,
                   help="the first N validation images with a lesion are explained")
    e.add_argument("--upsampling", default="nearest", choices=list(UPSAMPLINGS),
                   help="how the pixel protocol brings coarse maps to the image")
    e.add_argument("--pixel-only", action="store_true", help="score under the pixel protocol only (not the pooled)")
    e.add_argument("--batch-size", type=positive_int, default=16, help="images per batch")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    e.add_argument("--out", default="results/explain", help="output folder")
    add_output_options(e)

    x = sub.add_parser(
        "experiment", help="the paper's experiment under a protocol that cannot be tuned to (--stage dev|test)",
        formatter_class=fmt,
        description="Stage 'dev' (may be repeated): trains every candidate variant (--grid-*) of the attention "
                    "models on the training split, selects checkpoints on a label-only validation split, scores the "
                    "attention maps on the development split (with masks), runs the validity checks there (check (c) "
                    "against a plain CNN trained with the same dev seeds) and proposes the best variant, with the "
                    "benchmark's verdict, in OUT/dev/proposed_variants.json. Stage 'test' (touched once): reads the "
                    "committed variants file (--variants; refused unless git tracks it without changes, and refused "
                    "if the dev stage rejected the benchmark unless --allow-rejected-benchmark), trains the attention models "
                    "and a plain CNN with every seed at every difficulty the file fixes, and reports on the test "
                    "split and on a held-out mimic type: the validity checks, accuracy at the validation threshold, "
                    "map statistics, every explanation of every model (attention maps, GradCAM, DeepLIFT, LRP, "
                    "Input x Gradient, Integrated Gradients) under the pixel and the pooled protocol, reference maps, "
                    "the map ablation and the model-randomisation check, as mean with a 95 % confidence interval over "
                    "seeds (OUT/test/experiment.md, .json, .csv). OUT/test is written once (--force replaces it). "
                    "Defaults: the full setting; --quick: the smoke-test preset (shown after '/').")
    q, f = QUICK, FULL

    def both(get):
        return _Default(get(f), f"{_Default(get(f))} / --quick: {_Default(get(q))}")

    x.add_argument("--stage", default="dev", choices=["dev", "test"],
                   help="dev: compare variants on the development split; test: the final run on the test split")
    x.add_argument("--variants", default=DEFAULT_VARIANTS_PATH,
                   help="the committed variants file the test stage reads")
    x.add_argument("--variants-sha256", default=None, metavar="HEX",
                   help="test stage without a git checkout (e.g. a copy of the working tree on another machine): the "
                        "SHA-256 of the committed variants file, which the file must match")
    x.add_argument("--force", action="store_true", help="test stage: replace an existing OUT/test")
    x.add_argument("--allow-rejected-benchmark", action="store_true",
                   help="test stage: run although the dev stage did not accept the benchmark (a validity check "
                        "failed or did not run on the development split, check (c) included, or the variants file "
                        "records no verdict); the report says so. Without it such a file is refused before any work")
    x.add_argument("--quick", action="store_true",
                   help="small images and few epochs: a smoke test of the whole pipeline")
    x.add_argument("--methods", nargs="+", choices=list(REGISTRY), default=both(lambda c: c.methods),
                   help="attention methods (every one gets the same variant)")
    x.add_argument("--seeds", type=int, nargs="+", default=both(lambda c: c.seeds), help="training seeds (test stage)")
    x.add_argument("--dev-seeds", type=int, nargs="+", default=both(lambda c: c.dev_seeds),
                   help="training seeds of the dev stage")
    x.add_argument("--epochs", type=int, default=both(lambda c: c.train.epochs), help="epochs per model")
    x.add_argument("--image-size", type=int, default=both(lambda c: c.train.model.image_size),
                   help="image side in pixels, a multiple of 16")
    x.add_argument("--width", type=int, default=both(lambda c: c.train.model.width),
                   help="channels of the first block")
    x.add_argument("--n-train", type=int, default=both(lambda c: c.train.n_train), help="training images")
    x.add_argument("--n-val", type=int, default=both(lambda c: c.train.n_val),
                   help="label-only validation images (checkpoint selection, threshold)")
    x.add_argument("--n-dev", type=int, default=both(lambda c: c.n_dev), help="development images")
    x.add_argument("--n-test", type=int, default=both(lambda c: c.n_test), help="test images per test set")
    x.add_argument("--batch-size", type=int, default=both(lambda c: c.train.batch_size), help="images per step")
    x.add_argument("--n-explain", type=int, default=both(lambda c: c.n_explain),
                   help="the first N lesion images of the test (dev) split are explained")
    x.add_argument("--n-sanity", type=int, default=both(lambda c: c.n_sanity),
                   help="images of the model-randomisation check (the first of the explained ones)")
    x.add_argument("--validity-images", type=int, default=both(lambda c: c.validity_images),
                   help="images per set given to the benchmark's validity checks")
    x.add_argument("--difficulties", type=float, nargs="+", default=both(lambda c: c.difficulties),
                   help="dev stage: the difficulties (the first is the development one; the test stage reads them "
                        "from the variants file)")
    x.add_argument("--data", choices=list(SYNTHETIC_SOURCES), default=both(lambda c: c.train.data),
                   help="the synthetic data: synthetic (rim lesions among mimics), synthetic-blobs (the previous "
                        "generator) or synthetic-brightest (one lesion per image, label 1 when it is the brightest "
                        "structure); the test stage refuses data other than its dev-stage verdict judged")
    x.add_argument("--held-out-mimic", choices=list(MIMIC_TYPES) + ["none"],
                   default=both(lambda c: c.held_out_mimic),
                   help="dev stage: the mimic type kept out of training and development (the test stage reads it "
                        "from the variants file)")
    x.add_argument("--grid-temperature", type=float, nargs="+", default=both(lambda c: c.grid_temperature),
                   help="dev stage: candidate temperatures tau")
    x.add_argument("--grid-alpha", type=float, nargs="+", default=both(lambda c: c.grid_alpha),
                   help="dev stage: candidate consistency-loss weights (learned_dual)")
    x.add_argument("--grid-head", nargs="+", choices=list(HEADS), default=both(lambda c: c.grid_head),
                   help="dev stage: candidate score heads")
    x.add_argument("--grid-learn-temperature", nargs="+", choices=["off", "on"],
                   default=both(lambda c: tuple("on" if v else "off" for v in c.grid_learn_temperature)),
                   help="dev stage: fixed and/or learned temperature")
    x.add_argument("--grid-duals", nargs="+", choices=list(DUAL_SOURCES), default=both(lambda c: c.grid_duals),
                   help="dev stage: candidate dual sources of learned_dual")
    x.add_argument("--grid-upsampling", nargs="+", choices=list(UPSAMPLINGS),
                   default=both(lambda c: c.grid_upsampling), help="dev stage: candidate upsamplings")
    x.add_argument("--device", default=both(lambda c: c.train.device), help="auto, cpu, cuda, cuda:N or mps")
    x.add_argument("--out", default="results/experiment", help="output folder (the stages write OUT/dev, OUT/test)")
    add_output_options(x)


def _subparser(name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` alone (to name options in error messages)."""
    sub = argparse.ArgumentParser(prog="convex-attention").add_subparsers(dest="command")
    add_experiment_commands(sub)
    return sub.choices[name]


def _check_out(path: str) -> None:
    from ..bench.results import check_out_dir

    try:
        check_out_dir(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def train_config_from_args(args):
    """The :class:`TrainConfig` the ``train`` options ask for, and the checkpoint state it
    resumes from (or ``None``), validated; UsageError for anything wrong."""
    from dataclasses import replace

    from ..paper.models import ConfigError, ModelConfig, read_checkpoint
    from ..paper.train import TrainConfig, stored_train_config

    parser = _subparser("train")
    given = _train_fields(_given(args, _TRAIN_DESTS))
    state = None
    try:
        if args.resume:
            try:
                state = read_checkpoint(args.resume)
                base = stored_train_config(args.resume, state)
            except ValueError as err:
                raise UsageError(f"argument --resume: {err}") from None
            if base is None:  # a checkpoint saved outside training: its model, the other defaults
                base = TrainConfig(model=ModelConfig.from_dict(state["config"]))
            stored = base.model.architecture()
            for field, value in given.items():
                if field in stored and value != stored[field]:
                    raise UsageError(f"argument {_flag(parser, field)}: {value!r} differs from the checkpoint's "
                                     f"{field} {stored[field]!r}; a resumed run keeps its architecture (drop the "
                                     f"option, or train a new model into another --out)")
            given.setdefault("out", os.path.dirname(os.path.abspath(args.resume)))
        else:
            base = TrainConfig()
        config = replace(base.override(**given), resume=args.resume, progress=show_progress(args))
        config.validate()
    except ConfigError as err:
        raise _config_error(parser, err) from None
    if state is not None:
        from ..paper.train import check_resume

        try:
            check_resume(config, state)
        except ValueError as err:
            raise UsageError(f"argument --resume: {err}") from None
    return config, state


def cmd_train(args) -> int:
    from ..paper.train import TrainingDiverged, build_checked_datasets, train

    config, _ = train_config_from_args(args)
    _check_out(config.out)
    try:
        datasets = build_checked_datasets(config)
    except ValueError as err:
        raise UsageError(f"the data: {err}") from None
    try:
        result = train(config, datasets=datasets, log=lambda *m, **_: info(args, *m))
    except TrainingDiverged as err:
        print(f"convex-attention train: error: {err}", file=sys.stderr)
        return 1
    if result["metrics"]:
        last = result["metrics"][-1]
        info(args, f"train: {config.out}/metrics.csv, best.pt (epoch {result['best_epoch']}), last.pt (last val "
                   f"auc {last['val_auc']:.3f}, balanced acc {last['val_balanced_acc']:.3f})")
    return 0


def _usage(message: str):
    return UsageError(message)


def cmd_explain(args) -> int:
    from baselines.plain_cnn import load_any_model

    from ..paper.data import build_datasets
    from ..paper.explain import explain_models, lesion_indices, write_outputs
    from ..paper.models import ConfigError
    from ..paper.train import check_device, stored_train_config

    try:
        device = check_device(args.device)
    except ConfigError as err:
        raise UsageError(f"argument --device: {err}") from None
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    specs = []
    for spec in args.checkpoints:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise _usage(f"argument --checkpoints: takes NAME=PATH, got {spec!r}")
        if name in [n for n, _ in specs]:
            raise _usage(f"argument --checkpoints: the name {name!r} is given twice; give every model its own "
                         f"name (e.g. {name}=A {name}-2=B)")
        specs.append((name, path))
    names = [n for n, _ in specs]
    baseline = args.baseline_model
    if baseline is None:
        baseline = list(names)  # every model, by every post-hoc method
    elif baseline == ["none"]:
        baseline = None
    else:
        for b in baseline:
            if b not in names:
                raise _usage(f"argument --baseline-model: {b!r} is not among the --checkpoints names "
                             f"({', '.join(names)}); name models given there, or 'none'")
    _check_out(args.out)
    models, data, first = {}, None, None
    for name, path in specs:
        try:
            models[name], state = load_any_model(path)
            config = stored_train_config(path, state)
        except (ValueError, TypeError) as err:
            raise _usage(f"argument --checkpoints: {name}={path}: {err}") from None
        if config is None:
            raise _usage(f"argument --checkpoints: {name}={path}: the checkpoint stores no training configuration "
                         f"and no config.json lies beside it, so its data cannot be rebuilt")
        if first is None:
            first, data = (name, path), config
            continue
        mine, theirs = config.data_config(), data.data_config()
        diff = [f"{k} {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
        if diff:
            raise _usage(f"argument --checkpoints: {name}={path} was trained on other data than {first[0]}="
                         f"{first[1]} ({', '.join(diff)}); explain the models of one dataset at a time")
    try:
        _, val = build_datasets(data.data, data.data_root, data.model.image_size, data.model.in_channels,
                                data.n_train, data.n_val, data.difficulty,
                                data.seed if data.data_seed is None else data.data_seed)
        indices = lesion_indices(val, args.n_images)
    except ValueError as err:
        raise _usage(f"the data of {first[0]}={first[1]}: {err}") from None
    rows, examples = explain_models(models, val, n_images=args.n_images, baseline_model=baseline,
                                    target=args.target, batch_size=args.batch_size, device=device,
                                    progress=show_progress(args), indices=indices, upsampling=args.upsampling,
                                    pooled=not args.pixel_only)
    paths = write_outputs(rows, examples, args.out)
    with open(paths["markdown"]) as f:
        info(args, f.read())
    info(args, "explain: " + ", ".join(paths.values()))
    return 0


_EXPERIMENT_DESTS = ("data", "methods", "seeds", "dev_seeds", "epochs", "image_size", "width", "n_train", "n_val", "n_dev",
                     "n_test", "batch_size", "n_explain", "n_sanity", "validity_images", "difficulties",
                     "held_out_mimic", "grid_temperature", "grid_alpha", "grid_head", "grid_learn_temperature",
                     "grid_duals", "grid_upsampling", "device")
# fixed by the variants file in the test stage
_FIXED_BY_VARIANTS = ("difficulties", "held_out_mimic", "grid_temperature", "grid_alpha", "grid_head",
                      "grid_learn_temperature", "grid_duals", "grid_upsampling")


def experiment_config_from_args(args):
    """The :class:`ExperimentConfig` the ``experiment`` options ask for (the full setting or
    ``--quick``, with the options given), validated; UsageError for anything wrong."""
    from ..paper.experiment import FULL, QUICK
    from ..paper.models import ConfigError

    given = _given(args, _EXPERIMENT_DESTS)
    parser = _subparser("experiment")
    if getattr(args, "stage", "dev") == "test":
        fixed = [d for d in _FIXED_BY_VARIANTS if d in given]
        if fixed:
            raise UsageError(f"argument {_flag(parser, fixed[0])}: the test stage takes the variant, the difficulties "
                             f"and the held-out mimic type from the committed variants file (--variants), never from "
                             f"the command line")
    for name in ("methods", "seeds", "dev_seeds", "difficulties", "grid_temperature", "grid_alpha", "grid_head",
                 "grid_duals", "grid_upsampling"):
        if name in given:
            given[name] = tuple(given[name])
    if "grid_learn_temperature" in given:
        given["grid_learn_temperature"] = tuple(v == "on" for v in given["grid_learn_temperature"])
    if given.get("held_out_mimic") == "none":
        given["held_out_mimic"] = None
    try:
        config = (QUICK if args.quick else FULL).override(**given)
        config.validate()
    except ConfigError as err:
        raise _config_error(parser, err) from None
    return config


def _experiment_preflight(args, config) -> None:
    """Everything the stage refuses, checked before any work (UsageError)."""
    from ..paper.protocol import (
        TestFolderExists,
        VariantsError,
        check_benchmark_verdict,
        check_test_folder,
        read_variants,
        verify_variants,
    )

    if args.stage != "test":
        if args.force:
            raise UsageError("argument --force: only the test stage writes its results once; dev runs may be "
                             "repeated without it")
        if args.variants_sha256 is not None:
            raise UsageError("argument --variants-sha256: only the test stage reads the variants file")
        if args.allow_rejected_benchmark:
            raise UsageError("argument --allow-rejected-benchmark: only the test stage reads the dev stage's verdict; "
                             "the dev stage records it")
        _check_out(args.out)
        return
    try:
        variants = read_variants(args.variants).validate(config.methods, where=args.variants)
        verify_variants(args.variants, args.variants_sha256)
        check_benchmark_verdict(variants, args.allow_rejected_benchmark, where=args.variants, data=config.train.data)
    except VariantsError as err:
        raise UsageError(f"argument --variants: {err}") from None
    try:
        check_test_folder(os.path.join(args.out, "test"), args.force)
    except TestFolderExists as err:
        raise UsageError(f"argument --out: {err}") from None
    _check_out(args.out)


def cmd_experiment(args) -> int:
    from ..paper.experiment import run_experiment
    from ..paper.protocol import TestFolderExists, VariantsError

    config = experiment_config_from_args(args)
    _experiment_preflight(args, config)
    try:
        result = run_experiment(config, args.out, progress=show_progress(args), log=lambda *m, **_: info(args, *m),
                                stage=args.stage, variants_path=args.variants, force=args.force,
                                variants_sha256=args.variants_sha256,
                                allow_rejected_benchmark=args.allow_rejected_benchmark)
    except (VariantsError, TestFolderExists) as err:
        raise UsageError(str(err)) from None
    info(args, result["report"])
    name = "dev.md" if args.stage == "dev" else "experiment.md"
    info(args, f"experiment: {os.path.join(args.out, args.stage, name)}")
    return 0


EXPERIMENT_HANDLERS = {"train": cmd_train, "explain": cmd_explain, "experiment": cmd_experiment}
