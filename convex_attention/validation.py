"""Input checks shared by every entry point: clear errors instead of silent wrong answers."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._ops import compute_dtype, host_list, tensor_values_read_at_once
from .graph import Graph

#: The dtypes scores may have: half precision is computed in float32.
SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_hierarchy(h) -> Graph:
    """``h`` itself when it is a structure (a :class:`~convex_attention.hierarchy.Hierarchy` or any
    :class:`~convex_attention.graph.Graph`), else TypeError."""
    if not isinstance(h, Graph):
        raise TypeError(f"h must be a convex_attention.Hierarchy or Graph, got {type(h).__name__}")
    return h


def _unit(h: Graph) -> str:
    """What the structure's maps are called in messages: levels of a hierarchy, maps of a graph."""
    return h._map_word


def check_scores(scores, h: Graph, check_finite: bool = True, name: str = "scores") -> list[Tensor]:
    """Validate ``scores[k].shape == (B, *h.shapes[k])``; returns the list of tensors.

    ``check_finite`` reads every value once; on CUDA that is one host synchronisation.
    """
    return check_scores_and_peaks(scores, h, check_finite, name)[0]


def check_scores_and_peaks(scores, h: Graph, check_finite: bool = True, name: str = "scores",
                           given=()) -> tuple[list, float | None]:
    """:func:`check_scores`, also returning ``Σ_k max |scores[k]|`` (``None`` without
    ``check_finite``), for :func:`check_duals` to bound the logits ``θ + duals``.

    ``given``: the maps whose probabilities are given (:func:`check_given`): their ``scores``
    entry must be None, every other entry a tensor; the returned list keeps their None."""
    check_flag(check_finite, "check_finite")  # None or 0 would skip the checks, "no" run them: neither is meant
    check_hierarchy(h)
    unit, M = _unit(h), h.num_maps
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence):
        raise TypeError(f"{name} must be a list of {M} tensors (one per {unit}), got {type(scores).__name__}")
    if len(scores) != M:
        structure = "hierarchy" if unit == "level" else "graph"
        raise ValueError(f"{name} must hold one tensor per {unit}: the {structure} has {M} {unit}s, "
                         f"got {len(scores)} tensors")
    if given and all(k in given for k in range(M)):
        raise ValueError(f"every {unit} is given: there is nothing to solve; give scores for at least one")
    out: list = []
    for k, s in enumerate(scores):
        if k in given:
            if s is not None:
                raise ValueError(f"{name}[{k}] must be None: {unit} {k} is given (given={{{k}: probabilities}}), "
                                 f"so it has no scores")
            out.append(None)
            continue
        if s is None and given:
            raise TypeError(f"{name}[{k}] is None but {unit} {k} is not given; give its scores, or its "
                            f"probabilities in given={{{k}: ...}}")
        if not isinstance(s, Tensor):
            raise TypeError(f"{name}[{k}] must be a torch.Tensor, got {type(s).__name__}")
        if s.dtype not in SCORE_DTYPES:  # float8 is floating too, and no kernel here takes it
            raise TypeError(f"{name}[{k}] must be a floating tensor of dtype "
                            f"{', '.join(map(dtype_name, SCORE_DTYPES))}, got dtype {s.dtype}")
        if s.layout != torch.strided:  # a sparse tensor failed deep inside torch (aminmax, softmax, reshape)
            raise TypeError(f"{name}[{k}] must be a dense (strided) tensor, got layout {s.layout}; pass "
                            f"{name}[{k}].to_dense()")
        expected = h.shapes[k]
        if s.dim() != 1 + len(expected) or tuple(s.shape[1:]) != expected:
            raise ValueError(f"{name}[{k}] must have shape (B, {', '.join(map(str, expected))}) "
                             f"for {unit} {k}, got {tuple(s.shape)}")
        out.append(s)
    scored = [(k, s) for k, s in enumerate(out) if s is not None]
    first_k, first = scored[0]
    batch = first.shape[0]
    for k, s in scored:
        if s.shape[0] != batch:
            raise ValueError(f"{name}[{k}] has batch size {s.shape[0]}, {name}[{first_k}] has {batch}")
        if s.dtype != first.dtype:
            raise TypeError(f"{name}[{k}] has dtype {s.dtype}, {name}[{first_k}] has {first.dtype}; use one dtype")
        if s.device != first.device:
            raise ValueError(f"{name}[{k}] is on {s.device}, {name}[{first_k}] on {first.device}")
    if batch == 0:
        raise ValueError(f"{name} have batch size 0")
    if not check_finite:
        return out, None
    # (the methods named are methods.Method.shape_tracing's, which this module sits below: a test
    # in tests/test_solve.py holds the two together)
    if first.is_meta:  # (torch's own error was "Cannot copy out of meta tensor; no data!": ca_rev126)
        raise ValueError(f"{name} are on the meta device: they hold no values, so they cannot be checked; to trace "
                         f"shapes pass check_finite=False (methods that are torch operations: softmax, exact, "
                         f"learned_dual)")
    peaks = score_peaks([s for _, s in scored])
    for (k, s), peak in zip(scored, peaks):
        if not math.isfinite(peak):
            kind = "NaN" if bool(torch.isnan(s).any()) else "Inf"
            raise ValueError(f"{name}[{k}] contains {kind} values; scores must be finite")
    try:
        total = math.fsum(peaks)
    except OverflowError:  # finite peaks whose sum is beyond float64 (scores near 1e308)
        total = math.inf
    limit = score_limit(first.dtype)
    if total > limit:
        raise ValueError(
            f"{name} are too large for {first.dtype}: the largest |score| of each {unit} sums to "
            f"{total:.3g}, above {limit:.3g} (a quarter of the largest {compute_dtype(first.dtype)} "
            f"number; the closed form adds one score per {unit}, and beyond this the sum can overflow); divide "
            f"the scores and the temperature by the same factor (the solution does not change) or compute "
            f"in float64")
    return out, total



def per_sample(x: Tensor, shape: tuple, batch: int | None, name: str, owner: str) -> Tensor:
    """``x`` of shape ``shape``, ``(1, *shape)`` or ``(batch, *shape)`` as ``(1 or batch, *shape)``
    (``batch`` None: any leading size); ValueError naming ``name`` and what it belongs to
    (``owner``) otherwise."""
    if tuple(x.shape) == shape:
        x = x.unsqueeze(0)
    if x.dim() != 1 + len(shape) or tuple(x.shape[1:]) != shape or (batch is not None and x.shape[0] not in (1, batch)):
        raise ValueError(f"{name} must have shape {shape}, (1, *{shape}) or ({'B' if batch is None else batch}, "
                         f"*{shape}) for {owner}, got {tuple(x.shape)}")
    return x


def given_indices(given, h: Graph) -> frozenset:
    """The map indices of ``given`` (a dict) as ints, each checked to be an integer (a NumPy one
    too, as ``Graph.from_edges`` takes) in ``[0, num_maps)`` (a bool is not one: ``True == 1``
    would name map 1); TypeError for anything but a dict."""
    unit, M = _unit(h), h.num_maps
    if not isinstance(given, dict):
        raise TypeError(f"given must be a dict {{{unit} index: probabilities}}, got {type(given).__name__}")
    for k in given:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or not 0 <= int(k) < M:
            raise ValueError(f"given has key {k!r}: a {unit} index in [0, {M}) is needed")
    return frozenset(int(k) for k in given)


#: How far a given map's sum may be off one per sample (then normalised), by its dtype; given
#: maps that hold the same cells may disagree there by as much, relatively, and are made to
#: agree (``dual._work_inputs``); half precision 1e-2.
GIVEN_SUM_TOLERANCE: dict = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def check_given(given, h: Graph, batch: int, dtype: torch.dtype, device, check_finite: bool = True,
                positive: bool = True) -> list:
    """Given probabilities (:func:`convex_attention.solve`'s ``given``): a dict ``{map: q}``
    with ``q`` shaped ``shapes[k]``, ``(1, *shapes[k])`` or ``(B, *shapes[k])``, in the scores'
    dtype and device, strictly positive and summing to one per sample (to 1e-6 in float64,
    1e-4 in float32, 1e-2 in half precision).  Returns one entry per map: the tensor with a
    leading batch dimension, or None.

    A zero is refused: a given map with an empty cell forces every finer cell inside it to
    zero, which the entropy only reaches with infinite duals (mix in a little of the uniform
    map instead).  ``positive`` False: zeros are accepted, negative values refused (a solver
    without duals, such as LinSATNet's projection, fixes those cells to zero)."""
    check_flag(check_finite, "check_finite")  # (solve checks it once; a direct call too)
    unit = _unit(h)
    given_indices(given, h)
    out: list = [None] * h.num_maps
    for k, q in given.items():
        if not isinstance(q, Tensor) or not q.dtype.is_floating_point:
            raise TypeError(f"given[{k}] must be a floating tensor of probabilities, got "
                            f"{type(q).__name__ if not isinstance(q, Tensor) else q.dtype}")
        check_dense_floating(q, f"given[{k}]")  # a sparse one failed inside torch (ca_rev159)
        q = per_sample(q, h.shapes[k], batch, f"given[{k}]", f"{unit} {k}")
        if q.dtype != dtype:
            raise TypeError(f"given[{k}] has dtype {q.dtype}, the scores {dtype}; use one dtype")
        if q.device != device:
            raise ValueError(f"given[{k}] is on {q.device}, the scores on {device}")
        if check_finite:
            flat = q.detach().reshape(q.shape[0], -1).to(torch.float64)
            if not bool(torch.isfinite(flat).all()):
                raise ValueError(f"given[{k}] contains NaN or Inf values")
            if not positive and not bool((flat >= 0).all()):
                raise ValueError(f"given[{k}] has a negative probability: given maps are non-negative")
            if positive and not bool((flat > 0).all()):
                raise ValueError(f"given[{k}] has a zero (or negative) probability: a given {unit} with an empty "
                                 f"cell forces every finer cell inside it to zero, which needs infinite duals; give "
                                 f"strictly positive probabilities (e.g. mix in 1e-6 of the uniform map)")
            err = float((flat.sum(1) - 1).abs().max())
            allowed = GIVEN_SUM_TOLERANCE.get(dtype, 1e-2)
            if err > allowed:
                raise ValueError(f"given[{k}] must sum to one per sample (to {allowed:g} in {dtype_name(dtype)}), "
                                 f"off by {err:.3g}")
        out[k] = q
    return out


def score_limit(dtype: torch.dtype) -> float:
    """The largest accepted ``Σ_k max |scores[k]|`` for scores of ``dtype``: a quarter of
    the largest number of its compute dtype (8.5e37 in float32, 4.5e307 in float64).
    The closed form's upward pass adds one score per level (plus a block log-sum-exp far
    smaller than any score this large), so every running sum and every difference of two
    stays finite below it."""
    return float(torch.finfo(compute_dtype(dtype)).max) / 4


def score_peaks(scores: Sequence[Tensor]) -> list[float]:
    """``max |scores[k]|`` per level (NaN where a level holds NaN, inf where it holds
    ±Inf): one read of every level and one host synchronisation for all of them."""
    peaks = []
    for s in scores:
        low, high = torch.aminmax(s.detach())
        peaks.append(torch.maximum(high, -low).to(torch.float64))
    return host_list(torch.stack(peaks))


def temperature_range(dtype: torch.dtype | None = None) -> tuple[float, float]:
    """The accepted temperatures for scores of ``dtype``: ``(tau_min, total_max)``.

    Every ``τ_k`` must be at least ``tau_min`` and their sum ``τ_0 + … + τ_{L-1}`` (the
    closed form's root temperature) at most ``total_max``.  Both are properties of the
    compute dtype (half precision is computed in float32; ``None``: float64, the widest):

    * ``tau_min`` is the smallest *normal* number of the compute dtype (1.2e-38 in
      float32, 2.2e-308 in float64): below it ``1 / τ`` is not finite, and GPU kernels
      divide by multiplying with the reciprocal, so no arithmetic can help;
    * ``total_max`` is the square root of its largest number (1.8e19 in float32, 1.3e154
      in float64), which keeps ``T · log n`` and ``τ · H(p)`` finite for any size.

    Within this range every method gives finite probabilities, duals and objectives for
    any finite scores within :func:`score_limit` (docs/design.md §1); outside it
    :func:`check_temperatures` refuses.
    """
    info = torch.finfo(compute_dtype(dtype) if dtype is not None else torch.float64)
    return float(info.tiny), math.sqrt(float(info.max))


def check_dense_floating(t: Tensor, name: str) -> None:
    """TypeError naming ``name`` unless ``t`` is a dense tensor of one of :data:`SCORE_DTYPES`
    (float8 is floating too, and no kernel here takes it; a sparse one fails deep in torch)."""
    if t.dtype not in SCORE_DTYPES or t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense floating tensor of dtype {', '.join(map(dtype_name, SCORE_DTYPES))}, "
                        f"got dtype {t.dtype} ({t.layout})")


def check_flag(value, name: str, hint: str = "") -> bool:
    """``value``, a bool; TypeError naming ``name`` for anything else (read as a truth value, the
    string "False" is True and None is False: a flag asked for by one value and taken as another)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}{f' ({hint})' if hint else ''}")
    return value


def has_tangent(t) -> bool:
    """Whether ``t`` is a tensor carrying a forward-mode tangent (``torch.autograd.forward_ad``,
    ``torch.func.jvp``)."""
    return isinstance(t, Tensor) and torch.autograd.forward_ad.unpack_dual(t).tangent is not None


def is_grad_temperature(temperature) -> bool:
    """True iff ``temperature`` is a tensor that gradients will flow into (now): one that
    requires grad (with grad mode on), or one that carries a forward-mode tangent
    (``torch.func.jvp``, ``torch.autograd.forward_ad``), which read as a float was dropped."""
    if not isinstance(temperature, Tensor):
        return False
    if temperature.requires_grad and torch.is_grad_enabled():
        return True
    return has_tangent(temperature)


def check_temperatures(temperature, num_levels: int, dtype: torch.dtype | None = None,
                       allow_grad: bool = False, method: str | None = None, unit: str = "level",
                       unused: frozenset = frozenset(), grad_refusal: str | None = None,
                       scores_device: torch.device | None = None) -> list:
    """Validate temperatures: one per level (per map of a graph: ``unit="map"``), never one per sample.

    Accepted: a positive real number of any type (Python ``int``/``float``, numpy's
    ``float64``, ``float32``, ``float16``, integers; not ``bool``), a sequence of
    ``num_levels`` of them (or of 0-d real tensors), a numpy array of shape ``()`` or
    ``(num_levels,)``, or a real tensor of shape ``()`` (shared by the levels) or
    ``(num_levels,)`` (one per level); any other shape is refused (a ``(B,)`` tensor is not
    per-sample temperatures).  A value is used as ``float(value)``, so ``np.float32(0.7)``
    gives the answer of the Python float ``float(np.float32(0.7))``.  The values must lie
    in :func:`temperature_range` of ``dtype``, but for the maps in ``unused`` (given maps,
    whose temperature is not used), which need only be positive and finite.

    Returns a list of ``num_levels`` floats; but a tensor that requires grad (with grad
    mode on) gives 0-d tensors in the list (views of it, so gradients flow back) when
    ``allow_grad``, and a TypeError naming ``method`` otherwise (or saying ``grad_refusal``, for
    an owner that is not a method).  A tensor on the meta device holds no value to check: it is
    returned as it is (:func:`_check_meta_allowed`; ``scores_device``: the scores' device, where
    known: a meta temperature beside scores with values is refused).
    """
    temperature = _from_numpy(temperature, num_levels, unit)
    grad = is_grad_temperature(temperature)
    if isinstance(temperature, Tensor):
        if not (temperature.dtype.is_floating_point or temperature.dtype in _INT_DTYPES):
            raise TypeError(f"temperature must be a real tensor, got dtype {temperature.dtype}")
        if temperature.dim() > 1 or (temperature.dim() == 1 and temperature.shape[0] != num_levels):
            raise ValueError(
                f"temperature tensor must have shape () (one for every {unit}) or ({num_levels},) (one per "
                f"{unit}), got {tuple(temperature.shape)}; temperatures are per {unit}, never per sample")
        if temperature.is_meta:  # no value to check or read: its views, as for a learned one
            _check_meta_allowed(allow_grad, scores_device)
            return [temperature] * num_levels if temperature.dim() == 0 else [temperature[k] for k in range(num_levels)]
        if grad and not allow_grad:
            if grad_refusal is not None:
                raise TypeError(grad_refusal)
            _refuse_grad_temperature(method, "a float or a tensor that does not require grad "
                                             "(temperature.detach())")
        values = host_list(temperature.detach().cpu())
        temps = _check_temperature_values(values if isinstance(values, list) else float(values), num_levels, dtype,
                                          unit, unused)
        if not grad:
            return temps
        temperature = _promoted(temperature, dtype)
        if temperature.dim() == 0:
            return [temperature] * num_levels
        return [temperature[k] for k in range(num_levels)]
    if isinstance(temperature, Sequence) and not isinstance(temperature, (str, bytes)) \
            and any(isinstance(t, Tensor) for t in temperature):
        # one 0-d tensor (or number) per level, e.g. one learnable temperature per level
        for k, t in enumerate(temperature):
            if not isinstance(t, Tensor):
                continue
            if not (t.dtype.is_floating_point or t.dtype in _INT_DTYPES):  # as a whole tensor is checked
                raise TypeError(f"temperature[{k}] must be a number or a 0-d real tensor, got dtype {t.dtype}")
            if t.dim() != 0:
                raise ValueError(f"temperature[{k}] must be a number or a 0-d real tensor (one temperature per "
                                 f"{unit}), got a tensor of shape {tuple(t.shape)}")
        meta = [t.is_meta if isinstance(t, Tensor) else False for t in temperature]
        if any(meta):
            _check_meta_allowed(allow_grad, scores_device)
        # a meta tensor's value checked as a placeholder, the others as ever (a float of -1 beside one had
        # been taken unchecked: ca_rev168); the meta tensor itself is returned
        values = tensor_values_read_at_once([1.0 if m else t for t, m in zip(temperature, meta)])
        temps = _check_temperature_values(values, num_levels, dtype, unit, unused)
        temps = [t if m else v for t, v, m in zip(temperature, temps, meta)]
        grads = [is_grad_temperature(t) and not m for t, m in zip(temperature, meta)]
        if not any(grads):
            return temps
        if not allow_grad:
            if grad_refusal is not None:
                raise TypeError(grad_refusal)
            _refuse_grad_temperature(method, "floats or tensors that do not require grad")
        # one tensor given for several maps stays one tensor (promoted once): its maps share it,
        # and method 'dual' judges their temperature gradients summed, as the user receives them
        # (promoted per map, they were four tensors and judged one by one: ca_rev97)
        promoted: dict[int, Tensor] = {}
        for t, g in zip(temperature, grads):
            if g and id(t) not in promoted:
                promoted[id(t)] = _promoted(t, dtype)
        return [promoted[id(t)] if g else v for t, g, v in zip(temperature, grads, temps)]
    return _check_temperature_values(temperature, num_levels, dtype, unit, unused)


def _check_meta_allowed(allow_grad: bool, scores_device: torch.device | None) -> None:
    """ValueError where a temperature on the meta device (a model built under ``torch.device("meta")``
    for deferred initialisation, or moved there to trace shapes) may not stand: beside scores that
    hold values, or where floats are needed (``allow_grad`` False).  Elsewhere it holds no value to
    check or read, and the solvers read a placeholder (:func:`convex_attention._ops.temperature_floats`),
    which only shapes reach (torch's own error, from a read deep inside, had said "Cannot copy out
    of meta tensor": ca_rev164)."""
    if scores_device is not None and scores_device.type != "meta":
        raise ValueError(f"temperature is on the meta device, which holds no values, and the scores on "
                         f"{scores_device}: move the temperature (the module) to the scores' device")
    if not allow_grad:
        raise ValueError("temperature is on the meta device, which holds no values to check: give floats, or a "
                         "tensor with values")


def _promoted(temperature: Tensor, dtype: torch.dtype | None) -> Tensor:
    """A temperature that gradients flow into, at least in the scores' compute dtype (the cast
    keeps the gradient): a float16 temperature did exact's dual arithmetic in float16 (duals
    1.3e-3 off; NaN where the sum passed 65504).  Raised, never lowered: a float64 temperature
    beside float32 scores stays float64."""
    return temperature if dtype is None else temperature.to(torch.promote_types(temperature.dtype,
                                                                                compute_dtype(dtype)))


def _from_numpy(temperature, num_levels: int, unit: str):
    """A numpy array of real numbers, of shape ``()`` or ``(num_levels,)``, as a float or a
    list of floats (the values unchanged: ``np.float32(0.7)`` gives ``float(np.float32(0.7))``);
    anything else is returned as it is."""
    if not isinstance(temperature, np.ndarray):
        return temperature
    if temperature.dtype.kind not in "fiu":
        raise TypeError(f"temperature must hold real numbers, got a numpy array of dtype {temperature.dtype}")
    if temperature.ndim > 1 or (temperature.ndim == 1 and temperature.shape[0] != num_levels):
        raise ValueError(
            f"temperature array must have shape () (one for every {unit}) or ({num_levels},) (one per "
            f"{unit}), got {temperature.shape}; temperatures are per {unit}, never per sample")
    return float(temperature) if temperature.ndim == 0 else [float(t) for t in temperature]


def _is_real(value) -> bool:
    """A real number of any type (Python, numpy: ``np.float16`` included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _refuse_grad_temperature(method: str | None, instead: str):
    who = f"method {method!r}" if method else "this method"
    raise TypeError(f"{who} cannot differentiate through the temperature: pass {instead}; 'softmax', 'exact', "
                    f"'dual' and 'learned_dual' differentiate through a tensor temperature")


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_float(value) -> float:
    """``float(value)``; an integer beyond the float range is infinite (refused as too large),
    never an OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check_temperature_values(temperature, num_levels: int, dtype, unit: str = "level",
                              unused: frozenset = frozenset()) -> list[float]:
    if _is_real(temperature):
        temps = [_as_float(temperature)] * num_levels
    elif isinstance(temperature, Sequence) and not isinstance(temperature, (str, bytes)):
        if len(temperature) != num_levels:
            raise ValueError(f"temperature must be one float or one per {unit} ({num_levels}), "
                             f"got {len(temperature)} values")
        temps = []
        for t in temperature:
            if not _is_real(t):
                raise TypeError(f"temperatures must be real numbers, got {t!r}")
            temps.append(_as_float(t))
    else:
        raise TypeError(f"temperature must be a positive float, a list of them (one per {unit}) or a tensor of "
                        f"shape () or ({num_levels},), got {temperature!r}")
    given = [temperature] * num_levels if _is_real(temperature) else list(temperature)
    for k, t in enumerate(temps):
        if not math.isfinite(t) or t <= 0:
            # an integer such as 10**400 is finite but beyond float64: say so, not "got inf"
            if math.isinf(t) and isinstance(given[k], int):
                digits = int(abs(given[k]).bit_length() * math.log10(2))
                shown = f"an integer of about {'-' if given[k] < 0 else ''}10^{digits}, beyond float64's range"
            else:
                shown = str(t)
            raise ValueError(f"temperature of {unit} {k} must be positive and finite, got {shown}")
    low, high = temperature_range(dtype)
    work = compute_dtype(dtype) if dtype is not None else torch.float64
    for k, t in enumerate(temps):
        if t < low and k not in unused:
            raise ValueError(f"temperature of {unit} {k} is {t:g}, below the smallest accepted for {dtype_name(work)} "
                             f"computation ({low:.3g}, where 1/τ stops being finite); use a larger temperature"
                             + ("" if work == torch.float64 else " or float64 scores"))
    try:
        # a given map's temperature is not used: neither its range nor the sum's (a review: an unused
        # 1e200 read "every map is uniform")
        total = math.fsum(t for k, t in enumerate(temps) if k not in unused)
    except OverflowError:  # finite values whose sum exceeds the float range: above any accepted range
        total = math.inf
    if total > high:
        raise ValueError(f"the temperatures sum to {total:g}, above the largest accepted for {dtype_name(work)} "
                         f"computation ({high:.3g}); at such temperatures every {unit} is uniform to "
                         f"{dtype_name(work)} precision: use smaller temperatures"
                         + ("" if work == torch.float64 else " or float64 scores"))
    return temps


def check_duals(duals, h: Graph, batch: int, dtype, device, check_finite: bool = True,
                score_peak_sum: float | None = None) -> list[Tensor]:
    """Duals for ``"learned_dual"``: one tensor per edge ``e``, shaped like its coarse map,
    ``(*shapes[coarse(e)])``, ``(1, …)`` or ``(B, …)`` (on a hierarchy: ``L-1`` tensors, ``duals[k]``
    shaped like level ``k+1``).

    Returns them with a leading batch dimension (1 or B), cast to ``dtype``.  With
    ``check_finite`` they must be finite and, given the scores' ``score_peak_sum``
    (:func:`check_scores_and_peaks`), the logits ``θ_k + Σ_{e into k} λ_e − Σ_{e out of k} P_eᵀ λ_e``
    must stay within :func:`score_limit`: ``score_peak_sum + 2 Σ_e max |λ_e|`` (each dual
    enters two maps) at most the limit.
    """
    check_flag(check_finite, "check_finite")  # (solve checks it once; a direct call too)
    E = h.num_edges
    coarse_shapes = [h.shapes[b] for _, b in h.edges]
    if duals is None:
        raise ValueError(f"method 'learned_dual' needs duals: a list of {E} tensors, one per constraint, "
                         f"duals[e] shaped {coarse_shapes} (e.g. LearnedDuals(h)())")
    if isinstance(duals, Tensor) or not isinstance(duals, Sequence):
        raise TypeError(f"duals must be a list of {E} tensors, got {type(duals).__name__}")
    if len(duals) != E:
        raise ValueError(f"duals must hold one tensor per constraint ({E}), got {len(duals)}")
    out = []
    for k, lam in enumerate(duals):
        if not isinstance(lam, Tensor):
            raise TypeError(f"duals[{k}] must be a torch.Tensor, got {type(lam).__name__}")
        check_dense_floating(lam, f"duals[{k}]")
        lam = per_sample(lam, coarse_shapes[k], batch, f"duals[{k}]", f"constraint {k}")
        if lam.device != device:
            raise ValueError(f"duals[{k}] is on {lam.device}, scores on {device}")
        out.append(lam)
    if check_finite:
        peaks = score_peaks(out)
        for k, peak in enumerate(peaks):
            if not math.isfinite(peak):
                raise ValueError(f"duals[{k}] contains NaN or Inf values")
        limit = score_limit(dtype)
        reach = None if score_peak_sum is None else score_peak_sum + 2 * math.fsum(peaks)
        if reach is not None and reach > limit:
            raise ValueError(
                f"scores and duals are too large for {dtype}: the logits θ_k + Σ λ_(into k) − Σ Pᵀ λ_(out of k) "
                f"can reach {reach:.3g}, above {limit:.3g} (a quarter of the largest "
                f"{dtype} number); divide the scores, the duals and the temperature by the same factor (the "
                f"solution does not change) or compute in float64")
    return [lam.to(dtype) for lam in out]


def active_transforms() -> set[str]:
    """The torch.func transforms the current call runs under: a subset of ``{"vmap", "grad",
    "jvp", "functionalize"}`` (empty outside any).  Read from functorch's interpreter stack
    (a private interface; where it is missing, the empty set, and torch's own errors stand)."""
    try:
        stack = torch._C._functorch.get_interpreter_stack()
    except AttributeError:  # pragma: no cover - a torch without the interface
        return set()
    return {str(i.key()).rsplit(".", 1)[-1].lower() for i in (stack or [])}


def check_transforms(who: str, differentiable_by_func: bool) -> None:
    """NotImplementedError, before any work, when ``who`` runs under a torch.func transform it
    does not support: ``vmap`` never (the input checks read values and the solvers stop per
    sample; the batch is the scores' first dimension), ``grad``/``jacrev``/``jvp`` unless
    ``differentiable_by_func`` (plain torch operations; the autograd Functions of the other
    methods have no functorch rules)."""
    active = active_transforms()
    if "vmap" in active:
        raise NotImplementedError(
            f"{who} does not support torch.func.vmap (nor jacfwd or hessian, which use it): its input checks read "
            f"the values and its solvers stop per sample; the scores' first dimension is already the batch, so "
            f"pass the whole batch in one call")
    if active and not differentiable_by_func:
        raise NotImplementedError(
            f"{who} does not support torch.func transforms (grad, jacrev, jvp, ...): its autograd.Function has no "
            f"functorch rules; differentiate with torch.autograd.grad or torch.autograd.functional.jacobian "
            f"(methods 'softmax' and 'learned_dual' are plain torch operations, which torch.func.grad and jacrev "
            f"differentiate)")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"``: a dtype as messages name it."""
    return str(dtype).replace("torch.", "")
