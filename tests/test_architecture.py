"""The layout of docs/design.md §5, checked on the source: which part may import which,
no import cycles (lazy imports inside functions included), and a light core import."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "convex_attention"
WINGS = ("bench", "paper", "cli")
# Which part may import which (the package's own modules only).
ALLOWED = {"core": {"core"}, "bench": {"core", "bench"}, "paper": {"core", "paper", "bench"},
           "cli": {"core", "bench", "paper", "cli"}}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else "core"


def imports_of(path: pathlib.Path) -> set[str]:
    """Every convex_attention module imported anywhere in the file (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("convex_attention")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("convex_attention"):
                continue
            for alias in node.names:  # `from . import metrics` imports a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if module_path(candidate) else target)
    return {m for m in found if module_path(m)} - {name}


def module_path(module: str) -> pathlib.Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_the_graph_was_read():
    assert len(GRAPH) > 30
    assert "convex_attention.solve" in GRAPH["convex_attention.nn"]
    assert "convex_attention.bench.plots" in GRAPH["convex_attention.paper.explain"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_dependencies_point_one_way(module):
    mine = part_of(module)
    bad = sorted(m for m in GRAPH[module] if part_of(m) not in ALLOWED[mine])
    assert not bad, f"{module} ({mine}) must not import {bad}"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_core_stays_small():
    core = [p for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(core) <= 12, sorted(p.name for p in core)


@pytest.mark.slow  # end to end (a subprocess, a whole check or a benchmark run)
def test_import_loads_no_heavy_dependency():
    code = ("import sys, convex_attention, convex_attention.bench, convex_attention.cli\n"
            "heavy = ['cvxpy', 'cvxpylayers', 'diffcp', 'matplotlib', 'captum', 'sklearn', 'nibabel', 'PIL']\n"
            "print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"import convex_attention loaded {out.stdout.strip()}"


def test_docs_point_inside_the_repository():
    outside = []
    for path in list(ROOT.glob("*.md")) + list((ROOT / "docs").rglob("*.md")) + list(PACKAGE.rglob("*.py")) \
            + list((ROOT / "tests").glob("*.py")) + list((ROOT / "benchmarks").glob("*.py")):
        text = path.read_text(errors="replace")
        if "../shared" in text or "DESIGN.md" in text:
            if path.name != "test_architecture.py":
                outside.append(str(path.relative_to(ROOT)))
    assert not outside, f"these files point outside the repository: {outside}"
