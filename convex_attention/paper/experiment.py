"""The paper's experiment, under a protocol that cannot be tuned to.

Attention CNNs (``softmax``, ``learned_dual``, ``exact``; one model variant for every
method) and a plain CNN without attention (``baselines/plain_cnn.py``, trained by the same
loop) are trained on the synthetic weakly-annotated lesions, on labels alone, and their
explanations are scored against the lesion masks.  The protocol
(:mod:`convex_attention.paper.protocol`) has two stages:

* ``--stage dev`` (may be repeated): trains every candidate variant (the grid of τ, α,
  the score head, a learned temperature and the dual source) with ``dev_seeds`` at the
  first difficulty and scores the attention maps on the **development** split (with
  masks) under every candidate upsampling.  It proposes the variant with the highest
  mean attention ``ap`` (pixel protocol; mean over the attention methods, their levels
  and the seeds; ties: higher balanced accuracy) in ``dev/proposed_variants.json``.  It
  also runs the validity checks on the development split, check (c) included: a plain
  CNN is trained with the dev seeds and compared with the proposed variant's best
  attention method; the verdict (accepted only if every check ran and passed) goes into
  the proposal.  That file, reviewed and committed as
  ``configs/experiment_variants.json``, fixes the test run.
* ``--stage test`` (touched once): reads the committed variants file (refuses an
  uncommitted one, and one whose benchmark the dev stage rejected unless
  ``allow_rejected_benchmark``), and at each difficulty it lists trains ``seeds`` x (methods + the
  plain CNN); on the **test** split and on the held-out-mimic test split it reports
  accuracy, map statistics, every explanation of every model (attention maps; GradCAM,
  DeepLIFT, LRP, Input×Gradient, Integrated Gradients on every model), the reference rows
  (the model-free map fitted on the dev split, the best possible block map), the map
  ablation and the model-parameter randomisation check.  It writes ``OUT/test`` once
  (``--force`` replaces it).

Checkpoints are selected on the label-only validation split (ROC AUC), where the decision
threshold is chosen too; balanced accuracy on the test split is measured at that
threshold.  Explanations use the first ``n_explain`` lesion images (label 1, non-empty
mask) of the test split.  Every summary is the mean over seeds (of per-seed means over
images) with the half-width of its 95 % confidence interval (Student t over seeds,
:func:`convex_attention.paper.explain.mean_ci`).

Configuration: :class:`ExperimentConfig` holds one :class:`TrainConfig` (``train``, with
its ``ModelConfig``) that every run starts from; each run sets its method, variant,
difficulty and seed.  ``train.difficulty`` is replaced by each condition's.  Two presets:
``FULL`` (width 16, 12 epochs, learning rate 2e-3, 5 seeds, a dev grid of 8 variants)
and ``QUICK`` (a smoke test: 64 x 64 images, width 8, 512 training images, 4 epochs, 2
seeds, one variant).
"""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from ..bench.timing import environment
from .explain_metrics import METRIC_NAMES, UPSAMPLINGS
from .models import ConfigError
from .models.unet import check_int
from .train import TrainConfig

__all__ = ["ExperimentConfig", "QUICK", "FULL", "run_experiment", "run_dev", "run_test", "STAGES",
           "RUN_COLUMNS", "PLAIN_CNN"]

STAGES = ("dev", "test")
PLAIN_CNN = "plain_cnn"
_GRID_FIELDS = {"grid_temperature": "temperature", "grid_alpha": "alpha", "grid_head": "head",
                "grid_learn_temperature": "learn_temperature", "grid_duals": "duals"}


def _default_train() -> TrainConfig:
    return TrainConfig(data_seed=0)


@dataclass
class ExperimentConfig:
    """Methods x seeds under the protocol of the module docstring.

    ``n_explain``: lesion images of the test (dev) split explained; ``target``: the class
    the post-hoc methods explain; ``baseline_model``: the models they explain (``"all"``,
    one model name, or ``None``); ``plain_cnn``: train the plain CNN too; ``n_dev``,
    ``n_test``: images of those splits (``train.n_train`` and ``train.n_val`` size the
    others); ``n_sanity``: images of the randomisation check; ``validity_images``: images
    per set given to the validity checks; ``dev_seeds``: seeds of the dev stage;
    ``difficulties``, ``held_out_mimic``: the dev stage's conditions (the test stage takes
    them from the variants file); ``grid_*``: the dev stage's candidate values.
    """

    methods: tuple = ("softmax", "learned_dual", "exact")
    seeds: tuple = (0, 1, 2, 3, 4)
    train: TrainConfig = field(default_factory=_default_train)
    n_explain: int = 64
    target: str = "true"
    baseline_model: str | None = "all"
    plain_cnn: bool = True
    n_dev: int = 500
    n_test: int = 500
    n_sanity: int = 16
    validity_images: int = 400
    dev_seeds: tuple = (0, 1)
    difficulties: tuple = (0.3, 0.6)
    held_out_mimic: str | None = "mottled"
    grid_temperature: tuple = (1.0,)
    grid_alpha: tuple = (10.0,)
    grid_head: tuple = ("bounded",)
    grid_learn_temperature: tuple = (False,)
    grid_duals: tuple = ("shared",)
    grid_upsampling: tuple = UPSAMPLINGS

    _TUPLES = ("methods", "seeds", "dev_seeds", "difficulties", "grid_temperature", "grid_alpha", "grid_head",
               "grid_learn_temperature", "grid_duals", "grid_upsampling")

    def __post_init__(self):
        for name in self._TUPLES:
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

    def override(self, **fields_) -> ExperimentConfig:
        """A copy with fields replaced; fields of ``TrainConfig``/``ModelConfig`` go into ``train``."""
        mine = {f.name for f in fields(self)}
        own = {k: v for k, v in fields_.items() if k in mine}
        rest = {k: v for k, v in fields_.items() if k not in mine}
        out = replace(self, **own)
        return replace(out, train=out.train.override(**rest)) if rest else out

    def variants(self):
        """The dev stage's candidates: every combination of the ``grid_*`` values (list of
        :class:`~convex_attention.paper.protocol.Variant`; upsampling ``nearest``, the
        upsampling candidates are scored on every trained model)."""
        from .protocol import variant_grid

        return variant_grid({model: getattr(self, g) for g, model in _GRID_FIELDS.items()})

    def with_variants(self, variants) -> ExperimentConfig:
        """The configuration the test stage runs: the variants file's difficulties, held-out
        mimic type, and its one variant as the only candidate."""
        v = variants.variant
        t = v.temperature if not isinstance(v.temperature, list) else tuple(v.temperature)
        return replace(self, difficulties=tuple(variants.difficulties), held_out_mimic=variants.held_out_mimic,
                       grid_temperature=(t,), grid_alpha=(v.alpha,), grid_head=(v.head,),
                       grid_learn_temperature=(v.learn_temperature,), grid_duals=(v.duals,),
                       grid_upsampling=(v.upsampling,))

    def validate(self) -> ExperimentConfig:
        """Check every field of the chain (ConfigError naming the field)."""
        from ..methods import get_method
        from .data.synthetic import MIMIC_TYPES
        from .protocol import MIMIC_SOURCES, SYNTHETIC_SOURCES

        if not isinstance(self.methods, tuple) or not self.methods:
            raise ConfigError("methods", f"methods must name at least one method, got {self.methods!r}")
        for m in self.methods:
            try:
                get_method(m)
            except ValueError as err:
                raise ConfigError("methods", str(err)) from None
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("methods", f"methods are listed twice: {self.methods}")
        for name in ("seeds", "dev_seeds"):
            seeds = getattr(self, name)
            if not isinstance(seeds, tuple) or not seeds:
                raise ConfigError(name, f"{name} must hold at least one seed, got {seeds!r}")
            for s in seeds:
                check_int(name, s, 0)
            if len(set(seeds)) != len(seeds):
                raise ConfigError(name, f"{name} are listed twice: {seeds}")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError("train", f"train must be a TrainConfig, got {type(self.train).__name__}")
        self.train.validate()
        if self.train.data_seed is None:
            raise ConfigError("data_seed", "the experiment's runs share one dataset: set train.data_seed")
        if self.train.data not in SYNTHETIC_SOURCES:
            raise ConfigError("data", f"the experiment's protocol builds five disjoint splits of the synthetic data "
                                      f"({', '.join(SYNTHETIC_SOURCES)}), not {self.train.data!r}; train and "
                                      f"explain other data with the train and explain commands")
        check_int("n_explain", self.n_explain, 1)
        if self.target not in ("true", "predicted"):
            raise ConfigError("target", f"target must be 'true' or 'predicted', got {self.target!r}")
        names = tuple(self.methods) + ((PLAIN_CNN,) if self.plain_cnn else ())
        if self.baseline_model not in (None, "all") and self.baseline_model not in names:
            raise ConfigError("baseline_model", f"baseline_model must be 'all', None or one of the models {names}, "
                                                f"got {self.baseline_model!r}")
        if not isinstance(self.plain_cnn, bool):
            raise ConfigError("plain_cnn", f"plain_cnn must be True or False, got {self.plain_cnn!r}")
        for name in ("n_dev", "n_test", "n_sanity", "validity_images"):
            check_int(name, getattr(self, name), 1)
        ds = self.difficulties
        if not isinstance(ds, tuple) or not 1 <= len(ds) <= 4 or len(set(ds)) != len(ds) or not all(
                isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and 0 <= d <= 1
                for d in ds):
            raise ConfigError("difficulties", f"difficulties must be 1 to 4 distinct numbers in [0, 1], got {ds!r}")
        if self.held_out_mimic is not None:
            if self.held_out_mimic not in MIMIC_TYPES:
                raise ConfigError("held_out_mimic", f"held_out_mimic must be one of {', '.join(MIMIC_TYPES)} or "
                                                    f"None, got {self.held_out_mimic!r}")
            if self.train.data not in MIMIC_SOURCES:
                raise ConfigError("held_out_mimic", f"held_out_mimic needs data with mimic types "
                                                    f"({', '.join(MIMIC_SOURCES)}), not {self.train.data!r}; set it "
                                                    f"to None")
        for grid in list(_GRID_FIELDS) + ["grid_upsampling"]:
            values = getattr(self, grid)
            if not isinstance(values, tuple) or not values or len(set(map(repr, values))) != len(values):
                raise ConfigError(grid, f"{grid} must hold at least one candidate, each once, got {values!r}")
        for u in self.grid_upsampling:
            if u not in UPSAMPLINGS:
                raise ConfigError("grid_upsampling", f"grid_upsampling must be among {', '.join(UPSAMPLINGS)}, "
                                                     f"got {u!r}")
        for variant in self.variants():
            for method in self.methods:
                try:
                    replace(self.train.model, method=method, **variant.model_fields(method)).validate()
                except ConfigError as err:
                    grid = next((g for g, m in _GRID_FIELDS.items() if m == err.field), err.field)
                    raise ConfigError(grid, f"{grid} (variant {variant.label()}, method {method}): {err}") from None
        return self

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in self._TUPLES:
            out[name] = list(getattr(self, name))
        out["train"] = self.train.to_dict()
        return out


QUICK = ExperimentConfig(seeds=(0, 1), train=TrainConfig.build(image_size=64, width=8, n_train=512, n_val=128,
                                                               difficulty=0.3, epochs=4, lr=3e-3, data_seed=0),
                         n_explain=8, n_dev=96, n_test=96, n_sanity=4, validity_images=96, dev_seeds=(0,),
                         grid_upsampling=("nearest",))
FULL = ExperimentConfig(train=TrainConfig.build(width=16, epochs=12, lr=2e-3, data_seed=0),
                        grid_temperature=(1.0, 0.3), grid_alpha=(10.0, 1.0), grid_head=("bounded", "learned"))

RUN_COLUMNS = ("condition", "test_set", "model", "seed", "best_epoch", "epoch_time_s", "train_time_s", "val_auc",
               "threshold", "auc", "bacc", "bacc_argmax", "acc", "violation", "n_max_p_L0", "n_max_p_L1",
               "n_max_p_L2", "entropy_ratio_L0", "entropy_ratio_L1", "entropy_ratio_L2", "score_range_L0",
               "score_range_L1", "score_range_L2", "bacc_uniform", "bacc_shuffled", "delta_bacc_uniform",
               "delta_bacc_shuffled", "auc_uniform", "auc_shuffled", "delta_auc_uniform", "delta_auc_shuffled")
_ACCURACY = ("auc", "bacc", "bacc_argmax", "violation", "n_max_p_L0", "n_max_p_L1", "entropy_ratio_L0",
             "entropy_ratio_L1", "score_range_L0", "score_range_L1", "epoch_time_s", "best_epoch")
_ABLATION = ("delta_bacc_uniform", "delta_bacc_shuffled", "delta_auc_uniform", "delta_auc_shuffled")


def run_experiment(config: ExperimentConfig, out: str, progress: bool = True, log=print, stage: str = "dev",
                   variants_path: str | None = None, force: bool = False, variants_sha256: str | None = None,
                   allow_rejected_benchmark: bool = False) -> dict:
    """Run one stage of the protocol into ``out/dev`` or ``out/test`` (module docstring).

    The test stage reads ``variants_path`` (default: the committed
    ``configs/experiment_variants.json``) and refuses it unless it is committed (or, with
    no git checkout, matches the pin ``variants_sha256``:
    :func:`~convex_attention.paper.protocol.verify_variants`); it refuses a file whose
    benchmark the dev stage rejected unless ``allow_rejected_benchmark``
    (:func:`~convex_attention.paper.protocol.check_benchmark_verdict`), and an existing
    ``out/test`` unless ``force``.  Returns the stage's results (``{"report": markdown,
    ...}``)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    config.validate()
    if stage == "dev":
        return run_dev(config, os.path.join(out, "dev"), progress=progress, log=log)
    from .protocol import DEFAULT_VARIANTS_PATH, check_benchmark_verdict, read_variants, verify_variants

    path = variants_path or DEFAULT_VARIANTS_PATH
    variants = read_variants(path)
    variants.validate(config.methods, where=path)
    record = verify_variants(path, variants_sha256)
    verdict = check_benchmark_verdict(variants, allow_rejected_benchmark, where=path, data=config.train.data)
    if verdict != "accepted":
        log(f"[test] WARNING: the dev stage's verdict on this benchmark: {verdict}; running anyway "
            f"(--allow-rejected-benchmark)")
    return run_test(config, os.path.join(out, "test"), variants, record, force=force, progress=progress, log=log)


# ----------------------------------------------------------------------------- shared steps


def _device(config: ExperimentConfig) -> str:
    import torch

    dev = config.train.device
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return dev


def _splits(config: ExperimentConfig, difficulty: float, names) -> tuple[dict, dict]:
    """``(specs, datasets)`` of the named splits at ``difficulty``, checked disjoint."""
    from .protocol import build_split, check_disjoint, split_specs

    tc = config.train
    n = {"train": tc.n_train, "val": tc.n_val, "dev": config.n_dev, "test": config.n_test,
         "test_heldout": config.n_test}
    specs = split_specs(tc.data, tc.data_seed, {k: n[k] for k in names}, difficulty, config.held_out_mimic)
    check_disjoint(specs)
    return specs, {k: build_split(s, tc.data, tc.model.image_size, tc.model.in_channels) for k, s in specs.items()}


def _train_one(config: ExperimentConfig, datasets, folder: str, method: str, seed: int, difficulty: float,
               model_fields: dict | None, progress: bool, log) -> dict:
    """Train one model (``method``; ``PLAIN_CNN`` for the plain CNN) and load its selected
    checkpoint: ``{"model", "threshold", "best_epoch", "epoch_time_s", "train_time_s", "val_auc"}``."""
    from baselines.plain_cnn import PlainCNN, load_plain_cnn

    from .models import load_model
    from .train import train

    plain = method == PLAIN_CNN
    fields_ = {"method": "softmax"} if plain else {"method": method, **(model_fields or {})}
    tc = replace(config.train.override(difficulty=difficulty, **fields_), out=folder, seed=seed, progress=progress,
                 resume=None)
    start = time.perf_counter()
    result = train(tc, datasets=datasets, log=log, model_class=PlainCNN if plain else None)
    elapsed = time.perf_counter() - start
    model, state = (load_plain_cnn if plain else load_model)(result["best"])
    best = next(m for m in result["metrics"] if m["epoch"] == result["best_epoch"])
    threshold = state.get("threshold")
    return {"model": model, "threshold": float(threshold) if isinstance(threshold, (int, float)) else math.nan,
            "best_epoch": best["epoch"], "val_auc": best["val_auc"], "train_time_s": elapsed,
            "epoch_time_s": float(np.mean([m["epoch_time_s"] for m in result["metrics"]]))}


def _evaluate(model, dataset, threshold: float, device, ablation: bool, seed: int) -> dict:
    """Classification at ``threshold``, mean violation, map statistics per level and (for
    attention models, with ``ablation``) the map ablation, on ``dataset``."""
    from .sanity import classification, map_ablation, map_statistics, predict

    pred = predict(model, dataset, device=device, keep_maps=True)
    row = classification(pred["logits"], pred["labels"], threshold)
    row["violation"] = math.nan  # a model without attention has no maps to be consistent
    if getattr(model, "has_attention", True):
        row["violation"] = float(pred["violation"].mean())
        for s in map_statistics(pred["maps"], pred["scores"]):
            for key in ("n_max_p", "entropy_ratio", "score_range"):
                row[f"{key}_L{s['level']}"] = s[key]
        if ablation:
            ab = map_ablation(model, dataset, threshold, device=device, seed=seed)
            row.update({k: ab[k] for k in ab if k.startswith(("bacc_", "auc_", "delta_"))
                        and k != "bacc_argmax"})
    return row


def _validity(train_set, held_out, config: ExperimentConfig) -> list:
    from .validity import run_checks

    return run_checks(train_set, held_out, seed=config.train.data_seed, limit=config.validity_images)


def _uniform_check(attention: dict, plain: list, where: str):
    """Check (c) from per-seed balanced accuracies: the best attention method's mean
    (``attention``: method -> values) against the plain CNN's mean (``plain``).  Not run,
    with the reason, when the plain CNN was not trained or a value is not finite (a model
    whose validation threshold is NaN): a check that cannot be judged never passes, and
    never crashes a stage after its training."""
    from .validity import check_uniform_attention

    if not plain:
        return replace(check_uniform_attention(None, None),
                       reason="the plain CNN was not trained (plain_cnn off); the experiment trains it for check (c)")
    values = {**{m: list(v) for m, v in attention.items()}, PLAIN_CNN: list(plain)}
    bad = sorted(m for m, v in values.items() if not v or not all(math.isfinite(x) for x in v))
    if bad:
        return replace(check_uniform_attention(None, None),
                       reason=f"balanced accuracy not finite (or missing) on {where} for {', '.join(bad)}: a model "
                              f"failed to train or its validation threshold is NaN, so (c) cannot be judged")
    means = {m: float(np.mean(v)) for m, v in values.items()}
    return check_uniform_attention(max(means[m] for m in attention), means[PLAIN_CNN])


def _cond(difficulty: float) -> str:
    return f"difficulty{difficulty:g}"


def _fmt(s: dict, metric: str, digits: int = 3) -> str:
    from .explain import format_ci

    return format_ci(s.get(f"{metric}_mean", math.nan), s.get(f"{metric}_ci95", math.nan), digits)


def _summary(rows: list[dict], keys: tuple, metrics) -> list[dict]:
    """Mean ± 95 % CI half-width (Student t over the rows: one per seed) of ``metrics`` per group ``keys``."""
    from .explain import mean_ci

    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, rs in groups.items():
        entry = dict(zip(keys, key))
        entry["seeds"] = len({r.get("seed") for r in rs})
        for m in metrics:
            entry[f"{m}_mean"], entry[f"{m}_ci95"] = mean_ci([r.get(m, math.nan) for r in rs])
        out.append(entry)
    return out


def _validity_lines(results: list, heading: str) -> list[str]:
    lines = [f"### {heading}", "", "| check | number | passes if | status | note |", "|---|---|---|---|---|"]
    for r in results:
        rule = f"{'<=' if r.passes_below else '>='} {r.threshold:.2f}"
        value = "–" if r.value is None or not math.isfinite(r.value) else f"{r.value:.3f}"
        note = r.note if r.ran else r.reason
        lines.append(f"| {r.name} ({r.title}) | {r.metric} {value} | {rule} | {r.status} | {note} |")
    return lines + [""]


# ----------------------------------------------------------------------------- the dev stage


def run_dev(config: ExperimentConfig, folder: str, progress: bool = True, log=print) -> dict:
    """The development stage (module docstring); writes ``folder`` (``dev_runs.csv``,
    ``dev_summary.csv``, ``dev.md``, ``proposed_variants.json``, ``dev.json``)."""
    import torch

    from ..bench.results import atomic_csv, atomic_write_text, write_json
    from .explain import explanations, lesion_indices, mean_ci, score_explanations
    from .protocol import Variants, benchmark_record, failed_checks

    config.validate()
    os.makedirs(folder, exist_ok=True)
    device = _device(config)
    difficulty = config.difficulties[0]
    specs, sets = _splits(config, difficulty, ("train", "val", "dev"))
    log(f"[dev] splits at difficulty {difficulty:g}: " + ", ".join(f"{k} {s.n} (seed {s.seed})"
                                                                   for k, s in specs.items()))
    validity = _validity(sets["train"], sets["dev"], config)
    for r in validity:
        if r.name != "uniform_attention":  # (c) needs the trained models: judged and logged after them
            log(f"[dev] validity: {r.line()}")
    indices = lesion_indices(sets["dev"], config.n_explain)
    variants = config.variants()
    trained: dict = {}
    runs_per_method: dict = defaultdict(int)
    rows = []
    for seed in config.dev_seeds:
        for vi, variant in enumerate(variants):
            for method in config.methods:
                key = (variant.effective(method), seed)
                if key not in trained:
                    run_folder = os.path.join(folder, "runs", f"{method}-{runs_per_method[method]}-seed{seed}")
                    runs_per_method[method] += 1
                    got = _train_one(config, (sets["train"], sets["val"]), run_folder, method, seed, difficulty,
                                     variant.model_fields(method), progress, log)
                    result = {k: v for k, v in got.items() if k != "model"}
                    result.update(_evaluate(got["model"], sets["dev"], got["threshold"], device, ablation=False,
                                            seed=seed))
                    ap = defaultdict(list)
                    for start in range(0, len(indices), 16):
                        batch = [sets["dev"][i] for i in indices[start:start + 16]]
                        images = torch.stack([b[0] for b in batch]).to(device)
                        masks = torch.stack([b[2] for b in batch])
                        maps = explanations(got["model"], images, config.target, posthoc=False)
                        for u in config.grid_upsampling:
                            for r in score_explanations(maps, masks, upsampling=u):
                                ap[(u, r["level"])].append(r["ap"])
                    for (u, level), values in ap.items():
                        result[f"ap_{u}_L{level}"] = float(np.nanmean(values))
                    trained[key] = result
                    log(f"[dev] {method} ({variant.label()}) seed {seed}: dev auc {result['auc']:.3f}, balanced acc "
                        f"{result['bacc']:.3f}, attention ap " + ", ".join(
                            f"{k[3:]} {v:.3f}" for k, v in result.items() if k.startswith("ap_")))
                for u in config.grid_upsampling:
                    r = dict(trained[key])
                    levels = [v for k, v in r.items() if k.startswith(f"ap_{u}_L")]
                    rows.append({"variant": vi, **{f: getattr(variant, f) for f in variant.MODEL_FIELDS},
                                 "upsampling": u, "method": method, "seed": seed,
                                 "attention_ap": float(np.mean(levels)),
                                 **{k: r[k] for k in ("auc", "bacc", "bacc_argmax", "violation", "best_epoch",
                                                      "threshold", "val_auc", "n_max_p_L0", "n_max_p_L1",
                                                      "entropy_ratio_L0", "score_range_L0") if k in r},
                                 **{k: v for k, v in r.items() if k.startswith(f"ap_{u}_")}})
    # check (c) before the test split is touched: the plain CNN (uniform pooling) with the same dev seeds
    plain_rows = []
    if config.plain_cnn:
        for seed in config.dev_seeds:
            got = _train_one(config, (sets["train"], sets["val"]),
                             os.path.join(folder, "runs", f"{PLAIN_CNN}-seed{seed}"), PLAIN_CNN, seed, difficulty,
                             None, progress, log)
            result = _evaluate(got["model"], sets["dev"], got["threshold"], device, ablation=False, seed=seed)
            plain_rows.append({"method": PLAIN_CNN, "seed": seed,
                               **{k: got[k] for k in ("best_epoch", "threshold", "val_auc")},
                               **{k: result[k] for k in ("auc", "bacc", "bacc_argmax")}})
            log(f"[dev] {PLAIN_CNN} seed {seed}: dev auc {result['auc']:.3f}, balanced acc {result['bacc']:.3f}")
    columns = list(dict.fromkeys(k for r in rows + plain_rows for k in r))
    atomic_csv(os.path.join(folder, "dev_runs.csv"), columns, rows + plain_rows)
    # one score per (variant, upsampling): the mean over methods, seeds and levels of the attention ap
    summary = []
    for vi, variant in enumerate(variants):
        for u in config.grid_upsampling:
            rs = [r for r in rows if r["variant"] == vi and r["upsampling"] == u]
            ap, ap_ci = mean_ci([r["attention_ap"] for r in rs])
            bacc, bacc_ci = mean_ci([r["bacc"] for r in rs])
            entry = {"variant": vi, "upsampling": u, "label": replace(variant, upsampling=u).label(),
                     "attention_ap_mean": ap,
                     "attention_ap_ci95": ap_ci, "bacc_mean": bacc, "bacc_ci95": bacc_ci}
            for method in config.methods:
                entry[f"{method}_ap"] = float(np.mean([r["attention_ap"] for r in rs if r["method"] == method]))
                entry[f"{method}_bacc"] = float(np.mean([r["bacc"] for r in rs if r["method"] == method]))
            summary.append(entry)
    summary.sort(key=lambda e: (-_finite(e["attention_ap_mean"]), -_finite(e["bacc_mean"])))
    atomic_csv(os.path.join(folder, "dev_summary.csv"), list(summary[0]), summary)
    best = summary[0]
    chosen = replace(variants[best["variant"]], upsampling=best["upsampling"])
    # (c) for the proposed variant: its best attention method against the plain CNN, means over the dev seeds
    chosen_rows = [r for r in rows if r["variant"] == best["variant"] and r["upsampling"] == best["upsampling"]]
    uniform = _uniform_check({m: [r["bacc"] for r in chosen_rows if r["method"] == m] for m in config.methods},
                             [r["bacc"] for r in plain_rows], "the development split")
    validity = [uniform if r.name == "uniform_attention" else r for r in validity]
    log(f"[dev] validity: {uniform.line()}")
    tc = config.train
    record = benchmark_record(validity, chosen, difficulty, config.methods, config.dev_seeds,
                              {"image_size": tc.model.image_size, "width": tc.model.width, "epochs": tc.epochs,
                               "n_train": tc.n_train}, data=tc.data)
    failed = failed_checks(record["checks"])
    log(f"[dev] benchmark {'accepted' if record['accepted'] else 'REJECTED'} on the development split" + (
        "" if record["accepted"] else f" (failed or not run: {', '.join(failed)}); the test stage will refuse it "
                                      f"unless --allow-rejected-benchmark"))
    proposal = Variants(chosen, tuple(config.difficulties), config.held_out_mimic,
                        note=f"Proposed by the dev stage: highest mean attention ap (pixel protocol) on the first "
                             f"{len(indices)} lesion images of the dev split ({specs['dev'].n} images, difficulty "
                             f"{difficulty:g}), mean over methods {', '.join(config.methods)}, their levels and dev "
                             f"seeds {list(config.dev_seeds)}: {best['attention_ap_mean']:.3f} (balanced accuracy "
                             f"{best['bacc_mean']:.3f}), among {len(summary)} candidates. Benchmark "
                             f"{'accepted' if record['accepted'] else 'rejected'} by the validity checks on the dev "
                             f"split.", benchmark=record)
    write_json(os.path.join(folder, "proposed_variants.json"), proposal.to_dict())
    report = _dev_report(config, specs, validity, summary, proposal, len(indices), plain_rows)
    atomic_write_text(os.path.join(folder, "dev.md"), report)
    write_json(os.path.join(folder, "dev.json"), {"stage": "dev", "config": config.to_dict(),
                                                  "splits": {k: asdict(s) for k, s in specs.items()},
                                                  "validity": [r.to_dict() for r in validity], "summary": summary,
                                                  "plain_cnn": plain_rows,
                                                  "proposal": proposal.to_dict(), "environment": environment(device)})
    return {"stage": "dev", "rows": rows, "summary": summary, "proposal": proposal, "report": report,
            "validity": validity}


def _finite(x) -> float:
    return x if isinstance(x, float) and math.isfinite(x) else -math.inf


def _dev_report(config, specs, validity, summary, proposal, n_images, plain_rows) -> str:
    lines = ["# Experiment: development stage", "",
             f"Development split: {specs['dev'].n} images (data seed {specs['dev'].seed}, difficulty "
             f"{specs['dev'].difficulty:g}, mimic types {', '.join(specs['dev'].mimic_types or ('-',))}); "
             f"attention maps scored on its first {n_images} lesion images. Training: {specs['train'].n} images; "
             f"checkpoint selection and threshold on the label-only validation split ({specs['val'].n} images). "
             f"Seeds {list(config.dev_seeds)}. Mean ± 95 % CI half-width (Student t over methods x seeds).", "",
             "## Validity checks (training vs development images)", "",
             "Check (c) compares the proposed variant's best attention method with the plain CNN (uniform "
             "pooling), mean balanced accuracy over the dev seeds on the development split"
             + (": plain CNN " + ", ".join(f"seed {r['seed']} {r['bacc']:.3f}" for r in plain_rows) + "."
                if plain_rows else "; the plain CNN was not trained (plain_cnn off), so (c) did not run."), ""]
    lines += _validity_lines(validity, "checks")
    verdict = proposal.verdict()
    lines += [f"**Benchmark {verdict.upper()} on the development split.**" + (
        "" if verdict == "accepted" else " The test stage refuses this variants file unless "
                                         "`--allow-rejected-benchmark` is given (and then says so in its report)."), ""]
    lines += ["## Candidates (best first)", "",
              "| variant | attention ap | balanced acc | " + " | ".join(f"{m} ap | {m} bacc" for m in config.methods)
              + " |", "|" + "---|" * (3 + 2 * len(config.methods))]
    for e in summary:
        lines.append(f"| {e['label']} | {_fmt(e, 'attention_ap')} | {_fmt(e, 'bacc')} | " + " | ".join(
            f"{e[f'{m}_ap']:.3f} | {e[f'{m}_bacc']:.3f}" for m in config.methods) + " |")
    lines += ["", f"Proposed: {proposal.variant.label()}. Review `proposed_variants.json`, copy it to "
                  f"`configs/experiment_variants.json`, commit it, then run `--stage test`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the test stage


def run_test(config: ExperimentConfig, folder: str, variants, variants_record: dict, force: bool = False,
             progress: bool = True, log=print) -> dict:
    """The test stage (module docstring) with the checked ``variants`` (whose file is
    described by ``variants_record``: path, SHA-256, commit); writes ``folder`` once."""
    import torch

    from ..bench.results import atomic_csv, write_json
    from .explain import (
        EXPLAIN_COLUMNS,
        explain_models,
        lesion_indices,
        plot_examples,
        plot_metric_summary,
        summarise,
    )
    from .protocol import claim_test_folder, finish_test_folder, fit_model_free
    from .sanity import randomisation_check

    config = config.with_variants(variants).validate()
    variant = variants.variant
    device = _device(config)
    record = {"stage": "test", "variants": variants_record, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    claim_test_folder(folder, force, record)
    os.makedirs(os.path.join(folder, "rows"), exist_ok=True)
    models_all = tuple(config.methods) + ((PLAIN_CNN,) if config.plain_cnn else ())
    posthoc = {"all": models_all, None: ()}.get(config.baseline_model, (config.baseline_model,))
    runs, seed_means, randomisation, conditions = [], [], [], []
    for difficulty in config.difficulties:
        cond = _cond(difficulty)
        names = ("train", "val", "dev", "test") + (("test_heldout",) if config.held_out_mimic else ())
        specs, sets = _splits(config, difficulty, names)
        log(f"[test] {cond}: " + ", ".join(f"{k} {s.n} (seed {s.seed})" for k, s in specs.items()))
        validity = _validity(sets["train"], sets["test"], config)
        model_free = fit_model_free(sets["dev"], seed=config.train.data_seed, limit=config.validity_images)
        test_sets = {"test": sets["test"]}
        if config.held_out_mimic:
            test_sets[f"heldout_{config.held_out_mimic}"] = sets["test_heldout"]
        indices = {t: lesion_indices(ds, config.n_explain) for t, ds in test_sets.items()}
        for seed in config.seeds:
            trained = {}
            for name in models_all:
                fields_ = None if name == PLAIN_CNN else variant.model_fields(name)
                trained[name] = _train_one(config, (sets["train"], sets["val"]),
                                           os.path.join(folder, "runs", cond, f"{name}-seed{seed}"), name, seed,
                                           difficulty, fields_, progress, log)
            models = {n: t["model"] for n, t in trained.items()}
            for tname, tset in test_sets.items():
                for name, t in trained.items():
                    row = {"condition": cond, "test_set": tname, "model": name, "seed": seed,
                           **{k: t[k] for k in ("best_epoch", "epoch_time_s", "train_time_s", "val_auc", "threshold")},
                           **_evaluate(t["model"], tset, t["threshold"], device, ablation=True, seed=seed)}
                    runs.append(row)
                    ablated = (f" (uniform maps {row['delta_bacc_uniform']:+.3f}, shuffled "
                               f"{row['delta_bacc_shuffled']:+.3f})") if "delta_bacc_uniform" in row else ""
                    log(f"[test] {cond} {tname} {name} seed {seed}: auc {row['auc']:.3f}, balanced acc "
                        f"{row['bacc']:.3f}{ablated}")
                first = seed == config.seeds[0] and tname == "test"
                rows, examples = explain_models(models, tset, indices=indices[tname], baseline_model=list(posthoc),
                                                target=config.target, device=device, progress=progress,
                                                upsampling=variant.upsampling, pooled=True, references=True,
                                                model_free_weights=model_free["weights"],
                                                n_examples=4 if first else 0)
                atomic_csv(os.path.join(folder, "rows", f"explain-{cond}-{tname}-seed{seed}.csv"), EXPLAIN_COLUMNS,
                           rows)
                for s in summarise(rows):
                    seed_means.append({"condition": cond, "test_set": tname, "seed": seed, **s})
                if first:
                    keep = [e for e in examples if e[3] in (-1, 0) and (e[2] in ("attention", "block_map", "model_free")
                                                                      or e[1] == PLAIN_CNN)]
                    plot_examples(keep, os.path.join(folder, f"explain_examples_{cond}.png"),
                                  title=f"Test split, {cond}, seed {seed}")
                if tname == "test":
                    sanity_idx = indices[tname][:config.n_sanity]
                    images = torch.stack([tset[i][0] for i in sanity_idx]).to(device)
                    for name, model in models.items():
                        for r in randomisation_check(model, images, config.target, seed=10_000 + seed,
                                                     posthoc=name in posthoc):
                            randomisation.append({"condition": cond, "test_set": tname, "model": name, "seed": seed,
                                                  "method": r["method"], "level": r["level"],
                                                  "image": sanity_idx[r["position"]], "spearman": r["spearman"]})
        # check (c): the best attention model against the plain CNN (uniform pooling) on the test split
        main = [r for r in runs if r["condition"] == cond and r["test_set"] == "test"]
        uniform = _uniform_check({m: [r["bacc"] for r in main if r["model"] == m] for m in config.methods},
                                 [r["bacc"] for r in main if r["model"] == PLAIN_CNN], "the test split")
        validity = [uniform if r.name == "uniform_attention" else r for r in validity]
        conditions.append({"condition": cond, "difficulty": difficulty,
                           "splits": {k: asdict(s) for k, s in specs.items()},
                           "validity": validity, "model_free": model_free, "test_sets": list(test_sets),
                           "n_explained": {t: len(i) for t, i in indices.items()}})
    atomic_csv(os.path.join(folder, "runs.csv"), RUN_COLUMNS, runs)
    atomic_csv(os.path.join(folder, "randomisation.csv"),
               ("condition", "test_set", "model", "seed", "method", "level", "image", "spearman"), randomisation)
    per_seed_cols = ("condition", "test_set", "seed") + tuple(k for k in seed_means[0] if k not in
                                                               ("condition", "test_set", "seed"))
    atomic_csv(os.path.join(folder, "explain_per_seed.csv"), per_seed_cols, seed_means)
    accuracy = _summary(runs, ("condition", "test_set", "model"), _ACCURACY)
    ablation = _summary([r for r in runs if r["model"] != PLAIN_CNN], ("condition", "test_set", "model"), _ABLATION)
    explain_summary = _summary([{**s, **{m: s[f"{m}_mean"] for m in METRIC_NAMES}} for s in seed_means],
                               ("condition", "test_set", "model", "method", "level", "resolution", "upsampling"),
                               METRIC_NAMES)
    rand_seed = _seed_means(randomisation, ("condition", "test_set", "model", "method", "level", "seed"), "spearman")
    rand_summary = _summary(rand_seed, ("condition", "test_set", "model", "method", "level"), ("spearman",))
    atomic_csv(os.path.join(folder, "accuracy_summary.csv"), list(accuracy[0]), accuracy)
    atomic_csv(os.path.join(folder, "explain_summary.csv"), list(explain_summary[0]), explain_summary)
    if ablation:
        atomic_csv(os.path.join(folder, "ablation_summary.csv"), list(ablation[0]), ablation)
    if rand_summary:
        atomic_csv(os.path.join(folder, "randomisation_summary.csv"), list(rand_summary[0]), rand_summary)
    headline = _headline(explain_summary, conditions)
    report = _test_report(config, variants, variants_record, conditions, accuracy, explain_summary, ablation,
                          rand_summary, headline, device)
    from ..bench.results import atomic_write_text

    atomic_write_text(os.path.join(folder, "experiment.md"), report)
    result = {"stage": "test", "config": config.to_dict(), "variants": variants.to_dict(),
              "variants_file": variants_record, "environment": environment(device),
              "conditions": [{**c, "validity": [r.to_dict() for r in c["validity"]]} for c in conditions],
              "accuracy": accuracy, "ablation": ablation, "explanations": explain_summary,
              "randomisation": rand_summary, "headline": headline}
    write_json(os.path.join(folder, "experiment.json"), result)
    write_json(os.path.join(folder, "experiment_config.json"), {"config": config.to_dict(),
                                                                 "variants": variants.to_dict(),
                                                                 "variants_file": variants_record})
    try:
        plot_metric_summary(explain_summary, os.path.join(folder, "explain_ap.png"), env=result["environment"],
                            title="Explanation AP on the test splits (pixel protocol; bars: mean over seeds, "
                                  "95 % CI)")
    except ValueError as exc:  # the numbers are written; a figure without data is only worth a warning
        log(f"[test] no AP figure: {exc}")
    finish_test_folder(folder, {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return {**result, "runs": runs, "report": report}


def _seed_means(rows: list[dict], keys: tuple, metric: str) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r[metric])
    return [{**dict(zip(keys, k)), metric: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan}
            for k, v in groups.items()]


def _headline(explain_summary: list[dict], conditions: list[dict]) -> list[dict]:
    """Per condition, test set and resolution: the best attention map and the best post-hoc
    map by mean ``ap`` (and the references), with their CIs."""
    from .explain import POSTHOC

    out = []
    keys = sorted({(s["condition"], s["test_set"], s["resolution"]) for s in explain_summary})
    for cond, tset, res in keys:
        group = [s for s in explain_summary if (s["condition"], s["test_set"], s["resolution"]) == (cond, tset, res)]
        entry = {"condition": cond, "test_set": tset, "resolution": res}
        for kind, pick in (("attention", lambda s: s["method"] == "attention"),
                           ("posthoc", lambda s: s["method"] in POSTHOC),
                           ("block_map", lambda s: s["method"] == "block_map"),
                           ("model_free", lambda s: s["method"] == "model_free")):
            cands = [s for s in group if pick(s)]
            if cands:
                best = max(cands, key=lambda s: _finite(s["ap_mean"]))
                entry[kind] = {"model": best["model"], "method": best["method"], "level": best["level"],
                               "ap_mean": best["ap_mean"], "ap_ci95": best["ap_ci95"]}
        out.append(entry)
    return out


def _level(level) -> str:
    return "input" if int(level) == -1 else str(level)


def _where(level) -> str:
    return "(input)" if int(level) == -1 else f"L{level}"


def _verdict_line(variants) -> str:
    verdict = variants.verdict()
    if verdict == "accepted":
        return "The dev stage accepted the benchmark: every validity check ran and passed on the development split."
    if verdict == "rejected":
        from .protocol import failed_checks

        failed = failed_checks(variants.benchmark["checks"])
        return (f"**The dev stage REJECTED this benchmark** (failed or not run on the development split: "
                f"{', '.join(failed)}); this test run was made anyway (--allow-rejected-benchmark), so it cannot "
                f"test whether attention is necessary.")
    return ("**The dev stage's verdict on the benchmark is not recorded** in the variants file (written before the dev "
            "stage recorded one): the benchmark was never accepted before the test split was touched, and this run "
            "was made anyway (--allow-rejected-benchmark).")


def _test_report(config, variants, record, conditions, accuracy, explain_summary, ablation, rand_summary, headline,
                 device) -> str:
    from .explain_metrics import pointing_tolerance_px

    tc = config.train
    S = tc.model.image_size
    n_seeds = len(config.seeds)
    short = sorted({f"{c['condition']} {t}: {n}" for c in conditions for t, n in c["n_explained"].items()
                    if n < config.n_explain})
    fewer = f" (fewer where a split has fewer: {'; '.join(short)})" if short else ""
    lines = ["# Experiment: test stage", "",
             f"Data {tc.data!r}, {S}x{S}, {tc.n_train} training images, {tc.n_val} label-only validation images "
             f"(checkpoint selection by ROC AUC and the decision threshold: masks never enter training or selection), "
             f"{config.n_dev} development images (the model-free reference map is fitted there; the variants were "
             f"chosen there), {config.n_test} test images per test set. Width {tc.model.width}, {tc.epochs} epochs, "
             f"batch {tc.batch_size}, lr {tc.lr:g}. Device: {device}.", "",
             f"Variant (the same for every method), from `{record.get('path')}` (sha256 {record.get('sha256')}; "
             f"verified by {record.get('verified_by', 'git')}"
             f"{', commit ' + str(record.get('file_commit')) if record.get('file_commit') else ''}): "
             f"{variants.variant.label()}.",
             _verdict_line(variants),
             f"Seeds: {list(config.seeds)} ({n_seeds}; the protocol asks for at least 5"
             f"{'' if n_seeds >= 5 else ': FEWER, this is not the full setting'}). Every number is the mean over "
             f"seeds ± the half-width of its 95 % confidence interval (Student t, {n_seeds - 1} degrees of freedom); "
             f"explanation metrics are per-seed means over images first.",
             f"Evaluation: the explanation metrics use the first {config.n_explain} lesion images (label 1, "
             f"non-empty mask) of each test split{fewer}; the randomisation check the first {config.n_sanity} of "
             f"them. "
             f"Balanced accuracy (bacc) at the threshold chosen on validation. Pixel protocol: coarse maps upsampled "
             f"by {variants.variant.upsampling} (the variant's upsampling); pooled protocol (resolution HxW): the "
             f"authors' (input attributions per-channel min-max, summed, softmax, sum-pooled to the grid; grid maps "
             f"upsampled by nearest neighbour). pointing_tol: within {pointing_tolerance_px((S, S)):.1f} px of the "
             f"mask (15 px at 240x240, scaled to {S}x{S}). Test sets: 'test' (mimic types of training) and "
             f"'heldout_<type>' (a mimic type used neither in training nor in development).", ""]
    lines += ["## Validity checks (first)", ""]
    for c in conditions:
        lines += _validity_lines(c["validity"], f"{c['condition']} (training vs test images; uniform attention: the "
                                                f"best attention model vs the plain CNN on the test split)")
        mf = c["model_free"]
        lines += [f"Model-free reference map ({c['condition']}): {mf['name']}, chosen on the dev split (cross-fitted "
                  f"dev AP {mf['dev_ap']:.3f}), weights {['%.3g' % w for w in (mf['weights'] or [])]}.", ""]
    lines += ["## Accuracy and map statistics (test splits)", "",
              "| condition | test set | model | AUC | bacc | bacc argmax | violation | N·max p L0 | N·max p L1 | "
              "H/log N L0 | H/log N L1 | score range L0 | score range L1 | time/epoch (s) | best epoch |",
              "|" + "---|" * 15]
    for s in accuracy:
        lines.append(f"| {s['condition']} | {s['test_set']} | {s['model']} | " + " | ".join(
            _fmt(s, m) for m in _ACCURACY[:3]) + " | " +
            _fmt(s, "violation", 4) + " | " + " | ".join(_fmt(s, m) for m in _ACCURACY[4:10]) + " | " +
            _fmt(s, "epoch_time_s", 2) + " | " + _fmt(s, "best_epoch", 1) + " |")
    lines += ["", "## Headline: best attention map against best post-hoc map (ap)", "",
              "| condition | test set | resolution | best attention | ap | best post-hoc | ap | best block map | ap | "
              "model-free | ap |", "|" + "---|" * 11]
    for h in headline:
        cells = []
        for kind in ("attention", "posthoc", "block_map", "model_free"):
            b = h.get(kind)
            cells += ([f"{b['model']} {b['method']} {_where(b['level'])}",
                       _fmt({"x_mean": b["ap_mean"], "x_ci95": b["ap_ci95"]}, "x")] if b else ["–", "–"])
        lines.append(f"| {h['condition']} | {h['test_set']} | {h['resolution']} | " + " | ".join(cells) + " |")
    lines += ["", "## Explanation metrics", ""]
    groups = sorted({(s["condition"], s["test_set"]) for s in explain_summary})
    for cond, tset in groups:
        for protocol, pick in (("pixel protocol", lambda s: s["resolution"] == "pixel"),
                               ("pooled protocol", lambda s: s["resolution"] != "pixel")):
            rows = [s for s in explain_summary if s["condition"] == cond and s["test_set"] == tset and pick(s)]
            if not rows:
                continue
            rows.sort(key=lambda s: (s["resolution"], s["model"], s["method"], int(s["level"])))
            lines += [f"### {cond}, {tset}, {protocol}", "",
                      "| model | map | level | resolution | upsampling | " + " | ".join(METRIC_NAMES) + " |",
                      "|" + "---|" * (5 + len(METRIC_NAMES))]
            for s in rows:
                lines.append(f"| {s['model']} | {s['method']} | {_level(s['level'])} | {s['resolution']} | "
                             f"{s['upsampling']} | " + " | ".join(_fmt(s, m) for m in METRIC_NAMES) + " |")
            lines.append("")
    lines += ["## Sanity checks", "", "### Do the maps drive the decision? (map ablation at test time)", "",
              "Change when every attention map is replaced by a uniform map or by the same map with its cells "
              "shuffled (negative: the maps matter).", "",
              "| condition | test set | model | Δ bacc uniform | Δ bacc shuffled | Δ AUC uniform | Δ AUC shuffled |",
              "|---|---|---|---|---|---|---|"]
    for s in ablation:
        lines.append(f"| {s['condition']} | {s['test_set']} | {s['model']} | " + " | ".join(
            _fmt(s, m) for m in _ABLATION) + " |")
    lines += ["", "### Model-parameter randomisation (Adebayo et al., 2018)", "",
              "Spearman rank correlation between each explanation and the same explanation of a re-initialised model "
              "(near 0: the explanation depends on the model; near 1: it does not).", "",
              "| condition | model | map | level | Spearman |", "|---|---|---|---|---|"]
    for s in sorted(rand_summary, key=lambda s: (s["condition"], s["model"], s["method"], int(s["level"]))):
        lines.append(f"| {s['condition']} | {s['model']} | {s['method']} | {_level(s['level'])} | "
                     f"{_fmt(s, 'spearman')} |")
    lines += ["", "Files: runs.csv (one row per condition, test set, model and seed), accuracy_summary.csv, "
                  "ablation_summary.csv, explain_per_seed.csv, explain_summary.csv, randomisation.csv, "
                  "randomisation_summary.csv, rows/ (every image's scores), experiment.json, "
                  "explain_examples_*.png (one colour scale for all maps), explain_ap.png (AP of every map with its 95 % CI, "
                  "pixel protocol, one x scale for all panels).", ""]
    return "\n".join(lines)
