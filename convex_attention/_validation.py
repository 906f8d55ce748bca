"""Input checks shared by every entry point: clear errors instead of silent wrong answers."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .hierarchy import Hierarchy


def check_hierarchy(h) -> Hierarchy:
    if not isinstance(h, Hierarchy):
        raise TypeError(f"h must be a convex_attention.Hierarchy, got {type(h).__name__}")
    return h


def check_scores(scores, h: Hierarchy, check_finite: bool = True, name: str = "scores") -> list[Tensor]:
    """Validate ``scores[k].shape == (B, *h.shapes[k])``; returns the list of tensors.

    ``check_finite`` reads every value once; on CUDA that is one host synchronisation.
    """
    check_hierarchy(h)
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence):
        raise TypeError(f"{name} must be a list of {h.num_levels} tensors (one per level), "
                        f"got {type(scores).__name__}")
    if len(scores) != h.num_levels:
        raise ValueError(f"{name} must hold one tensor per level: the hierarchy has "
                         f"{h.num_levels} levels, got {len(scores)} tensors")
    out = []
    for k, s in enumerate(scores):
        if not isinstance(s, Tensor):
            raise TypeError(f"{name}[{k}] must be a torch.Tensor, got {type(s).__name__}")
        if not s.dtype.is_floating_point:
            raise TypeError(f"{name}[{k}] must be a floating tensor, got dtype {s.dtype}")
        expected = h.shapes[k]
        if s.dim() != 1 + len(expected) or tuple(s.shape[1:]) != expected:
            raise ValueError(f"{name}[{k}] must have shape (B, {', '.join(map(str, expected))}) "
                             f"for level {k}, got {tuple(s.shape)}")
        out.append(s)
    batch = out[0].shape[0]
    for k, s in enumerate(out):
        if s.shape[0] != batch:
            raise ValueError(f"{name}[{k}] has batch size {s.shape[0]}, {name}[0] has {batch}")
        if s.dtype != out[0].dtype:
            raise TypeError(f"{name}[{k}] has dtype {s.dtype}, {name}[0] has {out[0].dtype}; use one dtype")
        if s.device != out[0].device:
            raise ValueError(f"{name}[{k}] is on {s.device}, {name}[0] on {out[0].device}")
    if batch == 0:
        raise ValueError(f"{name} have batch size 0")
    if check_finite:
        for k, s in enumerate(out):
            if not all_finite(s):
                kind = "NaN" if bool(torch.isnan(s).any()) else "Inf"
                raise ValueError(f"{name}[{k}] contains {kind} values; scores must be finite")
    return out


def all_finite(x: Tensor) -> bool:
    """True iff every value is finite.  A sum is finite when all terms are (NaN and ±Inf
    propagate), and it reads the data once without a boolean temporary; only if the sum
    is not finite (or overflowed) is the elementwise test run."""
    total = x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(x).all())


def check_temperatures(temperature, num_levels: int) -> list[float]:
    """A positive float, or one positive float per level -> list of floats."""
    if isinstance(temperature, Tensor):
        temperature = temperature.detach().cpu().tolist()
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        temps = [float(temperature)] * num_levels
    elif isinstance(temperature, Sequence) and not isinstance(temperature, (str, bytes)):
        if len(temperature) != num_levels:
            raise ValueError(f"temperature must be one float or one per level ({num_levels}), "
                             f"got {len(temperature)} values")
        temps = []
        for t in temperature:
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise TypeError(f"temperatures must be numbers, got {t!r}")
            temps.append(float(t))
    else:
        raise TypeError(f"temperature must be a positive float or a list of them, got {temperature!r}")
    for k, t in enumerate(temps):
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature of level {k} must be positive and finite, got {t}")
    return temps


def check_duals(duals, h: Hierarchy, batch: int, dtype, device, check_finite: bool = True) -> list[Tensor]:
    """Duals for ``"learned_dual"``: ``L-1`` tensors shaped ``(*shapes[k+1])``, ``(1, …)`` or ``(B, …)``.

    Returns them with a leading batch dimension (1 or B), cast to ``dtype``.
    """
    if duals is None:
        raise ValueError(f"method 'learned_dual' needs duals: a list of {h.num_levels - 1} tensors, "
                         f"duals[k] shaped {h.shapes[1:]} (e.g. LearnedDuals(h)())")
    if isinstance(duals, Tensor) or not isinstance(duals, Sequence):
        raise TypeError(f"duals must be a list of {h.num_levels - 1} tensors, got {type(duals).__name__}")
    if len(duals) != h.num_levels - 1:
        raise ValueError(f"duals must hold one tensor per constraint ({h.num_levels - 1}), got {len(duals)}")
    out = []
    for k, lam in enumerate(duals):
        if not isinstance(lam, Tensor):
            raise TypeError(f"duals[{k}] must be a torch.Tensor, got {type(lam).__name__}")
        if not lam.dtype.is_floating_point:
            raise TypeError(f"duals[{k}] must be a floating tensor, got dtype {lam.dtype}")
        shape = h.shapes[k + 1]
        if tuple(lam.shape) == shape:
            lam = lam.unsqueeze(0)
        if lam.dim() != 1 + len(shape) or tuple(lam.shape[1:]) != shape or lam.shape[0] not in (1, batch):
            raise ValueError(f"duals[{k}] must have shape {shape}, (1, *{shape}) or ({batch}, *{shape}) "
                             f"for constraint {k}, got {tuple(lam.shape)}")
        if lam.device != device:
            raise ValueError(f"duals[{k}] is on {lam.device}, scores on {device}")
        if check_finite and not all_finite(lam):
            raise ValueError(f"duals[{k}] contains NaN or Inf values")
        out.append(lam.to(dtype))
    return out
