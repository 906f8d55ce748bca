"""convex_attention.paper.reports: numbers as mean ± CI half-width, and the validity table."""
import math

import pytest

from convex_attention.paper.reports import cell, validity_lines
from convex_attention.paper.validity import check_uniform_attention


def test_a_cell_is_the_mean_and_its_interval():
    assert cell({"ap_mean": 0.81234, "ap_ci95": 0.05}, "ap") == "0.812 ± 0.050"
    assert cell({"ap_mean": 0.81234, "ap_ci95": math.nan}, "ap", 2) == "0.81"
    assert cell({}, "ap") in ("–", "nan", "NaN")


def test_the_validity_table_states_the_rule_and_why_a_check_did_not_run():
    ran = check_uniform_attention(0.90, 0.75)
    skipped = check_uniform_attention(None, None)
    lines = validity_lines([ran, skipped], "checks")
    assert lines[0] == "### checks" and lines[-1] == ""
    assert ">= 0.10" in lines[4] and "0.150" in lines[4] and "PASS" in lines[4]
    assert "not run" in lines[5] or skipped.reason in lines[5]


def test_the_report_states_the_judged_protocol_and_names_what_an_old_verdict_left_out():
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variant, Variants, benchmark_record, judged_settings
    from convex_attention.paper.reports import judged_line

    config = QUICK.override(methods=("softmax", "exact"))
    record = benchmark_record([], Variant(), 0.3, config.methods, (0, 1, 2, 3, 4), judged_settings(config),
                              data_seed=0)
    line = judged_line(Variants(benchmark=record), config)
    assert "The verdict judged data 'synthetic' (data seed 0), difficulty 0.3, methods softmax exact" in line
    assert "n_train 512" in line and "lr 0.003" in line and "refuses other methods or settings" in line
    old = {**record, "judged": {**record["judged"], "settings": {k: record["judged"]["settings"][k]
                                                                  for k in ("image_size", "width", "epochs",
                                                                            "n_train")}}}
    line = judged_line(Variants(benchmark=old), config)
    assert "written before the dev stage recorded n_val, batch_size, lr" in line and "lr 0.003" in line, line


def test_the_headline_says_which_side_its_selection_favours():
    from convex_attention.paper.reports import _headline_section

    lines = "\n".join(_headline_section([{"condition": "c", "test_set": "test", "mask": "decisive",
                                          "resolution": "pixel", "candidates": {"attention": 6, "posthoc": 24}}]))
    assert "flatters both alike" not in lines
    assert ("the best of 6 attention maps against the best of 24 post-hoc maps): the post-hoc side picks its best "
            "from more maps, so the selection favours it") in lines


@pytest.mark.parametrize("counts, said", [
    ([(6, 2)], "the attention side picks its best from more maps, so the selection favours it"),
    ([(4, 4)], "both sides pick from as many maps, so the selection flatters both alike"),
    ([(6, 2), (2, 6)], "which side picks from more maps differs between the rows; in each, the selection favours "
                       "the side with more"),
    ([None], "how many maps each side picked from was not recorded, so which side the selection favours is unknown"),
    ([(2, 6), None], "(the best of 2 attention maps against the best of 6 post-hoc maps; not recorded for 1 of the "
                     "2 rows): the post-hoc side picks its best from more maps"),
    # rows without a compared model have no candidates: they select nothing, and do not count
    ([(0, 0)], "no row has candidates on both sides (no compared model), so no best is set against the other"),
    ([(0, 0), (2, 6)], "the post-hoc side picks its best from more maps, so the selection favours it"),
])
def test_the_side_the_selection_favours_follows_the_recorded_counts(counts, said):
    """The sentence said 'the post-hoc side picks its best from more maps' whatever the counts,
    even where they were not recorded (a review)."""
    from convex_attention.paper.reports import _headline_section

    entries = [{"condition": f"c{i}", "test_set": "test", "mask": "decisive", "resolution": "pixel",
                **({"candidates": {"attention": c[0], "posthoc": c[1]}} if c else {})} for i, c in enumerate(counts)]
    text = "\n".join(_headline_section(entries))
    assert said in text and "The best of each side is picked on the test split" in text
    assert ("the intervals do not account for the selection" in text) == ("no best is set" not in said)
    assert ("the post-hoc side picks" in text) == ("the post-hoc side picks" in said)


def _headline_entry(seeds_nan: int, model_seeds_nan: int) -> dict:
    """A headline entry of five paired seeds, ``seeds_nan`` of them left out as NaN in the
    best-against-best difference and ``model_seeds_nan`` in exact's own."""
    best = {"model": "exact", "method": "attention", "level": 0, "ap_mean": 0.5, "ap_ci95": 0.1}
    post = {"model": "exact", "method": "gradcam", "level": 0, "ap_mean": 0.4, "ap_ci95": 0.1}
    return {"condition": "c", "test_set": "test", "mask": "decisive", "resolution": "pixel",
            "candidates": {"attention": 2, "posthoc": 4}, "attention": best, "posthoc": post,
            "difference": {"ap_mean": 0.1, "ap_ci95": 0.2, "seeds": 5, "seeds_nan": seeds_nan},
            "by_model": {"exact": {"level": 0, "ap_mean": 0.5, "ap_ci95": 0.1, "difference_mean": 0.1,
                                   "difference_ci95": 0.2, "seeds": 5, "seeds_nan": model_seeds_nan}}}


def test_the_headline_says_which_seeds_its_paired_differences_left_out_as_nan():
    """``seeds_nan`` was computed and stored, but the report never showed it (a review)."""
    from convex_attention.paper.reports import _headline_section

    entry = _headline_entry(seeds_nan=2, model_seeds_nan=0)
    text = "\n".join(_headline_section([entry]))
    assert ("- c, test, decisive, pixel, best attention map against the best post-hoc map: 2 of the 5 paired "
            "seeds left out, the difference is over 3") in text
    assert "exact's best level" not in text  # it left none out
    entry["difference"]["seeds_nan"] = 0
    assert "Left out as NaN or infinite (headline differences): nothing" in "\n".join(_headline_section([entry]))
    del entry["difference"]["seeds_nan"]  # an older results file: the count was not recorded
    assert "Left out as NaN or infinite (headline differences): not recorded" in "\n".join(_headline_section([entry]))


def _rand_row(stage, n_used, n_nan, images_used, images_nan):
    return {"condition": "c", "test_set": "test", "model": "exact", "method": "gradcam", "level": 0, "stage_index": 0,
            "stage": stage, "seeds": n_used + n_nan, **{f"spearman_{form}_{k}": v for form in ("abs", "signed")
                                                          for k, v in (("mean", 0.1), ("ci95", 0.2),
                                                                       ("n_used", n_used), ("n_nan", n_nan),
                                                                       ("images_used", images_used),
                                                                       ("images_nan", images_nan))}}


def test_the_report_lists_every_value_left_out_as_nan():
    """The randomisation check's constant maps (Spearman NaN) are left out of the means: the
    report says how it counts them and lists, per group, the seeds and images left out."""
    from convex_attention.paper.reports import _randomisation_lines, nan_lines

    text = "\n".join(_randomisation_lines([_rand_row("classifier", 4, 1, 10, 10), _rand_row("attention", 5, 0, 20, 0)]))
    assert "ranks no pixels" in text and "NaN, not 0" in text
    assert "c, test, exact, gradcam, 0, classifier: spearman_abs: 1 of 5 seeds left out (10 of 20 images NaN)" in text
    assert "attention: spearman_abs" not in text
    clean = "\n".join(_randomisation_lines([_rand_row("attention", 5, 0, 20, 0)]))
    assert "Left out as NaN or infinite (randomisation check): nothing" in clean
    accuracy = [{"condition": "c", "test_set": "test", "model": "exact", "seeds": 5, "auc_mean": 0.9,
                 "auc_ci95": 0.1, "auc_n_used": 5, "auc_n_nan": 0, "bacc_mean": 0.8, "bacc_ci95": 0.1,
                 "bacc_n_used": 3, "bacc_n_nan": 2,
                 # no value at all (the plain CNN's map statistics): the mean is NaN, shown as –, nothing hidden
                 "violation_mean": math.nan, "violation_ci95": math.nan, "violation_n_used": 0, "violation_n_nan": 5}]
    lines = nan_lines(accuracy, ("condition", "test_set", "model"), "accuracy")
    assert lines[0].startswith("Left out as NaN or infinite (accuracy): the means and intervals above are over the "
                               "seeds")
    assert lines[2] == "- c, test, exact: bacc: 2 of 5 seeds left out" and len(lines) == 4


def test_the_report_states_the_degrees_of_freedom_of_the_seeds_used():
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variants
    from convex_attention.paper.reports import test_report

    report = test_report(QUICK, Variants(), {"path": "v.json", "sha256": "x"}, [], [], [], [],
                         [_rand_row("classifier", 1, 1, 2, 6)], [], "cpu", {})
    assert "Student t with n − 1 degrees of freedom, n the seeds whose value is a finite number" in report
    assert "Student t, 1 degrees of freedom" not in report  # not the seeds run (2) whatever was left out
    assert "spearman_abs: 1 of 2 seeds left out (6 of 8 images NaN)" in report
    assert "tie broken at random" in report


# ----------------------------------------------------------------------------- found by mutation testing


def _verdict_record(accepted: bool):
    from convex_attention.paper.protocol import Variant, benchmark_record
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking

    checks = [CheckResult("location_free", "t", "b", 0.5, 0.6), CheckResult("pixel_map", "t", "a", 0.2, 0.3),
              check_maps_drive_ranking([0.1] * 5 if accepted else [0.0, 0.01, -0.01, 0.02, 0.0])]
    return benchmark_record(checks, Variant(), 0.3, ("softmax",), (0, 1, 2, 3, 4),
                            {"image_size": 64, "width": 8, "epochs": 4, "n_train": 512})


def test_the_verdict_line_tells_accepted_rejected_and_not_recorded_apart():
    """Only an accepted verdict reads as accepted; a rejected one names its failed checks and
    a missing one says it is not recorded (found by mutation testing: ``!= "rejected"`` in
    place of ``== "accepted"`` survived the fast suite)."""
    from convex_attention.paper.protocol import Variants
    from convex_attention.paper.reports import verdict_line

    accepted = verdict_line(Variants(benchmark=_verdict_record(True)))
    rejected = verdict_line(Variants(benchmark=_verdict_record(False)))
    missing = verdict_line(Variants())
    assert accepted.startswith("The dev stage accepted the benchmark")
    assert "REJECTED" in rejected and "maps_drive_ranking" in rejected and "accepted the" not in rejected
    assert "verdict on the benchmark is not recorded" in missing and "accepted the" not in missing
    assert "--allow-rejected-benchmark" in rejected and "--allow-rejected-benchmark" in missing


def test_the_headline_lists_a_single_seed_left_out_as_nan():
    """One NaN seed is listed too, not only two or more (found by mutation testing)."""
    from convex_attention.paper.reports import _headline_section

    entry = _headline_entry(seeds_nan=1, model_seeds_nan=1)
    text = "\n".join(_headline_section([entry]))
    assert ("- c, test, decisive, pixel, best attention map against the best post-hoc map: 1 of the 5 paired "
            "seeds left out, the difference is over 4") in text
    assert "exact's best level against the best post-hoc map: 1 of the 5 paired seeds left out" in text
    assert "nothing; every difference" not in text


@pytest.mark.parametrize("seeds,fewer", [((0, 1, 2), True), ((0, 1, 2, 3), True), ((0, 1, 2, 3, 4), False)])
def test_the_report_flags_fewer_seeds_than_the_protocol_asks_for(seeds, fewer):
    """Fewer than 5 seeds is flagged FEWER, whatever the count below 5 (found by mutation
    testing: ``>= 3`` in place of ``>= 5`` survived the fast suite)."""
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variants
    from convex_attention.paper.reports import test_report

    report = test_report(QUICK.override(seeds=seeds, n_sanity=32), Variants(), {"path": "v.json", "sha256": "x"},
                         [], [], [], [], [], [], "cpu", {})
    assert (": FEWER, this is not the full setting" in report) == fewer
    assert "FEWER than the 32" not in report


@pytest.mark.parametrize("n_sanity,fewer", [(2, True), (31, True), (32, False)])
def test_the_report_flags_fewer_sanity_images_than_the_protocol_asks_for(n_sanity, fewer):
    """Fewer than 32 randomisation-check images is flagged FEWER (found by mutation testing:
    ``>= 2`` in place of ``>= 32`` survived the fast suite)."""
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variants
    from convex_attention.paper.reports import test_report

    report = test_report(QUICK.override(seeds=(0, 1, 2, 3, 4), n_sanity=n_sanity), Variants(),
                         {"path": "v.json", "sha256": "x"}, [], [], [], [], [], [], "cpu", {})
    assert ("(FEWER than the 32 the protocol asks for)" in report) == fewer


def _table(text: str, starts: str) -> list[dict]:
    """The rows of the first Markdown table in ``text`` whose header line starts with ``starts``
    (``"| a | b"``), as dicts from column name to cell (a repeated name gets ``#2``, ``#3``...)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(starts))
    header = []
    for name in lines[start].strip("|").split("|"):
        name = name.strip()
        seen = sum(h.split("#")[0] == name for h in header)
        header.append(f"{name}#{seen + 1}" if seen else name)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_the_validity_table_shows_a_failure_as_failed_and_a_nan_as_no_number():
    """A failed check reads as failed, never PASS, and a number that is not finite is shown
    as –, not as "nan" (found by mutation testing)."""
    from convex_attention.paper.validity import CheckResult

    failed = CheckResult("pixel_map", "t", "a", 0.45, 0.30)  # passes below 0.30: fails
    nan = CheckResult("location_free", "t", "b", math.nan, 0.60)
    lines = validity_lines([failed, nan], "checks")
    assert f"| {failed.status} |" in lines[4] and "PASS" not in lines[4] and not failed.passed
    assert "| a 0.450 | <= 0.30 |" in lines[4]
    assert "| b – |" in lines[5]


def test_the_nan_statement_names_its_degrees_of_freedom_and_every_metric_counted():
    """Every metric with a ``_n_nan`` column is looked at, in any row, and the statement says
    the interval has one degree of freedom fewer than the seeds used (found by mutation testing)."""
    from convex_attention.paper.reports import nan_lines

    rows = [{"model": "a", "auc_mean": 0.9, "auc_n_used": 5, "auc_n_nan": 0},
            {"model": "b", "auc_mean": 0.8, "auc_n_used": 5, "auc_n_nan": 0,
             "ap_mean": 0.5, "ap_n_used": 4, "ap_n_nan": 1}]
    lines = nan_lines(rows, ("model",), "t")
    assert "(Student t with one degree of freedom fewer than those seeds)" in lines[0]
    assert "- b: ap: 1 of 5 seeds left out" in lines


def test_the_rejected_verdict_line_says_the_run_cannot_test_the_claim():
    """A test run made on a rejected benchmark says it cannot test whether attention is
    necessary, not only that it was made (found by mutation testing)."""
    from convex_attention.paper.protocol import Variants
    from convex_attention.paper.reports import verdict_line

    assert "cannot test whether attention is necessary" in verdict_line(Variants(benchmark=_verdict_record(False)))


def test_the_judged_line_states_the_verdict_s_own_data_seed_methods_and_dev_seeds():
    """What the verdict judged comes from the verdict, not from this run's configuration
    (found by mutation testing: this run's data seed, methods and dev seeds in their place survived)."""
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variant, Variants, benchmark_record, judged_settings
    from convex_attention.paper.reports import judged_line

    config = QUICK.override(methods=("softmax", "exact"))
    record = benchmark_record([], Variant(), 0.3, ("exact",), (5, 6, 7, 8, 9), judged_settings(config),
                              data_seed=config.train.data_seed + 7)
    line = judged_line(Variants(benchmark=record), config)
    assert f"(data seed {config.train.data_seed + 7})" in line and "methods exact, dev seeds [5, 6, 7, 8, 9]" in line


def test_the_history_line_counts_the_runs_into_this_folder_and_states_each_run_s_seeds():
    """Earlier runs with their seeds; the folder's own count only where more than one run went
    into it (found by mutation testing)."""
    from convex_attention.paper.reports import history_line

    first = {"started": "t1", "data_seed": 1, "seeds": [0, 1], "results": "a/test"}
    second = {"started": "t2", "data_seed": 2, "seeds": [3, 4], "results": "b/test"}
    one_folder = history_line({"benchmark_runs": [first, second], "runs_in_folder": [second]}, "synthetic")
    assert "test run 2 of the benchmark 'synthetic'" in one_folder and "seeds [0, 1]" in one_folder
    assert "records" not in one_folder.split("read every earlier run's results beside this one's.")[1]
    forced = history_line({"benchmark_runs": [first, second], "runs_in_folder": [first, second]}, "synthetic")
    assert "This results folder's log (`test_runs.jsonl`) records 2 test runs into it." in forced
    # a history written before the ledger listed the benchmark's runs: the folder's own runs count
    old = history_line({"runs_in_folder": [first, second]}, "synthetic")
    assert "test run 2 of the benchmark 'synthetic'" in old and "results in `a/test`" in old


def _dev_report(accepted: bool, **changes):
    """A dev report of two hand-made candidates (one compared nothing; ``changes`` to the
    first), one level row with a seed left out as NaN, lesion masks only, the plain CNN trained."""
    from types import SimpleNamespace

    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variant, Variants
    from convex_attention.paper.reports import dev_report

    config = QUICK.override(methods=("softmax", "exact"), dev_seeds=(3, 4), seeds=(0, 1))
    split = SimpleNamespace(n=16, seed=1, difficulty=0.3, mimic_types=("mottled",))
    specs = {"dev": split, "train": split, "val": split}
    best = {"label": "best", "compared": "exact", "attention_ap_mean": 0.61, "attention_ap_ci95": 0.04,
            "attention_ap_n_used": 6, "attention_ap_n_nan": 2, "bacc_mean": 0.8, "bacc_ci95": 0.05,
            **{f"{m}_{k}_{part}": value for m, means in (("softmax", (0.71, 0.52, 0.63)), ("exact", (0.91, 0.62, 0.83)))
               for k, mean in zip(("auc", "ap", "bacc"), means)
               for part, value in (("mean", mean), ("ci95", 0.02), ("n_used", 2), ("n_nan", 0))},
            **changes}
    other = {**best, "label": "other", "compared": "", "attention_ap_n_nan": 0}
    level = {"method": "exact", "level": 0, "ap_lesion_mean": 0.55, "ap_lesion_ci95": 0.03, "ap_lesion_n_used": 2,
             "ap_lesion_n_nan": 1, "delta_auc_shuffled_mean": -0.2, "delta_auc_shuffled_ci95": 0.01,
             "delta_auc_uniform_mean": -0.1, "delta_auc_uniform_ci95": 0.02}
    validity = _dev_validity()
    proposal = Variants(Variant(), benchmark=_verdict_record(accepted))
    report = dev_report(config, specs, validity, [best, other], proposal, {"lesion": 5}, [{"seed": 3, "bacc": 0.7}],
                        [level], "lesion")
    return report, config, best, other, level


def test_the_dev_report_shows_the_verdict_and_what_a_rejection_means_for_the_test_stage():
    rejected, *_ = _dev_report(False)
    assert "**Benchmark REJECTED on the development split.**" in rejected
    assert "refuses this variants file unless `--allow-rejected-benchmark`" in rejected
    accepted, *_ = _dev_report(True)
    assert "**Benchmark ACCEPTED on the development split.**" in accepted and "refuses" not in accepted


def test_the_dev_report_shows_every_candidate_number_with_its_interval_under_its_header():
    """The candidates and the proposed variant's levels: every mean with its interval in the
    column its header names, the validity table, the dev seeds and the plain CNN (found by
    mutation testing)."""
    from convex_attention.paper.reports import cell, validity_lines
    from convex_attention.paper.validity import MIN_COMPARED_AUC

    report, config, best, other, level = _dev_report(True)
    candidates = _table(report, "| variant |")
    assert [r["variant"] for r in candidates] == ["best", "other"] and candidates[1]["compared"] == "none"
    assert candidates[0]["attention ap"] == cell(best, "attention_ap") and "±" in candidates[0]["attention ap"]
    for m in config.methods:
        assert [candidates[0][f"{m} {k}"] for k in ("AUC", "ap", "bacc")] == [
            cell(best, f"{m}_{k}") for k in ("auc", "ap", "bacc")]
        assert "±" in candidates[0][f"{m} AUC"]
    assert f"(dev AUC >= {MIN_COMPARED_AUC:.2f}: a candidate that breaks a method ranks below" in report
    levels = _table(report, "| method | level |")
    assert list(levels[0]) == ["method", "level", "ap lesion", "Δ AUC shuffled", "Δ AUC uniform"]  # lesion only
    assert [levels[0][k] for k in ("ap lesion", "Δ AUC shuffled", "Δ AUC uniform")] == [
        cell(level, "ap_lesion"), cell(level, "delta_auc_shuffled"), cell(level, "delta_auc_uniform")]
    assert "\n".join(validity_lines(_dev_validity(), "checks")) in report
    assert f"Seeds {list(config.dev_seeds)}." in report and "plain CNN seed 3 0.700." in report


def _dev_validity():
    from convex_attention.paper.validity import CheckResult

    return [CheckResult("pixel_map", "t", "a", 0.45, 0.30)]


def test_the_dev_report_lists_what_each_table_left_out_as_nan():
    report, *_ = _dev_report(True)
    # seeds (each the mean over the compared methods): what _rank_candidates counts (ca_rev67)
    assert "- best: attention_ap: 2 of 8 seeds left out" in report
    assert "- exact, 0: ap_lesion: 1 of 3 seeds left out" in report


def _stats(metrics, start: float, n_nan: int = 0) -> dict:
    """Distinct means and intervals for ``metrics`` (``_n_nan`` of them left out for the first)."""
    out = {}
    for i, m in enumerate(metrics):
        left_out = n_nan if i == 0 else 0
        out |= {f"{m}_mean": start + 0.01 * i, f"{m}_ci95": 0.001 * (i + 1), f"{m}_n_used": 5 - left_out,
                f"{m}_n_nan": left_out}
    return out


def _test_report_inputs():
    """Hand-made summaries of one condition with two models, exact compared and softmax not."""
    from convex_attention.paper.explain_metrics import METRIC_NAMES
    from convex_attention.paper.reports import ACCURACY

    key = {"condition": "c", "test_set": "test"}
    conditions = [{"condition": "c", "compared": ["exact"], "validity": _dev_validity(),
                   "model_free": {"name": "blob", "dev_ap": 0.4, "weights": [0.5]},
                   "n_explained": {"test": {"lesion": 8, "decisive": 3}}}]
    accuracy = [{**key, "model": m, **_stats(ACCURACY, start, n_nan)}
                for m, start, n_nan in (("exact", 0.5, 1), ("softmax", 0.2, 0))]
    maps = (("attention", 0), ("attention", 1), ("gradcam", 0), ("gradcam", 1), ("lrp", -1))
    explain = [{**key, "model": "exact", "method": method, "level": level, "resolution": res, "upsampling": "nearest",
                "mask": "lesion", **_stats(METRIC_NAMES, 0.1 * (i + 1) + (0.05 if res == "pixel" else 0), n_nan)}
               for i, (method, level) in enumerate(maps) for res, n_nan in (("pixel", 0), ("8x8", 1))]
    explain += [{**e, "model": "softmax"} for e in explain if e["resolution"] == "pixel"]  # not compared
    ablation = [{**key, "model": "exact", **_stats(("delta_auc_uniform", "delta_auc_shuffled", "delta_bacc_uniform",
                                                    "delta_bacc_shuffled"), -0.3, 1),
                 **_stats(("delta_auc_uniform_L0", "delta_auc_shuffled_L0", "delta_bacc_uniform_L0",
                           "delta_bacc_shuffled_L0"), -0.1)}]
    rand = [{**key, "model": "exact", "method": "gradcam", "level": 0, "stage_index": i, "stage": stage,
             **_stats(("spearman_abs", "spearman_signed"), 0.3 + 0.1 * i)}
            for i, stage in enumerate(("classifier", "attention"))]
    best = {"model": "exact", "method": "attention", "level": 0, "ap_mean": 0.61, "ap_ci95": 0.02}
    post = {"model": "exact", "method": "lrp", "level": -1, "ap_mean": 0.42, "ap_ci95": 0.03}
    headline = [{**key, "mask": "lesion", "resolution": "pixel", "candidates": {"attention": 2, "posthoc": 5},
                 "attention": best, "posthoc": post, "block_map": None, "model_free": None,
                 "difference": {"ap_mean": 0.19, "ap_ci95": 0.04, "seeds": 5, "seeds_nan": 0},
                 "by_model": {"exact": {"level": 1, "ap_mean": 0.55, "ap_ci95": 0.05, "difference_mean": 0.13,
                                        "difference_ci95": 0.06, "seeds": 5, "seeds_nan": 0}}}]
    return conditions, accuracy, explain, ablation, rand, headline


def _test_report(benchmark=None):
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variant, Variants
    from convex_attention.paper.reports import test_report

    conditions, accuracy, explain, ablation, rand, headline = _test_report_inputs()
    config = QUICK.override(seeds=(0, 1, 2, 3, 4))
    variants = Variants(Variant(), benchmark=benchmark)
    return test_report(config, variants, {"path": "v.json", "sha256": "x"}, conditions, accuracy, explain, ablation,
                       rand, headline, "cpu", {}), config, variants


def test_the_test_report_puts_the_validity_checks_first_and_states_the_verdict_and_history():
    from convex_attention.paper.reports import history_line, judged_line, validity_lines, verdict_line

    record = _verdict_record(False)
    report, config, variants = _test_report(record)
    assert verdict_line(variants) in report and judged_line(variants, config) in report
    assert history_line({}, config.train.data) in report
    assert report.index("## Validity checks (first)") < report.index("## Headline")
    assert "\n".join(validity_lines(_dev_validity(), "c")[2:]) in report


def test_the_test_report_says_which_models_are_compared_and_which_are_not():
    from convex_attention.paper.reports import cell
    from convex_attention.paper.validity import MIN_COMPARED_AUC

    report, *_ = _test_report()
    _, accuracy, *_ = _test_report_inputs()
    exact, softmax = accuracy
    assert (f"- c: exact dev AUC {cell(exact, 'dev_auc')} (compared); softmax dev AUC {cell(softmax, 'dev_auc')} "
            f"(NOT compared)") in report
    assert f"mean dev AUC reaches {MIN_COMPARED_AUC:.2f}" in report


def test_the_headline_shows_each_side_and_each_difference_with_its_interval():
    from convex_attention.paper.reports import _headline_section, format_ci

    headline = _test_report_inputs()[-1]
    h = headline[0]
    text = "\n".join(_headline_section(headline))
    row = _table(text, "| condition | test set | mask | resolution | best attention |")[0]
    assert row["best attention"] == "exact attention L0" and row["ap"] == format_ci(0.61, 0.02)
    assert row["best post-hoc"] == "exact lrp (input)" and row["ap#2"] == format_ci(0.42, 0.03)
    assert row["difference"] == format_ci(h["difference"]["ap_mean"], h["difference"]["ap_ci95"])
    assert row["best block map"] == "–" and row["model-free"] == "–"
    mine = h["by_model"]["exact"]
    row = _table(text, "| condition | test set | mask | resolution | model |")[0]
    assert (row["model"], row["level"], row["attention ap"]) == ("exact", "L1", format_ci(0.55, 0.05))
    assert row["best post-hoc"] == "exact lrp (input)"
    assert row["difference"] == format_ci(mine["difference_mean"], mine["difference_ci95"])


def test_the_test_report_shows_attention_beside_post_hoc_per_level_for_the_compared_models_only():
    from convex_attention.paper.reports import cell

    report, *_ = _test_report()
    _, _, explain, *_ = _test_report_inputs()
    rows = _table(report, "| condition | test set | mask | model |")
    assert [r["model"] for r in rows] == ["exact"]  # softmax was not compared
    pixel = {(e["method"], e["level"]): e for e in explain if e["model"] == "exact" and e["resolution"] == "pixel"}
    assert [rows[0][k] for k in ("attention L0", "attention L1", "GradCAM L0", "GradCAM L1", "lrp")] == [
        cell(pixel[k], "ap") for k in (("attention", 0), ("attention", 1), ("gradcam", 0), ("gradcam", 1),
                                        ("lrp", -1))]
    assert all("±" in c for c in list(rows[0].values())[4:])


def test_the_test_report_shows_every_accuracy_and_explanation_number_under_its_header():
    from convex_attention.paper.explain_metrics import METRIC_NAMES
    from convex_attention.paper.reports import ACCURACY, cell

    report, *_ = _test_report()
    _, accuracy, explain, *_ = _test_report_inputs()
    columns = {"AUC": "auc", "bacc": "bacc", "bacc argmax": "bacc_argmax", "violation": "violation",
               **{f"{header} L{k}": f"{m}_L{k}" for m, header in (("n_max_p", "N·max p"), ("entropy_ratio", "H/log N"),
                                                                  ("score_range", "score range")) for k in range(3)},
               "time/epoch (s)": "epoch_time_s", "best epoch": "best_epoch"}
    assert set(columns.values()) == set(ACCURACY) - {"dev_auc"}
    digits = {"violation": 4, "epoch_time_s": 2, "best_epoch": 1}
    rows = _table(report, "| condition | test set | model | AUC |")
    for row, s in zip(rows, accuracy, strict=True):
        assert {k: row[k] for k in columns} == {k: cell(s, m, digits.get(m, 3)) for k, m in columns.items()}
        assert "±" in row["best epoch"]
    for protocol, resolution in (("pixel protocol", "pixel"), ("pooled protocol", "8x8")):
        text = report.split(f"### c, test, lesion masks, {protocol}")[1]
        rows = _table(text, "| model | map | level |")
        mine = [e for e in explain if e["resolution"] == resolution]
        assert len(rows) == len(mine) and {r["resolution"] for r in rows} == {resolution}
        for row in rows:
            s = next(e for e in mine if (e["model"], e["method"], str(e["level"]) if e["level"] >= 0 else "input")
                     == (row["model"], row["map"], row["level"]))
            assert [row[m] for m in METRIC_NAMES] == [cell(s, m) for m in METRIC_NAMES]


def test_the_test_report_shows_the_ablation_per_scope_and_the_randomisation_per_stage_in_order():
    from convex_attention.paper.reports import cell

    report, *_ = _test_report()
    _, _, _, ablation, rand, _ = _test_report_inputs()
    rows = _table(report, "| condition | test set | model | scope |")
    assert [r["scope"] for r in rows] == ["all levels", "L0"]
    for row, suffix in zip(rows, ("", "_L0"), strict=True):
        assert [row[k] for k in ("Δ AUC uniform", "Δ AUC shuffled", "Δ bacc uniform", "Δ bacc shuffled")] == [
            cell(ablation[0], f"{m}{suffix}") for m in ("delta_auc_uniform", "delta_auc_shuffled",
                                                        "delta_bacc_uniform", "delta_bacc_shuffled")]
    for form in ("abs", "signed"):
        rows = _table(report.split(f"Spearman, {form} maps:")[1], "| condition | model |")
        assert list(rows[0])[4:] == ["classifier", "attention"]  # the cascade's order, not the alphabet's
        assert [rows[0][s["stage"]] for s in rand] == [cell(s, f"spearman_{form}") for s in rand]


def test_the_test_report_lists_the_values_each_table_left_out_and_the_splits_with_fewer_images():
    from convex_attention.paper.explain_metrics import pointing_tolerance_px

    report, config, variants = _test_report()
    assert "- c, test, exact: auc: 1 of 5 seeds left out" in report.split(
        "Left out as NaN or infinite (accuracy and map")[1]
    assert "- c, test, exact, attention, 0, 8x8, nearest, lesion: ap: 1 of 5 seeds left out" in report.split(
        "Left out as NaN or infinite (explanation metrics)")[1]
    assert "- c, test, exact: delta_auc_uniform: 1 of 5 seeds left out" in report.split(
        "Left out as NaN or infinite (map ablation)")[1]
    assert "(fewer where a split has fewer: c test decisive: 3)" in report  # lesion has all 8
    assert f"use the first {config.n_explain} images of each test split" in report
    S = config.train.model.image_size
    assert f"within {pointing_tolerance_px((S, S)):.1f} px of the mask" in report
    assert f"upsampled by {variants.variant.upsampling} (the variant's upsampling)" in report



def test_the_dev_report_shows_a_per_method_mean_over_no_number_as_a_dash_and_names_a_seed_left_out():
    """A method whose dev AUC is NaN for every seed shows –, as every mean over no number;
    one left out of two is named (found by mutation testing: the cells printed 'nan', from
    a plain mean over the seeds, without an interval)."""
    report, *_ = _dev_report(True, exact_auc_mean=math.nan, exact_auc_n_used=0, exact_auc_n_nan=2,
                             softmax_bacc_n_used=1, softmax_bacc_n_nan=1)
    assert _table(report, "| variant |")[0]["exact AUC"] == "–"
    assert "- best: attention_ap: 2 of 8 seeds left out; softmax_bacc: 1 of 2 seeds left out" in report


def test_a_forced_rerun_with_another_variant_on_the_same_test_split_is_refused_or_said(tmp_path):
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import (
        Variant,
        Variants,
        VariantsError,
        check_test_data,
        history_of_test_runs,
        ledger_entry,
        read_ledger,
        record_test_run,
        spend,
    )
    from convex_attention.paper.reports import history_line

    config = QUICK.override(data="synthetic-brightest", n_train=8, n_val=4, n_dev=4, n_test=4, data_seed=1)
    ledger = str(tmp_path / "configs" / "data_ledger.json")
    first_v = Variants(Variant(temperature=1.0), difficulties=(0.3,), held_out_mimic="mottled")
    second_v = Variants(Variant(temperature=0.3), difficulties=(0.3,), held_out_mimic="mottled")
    sha_first, sha_second = "a" * 64, "b" * 64
    # the first test run, as run_test records it
    first = record_test_run(config.with_variants(first_v), {"sha256": sha_first}, "t1", "results/test", False)
    spend(ledger, ledger_entry(config.with_variants(first_v), "results/test", "t1",
                               **{k: v for k, v in first.items()
                                  if k not in ("stage", "data", "data_seed", "started", "variants")}))
    # oracle: the ledger says data seed 1's test split was already touched, with another variants file
    assert [(r["data_seed"], r["variants_sha256"]) for r in read_ledger(ledger)] == [(1, sha_first)]
    try:
        check_test_data(config, second_v, ledger, "results/test", force=True)
    except VariantsError:
        return  # refused: the variant changed after the test split was seen
    second = record_test_run(config.with_variants(second_v), {"sha256": sha_second}, "t2", "results/test", True)
    spend(ledger, ledger_entry(config.with_variants(second_v), "results/test", "t2",
                               **{k: v for k, v in second.items()
                                  if k not in ("stage", "data", "data_seed", "started", "variants")}))
    line = history_line({"benchmark_runs": history_of_test_runs(read_ledger(ledger), config.train.data),
                         "runs_in_folder": [first, second], "ledger": "configs/data_ledger.json"},
                        config.train.data)
    assert "test run 2" in line  # the rerun is counted ...
    assert sha_first[:12] in line or "variant" in line.lower(), line  # ... but is the changed variant said?


def test_the_history_line_never_calls_a_run_the_first_when_its_folders_log_records_an_earlier_one():
    from convex_attention.paper.reports import history_line

    # the first run (variants a) was recorded in a ledger this run does not read (its entry was
    # discarded with `git checkout configs/data_ledger.json`, or it sat beside another variants file)
    first = {"run_id": "r1", "started": "t1", "data": "synthetic-brightest", "data_seed": 1, "seeds": [0, 1],
             "variants_sha256": "a" * 64, "results": "results/test.run-1"}
    second = {"run_id": "r2", "started": "t2", "data": "synthetic-brightest", "data_seed": 1, "seeds": [0, 1],
              "variants_sha256": "b" * 64, "results": "results/test"}
    history = {"benchmark_runs": [second], "runs_in_folder": [first, second],
               "moved_aside": {"from": "results/test", "to": "results/test.run-1", "run_id": "r1"}}
    line = history_line(history, "synthetic-brightest")
    # oracle: the folder's log, which the report cites, holds two test runs of two variants files
    assert len(history["runs_in_folder"]) == 2
    assert len({r["variants_sha256"] for r in history["runs_in_folder"]}) == 2
    assert "first test run" not in line
    assert "different variants files" in line


# ----------------------------------------------------------------------------- review 49: the folder log's runs


def _logged(run_id, started, data="synthetic-brightest", **extra):
    """A test run as run_test logs it in OUT/test_runs.jsonl: its results are in its folder when it starts."""
    return {"stage": "test", "run_id": run_id, "started": started, "data": data, "data_seed": 1, "seeds": [0, 1],
            "variants_sha256": "a" * 64, "forced": bool(extra.get("moved_aside")), "results": "results/test",
            "folder": "results/test", **extra}


def _history_line(ledger, in_folder, moved):
    """The report's history line of synthetic-brightest: the ledger's test runs of it, the
    folder log's runs and the move the last run made (as the test stage records them)."""
    from convex_attention.paper.protocol import history_of_test_runs
    from convex_attention.paper.reports import history_line

    history = {"benchmark_runs": history_of_test_runs(ledger, "synthetic-brightest"), "runs_in_folder": in_folder,
               "moved_aside": moved}
    return history_line(history, "synthetic-brightest")


def test_a_run_only_the_folder_log_records_is_listed_where_a_later_force_moved_its_results():
    from convex_attention.paper.protocol import history_of_test_runs

    moved = {"from": "results/test", "to": "results/test.run-1", "run_started": "t1", "run_id": "r1"}
    first = _logged("r1", "t1")  # recorded in a ledger this run does not read (beside another variants file)
    second = _logged("r2", "t2", moved_aside=moved)
    # oracle: read from a ledger, the same first run is listed where the move put its results
    assert [r["results"] for r in history_of_test_runs([first, second], "synthetic-brightest")] == \
        ["results/test.run-1", "results/test"]
    line = _history_line([second], [first, second], moved)
    assert "test run 2" in line
    assert "results in `results/test.run-1`" in line, line


def test_a_run_of_another_benchmark_in_the_same_folder_is_not_counted_as_one_of_this_benchmark():
    from convex_attention.paper.protocol import history_of_test_runs

    moved = {"from": "results/test", "to": "results/test.run-1", "run_started": "t1", "run_id": "r1"}
    first = _logged("r1", "t1", data="synthetic")  # the rim benchmark, then --force with --data synthetic-brightest
    second = _logged("r2", "t2", moved_aside=moved)
    ledger = [first, second]  # one ledger records both
    # oracle: the ledger's history of synthetic-brightest holds one test run, this one
    assert [r["run_id"] for r in history_of_test_runs(ledger, "synthetic-brightest")] == ["r2"]
    line = _history_line(ledger, [first, second], moved)
    assert "first test run of the benchmark 'synthetic-brightest'" in line, line


# ----------------------------------------------------------------------------- review 50 (strict xfail: known defects)


def test_review50_a_ledger_run_moved_by_a_run_only_the_folder_log_records_is_listed_where_it_is_now():
    from convex_attention.paper.protocol import history_of_test_runs

    # run 1 and run 3 in the ledger; run 2 (--force over run 1) only in the folder log (its ledger
    # entry discarded with `git checkout configs/data_ledger.json`); run 3 --force over run 2
    moved1 = {"from": "results/test", "to": "results/test.run-1", "run_started": "t1", "run_id": "r1"}
    moved2 = {"from": "results/test", "to": "results/test.run-2", "run_started": "t2", "run_id": "r2"}
    first, second = _logged("r1", "t1"), _logged("r2", "t2", moved_aside=moved1)
    third = _logged("r3", "t3", moved_aside=moved2)
    # oracle: with every run in one ledger, run 1 is in results/test.run-1 (and results/test holds run 3's)
    assert [r["results"] for r in history_of_test_runs([first, second, third], "synthetic-brightest")] == \
        ["results/test.run-1", "results/test.run-2", "results/test"]
    line = _history_line([first, third], [first, second, third], moved2)
    assert "test run 3" in line
    assert "t1, data seed 1, seeds [0, 1], variants SHA-256 aaaaaaaaaaaa: results in `results/test.run-1`" in line, line


def test_review50_a_log_only_run_recorded_beside_another_ledger_is_listed_where_a_force_moved_it(tmp_path):
    from convex_attention.paper.protocol import ledger_where

    repo = tmp_path / "repo"
    folder, aside = str(repo / "results" / "test"), str(repo / "results" / "test.run-1")
    main = str(repo / "configs" / "data_ledger.json")
    copy = str(repo / "configs" / "alt" / "data_ledger.json")  # beside a copy of the variants file
    # oracle: the two ledgers name the one folder differently
    assert ledger_where(folder, main) == "results/test" and ledger_where(folder, copy) == folder
    first = _logged("r1", "t1", results=ledger_where(folder, copy), folder=ledger_where(folder, copy))
    moved = {"from": ledger_where(folder, main), "to": ledger_where(aside, main), "run_started": "t1", "run_id": "r1"}
    second = _logged("r2", "t2", moved_aside=moved)
    line = _history_line([second], [first, second], moved)
    assert "test run 2" in line
    assert "results in `results/test.run-1`" in line, line


def test_ca_rev67_the_dev_report_counts_the_attention_ap_left_out_in_what_it_averaged():
    """A candidate's attention ap is the mean over dev seeds of each seed's mean over the compared
    methods (``_per_seed_means``): one NaN run drops its whole seed, both methods' runs.  With 2
    compared methods x 5 seeds and one NaN run, what was left out is 1 of 5 seeds, or 2 of 10 runs;
    the report must not say "1 of 5 runs" (it counts seeds and names them runs)."""
    from types import SimpleNamespace

    from convex_attention.paper.experiment import QUICK, _rank_candidates
    from convex_attention.paper.protocol import Variant, Variants
    from convex_attention.paper.reports import dev_report

    config = QUICK.override(methods=("softmax", "exact"), dev_seeds=(0, 1, 2, 3, 4))
    [u] = config.candidates()["upsampling"][:1]
    rows = [{"variant": vi, "upsampling": uu, "method": m, "seed": s, "auc": 0.9, "bacc": 0.7,
             "attention_ap": math.nan if (m, s) == ("exact", 2) else 0.5 + 0.01 * s}
            for vi in range(len(config.variants())) for uu in config.candidates()["upsampling"]
            for m in config.methods for s in config.dev_seeds]
    summary = _rank_candidates(config, config.variants(), rows)
    entry = [e for e in summary if e["upsampling"] == u][0]
    assert entry["compared"] == "softmax exact"
    split = SimpleNamespace(n=16, seed=1, difficulty=0.3, mimic_types=("mottled",))
    report = dev_report(config, {"dev": split, "train": split, "val": split}, _dev_validity(), summary,
                        Variants(Variant(), benchmark=_verdict_record(True)), {"lesion": 5}, [], [], "lesion")
    line = [x for x in report.splitlines() if x.startswith(f"- {entry['label']}: attention_ap")][0]
    assert "attention_ap: 1 of 5 seeds left out" in line or "attention_ap: 2 of 10 runs left out" in line, line


def test_ca_rev67_the_accepted_verdict_line_does_not_claim_the_reported_only_check_passed():
    """(c) ``uniform_attention`` never decides (validity.REPORTED_ONLY): an accepted verdict may
    hold it failed or not run (docs/results_format.md).  The line must not say that *every*
    validity check ran and passed when (c) failed."""
    from convex_attention.paper.protocol import Variant, Variants, benchmark_record
    from convex_attention.paper.reports import verdict_line
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking

    checks = [CheckResult("location_free", "t", "b", 0.5, 0.6), CheckResult("pixel_map", "t", "a", 0.2, 0.3),
              check_maps_drive_ranking([0.1] * 5), check_uniform_attention(0.70, 0.75)]
    record = benchmark_record(checks, Variant(), 0.3, ("softmax",), (0, 1, 2, 3, 4),
                              {"image_size": 64, "width": 8, "epochs": 4, "n_train": 512})
    assert record["accepted"] and not record["checks"]["uniform_attention"]["passed"]  # oracle: (c) failed
    line = verdict_line(Variants(benchmark=record))
    assert "every validity check ran and passed" not in line, line


# ----------------------------------------------------------------------------- review ca_rev84

def test_rev84_the_accuracy_summary_and_table_keep_every_level_s_map_statistics():
    from convex_attention.paper.config import ModelConfig
    from convex_attention.paper.experiment import RUN_COLUMNS
    from convex_attention.paper.reports import ACCURACY, _accuracy_section

    ModelConfig(attention_blocks=(2, 3, 4)).validate()  # three levels are a valid model
    per_level = [c for c in RUN_COLUMNS if c.startswith(("n_max_p_L", "entropy_ratio_L", "score_range_L"))]
    assert "n_max_p_L2" in per_level  # runs.csv records level 2
    row = {"condition": "c", "test_set": "test", "model": "exact",
           **_stats(tuple(dict.fromkeys(ACCURACY + tuple(per_level))), 0.5)}
    row |= {"n_max_p_L2_mean": 7.125, "n_max_p_L2_ci95": 0.25}  # a value no other cell shows
    table = "\n".join(_accuracy_section([row]))
    summarised = [c for c in per_level if c not in ACCURACY]
    assert not summarised and cell(row, "n_max_p_L2") in table, (summarised, table)


# ---- ca_rev150 (strict xfail: review of 5a70ee6)
def test_ca_rev150_a_randomisation_map_nan_on_every_seed_is_named_in_the_nan_list():
    # every one of 5 seeds x 4 images has a constant map at the 'attention' stage: the table shows – (as for a stage
    # that did not run) and the list promised "after the tables" said nothing was left out
    from convex_attention.paper.reports import _randomisation_lines

    dead = {**_rand_row("attention", 0, 5, 0, 20), "stage_index": 1,
            **{f"spearman_{form}_{k}": math.nan for form in ("abs", "signed") for k in ("mean", "ci95")}}
    text = "\n".join(_randomisation_lines([_rand_row("classifier", 5, 0, 20, 0), dead]))
    listed = text.split("Left out as NaN or infinite (randomisation check)")[1]
    assert "c, test, exact, gradcam, 0, attention: spearman_abs" in listed, listed


def test_ca_rev150_the_report_flags_a_randomisation_check_on_fewer_images_than_32():
    # _test_seed takes by_mask[primary][:n_sanity]: with 20 decisive images explained, 20 are checked, not 32
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variants
    from convex_attention.paper.reports import test_report

    conditions, accuracy, explain, ablation, rand, headline = _test_report_inputs()
    conditions = [{**conditions[0], "n_explained": {"test": {"lesion": 64, "decisive": 20}}}]
    config = QUICK.override(seeds=(0, 1, 2, 3, 4), n_explain=64, n_sanity=32)
    report = test_report(config, Variants(), {"path": "v.json", "sha256": "x"}, conditions, accuracy, explain,
                         ablation, rand, headline, "cpu", {})
    assert "FEWER than the 32" in report


def test_ca_rev150_a_model_not_compared_never_shows_a_dev_auc_that_reaches_the_bar():
    import re

    from convex_attention.paper.reports import _validity_section
    from convex_attention.paper.validity import MIN_COMPARED_AUC

    conditions, accuracy, *_ = _test_report_inputs()
    below = MIN_COMPARED_AUC - 4e-4  # 0.7996: below the bar, so compared_methods leaves it out
    accuracy = [{**a, "dev_auc_mean": below if a["model"] == "softmax" else a["dev_auc_mean"]} for a in accuracy]
    text = "\n".join(_validity_section(conditions, accuracy))
    shown = re.search(r"softmax dev AUC ([0-9.]+)[^;]*\(NOT compared\)", text)
    assert shown, text
    assert float(shown.group(1)) < MIN_COMPARED_AUC, shown.group(0)


def test_ca_rev150_the_validity_table_s_rounded_number_agrees_with_its_status():
    from convex_attention.paper.validity import CheckResult

    check = CheckResult("pixel_map", "t", "ap", 0.3004, 0.30)
    assert check.status == "FAIL"
    row = [c.strip() for c in validity_lines([check], "c")[4].strip("|").split("|")]
    value, threshold = float(row[1].split()[-1]), float(row[2].split()[-1])
    assert value > threshold, row  # what the reader compares must fail as the status says


# ---- ca_rev151 (strict xfail: review of 821b769)
def test_ca_rev151_a_dev_auc_one_ulp_below_the_bar_is_not_printed_as_the_bar():
    import re

    import numpy as np

    from convex_attention.paper.experiment import compared_methods
    from convex_attention.paper.reports import _validity_section
    from convex_attention.paper.validity import MIN_COMPARED_AUC

    aucs = [0.7, 0.8, 0.9]  # three dev seeds' AUCs: np.mean gives 0.7999999999999999
    below = float(np.mean(aucs))
    assert below < MIN_COMPARED_AUC and compared_methods([{"method": "softmax", "auc": a} for a in aucs],
                                                         ["softmax"]) == []  # holds today: not compared
    conditions, accuracy, *_ = _test_report_inputs()
    accuracy = [{**a, "dev_auc_mean": below if a["model"] == "softmax" else a["dev_auc_mean"]} for a in accuracy]
    text = "\n".join(_validity_section(conditions, accuracy))
    shown = re.search(r"softmax dev AUC ([0-9.]+)[^;]*\(NOT compared\)", text)
    assert shown, text
    assert float(shown.group(1)) < MIN_COMPARED_AUC, shown.group(0)  # printed 0.800000000000 today


# ---- ca_rev153 (strict xfail: review of edb29d2)
def test_ca_rev153_the_dev_candidate_table_shows_a_dev_auc_on_its_side_of_the_bar():
    from convex_attention.paper.validity import MIN_COMPARED_AUC

    # softmax's mean dev AUC just under the bar: not compared (the candidate compares exact alone)
    report, *_ = _dev_report(True, softmax_auc_mean=0.7996)
    row = _table(report, "| variant |")[0]
    assert row["compared"] == "exact"  # holds today
    assert float(row["softmax AUC"].split()[0]) < MIN_COMPARED_AUC, row["softmax AUC"]  # '0.800 ± 0.020' today


# ---- ca_rev196 (review of 14d15bc; its strict xfails now pass)
def test_ca_rev196_a_model_free_map_that_was_not_fitted_is_not_reported_as_chosen_with_ap_nan():
    # fit_model_free returns {"name": None, "weights": None, "dev_ap": nan} when a half of the dev images has no
    # lesion image (likely at the allowed --n-dev / --validity-images 4); _validity_section formats it as a choice
    from convex_attention.paper.reports import _validity_section

    conditions, accuracy, *_ = _test_report_inputs()
    conditions = [{**conditions[0], "model_free": {"name": None, "weights": None, "dev_ap": math.nan}}]
    line = next(x for x in _validity_section(conditions, accuracy) if x.startswith("Model-free reference map"))
    assert "nan" not in line and "None" not in line and "chosen on the dev split" not in line, line


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf - inf in the std
def test_ca_rev196_a_value_that_is_not_finite_is_never_counted_as_a_number_used():
    from convex_attention.paper.explain import summary_cells
    from convex_attention.paper.reports import cell, nan_lines

    # score_range_L0 (float32 max θ − min θ) on one seed of five overflowed to inf
    s = {"condition": "c", "test_set": "test", "model": "exact",
         **summary_cells("score_range_L0", [1.0, math.inf, 2.0, 3.0, 4.0])}
    lines = nan_lines([s], ("condition", "test_set", "model"), "accuracy and map statistics")
    # the mean is over the four finite values (it had been inf, shown as '–', with the infinity counted as used)
    assert cell(s, "score_range_L0") == "2.500 ± 2.054"
    assert (s["score_range_L0_n_used"], s["score_range_L0_n_nan"]) == (4, 1)
    # and the table's list names what was left out (it had said 'every mean shown is over all seeds')
    assert not lines[0].startswith("Left out as NaN or infinite (accuracy and map statistics): nothing"), (s, lines)
    assert "c, test, exact: score_range_L0: 1 of 5 seeds left out" in "\n".join(lines), lines


def test_ca_rev196_a_hand_edited_run_log_record_never_crashes_the_report_after_the_work(tmp_path):
    import json

    from convex_attention.paper.protocol import VariantsError, read_test_runs
    from convex_attention.paper.reports import history_line

    # an earlier run into another folder beside this one, its hash edited to a number: strict JSON, a JSON object
    earlier = {"stage": "test", "run_id": "a", "data": "synthetic", "data_seed": 1, "variants_sha256": 12345,
               "results": "x/old", "folder": "x/old"}
    (tmp_path / "test_runs.jsonl").write_text(json.dumps(earlier) + "\n")
    try:
        runs = read_test_runs(str(tmp_path))  # what _experiment_preflight reads, before any work
    except VariantsError:
        return  # refused before any work, one line: what the rules ask
    this = {"stage": "test", "run_id": "b", "data": "synthetic", "data_seed": 2, "variants_sha256": "f" * 64,
            "results": "x/test", "folder": "x/test"}
    # run_test: runs_in_folder is log_test_run's every record, this run last; the ledger knows only this run
    line = history_line({"runs_in_folder": [*runs, this], "benchmark_runs": [this]}, "synthetic")
    assert "test run 2" in line, line


# ---- ca_rev215 (mutation review of 38d417d, reports, sanity, data and models): tests that kill surviving mutants


@pytest.mark.parametrize("attention,uniform,said", [(0.90, 0.70, "uniform_attention passed"),
                                                    (0.70, 0.75, "uniform_attention FAILED"),
                                                    (None, None, "uniform_attention did not run")])
def test_ca_rev215_the_accepted_verdict_line_names_only_the_reported_only_check_with_its_status(attention, uniform,
                                                                                               said):
    """The accepted line lists (c) (validity.REPORTED_ONLY) as passed, FAILED or did not run, as
    its record says, and none of the deciding checks in that list (mutants: 'passed'/'ran'
    swapped, ``not in REPORTED_ONLY``)."""
    from convex_attention.paper.protocol import Variant, Variants, benchmark_record
    from convex_attention.paper.reports import verdict_line
    from convex_attention.paper.validity import CheckResult, check_maps_drive_ranking

    checks = [CheckResult("location_free", "t", "b", 0.5, 0.6), CheckResult("pixel_map", "t", "a", 0.2, 0.3),
              check_maps_drive_ranking([0.1] * 5), check_uniform_attention(attention, uniform)]
    record = benchmark_record(checks, Variant(), 0.3, ("softmax",), (0, 1, 2, 3, 4),
                              {"image_size": 64, "width": 8, "epochs": 4, "n_train": 512})
    assert record["accepted"]
    line = verdict_line(Variants(benchmark=record))
    assert f"(reported only, not deciding: {said})." in line, line
    assert "location_free" not in line and "pixel_map" not in line and "maps_drive_ranking" not in line


@pytest.mark.parametrize("counts, said", [
    ([(0, 4)], "no row has candidates on both sides (no compared model), so no best is set against the other"),
    ([(0, 4), (3, 3)], "both sides pick from as many maps, so the selection flatters both alike"),
])
def test_ca_rev215_a_row_with_candidates_on_one_side_only_does_not_decide_which_side_is_favoured(counts, said):
    """A row with post-hoc candidates but no attention candidate (no compared model) selects
    nothing against the other side (mutant: ``a > 0 or p > 0``)."""
    from convex_attention.paper.reports import _selection_sentence

    text = _selection_sentence([{"candidates": {"attention": a, "posthoc": p}} for a, p in counts])
    assert said in text, text
    assert "the post-hoc side picks" not in text


def test_the_accuracy_differences_section_marks_a_paired_interval_that_excludes_0():
    from convex_attention.paper.reports import _accuracy_differences_section

    rows = [{"condition": "c", "test_set": "heldout", "metric": "auc", "model": "exact", "minus": "learned_dual",
             "difference_mean": 0.053, "difference_ci95": 0.022, "seeds": 5, "seeds_nan": 0},
            {"condition": "c", "test_set": "test", "metric": "auc", "model": "exact", "minus": "softmax",
             "difference_mean": 0.002, "difference_ci95": 0.027, "seeds": 4, "seeds_nan": 1}]
    lines = _accuracy_differences_section(rows)
    assert "## Accuracy differences, paired by seed (test splits)" in lines
    assert "| c | heldout | auc | exact − learned_dual | 0.053 ± 0.022 | 5 | **yes** |" in lines
    assert "| c | test | auc | exact − softmax | 0.002 ± 0.027 | 4 (1 NaN) | no |" in lines
    assert _accuracy_differences_section([]) == []


# ---- ca_rev235 (mutation review of the 42nd session's code): the accuracy differences' "excludes 0" and place


def _ca_rev235_difference(mean, half):
    return {"condition": "c", "test_set": "test", "metric": "auc", "model": "b", "minus": "a",
            "difference_mean": mean, "difference_ci95": half, "seeds": 5, "seeds_nan": 0}


@pytest.mark.parametrize("mean, half, shown", [(-0.053, 0.022, "**yes**"), (0.053, 0.022, "**yes**"),
                                               (0.25, 0.25, "no"), (-0.25, 0.25, "no")])
def test_ca_rev235_excludes_0_either_way_and_only_strictly(mean, half, shown):
    """A difference below 0 whose interval excludes 0 is marked as one above it is (the learned dual's AUC
    below exact's: ca_rev231); an interval whose end is 0 exactly does not exclude it."""
    from convex_attention.paper.reports import _accuracy_differences_section

    row = _accuracy_differences_section([_ca_rev235_difference(mean, half)])[-1]
    assert row.endswith(f"| 5 | {shown} |"), row


def test_ca_rev235_the_test_report_shows_the_accuracy_differences_after_the_accuracy():
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variant, Variants
    from convex_attention.paper.reports import test_report

    conditions, accuracy, explain, ablation, rand, headline = _test_report_inputs()
    report = test_report(QUICK.override(seeds=(0, 1, 2, 3, 4)), Variants(Variant()), {"path": "v.json", "sha256": "x"},
                         conditions, accuracy, explain, ablation, rand, headline, "cpu", {},
                         [_ca_rev235_difference(-0.053, 0.022)])
    order = [report.index(h) for h in ("## Accuracy", "## Accuracy differences, paired by seed",
                                       "| c | test | auc | b − a |", "## Explanation metrics")]
    assert order == sorted(order)


# ---- ca_rev236 (new-user walkthrough)
def test_ca_rev236_a_rejected_dev_stage_does_not_close_by_advising_to_commit_its_proposal():
    """`experiment --quick` (REJECTED by design: check (c') needs 5 dev seeds) printed its report, whose last line
    said to copy proposed_variants.json to configs/experiment_variants.json and commit it: the committed variants
    replaced by a smoke test's.  Only an accepted benchmark's report closes with that advice."""
    rejected, *_ = _dev_report(False)
    accepted, *_ = _dev_report(True)
    assert "commit it, then run `--stage test`" in accepted.strip().splitlines()[-1]
    last = rejected.strip().splitlines()[-1]
    assert "commit it" not in last and "rejected on the development split: not a variants file to commit" in last


# ---- ca_rev260 (hostile review of the report statistics)
def test_ca_rev260_a_reference_map_the_same_on_every_seed_is_shown_without_a_zero_width_interval():
    """The reference maps depend on no training seed: the committed report printed their AP over 5 identical
    seeds as "0.907 ± 0.000" (explain_summary.csv ap_ci95 0 or 1.5e-16), a certainty no 64 images give."""
    from convex_attention.paper.reports import SEEDLESS_NOTE, _headline_section

    h = {**_test_report_inputs()[-1][0],
         "block_map": {"model": "reference", "method": "block_map", "level": 0, "ap_mean": 0.907, "ap_ci95": 0.0},
         "model_free": {"model": "reference", "method": "model_free", "level": -1, "ap_mean": 0.447,
                        "ap_ci95": 1.5e-16}}
    text = "\n".join(_headline_section([h]))
    row = _table(text, "| condition | test set | mask | resolution | best attention |")[0]
    assert (row["ap#3"], row["ap#4"]) == ("0.907", "0.447") and SEEDLESS_NOTE in text
    assert row["ap"] == "0.610 ± 0.020"  # a trained model's map keeps its interval


def test_ca_rev260_the_explanation_tables_show_a_reference_map_without_an_interval_and_say_why():
    from convex_attention.paper.explain_metrics import METRIC_NAMES
    from convex_attention.paper.reports import SEEDLESS_NOTE, _explanation_section

    base = {"condition": "c", "test_set": "test", "mask": "lesion", "resolution": "pixel", "upsampling": "nearest",
            **{f"{m}_mean": 0.5 for m in METRIC_NAMES}, **{f"{m}_ci95": 0.0 for m in METRIC_NAMES}}
    rows = [{**base, "model": "reference", "method": "block_map", "level": 0},
            {**base, "model": "exact", "method": "attention", "level": 0}]
    text = "\n".join(_explanation_section(rows))
    assert "| reference | block_map | 0 | pixel | nearest | " + " | ".join(["0.500"] * len(METRIC_NAMES)) in text
    assert "| exact | attention | 0 | pixel | nearest | 0.500 ± 0.000" in text and SEEDLESS_NOTE in text


@pytest.mark.parametrize("x, y", [({0: 0.3, 1: 0.5}, {0: 0.1, 1: 0.2}),
                                  ({0: 0.3, 1: 0.5, 2: math.nan, 3: 0.1, 4: math.inf}, {0: 0.1, 1: 0.2, 2: 0.0,
                                                                                        3: 0.4, 4: 0.1, 9: 0.5})])
def test_ca_rev260_the_paired_difference_is_scipy_s_paired_t_interval_over_the_finite_shared_seeds(x, y):
    """Oracle: scipy's t interval of the per-seed differences (n − 1 dof), over the seeds both hold whose difference
    is finite; the seed only one side has is not paired, the NaN and infinite ones counted."""
    import numpy as np
    from scipy import stats

    from convex_attention.paper.experiment import _seed_paired

    shared = sorted(set(x) & set(y))
    d = np.array([x[s] - y[s] for s in shared])
    d = d[np.isfinite(d)]
    lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    mean, half, n, n_nan = _seed_paired(x, y)
    assert (n, n_nan) == (len(shared), len(shared) - d.size)
    assert mean == pytest.approx(d.mean(), abs=1e-12) and half == pytest.approx((hi - lo) / 2, rel=1e-9)
