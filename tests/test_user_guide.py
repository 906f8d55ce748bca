"""docs/user_guide.md and README.md: their Python examples run as written."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "user_guide.md"


def graph_examples() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("### Consistency graphs")
    section = text[start:text.index("\n### ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_guide_has_the_three_use_cases():
    assert len(graph_examples()) == 3


@pytest.mark.parametrize("index", range(3))
def test_each_graph_example_runs(index, capsys):
    import torch

    torch.manual_seed(index)
    exec(compile(graph_examples()[index], f"user_guide.md example {index}", "exec"), {})
    if index == 1:
        printed = capsys.readouterr().out
        assert "tensor([True, True])" in printed and "dual" in printed


def test_the_guides_first_example_runs():
    """Section 1, the layer in your own model (it used score heads and features it never made,
    a review found)."""
    text = GUIDE.read_text(encoding="utf-8")
    first = re.search(r"```python\n(.*?)```", text, flags=re.S)
    assert first is not None and first.start() < text.index("### Consistency graphs")
    namespace: dict = {}
    exec(compile(first.group(1), "user_guide.md section 1", "exec"), namespace)
    assert [tuple(p.shape) for p in namespace["maps"]] == [(2, 56, 56), (2, 28, 28), (2, 14, 14)]


@pytest.mark.slow  # cvxpylayers with moreau on 8 samples of 64² + 32²: about 8 s
def test_the_readme_examples_run_in_order():
    pytest.importorskip("moreau")  # the first example says it needs [moreau]
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for index, block in enumerate(blocks):  # the second goes on from the first's imports
        exec(compile(block, f"README.md example {index}", "exec"), namespace)
    assert bool(namespace["sol"].info["converged"].all())


def test_the_guides_test_stage_command_passes_a_fresh_data_seed():
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("## 6.")
    block = re.search(r"```sh\n(.*?)```", text[start:], flags=re.S).group(1)
    test_line = next(line for line in block.splitlines() if "--stage test" in line)
    assert "--data-seed" in test_line, test_line


# ---- ca_rev191 (review of 406d517: the guide was wrong, and now says what the code does)


def test_ca_rev191_the_guide_says_which_failures_get_a_fresh_process():
    """docs/user_guide.md §2 had said that after an exception or a wrong return value "the next
    instance gets a fresh process"; the same process serves it (tests/test_isolation.py checks
    that, and the guide now says so), and only a process that exited, crashed, ran past the
    timeout or sent a message unasked is replaced."""
    text = " ".join((ROOT / "docs" / "user_guide.md").read_text(encoding="utf-8").split())
    assert "and the next instance gets a fresh process" not in text
    assert ("A process that exited, crashed, ran past the timeout or sent a message unasked is stopped, and a "
            "fresh one takes the next instance; after an exception or a wrong return value the same process does"
            ) in text
