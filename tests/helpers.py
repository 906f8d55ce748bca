"""Shared test helpers: an independent reference solver, random instances, tolerances.

The reference is a plain CVXPY problem written out here (not the package's cvx.py): one
explicit aggregation matrix per edge (a hierarchy's edge k is k -> k+1) and a simplex
constraint on the smallest map of every connected component (components found here; pooling
carries it to the other maps: simplex constraints on every map are redundant equalities,
which cost Clarabel accuracy, 1.4e-6 on a disconnected forest, and one on the largest map
2e-7), Clarabel at 1e-12, retried with smaller static regularisation when inaccurate, then
polished by Newton's method on the dual written out here in numpy (Clarabel's certificate,
~1e-10 in objective, bounds the probabilities only to ~1e-5; polished, they agree with the
package's solvers to ~1e-12, which lets the tests compare at 1e-7).  Clarabel sometimes
labels such a solve "optimal_inaccurate" (its reduced-tolerance exit); the reference is
therefore accepted on its own certificate, computed here in numpy: primal residual and
duality gap both below 1e-9.

Graph families (GRAPH_CASES, make_graph): tiny instances of every structure the methods
must solve, with parent maps written out here from coordinates (not from the package).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

import convex_attention as ca
from convex_attention.bench.generators import random_parents  # noqa: F401  (re-exported for the tests)

# Tolerances by dtype for comparisons of probabilities with the reference.
PROB_ATOL = {torch.float64: 1e-6, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}

GRID_CASES = {
    "1d-2lvl": [(12,), (4,)],
    "1d-3lvl": [(8,), (4,), (2,)],
    "2d-2lvl": [(4, 4), (2, 2)],
    "2d-3lvl-unequal": [(6, 4), (3, 2), (1, 2)],
    "3d-2lvl": [(4, 4, 2), (2, 2, 1)],
    "3d-3lvl": [(4, 2, 4), (2, 2, 2), (1, 1, 2)],
}
IRREGULAR_CASES = {"irregular-2lvl": [10, 4], "irregular-3lvl": [12, 5, 2]}
ALL_CASES = sorted(GRID_CASES) + sorted(IRREGULAR_CASES)


def read_json(path, **kwargs):
    """A JSON file's content, read through a closed file (``json.load(open(p))`` leaves the
    file to the garbage collector: a ResourceWarning under ``-W error``)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f, **kwargs)


def read_csv_rows(path) -> list[dict]:
    """A CSV file's rows as dicts, read through a closed file."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_text(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_hierarchy(case: str, seed: int = 0) -> ca.Hierarchy:
    if case in GRID_CASES:
        return ca.Hierarchy.grid(GRID_CASES[case])
    g = torch.Generator().manual_seed(seed)
    sizes = IRREGULAR_CASES[case]
    return ca.Hierarchy.from_parents(sizes, random_parents(sizes, g))


@dataclass
class Instance:
    h: ca.Hierarchy
    scores: list
    temps: list


def random_instance(case: str, batch: int = 4, seed: int = 0, dtype=torch.float64, scale: float = 2.0,
                    equal_temps: bool = False) -> Instance:
    h = make_hierarchy(case, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    scores = [(scale * torch.randn((batch,) + s, generator=g, dtype=torch.float64)).to(dtype) for s in h.shapes]
    if equal_temps:
        temps = [1.0] * h.num_levels
    else:
        temps = (0.3 + 2.7 * torch.rand(h.num_levels, generator=g, dtype=torch.float64)).tolist()
    return Instance(h, scores, temps)


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with BatchNorm statistics that are not the fresh ones (so eval and training modes
    differ) and classifier weights × 50 (so its logits are not all near 0, nor its maps all zero);
    the global RNG draws them: seed it first."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.3)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        model.classifier.weight.mul_(50.0)
    return model


def softmax_gradient_reference(theta, tau: float, weights) -> list[float]:
    """``∂⟨w, softmax(θ / τ)⟩ / ∂θ = q ⊙ (w − ⟨q, w⟩) / τ`` for one block, in 60-digit decimal
    arithmetic from the given floats: far below either dtype's rounding, also where the block
    is nearly one-hot and the two terms cancel in floating point."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        th, t, w = [Decimal(float(v)) for v in theta], Decimal(float(tau)), [Decimal(float(v)) for v in weights]
        top = max(th)
        e = [((v - top) / t).exp() for v in th]
        total = sum(e)
        q = [v / total for v in e]
        mean = sum(qi * wi for qi, wi in zip(q, w))
        return [float(qi * (wi - mean) / t) for qi, wi in zip(q, w)]


def aggregation_matrix(h: ca.Graph, k: int) -> np.ndarray:
    """``P_k`` of edge ``k = (a -> b)`` as a dense ``(n_b, n_a)`` 0/1 matrix (a hierarchy: ``(n_{k+1}, n_k)``)."""
    a, b = h.edges[k]
    par = h.parents(k).numpy()
    P = np.zeros((h.sizes[b], h.sizes[a]))
    P[par, np.arange(h.sizes[a])] = 1.0
    return P


# The polish's residual at which its maps are the optimum to rounding, whatever CVXPY's residual
POLISHED = 1e-12
# What a float64 solve that is exact to rounding (exact; dual at tol <= 1e-11) is held to against
# reference_solve, absolute: the polished reference agrees with exact to 6e-15 in probabilities,
# 4e-13 in duals and 4e-14 in objective, and dual at tol 1e-11 (1e-12 on graphs) with it to 3e-13,
# 2e-12 and 5e-14 (every chain case and graph family, five seeds; ca_rev222), so these sit two
# orders of magnitude above the worst seen and five below a float32 slip (the tests had held
# them to 1e-6, 1e-5 and 1e-7, where CVXPY's unpolished answer was 8.5e-8 and 1.1e-6 off)
REFERENCE_ATOL = {"probs": 1e-10, "duals": 1e-9, "objective": 1e-11}


def dual_incidence(sizes, edges, mats) -> tuple[list[np.ndarray], np.ndarray]:
    """``(A, offsets)``: the dense ``A_k`` with ``η_k = θ_k + A_k λ`` (``λ`` the edges' duals
    stacked, edge ``e`` at ``offsets[e]:offsets[e + 1]``; ``+I`` on its coarse map, ``−P_eᵀ`` on
    its fine one), written out from docs/design.md §2 for the numpy references."""
    offsets = np.cumsum([0] + [m.shape[0] for m in mats])
    A = [np.zeros((n, offsets[-1])) for n in sizes]
    for e, (a, b) in enumerate(edges):
        A[b][:, offsets[e]:offsets[e + 1]] += np.eye(sizes[b])
        A[a][:, offsets[e]:offsets[e + 1]] -= mats[e].T
    return A, offsets


def _polish(theta, mats, edges, temps, lam, p_start, given=None):
    """Newton's method on the dual, in numpy, from the CVXPY duals ``lam``: Clarabel's solution
    is certified to ~1e-10 in objective, which bounds the probabilities only to ~1e-5 (the
    entropy is flat); a few Newton steps take them to rounding.  Written out here from the
    dual's formulas (docs/design.md §2), dense, with a backtracking line search; accepted where
    it lowers the residual ``max_e |P_e p_a − p_b|`` or brings it to rounding (``POLISHED``).  Its
    maps are ``p(λ)``, stationary by construction, so their residual is the whole distance to the
    optimum; CVXPY's may be feasible to 1e-15 and still 1e-7 from it (a review, ca_rev222: the
    polish had been thrown away there, leaving the reference 8.5e-8 off in probabilities and
    1.1e-6 in duals).  Returns ``(probs, duals, f(p))``.
    ``given``: ``{k: q_k}`` maps held at ``q_k`` (their term of g is ``<η_k, q_k>``, no curvature;
    ``theta[k]`` zeros)."""
    given = given or {}
    M = len(theta)
    A, offsets = dual_incidence([t.shape[0] for t in theta], edges, mats)
    x = np.concatenate(lam)

    def state(x):
        g, probs = 0.0, []
        for k in range(M):
            if k in given:
                g += (A[k] @ x) @ given[k]
                probs.append(given[k])
                continue
            z = (theta[k] + A[k] @ x) / temps[k]
            top = z.max()
            g += temps[k] * (top + np.log(np.exp(z - top).sum()))
            probs.append(np.exp(z - top) / np.exp(z - top).sum())
        return g, probs

    def residual(probs):
        return max(np.abs(mats[e] @ probs[a] - probs[b]).max() for e, (a, b) in enumerate(edges))

    g, probs = state(x)
    start = residual(p_start)
    for _ in range(20):
        grad = sum(A[k].T @ probs[k] for k in range(M))
        H = sum(A[k].T @ ((np.diag(probs[k]) - np.outer(probs[k], probs[k])) / temps[k]) @ A[k] for k in range(M)
                if k not in given)
        for e in range(len(edges)):  # the gauge: a constant per dual moves nothing
            lo, hi = offsets[e], offsets[e + 1]
            H[lo:hi, lo:hi] += 1.0 / (hi - lo)
        step = -np.linalg.lstsq(H, grad, rcond=None)[0]
        t, now = 1.0, residual(probs)
        while t > 1e-6:
            g_new, p_new = state(x + t * step)
            # near the optimum g's decrease (~ residual²) is below its own rounding: there the
            # residual, g's gradient, decides
            if g_new <= g or residual(p_new) < now:
                break
            t /= 2
        if t <= 1e-6:
            break
        x, g, probs = x + t * step, g_new, p_new
        if residual(probs) < 1e-14:
            break
    if residual(probs) >= max(start, POLISHED):
        return p_start, lam, None
    duals = [x[offsets[e]:offsets[e + 1]] for e in range(len(edges))]
    f = sum(theta[k] @ probs[k] - temps[k] * np.sum(probs[k][probs[k] > 0] * np.log(probs[k][probs[k] > 0]))
            for k in range(M) if k not in given)
    return probs, duals, f


def _root(parent: list, k: int) -> int:
    while parent[k] != k:
        k = parent[k]
    return k


def reference_solve(h: ca.Graph, scores, temps):
    """Solve each sample with CVXPY + Clarabel (tolerances 1e-12), certificate-checked.

    Any structure: maps ``k`` (levels of a hierarchy) and edges ``e = (a -> b)`` (a hierarchy's
    edge k is k -> k+1), one simplex constraint per connected component.  The certificate
    checks the simplex residual of every map.

    Returns ``(probs, duals, value)``: lists of ``(B, n_k)`` (per map) / ``(B, n_b)`` (per
    edge) float64 arrays (duals centred; the sign convention of CVXPY for ``P_e p_a == p_b``
    in a maximisation, which is docs/design.md's λ) and ``(B,)`` optimal values.
    """
    import cvxpy as cp

    M, edges = len(h.sizes), list(h.edges)
    flat = [s.detach().double().reshape(s.shape[0], -1).numpy() for s in scores]
    B = flat[0].shape[0]
    probs = [np.zeros((B, n)) for n in h.sizes]
    duals = [np.zeros((B, h.sizes[b])) for _, b in edges]
    values = np.zeros(B)
    mats = [aggregation_matrix(h, e) for e in range(len(edges))]
    component = list(range(M))  # union-find over the edges, undirected
    for a, b in edges:
        ra, rb = a, b
        while component[ra] != ra:
            ra = component[ra]
        while component[rb] != rb:
            rb = component[rb]
        component[max(ra, rb)] = min(ra, rb)
    roots = [k for k in range(M) if component[k] == k]
    groups = {r: [k for k in range(M) if _root(component, k) == r] for r in roots}
    firsts = [min(members, key=lambda k: h.sizes[k]) for members in groups.values()]
    for i in range(B):
        ps = [cp.Variable(n) for n in h.sizes]
        obj = sum(flat[k][i] @ ps[k] + temps[k] * cp.sum(cp.entr(ps[k])) for k in range(M))
        consistency = [mats[e] @ ps[a] == ps[b] for e, (a, b) in enumerate(edges)]
        simplex = [cp.sum(ps[k]) == 1 for k in firsts]
        prob = cp.Problem(cp.Maximize(obj), consistency + simplex)
        best = None
        # Clarabel's reduced-accuracy exit comes from its static regularisation: retry with smaller ones
        for extra in ({}, {"static_regularization_constant": 1e-10}, {"static_regularization_constant": 1e-12}):
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-12,
                       **extra)
            assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
            p = [ps[k].value for k in range(M)]
            lam = [c.dual_value for c in consistency]
            residual = max([abs(q.sum() - 1) for q in p]
                           + [np.abs(mats[e] @ p[a] - p[b]).max() for e, (a, b) in enumerate(edges)]
                           + [max(0.0, -q.min()) for q in p])
            f = sum(flat[k][i] @ p[k] - temps[k] * np.sum(p[k][p[k] > 0] * np.log(p[k][p[k] > 0])) for k in range(M))
            g = 0.0
            for k in range(M):
                eta = flat[k][i].copy()
                for e, (a, b) in enumerate(edges):
                    if b == k:
                        eta += lam[e]
                    if a == k:
                        eta -= mats[e].T @ lam[e]
                z = eta / temps[k]
                g += temps[k] * (z.max() + np.log(np.exp(z - z.max()).sum()))
            cert = max(residual, abs(g - f))
            if best is None or cert < best[0]:
                best = (cert, p, lam, prob.value, prob.status)
            if cert < 1e-11:
                break
        cert, p, lam, value, status = best
        assert cert < 1e-9, (status, cert)
        p, lam, value = _polish([flat[k][i] for k in range(M)], mats, edges, temps, lam, p)
        for k in range(M):
            probs[k][i] = p[k]
        for e in range(len(edges)):
            duals[e][i] = lam[e] - lam[e].mean()
        values[i] = value if value is not None else best[3]
    return probs, duals, values


# ---------------------------------------------------------------- graph families

def _cells(shape) -> np.ndarray:
    """Row-major coordinates of a grid: ``(prod(shape), len(shape))``."""
    return np.stack(np.unravel_index(np.arange(math.prod(shape)), shape), 1)


def block_parents(fine, coarse) -> torch.Tensor:
    """The parent map of grid pooling ``fine -> coarse``, written from coordinates."""
    c = _cells(fine) // (np.array(fine) // np.array(coarse))
    return torch.from_numpy(np.ravel_multi_index(tuple(c.T), coarse))


def cutting_regions(shape, num_regions: int, seed: int) -> torch.Tensor:
    """Regions of a 2-D grid that cut across any block grid: nearest of ``num_regions``
    random centres (every region non-empty, relabelled 0 … R-1), ``(prod(shape),)``."""
    rng = np.random.default_rng(seed)
    cells = _cells(shape) + 0.5
    centres = cells[rng.choice(len(cells), num_regions, replace=False)] + rng.uniform(-0.3, 0.3, (num_regions, 2))
    label = ((cells[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    return torch.from_numpy(np.unique(label, return_inverse=True)[1].reshape(-1))


def _graph(case: str, seed: int) -> ca.Graph:
    rng = np.random.default_rng(seed)
    if case == "chain-graph":  # a chain given as a graph, maps out of index order
        p01 = torch.from_numpy(rng.permutation(np.arange(9) % 4))
        p12 = torch.tensor([0, 1, 1, 0])
        return ca.Graph.from_edges([4, 9, 2], [(1, 0, p01), (0, 2, p12)])
    if case == "star":
        return ca.Graph([(4, 4), (4, 4), (4, 2), (2, 2)], [(0, 3), (1, 3), (2, 3, block_parents((4, 2), (2, 2)))])
    if case == "star-irregular":
        return ca.Graph.from_edges([7, 5, 9, 3], [(k, 3, torch.from_numpy(rng.permutation(np.arange(n) % 3)))
                                                  for k, n in enumerate((7, 5, 9))])
    if case == "tree":  # two levels of stars: 0, 1 -> 2; 2, 3 -> 4
        return ca.Graph.from_edges([8, 6, 4, 5, 2], [
            (0, 2, torch.from_numpy(rng.permutation(np.arange(8) % 4))),
            (1, 2, torch.from_numpy(rng.permutation(np.arange(6) % 4))),
            (2, 4, torch.tensor([0, 1, 1, 0])), (3, 4, torch.tensor([1, 0, 1, 0, 1]))])
    if case == "axial":
        rows = torch.from_numpy(_cells((4, 3))[:, 0])
        cols = torch.from_numpy(_cells((4, 3))[:, 1])
        return ca.Graph.from_edges([12, 4, 3], [(0, 1, rows), (0, 2, cols)])
    if case == "grid-regions":
        return ca.Graph([(4, 4), (2, 2), 3], [(0, 1, block_parents((4, 4), (2, 2))), (0, 2, cutting_regions((4, 4), 3,
                                                                                                              seed))])
    if case == "mixed":  # a chain of grids plus regions of its finest map
        return ca.Graph([(4, 4), (2, 2), (1, 2), 4], [(0, 1), (1, 2), (0, 3, cutting_regions((4, 4), 4, seed))])
    if case == "mixed-two-resolutions":  # X (4x4) and Y (2x4) pooled onto a shared grid and shared regions
        ry = cutting_regions((2, 4), 3, seed).reshape(2, 4)
        # an X cell takes the region of its Y cell on even rows and of the Y cell to its right on odd ones,
        # so X's regions are not Y's lifted: the two maps meet only through the grid and the regions
        rx = torch.stack([ry[i // 2, (j + i % 2) % 4] for i in range(4) for j in range(4)])
        return ca.Graph([(4, 4), (2, 4), (1, 2), 3], [(0, 2), (1, 2), (0, 3, rx), (1, 3, ry.reshape(-1))])
    if case == "disconnected":  # an axial part, a chain and a map on its own
        rows = torch.from_numpy(_cells((3, 2))[:, 0])
        cols = torch.from_numpy(_cells((3, 2))[:, 1])
        chain = torch.tensor([0, 1, 0, 1, 1])
        return ca.Graph.from_edges([6, 3, 2, 5, 2, 3], [(0, 1, rows), (0, 2, cols), (3, 4, chain)])
    if case == "disconnected-forest":  # a star and a chain
        return ca.Graph.from_edges([4, 6, 2, 5, 3], [(0, 2, torch.tensor([0, 1, 1, 0])),
                                                     (1, 2, torch.tensor([1, 1, 0, 0, 1, 0])),
                                                     (3, 4, torch.tensor([0, 1, 2, 2, 1]))])
    raise KeyError(case)


FOREST_CASES = ["chain-graph", "star", "star-irregular", "tree", "disconnected-forest"]
NONTREE_CASES = ["axial", "grid-regions", "mixed", "mixed-two-resolutions", "disconnected"]
GRAPH_CASES = FOREST_CASES + NONTREE_CASES


def make_graph(case: str, seed: int = 0) -> ca.Graph:
    return _graph(case, seed)


def random_graph_instance(case: str, batch: int = 3, seed: int = 0, dtype=torch.float64, scale: float = 2.0,
                          temps: list | None = None) -> Instance:
    """A graph of the family ``case`` with N(0, scale²) scores and unequal temperatures in [0.3, 3]."""
    h = make_graph(case, seed)
    g = torch.Generator().manual_seed(2000 + seed)
    scores = [(scale * torch.randn((batch,) + s, generator=g, dtype=torch.float64)).to(dtype) for s in h.shapes]
    if temps is None:
        temps = (0.3 + 2.7 * torch.rand(h.num_maps, generator=g, dtype=torch.float64)).tolist()
    return Instance(h, scores, temps)


def flat_np(tensors) -> list[np.ndarray]:
    return [t.detach().double().reshape(t.shape[0], -1).cpu().numpy() for t in tensors]


def max_err(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(flat_np(a) if isinstance(a[0], torch.Tensor) else a,
                                                        flat_np(b) if isinstance(b[0], torch.Tensor) else b))


def random_feasible_point(h: ca.Hierarchy, batch: int, generator: torch.Generator, dtype=torch.float64):
    """A random consistent point: top-level Dirichlet, then random conditionals downwards."""
    L = h.num_levels
    expo = -torch.log(torch.rand((batch, h.sizes[-1]), generator=generator, dtype=dtype))
    top = expo / expo.sum(1, keepdim=True)  # uniform on the simplex (Dirichlet(1))
    probs = [top]
    for k in reversed(range(L - 1)):
        w = torch.rand((batch, h.sizes[k]), generator=generator, dtype=dtype) + 1e-3
        block = torch.zeros((batch, h.sizes[k + 1]), dtype=dtype).index_add_(1, h.parents(k), w)
        cond = w / block[:, h.parents(k)]
        probs.insert(0, cond * probs[0][:, h.parents(k)])
    return [p.reshape((batch,) + s) for p, s in zip(probs, h.shapes)]


def pool_sum(x: torch.Tensor, factor) -> torch.Tensor:
    """Sum-pooling written independently (avg_pool × block size) for 2-D maps (B, H, W)."""
    return torch.nn.functional.avg_pool2d(x.unsqueeze(1), factor).squeeze(1) * math.prod(factor)


def linear_loss_gradient(inst: Instance, method: str, weights, **options):
    """∂/∂θ of Σ_k <p_k, w_k> for ``method`` at ``inst`` (one gradient per level)."""
    scores = [s.clone().requires_grad_() for s in inst.scores]
    sol = ca.solve(scores, inst.h, method, temperature=inst.temps, **options)
    return torch.autograd.grad(sum((p * w).sum() for p, w in zip(sol.probs, weights)), scores)


def run_cli(argv, capsys):
    """``convex-attention ARGV`` in-process: ``(exit code, stdout, stderr)``."""
    from convex_attention import cli

    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# A training configuration small enough for tests (the paper's model at 32 x 32, width 4).
TINY = dict(image_size=32, width=4, embed_channels=8, n_train=16, n_val=8, batch_size=8, device="cpu",
            progress=False)


def tiny_checkpoint(path, epoch=1, epochs=1, **fields):
    """A checkpoint as training writes it (weights, optimiser, the whole TrainConfig)."""
    import os

    from convex_attention.paper.config import TrainConfig
    from convex_attention.paper.models import AttentionUNet, save_checkpoint

    config = TrainConfig.build(**{**TINY, "epochs": epochs, "out": os.path.dirname(path), **fields})
    model = AttentionUNet(config=config.model)
    opt = torch.optim.Adam(model.parameters())
    return save_checkpoint(str(path), model, opt, epoch=epoch, metrics=[],
                           extra={"train_config": config.to_dict()})


def reference_solve_given(h: ca.Graph, scores, temps, given: dict):
    """The problem with given maps (docs/math.md §7.6), per sample, by CVXPY + Clarabel at 1e-12:
    a variable for every scored map, the given maps' probabilities as constants; a simplex
    constraint on every scored map (the given maps already fix every sum); then polished by
    Newton's method on the dual written out here (:func:`_polish`), independently of the
    package's solvers.  Returns ``(probs, value)``: per map ``(B, n_k)``
    float64 arrays (the given ones as given) and ``(B,)`` optimal values (over scored maps)."""
    import cvxpy as cp

    M, edges = len(h.sizes), list(h.edges)
    B = next(s for s in scores if s is not None).shape[0]
    flat = [None if s is None else s.detach().double().reshape(B, -1).numpy() for s in scores]
    q = {k: v.detach().double().expand((B,) + h.shapes[k]).reshape(B, -1).numpy() for k, v in given.items()}
    mats = [aggregation_matrix(h, e) for e in range(len(edges))]
    probs = [np.zeros((B, n)) for n in h.sizes]
    values = np.zeros(B)
    for i in range(B):
        ps = {k: cp.Variable(h.sizes[k]) for k in range(M) if k not in given}
        side = {**ps, **{k: q[k][i] for k in given}}
        obj = sum(flat[k][i] @ ps[k] + temps[k] * cp.sum(cp.entr(ps[k])) for k in ps)
        cons = [mats[e] @ side[a] == side[b] for e, (a, b) in enumerate(edges)]
        cons += [cp.sum(ps[k]) == 1 for k in ps]
        prob = cp.Problem(cp.Maximize(obj), cons)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-12)
        assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
        start = [q[k][i] if k in given else ps[k].value for k in range(M)]
        theta = [np.zeros(h.sizes[k]) if k in given else flat[k][i] for k in range(M)]
        lam = [c.dual_value for c in cons[:len(edges)]]
        p, _, value = _polish(theta, mats, edges, temps, lam, start, {k: q[k][i] for k in given})
        for k in range(M):
            probs[k][i] = p[k]
        values[i] = prob.value if value is None else value
    return probs, values


GIVEN_CASES = {
    # one scored map, its rows and columns given (the marginals of a transport plan)
    "axial-rows-cols": (lambda: ca.Graph.axial((4, 3)), (1, 2)),
    # one scored map with a grid and regions that cut across it, both given
    "grid-regions": (lambda: _graph("grid-regions", 0), (1, 2)),
    # two scored maps that agree on a shared grid, one of them held to given regions
    "mixed-free-and-given": (lambda: ca.Graph([(4, 4), (2, 4), (1, 2), 3],
                                              [(0, 2), (1, 2), (1, 3, cutting_regions((2, 4), 3, 1))]), (3,)),
    # the fine map is given: a scored coarse map held to its pooling, another map agreeing with it
    "given-fine-map": (lambda: ca.Graph([(4, 4), (2, 2), (4, 4)], [(0, 1), (2, 1)]), (0,)),
}


def random_given_instance(case: str, batch: int = 3, seed: int = 0, scale: float = 2.0):
    """A structure of ``GIVEN_CASES`` with N(0, scale²) scores on its scored maps, unequal
    temperatures and random strictly positive given maps that some consistent point has
    (the maps of the whole structure's optimum at other random scores: given maps drawn
    independently of each other, two coarsenings of one map, are often infeasible):
    ``(h, scores, temps, given)``."""
    build, given_maps = GIVEN_CASES[case]
    h = build()
    g = torch.Generator().manual_seed(3000 + seed)
    scores = [None if k in given_maps else scale * torch.randn((batch,) + s, generator=g, dtype=torch.float64)
              for k, s in enumerate(h.shapes)]
    temps = (0.3 + 2.7 * torch.rand(h.num_maps, generator=g, dtype=torch.float64)).tolist()
    other = [torch.randn((batch,) + s, generator=g, dtype=torch.float64) for s in h.shapes]
    feasible = ca.solve(other, h, "dual", temperature=1.0, tol=1e-14, max_iter=5000).probs
    given = {k: feasible[k] for k in given_maps}
    return h, scores, temps, given


def slow_beyond(cases, keep: int = 1, fast: tuple = ()) -> list:
    """Parametrize ``cases`` (tuples, or single values for one argument) so that the first
    ``keep`` cases and those at the indices in ``fast`` run in the fast suite and the rest are
    marked ``slow``: further cases of a test whose first case already checks the code path
    (a case that starts a Python process of its own costs about a second, a gradcheck of an
    iterative solver as much), and the fast suite is the edit loop.  CI runs every case."""
    import pytest

    return [pytest.param(*(case if isinstance(case, tuple) else (case,)),
                         marks=() if i < keep or i in fast else pytest.mark.slow)
            for i, case in enumerate(cases)]


def strict_load(path):
    """A JSON file read as strict JSON (NaN and Infinity tokens refused): the test's own reader,
    independent of the package's."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def tmp_files(folder) -> list[str]:
    """The names in ``folder`` that end in ``.tmp`` (temporary files left behind)."""
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def benchmark_instance(size: int, draw: int, dtype=torch.float64, family: str = "mixed"):
    """Instance ``draw`` of the graph benchmark's hard stream of ``family`` at ``size``² (seed
    0, one sample, the range's ends pinned every ``PINNED_EVERY`` draws, as its convergence
    part draws them): ``(graph, scores, temperatures)``."""
    from convex_attention.bench import graph_targets as gt

    *_, (_, _, h, scores, temps) = gt.convergence_instances(0, family, "hard", size, draw + 1, dtype)
    return h, scores, temps


def peaked_mixed_instances():
    """Mixed hard instances 1 and 8 of the graph benchmark's stream at 32², float64, one sample
    each (τ = 0.034, 0.014, 0.30, 0.087 and 0.01, 0.42, 7.2, 10), as ``(graph, scores,
    temperatures)``: peaked maps, on which block-Jacobi conjugate gradients cannot solve the
    dual's Hessian systems (Newton steps that crawl to 200 sweeps, an implicit backward left at
    relative residual 1; measured on an AMD EPYC)."""
    return [benchmark_instance(32, 1), benchmark_instance(32, 8)]


def clamp_min_without_gradient_at_its_bound(monkeypatch) -> None:
    """``Tensor.clamp_min`` as torch 2.14.1 and 2.15 differentiate it: no gradient where the input equals
    the bound (2.13 and earlier pass 1 there). A floor that relied on that gradient (a block sum of
    exactly 1, its other cells underflowed) gave wrong gradients on those releases (ca_rev240): the
    tests that use this run on the suite's torch as they would there."""
    original = torch.Tensor.clamp_min

    def clamp_min(self, min):  # noqa: A002  (torch's own parameter name)
        bound = torch.as_tensor(min, dtype=self.dtype, device=self.device).expand_as(self)
        out = torch.where(self > bound, self, bound)
        assert torch.equal(out, original(self, min))  # the same values: only the gradient at the bound differs
        return out

    monkeypatch.setattr(torch.Tensor, "clamp_min", clamp_min)


def benchmark_script(name: str):
    """``benchmarks/NAME.py`` as a fresh module, imported by its path (benchmarks/ is not a
    package); its ``main`` is not run."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
