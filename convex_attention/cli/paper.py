"""Subcommands of the paper's experiment: ``train``, ``explain`` and ``experiment``.

The options of ``train`` and ``experiment`` are the settings declared in
:mod:`convex_attention.paper.config` (``ModelConfig`` ⊂ ``TrainConfig`` ⊂
``ExperimentConfig``): each option's type, range, choices, default and help come from its
declaration (:func:`convex_attention.io.settings.add_options`), the experiment's
``--grid-<name>`` options from the variant's settings, and only the options given on the
command line override a base configuration (the defaults, an experiment preset, or the
configuration stored in the checkpoint that ``train --resume`` continues).  Every check
runs before any work: a bad option, an unusable ``--out``, a missing device, a corrupt,
foreign or mismatched checkpoint, or unreadable data is one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace

from ..io.settings import (
    ConfigError,
    Int,
    add_grid_options,
    add_options,
    declared,
    given_grid,
    given_settings,
    int_in,
    show_value,
    variant_settings,
)
from ..paper.config import (
    DATA_SEED_MAX,
    DATA_SOURCE_HELP,
    DEFAULT_VARIANTS_PATH,
    EXPLAIN_BATCH_SIZE,
    EXPLAINED_IMAGES,
    FULL,
    QUICK,
    SYNTHETIC_SOURCES,
    UPSAMPLINGS,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
)
from ._common import (
    CommandParser,
    UsageError,
    add_output_options,
    add_wait_option,
    check_files,
    check_no_earlier,
    check_out,
    check_out_leaving_nothing,
    holding_out,
    info,
    show_progress,
)

__all__ = ["add_experiment_commands", "EXPERIMENT_HANDLERS", "TRAIN_OPTIONS", "EXPERIMENT_OPTIONS", "RUN_FILES",
           "check_run_folder", "check_resume_folder", "train_interrupted"]

# The settings each command offers, as (configuration class, names): the names default to
# every setting the class declares for the command line (flag not "").
TRAIN_OPTIONS = ((ModelConfig, None), (TrainConfig, None))
# the experiment's own settings, and the training settings it lets the user change
EXPERIMENT_OPTIONS = ((ExperimentConfig, None),
                      (TrainConfig, ("data", "data_seed", "epochs", "n_train", "n_val", "batch_size", "device")),
                      (ModelConfig, ("image_size", "width")))
#: The files a training run writes into its --out (train.py): a folder that holds one of
#: them holds an earlier run.  --overwrite removes all but config.json (rewritten when the
#: new run starts); ddp_check.json (a torchrun run's weight digests, written at its end)
#: describes weights a new or resumed run replaces, and an earlier one was left claiming
#: identical ranks beside a one-process run's files (ca_rev117).
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "config.json", "ddp_check.json")
#: What an experiment writes, in its folder and the stages' (and the runs' RUN_FILES): the temporaries
#: a killed experiment left of them are removed when the next one starts (EXPERIMENT_NAMED too).
EXPERIMENT_FILES = RUN_FILES + (
    "ablation_summary.csv", "accuracy_differences.csv", "accuracy_summary.csv", "dev.json", "dev.md",
    "dev_levels.csv", "dev_runs.csv", "dev_summary.csv", "experiment.json", "experiment.md",
    "experiment_config.json", "explain_per_seed.csv", "explain_summary.csv", "proposed_variants.json",
    "randomisation.csv", "randomisation_summary.csv", "runs.csv", "test_stage.json")
#: The experiment's files named per condition (explain rows, example and AP figures), as patterns.
EXPERIMENT_NAMED = (r"explain-[A-Za-z0-9_.-]+\.csv", r"explain_examples_[A-Za-z0-9_.-]+\.(?:png|pdf)",
                    r"explain_ap_[A-Za-z0-9_.-]+\.(?:png|pdf)")  # (a condition holds a '.': difficulty0.3)
#: What a resumed run removes when it starts: the digests of the weights it goes on from.
_STALE_ON_RESUME = ("ddp_check.json",)
# the experiment's protocol splits synthetic data only (ExperimentConfig refuses the rest)
_EXPERIMENT_HELPS = {"data": "; ".join(f"{k}: {DATA_SOURCE_HELP[k]}" for k in SYNTHETIC_SOURCES)
                     + " (train and explain take brats and folder too)",
                     # train's texts speak of its --resume and of BraTS, which experiment has not
                     "epochs": "epochs each model is trained for",
                     "data_seed": "seed of the synthetic images of the dev stage's splits (the test stage needs one "
                                  "that no recorded run used; each owns one block of generator seeds)"}
# what the test stage takes from the variants file, never from the command line
_FIXED_BY_VARIANTS = ("difficulties", "held_out_mimic")


def _variant_settings() -> dict:
    return {**variant_settings(ModelConfig), **variant_settings(ExperimentConfig)}


def _options_of(table) -> list[tuple[type, list[str]]]:
    out = []
    for cls, names in table:
        settings = declared(cls)
        out.append((cls, [n for n in (names or settings) if settings[n].flag != ""]))
    return out


def _flag(parser: argparse.ArgumentParser, field: str) -> str | None:
    """The option that sets configuration field ``field`` (``None`` if none does)."""
    dest = "in_channels" if field == "channels" else field
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[-1]
    return None


def _config_error(parser, err: ValueError) -> UsageError:
    flag = _flag(parser, getattr(err, "field", "")) if parser is not None else None
    return UsageError(f"argument {flag}: {err}" if flag else str(err))


def _given(args, table) -> dict:
    given: dict = {}
    for cls, names in _options_of(table):
        given.update(given_settings(args, cls, names))
    return given


# ----------------------------------------------------------------------------- the parsers

#: Each subcommand's examples, at the end of its --help (tests/test_cli_conventions.py parses them).
SUBCOMMAND_EXAMPLES = {
    "train": (
        "convex-attention train --method exact --epochs 10 --out runs/exact     # the attention CNN, exact maps",
        "convex-attention train --method learned_dual --alpha 0.1 --out runs/ld   # the paper's loss, weighted 0.1",
        "convex-attention train --resume runs/exact/last.pt --epochs 20 --out runs/exact  # continue a run",
        "torchrun --nproc_per_node 2 -m convex_attention.cli train --method exact --out runs/exact2  # two processes",
    ),
    "explain": (
        "convex-attention explain --checkpoints softmax=runs/softmax/best.pt exact=runs/exact/best.pt "
        "--out runs/explain",
    ),
    "experiment": (
        "convex-attention experiment --quick                            # a smoke test of the dev stage (1 seed)",
        "convex-attention experiment --stage dev --out results/experiment   # choose the variants on the dev split",
        "convex-attention experiment --stage test --data-seed 1 --out results/experiment  # once, after committing "
        "the variants (a data seed the dev stage did not use)",
    ),
}


def add_experiment_commands(sub) -> None:
    _add_train(sub)
    _add_explain(sub)
    _add_experiment(sub)


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train", examples=SUBCOMMAND_EXAMPLES["train"],
        help="train the attention CNN on weakly annotated images (labels only)",
        description="Adam + cross-entropy (+ alpha * consistency_loss for learned_dual), flips and small affine "
                    "augmentation, BatchNorm statistics recomputed after every epoch. Writes OUT/metrics.csv (loss, "
                    "accuracy, balanced accuracy, ROC AUC, the threshold chosen on validation, attention violation "
                    "on validation), OUT/best.pt (by validation AUC), OUT/last.pt and OUT/config.json. A checkpoint "
                    "stores the whole configuration: '--resume OUT/last.pt' alone continues the run; options given "
                    "with it override the stored ones (neither the architecture nor the validation data can "
                    "change). Runs unchanged under torchrun (DistributedDataParallel; gloo on CPU, nccl on GPU).")
    base = TrainConfig()
    shown = {"out": f"{base.out} (with --resume: the checkpoint's folder)"}
    for cls, names in _options_of(TRAIN_OPTIONS):
        add_options(t, cls, base=base.model if cls is ModelConfig else base, names=names, shown=shown)
    t.add_argument("--resume", default=None, metavar="FILE",
                   help="checkpoint to continue from (e.g. OUT/last.pt); its settings are the defaults; one older "
                        "than its folder's last finished epoch (e.g. OUT/best.pt) is refused there, as continuing it "
                        "would replace the later epochs: give it another --out (default: none, a new run)")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds an earlier run's files (" + ", ".join(RUN_FILES)
                        + "), replacing them; without it (or --resume OUT/last.pt) such a folder is refused "
                          "(exit 2), so a trained model is never replaced without a word")
    add_wait_option(t)
    add_output_options(t)


def _add_explain(sub) -> None:
    e = sub.add_parser(
        "explain", examples=SUBCOMMAND_EXAMPLES["explain"],
        help="score attention maps and post-hoc explanations against lesion masks",
        description="On validation images with a lesion: each model's attention maps at every level, and on the "
                    "models named by --baseline-model (default: every model) GradCAM (at each attention level's "
                    "resolution), DeepLIFT, LRP, Input x Gradient and Integrated Gradients. Plain-CNN checkpoints "
                    "(convex_attention/paper/models/plain_cnn.py) are recognised. Maps are scored under the pixel "
                    "protocol (coarse maps upsampled as --upsampling says) and the authors' pooled protocol at every "
                    "attention grid: ap, qiou@0.9/0.95/0.975 (ties included), qiou_strict@... (the authors' strict "
                    "'>' against np.quantile), pointing, pointing_tol (within 15 px at 240x240, scaled), mass; mean "
                    "with the 95 % confidence interval over images. Every checkpoint must have been trained on the "
                    "same data (the data are rebuilt from the configuration the checkpoints store). Writes "
                    "explain.csv, explain_summary.csv, explain.md and explain_examples.png.")
    e.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=PATH",
                   help="models to explain, each under a distinct NAME, e.g. softmax=runs/softmax/best.pt "
                        "exact=runs/exact/best.pt")
    e.add_argument("--baseline-model", nargs="+", default=None, metavar="NAME",
                   help="the NAMEs whose models the post-hoc methods explain, or 'none' (default: every model)")
    e.add_argument("--target", default="true", choices=["true", "predicted"],
                   help="class explained by the post-hoc methods: each image's true class (1, lesion: the "
                        "images explained hold a lesion) or the prediction (default: true)")
    explained = declared(ExperimentConfig)["n_explain"].kind  # the experiment's setting of the same images
    assert isinstance(explained, Int) and explained.low is not None and explained.high is not None
    e.add_argument("--n-images", type=int_in(explained.low, explained.high, "n_images"), default=EXPLAINED_IMAGES,
                   metavar="N", help=f"the first N validation images with a lesion are explained; "
                                     f"{explained.describe()} (default: {EXPLAINED_IMAGES})")
    e.add_argument("--upsampling", default="nearest", choices=list(UPSAMPLINGS),
                   help="how the pixel protocol brings coarse maps to the image (default: nearest)")
    e.add_argument("--pixel-only", action="store_true", help="score under the pixel protocol only (not the pooled)")
    e.add_argument("--batch-size", type=int_in(1, 100_000, "batch_size"), default=EXPLAIN_BATCH_SIZE, metavar="N",
                   help=f"images per batch; an integer from 1 to 100000 (default: {EXPLAIN_BATCH_SIZE})")
    # the device train and the experiment default to (the experiment explains on it too)
    e.add_argument("--device", default=TrainConfig.device, metavar="TEXT",
                   help=f"auto (CUDA where there is one, else the CPU, as train), cpu, cuda, cuda:N or mps "
                        f"(default: {TrainConfig.device})")
    e.add_argument("--out", default="results/explain", help="output folder (default: results/explain)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an earlier explanation's files in --out (explain.csv, explain_summary.csv, "
                        "explain.md, explain_examples.png/.pdf); without it such a folder is refused (exit 2)")
    add_wait_option(e)
    add_output_options(e)


def _add_experiment(sub) -> None:
    x = sub.add_parser(
        "experiment", examples=SUBCOMMAND_EXAMPLES["experiment"],
        help="the paper's experiment under a protocol that cannot be tuned to (--stage dev|test)",
        description="Stage 'dev' (may be repeated, each into its own --out): trains every candidate variant "
                    "(--grid-*) of the attention models on the training split, selects checkpoints on a label-only "
                    "validation split, scores the attention maps per level on the development split against the "
                    "lesion masks and the masks of the structure that decides the label, runs the validity checks "
                    "there ((a), (b), and (c'): shuffling the softmax models' maps must lower their dev AUC by 0.05 "
                    "or more, over 5 seeds or more, its 95 % interval excluding 0; the accuracy gap to a plain CNN is "
                    "reported) and proposes the best variant, with the benchmark's verdict and its data seed, in "
                    "OUT/dev/proposed_variants.json. Stage 'test' (touched once): reads the committed variants file "
                    "(--variants; refused unless git tracks it without changes, refused if the dev stage rejected the "
                    "benchmark unless --allow-rejected-benchmark, and refused on a data seed whose images the "
                    "verdict's dev stage or a run in configs/data_ledger.json already used: pass a fresh "
                    "--data-seed), records its splits in that ledger and its run in OUT/test_runs.jsonl, trains the "
                    "attention models and a plain CNN with every seed at every difficulty the file fixes, and reports "
                    "on the test split and on a held-out mimic type: the validity checks, accuracy at the validation "
                    "threshold, map statistics, every explanation of every model (attention maps, GradCAM, DeepLIFT, "
                    "LRP, Input x Gradient, Integrated Gradients) against both masks under the pixel and the pooled "
                    "protocol, reference maps, the map ablation per level and the cascading model-randomisation "
                    "check, as mean with a 95 % confidence interval over seeds (OUT/test/experiment.md, .json, .csv). "
                    "OUT/test is written once (--force replaces it, and the report says so). Defaults: the full "
                    "setting; --quick: the smoke-test preset (shown after '/').")
    x.add_argument("--stage", default="dev", choices=["dev", "test"],
                   help="dev: compare variants on the development split; test: the final run on the test split "
                        "(default: dev)")
    x.add_argument("--variants", default=DEFAULT_VARIANTS_PATH, metavar="FILE",
                   help="the committed variants file the test stage reads; both stages read the data ledger beside "
                        "it (default: configs/experiment_variants.json of this checkout; an installed package has "
                        "none: give yours)")
    x.add_argument("--variants-sha256", default=None, metavar="HEX",
                   help="test stage without a git checkout (e.g. a copy of the working tree on another machine): the "
                        "SHA-256 of the committed variants file, which the file must match (default: none, git "
                        "shows the file is committed)")
    x.add_argument("--force", action="store_true", help="test stage: replace an existing OUT/test")
    x.add_argument("--allow-rejected-benchmark", action="store_true",
                   help="test stage: run although the dev stage did not accept the benchmark (a validity check "
                        "that decides, (a), (b) or (c'), failed or did not run on the development split, or the "
                        "variants file records no verdict); the report says so. Without it such a file is refused "
                        "before any work")
    x.add_argument("--quick", action="store_true",
                   help="small images and few epochs: a smoke test of the whole pipeline")
    for cls, names in _options_of(EXPERIMENT_OPTIONS):
        def of(config, cls=cls):
            return config if cls is ExperimentConfig else config.train if cls is TrainConfig else config.train.model
        shown = {n: f"{show_value(getattr(of(FULL), n))} / --quick: {show_value(getattr(of(QUICK), n))}" for n in names}
        add_options(x, cls, base=of(FULL), names=names, shown=shown, helps=_EXPERIMENT_HELPS,
                    listed={"data": SYNTHETIC_SOURCES, "data_seed": Int(low=0, high=DATA_SEED_MAX)})
    settings = _variant_settings()
    full, quick = FULL.candidates(), QUICK.candidates()
    add_grid_options(x, settings, full, "dev stage", shown={
        n: f"{' '.join(map(show_value, full[n]))} / --quick: {' '.join(map(show_value, quick[n]))}" for n in settings})
    x.add_argument("--out", default="results/experiment",
                   help="output folder: the stages write OUT/dev, OUT/test (default: results/experiment)")
    add_wait_option(x)
    add_output_options(x)


def _subparser(name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` alone (to name options in error messages)."""
    sub = CommandParser(prog="convex-attention").add_subparsers(dest="command")
    add_experiment_commands(sub)
    return sub.choices[name]


# ----------------------------------------------------------------------------- train

def _check_same_data(parser, given: dict, trained_on: dict, asked: dict) -> None:
    """UsageError when the options given to a resumed run change its data: its epochs'
    validation scores, and the choice of best.pt among them, compare on one validation set
    (``explain`` refuses to mix such checkpoints too)."""
    differences = TrainConfig.data_differences(trained_on, asked)
    if differences:
        key = differences[0]
        # the data's seed is --seed's when --data-seed was never set
        field = "seed" if key == "data_seed" and "data_seed" not in given and "seed" in given else key
        raise UsageError(f"argument {_flag(parser, field) or field}: the resumed run's {key} would be "
                         f"{asked.get(key)!r}, the checkpoint's is {trained_on.get(key)!r}; a resumed run keeps "
                         f"its data (its epochs' validation scores pick best.pt): drop the option, or train a "
                         f"new model into another --out")


def train_config_from_args(args):
    """The :class:`TrainConfig` the ``train`` options ask for, and the checkpoint state it
    resumes from (read once; or ``None``), validated; UsageError for anything wrong."""
    from ..paper.models import check_optimizer_fits, model_from_state, read_checkpoint
    from ..paper.train import check_resume, data_not_rebuilt, stored_train_config

    if args.resume and getattr(args, "overwrite", False):
        raise UsageError("--resume and --overwrite contradict each other: --resume continues the checkpoint's run, "
                         "--overwrite replaces an earlier run; pass one")
    parser = _subparser("train")
    given = _given(args, TRAIN_OPTIONS)
    # the checkpoint records where the data lie: absolute, so explain and --resume find them from any folder
    given.update({k: os.path.abspath(given[k]) for k in ("data_root", "cache_dir") if given.get(k)})
    state = None
    trained_on = None  # the data configuration the checkpoint was trained on, where it says
    try:
        if args.resume:
            try:
                state = read_checkpoint(args.resume)
                base = stored_train_config(args.resume, state)
            except ValueError as err:
                raise UsageError(f"argument --resume: {err}") from None
            if (why := data_not_rebuilt(state)) is not None:
                raise UsageError(f"argument --resume: {args.resume}: {why}")
            trained_on = None if base is None else base.data_config()
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
    from ..methods import get_method

    if "alpha" in given and not get_method(config.model.method).needs_duals:  # read by learned_dual's loss only
        raise UsageError(f"argument --alpha: the consistency loss it weighs is learned_dual's; method "
                         f"{config.model.method!r} has none")
    if state is not None and trained_on is not None:
        _check_same_data(parser, given, trained_on, config.data_config())
        if "seed" in given and given["seed"] != base.seed:
            # the resumed run draws from the checkpoint's random state (its weights came from
            # that seed too): another --seed would be recorded in its files and used nowhere
            raise UsageError(f"argument --seed: {given['seed']!r} differs from the checkpoint's seed {base.seed!r}; "
                             f"a resumed run keeps its seed (drop the option, or train a new model into another "
                             f"--out)")
    if state is not None:
        try:
            check_resume(config, state)
            # its weights fit the model trained on (shapes, kind), and its optimiser state that model
            check_optimizer_fits(args.resume, state, model_from_state(args.resume, state))
        except ValueError as err:
            raise UsageError(f"argument --resume: {err}") from None
    return config, state


def _failed(command: str, err: BaseException | str) -> int:
    """A run that failed (not a usage error): one line on stderr, exit 1."""
    message = " ".join(str(err).split())
    print(f"convex-attention {command}: error: {message}", file=sys.stderr)
    return 1


def _allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is a tensor or array that could not be allocated (Python's and numpy's
    MemoryError, torch's CPU allocator, CUDA out of memory)."""
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def _out_of_memory(command: str, err: BaseException, fix: str) -> int:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return _failed(command, f"memory ran out ({first}); {fix}")


def check_run_folder(config, args, remove: bool = True) -> None:
    """UsageError when ``--out`` holds an earlier run's files and this run neither resumes
    that run (``--resume OUT/last.pt``) nor was told to replace them (``--overwrite``); with
    ``--overwrite`` (and ``remove``) the earlier run's checkpoints and metrics (exactly those
    names) are removed, so the folder never mixes two runs (``config.json`` is rewritten
    when the run starts).  ``remove=False``: the check alone, before anything is done."""
    out = os.path.abspath(config.out)
    found = [n for n in RUN_FILES if os.path.isfile(os.path.join(out, n))]
    if args.resume and os.path.dirname(os.path.abspath(args.resume)) == out:
        for name in _STALE_ON_RESUME if remove else ():
            with contextlib.suppress(FileNotFoundError):  # (another rank may have removed it)
                os.remove(os.path.join(out, name))
        return
    if not found:
        return
    if args.resume and found == ["config.json"]:
        # the configuration of a run that finished no epoch (interrupted in its first), which the resumed run
        # rewrites: refusing it left `train --resume R --out F` stopped early no way on (--overwrite and --resume
        # exclude each other: ca_rev238)
        return
    if args.overwrite and not remove:
        return
    if not args.overwrite:
        last = os.path.join(config.out, "last.pt")
        if _not_resumable(last):  # an experiment's model: the advice must not be a resume it refuses (ca_rev139)
            raise UsageError(f"argument --out: {config.out} holds an earlier run ({', '.join(found)}) of a model "
                             f"trained on splits its settings do not rebuild, which train cannot continue; pass "
                             f"--overwrite to replace it and start over, or choose another --out")
        if not os.path.isfile(last):  # stopped in its first epoch: nothing to resume (--resume then says
            # "checkpoint ... does not exist", the next step a newcomer takes after Ctrl-C: ca_rev236)
            way_on = ("choose another --out for the resumed run (--overwrite and --resume exclude each other)"
                      if args.resume else "pass --overwrite to start over (or choose another --out)")
            raise UsageError(f"argument --out: {config.out} holds an earlier run ({', '.join(found)}) that finished "
                             f"no epoch (there is no {last} to resume); {way_on}")
        raise UsageError(f"argument --out: {config.out} holds an earlier run ({', '.join(found)}); pass --resume "
                         f"{last} to continue it, or --overwrite to replace it and start over (or choose another "
                         f"--out)")
    for name in found:
        if name != "config.json":
            # under torchrun every rank runs this check before the ranks meet: another may have removed it
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, name))


def _not_resumable(last: str) -> bool:
    """Whether ``train --resume`` refuses the run whose ``last.pt`` is ``last`` for its data
    (:func:`~convex_attention.paper.train.data_not_rebuilt`); not where it cannot be read
    (``--resume`` names that itself)."""
    from ..paper.models import read_checkpoint
    from ..paper.train import data_not_rebuilt

    if not os.path.isfile(last):
        return False
    try:
        return data_not_rebuilt(read_checkpoint(last)) is not None
    except (ValueError, OSError):
        return False


def _finished_epochs(out: str, resumed: str) -> tuple[int, str] | None:
    """The last epoch the run in folder ``out`` finished, and the file that says so: its
    ``last.pt``, or (resuming a checkpoint other than ``last.pt``) a later ``metrics.csv``
    row; ``None`` when neither records one."""
    import csv

    from ..paper.models import read_checkpoint

    last = os.path.join(out, "last.pt")
    if os.path.isfile(last) and os.path.samefile(last, resumed):
        return None  # last.pt is the run's last finished epoch
    found: list[tuple[int, str]] = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        found.append((int(read_checkpoint(last)["epoch"]), "last.pt"))
    with contextlib.suppress(OSError, ValueError, csv.Error), \
            open(os.path.join(out, "metrics.csv"), newline="", encoding="utf-8") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f) if (row.get("epoch") or "").strip().isdigit()]
        if epochs:
            found.append((max(epochs), "metrics.csv"))
    return max(found, key=lambda f: (f[0], f[1] == "last.pt")) if found else None  # last.pt named on a tie


def _foreign_best(out: str, resumed: str, state: dict) -> str | None:
    """What shows that ``out/best.pt`` is not a checkpoint of the run resumed from ``state``
    (another run's: another model configuration or seed, or other rows for the same epochs; or no
    checkpoint at all), or None where it is (its epochs' rows are the resumed checkpoint's, row for
    row: :func:`~convex_attention.paper.train.same_history`), nothing tells them apart, it is
    absent, or it is the checkpoint resumed."""
    from ..paper.models import read_checkpoint
    from ..paper.train import same_history

    best = os.path.join(out, "best.pt")
    if not os.path.isfile(best) or os.path.samefile(best, resumed):
        return None
    try:
        here = read_checkpoint(best)
    except ValueError as err:
        return f"not a checkpoint: {err}"
    same = same_history(here.get("metrics", []), state.get("metrics", []))
    if same:
        return None
    a, b = here.get("config") or {}, state.get("config") or {}
    diff = [f"{k}: best.pt {a.get(k)!r} vs checkpoint {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    ta, tb = here.get("train_config"), state.get("train_config")
    if isinstance(ta, dict) and isinstance(tb, dict) and ta.get("seed") != tb.get("seed"):
        diff.append(f"seed: best.pt {ta.get('seed')!r} vs checkpoint {tb.get('seed')!r}")
    if diff:
        return ", ".join(diff[:4])
    return "its epochs' metrics are not the checkpoint's" if same is False else None  # no history: nothing to tell


def check_resume_folder(config, args, state) -> None:
    """UsageError when ``--resume`` continues a run inside its own folder from a checkpoint
    older than the folder's last finished epoch (e.g. ``OUT/best.pt``): the run would
    replace the later epochs' ``metrics.csv`` rows and ``last.pt`` without a word."""
    if state is None:
        return
    out, resumed = os.path.abspath(config.out), os.path.abspath(args.resume)
    if os.path.dirname(resumed) != out:
        return  # another folder: check_run_folder refuses one that holds a run
    foreign = _foreign_best(out, resumed, state)
    if foreign:  # its next best epoch would replace it without a word (ca_rev255)
        raise UsageError(f"argument --resume: {config.out} holds a best.pt that is not of the run of {args.resume} "
                         f"({foreign}); resuming there would replace it: move it away, or pass --out "
                         f"ANOTHER_FOLDER to continue this checkpoint there")
    latest = _finished_epochs(out, resumed)
    done = int(state["epoch"])
    if latest is None or latest[0] <= done:
        return
    later = f"epoch {done + 1}" if latest[0] == done + 1 else f"epochs {done + 1}-{latest[0]}"
    last = os.path.join(config.out, "last.pt")
    go_on = (f"pass --resume {last} to continue the run, or " if os.path.isfile(last) else
             "no last.pt is there to continue the run from; ")
    raise UsageError(f"argument --resume: {args.resume} is of epoch {done}, but {config.out} holds the run up to "
                     f"epoch {latest[0]} ({latest[1]}); resuming it there would replace {later} (metrics.csv "
                     f"rows, last.pt): {go_on}pass --out ANOTHER_FOLDER to continue this checkpoint there")


def _refuse_a_file(out: str) -> None:
    """UsageError when ``--out`` is a file, checked before anything is made (``train``: every
    rank of a torchrun runs the checks at once, so none makes and removes a probe folder)."""
    if os.path.exists(out) and not os.path.isdir(out):
        check_out(out)  # its message, and nothing made


def train_interrupted(args) -> str | None:
    """What an interrupted ``train`` kept, once training started (:func:`cmd_train` records the
    run's folder as ``args.run_folder`` then); None before, where nothing of the run was written."""
    folder = getattr(args, "run_folder", None)
    if folder is None:
        return None
    last = os.path.join(folder, "last.pt")
    if os.path.isfile(last):
        return f"interrupted; {last} holds the last finished epoch (train --resume {last} continues from it)"
    if args.resume:  # resumed into another folder: the checkpoint it continued is the way on (ca_rev238)
        return (f"interrupted before an epoch finished: {args.resume} is unchanged (train --resume {args.resume} "
                f"--out {folder} continues from it)")
    return (f"interrupted before an epoch finished: there is no {last} to resume (train --overwrite --out {folder} "
            f"starts over)")


def cmd_train(args) -> int:
    from ..paper.train import TrainingDiverged, _distributed, build_checked_datasets, check_no_batch_of_one, train

    config, state = train_config_from_args(args)
    _refuse_a_file(config.out)
    check_files(config.out, RUN_FILES)  # a folder of a run file's name: no run could write it (--overwrite either)
    check_run_folder(config, args, remove=False)
    check_resume_folder(config, args, state)
    rank = _distributed()[1]  # under torchrun rank 0 holds the folder for the run, and alone removes files
    with holding_out(config.out, "train", args, main=rank == 0, outputs=RUN_FILES):
        if args.resume:  # again, under the lock: the run that held the folder may have gone on meanwhile
            config, state = train_config_from_args(args)
        check_run_folder(config, args, remove=False)
        check_resume_folder(config, args, state)
        try:
            datasets = build_checked_datasets(config)
        except ValueError as err:
            raise UsageError(f"the data: {err}") from None
        try:  # (train() refuses it too: there it had been a traceback, after --overwrite removed the earlier run)
            check_no_batch_of_one(config, datasets, _distributed()[0])
        except ConfigError as err:  # --n-train where it sets the training images; the user's data otherwise
            raise (_config_error(_subparser("train"), err) if config.data in SYNTHETIC_SOURCES else
                   UsageError(f"the data: {err}")) from None
        check_out(config.out)
        check_files(config.out, RUN_FILES)  # again, under the lock
        check_run_folder(config, args, remove=rank == 0)
        # what an interruption from here on names (train_interrupted): this run's folder, not "OUT"; before
        # here the folder may still hold the run being replaced (--overwrite) or waited for (--wait): ca_rev238
        args.run_folder = config.out
        try:
            result = train(config, datasets=datasets, log=lambda *m, **_: info(args, *m), resume_state=state)
        except TrainingDiverged as err:  # what diverged; --lr named only where a smaller one can help
            advice = f"; lower --lr (now {config.lr:g})" if err.lr_may_help else ""
            return _failed("train", f"training diverged: {err.what}{advice}")
        except (MemoryError, RuntimeError) as err:
            if not _allocation_failure(err):
                raise
            return _out_of_memory("train", err, "use a smaller --batch-size, --width or --image-size (OUT/last.pt "
                                                "holds the last finished epoch, if one finished)")
    if result["metrics"]:
        last = result["metrics"][-1]
        info(args, f"train: {config.out}/metrics.csv, best.pt (epoch {result['best_epoch']}), last.pt (last val "
                   f"auc {last['val_auc']:.3f}, balanced acc {last['val_balanced_acc']:.3f})")
    return 0


# ----------------------------------------------------------------------------- explain

def _explain_specs(args) -> tuple[list, list | None]:
    """``([(name, path)], baseline names or None)`` from ``--checkpoints`` and ``--baseline-model``."""
    specs: list = []
    for spec in args.checkpoints:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"argument --checkpoints: takes NAME=PATH, got {spec!r}")
        if "|" in name or not name.isprintable():  # a table cell of explain.md: '|' or a line break split it
            raise UsageError(f"argument --checkpoints: a model name is a table cell of explain.md: no '|' and no "
                             f"line breaks or other control characters, got {name!r}")
        if name in [n for n, _ in specs]:
            raise UsageError(f"argument --checkpoints: the name {name!r} is given twice; give every model its own "
                             f"name (e.g. {name}=A {name}-2=B)")
        if name == "none":  # --baseline-model none would read as no model, not this one
            raise UsageError("argument --checkpoints: 'none' is --baseline-model's word for no model; give this "
                             "model another name")
        specs.append((name, path))
    names = [n for n, _ in specs]
    baseline = args.baseline_model
    if baseline is None:
        return specs, list(names)  # every model, by every post-hoc method
    if baseline == ["none"]:
        return specs, None
    repeated = sorted({b for b in baseline if baseline.count(b) > 1})
    if repeated:  # (first: 'none none' is a repeat, not 'none' beside nothing: ca_rev183)
        raise UsageError(f"argument --baseline-model: {', '.join(map(repr, repeated))} named more than once; name "
                         f"each model once")
    if "none" in baseline:
        raise UsageError(f"argument --baseline-model: 'none' (no model) stands alone, here beside "
                         f"{', '.join(repr(b) for b in baseline if b != 'none')}; pass 'none' or model names")
    for b in baseline:
        if b not in names:
            raise UsageError(f"argument --baseline-model: {b!r} is not among the --checkpoints names "
                             f"({', '.join(names)}); name models given there, or 'none'")
    return specs, baseline


def _check_stored_model(name: str, path: str, config: TrainConfig, state: dict) -> None:
    """UsageError unless the training configuration a checkpoint stores holds the model its
    weights are of (``state["config"]``): the data are built from the first, the model from
    the second, and a damaged or edited file that makes them disagree (another image size,
    other channels) would fail on the first batch."""
    from ..paper.models import ModelConfig

    try:
        theirs = ModelConfig.from_dict(state["config"]).to_dict()
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"argument --checkpoints: {name}={path}: its model configuration is not readable "
                         f"({err})") from None
    mine = config.model.to_dict()
    diff = [f"{k}: train_config {mine.get(k)!r} vs model {theirs.get(k)!r}" for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)]
    if diff:
        raise UsageError(f"argument --checkpoints: {name}={path}: the training configuration it stores disagrees "
                         f"with the model it holds ({', '.join(diff[:3])}{' and more' if len(diff) > 3 else ''}); "
                         f"the file is damaged or was edited: use a checkpoint as training wrote it")


def _explain_models(specs) -> tuple[dict, TrainConfig, tuple]:
    """The checkpoints' models (each read once), the training configuration of the first
    (whose data every other must share) and its ``(name, path)``."""
    from ..paper.models import load_any_model
    from ..paper.train import data_not_rebuilt, stored_train_config

    models: dict = {}
    data: TrainConfig | None = None
    first: tuple | None = None
    for name, path in specs:
        try:
            models[name], state = load_any_model(path)
            config = stored_train_config(path, state)
        except (ValueError, TypeError) as err:
            raise UsageError(f"argument --checkpoints: {name}={path}: {err}") from None
        if (why := data_not_rebuilt(state)) is not None:
            raise UsageError(f"argument --checkpoints: {name}={path}: {why}")
        if config is None:
            raise UsageError(f"argument --checkpoints: {name}={path}: the checkpoint stores no training "
                             f"configuration and no config.json lies beside it, so its data cannot be rebuilt")
        _check_stored_model(name, path, config, state)
        if first is None or data is None:
            first, data = (name, path), config
            continue
        mine, theirs = config.data_config(), data.data_config()
        diff = [f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}" for k in TrainConfig.data_differences(theirs, mine)]
        if diff:
            raise UsageError(f"argument --checkpoints: {name}={path} was trained on other data than {first[0]}="
                             f"{first[1]} ({', '.join(diff)}); explain the models of one dataset at a time")
    assert data is not None and first is not None  # (--checkpoints takes one or more)
    return models, data, first


def _earlier_explanation(args, names) -> list[str]:
    """The earlier explanation's files in ``--out`` (``names`` that are there); UsageError
    when there are some and ``--overwrite`` was not given
    (:func:`convex_attention.cli._common.check_no_earlier`)."""
    return check_no_earlier(args.out, names, args.overwrite)


def cmd_explain(args) -> int:
    from ..io.environment import environment
    from ..paper.config import SYNTHETIC_GENERATORS, check_device, resolved_device
    from ..paper.data import datasets_of
    from ..paper.data.synthetic import DECIDING_CHANNELS
    from ..paper.explain import (
        OUTPUT_FILES,
        check_explained,
        check_pooled_grids,
        explain_models,
        lesion_indices,
        write_outputs,
    )
    from ..paper.models import NonFiniteOutput

    try:
        device = check_device(args.device)
    except ConfigError as err:
        raise UsageError(f"argument --device: {err}") from None
    device = resolved_device(device)
    specs, baseline = _explain_specs(args)
    check_out_leaving_nothing(args.out)
    _earlier_explanation(args, OUTPUT_FILES)
    with holding_out(args.out, "explain", args, outputs=OUTPUT_FILES):
        earlier = _earlier_explanation(args, OUTPUT_FILES)  # again, under the lock: another run may have written it
        models, data, first = _explain_models(specs)
        try:
            check_explained(models, baseline)
        except ValueError as err:
            raise UsageError(f"argument --baseline-model: {err}") from None
        if not args.pixel_only:
            try:
                check_pooled_grids(models)
            except ValueError as err:
                raise UsageError(f"argument --checkpoints: {err}") from None
        try:
            _, val = datasets_of(data)
            indices = lesion_indices(val, args.n_images)
        except ValueError as err:
            raise UsageError(f"the data of {first[0]}={first[1]}: {err}") from None
        check_out(args.out)
        try:
            rows, examples = explain_models(models, val, n_images=args.n_images, baseline_model=baseline,
                                            target=args.target, batch_size=args.batch_size, device=device,
                                            progress=show_progress(args), indices=indices, upsampling=args.upsampling,
                                            pooled=not args.pixel_only)
        except NonFiniteOutput as err:  # never scored: no number is reported for such a model
            return _failed("explain", err)
        except (MemoryError, RuntimeError) as err:
            if not _allocation_failure(err):
                raise
            return _out_of_memory("explain", err, "use a smaller --batch-size; nothing was written")
        # the figure shows the channels that decide the label, where the data source says which
        channels, what = DECIDING_CHANNELS.get(SYNTHETIC_GENERATORS.get(data.data, ""), (((0, "channel 0"),), ""))
        paths = write_outputs(rows, examples, args.out, env=environment(device), channels=channels, notes=[what])
        if "figure" not in paths:  # an earlier explanation's figure (--overwrite) would pass for this one's
            for name in set(earlier) & {"explain_examples.png", "explain_examples.pdf"}:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(args.out, name))
    with open(paths["markdown"]) as f:
        info(args, f.read())
    info(args, "explain: " + ", ".join(paths.values()))
    return 0


# ----------------------------------------------------------------------------- experiment

def experiment_config_from_args(args):
    """The :class:`ExperimentConfig` the ``experiment`` options ask for (the full setting or
    ``--quick``, with the options given), validated; UsageError for anything wrong."""
    given = _given(args, EXPERIMENT_OPTIONS)
    grid = given_grid(args, _variant_settings())
    parser = _subparser("experiment")
    # each stage's own seeds: the other stage's would be taken and never used (ca_rev137)
    if getattr(args, "stage", "dev") != "test" and "seeds" in given:
        raise UsageError(f"argument {_flag(parser, 'seeds')}: the test stage's training seeds; the dev stage trains "
                         f"{_flag(parser, 'dev_seeds')}")
    if getattr(args, "stage", "dev") == "test" and "dev_seeds" in given:
        raise UsageError(f"argument {_flag(parser, 'dev_seeds')}: the dev stage's training seeds; the test stage "
                         f"trains {_flag(parser, 'seeds')} (the variants file records the dev seeds it judged)")
    if getattr(args, "stage", "dev") == "test":
        fixed = [d for d in _FIXED_BY_VARIANTS if d in given] + [f"grid_{n}" for n in grid]
        if fixed:
            raise UsageError(f"argument {_flag(parser, fixed[0])}: the test stage takes the variant, the difficulties "
                             f"and the held-out mimic type from the committed variants file (--variants), never from "
                             f"the command line")
    try:
        preset = QUICK if args.quick else FULL
        config = preset.override(**given)
        if grid:
            config = replace(config, grid={**preset.grid, **grid})
        config.validate()
    except ConfigError as err:
        raise _config_error(parser, err) from None
    return config


def _experiment_preflight(args, config) -> None:
    """Everything the stage refuses, checked before any work (UsageError)."""
    from ..paper.protocol import (
        DevFolderExists,
        TestFolderExists,
        VariantsError,
        check_benchmark_verdict,
        check_dev_folder,
        check_judged,
        check_test_data,
        check_test_folder,
        default_ledger_path,
        ledger_where,
        read_test_runs,
        read_variants,
        runs_into,
        verify_variants,
    )

    # an installed package (a wheel) has no configs/ beside it: the default names a file that is not there
    no_checkout = (f"the default variants file {args.variants} (configs/ of a source checkout) is not there, as in "
                   f"an installed package" if args.variants == DEFAULT_VARIANTS_PATH
                   and not os.path.isfile(args.variants) else None)
    if args.stage != "test":
        if args.force:
            raise UsageError("argument --force: only the test stage replaces its results with it; a dev stage "
                             "may be repeated into another --out")
        if args.variants_sha256 is not None:
            raise UsageError("argument --variants-sha256: only the test stage reads the variants file")
        if args.allow_rejected_benchmark:
            raise UsageError("argument --allow-rejected-benchmark: only the test stage reads the dev stage's verdict; "
                             "the dev stage records it")
        if args.variants != DEFAULT_VARIANTS_PATH:
            # the dev stage reads the data ledger beside it (the test splits already spent): a path
            # to nothing, or to another file, found no ledger, and so no spent split, whatever the
            # real ledger records
            try:
                read_variants(args.variants)
            except VariantsError as err:
                raise UsageError(f"argument --variants: {err}; the dev stage reads the data ledger beside the "
                                 f"variants file (the test splits spent so far): give the committed one") from None
        elif no_checkout:  # (ca_rev239: the dev stage ran, silently checked against no recorded test run)
            print(f"convex-attention experiment: warning: {no_checkout}, nor is its data ledger: the dev stage "
                  f"checks its splits against no recorded test run (--variants a checkout's variants file does)",
                  file=sys.stderr)
        check_out(args.out)
        try:
            check_dev_folder(os.path.join(args.out, "dev"))
        except DevFolderExists as err:
            raise UsageError(f"argument --out: {err}") from None
        return
    if no_checkout:  # (ca_rev239: told to write the file into site-packages and commit it there)
        raise UsageError(f"argument --variants: {no_checkout}; give --variants FILE, your committed variants file "
                         f"(outside a git checkout with --variants-sha256 HEX)")
    try:
        variants = read_variants(args.variants).validate(config.methods, where=args.variants)
        verified = verify_variants(args.variants, args.variants_sha256)
        check_benchmark_verdict(variants, args.allow_rejected_benchmark, where=args.variants, data=config.train.data)
        check_judged(config, variants, where=args.variants)
    except VariantsError as err:
        raise UsageError(f"argument --variants: {err}") from None
    try:
        check_test_folder(os.path.join(args.out, "test"), args.force)
        read_test_runs(os.path.abspath(args.out))  # the run log the stage appends to reads back
    except (TestFolderExists, VariantsError) as err:
        raise UsageError(f"argument --out: {err}") from None
    ledger = default_ledger_path(args.variants)
    try:
        check_test_data(config, variants, ledger, ledger_where(os.path.join(args.out, "test"), ledger), args.force,
                        variants_sha256=verified.get("sha256"), folder_runs=runs_into(os.path.join(args.out, "test")))
    except VariantsError as err:
        raise UsageError(f"argument --data-seed: {err}") from None
    check_out(args.out)


def cmd_experiment(args) -> int:
    from ..paper.experiment import run_experiment
    from ..paper.models import NonFiniteOutput, NonFiniteWeights
    from ..paper.protocol import DevFolderExists, TestFolderExists, VariantsError
    from ..paper.train import TrainingDiverged, ValidationClassesError

    config = experiment_config_from_args(args)
    _experiment_preflight(args, config)
    # the stage checks its folder again (OUT/test, the run log, the data ledger) under the lock
    with holding_out(args.out, "experiment", args, outputs=EXPERIMENT_FILES, patterns=EXPERIMENT_NAMED,
                     recursive=True):
        try:
            result = run_experiment(config, args.out, progress=show_progress(args),
                                    log=lambda *m, **_: info(args, *m), stage=args.stage, variants_path=args.variants,
                                    force=args.force, variants_sha256=args.variants_sha256,
                                    allow_rejected_benchmark=args.allow_rejected_benchmark)
        except (VariantsError, TestFolderExists, DevFolderExists) as err:
            raise UsageError(str(err)) from None
        except ValidationClassesError as err:  # a validation split drawn without both classes
            return _failed("experiment", err)
        except TrainingDiverged as err:  # the experiment's settings have no --lr to advise
            return _failed("experiment", f"a model's training diverged: {err.what}; its metrics are not reported")
        except (NonFiniteWeights, NonFiniteOutput) as err:  # a model that cannot be scored
            return _failed("experiment", err)
        except (MemoryError, RuntimeError) as err:
            if not _allocation_failure(err):
                raise
            return _out_of_memory("experiment", err, "use a smaller --batch-size, --width or --image-size; the "
                                                     "stage did not finish")
    info(args, result["report"])
    name = "dev.md" if args.stage == "dev" else "experiment.md"
    info(args, f"experiment: {os.path.join(args.out, args.stage, name)}")
    return 0


EXPERIMENT_HANDLERS = {"train": cmd_train, "explain": cmd_explain, "experiment": cmd_experiment}
