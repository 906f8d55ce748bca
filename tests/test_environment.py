"""convex_attention.io.environment: the record of where a number was measured."""
import json

import torch

from convex_attention.io.environment import cpu_name, environment


def test_the_record_names_versions_processor_threads_and_device_and_is_json(odd_threads):
    env = environment("cpu")
    for key in ("python", "torch", "numpy", "platform", "processor", "cpu_count", "cpu_capability", "torch_threads",
                "device"):
        assert key in env, key
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
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


def test_the_record_of_a_torch_device_is_json_and_names_the_cpu_count_and_processor(odd_threads):
    import os

    env = environment(torch.device("cpu"))
    assert env["device"] == "cpu" and json.loads(json.dumps(env)) == env
    assert env["cpu_count"] == os.cpu_count() and env["processor"] == cpu_name()


def test_the_record_holds_the_solver_versions_where_installed(monkeypatch):
    """docs/results_format.md: cvxpy, cvxpylayers, diffcp, clarabel, scs and moreau versions
    (where installed)."""
    from importlib import metadata

    def version(package):
        if package == "cvxpy":
            raise metadata.PackageNotFoundError(package)
        return f"{package}-1.2.3"

    monkeypatch.setattr(metadata, "version", version)
    env = environment("cpu")
    assert "cvxpy" not in env
    for package in ("cvxpylayers", "diffcp", "clarabel", "scs", "moreau"):
        assert env[package] == version(package)


def test_the_record_of_a_cuda_device_names_the_gpu_and_cuda_version(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU of {device}")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    env = environment("cuda:1")
    assert env["gpu"] == "GPU of cuda:1" and env["cuda"] == "12.4" and env["device"] == "cuda:1"


def test_cpu_name_reads_the_model_name_line_or_falls_back(monkeypatch):
    import io
    import platform

    from convex_attention.io import environment as module

    cpuinfo = "processor\t: 0\nmodel\t\t: 85\nmodel name\t: Toy CPU 9000 @ 1.00GHz\n"
    monkeypatch.setattr(module, "open", lambda *a, **k: io.StringIO(cpuinfo), raising=False)
    assert cpu_name() == "Toy CPU 9000 @ 1.00GHz"

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(module, "open", refused, raising=False)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert cpu_name() == "unknown"


def test_load_average_is_rounded_and_none_where_the_system_keeps_none(monkeypatch):
    import os

    from convex_attention.io.environment import load_average

    monkeypatch.setattr(os, "getloadavg", lambda: (1.234, 0.5, 2.0))
    assert load_average() == [1.23, 0.5, 2.0]

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert load_average() is None
    monkeypatch.delattr(os, "getloadavg")
    assert load_average() is None


def test_now_utc_is_utc_to_the_second(monkeypatch):
    import datetime
    import types

    from convex_attention.io import environment as module

    now = datetime.datetime.fromisoformat(module.now_utc())
    assert now.utcoffset() == datetime.timedelta(0)

    class Fixed(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tz)

    fake = types.SimpleNamespace(datetime=Fixed, timezone=datetime.timezone, UTC=datetime.UTC)
    monkeypatch.setattr(module, "datetime", fake)
    assert module.now_utc() == "2026-01-02T03:04:05+00:00"


def test_a_run_record_takes_the_end_load_and_time_at_its_end(monkeypatch):
    import os

    from convex_attention.io import environment as module

    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    monkeypatch.setattr(module, "now_utc", lambda: "2026-01-02T03:04:05+00:00")
    record = module.run_record("2026-01-01T00:00:00+00:00", [0.5, 0.25, 0.125], rows=2)
    assert record["started"] == "2026-01-01T00:00:00+00:00" and record["finished"] == "2026-01-02T03:04:05+00:00"
    assert record["load_average_start"] == [0.5, 0.25, 0.125] and record["load_average_end"] == [3.0, 2.0, 1.0]
    assert record["cpu_count"] == os.cpu_count() and record["rows"] == 2


# ---- ca_rev269 (hostile review of io/tables.py and io/environment.py)


def test_ca_rev269_a_processor_without_a_model_name_is_named_by_its_identity(monkeypatch):
    """/proc/cpuinfo on ARM has no ``model name``: every ARM machine was ``platform.processor()``'s
    ``aarch64``, one processor to the --resume check (a Neoverse N1 and a V1's timings in one folder)."""
    import io
    import platform

    from convex_attention.io import environment as module

    monkeypatch.setattr(platform, "processor", lambda: "aarch64")
    names = []
    for part in ("0xd0c", "0xd40"):
        info = (f"processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
                f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
                f"processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd05\n")
        monkeypatch.setattr(module, "open", lambda *a, info=info, **k: io.StringIO(info), raising=False)
        names.append(cpu_name())
    assert names == ["ARM implementer 0x41 part 0xd0c variant 0x1 revision 1",
                     "ARM implementer 0x41 part 0xd40 variant 0x1 revision 1"]
    power = "processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\nclock\t\t: 2166.000000MHz\n"
    monkeypatch.setattr(module, "open", lambda *a, **k: io.StringIO(power), raising=False)
    assert cpu_name() == "POWER9 (raw), altivec supported"


def test_ca_rev269_a_mac_is_named_by_its_brand_string_not_its_architecture(monkeypatch):
    """platform.processor() on macOS is ``arm`` (or ``i386``) for every Mac."""
    import platform
    import subprocess
    import types

    from convex_attention.io import environment as module

    def refused(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(module, "open", refused, raising=False)
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout="Apple M2 Pro\n"))
    assert cpu_name() == "Apple M2 Pro"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout=""))
    assert cpu_name() == "arm"
