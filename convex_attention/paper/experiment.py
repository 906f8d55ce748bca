"""The paper's experiment, under a protocol that cannot be tuned to.

Attention CNNs (``softmax``, ``learned_dual``, ``exact``; one model variant for every
method) and a plain CNN without attention (``paper/models/plain_cnn.py``, trained by the
same loop) are trained on the synthetic weakly-annotated lesions, on labels alone, and
their explanations are scored against the lesion masks.  The protocol
(:mod:`convex_attention.paper.protocol`) has two stages:

* ``--stage dev`` (may be repeated, each into its own ``--out``): trains every candidate variant (the grid of τ, α,
  the score head, a learned temperature and the dual source) with ``dev_seeds`` at the
  first difficulty, runs the map ablation (every level at once and each alone) and scores
  the attention maps per level on the **development** split (with masks) under every
  candidate upsampling, against the lesion masks and, where the data mark it, the mask of
  the structure that decides the label (:func:`~convex_attention.paper.explain.primary_mask`).
  It proposes, among the variants whose methods are most often *compared* (those whose mean
  dev AUC reaches :data:`~convex_attention.paper.validity.MIN_COMPARED_AUC`: a variant that
  breaks a method ranks below one that keeps it), the one with the highest mean attention
  ``ap`` against that mask (pixel protocol; mean over the compared methods, their levels
  and the seeds; ties: higher balanced accuracy) in ``dev/proposed_variants.json``.  It also runs the
  validity checks on the development split: (a), (b) and (c′) (the proposed variant's
  ``softmax`` models, one per dev seed, lose dev AUC when their maps are shuffled); the
  accuracy gap to a plain CNN trained with the dev seeds, (c), is reported with its
  interval.  The verdict (accepted only if every deciding check ran and passed) and its
  data seed go into the proposal.  That file, reviewed and committed as
  ``configs/experiment_variants.json``, fixes the test run.
* ``--stage test`` (touched once per benchmark and data seed): reads the committed
  variants file (refuses an uncommitted one, one whose benchmark the dev stage rejected
  unless ``allow_rejected_benchmark``, and a data seed whose images the verdict's dev
  stage or a run in the data ledger already used), records its splits in the ledger and
  its run in ``OUT/test_runs.jsonl``, and at each difficulty it lists trains ``seeds`` x
  (methods + the plain CNN); on the **test** split and on the held-out-mimic test split it
  reports accuracy, map statistics, every explanation of every model (attention maps;
  GradCAM, DeepLIFT, LRP, Input×Gradient, Integrated Gradients on every model) against
  both masks, per level, the reference rows (the model-free map fitted on the dev split,
  the best possible block map), the map ablation per level and the cascading
  model-parameter randomisation check.  A model whose mean dev AUC is below the bar is
  reported and its maps are not compared.  It writes ``OUT/test`` once (``--force``
  moves the earlier one aside to ``OUT/test.run-<N>``, never deletes it, and the report
  lists every earlier test run of the benchmark that the ledger records, with where its
  results are).  It refuses methods or settings other than those the verdict judged
  (:func:`~convex_attention.paper.protocol.check_judged`).

Checkpoints are selected on the label-only validation split (ROC AUC), where the decision
threshold is chosen too; balanced accuracy on the test split is measured at that
threshold.  Explanations use, per mask, the first ``n_explain`` images of the split with
that mask non-empty (:func:`~convex_attention.paper.explain.explained_indices`).  Every
summary is the mean over seeds (of per-seed means over images) with the half-width of its
95 % confidence interval (Student t over seeds, :func:`convex_attention.paper.explain.mean_ci`).
A value that is not a number (NaN: e.g. the Spearman correlation of a constant map in the
randomisation check) is left out of its mean and counted: every summary has
``{metric}_n_used`` and ``{metric}_n_nan`` (seeds; the interval has ``n_used − 1`` degrees
of freedom) and, where per-seed means over images stand behind it, ``{metric}_images_used``
and ``{metric}_images_nan``; the reports list every group where a value was left out.

Configuration: :class:`~convex_attention.paper.config.ExperimentConfig` holds one
``TrainConfig`` (``train``, with its ``ModelConfig``) that every run starts from; each run
sets its method, variant, difficulty and seed.  Two presets (:mod:`.config`): ``FULL``
(width 16, 12 epochs, learning rate 2e-3, 5 seeds and 5 dev seeds, a dev grid of 8 variants) and
``QUICK`` (a smoke test: 64 x 64 images, width 8, 512 training images, 4 epochs, 2 seeds,
one variant).  The reports are written by :mod:`.reports`.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..io.environment import environment, load_average, now_utc, run_record
from ..io.files import atomic_csv, atomic_write_text, write_json
from .config import (
    FULL,
    MAX_ATTENTION_LEVELS,
    PLAIN_CNN,
    QUICK,
    STAGES,
    SYNTHETIC_GENERATORS,
    ExperimentConfig,
    Variant,
    resolved_device,
)
from .data.synthetic import DECIDING_CHANNELS
from .explain import (
    EXPLAIN_COLUMNS,
    MASKS,
    POSTHOC,
    REFERENCE_MODEL,
    explain_models,
    explained_indices,
    explanations,
    format_ci,
    mean_ci,
    nan_counts,
    plot_examples,
    plot_metric_summary,
    primary_mask,
    score_explanations,
    summarise,
    summary_cells,
)
from .explain_metrics import METRIC_NAMES
from .models import PlainCNN, load_model, load_plain_cnn
from .protocol import (
    DEFAULT_VARIANTS_PATH,
    TestFolderExists,
    Variants,
    aside_target,
    benchmark_record,
    build_split,
    check_benchmark_verdict,
    check_dev_folder,
    check_disjoint,
    check_judged,
    check_test_data,
    check_test_folder,
    check_unspent,
    claim_test_folder,
    condition_name,
    default_ledger_path,
    failed_checks,
    finish_test_folder,
    fit_model_free,
    history_of_test_runs,
    judged_settings,
    ledger_entry,
    ledger_lock,
    ledger_where,
    log_test_run,
    read_ledger,
    read_manifest,
    read_test_runs,
    read_variants,
    record_test_run,
    runs_elsewhere,
    runs_into,
    spend,
    split_sizes,
    split_specs,
    verify_variants,
)
from .reports import ABLATION, ACCURACY, MAP_STATISTICS, dev_report, test_report
from .sanity import classification, map_ablation, map_statistics, predict, randomisation_check
from .train import check_validation_classes, train
from .validity import MIN_COMPARED_AUC, check_maps_drive_ranking, check_uniform_attention, run_checks

__all__ = ["ExperimentConfig", "QUICK", "FULL", "run_experiment", "run_dev", "run_test", "STAGES",
           "RUN_COLUMNS", "PLAIN_CNN"]

_ABLATED = ("bacc_uniform", "bacc_shuffled", "delta_bacc_uniform", "delta_bacc_shuffled", "auc_uniform", "auc_shuffled",
            "delta_auc_uniform", "delta_auc_shuffled")
RUN_COLUMNS = (("condition", "test_set", "model", "seed", "best_epoch", "epoch_time_s", "train_time_s", "val_auc",
                "dev_auc", "threshold", "auc", "bacc", "bacc_argmax", "acc", "violation")
               + tuple(f"{c}_L{k}" for c in MAP_STATISTICS for k in range(MAX_ATTENTION_LEVELS))
               + _ABLATED + tuple(f"{c}_L{k}" for k in range(MAX_ATTENTION_LEVELS) for c in _ABLATED))
# the dev stage's explanation batches
_DEV_BATCH = 16


def run_experiment(config: ExperimentConfig, out: str, progress: bool = True, log=print, stage: str = "dev",
                   variants_path: str | None = None, force: bool = False, variants_sha256: str | None = None,
                   allow_rejected_benchmark: bool = False, ledger_path: str | None = None) -> dict:
    """Run one stage of the protocol into ``out/dev`` or ``out/test`` (module docstring).

    The test stage reads ``variants_path`` (default: the committed
    ``configs/experiment_variants.json``) and refuses it unless it is committed (or, with
    no git checkout, matches the pin ``variants_sha256``:
    :func:`~convex_attention.paper.protocol.verify_variants`); it refuses a file whose
    benchmark the dev stage rejected unless ``allow_rejected_benchmark``
    (:func:`~convex_attention.paper.protocol.check_benchmark_verdict`), a data seed whose
    images the verdict's dev stage or a run in the data ledger (``ledger_path``, default:
    ``data_ledger.json`` beside the variants file) already used
    (:func:`~convex_attention.paper.protocol.check_test_data`), and an existing ``out/test``
    unless ``force``.  Returns the stage's results (``{"report": markdown, ...}``)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    config.validate()
    if stage == "dev":
        # the dev stage chooses on its splits: none may share an image (or a random stream) with a
        # recorded test split (a review: data seed 781 at difficulty 0.125 trained on a spent test split)
        ledger = ledger_path or default_ledger_path(variants_path or DEFAULT_VARIANTS_PATH)
        runs = _ledger_runs(ledger)
        sizes = split_sizes(config)
        specs = split_specs(config.train.data, _data_seed(config), {k: sizes[k] for k in ("train", "val", "dev")},
                            config.difficulties[0], config.held_out_mimic)
        check_unspent(specs, [r for r in runs if r.get("stage") == "test"], what="the dev stage")
        check_dev_folder(os.path.join(out, "dev"))  # (again under the command's lock)
        return run_dev(config, os.path.join(out, "dev"), progress=progress, log=log)
    path = variants_path or DEFAULT_VARIANTS_PATH
    variants = read_variants(path)
    variants.validate(config.methods, where=path)
    record = verify_variants(path, variants_sha256)
    verdict = check_benchmark_verdict(variants, allow_rejected_benchmark, where=path, data=config.train.data)
    check_judged(config, variants, where=path)
    if verdict != "accepted":
        log(f"[test] WARNING: the dev stage's verdict on this benchmark: {verdict}; running anyway "
            f"(--allow-rejected-benchmark)")
    ledger = ledger_path or default_ledger_path(path)
    folder = os.path.join(out, "test")
    check_test_folder(folder, force)  # first: rerunning the same command is refused for its folder, not its seed
    read_test_runs(os.path.dirname(os.path.abspath(folder)))  # a damaged run log, before anything is spent
    check_test_data(config, variants, ledger, ledger_where(folder, ledger), force,
                    variants_sha256=record.get("sha256"), folder_runs=runs_into(folder))
    return run_test(config, folder, variants, record, force=force, progress=progress, log=log, ledger_path=ledger)


# ----------------------------------------------------------------------------- shared steps


def _device(config: ExperimentConfig) -> str:
    return resolved_device(config.train.device)


def _data_seed(config: ExperimentConfig) -> int:
    """``train.data_seed``, which a valid experiment sets (:meth:`ExperimentConfig.validate`: every stage validates
    its configuration first)."""
    seed = config.train.data_seed
    assert seed is not None
    return seed


def _splits(config: ExperimentConfig, difficulty: float, names) -> tuple[dict, dict]:
    """``(specs, datasets)`` of the named splits at ``difficulty``, checked disjoint."""
    tc = config.train
    n = split_sizes(config)
    specs = split_specs(tc.data, _data_seed(config), {k: n[k] for k in names}, difficulty, config.held_out_mimic)
    check_disjoint(specs)
    return specs, {k: build_split(s, tc.data, tc.model.image_size, tc.model.in_channels) for k, s in specs.items()}


def _train_one(config: ExperimentConfig, datasets, folder: str, method: str, seed: int, difficulty: float,
               model_fields: dict | None, progress: bool, log) -> dict:
    """Train one model (``method``; ``PLAIN_CNN`` for the plain CNN) and load its selected
    checkpoint: ``{"model", "threshold", "threshold_log_odds", "best_epoch", "epoch_time_s", "train_time_s",
    "val_auc"}`` (``threshold_log_odds``: None for a checkpoint written before it was stored)."""
    plain = method == PLAIN_CNN
    fields_ = {"method": "softmax"} if plain else {"method": method, **(model_fields or {})}
    tc = replace(config.train.override(difficulty=difficulty, **fields_), out=folder, seed=seed, progress=progress,
                 resume=None)
    start = time.perf_counter()
    split = {"by": "the experiment's protocol", "difficulty": difficulty, "data_seed": tc.data_seed,
             "held_out_mimic": config.held_out_mimic}  # its splits, which tc's data settings do not rebuild
    result = train(tc, datasets=datasets, log=log, model_class=PlainCNN if plain else None, data_split=split)
    elapsed = time.perf_counter() - start
    model, state = (load_plain_cnn if plain else load_model)(result["best"])
    best = next(m for m in result["metrics"] if m["epoch"] == result["best_epoch"])
    threshold, log_odds = state.get("threshold"), state.get("threshold_log_odds")
    return {"model": model, "threshold": float(threshold) if isinstance(threshold, (int, float)) else math.nan,
            # where the checkpoint has it: p(class 1) rounds to 1.0 above log-odds ~37
            "threshold_log_odds": float(log_odds) if isinstance(log_odds, (int, float)) else None,
            "best_epoch": best["epoch"], "val_auc": best["val_auc"], "train_time_s": elapsed,
            "epoch_time_s": float(np.mean([m["epoch_time_s"] for m in result["metrics"]]))}


def _evaluate(model, dataset, threshold: float, device, ablation: bool, seed: int,
              threshold_log_odds: float | None = None) -> dict:
    """Classification at ``threshold``, mean violation, map statistics per level and (for
    attention models, with ``ablation``) the map ablation, on ``dataset``."""
    pred = predict(model, dataset, device=device, keep_maps=True)
    row = classification(pred["logits"], pred["labels"], threshold, threshold_log_odds)
    row["violation"] = math.nan  # a model without attention has no maps to be consistent
    if getattr(model, "has_attention", True):
        row["violation"] = float(pred["violation"].mean())
        for s in map_statistics(pred["maps"], pred["scores"]):
            for key in ("n_max_p", "entropy_ratio", "score_range"):
                row[f"{key}_L{s['level']}"] = s[key]
        if ablation:
            ab = map_ablation(model, dataset, threshold, device=device, seed=seed,
                              threshold_log_odds=threshold_log_odds)
            row.update({k: ab[k] for k in ab if k.startswith(("bacc_", "auc_", "delta_"))
                        and k != "bacc_argmax"})
    return row


def _validity(train_set, held_out, config: ExperimentConfig) -> list:
    return run_checks(train_set, held_out, seed=_data_seed(config), limit=config.validity_images)


def _uniform_check(attention: dict, plain: dict, where: str):
    """Check (c), reported and never a gate: the attention method with the highest mean
    balanced accuracy (``attention``: method -> {seed: value}) against the plain CNN
    (``plain``: {seed: value}), with the 95 % interval of the per-seed gap (paired by
    seed).  Not run, with the reason, when the plain CNN was not trained or a value is not
    finite (a model whose validation threshold is NaN)."""
    if not plain:
        return replace(check_uniform_attention(None, None),
                       reason="the plain CNN was not trained (plain_cnn off); the experiment trains it for check (c)")
    values = {**{m: dict(v) for m, v in attention.items()}, PLAIN_CNN: dict(plain)}
    bad = sorted(m for m, v in values.items() if not v or not all(math.isfinite(x) for x in v.values()))
    if bad:
        return replace(check_uniform_attention(None, None),
                       reason=f"balanced accuracy not finite (or missing) on {where} for {', '.join(bad)}: a model "
                              f"failed to train or its validation threshold is NaN, so (c) cannot be judged")
    means = {m: float(np.mean(list(v.values()))) for m, v in values.items()}
    # a tie is named, and the paired interval is the first tied method's in the methods' order (it had been
    # broken silently, ca_rev150, and max had taken a later one larger by rounding alone, ca_rev151)
    top = max(means[m] for m in attention)
    tied = [m for m in attention if math.isclose(means[m], top, rel_tol=1e-12, abs_tol=1e-15)]
    best = tied[0]
    which = (f"{best}, the attention method with the higher mean" if len(tied) == 1 else
             f"{' and '.join(tied)} tie at the higher mean; the paired gap is {best}'s, the first in the methods' "
             f"order")
    result = check_uniform_attention(means[best], means[PLAIN_CNN])
    seeds = sorted(set(values[best]) & set(values[PLAIN_CNN]))
    gap, half = mean_ci([values[best][s] - values[PLAIN_CNN][s] for s in seeds])
    return replace(result, ci95=half, note=f"{result.note} ({which}); "
                                           f"per-seed gap {format_ci(gap, half)} (95 %, {len(seeds)} seeds, paired)")


def _ranking_check(rows: list[dict], upsampling: str | None = None):
    """Check (c′) from the ``softmax`` rows (one per dev seed): each seed's AUC drop when its
    maps are shuffled (``-delta_auc_shuffled``).  Not run when no softmax model was trained."""
    reference = {r["seed"]: r for r in rows if r["method"] == "softmax"
                 and (upsampling is None or r["upsampling"] == upsampling)}
    if not reference:
        return replace(check_maps_drive_ranking(None),
                       reason="the reference model (softmax) is not among the methods: add it to --methods")
    return check_maps_drive_ranking([-reference[s]["delta_auc_shuffled"] for s in sorted(reference)])


def _summary(rows: list[dict], keys: tuple, metrics) -> list[dict]:
    """Per group ``keys`` of ``rows`` (one per seed): ``seeds`` (the seeds of the group) and,
    for every metric ``m`` of ``metrics``, ``{m}_mean`` ± ``{m}_ci95`` (Student t over the
    seeds whose value is a number) with ``{m}_n_used`` and ``{m}_n_nan`` (seeds used and left
    out as NaN; :func:`~convex_attention.paper.explain.summary_cells`).  Where the rows are
    per-seed means over images that carry their own counts (``{m}_n_used``, ``{m}_n_nan``),
    ``{m}_images_used`` and ``{m}_images_nan`` sum them over every seed of the group."""
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, rs in groups.items():
        entry = dict(zip(keys, key))
        entry["seeds"] = len({r.get("seed") for r in rs})
        for m in metrics:
            entry.update(summary_cells(m, [r.get(m, math.nan) for r in rs]))
            if all(f"{m}_n_used" in r and f"{m}_n_nan" in r for r in rs):
                entry[f"{m}_images_used"] = sum(int(r[f"{m}_n_used"]) for r in rs)
                entry[f"{m}_images_nan"] = sum(int(r[f"{m}_n_nan"]) for r in rs)
        out.append(entry)
    return out


def _per_seed_means(rows, key: str, methods) -> list[float]:
    """Per seed (ascending), the mean of ``key`` over the rows of ``methods`` (NaN where one is
    NaN: summary_cells counts it as a NaN seed)."""
    seeds = sorted({r["seed"] for r in rows})
    out = []
    for seed in seeds:
        values = [float(r[key]) for r in rows if r["seed"] == seed and r["method"] in methods]
        out.append(sum(values) / len(values) if values and all(math.isfinite(v) for v in values) else math.nan)
    return out


def _finite(x) -> float:
    return x if isinstance(x, float) and math.isfinite(x) else -math.inf


# ----------------------------------------------------------------------------- the dev stage

# the dev runs' columns copied from an evaluation (beside the variant, the method, the seed and the AP): every
# level's map statistics (a fixed few of levels 0 and 1 left a 3-level model's third out, as runs.csv once did)
_DEV_COLUMNS = (("auc", "bacc", "bacc_argmax", "violation", "best_epoch", "threshold", "val_auc")
                + tuple(f"{c}_L{k}" for c in MAP_STATISTICS for k in range(MAX_ATTENTION_LEVELS)))
# checks that need the trained models: judged and logged after them
_NEEDS_MODELS = ("maps_drive_ranking", "uniform_attention")


def run_dev(config: ExperimentConfig, folder: str, progress: bool = True, log=print) -> dict:
    """The development stage (module docstring); writes ``folder`` (``dev_runs.csv``,
    ``dev_summary.csv``, ``dev_levels.csv``, ``dev.md``, ``proposed_variants.json``,
    ``dev.json``)."""
    config.validate()
    os.makedirs(folder, exist_ok=True)
    device = _device(config)
    difficulty = config.difficulties[0]
    specs, sets = _splits(config, difficulty, ("train", "val", "dev"))
    check_validation_classes(config.train, sets["val"])  # else best.pt would be picked on no criterion
    log(f"[dev] data {config.train.data!r}, data seed {config.train.data_seed}; splits at difficulty "
        f"{difficulty:g}: " + ", ".join(f"{k} {s.n} (seed {s.seed})" for k, s in specs.items()))
    validity = _validity(sets["train"], sets["dev"], config)
    for r in validity:
        if r.name not in _NEEDS_MODELS:
            log(f"[dev] validity: {r.line()}")
    indices = explained_indices(sets["dev"], config.n_explain)
    mask = primary_mask(indices)
    variants = config.variants()
    rows = _dev_candidates(config, variants, sets, indices, mask, folder, device, progress, log)
    # check (c), reported: the plain CNN (uniform pooling) with the same dev seeds
    plain_rows = _dev_plain_cnns(config, sets, folder, device, progress, log)
    columns = list(dict.fromkeys(k for r in rows + plain_rows for k in r))
    atomic_csv(os.path.join(folder, "dev_runs.csv"), columns, rows + plain_rows)
    summary = _rank_candidates(config, variants, rows)
    atomic_csv(os.path.join(folder, "dev_summary.csv"), list(summary[0]), summary)
    best = summary[0]
    chosen = variants[best["variant"]].replace(upsampling=best["upsampling"])
    chosen_rows = [r for r in rows if r["variant"] == best["variant"] and r["upsampling"] == best["upsampling"]]
    levels = _dev_levels(config, chosen_rows, indices)
    atomic_csv(os.path.join(folder, "dev_levels.csv"), list(levels[0]), levels)
    validity, record = _judge_benchmark(config, validity, chosen_rows, plain_rows, chosen, difficulty, log)
    compared = best["compared"] or "none"
    measured = best["compared"] and all(math.isfinite(float(best[k])) for k in ("attention_ap_mean", "bacc_mean"))
    # never a NaN printed as a value: where no method reached the AUC floor, nothing was ranked
    outcome = (f"{best['attention_ap_mean']:.3f} (balanced accuracy {best['bacc_mean']:.3f}), among "
               f"{len(summary)} candidates" if measured else
               f"not measured: no method reached dev AUC >= {MIN_COMPARED_AUC:.2f}, so no candidate was compared and "
               f"the choice among the {len(summary)} candidates rests on no criterion")
    proposal = Variants(chosen, tuple(config.difficulties), config.held_out_mimic,
                        note=f"Proposed by the dev stage: among the candidates with the most compared methods, the "
                             f"highest mean attention ap against the {mask} masks (pixel "
                             f"protocol) on the dev split ({specs['dev'].n} images, data seed "
                             f"{config.train.data_seed}, difficulty {difficulty:g}; the first {len(indices[mask])} "
                             f"images with a {mask} mask), mean over the compared methods ({compared}: dev AUC >= "
                             f"{MIN_COMPARED_AUC:.2f}), their levels and dev seeds {list(config.dev_seeds)}: "
                             f"{outcome}. Benchmark {'accepted' if record['accepted'] else 'rejected'} "
                             f"by the validity checks on the dev split.", benchmark=record)
    write_json(os.path.join(folder, "proposed_variants.json"), proposal.to_dict())
    report = dev_report(config, specs, validity, summary, proposal, {k: len(v) for k, v in indices.items()},
                        plain_rows, levels, mask)
    atomic_write_text(os.path.join(folder, "dev.md"), report)
    write_json(os.path.join(folder, "dev.json"), {"stage": "dev", "config": config.to_dict(),
                                                  "splits": {k: asdict(s) for k, s in specs.items()},
                                                  "explained": {k: len(v) for k, v in indices.items()},
                                                  "selection_mask": mask,
                                                  "validity": [r.to_dict() for r in validity], "summary": summary,
                                                  "levels": levels, "plain_cnn": plain_rows,
                                                  "proposal": proposal.to_dict(), "environment": environment(device)})
    return {"stage": "dev", "rows": rows, "summary": summary, "levels": levels, "proposal": proposal,
            "report": report, "validity": validity}


def _dev_candidates(config: ExperimentConfig, variants: list[Variant], sets: dict, indices: dict, mask: str,
                    folder: str, device, progress: bool, log) -> list[dict]:
    """Train every candidate variant of every method with every dev seed (a model shared by
    the variants that differ only in settings its method ignores), run the map ablation
    (every level and each alone) and score its maps on the development split against
    every mask under every candidate upsampling: one row per variant, upsampling, method
    and seed, with ``attention_ap`` (the mean over levels against ``mask``),
    ``attention_ap_<mask>`` and ``ap_<mask>_L<level>``."""
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
                    result.update(_evaluate(got["model"], sets["dev"], got["threshold"], device, ablation=True,
                                            seed=seed, threshold_log_odds=got.get("threshold_log_odds")))
                    result.update(_dev_ap(config, got["model"], sets["dev"], indices, upsamplings, device))
                    trained[key] = result
                    model_label = variant.label().rsplit(", upsampling=", 1)[0]  # one model serves every upsampling
                    log(f"[dev] {method} ({model_label}) seed {seed}: dev auc {result['auc']:.3f}, balanced acc "
                        f"{result['bacc']:.3f}, AUC change with shuffled maps {result['delta_auc_shuffled']:+.3f}; "
                        f"attention ap ({mask}, {upsamplings[0]}) " + ", ".join(
                            f"{k.rsplit('_', 1)[1]} {v:.3f}" for k, v in result.items()
                            if k.startswith(f"ap_{mask}_{upsamplings[0]}_")))
                model_row = {n: v for n, v in variant.row().items() if n != "upsampling"}
                r = trained[key]
                for u in upsamplings:
                    per_mask = {m: [v for k, v in r.items() if k.startswith(f"ap_{m}_{u}_L")] for m in indices}
                    rows.append({"variant": vi, **model_row, "upsampling": u, "method": method, "seed": seed,
                                 "attention_ap": float(np.mean(per_mask[mask])),
                                 **{f"attention_ap_{m}": float(np.mean(v)) for m, v in per_mask.items()},
                                 **{k: r[k] for k in _DEV_COLUMNS if k in r},
                                 **{k: v for k, v in r.items() if k.startswith(("delta_auc_", "delta_bacc_"))},
                                 **{k.replace(f"_{u}_", "_"): v for k, v in r.items()
                                    if k.startswith("ap_") and f"_{u}_L" in k}})
    return rows


def _dev_ap(config: ExperimentConfig, model, dataset, indices: dict, upsamplings, device) -> dict:
    """``{"ap_<mask>_<upsampling>_L<level>": mean AP}`` of the model's attention maps on the
    images ``indices[mask]`` of ``dataset``, against each mask."""
    ap = defaultdict(list)
    for mask, chosen in indices.items():
        for start in range(0, len(chosen), _DEV_BATCH):
            batch = chosen[start:start + _DEV_BATCH]
            images = torch.stack([dataset[i][0] for i in batch]).to(device)
            masks = torch.stack([dataset[i][2] if mask == "lesion" else dataset.decisive_mask(i) for i in batch])
            maps = explanations(model, images, config.target, posthoc=False)
            for u in upsamplings:
                for r in score_explanations(maps, masks, upsampling=u):
                    ap[(mask, u, r["level"])].append(r["ap"])
    # a plain mean: every explained image has a non-empty mask and every map is finite, so an
    # ap is never NaN; were one NaN, the seed's mean shows it rather than hiding it
    return {f"ap_{m}_{u}_L{level}": float(np.mean(values)) for (m, u, level), values in ap.items()}


def _dev_plain_cnns(config: ExperimentConfig, sets: dict, folder: str, device, progress: bool, log) -> list[dict]:
    """The plain CNN (uniform pooling) with every dev seed, evaluated on the development
    split (for the reported check (c)); none when ``plain_cnn`` is off."""
    plain_rows: list[dict] = []
    if not config.plain_cnn:
        return plain_rows
    for seed in config.dev_seeds:
        got = _train_one(config, (sets["train"], sets["val"]), os.path.join(folder, "runs", f"{PLAIN_CNN}-seed{seed}"),
                         PLAIN_CNN, seed, config.difficulties[0], None, progress, log)
        result = _evaluate(got["model"], sets["dev"], got["threshold"], device, ablation=False, seed=seed,
                           threshold_log_odds=got.get("threshold_log_odds"))
        plain_rows.append({"method": PLAIN_CNN, "seed": seed,
                           **{k: got[k] for k in ("best_epoch", "threshold", "val_auc")},
                           **{k: result[k] for k in ("auc", "bacc", "bacc_argmax")}})
        log(f"[dev] {PLAIN_CNN} seed {seed}: dev auc {result['auc']:.3f}, balanced acc {result['bacc']:.3f}")
    return plain_rows


def compared_methods(rows: list[dict], methods) -> list[str]:
    """The methods whose mean AUC over ``rows`` (one per seed) reaches
    :data:`~convex_attention.paper.validity.MIN_COMPARED_AUC`: only their maps are
    compared; the others are reported."""
    out = []
    for method in methods:
        aucs = [r["auc"] for r in rows if r.get("method", r.get("model")) == method]
        if aucs and all(math.isfinite(a) for a in aucs) and float(np.mean(aucs)) >= MIN_COMPARED_AUC:
            out.append(method)
    return out


def _rank_candidates(config: ExperimentConfig, variants: list[Variant], rows: list[dict]) -> list[dict]:
    """One entry per (variant, upsampling): the mean over the compared methods
    (:func:`compared_methods`), the seeds and the levels of the attention ap (NaN when no
    method is compared), the mean balanced accuracy of every method, and each method's
    dev AUC, ap and balanced accuracy over its seeds (``{method}_auc_mean`` ± ``_ci95``,
    with ``_n_used`` / ``_n_nan``); best first: the most methods compared, then the best ap,
    then the higher balanced accuracy.  (Ranked on ap alone, the means over different method
    sets were compared: a variant whose learned_dual failed the dev AUC bar ranked first by
    the other methods' ap, though worse in every method: ca_rev150.)"""
    summary = []
    for vi, variant in enumerate(variants):
        for u in config.candidates()["upsampling"]:
            rs = [r for r in rows if r["variant"] == vi and r["upsampling"] == u]
            compared = compared_methods(rs, config.methods)
            # intervals over the seeds (the independent runs), of each seed's mean over the methods:
            # over the methods' rows as if independent, a 2-method interval was 0.054 for 0.098 (a review)
            entry = {"variant": vi, "upsampling": u, "label": variant.replace(upsampling=u).label(),
                     "compared": " ".join(compared),
                     **summary_cells("attention_ap", _per_seed_means(rs, "attention_ap", compared)),
                     **summary_cells("bacc", _per_seed_means(rs, "bacc", config.methods))}
            for method in config.methods:  # mean ± CI over its seeds, NaN seeds counted and left out
                mine = [r for r in rs if r["method"] == method]
                for metric, key in (("auc", "auc"), ("ap", "attention_ap"), ("bacc", "bacc")):
                    entry.update(summary_cells(f"{method}_{metric}", [r[key] for r in mine]))
            summary.append(entry)
    summary.sort(key=lambda e: (-len(e["compared"].split()), -_finite(e["attention_ap_mean"]),
                                -_finite(e["bacc_mean"])))
    return summary


def _dev_levels(config: ExperimentConfig, rows: list[dict], indices: dict) -> list[dict]:
    """The proposed variant's results per method and level (mean ± 95 % CI over the dev
    seeds): the AP against every mask and the AUC change when that level's maps alone are
    made uniform or shuffled; level ``"all"``: every level at once."""
    out = []
    for method in config.methods:
        mine = [r for r in rows if r["method"] == method]
        n_levels = len({k for r in mine for k in r if k.startswith("ap_lesion_L")})
        for level in [*range(n_levels), "all"]:
            entry = {"method": method, "level": level, "seeds": len(mine)}
            suffix = "" if level == "all" else f"_L{level}"
            for mask in MASKS:
                if mask not in indices:
                    continue
                values = ([r[f"attention_ap_{mask}"] for r in mine] if level == "all"
                          else [r[f"ap_{mask}_L{level}"] for r in mine])
                entry.update(summary_cells(f"ap_{mask}", values))
            for kind in ("shuffled", "uniform"):
                entry.update(summary_cells(f"delta_auc_{kind}", [r[f"delta_auc_{kind}{suffix}"] for r in mine]))
            out.append(entry)
    return out


def _judge_benchmark(config: ExperimentConfig, validity: list, chosen_rows: list[dict], plain_rows: list[dict],
                     chosen: Variant, difficulty: float, log) -> tuple[list, dict]:
    """Check (c′) on the proposed variant's softmax models, the reported check (c) (its best
    attention method against the plain CNN, over the dev seeds) and the verdict on the
    benchmark: ``(validity, record)``."""
    ranking = _ranking_check(chosen_rows)
    uniform = _uniform_check({m: {r["seed"]: r["bacc"] for r in chosen_rows if r["method"] == m}
                              for m in config.methods},
                             {r["seed"]: r["bacc"] for r in plain_rows}, "the development split")
    replaced = {"maps_drive_ranking": ranking, "uniform_attention": uniform}
    validity = [replaced.get(r.name, r) for r in validity]
    log(f"[dev] validity: {ranking.line()}")
    log(f"[dev] reported: {uniform.line()}")
    tc = config.train
    record = benchmark_record(validity, chosen, difficulty, config.methods, config.dev_seeds,
                              judged_settings(config), data=tc.data, data_seed=tc.data_seed,
                              held_out_mimic=config.held_out_mimic, sizes=split_sizes(config))
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
    #: (condition, test set, mask) -> the mask's mean pixel share over the explained images:
    #: the AP a random map is expected to reach (the figures' chance line)
    chance: dict = field(default_factory=dict)
    #: when the stage started (UTC) and the load average then: the figures' footer
    started: tuple = (None, None)


def run_test(config: ExperimentConfig, folder: str, variants, variants_record: dict, force: bool = False,
             progress: bool = True, log=print, ledger_path: str | None = None) -> dict:
    """The test stage (module docstring) with the checked ``variants`` (whose file is
    described by ``variants_record``: path, SHA-256, commit); writes ``folder`` once.

    Before any work its splits, seeds, methods, settings and where its results are kept are
    added to the data ledger (``ledger_path``; default: beside the variants file) and to
    ``test_runs.jsonl`` beside ``folder`` (a log that ``force`` never rewrites); with
    ``force`` an earlier run's ``folder`` is moved aside, never deleted.  The report lists
    every earlier test run of the benchmark the ledger records, and where its results are."""
    check_judged(config, variants, where=variants_record.get("path") or "variants")
    config = config.with_variants(variants).validate()
    device = _device(config)
    ledger = ledger_path or default_ledger_path(variants_record.get("path") or DEFAULT_VARIANTS_PATH)
    where = ledger_where(folder, ledger)
    # every condition's validation split holds both classes (else best.pt would be picked on no
    # criterion), checked before the seed is spent: after, a split without one wasted it (ca_rev184)
    for difficulty in config.difficulties:
        check_validation_classes(config.train, _splits(config, difficulty, ("val",))[1]["val"])
    with ledger_lock(ledger):  # checked and spent as one step: a run started beside this one waits
        replaced = check_test_data(config, variants, ledger, where, force,
                                   variants_sha256=variants_record.get("sha256"), folder_runs=runs_into(folder))
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = record_test_run(config, variants_record, started, where, force)
        target = None
        here = check_test_folder(folder, force)
        if replaced and not here:
            # --force replaces an earlier run's folder; with none to move aside it would only spend the split
            # again, and the report would say the earlier results are where this run's now are (ca_rev166)
            raise TestFolderExists(
                f"--force moves an earlier test run's folder aside, but {folder} is not there: the data ledger records "
                f"a test run into it (started {replaced[-1].get('started', '?')}), whose test split is spent; put its "
                f"folder back to replace it, or test with an unspent --data-seed and report both runs")
        if here:  # --force over an earlier run: where its results will go
            if os.path.ismount(folder):  # a rename cannot move it: refused before anything is recorded
                raise TestFolderExists(f"{folder} is a mount point: --force cannot move its earlier results aside "
                                       f"(they are never deleted); choose another --out")
            earlier = read_manifest(folder) or {}
            target = aside_target(folder)
            record["moved_aside"] = {"from": where, "to": ledger_where(target, ledger),
                                     "run_started": earlier.get("started"), "run_id": earlier.get("run_id")}
        # recorded before anything moves: a run that fails to write its record moves nothing, so
        # no earlier results can sit where no record says
        spend(ledger, ledger_entry(config, where, started, **{k: v for k, v in record.items()
                                                              if k not in ("stage", "data", "data_seed", "started",
                                                                           "variants")}))
    runs_here = log_test_run(os.path.dirname(os.path.abspath(folder)), {**record, "folder": where})
    moved = claim_test_folder(folder, force, record, target)
    if moved is not None:
        log(f"[test] the earlier results of {folder} were moved, not deleted, to {moved}")
    os.makedirs(os.path.join(folder, "rows"), exist_ok=True)
    gathered = _TestResults(started=(now_utc(), load_average()))
    for difficulty in config.difficulties:
        _test_condition(config, variants.variant, difficulty, folder, device, gathered, progress, log)
    history = {"runs_in_folder": runs_here, "replaced_in_ledger": replaced, "ledger": ledger,
               "benchmark_runs": history_of_test_runs(_ledger_runs(ledger), config.train.data),
               "moved_aside": record.get("moved_aside")}
    result = _write_test(config, variants, variants_record, gathered, folder, device, log, history)
    finish_test_folder(folder, {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return result


def _ledger_runs(ledger: str) -> list[dict]:
    """The runs of ``ledger`` (this run last), after those that only its HEAD version or another
    ledger of the repository records (:func:`~convex_attention.paper.protocol.runs_elsewhere`)."""
    mine = read_ledger(ledger)
    return runs_elsewhere(ledger, mine) + mine


def _posthoc_models(config: ExperimentConfig) -> tuple:
    models_all = tuple(config.methods) + ((PLAIN_CNN,) if config.plain_cnn else ())
    return {"all": models_all, None: ()}.get(config.baseline_model, (config.baseline_model,))


def _test_condition(config: ExperimentConfig, variant: Variant, difficulty: float, folder: str, device,
                    gathered: _TestResults, progress: bool, log) -> None:
    """One difficulty: its splits, validity checks and model-free map, then every seed
    (:func:`_test_seed`), then the reported check (c) and (c′) on the test split."""
    cond = condition_name(difficulty)
    names = ("train", "val", "dev", "test") + (("test_heldout",) if config.held_out_mimic else ())
    specs, sets = _splits(config, difficulty, names)  # (the validation split's classes: checked by run_test)
    log(f"[test] {cond}: " + ", ".join(f"{k} {s.n} (seed {s.seed})" for k, s in specs.items()))
    validity = _validity(sets["train"], sets["test"], config)
    model_free = fit_model_free(sets["dev"], seed=_data_seed(config), limit=config.validity_images)
    test_sets = {"test": sets["test"]}
    if config.held_out_mimic:
        test_sets[f"heldout_{config.held_out_mimic}"] = sets["test_heldout"]
    indices = {t: explained_indices(ds, config.n_explain) for t, ds in test_sets.items()}
    for tname, by_mask in indices.items():
        for mask, images in by_mask.items():
            gathered.chance[(cond, tname, mask)] = _mask_share(test_sets[tname], images, mask)
    for seed in config.seeds:
        _test_seed(config, variant, cond, difficulty, seed, sets, test_sets, indices, model_free, folder, device,
                   gathered, progress, log)
    main = [r for r in gathered.runs if r["condition"] == cond and r["test_set"] == "test"]
    uniform = _uniform_check({m: {r["seed"]: r["bacc"] for r in main if r["model"] == m} for m in config.methods},
                             {r["seed"]: r["bacc"] for r in main if r["model"] == PLAIN_CNN}, "the test split")
    ranking = _ranking_check([{**r, "method": r["model"]} for r in main if r["model"] == "softmax"])
    validity = [{"uniform_attention": uniform, "maps_drive_ranking": ranking}.get(r.name, r) for r in validity]
    dev_rows = [{"model": r["model"], "auc": r["dev_auc"]} for r in main]
    gathered.conditions.append({"condition": cond, "difficulty": difficulty,
                                "splits": {k: asdict(s) for k, s in specs.items()},
                                "validity": validity, "model_free": model_free, "test_sets": list(test_sets),
                                "compared": compared_methods(dev_rows, [*config.methods, PLAIN_CNN]),
                                "n_explained": {t: {m: len(i) for m, i in by_mask.items()}
                                                for t, by_mask in indices.items()}})


def _mask_share(dataset, images: list[int], mask: str) -> float:
    """The mean share of an image's pixels in its ``mask`` ("lesion" or "decisive") over
    ``images``: a random map's expected pixel AP (NaN without images)."""
    shares = [float((dataset[i][2] if mask == "lesion" else dataset.decisive_mask(i)).float().mean()) for i in images]
    return float(np.mean(shares)) if shares else math.nan


def _test_seed(config: ExperimentConfig, variant: Variant, cond: str, difficulty: float, seed: int, sets: dict,
               test_sets: dict, indices: dict, model_free: dict, folder: str, device, gathered: _TestResults,
               progress: bool, log) -> None:
    """Train every model with one seed, then on every test set: accuracy and the map
    ablation (every level and each alone), every explanation scored against every mask, the
    example figure (first seed) and the cascading randomisation check (the test split).
    Each model's AUC on the dev split decides whether its maps are compared."""
    models_all = tuple(config.methods) + ((PLAIN_CNN,) if config.plain_cnn else ())
    posthoc = _posthoc_models(config)
    trained = {}
    for name in models_all:
        fields_ = None if name == PLAIN_CNN else variant.model_fields(name)
        trained[name] = _train_one(config, (sets["train"], sets["val"]),
                                   os.path.join(folder, "runs", cond, f"{name}-seed{seed}"), name, seed,
                                   difficulty, fields_, progress, log)
        trained[name]["dev_auc"] = _evaluate(trained[name]["model"], sets["dev"], trained[name]["threshold"],
                                             device, ablation=False, seed=seed,
                                             threshold_log_odds=trained[name].get("threshold_log_odds"))["auc"]
    models = {n: t["model"] for n, t in trained.items()}
    for tname, tset in test_sets.items():
        for name, t in trained.items():
            row = {"condition": cond, "test_set": tname, "model": name, "seed": seed,
                   **{k: t[k] for k in ("best_epoch", "epoch_time_s", "train_time_s", "val_auc", "dev_auc",
                                        "threshold")},
                   **_evaluate(t["model"], tset, t["threshold"], device, ablation=True, seed=seed,
                               threshold_log_odds=t.get("threshold_log_odds"))}
            gathered.runs.append(row)
            ablated = (f" (AUC change: uniform maps {row['delta_auc_uniform']:+.3f}, shuffled "
                       f"{row['delta_auc_shuffled']:+.3f})") if "delta_auc_uniform" in row else ""
            log(f"[test] {cond} {tname} {name} seed {seed}: dev auc {t['dev_auc']:.3f}; auc {row['auc']:.3f}, "
                f"balanced acc {row['bacc']:.3f}{ablated}")
        first = seed == config.seeds[0] and tname == "test"
        by_mask = indices[tname]
        rows, examples = explain_models(models, tset, indices=by_mask["lesion"], decisive=by_mask.get("decisive"),
                                        baseline_model=list(posthoc), target=config.target, device=device,
                                        progress=progress, upsampling=variant.upsampling, pooled=True,
                                        references=True, model_free_weights=model_free["weights"],
                                        n_examples=4 if first else 0)
        atomic_csv(os.path.join(folder, "rows", f"explain-{cond}-{tname}-seed{seed}.csv"), EXPLAIN_COLUMNS, rows)
        for s in summarise(rows):
            gathered.seed_means.append({"condition": cond, "test_set": tname, "seed": seed, **s})
        if first:
            # every level of every attention model and reference; the post-hoc methods of the plain CNN
            keep = [e for e in examples if e[2] in ("attention", "block_map", "model_free") or e[1] == PLAIN_CNN]
            channels, what = DECIDING_CHANNELS.get(SYNTHETIC_GENERATORS.get(config.train.data, ""),
                                                   (((0, "channel 0"),), ""))
            plot_examples(keep, os.path.join(folder, f"explain_examples_{cond}.png"), max_rows=3, max_maps=24,
                          title=f"Test split, {cond.replace('difficulty', 'difficulty ')}, seed {seed}: the first "
                                f"lesion images, every map", channels=channels, row_label="test image {}",
                          notes=[what], env={**environment(device), "runs": [run_record(*gathered.started)]})
        if tname == "test":
            sanity_idx = by_mask[primary_mask(by_mask)][:config.n_sanity]
            images = torch.stack([tset[i][0] for i in sanity_idx]).to(device)
            labels = torch.tensor([int(tset[i][1]) for i in sanity_idx])
            for name, model in models.items():
                for r in randomisation_check(model, images, config.target, seed=10_000 + seed,
                                             posthoc=name in posthoc, labels=labels):
                    gathered.randomisation.append({"condition": cond, "test_set": tname, "model": name, "seed": seed,
                                                   "stage": r["stage"], "stage_index": r["stage_index"],
                                                   "method": r["method"], "level": r["level"],
                                                   "image": sanity_idx[r["position"]],
                                                   "spearman_abs": r["spearman_abs"],
                                                   "spearman_signed": r["spearman_signed"]})


_RANDOMISATION_KEYS = ("condition", "test_set", "model", "method", "level", "stage_index", "stage")


def _write_test(config: ExperimentConfig, variants, variants_record: dict, gathered: _TestResults, folder: str,
                device, log, history: dict) -> dict:
    """The test stage's files: per-run and per-seed tables, the summaries, the report, the
    JSON record and the AP figures (one per mask)."""
    runs, seed_means = gathered.runs, gathered.seed_means
    atomic_csv(os.path.join(folder, "runs.csv"), RUN_COLUMNS, runs)
    atomic_csv(os.path.join(folder, "randomisation.csv"),
               _RANDOMISATION_KEYS[:3] + ("seed",) + _RANDOMISATION_KEYS[3:] + ("image", "spearman_abs",
                                                                                   "spearman_signed"),
               gathered.randomisation)
    per_seed_cols = ("condition", "test_set", "seed") + tuple(k for k in seed_means[0] if k not in
                                                               ("condition", "test_set", "seed"))
    atomic_csv(os.path.join(folder, "explain_per_seed.csv"), per_seed_cols, seed_means)
    accuracy = _summary(runs, ("condition", "test_set", "model"), accuracy_columns(config))
    ablation = _summary([r for r in runs if r["model"] != PLAIN_CNN], ("condition", "test_set", "model"),
                        ablation_columns(config))
    explain_summary = _summary([{**s, **{m: s[f"{m}_mean"] for m in METRIC_NAMES}} for s in seed_means],
                               ("condition", "test_set", "model", "method", "level", "resolution", "upsampling",
                                "mask"), METRIC_NAMES)
    rand_seed = [{**_seed_mean(rs, "spearman_abs"), **_seed_mean(rs, "spearman_signed")}
                 for rs in _grouped(gathered.randomisation, _RANDOMISATION_KEYS + ("seed",))]
    rand_summary = _summary(rand_seed, _RANDOMISATION_KEYS, ("spearman_abs", "spearman_signed"))
    atomic_csv(os.path.join(folder, "accuracy_summary.csv"), list(accuracy[0]), accuracy)
    accuracy_differences = _accuracy_differences(runs)
    atomic_csv(os.path.join(folder, "accuracy_differences.csv"), ACCURACY_DIFFERENCE_COLUMNS, accuracy_differences)
    atomic_csv(os.path.join(folder, "explain_summary.csv"), list(explain_summary[0]), explain_summary)
    if ablation:
        atomic_csv(os.path.join(folder, "ablation_summary.csv"), list(ablation[0]), ablation)
    if rand_summary:
        atomic_csv(os.path.join(folder, "randomisation_summary.csv"), list(rand_summary[0]), rand_summary)
    conditions = gathered.conditions
    compared = {c["condition"]: c["compared"] for c in conditions}
    headline = _headline(explain_summary, seed_means, compared)
    report = test_report(config, variants, variants_record, conditions, accuracy, explain_summary, ablation,
                         rand_summary, headline, device, history, accuracy_differences)
    atomic_write_text(os.path.join(folder, "experiment.md"), report)
    result = {"stage": "test", "config": config.to_dict(), "variants": variants.to_dict(),
              "variants_file": variants_record, "environment": environment(device), "history": history,
              "conditions": [{**c, "validity": [r.to_dict() for r in c["validity"]]} for c in conditions],
              "accuracy": accuracy, "accuracy_differences": accuracy_differences, "ablation": ablation,
              "explanations": explain_summary,
              "randomisation": rand_summary, "headline": headline}
    write_json(os.path.join(folder, "experiment.json"), result)
    write_json(os.path.join(folder, "experiment_config.json"), {"config": config.to_dict(),
                                                                 "variants": variants.to_dict(),
                                                                 "variants_file": variants_record})
    # the figures' footer: the environment and the load average at the stage's start and now
    figure_env = {**result["environment"], "runs": [run_record(*gathered.started)]}
    for mask in sorted({s["mask"] for s in explain_summary}):
        try:
            chance = {(c, t): v for (c, t, m), v in gathered.chance.items() if m == mask}
            plot_metric_summary([s for s in explain_summary if s["mask"] == mask],
                                os.path.join(folder, f"explain_ap_{mask}.png"), env=figure_env,
                                title=f"Explanation AP against the {mask} masks on the test splits (pixel protocol; "
                                      f"mean over {len(config.seeds)} seeds, 95 % CI)", chance=chance)
        except ValueError as exc:  # the numbers are written; a figure without data is only worth a warning
            log(f"[test] no AP figure for the {mask} masks: {exc}")
    return {**result, "runs": runs, "report": report}


def accuracy_columns(config: ExperimentConfig) -> tuple[str, ...]:
    """The accuracy and map-statistic columns of ``runs.csv`` summarised per model: those of
    :data:`ACCURACY` whose level the configured model has."""
    levels = len(config.train.model.attention_blocks)
    absent = {f"{m}_L{k}" for m in MAP_STATISTICS for k in range(levels, MAX_ATTENTION_LEVELS)}
    return tuple(c for c in ACCURACY if c not in absent)


def ablation_columns(config: ExperimentConfig) -> tuple[str, ...]:
    """The map-ablation columns of ``runs.csv``: every level at once, then each level alone."""
    return ABLATION + tuple(f"{c}_L{k}" for k in range(len(config.train.model.attention_blocks)) for c in ABLATION)


def _grouped(rows: list[dict], keys: tuple) -> list[list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return list(groups.values())


def _seed_mean(rows: list[dict], metric: str) -> dict:
    """The group's keys (from its first row, minus the per-image ones), the mean of
    ``metric`` over its images whose value is a finite number, and how many images it used and
    left out (``{metric}_n_used``, ``{metric}_n_nan``).

    In the randomisation check an image's Spearman correlation is NaN when the trained or
    the randomised map is constant (e.g. an all-zero GradCAM): a constant map ranks no
    pixels, so it neither agrees nor disagrees with the other, and no number (0 or 1)
    would be true of it.  Such images are left out of the seed's mean and counted; the
    mean is NaN when every image is, and the summary then leaves the seed out and counts
    it too."""
    values = [r[metric] for r in rows]
    n_used, n_nan = nan_counts(values)
    keys = {k: v for k, v in rows[0].items() if k not in ("image", "spearman_abs", "spearman_signed")}
    mean = mean_ci(values)[0]  # over the finite values, those nan_counts counts as used (np.nanmean kept inf)
    return {**keys, metric: mean, f"{metric}_n_used": n_used, f"{metric}_n_nan": n_nan}


def _seed_paired(x: dict, y: dict) -> tuple[float, float, int, int]:
    """Mean ± 95 % CI half-width over the seeds both ``{seed: value}`` hold of ``x − y``, the
    number of seeds paired and how many of their differences were NaN (left out of the mean)."""
    seeds = sorted(set(x) & set(y))
    differences = [x[s] - y[s] for s in seeds]
    mean, half = mean_ci(differences)
    return mean, half, len(seeds), nan_counts(differences)[1]


def _paired_difference(seed_means: list[dict], a: dict, b: dict) -> tuple[float, float, int, int]:
    """:func:`_seed_paired` of ``ap(a) − ap(b)``, two explanation groups of one condition and
    test set."""
    def per_seed(group):
        return {s["seed"]: s["ap_mean"] for s in seed_means
                if all(s.get(k) == group.get(k) for k in ("condition", "test_set", "model", "method", "level",
                                                          "resolution", "upsampling", "mask"))}

    return _seed_paired(per_seed(a), per_seed(b))


#: The accuracy metrics of ``runs.csv`` compared between models, paired by seed
PAIRED_ACCURACY = ("auc", "bacc")
#: accuracy_differences.csv's columns (a run of one model has no pair: the header alone)
ACCURACY_DIFFERENCE_COLUMNS = ("condition", "test_set", "metric", "model", "minus", "difference_mean",
                               "difference_ci95", "seeds", "seeds_nan")


def _number(value) -> float:
    """A runs.csv value as a float: NaN for an empty one (AUC of a test set with one class, as
    a CSV read back holds it)."""
    return math.nan if value is None or value == "" else float(value)


def _accuracy_differences(runs: list[dict]) -> list[dict]:
    """Per condition and test set, every pair of models (in ``runs.csv``'s order: the attention
    methods, then the plain CNN; the later minus the earlier) and each metric of
    :data:`PAIRED_ACCURACY`: the difference paired by seed (:func:`_seed_paired`).  Every pair,
    so that none is chosen after the results: two models' accuracy read from their own
    overlapping intervals had hidden a difference whose paired interval excludes 0 (the learned
    dual 0.053 ± 0.022 AUC below exact on an unseen mimic type: ca_rev231)."""
    out = []
    for group in _grouped(runs, ("condition", "test_set")):
        cond, tset = group[0]["condition"], group[0]["test_set"]
        rows_of = {model[0]["model"]: model for model in _grouped(group, ("model",))}  # in runs.csv's order
        for earlier, later in itertools.combinations(rows_of, 2):
            for metric in PAIRED_ACCURACY:
                x, y = ({r["seed"]: _number(r[metric]) for r in rows_of[m]} for m in (later, earlier))
                mean, half, n, n_nan = _seed_paired(x, y)
                out.append(dict(zip(ACCURACY_DIFFERENCE_COLUMNS,
                                    (cond, tset, metric, later, earlier, mean, half, n, n_nan))))
    return out


def _headline(explain_summary: list[dict], seed_means: list[dict], compared: dict) -> list[dict]:
    """Per condition, test set, mask and resolution: the best attention map of a compared
    model and the best post-hoc map of a compared model by mean ``ap`` (and the
    references), with their CIs, and the attention-minus-post-hoc difference paired by
    seed.  Both bests are picked on the test split, from the numbers of candidates recorded in
    ``candidates`` (in the fixed design the post-hoc side's maps, every method on every
    compared model, far outnumber the attention levels, so the selection favours the post-hoc
    side); the intervals do not account for the selection.  The report says which side it
    favours from those counts, and its full tables show every map."""
    out = []
    keys = sorted({(s["condition"], s["test_set"], s["mask"], s["resolution"]) for s in explain_summary})
    for cond, tset, mask, res in keys:
        group = [s for s in explain_summary
                 if (s["condition"], s["test_set"], s["mask"], s["resolution"]) == (cond, tset, mask, res)]
        ok = set(compared.get(cond, ())) | {REFERENCE_MODEL}
        entry: dict = {"condition": cond, "test_set": tset, "mask": mask, "resolution": res}
        chosen = {}
        for kind, pick in (("attention", lambda s: s["method"] == "attention"),
                           ("posthoc", lambda s: s["method"] in POSTHOC),
                           ("block_map", lambda s: s["method"] == "block_map"),
                           ("model_free", lambda s: s["method"] == "model_free")):
            cands = [s for s in group if pick(s) and s["model"] in ok]
            entry.setdefault("candidates", {})[kind] = len(cands)
            if cands:
                best = max(cands, key=lambda s: _finite(s["ap_mean"]))
                chosen[kind] = best
                entry[kind] = {"model": best["model"], "method": best["method"], "level": best["level"],
                               "ap_mean": best["ap_mean"], "ap_ci95": best["ap_ci95"]}
        if "attention" in chosen and "posthoc" in chosen:
            mean, half, n, n_nan = _paired_difference(seed_means, chosen["attention"], chosen["posthoc"])
            entry["difference"] = {"ap_mean": mean, "ap_ci95": half, "seeds": n, "seeds_nan": n_nan}
            # each compared attention model's best level against that same best post-hoc map
            entry["by_model"] = {}
            for model in sorted({s["model"] for s in group if s["method"] == "attention" and s["model"] in ok}):
                best = max((s for s in group if s["method"] == "attention" and s["model"] == model),
                           key=lambda s: _finite(s["ap_mean"]))
                mean, half, n, n_nan = _paired_difference(seed_means, best, chosen["posthoc"])
                entry["by_model"][model] = {"level": best["level"], "ap_mean": best["ap_mean"],
                                            "ap_ci95": best["ap_ci95"], "difference_mean": mean,
                                            "difference_ci95": half, "seeds": n, "seeds_nan": n_nan}
        out.append(entry)
    return out
