r"""Dual decomposition (docs/design.md §2): the reparameterisation p(λ), the dual function g(λ),
a per-sample dual solver, and the paper's consistency loss.

With a multiplier ``λ_k`` (shape ``shapes[k+1]``) for every constraint ``P_k p_k = p_{k+1}``
the Lagrangian separates level by level::

    p_k(λ) = softmax(η_k / τ_k),    η_k = θ_k + λ_{k-1} - P_kᵀ λ_k     (λ_{-1}, λ_{L-1} absent)
    g(λ)   = Σ_k τ_k logsumexp(η_k / τ_k),    ∇_{λ_k} g = p_{k+1}(λ) - P_k p_k(λ)

``g`` is convex, its minimiser makes every constraint hold, and ``min g`` equals the
optimal primal value.  Each ``λ_k`` is defined up to an additive constant; duals are
reported mean-zero per sample.

The solver (:func:`solve_dual`) is block-coordinate descent with *exact* block steps:
with every other multiplier fixed, ``g`` is minimised over ``λ_k`` in closed form by

    λ_k ← λ_k + τ_k τ_{k+1} / (τ_k + τ_{k+1}) · (blocklogsumexp_k(η_k / τ_k) - η_{k+1} / τ_{k+1})

(both sides of constraint ``k`` become proportional, hence equal).  For two levels one step
is optimal; for more levels plain sweeps converge linearly, like iterative proportional
fitting, and very slowly where the levels' temperatures differ by orders of magnitude.
The sweeps are therefore Anderson-accelerated, with a safeguard on ``g`` (an extrapolated
point is taken only where it lowers ``g`` at least as much as the plain sweep), so ``g``
decreases monotonically.  The gradient of the ``"dual"`` method is the implicit-function
gradient at its solution, computed by the tree VJP of
:func:`convex_attention.exact.tree_backward`.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ._ops import centre, compute_dtype, level_softmax
from .exact import tree_backward
from .hierarchy import Hierarchy
from .validation import temperature_range

__all__ = ["reparameterized_logits", "reparameterized_probs", "dual_function",
           "consistency_loss_unchecked", "solve_dual", "DualSolveFunction", "ConvergenceError",
           "dual_probs", "check_dual_options"]


class ConvergenceError(RuntimeError):
    """The per-sample dual solver did not reach its tolerance."""


def reparameterized_logits(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy) -> list[Tensor]:
    """``η_k = θ_k + λ_{k-1} - P_kᵀ λ_k``; ``duals[k]`` may have batch dimension 1 (shared)."""
    L = h.num_levels
    etas = []
    for k in range(L):
        eta = scores[k]
        if k > 0:
            eta = eta + duals[k - 1]
        if k < L - 1:
            eta = h.combine_broadcast(eta, duals[k], k, torch.sub)
        etas.append(eta)
    return etas


def reparameterized_probs(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy,
                          temps: Sequence[float]) -> list[Tensor]:
    """``p_k(λ) = softmax(η_k / τ_k)`` for every level; each ``(B, *shapes[k])``."""
    etas = reparameterized_logits(scores, duals, h)
    return [level_softmax(e, t) for e, t in zip(etas, temps)]


def dual_function(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy,
                  temps: Sequence[float]) -> Tensor:
    """``g(λ) = Σ_k τ_k logsumexp(η_k / τ_k)`` per sample: ``(B,)``.

    Each term is formed as ``max η_k + τ_k logsumexp((η_k − max η_k) / τ_k)``, finite for
    every accepted temperature (``η_k / τ_k`` alone overflows at tiny ``τ_k``).
    ``temps``: floats or 0-d tensors (differentiated through).
    """
    etas = reparameterized_logits(scores, duals, h)
    total = 0.0
    for e, t in zip(etas, temps):
        flat = e.flatten(1)
        if not isinstance(t, Tensor) and t == 1.0:
            total = total + torch.logsumexp(flat, dim=1)
            continue
        top = flat.detach().amax(1, keepdim=True)
        total = total + (top.squeeze(1) + t * torch.logsumexp((flat - top) / t, dim=1))
    return total


def consistency_loss_unchecked(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy,
                               temps: Sequence[float], detach_target: bool = False) -> Tensor:
    """Σ_k KL(b_k ‖ a_k), ``a_k = P_k p_k(λ)``, ``b_k = p_{k+1}(λ)``, averaged over the batch.

    Computed in log space (``log a_k`` is a block log-sum-exp of ``log p_k``), so it is
    finite for any finite input at ordinary temperatures.  Near the smallest accepted
    temperature ``log p_k`` can be ``-inf`` (``p_k`` is zero in the dtype): cells with
    ``b_k = 0`` contribute ``0`` (``0 log 0 = 0``) and cells with ``b_k > 0 = a_k`` give
    ``+inf``, the KL divergence's value; never NaN.  ``temps``: floats or 0-d tensors
    (differentiated through).  ``detach_target`` stops the gradient through ``b_k``.
    """
    etas = reparameterized_logits(scores, duals, h)
    logp = [level_softmax(e, t, log=True) for e, t in zip(etas, temps)]
    total = 0.0
    for k in range(h.num_levels - 1):
        log_a = _block_logsumexp_or_neginf(h, logp[k], k)
        log_b = logp[k + 1].detach() if detach_target else logp[k + 1]
        # where b = 0 the term is 0; masking the difference (not the product) keeps the
        # gradient free of 0·inf
        b = log_b.exp()
        diff = torch.where(b > 0, log_b - log_a, torch.zeros((), dtype=log_b.dtype))
        kl = (b * diff).flatten(1).sum(1)
        total = total + kl
    return total.mean()


def _block_logsumexp_or_neginf(h: Hierarchy, x: Tensor, k: int) -> Tensor:
    """Block log-sum-exp that gives ``-inf`` (not NaN) for a block of ``-inf`` entries."""
    m = h.block_max(x, k).detach()
    m = torch.where(m > -math.inf, m, torch.zeros((), dtype=m.dtype))
    return m + h.aggregate(torch.exp(h.combine_broadcast(x, m, k, torch.sub)), k).log()


def dual_probs(scores: Sequence[Tensor], duals: Sequence[Tensor], h: Hierarchy, temps: Sequence[float]):
    """``p(λ)`` and the within-block conditionals ``q_k`` at ``λ`` (for the tree VJP)."""
    etas = reparameterized_logits(scores, duals, h)
    probs = [level_softmax(e, t) for e, t in zip(etas, temps)]
    cond = [h.block_softmax(_shifted(h, etas[k], k, temps[k]), k)[0] for k in range(h.num_levels - 1)]
    return probs, cond


def _shifted(h: Hierarchy, eta: Tensor, k: int, tau: float) -> Tensor:
    """``(η − P_kᵀ blockmax_k(η)) / τ``: the block softmax's argument, shifted *before* the
    division so that it stays finite (≤ 0) at any accepted temperature (``η / τ`` alone
    overflows for tiny ``τ``)."""
    return h.combine_broadcast(eta, h.block_max(eta, k), k, torch.sub).div_(tau)


def _violation(probs: Sequence[Tensor], h: Hierarchy) -> Tensor:
    """``max_k ‖P_k p_k − p_{k+1}‖₁`` per sample (the measure of :mod:`.metrics`, inlined
    here so that the solvers never import the measures)."""
    return torch.stack([(h.aggregate(probs[k], k) - probs[k + 1]).abs().flatten(1).sum(1)
                        for k in range(h.num_levels - 1)]).amax(0)


def solve_learned_dual(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], lam: Sequence[Tensor]):
    """The ``"learned_dual"`` method of the registry: ``p(λ)`` at the given duals.

    Probabilities in the scores' dtype; duals (centred) in the compute dtype (float32 for
    half-precision scores, whose range they can exceed).  ``temps``: floats or 0-d tensors.
    """
    dtype = scores[0].dtype
    work = compute_dtype(dtype)
    probs = reparameterized_probs([s.to(work) for s in scores], lam, h, temps)
    B = scores[0].shape[0]

    def duals_fn():
        return [centre(dual.expand((B,) + h.shapes[k + 1])).to(work) for k, dual in enumerate(lam)]

    return [p.to(dtype) for p in probs], duals_fn, {}


def solve_dual_method(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], options: dict):
    """The ``"dual"`` method of the registry: per-sample dual solve, implicit gradient.

    ``options`` (validated here, before any work, by :func:`check_dual_options`): ``tol``,
    ``max_iter``, ``strict``, ``record_history``, ``init`` and ``dtype`` (the working
    dtype, float64 by default: the stopping test compares an L1 norm of differences of
    probabilities with ``tol = 1e-6``, which float32 rounding can reach).
    """
    dtype = scores[0].dtype
    options = check_dual_options(options, h, scores[0].shape[0], scores[0].device, temps)
    work = options.pop("dtype")
    info: dict = {}
    probs = DualSolveFunction.apply(h, tuple(temps), options, info, *[s.to(work) for s in scores])
    lam = [d.to(dtype) for d in info.pop("duals")]
    return [p.to(dtype) for p in probs], lam, info


# Secant pairs kept by the Anderson step (the sweep map's last _ANDERSON_MEMORY + 1 points).
_ANDERSON_MEMORY = 8
# Sweeps over which a non-converged sample's progress is judged for the error's advice.
_PROGRESS_WINDOW = 10
_DUAL_OPTIONS = ("tol", "max_iter", "strict", "record_history", "init", "dtype")
_WORK_DTYPES = (torch.float32, torch.float64)


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"dual option tol must be a positive finite number (e.g. 1e-6), got {tol!r}")
    tol = float(tol)
    if not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"dual option tol must be a positive finite number (0 < tol < inf, e.g. 1e-6), got {tol}")
    return tol


def _check_max_iter(max_iter) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
        raise TypeError(f"dual option max_iter must be an int >= 1 (sweeps), got {max_iter!r}")
    if max_iter < 1:
        raise ValueError(f"dual option max_iter must be an int >= 1 (sweeps), got {max_iter}")
    return int(max_iter)


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"dual option {name} must be True or False, got {value!r}")
    return value


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in _WORK_DTYPES:
        raise ValueError(f"dual option dtype must be torch.float32 or torch.float64 (the working dtype), "
                         f"got {dtype!r}")
    return dtype


def _check_init(init, h: Hierarchy, batch: int, device) -> list[Tensor] | None:
    """``None``, or ``L-1`` finite floating tensors ``(B, *shapes[k+1])``, ``(1, …)`` or ``shapes[k+1]``."""
    if init is None:
        return None
    n = h.num_levels - 1
    if isinstance(init, Tensor) or not isinstance(init, Sequence) or isinstance(init, (str, bytes)):
        raise TypeError(f"dual option init must be None or a list of {n} tensors (one per constraint), "
                        f"got {type(init).__name__}")
    if len(init) != n:
        raise ValueError(f"dual option init must hold one tensor per constraint ({n}), got {len(init)}")
    out = []
    for k, start in enumerate(init):
        shape = h.shapes[k + 1]
        if not isinstance(start, Tensor):
            raise TypeError(f"dual option init[{k}] must be a torch.Tensor, got {type(start).__name__}")
        if not start.dtype.is_floating_point:
            raise TypeError(f"dual option init[{k}] must be a floating tensor, got dtype {start.dtype}")
        if tuple(start.shape) == shape:
            start = start.unsqueeze(0)
        if start.dim() != 1 + len(shape) or tuple(start.shape[1:]) != shape or start.shape[0] not in (1, batch):
            raise ValueError(f"dual option init[{k}] must have shape {shape}, (1, *{shape}) or ({batch}, *{shape}) "
                             f"for constraint {k}, got {tuple(start.shape)}")
        if start.device != torch.device(device):
            raise ValueError(f"dual option init[{k}] is on {start.device}, the scores on {device}")
        if not bool(torch.isfinite(start).all()):
            raise ValueError(f"dual option init[{k}] contains NaN or Inf values; starting duals must be finite")
        out.append(start.detach())
    return out


def check_dual_options(options: dict, h: Hierarchy, batch: int, device, temps: Sequence[float] | None = None) -> dict:
    """Validate the options of the ``"dual"`` method before any work; returns them with the
    defaults filled in (``dtype`` included).  Raises TypeError/ValueError naming the option
    and its accepted range.  With ``temps``, also checks that the working ``dtype`` can
    represent them (float32 accepts a narrower range than float64)."""
    unknown = set(options) - set(_DUAL_OPTIONS)
    if unknown:
        raise TypeError(f"method 'dual' takes no option(s) {sorted(unknown)}; it accepts {sorted(_DUAL_OPTIONS)}")
    out = {"tol": _check_tol(options.get("tol", 1e-6)),
           "max_iter": _check_max_iter(options.get("max_iter", 1000)),
           "strict": _check_flag(options.get("strict", True), "strict"),
           "record_history": _check_flag(options.get("record_history", False), "record_history"),
           "init": _check_init(options.get("init"), h, batch, device),
           "dtype": _check_dtype(options.get("dtype", torch.float64))}
    if temps is not None:
        _check_temperature_range([float(t) for t in temps], out["dtype"], "dual option dtype=torch.float32: ")
    return out


def _check_temperature_range(temps: Sequence[float], dtype: torch.dtype, prefix: str = "") -> None:
    """The working dtype must represent ``1/τ_k`` and the sum of the temperatures."""
    low, high = temperature_range(dtype)
    name = str(dtype).replace("torch.", "")
    for k, t in enumerate(temps):
        if t < low:
            raise ValueError(f"{prefix}temperature of level {k} is {t:g}, below the smallest that {name} can "
                             f"divide by ({low:.3g}); use dtype=torch.float64 or a larger temperature")
    if math.fsum(temps) > high:
        raise ValueError(f"{prefix}the temperatures sum to {math.fsum(temps):g}, above the largest accepted in "
                         f"{name} ({high:.3g}); use dtype=torch.float64 or smaller temperatures")


def _check_problem(scores, h: Hierarchy, temps) -> tuple[list[Tensor], list[float]]:
    """The kernel's own checks (``solve`` has done them already; direct callers have not)."""
    if not isinstance(h, Hierarchy):
        raise TypeError(f"h must be a convex_attention.Hierarchy, got {type(h).__name__}")
    L = h.num_levels
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence) or len(scores) != L:
        raise ValueError(f"scores must be a list of {L} tensors (one per level)")
    scores = list(scores)
    for k, s in enumerate(scores):
        if not isinstance(s, Tensor) or s.dtype not in _WORK_DTYPES or tuple(s.shape[1:]) != h.shapes[k] \
                or s.dim() != 1 + len(h.shapes[k]) or s.shape[0] != scores[0].shape[0] \
                or s.dtype != scores[0].dtype or s.shape[0] == 0:
            raise ValueError(f"scores[{k}] must be a float32/float64 tensor (B, *{h.shapes[k]}) with the dtype "
                             f"and batch of scores[0], got "
                             f"{tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}")
    if isinstance(temps, Tensor):
        temps = temps.detach().cpu().tolist()
    if isinstance(temps, (str, bytes)) or not isinstance(temps, Sequence) or len(temps) != L:
        raise ValueError(f"temps must hold one positive temperature per level ({L})")
    out = []
    for k, t in enumerate(temps):
        t = float(t)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature of level {k} must be positive and finite, got {t}")
        out.append(t)
    _check_temperature_range(out, scores[0].dtype)
    return scores, out


def _evaluate(etas: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], violation: bool = True):
    """``g(λ)`` and (optionally) the violation at the logits ``η(λ)``: two ``(B,)`` tensors.

    Each level's maximum is subtracted before dividing by ``τ_k``, so both are finite for
    every accepted temperature and finite ``η``."""
    g, probs = 0.0, []
    for e, t in zip(etas, temps):
        flat = e.flatten(1)
        top = flat.amax(1, keepdim=True)
        z = (flat - top) / t
        lse = torch.logsumexp(z, dim=1)
        g = g + (top.squeeze(1) + t * lse)
        if violation:
            probs.append(torch.exp(z - lse.unsqueeze(1)).view(e.shape))
    return g, (_violation(probs, h) if violation else None)


def _sweep(h: Hierarchy, temps: Sequence[float], lam: list[Tensor], etas: list[Tensor], mask: Tensor):
    """One block-coordinate sweep: for k = 0 … L-2, the exact minimiser of ``g`` over ``λ_k``.

    With every other multiplier fixed, ``λ_k ← λ_k + τ_k τ_{k+1} / (τ_k + τ_{k+1}) ·
    (blocklogsumexp_k(η_k / τ_k) − η_{k+1} / τ_{k+1})`` makes both sides of constraint ``k``
    proportional, hence equal.  It is evaluated as the weighted average
    ``(τ_{k+1} A_k − τ_k η_{k+1}) / (τ_k + τ_{k+1})`` with ``A_k = τ_k blocklogsumexp_k(η_k / τ_k)``
    formed from block-max-shifted logits: finite at every accepted temperature, where
    ``η / τ`` itself would overflow.  ``mask`` ``(B,)`` (1 or 0) freezes finished samples.
    Returns new lists (the inputs are not modified).
    """
    lam, etas = list(lam), list(etas)
    for k in range(h.num_levels - 1):
        tk, tn = temps[k], temps[k + 1]
        bmax = h.block_max(etas[k], k)
        _, blocksum, zmax = h.block_exp(h.combine_broadcast(etas[k], bmax, k, torch.sub).div_(tk), k)
        a = bmax + tk * (zmax + blocksum.log())
        delta = centre((tn * a - tk * etas[k + 1]) / (tk + tn))
        delta = delta * mask.view((-1,) + (1,) * len(h.shapes[k + 1]))
        lam[k] = lam[k] + delta
        etas[k] = h.combine_broadcast(etas[k], delta, k, torch.sub)
        etas[k + 1] = etas[k + 1] + delta
    return lam, etas


def _anderson(xs: Sequence[Tensor], gxs: Sequence[Tensor]) -> Tensor:
    """Anderson (type II) extrapolation of the fixed-point map ``x ↦ G(x)`` per sample.

    ``xs``, ``gxs``: the last ``m+1`` points and their images, each ``(B, N)`` (the duals
    flattened).  With residuals ``f_i = G(x_i) − x_i`` it finds the combination of the
    last ``m`` residual differences that best cancels the newest residual (least squares,
    columns normalised, a 1e-12 ridge for collinear columns) and returns
    ``G(x_m) − ΔG γ``: ``(B, N)``.  Non-finite or singular systems give a non-finite result,
    which the caller's safeguard rejects.
    """
    f = [gx - x for x, gx in zip(xs, gxs)]
    dF = torch.stack([f[i + 1] - f[i] for i in range(len(f) - 1)], dim=2)      # (B, N, m)
    dG = torch.stack([gxs[i + 1] - gxs[i] for i in range(len(f) - 1)], dim=2)  # (B, N, m)
    norm = dF.norm(dim=1, keepdim=True)                                         # (B, 1, m)
    A = dF / norm.clamp_min(torch.finfo(dF.dtype).tiny)
    gram = A.transpose(1, 2) @ A
    gram = gram + 1e-12 * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    gamma, info = torch.linalg.solve_ex(gram, A.transpose(1, 2) @ f[-1].unsqueeze(2))
    gamma = gamma / norm.clamp_min(torch.finfo(dF.dtype).tiny).transpose(1, 2)
    out = gxs[-1] - (dG @ gamma).squeeze(2)
    return torch.where((info == 0).unsqueeze(1), out, out.new_tensor(math.nan))


def _flatten(lam: Sequence[Tensor]) -> Tensor:
    return torch.cat([x.flatten(1) for x in lam], dim=1)


def _unflatten(x: Tensor, h: Hierarchy) -> list[Tensor]:
    out, start = [], 0
    for shape in h.shapes[1:]:
        n = math.prod(shape)
        out.append(centre(x[:, start:start + n].reshape((x.shape[0],) + shape)))
        start += n
    return out


def _pick(take: Tensor, a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
    """Per sample, ``a`` where ``take`` ``(B,)`` is True, else ``b``."""
    return [torch.where(take.view((-1,) + (1,) * (x.dim() - 1)), x, y) for x, y in zip(a, b)]


@torch.no_grad()
def solve_dual(scores: Sequence[Tensor], h: Hierarchy, temps: Sequence[float], tol: float = 1e-6,
               max_iter: int = 1000, strict: bool = True, record_history: bool = False,
               init: Sequence[Tensor] | None = None):
    r"""Minimise ``g(λ)`` per sample until ``violation <= tol``: safeguarded Anderson-accelerated
    block-coordinate descent.

    Every sweep applies the exact block steps of :func:`_sweep` (``λ_0``, then ``λ_1``, …),
    the map ``λ ↦ G(λ)``.  Alone, these sweeps converge linearly, and slowly where the
    levels' temperatures differ by orders of magnitude (a responsive cold level between
    two stiff hot ones absorbs each block step: at τ = [1e3, 1e-3, 1e3] the violation
    shrinks by a factor of only about 1 − 2e-6 per sweep).  Anderson acceleration extrapolates from the last
    ``_ANDERSON_MEMORY`` sweeps (:func:`_anderson`), and a safeguard keeps it honest: the
    extrapolated point is taken only where ``g`` there is no larger than at ``G(λ)``.  So
    ``g`` never increases, every sweep lowers it at least as much as a plain sweep from
    the same point (the convergence of block-coordinate descent is kept), and it is a
    minimisation of the dual by iteration on λ, not the closed form.

    Args:
        scores: ``L`` tensors ``(B, *h.shapes[k])``, float32 or float64 (the working dtype).
        h: the hierarchy.
        temps: ``L`` positive temperatures.
        tol: target of ``violation = max_k ‖P_k p_k(λ) - p_{k+1}(λ)‖₁`` per sample, a
            positive finite number.
        max_iter: maximum number of sweeps (int >= 1).
        strict: raise :class:`ConvergenceError` naming the samples that miss ``tol``, with
            the reason and what helps; if False, warn instead (and report them in
            ``converged``).
        record_history: also return per-sweep ``violation`` and ``g(λ)``.
        init: optional starting duals: ``L-1`` finite tensors ``(B, *shapes[k+1])``,
            ``(1, *shapes[k+1])`` or ``shapes[k+1]``.

    Returns:
        dict with ``duals`` (centred, ``(B, *shapes[k+1])``), ``iterations`` ``(B,)``
        (sweeps each sample needed), ``converged`` ``(B,)`` bool, ``violation`` ``(B,)``
        and, if asked, ``history``: ``{"violation": (iters+1, B), "dual_objective": (iters+1, B)}``
        (row 0 is the starting point).

    NaN or Inf anywhere in a sample's state (scores, duals, ``g``, violation) ends that
    sample as *not* converged.  Finished samples are frozen and every step is per sample,
    so a batch gives the same result as a loop over its samples.  Each sweep ends with
    one host synchronisation (the stopping test).
    """
    tol, max_iter = _check_tol(tol), _check_max_iter(max_iter)
    strict, record_history = _check_flag(strict, "strict"), _check_flag(record_history, "record_history")
    scores, temps = _check_problem(scores, h, temps)
    B, dtype, device = scores[0].shape[0], scores[0].dtype, scores[0].device
    init = _check_init(init, h, B, device)
    if init is None:
        lam = [scores[0].new_zeros((B,) + shape) for shape in h.shapes[1:]]
    else:
        lam = [centre(start.to(dtype).expand((B,) + h.shapes[k + 1]).clone()) for k, start in enumerate(init)]
    etas = reparameterized_logits(scores, lam, h)
    g, viol = _evaluate(etas, h, temps)
    finite = torch.isfinite(g) & torch.isfinite(viol)
    failed = ~finite
    active = finite & ~(viol <= tol)
    iterations = torch.zeros(B, dtype=torch.long, device=device)
    history_v, history_g = ([viol.clone()], [g.clone()]) if record_history else ([], [])
    recent = [viol.clone()]  # violations of the last _PROGRESS_WINDOW sweeps (for the advice)
    xs, gxs = [], []
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        mask = active.to(dtype)
        swept, swept_etas = _sweep(h, temps, lam, etas, mask)
        xs.append(_flatten(lam))
        gxs.append(_flatten(swept))
        del xs[:-(_ANDERSON_MEMORY + 1)], gxs[:-(_ANDERSON_MEMORY + 1)]
        new_g, _ = _evaluate(swept_etas, h, temps, violation=False)
        new, new_etas = swept, swept_etas
        if len(xs) > 1:
            extra = _unflatten(_anderson(xs, gxs), h)
            extra_etas = reparameterized_logits(scores, extra, h)
            extra_g, _ = _evaluate(extra_etas, h, temps, violation=False)
            take = active & (extra_g <= new_g)  # False for NaN: the safeguard
            new, new_etas = _pick(take, extra, swept), _pick(take, extra_etas, swept_etas)
            new_g = torch.where(take, extra_g, new_g)
        lam, etas = _pick(active, new, lam), _pick(active, new_etas, etas)
        new_g, new_viol = _evaluate(etas, h, temps)
        g, viol = torch.where(active, new_g, g), torch.where(active, new_viol, viol)
        iterations += active.long()
        finite = torch.isfinite(g) & torch.isfinite(viol) & torch.stack(
            [torch.isfinite(x.flatten(1)).all(1) for x in lam]).all(0)
        failed |= active & ~finite
        active = active & finite & ~(viol <= tol)
        if record_history:
            history_v.append(viol.clone())
            history_g.append(g.clone())
        recent = (recent + [viol.clone()])[-(_PROGRESS_WINDOW + 1):]
    converged = ~failed & (viol <= tol)
    if not bool(converged.all()):
        msg = _failure_message(scores, temps, tol, max_iter, converged, failed, viol, recent, dtype)
        if strict:
            raise ConvergenceError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    out = {"duals": [centre(dual) for dual in lam], "iterations": iterations, "converged": converged,
           "violation": viol}
    if record_history:
        out["history"] = {"violation": torch.stack(history_v), "dual_objective": torch.stack(history_g)}
    return out


def _failure_message(scores, temps, tol, max_iter, converged, failed, viol, recent, dtype) -> str:
    """Which samples missed ``tol``, why, and what helps (only advice that is true)."""
    bad = torch.nonzero(~converged).flatten().tolist()
    name = str(dtype).replace("torch.", "")
    reasons = []
    broken = torch.nonzero(failed).flatten().tolist()
    if broken:
        if not all(bool(torch.isfinite(s[broken]).all()) for s in scores):
            why = "the scores contain NaN or Inf: pass finite scores"
        else:
            ratio = max(float(s[broken].abs().max()) / t for s, t in zip(scores, temps))
            big = torch.finfo(dtype).max
            why = (f"max |θ_k|/τ_k = {ratio:.1e}"
                   + (f" exceeds the range of {name} ({big:.1e})" if ratio >= big else "")
                   + ": rescale the scores or raise the temperatures")
        reasons.append(f"sample(s) {broken[:10]}: the solver state became NaN/Inf ({why})")
    rest = [i for i in bad if i not in set(broken)]
    if rest:
        idx = torch.tensor(rest, device=viol.device)
        window = len(recent) - 1
        # Judged over a full window only (Anderson steps lower g, not necessarily the
        # violation, every sweep), against the window's best so that rounding noise does
        # not count as progress.
        best_before = torch.stack(recent[:-1]).amin(0)[idx]
        moving = ((viol[idx] < 0.5 * best_before) | (window < _PROGRESS_WINDOW)).tolist()
        slow = [i for i, m in zip(rest, moving) if m]
        stuck = [i for i, m in zip(rest, moving) if not m]
        if slow:
            reasons.append(f"sample(s) {slow[:10]} still converging after max_iter={max_iter} sweeps (violation "
                           f"{', '.join(f'{float(viol[i]):.2e}' for i in slow[:5])}): raise max_iter")
        if stuck:
            fix = ("solve in float64 (dtype=torch.float64) or raise tol above it" if dtype == torch.float32 else
                   "raise tol above it, or use method='exact' (the same optimum in closed form)")
            # p(λ) = softmax(η/τ) moves by about eps·|η|/τ in log space for a one-ulp change
            # of η: beyond ~1e-3 the dual cannot place the optimum, however long it runs.
            rows = torch.tensor(stuck, device=viol.device)
            grain = max(torch.finfo(dtype).eps * float(s[rows].abs().max()) / t for s, t in zip(scores, temps))
            why = (f"; at these temperatures one rounding step of the logits moves log p by up to {grain:.1e}, "
                   f"so the dual cannot resolve the optimum in {name}" if grain > 1e-3 else "")
            reasons.append(f"sample(s) {stuck[:10]} stalled at violation "
                           f"{', '.join(f'{float(viol[i]):.2e}' for i in stuck[:5])} in {name} (less than "
                           f"halved over the last {window} sweeps; raising max_iter is unlikely to help{why}): {fix}")
    return (f"dual solver did not reach tol={tol:g} for sample(s) {bad[:10]}{' …' if len(bad) > 10 else ''}; "
            + "; ".join(reasons))


class DualSolveFunction(torch.autograd.Function):
    """``autograd.Function``: forward = per-sample dual solve, backward = implicit gradient.

    ``DualSolveFunction.apply(h, temps, options, info, *scores) -> L probability tensors``;
    ``info`` (a dict) receives the solver's report.
    """

    @staticmethod
    def forward(ctx, h: Hierarchy, temps: tuple, options: dict, info: dict, *scores: Tensor):
        result = solve_dual(scores, h, temps, **options)
        probs, cond = dual_probs(scores, result["duals"], h, temps)
        info.update(result)
        ctx.h, ctx.temps, ctx.L = h, temps, len(probs)
        ctx.save_for_backward(*probs, *cond)
        return tuple(probs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        saved = ctx.saved_tensors
        gscores = tree_backward(ctx.h, saved[: ctx.L], saved[ctx.L:], ctx.temps, grads)
        return (None, None, None, None, *gscores)
