r"""``nn.Module`` wrappers: learned and amortised duals, consistent attention, score heads.

* :class:`LearnedDuals`: the paper's dual witness, one learnable ``λ_k`` shared by the batch;
* :class:`AmortisedDuals`: ``λ_k`` predicted per sample from its scores by a small network,
  trained with :func:`fit_amortised_duals`;
* :class:`ConsistentAttention`: the attention layer with a switchable method
  (:meth:`ConsistentAttention.attend` gives what a model attends with: maps and the
  auxiliary loss, as an :class:`Attended`);
* :class:`ScoreHead`: attention scores from a feature map (the paper's bounded head, or one
  with a learnable gain that can sharpen).

The mathematics is docs/design.md §1–2; the public API §4.
"""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._ops import (
    centre,
    compute_dtype,
    divide_by_temperature,
    less_max,
    level_softmax,
    log_at_least_one,
    sample_dims,
)
from .dual import (
    check_dual_options,
    consistency_loss_unchecked,
    dual_function,
    reparameterized_logits,
    spanning_forest_duals,
)
from .exact import cumulative_temperatures
from .graph import Graph
from .hierarchy import Hierarchy
from .methods import get_method
from .solve import Solution, consistency_loss, scores_the_method_sees, solve
from .validation import (
    check_duals,
    check_flag,
    check_hierarchy,
    check_scores,
    check_scores_and_peaks,
    check_temperatures,
    check_transforms,
)

__all__ = ["LearnedDuals", "AmortisedDuals", "fit_amortised_duals", "ConsistentAttention", "Attended",
           "ScoreHead"]


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    # numbers.Integral: NumPy's integers too (a review: np.int64(4) read "must be an integer")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _refuse_scripting(module: nn.Module):
    """``__prepare_scriptable__``: torch.jit.script calls it on each module it scripts (a model's
    submodules too), before compiling any; its errors from inside were torch's, naming no module
    ("keyword-arg expansion is not supported", "Unknown type annotation: 'Tensor'": ca_rev262)."""
    raise TypeError(f"{type(module).__name__} cannot be scripted with torch.jit.script (TorchScript cannot compile its "
                    f"Python forward); use torch.compile, or torch.jit.trace a model that returns tensors")


class _GraphBoundState(nn.Module):
    """A module whose parameters belong to its graph ``self.h``: its state carries the graph's
    :meth:`Graph.fingerprint` (the buffer ``graph_fingerprint``, its 16 bytes as a uint8 tensor,
    so that a state stays a dict of tensors), and a state learned on another graph is refused on
    load (a ValueError, also with ``strict=False``) before any of it is loaded into the module,
    and, held by a :class:`ConsistentAttention`, before any is loaded into that (in another
    container, modules that PyTorch loads earlier keep what they loaded, as in any failed load).
    Per-edge parameters of one shape fit any graph with the same coarse shapes (the rows of a
    map and its columns, two partitions into as many regions): loaded into such a module they
    gave its maps duals learned for other constraints, silently.  The check reads the state's
    fingerprint against the module's graph, not against the buffer (which a cast, ``to_empty``
    or the meta device changes).  A state saved without it (before 2026-12-06: a model's
    checkpoint of a run in progress) still loads, unchecked, as it did."""

    h: Graph
    graph_fingerprint: Tensor

    def __init__(self, h: Graph):
        super().__init__()
        check_hierarchy(h)
        self.h = h
        # its own record now; a subclass binds its own once what they read is set (_bind_records)
        self.register_buffer("graph_fingerprint", self._fingerprint_tensor())

    __prepare_scriptable__ = _refuse_scripting

    def _records(self) -> dict:
        """``{buffer name: fn(device) -> its tensor}``: what the state records of the module's own
        making, always saved from the module (not the buffer, which ``to_empty`` leaves
        uninitialised: its state was refused everywhere, ca_rev99), refused on load where it
        differs (:meth:`check_state`), and not missed in a state saved before it existed.
        Subclasses add theirs."""
        return {"graph_fingerprint": self._fingerprint_tensor}

    def _fingerprint_tensor(self, device=None) -> Tensor:
        """The graph's fingerprint as the uint8 tensor the state carries."""
        return torch.tensor(list(self.h.fingerprint()), dtype=torch.uint8, device=device)

    def _bind_records(self) -> None:
        """Register each record's buffer not registered yet (a module pickled whole before it existed)."""
        for name, make in self._records().items():
            if name not in self._buffers:
                self.register_buffer(name, make())

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, make in self._records().items():
            if prefix + name in destination:
                held = destination[prefix + name]
                destination[prefix + name] = make(torch.device("cpu") if held.is_meta else held.device)

    def check_state(self, state_dict, prefix: str = "") -> None:
        """ValueError, before anything is loaded, for a state (keys under ``prefix``) this module
        must not take: here one learned on another graph; subclasses check what else it records."""
        key = prefix + "graph_fingerprint"
        if key in state_dict:
            check_graph_state(state_dict[key], self, prefix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        self.check_state(state_dict, prefix)
        self._bind_records()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for name in self._records():  # a state saved before the record existed
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)


def check_graph_state(recorded, module: _GraphBoundState, prefix: str = "") -> None:
    """Refuse (ValueError) a state's ``graph_fingerprint`` that is not ``module``'s graph's: any
    real tensor of its 16 byte values is read (a cast module's float64 one too); a meta tensor
    (no values) is not checked."""
    where = f"{type(module).__name__}{f' {prefix[:-1]!r}' if prefix else ''}"
    if isinstance(recorded, Tensor) and recorded.is_meta:
        return
    values = recorded.detach().cpu().flatten() if isinstance(recorded, Tensor) else None
    if values is None or values.numel() != 16 or values.is_complex() or values.dtype == torch.bool or not bool(
            ((values >= 0) & (values <= 255) & (values == values.round())).all()):
        raise ValueError(f"{where}: the state's graph_fingerprint is not a graph's fingerprint (16 byte values); "
                         f"nothing of it was loaded into this module")
    if bytes(int(v) for v in values.tolist()) != module.h.fingerprint():
        raise ValueError(f"{where}: the state to load was learned on another graph than this module's "
                         f"({type(module.h).__name__} of {len(module.h.shapes)} maps {list(module.h.shapes)}, edges "
                         f"{list(module.h.edges)}): its graph_fingerprint differs; build the module on the graph the "
                         f"state was learned on; nothing of it was loaded into this module")


class LearnedDuals(_GraphBoundState):
    """The paper's "dual witness": one learnable ``λ_e`` per constraint, shared across the batch.

    ``LearnedDuals(h)()`` returns one tensor per edge ``e = (a → b)`` shaped ``(1, *h.shapes[b])``
    (on a hierarchy ``L-1`` tensors ``(1, *h.shapes[k+1])``), initialised to zero (the
    unconstrained softmax).  Its state (``state_dict``) carries the graph, and loads only into
    a module on the same graph (:class:`_GraphBoundState`).
    """

    def __init__(self, h: Graph):
        super().__init__(h)
        self.duals = nn.ParameterList([nn.Parameter(torch.zeros((1,) + h.shapes[b])) for _, b in h.edges])

    def forward(self) -> list[Tensor]:
        return list(self.duals)


def _block_lse(h: Graph, x: Tensor, k: int, t) -> Tensor:
    """``t · blocklogsumexp_k(x / t)``, ``(B, *shapes[fine]) -> (B, *shapes[coarse])`` for edge
    ``k``; the block maxima are subtracted before dividing (finite at every accepted temperature)."""
    raw = h.block_max(x.detach(), k)  # (no gradient: the fast kernel)
    m = raw.clamp_min(torch.finfo(raw.dtype).min)  # a wholly masked block: -inf - (-inf) was NaN (ca_rev126)
    d = h._combine(x, m, k, torch.sub)
    # (a tensor t's gradient never forms d / t², which overflows at tiny temperatures: 0·inf was NaN;
    # the sums floored at 1, which only a wholly masked block's are below: its message is -inf, no NaN
    # in the gradient)
    lse = m + t * log_at_least_one(h.aggregate(torch.exp(divide_by_temperature(d, t)), k))
    return lse.masked_fill(torch.isneginf(raw), -math.inf)


#: How many temperatures below its map's lowest finite score a masked cell enters the amortised
#: sweeps on a graph (its weight there is at most e^-MASK_MARGIN of a cell's that counts).
MASK_MARGIN = 64.0


def _masked_held_low(s: Tensor, t) -> Tensor:
    """``s`` with each −∞ cell at :data:`MASK_MARGIN` temperatures ``t`` below the sample's lowest
    finite score (detached; a sample with none keeps 0 there)."""
    masked = torch.isneginf(s)
    finite = torch.where(masked, torch.full_like(s, math.inf), s).detach()
    low = finite.amin(sample_dims(s), keepdim=True)
    # (t a tensor stays one: float(t) read a learned temperature on the host per map and call, ca_rev128)
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low)) - MASK_MARGIN * (
        t.detach() if isinstance(t, Tensor) else t)
    return torch.where(masked, low, s)


def _times_finite(x: Tensor, factor) -> Tensor:
    """``x · factor`` with ``x``'s non-finite entries (−∞: masked) kept as they are and passing
    ``factor`` no gradient: ``0·(−∞)`` in the product's backward was NaN."""
    finite = torch.isfinite(x)
    return torch.where(finite, torch.where(finite, x, torch.zeros_like(x)) * factor, x)


def _centre_live(x: Tensor) -> Tensor:
    """``x`` less the per-sample mean of its finite entries, with 0 at the others: a feature of a
    coarse cell over a wholly masked block is -inf, which centred spread NaN over the sample
    (ca_rev126); that cell gets probability 0 whatever its dual (dual.with_implied_masks)."""
    live = torch.isfinite(x)
    kept = torch.where(live, x, torch.zeros_like(x))
    dims = sample_dims(x)
    mean = kept.sum(dims, keepdim=True) / live.sum(dims, keepdim=True).clamp_min(1)
    return torch.where(live, x - mean, torch.zeros_like(x))


def _block_step(h: Graph, e: int, eta_a: Tensor, eta_b: Tensor, ta, tb) -> Tensor:
    """The exact block step of edge ``e = (a → b)`` (docs/math.md §5), differentiable:
    ``centre((τ_b A_e − τ_a η_b) / (τ_a + τ_b))`` with ``A_e = τ_a blocklogsumexp_e(η_a / τ_a)``."""
    return centre((tb * _block_lse(h, eta_a, e, ta) - ta * eta_b) / (ta + tb))


#: How close (relative) the fixed temperatures of ConsistentAttention and of the AmortisedDuals it
#: is given must be: float32's rounding of one value apart (0.1 and float32's 0.1 were refused: a
#: review), far below a difference that would matter to duals held in float32.
TEMPERATURE_MATCH = 1e-6


def _temperatures_match(a, b) -> bool:
    """Whether two lists of fixed temperatures (numbers or 0-d tensors) are the same, map by map,
    to :data:`TEMPERATURE_MATCH`: what an AmortisedDuals' formula path is weighted for, checked
    where a layer takes one and where a state is loaded into one."""
    return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=TEMPERATURE_MATCH) for x, y in zip(a, b))


def _fixed(temps) -> bool:
    """Whether ``temps`` (a list of floats or tensors, or a tensor) are fixed numbers: none is a
    tensor that requires grad (a learned temperature moves, and is passed at each call)."""
    if isinstance(temps, Tensor):
        return not temps.requires_grad
    return not any(isinstance(t, Tensor) and t.requires_grad for t in temps)


class AmortisedDuals(_GraphBoundState):
    r"""Amortised duals: ``λ_e`` predicted for every sample from its own scores.

    ``AmortisedDuals(h, temperature)(scores)`` returns one tensor per edge ``e = (a → b)``,
    ``(B, *h.shapes[b])`` (on a hierarchy ``L-1`` tensors ``(B, *h.shapes[k+1])``), mean-zero
    per sample, for ``scores[k]``: ``(B, *h.shapes[k])``.  Use them with
    ``solve(..., "learned_dual", duals=...)`` or
    ``ConsistentAttention(h, "learned_dual", duals="amortised")``; train them with
    :func:`fit_amortised_duals` (the paper's consistency loss on training instances).  Its state
    carries the graph, and loads only into a module on the same graph (:class:`_GraphBoundState`).

    **Inputs on a hierarchy** (per constraint ``k``, on the grid of level ``k+1``, in score
    units).  With ``T_k = τ_0 + … + τ_k`` and the closed form's upward message ``m_0 = θ_0``,
    ``m_{k+1} = θ_{k+1} + A_k`` (docs/design.md §3), where
    ``A_k = T_k · blocklogsumexp_k(m_k / T_k)`` (for ``k = 0``: ``τ_0 · blocklogsumexp(θ_0/τ_0)``,
    the block log-sum-exp of the finer constraint's scores carried up the tree)::

        u_k = τ_{k+1} / T_{k+1} · A_k        v_k = T_k / T_{k+1} · θ_{k+1}
        d_k = u_k − v_k                      s_k = u_k + v_k

    Constraint ``k`` sees ``(d_k, s_k)`` and the ``(d_j, s_j)`` of every coarser constraint
    ``j > k`` broadcast to its grid: ``C_k = 2 + 2 (L − 2 − k)`` channels, each centred per
    sample (a constant per level moves no dual).  For two levels
    ``d_0 = τ_0τ_1/(τ_0+τ_1) · (blocklogsumexp(θ_0/τ_0) − θ_1/τ_1)`` *is* the optimal dual
    ``λ*`` up to its constant, and for any depth the optimum is a fixed linear combination of
    ``d_k`` and the broadcast ``d_j`` (weights set by the temperatures), so the linear path
    can express it exactly; the residual net is capacity for whatever it misses.

    **Inputs on any other graph** (per edge ``e = (a → b)``, on the grid of map ``b``).  There
    is no closed form, so the inputs are the first steps of the dual solver, written as
    differentiable torch operations: start from the closed form of a spanning forest (its
    optimal duals, zero on the other edges: :func:`convex_attention.dual.spanning_forest_duals`),
    apply ``sweeps`` exact block-coordinate sweeps (docs/math.md §5), and give edge ``e``
    two channels: its dual ``λ_e`` after the sweeps and the block step ``δ_e`` it would take
    next (each edge's step from the same point).  ``λ_e + δ_e`` is one more (Jacobi) sweep: the
    linear path starts there (weights 1, 1) and can learn over-relaxation beyond it; the
    residual net learns the rest.  On a forest the start is already the optimum (``δ = 0``).

    **Network** (per edge): ``λ_e = centre(linear(F_e) + residual(F_e))`` with ``linear`` a
    bias-free 1×1 convolution ``C_e → 1`` (the "formula" path: on a hierarchy it starts at the
    optimum, weight 1 on ``d_k`` and ``T_k / T_j`` on each broadcast ``d_j``, 0 on the ``s``
    channels, for the module's temperatures; ``λ_e + δ_e`` on other graphs) and
    ``residual`` ``layers`` convolutions ``C_e → hidden → … → 1`` with GELU between them,
    kernel 3 (``Conv1d/2d/3d``, ``padding=1``) on grids (a coarse map that ends an edge pooling
    grid blocks, however given: :meth:`Graph.pools_blocks`; every level of ``Hierarchy.grid``)
    or kernel 1 (a pointwise MLP) on irregular maps; its
    last layer starts at zero, so an untrained residual adds nothing.  ``layers=0``: no
    residual.

    **Cost** (:meth:`cost` gives the exact numbers): parameters per constraint
    ``C + C·h·K + h + (layers−2)(h²K + h) + h·K + 1`` for ``layers >= 2`` (``h`` hidden
    channels, ``K = 3^ndim`` kernel taps on grids, 1 on irregular maps), e.g. 2-D, two
    levels, ``h = 16``: 451.  FLOPs: about ``2 × parameters`` per coarse cell for the
    network, plus the features: ~6 per fine cell on a hierarchy (one block log-sum-exp pass,
    as in the closed form); on other graphs the closed form of the spanning forest and
    ``sweeps + 1`` sweeps (each ~10 per fine cell of every edge).  Memory: ``C + layers·h``
    values per coarse cell.

    Args:
        h: the hierarchy or graph.
        temperature: a positive float or one per map (the features depend on it).
        hidden: hidden channels of the residual net (>= 1).
        layers: convolutions in the residual net (>= 0; 0 disables it).
        sweeps: block-coordinate sweeps in the features of a graph that is not a hierarchy
            (>= 0; unused on a hierarchy).  Measured on the axial family (8² to 64², N(0, σ²)
            scores, τ = 1, 64 training instances, 150 steps): held-out violation / λ=0's
            ≤ 0.2 % at σ = 2 with 3 sweeps (≤ 1.1 % with 2); at σ = 3 with τ = (0.5, 2, 1),
            4–6 % with 3 sweeps and 0.45 % with 6 (docs/math.md §8).
    """

    def __init__(self, h: Graph, temperature=1.0, hidden: int = 16, layers: int = 2, sweeps: int = 3):
        super().__init__(h)
        self.temperature = check_temperatures(
            temperature, h.num_maps, unit=h._map_word,
            grad_refusal="AmortisedDuals(h, temperature) takes fixed temperatures (floats, or tensors that do not "
                         "require grad: temperature.detach()), from which its network starts; pass a learned "
                         "temperature per call instead: module(scores, temperature=τ), or "
                         "ConsistentAttention(h, 'learned_dual', temperature=τ, duals=module)")
        self.hidden = _check_positive_int(hidden, "hidden")
        self.layers = _check_positive_int(layers, "layers", minimum=0)
        self.sweeps = _check_positive_int(sweeps, "sweeps", minimum=0)
        self.chain = isinstance(h, Hierarchy)
        self._bind_records()  # (the temperatures' and the sweeps' records, now that they are set)
        convs, kernels = [], []
        if isinstance(h, Hierarchy):
            L = h.num_levels
            # (by the partitions, not how the edges were written: equal structures, one state; ca_rev115)
            grid = all(h.pools_blocks(e) for e in range(h.num_edges))
            ndim = len(h.shapes[0]) if grid else 1
            self.channels = [2 + 2 * (L - 2 - k) for k in range(L - 1)]
            # maps of more than 3 dimensions: pointwise on the flattened cells, as on graphs
            convs = [ndim if ndim <= 3 else 1] * (L - 1)
            kernels = [3 if grid and ndim <= 3 else 1] * (L - 1)
        else:
            self.channels = [2] * h.num_edges
            grid_maps = {m for e in range(h.num_edges) if h.pools_blocks(e) for m in h.edges[e]}
            for _, b in h.edges:
                nd = len(h.shapes[b])
                convs.append(nd if nd <= 3 else 1)
                kernels.append(3 if b in grid_maps and nd <= 3 else 1)
        conv_class = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
        self.linear = nn.ModuleList(conv_class[nd](c, 1, kernel_size=1, bias=False)
                                    for nd, c in zip(convs, self.channels))
        with torch.no_grad():
            if not self.chain:
                # the formula path starts at λ + δ: one more (Jacobi) sweep of the solver
                for conv in self.linear:
                    assert isinstance(conv, nn.modules.conv._ConvNd)
                    conv.weight.fill_(1.0)
            else:
                # ... and on a hierarchy at the optimum: λ*_k = d_k + Σ_{j>k} (T_k / T_j) d_j
                # broadcast (docs/math.md §8), the s channels at zero.  It started at random
                # weights, worse than λ = 0 untrained (152 % of its violation, a review), and
                # 100 Adam steps did not always recover (1.1 % on a 2-level chain).
                T = cumulative_temperatures(self.temperature)
                for k, conv in enumerate(self.linear):
                    assert isinstance(conv, nn.modules.conv._ConvNd)
                    weights = [1.0, 0.0] + [x for j in range(k + 1, L - 1) for x in (T[k] / T[j], 0.0)]
                    conv.weight.copy_(torch.tensor(weights, dtype=conv.weight.dtype).view_as(conv.weight))
        residual = []
        for nd, kernel, c in zip(convs, kernels, self.channels):
            mods: list[nn.Module] = []
            widths = [c] + [self.hidden] * (self.layers - 1) + [1]
            for i in range(self.layers):
                mods.append(conv_class[nd](widths[i], widths[i + 1], kernel_size=kernel, padding=kernel // 2))
                if i < self.layers - 1:
                    mods.append(nn.GELU())
            if mods:
                last = mods[-1]
                assert isinstance(last, nn.modules.conv._ConvNd) and last.bias is not None
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
            residual.append(nn.Sequential(*mods))
        self.residual = nn.ModuleList(residual) if self.layers > 0 else None

    def features(self, scores: Sequence[Tensor], temps=None) -> list[Tensor]:
        """The network's inputs: one tensor ``(B, C_e, *h.shapes[coarse(e)])`` per edge (see the
        class docstring), in the compute dtype of the scores; differentiable in the scores and
        in tensor temperatures."""
        temps = self.temperature if temps is None else temps
        if not self.chain:
            return self._graph_features(scores, temps)
        h, L = self.h, self.h.num_maps
        T = cumulative_temperatures(temps)
        work = compute_dtype(scores[0].dtype)
        # each level less its per-sample maximum first: a constant per level moves no dual, but
        # carried through the messages it was rounded in before centring took it off (float32
        # duals 7.9e-5 off at +1e3 per level, 2.6e-7 without: a review)
        scores = [less_max(s.to(work)) for s in scores]
        m = scores[0]
        own = []
        for k in range(L - 1):
            nxt = scores[k + 1]
            a = _block_lse(h, m, k, T[k])
            # (times a temperature ratio with the −∞ of a masked block or cell held out: its share
            # of the ratio's gradient, 0·(−∞), made a learned temperature's gradient NaN, ca_rev146)
            u = _times_finite(a, temps[k + 1] / T[k + 1])
            v = _times_finite(nxt, T[k] / T[k + 1])
            own.append((_centre_live(u - v), _centre_live(u + v)))
            m = nxt + a
        feats = []
        for k in range(L - 1):
            chans = list(own[k])
            for j in range(k + 1, L - 1):
                for x in own[j]:
                    for i in range(j, k, -1):
                        x = h.broadcast(x, i)
                    chans.append(x)
            feats.append(torch.stack(chans, 1))
        return feats

    def _graph_features(self, scores: Sequence[Tensor], temps) -> list[Tensor]:
        h = self.h
        work = compute_dtype(scores[0].dtype)
        scores = [less_max(s.to(work)) for s in scores]  # as on a hierarchy (a review: 1.2e-3 off at +1e4)
        # a masked cell (-inf) enters the sweeps MASK_MARGIN temperatures below its map's lowest
        # score: its -inf messages made every dual NaN (ca_rev126); the maps give it 0 whatever its
        # dual (dual.with_implied_masks), and the features stay those of the cells that count
        scores = [_masked_held_low(s, t) for s, t in zip(scores, temps)]
        lam = list(spanning_forest_duals(scores, h, temps))
        etas = reparameterized_logits(scores, lam, h)
        for _ in range(self.sweeps):
            for e in h.sweep_order:
                a, b = h.edges[e]
                delta = _block_step(h, e, etas[a], etas[b], temps[a], temps[b])
                lam[e] = lam[e] + delta
                etas[a] = h._combine(etas[a], delta, e, torch.sub)
                etas[b] = etas[b] + delta
        feats = []
        for e, (a, b) in enumerate(h.edges):
            step = _block_step(h, e, etas[a], etas[b], temps[a], temps[b])
            feats.append(torch.stack([centre(lam[e]), step], 1))
        return feats

    def _records(self) -> dict:
        # the temperatures the formula path's weights were set for: a state of a module built for others
        # had loaded silently, its maps 1.23 from consistent where its own gave 5e-7 (ca_rev164); and,
        # off a hierarchy, the sweeps its network's features were taken after (trained at 3, loaded
        # at 0: violation 0.52 where the saved module gave 0.007, ca_rev176)
        records = {**super()._records(), "built_temperature": self._temperature_tensor}
        if not self.chain:
            records["built_sweeps"] = self._sweeps_tensor
        return records

    def _sweeps_tensor(self, device=None) -> Tensor:
        return torch.tensor(self.sweeps, dtype=torch.int64, device=device)

    def _temperature_tensor(self, device=None) -> Tensor:
        return torch.tensor([float(t) for t in self.temperature], dtype=torch.float64, device=device)

    def check_state(self, state_dict, prefix: str = "") -> None:
        """As :meth:`_GraphBoundState.check_state`, and a state built for other temperatures is
        refused (its formula weights are set for them; ``ConsistentAttention`` refuses such a
        module at construction, as it does here).  A state saved without them (before
        2026-12-07) loads, unchecked."""
        super().check_state(state_dict, prefix)
        where = f"AmortisedDuals{f' {prefix[:-1]!r}' if prefix else ''}"
        sweeps = state_dict.get(prefix + "built_sweeps")
        if not self.chain and isinstance(sweeps, Tensor) and not sweeps.is_meta:
            held = sweeps.detach().cpu().flatten().tolist()
            if held != [self.sweeps]:
                raise ValueError(f"{where}: the state to load was trained on the features of {held} sweeps, this "
                                 f"module takes {self.sweeps} (its network reads them); build the module with "
                                 f"sweeps={held[0] if len(held) == 1 else held}; nothing of it was loaded into "
                                 f"this module")
        recorded = state_dict.get(prefix + "built_temperature")
        if not isinstance(recorded, Tensor) or recorded.is_meta:
            return
        values = recorded.detach().cpu().double().flatten().tolist()
        if not _temperatures_match(values, self.temperature):
            raise ValueError(f"{where}: the state to load was built for temperatures {values}, this module's are "
                             f"{list(self.temperature)} (its formula path is weighted for them); build the module "
                             f"with the state's temperatures; nothing of it was loaded into this module")

    def forward(self, scores: Sequence[Tensor], temperature=None, *, checked: bool = False) -> list[Tensor]:
        """One dual per edge ``(B, *h.shapes[coarse(e)])``, mean-zero per sample, in the compute
        dtype of the scores.  ``temperature`` (optional) replaces the module's for this call,
        e.g. a learnable tensor shared with the attention layer.  ``checked=True``: the caller
        validated ``scores`` and ``temperature`` (``M`` floats or 0-d tensors) already, as
        :class:`ConsistentAttention` does once per pass (it calls the module, so that hooks on
        it fire: ca_rev176); they are used as given."""
        if checked:
            return self.predict(scores, temperature)
        scores = check_scores(scores, self.h, check_finite=False)
        # the module's own temperatures too must lie in the range of the scores' compute dtype:
        # checked only at construction (in float64's), 1e-300 gave float32 scores NaN duals
        temps = check_temperatures(self.temperature if temperature is None else temperature, self.h.num_maps,
                                   dtype=scores[0].dtype, allow_grad=True, unit=self.h._map_word,
                                   scores_device=scores[0].device)
        return self.predict(scores, None if temperature is None else temps)

    def predict(self, scores: Sequence[Tensor], temps=None) -> list[Tensor]:
        """:meth:`forward` without its checks, for callers that validated ``scores`` and the
        temperatures already (``temps``: ``M`` floats or 0-d tensors, ``None``: the module's)."""
        work = compute_dtype(scores[0].dtype)
        first = self.linear[0]
        assert isinstance(first, nn.Module) and isinstance(first.weight, Tensor)
        pdtype = first.weight.dtype  # not next(parameters()): a DataParallel replica lists none
        if first.weight.device != scores[0].device:
            # torch convolves CPU features with a meta weight into CPU duals of uninitialised
            # memory (maps 1.5 from consistent, unrefused: ca_rev176)
            raise ValueError(f"AmortisedDuals' parameters are on {first.weight.device}, the scores on "
                             f"{scores[0].device}: move the module to the scores' device (module.to(...))")
        if torch.finfo(pdtype).bits < torch.finfo(work).bits:
            # the network would compute the duals at its own, lower precision (or range) and
            # hide it behind an output in the scores' dtype
            raise TypeError(f"AmortisedDuals holds {pdtype} parameters and the scores compute in {work}: its duals "
                            f"would have {pdtype}'s accuracy; convert the module (module.to({work}))")
        # never under the caller's autocast: its convolutions would run in bfloat16/float16 and the
        # duals would get that accuracy behind an output in the scores' dtype (the chain's exact
        # start went from violation 2e-7 to 6e-3 in a mixed-precision model: a review)
        # (torch has no autocast on every device: meta scores, traced, had raised there: ca_rev146)
        device_type = scores[0].device.type
        with (torch.autocast(device_type=device_type, enabled=False) if torch.amp.is_autocast_available(device_type)
              else contextlib.nullcontext()):
            out = []
            for k, feat in enumerate(self.features(scores, temps)):
                shape = feat.shape
                if feat.dim() > 5:  # maps of more than 3 dimensions: pointwise on the flattened cells
                    feat = feat.flatten(2)
                feat = feat.to(pdtype)
                lam = self.linear[k](feat)
                if self.residual is not None:
                    lam = lam + self.residual[k](feat)
                out.append(centre(lam.squeeze(1).reshape((shape[0],) + tuple(shape[2:]))).to(work))
        return out

    def cost(self) -> dict:
        """``{"parameters": int, "flops_per_cell": [E ints]}``: the parameter count and, per
        edge ``e``, the network's floating-point operations per coarse cell (2 per
        multiply-add, plus the biases; the features cost more, see the class docstring)."""
        flops = []
        for k in range(self.h.num_edges):
            convs = list(self.linear[k].modules()) + (list(self.residual[k].modules()) if self.residual is not None
                                                      else [])
            total = 0
            for c in convs:
                if not isinstance(c, nn.modules.conv._ConvNd):
                    continue
                taps = math.prod(c.kernel_size)
                total += 2 * c.in_channels * c.out_channels * taps + (c.out_channels if c.bias is not None else 0)
            flops.append(total)
        return {"parameters": sum(p.numel() for p in self.parameters()), "flops_per_cell": flops}

    def extra_repr(self) -> str:
        sweeps = "" if self.chain else f", sweeps={self.sweeps}"
        return f"{self.h}, temperature={self.temperature}, hidden={self.hidden}, layers={self.layers}{sweeps}"


_FIT_LOSSES = ("consistency", "dual")


def _warm_cosine(n: int):
    """The learning-rate factor of step ``i`` of ``n``: 10 % linear warm-up, then cosine decay."""
    warm = max(1, n // 10)

    def factor(i: int) -> float:
        return min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * i / n))

    return factor


def fit_amortised_duals(module: AmortisedDuals, train_scores: Sequence[Tensor], steps: int = 300,
                        lr: float = 0.3, loss: str = "consistency", residual_lr: float = 1e-3) -> list[float]:
    """Train an :class:`AmortisedDuals` on training instances (full batch, Adam).

    The loss is the paper's consistency loss ``Σ_k KL(b_k ‖ a_k)`` at the predicted duals
    (``loss="consistency"``, docs/design.md §2) or the dual function ``g(λ)``
    (``loss="dual"``, convex in the linear path).  Schedule: the first two thirds of the
    steps train the linear path alone (Adam, ``lr``, 10 % linear warm-up then cosine decay);
    the rest train the residual net alone (``residual_lr``, same schedule), so it can only
    refine what the linear path reached.  Frozen parameters (``requires_grad`` False) are
    left as they are; where one part has nothing to train, the other takes every step.  Adam
    moves every weight by about its learning rate whatever the gradient's size, so training
    both at once lets the residual's first steps swamp an already accurate formula path.  The
    module ends with the parameters of the lowest training loss seen (evaluated in float64
    whatever the module's dtype, so that rounding noise cannot pass for progress; slower on
    GPUs with little float64 throughput, and in the module's dtype on Apple's MPS, which has
    none), in the training mode it had; so too when the loss stops being finite (a
    ``FloatingPointError`` that says so).

    Args:
        module: the network (trained in place, on its own device and dtype).
        train_scores: ``L`` tensors ``(N, *module.h.shapes[k])``, instances disjoint from
            the ones it will be evaluated on.
        steps: Adam steps in all (>= 1).
        lr: learning rate of the linear path (> 0).
        loss: ``"consistency"`` or ``"dual"``.
        residual_lr: learning rate of the residual net (>= 0; 0 leaves it at zero).

    Returns:
        The training loss before every step (``steps`` floats).
    """
    if not isinstance(module, AmortisedDuals):
        raise TypeError(f"module must be an AmortisedDuals, got {type(module).__name__}")
    steps = _check_positive_int(steps, "steps")
    for name, value, low in (("lr", lr, 0.0), ("residual_lr", residual_lr, None)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or (value <= 0 if low is not None else value < 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if low is not None else '>= 0'}, got {value!r}")
    lr, residual_lr = float(lr), float(residual_lr)
    if loss not in _FIT_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(_FIT_LOSSES)}, got {loss!r}")
    h = module.h
    if torch.is_inference_mode_enabled():  # (its tensors cannot be trained: torch's error came from backward)
        raise RuntimeError("fit_amortised_duals trains the module, which torch.inference_mode() forbids: call it "
                           "outside inference mode (under torch.no_grad() it trains as usual)")
    # training instances are data: no gradient reaches the model that made them (scores that
    # carried its graph crashed the second step after writing into it: a review)
    train = [s.detach() for s in check_scores(train_scores, h, name="train_scores")]
    temps = module.temperature

    # The loss is evaluated in float64 whatever the module's dtype: it picks the parameters kept,
    # and near the optimum a float32 loss is rounding noise (~5e-8 against a true 1e-14 at the
    # exact start of a hierarchy), under which a step 1e6 times worse read lower and was kept
    # (a review: held-out violation 1e-7 -> 1e-4 after fitting a float32 module).
    # (Apple's MPS has no float64: there the module's own dtype is kept.)
    precise = torch.float64 if train[0].device.type != "mps" else train[0].dtype
    wide = [s.to(precise) for s in train]

    def objective() -> Tensor:
        duals = [d.to(precise) for d in module(train)]
        if loss == "consistency":
            return consistency_loss(wide, duals, h, temps, check_finite=False)
        return dual_function(wide, duals, h, temps).mean()

    # a frozen parameter (requires_grad False) stays as it is; a part with none to train gets no
    # phase, and the other part takes every step (a phase without a trainable parameter made
    # backward fail: "element 0 of tensors does not require grad", found by a review)
    linear = [p for p in module.linear.parameters() if p.requires_grad]
    residual = ([p for p in module.residual.parameters() if p.requires_grad]
                if module.residual is not None and residual_lr > 0 else [])
    if not linear and not residual:
        raise ValueError("fit_amortised_duals: no parameter of the module requires grad"
                         + ("" if module.residual is None or residual_lr > 0 else " (residual_lr 0 leaves the "
                            "residual net as it is)") + ": nothing to train")
    n_linear = steps if not residual else 0 if not linear else max(1, round(steps * 2 / 3))
    phases = [(params, n, rate) for params, n, rate in ((linear, n_linear, lr), (residual, steps - n_linear,
                                                                                  residual_lr)) if n > 0]
    history: list[float] = []
    best: tuple[float, dict | None] = (math.inf, None)
    was_training = module.training
    module.train()
    trainable = {p: p.requires_grad for p in module.parameters()}
    # trained whatever the caller's grad mode (under torch.no_grad(), an evaluation hook's, backward
    # had failed with torch's "does not require grad": ca_rev164)
    with torch.enable_grad():
        try:
            for params, n, rate in phases:
                # only this phase's parameters get gradients (no backward through the other part)
                chosen = {id(p) for p in params}
                for p in module.parameters():
                    p.requires_grad_(trainable[p] and id(p) in chosen)
                opt = torch.optim.Adam(params, lr=rate)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, _warm_cosine(n))
                for _ in range(n):
                    opt.zero_grad()
                    loss_value = objective()
                    current = float(loss_value.detach())
                    history.append(current)
                    if not math.isfinite(current):
                        if best[1] is not None:  # the weights of the last finite loss, not the diverged ones
                            module.load_state_dict(best[1])
                        # (the phase's own rate: a residual phase that diverged had been told to lower lr: ca_rev146)
                        name = "lr" if params is linear else "residual_lr"
                        raise FloatingPointError(f"fit_amortised_duals: the training loss became {current} at step "
                                                 f"{len(history)}; the module keeps the parameters of its lowest "
                                                 f"training loss so far; lower {name} ({rate}) or check the training "
                                                 f"scores")
                    if current < best[0]:
                        best = (current, copy.deepcopy(module.state_dict()))
                    loss_value.backward()
                    opt.step()
                    sched.step()
        finally:
            for p, flag in trainable.items():
                p.requires_grad_(flag)
            module.train(was_training)
    with torch.no_grad():
        final = float(objective())
    if best[1] is not None and not final <= best[0]:
        module.load_state_dict(best[1])
    return history


@dataclass
class Attended:
    """What a model attends with: the output of :meth:`ConsistentAttention.attend`.

    Attributes:
        maps: ``M`` tensors ``(B, *h.shapes[k])``, each summing to one per sample: the
            attention maps the model pools its features with.
        solution: the :class:`~convex_attention.Solution` whose ``probs`` are ``maps``
            (its ``violation`` is the maps' violation; for a method that needs duals with
            shared duals its ``method`` is ``"softmax"``: the maps are the per-level softmaxes;
            with amortised duals it is ``"learned_dual"``, the maps ``p(λ̂)``).
        aux_loss: 0-d tensor, the unweighted auxiliary loss to add to the task loss (the
            model weighs it): the consistency loss for methods that need duals, else 0.
    """

    maps: list
    solution: Solution
    aux_loss: Tensor


_DUAL_KINDS = ("shared", "amortised")


def _learned_temperatures(temperature) -> bool:
    """Whether ``temperature`` (a tensor, or a sequence holding tensors) holds a tensor that
    requires grad, whatever the grad mode; each must be an ``nn.Parameter``: registered with
    the module (in ``parameters()`` and ``state_dict()``, moved by ``.to()``), where a plain
    leaf would be learned only by an optimiser that holds it, and a computed tensor would
    keep a stale graph.  ValueError otherwise."""
    items = [temperature] if isinstance(temperature, Tensor) else (
        list(temperature) if isinstance(temperature, Sequence) and not isinstance(temperature, (str, bytes)) else [])
    grads = [t for t in items if isinstance(t, Tensor) and t.requires_grad]
    for t in grads:
        if not t.is_leaf:
            raise ValueError("a temperature tensor that requires grad must be a leaf nn.Parameter, or the module "
                             "would keep a stale graph; for a computed temperature call solve(..., temperature=...) "
                             "per forward pass (or ConsistentAttention's forward(scores, temperature=...))")
        if not isinstance(t, nn.Parameter):
            raise ValueError("a temperature tensor that requires grad must be an nn.Parameter, so that the module "
                             "registers it (in parameters() and state_dict(), moved by .to()); wrap it: "
                             "nn.Parameter(tensor)")
    return bool(grads) or any(isinstance(t, nn.Parameter) for t in items)


class ConsistentAttention(nn.Module):
    """Multi-level attention with a switchable consistency method.

    ``forward(scores) -> Solution`` and ``attend(scores) -> Attended``, with
    ``scores[k]``: ``(B, *h.shapes[k])``.

    Args:
        h: the hierarchy of attention levels (finest first) or the graph of maps; a method
            that cannot solve it (``Method.structures``) is refused here.
        method: a method of the registry (:data:`convex_attention.METHODS`: ``"softmax"``,
            ``"exact"``, ``"dual"``, ``"learned_dual"``, ``"cvxpylayers"``).
        temperature: a positive float or one per level; or a tensor of shape ``()`` or
            ``(L,)`` (per level, never per sample), or a list mixing floats and 0-d tensors.
            An ``nn.Parameter`` (or Parameters in the list) is registered with the module,
            whatever the grad mode at construction: learned with the model for the methods
            that differentiate through it (``softmax``, ``exact``, ``dual``,
            ``learned_dual``), saved in its ``state_dict`` and moved by ``.to()``.  Any
            other tensor that requires grad is refused (a plain leaf would be learned only by
            an optimiser holding it; a computed one would keep a stale graph: pass it per
            pass, ``forward(scores, temperature=...)``).
        check_finite: reject NaN/Inf scores and scores beyond ``validation.score_limit``
            (one host synchronisation on CUDA).
        duals: for methods that need duals (``"learned_dual"``): ``"shared"`` (default, the
            paper's :class:`LearnedDuals`), ``"amortised"`` (an :class:`AmortisedDuals`
            with default size), or a :class:`LearnedDuals` / :class:`AmortisedDuals` for
            ``h``.  Refused for other methods.
        **options: passed to :func:`convex_attention.solve`.

    Every argument is checked here, before any forward pass: an unknown method or option
    is a ValueError / TypeError at construction, as are option values the method's
    registry record can check in advance.
    """

    def __init__(self, h: Graph, method: str = "exact", temperature=1.0, check_finite: bool = True,
                 duals="shared", **options):
        super().__init__()
        check_hierarchy(h)
        record = get_method(method)
        record.check_structure(h)
        self.h, self.method = h, record.name
        # judged whether or not grad mode is on now: a module built under torch.no_grad() (an
        # inference script) must hold the same temperature as the one it was trained as
        with torch.enable_grad():
            temps = check_temperatures(temperature, h.num_maps, allow_grad=record.tensor_temperature,
                                       method=record.name, unit=h._map_word)
        learned = _learned_temperatures(temperature)
        # the temperature property reads one of these three, so that a Parameter torch replaces
        # (load_state_dict(assign=True), .to() under overwrite_module_params_on_conversion) is
        # the one used: never a second, stale reference to it
        layout, values = None, None
        if isinstance(temperature, nn.Parameter):  # (a tensor that requires grad is one, or was refused)
            self.register_parameter("temperature", temperature)  # learned, moved and saved with the module
        elif learned:  # a list holding Parameters: registered, the floats kept in their places
            self._temperature_parameters = nn.ParameterList([t for t in temperature if isinstance(t, nn.Parameter)])
            layout = [None if isinstance(t, nn.Parameter) else t for t in temperature]
        else:
            values = temps
        self._temperature_layout: list | None = layout
        self._temperature_values: list | None = values
        self.check_finite = check_flag(check_finite, "check_finite")
        if "given" in options:
            # an argument of solve, not an option of a method: refused as an unknown option it read
            # "method 'dual' takes no option(s) ['given']", while solve takes it (a review)
            raise TypeError("ConsistentAttention does not take given= (an argument of ca.solve, not a solver "
                            "option): call ca.solve(scores, h, method, given=...) for maps whose probabilities "
                            "are given")
        record.check_option_names(options)
        if record.check_options is not None:
            record.check_options(dict(options), h)
        if record.name == "dual" and options.get("init") is not None:
            # the registry's check reads init's form only (solve's pre-check; the solver reads its
            # values): at construction its values too, as before (a NaN start was refused here)
            check_dual_options(dict(options), h, None, None)
        self.options = options
        self.learned_duals = self._make_duals(record, duals, temps)

    __prepare_scriptable__ = _refuse_scripting

    @property
    def temperature(self) -> Tensor | list:
        """The module's temperatures: its registered Parameter, a list with its registered
        Parameters in their places, or floats."""
        registered = self._parameters.get("temperature")
        if registered is not None:
            return registered
        replica = self.__dict__.get("_temperature_replica")
        if replica is not None:  # a DataParallel replica's copy of the registered Parameter
            return replica
        layout, values = self.__dict__.get("_temperature_layout"), self.__dict__.get("_temperature_values")
        if layout is not None:
            params = iter(self._temperature_parameters)
            return [next(params) if slot is None else slot for slot in layout]
        if values is None:  # not set yet (construction): as an attribute that does not exist
            raise AttributeError("temperature")
        return values

    @temperature.setter
    def temperature(self, value) -> None:
        # torch.nn.parallel.replicate (nn.DataParallel) gives a replica, which registers no
        # Parameters, its copy of the registered temperature by setattr; nothing else sets it
        if not isinstance(value, Tensor) or not self.__dict__.get("_is_replica", False):
            raise AttributeError("the temperature is set when the module is built (a Parameter in it is trained)")
        self.__dict__["_temperature_replica"] = value

    def _make_duals(self, record, duals, temps):
        if isinstance(duals, (LearnedDuals, AmortisedDuals)):
            if not record.needs_duals:
                raise ValueError(f"duals are only used by methods that need them, not {record.name!r}")
            if duals.h != self.h:
                raise ValueError(f"duals were built for {duals.h}, the module for {self.h}")
            # (a meta temperature holds no value to compare: the layer is built, and refuses it beside
            # scores with values; its float() had raised torch's item() error, ca_rev183)
            if isinstance(duals, AmortisedDuals) and _fixed(temps) and _fixed(duals.temperature) and not any(
                    isinstance(t, Tensor) and t.is_meta for t in (*temps, *duals.temperature)) and \
                    not _temperatures_match(temps, duals.temperature):
                # its formula path is weighted for its own temperatures, and the layer would give it
                # the features of its own: violation 1.1 where the right module gives 6e-9 (a review)
                raise ValueError(f"the AmortisedDuals were built for temperatures {list(duals.temperature)}, the "
                                 f"module's are {list(temps)}: build them with the module's "
                                 f"(ca.AmortisedDuals(h, temperature)) or pass duals='amortised'")
            return duals
        if not isinstance(duals, str) or duals not in _DUAL_KINDS:
            raise ValueError(f"duals must be one of {', '.join(map(repr, _DUAL_KINDS))} or a LearnedDuals / "
                             f"AmortisedDuals module, got {duals!r}")
        if not record.needs_duals:
            if duals != "shared":
                raise ValueError(f"duals={duals!r} is only used by methods that need duals, not {record.name!r}")
            return None
        if duals == "amortised":
            if any(isinstance(t, Tensor) and t.is_meta for t in temps):
                # its formula path is weighted for the temperatures it is built for, and a meta
                # tensor holds none (torch's item() error had said so: ca_rev176)
                raise ValueError("duals='amortised' builds an AmortisedDuals for the layer's temperatures, and a "
                                 "temperature on the meta device holds no value: build the layer off the meta "
                                 "device, or pass duals=ca.AmortisedDuals(h, temperature) built with the values")
            return AmortisedDuals(self.h, [float(t.detach()) if isinstance(t, Tensor) else t for t in temps])
        return LearnedDuals(self.h)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # the duals' graph checked before this module's own parameters (a learned temperature)
        # are loaded: PyTorch loads them first, and a refused state had set them (ca_rev98)
        if isinstance(self.learned_duals, _GraphBoundState):
            self.learned_duals.check_state(state_dict, prefix + "learned_duals.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _duals(self, scores: Sequence[Tensor], temps) -> list[Tensor] | None:
        """The module's duals for ``scores`` at the validated temperatures ``temps``."""
        if self.learned_duals is None:
            return None
        if isinstance(self.learned_duals, AmortisedDuals):
            return self.learned_duals(scores, temps, checked=True)
        return self.learned_duals()

    def _temperatures(self, temperature, scores: Tensor) -> list:
        """The temperatures of one pass, validated once for ``scores`` (any one map's): the module's,
        or ``temperature`` (a tensor that requires grad is differentiated through by the methods
        that can)."""
        record = get_method(self.method)
        return check_temperatures(self.temperature if temperature is None else temperature, self.h.num_maps,
                                  dtype=scores.dtype, allow_grad=record.tensor_temperature, method=record.name,
                                  unit=self.h._map_word, scores_device=scores.device)

    def forward(self, scores: Sequence[Tensor], temperature=None) -> Solution:
        """The method's :class:`~convex_attention.Solution`; ``temperature`` (optional)
        replaces the module's for this pass (e.g. a temperature computed from a learned
        parameter, which the module must not keep between passes)."""
        record = get_method(self.method)
        if record.needs_duals:  # validated once (through solve too, a learned temperature was read twice more)
            scores, temps, duals, sources = self._checked_pass(scores, temperature)
            probs, lam, info = record.function(scores, self.h, temps, duals, dict(self.options))
            return Solution(probs, scores, self.h, temps, record.name, lam, info, sources=sources)
        temperature = self.temperature if temperature is None else temperature
        return solve(scores, self.h, self.method, temperature, check_finite=self.check_finite, **self.options)

    def _checked_pass(self, scores: Sequence[Tensor], temperature) -> tuple[list, list, list, list]:
        """``(scores, temps, duals, sources)`` of one pass of a method that needs duals, each checked
        once: the scores (with the masks pooling implies, where ``check_finite`` is off: as solve), the
        temperatures (the module's, or ``temperature``) and the module's duals for these scores;
        ``sources`` the scores as given where masks were added (a Solution watches them for in-place
        changes, as solve's); under torch.func.vmap the pass is refused, as solve refuses it (ca_rev133)."""
        record = get_method(self.method)
        check_transforms(f"ConsistentAttention(method={record.name!r})", record.func_transforms)
        scores, peak_sum = check_scores_and_peaks(scores, self.h, check_finite=self.check_finite)
        scores, sources = scores_the_method_sees(scores, self.h, record, self.check_finite)  # as solve
        temps = self._temperatures(temperature, scores[0])
        duals = check_duals(self._duals(scores, temps), self.h, scores[0].shape[0], compute_dtype(scores[0].dtype),
                            scores[0].device, check_finite=self.check_finite, score_peak_sum=peak_sum)
        return scores, temps, duals, sources

    def consistency_loss(self, scores: Sequence[Tensor], detach_target: bool = False, temperature=None) -> Tensor:
        """The paper's loss at the module's duals (zeros if it has none)."""
        # consistency_loss(scores, 2.0) read a temperature as True
        check_flag(detach_target, "detach_target",
                   "the temperature is the third argument: consistency_loss(scores, temperature=...)")
        temperature = self.temperature if temperature is None else temperature
        scores = check_scores(scores, self.h, check_finite=False)
        duals = self._duals(scores, check_temperatures(temperature, self.h.num_maps, dtype=scores[0].dtype,
                                                       allow_grad=True, unit=self.h._map_word,
                                                       scores_device=scores[0].device))
        if duals is None:
            duals = [torch.zeros((1,) + self.h.shapes[b], device=scores[0].device) for _, b in self.h.edges]
        return consistency_loss(scores, duals, self.h, temperature, detach_target=detach_target,
                                check_finite=self.check_finite)

    def attend(self, scores: Sequence[Tensor], temperature=None) -> Attended:
        """The layer as a model uses it: maps to pool with, and the loss to add.

        For a method that needs duals (``"learned_dual"``, the paper) with shared duals the
        maps are the per-level softmax of the scores (the paper's forward pass) and
        ``aux_loss`` is the consistency loss at the module's duals, which trains the scores
        (and the duals) towards consistent maps.  With amortised duals the maps are ``p(λ̂)``
        at the duals predicted for these scores (what :meth:`forward` returns), and
        ``aux_loss`` the consistency loss there, which trains the network towards consistent
        maps: the predicted duals start at the optimum of each input (on a hierarchy), where
        that loss is zero whatever the scores, so with softmax maps it gave no signal and the
        maps stayed as inconsistent as the scores made them (violation up to 1.96 of 2:
        ca_rev88).  For every other method the maps are the method's probabilities and
        ``aux_loss`` is zero.  ``aux_loss`` is unweighted.
        ``temperature`` (optional) replaces the module's for this pass, as in :meth:`forward`.

        Scores and temperatures are validated once per pass.
        """
        record = get_method(self.method)
        if not record.needs_duals:
            solution = self(scores, temperature)
            aux = torch.zeros((), dtype=compute_dtype(solution.probs[0].dtype), device=solution.probs[0].device)
            return Attended(list(solution.probs), solution, aux)
        scores, temps, duals, sources = self._checked_pass(scores, temperature)
        work = compute_dtype(scores[0].dtype)
        if isinstance(self.learned_duals, AmortisedDuals):
            probs, lam, info = record.function(scores, self.h, temps, duals, dict(self.options))
            solution = Solution(probs, scores, self.h, temps, record.name, lam, info, sources=sources)
        else:
            solution = Solution([level_softmax(s, t) for s, t in zip(scores, temps)], scores, self.h, temps, "softmax",
                                sources=sources)
        aux = consistency_loss_unchecked([s.to(work) for s in scores], duals, self.h, temps)
        return Attended(list(solution.probs), solution, aux)

    def extra_repr(self) -> str:
        # on one line: a Parameter's repr spans lines ("Parameter containing:\n...": ca_rev176)
        def shown(t) -> str:
            if isinstance(t, nn.Parameter):
                return "Parameter"  # (learned: its value moves)
            if isinstance(t, Tensor):
                return f"tensor({t.item():g})" if t.numel() == 1 and not t.is_meta else "tensor"
            return repr(t)

        if isinstance(self.temperature, list):
            temperature = f"[{', '.join(shown(t) for t in self.temperature)}]"
        else:
            temperature = "tensor"
        return f"{self.h}, method={self.method!r}, temperature={temperature}"


_SCALES = ("bounded", "learned")


class ScoreHead(nn.Module):
    """Attention scores from a feature map, as in the paper's attention CNN.

    ``(B, C, *spatial) -> (B, *spatial)``: a 1×1 convolution to an embedding, L2
    normalisation over channels, ReLU, and a 1×1 convolution to one channel.

    With ``scale="bounded"`` (the paper's head, the default) the normalisation bounds the
    scores: ``|θ − b| ≤ ‖w‖`` (``w``, ``b``: the last convolution), so a map can be only as
    peaked as ``‖w‖`` allows (``N · max p ≤ N e^{2‖w‖} / (e^{2‖w‖} + N − 1)`` over ``N``
    cells).  ``scale="learned"`` multiplies the normalised embedding by a learnable gain
    ``g = exp(log_gain)`` (positive, initialised to 1, so the two heads agree at
    initialisation): ``|θ − b| ≤ g ‖w‖``, and the head can sharpen its maps as far as the
    task needs.

    Args:
        in_channels: channels ``C`` of the features (>= 1).
        embed_channels: channels of the embedding (>= 1).
        ndim: spatial dimensions, 1, 2 or 3.
        scale: ``"bounded"`` or ``"learned"``.
    """

    def __init__(self, in_channels: int, embed_channels: int = 64, ndim: int = 2, scale: str = "bounded"):
        super().__init__()
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(embed_channels, "embed_channels")
        if isinstance(ndim, bool) or ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3 (spatial dimensions of the features), got {ndim!r}")
        if scale not in _SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(repr, _SCALES))}, got {scale!r}")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        self.ndim, self.scale = ndim, scale
        self.embed = conv(in_channels, embed_channels, kernel_size=1)
        self.relu = nn.ReLU()  # a module, so that attribution methods (DeepLIFT, LRP) see it
        self.score = conv(embed_channels, 1, kernel_size=1)
        self.log_gain: nn.Parameter | None
        self.register_parameter("log_gain", nn.Parameter(torch.zeros(())) if scale == "learned" else None)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._parameters.setdefault("log_gain", None)  # a bounded head pickled whole before ca_rev262 had none

    def gain(self) -> Tensor | float:
        """The factor after the L2 normalisation: ``exp(log_gain)``, or 1 for the bounded head."""
        return self.log_gain.exp() if self.log_gain is not None else 1.0

    def forward(self, features: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # (TorchScript: a model holding the head scripts, ca_rev262)
            if features.dim() != self.ndim + 2:
                raise ValueError("features must be a (B, C, *spatial) tensor with as many spatial dimensions as "
                                 "this score head's ndim")
        else:
            self._check_features(features)
        x = F.normalize(self.embed(features), dim=1)
        if self.log_gain is not None:  # (scale "learned"; None, and in no state, for "bounded")
            x = x * self.log_gain.exp()
        return self.score(self.relu(x)).squeeze(1)

    @torch.jit.unused
    def _check_features(self, features) -> None:
        if not isinstance(features, Tensor) or features.dim() != self.ndim + 2:
            got = tuple(getattr(features, "shape", ())) or type(features).__name__
            raise ValueError(f"features must be a (B, C, *spatial) tensor with {self.ndim} spatial dimension(s) "
                             f"for this score head, got {got}")

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"
