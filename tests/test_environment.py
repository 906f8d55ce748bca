"""convex_attention.io.environment: the record of where a number was measured."""
import json

import torch

from convex_attention.io.environment import cpu_name, environment


def test_the_record_names_versions_processor_threads_and_device_and_is_json(odd_threads):
    env = environment("cpu")
    for key in ("python", "torch", "numpy", "platform", "processor", "cpu_count", "torch_threads", "device"):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["torch_threads"] == odd_threads
    assert env["device"] == "cpu" and "gpu" not in env
    assert json.loads(json.dumps(env)) == env
    assert cpu_name() and isinstance(cpu_name(), str)


def test_a_run_record_holds_the_load_at_both_ends_and_the_threads(odd_threads):
    from convex_attention.io.environment import load_average, now_utc, run_record

    start = load_average()
    record = run_record(now_utc(), start, rows=3)
    assert record["load_average_start"] == start and record["rows"] == 3
    assert record["torch_threads"] == odd_threads
    assert record["started"] <= record["finished"]
    if start is not None:  # Linux and macOS keep one
        assert len(start) == 3 and len(record["load_average_end"]) == 3
    assert json.loads(json.dumps(record)) == record


def test_a_device_this_machine_cannot_use_is_told_why_and_one_it_can_is_not(monkeypatch):
    """The checks every --device shares (bench's and the paper's check_device call them)."""
    from convex_attention.io.environment import device_unavailable

    assert device_unavailable(torch.device("cpu")) is None and device_unavailable(torch.device("cpu:0")) is None
    assert device_unavailable(torch.device("cpu:1")) == "the CPU is one device, whatever its index"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        assert device_unavailable(torch.device(name)).startswith("CUDA is not available on this machine")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_unavailable(torch.device("cuda")) is None and device_unavailable(torch.device("cuda:1")) is None
    assert device_unavailable(torch.device("cuda:2")) == "this machine has 2 CUDA device(s) (cuda:0 to cuda:1)"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_unavailable(torch.device("mps")) == "MPS is not available on this machine"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device_unavailable(torch.device("mps")) is None
