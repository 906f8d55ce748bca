"""The experiment's reports: ``dev.md`` and ``experiment.md`` from the stages' numbers.

Every number is printed as the mean ± the half-width of its 95 % confidence interval
(:func:`cell`); the tables are Markdown.  Nothing here computes a result: the stages of
:mod:`convex_attention.paper.experiment` do, and hand their numbers over.
"""
from __future__ import annotations

import math

from .explain import format_ci
from .explain_metrics import METRIC_NAMES, pointing_tolerance_px
from .protocol import failed_checks

__all__ = ["dev_report", "test_report", "cell", "validity_lines", "ACCURACY", "ABLATION"]

#: The accuracy and map-statistic columns summarised per model (runs.csv) and their order in the report.
ACCURACY = ("auc", "bacc", "bacc_argmax", "violation", "n_max_p_L0", "n_max_p_L1", "entropy_ratio_L0",
            "entropy_ratio_L1", "score_range_L0", "score_range_L1", "epoch_time_s", "best_epoch")
#: The map-ablation columns (runs.csv).
ABLATION = ("delta_bacc_uniform", "delta_bacc_shuffled", "delta_auc_uniform", "delta_auc_shuffled")


def cell(s: dict, metric: str, digits: int = 3) -> str:
    return format_ci(s.get(f"{metric}_mean", math.nan), s.get(f"{metric}_ci95", math.nan), digits)


def validity_lines(results: list, heading: str) -> list[str]:
    lines = [f"### {heading}", "", "| check | number | passes if | status | note |", "|---|---|---|---|---|"]
    for r in results:
        rule = f"{'<=' if r.passes_below else '>='} {r.threshold:.2f}"
        value = "–" if r.value is None or not math.isfinite(r.value) else f"{r.value:.3f}"
        note = r.note if r.ran else r.reason
        lines.append(f"| {r.name} ({r.title}) | {r.metric} {value} | {rule} | {r.status} | {note} |")
    return lines + [""]


def dev_report(config, specs, validity, summary, proposal, n_images, plain_rows) -> str:
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
    lines += validity_lines(validity, "checks")
    verdict = proposal.verdict()
    lines += [f"**Benchmark {verdict.upper()} on the development split.**" + (
        "" if verdict == "accepted" else " The test stage refuses this variants file unless "
                                         "`--allow-rejected-benchmark` is given (and then says so in its report)."), ""]
    lines += ["## Candidates (best first)", "",
              "| variant | attention ap | balanced acc | " + " | ".join(f"{m} ap | {m} bacc" for m in config.methods)
              + " |", "|" + "---|" * (3 + 2 * len(config.methods))]
    for e in summary:
        lines.append(f"| {e['label']} | {cell(e, 'attention_ap')} | {cell(e, 'bacc')} | " + " | ".join(
            f"{e[f'{m}_ap']:.3f} | {e[f'{m}_bacc']:.3f}" for m in config.methods) + " |")
    lines += ["", f"Proposed: {proposal.variant.label()}. Review `proposed_variants.json`, copy it to "
                  f"`configs/experiment_variants.json`, commit it, then run `--stage test`.", ""]
    return "\n".join(lines)


def level_name(level) -> str:
    return "input" if int(level) == -1 else str(level)


def level_tag(level) -> str:
    return "(input)" if int(level) == -1 else f"L{level}"


def verdict_line(variants) -> str:
    verdict = variants.verdict()
    if verdict == "accepted":
        return "The dev stage accepted the benchmark: every validity check ran and passed on the development split."
    if verdict == "rejected":
        failed = failed_checks(variants.benchmark["checks"])
        return (f"**The dev stage REJECTED this benchmark** (failed or not run on the development split: "
                f"{', '.join(failed)}); this test run was made anyway (--allow-rejected-benchmark), so it cannot "
                f"test whether attention is necessary.")
    return ("**The dev stage's verdict on the benchmark is not recorded** in the variants file (written before the dev "
            "stage recorded one): the benchmark was never accepted before the test split was touched, and this run "
            "was made anyway (--allow-rejected-benchmark).")


def test_report(config, variants, record, conditions, accuracy, explain_summary, ablation, rand_summary, headline,
                 device) -> str:
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
             verdict_line(variants),
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
        lines += validity_lines(c["validity"], f"{c['condition']} (training vs test images; uniform attention: the "
                                                f"best attention model vs the plain CNN on the test split)")
        mf = c["model_free"]
        lines += [f"Model-free reference map ({c['condition']}): {mf['name']}, chosen on the dev split (cross-fitted "
                  f"dev AP {mf['dev_ap']:.3f}), weights {[format(w, '.3g') for w in (mf['weights'] or [])]}.", ""]
    lines += ["## Accuracy and map statistics (test splits)", "",
              "| condition | test set | model | AUC | bacc | bacc argmax | violation | N·max p L0 | N·max p L1 | "
              "H/log N L0 | H/log N L1 | score range L0 | score range L1 | time/epoch (s) | best epoch |",
              "|" + "---|" * 15]
    for s in accuracy:
        lines.append(f"| {s['condition']} | {s['test_set']} | {s['model']} | " + " | ".join(
            cell(s, m) for m in ACCURACY[:3]) + " | " +
            cell(s, "violation", 4) + " | " + " | ".join(cell(s, m) for m in ACCURACY[4:10]) + " | " +
            cell(s, "epoch_time_s", 2) + " | " + cell(s, "best_epoch", 1) + " |")
    lines += ["", "## Headline: best attention map against best post-hoc map (ap)", "",
              "| condition | test set | resolution | best attention | ap | best post-hoc | ap | best block map | ap | "
              "model-free | ap |", "|" + "---|" * 11]
    for h in headline:
        cells = []
        for kind in ("attention", "posthoc", "block_map", "model_free"):
            b = h.get(kind)
            cells += ([f"{b['model']} {b['method']} {level_tag(b['level'])}",
                       cell({"x_mean": b["ap_mean"], "x_ci95": b["ap_ci95"]}, "x")] if b else ["–", "–"])
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
                lines.append(f"| {s['model']} | {s['method']} | {level_name(s['level'])} | {s['resolution']} | "
                             f"{s['upsampling']} | " + " | ".join(cell(s, m) for m in METRIC_NAMES) + " |")
            lines.append("")
    lines += ["## Sanity checks", "", "### Do the maps drive the decision? (map ablation at test time)", "",
              "Change when every attention map is replaced by a uniform map or by the same map with its cells "
              "shuffled (negative: the maps matter).", "",
              "| condition | test set | model | Δ bacc uniform | Δ bacc shuffled | Δ AUC uniform | Δ AUC shuffled |",
              "|---|---|---|---|---|---|---|"]
    for s in ablation:
        lines.append(f"| {s['condition']} | {s['test_set']} | {s['model']} | " + " | ".join(
            cell(s, m) for m in ABLATION) + " |")
    lines += ["", "### Model-parameter randomisation (Adebayo et al., 2018)", "",
              "Spearman rank correlation between each explanation and the same explanation of a re-initialised model "
              "(near 0: the explanation depends on the model; near 1: it does not).", "",
              "| condition | model | map | level | Spearman |", "|---|---|---|---|---|"]
    for s in sorted(rand_summary, key=lambda s: (s["condition"], s["model"], s["method"], int(s["level"]))):
        lines.append(f"| {s['condition']} | {s['model']} | {s['method']} | {level_name(s['level'])} | "
                     f"{cell(s, 'spearman')} |")
    lines += ["", "Files: runs.csv (one row per condition, test set, model and seed), accuracy_summary.csv, "
                  "ablation_summary.csv, explain_per_seed.csv, explain_summary.csv, randomisation.csv, "
                  "randomisation_summary.csv, rows/ (every image's scores), experiment.json, "
                  "explain_examples_*.png (one colour scale for all maps), explain_ap.png (AP of every map with its "
                  "95 % CI, pixel protocol, one x scale for all panels).", ""]
    return "\n".join(lines)
