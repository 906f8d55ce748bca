#!/usr/bin/env python
"""The paper's experiment (thin wrapper of `convex-attention experiment`).

    python benchmarks/experiment.py --quick            # the smoke-test preset
    python benchmarks/experiment.py --out results/exp  # the full setting (measured times: docs/experiment.md)

Trains softmax, learned_dual and exact attention CNNs on the synthetic weakly-annotated
lesion dataset with 3 seeds each, explains them against the lesion masks (attention maps
and GradCAM, DeepLIFT, LRP, Input x Gradient, Integrated Gradients on the softmax model),
and writes experiment.md / experiment.csv / experiment_summary.csv.  Every option of
``convex-attention experiment`` applies (``--help``); bad options exit with status 2.
"""
import sys

from convex_attention.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
