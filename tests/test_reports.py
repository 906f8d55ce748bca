"""convex_attention.paper.reports: numbers as mean ± CI half-width, and the validity table."""
import math

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
