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
    assert "the best of 6 attention maps against the best of 24 post-hoc maps" in lines and "favours" in lines


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
    assert "Left out as NaN (headline differences): nothing" in "\n".join(_headline_section([entry]))
    del entry["difference"]["seeds_nan"]  # an older results file: the count was not recorded
    assert "Left out as NaN (headline differences): not recorded" in "\n".join(_headline_section([entry]))


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
    assert "Left out as NaN (randomisation check): nothing" in clean
    accuracy = [{"condition": "c", "test_set": "test", "model": "exact", "seeds": 5, "auc_mean": 0.9,
                 "auc_ci95": 0.1, "auc_n_used": 5, "auc_n_nan": 0, "bacc_mean": 0.8, "bacc_ci95": 0.1,
                 "bacc_n_used": 3, "bacc_n_nan": 2,
                 # no value at all (the plain CNN's map statistics): the mean is NaN, shown as –, nothing hidden
                 "violation_mean": math.nan, "violation_ci95": math.nan, "violation_n_used": 0, "violation_n_nan": 5}]
    lines = nan_lines(accuracy, ("condition", "test_set", "model"), "accuracy")
    assert lines[0].startswith("Left out as NaN (accuracy): the means and intervals above are over the seeds")
    assert lines[2] == "- c, test, exact: bacc: 2 of 5 seeds left out" and len(lines) == 4


def test_the_report_states_the_degrees_of_freedom_of_the_seeds_used():
    from convex_attention.paper.experiment import QUICK
    from convex_attention.paper.protocol import Variants
    from convex_attention.paper.reports import test_report

    report = test_report(QUICK, Variants(), {"path": "v.json", "sha256": "x"}, [], [], [], [],
                         [_rand_row("classifier", 1, 1, 2, 6)], [], "cpu", {})
    assert "Student t with n − 1 degrees of freedom, n the seeds whose value is a number" in report
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
