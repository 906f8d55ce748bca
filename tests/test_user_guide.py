"""docs/user_guide.md: the consistency-graph examples run as written."""
import pathlib
import re

import pytest

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "user_guide.md"


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
