import os

from convex_attention.bench.plots import env_line, plot_core_benchmark


def test_core_benchmark_figure(tmp_path):
    rows = [{"method": m, "shapes": "8x8+4x4", "batch": 4, "dtype": "float32", "fwd_ms": 1.0 + i, "bwd_ms": 0.5}
            for i, m in enumerate(["softmax", "exact", "learned_dual+loss"])]
    path = plot_core_benchmark(rows, {"exact/softmax": 2.0}, str(tmp_path / "core.png"),
                               {"torch": "2.13.0", "processor": "cpu", "torch_threads": 2})
    assert os.path.getsize(path) > 1000 and os.path.getsize(str(tmp_path / "core.pdf")) > 1000


def test_env_line():
    assert "torch 2.13.0" in env_line({"torch": "2.13.0", "processor": "AMD", "torch_threads": 2})
    assert env_line(None) == ""
