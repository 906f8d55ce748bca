"""The paper's experiment, under a protocol that cannot be tuned to.

Attention CNNs (``softmax``, ``learned_dual``, ``exact``; one model variant for every
method) and a plain CNN without attention (``paper/models/plain_cnn.py``, trained by the
same loop) are trained on the synthetic weakly-annotated lesions, on labels alone, and
their explanations are scored against the lesion masks.  The protocol
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

Configuration: :class:`~convex_attention.paper.config.ExperimentConfig` holds one
``TrainConfig`` (``train``, with its ``ModelConfig``) that every run starts from; each run
sets its method, variant, difficulty and seed.  Two presets (:mod:`.config`): ``FULL``
(width 16, 12 epochs, learning rate 2e-3, 5 seeds, a dev grid of 8 variants) and
``QUICK`` (a smoke test: 64 x 64 images, width 8, 512 training images, 4 epochs, 2 seeds,
one variant).  The reports are written by :mod:`.reports`.
"""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..io.environment import environment
from ..io.files import atomic_csv, atomic_write_text, write_json
from .config import FULL, PLAIN_CNN, QUICK, STAGES, ExperimentConfig, Variant
from .explain import (
    EXPLAIN_COLUMNS,
    POSTHOC,
    explain_models,
    explanations,
    lesion_indices,
    mean_ci,
    plot_examples,
    plot_metric_summary,
    score_explanations,
    summarise,
)
from .explain_metrics import METRIC_NAMES
from .models import PlainCNN, load_model, load_plain_cnn
from .protocol import (
    DEFAULT_VARIANTS_PATH,
    Variants,
    benchmark_record,
    build_split,
    check_benchmark_verdict,
    check_disjoint,
    claim_test_folder,
    failed_checks,
    finish_test_folder,
    fit_model_free,
    read_variants,
    split_specs,
    verify_variants,
)
from .reports import ABLATION, ACCURACY, dev_report, test_report
from .sanity import classification, map_ablation, map_statistics, predict, randomisation_check
from .train import train
from .validity import check_uniform_attention, run_checks

__all__ = ["ExperimentConfig", "QUICK", "FULL", "run_experiment", "run_dev", "run_test", "STAGES",
           "RUN_COLUMNS", "PLAIN_CNN"]

RUN_COLUMNS = ("condition", "test_set", "model", "seed", "best_epoch", "epoch_time_s", "train_time_s", "val_auc",
               "threshold", "auc", "bacc", "bacc_argmax", "acc", "violation", "n_max_p_L0", "n_max_p_L1",
               "n_max_p_L2", "entropy_ratio_L0", "entropy_ratio_L1", "entropy_ratio_L2", "score_range_L0",
               "score_range_L1", "score_range_L2", "bacc_uniform", "bacc_shuffled", "delta_bacc_uniform",
               "delta_bacc_shuffled", "auc_uniform", "auc_shuffled", "delta_auc_uniform", "delta_auc_shuffled")
# the dev stage's explanation batches
_DEV_BATCH = 16


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
    dev = config.train.device
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return dev


def _splits(config: ExperimentConfig, difficulty: float, names) -> tuple[dict, dict]:
    """``(specs, datasets)`` of the named splits at ``difficulty``, checked disjoint."""
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
    return run_checks(train_set, held_out, seed=config.train.data_seed, limit=config.validity_images)


def _uniform_check(attention: dict, plain: list, where: str):
    """Check (c) from per-seed balanced accuracies: the best attention method's mean
    (``attention``: method -> values) against the plain CNN's mean (``plain``).  Not run,
    with the reason, when the plain CNN was not trained or a value is not finite (a model
    whose validation threshold is NaN): a check that cannot be judged never passes, and
    never crashes a stage after its training."""
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


def _summary(rows: list[dict], keys: tuple, metrics) -> list[dict]:
    """Mean ± 95 % CI half-width (Student t over the rows: one per seed) of ``metrics`` per group ``keys``."""
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


def _finite(x) -> float:
    return x if isinstance(x, float) and math.isfinite(x) else -math.inf


# ----------------------------------------------------------------------------- the dev stage

# the dev runs' columns copied from an evaluation (beside the variant, the method, the seed and the AP)
_DEV_COLUMNS = ("auc", "bacc", "bacc_argmax", "violation", "best_epoch", "threshold", "val_auc", "n_max_p_L0",
                "n_max_p_L1", "entropy_ratio_L0", "score_range_L0")


def run_dev(config: ExperimentConfig, folder: str, progress: bool = True, log=print) -> dict:
    """The development stage (module docstring); writes ``folder`` (``dev_runs.csv``,
    ``dev_summary.csv``, ``dev.md``, ``proposed_variants.json``, ``dev.json``)."""
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
    rows = _dev_candidates(config, variants, sets, indices, folder, device, progress, log)
    # check (c) before the test split is touched: the plain CNN (uniform pooling) with the same dev seeds
    plain_rows = _dev_plain_cnns(config, sets, folder, device, progress, log)
    columns = list(dict.fromkeys(k for r in rows + plain_rows for k in r))
    atomic_csv(os.path.join(folder, "dev_runs.csv"), columns, rows + plain_rows)
    summary = _rank_candidates(config, variants, rows)
    atomic_csv(os.path.join(folder, "dev_summary.csv"), list(summary[0]), summary)
    best = summary[0]
    chosen = variants[best["variant"]].replace(upsampling=best["upsampling"])
    validity, record = _judge_benchmark(config, validity, rows, plain_rows, best, chosen, difficulty, log)
    proposal = Variants(chosen, tuple(config.difficulties), config.held_out_mimic,
                        note=f"Proposed by the dev stage: highest mean attention ap (pixel protocol) on the first "
                             f"{len(indices)} lesion images of the dev split ({specs['dev'].n} images, difficulty "
                             f"{difficulty:g}), mean over methods {', '.join(config.methods)}, their levels and dev "
                             f"seeds {list(config.dev_seeds)}: {best['attention_ap_mean']:.3f} (balanced accuracy "
                             f"{best['bacc_mean']:.3f}), among {len(summary)} candidates. Benchmark "
                             f"{'accepted' if record['accepted'] else 'rejected'} by the validity checks on the dev "
                             f"split.", benchmark=record)
    write_json(os.path.join(folder, "proposed_variants.json"), proposal.to_dict())
    report = dev_report(config, specs, validity, summary, proposal, len(indices), plain_rows)
    atomic_write_text(os.path.join(folder, "dev.md"), report)
    write_json(os.path.join(folder, "dev.json"), {"stage": "dev", "config": config.to_dict(),
                                                  "splits": {k: asdict(s) for k, s in specs.items()},
                                                  "validity": [r.to_dict() for r in validity], "summary": summary,
                                                  "plain_cnn": plain_rows,
                                                  "proposal": proposal.to_dict(), "environment": environment(device)})
    return {"stage": "dev", "rows": rows, "summary": summary, "proposal": proposal, "report": report,
            "validity": validity}


def _dev_candidates(config: ExperimentConfig, variants: list[Variant], sets: dict, indices: list, folder: str,
                    device, progress: bool, log) -> list[dict]:
    """Train every candidate variant of every method with every dev seed (a model shared by
    the variants that differ only in settings its method ignores) and score its maps on
    the development split under every candidate upsampling: one row per variant,
    upsampling, method and seed."""
    difficulty = config.difficulties[0]
    upsamplings = config.candidates()["upsampling"]
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
                    result.update(_dev_ap(config, got["model"], sets["dev"], indices, upsamplings, device))
                    trained[key] = result
                    log(f"[dev] {method} ({variant.label()}) seed {seed}: dev auc {result['auc']:.3f}, balanced acc "
                        f"{result['bacc']:.3f}, attention ap " + ", ".join(
                            f"{k[3:]} {v:.3f}" for k, v in result.items() if k.startswith("ap_")))
                model_row = {n: v for n, v in variant.row().items() if n != "upsampling"}
                for u in upsamplings:
                    r = trained[key]
                    levels = [v for k, v in r.items() if k.startswith(f"ap_{u}_L")]
                    rows.append({"variant": vi, **model_row, "upsampling": u, "method": method, "seed": seed,
                                 "attention_ap": float(np.mean(levels)),
                                 **{k: r[k] for k in _DEV_COLUMNS if k in r},
                                 **{k: v for k, v in r.items() if k.startswith(f"ap_{u}_")}})
    return rows


def _dev_ap(config: ExperimentConfig, model, dataset, indices: list, upsamplings, device) -> dict:
    """``{"ap_<upsampling>_L<level>": mean AP}`` of the model's attention maps on the
    lesion images ``indices`` of ``dataset``."""
    ap = defaultdict(list)
    for start in range(0, len(indices), _DEV_BATCH):
        batch = [dataset[i] for i in indices[start:start + _DEV_BATCH]]
        images = torch.stack([b[0] for b in batch]).to(device)
        masks = torch.stack([b[2] for b in batch])
        maps = explanations(model, images, config.target, posthoc=False)
        for u in upsamplings:
            for r in score_explanations(maps, masks, upsampling=u):
                ap[(u, r["level"])].append(r["ap"])
    return {f"ap_{u}_L{level}": float(np.nanmean(values)) for (u, level), values in ap.items()}


def _dev_plain_cnns(config: ExperimentConfig, sets: dict, folder: str, device, progress: bool, log) -> list[dict]:
    """The plain CNN (uniform pooling) with every dev seed, evaluated on the development
    split (for check (c)); none when ``plain_cnn`` is off."""
    plain_rows = []
    if not config.plain_cnn:
        return plain_rows
    for seed in config.dev_seeds:
        got = _train_one(config, (sets["train"], sets["val"]), os.path.join(folder, "runs", f"{PLAIN_CNN}-seed{seed}"),
                         PLAIN_CNN, seed, config.difficulties[0], None, progress, log)
        result = _evaluate(got["model"], sets["dev"], got["threshold"], device, ablation=False, seed=seed)
        plain_rows.append({"method": PLAIN_CNN, "seed": seed,
                           **{k: got[k] for k in ("best_epoch", "threshold", "val_auc")},
                           **{k: result[k] for k in ("auc", "bacc", "bacc_argmax")}})
        log(f"[dev] {PLAIN_CNN} seed {seed}: dev auc {result['auc']:.3f}, balanced acc {result['bacc']:.3f}")
    return plain_rows


def _rank_candidates(config: ExperimentConfig, variants: list[Variant], rows: list[dict]) -> list[dict]:
    """One entry per (variant, upsampling): the mean over methods, seeds and levels of the
    attention ap (and of the balanced accuracy), best first."""
    summary = []
    for vi, variant in enumerate(variants):
        for u in config.candidates()["upsampling"]:
            rs = [r for r in rows if r["variant"] == vi and r["upsampling"] == u]
            ap, ap_ci = mean_ci([r["attention_ap"] for r in rs])
            bacc, bacc_ci = mean_ci([r["bacc"] for r in rs])
            entry = {"variant": vi, "upsampling": u, "label": variant.replace(upsampling=u).label(),
                     "attention_ap_mean": ap, "attention_ap_ci95": ap_ci, "bacc_mean": bacc, "bacc_ci95": bacc_ci}
            for method in config.methods:
                entry[f"{method}_ap"] = float(np.mean([r["attention_ap"] for r in rs if r["method"] == method]))
                entry[f"{method}_bacc"] = float(np.mean([r["bacc"] for r in rs if r["method"] == method]))
            summary.append(entry)
    summary.sort(key=lambda e: (-_finite(e["attention_ap_mean"]), -_finite(e["bacc_mean"])))
    return summary


def _judge_benchmark(config: ExperimentConfig, validity: list, rows: list[dict], plain_rows: list[dict], best: dict,
                     chosen: Variant, difficulty: float, log) -> tuple[list, dict]:
    """Check (c) for the proposed variant (its best attention method against the plain CNN,
    means over the dev seeds) and the verdict on the benchmark: ``(validity, record)``."""
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
    return validity, record


# ----------------------------------------------------------------------------- the test stage


@dataclass
class _TestResults:
    """What the test stage gathers across conditions and seeds."""

    runs: list = field(default_factory=list)
    seed_means: list = field(default_factory=list)
    randomisation: list = field(default_factory=list)
    conditions: list = field(default_factory=list)


def run_test(config: ExperimentConfig, folder: str, variants, variants_record: dict, force: bool = False,
             progress: bool = True, log=print) -> dict:
    """The test stage (module docstring) with the checked ``variants`` (whose file is
    described by ``variants_record``: path, SHA-256, commit); writes ``folder`` once."""
    config = config.with_variants(variants).validate()
    device = _device(config)
    record = {"stage": "test", "variants": variants_record, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    claim_test_folder(folder, force, record)
    os.makedirs(os.path.join(folder, "rows"), exist_ok=True)
    gathered = _TestResults()
    for difficulty in config.difficulties:
        _test_condition(config, variants.variant, difficulty, folder, device, gathered, progress, log)
    result = _write_test(config, variants, variants_record, gathered, folder, device, log)
    finish_test_folder(folder, {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return result


def _posthoc_models(config: ExperimentConfig) -> tuple:
    models_all = tuple(config.methods) + ((PLAIN_CNN,) if config.plain_cnn else ())
    return {"all": models_all, None: ()}.get(config.baseline_model, (config.baseline_model,))


def _test_condition(config: ExperimentConfig, variant: Variant, difficulty: float, folder: str, device,
                    gathered: _TestResults, progress: bool, log) -> None:
    """One difficulty: its splits, validity checks and model-free map, then every seed
    (:func:`_test_seed`), then check (c) on the test split."""
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
        _test_seed(config, variant, cond, difficulty, seed, sets, test_sets, indices, model_free, folder, device,
                   gathered, progress, log)
    # check (c): the best attention model against the plain CNN (uniform pooling) on the test split
    main = [r for r in gathered.runs if r["condition"] == cond and r["test_set"] == "test"]
    uniform = _uniform_check({m: [r["bacc"] for r in main if r["model"] == m] for m in config.methods},
                             [r["bacc"] for r in main if r["model"] == PLAIN_CNN], "the test split")
    validity = [uniform if r.name == "uniform_attention" else r for r in validity]
    gathered.conditions.append({"condition": cond, "difficulty": difficulty,
                                "splits": {k: asdict(s) for k, s in specs.items()},
                                "validity": validity, "model_free": model_free, "test_sets": list(test_sets),
                                "n_explained": {t: len(i) for t, i in indices.items()}})


def _test_seed(config: ExperimentConfig, variant: Variant, cond: str, difficulty: float, seed: int, sets: dict,
               test_sets: dict, indices: dict, model_free: dict, folder: str, device, gathered: _TestResults,
               progress: bool, log) -> None:
    """Train every model with one seed, then on every test set: accuracy and the map
    ablation, every explanation scored, the example figure (first seed) and the
    randomisation check (the test split)."""
    models_all = tuple(config.methods) + ((PLAIN_CNN,) if config.plain_cnn else ())
    posthoc = _posthoc_models(config)
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
            gathered.runs.append(row)
            ablated = (f" (uniform maps {row['delta_bacc_uniform']:+.3f}, shuffled "
                       f"{row['delta_bacc_shuffled']:+.3f})") if "delta_bacc_uniform" in row else ""
            log(f"[test] {cond} {tname} {name} seed {seed}: auc {row['auc']:.3f}, balanced acc "
                f"{row['bacc']:.3f}{ablated}")
        first = seed == config.seeds[0] and tname == "test"
        rows, examples = explain_models(models, tset, indices=indices[tname], baseline_model=list(posthoc),
                                        target=config.target, device=device, progress=progress,
                                        upsampling=variant.upsampling, pooled=True, references=True,
                                        model_free_weights=model_free["weights"], n_examples=4 if first else 0)
        atomic_csv(os.path.join(folder, "rows", f"explain-{cond}-{tname}-seed{seed}.csv"), EXPLAIN_COLUMNS, rows)
        for s in summarise(rows):
            gathered.seed_means.append({"condition": cond, "test_set": tname, "seed": seed, **s})
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
                    gathered.randomisation.append({"condition": cond, "test_set": tname, "model": name, "seed": seed,
                                                   "method": r["method"], "level": r["level"],
                                                   "image": sanity_idx[r["position"]], "spearman": r["spearman"]})


def _write_test(config: ExperimentConfig, variants, variants_record: dict, gathered: _TestResults, folder: str,
                device, log) -> dict:
    """The test stage's files: per-run and per-seed tables, the summaries, the report, the
    JSON record and the AP figure."""
    runs, seed_means = gathered.runs, gathered.seed_means
    atomic_csv(os.path.join(folder, "runs.csv"), RUN_COLUMNS, runs)
    atomic_csv(os.path.join(folder, "randomisation.csv"),
               ("condition", "test_set", "model", "seed", "method", "level", "image", "spearman"),
               gathered.randomisation)
    per_seed_cols = ("condition", "test_set", "seed") + tuple(k for k in seed_means[0] if k not in
                                                               ("condition", "test_set", "seed"))
    atomic_csv(os.path.join(folder, "explain_per_seed.csv"), per_seed_cols, seed_means)
    accuracy = _summary(runs, ("condition", "test_set", "model"), ACCURACY)
    ablation = _summary([r for r in runs if r["model"] != PLAIN_CNN], ("condition", "test_set", "model"), ABLATION)
    explain_summary = _summary([{**s, **{m: s[f"{m}_mean"] for m in METRIC_NAMES}} for s in seed_means],
                               ("condition", "test_set", "model", "method", "level", "resolution", "upsampling"),
                               METRIC_NAMES)
    rand_seed = _seed_means(gathered.randomisation, ("condition", "test_set", "model", "method", "level", "seed"),
                            "spearman")
    rand_summary = _summary(rand_seed, ("condition", "test_set", "model", "method", "level"), ("spearman",))
    atomic_csv(os.path.join(folder, "accuracy_summary.csv"), list(accuracy[0]), accuracy)
    atomic_csv(os.path.join(folder, "explain_summary.csv"), list(explain_summary[0]), explain_summary)
    if ablation:
        atomic_csv(os.path.join(folder, "ablation_summary.csv"), list(ablation[0]), ablation)
    if rand_summary:
        atomic_csv(os.path.join(folder, "randomisation_summary.csv"), list(rand_summary[0]), rand_summary)
    conditions = gathered.conditions
    headline = _headline(explain_summary)
    report = test_report(config, variants, variants_record, conditions, accuracy, explain_summary, ablation,
                         rand_summary, headline, device)
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
    return {**result, "runs": runs, "report": report}


def _seed_means(rows: list[dict], keys: tuple, metric: str) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r[metric])
    return [{**dict(zip(keys, k)), metric: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan}
            for k, v in groups.items()]


def _headline(explain_summary: list[dict]) -> list[dict]:
    """Per condition, test set and resolution: the best attention map and the best post-hoc
    map by mean ``ap`` (and the references), with their CIs."""
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
