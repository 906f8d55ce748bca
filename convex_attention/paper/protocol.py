"""The experiment's protocol: splits, variants fixed in advance, a test split touched once.

**Splits** (:func:`split_specs`).  Five disjoint image sets of the synthetic data, each its
own generator seed (:func:`split_seed`): one stream per data source, difficulty, split and
data seed, so no two of them share an image, a label or a head (image ``i`` of seed ``s`` is
rendered from ``s · 1000003 + i``):

* ``train``: training, labels only;
* ``val``: **labels only**, from the training distribution: checkpoint selection
  (validation ROC AUC) and the decision threshold (Youden's J) are chosen here, so masks
  never enter training or checkpoint selection;
* ``dev``, with masks: the development split where the variants (τ, α, the head,
  the learned temperature, the dual source, the upsampling) are compared
  (``experiment --stage dev``), and the model-free reference map is fitted;
* ``test``, with masks: touched once, by ``experiment --stage test``;
* ``test_heldout``: the final test condition, with a mimic type that no other
  split contains (``held_out_mimic``: train, val, dev and test draw their mimics from the
  other types).

**Data seeds spent once** (:func:`check_unspent`).  The test stage draws every split from a
data seed that no recorded stage used: not the dev stage whose verdict it runs (the verdict
records its data seed), not an earlier test run, not another benchmark's runs.  The record
is the data ledger (``configs/data_ledger.json``, :func:`read_ledger`), which lists the
splits (their generator seeds and sizes) of every run the repository holds; a test run is
added to it before any work (:func:`spend`), and to the results folder's log of test runs
(``test_runs.jsonl``).

**Variants fixed in advance** (:class:`Variants`, :func:`read_variants`): one model variant
for every method, the upsampling, the test difficulties and the held-out mimic type live
in ``configs/experiment_variants.json`` (format :data:`VARIANTS_FORMAT`).  The test stage
refuses to run unless that file is committed: tracked by git and without uncommitted
changes (:func:`commit_state`); its SHA-256 and the commit go into the results.  Where
the run has no git checkout (a copy of the working tree on another machine), the file
must match a SHA-256 pin taken from the committed file (:func:`verify_variants`).

**A benchmark accepted before the test split is touched** (:attr:`Variants.benchmark`,
:func:`check_benchmark_verdict`). The dev stage runs every validity check on the development
split and writes the verdict into the proposed variants file: (a), (b) and (c′) decide
(:data:`REQUIRED_CHECKS`); check (c) (the proposed variant's attention models against a
plain CNN trained with the same dev seeds) is recorded and never decides
(:data:`~convex_attention.paper.validity.REPORTED_ONLY`). The test stage refuses a file
whose verdict is "rejected", or that records none (written before the verdict existed: the
benchmark was never accepted), unless told to run anyway (``allow_rejected``; the report
then says so): a test split spent on a benchmark that cannot test the claim is spent for
nothing. The verdict names what it judged (the data, the variant, the difficulty, the
methods, the dev seeds and the setting) and is refused if the file's variant or difficulty
differs from it; the test stage refuses other data than it judged.

**A test folder written once** (:func:`claim_test_folder`): the test stage refuses an
existing result folder unless forced, and even then only one that it wrote itself, which
it moves aside whole (``test.run-<N>``, a name never reused), never deletes.

**The judged protocol** (:func:`check_judged`): the test stage refuses methods or settings
(:data:`JUDGED_SETTINGS`) other than those its verdict judged.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

from ..io.files import as_json, read_json, strict_constant, write_json
from ..io.lock import folder_lock
from ..methods import get_method
from .config import (
    DATA_SEED_MAX,
    DEFAULT_VARIANTS_PATH,
    IMAGES_PER_SEED,
    MIMIC_SOURCES,
    MIMIC_TYPES,
    MODEL_FREE_MIN_IMAGES,
    SYNTHETIC_GENERATORS,
    SYNTHETIC_SOURCES,
    ConfigError,
    Variant,
    difficulty_key,
    variant_names,
)
from .data import InMemory
from .data.synthetic import synthetic_dataset
from .validity import (
    MIN_RANKING_SEEDS,
    PASSES_BELOW,
    REQUIRED_CHECKS,
    THRESHOLDS,
    CheckResult,
    check_pixel_map,
    collect,
    failing,
    fixed_channel_maps,
)

__all__ = ["Variant", "Variants", "VariantsError", "TestFolderExists", "VARIANTS_FORMAT", "DEFAULT_VARIANTS_PATH",
           "SPLITS", "split_seed", "DATA_SEED_MAX", "SplitSpec", "split_specs", "read_ledger", "check_unspent",
           "spend", "ledger_lock", "log_test_run", "read_test_runs", "split_sizes", "test_stage_specs", "ledger_where",
           "check_test_data",
           "ledger_entry", "TEST_RUN_LOG", "LEDGER_FORMAT", "default_ledger_path", "spent_by_verdict",
           "build_split", "image_keys", "seed_keys", "keys_meet", "check_disjoint",
           "read_variants", "variants_digest", "commit_state", "verify_variants", "check_test_folder",
           "claim_test_folder", "move_aside", "aside_target", "read_manifest", "finish_test_folder", "judged_settings",
           "check_judged",
           "JUDGED_SETTINGS", "EVALUATION_SETTINGS", "record_test_run", "history_of_test_runs", "moved_by_id",
           "check_benchmark_verdict", "benchmark_record",
           "failed_checks", "REQUIRED_CHECKS", "fit_model_free", "MANIFEST", "SYNTHETIC_SOURCES", "MIMIC_SOURCES"]

VARIANTS_FORMAT = "convex-attention-variants/1"
SPLITS = ("train", "val", "dev", "test", "test_heldout")
#: The data sources' streams (a source added later takes the next number).
_SOURCE_STREAM = {"synthetic": 0, "synthetic-blobs": 1, "synthetic-brightest": 2}
_STREAMS_PER_SEED = 16 * 1001 * len(SPLITS)  # sources x difficulties (in thousandths) x splits
_FIRST_SEED = 1_000_000  # above every generator seed the earlier scheme (data seed + 0 .. 40 000) used
LEDGER_FORMAT = "convex-attention-data-ledger/1"
TEST_RUN_LOG = "test_runs.jsonl"
MANIFEST = "test_stage.json"
# torch's CPU generator keeps a seed's low 32 bits: keys congruent modulo this draw the same
# random stream (the keys reach 8e13; a review found a test split drawing the dev split's streams)
_STREAMS = 2 ** 32


class VariantsError(ValueError):
    """The variants file is missing, malformed, or not committed."""


class TestFolderExists(ValueError):
    """The test stage's result folder exists: results are written once."""

    __test__ = False  # not a pytest test class


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variants:
    """The contents of the variants file: ``variant``, the test ``difficulties`` (the first
    is the development difficulty), ``held_out_mimic`` (``None``: no held-out condition),
    a free-text ``note`` (how they were chosen) and ``benchmark``: the dev stage's
    validity verdict (:func:`benchmark_record`; ``None`` in a file written before the dev
    stage recorded one)."""

    variant: Variant = field(default_factory=Variant)
    difficulties: tuple = (0.3, 0.6)
    held_out_mimic: str | None = "mottled"
    note: str = ""
    benchmark: dict | None = None

    def to_dict(self) -> dict:
        v = self.variant.to_dict()
        levels = variant_names()
        out = {"format": VARIANTS_FORMAT, "note": self.note,
               "model": {n: v[n] for n, level in levels.items() if level == "model"},
               **{n: v[n] for n, level in levels.items() if level == "experiment"},
               "difficulties": list(self.difficulties), "held_out_mimic": self.held_out_mimic}
        if self.benchmark is not None:
            out["benchmark"] = self.benchmark
        return out

    def verdict(self) -> str:
        """The dev stage's verdict on the benchmark: ``"accepted"``, ``"rejected"`` or
        ``"not recorded"``."""
        if self.benchmark is None:
            return "not recorded"
        return "accepted" if self.benchmark["accepted"] else "rejected"

    @classmethod
    def from_dict(cls, data: dict, where: str = "variants") -> Variants:
        """Inverse of :meth:`to_dict`, checked: VariantsError naming the field.  Every
        variant setting (:func:`~convex_attention.paper.config.variant_names`) must be
        given: nothing is left to defaults in a file fixed in advance."""
        if not isinstance(data, dict):
            raise VariantsError(f"{where}: must be a JSON object, got {type(data).__name__}")
        if data.get("format") != VARIANTS_FORMAT:
            raise VariantsError(f"{where}: 'format' must be {VARIANTS_FORMAT!r}, got {data.get('format')!r}")
        levels = variant_names()
        model_names = [n for n, level in levels.items() if level == "model"]
        top_names = [n for n, level in levels.items() if level == "experiment"]
        known = {"format", "note", "model", "difficulties", "held_out_mimic", "benchmark", *top_names}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VariantsError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        model = data.get("model", {})
        if not isinstance(model, dict):
            raise VariantsError(f"{where}: 'model' must be an object of {model_names}")
        bad = sorted(set(model) - set(model_names))
        if bad:
            raise VariantsError(f"{where}: unknown model field(s) {bad}; known: {model_names}")
        missing = sorted(set(model_names) - set(model)) + [
            k for k in (*top_names, "difficulties", "held_out_mimic") if k not in data]
        if missing:
            raise VariantsError(f"{where}: every field must be given (nothing is left to defaults in a file fixed "
                                f"in advance); missing: {missing}. A file written before a setting existed: add the "
                                f"setting with the value that file's runs used (its default) and commit it")
        difficulties = data["difficulties"]
        if not isinstance(difficulties, list):
            raise VariantsError(f"{where}: 'difficulties' must be a list of numbers in [0, 1]")
        note = data.get("note", "")
        if not isinstance(note, str):
            raise VariantsError(f"{where}: 'note' must be a string")
        benchmark = data.get("benchmark")
        try:
            variant = Variant.from_dict({**model, **{n: data[n] for n in top_names}})
        except ConfigError as err:
            prefix = "model." if levels.get(err.field) == "model" else ""
            raise VariantsError(f"{where}: {prefix}{err}") from None
        out = cls(variant, tuple(difficulties), data["held_out_mimic"], note, benchmark)
        out.validate(where=where)
        if benchmark is not None:
            _check_benchmark_record(benchmark, out.variant, out.difficulties, where, out.held_out_mimic)
        return out

    def validate(self, methods=("softmax", "learned_dual", "exact"), where: str = "variants") -> Variants:
        """Every field, and the variant for every one of ``methods`` (VariantsError)."""
        ds = self.difficulties
        if not isinstance(ds, tuple) or not 1 <= len(ds) <= 4 or not all(_real(d) and 0 <= d <= 1 for d in ds) \
                or len({difficulty_key(d) for d in ds}) != len(ds):
            raise VariantsError(f"{where}: difficulties must be 1 to 4 numbers in [0, 1], distinct in their "
                                f"thousandths (each condition's images are keyed by them: two in one thousandth would "
                                f"be the same images; the protocol checks the conclusion at two), got "
                                f"{list(ds) if isinstance(ds, tuple) else ds!r}")
        if self.held_out_mimic is not None and self.held_out_mimic not in MIMIC_TYPES:
            raise VariantsError(f"{where}: held_out_mimic must be one of {', '.join(MIMIC_TYPES)} or null, got "
                                f"{self.held_out_mimic!r}")
        for method in methods:
            get_method(method)
            try:
                self.variant.check(method)
            except ConfigError as err:
                raise VariantsError(f"{where}: model.{err.field}: {err}") from None
        return self


#: The settings every verdict records (a verdict written before :data:`JUDGED_SETTINGS` grew records only these).
_JUDGED_SETTINGS = ("image_size", "width", "epochs", "n_train")
#: The settings of the judged protocol (:func:`judged_settings`): the recipe of every model the
#: test stage trains (data sizes, training, architecture) and what its headline compares.  The
#: test stage refuses other values than its verdict records (:func:`check_judged`).  Not among
#: them: the training seeds and the data seed (the test stage's are new), the evaluation sizes
#: (``n_dev``, ``n_test``, ``n_explain``, ``n_sanity``, ``validity_images``: the test split's
#: own, stated in its report and its record) and the device.
JUDGED_SETTINGS = (*_JUDGED_SETTINGS, "n_val", "batch_size", "lr", "weight_decay", "augment", "recompute_bn",
                   "in_channels", "attention_blocks", "embed_channels", "bottleneck_in_classifier", "norm",
                   "solver_options", "plain_cnn", "target", "baseline_model")
#: Checks whose rule also asks their 95 % interval to exclude 0: a verdict must record it.
_INTERVAL_CHECKS = ("maps_drive_ranking",)


def judged_settings(config) -> dict:
    """The values of :data:`JUDGED_SETTINGS` under an ``ExperimentConfig`` (plain JSON)."""
    tc, model = config.train, config.train.model
    values = {"image_size": model.image_size, "width": model.width, "epochs": tc.epochs, "n_train": tc.n_train,
              "n_val": tc.n_val, "batch_size": tc.batch_size, "lr": tc.lr, "weight_decay": tc.weight_decay,
              "augment": tc.augment, "recompute_bn": tc.recompute_bn, "in_channels": model.in_channels,
              "attention_blocks": model.attention_blocks, "embed_channels": model.embed_channels,
              "bottleneck_in_classifier": model.bottleneck_in_classifier, "norm": model.norm,
              "solver_options": model.solver_options, "plain_cnn": config.plain_cnn, "target": config.target,
              "baseline_model": config.baseline_model}
    return {k: as_json(values[k]) for k in JUDGED_SETTINGS}


def check_judged(config, variants: Variants, where: str = "variants") -> None:
    """VariantsError, naming the first difference and both values, unless ``config`` runs
    the methods and the settings (:data:`JUDGED_SETTINGS`) that the variants file's
    verdict judged: the test stage runs the protocol the dev stage judged, never another
    one.  Nothing to compare without a recorded verdict (:func:`check_benchmark_verdict`
    refuses such a file unless told).  A verdict written before the dev stage recorded
    every setting is compared on those it records (the report names the others)."""
    if variants.benchmark is None:
        return
    judged = variants.benchmark["judged"]
    fix = ("the test stage runs the protocol the dev stage judged: pass the dev stage's options (--quick only if it "
           "used --quick), or run the dev stage again for this setting")
    if sorted(judged["methods"]) != sorted(config.methods):
        raise VariantsError(f"{where}: the dev stage's verdict judged the methods {' '.join(judged['methods'])}, but "
                            f"this run has {' '.join(config.methods)} (--methods); {fix}")
    mine = judged_settings(config)
    for name in JUDGED_SETTINGS:
        if name in judged["settings"] and as_json(judged["settings"][name]) != mine[name]:
            theirs = json.dumps(judged["settings"][name])
            raise VariantsError(f"{where}: the dev stage's verdict judged {name} {theirs}, but this run has {name} "
                                f"{json.dumps(mine[name])}; {fix}")


def benchmark_record(results, variant: Variant, difficulty: float, methods, dev_seeds, settings: dict,
                     data: str = "synthetic", data_seed: int | None = None,
                     held_out_mimic: str | None = "mottled", sizes: dict | None = None) -> dict:
    """The variants file's ``benchmark`` entry from the dev stage's validity checks
    (:class:`~convex_attention.paper.validity.CheckResult` list), with what they judged:
    ``{"accepted": bool, "checks": {name: {"value", "threshold", "passes_below", "ran",
    "passed"[, "ci95"]}}, "judged": {"data", "data_seed", "variant", "difficulty", "methods",
    "dev_seeds", "settings"}}`` (``data``: the synthetic source; ``settings``: those of
    :data:`JUDGED_SETTINGS` it is given, :func:`judged_settings`; image_size, width, epochs and
    n_train at least; ``held_out_mimic``: the mimic type the dev stage kept out of its splits,
    which the test stage's held-out condition must be).  Accepted only if every check that decides ran and passed, the
    three of :data:`REQUIRED_CHECKS` among them (the reported-only ones,
    :data:`~convex_attention.paper.validity.REPORTED_ONLY`, are kept but never decide).  A
    value that is not finite is stored as ``None`` (strict JSON) and fails."""
    checks = {}
    for r in results:
        value = float(r.value) if r.value is not None and math.isfinite(r.value) else None
        checks[r.name] = {"value": value, "threshold": float(r.threshold), "passes_below": bool(r.passes_below),
                          "ran": bool(r.ran), "passed": r.passed}
        if r.ci95 is not None:
            checks[r.name]["ci95"] = float(r.ci95) if math.isfinite(r.ci95) else None
    accepted = not failed_checks(checks)
    judged = {"data": data, "variant": variant.to_dict(), "difficulty": float(difficulty), "methods": list(methods),
              "dev_seeds": [int(x) for x in dev_seeds], "held_out_mimic": held_out_mimic,
              "settings": {k: as_json(settings[k]) for k in JUDGED_SETTINGS if k in settings or k in _JUDGED_SETTINGS}}
    if data_seed is not None:
        judged["data_seed"] = int(data_seed)
    if sizes is not None:  # the dev stage's own split sizes: the test stage's --n-dev is its own
        judged["sizes"] = {k: int(sizes[k]) for k in ("train", "val", "dev")}
    return {"accepted": accepted, "checks": checks, "judged": judged}


def failed_checks(checks: dict) -> list[str]:
    """The checks of a ``benchmark`` entry's ``checks`` that decide and did not pass (failed,
    did not run, or missing from :data:`REQUIRED_CHECKS`): empty exactly when it is accepted
    (:func:`~convex_attention.paper.validity.failing`, no check optional)."""
    return failing({n: (c["ran"], c["passed"]) for n, c in checks.items()})


def _real(x) -> bool:
    try:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    except OverflowError:  # an integer beyond float's range (400 digits in the file): a traceback (ca_rev266)
        return False


def _check_benchmark_record(record, variant: Variant, difficulties: tuple, where: str,
                            held_out_mimic: str | None = None) -> None:
    """A ``benchmark`` entry must be what :func:`benchmark_record` writes, consistent with
    itself (each ``passed`` recomputed from its number and the check's own threshold) and
    with the file's variant and first difficulty (VariantsError otherwise)."""
    shape = ("an object {\"accepted\", \"checks\", \"judged\"} as the dev stage writes it (run the dev stage "
             "again rather than editing it)")
    if not isinstance(record, dict) or set(record) != {"accepted", "checks", "judged"} \
            or not isinstance(record["accepted"], bool) or not isinstance(record["checks"], dict) \
            or not isinstance(record["judged"], dict):
        raise VariantsError(f"{where}: 'benchmark' must be {shape}")
    for name, c in record["checks"].items():
        if name not in THRESHOLDS:
            raise VariantsError(f"{where}: benchmark.checks.{name}: unknown check; known: {sorted(THRESHOLDS)}")
        keys = {"value", "threshold", "passes_below", "ran", "passed"}
        if not isinstance(c, dict) or set(c) not in (keys, keys | {"ci95"}) \
                or not all(isinstance(c[k], bool) for k in ("passes_below", "ran", "passed")) \
                or not (c["value"] is None or _real(c["value"])) or not _real(c["threshold"]) \
                or not (c.get("ci95") is None or _real(c["ci95"])):
            raise VariantsError(f"{where}: benchmark.checks.{name} must be {{\"value\": a finite number or null, "
                                f"\"threshold\": a number, \"passes_below\", \"ran\", \"passed\": true or false"
                                f"[, \"ci95\": a number or null]}}")
        below = PASSES_BELOW[name]
        if c["threshold"] != THRESHOLDS[name] or c["passes_below"] != below:
            raise VariantsError(f"{where}: benchmark.checks.{name} has threshold {'<=' if c['passes_below'] else '>='} "
                                f"{c['threshold']}, but the check's is {'<=' if below else '>='} {THRESHOLDS[name]}")
        if name in _INTERVAL_CHECKS and c["ran"] and "ci95" not in c:
            raise VariantsError(f"{where}: benchmark.checks.{name} ran but records no ci95: its rule asks the 95 % "
                                f"interval to exclude 0, so it cannot be recomputed without it")
        ci95 = None
        if "ci95" in c:  # a recorded null interval (not finite) passes nothing
            ci95 = math.nan if c["ci95"] is None else c["ci95"]
        passed = CheckResult(name, "", "", c["value"], c["threshold"], below, c["ran"], ci95=ci95).passed
        if c["passed"] != passed:
            raise VariantsError(f"{where}: benchmark.checks.{name} says passed={c['passed']}, but its number "
                                f"{c['value']} (ran: {c['ran']}) says {passed}")
    missing = [n for n in REQUIRED_CHECKS if n not in record["checks"]]
    accepted = not failed_checks(record["checks"])
    if record["accepted"] != accepted:
        raise VariantsError(f"{where}: benchmark.accepted is {record['accepted']}, but its checks say {accepted}"
                            + (f" (missing: {', '.join(missing)})" if missing else ""))
    judged = record["judged"]
    keys = {"data", "variant", "difficulty", "methods", "dev_seeds", "settings"}
    seed = judged.get("data_seed", 0)
    # (verdicts written before 2026-12-05 record no held_out_mimic)
    recorded = judged.get("sizes", {"train": 1, "val": 1, "dev": 1})
    if not keys <= set(judged) or not set(judged) <= keys | {"data_seed", "held_out_mimic", "sizes"} \
            or not isinstance(recorded, dict) or set(recorded) != {"train", "val", "dev"} \
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in recorded.values()) \
            or isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= DATA_SEED_MAX \
            or judged["data"] not in SYNTHETIC_SOURCES or not _real(judged["difficulty"]) \
            or not isinstance(judged["methods"], list) or not all(isinstance(m, str) for m in judged["methods"]) \
            or not isinstance(judged["dev_seeds"], list) \
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in judged["dev_seeds"]) \
            or len(set(judged["dev_seeds"])) != len(judged["dev_seeds"]) \
            or not isinstance(judged["settings"], dict) or not set(_JUDGED_SETTINGS) <= set(judged["settings"]) \
            or not set(judged["settings"]) <= set(JUDGED_SETTINGS) \
            or not all(_real(judged["settings"][k]) for k in _JUDGED_SETTINGS):
        raise VariantsError(f"{where}: benchmark.judged must be {{\"data\": one of {', '.join(SYNTHETIC_SOURCES)}, "
                            f"\"data_seed\": 0 .. {DATA_SEED_MAX}, \"variant\", \"difficulty\", \"methods\", "
                            f"\"dev_seeds\" (distinct), \"settings\": {{{', '.join(_JUDGED_SETTINGS)}[, "
                            f"{', '.join(JUDGED_SETTINGS[len(_JUDGED_SETTINGS):])}]}}}}")
    # the sizes the dev stage drew are those its settings say (n_train always, n_val where recorded):
    # a verdict that contradicts itself would spend fewer of its images than it drew (a review)
    differ = [k for k, name in (("train", "n_train"), ("val", "n_val"))
              if "sizes" in judged and name in judged["settings"] and recorded[k] != judged["settings"][name]]
    if differ:
        raise VariantsError(f"{where}: benchmark.judged.sizes records {', '.join(f'{k} {recorded[k]}' for k in differ)}"
                            f", but the settings it judged say " + ", ".join(
                                f"{n} {judged['settings'][n]}" for n in (("n_" + k) for k in differ))
                            + "; run the dev stage again rather than editing the file")
    if "held_out_mimic" in judged and judged["held_out_mimic"] != held_out_mimic:
        # the dev stage trained and chose on splits without that type: the test stage's
        # held-out condition is "used neither in training nor in development" only for it
        raise VariantsError(f"{where}: held_out_mimic is {held_out_mimic!r}, but the dev stage's verdict kept "
                            f"{judged['held_out_mimic']!r} out of its splits (its held-out condition): the test stage "
                            f"holds out the type the dev stage held out; run the dev stage again to hold out another")
    ranking = record["checks"].get("maps_drive_ranking")
    if ranking is not None and ranking["ran"] and len(judged["dev_seeds"]) < MIN_RANKING_SEEDS:
        raise VariantsError(f"{where}: benchmark.checks.maps_drive_ranking says it ran, but the verdict judged "
                            f"{len(judged['dev_seeds'])} dev seed(s) {judged['dev_seeds']}; the check needs at least "
                            f"{MIN_RANKING_SEEDS}; run the dev stage again rather than editing the file")
    try:
        judged_variant = Variant.from_dict(judged["variant"]) if isinstance(judged["variant"], dict) else None
    except (ConfigError, TypeError):
        judged_variant = None
    if judged_variant != variant or judged["difficulty"] != difficulties[0]:
        raise VariantsError(f"{where}: the benchmark verdict judged another variant or difficulty "
                            f"({judged['variant']}, difficulty {judged['difficulty']}) than the file fixes "
                            f"({variant.to_dict()}, difficulty {difficulties[0]}); run the dev stage again for this "
                            f"variant rather than editing the file")


def check_benchmark_verdict(variants: Variants, allow_rejected: bool = False, where: str = "variants",
                            data: str | None = None) -> str:
    """The verdict of :meth:`Variants.verdict`; VariantsError for ``"rejected"`` and for
    ``"not recorded"`` (a benchmark never accepted) unless ``allow_rejected``: the test
    split would be spent on a benchmark not shown able to test the claim.  With ``data``,
    a recorded verdict must have judged that data source (always refused otherwise)."""
    verdict = variants.verdict()
    judged = variants.benchmark["judged"]["data"] if variants.benchmark is not None else None
    if data is not None and judged is not None and judged != data:
        raise VariantsError(f"{where}: the dev stage's verdict judged the data {judged!r}, but this run uses {data!r}; "
                            f"pass --data {judged}, or run the dev stage on {data!r}")
    if verdict == "accepted" or allow_rejected:
        return verdict
    fix = ("run the dev stage again (it records the verdict), or pass --allow-rejected-benchmark to run anyway (the "
           "report says so)")
    if verdict == "not recorded":
        raise VariantsError(f"{where}: the variants file records no dev-stage verdict on the benchmark (it was written "
                            f"before the dev stage recorded one), so the benchmark was never accepted; {fix}")
    assert variants.benchmark is not None  # verdict() is "not recorded" without one: raised above
    checks = variants.benchmark["checks"]

    def why(name):
        c = checks.get(name)
        if c is None:
            return f"{name} missing"
        value = format(c["value"], ".3f") if c["value"] is not None else "did not run or is not a number"
        return f"{name} {value} ({'<=' if c['passes_below'] else '>='} {c['threshold']:.2f})"

    failed = ", ".join(why(name) for name in failed_checks(checks))
    raise VariantsError(f"{where}: the dev stage rejected this benchmark (failed: {failed}), so a test run could not "
                        f"test the claim and would spend the test split; fix the benchmark and {fix}")


def read_variants(path: str) -> Variants:
    """The checked :class:`Variants` of the file at ``path`` (strict JSON; VariantsError)."""
    if not os.path.isfile(path):
        raise VariantsError(f"the variants file {path} does not exist; write it from the dev stage's "
                            f"proposed_variants.json and commit it before the test stage")
    try:
        data = read_json(path)
    except (OSError, ValueError, RecursionError) as err:
        raise VariantsError(f"the variants file {path} is not readable strict JSON ({err})") from None
    return Variants.from_dict(data, where=path)


def variants_digest(path: str) -> str:
    """SHA-256 of the file's bytes (recorded in the results)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _git(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    # --no-optional-locks: read-only, never refreshes the index of a shared working tree
    return subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def _matches_head(root: str, rel: str, path: str) -> bool:
    """Whether the file at ``path`` is, as git would store it, the blob of ``rel`` in HEAD:
    its object id after git's own conversions for that path (line endings under
    ``core.autocrlf``, ``.gitattributes`` filters) against HEAD's.  Computed from the file's
    bytes, never from the index, so ``git update-index --assume-unchanged`` hides nothing."""
    rel = rel.replace(os.sep, "/")
    head = _git(["rev-parse", "--verify", "--quiet", f"HEAD:{rel}"], root)
    mine = _git(["hash-object", f"--path={rel}", "--", path], root)
    return head.returncode == 0 and mine.returncode == 0 and head.stdout.strip() == mine.stdout.strip()


def commit_state(path: str) -> dict:
    """``{"repository", "path_in_repository", "head", "file_commit", "uncommitted_changes"}`` (the
    tracked files that differ from HEAD, which the report names) when ``path`` is tracked by git and
    its bytes are those of the file in HEAD (compared byte for byte with the committed blob,
    so ``git update-index --assume-unchanged`` hides nothing); VariantsError otherwise ("committed-looking": a test run
    must read a file that was fixed, in the repository's history, before it ran)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise VariantsError(f"the variants file {path} does not exist")
    if shutil.which("git") is None:
        raise VariantsError("git is not available, so the variants file cannot be shown to be committed; the test "
                            "stage runs only from a git checkout")
    folder = os.path.dirname(path)
    top = _git(["rev-parse", "--show-toplevel"], folder)
    if top.returncode != 0:
        raise VariantsError(f"the variants file {path} is not inside a git repository, so it cannot be shown to be "
                            f"committed; the test stage runs only from a git checkout")
    root = top.stdout.strip()
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    if _git(["ls-files", "--error-unmatch", "--", rel], root).returncode != 0:
        raise VariantsError(f"the variants file {rel} is not committed (git does not track it): commit it before "
                            f"the test stage (git add {rel} && git commit)")
    head = _git(["rev-parse", "--verify", "HEAD"], root)
    if head.returncode != 0:
        raise VariantsError(f"the repository at {root} has no commit yet: commit the variants file first")
    if not _matches_head(root, rel, path):  # from the file's bytes, never git diff (index flags can hide edits)
        raise VariantsError(f"the variants file {rel} has uncommitted changes (it differs from HEAD:{rel}): "
                            f"commit them (or restore the file) before the test stage")
    file_commit = _git(["log", "-1", "--format=%H", "--", rel], root).stdout.strip()
    # tracked files that differ from HEAD: the results name HEAD, so a reader must learn that the
    # code that ran was not HEAD's (a review found such edits neither refused nor recorded)
    status = _git(["status", "--porcelain", "--untracked-files=no"], root)
    changed = sorted(line[3:] for line in status.stdout.splitlines() if line.strip()) if status.returncode == 0 \
        else ["(git status failed)"]
    return {"repository": root, "path_in_repository": rel, "head": head.stdout.strip(), "file_commit": file_commit,
            "uncommitted_changes": changed}


def verify_variants(path: str, sha256: str | None = None) -> dict:
    """How the test stage knows the variants file was fixed in advance; VariantsError if it
    does not.  Returns the record the results keep: ``path``, ``sha256`` and either the git
    state (:func:`commit_state`) or, where the run has no git checkout (e.g. a copy of the
    working tree on another machine), the SHA-256 pin.

    ``sha256``: a pin, the SHA-256 of the committed file taken from the repository (e.g.
    ``git show HEAD:configs/experiment_variants.json | sha256sum``); the file must match
    it.  In a git checkout the file must be committed as well; outside one the pin is
    required."""
    digest = variants_digest(path) if os.path.isfile(path) else None
    if digest is None:
        raise VariantsError(f"the variants file {path} does not exist")
    if sha256 is not None:
        pin = str(sha256).strip().lower()
        if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
            raise VariantsError(f"the SHA-256 pin must be 64 hexadecimal digits, got {sha256!r}")
        if pin != digest:
            raise VariantsError(f"the variants file {path} has SHA-256 {digest}, not the pinned {pin}: it is not the "
                                f"committed file")
    record = {"path": os.path.abspath(path), "sha256": digest}
    try:
        return {**record, "verified_by": "git", **commit_state(path)}
    except VariantsError as err:
        in_git = shutil.which("git") is not None and _git(["rev-parse", "--show-toplevel"],
                                                          os.path.dirname(os.path.abspath(path))).returncode == 0
        if sha256 is None or in_git:
            hint = "" if in_git else ("; on a machine without the git checkout, pin the committed file's SHA-256 "
                                      "(--variants-sha256)")
            raise VariantsError(f"{err}{hint}") from None
    return {**record, "verified_by": "sha256 pin (no git checkout here: compare the pin with the committed file)"}


# ----------------------------------------------------------------------------- the test folder


class DevFolderExists(ValueError):
    """The dev stage's result folder holds an earlier stage's files: each dev stage writes its own."""


def check_dev_folder(folder: str) -> None:
    """DevFolderExists unless ``folder`` (``OUT/dev``) is absent or empty: a second dev stage
    there replaced the first's ``proposed_variants.json`` (the file the user commits as the
    variants) and left the first's ``runs/`` among its own, which no file of the second names
    (ca_rev117)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DevFolderExists(f"{folder} is a file, not a folder; choose another --out")
    found = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise DevFolderExists(f"{folder} already holds a dev stage's files ({shown}): a second dev stage there "
                              f"would replace its proposed_variants.json and mix its runs with the new ones; give "
                              f"each dev stage its own --out")


def check_test_folder(folder: str, force: bool = False) -> bool:
    """Whether ``folder`` may become the test stage's result folder, without touching it:
    False if absent or empty, True if it is an earlier test result that ``force`` allows
    to replace; TestFolderExists otherwise (see :func:`claim_test_folder`)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise TestFolderExists(f"{folder} is a file, not a folder; choose another --out")
    if not (os.path.isdir(folder) and os.listdir(folder)):
        return False
    if not force:
        raise TestFolderExists(f"{folder} already holds test-stage results: the test split is touched once and its "
                               f"results are written once; pass --force to replace them, or choose another --out")
    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        raise TestFolderExists(f"{folder} is not empty and is not a test-stage result folder (no {MANIFEST}); "
                               f"refusing to replace it even with --force; choose another --out")
    return True


def _aside_number(name: str, base: str) -> int | None:
    head, _, number = name.rpartition(".run-")
    return int(number) if head == base and number.isdigit() else None


def aside_target(folder: str) -> str:
    """Where :func:`move_aside` would move ``folder``: ``<folder>.run-<N>`` beside it, ``N``
    above every ``<folder>.run-*`` there and every one the folder log (``test_runs.jsonl``)
    records as moved aside, so that a name is never reused."""
    folder = os.path.abspath(folder)
    parent, base = os.path.dirname(folder), os.path.basename(folder)
    used = [n for n in (_aside_number(name, base) for name in os.listdir(parent)) if n is not None]
    for run in read_test_runs(parent):
        moved = run.get("moved_aside")
        if isinstance(moved, dict) and isinstance(moved.get("to"), str):
            n = _aside_number(os.path.basename(moved["to"].rstrip("/")), base)
            used += [n] if n is not None else []
    return os.path.join(parent, f"{base}.run-{max(used, default=0) + 1}")


def move_aside(folder: str, target: str | None = None) -> str:
    """Move an earlier test run's ``folder`` (with every file in it, the user's included) to
    ``target`` (default :func:`aside_target`) by one atomic rename, and return that path.
    Nothing is deleted.  TestFolderExists when the target appeared meanwhile or the folder
    cannot be renamed (a mount point): nothing moved."""
    folder = os.path.abspath(folder)
    target = target or aside_target(folder)
    if os.path.lexists(target):  # raced by another process: refuse rather than replace
        raise TestFolderExists(f"{target} appeared while the earlier results were being moved aside; run again")
    try:
        os.rename(folder, target)
    except OSError as err:
        raise TestFolderExists(f"cannot move the earlier results of {folder} aside to {target} ({err.strerror or err}; "
                               f"e.g. a mount point): nothing was moved or deleted; choose another --out") from None
    return target


def claim_test_folder(folder: str, force: bool = False, record: dict | None = None,
                      target: str | None = None) -> str | None:
    """Make ``folder`` the test stage's result folder, or refuse (TestFolderExists); returns
    where an earlier run's results were moved (``None`` when there were none).

    An absent or empty folder is claimed.  An existing one is refused unless ``force``;
    with ``force`` it is moved aside whole (:func:`move_aside`: ``<folder>.run-<N>``, never
    deleted), but only if it holds the test stage's manifest (:data:`MANIFEST`): another
    folder is never touched.  The manifest (``record`` plus ``"status": "running"``) is
    written at once, so a run that dies half-way leaves a folder that only ``--force``
    moves aside."""

    moved = move_aside(folder, target) if check_test_folder(folder, force) else None
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, MANIFEST), {**(record or {}), "status": "running"})
    return moved


def read_manifest(folder: str) -> dict | None:
    """The test stage's manifest in ``folder`` (``None`` when absent or unreadable)."""
    try:
        data = read_json(os.path.join(folder, MANIFEST))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def finish_test_folder(folder: str, record: dict) -> None:
    """Mark the test stage's results complete (the manifest's ``status``)."""

    write_json(os.path.join(folder, MANIFEST), {**record, "status": "complete"})


# ----------------------------------------------------------------------------- splits


def split_seed(data: str, data_seed: int, difficulty: float, split: str) -> int:
    """The generator seed of one split: a stream of its own for every data source,
    difficulty (in thousandths), split and data seed (``0 .. DATA_SEED_MAX``), so that two
    benchmarks, two difficulties or two splits never share an image, a label or a head."""
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or not 0 <= data_seed <= DATA_SEED_MAX:
        raise ValueError(f"the experiment's data seed must be an integer from 0 to {DATA_SEED_MAX}, got {data_seed!r}")
    if data not in _SOURCE_STREAM:
        raise ValueError(f"no seed stream for data {data!r}; the synthetic sources are {', '.join(_SOURCE_STREAM)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    thousandths = difficulty_key(difficulty)
    if not 0 <= thousandths <= 1000:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    stream = (_SOURCE_STREAM[data] * 1001 + thousandths) * len(SPLITS) + SPLITS.index(split)
    return _FIRST_SEED + data_seed * _STREAMS_PER_SEED + stream


@dataclass(frozen=True)
class SplitSpec:
    """One image set: ``name``, its data ``seed``, ``n`` images, ``difficulty`` and
    ``mimic_types`` (``None``: the generator has none, or all of them)."""

    name: str
    seed: int
    n: int
    difficulty: float
    mimic_types: tuple | None = None


def split_specs(data: str, data_seed: int, sizes: dict, difficulty: float,
                held_out_mimic: str | None = None) -> dict[str, SplitSpec]:
    """The specs of the splits named in ``sizes`` (``{name: n}``, names of :data:`SPLITS`),
    each with its own generator seed (:func:`split_seed`).  With ``held_out_mimic``
    (data with mimic types only), every split but ``test_heldout`` draws mimics from the
    other types and ``test_heldout`` from that one alone; without it ``test_heldout`` is
    refused."""
    if data not in SYNTHETIC_SOURCES:
        raise ValueError(f"the protocol's disjoint splits are built for the synthetic sources "
                         f"({', '.join(SYNTHETIC_SOURCES)}), not {data!r}")
    if held_out_mimic is not None:
        if data not in MIMIC_SOURCES:
            raise ValueError(f"held_out_mimic needs mimic types ({', '.join(MIMIC_SOURCES)}), not {data!r}")
        if held_out_mimic not in MIMIC_TYPES:
            raise ValueError(f"held_out_mimic must be one of {MIMIC_TYPES}, got {held_out_mimic!r}")
    specs = {}
    for name, n in sizes.items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; the splits are {', '.join(SPLITS)}")
        if name == "test_heldout" and held_out_mimic is None:
            raise ValueError("the held-out test split needs a held-out mimic type")
        types = None
        if data in MIMIC_SOURCES:
            if held_out_mimic is None:
                types = tuple(MIMIC_TYPES)
            elif name == "test_heldout":
                types = (held_out_mimic,)
            else:
                types = tuple(t for t in MIMIC_TYPES if t != held_out_mimic)
        specs[name] = SplitSpec(name, split_seed(data, data_seed, difficulty, name), int(n), float(difficulty), types)
    return specs


def build_split(spec: SplitSpec, data: str, image_size: int, channels: int, in_memory: bool = True):
    """The dataset of ``spec`` (materialised once with ``in_memory``)."""
    if data not in SYNTHETIC_GENERATORS:
        raise ValueError(f"the protocol's splits are built for {SYNTHETIC_SOURCES}, not {data!r}")
    types = {"mimic_types": spec.mimic_types} if data in MIMIC_SOURCES else {}
    ds = synthetic_dataset(SYNTHETIC_GENERATORS[data], spec.n, image_size, channels, spec.difficulty,
                           seed=spec.seed, **types)
    return InMemory(ds) if in_memory else ds


def image_keys(spec: SplitSpec) -> range:
    """The generator keys of the split's images (``seed · 1000003 + i``)."""
    return seed_keys(spec.seed, spec.n)


def seed_keys(seed: int, n: int) -> range:
    """The generator keys of the first ``n`` images a synthetic generator draws at ``seed``."""
    return range(seed * IMAGES_PER_SEED, seed * IMAGES_PER_SEED + n)


def keys_meet(a: range, b: range) -> bool:
    """Whether two ranges of generator keys share a random stream: a key, or keys congruent
    modulo :data:`_STREAMS` (the generator's seed is their low 32 bits)."""
    if not len(a) or not len(b):  # an empty split uses no key
        return False
    # (two ranges that share a key share its stream too: the circle covers the plain overlap)
    gap = (b.start - a.start) % _STREAMS  # where b starts, on the circle of streams, from a's start
    return gap < len(a) or (a.start - b.start) % _STREAMS < len(b)


def check_disjoint(specs: dict[str, SplitSpec]) -> None:
    """ValueError unless no two splits share an image key (so no image) or a random stream
    (keys congruent modulo 2**32)."""
    # named by their keys (the test stage's "difficulty0.3/train": two conditions' 'train' splits
    # had both been called 'train')
    items = sorted(specs.items(), key=lambda kv: kv[1].seed)
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1:]:
            if a.seed == b.seed or keys_meet(image_keys(a), image_keys(b)):
                raise ValueError(f"splits {name_a!r} and {name_b!r} overlap (seeds {a.seed} and {b.seed}, "
                                 f"{a.n} and {b.n} images; their generator keys, or their keys modulo 2**32, which "
                                 f"torch's generator keeps, meet)")
    if any(s.n > IMAGES_PER_SEED for _, s in items):  # (exactly this many end one key before the next seed: ca_rev184)
        raise ValueError(f"a split of more than {IMAGES_PER_SEED} images would reach the next seed's images")


# ----------------------------------------------------------------------------- data seeds spent once


def default_ledger_path(variants_path: str) -> str:
    """The data ledger beside a variants file (``configs/data_ledger.json`` for the committed one),
    the file a link points to resolved first: the ledger beside a link to the committed file was
    an empty one, and a spent test seed ran again as "the first test run" (a review)."""
    return os.path.join(os.path.dirname(os.path.realpath(variants_path)), "data_ledger.json")


def read_ledger(path: str) -> list[dict]:
    """The runs the data ledger at ``path`` records (``[]`` when there is none): each
    ``{"stage", "data", "data_seed", "where", "splits": [{"name", "seed", "n", "difficulty"}]}``.
    VariantsError for a file that is not a ledger."""
    if not os.path.exists(path):
        return []
    try:
        data = read_json(path)
    except (OSError, ValueError, RecursionError) as err:
        raise VariantsError(f"the data ledger {path} is not readable strict JSON ({err})") from None
    return _ledger_entries(data, path)


def committed_ledger(path: str) -> list[dict]:
    """The runs the data ledger at ``path`` records in the repository's HEAD (``[]`` outside
    git, or where HEAD has no such file): a ledger deleted or edited in the checkout must not
    forget a spent seed that the committed one records (a review)."""
    root = _repository_root(path)
    if root is None:
        return []
    folder = os.path.dirname(os.path.realpath(path))
    rel = os.path.relpath(os.path.join(folder, os.path.basename(path)), os.path.realpath(root))
    return _committed_entries(root, rel.replace(os.sep, "/"))


def _repository_root(path: str) -> str | None:
    """The top of the git repository holding the file ``path`` (None outside git)."""
    folder = os.path.dirname(os.path.realpath(path))
    if shutil.which("git") is None or not os.path.isdir(folder):
        return None
    top = _git(["rev-parse", "--show-toplevel"], folder)
    return top.stdout.strip() if top.returncode == 0 else None


def _committed_entries(root: str, rel: str) -> list[dict]:
    """The runs of the ledger at ``rel`` (a path in the repository at ``root``) as committed at
    HEAD (``[]`` where HEAD has no such file); VariantsError where it is not strict JSON."""
    shown = _git(["show", f"HEAD:{rel}"], root)
    if shown.returncode != 0:
        return []
    try:
        data = json.loads(shown.stdout, parse_constant=strict_constant)
    except (ValueError, RecursionError) as err:
        raise VariantsError(f"the data ledger committed at HEAD:{rel} is not readable strict JSON ({err})") from None
    return _ledger_entries(data, f"HEAD:{rel}")


def repository_ledgers(path: str) -> list[dict]:
    """The runs of every ``data_ledger.json`` that the repository holding ``path`` tracks, as
    committed at HEAD and as in the working tree (``[]`` outside git): a variants file committed
    in another folder reads the ledger beside it, which must not forget the runs another folder's
    ledger of the same repository records (a review: a spent test seed ran again as the first)."""
    root = _repository_root(path)
    if root is None:
        return []
    # -z: paths as they are (without it git quotes a name that is not ASCII, and the ledger of
    # such a folder, its basename ending in a quote, was skipped: a review)
    listed = _git(["ls-tree", "-r", "-z", "--name-only", "HEAD"], root)
    if listed.returncode != 0:
        return []
    # and those in the working tree that are not committed yet: a test run writes its ledger
    # there, not to HEAD (review 50: the ledger a run beside a copy of the variants file had
    # just created was not read)
    fresh = _git(["ls-files", "-z", "--others", "--exclude-standard"], root)
    names = list(filter(None, listed.stdout.split("\0")))
    names += [n for n in filter(None, fresh.stdout.split("\0") if fresh.returncode == 0 else ()) if n not in names]
    out: list[dict] = []
    for rel in names:
        if os.path.basename(rel) != "data_ledger.json":
            continue
        out += _committed_entries(root, rel)
        out += read_ledger(os.path.join(root, rel))
    return out


def runs_elsewhere(ledger_path: str, mine: list[dict]) -> list[dict]:
    """The runs that the ledger at ``ledger_path`` (whose runs are ``mine``) lacks and its HEAD
    version (:func:`committed_ledger`) or another ledger of the repository
    (:func:`repository_ledgers`) records, each once, in that order: a spent seed stays spent
    wherever it is recorded."""
    out: list[dict] = []
    for r in committed_ledger(ledger_path) + repository_ledgers(ledger_path):
        if r not in mine and r not in out:
            out.append(r)
    return out


def _ledger_entries(data, path: str) -> list[dict]:
    """The ``spent`` list of a ledger's parsed JSON, checked (VariantsError naming ``path``)."""
    if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT or not isinstance(data.get("spent"), list):
        raise VariantsError(f"the data ledger {path} is not a {LEDGER_FORMAT} file (an object with 'format' and "
                            f"a list 'spent')")
    for i, run in enumerate(data["spent"]):
        splits = run.get("splits") if isinstance(run, dict) else None
        # (a split of n <= 0 images, or a bool, overlaps nothing: a hand-edited entry would spend nothing: ca_rev206)
        if not isinstance(splits, list) or not all(
                isinstance(sp, dict) and _is_int(sp.get("seed")) and _is_int(sp.get("n")) and sp["n"] >= 1
                for sp in splits):
            raise VariantsError(f"the data ledger {path}: entry {i} must hold 'splits', each with an integer 'seed' "
                                f"and a number of images 'n' of at least 1")
        problem = run_record_problem(run)
        if problem:
            raise VariantsError(f"the data ledger {path}: entry {i}: {problem}")
    return data["spent"]


def _overlaps(spec: SplitSpec, seed: int, n: int) -> bool:
    return keys_meet(image_keys(spec), seed_keys(seed, n))


def check_unspent(specs: dict[str, SplitSpec], spent: list[dict], what: str = "the test stage") -> None:
    """VariantsError unless no split of ``specs`` shares an image (a generator key) with a
    split that a recorded run (``spent``: :func:`read_ledger`, plus the verdict's dev
    stage) already used: one test run per benchmark and data seed."""
    for name, spec in specs.items():
        for run in spent:
            for sp in run["splits"]:
                if _overlaps(spec, sp["seed"], sp["n"]):
                    raise VariantsError(
                        f"{what} would reuse images: its {name} split (generator seed {spec.seed}) shares images "
                        f"with the {sp.get('name', '?')} split of a recorded {run.get('stage', '?')} run "
                        f"({run.get('data', '?')}, data seed {run.get('data_seed', '?')}, {run.get('where', '?')}); "
                        f"every stage of the protocol spends its own data seed: pass an unspent --data-seed")


def split_sizes(config) -> dict[str, int]:
    """The number of images of every split of :data:`SPLITS` under an ``ExperimentConfig``."""
    tc = config.train
    return {"train": tc.n_train, "val": tc.n_val, "dev": config.n_dev, "test": config.n_test,
            "test_heldout": config.n_test}


def condition_name(difficulty: float) -> str:
    """The name of a test-stage condition, ``"difficulty<d>"`` (``%g``; -0.0 named as 0.0,
    which it equals): its folder under ``runs/``, its rows' ``condition`` and its splits'
    keys in :func:`test_stage_specs` and the data ledger."""
    return f"difficulty{difficulty + 0.0:g}"


def test_stage_specs(config) -> dict[str, SplitSpec]:
    """Every split the test stage of an ``ExperimentConfig`` (its variants applied) builds,
    keyed ``"difficulty<d>/<split>"``."""
    names = ("train", "val", "dev", "test") + (("test_heldout",) if config.held_out_mimic else ())
    sizes = split_sizes(config)
    out = {}
    for difficulty in config.difficulties:
        specs = split_specs(config.train.data, config.train.data_seed, {k: sizes[k] for k in names}, difficulty,
                            config.held_out_mimic)
        out.update({f"{condition_name(difficulty)}/{name}": spec for name, spec in specs.items()})
    return out


def ledger_where(folder: str, ledger_path: str) -> str:
    """How the ledger names a result folder: relative to the repository holding the ledger
    (the folder above its ``configs/``), absolute when the folder lies outside it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(ledger_path)))
    rel = os.path.relpath(os.path.abspath(folder), root)
    return os.path.abspath(folder) if rel.startswith("..") else rel.replace(os.sep, "/")


def check_test_data(config, variants, ledger_path: str, where: str, force: bool = False,
                    variants_sha256: str | None = None, folder_runs: list | None = None) -> list[dict]:
    """Refuse (VariantsError) a test run whose splits (:func:`test_stage_specs` of
    ``config`` with ``variants``) share an image or a random stream with one another (two
    conditions' splits too), with the dev stage behind the verdict or with any run the data
    ledger at ``ledger_path`` records.  With ``force``, the earlier
    test runs recorded for the same folder ``where`` are allowed (a run replaced by
    ``--force``; its report says so), but only those of the same variants file
    (``variants_sha256``, where given): a variant changed after the test split was seen is
    refused (a review), and so is one that the folder's own log records (``folder_runs``: the
    test runs ``test_runs.jsonl`` beside the folder records into it, :func:`runs_into`), which
    a ledger beside another variants file does not hold.  Returns those replaced runs' ledger
    entries."""
    config = config.with_variants(variants)
    try:  # the run's own splits, every condition against every other, before anything is spent (ca_rev184)
        check_disjoint(test_stage_specs(config))
    except ValueError as err:
        raise VariantsError(f"the test stage's splits overlap one another: {err}; choose other difficulties or "
                            f"sizes") from None
    spent = read_ledger(ledger_path)
    spent += runs_elsewhere(ledger_path, spent)  # what HEAD or another ledger of the repository records stays spent
    replaced = [r for r in spent if force and r.get("stage") == "test" and r.get("where") == where]
    # the folder's own log (test_runs.jsonl) records the runs into it even where this ledger does not
    logged = [r for r in (folder_runs or ()) if force and r.get("stage") == "test"]
    changed = [r for r in replaced + logged if variants_sha256 is not None and r.get("variants_sha256") not in
               (None, variants_sha256)]
    if changed:
        assert variants_sha256 is not None  # (changed is empty without it)
        raise VariantsError(f"--force replaces an interrupted test run of the same variants only: the test run into "
                            f"{where} started {changed[0].get('started', '?')} ran the variants file with SHA-256 "
                            f"{str(changed[0].get('variants_sha256'))[:12]}…, this one's is {variants_sha256[:12]}…; "
                            f"a variant changed after its test split was seen breaks the protocol: test with an "
                            f"unspent --data-seed, and report both runs")
    others = [r for r in spent if not any(r is x for x in replaced)]
    check_unspent(test_stage_specs(config), others + spent_by_verdict(variants, split_sizes(config),
                                                                       config.held_out_mimic))
    return replaced


def ledger_entry(config, where: str, started: str, **extra) -> dict:
    """The data ledger's record of a test run of ``config`` (variants applied) written to
    ``where``; ``extra``: more fields (:func:`record_test_run`'s)."""
    return {"stage": "test", "data": config.train.data, "data_seed": config.train.data_seed, "where": where,
            "started": started, **extra,
            "splits": [{"name": key, "seed": s.seed, "n": s.n, "difficulty": s.difficulty}
                       for key, s in test_stage_specs(config).items()]}


#: The test stage's own evaluation sizes (recorded with every test run; not judged by the dev stage).
EVALUATION_SETTINGS = ("n_dev", "n_test", "n_explain", "n_sanity", "validity_images")


def record_test_run(config, variants_record: dict, started: str, where: str, forced: bool) -> dict:
    """What the ledger and ``test_runs.jsonl`` record of a test run of ``config`` (variants
    applied): its data, data seed, seeds, methods, difficulties, every setting
    (:func:`judged_settings` and :data:`EVALUATION_SETTINGS`), the variants file and where its
    results are kept (``results``).  After ``--force`` the experiment adds where the earlier
    results of its folder were moved (``moved_aside``: ``{"from", "to", "run_started",
    "run_id"}``: the earlier run's start and id), once it knows where they will go.
    ``run_id`` is unique: two runs started in one second are still told apart."""
    out = {"stage": "test", "run_id": uuid.uuid4().hex, "variants": variants_record,
           "variants_sha256": variants_record.get("sha256"), "started": started, "data": config.train.data,
           "data_seed": config.train.data_seed, "forced": bool(forced),
           "seeds": list(config.seeds), "methods": list(config.methods), "difficulties": list(config.difficulties),
           "held_out_mimic": config.held_out_mimic,
           "settings": {**judged_settings(config), **{k: getattr(config, k) for k in EVALUATION_SETTINGS}},
           "results": where}
    return out


def moved_by_id(run: dict, runs: list[dict]) -> str | None:
    """Where the first of ``runs`` whose ``moved_aside`` names ``run``'s id moved its results
    (None: ``run`` has no id, or none moved it).  By the id alone (unique): two ledgers name one
    folder differently (relative to each one's repository, or absolute), so ``from`` may spell
    it otherwise (review 50)."""
    for other in runs:
        moved = other.get("moved_aside")
        if isinstance(moved, dict) and run.get("run_id") and moved.get("run_id") == run["run_id"] \
                and isinstance(moved.get("to"), str):
            return moved["to"]
    return None


def history_of_test_runs(runs: list[dict], data: str) -> list[dict]:
    """The test runs of the benchmark ``data`` among ledger entries ``runs``, in order, each
    with ``results``: where its results are kept now (its folder, or where a later
    ``--force`` moved them: that run's ``moved_aside``)."""
    tests = [r for r in runs if isinstance(r, dict) and r.get("stage") == "test" and r.get("data") == data]
    out = []
    for i, run in enumerate(tests):
        results = run.get("results") or run.get("where")
        # a run with an id is moved by the run whose moved_aside names that id, wherever it is
        # listed (another ledger's runs come first: review 50) and however its ledger names the folder
        to = moved_by_id(run, tests)
        if to is not None:
            out.append({**{k: v for k, v in run.items() if k != "splits"}, "results": to})
            continue
        for later in tests[i + 1:]:
            moved = later.get("moved_aside")
            same = (moved.get("run_id") == run["run_id"] if isinstance(moved, dict) and moved.get("run_id")
                    and run.get("run_id") else isinstance(moved, dict) and moved.get("run_started") == run.get(
                        "started"))  # records written before run ids: by the start time
            if isinstance(moved, dict) and moved.get("from") == results and same:
                results = moved.get("to")
                break
        out.append({**{k: v for k, v in run.items() if k != "splits"}, "results": results})
    return out


def spent_by_verdict(variants, sizes: dict, held_out_mimic: str | None) -> list[dict]:
    """The dev stage's splits behind a recorded verdict (its data, data seed and first
    difficulty), as ledger entries; none for a verdict that records no data seed."""
    if variants.benchmark is None or "data_seed" not in variants.benchmark["judged"]:
        return []
    judged = variants.benchmark["judged"]
    sizes = {**sizes, **judged.get("sizes", {})}  # the sizes the dev stage drew, where its verdict records them
    specs = split_specs(judged["data"], judged["data_seed"], {k: sizes[k] for k in ("train", "val", "dev")},
                        judged["difficulty"], held_out_mimic)
    return [{"stage": "dev", "data": judged["data"], "data_seed": judged["data_seed"], "where": "the verdict",
             "splits": [{"name": s.name, "seed": s.seed, "n": s.n} for s in specs.values()]}]


@contextlib.contextmanager
def ledger_lock(path: str):
    """Hold the data ledger at ``path`` for one run's check-and-spend (:func:`spend` takes
    it too): a lock on its folder (:func:`~convex_attention.io.lock.folder_lock`, created if
    absent), so two test stages started together neither both take one data seed nor lose
    one of their entries (each read the ledger, then wrote it with its own run alone).  Inside
    a git repository the repository's top folder is locked first: the check reads every ledger
    of the repository (:func:`repository_ledgers`), and two runs through two ledgers of one
    repository had both spent one data seed (ca_rev184)."""
    folder = os.path.dirname(os.path.realpath(path))
    os.makedirs(folder, exist_ok=True)
    root = _repository_root(path)
    with contextlib.ExitStack() as held:
        if root is not None:  # (always before the ledger's folder: one order, no deadlock)
            held.enter_context(folder_lock(root))
        held.enter_context(folder_lock(folder))
        yield


def spend(path: str, entry: dict) -> None:
    """Add a run to the data ledger at ``path`` (created if absent), atomically, under
    :func:`ledger_lock`.  A ledger that is a symbolic link (one ledger shared by several
    checkouts) is written where it points: it stays a link."""
    real = os.path.realpath(path)
    note = ("The splits every run of the experiment spent (generator seeds and sizes): the test stage refuses a "
            "data seed whose images a recorded run already used. The test stage adds its run here before any "
            "work; commit this file with the run's results.")
    with ledger_lock(real):
        runs = read_ledger(real)
        write_json(real, {"format": LEDGER_FORMAT, "note": note, "spent": [*runs, entry]})


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: The fields of a run record (the ledger's, test_runs.jsonl's) that the reports and checks read,
#: and what each must be where present: a record edited by hand is refused when it is read,
#: before any work (a number for ``variants_sha256`` had ended the test stage in a TypeError
#: after its models were trained and its seed spent: ca_rev196).
RUN_RECORD_FIELDS: dict = {
    "stage": (_is_str, "a string"), "run_id": (_is_str, "a string"), "started": (_is_str, "a string"),
    "data": (_is_str, "a string"), "where": (_is_str, "a string"), "results": (_is_str, "a string"),
    "folder": (_is_str, "a string"), "note": (_is_str, "a string"),
    "variants_sha256": (lambda v: v is None or _is_str(v), "a string or null"),
    "data_seed": (_is_int, "an integer"), "forced": (lambda v: isinstance(v, bool), "true or false"),
    "seeds": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of integers"),
    "methods": (lambda v: isinstance(v, list) and all(_is_str(x) for x in v), "a list of strings"),
    "variants": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "moved_aside": (lambda v: isinstance(v, dict), "an object"),
}


def run_record_problem(record: dict) -> str | None:
    """What is wrong with a run record's fields (:data:`RUN_RECORD_FIELDS`), in words; None
    where nothing is."""
    for name, (ok, what) in RUN_RECORD_FIELDS.items():
        if name in record and not ok(record[name]):
            return f"its {name!r} must be {what}, got {json.dumps(record[name])[:40]}"
    return None


def read_test_runs(folder: str) -> list[dict]:
    """The test runs ``folder/test_runs.jsonl`` records (none when it does not exist): one
    strict-JSON object a line.  VariantsError, one line naming the file and the line, for
    a file that is not UTF-8 text (a byte-order mark, NUL bytes, other bytes), a line
    that is not a JSON object (a run killed while appending leaves a cut line) or one whose
    fields are not what :data:`RUN_RECORD_FIELDS` says."""
    path = os.path.join(folder, TEST_RUN_LOG)
    if not os.path.exists(path):
        return []
    fix = ("repair or remove that line by hand (the log records which test runs used this folder; it is never "
           "rewritten by the tool)")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as err:
        raise VariantsError(f"the test run log {path} cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise VariantsError(f"the test run log {path} is not UTF-8 text (byte {err.start}: {err.reason}); {fix}") \
            from None
    runs = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=strict_constant)
        except (ValueError, RecursionError) as err:
            raise VariantsError(f"the test run log {path}, line {number}, is not strict JSON ({err}); {fix}") from None
        if not isinstance(record, dict):
            raise VariantsError(f"the test run log {path}, line {number}, is not a JSON object; {fix}")
        problem = run_record_problem(record)
        if problem:
            raise VariantsError(f"the test run log {path}, line {number}: {problem}; {fix}")
        runs.append(record)
    return runs


def runs_into(folder: str) -> list[dict]:
    """The test runs that the log beside ``folder`` (``test_runs.jsonl`` of its parent) records
    into it: those whose ``folder`` names it (relative or absolute: two ledgers name one folder
    differently, so it is matched by its name in that parent)."""
    folder = os.path.abspath(folder)
    name = os.path.basename(folder)
    return [r for r in read_test_runs(os.path.dirname(folder))
            if isinstance(r.get("folder"), str) and os.path.basename(r["folder"].rstrip("/")) == name]


def log_test_run(folder: str, record: dict) -> list[dict]:
    """Append a test run to ``folder/test_runs.jsonl`` (never rewritten: ``--force``
    replaces the results, not this log); returns every run it records, this one last.
    The log is read first (:func:`read_test_runs`: VariantsError for a damaged one)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, TEST_RUN_LOG)
    previous = read_test_runs(folder)
    with open(path, "a+b") as f:
        # a last line without its line end (read_test_runs accepts it: an editor's save) would
        # run into this record, and the log would read no more
        size = f.seek(0, os.SEEK_END)
        unended = False
        if size:
            f.seek(size - 1)
            unended = f.read(1) != b"\n"
        f.write((("\n" if unended else "") + json.dumps(record, allow_nan=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return [*previous, record]


# ----------------------------------------------------------------------------- the model-free reference


def fit_model_free(dataset, seed: int = 0, limit: int | None = None) -> dict:
    """The model-free reference map, chosen on ``dataset`` (the dev split, with masks):
    :func:`convex_attention.paper.validity.check_pixel_map` between its two halves picks
    the best per-pixel linear channel combination (fitted or fixed) by cross-fitted pixel
    AP.  Returns ``{"name", "weights" (C floats), "dev_ap", "check"}``; the weights of a
    fitted candidate are those fitted on the first half."""
    images, _, masks, _ = collect(dataset, limit)
    half = len(images) // 2
    if len(images) < MODEL_FREE_MIN_IMAGES:
        raise ValueError(f"the model-free map needs at least {MODEL_FREE_MIN_IMAGES} development images, got "
                         f"{len(images)}")
    # a choice of map, not a verdict: any lesion image in each half will do
    check = check_pixel_map(images[:half], masks[:half], images[half:], masks[half:], seed=seed, min_lesion_images=1)
    if not check.ran:
        return {"name": None, "weights": None, "dev_ap": math.nan, "check": check.to_dict()}
    best = check.detail["best"]
    fitted = check.detail["weights_fitted_on_training_set"]
    weights = fitted[best] if best in fitted else fixed_channel_maps(images.shape[1])[best].tolist()
    return {"name": best, "weights": [float(w) for w in weights], "dev_ap": check.value, "check": check.to_dict()}
