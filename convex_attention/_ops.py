"""Small tensor operations every solver shares (one home each)."""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["sample_dims", "centre", "less_max", "compute_dtype", "upcast", "level_softmax", "divide_by_temperature",
           "GRADIENT_RTOL", "gradient_rtol", "second_order_temperature_floor", "overflowed", "SecondOrderGuard",
           "FirstOrderOnly", "guard_below_floor", "temperature_floats", "tensor_values_read_at_once", "host_list",
           "log_at_least_one"]


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
        # (saved, not kept as attributes: output -> grad_fn -> ctx -> output was a reference cycle,
        # freed by the collector alone: ca_rev124)
        ctx.save_for_forward(output, inputs[1])

    @staticmethod
    def jvp(ctx, x_tangent, tau_tangent):
        """Forward mode, ``d(x/τ) = (dx − (x/τ)·dτ) / τ`` (it had none: a tangent through a
        learned temperature raised NotImplementedError, ca_rev123)."""
        out, tau = ctx.saved_tensors
        tangent = torch.zeros_like(out) if x_tangent is None else x_tangent / tau
        if tau_tangent is not None:
            tangent = tangent - out * (tau_tangent / tau)
        return tangent

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
        if not log and isinstance(tau, Tensor) and torch.autograd.forward_ad.unpack_dual(tau).tangent is not None:
            # forward mode along a temperature: a cell whose probability underflows to exactly 0
            # passes no tangent (its derivative is 0); its tangent x·dτ/τ² overflows at small τ,
            # and softmax's rule multiplied it by that 0: NaN where reverse mode is finite (ca_rev124)
            gone = flat.detach() < math.log(torch.finfo(flat.dtype).tiny * torch.finfo(flat.dtype).eps)
            flat = torch.where(gone, flat.detach(), flat)
    elif tau != 1.0:
        flat = flat / tau
    out = torch.log_softmax(flat, dim=1) if log else torch.softmax(flat, dim=1)
    return out.view(x.shape).to(x.dtype)


def named(rows: list[int], names=None) -> list[int]:
    """``rows`` as the caller numbers them: ``names[i]`` for row ``i`` (a sub-batch solved again
    for some samples only), or the rows themselves (``names`` None)."""
    return rows if names is None else [int(names[i]) for i in rows]


def temperature_floats(temps) -> list[float]:
    """The temperatures' values as floats, detached: ``temps`` floats, 0-d tensors, or one
    ``(M,)`` tensor (the one home of this conversion, which five sites wrote out)."""
    # a meta temperature holds no value: 1.0 stands in, which only shapes reach (the checks refuse
    # one beside scores with values: validation._check_meta_allowed)
    if isinstance(temps, Tensor):
        return [1.0] * temps.numel() if temps.is_meta else [float(t) for t in temps.detach().reshape(-1).tolist()]
    return [float(t) for t in tensor_values_read_at_once([1.0 if isinstance(t, Tensor) and t.is_meta else t
                                                          for t in temps])]


def log_at_least_one(sums: Tensor) -> Tensor:
    """``log(max(sums, 1))``, with the gradient of ``log(sums)`` where a sum is exactly 1.  A block's
    sum of ``exp((x − blockmax) / t)`` is at least 1 (its maximum's term) unless the block is wholly
    masked; the floor keeps such a block's log finite.  Floored by ``where``, not ``clamp_min``:
    from torch 2.14.1 ``clamp_min`` passes no gradient at its bound, and a block whose other cells
    underflow sums to exactly 1, so its scores' gradient came back 0 (ca_rev240)."""
    return torch.where(sums < 1.0, 1.0, sums).log()


def host_list(t: Tensor):
    """``t.tolist()``, also for a tensor that ``torch.func`` wraps (``grad``, ``jvp``), whose
    ``.tolist()`` raises "Cannot access data pointer" on torch 2.3 to 2.7.1 at least (measured on
    2.3.1, 2.6.0 and 2.7.1; 2.13.0 reads it: ca_rev237); such a tensor (0-d or 1-d: the values the
    checks read) is read element by element there, any other in one read."""
    if t.dim() <= 1 and torch._C._functorch.is_functorch_wrapped_tensor(t):
        return t.item() if t.dim() == 0 else [v.item() for v in t]
    return t.tolist()


def tensor_values_read_at_once(values) -> list:
    """``values`` (numbers and 0-d tensors) with each tensor read as a float, in one host read
    where the tensors share a device and are all floating or all integer, in their promoted
    dtype, which holds each one's value exactly (MPS has no float64): one synchronisation on
    CUDA, not one per map (ca_rev131, ca_rev133).  The numbers are left as given (for checks of
    their own)."""
    tensors = [t.detach().reshape(()) for t in values if isinstance(t, Tensor)]
    # integers beside floats promote to the float dtype, which need not hold them (int64 with float16
    # read 2049 as 2048, 70000 as inf: ca_rev159): those are read one by one
    mixed = len({t.dtype.is_floating_point for t in tensors}) > 1
    if len({t.device for t in tensors}) == 1 and not mixed:
        common = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
        # (host_list: under a torch.func transform on torch 2.7.1 the stack is a wrapped tensor, and
        # .tolist() raised "Cannot access data pointer" for a list of 0-d temperatures: ca_rev242)
        read = iter(host_list(torch.stack([t.to(common) for t in tensors])))
        return [float(next(read)) if isinstance(t, Tensor) else t for t in values]
    return [float(t.detach()) if isinstance(t, Tensor) else t for t in values]


# ------------------------------------------------------------------ second-order guards
def second_order_temperature_floor(dtype: torch.dtype) -> float:
    """The smallest temperature at which a second derivative cannot overflow ``dtype``:
    ``1/sqrt(max)`` (5.4e-20 in float32, 7.5e-155 in float64), since second derivatives in the
    scores or a temperature pass through ``1/τ²``.  Below it a second derivative that overflows
    raises (:func:`guard_below_floor`); first derivatives are right at every accepted τ."""
    return torch.finfo(dtype).max ** -0.5


def overflowed(who: str, coldest: float, dtype: torch.dtype, grad: Tensor) -> str | None:
    """Why a second derivative ``grad`` at temperature ``coldest`` (below ``dtype``'s
    :func:`second_order_temperature_floor`) is refused: it overflowed (None where it is finite)."""
    if bool(torch.isfinite(grad).all()):
        return None
    floor = second_order_temperature_floor(dtype)
    return (f"{who}: a second derivative overflowed at temperature {coldest:.3g}, below {floor:.2g}, where "
            f"{dtype} cannot hold 1/τ²; multiply the scores and every temperature by one factor (the solution "
            f"is unchanged)" + (" or compute in float64" if dtype != torch.float64 else ""))


def _refuse_if(refusal, x: Tensor) -> None:
    """``FloatingPointError(refusal(x))`` where ``refusal`` gives a reason (None: none)."""
    reason = refusal(x)
    if reason is not None:
        raise FloatingPointError(reason)


def _identity(x: Tensor, refusal) -> Tensor:
    """The forward of the guards below: ``x`` (a view), whatever ``refusal``."""
    return x.view_as(x)


def _keep_refusal(ctx, inputs, output) -> None:
    """The guards' context (set apart from the forward, as torch.func asks): the refusal."""
    ctx.refusal = inputs[1]


class SecondOrderGuard(torch.autograd.Function):
    """Identity whose backward refuses a derivative that would be silently wrong, with
    ``FloatingPointError(refusal(grad))`` where ``refusal`` gives a reason (None: none): placed on
    the inputs of a second-order path (exact's differentiable backward) or on a first
    derivative (:class:`FirstOrderOnly`).  Forward mode refuses the same way."""

    generate_vmap_rule = True
    forward = staticmethod(_identity)
    setup_context = staticmethod(_keep_refusal)

    @staticmethod
    def backward(ctx, grad: Tensor):
        _refuse_if(ctx.refusal, grad)
        return grad, None

    @staticmethod
    def jvp(ctx, x_t: Tensor, refusal_t):
        _refuse_if(ctx.refusal, x_t)
        return x_t


def _judges_values(refusal) -> bool:
    """Whether ``refusal`` refuses by the value it is given (:func:`overflowed`: only a
    non-finite one), so that it can judge every derivative that reaches an input."""
    return getattr(refusal, "func", None) is overflowed


class FirstOrderOnly(torch.autograd.Function):
    """Identity for an input of a path that autograd differentiates by itself, whose first
    derivative is right and whose second may not be: where a backward builds a graph
    (``create_graph=True``) the gradient it passes on goes behind :class:`SecondOrderGuard`, so
    a derivative of it raises ``FloatingPointError(refusal)``; and with a refusal that judges
    values (:func:`overflowed`), a later derivative reaching this input along another path is
    judged too (a tensor temperature's second derivative of the dual objective below the floor
    came back NaN: a review).  Written for torch.func as well (first derivatives by ``jacrev``,
    ``jacfwd`` and ``vmap`` must work: a review): forward mode passes the tangent on behind the
    same guard."""

    generate_vmap_rule = True
    forward = staticmethod(_identity)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep_refusal(ctx, inputs, output)
        ctx.built_second_order = False

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():
            ctx.built_second_order = True
            return SecondOrderGuard.apply(grad, ctx.refusal), None
        if ctx.built_second_order and _judges_values(ctx.refusal):
            _refuse_if(ctx.refusal, grad)
        return grad, None

    @staticmethod
    def jvp(ctx, x_t: Tensor, refusal_t):
        return SecondOrderGuard.apply(x_t, ctx.refusal)


def guard_below_floor(tensors: list, temps, dtype: torch.dtype, who: str, guard=FirstOrderOnly) -> list:
    """``tensors`` (None kept) behind ``guard`` with the :func:`overflowed` refusal where the
    coldest of ``temps`` (floats or tensors) is below :func:`second_order_temperature_floor` of
    ``dtype``; unchanged otherwise."""
    coldest = min(temperature_floats(temps))
    if not coldest < second_order_temperature_floor(dtype):
        return list(tensors)
    refusal = functools.partial(overflowed, who, coldest, dtype)
    return [None if t is None else guard.apply(t, refusal) for t in tensors]
