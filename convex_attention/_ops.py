"""Small tensor operations every solver shares (one home each)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_dims", "centre", "compute_dtype", "upcast", "level_softmax"]


def sample_dims(x: Tensor) -> tuple[int, ...]:
    """Every dimension but the batch dimension."""
    return tuple(range(1, x.dim()))


def centre(x: Tensor) -> Tensor:
    """Remove the per-sample mean (the gauge of a dual variable)."""
    return x - x.mean(sample_dims(x), keepdim=True)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is computed in float32 (and returned in the input dtype)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(x: Tensor) -> Tensor:
    """``x`` in its compute dtype (half precision promoted to float32)."""
    return x.to(compute_dtype(x.dtype))


def level_softmax(x: Tensor, tau, log: bool = False) -> Tensor:
    """Softmax (or log-softmax) of ``x / tau`` over all cells of one level, per sample.

    ``x``: ``(B, *shape)``; ``tau``: a positive float or a 0-d tensor (differentiated
    through when it requires grad).  Half precision is computed in float32 and returned in
    the input dtype, so ±1e4 scores at small ``tau`` cannot overflow.  For ``tau < 1`` (or
    a tensor) the per-sample maximum is subtracted *before* dividing, so ``x / tau``
    cannot overflow to ±inf either: the result is finite for every temperature that
    ``validation.temperature_range`` accepts.
    """
    flat = upcast(x).flatten(1)
    if isinstance(tau, Tensor) or tau < 1.0:
        # the shift does not change the softmax, so it needs no gradient
        shifted = torch.sub(flat, flat.detach().amax(1, keepdim=True))
        flat = shifted.div(tau) if isinstance(tau, Tensor) else shifted.div_(tau)
    elif tau != 1.0:
        flat = flat / tau
    out = torch.log_softmax(flat, dim=1) if log else torch.softmax(flat, dim=1)
    return out.view(x.shape).to(x.dtype)
