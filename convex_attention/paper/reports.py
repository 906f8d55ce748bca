"""The experiment's reports: ``dev.md`` and ``experiment.md`` from the stages' numbers.

Every number is printed as the mean ± the half-width of its 95 % confidence interval
(:func:`cell`); the tables are Markdown.  Nothing here computes a result: the stages of
:mod:`convex_attention.paper.experiment` do, and hand their numbers over.
"""
from __future__ import annotations

import math

from .config import MAX_ATTENTION_LEVELS
from .explain import MASKS, POSTHOC, REFERENCE_MODEL, dropped_values, format_ci, primary_mask
from .explain_metrics import METRIC_NAMES, pointing_tolerance_px
from .protocol import JUDGED_SETTINGS, failed_checks, judged_settings, moved_by_id
from .validity import MIN_COMPARED_AUC, REPORTED_ONLY, shown_against

__all__ = ["dev_report", "test_report", "history_line", "judged_line", "cell", "validity_lines", "nan_lines",
           "ACCURACY", "ABLATION"]

#: The map statistics runs.csv has per attention level (``{name}_L{k}``), and their headers in the report.
MAP_STATISTICS = {"n_max_p": "N·max p", "entropy_ratio": "H/log N", "score_range": "score range"}
#: The accuracy and map-statistic columns summarised per model (runs.csv; a model with fewer levels
#: has fewer: experiment.accuracy_columns) and their order in the report.
ACCURACY = (("auc", "bacc", "bacc_argmax", "violation")
            + tuple(f"{m}_L{k}" for m in MAP_STATISTICS for k in range(MAX_ATTENTION_LEVELS))
            + ("epoch_time_s", "best_epoch", "dev_auc"))
#: The map-ablation columns (runs.csv).
ABLATION = ("delta_bacc_uniform", "delta_bacc_shuffled", "delta_auc_uniform", "delta_auc_shuffled")


def cell(s: dict, metric: str, digits: int = 3) -> str:
    return format_ci(s.get(f"{metric}_mean", math.nan), s.get(f"{metric}_ci95", math.nan), digits)


#: The reference maps (model REFERENCE_MODEL: the block map, the model-free map) depend on no training seed,
#: so their number is the same on every seed and its "interval" over the seeds 0 wide, which had been printed
#: as "0.907 ± 0.000", a certainty no 64 images give (ca_rev260); shown without one, and said so.
SEEDLESS_NOTE = ("The reference maps (block map, model-free map) depend on no trained model: their number is the "
                 "same on every seed, so it is shown without an interval (over the seeds it would be 0 wide, and "
                 "it says nothing of how it would vary over other images).")


def seedless_cell(s: dict, metric: str, digits: int = 3) -> str:
    """:func:`cell`, without the half-width for a reference map (:data:`SEEDLESS_NOTE`)."""
    return (format_ci(s.get(f"{metric}_mean", math.nan), math.nan, digits) if s.get("model") == REFERENCE_MODEL
            else cell(s, metric, digits))


#: The heading of the report's lists of values left out of a mean (NaN, or an infinity: ca_rev196).
LEFT_OUT = "Left out as NaN or infinite"


def nan_lines(summary: list[dict], keys, what: str, count: str = "seeds", all_nan: bool = False) -> list[str]:
    """The report's statement of values left out of ``summary``'s means because they were
    NaN: one bullet per group (``keys``) and metric whose mean is a number yet left some out
    (every metric with a ``{metric}_n_nan`` column; :func:`~.explain.dropped_values`), and
    with ``all_nan`` every one NaN on all its seeds too ("all 5 seeds NaN, no mean"), or one
    line saying none was; ``what`` names the table."""
    metrics = list(dict.fromkeys(k[:-len("_n_nan")] for s in summary for k in s if k.endswith("_n_nan")))
    dropped = dropped_values(summary, keys, metrics, count, all_nan)
    if not dropped:
        return [f"{LEFT_OUT} ({what}): nothing; every mean shown is over all {count} (a mean over none is "
                f"shown as –).", ""]
    return ([f"{LEFT_OUT} ({what}): the means and intervals above are over the {count} whose value is a finite "
             f"number (Student t with one degree of freedom fewer than those {count}):", ""]
            + [f"- {line}" for line in dropped] + [""])


def validity_lines(results: list, heading: str) -> list[str]:
    lines = [f"### {heading}", "", "| check | number | passes if | status | note |", "|---|---|---|---|---|"]
    for r in results:
        rule = r.rule
        value = "–" if r.value is None or not math.isfinite(r.value) else shown_against(r.value, r.threshold)
        note = r.note if r.ran else r.reason
        lines.append(f"| {r.name} ({r.title}) | {r.metric} {value} | {rule} | {r.status} | {note} |")
    return lines + [""]


def dev_report(config, specs, validity, summary, proposal, n_images: dict, plain_rows, levels, mask: str) -> str:
    """``dev.md``: the validity checks and the verdict, the candidates, and the proposed
    variant's AP per level and mask and its map ablation per method and level."""
    explained = "; ".join(f"{m} masks: its first {n} images with a {m} mask" for m, n in n_images.items())
    lines = ["# Experiment: development stage", "",
             f"Data {config.train.data!r}, data seed {config.train.data_seed}. Development split: {specs['dev'].n} "
             f"images (generator seed {specs['dev'].seed}, difficulty {specs['dev'].difficulty:g}, mimic types "
             f"{', '.join(specs['dev'].mimic_types or ('-',))}); attention maps scored against the {explained}. "
             f"Training: {specs['train'].n} images; checkpoint selection and threshold on the label-only validation "
             f"split ({specs['val'].n} images). Seeds {list(config.dev_seeds)}. Mean ± 95 % CI half-width (Student "
             f"t over the seeds whose value is a number; any left out as NaN are listed below each table).", "",
             "## Validity checks (training vs development images)", "",
             "(a) and (b) compare training and development images. (c′) shuffles the cells of every map of the "
             "proposed variant's `softmax` models (the reference, not a method on trial) and measures the drop of "
             "their dev ROC AUC. (c) is reported, never a gate: the proposed variant's best attention method against "
             "the plain CNN (uniform pooling), paired by seed"
             + (": plain CNN " + ", ".join(f"seed {r['seed']} {r['bacc']:.3f}" for r in plain_rows) + "."
                if plain_rows else "; the plain CNN was not trained (plain_cnn off), so (c) did not run."), ""]
    lines += validity_lines(validity, "checks")
    verdict = proposal.verdict()
    lines += [f"**Benchmark {verdict.upper()} on the development split.**" + (
        "" if verdict == "accepted" else " The test stage refuses this variants file unless "
                                         "`--allow-rejected-benchmark` is given (and then says so in its report)."), ""]
    lines += ["## Candidates (best first)", "",
              f"Ranked by the number of compared methods (dev AUC >= {MIN_COMPARED_AUC:.2f}: a candidate that "
              f"breaks a method ranks below one that keeps it), then by the attention ap against the {mask} masks "
              f"(pixel protocol), mean over the compared methods, their levels and the seeds, then by balanced "
              f"accuracy.", "",
              "| variant | compared | attention ap | balanced acc | "
              + " | ".join(f"{m} AUC | {m} ap | {m} bacc" for m in config.methods) + " |",
              "|" + "---|" * (4 + 3 * len(config.methods))]
    for e in summary:
        lines.append(f"| {e['label']} | {e['compared'] or 'none'} | {cell(e, 'attention_ap')} | {cell(e, 'bacc')} | "
                     + " | ".join(f"{_dev_auc_cell(e, f'{m}_auc')} | {cell(e, f'{m}_ap')} | {cell(e, f'{m}_bacc')}"
                                  for m in config.methods) + " |")
    # seeds, not runs: each seed's value is the mean over the compared methods, and one NaN run takes
    # its seed out (the report said "1 of 5 runs" for 1 of 5 seeds: a review)
    lines += [""] + nan_lines(summary, ("label",), "candidates; the attention ap counts seeds, each the mean over "
                              "the compared methods (a NaN run leaves its seed out)", "seeds")
    masks = [m for m in MASKS if m in n_images]
    lines += ["", f"## The proposed variant per level: {proposal.variant.label()}", "",
              "AP of the attention maps against each mask (pixel protocol), and the change of dev AUC when that "
              "level's maps alone (level 'all': every level at once) are shuffled or made uniform (negative: the "
              "maps drive the ranking). Per-method ablations are results, not validity checks.", "",
              "| method | level | " + " | ".join(f"ap {m}" for m in masks) + " | Δ AUC shuffled | Δ AUC uniform |",
              "|" + "---|" * (4 + len(masks))]
    for e in levels:
        lines.append(f"| {e['method']} | {e['level']} | " + " | ".join(cell(e, f"ap_{m}") for m in masks) + " | "
                     + cell(e, "delta_auc_shuffled") + " | " + cell(e, "delta_auc_uniform") + " |")
    lines += [""] + nan_lines(levels, ("method", "level"), "the proposed variant per level")
    if verdict == "accepted":
        closing = (f"Proposed: {proposal.variant.label()}. Review `proposed_variants.json`, copy it to "
                   f"`configs/experiment_variants.json`, commit it, then run `--stage test` with a data seed that no "
                   f"recorded run used (`--data-seed`).")
    else:  # a --quick run is always here (check (c') needs 5 dev seeds): its proposal is no file to commit
        judged = "whose verdict was not recorded" if verdict == "not recorded" else verdict
        closing = (f"Proposed: {proposal.variant.label()}, by a benchmark {judged} on the development split: not a "
                   f"variants file to commit in place of `configs/experiment_variants.json` (the test stage refuses "
                   f"it unless `--allow-rejected-benchmark`).")
    lines += ["", closing, ""]
    return "\n".join(lines)


def level_name(level) -> str:
    return "input" if int(level) == -1 else str(level)


def level_tag(level) -> str:
    return "(input)" if int(level) == -1 else f"L{level}"


def verdict_line(variants) -> str:
    verdict = variants.verdict()
    if verdict == "accepted":
        # every check that decides; a reported-only one may have failed or not run (a review: the line
        # said "every validity check" beside a (c) that failed)
        checks = variants.benchmark.get("checks", {})
        reported = [f"{name} {'passed' if c.get('passed') else 'FAILED' if c.get('ran') else 'did not run'}"
                    for name, c in checks.items() if name in REPORTED_ONLY]
        return ("The dev stage accepted the benchmark: every validity check that decides ran and passed on the "
                "development split" + (f" (reported only, not deciding: {', '.join(reported)})." if reported else "."))
    if verdict == "rejected":
        failed = failed_checks(variants.benchmark["checks"])
        return (f"**The dev stage REJECTED this benchmark** (failed or not run on the development split: "
                f"{', '.join(failed)}); this test run was made anyway (--allow-rejected-benchmark), so it cannot "
                f"test whether attention is necessary.")
    return ("**The dev stage's verdict on the benchmark is not recorded** in the variants file (written before the dev "
            "stage recorded one): the benchmark was never accepted before the test split was touched, and this run "
            "was made anyway (--allow-rejected-benchmark).")


def _moved_to(run: dict, others: list) -> str | None:
    """Where ``run``'s results are now: its folder, or where a run of ``others`` that moved
    that folder aside (its ``moved_aside`` naming ``run``'s id) put them."""
    to = moved_by_id(run, others)
    return to if to is not None else run.get("results") or run.get("where")


def history_line(history: dict, data: str | None = None) -> str:
    """The report's line on earlier test runs: those of the benchmark that the data ledger
    records (``benchmark_runs``, across result folders, this run last), each with where its
    results are kept, and those into the same folder (``runs_in_folder``: ``--force``)."""
    here = history.get("runs_in_folder") or []
    runs = history.get("benchmark_runs")
    ledger = history.get("ledger", "the data ledger")
    lines = []
    if runs is None:  # a history from before the ledger listed the benchmark's runs
        runs = here
    # the runs the folder's own log records that the ledger read does not (its entry discarded, or
    # kept beside another variants file): a run the folder remembers is never forgotten here
    # (runs of this benchmark only, each where a later run's --force moved its results: a review)
    known = {r.get("run_id") for r in runs if r.get("run_id")}
    missing = [r for r in here[:-1] if r.get("run_id") and r.get("run_id") not in known
               and (data is None or r.get("data") == data)]
    # every run where it is now, the ledger's too: a run that moved one of them aside may be
    # one only the folder log records (review 50)
    movers = [*here, *runs]
    runs = [{**r, "results": _moved_to(r, movers)} for r in missing + list(runs)]
    earlier = runs[:-1]
    what = f"the benchmark {data!r}" if data else "this benchmark"
    if not earlier:
        lines.append(f"This is the first test run of {what} recorded in the data ledger (`{ledger}`) and in this "
                     f"results folder (`test_runs.jsonl`).")
    else:
        listed = "; ".join(
            f"{r.get('started', 'start not recorded')}, data seed {r.get('data_seed', '?')}"
            f"{', seeds ' + str(r['seeds']) if r.get('seeds') is not None else ''}"
            f"{', methods ' + ' '.join(r['methods']) if r.get('methods') else ''}"
            f"{', forced' if r.get('forced') else ''}"
            f"{', variants SHA-256 ' + str(r['variants_sha256'])[:12] if r.get('variants_sha256') else ''}"
            f": results in `{r.get('results') or r.get('where', '?')}`"
            for r in earlier)
        lines.append(f"**This is test run {len(runs)} of {what} recorded in the data ledger** (`{ledger}`); "
                     f"the earlier ones: {listed}. The protocol is one test run per benchmark: read every earlier "
                     f"run's results beside this one's.")
        shas = {r.get("variants_sha256") for r in runs if r.get("variants_sha256")}
        if len(shas) > 1:  # the variants were not fixed before the test split was touched
            lines.append(f"**These test runs ran {len(shas)} different variants files** (SHA-256 "
                         f"{', '.join(sorted(x[:12] for x in shas))}): the variant changed after a test split was "
                         f"seen.")
        if len(here) > 1:
            lines.append(f"This results folder's log (`test_runs.jsonl`) records {len(here)} test runs into it.")
    moved = history.get("moved_aside")
    if moved:
        lines.append(f"**This run replaced earlier results in its folder (--force)**: they were moved, not deleted, "
                     f"to `{moved.get('to')}`.")
    return " ".join(lines)


def judged_line(variants, config) -> str:
    """What the verdict judged (data, data seed, difficulty, methods, dev seeds, settings),
    which the test stage enforces; the settings a verdict written before they were recorded
    leaves out are named, with this run's values."""
    if variants.benchmark is None:
        return ("No verdict is recorded, so no judged setting binds this run: its settings are its own (stated "
                "above).")
    judged = variants.benchmark["judged"]
    settings = judged["settings"]
    shown = ", ".join(f"{k} {settings[k]}" for k in JUDGED_SETTINGS if k in settings)
    line = (f"The verdict judged data {judged['data']!r} (data seed {judged.get('data_seed', 'not recorded')}), "
            f"difficulty {judged['difficulty']:g}, methods {' '.join(judged['methods'])}, dev seeds "
            f"{judged['dev_seeds']} and the settings {shown}; the test stage refuses other methods or settings, so "
            f"this run's are the same.")
    missing = [k for k in JUDGED_SETTINGS if k not in settings]
    if missing:
        mine = judged_settings(config)
        line += (" The verdict was written before the dev stage recorded " + ", ".join(missing) + ", so those are "
                 "this run's own, not checked against the dev stage: " + ", ".join(f"{k} {mine[k]}" for k in missing)
                 + ".")
    return line


def _ap_per_level_lines(explain_summary, conditions) -> list[str]:
    """Attention against post-hoc AP per level and per mask (pixel protocol), per compared model."""
    lines = ["## Attention against post-hoc maps, per level and mask (ap, pixel protocol)", "",
             "Each compared model's attention map at every level beside the post-hoc maps of the same model "
             "(GradCAM at the same levels; the input attributions). Mean over seeds ± 95 % CI.", ""]
    compared = {c["condition"]: c["compared"] for c in conditions}
    pixel = [s for s in explain_summary if s["resolution"] == "pixel"]
    levels = sorted({int(s["level"]) for s in pixel if s["method"] == "attention"})
    inputs = [m for m in POSTHOC if any(s["method"] == m and int(s["level"]) == -1 for s in pixel)]
    header = (["condition", "test set", "mask", "model"] + [f"attention L{k}" for k in levels]
              + [f"GradCAM L{k}" for k in levels] + inputs)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cond, tset, mask in sorted({(s["condition"], s["test_set"], s["mask"]) for s in pixel}):
        for model in compared.get(cond, ()):
            mine = {(s["method"], int(s["level"])): s for s in pixel
                    if (s["condition"], s["test_set"], s["mask"], s["model"]) == (cond, tset, mask, model)}
            if not mine:
                continue
            cells = ([cell(mine.get(("attention", k), {}), "ap") for k in levels]
                     + [cell(mine.get(("gradcam", k), {}), "ap") for k in levels]
                     + [cell(mine.get((m, -1), {}), "ap") for m in inputs])
            lines.append(f"| {cond} | {tset} | {mask} | {model} | " + " | ".join(cells) + " |")
    return lines + [""]


def _randomisation_lines(rand_summary) -> list[str]:
    lines = ["### Cascading model-parameter randomisation (Adebayo et al., 2018)", "",
             "Spearman rank correlation between each explanation and the same explanation after re-initialising the "
             "layers from the top down to the named stage (cascading: classifier, attention, then the blocks from "
             "the deepest), on absolute and on signed maps (attention maps are non-negative, so both agree there). "
             "Near 0: the explanation depends on those weights; near 1: it does not. Mean over seeds of per-seed "
             "means over images ± 95 % CI.", "",
             "A constant map (the trained or the re-initialised one, e.g. an all-zero GradCAM) ranks no pixels, so "
             "its correlation is NaN, not 0 or 1: such an image is left out of its seed's mean, a seed whose every "
             "image is NaN is left out of the mean over seeds (its interval has a degree of freedom fewer), and both "
             "are counted (randomisation_summary.csv: spearman_*_n_used and _n_nan per seed, spearman_*_images_used "
             "and _images_nan per image) and listed after the tables.", ""]
    stages = sorted({(s["stage_index"], s["stage"]) for s in rand_summary})
    names = list(dict.fromkeys(name for _, name in stages))
    for form in ("abs", "signed"):
        lines += [f"Spearman, {form} maps:", "",
                  "| condition | model | map | level | " + " | ".join(names) + " |", "|" + "---|" * (4 + len(names))]
        keys = sorted({(s["condition"], s["model"], s["method"], int(s["level"])) for s in rand_summary})
        for cond, model, method, level in keys:
            by_stage = {s["stage"]: s for s in rand_summary
                        if (s["condition"], s["model"], s["method"], int(s["level"])) == (cond, model, method, level)}
            lines.append(f"| {cond} | {model} | {method} | {level_name(level)} | "
                         + " | ".join(cell(by_stage[n], f"spearman_{form}") if n in by_stage else "–" for n in names)
                         + " |")
        lines.append("")
    # (all_nan: there "–" also marks a stage that did not run; a stage NaN on every seed is named: ca_rev150)
    return lines + nan_lines(rand_summary, ("condition", "test_set", "model", "method", "level", "stage"),
                             "randomisation check", all_nan=True)


def _model_free_line(condition: str, mf: dict) -> str:
    """The model-free reference map of ``condition`` (:func:`~.protocol.fit_model_free`'s record),
    or why none was fitted (a dev half without a lesion image: it had been reported as "None,
    chosen on the dev split (cross-fitted dev AP nan)": ca_rev196)."""
    if mf.get("name") is None:
        reason = " ".join(str((mf.get("check") or {}).get("reason") or "its check did not run").split())
        return (f"Model-free reference map ({condition}): none was fitted ({reason}); the tables have no "
                f"model-free row.")
    return (f"Model-free reference map ({condition}): {mf['name']}, chosen on the dev split (cross-fitted dev AP "
            f"{format_ci(mf['dev_ap'], math.nan)}), weights {[format(w, '.3g') for w in (mf['weights'] or [])]}.")


def _validity_section(conditions, accuracy) -> list[str]:
    """The validity checks, the model-free map and the compared models, per condition."""
    lines = ["## Validity checks (first)", ""]
    for c in conditions:
        lines += validity_lines(c["validity"], f"{c['condition']} (training vs test images; (c′): the softmax "
                                                f"models' AUC drop with shuffled maps on the test split, reported "
                                                f"here; the verdict was the dev stage's)")
        lines += [_model_free_line(c["condition"], c["model_free"]), ""]
    lines += ["## Compared models", "",
              f"A model's maps are compared only if its mean dev AUC reaches {MIN_COMPARED_AUC:.2f}; the others are "
              f"reported below, and left out of the headline.", ""]
    dev_auc = {(s["condition"], s["model"]): s for s in accuracy if s["test_set"] == "test"}
    for c in conditions:
        models = sorted({m for (cond, m) in dev_auc if cond == c["condition"]})
        lines.append(f"- {c['condition']}: " + "; ".join(
            f"{m} dev AUC {_dev_auc_cell(dev_auc[(c['condition'], m)])} "
            f"({'compared' if m in c['compared'] else 'NOT compared'})" for m in models))
    return lines


def _dev_auc_cell(summary: dict, metric: str = "dev_auc") -> str:
    """A model's mean dev AUC (``metric``), printed on its side of the bar it is held to
    (:func:`.validity.shown_against`; the dev candidates' table too: ca_rev153), ± its interval
    at 3 decimals."""
    mean, half = summary.get(f"{metric}_mean", math.nan), summary.get(f"{metric}_ci95", math.nan)
    if mean is None or not math.isfinite(mean):
        return "–"
    return shown_against(mean, MIN_COMPARED_AUC) + ("" if half is None or not math.isfinite(half) else f" ± {half:.3f}")


def _selection_sentence(headline) -> str:
    """How many attention and post-hoc maps the headline's bests were picked from, and which
    side that selection favours: said from the recorded counts, never assumed.  A row with
    no candidate on one side (no compared model) selects nothing against the other."""
    counts = sorted({(h["candidates"].get("attention", 0), h["candidates"].get("posthoc", 0))
                     for h in headline if h.get("candidates")})
    if not counts:
        return ("The best of each side is picked on the test split; how many maps each side picked from was not "
                "recorded, so which side the selection favours is unknown, and the intervals do not account for "
                "the selection.")
    told = "; ".join(f"the best of {a} attention maps against the best of {p} post-hoc maps" for a, p in counts)
    unrecorded = sum(1 for h in headline if not h.get("candidates"))
    if unrecorded:
        told += f"; not recorded for {unrecorded} of the {len(headline)} rows"
    both = [(a, p) for a, p in counts if a > 0 and p > 0]
    if not both:
        return (f"The best of each side is picked on the test split ({told}), but no row has candidates on both "
                f"sides (no compared model), so no best is set against the other.")
    if all(p > a for a, p in both):
        favoured = "the post-hoc side picks its best from more maps, so the selection favours it"
    elif all(a > p for a, p in both):
        favoured = "the attention side picks its best from more maps, so the selection favours it"
    elif all(a == p for a, p in both):
        favoured = "both sides pick from as many maps, so the selection flatters both alike"
    else:
        favoured = ("which side picks from more maps differs between the rows; in each, the selection favours "
                    "the side with more")
    return (f"The best of each side is picked on the test split ({told}): {favoured}, and the intervals do not "
            f"account for the selection.")


def _headline_section(headline) -> list[str]:
    """The best attention map against the best post-hoc map, and each compared model's."""
    lines = ["", "## Headline: best attention map against best post-hoc map (ap, compared models)", "",
             _selection_sentence(headline) + " The difference is attention minus post-hoc, paired by seed.", "",
             "| condition | test set | mask | resolution | best attention | ap | best post-hoc | ap | difference | "
             "best block map | ap | model-free | ap |", "|" + "---|" * 13]
    for h in headline:
        cells = []
        for kind in ("attention", "posthoc", "difference", "block_map", "model_free"):
            b = h.get(kind)
            if kind == "difference":
                cells.append(cell({"x_mean": b["ap_mean"], "x_ci95": b["ap_ci95"]}, "x") if b else "–")
                continue
            cells += ([f"{b['model']} {b['method']} {level_tag(b['level'])}",
                       seedless_cell({"model": b["model"], "x_mean": b["ap_mean"], "x_ci95": b["ap_ci95"]}, "x")]
                      if b else ["–", "–"])
        lines.append(f"| {h['condition']} | {h['test_set']} | {h['mask']} | {h['resolution']} | "
                     + " | ".join(cells) + " |")
    lines += ["", SEEDLESS_NOTE] if any(h.get(k) and h[k]["model"] == REFERENCE_MODEL for h in headline
                                         for k in ("block_map", "model_free")) else []
    lines += ["", "Each compared model's best attention level against the best post-hoc map above (difference "
                  "paired by seed; an interval above 0: attention ahead, below 0: post-hoc ahead):", "",
              "| condition | test set | mask | resolution | model | level | attention ap | best post-hoc | "
              "difference |", "|" + "---|" * 9]
    for h in headline:
        post = h.get("posthoc")
        for model, b in (h.get("by_model") or {}).items():
            lines.append(f"| {h['condition']} | {h['test_set']} | {h['mask']} | {h['resolution']} | {model} | "
                         f"{level_tag(b['level'])} | {cell({'x_mean': b['ap_mean'], 'x_ci95': b['ap_ci95']}, 'x')} | "
                         f"{post['model']} {post['method']} {level_tag(post['level'])} | "
                         f"{cell({'x_mean': b['difference_mean'], 'x_ci95': b['difference_ci95']}, 'x')} |")
    return lines + [""] + _headline_nan_lines(headline)


def _headline_nan_lines(headline) -> list[str]:
    """The seeds each paired difference left out because one side's mean was NaN (recorded as
    ``seeds_nan`` beside ``seeds``, the seeds paired), or one line saying none was."""
    pairs = [(h, what, d) for h in headline
             for what, d in ([("best attention map", h["difference"])] if h.get("difference") else [])
             + [(f"{model}'s best level", b) for model, b in (h.get("by_model") or {}).items()]]
    if any("seeds_nan" not in d for _, _, d in pairs):
        return [f"{LEFT_OUT} (headline differences): not recorded (results written before the count existed).",
                ""]
    dropped = [f"- {h['condition']}, {h['test_set']}, {h['mask']}, {h['resolution']}, {what} against the best "
               f"post-hoc map: {d['seeds_nan']} of the {d['seeds']} paired seeds left out, the difference is over "
               f"{d['seeds'] - d['seeds_nan']}" for h, what, d in pairs if d.get("seeds_nan")]
    if not dropped:
        return [f"{LEFT_OUT} (headline differences): nothing; every difference is over all the seeds both "
                "maps have.", ""]
    return ([f"{LEFT_OUT} (headline differences): a seed whose mean is not a finite number on either side is left "
             "out of the paired difference (Student t with one degree of freedom fewer than the seeds used):", ""]
            + dropped + [""])


def _accuracy_section(accuracy) -> list[str]:
    """Accuracy and map statistics per condition, test set and model; a map statistic per
    level the summary has (the configured model's levels)."""
    levels = [k for k in range(MAX_ATTENTION_LEVELS)
              if any(f"{m}_L{k}_mean" in s for s in accuracy for m in MAP_STATISTICS)]
    per_level = [(f"{m}_L{k}", f"{header} L{k}") for m, header in MAP_STATISTICS.items() for k in levels]
    headers = (["condition", "test set", "model", "AUC", "bacc", "bacc argmax", "violation"]
               + [header for _, header in per_level] + ["time/epoch (s)", "best epoch"])
    lines = ["## Accuracy and map statistics (test splits)", "", "| " + " | ".join(headers) + " |",
             "|" + "---|" * len(headers)]
    for s in accuracy:
        cells = ([s["condition"], s["test_set"], s["model"]] + [cell(s, m) for m in ("auc", "bacc", "bacc_argmax")]
                 + [cell(s, "violation", 4)] + [cell(s, m) for m, _ in per_level]
                 + [cell(s, "epoch_time_s", 2), cell(s, "best_epoch", 1)])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _accuracy_differences_section(differences) -> list[str]:
    """Every pair of models' AUC and balanced-accuracy difference, paired by seed: two models'
    own intervals can overlap where the paired one excludes 0."""
    if not differences:
        return []
    lines = ["", "## Accuracy differences, paired by seed (test splits)", "",
             "Every pair of models, the later in runs.csv's order minus the earlier, mean over the seeds both "
             "have ± the half-width of its 95 % confidence interval; 'excludes 0' marks a difference this run "
             "shows, either way. Read these, not the overlap of two models' own intervals. The intervals are "
             "not corrected for the number of pairs: among many, one may exclude 0 by chance.", "",
             "| condition | test set | metric | difference | mean ± 95 % CI | seeds | excludes 0 |",
             "|---|---|---|---|---|---|---|"]
    for d in differences:
        mean, half = d["difference_mean"], d["difference_ci95"]
        shown = math.isfinite(mean) and math.isfinite(half) and abs(mean) > half
        seeds = f"{d['seeds']}" + (f" ({d['seeds_nan']} NaN)" if d["seeds_nan"] else "")
        lines.append(f"| {d['condition']} | {d['test_set']} | {d['metric']} | {d['model']} − {d['minus']} | "
                     f"{format_ci(mean, half)} | {seeds} | {'**yes**' if shown else 'no'} |")
    return lines


def _explanation_section(explain_summary) -> list[str]:
    """Every explanation metric per condition, test set, mask and protocol."""
    lines = ["", "## Explanation metrics", ""]
    groups = sorted({(s["condition"], s["test_set"], s["mask"]) for s in explain_summary})
    for cond, tset, mask in groups:
        for protocol, pick in (("pixel protocol", lambda s: s["resolution"] == "pixel"),
                               ("pooled protocol", lambda s: s["resolution"] != "pixel")):
            rows = [s for s in explain_summary
                    if (s["condition"], s["test_set"], s["mask"]) == (cond, tset, mask) and pick(s)]
            if not rows:
                continue
            rows.sort(key=lambda s: (s["resolution"], s["model"], s["method"], int(s["level"])))
            lines += [f"### {cond}, {tset}, {mask} masks, {protocol}", "",
                      "| model | map | level | resolution | upsampling | " + " | ".join(METRIC_NAMES) + " |",
                      "|" + "---|" * (5 + len(METRIC_NAMES))]
            for s in rows:
                lines.append(f"| {s['model']} | {s['method']} | {level_name(s['level'])} | {s['resolution']} | "
                             f"{s['upsampling']} | " + " | ".join(seedless_cell(s, m) for m in METRIC_NAMES) + " |")
            lines.append("")
            if any(s["model"] == REFERENCE_MODEL for s in rows):
                lines += [SEEDLESS_NOTE, ""]
    return lines


def _ablation_section(ablation) -> list[str]:
    """The map ablation, every level at once and each alone."""
    levels = sorted({int(k[:-len("_mean")].rsplit("_L", 1)[1]) for s in ablation for k in s
                     if k.startswith("delta_auc_uniform_L") and k.endswith("_mean")})
    lines = ["## Sanity checks", "", "### Do the maps drive the ranking? (map ablation at test time)", "",
             "Change of AUC when the attention maps (all levels, then each level alone) are replaced by uniform maps "
             "or by the same maps with their cells shuffled (negative: the maps drive the ranking). Per-method "
             "ablations are results, not validity checks.", "",
             "| condition | test set | model | scope | Δ AUC uniform | Δ AUC shuffled | Δ bacc uniform | "
             "Δ bacc shuffled |", "|---|---|---|---|---|---|---|---|"]
    for s in ablation:
        for scope, suffix in [("all levels", "")] + [(f"L{k}", f"_L{k}") for k in levels]:
            lines.append(f"| {s['condition']} | {s['test_set']} | {s['model']} | {scope} | " + " | ".join(
                cell(s, f"{m}{suffix}") for m in ("delta_auc_uniform", "delta_auc_shuffled", "delta_bacc_uniform",
                                                  "delta_bacc_shuffled")) + " |")
    return lines


def test_report(config, variants, record, conditions, accuracy, explain_summary, ablation, rand_summary, headline,
                device, history: dict | None = None, accuracy_differences: list | None = None) -> str:
    """``experiment.md``: validity and verdict first, then attention against post-hoc maps
    per mask and level, accuracy, every explanation metric and the sanity checks."""
    tc = config.train
    S = tc.model.image_size
    n_seeds = len(config.seeds)
    short = sorted({f"{c['condition']} {t} {m}: {n}" for c in conditions for t, by_mask in c["n_explained"].items()
                    for m, n in by_mask.items() if n < config.n_explain})
    fewer = f" (fewer where a split has fewer: {'; '.join(short)})" if short else ""
    # the randomisation check's images: the first n_sanity of the test split's primary mask, as many
    # as it has (the report had said n_sanity where a split had fewer: ca_rev150)
    checked = {c["condition"]: min(config.n_sanity, c["n_explained"]["test"][primary_mask(c["n_explained"]["test"])])
               for c in conditions if "test" in c["n_explained"]}
    sanity = min(checked.values(), default=config.n_sanity)
    sanity_where = "" if len(set(checked.values())) <= 1 else \
        f" ({'; '.join(f'{k}: {v}' for k, v in sorted(checked.items()))})"
    lines = ["# Experiment: test stage", "",
             f"Data {tc.data!r}, data seed {tc.data_seed}, {S}x{S}, {tc.n_train} training images, {tc.n_val} "
             f"label-only validation images (checkpoint selection by ROC AUC and the decision threshold: masks never "
             f"enter training or selection), {config.n_dev} development images (the model-free reference map is "
             f"fitted there, and each model's dev AUC decides whether its maps are compared), {config.n_test} test "
             f"images per test set. Width {tc.model.width}, {tc.epochs} epochs, batch {tc.batch_size}, lr "
             f"{tc.lr:g}. Device: {device}.", "",
             f"Variant (the same for every method), from `{record.get('path')}` (sha256 {record.get('sha256')}; "
             f"verified by {record.get('verified_by', 'git')}"
             f"{', commit ' + str(record.get('file_commit')) if record.get('file_commit') else ''}): "
             f"{variants.variant.label()}."
             + (f" **The checkout had uncommitted changes to tracked files when this ran** (the code that ran is not "
                f"HEAD's): {', '.join(record['uncommitted_changes'][:20])}."
                if record.get("uncommitted_changes") else ""),
             verdict_line(variants),
             judged_line(variants, config),
             history_line(history or {}, tc.data),
             f"Seeds: {list(config.seeds)} ({n_seeds}; the protocol asks for at least 5"
             f"{'' if n_seeds >= 5 else ': FEWER, this is not the full setting'}). Every number is the mean over "
             f"seeds ± the half-width of its 95 % confidence interval (Student t with n − 1 degrees of freedom, n "
             f"the seeds whose value is a finite number: n = {n_seeds} except where a '{LEFT_OUT}' list below "
             f"names seeds left out); explanation metrics are per-seed means over images first.",
             f"Evaluation: each mask's explanation metrics use the first {config.n_explain} images of each test "
             f"split with that mask non-empty (lesion: label 1 and a lesion; decisive: the structure that decides "
             f"the label, either label){fewer}; the randomisation check the first {sanity} images of the "
             f"decisive mask (the lesion mask where the data mark none){sanity_where}"
             f"{'' if sanity >= 32 else ' (FEWER than the 32 the protocol asks for)'}. "
             f"Balanced accuracy (bacc) at the threshold chosen on validation. Pixel protocol: coarse maps upsampled "
             f"by {variants.variant.upsampling} (the variant's upsampling); pooled protocol (resolution HxW): the "
             f"authors' (input attributions per-channel min-max, summed, softmax, sum-pooled to the grid; grid maps "
             f"upsampled by nearest neighbour). pointing: the share of the map's top pixels (all those tied for the "
             f"maximum: a tie broken at random, in expectation) in the mask; pointing_tol: within "
             f"{pointing_tolerance_px((S, S)):.1f} px of the mask (15 px at 240x240, scaled to {S}x{S}). Test "
             f"sets: 'test' (mimic types of training) and 'heldout_<type>' (a mimic type used neither in training "
             f"nor in development).", ""]
    lines += _validity_section(conditions, accuracy)
    lines += _headline_section(headline)
    lines += [""] + _ap_per_level_lines(explain_summary, conditions)
    lines += _accuracy_section(accuracy)
    lines += [""] + nan_lines(accuracy, ("condition", "test_set", "model"), "accuracy and map statistics")
    lines += _accuracy_differences_section(accuracy_differences or [])
    lines += _explanation_section(explain_summary)
    lines += nan_lines(explain_summary, ("condition", "test_set", "model", "method", "level", "resolution",
                                         "upsampling", "mask"), "explanation metrics")
    lines += _ablation_section(ablation)
    lines += [""] + nan_lines(ablation, ("condition", "test_set", "model"), "map ablation")
    lines += [""] + _randomisation_lines(rand_summary)
    lines += ["Files: runs.csv (one row per condition, test set, model and seed), accuracy_summary.csv, "
              "accuracy_differences.csv (every pair of models, paired by seed), "
              "ablation_summary.csv, explain_per_seed.csv, explain_summary.csv (a row per map and mask), "
              "randomisation.csv, randomisation_summary.csv, rows/ (every image's scores), experiment.json, "
              "explain_examples_*.png (one colour scale for all maps), explain_ap_<mask>.png (AP of every map with "
              "its 95 % CI, pixel protocol, one x scale for all panels); test_runs.jsonl beside this folder logs "
              "every test run.", ""]
    return "\n".join(lines)
