#!/usr/bin/env python
"""Writes docs/benchmark_scripts.md, the reference of the scripts in benchmarks/: each one's
description, options (with their defaults, as its ``--help`` states them) and usage lines,
rendered from its own parser (its ``build_parser``) by the same code as docs/commands.md.

    python benchmarks/reference.py > docs/benchmark_scripts.md

tests/test_reference.py fails while the committed file differs, and when a script of
benchmarks/ is in neither SCRIPTS nor NOT_LISTED.
"""
import importlib.util
import sys
from pathlib import Path

from convex_attention.cli.reference import scripts_reference

HERE = Path(__file__).resolve().parent

# in the order a user meets them: the targets' benchmarks, then the studies and tools behind
# docs/benchmarks.md and docs/design.md, then the GPU check
SCRIPTS = ("bench_core", "bench_graphs", "ablate_newton", "profile_dual", "study_certificate",
           "study_temperature_gradients", "gpu_check")
# scripts with no parser of their own: experiment.py passes its arguments to `convex-attention
# experiment` (docs/commands.md), and this writer takes none
NOT_LISTED = ("experiment", "reference")

HEADER = """# Benchmark scripts

<!-- Written by `python benchmarks/reference.py > docs/benchmark_scripts.md` from each script's
parser; tests/test_reference.py fails while it differs. Edit the help texts in the scripts. -->

Every option of the scripts in `benchmarks/`, with its default, as the script's `--help` prints
it. Each is run from the repository's root as `python benchmarks/NAME.py`, in the environment
`make demo` builds (`.venv/bin/python`), and fails like the command (one line on stderr; exit 2
for a usage error). `benchmarks/experiment.py` is `convex-attention experiment` under another
name: its options are that command's (docs/commands.md). What the scripts measured, with their
commands and committed files: docs/benchmarks.md and docs/performance.md.
"""


def load_script(name: str):
    """The module of ``benchmarks/NAME.py``, imported by its path (benchmarks/ is not a
    package): its ``main`` is not run."""
    spec = importlib.util.spec_from_file_location(f"benchmark_script_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmark_scripts_reference() -> str:
    """The Markdown text of docs/benchmark_scripts.md."""
    return scripts_reference(HEADER, [(f"python benchmarks/{name}.py", load_script(name).build_parser())
                                      for name in SCRIPTS])


if __name__ == "__main__":
    sys.stdout.write(benchmark_scripts_reference())
