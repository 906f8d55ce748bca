#!/usr/bin/env python
"""The paper's experiment (thin wrapper of `convex-attention experiment`).

    python benchmarks/experiment.py --quick                       # the smoke-test preset, dev stage
    python benchmarks/experiment.py --out results/exp             # the full setting, dev stage
    python benchmarks/experiment.py --stage test --out results/exp  # the test stage, once (docs/experiment.md)

The dev stage trains every candidate variant of the softmax, learned_dual and exact
attention CNNs with the dev seeds, and a plain CNN, scores the attention maps on the
development split, runs the benchmark's validity checks and proposes a variant with the
verdict (OUT/dev: dev.md, dev.json, dev_runs.csv, dev_summary.csv,
proposed_variants.json).  The test stage, from the committed variants file, trains every
model with every seed (5 in the full setting) at each difficulty and writes the report,
its tables and figures into OUT/test (experiment.md, experiment.json, runs.csv, the
summaries, rows/).  Every option of ``convex-attention experiment`` applies (``--help``);
bad options exit with status 2.
"""
import sys

from convex_attention.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
