"""The record of where a number was measured: versions, processor, threads, device.

Every results file stores it (``bench.json``, the experiment's reports), and every figure
names it in its footer (:func:`convex_attention.io.figures.env_line`).
"""
from __future__ import annotations

import os
import platform
from importlib import metadata

import numpy
import torch

__all__ = ["environment", "cpu_name"]

# Versions recorded without importing the packages (some are slow to import).
_SOLVER_PACKAGES = ("cvxpy", "cvxpylayers", "diffcp", "clarabel", "scs", "moreau")


def environment(device="cpu") -> dict:
    """Versions, CPU, threads and device: stored with every result file."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "processor": cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "device": str(device)}
    for package in _SOLVER_PACKAGES:
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
