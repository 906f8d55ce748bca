r"""``solve()``: one dispatch point over the methods, and the ``Solution`` it returns.

Problem (docs/design.md §1), for every sample of the batch, on a structure ``h`` with maps
``k`` and edges ``e = (a → b)`` (a :class:`~convex_attention.hierarchy.Hierarchy`: the chain
``P_k p_k = p_{k+1}``; any :class:`~convex_attention.graph.Graph`)::

    maximise   Σ_k <θ_k, p_k> + τ_k H(p_k)
    subject to p_k ∈ Δ_{n_k},   P_e p_a = p_b    for every edge e = (a → b)

Methods (and the structures they solve, ``Method.structures``):

========================  ===============================================================
``"softmax"``             every map on its own, ``p_k = softmax(θ_k / τ_k)`` (no consistency)
``"exact"``               the closed form of §3 on forests (chains, stars); analytic backward
``"cvxpylayers"``         the CVXPY problem inside a ``CvxpyLayer`` (CPU, float64; slow); any graph
``"dual"``                per-sample minimisation of the dual ``g(λ)`` to ``tol``; any graph
``"learned_dual"``        the reparameterisation ``p(λ)`` at given ``duals``; any graph
========================  ===============================================================

Temperatures are per map (per level), never per sample: a positive float, one per map, or a
tensor of shape ``()`` or ``(M,)``.  A tensor that requires grad is differentiated through by
the methods whose registry record says ``tensor_temperature`` (softmax, exact, dual,
learned_dual); the others refuse it.  The accepted range depends on the compute dtype
(``validation.temperature_range``: every ``τ_k`` at least the smallest normal number,
``Σ_k τ_k`` at most the square root of the largest; float32: [1.2e-38, 1.8e19]); within it
every method returns finite probabilities, duals and objectives for finite scores whose
per-level largest magnitudes sum to at most ``validation.score_limit`` (a quarter of the
dtype's largest number; larger scores are refused with the fix: rescale scores and
temperatures together, or compute in float64).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import metrics
from ._ops import compute_dtype, guard_below_floor, upcast
from .dual import consistency_loss_unchecked, with_implied_masks
from .graph import Graph
from .methods import METHODS, REGISTRY, get_method
from .validation import (
    check_duals,
    check_flag,
    check_given,
    check_hierarchy,
    check_scores_and_peaks,
    check_temperatures,
    check_transforms,
    given_indices,
    has_tangent,
)

__all__ = ["solve", "Solution", "StaleSolution", "consistency_loss", "METHODS"]

class StaleSolution(RuntimeError):
    """A lazily computed field of a :class:`Solution` was read after an input of its solve
    was modified in place."""


def _tensors_in(obj) -> list[Tensor]:
    """The tensors in nested lists, tuples and ``functools.partial`` arguments."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, functools.partial):
        return _tensors_in(obj.args) + _tensors_in(tuple(obj.keywords.values()))
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors_in(x)]
    return []


def _storage_of(t: Tensor):
    """Which storage holds ``t``'s values, and where in it (None where it has none: meta, sparse):
    the storage object itself, not its address, which ``share_memory_()`` moves with the values
    (a Solution had turned stale: ca_rev192)."""
    try:
        return t.untyped_storage()._cdata, t.storage_offset()
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


class Solution:
    """The result of :func:`solve`.

    Attributes:
        probs: list of ``M`` tensors ``(B, *h.shapes[k])``, each summing to one per sample.
        duals: list of ``E`` tensors, one per edge ``e = (a → b)``, ``(B, *h.shapes[b])``
            (on a hierarchy ``L-1`` tensors ``(B, *h.shapes[k+1])``), mean-zero per sample
            (``None`` for ``"softmax"``), in the compute dtype (float32 for half-precision
            scores, whose range duals can exceed; otherwise the scores' dtype).
        violation: ``(B,)``, ``max_e ‖P_e p_a − p_b‖₁``.
        objective: ``(B,)``, ``Σ_k <θ_k, p_k> + τ_k H(p_k)`` at ``probs``.
        dual_objective: ``(B,)``, ``g(λ)`` at ``duals`` (``None`` for ``"softmax"``).
        method: the method's name.
        temperature: ``M`` floats, or ``M`` 0-d tensors when a temperature that requires
            grad was differentiated through (then ``objective`` and ``dual_objective``
            are differentiable in it too).
        info: the solver's report, empty for ``"softmax"``, ``"exact"`` and
            ``"learned_dual"``; ``"dual"``: ``iterations`` ``(B,)`` (sweeps per sample),
            ``converged`` ``(B,)``, ``violation`` ``(B,)``, ``gap`` ``(B,)`` (the relative
            duality gap it certifies, ``|g(λ) − f(p(λ))| / max(1, |f̄(p(λ))|)``, ``f̄`` the
            objective of the scores centred per map), ``returned_violation`` ``(B,)`` (of the
            maps as returned, measured in float64), ``newton_steps`` ``(B,)`` (Newton
            candidates taken) and, if asked, ``history``;
            ``"cvxpylayers"``: ``backend`` (its name), ``eps``, ``accept_tol`` and
            ``solver_options`` (the options as given).
        given: the maps whose probabilities were given (a tuple of map indices, empty when none).

    ``violation``, ``objective`` and ``dual_objective``, and the ``duals`` of ``exact`` and
    ``learned_dual``, are computed on first access (then cached), so a training loop that
    only reads ``probs`` pays nothing for them (``dual`` and ``cvxpylayers`` return their
    solver's duals with the maps, readable whatever happens to the inputs later).  They are
    differentiable functions of the scores wherever the method is.  Those computed on access
    (but ``violation``, which reads ``probs`` alone) read the inputs of the solve (scores,
    temperatures, duals, given maps; with ``check_finite=False`` also the scores as given, before
    the masks that pooling implies), which are not copied: reading one of them for the
    first time after an input was modified in place
    (an optimiser step on learned duals or on a temperature, ``scores.mul_``) raises
    :class:`StaleSolution` rather than describe another problem than the one solved; read
    them before the step, or solve again.  (Inference tensors keep no version counter: of
    those alone a copy is kept, and compared when a field is read.)
    """

    def __init__(self, probs: list[Tensor], scores: list, h: Graph, temperature: list,
                 method: str, duals: list[Tensor] | Callable[[], list[Tensor]] | None = None,
                 info: dict | None = None, given: Sequence[Tensor | None] | None = None,
                 sources: Sequence[Tensor] = ()):
        self.probs = probs
        self.method = method
        self.temperature = temperature
        self.info = info or {}
        self._given = given
        self.given = tuple(k for k, q in enumerate(given) if q is not None) if given is not None else ()
        self._scores, self._h = scores, h
        self._duals = duals
        self._cache: dict = {}
        # sources: the tensors ``scores`` were made from (the caller's, before solve masked the cells
        # pooling rules out): changed in place, they make the solution stale too (ca_rev157)
        self._watch(_tensors_in((scores, temperature, given, duals, list(sources))))
        self._stale_when_pickled = False
        # solved without grad (an evaluation pass): its maps carry no graph, so a field is computed
        # without one too (read with grad on, its gradient had held the maps constant: ca_rev190)
        self._solved_with_grad = torch.is_grad_enabled()

    def _watch(self, tensors: list[Tensor]) -> None:
        """Every tensor the lazy fields read, with its version now (in-place changes bump it);
        an inference tensor keeps no version, so a copy of it is kept to compare with (one made
        under ``torch.inference_mode()`` and changed in place after the solve gave the fields of
        another problem, silently: a review)."""
        # (the storage too: a ``.data = other`` assignment leaves the version as it was, ca_rev190)
        self._inputs = [(t, t._version, _storage_of(t)) for t in tensors if not t.is_inference()]
        self._frozen = [(t, t.clone()) for t in tensors if t.is_inference()]

    def _stale(self) -> bool:
        return (self._stale_when_pickled or any(t._version != v or _storage_of(t) != at for t, v, at in self._inputs)
                or any(t.shape != c.shape or t.dtype != c.dtype  # resize_ too (allclose raised on it)
                       or not torch.allclose(t, c, rtol=0.0, atol=0.0, equal_nan=True) for t, c in self._frozen))

    def _check_fresh(self, name: str) -> None:
        if self._stale():
            raise StaleSolution(f"Solution.{name}: an input of this solve (scores, temperature, duals or given "
                                f"maps) was modified in place after it (an optimiser step?), so {name} would "
                                f"describe another problem than the one solved; read it before modifying the "
                                f"inputs, or solve again")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stale_when_pickled"] = self._stale()
        state["_inputs"] = [t for t, *_ in self._inputs] + [t for t, _ in self._frozen]
        del state["_frozen"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._watch(state["_inputs"])  # copies start afresh
        # (a Solution pickled before the cache recorded the grad mode of each value: as computed with it)
        self._cache = {k: v if isinstance(v, tuple) else (v, True) for k, v in self._cache.items()}

    @property
    def duals(self) -> list[Tensor] | None:
        if callable(self._duals):  # lazy (a functools.partial): computed, and kept, by _cached
            return self._cached("duals", self._duals)
        return self._duals

    def _cached(self, name: str, fn, reads_inputs: bool = True):
        # a value computed without grad (read first under torch.no_grad() or inference_mode, as a
        # log line does) is computed again when read with grad on: kept, it had given a loss built
        # from it no gradient for that term, silently (a review: a loss on the objective, the dual
        # objective and exact's duals got a gradient 0.83 off)
        entry = self._cache.get(name)
        solved_with_grad = getattr(self, "_solved_with_grad", True)  # (a Solution pickled before it was recorded)
        with_grad = torch.is_grad_enabled() and solved_with_grad
        if entry is None or (with_grad and not entry[1]):
            if reads_inputs:
                if entry is not None and self._stale():
                    # read before an input changed in place (a log line before the optimiser step):
                    # that value describes the problem solved and stays readable (design.md §4
                    # refuses only a first read after the change); computed again it would
                    # describe another problem
                    return entry[0]
                self._check_fresh(name)
            with torch.set_grad_enabled(with_grad):
                # (a solve without grad: the value is final, recomputed under no grad mode again)
                entry = self._cache[name] = (fn(), with_grad or not solved_with_grad)
        return entry[0]

    @property
    def violation(self) -> Tensor:
        # the probabilities alone: an optimiser step on the inputs does not change it
        return self._cached("violation", lambda: metrics.violation(self.probs, self._h), reads_inputs=False)

    @property
    def objective(self) -> Tensor:
        return self._cached("objective", self._objective)

    def _at_optimum(self) -> bool:
        """Whether the fields take their first derivatives from the envelope theorem: the method's
        result is the optimum (``exact`` in its record) and its backward is first order only, and no
        map is given (then the optimal value moves with the given maps through the constraints too).
        At the optimum ``∂f*/∂θ_k = p_k`` and ``∂f*/∂τ_k = H(p_k)``, and ``g(λ*)``'s derivative in
        λ is 0: through the method's backward those are cancelling sums, which its accuracy check
        refused in float64 on graphs that are not trees, and (through the duals) on redundant
        constraints (ca_rev161)."""
        record = REGISTRY.get(self.method)
        return record is not None and record.exact and not record.second_order and not self.given

    def _objective(self) -> Tensor:
        if not self._at_optimum():
            return metrics.objective(self._scores, self.probs, self.temperature)
        fixed = [p.detach() for p in self.probs]
        value = metrics.objective(self._scores, fixed, self.temperature)
        # plus a term of value 0 whose path runs through the method's backward with a zero cotangent,
        # so that create_graph=True is refused there as for any loss on the maps (never a silent 0)
        for s, p, q in zip(self._scores, self.probs, fixed):
            if s is not None:
                offset = torch.where(torch.isfinite(s.detach()), s - s.detach(), 0.0)
                value = value + (upcast(offset) * upcast(p - q)).flatten(1).sum(1)
        return value

    @property
    def dual_objective(self) -> Tensor | None:
        if self.duals is None:
            return None
        # the given maps as the solve used them and returns them (each divided by its sum), not as
        # passed: with those, <η_k, q_k> moved the dual objective off the objective by the sums'
        # error (a review); the passed ones are still the inputs whose changes make it stale
        used = None if self._given is None else [None if q is None else self.probs[k] for k, q in
                                                 enumerate(self._given)]
        return self._cached("dual_objective", lambda: self._dual_objective(used))

    def _dual_objective(self, used) -> Tensor:
        # g's own second derivatives in a temperature pass through 1/τ², which the working dtype
        # cannot hold below its floor: there one that overflows raises, never NaN (a review: the
        # τ-τ derivative of exact's dual objective at τ 1e-200 was [nan, nan])
        temps = list(self.temperature)
        at = [k for k, t in enumerate(temps) if isinstance(t, Tensor)]
        scored = [k for k, s in enumerate(self._scores) if s is not None]
        work = compute_dtype(next(s for s in self._scores if s is not None).dtype)
        guarded = guard_below_floor([*(self._scores[k] for k in scored), *(temps[k] for k in at)], temps, work,
                                    "Solution.dual_objective")
        scores = list(self._scores)
        for i, k in enumerate(scored):
            scores[k] = guarded[i]
        for i, k in enumerate(at):
            temps[k] = guarded[len(scored) + i]
        duals = self.duals
        assert duals is not None  # dual_objective reads it only where there are duals
        if not self._at_optimum():
            return metrics.dual_objective(scores, duals, self._h, temps, used)
        value = metrics.dual_objective(scores, [d.detach() for d in duals], self._h, temps, used)
        # as _objective: a zero-valued path through the duals' backward, zero cotangent included
        return value + sum(upcast(d * 0).flatten(1).sum(1) for d in duals)

    def __repr__(self) -> str:
        B = self.probs[0].shape[0]
        return (f"Solution(method={self.method!r}, batch={B}, shapes={[tuple(p.shape[1:]) for p in self.probs]}, "
                f"dtype={self.probs[0].dtype})")


def solve(scores: Sequence[Tensor | None], h: Graph, method: str = "exact", temperature=1.0,
          duals: Sequence[Tensor] | None = None, check_finite: bool = True, given: dict | None = None,
          **options) -> Solution:
    """Consistent multi-level attention on a hierarchy or a graph of maps.

    Args:
        scores: ``M`` tensors, ``scores[k]``: ``(B, *h.shapes[k])``, one floating dtype,
            one device.
        h: the structure: a :class:`Hierarchy` (``M = L`` levels) or a :class:`Graph`.
        method: ``"softmax"``, ``"exact"``, ``"cvxpylayers"``, ``"dual"`` or ``"learned_dual"``.
            A method that cannot solve the structure (``"exact"`` on a graph with a map of two
            coarsenings) is refused before any work, naming one that can.
        temperature: a positive real number (Python or numpy, ``np.float32`` and
            ``np.float16`` included), or one per map (a sequence of ``M``); or a numpy array
            or a tensor of shape ``()`` or ``(M,)`` — temperatures are per map, never per
            sample.
            A tensor that requires grad is differentiated through by ``"softmax"``,
            ``"exact"``, ``"dual"`` and ``"learned_dual"``; ``"cvxpylayers"`` raises
            TypeError (pass ``temperature.detach()``).  Accepted range: see the module
            docstring (ValueError outside it).
        duals: for ``"learned_dual"``: one tensor per edge ``e``, shaped like its coarse map:
            ``h.shapes[b]``, ``(1, *h.shapes[b])`` or ``(B, *h.shapes[b])`` (on a hierarchy
            ``L-1`` tensors, ``duals[k]`` shaped like level ``k+1``).
        check_finite: reject NaN/Inf scores and scores beyond ``validation.score_limit``,
            and ``given`` maps that are not finite, strictly positive and summing to one
            (reads the values once; on CUDA one host synchronisation; turn off in a
            training hot path: ``given``'s shape, dtype and device are checked still, and
            ``"dual"`` still reads the given maps' values to refuse a zero, negative, NaN or
            infinite cell, docs/design.md §4).
        given: maps whose probabilities are given rather than scored (a prior over regions,
            a segmentation): ``{k: q_k}`` with ``q_k`` shaped ``h.shapes[k]``, ``(1, …)`` or
            ``(B, …)``, strictly positive, summing to one per sample; ``scores[k]`` is then
            None and the map's temperature is unused.  The problem keeps the constraints of
            its edges with ``p_k = q_k`` fixed (docs/design.md §4, docs/math.md §7.6).  Only
            methods whose record says ``given_maps`` accept it (``"dual"``); the gradient
            reaches ``q_k`` too.  An empty dict gives no map (as None, for every method).
        **options: ``"dual"``: ``tol`` (1e-6), ``gap_tol`` (``tol``), ``max_iter`` (1000),
            ``strict`` (True), ``record_history``, ``init``, ``newton`` (``"auto"``),
            ``warm_start`` (``"auto"``), ``dtype`` (float64); ``"cvxpylayers"``:
            ``backend`` (``"diffcp-clarabel"`` default, ``"diffcp-scs"``, ``"moreau"``,
            ``"cuclarabel"``; :func:`convex_attention.cvx.available_backends`),
            ``solve_method``, ``eps``, ``max_iters``, ``accept_tol`` and solver settings.

    Returns:
        :class:`Solution`. ``probs`` keep the dtype and device of ``scores`` (half
        precision is computed in float32).  Every method is differentiable with respect
        to ``scores`` (and ``duals`` for ``"learned_dual"``, and a temperature tensor
        for the methods above).

    Raises:
        TypeError / ValueError: malformed input (shapes, map count, dtype, NaN/Inf,
            temperatures, unknown method or option, missing duals), or a method that cannot
            solve the structure; TypeError too for a method that iterates on the values
            (``"dual"``, ``"cvxpylayers"``) under ``torch.jit.trace``.
        convex_attention.dual.ConvergenceError: ``"dual"`` missed ``tol`` (``strict``).
        convex_attention.cvx.SolverFailure: ``"cvxpylayers"`` failed or was inaccurate.
    """
    record = get_method(method)
    check_transforms(f"solve(method={record.name!r})", record.func_transforms)
    if torch.jit.is_tracing() and not record.shape_tracing:  # (torch's error came from inside the solver)
        raise TypeError(f"method {record.name!r} cannot be recorded by torch.jit.trace: it iterates on the scores' "
                        f"values, so a trace would replay one input's solve; trace a model with method "
                        f"{_shape_tracers()}, or use torch.compile")
    record.check_structure(check_hierarchy(h))
    # keys checked first: the scores' check relies on them
    given_maps = frozenset() if given is None else given_indices(given, h)
    if given:  # (keyed by int from here: a NumPy integer names the same map)
        given = {int(k): q for k, q in given.items()}
    if given and not record.given_maps:  # an empty dict gives no map: every method takes it, as None
        able = " or ".join(repr(m.name) for m in REGISTRY.values() if m.given_maps)
        raise ValueError(f"method {record.name!r} does not take given maps (given=...); use method {able}")
    scores, peak_sum = check_scores_and_peaks(scores, h, check_finite=check_finite, given=given_maps)
    free = next(s for s in scores if s is not None)
    if free.is_meta and not record.shape_tracing:  # (torch's own error came from deep inside: ca_rev225)
        raise ValueError(f"method {record.name!r} solves numerically on the scores' values, and meta tensors hold "
                         f"none; trace shapes with method {_shape_tracers()}")
    temps = check_temperatures(temperature, h.num_maps, dtype=free.dtype, scores_device=free.device,
                               allow_grad=record.tensor_temperature, method=record.name, unit=h._map_word,
                               unused=given_maps)
    record.check_option_names(options)
    if not record.func_transforms:  # a forward-mode tangent: refused here, not by torch after the solve
        tangent = [f"scores[{k}]" for k, sc in enumerate(scores) if sc is not None and has_tangent(sc)] + \
            (["the temperature"] if any(has_tangent(t) for t in temps) else []) + \
            [f"given[{k}]" for k, q in (given or {}).items() if has_tangent(q)]
        if tangent:
            raise NotImplementedError(
                f"solve(method={record.name!r}): {' and '.join(tangent)} "
                f"{'carries' if len(tangent) == 1 else 'carry'} a forward-mode tangent "
                f"(torch.autograd.forward_ad or torch.func.jvp), which its autograd.Function has no rule for; "
                f"differentiate with torch.autograd.grad or torch.autograd.functional.jacobian (methods 'softmax' "
                f"and 'learned_dual' take forward mode)")
    if record.check_options:  # the values too, before any work (the method's own rules: methods.py)
        record.check_options(dict(options), h)
    given_list = None
    if given:
        given_list = check_given(given, h, free.shape[0], free.dtype, free.device, check_finite=check_finite)
        options["given"] = given_list
    if duals is not None and not record.needs_duals:
        users = " or ".join(repr(m.name) for m in REGISTRY.values() if m.needs_duals)
        raise ValueError(f"duals are only used by method {users}, not {record.name!r}")
    if record.needs_duals:
        duals = check_duals(duals, h, free.shape[0], compute_dtype(free.dtype), free.device,
                            check_finite=check_finite, score_peak_sum=peak_sum)
    scores, sources = scores_the_method_sees(scores, h, record, check_finite)
    probs, lam, info = record.function(scores, h, temps, duals, dict(options))
    return Solution(probs, scores, h, temps, record.name, lam, info, given_list, sources=sources)


def _shape_tracers() -> str:
    """The methods whose forward is torch operations on the scores alone (meta tensors, jit.trace)."""
    return " or ".join(repr(m.name) for m in REGISTRY.values() if m.shape_tracing)


def scores_the_method_sees(scores: list, h: Graph, record, check_finite: bool) -> tuple[list, list]:
    """``(scores, sources)``: with ``check_finite`` off and a method whose record asks for it
    (``implied_masks``), the scores with the cells that pooling rules out masked (p(λ) gives such
    a cell 0: ca_rev126), and the scores as given, which the Solution watches for in-place changes
    too (ca_rev157); else the scores, and no sources.  The Solution holds the masked scores (its
    dual objective was the unmasked problem's, ca_rev128).  Solve's and the module's one rule."""
    if check_finite or not record.implied_masks:
        return scores, []
    return with_implied_masks(scores, h), [s for s in scores if s is not None]


def consistency_loss(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Graph, temperature=1.0,
                     detach_target: bool = False, check_finite: bool = True) -> Tensor:
    """The paper's consistency loss (docs/design.md §2), a scalar tensor.

    ``Σ_e KL(b_e ‖ a_e)`` over the edges ``e = (a → b)``, with ``a_e = P_e p_a(λ)``,
    ``b_e = p_b(λ)`` and ``p_k(λ) = softmax(η_k / τ_k)``, each normalised per sample, averaged
    over the batch.  For two levels and τ = 1: ``a ∝ SumPool(softmax θ_0) ⊙ e^{−λ}``,
    ``b ∝ softmax(θ_1) ⊙ e^{+λ}``.

    Args:
        scores: ``M`` tensors ``(B, *h.shapes[k])``.
        duals: one tensor per edge, shaped like its coarse map, ``(1, …)`` or ``(B, …)``.
        temperature: as for :func:`solve`; a tensor that requires grad is differentiated
            through.
        detach_target: stop the gradient through ``b_k`` (the coarse side).

    Where the two sides' supports differ beyond the dtype's range (a temperature near the
    smallest accepted), the loss is ``+inf`` (the KL divergence is), never NaN.
    """
    check_transforms("consistency_loss", True)
    check_flag(detach_target, "detach_target")  # read as a truth value, "False" detached the coarse maps
    scores, peak_sum = check_scores_and_peaks(scores, h, check_finite=check_finite)
    if not check_finite:  # as solve: p(λ) gives a cell that pooling rules out 0 (ca_rev126)
        scores = with_implied_masks(scores, h)
    temps = check_temperatures(temperature, h.num_maps, dtype=scores[0].dtype, allow_grad=True, unit=h._map_word,
                               scores_device=scores[0].device)
    work = compute_dtype(scores[0].dtype)
    lam = check_duals(duals, h, scores[0].shape[0], work, scores[0].device, check_finite=check_finite,
                      score_peak_sum=peak_sum)
    return consistency_loss_unchecked([s.to(work) for s in scores], lam, h, temps, detach_target)
