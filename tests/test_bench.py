import pytest
import torch

import convex_attention as ca
from convex_attention.bench.duals import fit_shared_duals
from convex_attention.bench.generators import generate
from convex_attention.bench.sweep import SweepConfig, _cvx_estimate_s, check_sweep
from convex_attention.bench.targets import core_benchmark


def test_core_benchmark_tiny_prints_the_three_ratios(tmp_path):
    lines = []
    out = core_benchmark(batch=2, shapes=((4, 4), (2, 2)), cvx_shapes=((4, 4), (2, 2)), cvx_batch=1, repeats=2,
                         cvx_repeats=1, out_dir=str(tmp_path), log=lines.append)
    assert set(out["ratios"]) == {"exact/softmax", "exact/learned_dual+loss", "cvxpylayers/exact per sample"}
    assert all(v > 0 for v in out["ratios"].values())
    assert "target" in lines[0]
    for name in ("bench_core.csv", "bench_core.json", "bench_core.png", "bench_core.pdf"):
        assert (tmp_path / name).stat().st_size > 0


def test_fitted_shared_duals_lower_the_training_consistency_loss():
    h = ca.Hierarchy.grid([(8, 8), (4, 4)])
    # scores with a fixed structure shared by all inputs: one λ can fix it
    base = generate("lesion", h, 1, seed=3)
    train = [b + 0.1 * torch.randn((32,) + b.shape[1:], dtype=torch.float64) for b in base]
    temps = [1.0, 1.0]
    lam = fit_shared_duals(h, train, temps, steps=200, dtype=torch.float64)
    zero = [torch.zeros_like(d) for d in lam]
    assert ca.consistency_loss(train, lam, h) < 0.2 * ca.consistency_loss(train, zero, h)


def test_cvx_time_estimate_uses_measured_cells():
    rows = [{"method": "cvxpylayers", "status": "ok", "n_cells": n, "per_sample_ms": 1e3 * 0.001 * n}
            for n in (100, 1000)]
    assert abs(_cvx_estimate_s(rows, 10000, batch=2, calls=3) - 0.001 * 10000 * 6) < 1e-6


@pytest.mark.parametrize("kwargs, message", [
    ({"sizes": [12], "levels": [4]}, "does not divide"),
    ({"methods": ["exact", "sparsemax"]}, "unknown method"),
    ({"dtypes": ["int8"]}, "unknown dtype"),
    ({"devices": ["tpu"]}, "unknown device"),
    ({"levels": [1]}, "at least 2 levels"),
])
def test_check_sweep_rejects_bad_sweeps(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sweep(SweepConfig(**kwargs))
