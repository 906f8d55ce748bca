"""Small tensor operations every solver shares (one home each)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_dims", "centre", "less_max", "compute_dtype", "upcast", "level_softmax", "divide_by_temperature",
           "GRADIENT_RTOL", "gradient_rtol"]


def sample_dims(x: Tensor) -> tuple[int, ...]:
    """Every dimension but the batch dimension."""
    return tuple(range(1, x.dim()))


def centre(x: Tensor) -> Tensor:
    """Remove the per-sample mean (the gauge of a dual variable)."""
    return x - x.mean(sample_dims(x), keepdim=True)


def less_max(x: Tensor) -> Tensor:
    """``x`` less its per-sample maximum (detached): a constant per map, which moves no softmax
    and no centred dual, taken off by an exact subtraction before ``x`` meets other terms."""
    return x - x.detach().amax(sample_dims(x), keepdim=True)


#: How accurate a derivative the package returns must be, relative to its own size, by working
#: dtype (the implicit backward's refinement, exact's second order); others are held to float32's.
GRADIENT_RTOL = {torch.float64: 1e-6, torch.float32: 1e-3}


def gradient_rtol(dtype: torch.dtype) -> float:
    """:data:`GRADIENT_RTOL` of ``dtype`` (float32's for any other)."""
    return GRADIENT_RTOL.get(dtype, GRADIENT_RTOL[torch.float32])


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is computed in float32 (and returned in the input dtype)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(x: Tensor) -> Tensor:
    """``x`` in its compute dtype (half precision promoted to float32)."""
    return x.to(compute_dtype(x.dtype))


class _DivideByTemperature(torch.autograd.Function):
    """``x / τ`` for a 0-d tensor ``τ`` whose τ-derivative never forms ``x / τ²``: at tiny
    temperatures that product overflows to ±inf, and the zero weight a softmax gives an
    underflowed cell then made the temperature's gradient NaN (0·inf).  Here each cell's
    share is ``grad · (x/τ)``, 0 where the incoming gradient is 0, summed, then divided by τ.
    The backward is written in differentiable operations (second order works)."""

    generate_vmap_rule = True  # torch.func transforms (its forward is one division)

    @staticmethod
    def forward(x: Tensor, tau: Tensor) -> Tensor:
        return x / tau

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # the form torch.func's transforms need
        ctx.save_for_backward(output, inputs[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, tau = ctx.saved_tensors
        grad_x = grad / tau if ctx.needs_input_grad[0] else None
        grad_tau = None
        if ctx.needs_input_grad[1]:
            # (a Python 0, not a 0-d CPU tensor: on CUDA that would be a synchronising copy)
            share = torch.where(grad == 0, 0.0, grad * out)
            grad_tau = (-(share.sum() / tau)).reshape(tau.shape).to(tau.dtype)
        return grad_x, grad_tau


def divide_by_temperature(x: Tensor, tau) -> Tensor:
    """``x / tau``; for a tensor ``tau`` that requires grad, with a temperature gradient that
    stays finite where ``x / τ²`` would overflow (:class:`_DivideByTemperature`)."""
    if isinstance(tau, Tensor) and tau.requires_grad and torch.is_grad_enabled():
        return _DivideByTemperature.apply(x, tau)
    return x / tau


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
        flat = divide_by_temperature(shifted, tau) if isinstance(tau, Tensor) else shifted.div_(tau)
    elif tau != 1.0:
        flat = flat / tau
    out = torch.log_softmax(flat, dim=1) if log else torch.softmax(flat, dim=1)
    return out.view(x.shape).to(x.dtype)


def named(rows: list[int], names=None) -> list[int]:
    """``rows`` as the caller numbers them: ``names[i]`` for row ``i`` (a sub-batch solved again
    for some samples only), or the rows themselves (``names`` None)."""
    return rows if names is None else [int(names[i]) for i in rows]
