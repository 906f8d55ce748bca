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
