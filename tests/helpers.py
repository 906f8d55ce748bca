"""Shared test helpers: an independent reference solver, random instances, tolerances.

The reference is a plain CVXPY problem written out here (not the package's cvx.py):
simplex constraints on every level (docs/design.md §1 literally), explicit aggregation
matrices, Clarabel at 1e-12.  Clarabel sometimes labels such a solve "optimal_inaccurate"
(its reduced-tolerance exit); the reference is therefore accepted on its own certificate,
computed here in numpy: primal residual and duality gap both below 1e-9.
"""
from __future__ import annotations

import math
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


def aggregation_matrix(h: ca.Hierarchy, k: int) -> np.ndarray:
    par = h.parents(k).numpy()
    P = np.zeros((h.sizes[k + 1], h.sizes[k]))
    P[par, np.arange(h.sizes[k])] = 1.0
    return P


def reference_solve(h: ca.Hierarchy, scores, temps):
    """Solve each sample with CVXPY + Clarabel (tolerances 1e-12), certificate-checked.

    Returns ``(probs, duals, value)``: lists of ``(B, n_k)`` / ``(B, n_{k+1})`` float64
    arrays (duals centred; the sign convention of CVXPY for ``P p_k == p_{k+1}`` in a
    maximisation, which is docs/design.md's λ) and ``(B,)`` optimal values.
    """
    import cvxpy as cp

    L = h.num_levels
    flat = [s.detach().double().reshape(s.shape[0], -1).numpy() for s in scores]
    B = flat[0].shape[0]
    probs = [np.zeros((B, n)) for n in h.sizes]
    duals = [np.zeros((B, n)) for n in h.sizes[1:]]
    values = np.zeros(B)
    mats = [aggregation_matrix(h, k) for k in range(L - 1)]
    for b in range(B):
        ps = [cp.Variable(n) for n in h.sizes]
        obj = sum(flat[k][b] @ ps[k] + temps[k] * cp.sum(cp.entr(ps[k])) for k in range(L))
        consistency = [mats[k] @ ps[k] == ps[k + 1] for k in range(L - 1)]
        simplex = [cp.sum(p) == 1 for p in ps]
        prob = cp.Problem(cp.Maximize(obj), consistency + simplex)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-12)
        assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
        p = [ps[k].value for k in range(L)]
        lam = [consistency[k].dual_value for k in range(L - 1)]
        residual = max([abs(q.sum() - 1) for q in p] + [np.abs(mats[k] @ p[k] - p[k + 1]).max() for k in range(L - 1)]
                       + [max(0.0, -q.min()) for q in p])
        f = sum(flat[k][b] @ p[k] - temps[k] * np.sum(p[k][p[k] > 0] * np.log(p[k][p[k] > 0])) for k in range(L))
        g = 0.0
        for k in range(L):
            eta = flat[k][b].copy()
            if k > 0:
                eta += lam[k - 1]
            if k < L - 1:
                eta -= mats[k].T @ lam[k]
            z = eta / temps[k]
            g += temps[k] * (z.max() + np.log(np.exp(z - z.max()).sum()))
        assert residual < 1e-9 and abs(g - f) < 1e-9, (prob.status, residual, g - f)
        for k in range(L):
            probs[k][b] = p[k]
        for k in range(L - 1):
            duals[k][b] = lam[k] - lam[k].mean()
        values[b] = prob.value
    return probs, duals, values


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
