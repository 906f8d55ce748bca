"""The record of where a number was measured: versions, processor, threads, device, and the
machine's load while it ran.

Every results file stores it (``bench.json``, the experiment's reports), and every figure
names it in its footer (:func:`convex_attention.io.figures.env_line`).  A run's record
(:func:`run_record`) adds the load average at its start and at its end: on a shared
machine a time means little without it.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata

import numpy
import torch

__all__ = ["environment", "SOLVER_PACKAGES", "cpu_name", "load_average", "run_record", "now_utc", "device_unavailable"]

# Versions recorded without importing the packages (some are slow to import).
SOLVER_PACKAGES = ("cvxpy", "cvxpylayers", "diffcp", "clarabel", "scs", "moreau")


def environment(device="cpu") -> dict:
    """Versions, CPU, threads and device: stored with every result file.  ``cpu_capability`` is
    the vector kernels torch runs on the CPU (``AVX512``, ``AVX2``, ``DEFAULT``: the CPU's best,
    or ``ATEN_CPU_CAPABILITY``'s): one processor name ("AMD EPYC") covers CPUs with and without
    AVX-512, whose kernels time and round differently (make test-kernels)."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "processor": cpu_name(), "cpu_count": os.cpu_count(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch_threads": torch.get_num_threads(), "device": str(device)}
    for package in SOLVER_PACKAGES:
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def device_unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot run work on this machine, as a clause for an error message, or
    None where it can: the checks every ``--device`` shares (which device types a command
    takes is the command's own choice).

    A CPU index other than 0 is refused: torch ignores it, so ``cpu:1`` would be the one CPU
    under a second name (a benchmark cell measured twice, a run's record naming a device
    that is not one)."""
    if device.type == "cpu" and device.index not in (None, 0):
        return "the CPU is one device, whatever its index"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine (no GPU, or torch built without CUDA)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return "MPS is not available on this machine"
    return None


def cpu_name() -> str:
    """The processor's model name: ``/proc/cpuinfo``'s ``model name`` on Linux; where it has
    none, its processor's identity there (ARM's implementer, part, variant and revision; the
    ``cpu`` of POWER, the ``uarch`` of RISC-V, the ``cpu model`` of MIPS); on macOS sysctl's
    ``machdep.cpu.brand_string``; else ``platform``.  ``platform.processor()`` is the
    architecture there (``aarch64``, ``arm``): every ARM machine had one name, and a
    ``--resume`` mixed their timings (ca_rev269)."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, colon, value = line.partition(":")
                if colon:
                    fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    if fields.get("model name"):
        return fields["model name"]
    if fields.get("CPU implementer") and fields.get("CPU part"):
        ids = [f"{key.split()[1]} {fields[key]}" for key in ("CPU implementer", "CPU part", "CPU variant",
                                                             "CPU revision") if fields.get(key)]
        return "ARM " + " ".join(ids)  # e.g. "ARM implementer 0x41 part 0xd0c variant 0x3 revision 1"
    for key in ("cpu", "uarch", "cpu model"):
        if fields.get(key):
            return fields[key]
    if platform.system() == "Darwin":
        try:
            brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            brand = ""
        if brand:
            return brand
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (``os.getloadavg``), or ``None`` where the
    system keeps none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def now_utc() -> str:
    """The time now, UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def run_record(started: str, load_start: list[float] | None, **more) -> dict:
    """One run's record, taken at its end: when it started and ended, the load average at
    both ends (``None`` where not available), the torch threads it ran with and ``more``."""
    return {"started": started, "finished": now_utc(), "load_average_start": load_start,
            "load_average_end": load_average(), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), **more}
